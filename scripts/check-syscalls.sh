#!/usr/bin/env bash
# Checks a list of system call names (one a line, e.g. what zinferd made under strace or qemu -strace) against the
# SystemCallFilter= lines of a unit file, expanded by `systemd-analyze syscall-filter`. Exits 1 and names the
# calls if any is outside the allow list or inside a ~deny list. Used by scripts/sandbox-smoke.sh (x86_64) and
# scripts/aarch64-smoke.sh (aarch64 under qemu).
#
# Usage: scripts/check-syscalls.sh UNIT_FILE SYSCALL_LIST_FILE
set -euo pipefail
unit="${1:?unit file}"
used="${2:?file with one system call name a line}"

expand() {   # a syscall group (or a single call), recursively, one name a line
    if [[ "$1" != @* ]]; then echo "$1"; return; fi
    systemd-analyze syscall-filter "$1" | tail -n +2 | sed 's/^ *//' | grep -v '^#\|^$' | while read -r name; do
        expand "$name"
    done
}
allow=(); deny=()
while read -r line; do
    if [[ "$line" == "~"* ]]; then
        read -ra names <<<"${line#\~}"; deny+=("${names[@]}")
    else
        read -ra names <<<"$line"; allow+=("${names[@]}")
    fi
done < <(sed -n 's/^SystemCallFilter=//p' "$unit")
[[ ${#allow[@]} -gt 0 ]] || { echo "check-syscalls: $unit has no SystemCallFilter= allow list" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sort -u "$used" | grep -v '^$' > "$work/used"
for name in "${allow[@]}"; do expand "$name"; done | sort -u > "$work/allow"
for name in "${deny[@]}"; do expand "$name"; done | sort -u > "$work/deny"
outside="$(comm -23 "$work/used" "$work/allow" | tr '\n' ' ')"
denied="$(comm -12 "$work/used" "$work/deny" | tr '\n' ' ')"
status=0
if [[ -n "$outside" ]]; then echo "check-syscalls: not in SystemCallFilter=${allow[*]}: $outside" >&2; status=1; fi
if [[ -n "$denied" ]]; then echo "check-syscalls: in SystemCallFilter=~${deny[*]}: $denied" >&2; status=1; fi
if [[ $status == 0 ]]; then
    echo "check-syscalls: $(wc -l < "$work/used") distinct system calls, all allowed by SystemCallFilter=${allow[*]} ~${deny[*]}" >&2
fi
exit "$status"
