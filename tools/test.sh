#!/usr/bin/env bash
# The test command: installs what the project needs (Debian 12, as root), builds bitsd twice
# (optimized, and with AddressSanitizer + UndefinedBehaviorSanitizer) and runs every test suite
# in both builds. Ends with one line: "N passed, N failed".
#
#   tools/test.sh              everything
#   BITS_SKIP_ASAN=1 tools/test.sh     only the optimized build (quicker, for development)
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

if [ "$(id -u)" -ne 0 ]; then
        echo "tools/test.sh: run as root (the integration suite switches to test users and uses mount namespaces)." >&2
        exit 2
fi

bash tools/install-deps.sh || { echo "tools/test.sh: installing dependencies failed" >&2; exit 1; }

builds=(build)
[ "${BITS_SKIP_ASAN:-0}" = 1 ] || builds+=(build-asan)

status=0
for b in "${builds[@]}"; do
        opts=()
        [ "$b" = build-asan ] && opts=(-Dsanitizers=true -Db_lundef=false -Dbuildtype=debug)
        if [ ! -f "$b/build.ninja" ]; then
                meson setup "$b" "${opts[@]}" >"$b.setup.log" 2>&1 || { cat "$b.setup.log"; exit 1; }
        fi
        ninja -C "$b" || exit 1
        echo "=== tests in $b ==="
        # ASan: leaks are errors; abort on the first report so the failing test is clear.
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
                meson test -C "$b" --print-errorlogs --num-processes 2 || status=1
done

# The unit's hardening score, for the record (the unit-hardening test enforces the aim).
bash tests/check-unit-hardening.sh build/systemd/bitsd.service 3.0 | head -1 || true

# The closing line, counted from meson's own test logs.
/usr/bin/python3 - "${builds[@]}" <<'PY'
import json, sys
passed = failed = skipped = 0
for b in sys.argv[1:]:
    try:
        lines = open(f"{b}/meson-logs/testlog.json").read().splitlines()
    except OSError:
        failed += 1
        print(f"{b}: no test log")
        continue
    for line in lines:
        t = json.loads(line)
        r = t.get("result")
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
            print(f"FAILED: {b}: {t.get('name')} ({r})")
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
PY
exit $status
