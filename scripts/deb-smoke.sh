#!/usr/bin/env bash
# Smoke test of a built zinfer .deb as installed, without installing it: in a private mount namespace the package's
# usr/ and etc/ are overlaid (read-only) on the machine's /usr and /etc, plus an /etc/zinfer/conf.d/50-smoke.toml
# that moves zenoh to a free loopback port. Then, as user nobody with HOME=/ (like the unit's dynamic user):
#   - `zinferd check` with no --config must accept /etc/zinfer/zinferd.toml + conf.d/ and load the shipped model
#     with the bundled ONNX Runtime within the packaged memory budget;
#   - `zinferd check` with the packaged example drop-in 50-sensor.toml must load both shipped models;
#   - `zinferd check` with the packaged example drop-in 40-ladder.toml must load the tiny sentiment model as a rung;
#   - `zinferd` with no --config serves: two texts are classified over zenoh on the conf.d port (which proves that
#     conf.d/ was read), and SIGTERM stops it cleanly.
# An arm64 package runs under qemu-aarch64 (see scripts/aarch64-smoke.sh for the synthetic /proc/cpuinfo and the
# CPU model). Nothing outside the namespace changes; systemd itself is not involved (see check-systemd-unit.sh).
#
# Usage: scripts/deb-smoke.sh target/pkg/debian/zinfer_<version>_<arch>.deb    (root; ~5 s amd64, ~20 s arm64)
set -euo pipefail
cd "$(dirname "$0")/.."
DEB="$(realpath "${1:?the .deb to test}")"
[[ "$(id -u)" == 0 ]] || { echo "deb-smoke: must run as root (mount namespace, user switch)" >&2; exit 2; }
ARCH="$(dpkg-deb -f "$DEB" Architecture)"

WORK="$(mktemp -d)"
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$DEB" "$WORK/pkg"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$WORK/extra/etc/zinfer/conf.d"
printf '[zenoh]\nlisten = ["tcp/127.0.0.1:%s"]\n' "$PORT" > "$WORK/extra/etc/zinfer/conf.d/50-smoke.toml"
chmod -R a+rX "$WORK"

RUN=()
case "$ARCH" in
    amd64) [[ "$(uname -m)" == x86_64 ]] || { echo "deb-smoke: amd64 needs an x86_64 machine" >&2; exit 2; } ;;
    arm64)
        QEMU="$(command -v qemu-aarch64 || command -v qemu-aarch64-static)" \
            || { echo "deb-smoke: needs qemu-aarch64 (apt-get install qemu-user)" >&2; exit 2; }
        [[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]] \
            || { echo "deb-smoke: needs the aarch64 libc (apt-get install libc6-dev-arm64-cross)" >&2; exit 2; }
        mkdir -p "$WORK/sysroot/proc"
        ln -s /usr/aarch64-linux-gnu/lib "$WORK/sysroot/lib"
        for cpu in $(seq 0 $(( $(nproc --all) - 1 ))); do
            printf 'processor\t: %s\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$cpu"
        done > "$WORK/sysroot/proc/cpuinfo"
        chmod -R a+rX "$WORK/sysroot"
        RUN=(env QEMU_CPU=neoverse-n1 "$QEMU" -L "$WORK/sysroot")
        ;;
    *) echo "deb-smoke: unsupported architecture $ARCH" >&2; exit 2 ;;
esac
SEND=()
# The client: this machine's own build if there is one, else the package's binary (only usable on amd64).
for candidate in target/release/zinferd target/debug/zinferd target/pkg/release/zinferd; do
    if [[ -x "$candidate" && "$(readelf -h "$candidate" | sed -n 's/^ *Machine: *//p')" == *X86-64* ]]; then
        SEND=("$PWD/$candidate"); break
    fi
done
[[ ${#SEND[@]} -gt 0 ]] || { [[ "$ARCH" == amd64 ]] && SEND=(/usr/bin/zinferd); }
[[ ${#SEND[@]} -gt 0 ]] || { echo "deb-smoke: no x86_64 zinferd to send with; build one" >&2; exit 2; }

# Everything below runs inside the namespace; its mounts vanish with it.
export WORK PORT
export RUN_CMD="${RUN[*]:-}" SEND_CMD="${SEND[*]}"
# shellcheck disable=SC2016  # expanded by the inner bash, from the exported variables
unshare --mount --propagation private bash -euo pipefail -c '
mount -t overlay overlay -o "lowerdir=$WORK/extra/etc:$WORK/pkg/etc:/etc" /etc
mount -t overlay overlay -o "lowerdir=$WORK/pkg/usr:/usr" /usr
cd /
as_nobody() { setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups env -i HOME=/ PATH=/usr/bin:/bin "$@"; }
# shellcheck disable=SC2086  # RUN_CMD is a word list
run=($RUN_CMD)
fail() { echo "deb-smoke: FAIL: $*" >&2; [[ -f $WORK/daemon.log ]] && tail -n 20 "$WORK/daemon.log" >&2; exit 1; }

echo "deb-smoke: zinferd check (no --config: /etc/zinfer/zinferd.toml + conf.d/)" >&2
as_nobody timeout 300 "${run[@]}" /usr/bin/zinferd check > "$WORK/check.log" 2>&1 || { cat "$WORK/check.log" >&2; fail "zinferd check"; }
grep -E "memory probed|configuration OK|ONNX Runtime loaded" "$WORK/check.log" >&2
grep -q "library=/usr/lib/zinfer/libonnxruntime.so" "$WORK/check.log" || fail "not the bundled ONNX Runtime"

echo "deb-smoke: zinferd check with the packaged sensor drop-in (examples/conf.d/50-sensor.toml)" >&2
examples=/usr/share/zinfer/examples/conf.d
as_nobody timeout 300 "${run[@]}" /usr/bin/zinferd --config /etc/zinfer/zinferd.toml --config "$examples/50-sensor.toml" \
    check > "$WORK/check-sensor.log" 2>&1 || { cat "$WORK/check-sensor.log" >&2; fail "zinferd check with 50-sensor.toml"; }
grep -q "configuration OK (2 pipeline(s))" "$WORK/check-sensor.log" || fail "the sensor drop-in: $(cat "$WORK/check-sensor.log")"
grep -E "^pipeline .watch." "$WORK/check-sensor.log" >&2

echo "deb-smoke: zinferd check with the packaged ladder drop-in (examples/conf.d/40-ladder.toml)" >&2
as_nobody timeout 300 "${run[@]}" /usr/bin/zinferd --config /etc/zinfer/zinferd.toml --config "$examples/40-ladder.toml" \
    check > "$WORK/check-ladder.log" 2>&1 || { cat "$WORK/check-ladder.log" >&2; fail "zinferd check with 40-ladder.toml"; }
grep -q "ladder rung 1: model zinfer-sentiment-tiny" "$WORK/check-ladder.log" \
    || fail "the ladder drop-in: $(cat "$WORK/check-ladder.log")"
grep -E "ladder rung" "$WORK/check-ladder.log" >&2

echo "deb-smoke: zinferd (no --config), expected on tcp/127.0.0.1:$PORT from conf.d/50-smoke.toml" >&2
(exec setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups env -i HOME=/ PATH=/usr/bin:/bin \
    "${run[@]}" /usr/bin/zinferd > "$WORK/daemon.log" 2>&1) &   # exec all the way down: $! is the daemon
pid=$!
trap "kill -KILL $pid 2>/dev/null || true" EXIT
for _ in $(seq 1 600); do
    grep -qs "pipeline ready" "$WORK/daemon.log" && break
    kill -0 $pid 2>/dev/null || fail "zinferd exited during start-up"
    sleep 0.1
done
grep -q "pipeline ready" "$WORK/daemon.log" || fail "zinferd not ready after 60 s"
for text in "a gripping, beautifully acted film" "dull, lifeless and far too long"; do
    # shellcheck disable=SC2086
    out="$(timeout 60 $SEND_CMD send --connect "tcp/127.0.0.1:$PORT" --key zinfer/in/text/deb --timeout-ms 30000 "$text")" \
        || fail "no result for \"$text\" on port $PORT"
    grep -q "\"outcome\": \"ok\"" <<<"$out" || fail "outcome not ok: $out"
    echo "deb-smoke: \"$text\" -> $(sed -n "s/^  \"label\": \"\(.*\)\",/\1/p" <<<"$out")" >&2
done
kill -TERM $pid
for _ in $(seq 1 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -0 $pid 2>/dev/null && fail "no stop within 30 s of SIGTERM"
wait $pid || fail "zinferd exited non-zero after SIGTERM"
grep -q "stopped cleanly" "$WORK/daemon.log" || fail "no clean stop"
'
echo "deb-smoke: OK: $(basename "$DEB")"
