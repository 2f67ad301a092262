#!/usr/bin/python3
"""Self-test of the integration harness; needs no bitsd.

Proves that the world the daemon's tests rely on is real: the project's bus
policy is what lets a name be owned, polkitd decides with the project's actions
and with test rules, users and logind state exist, clients run as their users,
and both HTTP servers do what the tests will script them to do.
"""

import grp
import hashlib
import http.client
import os
import pwd
import stat
import textwrap
import time
import urllib.error
import urllib.request

import harness
from harness import ADMIN, ALICE, BOB, BUS_NAME, BusError

MANAGE_ANY = 'org.freedesktop.bits1.manage-any-job'


def read(path):
    with open(path) as f:
        return f.read()


def fetch(url, headers=None, method='GET'):
    """→ (status, headers, body) without raising on HTTP errors."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class BusAndPolkit(harness.HarnessTestCase):

    def test_users_and_homes(self):
        self.assertEqual(pwd.getpwuid(ALICE).pw_name, 'alice')
        self.assertEqual(pwd.getpwnam('bob').pw_uid, BOB)
        self.assertIn('admin', grp.getgrnam('bitsadmin').gr_mem)
        st = os.stat(self.h.home(ALICE))
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (ALICE, 0o700))
        # The real /etc/passwd is untouched: our copy is a bind mount.
        self.assertIn(' /etc/passwd ', read('/proc/self/mounts').replace('\n', ' '))

    def test_sessions(self):
        self.assertIn('STATE=active', read('/run/systemd/users/%d' % ALICE))
        self.h.set_session(BOB, 'offline')
        self.assertIn('STATE=offline', read('/run/systemd/users/%d' % BOB))
        self.h.set_session(BOB, None)
        self.assertFalse(os.path.exists('/run/systemd/users/%d' % BOB))
        self.h.set_session(BOB, 'active')

    def test_clients_run_as_their_users(self):
        for uid in (ALICE, BOB, 0):
            c = self.h.client(uid)
            self.assertEqual(self.h.root_client.bus_call('GetConnectionUnixUser', 's',
                                                         c.unique_name), uid)
        r = self.h.run_as(BOB, ['id', '-u'])
        self.assertEqual(r.stdout.strip(), str(BOB))
        # busctl as alice finds the private bus through DBUS_SYSTEM_BUS_ADDRESS.
        r = self.h.run_as(ALICE, ['busctl', '--system', 'call', 'org.freedesktop.DBus',
                                  '/org/freedesktop/DBus', 'org.freedesktop.DBus', 'GetId'])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_bus_policy_is_the_projects(self):
        alice = self.h.client(ALICE)
        for uid in (ALICE, ADMIN):
            with self.assertRaises(BusError) as cm:
                self.h.client(uid).bus_call('RequestName', 'su', BUS_NAME, 0)
            self.assertEqual(cm.exception.name, 'org.freedesktop.DBus.Error.AccessDenied')

        owner = self.h.client(0)
        self.assertEqual(owner.bus_call('RequestName', 'su', BUS_NAME, 0), 1)  # primary owner
        try:
            # Anyone may send to the name, on any of its interfaces; the owner's
            # libdbus/dbus-python answers these.
            alice.call('/', 'org.freedesktop.DBus.Peer', 'Ping', '')
            self.assertIn('<node', alice.call('/', 'org.freedesktop.DBus.Introspectable',
                                              'Introspect', ''))
            with self.assertRaises(BusError) as cm:
                alice.manager('ListJobs', 't', 0)
            self.assertEqual(cm.exception.name, 'org.freedesktop.DBus.Error.UnknownMethod')
            # Typed variants and fds marshal through a client (the owner rejects them).
            r, w = os.pipe()
            for call in (lambda: alice.set('/', 'org.freedesktop.bits1.Job', 'CustomHeaders',
                                           'as', ['A: b']),
                         lambda: alice.job('/', 'SetHelperToken', 'h', harness.FdArg(r))):
                with self.assertRaises(BusError) as cm:
                    call()
                self.assertEqual(cm.exception.name, 'org.freedesktop.DBus.Error.UnknownMethod')
            os.close(r)
            os.close(w)
            # A root connection that does not own the name has no hole in the policy.
            with self.assertRaises(BusError) as cm:
                alice.call('/', 'org.freedesktop.DBus.Peer', 'Ping', '',
                           dest=self.h.root_client.unique_name)
            self.assertEqual(cm.exception.name, 'org.freedesktop.DBus.Error.AccessDenied')
        finally:
            owner.bus_call('ReleaseName', 's', BUS_NAME)

    def test_clients_record_unicast_signals(self):
        alice = self.h.client(ALICE)
        r = self.h.run_as(0, ['gdbus', 'emit', '--system', '--dest', alice.unique_name,
                              '--object-path', '/org/freedesktop/bits1/job/0',
                              '--signal', 'org.freedesktop.bits1.Job.Error',
                              "'transport'", "'curl:COULDNT_CONNECT'", "'no route'"])
        self.assertEqual(r.returncode, 0, r.stderr)
        s = alice.wait_signal('Error', path='/org/freedesktop/bits1/job/0', timeout=10)
        self.assertEqual(s['args'], ('transport', 'curl:COULDNT_CONNECT', 'no route'))
        self.assertEqual(alice.signals(), [])  # consumed
        with self.assertRaises(AssertionError):
            alice.wait_signal('Transferred', timeout=0.2)

    def test_polkit_actions_and_rules(self):
        root = self.h.root_client
        actions = root.call('/org/freedesktop/PolicyKit1/Authority',
                            'org.freedesktop.PolicyKit1.Authority', 'EnumerateActions', 's', '',
                            dest='org.freedesktop.PolicyKit1')
        ids = {a[0] for a in actions}
        self.assertLessEqual({MANAGE_ANY, 'org.freedesktop.bits1.take-ownership',
                              'org.freedesktop.bits1.manage-policy'}, ids)

        alice, admin = self.h.client(ALICE), self.h.client(ADMIN)
        # auth_admin_keep and no agent: not authorized, a challenge.
        self.assertEqual(self.h.polkit_check(alice.unique_name, MANAGE_ANY), (False, True))
        self.assertEqual(self.h.polkit_check(admin.unique_name, MANAGE_ANY), (False, True))

        self.h.write_polkit_rule('50-bits-admin.rules', textwrap.dedent('''\
            polkit.addRule(function(action, subject) {
                if (action.id == "%s" && subject.isInGroup("bitsadmin"))
                    return polkit.Result.YES;
            });
            ''' % MANAGE_ANY))
        try:
            self.assertEqual(self.h.polkit_check(admin.unique_name, MANAGE_ANY), (True, False))
            self.assertEqual(self.h.polkit_check(alice.unique_name, MANAGE_ANY), (False, True))
        finally:
            self.h.remove_polkit_rule('50-bits-admin.rules')
        self.assertEqual(self.h.polkit_check(admin.unique_name, MANAGE_ANY), (False, True))

    def test_start_stop_kill_bitsd_with_a_stand_in(self):
        # A stand-in daemon that owns the name like bitsd would: checks the
        # plumbing of start_bitsd/stop_bitsd/kill_bitsd and the log capture.
        fake = os.path.join(self.h.root, 'fake-bitsd.py')
        with open(fake, 'w') as f:
            f.write(textwrap.dedent('''\
                import sys, dbus, dbus.mainloop.glib
                from gi.repository import GLib
                args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
                dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
                bus = dbus.bus.BusConnection(args['bus-address'])
                if 'fail' in sys.argv:
                    sys.exit('fake bitsd: giving up on purpose')
                bus.request_name('org.freedesktop.bits1')
                print('fake bitsd: owning the name, state', args['state-dir'], file=sys.stderr)
                GLib.MainLoop().run()
                '''))
        old = os.environ.get('BITSD')
        os.environ['BITSD'] = '/usr/bin/python3 ' + fake
        try:
            self.h.start_bitsd()
            self.assertIsNotNone(self.h.name_owner(BUS_NAME))
            self.assertIn('fake bitsd: owning the name', self.h.bitsd_log())
            self.assertEqual(self.h.stop_bitsd(), -15)
            self.h.wait_for(lambda: self.h.name_owner(BUS_NAME) is None, timeout=5,
                            what='the name to be released')
            self.h.start_bitsd()
            self.assertEqual(self.h.kill_bitsd(), -9)
            with self.assertRaises(RuntimeError) as cm:
                self.h.start_bitsd(extra_args=['fail'])
            self.assertIn('giving up on purpose', str(cm.exception))
        finally:
            self.h.kill_bitsd()
            if old is None:
                os.environ.pop('BITSD')
            else:
                os.environ['BITSD'] = old


class HttpServers(harness.HarnessTestCase):

    def test_nginx_serves_made_file_with_ranges(self):
        size = 3 * (1 << 20) + 17
        digest = self.h.make_file('nginx', 'a.bin', size, seed=7)
        self.assertEqual(digest, harness.sha256_file(os.path.join(self.h.www, 'a.bin')))
        status, _, body = fetch(self.h.nginx_url('a.bin'))
        self.assertEqual((status, hashlib.sha256(body).hexdigest()), (200, digest))
        status, headers, part = fetch(self.h.nginx_url('a.bin'), {'Range': 'bytes=1048570-1048589'})
        self.assertEqual(status, 206)
        self.assertEqual(headers['Content-Range'], 'bytes 1048570-1048589/%d' % size)
        self.assertEqual(part, body[1048570:1048590])
        # Blocks differ (each has its own header), so misplaced data changes the hash.
        self.assertNotEqual(body[:1 << 20], body[1 << 20:2 << 20])

    def test_fault_ranges_and_if_range(self):
        h = self.h
        digest = h.make_file('fault', 'r.bin', 100_000, seed=1)
        url = h.fault_url('r.bin')
        status, headers, body = fetch(url)
        self.assertEqual((status, hashlib.sha256(body).hexdigest()), (200, digest))
        self.assertEqual(headers['Accept-Ranges'], 'bytes')
        etag, lm = headers['ETag'], headers['Last-Modified']

        for rng, (a, b) in (('bytes=10-19', (10, 19)), ('bytes=99990-', (99990, 99999)),
                            ('bytes=-5', (99995, 99999)), ('bytes=99990-200000', (99990, 99999))):
            status, hd, part = fetch(url, {'Range': rng})
            self.assertEqual(status, 206, rng)
            self.assertEqual(hd['Content-Range'], 'bytes %d-%d/100000' % (a, b))
            self.assertEqual(part, body[a:b + 1])
        status, hd, _ = fetch(url, {'Range': 'bytes=100000-'})
        self.assertEqual((status, hd['Content-Range']), (416, 'bytes */100000'))

        self.assertEqual(fetch(url, {'Range': 'bytes=5-', 'If-Range': etag})[0], 206)
        self.assertEqual(fetch(url, {'Range': 'bytes=5-', 'If-Range': lm})[0], 206)
        status, _, full = fetch(url, {'Range': 'bytes=5-', 'If-Range': '"other"'})
        self.assertEqual((status, full), (200, body))
        status, _, full = fetch(url, {'Range': 'bytes=5-', 'If-Range': 'Mon, 01 Jan 2001 00:00:00 GMT'})
        self.assertEqual((status, full), (200, body))
        status, hd, full = fetch(h.fault_url('r.bin', noranges=1), {'Range': 'bytes=5-'})
        self.assertEqual((status, full, hd['Accept-Ranges']), (200, body, None))

        status, hd, nobody = fetch(url, method='HEAD')
        self.assertEqual((status, hd['Content-Length'], nobody), (200, '100000', b''))

    def test_fault_replace_changes_etag(self):
        h = self.h
        h.make_file('fault', 'c.bin', 50_000, seed=1)
        _, headers, _ = fetch(h.fault_url('c.bin'))
        new_digest = h.fault_replace('c.bin', 60_000, seed=2)
        status, headers2, body = fetch(h.fault_url('c.bin'),
                                       {'Range': 'bytes=100-', 'If-Range': headers['ETag']})
        self.assertNotEqual(headers['ETag'], headers2['ETag'])
        self.assertEqual((status, hashlib.sha256(body).hexdigest()), (200, new_digest))

    def test_fault_status_retry_after_and_fail_first(self):
        h = self.h
        h.make_file('fault', 's.bin', 1000)
        status, headers, _ = fetch(h.fault_url('s.bin', status=503, retry_after=7))
        self.assertEqual((status, headers['Retry-After']), (503, '7'))
        self.assertEqual(fetch(h.fault_url('s.bin', status=404))[0], 404)
        self.assertEqual(fetch(h.fault_url('missing.bin'))[0], 404)

        h.fault_reset()
        url = h.fault_url('s.bin', fail_first=2, fail_status=500)
        self.assertEqual([fetch(url)[0] for _ in range(3)], [500, 500, 200])
        url = h.fault_url('s.bin', fail_first=1)  # another URL: its own counter
        self.assertEqual([fetch(url)[0] for _ in range(2)], [503, 200])
        log = h.fault_log()
        self.assertEqual([e['status'] for e in log], [500, 500, 200, 503, 200])
        self.assertEqual(log[0]['query'], 'fail_first=2&fail_status=500')
        h.fault_reset()
        self.assertEqual(h.fault_log(), [])
        self.assertEqual(fetch(h.fault_url('s.bin', fail_first=2, fail_status=500))[0], 500)

    def test_fault_disconnect_keepalive_rate_and_hang(self):
        h = self.h
        digest = h.make_file('fault', 'd.bin', 200_000, seed=3)
        h.fault_reset()
        conn = http.client.HTTPConnection('127.0.0.1', h.fault_port, timeout=10)
        path = h.fault_url('d.bin', disconnect_after=1000)[len('http://127.0.0.1:%d' % h.fault_port):]
        conn.request('GET', path)
        resp = conn.getresponse()
        self.assertEqual(resp.getheader('Content-Length'), '200000')
        with self.assertRaises(http.client.IncompleteRead) as cm:
            resp.read()
        self.assertEqual(len(cm.exception.partial), 1000)
        conn.close()

        # Keep-alive: two requests, one connection, a Range on the second.
        conn = http.client.HTTPConnection('127.0.0.1', h.fault_port, timeout=10)
        conn.request('GET', '/f/d.bin')
        whole = conn.getresponse().read()
        conn.request('GET', '/f/d.bin', headers={'Range': 'bytes=199000-'})
        self.assertEqual(conn.getresponse().read(), whole[199000:])
        conn.close()
        self.assertEqual(hashlib.sha256(whole).hexdigest(), digest)
        log = h.fault_log()
        self.assertEqual(log[0]['bytes_sent'], 1000)
        self.assertEqual(log[1]['client_port'], log[2]['client_port'])
        self.assertEqual(log[2]['range'], 'bytes=199000-')

        began = time.monotonic()
        status, _, body = fetch(h.fault_url('d.bin', rate=400_000))
        self.assertEqual((status, len(body)), (200, 200_000))
        self.assertGreaterEqual(time.monotonic() - began, 0.45)  # 0.5 s at that rate

        conn = http.client.HTTPConnection('127.0.0.1', h.fault_port, timeout=0.3)
        conn.request('GET', '/f/d.bin?hang=1')
        with self.assertRaises(TimeoutError):
            conn.getresponse()
        conn.close()


if __name__ == '__main__':
    harness.main()
