#!/usr/bin/env bash
# Start or stop a private system-type D-Bus with the project's bus policy and the
# real polkitd on it — for the quick-start script and benchmarks (the integration
# tests use tests/integration/harness.py, which builds a fuller world).
#
#   tools/private-bus.sh start DIR   prints DBUS_SYSTEM_BUS_ADDRESS=..., DBUS_DAEMON_PID=...
#                                    and POLKITD_PID=... lines on stdout, e.g.
#                                      set -a; eval "$(tools/private-bus.sh start DIR)"; set +a
#   tools/private-bus.sh stop DIR    kills both and removes the socket
#
# Requirements: root; dbus-daemon, polkitd, gdbus (libglib2.0-bin), unshare.
# Both daemons keep running after "start" returns, until "stop".
#
# polkitd reads actions only from /usr/share/polkit-1/actions. If the project's
# org.freedesktop.bits1.policy is installed there unchanged, polkitd runs as is.
# Otherwise polkitd alone runs in its own private mount namespace, where
# DIR/polkit-actions (the installed actions plus the project's policy) is
# bind-mounted over that directory: the caller needs no namespace of its own and
# nothing is ever mounted in the host's namespace.
set -euo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ACTIONS=/usr/share/polkit-1/actions
POLICY=org.freedesktop.bits1.policy

die() { echo "private-bus.sh: $*" >&2; exit 1; }

start() {
    local dir=$1
    (( EUID == 0 )) || die "must run as root"
    mkdir -p "$dir/system.d" "$dir/logs"
    dir=$(cd "$dir" && pwd)
    chmod 0755 "$dir"   # non-root clients must reach the socket

    # Bus policy: Debian's default system policy + polkit's + the project's, nothing else.
    cp "$SRCDIR/dbus/org.freedesktop.bits1.conf" \
       /usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf "$dir/system.d/"
    sed -e "s|@SOCKET@|$dir/system_bus_socket|g" -e "s|@INCLUDEDIR@|$dir/system.d|g" \
        "$SRCDIR/tools/private-bus.conf.in" >"$dir/system.conf"

    local -a polkitd=(/usr/lib/polkit-1/polkitd --no-debug)
    if ! cmp -s "$ACTIONS/$POLICY" "$SRCDIR/polkit/$POLICY"; then
        mkdir -p "$dir/polkit-actions"
        cp "$ACTIONS"/*.policy "$dir/polkit-actions/" 2>/dev/null || true
        cp "$SRCDIR/polkit/$POLICY" "$dir/polkit-actions/"
        chmod 0755 "$dir/polkit-actions"   # polkitd drops to its own user
        chmod 0644 "$dir/polkit-actions"/*.policy
        # unshare and sh exec, so $! below is polkitd's pid.
        polkitd=(unshare --mount --propagation private -- sh -c \
                 'mount --bind "$0" '"$ACTIONS"' && exec "$@"' "$dir/polkit-actions" "${polkitd[@]}")
    fi

    # --fork returns once the socket listens, after printing address and pid.
    dbus-daemon --config-file="$dir/system.conf" --fork --nopidfile \
        --print-address=3 --print-pid=4 3>"$dir/address" 4>"$dir/dbus-daemon.pid"
    local address
    address=$(head -n1 "$dir/address")

    DBUS_SYSTEM_BUS_ADDRESS=$address setsid "${polkitd[@]}" \
        </dev/null >"$dir/logs/polkitd.log" 2>&1 &
    echo $! >"$dir/polkitd.pid"
    DBUS_SYSTEM_BUS_ADDRESS=$address gdbus wait --system --timeout 10 org.freedesktop.PolicyKit1 ||
        die "polkitd did not appear on the bus; see $dir/logs/polkitd.log"

    echo "DBUS_SYSTEM_BUS_ADDRESS=$address"
    echo "DBUS_DAEMON_PID=$(head -n1 "$dir/dbus-daemon.pid")"
    echo "POLKITD_PID=$(cat "$dir/polkitd.pid")"
}

stop() {
    local dir=$1 f pid
    for f in polkitd.pid dbus-daemon.pid; do
        [[ -s $dir/$f ]] || continue
        pid=$(head -n1 "$dir/$f")
        kill "$pid" 2>/dev/null || true
        # Wait (bounded) so a following start does not race the old daemon.
        timeout 5 tail --pid="$pid" -f /dev/null || kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/$f"
    done
    rm -f "$dir/system_bus_socket" "$dir/address"
}

case ${1:-} in
    start) [[ $# -eq 2 ]] || die "usage: $0 start DIR"; start "$2" ;;
    stop)  [[ $# -eq 2 ]] || die "usage: $0 stop DIR"; stop "$2" ;;
    *)     die "usage: $0 start|stop DIR" ;;
esac
