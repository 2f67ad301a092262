# Shared setup for bitsd's benchmark scripts (sourced, bash). Everything lives in one temp
# dir on a real file system (default under /var/tmp, override with BENCH_TMPDIR), and every
# process started here is remembered by PID and ended on exit.

set -euo pipefail

BENCH_DIR_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCROOT=$(cd "$BENCH_DIR_SRC/.." && pwd)
BUILD=${BENCH_BUILD:-$SRCROOT/build}
BITSD=$BUILD/src/daemon/bitsd
PY=/usr/bin/python3
HELPER=$BENCH_DIR_SRC/bitsbench.py
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
SIZE=$((SIZE_MIB * 1024 * 1024))

T=""            # temp dir
BUS_PID="" NGINX_PID="" BITSD_PID="" WATCHDOG_PID=""
ADDR="" PORT=""

log() { printf '%s\n' "$*" >&2; }

bitsd_log_tail() {
        if [[ -n $T && -f $T/bitsd.log ]]; then
                log "---- last 40 lines of $T/bitsd.log ----"
                tail -n 40 "$T/bitsd.log" >&2 || true
                log "----"
        fi
}

die() {
        log "FAILED: $*"
        bitsd_log_tail
        exit 1
}

kill_pid() {    # kill_pid PID: TERM, then KILL after 3 s; only our own PIDs
        local pid=$1 i
        [[ -n $pid ]] || return 0
        kill -TERM "$pid" 2>/dev/null || return 0
        for ((i = 0; i < 30; i++)); do
                kill -0 "$pid" 2>/dev/null || return 0
                sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
}

bitsd_children() {
        [[ -n $BITSD_PID ]] && cat /proc/"$BITSD_PID"/task/*/children 2>/dev/null || true
}

stop_bitsd() {
        local kids
        kids=$(bitsd_children)
        kill_pid "$BITSD_PID"
        wait "$BITSD_PID" 2>/dev/null || true
        for k in $kids; do kill_pid "$k"; done   # file workers (they also die with the daemon)
        BITSD_PID=""
}

cleanup() {
        local rc=$?
        set +e
        trap - EXIT
        trap '' INT TERM        # finish cleaning up even if the watchdog fires now
        [[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null
        stop_bitsd
        [[ -n $NGINX_PID ]] && kill_pid "$NGINX_PID"
        [[ -n $BUS_PID ]] && kill_pid "$BUS_PID"
        if [[ -n $T && -d $T ]]; then
                if [[ ${BENCH_KEEP:-0} = 1 ]]; then
                        log "kept $T"
                else
                        rm -rf -- "$T"
                fi
        fi
        exit "$rc"
}

setup_common() {    # setup_common TIMEOUT_SEC
        [[ $(id -u) = 0 ]] || { log "run as root (bitsd needs to switch to the job owner)"; exit 1; }
        for c in nginx curl dbus-daemon sha256sum "$PY"; do
                command -v "$c" >/dev/null || { log "missing: $c"; exit 1; }
        done
        "$PY" -c 'import dbus' 2>/dev/null || { log "$PY lacks dbus-python (apt-get install python3-dbus)"; exit 1; }
        (( SIZE_MIB >= 1 )) || { log "BENCH_SIZE_MIB must be >= 1"; exit 1; }

        if [[ ! -x $BITSD ]]; then
                [[ -d $BUILD ]] || meson setup "$BUILD" "$SRCROOT" >/dev/null
        fi
        if ! ninja -C "$BUILD" > "${TMPDIR:-/tmp}/bitsd-bench-ninja.$$.log" 2>&1; then
                tail -n 5 "${TMPDIR:-/tmp}/bitsd-bench-ninja.$$.log" >&2
                [[ -x $BITSD ]] || { rm -f "${TMPDIR:-/tmp}/bitsd-bench-ninja.$$.log"; die "build failed (ninja -C $BUILD)"; }
                log "WARNING: ninja -C $BUILD failed; using the existing $BITSD ($(date -r "$BITSD" '+%F %T'))"
        fi
        rm -f "${TMPDIR:-/tmp}/bitsd-bench-ninja.$$.log"

        T=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/bitsd-bench.XXXXXX")
        chmod 0755 "$T"
        trap cleanup EXIT
        trap 'exit 130' INT TERM
        local fstype
        fstype=$(findmnt -no FSTYPE -T "$T" 2>/dev/null || echo '?')
        [[ $fstype = tmpfs ]] && log "WARNING: $T is on tmpfs: sync/fdatasync cost nothing there"
        mkdir -p "$T/www" "$T/out" "$T/state"

        # The whole run is bounded: a watchdog ends this script and everything it started
        # (by PID, walking /proc/PID/task/*/children). Its own sleep goes with it.
        (
                exec > /dev/null < /dev/null
                trap 'kill "$s" 2>/dev/null; exit 0' TERM
                sleep "$1" & s=$!
                wait "$s"
                log "TIMEOUT after $1 s: ending the benchmark"
                me=$BASHPID
                descendants() {
                        local c
                        for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
                                [[ $c = "$me" ]] && continue
                                echo "$c"
                                descendants "$c"
                        done
                }
                kill -TERM $(descendants $$) 2>/dev/null
                kill -TERM $$
        ) &
        WATCHDOG_PID=$!
        log "temp dir $T ($fstype), size $SIZE_MIB MiB"
}

make_source() {     # random, incompressible; then durable and in the page cache
        log "generating $SIZE_MIB MiB of random data..."
        openssl enc -aes-128-ctr -nosalt -pass pass:bitsd-bench -in /dev/zero 2>/dev/null |
                head -c "$SIZE" > "$T/www/src.bin" || true
        [[ $(stat -c %s "$T/www/src.bin") = "$SIZE" ]] || die "could not create the source file"
        sync
        cat "$T/www/src.bin" > /dev/null
}

free_port() {
        "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_nginx() {     # start_nginx [LIMIT_RATE]  (e.g. 200m; empty = no limit on /slow/)
        local rate=${1:-0} i
        PORT=$(free_port)
        mkdir -p "$T/nginx/tmp"
        cat > "$T/nginx/nginx.conf" <<EOC
daemon off;
master_process on;
worker_processes 1;
user root;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
    client_body_temp_path $T/nginx/tmp;
    proxy_temp_path $T/nginx/tmp;
    fastcgi_temp_path $T/nginx/tmp;
    uwsgi_temp_path $T/nginx/tmp;
    scgi_temp_path $T/nginx/tmp;
    log_format bytes '\$msec \$request_uri \$status \$body_bytes_sent \$bytes_sent "\$http_range" \$request_completion';
    server {
        listen 127.0.0.1:$PORT;
        root $T/www;
        # /data/: full speed, no log (throughput). /slow/: the same files, rate-limited and
        # logged with the bytes sent (kill-resume).
        location /data/ { alias $T/www/; }
        location /slow/ {
            alias $T/www/;
            limit_rate $rate;
            access_log $T/nginx/access.log bytes;
        }
    }
}
EOC
        nginx -c "$T/nginx/nginx.conf" -p "$T/nginx" -e "$T/nginx/error.log" 2>>"$T/nginx/error.log" &
        NGINX_PID=$!
        for ((i = 0; i < 100; i++)); do
                curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$PORT/data/src.bin" && return 0
                kill -0 "$NGINX_PID" 2>/dev/null || break
                sleep 0.05
        done
        cat "$T/nginx/error.log" >&2 || true
        die "nginx did not start"
}

start_bus() {
        dbus-daemon --session --nofork --print-address=3 --address="unix:path=$T/bus" 3>"$T/addr" &
        BUS_PID=$!
        local i
        for ((i = 0; i < 100; i++)); do
                [[ -s $T/addr ]] && break
                sleep 0.02
        done
        ADDR=$(head -n1 "$T/addr")
        [[ -n $ADDR ]] || die "dbus-daemon did not start"
}

start_bitsd() {
        [[ -f $T/bitsd.conf ]] || printf '[Daemon]\n' > "$T/bitsd.conf"
        "$BITSD" --bus-address="$ADDR" --state-dir="$T/state" --config="$T/bitsd.conf" \
                --log-level="${BENCH_LOG_LEVEL:-info}" 2>>"$T/bitsd.log" &
        BITSD_PID=$!
        local i
        for ((i = 0; i < 200; i++)); do
                kill -0 "$BITSD_PID" 2>/dev/null || die "bitsd exited at start"
                busctl --address="$ADDR" status org.freedesktop.bits1 >/dev/null 2>&1 && return 0
                sleep 0.025
        done
        die "bitsd did not take its bus name"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
