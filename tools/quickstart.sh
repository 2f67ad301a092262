#!/usr/bin/env bash
# The run command: builds bitsd if needed, starts it — on the system bus when systemd runs,
# otherwise on a private bus this script sets up (with the real polkitd) — and performs a real
# download with bitsctl, showing its progress, from a local nginx on 127.0.0.1.
#
#   tools/quickstart.sh                 download a generated 512 MiB file (nginx, throttled
#                                       to ~100 MB/s so the progress is visible)
#   tools/quickstart.sh URL             download URL instead (needs network access to it)
#   BITS_DEMO_SIZE_MIB=64 BITS_DEMO_RATE=20m tools/quickstart.sh
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" -eq 0 ] || { echo "quickstart: run as root (it starts a system service)." >&2; exit 2; }

size_mib=${BITS_DEMO_SIZE_MIB:-512}
rate=${BITS_DEMO_RATE:-100m}
url=${1:-}
work=$(mktemp -d /var/tmp/bitsd-demo.XXXXXX)
chmod 0755 "$work"
pids=()
systemd_mode=0
[ -d /run/systemd/system ] && systemd_mode=1

cleanup() {
        set +e
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
        [ $systemd_mode = 1 ] || tools/private-bus.sh stop "$work/bus" >/dev/null 2>&1
        wait 2>/dev/null
        rm -rf "$work"
}
trap cleanup EXIT

command -v meson >/dev/null && command -v nginx >/dev/null || bash tools/install-deps.sh

if [ $systemd_mode = 1 ]; then
        echo "==> systemd is running: installing bitsd as a system service"
        [ -f build-system/build.ninja ] || meson setup build-system --prefix=/usr --sysconfdir=/etc --localstatedir=/var >/dev/null
        ninja -C build-system >/dev/null
        meson install -C build-system --quiet
        busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null
        systemctl daemon-reload
        systemctl restart bitsd.service
        bitsctl=/usr/bin/bitsctl
        bus_args=()
else
        echo "==> no systemd: starting a private system bus with polkitd, and bitsd on it"
        [ -f build/build.ninja ] || meson setup build >/dev/null
        ninja -C build >/dev/null
        set -a
        eval "$(tools/private-bus.sh start "$work/bus")"
        set +a
        touch "$work/bitsd.conf"
        build/src/daemon/bitsd --bus-address="$DBUS_SYSTEM_BUS_ADDRESS" --state-dir="$work/state" \
                --config="$work/bitsd.conf" --log-level=info 2>"$work/bitsd.log" &
        pids+=($!)
        for _ in $(seq 100); do
                busctl --address="$DBUS_SYSTEM_BUS_ADDRESS" status org.freedesktop.bits1 >/dev/null 2>&1 && break
                kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/bitsd.log"; exit 1; }
                sleep 0.1
        done
        bitsctl=build/src/bitsctl/bitsctl
        bus_args=(--address="$DBUS_SYSTEM_BUS_ADDRESS")
fi
echo "    bitsd $("$bitsctl" "${bus_args[@]}" --version 2>/dev/null | head -1 || true) is on the bus as org.freedesktop.bits1"

want=""
if [ -z "$url" ]; then
        echo "==> serving a ${size_mib} MiB file from nginx on 127.0.0.1 (limit_rate $rate)"
        mkdir -p "$work/www" "$work/nginx"
        head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/www/demo.bin"
        want=$(sha256sum "$work/www/demo.bin" | cut -d' ' -f1)
        port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        cat >"$work/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 64; }
http {
        access_log off;
        sendfile on;
        client_body_temp_path $work/nginx;
        proxy_temp_path $work/nginx;
        fastcgi_temp_path $work/nginx;
        uwsgi_temp_path $work/nginx;
        scgi_temp_path $work/nginx;
        server {
                listen 127.0.0.1:$port;
                root $work/www;
                limit_rate $rate;
        }
}
NGINX
        nginx -c "$work/nginx/nginx.conf" &
        pids+=($!)
        for _ in $(seq 50); do curl -sfI "http://127.0.0.1:$port/demo.bin" >/dev/null && break; sleep 0.1; done
        url="http://127.0.0.1:$port/demo.bin"
fi

mkdir -p "$work/downloads"
dest="$work/downloads/$(basename "${url%%\?*}")"
echo "==> bitsctl transfer $url $dest"
"$bitsctl" "${bus_args[@]}" transfer --name="quickstart demo" "$url" "$dest"
if [ -n "$want" ]; then
        got=$(sha256sum "$dest" | cut -d' ' -f1)
        [ "$got" = "$want" ] || { echo "==> SHA-256 MISMATCH: $got != $want"; exit 1; }
        echo "==> done: $(du -h "$dest" | cut -f1) written, SHA-256 matches the source ($got)"
else
        echo "==> done: $(du -h "$dest" | cut -f1) written to $dest (removed on exit)"
fi
