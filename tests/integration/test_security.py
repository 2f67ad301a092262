#!/usr/bin/python3
"""Security of bitsd against another local user, through the real daemon.

bitsd runs as root; every local-file operation must run as the job owner (a file worker that
switched to the owner's UID/GID/groups), so the kernel enforces that user's permissions. The
attacker here is alice (4001) or bob (4002), using only what an unprivileged user can do: D-Bus
calls, and renames/symlinks in her own directories (done as alice, through setpriv). Root plays
the victim: root-owned directories and "shadow-like" files (0600) whose content hash, mode, owner,
inode and mtime are compared before and after every attack.

Every refusal is checked twice: the D-Bus error (name, and a message naming the value) and the
state that must not have changed (files on disk, FilesTotal, State).

A NUL inside a string cannot be sent over D-Bus at all; its in-band form, %00 in a file:// URL,
is covered by test_hostile_paths_and_urls_are_invalid_args.
"""

import json
import os
import signal
import subprocess
import stat
import threading
import time
import uuid

import harness
from harness import ALICE, BOB, BusError, JOB_IFACE, MANAGER_PATH, sha256_file

ACCESS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied'
INVALID_ARGS = 'org.freedesktop.DBus.Error.InvalidArgs'
UNKNOWN_OBJECT = 'org.freedesktop.DBus.Error.UnknownObject'
NOT_FOUND = 'org.freedesktop.bits1.Error.NotFound'
STRING_TOO_LONG = 'org.freedesktop.bits1.Error.StringTooLong'
TOO_MANY_FILES_IN_JOB = 'org.freedesktop.bits1.Error.TooManyFilesInJob'
INTERACTIVE = 'org.freedesktop.DBus.Error.InteractiveAuthorizationRequired'

# Several slow jobs at once, and checkpoints often enough that a temporary file has bytes on
# disk soon after a transfer started.
CONFIG = '[Daemon]\nMaxBackgroundJobs=20\nCheckpointIntervalMSec=100\n'

SHADOW = b'root:$6$very$secret-hash:19000:0:99999:7:::\n' * 50

# alice's atomic swap of a path for a symlink (what `ln -sfn` does, minus the window).
SWAP_FOR_SYMLINK = ('import os, sys\n'
                    'target, path = sys.argv[1:]\n'
                    'os.symlink(target, path + ".swap")\n'
                    'os.rename(path + ".swap", path)\n')
# alice moves her directory away and puts a symlink in its place.
SWAP_DIR_FOR_SYMLINK = ('import os, sys\n'
                        'target, path, aside = sys.argv[1:]\n'
                        'os.rename(path, aside)\n'
                        'os.symlink(target, path)\n')
UNDO_DIR_SWAP = ('import os, sys\n'
                 'path, aside = sys.argv[1:]\n'
                 'os.unlink(path)\n'
                 'os.rename(aside, path)\n')


def snap(path):
    """What must not change about PATH (not following a symlink there)."""
    st = os.lstat(path)
    s = {'uid': st.st_uid, 'gid': st.st_gid, 'mode': oct(st.st_mode), 'ino': st.st_ino,
         'size': st.st_size, 'mtime_ns': st.st_mtime_ns}
    if stat.S_ISREG(st.st_mode):
        s['sha256'] = sha256_file(path)
    elif stat.S_ISLNK(st.st_mode):
        s['target'] = os.readlink(path)
    return s


def tree(top):
    """{relative path: snap} for everything below TOP (symlinks are not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            s = snap(p)
            if stat.S_ISDIR(os.lstat(p).st_mode):
                s.pop('mtime_ns')  # directories' mtimes follow their entries, compared anyway
            out[os.path.relpath(p, top)] = s
    return out


class Security(harness.HarnessTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.h.start_bitsd(config_text=CONFIG)
        cls.alice = cls.h.client(ALICE)
        cls.bob = cls.h.client(BOB)

    def setUp(self):
        # The daemon must be up at the start of every test (a crash would show here first).
        if self.h.name_owner(harness.BUS_NAME) is None:
            self.h.start_bitsd()
        self.n = self.id().rsplit('.', 1)[-1]

    # --- helpers ---------------------------------------------------------

    def mkdir(self, path, uid, mode=0o755):
        os.makedirs(path, exist_ok=True)
        os.chown(path, uid, uid)
        os.chmod(path, mode)
        return path

    def alice_dir(self, name='dl'):
        self.mkdir(os.path.join(self.h.home(ALICE), self.n), ALICE)
        return self.mkdir(os.path.join(self.h.home(ALICE), self.n, name), ALICE)

    def root_dir(self, name='rootdir'):
        path = os.path.join(self.h.root, self.n, name)
        os.makedirs(path)
        os.chmod(os.path.dirname(path), 0o755)
        os.chmod(path, 0o755)
        return path

    def root_file(self, path, content=SHADOW, mode=0o600):
        with open(path, 'wb') as f:
            f.write(content)
        os.chown(path, 0, 0)
        os.chmod(path, mode)
        # An mtime in the past, so that any write would visibly move it.
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        return path

    def as_user(self, uid, code, *args):
        r = self.h.run_as(uid, ['/usr/bin/python3', '-c', code, *args])
        self.assertEqual(r.returncode, 0, 'as uid %d: %s' % (uid, r.stderr))

    def new_job(self, c, name=None):
        job_id, path = c.manager('CreateJob', 'ss', name or self.n, 'download')
        self.addCleanup(self.cancel_quietly, c, path)
        return job_id, path

    def cancel_quietly(self, c, path):
        try:
            c.job(path, 'Cancel')
        except (BusError, RuntimeError):
            pass

    def assert_refused(self, cm, names, *values):
        """The error has one of NAMES and its message names every one of VALUES."""
        names = (names,) if isinstance(names, str) else names
        e = cm.exception
        self.assertIn(e.name, names, e)
        for v in values:
            self.assertIn(v, e.message, 'the message does not name %r' % v)

    def assert_job(self, c, path, state, files_total):
        self.assertEqual(c.job_prop(path, 'State'), state)
        self.assertEqual(c.job_prop(path, 'FilesTotal'), files_total)

    def assert_all_owned_by(self, top, uid, except_=()):
        """Everything below TOP belongs to UID, apart from the paths in EXCEPT_."""
        for rel, s in tree(top).items():
            if os.path.join(top, rel) in except_:
                continue
            self.assertEqual(s['uid'], uid, '%s is owned by %d' % (rel, s['uid']))

    def slow_job(self, size=8 << 20, rate=200_000, local_dir=None, seed=1):
        """Alice's job downloading a throttled file into LOCAL_DIR; returns once its temporary
        file exists with bytes in it: (job path, file path, local name, temp name, sha256)."""
        name = '%s-%d.bin' % (self.n, seed)
        digest = self.h.make_file('fault', name, size, seed=seed)
        local = os.path.join(local_dir or self.alice_dir(), 'f.bin')
        _, job = self.new_job(self.alice)
        self.alice.job(job, 'AddFile', 'ss', self.h.fault_url(name, rate=rate), local)
        fpath = job + '/file/0'
        temp = self.alice.file_prop(fpath, 'TemporaryName')
        self.alice.job(job, 'Resume')
        self.h.wait_for(lambda: (os.path.exists(temp) and os.stat(temp).st_size > 0
                                 and self.alice.job_prop(job, 'State') == 'transferring'),
                        timeout=15, what='bytes in the temporary file')
        return job, fpath, local, temp, digest

    # --- 1. destinations alice may not write ------------------------------

    def test_add_file_into_root_owned_directory_is_denied(self):
        rootdir = self.root_dir()
        self.root_file(os.path.join(rootdir, 'existing'), b'root data', 0o644)
        # Also through a symlink of alice's own pointing there.
        link = os.path.join(self.alice_dir(), 'to-root')
        os.symlink(rootdir, link)
        os.lchown(link, ALICE, ALICE)
        before = tree(rootdir)
        _, job = self.new_job(self.alice)
        url = self.h.nginx_url('never-fetched.bin')
        for target, shown in ((rootdir + '/f.bin', rootdir), (link + '/f.bin', link),
                              (rootdir + '/existing', rootdir)):
            with self.subTest(target=target):
                with self.assertRaises(BusError) as cm:
                    self.alice.job(job, 'AddFile', 'ss', url, target)
                self.assert_refused(cm, ACCESS_DENIED, shown)
        self.assertEqual(tree(rootdir), before)
        self.assert_job(self.alice, job, 'suspended', 0)
        self.assertEqual(self.alice.job(job, 'ListFiles'), [])

    def test_add_file_into_bobs_home_is_refused(self):
        bobs = self.mkdir(os.path.join(self.h.home(BOB), self.n), BOB)
        before = tree(self.h.home(BOB))
        _, job = self.new_job(self.alice)
        for target in (self.h.home(BOB) + '/f.bin', bobs + '/f.bin'):
            with self.subTest(target=target):
                with self.assertRaises(BusError) as cm:
                    self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url('x.bin'), target)
                # AccessDenied when alice may see the directory, InvalidArgs when she cannot
                # even reach it: both are a refusal that names the directory.
                self.assert_refused(cm, (ACCESS_DENIED, INVALID_ARGS), os.path.dirname(target))
        self.assertEqual(tree(self.h.home(BOB)), before)
        self.assert_job(self.alice, job, 'suspended', 0)

    def test_add_file_over_root_owned_file_in_own_directory_is_denied(self):
        d = self.alice_dir()
        victim = self.root_file(os.path.join(d, 'root-owned.conf'), b'keep me\n', 0o644)
        before = tree(d)
        _, job = self.new_job(self.alice)
        with self.assertRaises(BusError) as cm:
            self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url('x.bin'), victim)
        self.assert_refused(cm, ACCESS_DENIED, victim)
        self.assertEqual(tree(d), before)
        self.assert_job(self.alice, job, 'suspended', 0)

    def test_add_file_over_own_symlink_to_root_file_is_refused(self):
        d = self.alice_dir()
        shadow = self.root_file(os.path.join(self.root_dir(), 'shadow'))
        link = os.path.join(d, 'f.bin')
        os.symlink(shadow, link)
        os.lchown(link, ALICE, ALICE)
        before, shadow_before = tree(d), snap(shadow)
        _, job = self.new_job(self.alice)
        with self.assertRaises(BusError) as cm:
            self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url('x.bin'), link)
        self.assert_refused(cm, (ACCESS_DENIED, INVALID_ARGS), link)
        self.assertEqual((tree(d), snap(shadow)), (before, shadow_before))
        self.assert_job(self.alice, job, 'suspended', 0)

    def test_complete_refuses_to_replace_root_file_that_appeared_later(self):
        d = self.alice_dir()
        digest = self.h.make_file('nginx', self.n + '.bin', 100_000, seed=3)
        local = os.path.join(d, 'f.bin')
        _, job = self.new_job(self.alice)
        self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url(self.n + '.bin'), local)
        self.alice.job(job, 'Resume')
        self.alice.wait_job_state(job, 'transferred')
        temp = self.alice.file_prop(job + '/file/0', 'TemporaryName')
        # Root puts a file at the final name after AddFile checked it.
        self.root_file(local, b'root config\n', 0o644)
        before = tree(d)
        with self.assertRaises(BusError) as cm:
            self.alice.job(job, 'Complete')
        self.assert_refused(cm, ACCESS_DENIED, local)
        self.assertEqual(tree(d), before)
        self.assert_job(self.alice, job, 'transferred', 1)
        self.assertFalse(self.alice.file_prop(job + '/file/0', 'Completed'))
        self.assertEqual(sha256_file(temp), digest)  # her bytes are still there

    # --- 2. swaps and races -------------------------------------------------

    def test_temp_swapped_for_symlink_mid_transfer_then_complete(self):
        shadow = self.root_file(os.path.join(self.root_dir(), 'shadow'))
        shadow_before = snap(shadow)
        job, fpath, local, temp, _ = self.slow_job(size=600_000, rate=300_000)
        self.as_user(ALICE, SWAP_FOR_SYMLINK, shadow, temp)
        state = self.alice.wait_job_state(job, ('transferred', 'error', 'transient-error'), timeout=30)
        self.assertEqual(snap(shadow), shadow_before, 'the transfer wrote the root file')
        if state == 'transferred':
            try:
                self.alice.job(job, 'Complete')
            except BusError:
                pass  # refusing is fine too; what matters is below
        self.assertEqual(snap(shadow), shadow_before, 'Complete touched the root file')
        # Whatever now sits at the temporary or final name is alice's own (her symlink).
        self.assert_all_owned_by(os.path.dirname(local), ALICE)

    def test_temp_swapped_for_symlink_is_not_reopened(self):
        shadow = self.root_file(os.path.join(self.root_dir(), 'shadow'))
        shadow_before = snap(shadow)
        job, fpath, local, temp, _ = self.slow_job()
        self.as_user(ALICE, SWAP_FOR_SYMLINK, shadow, temp)
        # Suspend + Resume: the daemon opens the temporary name again, as alice, O_NOFOLLOW.
        self.alice.job(job, 'Suspend')
        self.alice.job(job, 'Resume')
        self.alice.wait_job_state(job, 'error', timeout=15)
        context, code, message, _, errfile = self.alice.job_prop(job, 'Error')
        self.assertEqual((context, errfile), ('local-file', fpath))
        self.assertEqual(code, 'errno:ELOOP')
        self.assertIn(temp, message)
        self.assertEqual(snap(shadow), shadow_before)
        self.assertTrue(os.path.islink(temp))
        self.alice.job(job, 'Cancel')
        self.assertFalse(os.path.lexists(temp))
        self.assertEqual(snap(shadow), shadow_before)

    def test_cancel_after_temp_swapped_for_symlink_removes_only_the_symlink(self):
        shadow = self.root_file(os.path.join(self.root_dir(), 'shadow'))
        shadow_before = snap(shadow)
        job, fpath, local, temp, _ = self.slow_job()
        self.as_user(ALICE, SWAP_FOR_SYMLINK, shadow, temp)
        self.alice.job(job, 'Cancel')
        self.assertEqual(self.alice.job_prop(job, 'State'), 'cancelled')
        self.assertFalse(os.path.lexists(temp))
        self.assertEqual(snap(shadow), shadow_before)
        self.assertEqual(os.listdir(os.path.dirname(local)), [])

    def test_hardlinked_root_file_as_temp_is_refused_after_restart(self):
        with open('/proc/sys/fs/protected_hardlinks') as f:
            protected = f.read().strip() == '1'
        for mode in (0o600, 0o666):
            with self.subTest(mode=oct(mode)):
                rootdir = self.root_dir('rootdir-%o' % mode)
                shadow = self.root_file(os.path.join(rootdir, 'shadow'), mode=mode)
                job, fpath, local, temp, _ = self.slow_job(local_dir=self.alice_dir('dl-%o' % mode),
                                                           seed=mode)
                if protected and mode == 0o600:
                    # alice cannot do this herself (fs.protected_hardlinks=1) ...
                    r = self.h.run_as(ALICE, ['ln', '-f', shadow, temp + '.try'])
                    self.assertNotEqual(r.returncode, 0)
                    self.assertFalse(os.path.lexists(temp + '.try'))
                # ... so root plants it, as another way to the same inode would.
                self.h.stop_bitsd()
                os.unlink(temp)
                os.link(shadow, temp)
                shadow_before = snap(shadow)
                self.h.start_bitsd()
                self.alice.wait_job_state(job, ('error', 'transient-error'), timeout=15)
                context, code, message, _, errfile = self.alice.job_prop(job, 'Error')
                self.assertEqual((context, errfile), ('local-file', fpath))
                # 0600: the open as alice fails; 0666: opened, but not alice's file.
                self.assertEqual(code, 'errno:EACCES' if mode == 0o600 else 'errno:EPERM')
                self.assertIn(temp, message)
                self.assertEqual(snap(shadow), shadow_before)
                self.assertEqual(os.stat(shadow).st_nlink, 2)
                self.alice.job(job, 'Cancel')
                # Cancel removes alice's name for it (her directory), never the root file.
                self.assertFalse(os.path.lexists(temp))
                self.assertEqual(sha256_file(shadow), shadow_before['sha256'])
                self.assertEqual(os.stat(shadow).st_mode & 0o7777, mode)

    def test_destination_dir_swapped_for_root_dir_before_complete(self):
        d = self.alice_dir('dl')
        job, fpath, local, temp, digest = self.slow_job(size=600_000, rate=300_000, local_dir=d)
        rootdir = self.root_dir()
        # A root file under the temporary file's name: a rename as root would move it.
        self.root_file(os.path.join(rootdir, os.path.basename(temp)), b'root decoy\n', 0o644)
        root_before = tree(rootdir)
        aside = d + '.aside'
        self.as_user(ALICE, SWAP_DIR_FOR_SYMLINK, rootdir, d, aside)
        self.alice.wait_job_state(job, 'transferred', timeout=30)
        with self.assertRaises(BusError) as cm:
            self.alice.job(job, 'Complete')
        self.assert_refused(cm, (ACCESS_DENIED, INVALID_ARGS, 'org.freedesktop.DBus.Error.Failed'),
                            local)
        self.assertEqual(tree(rootdir), root_before)
        self.assert_job(self.alice, job, 'transferred', 1)
        self.assertFalse(self.alice.file_prop(fpath, 'Completed'))
        # Put the directory back: the job is still good, and completes as alice.
        self.as_user(ALICE, UNDO_DIR_SWAP, d, aside)
        self.assertEqual(self.alice.job(job, 'Complete'), 'complete')
        self.assertEqual(sha256_file(local), digest)
        self.assertEqual(tree(rootdir), root_before)

    def test_cancel_after_dir_swapped_for_root_dir_leaves_root_files(self):
        d = self.alice_dir('dl')
        job, fpath, local, temp, _ = self.slow_job(local_dir=d)
        rootdir = self.root_dir()
        self.root_file(os.path.join(rootdir, os.path.basename(temp)), b'root decoy\n', 0o644)
        root_before = tree(rootdir)
        self.as_user(ALICE, SWAP_DIR_FOR_SYMLINK, rootdir, d, d + '.aside')
        self.alice.job(job, 'Cancel')
        self.assertEqual(self.alice.job_prop(job, 'State'), 'cancelled')
        self.assertEqual(tree(rootdir), root_before)

    # --- 3. sources alice cannot read -----------------------------------------

    def test_unreadable_local_sources_copy_nothing(self):
        secret = self.root_file(os.path.join(self.root_dir(), 'secret'))
        secret_before = snap(secret)
        d = self.alice_dir()
        link = os.path.join(d, 'via-link')
        os.symlink(secret, link)
        os.lchown(link, ALICE, ALICE)
        for i, source in enumerate(('file://' + secret, secret, 'file://localhost' + secret, link)):
            with self.subTest(source=source):
                _, job = self.new_job(self.alice)
                local = os.path.join(d, 'copy-%d' % i)
                self.alice.job(job, 'AddFile', 'ss', source, local)
                self.alice.job(job, 'Resume')
                self.alice.wait_job_state(job, 'error', timeout=15)
                context, code, message, _, _ = self.alice.job_prop(job, 'Error')
                self.assertEqual((context, code), ('remote-file', 'errno:EACCES'))
                self.assertIn(link if source == link else secret, message)
                self.assertEqual(self.alice.job_prop(job, 'BytesTransferred'), 0)
                self.assertEqual(self.alice.file_prop(job + '/file/0', 'BytesTransferred'), 0)
                self.assertFalse(os.path.lexists(local))
        # Nothing alice can reach holds a byte of it.
        for rel, s in tree(d).items():
            if rel != 'via-link':
                self.assertEqual((s['uid'], s['size']), (ALICE, 0), rel)
        self.assertEqual(snap(secret), secret_before)

    # --- 4. ownership and mode of what the daemon creates ----------------------

    def test_created_files_belong_to_the_owner(self):
        d = self.alice_dir()
        job, fpath, local, temp, digest = self.slow_job(size=600_000, rate=400_000, local_dir=d)
        st = os.lstat(temp)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual((st.st_uid, st.st_gid, st.st_nlink), (ALICE, ALICE, 1))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o644)
        self.assertEqual(os.path.dirname(temp), d)
        self.alice.wait_job_state(job, 'transferred', timeout=30)
        self.assertEqual(self.alice.job(job, 'Complete'), 'complete')
        st = os.lstat(local)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (ALICE, ALICE, 0o644))
        self.assertEqual(sha256_file(local), digest)
        self.assertEqual(os.listdir(d), ['f.bin'])

    # --- 5. bob and alice's job ------------------------------------------------

    def test_bob_cannot_see_or_touch_alices_job(self):
        d = self.alice_dir()
        digest = self.h.make_file('nginx', self.n + '.bin', 50_000, seed=5)
        job_id, job = self.new_job(self.alice, 'alice-private')
        local = os.path.join(d, 'f.bin')
        self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url(self.n + '.bin'), local)
        self.alice.job(job, 'Resume')
        self.alice.wait_job_state(job, 'transferred')
        alice_before = tree(d)
        bobs = self.mkdir(os.path.join(self.h.home(BOB), self.n), BOB)
        bob_before = tree(self.h.home(BOB))

        other = str(uuid.uuid4())  # never created
        for form in ('%s', '{%s}', '%s32', '%sU'):
            def spell(i):
                return {'%s': i, '{%s}': '{%s}' % i, '%s32': i.replace('-', ''),
                        '%sU': i.upper()}[form]
            with self.subTest(get_job=spell(job_id)):
                with self.assertRaises(BusError) as cm:
                    self.bob.manager('GetJob', 's', spell(job_id))
                self.assertEqual(cm.exception.name, NOT_FOUND)
                self.assertIn(job_id, cm.exception.message.lower())
                with self.assertRaises(BusError) as cm2:
                    self.bob.manager('GetJob', 's', spell(other))
                self.assertEqual(cm.exception.message.lower().replace(job_id, 'ID'),
                                 cm2.exception.message.lower().replace(other, 'ID'))
        self.assertNotIn(job, [row[1] for row in self.bob.manager('ListJobs', 't', 0)])
        with self.assertRaises(BusError) as cm:
            self.bob.manager('ListJobs', 't', 1)
        self.assertIn(cm.exception.name, (ACCESS_DENIED, INTERACTIVE))
        managed = self.bob.call(MANAGER_PATH, 'org.freedesktop.DBus.ObjectManager',
                                'GetManagedObjects')
        self.assertFalse([p for p in managed if p.startswith(job)])

        missing = '/org/freedesktop/bits1/job/' + uuid.uuid4().hex
        attempts = {
            'Cancel': lambda p: self.bob.job(p, 'Cancel'),
            'Complete': lambda p: self.bob.job(p, 'Complete'),
            'Suspend': lambda p: self.bob.job(p, 'Suspend'),
            'Resume': lambda p: self.bob.job(p, 'Resume'),
            'ListFiles': lambda p: self.bob.job(p, 'ListFiles'),
            'AddFile': lambda p: self.bob.job(p, 'AddFile', 'ss', self.h.nginx_url('x'),
                                              bobs + '/stolen'),
            'AddFileSet': lambda p: self.bob.job(p, 'AddFileSet', 'a(ss)',
                                                 [(self.h.nginx_url('x'), bobs + '/stolen2')]),
            'Get State': lambda p: self.bob.job_prop(p, 'State'),
            'GetAll': lambda p: self.bob.get_all(p, JOB_IFACE),
            'Set DisplayName': lambda p: self.bob.set(p, JOB_IFACE, 'DisplayName', 's', 'pwned'),
            'Introspect': lambda p: self.bob.call(p, 'org.freedesktop.DBus.Introspectable',
                                                  'Introspect'),
            'File Get TemporaryName': lambda p: self.bob.file_prop(p + '/file/0', 'TemporaryName'),
            'File SetRemoteName': lambda p: self.bob.call(p + '/file/0', harness.FILE_IFACE,
                                                          'SetRemoteName', 's', 'http://evil/'),
        }
        for what, attempt in attempts.items():
            with self.subTest(bob=what):
                with self.assertRaises(BusError) as cm:
                    attempt(job)
                self.assert_refused(cm, UNKNOWN_OBJECT)
                # Exactly what a job that never existed answers.
                with self.assertRaises(BusError) as cm2:
                    attempt(missing)
                self.assertEqual((cm.exception.name, cm.exception.message.replace(job, 'P')),
                                 (cm2.exception.name, cm2.exception.message.replace(missing, 'P')))

        self.assert_job(self.alice, job, 'transferred', 1)
        self.assertEqual(self.alice.job_prop(job, 'DisplayName'), 'alice-private')
        self.assertEqual(tree(d), alice_before)
        self.assertEqual(tree(self.h.home(BOB)), bob_before)
        self.assertEqual(self.alice.job(job, 'Complete'), 'complete')
        self.assertEqual(sha256_file(local), digest)

    # --- 6. bob and alice's private file ---------------------------------------

    def test_bob_cannot_make_the_daemon_read_alices_file(self):
        content = b'alice private key material\n' * 100
        secret = os.path.join(self.alice_dir(), 'secret')
        with open(secret, 'wb') as f:
            f.write(content)
        os.chown(secret, ALICE, ALICE)
        os.chmod(secret, 0o600)
        # Also one in a directory bob can search, so that only the file's mode protects it.
        shared = self.root_dir('shared')
        exposed = os.path.join(shared, 'alice-secret')
        with open(exposed, 'wb') as f:
            f.write(content)
        os.chown(exposed, ALICE, ALICE)
        os.chmod(exposed, 0o600)
        before = (snap(secret), snap(exposed))
        bobs = self.mkdir(os.path.join(self.h.home(BOB), self.n), BOB)
        for i, source in enumerate(('file://' + secret, secret, 'file://' + exposed, exposed)):
            with self.subTest(source=source):
                _, job = self.new_job(self.bob)
                local = os.path.join(bobs, 'got-%d' % i)
                self.bob.job(job, 'AddFile', 'ss', source, local)
                self.bob.job(job, 'Resume')
                self.bob.wait_job_state(job, 'error', timeout=15)
                context, code, message, _, _ = self.bob.job_prop(job, 'Error')
                self.assertEqual((context, code), ('remote-file', 'errno:EACCES'))
                self.assertEqual(self.bob.job_prop(job, 'BytesTransferred'), 0)
                self.assertFalse(os.path.lexists(local))
        for rel, s in tree(bobs).items():
            self.assertEqual(s['size'], 0, rel)
        self.assertEqual((snap(secret), snap(exposed)), before)

    def test_non_regular_sources_and_targets_are_refused(self):
        d = self.alice_dir()
        fifo = os.path.join(d, 'fifo')
        os.mkfifo(fifo)
        os.chown(fifo, ALICE, ALICE)
        subdir = self.alice_dir('sub')
        for i, source in enumerate(('file:///dev/zero', '/dev/urandom', 'file://' + fifo, subdir,
                                    'file:///proc/self/environ')):
            with self.subTest(source=source):
                _, job = self.new_job(self.alice)
                local = os.path.join(d, 'copy-%d' % i)
                self.alice.job(job, 'AddFile', 'ss', source, local)
                self.alice.job(job, 'Resume')
                state = self.alice.wait_job_state(job, ('error', 'transferred'), timeout=15)
                if source.startswith('file:///proc'):
                    # Root-owned in the worker (it is not dumpable); at most an empty copy.
                    if state == 'transferred':
                        self.assertEqual(self.alice.job_prop(job, 'BytesTransferred'), 0)
                        continue
                else:
                    self.assertEqual(state, 'error')
                context, code, _, _, _ = self.alice.job_prop(job, 'Error')
                self.assertEqual(context, 'remote-file')
                self.assertIn(code, ('errno:EINVAL', 'errno:EACCES'))
                self.assertEqual(self.alice.job_prop(job, 'BytesTransferred'), 0)
        for rel, s in tree(d).items():
            self.assertEqual(s['size'] if rel not in ('sub', 'fifo') else 0, 0, rel)
        # A FIFO or device as the destination.
        _, job = self.new_job(self.alice)
        with self.assertRaises(BusError) as cm:
            self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url('x.bin'), fifo)
        self.assert_refused(cm, INVALID_ARGS, fifo)
        with self.assertRaises(BusError) as cm:
            self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url('x.bin'), '/dev/null')
        self.assert_refused(cm, (ACCESS_DENIED, INVALID_ARGS), '/dev')
        self.assert_job(self.alice, job, 'suspended', 0)

    def test_symlink_planted_at_temporary_name_before_resume(self):
        shadow = self.root_file(os.path.join(self.root_dir(), 'shadow'))
        shadow_before = snap(shadow)
        d = self.alice_dir()
        self.h.make_file('nginx', self.n + '.bin', 100_000, seed=9)
        _, job = self.new_job(self.alice)
        self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url(self.n + '.bin'), d + '/f.bin')
        temp = self.alice.file_prop(job + '/file/0', 'TemporaryName')
        self.as_user(ALICE, SWAP_FOR_SYMLINK, shadow, temp)
        self.alice.job(job, 'Resume')
        self.alice.wait_job_state(job, 'error', timeout=15)
        context, code, message, _, _ = self.alice.job_prop(job, 'Error')
        self.assertEqual((context, code), ('local-file', 'errno:ELOOP'))
        self.assertIn(temp, message)
        self.assertEqual(snap(shadow), shadow_before)
        self.alice.job(job, 'Cancel')
        self.assertEqual(snap(shadow), shadow_before)
        self.assert_all_owned_by(d, ALICE)

    def test_final_name_swapped_for_symlink_before_complete(self):
        shadow = self.root_file(os.path.join(self.root_dir(), 'shadow'))
        shadow_before = snap(shadow)
        d = self.alice_dir()
        self.h.make_file('nginx', self.n + '.bin', 100_000, seed=10)
        _, job = self.new_job(self.alice)
        local = d + '/f.bin'
        self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url(self.n + '.bin'), local)
        self.alice.job(job, 'Resume')
        self.alice.wait_job_state(job, 'transferred')
        self.as_user(ALICE, 'import os, sys; os.symlink(*sys.argv[1:])', shadow, local)
        with self.assertRaises(BusError) as cm:
            self.alice.job(job, 'Complete')
        self.assert_refused(cm, (INVALID_ARGS, ACCESS_DENIED, 'org.freedesktop.DBus.Error.Failed'),
                            local)
        self.assert_job(self.alice, job, 'transferred', 1)
        self.assertEqual(snap(shadow), shadow_before)
        self.assertTrue(os.path.islink(local))

    def test_stopped_worker_does_not_stall_other_users(self):
        # alice owns her file worker process (it runs as her), so she may SIGSTOP it. Her own
        # calls may then wait for the worker's timeout; bob's must not.
        d = self.alice_dir()
        _, job = self.new_job(self.alice)
        self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url('x.bin'), d + '/warm')  # a worker
        bitsd = self.h.bitsd_pid

        def alice_workers():
            out = []
            for pid in filter(str.isdigit, os.listdir('/proc')):
                try:
                    with open('/proc/%s/status' % pid) as f:
                        st = dict(line.split(':', 1) for line in f if ':' in line)
                except OSError:
                    continue
                if (int(st['PPid']) == bitsd and int(st['Uid'].split()[0]) == ALICE):
                    out.append(int(pid))
            return out

        workers = self.h.wait_for(alice_workers, timeout=5, what="alice's file worker")
        r = self.h.run_as(ALICE, ['kill', '-STOP'] + [str(p) for p in workers])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.addCleanup(lambda: [os.kill(p, signal.SIGCONT) for p in workers
                                 if os.path.exists('/proc/%d' % p)])
        alice2 = self.h.client(ALICE)
        done = []
        t = threading.Thread(target=lambda: done.append(self._call_quietly(
            lambda: alice2.job(job, 'AddFile', 'ss', self.h.nginx_url('x.bin'), d + '/g',
                               timeout=60))))
        t.start()
        self.addCleanup(t.join)

        # alice's call is stuck behind her stopped worker (it must not have been answered)...
        t.join(timeout=1.0)
        self.assertTrue(t.is_alive(), 'alice\'s AddFile was answered although her worker is stopped: %r' % done)

        # ...while bob is served at once, file work as bob included (his own worker).
        began = time.monotonic()
        self.bob.manager('ListJobs', 't', 0, timeout=60)
        _, bob_job = self.new_job(self.bob)
        bob_dir = self.h.home(BOB)
        self.bob.job(bob_job, 'AddFile', 'ss', self.h.nginx_url('x.bin'), bob_dir + '/b.bin', timeout=60)
        waited = time.monotonic() - began
        self.assertLess(waited, 2.0, "bob's calls waited %.1f s for alice's stopped file worker" % waited)
        self.assertEqual(self.bob.job_prop(bob_job, 'FilesTotal'), 1)
        self.assertTrue(t.is_alive(), 'alice\'s AddFile should still be waiting for her worker')

        # alice's worker runs again: her call completes normally, in order.
        for p in workers:
            os.kill(p, signal.SIGCONT)
        t.join(timeout=20)
        self.assertFalse(t.is_alive(), "alice's AddFile never finished after her worker was continued")
        self.assertEqual(done, [None], 'alice\'s AddFile failed: %r' % done)
        self.assertEqual(self.alice.job_prop(job, 'FilesTotal'), 2)

    def _call_quietly(self, fn):
        try:
            return fn()
        except (BusError, RuntimeError) as e:
            return e

    # --- 7. huge and hostile input ----------------------------------------------

    def test_huge_strings_are_string_too_long(self):
        huge = 'HUGE-NAME-' + 'x' * (1 << 20)
        jobs_before = self.alice.manager('ListJobs', 't', 0)
        with self.assertRaises(BusError) as cm:
            self.alice.manager('CreateJob', 'ss', huge, 'download')
        self.assert_refused(cm, STRING_TOO_LONG, 'HUGE-NAME-')
        self.assertLess(len(cm.exception.message), 4096)  # named, not echoed
        self.assertEqual(self.alice.manager('ListJobs', 't', 0), jobs_before)
        _, job = self.new_job(self.alice, 'short')
        for prop in ('DisplayName', 'Description'):
            with self.subTest(prop=prop):
                with self.assertRaises(BusError) as cm:
                    self.alice.set(job, JOB_IFACE, prop, 's', huge)
                self.assert_refused(cm, STRING_TOO_LONG, 'HUGE-NAME-')
        self.assertEqual(self.alice.job_prop(job, 'DisplayName'), 'short')
        self.assertEqual(self.alice.job_prop(job, 'Description'), '')
        d = self.alice_dir()
        with self.assertRaises(BusError) as cm:
            self.alice.job(job, 'AddFile', 'ss', 'http://127.0.0.1/' + huge, d + '/f')
        self.assert_refused(cm, (STRING_TOO_LONG, INVALID_ARGS), 'HUGE-NAME-')
        self.assert_job(self.alice, job, 'suspended', 0)
        self.assertEqual(os.listdir(d), [])

    def test_create_job_flood_is_bounded_and_others_are_served(self):
        # alice fires 10,000 CreateJob calls from her own process, pipelined; the daemon gives
        # her MaxJobsPerUser (60) jobs and a clean TooManyJobsPerUser for the rest, and answers
        # bob promptly all along.
        flood = r"""
import collections, json, dbus
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib
DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
mgr = dbus.Interface(bus.get_object('org.freedesktop.bits1', '/org/freedesktop/bits1'),
                     'org.freedesktop.bits1.Manager')
counts = collections.Counter()
left = [10000]
loop = GLib.MainLoop()
def done(*a, err=None):
    counts[err.get_dbus_name() if err else 'ok'] += 1
    left[0] -= 1
    if left[0] == 0:
        loop.quit()
for i in range(10000):
    mgr.CreateJob('flood %d' % i, 'download', reply_handler=lambda *a: done(),
                  error_handler=lambda e: done(err=e), timeout=120)
loop.run()
print(json.dumps(counts))
"""
        before = len(self.alice.manager('ListJobs', 't', 0))
        proc = subprocess.Popen(['setpriv', '--reuid=%d' % ALICE, '--regid=%d' % ALICE, '--clear-groups',
                                 '/usr/bin/python3', '-c', flood],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        worst = 0.0
        while proc.poll() is None:
            began = time.monotonic()
            self.bob.manager('ListJobs', 't', 0, timeout=60)
            worst = max(worst, time.monotonic() - began)
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0, err)
        counts = json.loads(out)
        self.assertEqual(counts.get('ok', 0), 60 - before, counts)
        # The rest is refused by bitsd (its limit) or, for calls beyond the bus's own bound on
        # pending calls per connection, by dbus-daemon itself: nothing else.
        refused = {'org.freedesktop.bits1.Error.TooManyJobsPerUser', 'org.freedesktop.DBus.Error.LimitsExceeded'}
        self.assertEqual(set(counts) - {'ok'} - refused, set(), counts)
        self.assertGreater(counts.get('org.freedesktop.bits1.Error.TooManyJobsPerUser', 0), 0, counts)
        self.assertEqual(sum(counts.values()), 10000, counts)
        self.assertLess(worst, 1.0, "bob waited %.2f s during alice's flood" % worst)
        mine = self.alice.manager('ListJobs', 't', 0)
        self.assertEqual(len(mine), 60)
        for job_id, path, *_ in mine:
            if job_id not in {j[0] for j in mine[:before]}:
                self.alice.job(path, 'Cancel')

    def test_add_file_set_of_100000_is_refused_and_daemon_stays_responsive(self):
        d = self.alice_dir()
        _, job = self.new_job(self.alice)
        files = [('http://127.0.0.1/%d' % i, '%s/f%d' % (d, i)) for i in range(100_000)]
        began = time.monotonic()
        with self.assertRaises(BusError) as cm:
            self.alice.job(job, 'AddFileSet', 'a(ss)', files, timeout=60)
        self.assert_refused(cm, TOO_MANY_FILES_IN_JOB, '100000')
        self.assertLess(time.monotonic() - began, 30)
        self.assert_job(self.alice, job, 'suspended', 0)
        self.assertEqual(os.listdir(d), [])
        # Both users are served promptly afterwards.
        for c in (self.alice, self.bob):
            began = time.monotonic()
            c.manager('ListJobs', 't', 0)
            _, j = self.new_job(c, 'after')
            self.assertEqual(c.job_prop(j, 'State'), 'suspended')
            self.assertLess(time.monotonic() - began, 2.0)

    def test_hostile_paths_and_urls_are_invalid_args(self):
        d = self.alice_dir()
        bobs = self.mkdir(os.path.join(self.h.home(BOB), self.n), BOB)
        secret = os.path.join(bobs, 'secret')
        self.root_file(secret, b'bob secret\n', 0o600)
        os.chown(secret, BOB, BOB)
        bob_before = tree(bobs)
        ok_url = self.h.nginx_url('x.bin')
        home = self.h.home(ALICE)
        cases = [
            # (remote, local, a value the message must name)
            ('http://127.0.0.1/a\r\nX-Injected: 1', d + '/f', 'http://127.0.0.1/a'),
            ('http://127.0.0.1/a\nHost: evil', d + '/f', 'http://127.0.0.1/a'),
            (ok_url, d + '/f\r\nx', d),
            (ok_url, d + '/../../%s/f' % os.path.basename(self.h.home(BOB)), d + '/..'),
            (ok_url, d + '/./f', d + '/./f'),
            (ok_url, d + '//f', d + '//f'),
            (ok_url, d + '/', d),
            (ok_url, 'relative/f', 'relative/f'),
            (home + '/../bob/' + self.n + '/secret', d + '/f', home + '/../bob'),
            ('file://' + home + '/%2e%2e/bob/' + self.n + '/secret', d + '/f', home),
            ('file://' + home + '/a%00b', d + '/f', home),
            ('file://otherhost/etc/shadow', d + '/f', 'otherhost'),
            ('ftp://127.0.0.1/x', d + '/f', 'ftp://127.0.0.1/x'),
        ]
        _, job = self.new_job(self.alice)
        for remote, local, named in cases:
            with self.subTest(remote=remote, local=local):
                with self.assertRaises(BusError) as cm:
                    self.alice.job(job, 'AddFile', 'ss', remote, local)
                self.assert_refused(cm, INVALID_ARGS, named)
        self.assert_job(self.alice, job, 'suspended', 0)
        self.assertEqual(os.listdir(d), [])
        self.assertEqual(tree(bobs), bob_before)


if __name__ == '__main__':
    harness.main()
