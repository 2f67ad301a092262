#!/bin/bash
# SIGKILL bitsd at about half of a big download, restart it on the same state dir, let the
# job finish, and count the bytes nginx had to send twice.
# Target (architecture.md, "Performance targets"): re-fetched bytes <= 16 MiB, hash correct.
#
#   sudo bench/kill-resume.sh     BENCH_SIZE_MIB (1024) BENCH_KILL_RATE (200m: nginx limit_rate,
#                                 0 = unlimited) BENCH_KILL_AT (percent, 50) BENCH_TMPDIR BENCH_KEEP=1
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATE=${BENCH_KILL_RATE:-200m}
AT=${BENCH_KILL_AT:-50}
LIMIT_MIB=16

setup_common "${BENCH_TIMEOUT:-$((300 + SIZE_MIB / 2))}"
make_source
SRC_SHA=$(sha256sum "$T/www/src.bin" | cut -d' ' -f1)
start_nginx "$RATE"
start_bus
start_bitsd
URL=http://127.0.0.1:$PORT/slow/src.bin
DEST=$T/out/result.bin
KILL_BYTES=$((SIZE * AT / 100))

echo
echo "bitsd kill -9 / restart benchmark: $SIZE_MIB MiB from nginx on 127.0.0.1"
echo "  nginx limit_rate for this download: $RATE (so that ${AT} % can be caught; 0 = none)"
echo "  bitsd state dir $T/state on $(findmnt -no SOURCE,FSTYPE -T "$T")"

JOB=$("$PY" "$HELPER" start "$ADDR" "$URL" "$DEST") || die "could not start the job"
OLD_PID=$BITSD_PID
read -r AT_KILL KILL_T < <("$PY" "$HELPER" kill-at "$ADDR" "$JOB" "$KILL_BYTES" "$BITSD_PID") || true
[[ -n ${AT_KILL:-} ]] || die "did not reach ${AT} %"
{ wait "$BITSD_PID"; } 2>/dev/null || true
echo "  SIGKILL after ${KILL_T} s at BytesTransferred = $AT_KILL ($(awk "BEGIN{printf \"%.1f\", $AT_KILL*100/$SIZE}") %)"
# The file workers die with the daemon (PDEATHSIG); make sure before restarting.
sleep 0.2
for k in $(ps -o pid= --ppid "$OLD_PID" 2>/dev/null || true); do kill -KILL "$k" 2>/dev/null || true; done
BITSD_PID=""

log "restarting bitsd on the same state dir"
start_bitsd
read -r T2 < <("$PY" "$HELPER" wait "$ADDR" "$JOB" "${BENCH_JOB_TIMEOUT:-300}") || true
[[ -n ${T2:-} ]] || die "job did not become transferred after the restart"
AFTER=$("$PY" "$HELPER" get "$ADDR" "$JOB" BytesTransferred)
RES=$("$PY" "$HELPER" complete "$ADDR" "$JOB") || die "Complete failed"
echo "  restarted; transferred ${T2} s later; Complete: $RES"

[[ -f $DEST ]] || die "no result file $DEST"
GOT_SHA=$(sha256sum "$DEST" | cut -d' ' -f1)
sleep 0.3   # nginx logs a request when it ends; the killed one ended long ago, but be sure
echo
echo "  nginx requests for /slow/src.bin (msec uri status body_bytes bytes range completion):"
grep ' /slow/src.bin ' "$T/nginx/access.log" | sed 's/^/    /'
SENT=$(awk '$2 == "/slow/src.bin" { s += $4 } END { printf "%d", s }' "$T/nginx/access.log")
REQS=$(grep -c ' /slow/src.bin ' "$T/nginx/access.log" || true)
REFETCH=$((SENT - SIZE))
echo
echo "  file size            $SIZE bytes"
echo "  body bytes sent      $SENT bytes in $REQS request(s)"
echo "  re-fetched           $REFETCH bytes = $(awk "BEGIN{printf \"%.2f\", $REFETCH/1048576}") MiB (limit $LIMIT_MIB MiB)"
echo "  sha256 source        $SRC_SHA"
echo "  sha256 result        $GOT_SHA"
ok=1
if [[ $GOT_SHA != "$SRC_SHA" ]]; then echo "  hash MISMATCH"; ok=0; else echo "  hash matches"; fi
(( REQS >= 2 )) || { echo "  only $REQS request: the kill did not interrupt a transfer?"; ok=0; }
(( REFETCH <= LIMIT_MIB * 1048576 )) || ok=0
echo
if (( ok )); then
        echo "RESULT: target met (re-fetched $(awk "BEGIN{printf \"%.2f\", $REFETCH/1048576}") MiB <= $LIMIT_MIB MiB, hash correct)"
else
        echo "RESULT: target NOT met (re-fetched $(awk "BEGIN{printf \"%.2f\", $REFETCH/1048576}") MiB, limit $LIMIT_MIB MiB; hash $([[ $GOT_SHA = "$SRC_SHA" ]] && echo correct || echo WRONG))"
        exit 1
fi
