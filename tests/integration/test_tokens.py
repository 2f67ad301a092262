#!/usr/bin/python3
"""Helper tokens (IBitsTokenOptions): SetHelperToken, ClearHelperToken, HelperTokenFlags,
HelperTokenUid, as the users of the machine see them.

A helper token is an identity proved by a connected AF_UNIX socket: the daemon takes the peer
credentials (SO_PEERCRED, SO_PEERGROUPS) of the socket the caller passes. Here the test process
(root) listens, a process running as the helper user connects, and the accepted end goes to the
daemon through the job owner's client. With HelperTokenFlags 0x1 the job's local-file work (the
directory/target checks of AddFile, the temporary file, Complete's rename) runs as the helper;
with 0x2 file:// sources are read as the helper. Tokens are not persisted: after a restart a job
that needs one fails with bits:TokenRequired until the application sets it again.
"""

import os
import socket
import stat
import struct
import subprocess
import sys

import harness
from harness import ADMIN, ALICE, BOB, JOB_IFACE, ADMIN_GROUP, BusError, FdArg, sha256_file

ERR = 'org.freedesktop.bits1.Error.'
INVALID_STATE = ERR + 'InvalidState'
INVALID_ARGS = 'org.freedesktop.DBus.Error.InvalidArgs'
ACCESS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied'
UNKNOWN_OBJECT = 'org.freedesktop.DBus.Error.UnknownObject'
NO_TOKEN = 0xFFFFFFFF

ADMIN_RULE = '''polkit.addRule(function(action, subject) {
    if (action.id == "org.freedesktop.bits1.manage-any-job" && subject.isInGroup("bitsadmin"))
        return polkit.Result.YES;
});
'''

# The helper's side: connect, say so, then hold the connection until stdin closes.
PEER_CODE = '''
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
sys.stdout.write("connected\\n")
sys.stdout.flush()
sys.stdin.read()
'''


class Tokens(harness.HarnessTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.h.start_bitsd()
        cls.alice = cls.h.client(ALICE)
        cls.bob = cls.h.client(BOB)
        cls.root = cls.h.client(0)
        cls.sockdir = os.path.join(cls.h.root, 'tokens')
        os.makedirs(cls.sockdir)
        os.chmod(cls.sockdir, 0o755)
        cls.digest = cls.h.make_file('nginx', 'tok.bin', 300_000, seed=7)

    def setUp(self):
        if self.h.name_owner(harness.BUS_NAME) is None:
            self.h.start_bitsd()
        self.n = self.id().rsplit('.', 1)[-1]

    # --- helpers ---------------------------------------------------------

    def token_of(self, uid):
        """A connected AF_UNIX socket whose peer is a process running as UID (held open
        for the rest of the test)."""
        path = os.path.join(self.sockdir, '%s-%d-%d.sock' % (self.n, uid, len(os.listdir(self.sockdir))))
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(lst.close)
        lst.bind(path)
        os.chmod(path, 0o666)
        lst.listen(1)
        lst.settimeout(15)
        argv = [sys.executable, '-c', PEER_CODE, path]
        if uid != 0:
            argv = ['setpriv', '--reuid=%d' % uid, '--regid=%d' % uid, '--init-groups', '--'] + argv
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(self.stop_peer, proc)
        conn, _ = lst.accept()
        self.addCleanup(conn.close)
        self.assertEqual(proc.stdout.readline(), b'connected\n')
        # The test's own check that the socket is what it claims to be.
        pid, puid, pgid = self.peercred(conn)
        self.assertEqual((pid, puid), (proc.pid, uid))
        return conn

    @staticmethod
    def peercred(sock):
        return struct.unpack('iII', sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))

    @staticmethod
    def stop_peer(proc):
        proc.stdin.close()
        proc.stdout.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def mkdir(self, path, uid, mode=0o755, gid=None):
        os.makedirs(path, exist_ok=True)
        os.chown(path, uid, uid if gid is None else gid)
        os.chmod(path, mode)
        return path

    def userdir(self, uid, name='dl', mode=0o755):
        self.mkdir(os.path.join(self.h.home(uid), self.n), uid)
        return self.mkdir(os.path.join(self.h.home(uid), self.n, name), uid, mode)

    def new_job(self, c, name=None):
        job_id, path = c.manager('CreateJob', 'ss', name or self.n, 'download')
        self.addCleanup(self.cancel_quietly, path)
        return job_id, path

    def cancel_quietly(self, path):
        try:
            self.root.job(path, 'Cancel')
        except (BusError, RuntimeError):
            pass

    def token_state(self, c, job):
        return (c.job_prop(job, 'HelperTokenFlags'), c.job_prop(job, 'HelperTokenUid'))

    def set_token(self, c, job, sock):
        return c.job(job, 'SetHelperToken', 'h', FdArg(sock.fileno()))

    def set_flags(self, c, job, flags):
        c.set(job, JOB_IFACE, 'HelperTokenFlags', 'u', flags)

    def wait_settled(self, c, job):
        return c.wait_job_state(job, ('transferred', 'error', 'transient-error'), timeout=30)

    def restart(self):
        self.assertEqual(self.h.stop_bitsd(), 0)
        self.h.start_bitsd()

    # --- 1. the property -------------------------------------------------------

    def test_flags_defaults_validation_and_persistence(self):
        _, job = self.new_job(self.alice)
        self.assertEqual(self.token_state(self.alice, job), (0, NO_TOKEN))
        for bad in (0x4, 0x8, 0x80000000, 0x7):
            with self.subTest(flags=hex(bad)):
                e = self.assertBusError(INVALID_ARGS, self.set_flags, self.alice, job, bad)
                self.assertIn('0x%x' % bad, e.message)
                self.assertEqual(self.token_state(self.alice, job), (0, NO_TOKEN))
        for good in (0x1, 0x2, 0x3):
            self.set_flags(self.alice, job, good)
            self.assertEqual(self.token_state(self.alice, job), (good, NO_TOKEN))
        self.assertBusError(INVALID_ARGS, self.set_flags, self.alice, job, 0x5)
        self.assertEqual(self.alice.job_prop(job, 'HelperTokenFlags'), 0x3)
        # The flags are stored with the job; only the token is not.
        self.restart()
        self.assertEqual(self.token_state(self.alice, job), (0x3, NO_TOKEN))
        self.assertEqual(self.alice.job_prop(job, 'State'), 'suspended')
        self.set_flags(self.alice, job, 0)
        self.assertEqual(self.token_state(self.alice, job), (0, NO_TOKEN))

    # --- 2. 0x1: local files as the helper ------------------------------------

    def test_local_file_token_writes_as_the_helper(self):
        bob_dir = self.userdir(BOB, mode=0o700)
        local = os.path.join(bob_dir, 'f.bin')
        url = self.h.nginx_url('tok.bin')
        _, job = self.new_job(self.alice)

        # As alice (no token, no flag): bob's home is closed to her.
        e = self.assertBusError(ACCESS_DENIED, self.alice.job, job, 'AddFile', 'ss', url, local)
        self.assertIn(str(ALICE), e.message)
        # A token without the flag changes nothing for local files.
        bob_tok = self.token_of(BOB)
        self.set_token(self.alice, job, bob_tok)
        self.assertEqual(self.token_state(self.alice, job), (0, BOB))
        self.assertBusError(ACCESS_DENIED, self.alice.job, job, 'AddFile', 'ss', url, local)
        # The flag without a token (cleared) is refused too, naming SetHelperToken.
        self.alice.job(job, 'ClearHelperToken')
        self.set_flags(self.alice, job, 0x1)
        e = self.assertBusError(ACCESS_DENIED, self.alice.job, job, 'AddFile', 'ss', url, local)
        self.assertIn('SetHelperToken', e.message)
        self.assertEqual(self.alice.job_prop(job, 'FilesTotal'), 0)
        self.assertEqual(os.listdir(bob_dir), [])

        # Token and flag: accepted, and everything on disk is bob's.
        self.set_token(self.alice, job, bob_tok)
        self.assertEqual(self.token_state(self.alice, job), (0x1, BOB))
        self.alice.job(job, 'AddFile', 'ss', url, local)
        self.assertEqual(self.alice.job_prop(job, 'FilesTotal'), 1)
        self.alice.job(job, 'Resume')
        self.assertEqual(self.wait_settled(self.alice, job), 'transferred')
        self.assertEqual(self.alice.job_prop(job, 'BytesTransferred'), 300_000)
        temps = [x for x in os.listdir(bob_dir) if x != 'f.bin']
        self.assertEqual(len(temps), 1, os.listdir(bob_dir))
        self.assertRegex(temps[0], r'^\.BIT[0-9A-F]{8}\.TMP$')
        st = os.lstat(os.path.join(bob_dir, temps[0]))
        self.assertEqual((st.st_uid, st.st_gid), (BOB, BOB))
        # Complete renames as the helper too: without the token it cannot, and says why.
        self.alice.job(job, 'ClearHelperToken')
        e = self.assertBusError(ACCESS_DENIED, self.alice.job, job, 'Complete')
        self.assertIn('SetHelperToken', e.message)
        self.assertEqual(self.alice.job_prop(job, 'State'), 'transferred')
        self.assertEqual(sorted(os.listdir(bob_dir)), temps)
        self.set_token(self.alice, job, bob_tok)
        self.assertEqual(self.alice.job(job, 'Complete'), 'complete')
        self.assertEqual(os.listdir(bob_dir), ['f.bin'])
        st = os.lstat(local)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual((st.st_uid, st.st_gid), (BOB, BOB))
        self.assertEqual(sha256_file(local), self.digest)
        self.assertEqual(self.alice.job_prop(job, 'State'), 'acknowledged')

    def test_local_file_token_carries_supplementary_groups(self):
        # A directory writable only through the bitsadmin group: admin's token can write there,
        # because the daemon takes the groups of the socket's peer too.
        gdir = self.mkdir(os.path.join(self.h.root, 'group-' + self.n), 0, 0o770, gid=ADMIN_GROUP[1])
        local = os.path.join(gdir, 'g.bin')
        url = self.h.nginx_url('tok.bin')
        _, job = self.new_job(self.alice)
        self.set_flags(self.alice, job, 0x1)
        self.set_token(self.alice, job, self.token_of(BOB))
        self.assertBusError(ACCESS_DENIED, self.alice.job, job, 'AddFile', 'ss', url, local)
        self.set_token(self.alice, job, self.token_of(ADMIN))
        self.assertEqual(self.token_state(self.alice, job), (0x1, ADMIN))
        self.alice.job(job, 'AddFile', 'ss', url, local)
        self.alice.job(job, 'Resume')
        self.assertEqual(self.wait_settled(self.alice, job), 'transferred')
        self.assertEqual(self.alice.job(job, 'Complete'), 'complete')
        self.assertEqual(os.listdir(gdir), ['g.bin'])
        self.assertEqual(os.lstat(local).st_uid, ADMIN)
        self.assertEqual(sha256_file(local), self.digest)

    def test_cancel_removes_the_helpers_temporary_file(self):
        bob_dir = self.userdir(BOB, mode=0o700)
        _, job = self.new_job(self.alice)
        self.set_flags(self.alice, job, 0x1)
        self.set_token(self.alice, job, self.token_of(BOB))
        self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url('tok.bin'), bob_dir + '/f.bin')
        self.alice.job(job, 'Resume')
        self.assertEqual(self.wait_settled(self.alice, job), 'transferred')
        (temp,) = os.listdir(bob_dir)
        self.assertEqual(os.lstat(os.path.join(bob_dir, temp)).st_uid, BOB)
        self.alice.job(job, 'Cancel')
        self.assertEqual(self.alice.job_prop(job, 'State'), 'cancelled')
        self.assertEqual(os.listdir(bob_dir), [])

    # --- 3. 0x2: file:// sources as the helper --------------------------------

    def test_network_token_reads_file_source_as_the_helper(self):
        src_dir = self.userdir(BOB, 'src', mode=0o700)
        src = os.path.join(src_dir, 'secret.bin')
        digest = self.h.make_file(src_dir, 'secret.bin', 200_000, seed=11)
        os.chown(src, BOB, BOB)
        os.chmod(src, 0o600)
        alice_dir = self.userdir(ALICE)
        local = os.path.join(alice_dir, 'copy.bin')
        _, job = self.new_job(self.alice)
        self.alice.job(job, 'AddFile', 'ss', 'file://' + src, local)

        # bob's token but no flag: read as alice → EACCES, nothing copied.
        self.set_token(self.alice, job, self.token_of(BOB))
        self.alice.job(job, 'Resume')
        self.assertEqual(self.wait_settled(self.alice, job), 'error')
        context, code, message, _, efile = self.alice.job_prop(job, 'Error')
        self.assertEqual((context, code, efile), ('remote-file', 'errno:EACCES', job + '/file/0'))
        self.assertIn(src, message)
        self.assertEqual(self.alice.job_prop(job, 'BytesTransferred'), 0)
        self.assertFalse(os.path.lexists(local))

        # 0x2: read as bob, written as alice (0x1 is not set).
        self.set_flags(self.alice, job, 0x2)
        self.assertEqual(self.token_state(self.alice, job), (0x2, BOB))
        self.alice.job(job, 'Resume')
        self.assertEqual(self.wait_settled(self.alice, job), 'transferred')
        self.assertEqual(self.alice.job(job, 'Complete'), 'complete')
        self.assertEqual(os.listdir(alice_dir), ['copy.bin'])
        st = os.lstat(local)
        self.assertEqual((st.st_uid, st.st_gid), (ALICE, ALICE))
        self.assertEqual(sha256_file(local), digest)
        # The source is untouched.
        st = os.lstat(src)
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (BOB, 0o600))

    # --- 4. a token of root ---------------------------------------------------

    def test_root_token_needs_root_or_manage_any_job(self):
        mine, theirs = socket.socketpair()  # made by the test (root): its peer is root
        self.addCleanup(mine.close)
        self.addCleanup(theirs.close)
        self.assertEqual(self.peercred(mine)[1], 0)
        _, job = self.new_job(self.alice)
        self.set_flags(self.alice, job, 0x1)

        e = self.assertBusError(ACCESS_DENIED, self.set_token, self.alice, job, mine)
        self.assertIn('manage-any-job', e.message)
        self.assertEqual(self.token_state(self.alice, job), (0x1, NO_TOKEN))
        # A token already set is not replaced by a refused one.
        self.set_token(self.alice, job, self.token_of(BOB))
        self.assertBusError(ACCESS_DENIED, self.set_token, self.alice, job, mine)
        self.assertEqual(self.token_state(self.alice, job), (0x1, BOB))

        # Root may.
        self.set_token(self.root, job, mine)
        self.assertEqual(self.token_state(self.alice, job), (0x1, 0))
        self.root.job(job, 'ClearHelperToken')
        self.assertEqual(self.token_state(self.alice, job), (0x1, NO_TOKEN))

        # admin, without a rule, does not even see the job; with manage-any-job, may.
        admin = self.h.client(ADMIN)
        self.addCleanup(admin.close)
        self.assertBusError(UNKNOWN_OBJECT, self.set_token, admin, job, mine)
        self.assertEqual(self.token_state(self.alice, job), (0x1, NO_TOKEN))
        self.h.write_polkit_rule('50-bitsadmin.rules', ADMIN_RULE)
        self.addCleanup(self.h.remove_polkit_rule, '50-bitsadmin.rules')
        admin2 = self.h.client(ADMIN)
        self.addCleanup(admin2.close)
        self.set_token(admin2, job, mine)
        self.assertEqual(self.token_state(self.alice, job), (0x1, 0))
        self.set_flags(admin2, job, 0x3)
        self.assertEqual(self.token_state(admin2, job), (0x3, 0))
        admin2.job(job, 'ClearHelperToken')
        self.assertEqual(self.token_state(self.alice, job), (0x3, NO_TOKEN))
        self.assertEqual(self.alice.job_prop(job, 'State'), 'suspended')

    def test_root_token_on_own_job_asks_polkit(self):
        # admin owns the job: no visibility check has asked polkit yet, so the root token's
        # check is the first question on this connection (answered asynchronously).
        self.h.write_polkit_rule('50-bitsadmin.rules', ADMIN_RULE)
        self.addCleanup(self.h.remove_polkit_rule, '50-bitsadmin.rules')
        admin = self.h.client(ADMIN)
        self.addCleanup(admin.close)
        _, job = self.new_job(admin)
        mine, theirs = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(theirs.close)
        self.set_token(admin, job, mine)
        self.assertEqual(self.token_state(admin, job), (0, 0))
        # alice, as owner of her own job, has no such rule.
        _, ajob = self.new_job(self.alice)
        self.assertBusError(ACCESS_DENIED, self.set_token, self.alice, ajob, mine)
        self.assertEqual(self.token_state(self.alice, ajob), (0, NO_TOKEN))

    # --- 5. what is not a token -------------------------------------------------

    def test_not_a_connected_unix_socket_is_invalid_args(self):
        _, job = self.new_job(self.alice)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        reg = open(os.path.join(self.h.root, 'regular-' + self.n), 'w+')
        self.addCleanup(reg.close)
        unconnected = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(unconnected.close)
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(os.path.join(self.sockdir, 'listening-' + self.n))
        listening.listen(1)
        tcp = socket.create_connection(('127.0.0.1', self.h.nginx_port))
        self.addCleanup(tcp.close)
        fds = {'pipe read end': r, 'pipe write end': w, 'regular file': reg.fileno(),
               'unconnected AF_UNIX': unconnected.fileno(), 'listening AF_UNIX': listening.fileno(),
               'connected TCP': tcp.fileno()}
        for what, fd in fds.items():
            with self.subTest(fd=what):
                self.assertBusError(INVALID_ARGS, self.alice.job, job, 'SetHelperToken', 'h', FdArg(fd))
                self.assertEqual(self.token_state(self.alice, job), (0, NO_TOKEN))
        # After all that, a real one still works.
        self.set_token(self.alice, job, self.token_of(BOB))
        self.assertEqual(self.token_state(self.alice, job), (0, BOB))

    # --- 6. ClearHelperToken and final jobs ------------------------------------

    def test_clear_and_final_jobs(self):
        bob_tok = self.token_of(BOB)
        _, job = self.new_job(self.alice)
        self.set_flags(self.alice, job, 0x2)
        self.set_token(self.alice, job, bob_tok)
        self.assertEqual(self.token_state(self.alice, job), (0x2, BOB))
        self.alice.job(job, 'ClearHelperToken')
        self.assertEqual(self.token_state(self.alice, job), (0x2, NO_TOKEN))  # flags unchanged
        self.alice.job(job, 'ClearHelperToken')  # none set: fine
        self.assertEqual(self.token_state(self.alice, job), (0x2, NO_TOKEN))

        # Cancelled and acknowledged jobs.
        self.set_token(self.alice, job, bob_tok)
        self.alice.job(job, 'Cancel')
        self.assertEqual(self.alice.job_prop(job, 'State'), 'cancelled')
        _, done = self.new_job(self.alice, 'acknowledged')
        d = self.userdir(ALICE)
        self.alice.job(done, 'AddFile', 'ss', self.h.nginx_url('tok.bin'), d + '/a.bin')
        self.set_token(self.alice, done, bob_tok)
        self.alice.job(done, 'Resume')
        self.assertEqual(self.wait_settled(self.alice, done), 'transferred')
        self.assertEqual(self.alice.job(done, 'Complete'), 'complete')
        self.assertEqual(os.lstat(d + '/a.bin').st_uid, ALICE)  # no 0x1: alice's file
        for path, state in ((job, 'cancelled'), (done, 'acknowledged')):
            with self.subTest(state=state):
                self.assertBusError(INVALID_STATE, self.alice.job, path, 'ClearHelperToken')
                self.assertBusError(INVALID_STATE, self.set_token, self.alice, path, bob_tok)
                self.assertBusError(INVALID_STATE, self.set_token, self.root, path, bob_tok)
                self.assertBusError(INVALID_STATE, self.set_flags, self.alice, path, 0x1)
                self.assertEqual(self.alice.job_prop(path, 'State'), state)

    # --- 7. not persisted ---------------------------------------------------------

    def test_token_is_not_persisted(self):
        bob_dir = self.userdir(BOB, mode=0o700)
        local = os.path.join(bob_dir, 'f.bin')
        url = self.h.nginx_url('tok.bin')
        _, job = self.new_job(self.alice)
        self.set_flags(self.alice, job, 0x1)
        self.set_token(self.alice, job, self.token_of(BOB))
        self.alice.job(job, 'AddFile', 'ss', url, local)
        self.assertEqual(self.token_state(self.alice, job), (0x1, BOB))

        self.restart()
        self.assertEqual(self.token_state(self.alice, job), (0x1, NO_TOKEN))
        self.assertEqual(self.alice.job_prop(job, 'FilesTotal'), 1)
        self.alice.job(job, 'Resume')
        self.assertEqual(self.wait_settled(self.alice, job), 'error')
        context, code, message, _, _ = self.alice.job_prop(job, 'Error')
        self.assertEqual(code, 'bits:TokenRequired')
        self.assertIn('SetHelperToken', message)
        self.assertEqual(os.listdir(bob_dir), [])
        e = self.assertBusError(ACCESS_DENIED, self.alice.job, job, 'AddFile', 'ss', url,
                                os.path.join(bob_dir, 'g.bin'))
        self.assertIn('SetHelperToken', e.message)
        self.assertEqual(self.alice.job_prop(job, 'FilesTotal'), 1)

        self.set_token(self.alice, job, self.token_of(BOB))
        self.alice.job(job, 'Resume')
        self.assertEqual(self.wait_settled(self.alice, job), 'transferred')
        self.assertEqual(self.alice.job_prop(job, 'Error')[1], '')
        self.assertEqual(self.alice.job(job, 'Complete'), 'complete')
        self.assertEqual(os.listdir(bob_dir), ['f.bin'])
        self.assertEqual(os.lstat(local).st_uid, BOB)
        self.assertEqual(sha256_file(local), self.digest)

    def test_cancel_without_token_after_restart(self):
        # Cancel needs no token: with none, it works as the owner (who cannot reach bob's
        # directory, so bob's temporary file stays; the job is gone all the same).
        bob_dir = self.userdir(BOB, mode=0o700)
        _, job = self.new_job(self.alice)
        self.set_flags(self.alice, job, 0x1)
        self.set_token(self.alice, job, self.token_of(BOB))
        self.alice.job(job, 'AddFile', 'ss', self.h.nginx_url('tok.bin'), bob_dir + '/f.bin')
        self.restart()
        self.alice.job(job, 'Cancel')
        self.assertEqual(self.alice.job_prop(job, 'State'), 'cancelled')
        self.assertEqual(os.listdir(bob_dir), [])

    # --- 8. other users -----------------------------------------------------------

    def test_other_user_cannot_touch_the_token(self):
        _, job = self.new_job(self.alice)
        self.set_flags(self.alice, job, 0x2)
        self.set_token(self.alice, job, self.token_of(BOB))
        bob_tok = self.token_of(BOB)
        attempts = {
            'SetHelperToken': lambda: self.set_token(self.bob, job, bob_tok),
            'ClearHelperToken': lambda: self.bob.job(job, 'ClearHelperToken'),
            'Get HelperTokenFlags': lambda: self.bob.job_prop(job, 'HelperTokenFlags'),
            'Set HelperTokenFlags': lambda: self.set_flags(self.bob, job, 0x1),
            'Get HelperTokenUid': lambda: self.bob.job_prop(job, 'HelperTokenUid'),
        }
        for what, attempt in attempts.items():
            with self.subTest(bob=what):
                self.assertBusError(UNKNOWN_OBJECT, attempt)
        self.assertEqual(self.token_state(self.alice, job), (0x2, BOB))
        self.assertEqual(self.alice.job_prop(job, 'State'), 'suspended')


if __name__ == '__main__':
    harness.main()
