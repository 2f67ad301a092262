#!/usr/bin/python3
"""Errors a user can see: the Error property, transient vs fatal, retries.

Every job here belongs to alice and is driven over the bus by a client running
as alice, against the scriptable fault server (or a file:// source). The BITS
rules under test are bits-spec.md §4.2 (transitions: TRANSIENT_ERROR retried
after MinimumRetryDelay, ERROR after NoProgressTimeout, Resume from either)
and §9 (which HTTP statuses are fatal), and the Error property of dbus-api.md.
"""

import os
import socket
import subprocess
import time

import hangfs
import harness
from harness import ALICE, BOB, JOB_IFACE, BusError, sha256_file

MiB = 1 << 20
RETRY = 5        # the smallest MinimumRetryDelay BITS allows
NEVER = 3600     # a MinimumRetryDelay that does not fire during a test

CONFIG = """[Daemon]
StallTimeoutSec=2
ConnectTimeoutSec=5
MaxBackgroundJobs=16
"""


def refused_port():
    """A 127.0.0.1 port with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ErrorsBase(harness.HarnessTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.h.start_bitsd(config_text=CONFIG)
        cls.alice = cls.h.client(ALICE)

    def setUp(self):
        self.jobs = []
        self.h.fault_reset()

    def tearDown(self):
        # Leave no retrying or hanging job behind for the next test.
        for path in self.jobs:
            try:
                self.alice.job(path, 'Cancel')
            except BusError:
                pass

    def local(self, name):
        return os.path.join(self.h.home(ALICE), name)

    def start_job(self, remote, local_name, retry_delay=NEVER, resume=True, **props):
        """CreateJob + properties + AddFile (+ Resume) as alice → job path."""
        c = self.alice
        _, path = c.manager('CreateJob', 'ss', 'errors:' + local_name, 'download')
        self.jobs.append(path)
        c.set(path, JOB_IFACE, 'MinimumRetryDelay', 'u', retry_delay)
        for name, value in props.items():
            c.set(path, JOB_IFACE, name, 'u', value)
        c.job(path, 'AddFile', 'ss', remote, self.local(local_name))
        if resume:
            c.job(path, 'Resume')
        return path

    def prop(self, path, name):
        return self.alice.job_prop(path, name)

    def wait_state(self, path, states, timeout=30):
        return self.alice.wait_job_state(path, states, timeout=timeout)

    def requests_for(self, name):
        return [e for e in self.h.fault_log() if e['path'] == '/f/' + name]

    def complete_and_hash(self, path, local_name):
        self.assertEqual(self.alice.job(path, 'Complete'), 'complete')
        return sha256_file(self.local(local_name))

    def assert_error(self, path, context, code, protocol):
        err = self.prop(path, 'Error')
        self.assertEqual(err[0], context, err)
        self.assertEqual(err[1], code, err)
        self.assertEqual(err[3], protocol, err)
        self.assertEqual(err[4], path + '/file/0', err)
        self.assertTrue(err[2], 'empty error message: %r' % (err,))
        return err


class FatalErrors(ErrorsBase):

    def test_404_sets_error_property_and_resume_retries(self):
        h, c = self.h, self.alice
        url = h.fault_url('later.bin')  # not there yet: the server answers 404
        path = self.start_job(url, 'later.bin')
        self.assertEqual(self.wait_state(path, ['error', 'transferred']), 'error')
        err = self.assert_error(path, 'remote-file', 'http:404', 'http')
        self.assertIn(url, err[2])
        self.assertEqual(self.prop(path, 'ErrorCount'), 1)
        self.assertEqual(self.prop(path, 'BytesTransferred'), 0)
        # A fatal error is not retried by a timer.
        n = len(self.requests_for('later.bin'))
        time.sleep(2)  # bounded wait to show that nothing happens
        self.assertEqual(len(self.requests_for('later.bin')), n)
        self.assertEqual(self.prop(path, 'State'), 'error')

        # The file appears; Resume queues the job again at once and it succeeds.
        digest = h.make_file('fault', 'later.bin', 3 * MiB + 17, seed=4)
        c.job(path, 'Resume')
        self.assertNotEqual(self.prop(path, 'State'), 'error')
        self.wait_state(path, 'transferred', timeout=20)
        self.assertEqual(self.prop(path, 'Error'), ('none', '', '', '', '/'))
        self.assertEqual(self.complete_and_hash(path, 'later.bin'), digest)

    def test_scripted_404_error_property(self):
        self.h.make_file('fault', 'exists.bin', 4096)
        url = self.h.fault_url('exists.bin', status=404)
        path = self.start_job(url, 'scripted404.bin')
        self.assertEqual(self.wait_state(path, ['error', 'transient-error', 'transferred']),
                         'error')
        err = self.assert_error(path, 'remote-file', 'http:404', 'http')
        self.assertIn(url, err[2])
        self.assertEqual(self.prop(path, 'ErrorCount'), 1)
        # Resume leaves `error` (the URL still fails, so it comes back to it).
        self.alice.job(path, 'Resume')
        self.assertIn(self.prop(path, 'State'), ('queued', 'connecting', 'transferring'))
        self.h.wait_for(lambda: self.prop(path, 'ErrorCount') == 2, timeout=20,
                        what='the retried request to fail again')
        self.assertEqual(self.wait_state(path, ['error', 'transient-error']), 'error')
        self.assertEqual(len(self.requests_for('exists.bin')), 2)

    def test_http_status_classes(self):
        # bits-spec §9: 4xx fatal except 408/409 (and 429, Too Many Requests);
        # 5xx transient except 501/505.
        self.h.make_file('fault', 'status.bin', 4096)
        expect = {400: 'error', 401: 'error', 403: 'error', 410: 'error',
                  408: 'transient-error', 409: 'transient-error', 429: 'transient-error',
                  500: 'transient-error', 502: 'transient-error', 503: 'transient-error',
                  501: 'error', 505: 'error'}
        paths = {st: self.start_job(self.h.fault_url('status.bin', status=st),
                                    'status-%d.bin' % st) for st in expect}
        got = {}
        for st, path in paths.items():
            got[st] = self.wait_state(path, ['error', 'transient-error', 'transferred'])
        self.assertEqual(got, expect)
        for st, path in paths.items():
            self.assert_error(path, 'remote-file', 'http:%d' % st, 'http')
            self.assertEqual(self.prop(path, 'ErrorCount'), 1, st)

    def test_max_download_time(self):
        self.h.make_file('fault', 'slow.bin', 8 * MiB)
        url = self.h.fault_url('slow.bin', rate=256 * 1024)  # 32 s for the whole file
        t0 = time.monotonic()
        path = self.start_job(url, 'slow.bin', MaximumDownloadTime=2)
        self.assertEqual(self.wait_state(path, ['error', 'transient-error', 'transferred'],
                                         timeout=20), 'error')
        self.assertLess(time.monotonic() - t0, 10)
        err = self.prop(path, 'Error')
        self.assertEqual(err[1], 'bits:MaxDownloadTimeout', err)
        self.assertEqual(err[4], path + '/file/0', err)
        # The transfer stopped: no byte moves any more.
        done = self.prop(path, 'BytesTransferred')
        self.assertGreater(done, 0)
        self.assertLess(done, 8 * MiB)
        time.sleep(1.5)  # bounded wait to show that nothing happens
        self.assertEqual(self.prop(path, 'BytesTransferred'), done)
        self.assertEqual(self.prop(path, 'State'), 'error')


class FileSources(ErrorsBase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # A root-only file (0600) in a root-owned directory alice may enter.
        cls.secret_dir = os.path.join(cls.h.root, 'secret')
        os.makedirs(cls.secret_dir, mode=0o755)
        os.chmod(cls.secret_dir, 0o755)
        cls.h.make_file(cls.secret_dir, 'secret.bin', 2 * MiB)
        os.chmod(os.path.join(cls.secret_dir, 'secret.bin'), 0o600)
        cls.pub_dir = os.path.join(cls.h.root, 'pub')
        os.makedirs(cls.pub_dir, mode=0o755)
        os.chmod(cls.pub_dir, 0o755)

    def _unreadable(self, remote, local_name):
        path = self.start_job(remote, local_name)
        self.assertEqual(self.wait_state(path, ['error', 'transient-error', 'transferred']),
                         'error')
        err = self.prop(path, 'Error')
        self.assertEqual(err[0], 'remote-file', err)
        self.assertEqual(err[1], 'errno:EACCES', err)
        self.assertEqual(err[4], path + '/file/0', err)
        self.assertEqual(self.prop(path, 'BytesTransferred'), 0)
        f = path + '/file/0'
        self.assertEqual(self.alice.file_prop(f, 'BytesTransferred'), 0)
        temp = self.alice.file_prop(f, 'TemporaryName')
        # No byte of the root-only file may land anywhere alice can read.
        if os.path.exists(temp):
            self.assertEqual(os.path.getsize(temp), 0)
        self.assertFalse(os.path.exists(self.local(local_name)))

    def test_unreadable_file_url(self):
        self._unreadable('file://' + os.path.join(self.secret_dir, 'secret.bin'), 'nope1.bin')

    def test_unreadable_absolute_path(self):
        self._unreadable(os.path.join(self.secret_dir, 'secret.bin'), 'nope2.bin')

    def test_readable_file_url_end_to_end(self):
        digest = self.h.make_file(self.pub_dir, 'pub.bin', 9 * MiB + 123, seed=9)
        path = self.start_job('file://' + os.path.join(self.pub_dir, 'pub.bin'), 'pub.bin')
        self.wait_state(path, 'transferred', timeout=30)
        self.assertEqual(self.prop(path, 'BytesTransferred'), 9 * MiB + 123)
        self.assertEqual(self.complete_and_hash(path, 'pub.bin'), digest)
        st = os.stat(self.local('pub.bin'))
        self.assertEqual(st.st_uid, ALICE)


class LocalFileErrors(ErrorsBase):

    def test_disk_full_is_transient_and_resume_continues(self):
        """The destination's file system fills up mid-download (a 3 MiB tmpfs of alice's): the
        job goes to transient-error naming ENOSPC, counts no byte that is not on disk, and after
        space was made, Resume finishes the file with the right content."""
        size = 12 * MiB
        digest = self.h.make_file('nginx', 'full.bin', size, seed=21)
        d = self.local('small-fs')
        os.makedirs(d)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m,mode=0700,uid=%d' % ALICE,
                        'bits-test-full', d], check=True)
        self.addCleanup(subprocess.run, ['umount', '-l', d])
        path = self.start_job(self.h.nginx_url('full.bin'), 'small-fs/full.bin')
        self.assertEqual(self.wait_state(path, ['error', 'transient-error', 'transferred']),
                         'transient-error')
        self.assert_error(path, 'local-file', 'errno:ENOSPC', 'http')
        kept = self.prop(path, 'BytesTransferred')
        self.assertLessEqual(kept, 3 * MiB)

        subprocess.run(['mount', '-o', 'remount,size=32m', d], check=True)
        self.alice.job(path, 'Resume')
        self.wait_state(path, 'transferred', timeout=60)
        self.assertEqual(self.prop(path, 'BytesTransferred'), size)
        self.assertEqual(self.complete_and_hash(path, 'small-fs/full.bin'), digest)


    def test_hung_file_system_holds_up_only_its_own_job(self):
        """alice's destination is her own file system, and it stops answering writes (a FUSE
        server that hangs). bitsd keeps answering and bob's download goes through meanwhile;
        after StallTimeoutSec her job is in transient-error naming the file system; a retry is
        refused at once while the hung write could still land, instead of touching the file
        again; once the write returned (here: the server is gone), a retry finishes the file."""
        size = 8 * MiB
        digest = self.h.make_file('nginx', 'hung.bin', size, seed=22)
        d = self.local('hung-fs')
        os.makedirs(d)
        os.chown(d, ALICE, ALICE)
        fs = hangfs.HangFS(d, ALICE, ALICE)
        self.addCleanup(fs.stop)
        fs.hang_writes = True
        path = self.start_job(self.h.nginx_url('hung.bin'), 'hung-fs/hung.bin')

        bob = self.h.client(BOB)
        bob_local = os.path.join(self.h.home(BOB), 'beside-hung.bin')
        _, bob_job = bob.manager('CreateJob', 'ss', 'beside a hung file system', 'download')
        bob.job(bob_job, 'AddFile', 'ss', self.h.nginx_url('hung.bin'), bob_local)
        bob.job(bob_job, 'Resume')
        self.assertEqual(bob.wait_job_state(bob_job, ['transferred', 'error', 'transient-error']), 'transferred')
        self.assertEqual(bob.job(bob_job, 'Complete'), 'complete')
        self.assertEqual(sha256_file(bob_local), digest)
        t0 = time.monotonic()
        self.assertIn(self.prop(path, 'State'), ('connecting', 'transferring'))
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertGreater(fs.writes_seen, 0)

        self.assertEqual(self.wait_state(path, ['error', 'transient-error', 'transferred']), 'transient-error')
        err = self.assert_error(path, 'local-file', 'errno:ETIMEDOUT', 'http')
        self.assertIn('has not answered', err[2])
        self.assertEqual(self.prop(path, 'BytesTransferred'), 0)

        writes = fs.writes_seen
        self.alice.job(path, 'Resume')
        deadline = time.monotonic() + 10
        while self.prop(path, 'Error')[1] != 'errno:EBUSY' and time.monotonic() < deadline:
            time.sleep(0.05)
        err = self.assert_error(path, 'local-file', 'errno:EBUSY', 'http')
        self.assertIn('has not returned', err[2])
        self.assertEqual(self.prop(path, 'State'), 'transient-error')
        self.assertEqual(fs.writes_seen, writes)

        # The server goes away: the hung write fails, the writer returns, the file is free.
        fs.stop()
        deadline = time.monotonic() + 15
        while True:
            self.alice.job(path, 'Resume')
            state = self.wait_state(path, ['transferred', 'error', 'transient-error'])
            if state != 'transient-error' or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(state, 'transferred', self.prop(path, 'Error'))
        self.assertEqual(self.complete_and_hash(path, 'hung-fs/hung.bin'), digest)


    def test_hung_source_file_system(self):
        """A file:// source on a file system that stops answering reads: bitsd answers
        meanwhile, and after StallTimeoutSec the job is in transient-error saying that the
        copy has not returned, with no byte counted."""
        d = self.local('hung-src')
        os.makedirs(d)
        os.chown(d, ALICE, ALICE)
        fs = hangfs.HangFS(d, ALICE, ALICE)
        self.addCleanup(fs.stop)
        fs.add_file('src.bin', bytes(range(256)) * 4096)
        fs.hang_reads = True
        path = self.start_job('file://' + os.path.join(d, 'src.bin'), 'from-hung.bin')
        t0 = time.monotonic()
        self.assertIn(self.prop(path, 'State'), ('queued', 'connecting', 'transferring'))
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertEqual(self.wait_state(path, ['error', 'transient-error', 'transferred']), 'transient-error')
        err = self.assert_error(path, 'local-file', 'errno:ETIMEDOUT', 'file')
        self.assertIn('has not returned', err[2])
        self.assertGreater(fs.reads_seen, 0)
        self.assertEqual(self.prop(path, 'BytesTransferred'), 0)


class TransientErrors(ErrorsBase):

    def test_connection_refused(self):
        url = 'http://127.0.0.1:%d/nothing.bin' % refused_port()
        path = self.start_job(url, 'refused.bin')
        self.assertEqual(self.wait_state(path, ['error', 'transient-error', 'transferred']),
                         'transient-error')
        self.assert_error(path, 'transport', 'curl:COULDNT_CONNECT', 'http')
        self.assertEqual(self.prop(path, 'ErrorCount'), 1)

    def test_stalled_server_times_out(self):
        self.h.make_file('fault', 'hang.bin', 4096)
        path = self.start_job(self.h.fault_url('hang.bin', hang=1), 'hang.bin')
        t0 = time.monotonic()
        self.assertEqual(self.wait_state(path, ['error', 'transient-error', 'transferred'],
                                         timeout=20), 'transient-error')
        self.assertLess(time.monotonic() - t0, 10)  # StallTimeoutSec=2
        self.assert_error(path, 'transport', 'curl:OPERATION_TIMEDOUT', 'http')

    def test_503_retried_after_minimum_retry_delay(self):
        digest = self.h.make_file('fault', 'flaky.bin', 2 * MiB, seed=2)
        url = self.h.fault_url('flaky.bin', fail_first=1, fail_status=503)
        path = self.start_job(url, 'flaky.bin', retry_delay=RETRY)
        # It sits in transient-error for MinimumRetryDelay (5 s), then goes on.
        self.assertEqual(self.wait_state(path, ['transient-error', 'transferred']),
                         'transient-error')
        self.assert_error(path, 'remote-file', 'http:503', 'http')
        self.wait_state(path, 'transferred', timeout=30)
        log = [e for e in self.requests_for('flaky.bin') if e['method'] == 'GET']
        self.assertEqual([e['status'] for e in log], [503, 200])
        gap = log[1]['time'] - log[0]['time']
        self.assertGreaterEqual(gap, RETRY)
        self.assertLess(gap, 20)
        self.assertEqual(self.prop(path, 'ErrorCount'), 1)
        self.assertEqual(self.complete_and_hash(path, 'flaky.bin'), digest)

    def test_retry_after_longer_than_delay_is_honoured(self):
        digest = self.h.make_file('fault', 'busy.bin', MiB, seed=3)
        url = self.h.fault_url('busy.bin', fail_first=1, fail_status=503, retry_after=8)
        path = self.start_job(url, 'busy.bin', retry_delay=RETRY)
        self.wait_state(path, 'transferred', timeout=30)
        log = [e for e in self.requests_for('busy.bin') if e['method'] == 'GET']
        self.assertEqual([e['status'] for e in log], [503, 200])
        gap = log[1]['time'] - log[0]['time']
        self.assertGreaterEqual(gap, 8)
        self.assertLess(gap, 20)
        self.assertEqual(self.complete_and_hash(path, 'busy.bin'), digest)

    def test_resume_during_transient_error_retries_now(self):
        digest = self.h.make_file('fault', 'now.bin', MiB, seed=5)
        url = self.h.fault_url('now.bin', fail_first=1, fail_status=503)
        path = self.start_job(url, 'now.bin')  # MinimumRetryDelay: an hour
        self.assertEqual(self.wait_state(path, ['transient-error', 'transferred']),
                         'transient-error')
        t0 = time.monotonic()
        self.alice.job(path, 'Resume')
        self.wait_state(path, 'transferred', timeout=10)
        self.assertLess(time.monotonic() - t0, RETRY)
        self.assertEqual(self.prop(path, 'Error'), ('none', '', '', '', '/'))
        self.assertEqual(self.complete_and_hash(path, 'now.bin'), digest)

    def _range_continuation(self, name, retry_delay, resume):
        size = 3 * MiB + 5
        digest = self.h.make_file('fault', name, size, seed=6)
        cut = 2 * MiB
        url = self.h.fault_url(name, disconnect_after=cut)
        path = self.start_job(url, name, retry_delay=retry_delay)
        self.assertEqual(self.wait_state(path, ['transient-error', 'error', 'transferred']),
                         'transient-error')
        err = self.prop(path, 'Error')
        self.assertEqual(err[0], 'transport', err)
        self.assertTrue(err[1].startswith('curl:'), err)
        kept = self.prop(path, 'BytesTransferred')
        self.assertGreater(kept, 0)
        if resume:
            self.alice.job(path, 'Resume')
        self.wait_state(path, 'transferred', timeout=30)
        log = [e for e in self.requests_for(name) if e['method'] == 'GET']
        self.assertEqual(len(log), 2, log)
        self.assertIsNone(log[0]['range'])
        st = os.stat(os.path.join(self.h.fault_dir, name))
        etag = '"%x-%x-%x"' % (st.st_ino, st.st_size, st.st_mtime_ns)
        start = int(log[1]['range'][len('bytes='):].rstrip('-'))
        self.assertEqual(log[1]['range'], 'bytes=%d-' % start)
        self.assertGreater(start, 0)
        self.assertLessEqual(start, cut)
        self.assertEqual(log[1]['if_range'], etag)
        self.assertEqual(log[1]['status'], 206)
        self.assertEqual(log[1]['bytes_sent'], size - start)
        self.assertEqual(self.complete_and_hash(path, name), digest)

    def test_disconnect_continues_with_range_after_delay(self):
        self._range_continuation('cut1.bin', retry_delay=RETRY, resume=False)

    def test_disconnect_continues_with_range_on_resume(self):
        self._range_continuation('cut2.bin', retry_delay=NEVER, resume=True)


class NoProgress(ErrorsBase):

    def test_no_progress_timeout_ends_in_error(self):
        self.h.make_file('fault', 'down.bin', 4096)
        url = self.h.fault_url('down.bin', status=503)
        t0 = time.monotonic()
        path = self.start_job(url, 'down.bin', retry_delay=RETRY, NoProgressTimeout=6)
        self.assertEqual(self.wait_state(path, ['transient-error', 'error']), 'transient-error')
        self.wait_state(path, 'error', timeout=30)
        self.assertLess(time.monotonic() - t0, 20)
        self.assert_error(path, 'remote-file', 'http:503', 'http')
        # It stays there: no timer takes it back to the queue.
        n = len(self.requests_for('down.bin'))
        self.assertGreaterEqual(n, 1)
        time.sleep(RETRY + 1)  # bounded wait to show that nothing happens
        self.assertEqual(self.prop(path, 'State'), 'error')
        self.assertEqual(len(self.requests_for('down.bin')), n)

    def test_progress_restarts_the_no_progress_clock(self):
        # Three responses cut after 1 MiB each, 5 s apart: longer than NoProgressTimeout
        # in all, but every attempt moves the file on, so the job never gives up.
        digest = self.h.make_file('fault', 'steps.bin', 3 * MiB - 1, seed=8)
        url = self.h.fault_url('steps.bin', disconnect_after=MiB)
        path = self.start_job(url, 'steps.bin', retry_delay=RETRY, NoProgressTimeout=7)
        self.wait_state(path, ['transferred', 'error'], timeout=40)
        self.assertEqual(self.prop(path, 'State'), 'transferred', self.prop(path, 'Error'))
        log = [e for e in self.requests_for('steps.bin') if e['method'] == 'GET']
        self.assertEqual(len(log), 3)
        self.assertGreaterEqual(log[-1]['time'] - log[0]['time'], 2 * RETRY)
        self.assertEqual(self.complete_and_hash(path, 'steps.bin'), digest)

    def test_no_progress_timeout_zero_is_immediate(self):
        self.h.make_file('fault', 'zero.bin', 4096)
        path = self.start_job(self.h.fault_url('zero.bin', status=503), 'zero.bin',
                              retry_delay=RETRY, NoProgressTimeout=0)
        self.assertEqual(self.wait_state(path, ['transient-error', 'error', 'transferred']),
                         'error')
        self.assert_error(path, 'remote-file', 'http:503', 'http')
        self.assertEqual(len(self.requests_for('zero.bin')), 1)

    def test_retry_delay_longer_than_no_progress_timeout(self):
        self.h.make_file('fault', 'never.bin', 4096)
        path = self.start_job(self.h.fault_url('never.bin', status=503), 'never.bin',
                              retry_delay=60, NoProgressTimeout=30)
        self.assertEqual(self.wait_state(path, ['transient-error', 'error', 'transferred']),
                         'error')
        self.assert_error(path, 'remote-file', 'http:503', 'http')
        self.assertEqual(len(self.requests_for('never.bin')), 1)


if __name__ == '__main__':
    harness.main()
