#!/usr/bin/python3
"""Authorization, sessions and limits of bitsd, as the users of the machine see them.

polkit (the real polkitd on the private bus, rules written per test): manage-any-job decides
whether a caller sees other users' jobs; without it a foreign job does not exist for the caller
(NotFound, UnknownObject, exactly as for an id never created, in name, message and timing);
ListJobs(1) answers InteractiveAuthorizationRequired or AccessDenied depending on the
allow-interactive flag; a slow polkitd, a client that leaves while its check is pending, and a
missing polkitd leave the daemon healthy and deny. Root never asks polkit.

Sessions: a regular user's jobs transfer only while the user has a logind session (active,
online, lingering), unless RequireOwnerSession=no; root and system users always transfer.

Limits: MaxJobsPerUser, MaxJobsPerMachine, MaxFilesPerJob and the string lengths, each with its
own error, root exempt from the counts.
"""

import json
import os
import signal
import statistics
import subprocess
import time
import uuid

import harness
from harness import (ADMIN, ALICE, BOB, FILE_IFACE, JOB_IFACE, MANAGER_IFACE, MANAGER_PATH,
                     BusError, sha256_file)

ERR = 'org.freedesktop.bits1.Error.'
NOT_FOUND = ERR + 'NotFound'
ACCESS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied'
INTERACTIVE = 'org.freedesktop.DBus.Error.InteractiveAuthorizationRequired'
UNKNOWN_OBJECT = 'org.freedesktop.DBus.Error.UnknownObject'
INTROSPECTABLE = 'org.freedesktop.DBus.Introspectable'
OBJECT_MANAGER = 'org.freedesktop.DBus.ObjectManager'
JOB_PREFIX = '/org/freedesktop/bits1/job/'
MANAGE_ANY = 'org.freedesktop.bits1.manage-any-job'

ADMIN_RULE = '''polkit.addRule(function(action, subject) {
    if (action.id == "org.freedesktop.bits1.manage-any-job" && subject.isInGroup("bitsadmin"))
        return polkit.Result.YES;
});
'''
NO_FOR_ADMIN_RULE = '''polkit.addRule(function(action, subject) {
    if (action.id == "org.freedesktop.bits1.manage-any-job" && subject.user == "admin")
        return polkit.Result.NO;
});
'''
# A slow polkit for bob: the rule runs a sleep before answering. The odd duration names
# the process, so the test sees when the check is in flight.
SLOW_SLEEP = '2.345'
SLOW_FOR_BOB_RULE = '''polkit.addRule(function(action, subject) {
    if (action.id == "org.freedesktop.bits1.manage-any-job" && subject.user == "bob") {
        polkit.spawn(["/bin/sleep", "%s"]);
        return polkit.Result.NO;
    }
});
''' % SLOW_SLEEP

# Two ListJobs(1) on one connection, at once: without, then with ALLOW_INTERACTIVE_AUTHORIZATION.
TWO_CALLS = '''
import json
from gi.repository import Gio, GLib
bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
loop = GLib.MainLoop()
results = {}
def done(conn, res, interactive):
    try:
        conn.call_finish(res)
        results[interactive] = "ok"
    except GLib.Error as e:
        results[interactive] = Gio.DBusError.get_remote_error(e)
    if len(results) == 2:
        loop.quit()
for interactive in (False, True):
    flags = Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else Gio.DBusCallFlags.NONE
    bus.call("org.freedesktop.bits1", "/org/freedesktop/bits1", "org.freedesktop.bits1.Manager",
             "ListJobs", GLib.Variant("(t)", (1,)), None, flags, 30000, None, done, interactive)
loop.run()
print(json.dumps(sorted(results.items())))
'''

LIST_ALL = ['org.freedesktop.bits1', MANAGER_PATH, MANAGER_IFACE, 'ListJobs']


class AuthCase(harness.HarnessTestCase):
    config_text = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.h.start_bitsd(config_text=cls.config_text)
        cls.root = cls.h.client(0)

    @property
    def n(self):
        return self._testMethodName

    def fresh(self, uid):
        """A new connection (a new unique name: no cached polkit decision)."""
        c = self.h.client(uid)
        self.addCleanup(c.close)
        return c

    def mkdir(self, path, uid, mode=0o755):
        os.makedirs(path, exist_ok=True)
        os.chown(path, uid, uid)
        os.chmod(path, mode)
        return path

    def userdir(self, uid, name='dl'):
        self.mkdir(os.path.join(self.h.home(uid), self.n), uid)
        return self.mkdir(os.path.join(self.h.home(uid), self.n, name), uid)

    def rootdir(self):
        path = os.path.join(self.h.root, 'rootdl', self.n)
        os.makedirs(path, exist_ok=True)
        os.chmod(os.path.dirname(path), 0o755)
        os.chmod(path, 0o755)
        return path

    def new_job(self, c, name=None):
        job_id, path = c.manager('CreateJob', 'ss', name or self.n, 'download')
        self.addCleanup(self.cancel_quietly, c, path)
        return job_id, path

    @staticmethod
    def cancel_quietly(c, path):
        try:
            c.job(path, 'Cancel')
        except (BusError, RuntimeError):
            pass

    def polkit_rule(self, name, js):
        self.h.write_polkit_rule(name, js)
        self.addCleanup(self.remove_rule_if_present, name)

    def remove_rule_if_present(self, name):
        if os.path.exists(os.path.join(self.h.polkit_rules_dir, name)):
            self.h.remove_polkit_rule(name)

    def assert_running(self):
        self.assertIsNone(self.h._bitsd.poll(), 'bitsd exited; log:\n' +
                          harness._tail(self.h.bitsd_log()))


class BusMonitor:
    """`busctl monitor --json=short` on bitsd's traffic, as root, for the length of a block."""

    def __init__(self, h):
        self.h = h
        self.path = os.path.join(h.root, 'monitor-%d.json' % time.monotonic_ns())

    def __enter__(self):
        self.out = open(self.path, 'w')
        self.proc = subprocess.Popen(['busctl', 'monitor', '--json=short', 'org.freedesktop.bits1'],
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.h.bus_address))
        self.h.wait_for(lambda: 'Monitoring bus message stream.' in self.text(), timeout=10,
                        what='busctl monitor to start')
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        self.out.close()

    def text(self):
        with open(self.path) as f:
            return f.read()

    def messages(self):
        return [json.loads(line) for line in self.text().splitlines() if line.startswith('{')]

    def wait(self, select, n, what):
        return self.h.wait_for(lambda: len(select(self.messages())) >= n and
                               select(self.messages()), timeout=10, what=what)


# =============================================================================

class Polkit(AuthCase):
    """manage-any-job through the real polkitd; one bitsd, rules per test."""

    def jobs_of_alice_and_bob(self):
        alice, bob = self.fresh(ALICE), self.fresh(BOB)
        d = self.userdir(ALICE)
        a_id, a_job = self.new_job(alice, 'alice-' + self.n)
        alice.job(a_job, 'AddFile', 'ss', self.h.nginx_url('auth-a.bin'), d + '/a.bin')
        b_id, b_job = self.new_job(bob, 'bob-' + self.n)
        return alice, bob, (a_id, a_job), (b_id, b_job)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.digest = cls.h.make_file('nginx', 'auth-a.bin', 100_000, seed=3)
        cls.slow_digest = cls.h.make_file('fault', 'auth-slow.bin', 1_000_000, seed=4)

    # --- 1. the default policy: a challenge ------------------------------------

    def test_list_all_default_policy_interactive_flag(self):
        alice, _, _, _ = self.jobs_of_alice_and_bob()
        # python-dbus does not set ALLOW_INTERACTIVE_AUTHORIZATION: polkit's default
        # (auth_admin_keep) is a challenge the caller did not allow.
        e_ni = self.assertBusError(INTERACTIVE, alice.manager, 'ListJobs', 't', 1)
        self.assertIn(MANAGE_ANY, e_ni.message)
        # Asked again (a cached decision now): the same answer.
        e2 = self.assertBusError(INTERACTIVE, alice.manager, 'ListJobs', 't', 1)
        self.assertEqual(e2.message, e_ni.message)
        own = alice.manager('ListJobs', 't', 0)
        self.assertEqual([r[4] for r in own], [ALICE])

        # gdbus: -i sets the flag; there is no agent, so polkit cannot authenticate → denied.
        gd = ['gdbus', 'call', '--system', '--dest', 'org.freedesktop.bits1', '--object-path',
              MANAGER_PATH, '--method', MANAGER_IFACE + '.ListJobs', '1']
        r = self.h.run_as(ALICE, gd + ['-i'])
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn('GDBus.Error:' + ACCESS_DENIED + ':', r.stderr)
        denied_msg = r.stderr.split(ACCESS_DENIED + ':', 1)[1].strip()
        self.assertIn(MANAGE_ANY, denied_msg)
        r = self.h.run_as(ALICE, gd)
        self.assertIn('GDBus.Error:' + INTERACTIVE + ':', r.stderr)

        # busctl allows interactive authorization by default (--allow-interactive-authorization
        # defaults to yes). busctl prints only a message ("Access denied" for both names), so
        # a bus monitor shows what travelled: the call's flag, bitsd's polkit question and the
        # error name of the answer.
        variants = {'default': [], 'yes': ['--allow-interactive-authorization=yes'],
                    'no': ['--allow-interactive-authorization=no']}
        with BusMonitor(self.h) as mon:
            for args in variants.values():
                r = self.h.run_as(ALICE, ['busctl', *args, 'call', *LIST_ALL, 't', '1'])
                self.assertEqual(r.returncode, 1, (r.stdout, r.stderr))
                self.assertEqual(r.stdout, '')
            calls = mon.wait(lambda msgs: [m for m in msgs if m.get('member') == 'ListJobs'],
                             n=3, what='the three busctl calls')
            answers = mon.wait(
                lambda msgs: [(c, m) for c in calls for m in msgs
                              if m['type'] == 'error' and m.get('reply_cookie') == c['cookie']
                              and m.get('destination') == c['sender']],
                n=3, what="bitsd's answers")
            checks = {m['payload']['data'][0][1]['name']['data']: m['payload']['data'][3]
                      for m in mon.messages() if m.get('member') == 'CheckAuthorization'}
        got = {}
        for (c, answer), name in zip(answers, variants):
            got[name] = (c['flags'] & 4, checks.get(c['sender']), answer['error_name'])
        self.assertEqual(got, {'default': (4, 1, ACCESS_DENIED),
                               'yes': (4, 1, ACCESS_DENIED),
                               'no': (0, 0, INTERACTIVE)})

    # --- 2. a rule for the bitsadmin group ---------------------------------------

    def test_admin_group_rule_grants_manage_any_job(self):
        self.polkit_rule('50-bitsadmin.rules', ADMIN_RULE)
        alice, bob, (a_id, a_job), (b_id, b_job) = self.jobs_of_alice_and_bob()
        admin = self.fresh(ADMIN)

        rows = {r[0]: r for r in admin.manager('ListJobs', 't', 1)}
        self.assertEqual(rows[a_id], (a_id, a_job, 'alice-' + self.n, 'suspended', ALICE))
        self.assertEqual(rows[b_id], (b_id, b_job, 'bob-' + self.n, 'suspended', BOB))
        self.assertEqual(admin.manager('GetJob', 's', a_id), a_job)
        self.assertEqual(admin.manager('GetJob', 's', b_id.replace('-', '')), b_job)
        self.assertEqual(admin.job_prop(a_job, 'Owner'), ALICE)
        self.assertEqual(admin.job_prop(a_job, 'DisplayName'), 'alice-' + self.n)
        self.assertEqual(admin.job(a_job, 'ListFiles'), [a_job + '/file/0'])
        self.assertEqual(admin.file_prop(a_job + '/file/0', 'RemoteName'),
                         self.h.nginx_url('auth-a.bin'))
        xml = admin.call(a_job, INTROSPECTABLE, 'Introspect')
        self.assertIn('interface name="org.freedesktop.bits1.Job"', xml)
        self.assertIn('node name="file/0"', xml)
        managed = admin.call(MANAGER_PATH, OBJECT_MANAGER, 'GetManagedObjects')
        self.assertIn(a_job, managed)
        self.assertIn(b_job, managed)

        admin.set(a_job, JOB_IFACE, 'DisplayName', 's', 'renamed by admin')
        self.assertEqual(alice.job_prop(a_job, 'DisplayName'), 'renamed by admin')
        # Resume: alice's file arrives, owned by alice.
        admin.job(a_job, 'Resume')
        alice.wait_job_state(a_job, 'transferred')
        admin.job(a_job, 'Suspend')
        self.assertEqual(alice.job_prop(a_job, 'State'), 'suspended')
        admin.job(a_job, 'Resume')
        self.assertEqual(alice.wait_job_state(a_job, 'transferred'), 'transferred')
        admin.job(a_job, 'Cancel')
        self.assertEqual(alice.job_prop(a_job, 'State'), 'cancelled')
        self.assertBusError(NOT_FOUND, alice.manager, 'GetJob', 's', a_id)
        self.assertEqual(os.listdir(self.userdir(ALICE)), [])

        # The rule is for bitsadmin only: alice still cannot see bob's job.
        self.assertBusError(NOT_FOUND, alice.manager, 'GetJob', 's', b_id)
        self.assertBusError(UNKNOWN_OBJECT, alice.job_prop, b_job, 'State')
        self.assertBusError(INTERACTIVE, alice.manager, 'ListJobs', 't', 1)

        # Rule gone: a new connection of admin no longer sees them ...
        self.h.remove_polkit_rule('50-bitsadmin.rules')
        admin2 = self.fresh(ADMIN)
        self.assertBusError(INTERACTIVE, admin2.manager, 'ListJobs', 't', 1)
        self.assertBusError(NOT_FOUND, admin2.manager, 'GetJob', 's', b_id)
        self.assertBusError(UNKNOWN_OBJECT, admin2.job_prop, b_job, 'State')
        self.assertBusError(UNKNOWN_OBJECT, admin2.call, b_job, INTROSPECTABLE, 'Introspect')
        # ... and the old one loses them once its decision (5 s) is stale.
        t0 = time.monotonic()

        def revoked():
            try:
                admin.job_prop(b_job, 'State')
                return False
            except BusError as e:
                self.assertEqual(e.name, UNKNOWN_OBJECT)
                return True
        self.h.wait_for(revoked, timeout=10, interval=0.2, what='admin to lose manage-any-job')
        self.assertLess(time.monotonic() - t0, 7)
        self.assertBusError(INTERACTIVE, admin.manager, 'ListJobs', 't', 1)
        self.assertBusError(NOT_FOUND, admin.manager, 'GetJob', 's', b_id)
        self.assertEqual(bob.job_prop(b_job, 'DisplayName'), 'bob-' + self.n)

    # --- 3. without a rule: a foreign job is a missing job -------------------

    def test_foreign_job_is_indistinguishable_from_missing(self):
        alice, bob, (a_id, a_job), _ = self.jobs_of_alice_and_bob()
        missing_id = str(uuid.uuid4())
        missing = JOB_PREFIX + missing_id.replace('-', '')

        e1 = self.assertBusError(NOT_FOUND, bob.manager, 'GetJob', 's', a_id)
        e2 = self.assertBusError(NOT_FOUND, bob.manager, 'GetJob', 's', missing_id)
        self.assertIn(a_id, e1.message)
        self.assertEqual(e1.message.replace(a_id, 'ID'), e2.message.replace(missing_id, 'ID'))
        self.assertNotIn(a_job, [r[1] for r in bob.manager('ListJobs', 't', 0)])
        managed = bob.call(MANAGER_PATH, OBJECT_MANAGER, 'GetManagedObjects')
        self.assertFalse([p for p in managed if p.startswith(a_job)], managed)
        listing = bob.call(JOB_PREFIX.rstrip('/'), INTROSPECTABLE, 'Introspect')
        self.assertNotIn(a_job.rsplit('/', 1)[1], listing)

        # A final job of alice's (still on the bus for FinalJobRetentionSec) is no different.
        _, a_done = self.new_job(alice, 'cancelled')
        alice.job(a_done, 'Cancel')
        self.assertEqual(alice.job_prop(a_done, 'State'), 'cancelled')

        d_bob = self.userdir(BOB)
        attempts = {
            'Get State': lambda p: bob.job_prop(p, 'State'),
            'GetAll': lambda p: bob.get_all(p, JOB_IFACE),
            'Set DisplayName': lambda p: bob.set(p, JOB_IFACE, 'DisplayName', 's', 'pwned'),
            'Introspect': lambda p: bob.call(p, INTROSPECTABLE, 'Introspect'),
            'Suspend': lambda p: bob.job(p, 'Suspend'),
            'Resume': lambda p: bob.job(p, 'Resume'),
            'Cancel': lambda p: bob.job(p, 'Cancel'),
            'Complete': lambda p: bob.job(p, 'Complete'),
            'ListFiles': lambda p: bob.job(p, 'ListFiles'),
            'AddFile': lambda p: bob.job(p, 'AddFile', 'ss', self.h.nginx_url('auth-a.bin'),
                                         d_bob + '/x'),
            'File Get': lambda p: bob.file_prop(p + '/file/0', 'RemoteName'),
            'File GetAll': lambda p: bob.get_all(p + '/file/0', FILE_IFACE),
            'File Set': lambda p: bob.set(p + '/file/0', FILE_IFACE, 'RemoteName', 's', 'x'),
            'File Introspect': lambda p: bob.call(p + '/file/0', INTROSPECTABLE, 'Introspect'),
            'File SetRemoteName': lambda p: bob.call(p + '/file/0', FILE_IFACE, 'SetRemoteName',
                                                     's', 'http://evil/'),
            'File SetExpectedHash': lambda p: bob.call(p + '/file/0', FILE_IFACE,
                                                       'SetExpectedHash', 'ss', 'sha256',
                                                       '0' * 64),
        }
        for what, attempt in attempts.items():
            with self.subTest(bob=what):
                with self.assertRaises(BusError) as cm:
                    attempt(a_job)
                with self.assertRaises(BusError) as cm2:
                    attempt(missing)
                with self.assertRaises(BusError) as cm3:
                    attempt(a_done)
                self.assertEqual(cm.exception.name, UNKNOWN_OBJECT, cm.exception.message)
                self.assertEqual(
                    (cm.exception.name, cm.exception.message.replace(a_job, 'P')),
                    (cm2.exception.name, cm2.exception.message.replace(missing, 'P')))
                self.assertEqual(
                    (cm3.exception.name, cm3.exception.message.replace(a_done, 'P')),
                    (cm2.exception.name, cm2.exception.message.replace(missing, 'P')))
        # Nothing changed for alice.
        self.assertEqual(alice.job_prop(a_job, 'State'), 'suspended')
        self.assertEqual(alice.job_prop(a_job, 'DisplayName'), 'alice-' + self.n)
        self.assertEqual(alice.job_prop(a_job, 'FilesTotal'), 1)
        self.assertEqual(alice.file_prop(a_job + '/file/0', 'RemoteName'),
                         self.h.nginx_url('auth-a.bin'))
        self.assertEqual(os.listdir(d_bob), [])

        # Timing: interleaved, right after one call that refreshed bob's decision.
        def timed(job_id):
            t = time.monotonic()
            with self.assertRaises(BusError) as cm:
                bob.manager('GetJob', 's', job_id)
            self.assertEqual(cm.exception.name, NOT_FOUND)
            return time.monotonic() - t
        bob = self.fresh(BOB)
        timed(missing_id)
        foreign, absent = [], []
        for _ in range(20):
            foreign.append(timed(a_id))
            absent.append(timed(str(uuid.uuid4())))
        mf, ma = statistics.mean(foreign), statistics.mean(absent)
        print('\nGetJob latency: foreign mean %.2f ms median %.2f ms; missing mean %.2f ms '
              'median %.2f ms' % (mf * 1e3, statistics.median(foreign) * 1e3, ma * 1e3,
                                  statistics.median(absent) * 1e3))
        self.assertLess(mf, 0.05)
        self.assertLess(ma, 0.05)
        # Within a factor of 3; below a millisecond, scheduler noise is allowed for.
        self.assertLess(abs(mf - ma), max(2 * min(mf, ma), 0.001))
        mdf, mda = statistics.median(foreign), statistics.median(absent)
        self.assertLess(max(mdf, mda) / min(mdf, mda), 3)

    # --- 4. a rule that says no --------------------------------------------------

    def test_rule_result_no_is_access_denied(self):
        self.polkit_rule('50-no-admin.rules', NO_FOR_ADMIN_RULE)
        alice, _, (a_id, a_job), _ = self.jobs_of_alice_and_bob()
        admin = self.fresh(ADMIN)
        e = self.assertBusError(ACCESS_DENIED, admin.manager, 'ListJobs', 't', 1)
        self.assertIn(MANAGE_ANY, e.message)
        self.assertBusError(NOT_FOUND, admin.manager, 'GetJob', 's', a_id)
        self.assertBusError(UNKNOWN_OBJECT, admin.job_prop, a_job, 'State')
        self.assertBusError(UNKNOWN_OBJECT, admin.set, a_job, JOB_IFACE, 'DisplayName', 's', 'x')
        r = self.h.run_as(ADMIN, ['gdbus', 'call', '--system', '--dest', 'org.freedesktop.bits1',
                                  '--object-path', MANAGER_PATH, '--method',
                                  MANAGER_IFACE + '.ListJobs', '1', '-i'])
        self.assertIn('GDBus.Error:' + ACCESS_DENIED + ':', r.stderr)
        self.assertEqual(alice.job_prop(a_job, 'DisplayName'), 'alice-' + self.n)

    # --- 5. a slow polkit and a caller that leaves meanwhile ---------------------

    def _popen_as(self, uid, argv):
        pw = harness.pwd.getpwuid(uid)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.h.bus_address)
        env.pop(harness._NS_MARKER, None)
        p = subprocess.Popen(['setpriv', '--reuid=%d' % uid, '--regid=%d' % pw.pw_gid,
                              '--init-groups', '--'] + argv, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self._reap, p)
        return p

    @staticmethod
    def _reap(p):
        if p.poll() is None:
            p.kill()
        p.wait()

    @staticmethod
    def slow_checks():
        """PIDs of the rule's sleep processes (a check of bob's is being decided)."""
        out = []
        for pid in os.listdir('/proc'):
            if not pid.isdigit():
                continue
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    if f.read().split(b'\0')[:2] == [b'/bin/sleep', SLOW_SLEEP.encode()]:
                        out.append(int(pid))
            except OSError:
                pass
        return out

    def test_client_leaving_during_slow_polkit_check(self):
        self.polkit_rule('50-slow-bob.rules', SLOW_FOR_BOB_RULE)
        alice, _, (a_id, a_job), (b_id, b_job) = self.jobs_of_alice_and_bob()
        # bob asks for everything, and pokes alice's job path, then leaves before polkit answers.
        lister = self._popen_as(BOB, ['busctl', '--timeout=30', 'call', *LIST_ALL, 't', '1'])
        self.h.wait_for(self.slow_checks, timeout=10, what="polkit deciding bob's check")
        with BusMonitor(self.h) as mon:
            poker = self._popen_as(BOB, ['busctl', '--timeout=30', 'get-property',
                                         'org.freedesktop.bits1', a_job, JOB_IFACE, 'State'])
            mon.wait(lambda msgs: [m for m in msgs if m.get('path') == a_job], n=1,
                     what="bob's Get to reach bitsd")
        self.assertIsNone(poker.poll(), 'bob got an answer before polkit decided')
        self.assertIsNone(lister.poll(), 'bob got an answer before polkit decided')
        lister.kill()
        poker.kill()
        lister.wait()
        poker.wait()

        # Others are served meanwhile, promptly.
        self.assertTrue(self.slow_checks(), 'polkit answered too early for this test')
        for what, call in (
                ('CreateJob', lambda: self.new_job(alice, 'meanwhile')),
                ('Get own State', lambda: alice.job_prop(a_job, 'State')),
                ('ListJobs(0)', lambda: alice.manager('ListJobs', 't', 0)),
                ('root ListJobs(1)', lambda: self.root.manager('ListJobs', 't', 1))):
            t = time.monotonic()
            call()
            self.assertLess(time.monotonic() - t, 1.0, what)

        # polkit answers the dead callers; the daemon stays healthy.
        self.h.wait_for(lambda: not self.slow_checks(), timeout=20,
                        what="polkit to finish bob's checks")
        self.assert_running()
        bob2 = self.fresh(BOB)
        self.assertEqual(bob2.job_prop(b_job, 'State'), 'suspended')
        _, b2 = self.new_job(bob2, 'after')
        self.assertEqual(bob2.job_prop(b2, 'Owner'), BOB)
        t = time.monotonic()
        self.assertBusError(ACCESS_DENIED, bob2.manager, 'ListJobs', 't', 1)
        self.assertGreater(time.monotonic() - t, 1.5)  # the rule ran (and said no)
        self.assertBusError(NOT_FOUND, bob2.manager, 'GetJob', 's', a_id)
        self.assertEqual(alice.job_prop(a_job, 'State'), 'suspended')
        self.assertEqual(len(self.fresh(ALICE).manager('ListJobs', 't', 0)), 2)
        self.assert_running()

    def test_interactive_call_while_a_plain_one_is_pending(self):
        # One connection (a GUI, say) sends ListJobs(1) without and then with the
        # allow-interactive flag while polkit still decides the first: each gets polkit's
        # answer (here NO: AccessDenied), neither an error about the daemon's bookkeeping.
        self.polkit_rule('50-slow-bob.rules', SLOW_FOR_BOB_RULE)
        script = os.path.join(self.h.root, 'two-calls.py')
        with open(script, 'w') as f:
            f.write(TWO_CALLS)
        os.chmod(script, 0o644)
        r = self.h.run_as(BOB, ['/usr/bin/python3', script], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), [[False, ACCESS_DENIED], [True, ACCESS_DENIED]])
        self.assert_running()

    # --- 6. no polkitd at all ----------------------------------------------------

    def test_polkitd_gone_is_a_denial_root_still_works(self):
        alice, bob, (a_id, a_job), (b_id, b_job) = self.jobs_of_alice_and_bob()
        self.addCleanup(self.h.restart_polkitd)
        self.h._stop('polkitd', signal.SIGTERM)
        self.h.wait_for(lambda: self.h.name_owner('org.freedesktop.PolicyKit1') is None,
                        what='polkitd to leave the bus')
        alice = self.fresh(ALICE)
        t = time.monotonic()
        e = self.assertBusError(ACCESS_DENIED, alice.manager, 'ListJobs', 't', 1)
        self.assertLess(time.monotonic() - t, 5)
        self.assertIn(MANAGE_ANY, e.message)
        self.assertBusError(NOT_FOUND, alice.manager, 'GetJob', 's', b_id)
        self.assertBusError(UNKNOWN_OBJECT, alice.job_prop, b_job, 'State')
        self.assertEqual(alice.job_prop(a_job, 'State'), 'suspended')  # her own: no polkit
        rows = {r[0]: r[4] for r in self.root.manager('ListJobs', 't', 1)}
        self.assertEqual((rows.get(a_id), rows.get(b_id)), (ALICE, BOB))
        self.assertEqual(self.root.manager('GetJob', 's', b_id), b_job)
        self.assertEqual(self.root.job_prop(a_job, 'Owner'), ALICE)
        self.assert_running()


# =============================================================================

class Sessions(AuthCase):
    """RequireOwnerSession=yes (the default): logind's user state decides."""

    RATE = 200_000
    SIZE = 1_600_000

    def setUp(self):
        for uid in harness.USERS:
            self.addCleanup(self.h.set_session, uid, 'active')

    def bytes_of(self, c, job):
        return c.job_prop(job, 'BytesTransferred')

    def moving(self, c, job, timeout=10):
        b0 = self.bytes_of(c, job)
        return self.h.wait_for(lambda: self.bytes_of(c, job) > b0 and
                               c.job_prop(job, 'State') == 'transferring',
                               timeout=timeout, what='bytes to move')

    def stays(self, c, job, state, seconds=1.0):
        """Bounded wait showing that the job does NOT move: same state, same bytes."""
        b0 = self.bytes_of(c, job)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.assertEqual(c.job_prop(job, 'State'), state)
            self.assertEqual(self.bytes_of(c, job), b0)
            time.sleep(0.1)
        return b0

    def test_defaults_of_the_limits(self):
        c = self.fresh(ALICE)
        got = {p: c.get(MANAGER_PATH, MANAGER_IFACE, p) for p in
               ('MaxJobsPerUser', 'MaxJobsPerMachine', 'MaxFilesPerJob', 'MaxRangesPerFile')}
        self.assertEqual(got, {'MaxJobsPerUser': 60, 'MaxJobsPerMachine': 300,
                               'MaxFilesPerJob': 200, 'MaxRangesPerFile': 500})

    def test_logout_queues_and_login_resumes(self):
        alice = self.fresh(ALICE)
        digest = self.h.make_file('fault', self.n + '.bin', self.SIZE, seed=7)
        small = self.h.make_file('nginx', self.n + '-small.bin', 50_000, seed=8)
        d = self.userdir(ALICE)
        _, job = self.new_job(alice)
        alice.job(job, 'AddFile', 'ss', self.h.fault_url(self.n + '.bin', rate=self.RATE),
                  d + '/big.bin')
        self.h.fault_reset()
        alice.job(job, 'Resume')
        self.moving(alice, job)

        # Logout: back to queued, bytes stop.
        self.h.set_session(ALICE, None)
        alice.wait_job_state(job, 'queued', timeout=5)
        stopped_at = self.stays(alice, job, 'queued')
        self.assertGreater(stopped_at, 0)
        self.assertLess(stopped_at, self.SIZE)
        # A new job of hers does not start either.
        _, job2 = self.new_job(alice, 'second')
        alice.job(job2, 'AddFile', 'ss', self.h.nginx_url(self.n + '-small.bin'), d + '/s.bin')
        alice.job(job2, 'Resume')
        self.stays(alice, job2, 'queued', seconds=0.5)
        # Root's job and a system user's run regardless.
        rd = self.rootdir()
        _, rjob = self.new_job(self.root, 'root')
        self.root.job(rjob, 'AddFile', 'ss', self.h.nginx_url(self.n + '-small.bin'),
                      rd + '/r.bin')
        self.root.job(rjob, 'Resume')
        self.root.wait_job_state(rjob, 'transferred', timeout=10)
        self.assertEqual(self.root.job(rjob, 'Complete'), 'complete')
        self.assertEqual(sha256_file(rd + '/r.bin'), small)
        # 'offline' (a user record without a session) is no session.
        self.h.set_session(ALICE, 'offline')
        self.stays(alice, job, 'queued', seconds=0.5)
        self.assertEqual(alice.job_prop(job2, 'State'), 'queued')

        # Login: she continues where she was, with a Range request.
        n_log = len(self.h.fault_log())
        self.h.set_session(ALICE, 'active')
        self.moving(alice, job)
        resumed = [e for e in self.h.fault_log()[n_log:] if e['method'] == 'GET']
        self.assertTrue(resumed)
        self.assertIsNotNone(resumed[0]['range'], resumed[0])
        self.assertGreater(int(resumed[0]['range'][len('bytes='):].rstrip('-')), 0)
        alice.wait_job_state(job2, 'transferred', timeout=10)
        alice.wait_job_state(job, 'transferred', timeout=30)
        self.assertEqual(alice.job(job, 'Complete'), 'complete')
        self.assertEqual(sha256_file(d + '/big.bin'), digest)
        self.assertEqual(alice.job(job2, 'Complete'), 'complete')
        self.assertEqual(sha256_file(d + '/s.bin'), small)

    def test_logged_out_user_waits_across_a_restart(self):
        alice = self.fresh(ALICE)
        digest = self.h.make_file('fault', self.n + '.bin', self.SIZE, seed=6)
        d = self.userdir(ALICE)
        _, job = self.new_job(alice)
        alice.job(job, 'AddFile', 'ss', self.h.fault_url(self.n + '.bin', rate=self.RATE * 2),
                  d + '/f.bin')
        alice.job(job, 'Resume')
        self.moving(alice, job)
        self.h.set_session(ALICE, None)
        alice.wait_job_state(job, 'queued', timeout=5)
        self.assertEqual(self.h.stop_bitsd(), 0)
        self.h.start_bitsd()
        alice = self.fresh(ALICE)
        self.assertEqual(alice.job_prop(job, 'State'), 'queued')
        self.stays(alice, job, 'queued', seconds=1.0)
        self.h.set_session(ALICE, 'active')
        self.moving(alice, job)
        alice.wait_job_state(job, 'transferred', timeout=30)
        self.assertEqual(alice.job(job, 'Complete'), 'complete')
        self.assertEqual(sha256_file(d + '/f.bin'), digest)

    def test_lingering_and_online_are_sessions(self):
        bob = self.fresh(BOB)
        digest = self.h.make_file('fault', self.n + '.bin', self.SIZE, seed=9)
        d = self.userdir(BOB)
        _, job = self.new_job(bob)
        bob.job(job, 'AddFile', 'ss', self.h.fault_url(self.n + '.bin', rate=self.RATE * 2),
                d + '/f.bin')
        self.h.set_session(BOB, None)
        bob.job(job, 'Resume')
        self.assertEqual(bob.job_prop(job, 'State'), 'queued')
        self.stays(bob, job, 'queued', seconds=0.5)
        self.h.set_session(BOB, 'lingering')
        self.moving(bob, job)
        self.h.set_session(BOB, None)
        bob.wait_job_state(job, 'queued', timeout=5)
        self.h.set_session(BOB, 'online')
        self.moving(bob, job)
        bob.wait_job_state(job, 'transferred', timeout=30)
        self.assertEqual(bob.job(job, 'Complete'), 'complete')
        self.assertEqual(sha256_file(d + '/f.bin'), digest)

    def test_system_user_runs_without_session(self):
        sysuid = 1  # daemon
        c = self.fresh(sysuid)
        small = self.h.make_file('nginx', self.n + '.bin', 30_000, seed=10)
        d = os.path.join(self.h.root, 'sysdl')
        self.mkdir(d, sysuid)
        self.assertFalse(os.path.exists('/run/systemd/users/%d' % sysuid))
        _, job = self.new_job(c)
        c.job(job, 'AddFile', 'ss', self.h.nginx_url(self.n + '.bin'), d + '/f.bin')
        c.job(job, 'Resume')
        c.wait_job_state(job, 'transferred', timeout=10)
        self.assertEqual(c.job(job, 'Complete'), 'complete')
        self.assertEqual(sha256_file(d + '/f.bin'), small)


class SessionsNotRequired(AuthCase):
    config_text = '[Daemon]\nRequireOwnerSession=no\n'

    def test_job_runs_without_session(self):
        self.addCleanup(self.h.set_session, ALICE, 'active')
        self.h.set_session(ALICE, None)
        alice = self.fresh(ALICE)
        digest = self.h.make_file('nginx', self.n + '.bin', 200_000, seed=12)
        d = self.userdir(ALICE)
        _, job = self.new_job(alice)
        alice.job(job, 'AddFile', 'ss', self.h.nginx_url(self.n + '.bin'), d + '/f.bin')
        alice.job(job, 'Resume')
        alice.wait_job_state(job, 'transferred', timeout=10)
        self.assertEqual(alice.job(job, 'Complete'), 'complete')
        self.assertEqual(sha256_file(d + '/f.bin'), digest)


# =============================================================================

class Limits(AuthCase):
    config_text = '[Daemon]\nMaxJobsPerUser=3\nMaxJobsPerMachine=5\nMaxFilesPerJob=2\n'

    def tearDown(self):
        # Every test starts with no live jobs.
        for row in self.root.manager('ListJobs', 't', 1):
            self.cancel_quietly(self.root, row[1])

    def test_configured_limits_are_reported(self):
        got = {p: self.root.get(MANAGER_PATH, MANAGER_IFACE, p) for p in
               ('MaxJobsPerUser', 'MaxJobsPerMachine', 'MaxFilesPerJob', 'MaxRangesPerFile')}
        self.assertEqual(got, {'MaxJobsPerUser': 3, 'MaxJobsPerMachine': 5,
                               'MaxFilesPerJob': 2, 'MaxRangesPerFile': 500})

    def test_jobs_per_user_and_machine(self):
        alice, bob = self.fresh(ALICE), self.fresh(BOB)
        a = [self.new_job(alice, 'a%d' % i)[1] for i in range(3)]
        e = self.assertBusError(ERR + 'TooManyJobsPerUser', alice.manager, 'CreateJob', 'ss',
                                'a4', 'download')
        self.assertIn('3', e.message)
        self.assertEqual(sorted(r[1] for r in alice.manager('ListJobs', 't', 0)), sorted(a))
        b = [self.new_job(bob, 'b%d' % i)[1] for i in range(2)]
        e = self.assertBusError(ERR + 'TooManyJobsPerMachine', bob.manager, 'CreateJob', 'ss',
                                'b3', 'download')
        self.assertIn('5', e.message)
        self.assertEqual(sorted(r[1] for r in bob.manager('ListJobs', 't', 0)), sorted(b))
        self.assertEqual(len(self.root.manager('ListJobs', 't', 1)), 5)
        # Root is exempt.
        r = [self.new_job(self.root, 'r%d' % i)[1] for i in range(4)]
        self.assertEqual(len(self.root.manager('ListJobs', 't', 0)), 4)
        for p in r:
            self.root.job(p, 'Cancel')
        # A cancelled job frees its slot (user and machine).
        alice.job(a[0], 'Cancel')
        _, b3 = self.new_job(bob, 'b3')
        self.assertBusError(ERR + 'TooManyJobsPerMachine', alice.manager, 'CreateJob', 'ss',
                            'a4', 'download')
        bob.job(b3, 'Cancel')
        bob.job(b[0], 'Cancel')
        _, a4 = self.new_job(alice, 'a4')
        self.assertBusError(ERR + 'TooManyJobsPerUser', alice.manager, 'CreateJob', 'ss',
                            'a5', 'download')
        # A completed (acknowledged) job frees its slot too.
        digest = self.h.make_file('nginx', self.n + '.bin', 10_000, seed=1)
        d = self.userdir(ALICE)
        alice.job(a4, 'AddFile', 'ss', self.h.nginx_url(self.n + '.bin'), d + '/f.bin')
        alice.job(a4, 'Resume')
        alice.wait_job_state(a4, 'transferred', timeout=10)
        self.assertEqual(alice.job(a4, 'Complete'), 'complete')
        self.assertEqual(sha256_file(d + '/f.bin'), digest)
        self.new_job(alice, 'a5')
        self.assertEqual(len(alice.manager('ListJobs', 't', 0)), 3)

    def test_files_per_job(self):
        alice = self.fresh(ALICE)
        d = self.userdir(ALICE)
        _, job = self.new_job(alice)
        three = [(self.h.nginx_url('x%d' % i), '%s/x%d' % (d, i)) for i in range(3)]
        e = self.assertBusError(ERR + 'TooManyFilesInJob', alice.job, job, 'AddFileSet',
                                'a(ss)', three)
        self.assertIn('2', e.message)
        self.assertEqual(alice.job_prop(job, 'FilesTotal'), 0)
        self.assertEqual(alice.job(job, 'ListFiles'), [])
        alice.job(job, 'AddFileSet', 'a(ss)', three[:2])
        self.assertBusError(ERR + 'TooManyFilesInJob', alice.job, job, 'AddFile', 'ss',
                            *three[2])
        self.assertEqual(alice.job_prop(job, 'FilesTotal'), 2)
        self.assertEqual(os.listdir(d), [])
        # Root is exempt.
        rd = self.rootdir()
        _, rjob = self.new_job(self.root)
        self.root.job(rjob, 'AddFileSet', 'a(ss)',
                      [(self.h.nginx_url('x%d' % i), '%s/x%d' % (rd, i)) for i in range(3)])
        self.assertEqual(self.root.job_prop(rjob, 'FilesTotal'), 3)

    def test_string_lengths(self):
        alice = self.fresh(ALICE)
        _, job = self.new_job(alice, 'n' * 256)
        self.assertEqual(alice.job_prop(job, 'DisplayName'), 'n' * 256)
        self.assertBusError(ERR + 'StringTooLong', alice.manager, 'CreateJob', 'ss', 'n' * 257,
                            'download')
        self.assertBusError(ERR + 'StringTooLong', alice.set, job, JOB_IFACE, 'DisplayName',
                            's', 'm' * 257)
        self.assertEqual(alice.job_prop(job, 'DisplayName'), 'n' * 256)
        alice.set(job, JOB_IFACE, 'Description', 's', 'd' * 1024)
        self.assertBusError(ERR + 'StringTooLong', alice.set, job, JOB_IFACE, 'Description',
                            's', 'e' * 1025)
        self.assertEqual(alice.job_prop(job, 'Description'), 'd' * 1024)
        d = self.userdir(ALICE)
        base = self.h.nginx_url('p') + '?q='
        alice.job(job, 'AddFile', 'ss', base + 'x' * (2200 - len(base)), d + '/ok')
        self.assertBusError(ERR + 'StringTooLong', alice.job, job, 'AddFile', 'ss',
                            base + 'x' * (2201 - len(base)), d + '/long')
        self.assertEqual(alice.job_prop(job, 'FilesTotal'), 1)




class AdminNotifications(AuthCase):
    """manage-any-job also opens other users' jobs to WatchJobs and Subscribe."""

    def alice_job(self):
        d = self.mkdir(os.path.join(self.h.root, 'shared-' + self.n), ALICE, 0o777)
        self.h.make_file('nginx', self.n + '.bin', 256 << 10, seed=3)
        alice = self.fresh(ALICE)
        _, path = alice.manager('CreateJob', 'ss', self.n, 'download')
        alice.job(path, 'AddFile', 'ss', self.h.nginx_url(self.n + '.bin'), os.path.join(d, 'n.bin'))
        return alice, path

    def changed_for(self, client, path):
        return [sig for sig in client.signals() if sig['member'] == 'JobChanged' and sig['args'][0] == path]

    def test_admin_watcher_and_subscriber_with_the_rule(self):
        self.polkit_rule('50-bitsadmin.rules', ADMIN_RULE)
        admin = self.fresh(ADMIN)
        admin.manager('WatchJobs')
        alice, path = self.alice_job()
        admin.job(path, 'Subscribe')  # the admin becomes the job's notification target
        alice.job(path, 'Resume')
        self.h.wait_for(lambda: [sig for sig in admin.signals() if sig['member'] == 'Transferred' and sig['path'] == path],
                        timeout=30, what='Transferred for the admin subscriber')
        self.assertTrue(self.changed_for(admin, path), 'no JobChanged for alice\'s job reached the admin watcher')
        alice.job(path, 'Complete')
        self.h.wait_for(lambda: [sig for sig in admin.signals() if sig['member'] == 'JobRemoved' and sig['args'][0] == path],
                        timeout=10, what='JobRemoved for the admin watcher')

    def test_watcher_without_the_rule_sees_only_its_own_jobs(self):
        admin = self.fresh(ADMIN)
        admin.manager('WatchJobs')  # allowed: everybody may watch their own jobs (no prompt)
        alice, path = self.alice_job()
        self.assertBusError(UNKNOWN_OBJECT, admin.job, path, 'Subscribe')
        alice.job(path, 'Resume')
        self.assertEqual(alice.wait_job_state(path, ('transferred', 'error'), timeout=30), 'transferred')
        alice.job(path, 'Complete')
        # A bounded wait: nothing about alice's job may arrive.
        time.sleep(1.0)
        self.assertEqual(self.changed_for(admin, path), [])
        self.assertEqual([sig for sig in admin.signals() if path in map(str, sig['args'])], [])

TAKE_RULE = '''polkit.addRule(function(action, subject) {
    if ((action.id == "org.freedesktop.bits1.manage-any-job" ||
         action.id == "org.freedesktop.bits1.take-ownership") && subject.isInGroup("bitsadmin"))
        return polkit.Result.YES;
});
'''


class TakeOwnership(AuthCase):

    def alice_job(self, d, name='t.bin', size=1 << 20, seed=5, start=False):
        digest = self.h.make_file('nginx', self.n + name, size, seed=seed)
        alice = self.fresh(ALICE)
        job_id, path = alice.manager('CreateJob', 'ss', self.n, 'download')
        alice.job(path, 'AddFile', 'ss', self.h.nginx_url(self.n + name), os.path.join(d, name))
        if start:
            alice.job(path, 'Resume')
        return alice, job_id, path, digest

    def test_owner_taking_own_job_needs_nothing(self):
        d = self.userdir(ALICE)
        alice, _, path, _ = self.alice_job(d)
        alice.job(path, 'TakeOwnership')  # no polkit question for a no-op
        self.assertEqual(alice.job_prop(path, 'Owner'), ALICE)
        alice.job(path, 'Cancel')

    def test_without_take_ownership_action_nothing_changes(self):
        self.polkit_rule('50-bitsadmin.rules', ADMIN_RULE)  # manage-any-job only
        d = self.mkdir(os.path.join(self.h.root, 'shared-' + self.n), ALICE, 0o777)
        alice, job_id, path, _ = self.alice_job(d)
        admin = self.fresh(ADMIN)
        # The default policy for take-ownership is auth_admin: a challenge, and the client did
        # not allow interaction.
        self.assertBusError(INTERACTIVE, admin.job, path, 'TakeOwnership')
        self.assertEqual(alice.job_prop(path, 'Owner'), ALICE)
        self.assertEqual(alice.manager('GetJob', 's', job_id), path)
        alice.job(path, 'Cancel')

    def test_admin_takes_ownership(self):
        self.polkit_rule('50-take.rules', TAKE_RULE)
        d = self.mkdir(os.path.join(self.h.root, 'shared-' + self.n), ALICE, 0o777)
        alice, job_id, path, digest = self.alice_job(d, size=3 << 20, seed=8)
        admin = self.fresh(ADMIN)
        admin.job(path, 'TakeOwnership')
        self.assertEqual(admin.job_prop(path, 'Owner'), ADMIN)
        # It is admin's job now: alice does not see it any more, admin lists it as their own.
        self.assertBusError(NOT_FOUND, alice.manager, 'GetJob', 's', job_id)
        self.assertIn(job_id, [row[0] for row in admin.manager('ListJobs', 't', 0)])
        admin.job(path, 'Resume')
        self.assertEqual(admin.wait_job_state(path, ('transferred', 'error'), timeout=30), 'transferred')
        self.assertEqual(admin.job(path, 'Complete'), 'complete')
        final = os.path.join(d, 't.bin')
        self.assertEqual(sha256_file(final), digest)
        self.assertEqual(os.stat(final).st_uid, ADMIN)

    def test_new_owner_without_access_to_a_temporary_file(self):
        self.polkit_rule('50-take.rules', TAKE_RULE)
        d = self.mkdir(os.path.join(self.h.root, 'shared-' + self.n), ALICE, 0o777)
        alice, _, path, _ = self.alice_job(d, start=True)
        self.assertEqual(alice.wait_job_state(path, ('transferred', 'error'), timeout=30), 'transferred')
        temp = alice.get(path + '/file/0', harness.FILE_IFACE, 'TemporaryName')
        self.assertEqual(os.stat(temp).st_mode & 0o777, 0o644)  # alice's: admin may not write it
        admin = self.fresh(ADMIN)
        e = self.assertBusError(ERR + 'NewOwnerNoFileAccess', admin.job, path, 'TakeOwnership')
        self.assertIn(temp, e.message)
        self.assertEqual(alice.job_prop(path, 'Owner'), ALICE)
        self.assertTrue(os.path.exists(temp))
        alice.job(path, 'Cancel')

    def test_take_ownership_removes_the_notify_command_line(self):
        self.polkit_rule('50-take.rules', TAKE_RULE)
        d = self.mkdir(os.path.join(self.h.root, 'shared-' + self.n), ALICE, 0o777)
        alice, _, path, _ = self.alice_job(d)
        alice.job(path, 'SetNotifyCmdLine', 'sas', '/bin/true', ['true', 'from-alice'])
        self.assertEqual(alice.job_prop(path, 'NotifyCmdLine'), ('/bin/true', ['true', 'from-alice']))
        admin = self.fresh(ADMIN)
        admin.job(path, 'TakeOwnership')
        self.assertEqual(admin.job_prop(path, 'NotifyCmdLine'), ('', []))
        # ...and it stays removed across a restart (the change was recorded).
        self.h.stop_bitsd()
        self.h.start_bitsd()
        admin = self.fresh(ADMIN)
        self.assertEqual(admin.job_prop(path, 'NotifyCmdLine'), ('', []))
        self.assertEqual(admin.job_prop(path, 'Owner'), ADMIN)
        admin.job(path, 'Cancel')

    def test_new_owner_without_access_to_the_destination(self):
        self.polkit_rule('50-take.rules', TAKE_RULE)
        d = self.userdir(ALICE)  # inside alice's 0700 home: admin cannot create files there
        alice, _, path, _ = self.alice_job(d)
        admin = self.fresh(ADMIN)
        e = self.assertBusError(ERR + 'NewOwnerNoFileAccess', admin.job, path, 'TakeOwnership')
        self.assertIn(d, e.message)
        self.assertEqual(alice.job_prop(path, 'Owner'), ALICE)
        alice.job(path, 'Cancel')

    def test_private_directory_of_the_old_owner(self):
        self.polkit_rule('50-take.rules', TAKE_RULE)
        # /run/user/<uid> is per user; give the private namespace its own.
        os.makedirs('/run/user', exist_ok=True)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'mode=0755', 'tmpfs', '/run/user'], check=True)
        self.addCleanup(subprocess.run, ['umount', '-l', '/run/user'])
        d = self.mkdir('/run/user/%d' % ALICE, ALICE, 0o700)
        alice, _, path, _ = self.alice_job(d)
        admin = self.fresh(ADMIN)
        e = self.assertBusError(ERR + 'NewOwnerDiffMapping', admin.job, path, 'TakeOwnership')
        self.assertIn('/run/user/%d/' % ALICE, e.message)
        self.assertEqual(alice.job_prop(path, 'Owner'), ALICE)
        alice.job(path, 'Cancel')

    def test_root_takes_ownership_and_partial_files_start_again(self):
        d = self.mkdir(os.path.join(self.h.root, 'shared-' + self.n), ALICE, 0o777)
        name = self.n + 'slow.bin'
        digest = self.h.make_file('fault', name, 4 << 20, seed=12)
        alice = self.fresh(ALICE)
        _, path = alice.manager('CreateJob', 'ss', self.n, 'download')
        alice.job(path, 'AddFile', 'ss', self.h.fault_url(name, rate=1 << 20), os.path.join(d, 'p.bin'))
        alice.job(path, 'Resume')
        self.h.wait_for(lambda: alice.job_prop(path, 'BytesTransferred') > 0, timeout=20, what='some bytes')
        old_temp = alice.get(path + '/file/0', harness.FILE_IFACE, 'TemporaryName')
        self.root.job(path, 'TakeOwnership')
        self.assertEqual(self.root.job_prop(path, 'Owner'), 0)
        # alice's partial file is gone (removed as alice), root starts the file again.
        self.assertFalse(os.path.exists(old_temp))
        new_temp = self.root.get(path + '/file/0', harness.FILE_IFACE, 'TemporaryName')
        self.assertNotEqual(new_temp, old_temp)
        self.root.job(path, 'Suspend')
        self.root.set(path, harness.JOB_IFACE, 'Priority', 's', 'foreground')
        self.root.job(path, 'Resume')
        self.assertEqual(self.root.wait_job_state(path, ('transferred', 'error'), timeout=60), 'transferred')
        self.assertEqual(self.root.job(path, 'Complete'), 'complete')
        self.assertEqual(sha256_file(os.path.join(d, 'p.bin')), digest)
        self.assertEqual(os.stat(os.path.join(d, 'p.bin')).st_uid, 0)

    def test_final_job_is_invalid_state(self):
        d = self.userdir(ALICE)
        alice, _, path, _ = self.alice_job(d)
        alice.job(path, 'Cancel')
        self.assertBusError(ERR + 'InvalidState', self.root.job, path, 'TakeOwnership')

if __name__ == '__main__':
    harness.main()
