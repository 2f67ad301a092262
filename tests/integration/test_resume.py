#!/usr/bin/python3
"""Jobs survive the daemon: crashes (SIGKILL), clean stops, damaged databases.

architecture.md (Persistence): progress is checkpointed (data fdatasync'ed
before the byte count is recorded, every 1 s or 8 MiB), a restart resumes with
Range + If-Range, a changed remote file restarts from 0, and a corrupt or
newer-than-known database is never silently discarded. bits-spec.md §4.4: jobs,
their state, files and progress survive a service restart.
"""

import glob
import os
import shutil
import sqlite3
import tempfile
import time

import harness
from harness import ALICE, JOB_IFACE, FILE_IFACE, BusError, sha256_file

MiB = 1 << 20
GiB = 1 << 30
CHECKPOINT_BYTES = 8 * MiB   # bitsd's default CheckpointBytes
REFETCH_BUDGET = 16 * MiB    # architecture.md: kill -9 at 50 % re-fetches ≤ 16 MiB
ACTIVE = ('queued', 'connecting', 'transferring')


def db_path(h):
    return os.path.join(h.state_dir, 'bitsd.db')


def recorded_progress(h, job_path):
    """bytes_transferred the store holds for file 0 of the job, read from a copy
    of the database (so the daemon's own recovery of the WAL is left to it)."""
    job_id = job_path.rsplit('/', 1)[1]
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ('', '-wal'):
            if os.path.exists(db_path(h) + suffix):
                shutil.copy(db_path(h) + suffix, os.path.join(tmp, 'bitsd.db' + suffix))
        db = sqlite3.connect(os.path.join(tmp, 'bitsd.db'))
        try:
            rows = db.execute('SELECT job_id, bytes_transferred FROM files WHERE idx = 0'
                              ).fetchall()
        finally:
            db.close()
    for jid, done in rows:
        if jid.replace('-', '') == job_id:
            return done
    raise AssertionError('job %s not in the store: %r' % (job_id, rows))


def etag_of(path):
    st = os.stat(path)
    return '"%x-%x-%x"' % (st.st_ino, st.st_size, st.st_mtime_ns)


class ResumeBase(harness.HarnessTestCase):

    def setUp(self):
        if self.h.bitsd_pid is None or self.h._bitsd.poll() is not None:
            self.h.start_bitsd()
        self.alice = self.h.client(ALICE)
        self.h.fault_reset()

    def local(self, name):
        return os.path.join(self.h.home(ALICE), name)

    def new_job(self, remote, local_name, display=None, resume=True, **props):
        c = self.alice
        _, path = c.manager('CreateJob', 'ss', display or 'resume:' + local_name, 'download')
        for name, (sig, value) in props.items():
            c.set(path, JOB_IFACE, name, sig, value)
        c.job(path, 'AddFile', 'ss', remote, self.local(local_name))
        if resume:
            c.job(path, 'Resume')
        return path

    def restart(self, kill):
        if kill:
            self.h.kill_bitsd()
        else:
            self.assertEqual(self.h.stop_bitsd(), 0)
        self.h.start_bitsd()
        self.alice = self.h.client(ALICE)

    def gets(self, name):
        return [e for e in self.h.fault_log()
                if e['path'] == '/f/' + name and e['method'] == 'GET']


class CrashResume(ResumeBase):
    """SIGKILL in the middle of a download; the restarted daemon continues it."""

    BIG = 'big.bin'

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.big_sha = cls.h.make_file('fault', cls.BIG, GiB, seed=11)

    def wait_progress(self, path, at_least, timeout):
        def enough():
            done = self.alice.job_prop(path, 'BytesTransferred')
            return done if done >= at_least else 0
        return self.h.wait_for(enough, timeout=timeout, interval=0.005,
                               what='BytesTransferred ≥ %d' % at_least)

    def test_kill_at_half_of_1gib_and_resume(self):
        h = self.h
        url = h.fault_url(self.BIG, rate=150_000_000)  # ~7 s for the whole file
        path = self.new_job(url, 'big.bin')
        self.wait_progress(path, GiB // 2, timeout=60)
        state_before = self.alice.job_prop(path, 'State')
        h.kill_bitsd()
        checkpoint = recorded_progress(h, path)
        self.assertGreater(checkpoint, 0, 'nothing was checkpointed before the crash')
        self.assertIn(state_before, ACTIVE)
        n_before = len(self.gets(self.BIG))

        h.start_bitsd()
        self.alice = c = h.client(ALICE)
        job_id = path.rsplit('/', 1)[1]
        self.assertEqual(c.manager('GetJob', 's', job_id), path)
        self.assertIn(c.job_prop(path, 'State'), ACTIVE + ('transferred',))
        after = c.job_prop(path, 'BytesTransferred')
        self.assertGreaterEqual(after, checkpoint)
        self.assertGreater(after, 0)

        c.wait_job_state(path, 'transferred', timeout=60)
        log = self.gets(self.BIG)
        self.assertGreater(len(log), n_before, 'no request after the restart')
        first = log[n_before]
        self.assertEqual(first['range'], 'bytes=%d-' % checkpoint, first)
        self.assertEqual(first['if_range'], etag_of(os.path.join(h.fault_dir, self.BIG)))
        self.assertEqual(first['status'], 206)
        refetched = sum(e['bytes_sent'] for e in log) - GiB
        self.assertLessEqual(refetched, REFETCH_BUDGET + CHECKPOINT_BYTES,
                             're-fetched %d bytes' % refetched)
        self.assertEqual(c.job_prop(path, 'BytesTransferred'), GiB)
        self.assertEqual(c.job(path, 'Complete'), 'complete')
        self.assertEqual(sha256_file(self.local('big.bin')), self.big_sha)
        os.unlink(self.local('big.bin'))

    def test_changed_remote_file_is_fetched_again_from_zero(self):
        h = self.h
        size = 64 * MiB
        h.make_file('fault', 'changing.bin', size, seed=21)
        old_etag = etag_of(os.path.join(h.fault_dir, 'changing.bin'))
        url = h.fault_url('changing.bin', rate=24 * MiB)  # ~3 s
        path = self.new_job(url, 'changing.bin')
        self.wait_progress(path, 24 * MiB, timeout=30)
        h.kill_bitsd()
        self.assertGreater(recorded_progress(h, path), 0)
        # Same size, new content (and a new ETag): only the validator tells them apart.
        new_sha = h.fault_replace('changing.bin', size, seed=22)
        n_before = len(self.gets('changing.bin'))

        h.start_bitsd()
        self.alice = c = h.client(ALICE)
        c.wait_job_state(path, 'transferred', timeout=60)
        log = self.gets('changing.bin')
        first = log[n_before]
        self.assertEqual(first['if_range'], old_etag, first)
        self.assertIsNotNone(first['range'], first)
        self.assertEqual(first['status'], 200, first)  # If-Range failed: the whole new entity
        self.assertEqual(c.job(path, 'Complete'), 'complete')
        self.assertEqual(sha256_file(self.local('changing.bin')), new_sha)

    def test_server_ignoring_ranges_after_crash_restarts_from_zero(self):
        h = self.h
        size = 48 * MiB
        digest = h.make_file('fault', 'noranges.bin', size, seed=23)
        url = h.fault_url('noranges.bin', rate=24 * MiB, noranges=1)
        path = self.new_job(url, 'noranges.bin')
        self.wait_progress(path, 20 * MiB, timeout=30)
        h.kill_bitsd()
        self.assertGreater(recorded_progress(h, path), 0)
        n_before = len(self.gets('noranges.bin'))
        h.start_bitsd()
        self.alice = c = h.client(ALICE)
        c.wait_job_state(path, 'transferred', timeout=60)
        log = self.gets('noranges.bin')[n_before:]
        self.assertEqual([e['status'] for e in log], [200])
        self.assertEqual(log[0]['bytes_sent'], size)
        self.assertEqual(c.job_prop(path, 'BytesTransferred'), size)
        self.assertEqual(c.job(path, 'Complete'), 'complete')
        self.assertEqual(sha256_file(self.local('noranges.bin')), digest)

    def test_changed_remote_file_after_disconnect_is_not_spliced(self):
        # The same rule without a crash: a transient error, the file changes, Resume.
        h = self.h
        size = 6 * MiB
        h.make_file('fault', 'swap.bin', size, seed=24)
        old_etag = etag_of(os.path.join(h.fault_dir, 'swap.bin'))
        path = self.new_job(h.fault_url('swap.bin', disconnect_after=4 * MiB), 'swap.bin',
                            MinimumRetryDelay=('u', 3600))
        c = self.alice
        c.wait_job_state(path, 'transient-error')
        self.assertGreater(c.job_prop(path, 'BytesTransferred'), 0)
        new_sha = h.fault_replace('swap.bin', size, seed=25)
        n_before = len(self.gets('swap.bin'))
        c.job(path, 'Resume')
        # 4 MiB per response: the new content needs two responses (200, then a Range).
        self.h.wait_for(lambda: c.job_prop(path, 'State') in ('transient-error', 'transferred'),
                        timeout=30, what='the retried transfer to stop')
        if c.job_prop(path, 'State') == 'transient-error':
            c.job(path, 'Resume')
        c.wait_job_state(path, 'transferred', timeout=30)
        log = self.gets('swap.bin')[n_before:]
        self.assertEqual(log[0]['if_range'], old_etag)
        self.assertEqual(log[0]['status'], 200)
        self.assertEqual(c.job(path, 'Complete'), 'complete')
        self.assertEqual(sha256_file(self.local('swap.bin')), new_sha)


class CleanRestart(ResumeBase):
    """SIGTERM, start again: every job is where it was."""

    VOLATILE = ('ModificationTime',)

    def snapshot(self, path):
        c = self.alice
        props = c.get_all(path, JOB_IFACE)
        for k in self.VOLATILE:
            props.pop(k, None)
        files = c.job(path, 'ListFiles')
        return props, files, [c.get_all(f, FILE_IFACE) for f in files]

    def test_suspended_transient_and_transferred_jobs_survive(self):
        h = self.h
        digest = h.make_file('fault', 'small.bin', 3 * MiB + 1, seed=31)
        h.make_file('fault', 'slow.bin', 32 * MiB, seed=32)
        h.make_file('fault', 'flaky.bin', 4096, seed=33)

        fresh = self.new_job(h.fault_url('small.bin'), 'fresh.bin', display='never resumed',
                             resume=False, Priority=('s', 'high'),
                             Description=('s', 'a suspended job'))
        partial = self.new_job(h.fault_url('slow.bin', rate=4 * MiB), 'partial.bin',
                               display='suspended half way', Priority=('s', 'low'))
        self.h.wait_for(lambda: self.alice.job_prop(partial, 'BytesTransferred') > 0,
                        timeout=20, what='some progress')
        self.alice.job(partial, 'Suspend')
        flaky = self.new_job(h.fault_url('flaky.bin', status=503), 'flaky.bin',
                             display='retrying', MinimumRetryDelay=('u', 3600),
                             Priority=('s', 'foreground'))
        done = self.new_job(h.fault_url('small.bin'), 'done.bin', display='finished',
                            Priority=('s', 'foreground'))
        c = self.alice
        c.wait_job_state(flaky, 'transient-error')
        c.wait_job_state(done, 'transferred')

        before = {p: self.snapshot(p) for p in (fresh, partial, flaky, done)}
        self.assertEqual(before[fresh][0]['State'], 'suspended')
        self.assertEqual(before[partial][0]['State'], 'suspended')
        self.assertGreater(before[partial][0]['BytesTransferred'], 0)
        self.assertEqual(before[flaky][0]['State'], 'transient-error')
        self.assertEqual(before[done][0]['State'], 'transferred')
        listed = sorted(c.manager('ListJobs', 't', 0))
        flaky_requests = len(self.gets('flaky.bin'))

        self.restart(kill=False)
        c = self.alice
        self.assertEqual(sorted(c.manager('ListJobs', 't', 0)), listed)
        for p, snap in before.items():
            self.assertEqual(self.snapshot(p), snap, p)
        self.assertEqual(c.job_prop(done, 'BytesTransferred'), 3 * MiB + 1)
        self.assertEqual(c.job_prop(done, 'BytesTotal'), 3 * MiB + 1)
        time.sleep(1.5)  # bounded wait: the transient job is not retried early, nothing moves
        self.assertEqual(len(self.gets('flaky.bin')), flaky_requests)
        self.assertEqual(c.job_prop(flaky, 'State'), 'transient-error')
        self.assertEqual(c.job_prop(partial, 'BytesTransferred'),
                         before[partial][0]['BytesTransferred'])

        self.assertEqual(c.job(done, 'Complete'), 'complete')
        self.assertEqual(sha256_file(self.local('done.bin')), digest)
        # The half-done job continues where it stopped.
        n = len(self.gets('slow.bin'))
        c.job(partial, 'Resume')
        c.wait_job_state(partial, 'transferred', timeout=30)
        first = self.gets('slow.bin')[n]
        self.assertEqual(first['range'],
                         'bytes=%d-' % before[partial][0]['BytesTransferred'])
        for p in (fresh, flaky, partial):
            c.job(p, 'Cancel')

    def test_transfer_stopped_by_sigterm_continues_where_it_stopped(self):
        h = self.h
        size = 64 * MiB
        digest = h.make_file('fault', 'term.bin', size, seed=35)
        path = self.new_job(h.fault_url('term.bin', rate=24 * MiB), 'term.bin')
        seen = h.wait_for(lambda: (lambda b: b if b >= 16 * MiB else 0)(
            self.alice.job_prop(path, 'BytesTransferred')), timeout=30, what='16 MiB')
        n_before = len(self.gets('term.bin'))
        self.restart(kill=False)  # SIGTERM: every byte received is kept
        c = self.alice
        self.assertIn(c.job_prop(path, 'State'), ACTIVE)
        self.assertGreaterEqual(c.job_prop(path, 'BytesTransferred'), seen)
        c.wait_job_state(path, 'transferred', timeout=60)
        log = self.gets('term.bin')
        start = int(log[n_before]['range'][len('bytes='):].rstrip('-'))
        self.assertGreaterEqual(start, seen)
        self.assertEqual(log[n_before]['status'], 206)
        # Only what was in flight (socket buffers) is fetched twice.
        self.assertLessEqual(sum(e['bytes_sent'] for e in log) - size, CHECKPOINT_BYTES)
        self.assertEqual(c.job(path, 'Complete'), 'complete')
        self.assertEqual(sha256_file(self.local('term.bin')), digest)

    def test_transient_error_is_retried_after_restart(self):
        h = self.h
        digest = h.make_file('fault', 'later.bin', 2 * MiB, seed=34)
        url = h.fault_url('later.bin', fail_first=1, fail_status=503)
        path = self.new_job(url, 'later.bin', MinimumRetryDelay=('u', 5),
                            Priority=('s', 'foreground'))
        self.alice.wait_job_state(path, ['transient-error', 'transferred'])
        self.restart(kill=False)
        c = self.alice
        self.assertEqual(c.job_prop(path, 'State'), 'transient-error')
        c.wait_job_state(path, 'transferred', timeout=20)
        log = self.gets('later.bin')
        self.assertEqual([e['status'] for e in log], [503, 200])
        self.assertGreaterEqual(log[1]['time'] - log[0]['time'], 5)
        self.assertEqual(c.job(path, 'Complete'), 'complete')
        self.assertEqual(sha256_file(self.local('later.bin')), digest)


    def test_stopped_between_last_checkpoint_and_completion(self):
        """Every byte of the file reached the disk and was counted, but the daemon stopped
        before it recorded the file as done (or a Suspend came while the last bytes were being
        synced). Resumed, the job is transferred without asking the server for bytes past the
        end, and the file is whole."""
        h = self.h
        size = 3 * MiB + 5
        digest = h.make_file('fault', 'edge.bin', size, seed=36)
        path = self.new_job(h.fault_url('edge.bin', rate=MiB), 'edge.bin')
        c = self.alice
        h.wait_for(lambda: c.job_prop(path, 'BytesTransferred') > 0, timeout=20, what='progress')
        c.job(path, 'Suspend')
        f = path + '/file/0'
        temp = c.file_prop(f, 'TemporaryName')
        self.assertEqual(c.file_prop(f, 'BytesTotal'), size)
        self.assertEqual(h.stop_bitsd(), 0)

        # What the crash left: the whole file in the temporary file, its length recorded.
        with open(os.path.join(h.fault_dir, 'edge.bin'), 'rb') as src, open(temp, 'r+b') as dst:
            dst.write(src.read())
        db = sqlite3.connect(db_path(h))
        try:
            with db:
                n = db.execute('UPDATE files SET bytes_transferred = ? WHERE replace(job_id, \'-\', \'\') = ? '
                               'AND idx = 0', (size, path.rsplit('/', 1)[1])).rowcount
        finally:
            db.close()
        self.assertEqual(n, 1)

        h.start_bitsd()
        c = self.alice = h.client(ALICE)
        gets = len(self.gets('edge.bin'))
        c.job(path, 'Resume')
        self.assertEqual(c.wait_job_state(path, ['transferred', 'error', 'transient-error']), 'transferred',
                         c.job_prop(path, 'Error'))
        self.assertEqual(len(self.gets('edge.bin')), gets)
        self.assertEqual(c.job(path, 'Complete'), 'complete')
        self.assertEqual(sha256_file(self.local('edge.bin')), digest)


class DamagedDatabase(ResumeBase):

    def test_corrupt_database_is_moved_aside(self):
        h = self.h
        path = self.new_job(h.fault_url('x.bin'), 'x.bin', resume=False)
        self.assertEqual(h.stop_bitsd(), 0)
        garbage = os.urandom(64 * 1024)
        with open(db_path(h), 'wb') as f:
            f.write(garbage)
        for suffix in ('-wal', '-shm'):
            if os.path.exists(db_path(h) + suffix):
                os.unlink(db_path(h) + suffix)
        log_len = len(h.bitsd_log())
        t0 = int(time.time())

        h.start_bitsd()
        aside = glob.glob(db_path(h) + '.corrupt-*')
        self.assertEqual(len(aside), 1, aside)
        stamp = int(aside[0].rsplit('-', 1)[1])
        self.assertTrue(t0 - 2 <= stamp <= time.time() + 2, aside)
        with open(aside[0], 'rb') as f:
            self.assertEqual(f.read(), garbage)
        log = h.bitsd_log()[log_len:]
        self.assertIn(os.path.basename(aside[0]), log)
        # It runs with an empty database: the old job is gone, new ones work.
        c = self.alice = h.client(ALICE)
        with self.assertRaises(BusError) as cm:
            c.manager('GetJob', 's', path.rsplit('/', 1)[1])
        self.assertEqual(cm.exception.name, 'org.freedesktop.bits1.Error.NotFound')
        c.manager('CreateJob', 'ss', 'after', 'download')
        self.assertEqual(h.stop_bitsd(), 0)
        h.start_bitsd()
        self.assertEqual(len(h.client(ALICE).manager('ListJobs', 't', 0)), 1)

    def test_newer_schema_refuses_to_start(self):
        h = self.h
        self.new_job(h.fault_url('y.bin'), 'y.bin', resume=False)
        self.assertEqual(h.stop_bitsd(), 0)
        db = sqlite3.connect(db_path(h))
        db.execute('PRAGMA user_version = 99')
        db.commit()
        db.close()
        before = sha256_file(db_path(h))
        aside_before = sorted(glob.glob(db_path(h) + '.corrupt-*'))
        log_len = len(h.bitsd_log())

        with self.assertRaises(RuntimeError):
            h.start_bitsd()
        status = h._bitsd.wait(10)
        self.assertNotEqual(status, 0)
        log = h.bitsd_log()[log_len:]
        self.assertIn('99', log)
        self.assertRegex(log, r'(?i)(newer|version)')
        self.assertEqual(sha256_file(db_path(h)), before)
        self.assertEqual(sorted(glob.glob(db_path(h) + '.corrupt-*')), aside_before)
        db = sqlite3.connect(db_path(h))
        try:
            self.assertEqual(db.execute('PRAGMA user_version').fetchone()[0], 99)
            self.assertGreaterEqual(db.execute('SELECT count(*) FROM jobs').fetchone()[0], 1)
        finally:
            db.close()


if __name__ == '__main__':
    harness.main()
