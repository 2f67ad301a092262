"""Hermetic integration-test harness for bitsd (stdlib + dbus-python only).

Runs as root, inside a private mount namespace (the process re-execs itself under
`unshare --mount --propagation private`), and builds a throw-away world there:

  * test users alice 4001, bob 4002, admin 4003 (also in group bitsadmin 4100),
    added to bind-mounted copies of /etc/passwd and /etc/group, homes 0700;
  * a tmpfs on /run/systemd/users holding their logind state files;
  * /usr/share/polkit-1/actions with the project's policy, empty polkit rules dirs;
  * a system-type dbus-daemon on a socket in the temp root, whose policy is
    Debian's default system policy + polkit's + the project's bus policy only;
  * polkitd on that bus, nginx and faultserver.py on 127.0.0.1;
  * bitsd on demand (h.start_bitsd()), clients running as real users (h.client()).

A test module:

    import harness

    class T(harness.HarnessTestCase):
        def test_x(self):
            self.h.start_bitsd()
            c = self.h.client(harness.ALICE)
            job_id, path = c.manager('CreateJob', 'ss', 'x', 'download')

    if __name__ == '__main__':
        harness.main()

Environment: BITSD, BITSCTL (built binaries), BITS_SRCDIR (source root; defaults
to two levels above this file), BITS_KEEP=1 keeps the temp root.
"""

import hashlib
import json
import os
import pickle
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from faultserver import write_pattern_file  # noqa: E402  (one content generator for both)

ALICE, BOB, ADMIN = 4001, 4002, 4003
ADMIN_GROUP = ('bitsadmin', 4100)
USERS = {ALICE: 'alice', BOB: 'bob', ADMIN: 'admin'}

BUS_NAME = 'org.freedesktop.bits1'
MANAGER_PATH = '/org/freedesktop/bits1'
MANAGER_IFACE = 'org.freedesktop.bits1.Manager'
JOB_IFACE = 'org.freedesktop.bits1.Job'
FILE_IFACE = 'org.freedesktop.bits1.File'
PROPS_IFACE = 'org.freedesktop.DBus.Properties'
POLKITD = '/usr/lib/polkit-1/polkitd'

_NS_MARKER = 'BITS_HARNESS_OUTER_MNTNS'


def srcdir():
    return os.environ.get('BITS_SRCDIR') or os.path.dirname(os.path.dirname(HERE))


# --- private mount namespace ---------------------------------------------

def _mnt_ns():
    return os.readlink('/proc/self/ns/mnt')


def enter_private_namespace():
    """Re-exec this process inside a private mount namespace, once.

    The marker holds the namespace we came from, so a marker leaked into a
    process that is still in that namespace does not fool us."""
    if os.environ.get(_NS_MARKER) not in (None, _mnt_ns()):
        return
    if os.geteuid() != 0:
        raise SystemExit('bitsd integration tests must run as root')
    os.environ[_NS_MARKER] = _mnt_ns()
    sys.stdout.flush()
    sys.stderr.flush()
    argv = getattr(sys, 'orig_argv', None) or [sys.executable] + sys.argv
    os.execvp('unshare', ['unshare', '--mount', '--propagation', 'private', '--',
                          sys.executable] + argv[1:])


def main():
    """Entry point for test modules: enter the namespace, then run unittest."""
    enter_private_namespace()
    unittest.main()


# Harnesses not closed yet. On SIGTERM (meson's timeout) they are torn down
# before exiting: unittest would swallow a SystemExit raised inside a test.
_live = set()


def _on_sigterm(signum, _frame):
    for h in list(_live):
        h.close()
    os._exit(128 + signum)


def _die_with_parent():
    # preexec_fn: daemons that keep root credentials die if the harness is
    # SIGKILLed (polkitd loses this when it drops to its user; it is stopped
    # normally in close()).
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# --- small helpers ---------------------------------------------------------

class BusError(Exception):
    """A D-Bus error reply, as seen by a client."""

    def __init__(self, name, message):
        super().__init__('%s: %s' % (name, message))
        self.name = name
        self.message = message


class FdArg:
    """Wrap a file descriptor to pass it as an `h` argument through a client."""

    def __init__(self, fd):
        self.fd = fd


class Variant:
    """A value for a `v` slot with an explicit signature, e.g. Variant('as', [...])."""

    def __init__(self, signature, value):
        self.signature = signature
        self.value = value


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            data = f.read(8 << 20)
            if not data:
                return digest.hexdigest()
            digest.update(data)


def _free_port():
    # Racy by nature, but only nginx needs it (the fault server reports its own port).
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _tail(text, lines=50):
    return '\n'.join(text.splitlines()[-lines:])


def _run(argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def wait_for(predicate, timeout=10.0, what='condition', interval=0.01, ignore=()):
    """Poll PREDICATE until it returns something truthy; return that value.

    The API has no property-change signals, so polling at a short interval is
    the event here; the deadline turns a hang into a clear failure. Exceptions
    of the types in IGNORE count as "not yet" and the last one is reported."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ignore as e:
            last_exc = e
        if time.monotonic() >= deadline:
            msg = 'timed out after %.1fs waiting for %s' % (timeout, what)
            if last_exc is not None:
                msg += ' (last error: %r)' % (last_exc,)
            raise AssertionError(msg)
        time.sleep(interval)


# --- clients running as other users ---------------------------------------
#
# A client is a forked child that dropped to the user's credentials and holds
# its own bus connection. The test process talks to it over an AF_UNIX
# socketpair: length-prefixed pickles, plus SCM_RIGHTS for `h` arguments.
# The child runs a GLib main loop, so it also records signals sent to it.

def _send_msg(sock, obj, fds=()):
    data = pickle.dumps(obj)
    sock.sendall(struct.pack('!I', len(data)))
    if fds:
        socket.send_fds(sock, [data[:1]], list(fds))
        sock.sendall(data[1:])
    else:
        sock.sendall(data)


def _recv_exact(sock, n, fds):
    buf = b''
    while len(buf) < n:
        data, got, _, _ = socket.recv_fds(sock, n - len(buf), 16)
        if not data:
            raise EOFError('client connection closed')
        fds.extend(got)
        buf += data
    return buf


def _recv_msg(sock):
    fds = []
    (n,) = struct.unpack('!I', _recv_exact(sock, 4, fds))
    return pickle.loads(_recv_exact(sock, n, fds)), fds


def _typed(sig, value):
    """Turn a plain Python value into the dbus-python value for signature SIG
    (needed inside variants, where dbus-python would otherwise guess)."""
    import dbus
    if isinstance(value, FdArg):
        return dbus.types.UnixFd(value.fd)
    if sig.startswith('a{'):
        ksig, vsig = list(dbus.Signature(sig[2:-1]))
        return dbus.Dictionary({_typed(ksig, k): _typed(vsig, v) for k, v in value.items()},
                               signature=sig[2:-1])
    if sig == 'ay' and isinstance(value, (bytes, bytearray)):
        return dbus.ByteArray(bytes(value))
    if sig.startswith('a'):
        return dbus.Array([_typed(sig[1:], v) for v in value], signature=sig[1:])
    if sig.startswith('('):
        inner = list(dbus.Signature(sig[1:-1]))
        return dbus.Struct([_typed(s, v) for s, v in zip(inner, value)], signature=sig[1:-1])
    if sig == 'v':
        if isinstance(value, Variant):
            return _typed(value.signature, value.value)
        return value  # let dbus-python guess (fine for str, bool, int → i)
    basic = {'y': dbus.Byte, 'b': dbus.Boolean, 'n': dbus.Int16, 'q': dbus.UInt16,
             'i': dbus.Int32, 'u': dbus.UInt32, 'x': dbus.Int64, 't': dbus.UInt64,
             'd': dbus.Double, 's': dbus.String, 'o': dbus.ObjectPath, 'g': dbus.Signature,
             'h': dbus.types.UnixFd}
    return basic[sig](value)


def _plain(value):
    """dbus-python values → plain Python types (bytes for `ay`)."""
    import dbus
    if isinstance(value, dbus.Boolean):
        return bool(value)
    if isinstance(value, (dbus.ByteArray, bytes)):
        return bytes(value)
    if isinstance(value, dbus.types.UnixFd):
        return value.take()  # a number in the client process; no bits1 method returns `h`
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dbus.Struct) or isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        if isinstance(value, dbus.Array) and value.signature == 'y':
            return bytes(int(b) for b in value)
        return [_plain(v) for v in value]
    return value


def _client_child(sock, uid, address):
    """Body of a client process; never returns."""
    import warnings
    warnings.simplefilter('ignore', ImportWarning)  # gi's importer, noise under unittest
    import dbus
    import dbus.lowlevel
    import dbus.mainloop.glib
    from gi.repository import GLib

    if uid != 0:
        pw = pwd.getpwuid(uid)
        os.setgroups(os.getgrouplist(pw.pw_name, pw.pw_gid))
        os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
        os.setresuid(uid, uid, uid)
        os.chdir(pw.pw_dir)
    else:
        os.setgroups([])

    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(address)
    signals = []

    def on_message(_conn, msg):
        if msg.get_type() == 4:  # MESSAGE_TYPE_SIGNAL
            signals.append({'sender': msg.get_sender(), 'path': msg.get_path(),
                            'interface': msg.get_interface(), 'member': msg.get_member(),
                            'args': _plain(tuple(msg.get_args_list(byte_arrays=True)))})
        # Let libdbus answer method calls (UnknownMethod) instead of leaving them hanging.
        return dbus.lowlevel.HANDLER_RESULT_NOT_YET_HANDLED

    bus.add_message_filter(on_message)
    ctx = GLib.MainContext.default()

    def matches(s, want):
        return all(s.get(k) == v for k, v in want.items() if v is not None)

    def handle(req):
        op = req['op']
        if op == 'call':
            args = [_typed(s, a) for s, a in
                    zip(list(dbus.Signature(req['signature'])), req['args'])]
            reply = bus.call_blocking(req['dest'], req['path'], req['interface'],
                                      req['method'], req['signature'], args,
                                      timeout=req['timeout'], byte_arrays=True)
            return _plain(reply)
        if op == 'unique_name':
            return str(bus.get_unique_name())
        if op == 'add_match':
            bus.add_match_string(req['rule'])
            return None
        if op == 'signals':
            while ctx.iteration(False):
                pass
            out = list(signals)
            if req['clear']:
                signals.clear()
            return out
        if op == 'wait_signal':
            deadline = time.monotonic() + req['timeout']
            while True:
                for i, s in enumerate(signals):
                    if matches(s, req['want']):
                        del signals[:i + 1]
                        return s
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                # Block in the main loop until something arrives or the deadline.
                fired = []
                timer = GLib.timeout_add(int(left * 1000) + 1, lambda: fired.append(1))
                ctx.iteration(True)
                if not fired:
                    GLib.source_remove(timer)
        raise ValueError('unknown op %r' % op)

    def on_request(*_):
        try:
            req, fds = _recv_msg(sock)
        except (EOFError, OSError):  # the test process closed us or is gone
            os._exit(0)
        # `h` arguments arrive as fds in order; put them where FdArg markers were.
        fd_iter = iter(fds)
        req['args'] = [FdArg(next(fd_iter)) if isinstance(a, FdArg) else a
                       for a in req.get('args', ())]
        try:
            result = ('ok', handle(req))
        except dbus.exceptions.DBusException as e:
            result = ('dbus-error', e.get_dbus_name(), e.get_dbus_message())
        except Exception as e:  # reported to the test, not swallowed
            result = ('error', '%s: %s' % (type(e).__name__, e))
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        _send_msg(sock, result)
        return True

    GLib.io_add_watch(sock.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP,
                      on_request)
    _send_msg(sock, ('ok', str(bus.get_unique_name())))
    GLib.MainLoop().run()
    os._exit(0)


class Client:
    """A bus client running as UID in its own process (see Harness.client)."""

    def __init__(self, uid, address):
        self.uid = uid
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            # Keep only our end: inherited copies of other clients' sockets (or of
            # the fault server's stdin) would keep those from seeing EOF.
            os.closerange(3, child.fileno())
            os.closerange(child.fileno() + 1, os.sysconf('SC_OPEN_MAX'))
            try:
                _client_child(child, uid, address)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(1)
        child.close()
        self.pid = pid
        self._sock = parent
        self.unique_name = self._reply(timeout=15)

    def _reply(self, timeout):
        self._sock.settimeout(timeout)
        try:
            result, _ = _recv_msg(self._sock)
        except (EOFError, socket.timeout) as e:
            raise RuntimeError('client process for uid %d died or hung: %r' % (self.uid, e))
        if result[0] == 'ok':
            return result[1]
        if result[0] == 'dbus-error':
            raise BusError(result[1], result[2])
        raise RuntimeError('client uid %d: %s' % (self.uid, result[1]))

    def _rpc(self, req, timeout):
        fds = [a.fd for a in req.get('args', ()) if isinstance(a, FdArg)]
        _send_msg(self._sock, req, fds)
        return self._reply(timeout + 5)

    # --- calls ----------------------------------------------------------

    def call(self, path, interface, method, signature='', *args, timeout=25,
             dest=BUS_NAME):
        """Call METHOD; returns None, one value, or a tuple (plain Python types).
        Raises BusError for D-Bus error replies. Pass FdArg(fd) for `h` args."""
        return self._rpc({'op': 'call', 'dest': dest, 'path': path, 'interface': interface,
                          'method': method, 'signature': signature, 'args': list(args),
                          'timeout': timeout}, timeout)

    def get(self, path, interface, prop, dest=BUS_NAME):
        return self.call(path, PROPS_IFACE, 'Get', 'ss', interface, prop, dest=dest)

    def get_all(self, path, interface, dest=BUS_NAME):
        return self.call(path, PROPS_IFACE, 'GetAll', 's', interface, dest=dest)

    def set(self, path, interface, prop, signature, value, dest=BUS_NAME):
        """Properties.Set with VALUE typed as SIGNATURE (e.g. 'u', 'as')."""
        return self.call(path, PROPS_IFACE, 'Set', 'ssv', interface, prop,
                         Variant(signature, value), dest=dest)

    def manager(self, method, signature='', *args, **kw):
        return self.call(MANAGER_PATH, MANAGER_IFACE, method, signature, *args, **kw)

    def job(self, path, method, signature='', *args, **kw):
        return self.call(path, JOB_IFACE, method, signature, *args, **kw)

    def job_prop(self, path, name):
        return self.get(path, JOB_IFACE, name)

    def file_prop(self, path, name):
        return self.get(path, FILE_IFACE, name)

    def bus_call(self, method, signature='', *args):
        """A call to the bus driver (org.freedesktop.DBus)."""
        return self.call('/org/freedesktop/DBus', 'org.freedesktop.DBus', method,
                         signature, *args, dest='org.freedesktop.DBus')

    def wait_job_state(self, path, states, timeout=30):
        """Wait until the job's State is one of STATES; return it."""
        states = {states} if isinstance(states, str) else set(states)
        seen = [None]

        def reached():
            seen[0] = self.job_prop(path, 'State')
            return seen[0] in states

        try:
            wait_for(reached, timeout=timeout, what='job state in %s' % sorted(states))
        except AssertionError:
            try:
                err = self.job_prop(path, 'Error')
            except BusError as e:
                err = e
            raise AssertionError('job %s: timed out after %ss waiting for state in %s; '
                                 'last state %r, Error %r'
                                 % (path, timeout, sorted(states), seen[0], err)) from None
        return seen[0]

    # --- signals --------------------------------------------------------

    def add_match(self, rule):
        """Subscribe to broadcast signals (unicast ones arrive without a match)."""
        return self._rpc({'op': 'add_match', 'rule': rule}, 10)

    def signals(self, clear=False):
        """Signals received so far: dicts with sender, path, interface, member, args."""
        return self._rpc({'op': 'signals', 'clear': clear}, 10)

    def wait_signal(self, member, path=None, interface=None, timeout=30):
        """Wait for (and consume, with everything before it) a matching signal."""
        want = {'member': member, 'path': path, 'interface': interface}
        s = self._rpc({'op': 'wait_signal', 'want': want, 'timeout': timeout}, timeout)
        if s is None:
            raise AssertionError('timed out after %ss waiting for signal %s on %s'
                                 % (timeout, member, path or 'any path'))
        return s

    def close(self):
        """Leave the bus (the process exits when its socket closes)."""
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        try:
            _wait_pid(self.pid, 5)
        except TimeoutError:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def _wait_pid(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(pid)
        time.sleep(0.01)


# --- the harness ------------------------------------------------------------

def dbus_config(socket_path, includedir):
    """The private system bus's configuration (tools/private-bus.conf.in, shared with the run
    command) for a socket and a policy directory."""
    with open(os.path.join(srcdir(), 'tools', 'private-bus.conf.in')) as f:
        template = f.read()
    return template.replace('@SOCKET@', socket_path).replace('@INCLUDEDIR@', includedir)

NGINX_CONFIG = """daemon off;
master_process on;
worker_processes 2;
user root;
pid {root}/nginx/nginx.pid;
error_log {root}/nginx/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log {root}/nginx/access.log;
  client_body_temp_path {root}/nginx/body;
  proxy_temp_path {root}/nginx/proxy;
  fastcgi_temp_path {root}/nginx/fastcgi;
  uwsgi_temp_path {root}/nginx/uwsgi;
  scgi_temp_path {root}/nginx/scgi;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port};
    root {root}/www;
  }}
}}
"""


class Harness:
    """The test world. Use as a context manager or call start()/close()."""

    def __init__(self):
        self.root = None
        self.bus_address = None
        self._procs = {}          # name → Popen, in start order
        self._mounts = []         # mount points, unmounted in reverse
        self._clients = []
        self._bitsd = None
        self._bitsd_log = None
        self.failed = False
        self._log_dumped = False

    wait_for = staticmethod(wait_for)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.failed = self.failed or exc[0] is not None
        self.close()

    # --- setup ----------------------------------------------------------

    def start(self):
        enter_private_namespace()
        signal.signal(signal.SIGTERM, _on_sigterm)
        _live.add(self)
        try:
            self.root = tempfile.mkdtemp(prefix='bits-test-', dir='/tmp')
            # Users must reach their homes and the bus socket below the root.
            os.chmod(self.root, 0o755)
            self._setup_users()
            self._setup_sessions()
            self._setup_polkit_files()
            self._start_bus()
            self._start_polkitd()
            self._start_nginx()
            self._start_faultserver()
        except BaseException:
            self.failed = True
            self.close()
            raise
        return self

    def _path(self, *parts):
        return os.path.join(self.root, *parts)

    def _mkdir(self, *parts, mode=0o755):
        path = self._path(*parts)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
        return path

    def _bind(self, source, target):
        _run(['mount', '--bind', source, target])
        self._mounts.append(target)

    def _setup_users(self):
        with open('/etc/passwd') as f:
            passwd = f.read().rstrip('\n').split('\n')
        with open('/etc/group') as f:
            group = f.read().rstrip('\n').split('\n')
        taken = {int(line.split(':')[2]) for line in passwd + group if line.count(':') >= 3}
        names = {line.split(':')[0] for line in passwd + group}
        clash = ({*USERS, ADMIN_GROUP[1]} & taken) | ({*USERS.values(), ADMIN_GROUP[0]} & names)
        if clash:
            raise RuntimeError('test users/groups already exist on this machine: %s' % clash)
        self._mkdir('home')
        for uid, name in USERS.items():
            home = self._mkdir('home', name, mode=0o700)
            os.chown(home, uid, uid)
            passwd.append('%s:x:%d:%d:bitsd test user:%s:/bin/sh' % (name, uid, uid, home))
            group.append('%s:x:%d:' % (name, uid))
        group.append('%s:x:%d:%s' % (ADMIN_GROUP[0], ADMIN_GROUP[1], USERS[ADMIN]))
        etc = self._mkdir('etc')
        for fname, lines in (('passwd', passwd), ('group', group)):
            with open(os.path.join(etc, fname), 'w') as f:
                f.write('\n'.join(lines) + '\n')
            os.chmod(os.path.join(etc, fname), 0o644)
            self._bind(os.path.join(etc, fname), '/etc/' + fname)

    def home(self, uid):
        return pwd.getpwuid(uid).pw_dir

    def _setup_sessions(self):
        # On a machine without systemd the directory may not exist; creating an
        # empty directory in /run is harmless (the tmpfs over it is ours).
        os.makedirs('/run/systemd/users', exist_ok=True)
        _run(['mount', '-t', 'tmpfs', '-o', 'mode=0755,size=1m', 'bits-test-users',
              '/run/systemd/users'])
        self._mounts.append('/run/systemd/users')
        for uid in USERS:
            self.set_session(uid, 'active')

    def set_session(self, uid, state):
        """Write /run/systemd/users/UID with STATE (active, online, lingering,
        offline...), or remove it when STATE is None (user logged out)."""
        path = '/run/systemd/users/%d' % uid
        if state is None:
            if os.path.exists(path):
                os.unlink(path)
            return
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            f.write('# written by the bitsd test harness\nNAME=%s\nSTATE=%s\n'
                    % (USERS.get(uid, str(uid)), state))
        os.rename(tmp, path)  # atomic, as logind does, so readers never see half a file

    def _setup_polkit_files(self):
        actions = self._mkdir('polkit', 'actions')
        shutil.copy(os.path.join(srcdir(), 'polkit', 'org.freedesktop.bits1.policy'), actions)
        # polkit's own actions file (pkexec etc.), so polkitd sees a normal set.
        own = '/usr/share/polkit-1/actions/org.freedesktop.policykit.policy'
        if os.path.exists(own):
            shutil.copy(own, actions)
        for name in os.listdir(actions):
            os.chmod(os.path.join(actions, name), 0o644)
        self._bind(actions, '/usr/share/polkit-1/actions')
        # Rules: both dirs empty (no distribution rules), tests add to /etc.
        # polkitd drops to its own user, so it must be able to read them.
        self.polkit_rules_dir = self._mkdir('polkit', 'rules.d')
        share_rules = self._mkdir('polkit', 'share-rules.d')
        os.makedirs('/etc/polkit-1/rules.d', exist_ok=True)
        self._bind(self.polkit_rules_dir, '/etc/polkit-1/rules.d')
        if os.path.isdir('/usr/share/polkit-1/rules.d'):
            self._bind(share_rules, '/usr/share/polkit-1/rules.d')

    def _start_bus(self):
        includedir = self._mkdir('dbus', 'system.d')
        shutil.copy(os.path.join(srcdir(), 'dbus', 'org.freedesktop.bits1.conf'), includedir)
        shutil.copy('/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf', includedir)
        sockdir = self._mkdir('bus')
        config = self._path('dbus', 'system.conf')
        with open(config, 'w') as f:
            f.write(dbus_config(os.path.join(sockdir, 'system_bus_socket'), includedir))
        proc = self._spawn('dbus-daemon', ['dbus-daemon', '--config-file=' + config, '--nofork',
                                           '--nopidfile', '--print-address=1'],
                           stdout=subprocess.PIPE, log='dbus-daemon.log')
        line = proc.stdout.readline().decode().strip()  # printed once it listens
        if not line:
            raise RuntimeError('dbus-daemon did not start:\n' + self._read_log('dbus-daemon.log'))
        self.bus_address = line
        os.environ['DBUS_SYSTEM_BUS_ADDRESS'] = line  # children inherit it
        self.root_client = self.client(0)  # the harness's own view of the bus

    def name_owner(self, name):
        """The unique name owning NAME, or None."""
        try:
            return self.root_client.bus_call('GetNameOwner', 's', name)
        except BusError as e:
            if e.name == 'org.freedesktop.DBus.Error.NameHasNoOwner':
                return None
            raise

    def _wait_owner(self, name, proc, logname, timeout=10.0, not_owner=None):
        def owned():
            if proc.poll() is not None:
                raise RuntimeError('%s exited with %s before owning %s; log tail:\n%s'
                                   % (logname, proc.returncode, name,
                                      _tail(self._read_log(logname))))
            owner = self.name_owner(name)
            return owner is not None and owner != not_owner
        try:
            wait_for(owned, timeout=timeout, what='%s to own %s' % (logname, name))
        except AssertionError as e:
            raise RuntimeError('%s; log tail:\n%s' % (e, _tail(self._read_log(logname))))

    def _start_polkitd(self):
        old = self.name_owner('org.freedesktop.PolicyKit1')
        proc = self._spawn('polkitd', [POLKITD, '--no-debug'], log='polkitd.log')
        self._wait_owner('org.freedesktop.PolicyKit1', proc, 'polkitd.log', not_owner=old)

    def restart_polkitd(self):
        """Restart polkitd and wait until the new one owns its name; after this,
        rules written before are in effect (deterministic, unlike its file watch)."""
        self._stop('polkitd', signal.SIGTERM)
        self._start_polkitd()

    def write_polkit_rule(self, name, js_text):
        """Install /etc/polkit-1/rules.d/NAME (e.g. '50-admin.rules') and reload polkitd."""
        path = os.path.join(self.polkit_rules_dir, name)
        with open(path, 'w') as f:
            f.write(js_text)
        os.chmod(path, 0o644)
        self.restart_polkitd()

    def remove_polkit_rule(self, name):
        os.unlink(os.path.join(self.polkit_rules_dir, name))
        self.restart_polkitd()

    def polkit_check(self, unique_name, action, details=None):
        """Ask polkit (as root) about a system-bus-name subject → (authorized, challenge)."""
        res = self.root_client.call(
            '/org/freedesktop/PolicyKit1/Authority', 'org.freedesktop.PolicyKit1.Authority',
            'CheckAuthorization', '(sa{sv})sa{ss}us',
            ('system-bus-name', {'name': unique_name}), action, details or {}, 0, '',
            dest='org.freedesktop.PolicyKit1')
        return res[0], res[1]

    def _start_nginx(self):
        self.www = self._mkdir('www')
        self._mkdir('nginx')
        for i in range(5):
            self.nginx_port = _free_port()
            conf = self._path('nginx', 'nginx.conf')
            with open(conf, 'w') as f:
                f.write(NGINX_CONFIG.format(root=self.root, port=self.nginx_port))
            proc = self._spawn('nginx', ['nginx', '-p', self._path('nginx'), '-c', conf,
                                         '-e', self._path('nginx', 'error.log')],
                               log='nginx.stderr')
            try:
                wait_for(lambda: proc.poll() is not None or _port_open(self.nginx_port),
                         timeout=10, what='nginx to listen')
            except AssertionError:
                raise RuntimeError('nginx did not listen:\n' + self._read_log('nginx/error.log'))
            if proc.poll() is None:
                return
            self._procs.pop('nginx')  # port taken meanwhile: try another
        raise RuntimeError('nginx failed to start:\n' + self._read_log('nginx/error.log'))

    def nginx_url(self, name):
        return 'http://127.0.0.1:%d/%s' % (self.nginx_port, urllib.parse.quote(name))

    def _start_faultserver(self):
        self.fault_dir = self._mkdir('fault')
        # stdin is a pipe we hold: the server exits when we go away.
        proc = self._spawn('faultserver', [sys.executable, os.path.join(HERE, 'faultserver.py'),
                                           self.fault_dir],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, log='faultserver.log')
        line = proc.stdout.readline().decode()
        if not line.startswith('PORT '):
            raise RuntimeError('faultserver did not start:\n' + self._read_log('faultserver.log'))
        self.fault_port = int(line.split()[1])

    def fault_url(self, name, **params):
        url = 'http://127.0.0.1:%d/f/%s' % (self.fault_port, urllib.parse.quote(name))
        return url + ('?' + urllib.parse.urlencode(params) if params else '')

    def _fault_control(self, method, path, **params):
        url = 'http://127.0.0.1:%d%s' % (self.fault_port, path)
        if params:
            url += '?' + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, method=method, data=b'' if method == 'POST' else None)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def fault_log(self):
        """Every request the fault server saw: dicts with method, path, query,
        headers, range, if_range, client_port, status, bytes_sent."""
        return self._fault_control('GET', '/_log')

    def fault_reset(self):
        self._fault_control('POST', '/_reset')

    def fault_replace(self, name, size, seed):
        """Atomically replace fault file NAME with new content; returns its sha256."""
        return self._fault_control('POST', '/_replace', name=name, size=size,
                                   seed=seed)['sha256']

    def make_file(self, where, name, size, seed=0):
        """Create a deterministic file NAME of SIZE bytes in WHERE ('nginx', 'fault'
        or a directory); return its sha256 hex."""
        directory = {'nginx': getattr(self, 'www', None),
                     'fault': getattr(self, 'fault_dir', None)}.get(where, where)
        path = os.path.join(directory, name)
        digest = write_pattern_file(path, size, seed)
        os.chmod(path, 0o644)
        return digest

    # --- processes ------------------------------------------------------

    def _read_log(self, name):
        try:
            with open(self._path('logs', name) if '/' not in name else self._path(name),
                      errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def _spawn(self, name, argv, log, **kw):
        self._mkdir('logs')
        with open(self._path('logs', log), 'ab') as logf:
            kw.setdefault('stdout', logf)
            proc = subprocess.Popen(argv, stderr=logf, start_new_session=True,
                                    env=os.environ.copy(), preexec_fn=_die_with_parent, **kw)
        self._procs[name] = proc
        return proc

    def _stop(self, name, sig, timeout=10):
        proc = self._procs.pop(name, None)
        if proc is None:
            return None
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of its group
        except ProcessLookupError:
            pass
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()
        return proc.returncode

    # --- bitsd ----------------------------------------------------------

    def start_bitsd(self, extra_args=(), config_text=None, timeout=10.0):
        """Start $BITSD on the private bus and wait until it owns its name.
        The state dir (<root>/state) survives restarts within one harness."""
        binary = os.environ.get('BITSD')
        if not binary:
            raise RuntimeError('BITSD is not set (path of the built bitsd)')
        if self._bitsd is not None and self._bitsd.poll() is None:
            raise RuntimeError('bitsd is already running')
        self.state_dir = self._mkdir('state', mode=0o700)
        self.bitsd_config = self._path('bitsd.conf')
        if config_text is not None or not os.path.exists(self.bitsd_config):
            with open(self.bitsd_config, 'w') as f:
                f.write(config_text or '')
        argv = [*binary.split(), '--bus-address=' + self.bus_address,
                '--state-dir=' + self.state_dir, '--config=' + self.bitsd_config,
                '--log-level=debug', *extra_args]
        with open(self._path('logs', 'bitsd.log'), 'ab') as logf:
            logf.write(b'--- harness: starting %s\n' % ' '.join(argv).encode())
        self._bitsd = self._spawn('bitsd', argv, log='bitsd.log')
        self._wait_owner(BUS_NAME, self._bitsd, 'bitsd.log', timeout=timeout)
        return self._bitsd

    @property
    def bitsd_pid(self):
        return self._bitsd.pid if self._bitsd else None

    def stop_bitsd(self, timeout=10):
        """SIGTERM and wait; returns the exit status (None if it was not running)."""
        return self._stop('bitsd', signal.SIGTERM, timeout)

    def kill_bitsd(self):
        """SIGKILL and wait, as a crash would."""
        return self._stop('bitsd', signal.SIGKILL)

    def bitsd_log(self):
        return self._read_log('bitsd.log')

    # --- running commands as users -------------------------------------

    def client(self, uid):
        """A bus client running as UID (0 = root), in its own process."""
        c = Client(uid, self.bus_address)
        self._clients.append(c)
        return c

    def run_as(self, uid, argv, check=False, timeout=60, **kw):
        """Run ARGV as UID via setpriv; returns a CompletedProcess (text output)."""
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus_address)
        env.pop(_NS_MARKER, None)
        if uid != 0:
            pw = pwd.getpwuid(uid)
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
            argv = ['setpriv', '--reuid=%d' % uid, '--regid=%d' % pw.pw_gid,
                    '--init-groups', '--'] + list(argv)
        kw.setdefault('capture_output', True)
        kw.setdefault('text', True)
        return subprocess.run(argv, env=kw.pop('env', env), check=check, timeout=timeout, **kw)

    def bitsctl(self, uid, *args, **kw):
        binary = os.environ.get('BITSCTL')
        if not binary:
            raise RuntimeError('BITSCTL is not set (path of the built bitsctl)')
        return self.run_as(uid, [binary, *args], **kw)

    # --- teardown -------------------------------------------------------

    def dump_bitsd_log(self, why):
        self.failed = True
        log = self.bitsd_log()
        if log:
            sys.stderr.write('\n--- %s; last 50 lines of bitsd log (%s) ---\n%s\n---\n'
                             % (why, self._path('logs', 'bitsd.log'), _tail(log)))
            self._log_dumped = True

    def close(self):
        # Safe to re-enter (the SIGTERM handler may interrupt a close in progress).
        if self.failed and self.root and not self._log_dumped:
            self.dump_bitsd_log('a test or the harness failed')
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients = []
        for name in reversed(list(self._procs)):
            self._stop(name, signal.SIGTERM, timeout=5)
        for target in reversed(self._mounts):
            subprocess.run(['umount', '--lazy', target], stderr=subprocess.DEVNULL)
        self._mounts = []
        os.environ.pop('DBUS_SYSTEM_BUS_ADDRESS', None)
        if self.root:
            if os.environ.get('BITS_KEEP') == '1':
                sys.stderr.write('harness: keeping %s\n' % self.root)
            else:
                shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        _live.discard(self)


def _port_open(port):
    with socket.socket() as s:
        return s.connect_ex(('127.0.0.1', port)) == 0


class HarnessTestCase(unittest.TestCase):
    """Base class: one Harness per test class, as self.h / cls.h.

    When a test fails, the tail of the bitsd log is printed right after it."""

    h = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.h = Harness().start()
        cls.addClassCleanup(cls.h.close)
        cls.addClassCleanup(cls._check_clean_exit)

    SANITIZER_MARKS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:')

    def assertBusError(self, names, fn, *args, **kw):
        """fn(*args, **kw) fails with the D-Bus error NAMES (a name, or any of several);
        returns the error."""
        names = (names,) if isinstance(names, str) else names
        with self.assertRaises(BusError) as cm:
            fn(*args, **kw)
        self.assertIn(cm.exception.name, names, 'message: %r' % cm.exception.message)
        return cm.exception

    @classmethod
    def _check_clean_exit(cls):
        """bitsd must stop cleanly on SIGTERM, and (in the sanitizer build) without any report."""
        h = cls.h
        if h is None or not h.root:
            return
        proc = h._procs.get('bitsd')
        running = proc is not None and proc.poll() is None
        status = h.stop_bitsd() if running else None  # one that already exited was the test's business
        log = h.bitsd_log()
        marks = [m for m in cls.SANITIZER_MARKS if m in log]
        if marks or status not in (0, None):
            h.dump_bitsd_log('bitsd did not exit cleanly (status %r, %s)' % (status, marks or 'no sanitizer report'))
            raise AssertionError('bitsd exit status %r on SIGTERM; sanitizer reports: %r' % (status, marks))

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result else 0
        outcome = super().run(result)
        failed = result is not None and len(result.failures) + len(result.errors) > before
        if failed and self.h is not None and self.h.root:
            self.h.dump_bitsd_log('%s failed' % self.id())
        return outcome
