#!/usr/bin/env bash
# The unit's exposure as systemd-analyze rates it, offline; fails above the project's aim.
set -euo pipefail
unit=$1
aim=${2:-3.0}
out=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1) || { echo "$out"; exit 1; }
score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
[ -n "$score" ] || { echo "$out"; echo "no exposure score found"; exit 1; }
echo "systemd-analyze security: exposure $score for $(basename "$unit") (aim: <= $aim)"
awk -v s="$score" -v a="$aim" 'BEGIN { exit !(s <= a) }' || { echo "$out" | grep -v '^✓'; exit 1; }
