#!/usr/bin/env bash
# Checks systemd/zinferd.service (and the GPU drop-in systemd/cuda.conf) without a running systemd: fails on any
# problem `systemd-analyze verify` reports, on an exposure score from `systemd-analyze security --offline=true`
# worse than the recorded one, and on a unit that disagrees with the packaged config (configs/zinferd.toml) about
# the memory budget or the drain time. Takes well under a second; scripts/test.sh runs it.
#
# Usage: scripts/check-systemd-unit.sh [--self-test]
#   --self-test  also breaks copies of the unit in typical ways (a misspelt key, an invalid value, a hardening line
#                removed, MemoryMax= below the budget) and fails unless every broken copy is rejected (VERBOSE=1
#                prints why each was).
#
# Why a stub ExecStart: `verify` checks that ExecStart's program exists, and /usr/bin/zinferd only exists once the
# package is installed (`--root=` does not help: it would need a whole systemd tree under that root). So the unit is
# verified as a copy whose ExecStart names an empty executable, after checking that the original names exactly
# /usr/bin/zinferd, where the .deb installs the binary. Everything else is verified as written, drop-in included.
#
# Needs systemd-analyze (Debian's `systemd` package, on every Debian machine with systemd; installed here with
# apt-get if missing). systemd does not need to be running. Scores are those of the systemd version that computes
# them: the recorded ones are systemd 252's (Debian 12).
set -euo pipefail
cd "$(dirname "$0")/.."

# Recorded exposure levels (systemd-analyze prints them with one decimal; --threshold takes tenths).
MAX_EXPOSURE_TENTHS=11          # zinferd.service as shipped: "1.1 OK"
MAX_EXPOSURE_CUDA_TENTHS=15     # with systemd/cuda.conf: "1.5 OK" (GPU device nodes, no PrivateUsers)

UNIT=systemd/zinferd.service
DROPIN=systemd/cuda.conf
CONFIG=configs/zinferd.toml

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check-systemd-unit: installing systemd-analyze (Debian package systemd)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi

fail() { echo "check-systemd-unit: FAIL: $*" >&2; return 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# The value of KEY= in a unit file (the last assignment wins, as in systemd).
unit_value() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

# A size like 320M, 1G, 512K or bytes, in MiB.
to_mib() {
    local v="$1"
    case "$v" in
        *K) echo $(( ${v%K} / 1024 )) ;;
        *M) echo "${v%M}" ;;
        *G) echo $(( ${v%G} * 1024 )) ;;
        *[0-9]) echo $(( v / 1024 / 1024 )) ;;
        *) echo "unparsable size: $v" >&2; return 1 ;;
    esac
}

# A time span like 20s, 2min, 1min 30s or 500ms, in milliseconds (the forms this unit uses).
to_ms() {
    local total=0 part
    for part in $1; do
        case "$part" in
            *ms) total=$(( total + ${part%ms} )) ;;
            *min) total=$(( total + ${part%min} * 60000 )) ;;
            *s) total=$(( total + ${part%s} * 1000 )) ;;
            *[0-9]) total=$(( total + part * 1000 )) ;;
            *) echo "unparsable time span: $part" >&2; return 1 ;;
        esac
    done
    echo "$total"
}

# A key of the packaged TOML config (`key = number` lines only).
config_number() { sed -n "s/^$1[[:space:]]*=[[:space:]]*\([0-9][0-9]*\).*/\1/p" "$2" | head -n 1; }

# check UNIT_FILE [DROPIN_FILE]: every check on one unit file; returns non-zero at the first failure.
check() {
    local unit="$1" dropin="${2:-}" work out exposure
    work="$(mktemp -d -p "$WORK")"

    # 1. What the daemon's protocol and the package rely on.
    [[ "$(grep -c '^ExecStart=' "$unit")" == 1 && "$(unit_value "$unit" ExecStart)" == /usr/bin/zinferd ]] \
        || fail "$unit: expected exactly one ExecStart=/usr/bin/zinferd" || return 1
    local key expected
    # shellcheck disable=SC2016  # $MAINPID is literal unit text
    for key in Type=notify NotifyAccess=main 'ExecReload=/bin/kill -HUP $MAINPID' Restart=on-failure \
        DynamicUser=yes ProtectSystem=strict; do
        expected="${key#*=}"
        [[ "$(unit_value "$unit" "${key%%=*}")" == "$expected" ]] || fail "$unit: expected $key" || return 1
    done
    [[ -n "$(unit_value "$unit" WatchdogSec)" ]] || fail "$unit: WatchdogSec= is missing" || return 1

    # 2. Consistency with the packaged config: the cgroup limit must leave the daemon's own shedding room to act
    #    (MemoryMax >= 1.2 x memory_mb), and systemd must not SIGKILL a drain in progress (TimeoutStopSec >=
    #    drain_timeout_ms + 5 s).
    local memory_mb memory_max drain_ms stop_ms
    memory_mb="$(config_number memory_mb "$CONFIG")"
    drain_ms="$(config_number drain_timeout_ms "$CONFIG")"
    [[ -n "$memory_mb" && -n "$drain_ms" ]] || fail "$CONFIG: memory_mb or drain_timeout_ms not set" || return 1
    memory_max="$(to_mib "$(unit_value "$unit" MemoryMax)")" || fail "$unit: MemoryMax= missing or unparsable" || return 1
    (( memory_max * 10 >= memory_mb * 12 )) \
        || fail "$unit: MemoryMax=${memory_max}M is less than 1.2 x memory_mb (${memory_mb}) of $CONFIG" || return 1
    stop_ms="$(to_ms "$(unit_value "$unit" TimeoutStopSec)")" || fail "$unit: TimeoutStopSec= missing" || return 1
    (( stop_ms >= drain_ms + 5000 )) \
        || fail "$unit: TimeoutStopSec= (${stop_ms} ms) is not 5 s above drain_timeout_ms (${drain_ms})" || return 1

    # 3. systemd-analyze verify, on a copy whose ExecStart names a stub; any output at all is a failure (verify
    #    exits 0 on unknown keys and invalid values, which it only prints).
    printf '#!/bin/sh\nexit 0\n' > "$work/zinferd"
    chmod 755 "$work/zinferd"
    sed "s|^ExecStart=/usr/bin/zinferd\$|ExecStart=$work/zinferd|" "$unit" > "$work/zinferd.service"
    if [[ -n "$dropin" ]]; then
        mkdir "$work/zinferd.service.d"
        cp "$dropin" "$work/zinferd.service.d/$(basename "$dropin")"
    fi
    if ! out="$(systemd-analyze verify --man=no "$work/zinferd.service" 2>&1)" || [[ -n "$out" ]]; then
        fail "systemd-analyze verify ${unit}${dropin:+ + $dropin}:"$'\n'"$out" || return 1
    fi

    # 4. The exposure score must not regress.
    local threshold="$MAX_EXPOSURE_TENTHS"
    [[ -n "$dropin" ]] && threshold="$MAX_EXPOSURE_CUDA_TENTHS"
    cp "$unit" "$work/zinferd.service"   # beside the drop-in folder of step 3, if any: scored together
    if ! out="$(systemd-analyze security --offline=true --threshold="$threshold" "$work/zinferd.service" 2>&1)"; then
        fail "exposure of ${unit}${dropin:+ + $dropin} is above $(( threshold / 10 )).$(( threshold % 10 )):"$'\n'"$(grep '✗' <<<"$out")"$'\n'"$(tail -n 1 <<<"$out")" || return 1
    fi
    exposure="$(sed -n 's/.*Overall exposure level for [^:]*: //p' <<<"$out")"
    echo "check-systemd-unit: ${unit}${dropin:+ + $dropin}: verify OK, exposure $exposure (limit $(( threshold / 10 )).$(( threshold % 10 )))"
}

check "$UNIT"
check "$UNIT" "$DROPIN"

if [[ "${1:-}" == "--self-test" ]]; then
    scratch="$(mktemp -d -p "$WORK")"
    mutants=(
        's/^ProtectHome=yes$/ProtectHomes=yes/'                       # misspelt key: verify only warns
        's/^MemoryMax=.*/MemoryMax=lots/'                              # invalid value: verify only warns
        '/^SystemCallFilter=/d'                                        # hardening removed: the score regresses
        '/^CapabilityBoundingSet=/d'                                   # idem
        's/^MemoryMax=.*/MemoryMax=200M/'                              # below the packaged memory budget
        's/^TimeoutStopSec=.*/TimeoutStopSec=5s/'                      # would SIGKILL a drain
        's/^Type=notify$/Type=simple/'                                 # readiness protocol lost
        's|^ExecStart=.*|ExecStart=/usr/local/bin/zinferd|'            # not where the package installs it
        's/^WatchdogSec=.*/WatchdogSec=thirty/'                        # invalid time span
    )
    for mutant in "${mutants[@]}"; do
        sed "$mutant" "$UNIT" > "$scratch/zinferd.service"
        if cmp -s "$UNIT" "$scratch/zinferd.service"; then
            fail "self-test: '$mutant' changed nothing (stale mutant)"
        fi
        if (check "$scratch/zinferd.service") >"$scratch/out" 2>&1; then
            fail "self-test: a unit broken with '$mutant' passed the checks"
        else
            if [[ -n "${VERBOSE:-}" ]]; then echo "rejected ($mutant): $(grep -m1 FAIL "$scratch/out")"; fi
        fi
    done
    echo "check-systemd-unit: self-test OK: ${#mutants[@]} broken copies of the unit were all rejected"
fi
