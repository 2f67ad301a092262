#!/bin/bash
# Durable download of one big file from nginx on 127.0.0.1: bitsd vs `curl -o && sync` vs
# aria2c, alternating, several rounds; prints a table per round and the medians.
# Target (docs architecture.md, "Performance targets"): bitsd >= 1.5x curl, CPU <= curl's.
#
#   sudo bench/throughput.sh            BENCH_SIZE_MIB (1024) BENCH_ROUNDS (5) BENCH_POLL_MS (5)
#                                       BENCH_WARMUP (1: one untimed run of each peer first)
#                                       BENCH_TMPDIR (/var/tmp) BENCH_KEEP=1 BENCH_TIMEOUT (s)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${BENCH_ROUNDS:-5}
(( ROUNDS >= 1 )) || { log "BENCH_ROUNDS must be >= 1"; exit 1; }
HAVE_ARIA=1
command -v aria2c >/dev/null || { HAVE_ARIA=0; log "aria2c missing (apt-get install -y aria2): column skipped"; }

setup_common "${BENCH_TIMEOUT:-$((300 + ROUNDS * (60 + SIZE_MIB / 5)))}"
make_source
start_nginx
start_bus
start_bitsd
URL=http://127.0.0.1:$PORT/data/src.bin
OUT=$T/out
RES=$T/results.tsv
echo "# round peer wall_s cpu_s sysbusy_s" > "$RES"

check_out() {       # check_out FILE PEER ROUND: right size; full compare in round 1
        local f=$1
        [[ -f $f ]] || die "$2 left no file $f"
        [[ $(stat -c %s "$f") = "$SIZE" ]] || die "$2: $f has $(stat -c %s "$f") bytes, expected $SIZE"
        if [[ $3 = 1 ]]; then cmp -s "$f" "$T/www/src.bin" || die "$2: $f differs from the source"; fi
}

# Each run prints "wall cpu sysbusy"; sysbusy = CPU seconds the whole machine was busy
# (nginx, kernel writeback threads, the polling client ... included).
run_curl() {
        local s0 s1 w u sy
        s0=$("$PY" "$HELPER" sysbusy)
        read -r w u sy < <("$PY" "$HELPER" timed "curl -s -f --max-time 600 -o '$OUT/curl.bin' '$URL' && sync")
        s1=$("$PY" "$HELPER" sysbusy)
        echo "$w $(awk "BEGIN{print $u+$sy}") $(awk "BEGIN{print $s1-$s0}")"
}

run_aria() {
        local s0 s1 w u sy
        s0=$("$PY" "$HELPER" sysbusy)
        read -r w u sy < <("$PY" "$HELPER" timed "timeout 600 aria2c -q -x1 -s1 --file-allocation=none --allow-overwrite=true --auto-file-renaming=false -d '$OUT' -o aria.bin '$URL' && sync")
        s1=$("$PY" "$HELPER" sysbusy)
        echo "$w $(awk "BEGIN{print $u+$sy}") $(awk "BEGIN{print $s1-$s0}")"
}

# bitsd: wall = from just before CreateJob (then AddFile, Resume) until a State poll
# (every BENCH_POLL_MS) reads `transferred`; Complete (the rename) comes after, untimed.
# CPU = utime+stime of bitsd + its file workers (and reaped children), from /proc, delta.
run_bitsd() {
        local s0 s1 c0 c1 w polls
        c0=$("$PY" "$HELPER" cpu "$BITSD_PID")
        s0=$("$PY" "$HELPER" sysbusy)
        read -r w polls < <("$PY" "$HELPER" run "$ADDR" "$URL" "$OUT/bitsd.bin") || true
        s1=$("$PY" "$HELPER" sysbusy)
        c1=$("$PY" "$HELPER" cpu "$BITSD_PID")
        [[ -n ${w:-} ]] || die "bitsd job failed"
        echo "$w $(awk "BEGIN{print $c1-$c0}") $(awk "BEGIN{print $s1-$s0}")"
}

PEERS=(curl bitsd)
(( HAVE_ARIA )) && PEERS+=(aria2c)
echo
echo "bitsd throughput benchmark: $SIZE_MIB MiB from nginx (sendfile) on 127.0.0.1, $ROUNDS round(s)"
echo "  file system: $(findmnt -no SOURCE,FSTYPE -T "$T") ($T)   CPUs: $(nproc)   MB = 10^6 bytes"
echo "  curl:   curl -s -o FILE URL && sync        (wall; CPU = user+sys of curl, sync, sh)"
echo "  bitsd:  CreateJob+AddFile+Resume .. State=transferred (poll every ${BENCH_POLL_MS:-5} ms; data fdatasync'ed by bitsd)"
echo "          CPU = bitsd + its file workers (/proc/PID/stat, 10 ms ticks)"
(( HAVE_ARIA )) && echo "  aria2c: aria2c -x1 -s1 --file-allocation=none -d DIR -o NAME URL && sync"
echo "  sysCPU: busy CPU seconds of the whole machine during the run (nginx, writeback threads, ...)"
echo "  before each run: sync, drop the page cache, re-read the source (it is cached for every peer)"

if [[ ${BENCH_WARMUP:-1} = 1 ]]; then
        # The very first large write after the source was generated runs slow, whoever does it
        # (first round's curl at ~1/3 of its later speed here): one untimed run of each peer.
        echo
        echo "warm-up: one untimed run of each peer (BENCH_WARMUP=0 to skip)"
        for p in "${PEERS[@]}"; do
                rm -f "$OUT"/*
                sync
                case $p in
                curl) run_curl > /dev/null ;;
                bitsd) run_bitsd > /dev/null ;;
                aria2c) run_aria > /dev/null ;;
                esac
        done
fi

# Every peer starts from the same state: no dirty pages or writeback left by the previous peer,
# an empty page cache but for the (re-read) source. Without this, a peer's time depends mostly on
# how much of the previous peer's writeback it has to wait behind (BENCH_SETTLE=0 to skip).
settle() {
        rm -f "$OUT"/*
        sync
        if [[ ${BENCH_SETTLE:-1} = 1 ]]; then
                echo 1 > /proc/sys/vm/drop_caches
                cat "$T/www/src.bin" > /dev/null
        fi
}

for ((r = 1; r <= ROUNDS; r++)); do
        # rotate the order: every peer goes first in turn
        order=()
        n=${#PEERS[@]}
        for ((i = 0; i < n; i++)); do order+=("${PEERS[$(((i + r - 1) % n))]}"); done
        echo
        echo "round $r/$ROUNDS (order: ${order[*]})"
        printf '  %-8s %9s %9s %8s %8s\n' peer wall_s MB/s CPU_s sysCPU_s
        for p in "${order[@]}"; do
                settle
                case $p in
                curl) read -r w c s < <(run_curl); f=$OUT/curl.bin ;;
                bitsd) read -r w c s < <(run_bitsd); f=$OUT/bitsd.bin ;;
                aria2c) read -r w c s < <(run_aria); f=$OUT/aria.bin ;;
                esac
                [[ -n ${w:-} ]] || die "$p run failed"
                check_out "$f" "$p" "$r"
                printf '  %-8s %9.3f %9.0f %8.2f %8.2f\n' "$p" "$w" "$(awk "BEGIN{print $SIZE/$w/1e6}")" "$c" "$s"
                echo "$r $p $w $c $s" >> "$RES"
                unset w c s
        done
done
rm -f "$OUT"/*

if (( HAVE_ARIA )); then
        "$PY" "$HELPER" summary "$RES" "$SIZE"
else
        log "summary needs all three peers; raw results:"; cat "$RES"
fi
