#!/usr/bin/python3
"""Notifications: Job.Subscribe signals, Manager.WatchJobs, the notify command line.

The contract is dbus-api.md (Job signals, WatchJobs, Privacy) and bits-spec.md §2.9/§6:
one subscriber per job (last caller wins), unicast signals filtered by NotifyFlags,
Modification coalesced by MinimumNotificationIntervalMsec, FileTransferred before
Transferred, late registration, watchers bounded per user, and a command line that
runs as the user who set it, with a clean environment, when nobody subscribed.
"""

import os
import signal
import pwd
import subprocess
import time

import harness
from harness import ALICE, BOB, JOB_IFACE, MANAGER_IFACE, MANAGER_PATH, BusError

KiB = 1 << 10
NEVER = 3600
CMD_TIMEOUT = 3

CONFIG = """[Daemon]
MaxBackgroundJobs=16
StallTimeoutSec=5
NotifyCmdLineTimeoutSec=%d
""" % CMD_TIMEOUT

QUIET = 1.5  # how long a test listens to show that nothing arrives


class NotifyCase(harness.HarnessTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.h.start_bitsd(config_text=CONFIG)
        cls.alice = cls.h.client(ALICE)
        cls.h.make_file('nginx', 'small.bin', 64 * KiB, seed=1)
        for i in range(3):
            cls.h.make_file('nginx', 'part%d.bin' % i, 32 * KiB, seed=10 + i)
        cls.h.make_file('fault', 'slow.bin', 600 * KiB, seed=2)
        cls.seq = 0

    def setUp(self):
        self.jobs = []

    def tearDown(self):
        for c, path in self.jobs:
            try:
                c.job(path, 'Cancel')
            except (BusError, RuntimeError):
                pass

    def local(self, name, uid=ALICE):
        type(self).seq += 1
        return os.path.join(self.h.home(uid), '%s.%d' % (name, self.seq))

    def make_job(self, c=None, files=('small.bin',), remote=None, resume=False, **props):
        """A download job of C (alice) with FILES from nginx (or REMOTE), u properties set."""
        c = c or self.alice
        _, path = c.manager('CreateJob', 'ss', 'notify', 'download')
        self.jobs.append((c, path))
        for name, value in props.items():
            c.set(path, JOB_IFACE, name, 'u', value)
        for name in ([remote] if remote else files):
            url = name if remote else self.h.nginx_url(name)
            c.job(path, 'AddFile', 'ss', url, self.local(os.path.basename(name).split('?')[0], c.uid))
        if resume:
            c.job(path, 'Resume')
        return path

    def job_signals(self, c, path, member=None):
        return [s for s in c.signals() if s['path'] == path and (member is None or s['member'] == member)]

    def quiet(self, c, path, seconds=QUIET):
        """Signals about PATH that C receives within SECONDS (a bounded wait)."""
        deadline = time.monotonic() + seconds
        got = []
        while time.monotonic() < deadline:
            try:
                s = c.wait_signal(None, timeout=deadline - time.monotonic())
            except AssertionError:
                break
            if s['path'] == path or path in str(s['args']):
                got.append(s)
        return got

    def wait_file(self, path, timeout=30):
        self.h.wait_for(lambda: os.path.exists(path), timeout=timeout, what='file %s' % path)
        with open(path) as f:
            return f.read()

    def set_cmdline(self, c, path, script):
        c.job(path, 'SetNotifyCmdLine', 'sas', '/bin/sh', ['sh', '-c', script])


# =============================================================================

class Subscribe(NotifyCase):

    def test_last_subscriber_wins(self):
        first, second = self.h.client(ALICE), self.h.client(ALICE)
        path = self.make_job(NotifyFlags=0x1 | 0x8)
        first.job(path, 'Subscribe')
        second.job(path, 'Subscribe')
        second.job(path, 'Subscribe')  # again: still the one target
        self.alice.job(path, 'Resume')
        s = second.wait_signal('Transferred', path=path, timeout=30)
        self.assertEqual(s['interface'], JOB_IFACE)
        self.assertEqual(self.job_signals(first, path), [])
        self.assertEqual(self.quiet(first, path, 0.5), [])

    def test_unsubscribe(self):
        c = self.h.client(ALICE)
        path = self.make_job()
        c.job(path, 'Unsubscribe')  # none: a no-op success
        c.job(path, 'Subscribe')
        c.job(path, 'Unsubscribe')
        self.alice.job(path, 'Resume')
        self.alice.wait_job_state(path, 'transferred')
        self.assertEqual(self.quiet(c, path), [])
        self.alice.job(path, 'Complete')
        for method in ('Subscribe', 'Unsubscribe'):
            with self.assertRaises(BusError) as e:
                self.alice.job(path, method)
            self.assertEqual(e.exception.name, 'org.freedesktop.bits1.Error.InvalidState')

    def test_other_users_cannot_subscribe(self):
        bob = self.h.client(BOB)
        path = self.make_job()
        with self.assertRaises(BusError) as e:
            bob.job(path, 'Subscribe')
        self.assertEqual(e.exception.name, 'org.freedesktop.DBus.Error.UnknownObject')
        root = self.h.client(0)
        root.job(path, 'Subscribe')  # an administrator may
        self.alice.job(path, 'Resume')
        root.wait_signal('Transferred', path=path)

    def test_late_subscription_transferred(self):
        path = self.make_job(resume=True)
        self.alice.wait_job_state(path, 'transferred')
        c = self.h.client(ALICE)
        c.job(path, 'Subscribe')
        c.wait_signal('Transferred', path=path, timeout=10)

    def test_late_subscription_error(self):
        path = self.make_job(remote=self.h.fault_url('missing.bin', status=404), resume=True)
        self.alice.wait_job_state(path, 'error')
        c = self.h.client(ALICE)
        c.job(path, 'Subscribe')
        s = c.wait_signal('Error', path=path, timeout=10)
        context, code, message = s['args']
        self.assertEqual(code, 'http:404')
        self.assertEqual(context, 'remote-file')
        self.assertTrue(message)
        self.assertEqual(self.job_signals(c, path, 'Transferred'), [])

    def test_flags_filter(self):
        c = self.h.client(ALICE)
        disabled = self.make_job(NotifyFlags=0x1 | 0x2 | 0x4 | 0x8 | 0x10)
        error_only = self.make_job(NotifyFlags=0x2)
        modification_only = self.make_job(NotifyFlags=0x8)
        for p in (disabled, error_only, modification_only):
            c.job(p, 'Subscribe')
            self.alice.job(p, 'Resume')
        for p in (disabled, error_only, modification_only):
            self.alice.wait_job_state(p, 'transferred')
        c.wait_signal('Modification', path=modification_only)
        time.sleep(QUIET)  # bounded: let anything that would come arrive
        got = c.signals()
        self.assertEqual([s for s in got if s['path'] in (disabled, error_only)], [])
        self.assertEqual({s['member'] for s in got if s['path'] == modification_only} - {'Modification'}, set())
        # Late subscription honours the flags too.
        c2 = self.h.client(ALICE)
        c2.job(disabled, 'Subscribe')
        c2.job(error_only, 'Subscribe')
        self.assertEqual(self.quiet(c2, disabled) + self.job_signals(c2, error_only), [])

    def test_file_transferred_before_transferred(self):
        c2 = self.h.client(ALICE)
        path2 = self.make_job(files=('part0.bin', 'part1.bin', 'part2.bin'), NotifyFlags=0x1 | 0x10)
        c2.job(path2, 'Subscribe')
        self.alice.job(path2, 'Resume')
        self.alice.wait_job_state(path2, 'transferred')
        self.h.wait_for(lambda: self.job_signals(c2, path2, 'Transferred'), timeout=10, what='Transferred')
        seq = [(s['member'], s['args']) for s in self.job_signals(c2, path2)]
        self.assertEqual(seq, [('FileTransferred', (path2 + '/file/0',)),
                               ('FileTransferred', (path2 + '/file/1',)),
                               ('FileTransferred', (path2 + '/file/2',)),
                               ('Transferred', ())])

    def modification_count(self, interval_ms):
        c = self.h.client(ALICE)
        # 600 KiB at 200 KiB/s: a transfer of about 3 s.
        path = self.make_job(remote=self.h.fault_url('slow.bin', rate=200 * KiB), NotifyFlags=0x1 | 0x8,
                             MinimumNotificationIntervalMsec=interval_ms)
        c.job(path, 'Subscribe')
        start = time.monotonic()
        self.alice.job(path, 'Resume')
        self.h.wait_for(lambda: self.job_signals(c, path, 'Transferred'), timeout=60, what='Transferred')
        duration = time.monotonic() - start
        time.sleep(interval_ms / 1000 + 0.5)  # the last coalesced Modification, if any
        mods = self.job_signals(c, path, 'Modification')
        return len(mods), duration

    def test_modification_rate_100ms(self):
        n, duration = self.modification_count(100)
        self.assertGreater(duration, 2.0)
        limit = duration / 0.1 + 2
        self.assertLessEqual(n, limit, 'Modification: %d in %.1f s' % (n, duration))
        self.assertGreaterEqual(n, limit / 3, 'Modification: %d in %.1f s' % (n, duration))

    def test_modification_rate_2s(self):
        n, duration = self.modification_count(2000)
        self.assertLessEqual(n, duration / 2 + 2, 'Modification: %d in %.1f s' % (n, duration))
        self.assertGreaterEqual(n, 1)

    def test_third_user_sees_nothing(self):
        bob = self.h.client(BOB)
        bob.add_match("type='signal',sender='org.freedesktop.bits1'")
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.h.bus_address)
        pw = pwd.getpwuid(BOB)
        monitor = subprocess.Popen(
            ['setpriv', '--reuid=%d' % BOB, '--regid=%d' % pw.pw_gid, '--init-groups', '--',
             'gdbus', 'monitor', '--system', '--dest', 'org.freedesktop.bits1'],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            watcher = self.h.client(ALICE)
            watcher.manager('WatchJobs')
            sub = self.h.client(ALICE)
            path = self.make_job(files=('part0.bin', 'part1.bin'), NotifyFlags=0x1 | 0x8 | 0x10)
            sub.job(path, 'Subscribe')
            self.alice.job(path, 'Resume')
            sub.wait_signal('Transferred', path=path)
            watcher.wait_signal('JobChanged')
            self.alice.job(path, 'Complete')
            watcher.wait_signal('JobRemoved')
            time.sleep(0.5)  # bounded
        finally:
            monitor.terminate()
            out = monitor.communicate(timeout=10)[0]
        hexid = path.rsplit('/', 1)[1]
        self.assertEqual([s for s in bob.signals() if s['sender'] != 'org.freedesktop.DBus'], [])
        self.assertIn('org.freedesktop.bits1', out)  # the monitor was listening
        self.assertNotIn(hexid, out)
        self.assertNotIn('Transferred', out)


class StuckClient(NotifyCase):

    def test_subscriber_that_never_reads_stalls_nothing(self):
        """A subscriber that stops reading (SIGSTOP) during a transfer with Modification every
        10 ms: other users are served at once, the job finishes, and the subscriber still gets
        Transferred when it reads again."""
        stuck = self.h.client(ALICE)
        self.addCleanup(stuck.close)
        bob = self.h.client(BOB)
        self.addCleanup(bob.close)
        path = self.make_job(remote=self.h.fault_url('slow.bin', rate=300 * KiB),
                             MinimumNotificationIntervalMsec=10, NotifyFlags=0x1 | 0x8)
        stuck.job(path, 'Subscribe')
        os.kill(stuck.pid, signal.SIGSTOP)
        try:
            self.alice.job(path, 'Resume')
            worst = 0.0
            while self.alice.job_prop(path, 'State') not in ('transferred', 'error'):
                began = time.monotonic()
                bob.manager('ListJobs', 't', 0)
                worst = max(worst, time.monotonic() - began)
                self.assertLess(time.monotonic() - began, 5)
            self.assertEqual(self.alice.job_prop(path, 'State'), 'transferred')
            self.assertLess(worst, 1.0, 'bob waited %.2f s while alice\'s subscriber was stuck' % worst)
        finally:
            os.kill(stuck.pid, signal.SIGCONT)
        got = stuck.wait_signal('Transferred', path=path, timeout=20)
        self.assertEqual(got['member'], 'Transferred')


class Watch(NotifyCase):

    def test_watchers_see_visible_jobs_only(self):
        mine, root, bob = self.h.client(ALICE), self.h.client(0), self.h.client(BOB)
        for c in (mine, root, bob):
            c.manager('WatchJobs')
        mine.manager('WatchJobs')  # twice: one watcher
        sub = self.h.client(ALICE)
        path = self.make_job()
        sub.job(path, 'Subscribe')
        self.alice.job(path, 'Resume')
        sub.wait_signal('Transferred', path=path)  # the BITS subscriber is not disturbed

        def saw(c, state):
            return any(s['member'] == 'JobChanged' and s['args'][0] == path and s['args'][1] == state
                       for s in c.signals())
        for c in (mine, root):
            self.h.wait_for(lambda: saw(c, 'transferred'), timeout=10, what='JobChanged transferred')
            s = [s for s in c.signals() if s['member'] == 'JobChanged'][-1]
            self.assertEqual(s['path'], MANAGER_PATH)
            self.assertEqual(s['interface'], MANAGER_IFACE)
            self.assertEqual(s['args'][2], 64 * KiB)
            self.assertEqual(s['args'][3], 64 * KiB)
        self.alice.job(path, 'Complete')
        for c in (mine, root):
            self.h.wait_for(lambda: any(s['member'] == 'JobRemoved' and s['args'] == (path, 'acknowledged')
                                        for s in c.signals()), timeout=10, what='JobRemoved')
        self.assertEqual([s for s in bob.signals() if s['sender'] != 'org.freedesktop.DBus'], [])

        # Bob's own job reaches bob's and root's watchers, not alice's.
        bpath = self.make_job(c=bob, resume=True)
        bob.wait_job_state(bpath, 'transferred')
        self.h.wait_for(lambda: any(s['member'] == 'JobChanged' and s['args'][0] == bpath for s in bob.signals()),
                        timeout=10, what='bob JobChanged')
        self.h.wait_for(lambda: any(s['member'] == 'JobChanged' and s['args'][0] == bpath for s in root.signals()),
                        timeout=10, what='root JobChanged')
        self.assertFalse(any(bpath in str(s['args']) for s in mine.signals()))

        # UnwatchJobs stops them.
        mine.manager('UnwatchJobs')
        mine.manager('UnwatchJobs')  # not watching: fine
        mine.signals(clear=True)
        path2 = self.make_job(resume=True)
        self.alice.wait_job_state(path2, 'transferred')
        self.h.wait_for(lambda: any(s['member'] == 'JobChanged' and s['args'][0] == path2 for s in root.signals()),
                        timeout=10, what='root JobChanged')
        self.assertEqual(self.quiet(mine, path2, 0.5), [])

    def test_watchers_bounded(self):
        clients = [self.h.client(BOB) for _ in range(17)]
        for c in clients[:16]:
            c.manager('WatchJobs')
        with self.assertRaises(BusError) as e:
            clients[16].manager('WatchJobs')
        self.assertEqual(e.exception.name, 'org.freedesktop.DBus.Error.LimitsExceeded')
        self.assertIn('16', e.exception.args[0] if e.exception.args else str(e.exception))
        # Other users are not affected by bob's watchers.
        self.h.client(ALICE).manager('WatchJobs')
        # A watcher that leaves the bus frees its slot.
        clients[0].close()

        def can_watch():
            try:
                clients[16].manager('WatchJobs')
                return True
            except BusError:
                return False
        self.h.wait_for(can_watch, timeout=10, what='a freed watcher slot')
        for c in clients:
            c.close()


class CmdLine(NotifyCase):

    def out(self, name):
        return self.local(name)

    def test_runs_as_owner_with_clean_env(self):
        out = self.out('env.txt')
        path = self.make_job()
        self.set_cmdline(self.alice, path, 'exec > %s.tmp; id -u; id -G; env; echo hello-from-cmdline >&2; '
                                           'mv %s.tmp %s' % (out, out, out))
        self.assertEqual(self.alice.job_prop(path, 'NotifyCmdLine')[0], '/bin/sh')
        self.alice.job(path, 'Resume')
        lines = self.wait_file(out).splitlines()
        self.assertEqual(lines[0], str(ALICE))
        self.assertEqual(lines[1].split(), [str(g) for g in sorted(os.getgrouplist('alice', ALICE))])
        env = dict(line.split('=', 1) for line in lines[2:] if '=' in line and not line.startswith('hello'))
        job_id = self.alice.job_prop(path, 'Id')
        self.assertEqual(env['BITS_JOB_ID'], job_id)
        self.assertEqual(env['BITS_JOB_STATE'], 'transferred')
        self.assertEqual(env['BITS_JOB_PATH'], path)
        self.assertEqual(env['PATH'], '/usr/local/bin:/usr/bin:/bin')
        self.assertEqual(set(env) - {'BITS_JOB_ID', 'BITS_JOB_STATE', 'BITS_JOB_PATH', 'PATH', 'PWD', 'SHLVL', '_',
                                     'OLDPWD'}, set())
        self.h.wait_for(lambda: 'hello-from-cmdline' in self.h.bitsd_log(), timeout=10, what='output logged')
        line = [l for l in self.h.bitsd_log().splitlines() if 'hello-from-cmdline' in l][0]
        self.assertIn(job_id, line)

    def test_root_set_on_users_job_runs_as_owner(self):
        root = self.h.client(0)
        out = self.out('root-set.txt')
        path = self.make_job()
        self.set_cmdline(root, path, 'id -u > %s.tmp; mv %s.tmp %s' % (out, out, out))
        self.alice.job(path, 'Resume')
        self.assertEqual(self.wait_file(out).strip(), str(ALICE))

    def test_error_runs_it(self):
        out = self.out('error.txt')
        path = self.make_job(remote=self.h.fault_url('gone.bin', status=404))
        self.set_cmdline(self.alice, path, 'echo "$BITS_JOB_STATE" > %s.tmp; mv %s.tmp %s' % (out, out, out))
        self.alice.job(path, 'Resume')
        self.assertEqual(self.wait_file(out).strip(), 'error')

    def test_not_run_while_subscribed_runs_after_disconnect(self):
        out1, out2 = self.out('sub1.txt'), self.out('sub2.txt')
        sub = self.h.client(ALICE)
        p1 = self.make_job()
        self.set_cmdline(self.alice, p1, 'touch %s' % out1)
        sub.job(p1, 'Subscribe')
        self.alice.job(p1, 'Resume')
        sub.wait_signal('Transferred', path=p1)
        time.sleep(QUIET)  # bounded: show that it does not run
        self.assertFalse(os.path.exists(out1))

        gone = self.h.client(ALICE)
        p2 = self.make_job()
        self.set_cmdline(self.alice, p2, 'touch %s' % out2)
        gone.job(p2, 'Subscribe')
        gone.close()
        # The daemon drops the subscriber when the name leaves the bus; then the event runs it.
        self.h.wait_for(lambda: 'left the bus' in self.h.bitsd_log(), timeout=10, what='subscriber dropped')
        self.alice.job(p2, 'Resume')
        self.wait_file(out2)

    def test_disabled_flags_do_not_run_it(self):
        out = self.out('disabled.txt')
        path = self.make_job(NotifyFlags=0x1 | 0x4)
        self.set_cmdline(self.alice, path, 'touch %s' % out)
        self.alice.job(path, 'Resume')
        self.alice.wait_job_state(path, 'transferred')
        time.sleep(QUIET)  # bounded
        self.assertFalse(os.path.exists(out))

    def test_set_after_the_event(self):
        out = self.out('late.txt')
        path = self.make_job(resume=True)
        self.alice.wait_job_state(path, 'transferred')
        self.set_cmdline(self.alice, path, 'touch %s' % out)
        self.wait_file(out)

    def test_rerun_after_failure(self):
        marker, done = self.out('marker'), self.out('done.txt')
        path = self.make_job(MinimumRetryDelay=5)
        self.set_cmdline(self.alice, path,
                         'if [ -e %s ]; then date +%%s.%%N > %s.tmp; mv %s.tmp %s; exit 0; fi; '
                         'date +%%s.%%N > %s.tmp; mv %s.tmp %s; exit 3'
                         % (marker, done, done, done, marker, marker, marker))
        self.alice.job(path, 'Resume')
        self.wait_file(done, timeout=30)
        with open(marker) as f:
            first = float(f.read())
        with open(done) as f:
            second = float(f.read())
        self.assertGreaterEqual(second - first, 4.5)
        self.assertIn('exited with status 3', self.h.bitsd_log())

    def test_timeout_kills_the_group(self):
        pidfile = self.out('bgpid')
        path = self.make_job(MinimumRetryDelay=NEVER)
        self.set_cmdline(self.alice, path, 'sleep 300 & echo $! > %s.tmp; mv %s.tmp %s; wait'
                         % (pidfile, pidfile, pidfile))
        self.alice.job(path, 'Resume')
        bg = int(self.wait_file(pidfile))
        self.h.wait_for(lambda: 'killing it' in self.h.bitsd_log(), timeout=CMD_TIMEOUT + 10, what='timeout')

        def gone():
            try:
                with open('/proc/%d/stat' % bg) as f:
                    return f.read().split(') ')[1].split()[0] == 'Z'
            except FileNotFoundError:
                return True
        self.h.wait_for(gone, timeout=10, what='the background child killed')
        self.assertIn('killed by signal', self.h.bitsd_log())

    def test_validation(self):
        path = self.make_job()
        c = self.alice
        self.assertEqual(c.job_prop(path, 'NotifyCmdLine'), ('', []))
        cases = [
            (('bin/true', ['true']), 'org.freedesktop.DBus.Error.InvalidArgs', 'bin/true'),
            (('', ['x']), 'org.freedesktop.DBus.Error.InvalidArgs', None),
            (('/bin/true', []), 'org.freedesktop.DBus.Error.InvalidArgs', None),
            (('/' + 'a' * 4200, ['a']), 'org.freedesktop.bits1.Error.StringTooLong', None),
            (('/bin/true', ['x' * 1000] * 5), 'org.freedesktop.bits1.Error.StringTooLong', None),
            (('/bin/true', ['x'] * 300), 'org.freedesktop.DBus.Error.InvalidArgs', None),
        ]
        for (program, argv), name, named in cases:
            with self.subTest(program=program[:20], n=len(argv)):
                with self.assertRaises(BusError) as e:
                    c.job(path, 'SetNotifyCmdLine', 'sas', program, argv)
                self.assertEqual(e.exception.name, name)
                if named:
                    self.assertIn("'%s'" % named, str(e.exception.args))
        c.job(path, 'SetNotifyCmdLine', 'sas', '/bin/echo', ['echo', '', 'a b'])
        self.assertEqual(c.job_prop(path, 'NotifyCmdLine'), ('/bin/echo', ['echo', '', 'a b']))
        c.job(path, 'SetNotifyCmdLine', 'sas', '', [])
        self.assertEqual(c.job_prop(path, 'NotifyCmdLine'), ('', []))
        bob = self.h.client(BOB)
        with self.assertRaises(BusError) as e:
            bob.job(path, 'SetNotifyCmdLine', 'sas', '/bin/true', ['true'])
        self.assertEqual(e.exception.name, 'org.freedesktop.DBus.Error.UnknownObject')


class Restart(NotifyCase):

    def test_persisted_across_restart(self):
        out = self.local('restart.txt')
        path = self.make_job()
        self.set_cmdline(self.alice, path, 'id -u > %s.tmp; mv %s.tmp %s' % (out, out, out))
        self.h.stop_bitsd()
        self.h.start_bitsd()
        alice = self.h.client(ALICE)
        self.jobs = [(alice, path)]
        self.assertEqual(alice.job_prop(path, 'NotifyCmdLine'),
                         ('/bin/sh', ['sh', '-c', 'id -u > %s.tmp; mv %s.tmp %s' % (out, out, out)]))
        alice.job(path, 'Resume')
        self.assertEqual(self.wait_file(out).strip(), str(ALICE))


if __name__ == '__main__':
    harness.main()
