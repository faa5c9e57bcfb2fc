#!/usr/bin/env bash
# Runs zinferd the way systemd/zinferd.service confines it, as far as that is possible without systemd as PID 1,
# classifies a few texts, and checks what the unit's hardening assumes about the daemon:
#   - the packaged config (configs/zinferd.toml, its /usr/share and /usr/lib paths pointed at this checkout) loads
#     and its memory budget (memory_mb) holds the shipped model;
#   - it runs as an unprivileged user with HOME=/ that can write nowhere (DynamicUser=, ProtectSystem=strict):
#     ONNX Runtime's attempt to create ~/.cache/Microsoft/... must fail harmlessly;
#   - it never needs writable+executable memory (MemoryDenyWriteExecute=): the kernel's prctl(PR_SET_MDWE) refuses
#     such mappings for the whole run (Linux 6.3 or newer; skipped with a note on older kernels);
#   - every system call it makes is in the unit's filter (SystemCallFilter=@system-service ~@privileged @resources,
#     expanded by systemd-analyze), recorded with strace;
#   - the socket families it opens are in RestrictAddressFamilies=;
#   - the sd_notify protocol over a NOTIFY_SOCKET this script provides, as systemd would: READY=1, WATCHDOG=1 pings
#     (WATCHDOG_USEC=2 s), RELOADING=1 and READY=1 again after SIGHUP (then it still classifies), STOPPING=1.
# Not covered (they need systemd itself): namespaces, PrivateDevices=, ProtectProc=, the cgroup's MemoryMax=.
#
# Usage: scripts/sandbox-smoke.sh [ZINFERD]   (default: target/release/zinferd, else target/debug/zinferd)
# Needs root (to switch to the unprivileged user), python3, strace and systemd-analyze (apt-get installs the last
# two if missing). Takes about 5 s. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

ZINFERD="${1:-}"
if [[ -z "$ZINFERD" ]]; then
    # The most recently built of the usual places (fixed names: ls -t is fine).
    # shellcheck disable=SC2012
    ZINFERD="$(ls -t target/release/zinferd target/debug/zinferd target/pkg/release/zinferd 2>/dev/null | head -n 1 || true)"
fi
[[ -n "$ZINFERD" && -x "$ZINFERD" ]] || { echo "sandbox-smoke: no zinferd binary; build one or pass its path" >&2; exit 2; }
ZINFERD="$(cd "$(dirname "$ZINFERD")" && pwd)/$(basename "$ZINFERD")"
[[ "$(id -u)" == 0 ]] || { echo "sandbox-smoke: must run as root (it switches to user nobody)" >&2; exit 2; }
for tool in strace systemd-analyze; do
    command -v "$tool" >/dev/null 2>&1 && continue
    package="$tool"; [[ "$tool" == systemd-analyze ]] && package=systemd
    echo "sandbox-smoke: installing $package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
done

UNIT="${UNIT:-systemd/zinferd.service}"   # overridable to test this script itself
NOBODY_UID="$(id -u nobody)"
NOBODY_GID="$(id -g nobody)"
LIB="$(scripts/install-onnxruntime.sh | tail -n 1)"
LIB_VERSIONED="$(dirname "$LIB")/$(readlink "$LIB")"

WORK="$(mktemp -d)"
chmod 755 "$WORK"
DAEMON_PID=""
STRACE_PID=""
NOTIFY_PID=""
cleanup() {
    if [[ -n "$DAEMON_PID" ]]; then kill -KILL "$DAEMON_PID" 2>/dev/null || true; fi
    if [[ -n "$STRACE_PID" ]]; then kill -KILL "$STRACE_PID" 2>/dev/null || true; fi
    if [[ -n "$NOTIFY_PID" ]]; then kill -KILL "$NOTIFY_PID" 2>/dev/null || true; wait "$NOTIFY_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "sandbox-smoke: FAIL: $*" >&2; [[ -f "$WORK/daemon.log" ]] && tail -n 20 "$WORK/daemon.log" >&2; exit 1; }

# The packaged config with its install paths pointed at this checkout, on a free loopback port.
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
sed -e "s|/usr/share/zinfer/models/|$ROOT/models/|" \
    -e "s|/usr/lib/zinfer/libonnxruntime.so.1.31.1|$LIB_VERSIONED|" \
    -e "s|tcp/127.0.0.1:7447|tcp/127.0.0.1:$PORT|" configs/zinferd.toml > "$WORK/zinferd.toml"
if ! grep -q "$ROOT/models/" "$WORK/zinferd.toml" || ! grep -q "$LIB_VERSIONED" "$WORK/zinferd.toml"; then
    fail "could not rewrite the paths of configs/zinferd.toml"
fi
chmod 644 "$WORK/zinferd.toml"
for path in "$ZINFERD" "$LIB_VERSIONED" models/zinfer-sentiment-small/model.onnx; do
    setpriv --reuid="$NOBODY_UID" --regid="$NOBODY_GID" --clear-groups test -r "$path" \
        || fail "user nobody cannot read $path (the service's dynamic user could not either)"
done

# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) survives execve: the daemon runs under it from its first instruction.
cat > "$WORK/mdwe.py" <<'EOF'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
mdwe = libc.prctl(65, 1, 0, 0, 0) == 0  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
print(f"sandbox-smoke: PR_SET_MDWE {'on' if mdwe else 'unavailable (kernel < 6.3): W^X not checked'}", file=sys.stderr)
os.execv(sys.argv[1], sys.argv[1:])
EOF

# A notification socket, as systemd provides one (NOTIFY_SOCKET, WATCHDOG_USEC): what the daemon sends is logged.
cat > "$WORK/notify.py" <<'EOF'
import os, socket, sys
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
with open(out, "a") as log:
    while True:
        log.write(s.recv(65536).decode(errors="replace").replace("\n", " ") + "\n")
        log.flush()
EOF
: > "$WORK/notify.log"
python3 "$WORK/notify.py" "$WORK/notify.sock" "$WORK/notify.log" &
NOTIFY_PID=$!
for _ in $(seq 1 50); do [[ -S "$WORK/notify.sock" ]] && break; sleep 0.1; done
[[ -S "$WORK/notify.sock" ]] || fail "the notification socket did not appear"
notices() { grep -c "$1" "$WORK/notify.log" || true; }
wait_notice() {   # PATTERN COUNT SECONDS: until the socket received COUNT messages containing PATTERN
    local deadline=$(( SECONDS + $3 ))
    until (( $(notices "$1") >= $2 )); do
        kill -0 "$STRACE_PID" 2>/dev/null || fail "zinferd exited while waiting for $1"
        (( SECONDS < deadline )) || fail "no $1 (#$2) on the notification socket within $3 s"
        sleep 0.1
    done
}

echo "sandbox-smoke: starting $ZINFERD as nobody (HOME=/) on port $PORT under strace" >&2
env -i PATH=/usr/bin:/bin HOME=/ NOTIFY_SOCKET="$WORK/notify.sock" WATCHDOG_USEC=2000000 \
    strace -f -qq -o "$WORK/strace" \
    setpriv --reuid="$NOBODY_UID" --regid="$NOBODY_GID" --clear-groups --inh-caps=-all --no-new-privs \
    python3 "$WORK/mdwe.py" "$ZINFERD" --config "$WORK/zinferd.toml" > "$WORK/daemon.log" 2>&1 &
STRACE_PID=$!

wait_notice READY=1 1 30
DAEMON_PID="$(pgrep -P "$STRACE_PID" | head -n 1)"
[[ -n "$DAEMON_PID" ]] || fail "cannot find the daemon's pid"
[[ "$(awk '/^Uid:/ { print $2 }' "/proc/$DAEMON_PID/status")" == "$NOBODY_UID" ]] || fail "the daemon does not run as nobody"
grep -m1 "PR_SET_MDWE" "$WORK/daemon.log" >&2 || true

classify() {
    local text out
    for text in "a gripping, beautifully acted film" "dull, lifeless and far too long"; do
        out="$(timeout 20 "$ZINFERD" send --connect "tcp/127.0.0.1:$PORT" --key zinfer/in/text/sandbox --timeout-ms 10000 "$text")" \
            || fail "no result for '$text'"
        grep -q '"outcome": "ok"' <<<"$out" || fail "outcome not ok for '$text': $out"
        echo "sandbox-smoke: '$text' -> $(sed -n 's/^  "label": "\(.*\)",/\1/p' <<<"$out")" >&2
    done
}
classify
wait_notice WATCHDOG=1 1 10

# A reload (what `systemctl reload` sends): RELOADING=1, then READY=1 again, and the new generation serves.
kill -HUP "$DAEMON_PID"
wait_notice RELOADING=1 1 30
wait_notice READY=1 2 60
classify

kill -TERM "$DAEMON_PID"
for _ in $(seq 1 200); do kill -0 "$STRACE_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$STRACE_PID" 2>/dev/null && fail "zinferd did not stop within 20 s of SIGTERM"
wait "$STRACE_PID" || fail "zinferd exited non-zero after SIGTERM"
DAEMON_PID=""; STRACE_PID=""
grep -q "stopped cleanly" "$WORK/daemon.log" || fail "no clean stop in the log"
wait_notice STOPPING=1 1 5
echo "sandbox-smoke: notifications: $(notices READY=1) READY, $(notices WATCHDOG=1) WATCHDOG, $(notices RELOADING=1) RELOADING, $(notices STOPPING=1) STOPPING; last status: $(grep -o 'STATUS=[^=]*' "$WORK/notify.log" | tail -n 1)" >&2

# The system calls made after the final execve (the daemon's own), against the unit's filter.
awk -v bin="$ZINFERD" 'index($0, "execve(\"" bin "\"") && / = 0$/ { on = 1; next } on' "$WORK/strace" \
    | sed -nE 's/^[0-9]+ +(<\.\.\. )?([a-z_0-9]+)[( ].*/\2/p' | grep -v '^exited$\|^killed$\|^resumed$' \
    | sort -u > "$WORK/used"
[[ -s "$WORK/used" ]] || fail "no system calls recorded"
scripts/check-syscalls.sh "$UNIT" "$WORK/used" || fail "the daemon made system calls the unit's filter refuses"

families="$(sed -nE 's/.* socket\((AF_[A-Z0-9]+),.*/\1/p' "$WORK/strace" | sort -u | tr '\n' ' ')"
allowed_families=" $(sed -n 's/^RestrictAddressFamilies=//p' "$UNIT") "
for family in $families; do
    [[ "$allowed_families" == *" $family "* ]] || fail "socket family $family is not in RestrictAddressFamilies="
done
echo "sandbox-smoke: socket families used: $families(all in RestrictAddressFamilies=)" >&2
if grep -qE 'mkdir\("//\.cache' "$WORK/strace"; then
    echo "sandbox-smoke: ONNX Runtime tried to create //.cache and carried on (as under DynamicUser=)" >&2
fi
echo "sandbox-smoke: OK"
