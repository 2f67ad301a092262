#!/usr/bin/python3
"""Job lifecycle through the bits1 D-Bus API, as the users of the machine see it.

CreateJob defaults, AddFile/AddFileSet and the File objects, the writable job
properties (and that they survive a restart), the way from suspended through
transferring to transferred and then acknowledged or cancelled (bytes on disk,
temporary files, file owners), Suspend/Resume with a Range request, the state
rules of BITS (Empty, partial Complete, final jobs, their retention), GetJob's
id forms, ListJobs, the visibility of other users' jobs, bad input that must not
change a job, bitsctl's basic verbs, and the shipped introspection XML.
"""

import json
import os
import re
import time
import uuid
import xml.etree.ElementTree as ET

import harness
from harness import (ALICE, BOB, FILE_IFACE, JOB_IFACE, MANAGER_PATH, BusError,
                     sha256_file)

ERR = 'org.freedesktop.bits1.Error.'
INVALID_ARGS = 'org.freedesktop.DBus.Error.InvalidArgs'
ACCESS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied'
INTERACTIVE_AUTH = 'org.freedesktop.DBus.Error.InteractiveAuthorizationRequired'
UNKNOWN_OBJECT = 'org.freedesktop.DBus.Error.UnknownObject'
INTROSPECTABLE = 'org.freedesktop.DBus.Introspectable'
UINT64_MAX = (1 << 64) - 1
MiB = 1 << 20

UUID_RE = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')
JOB_PATH_PREFIX = '/org/freedesktop/bits1/job/'

NO_ERROR = ('none', '', '', '', '/')


def now_usec():
    return int(time.time() * 1_000_000)


class LifecycleCase(harness.HarnessTestCase):
    """One harness world and one bitsd per class, clients for alice, bob and root."""

    config_text = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.h.start_bitsd(config_text=cls.config_text)
        cls.alice = cls.h.client(ALICE)
        cls.bob = cls.h.client(BOB)
        cls.root = cls.h.client(0)
        cls.src = os.path.join(cls.h.root, 'src')  # world-readable sources for file:// remotes
        os.makedirs(cls.src, mode=0o755, exist_ok=True)
        os.chmod(cls.src, 0o755)

    # --- helpers ----------------------------------------------------------

    def userdir(self, uid=ALICE, name=None):
        """A fresh directory in UID's home, owned by UID."""
        d = os.path.join(self.h.home(uid), name or self._testMethodName)
        os.makedirs(d, exist_ok=True)
        os.chown(d, uid, uid)
        os.chmod(d, 0o755)
        return d

    def create(self, client=None, name='job'):
        return (client or self.alice).manager('CreateJob', 'ss', name, 'download')

    def files_of(self, path, client=None):
        return (client or self.alice).job(path, 'ListFiles')

    def file_props(self, fpath, client=None):
        return (client or self.alice).get_all(fpath, FILE_IFACE)

    def wait_bytes(self, path, pred, what, timeout=20, client=None):
        c = client or self.alice

        def check():
            done = c.job_prop(path, 'BytesTransferred')
            total = c.job_prop(path, 'BytesTotal')
            state = c.job_prop(path, 'State')
            return (done, total, state) if pred(done, total, state) else None
        return self.h.wait_for(check, timeout=timeout, what=what)

    def tmp_leftovers(self, d):
        return sorted(n for n in os.listdir(d) if n.startswith('.BIT') or n.endswith('.TMP'))


# =============================================================================

class CreateAndConfigure(LifecycleCase):

    def test_create_job_defaults(self):
        before = now_usec()
        job_id, path = self.alice.manager('CreateJob', 'ss', 'nightly image', 'download')
        after = now_usec()
        self.assertRegex(job_id, UUID_RE)
        self.assertEqual(str(uuid.UUID(job_id)), job_id)
        self.assertEqual(path, JOB_PATH_PREFIX + job_id.replace('-', ''))
        self.assertRegex(path, r'^/org/freedesktop/bits1/job/[0-9a-f]{32}$')

        props = self.alice.get_all(path, JOB_IFACE)
        expected = {
            'Id': job_id, 'Type': 'download', 'State': 'suspended', 'Owner': ALICE,
            'DisplayName': 'nightly image', 'Description': '', 'Priority': 'normal',
            'NotifyFlags': 3, 'MinimumRetryDelay': 600, 'NoProgressTimeout': 1209600,
            'MaximumDownloadTime': 7776000, 'BytesTotal': 0, 'BytesTransferred': 0,
            'FilesTotal': 0, 'FilesTransferred': 0, 'Error': NO_ERROR, 'ErrorCount': 0,
            'TransferCompletionTime': 0,
        }
        self.assertEqual({k: props.get(k) for k in expected}, expected)
        # µs since the epoch, taken during the call (1 s slack for clock granularity).
        self.assertGreaterEqual(props['CreationTime'], before - 1_000_000)
        self.assertLessEqual(props['CreationTime'], after + 1_000_000)
        # Every job gets its own id.
        other_id, other_path = self.create()
        self.assertNotEqual(other_id, job_id)
        self.assertNotEqual(other_path, path)
        # Bob's job is owned by bob.
        _, bob_path = self.create(self.bob)
        self.assertEqual(self.bob.job_prop(bob_path, 'Owner'), BOB)

    def test_add_files_and_file_properties(self):
        d = self.userdir()
        digests = {
            'a.bin': self.h.make_file('nginx', 'add-a.bin', 300_000, seed=11),
            'b.bin': self.h.make_file(self.src, 'add-b.bin', 200_000, seed=12),
            'c.bin': self.h.make_file(self.src, 'add-c.bin', 100_000, seed=13),
        }
        remotes = [self.h.nginx_url('add-a.bin'),
                   'file://' + os.path.join(self.src, 'add-b.bin'),
                   os.path.join(self.src, 'add-c.bin')]
        locals_ = [os.path.join(d, n) for n in ('a.bin', 'b.bin', 'c.bin')]
        _, path = self.create()
        self.alice.job(path, 'AddFile', 'ss', remotes[0], locals_[0])
        self.alice.job(path, 'AddFileSet', 'a(ss)', [(remotes[1], locals_[1]),
                                                     (remotes[2], locals_[2])])
        self.assertEqual(self.alice.job_prop(path, 'FilesTotal'), 3)
        files = self.files_of(path)
        self.assertEqual(files, ['%s/file/%d' % (path, i) for i in range(3)])
        temps = []
        for fpath, remote, local in zip(files, remotes, locals_):
            p = self.file_props(fpath)
            self.assertEqual(p['RemoteName'], remote)
            self.assertEqual(p['LocalName'], local)
            tmp = p['TemporaryName']
            self.assertEqual(os.path.dirname(tmp), d, tmp)
            self.assertTrue(os.path.basename(tmp).startswith('.'), tmp)
            self.assertNotEqual(tmp, local)
            self.assertEqual((p['BytesTotal'], p['BytesTransferred'], p['Completed']),
                             (UINT64_MAX, 0, False))
            temps.append(tmp)
        self.assertEqual(len(set(temps)), 3)
        self.assertEqual(self.alice.job_prop(path, 'State'), 'suspended')
        self.assertFalse(any(os.path.exists(x) for x in locals_))

        # All three kinds of remote really download.
        self.alice.job(path, 'Resume')
        self.alice.wait_job_state(path, 'transferred')
        self.assertEqual(self.alice.job(path, 'Complete'), 'complete')
        for local in locals_:
            self.assertEqual(sha256_file(local), digests[os.path.basename(local)], local)
            self.assertEqual(os.stat(local).st_uid, ALICE)
        self.assertEqual(self.tmp_leftovers(d), [])

    def test_set_properties_read_back_and_survive_restart(self):
        d = self.userdir()
        job_id, path = self.create(name='before')
        self.alice.job(path, 'AddFile', 'ss', self.h.nginx_url('persist.bin'),
                       os.path.join(d, 'persist.bin'))
        name = 'Nächtliches Abbild ✓'
        values = [('DisplayName', 's', name), ('Description', 's', 'weekly, 1 of 4'),
                  ('Priority', 's', 'high'), ('NotifyFlags', 'u', 0x3f),
                  ('MinimumRetryDelay', 'u', 42), ('NoProgressTimeout', 'u', 3600),
                  ('MaximumDownloadTime', 'u', 86400)]
        for prop, sig, value in values:
            self.alice.set(path, JOB_IFACE, prop, sig, value)
            self.assertEqual(self.alice.job_prop(path, prop), value, prop)
        for prio in ('foreground', 'low', 'normal', 'high'):
            self.alice.set(path, JOB_IFACE, 'Priority', 's', prio)
            self.assertEqual(self.alice.job_prop(path, 'Priority'), prio)
        self.alice.set(path, JOB_IFACE, 'NotifyFlags', 'u', 0x14)
        self.alice.set(path, JOB_IFACE, 'MinimumRetryDelay', 'u', 3)
        self.assertEqual(self.alice.job_prop(path, 'MinimumRetryDelay'), 5)
        want = dict((p, v) for p, _, v in values)
        want.update(NotifyFlags=0x14, MinimumRetryDelay=5)
        before = self.alice.get_all(path, JOB_IFACE)
        self.assertEqual({k: before[k] for k in want}, want)
        file_before = self.file_props(self.files_of(path)[0])

        self.h.stop_bitsd()
        self.h.start_bitsd()

        after = self.alice.get_all(path, JOB_IFACE)
        self.assertEqual({k: after[k] for k in want}, want)
        for k in ('Id', 'Owner', 'State', 'CreationTime', 'FilesTotal'):
            self.assertEqual(after[k], before[k], k)
        self.assertEqual(self.alice.manager('GetJob', 's', job_id), path)
        files = self.files_of(path)
        self.assertEqual(files, [path + '/file/0'])
        self.assertEqual(self.file_props(files[0]), file_before)

    def test_bad_input_never_changes_a_job(self):
        d = self.userdir()
        job_id, path = self.create(name='victim')
        good_url = self.h.nginx_url('good.bin')
        good_local = os.path.join(d, 'good.bin')
        self.alice.job(path, 'AddFile', 'ss', good_url, good_local)
        new_local = os.path.join(d, 'new.bin')
        long_url = 'http://127.0.0.1/' + 'a' * 2200
        crlf_url = 'http://127.0.0.1/crlf.bin\r\nX-Injected: 1'

        def add(remote, local):
            return lambda: self.alice.job(path, 'AddFile', 'ss', remote, local, timeout=5)

        def add_set(pairs):
            return lambda: self.alice.job(path, 'AddFileSet', 'a(ss)', pairs, timeout=5)

        def set_prop(prop, sig, value):
            # A short timeout: a daemon that never answers should not cost 25 s per case.
            return lambda: self.alice.call(path, harness.PROPS_IFACE, 'Set', 'ssv', JOB_IFACE,
                                           prop, harness.Variant(sig, value), timeout=5)

        cases = [
            # (what, call, error name, strings the message must contain)
            ('relative local path', add(good_url, 'relative/new.bin'), INVALID_ARGS,
             ['relative/new.bin']),
            ('missing local directory', add(good_url, os.path.join(d, 'nodir', 'x.bin')),
             INVALID_ARGS, [os.path.join(d, 'nodir')]),
            ('ftp scheme', add('ftp://127.0.0.1/x.bin', new_local), INVALID_ARGS,
             ['ftp://127.0.0.1/x.bin']),
            ('empty remote', add('', new_local), INVALID_ARGS, ['remote']),
            ('empty local', add(good_url, ''), INVALID_ARGS, ['local']),
            ('CR/LF in remote', add(crlf_url, new_local), INVALID_ARGS,
             ['http://127.0.0.1/crlf.bin']),
            ('remote of 2217 bytes', add(long_url, new_local), ERR + 'StringTooLong',
             ['http://127.0.0.1/aaaa', '2217']),
            ('duplicate local in one set',
             add_set([(good_url, new_local), (good_url + '?2', new_local)]), INVALID_ARGS,
             [new_local]),
            ('duplicate local across calls', add(good_url + '?3', good_local), INVALID_ARGS,
             [good_local]),
            ('one bad entry in a set', add_set([(good_url, new_local),
                                                ('ftp://127.0.0.1/y.bin', new_local + '2')]),
             INVALID_ARGS, ['ftp://127.0.0.1/y.bin']),
            ('relative non-ASCII local path', add(good_url, 'ö' * 100 + '/x.bin'), INVALID_ARGS,
             ['öööö']),
            ('display name of 257 ASCII characters', set_prop('DisplayName', 's', 'n' * 257),
             ERR + 'StringTooLong', ['257', 'nnnn']),
            ('display name of 257 characters', set_prop('DisplayName', 's', 'é' * 257),
             ERR + 'StringTooLong', ['257', 'éééé']),
            ('description of 1025 characters', set_prop('Description', 's', 'd' * 1025),
             ERR + 'StringTooLong', ['1025']),
            ('unknown priority', set_prop('Priority', 's', 'urgent'), INVALID_ARGS, ['urgent']),
            ('unknown notify bit', set_prop('NotifyFlags', 'u', 0x43), INVALID_ARGS, ['0x40']),
        ]
        before = self.alice.get_all(path, JOB_IFACE)
        files_before = self.files_of(path)
        for what, call, name, needles in cases:
            with self.subTest(what):
                e = self.assertBusError(name, call)
                for needle in needles:
                    self.assertIn(needle, e.message)
                self.assertEqual(self.alice.get_all(path, JOB_IFACE), before)
                self.assertEqual(self.files_of(path), files_before)
        self.assertEqual(self.tmp_leftovers(d), [])
        self.assertFalse(os.path.exists(new_local))

        with self.subTest('CreateJob with an unknown type or a long name'):
            n = len(self.alice.manager('ListJobs', 't', 0))
            e = self.assertBusError(INVALID_ARGS, self.alice.manager, 'CreateJob', 'ss',
                                    'x', 'sideways', timeout=5)
            self.assertIn('sideways', e.message)
            e = self.assertBusError(ERR + 'StringTooLong', self.alice.manager, 'CreateJob',
                                    'ss', 'é' * 257, 'download', timeout=5)
            self.assertIn('257', e.message)
            self.assertEqual(len(self.alice.manager('ListJobs', 't', 0)), n)

        # The limits are the documented ones, counted in characters, and the
        # daemon still answers after all of the above.
        self.alice.set(path, JOB_IFACE, 'DisplayName', 's', 'é' * 256)
        self.assertEqual(self.alice.job_prop(path, 'DisplayName'), 'é' * 256)
        self.alice.set(path, JOB_IFACE, 'Description', 's', 'ü' * 1024)
        self.assertEqual(self.alice.job_prop(path, 'Description'), 'ü' * 1024)
        _, other = self.create(name='ñ' * 256)
        self.alice.job(other, 'AddFile', 'ss', 'http://127.0.0.1/' + 'a' * 2183,
                       os.path.join(d, 'long-url.bin'))
        self.assertEqual(self.alice.job_prop(other, 'FilesTotal'), 1)

    def test_get_job_accepts_id_forms(self):
        job_id, path = self.create()
        hexid = job_id.replace('-', '')
        for form in (job_id, '{%s}' % job_id, hexid, job_id.upper(), '{%s}' % job_id.upper(),
                     hexid.upper()):
            with self.subTest(form):
                self.assertEqual(self.alice.manager('GetJob', 's', form), path)
        for bad in ('not-a-uuid', job_id[:-1], job_id + '0', 'g' * 32, '{%s' % job_id,
                    hexid[:8] + '-' + hexid[8:]):
            with self.subTest(bad):
                e = self.assertBusError(INVALID_ARGS, self.alice.manager, 'GetJob', 's', bad)
                self.assertIn(bad, e.message)
        self.assertBusError(INVALID_ARGS, self.alice.manager, 'GetJob', 's', '')
        unknown = str(uuid.uuid4())
        e = self.assertBusError(ERR + 'NotFound', self.alice.manager, 'GetJob', 's', unknown)
        self.assertIn(unknown, e.message)

    def test_list_jobs(self):
        a_id, a_path = self.create(name='alice list')
        b_id, _ = self.create(self.bob, name='bob list')
        r_id, r_path = self.create(self.root, name='root list')

        rows = self.alice.manager('ListJobs', 't', 0)
        ids = {row[0] for row in rows}
        self.assertIn((a_id, a_path, 'alice list', 'suspended', ALICE), rows)
        self.assertNotIn(b_id, ids)
        self.assertNotIn(r_id, ids)
        self.assertEqual({row[4] for row in rows}, {ALICE})

        root_rows = self.root.manager('ListJobs', 't', 0)
        self.assertIn((r_id, r_path, 'root list', 'suspended', 0), root_rows)
        self.assertEqual({row[4] for row in root_rows}, {0})
        all_rows = self.root.manager('ListJobs', 't', 1)
        self.assertLessEqual({a_id, b_id, r_id}, {row[0] for row in all_rows})

        for flags in (2, 3, 1 << 63):
            with self.subTest(flags=flags):
                self.assertBusError(INVALID_ARGS, self.alice.manager, 'ListJobs', 't', flags)
        with self.assertRaises(BusError) as cm:
            self.alice.manager('ListJobs', 't', 1)
        self.assertIn(cm.exception.name, (ACCESS_DENIED, INTERACTIVE_AUTH))

    def test_introspection_matches_xml(self):
        d = self.userdir()
        _, path = self.create()
        self.alice.job(path, 'AddFile', 'ss', self.h.nginx_url('i.bin'), os.path.join(d, 'i.bin'))
        for iface, obj in (('org.freedesktop.bits1.Manager', MANAGER_PATH),
                           ('org.freedesktop.bits1.Job', path),
                           ('org.freedesktop.bits1.File', path + '/file/0')):
            with self.subTest(iface):
                with open(os.path.join(harness.srcdir(), 'dbus', iface + '.xml')) as f:
                    shipped = interface_shape(f.read(), iface)
                live = interface_shape(self.alice.call(obj, INTROSPECTABLE, 'Introspect'), iface)
                self.assertIsNotNone(shipped, 'interface missing from the XML file')
                self.assertIsNotNone(live, 'interface missing from the live introspection')
                self.assertTrue(shipped['properties'] or shipped['methods'])
                self.assertEqual(live, shipped)


def interface_shape(xml_text, iface):
    """{methods: {name: [(direction, type)]}, properties: {name: (type, access)},
    signals: {name: [type]}} of IFACE in an introspection document."""
    for node in ET.fromstring(xml_text).iter('interface'):
        if node.get('name') != iface:
            continue
        return {
            'methods': {m.get('name'): [(a.get('direction', 'in'), a.get('type'))
                                        for a in m.findall('arg')]
                        for m in node.findall('method')},
            'properties': {p.get('name'): (p.get('type'), p.get('access'))
                           for p in node.findall('property')},
            'signals': {s.get('name'): [a.get('type') for a in s.findall('arg')]
                        for s in node.findall('signal')},
        }
    return None


# =============================================================================

class Visibility(LifecycleCase):

    def test_foreign_job_is_indistinguishable_from_a_missing_one(self):
        d = self.userdir()
        job_id, path = self.create(name='alice private')
        self.alice.job(path, 'AddFile', 'ss', self.h.nginx_url('secret.bin'),
                       os.path.join(d, 'secret.bin'))
        before = self.alice.get_all(path, JOB_IFACE)
        fpath = path + '/file/0'

        missing_id = str(uuid.uuid4())
        mine = self.assertBusError(ERR + 'NotFound', self.bob.manager, 'GetJob', 's', job_id)
        never = self.assertBusError(ERR + 'NotFound', self.bob.manager, 'GetJob', 's', missing_id)
        self.assertEqual(mine.message.replace(job_id, '<ID>'),
                         never.message.replace(missing_id, '<ID>'))
        self.assertNotIn(job_id, [r[0] for r in self.bob.manager('ListJobs', 't', 0)])

        missing_path = JOB_PATH_PREFIX + missing_id.replace('-', '')
        calls = {
            'Suspend': lambda p: self.bob.job(p, 'Suspend'),
            'Resume': lambda p: self.bob.job(p, 'Resume'),
            'Cancel': lambda p: self.bob.job(p, 'Cancel'),
            'Complete': lambda p: self.bob.job(p, 'Complete'),
            'ListFiles': lambda p: self.bob.job(p, 'ListFiles'),
            'AddFile': lambda p: self.bob.job(p, 'AddFile', 'ss', self.h.nginx_url('x'),
                                              os.path.join(self.h.home(BOB), 'x')),
            'Get': lambda p: self.bob.job_prop(p, 'DisplayName'),
            'GetAll': lambda p: self.bob.get_all(p, JOB_IFACE),
            'Set': lambda p: self.bob.set(p, JOB_IFACE, 'DisplayName', 's', 'mine now'),
            'Introspect': lambda p: self.bob.call(p, INTROSPECTABLE, 'Introspect'),
            'File Get': lambda p: self.bob.get(p + '/file/0', FILE_IFACE, 'LocalName'),
            'File GetAll': lambda p: self.bob.get_all(p + '/file/0', FILE_IFACE),
            'File Introspect': lambda p: self.bob.call(p + '/file/0', INTROSPECTABLE,
                                                       'Introspect'),
        }
        for what, call in calls.items():
            with self.subTest(what):
                foreign = self.assertBusError(UNKNOWN_OBJECT, call, path)
                missing = self.assertBusError(UNKNOWN_OBJECT, call, missing_path)
                self.assertEqual(foreign.message.replace(path, '<P>'),
                                 missing.message.replace(missing_path, '<P>'))
                self.assertNotIn('alice private', foreign.message)
                self.assertNotIn('secret', foreign.message)

        # Nothing bob tried reached the job.
        after = self.alice.get_all(path, JOB_IFACE)
        self.assertEqual(after, before)
        self.assertEqual(self.file_props(fpath)['LocalName'], os.path.join(d, 'secret.bin'))

    def test_root_sees_and_acts_on_alices_job(self):
        d = self.userdir()
        job_id, path = self.create(name='alice for root')
        self.alice.job(path, 'AddFile', 'ss', self.h.nginx_url('r.bin'), os.path.join(d, 'r.bin'))
        self.assertEqual(self.root.manager('GetJob', 's', job_id), path)
        self.assertIn((job_id, path, 'alice for root', 'suspended', ALICE),
                      self.root.manager('ListJobs', 't', 1))
        self.assertNotIn(job_id, [r[0] for r in self.root.manager('ListJobs', 't', 0)])
        self.assertEqual(self.root.job_prop(path, 'Owner'), ALICE)
        self.assertEqual(self.root.job(path, 'ListFiles'), [path + '/file/0'])
        self.assertEqual(self.root.get(path + '/file/0', FILE_IFACE, 'LocalName'),
                         os.path.join(d, 'r.bin'))
        self.root.set(path, JOB_IFACE, 'DisplayName', 's', 'renamed by root')
        self.assertEqual(self.alice.job_prop(path, 'DisplayName'), 'renamed by root')
        self.root.job(path, 'Cancel')
        self.assertEqual(self.alice.job_prop(path, 'State'), 'cancelled')
        self.assertEqual(self.alice.job_prop(path, 'Owner'), ALICE)


# =============================================================================

class Transfers(LifecycleCase):

    def test_download_lifecycle_to_acknowledged(self):
        h = self.h
        d = self.userdir()
        sizes = {'order-a.bin': 200_000, 'big.bin': 3 * MiB + 17, 'order-b.bin': 2 * MiB}
        digests = {
            'order-a.bin': h.make_file('fault', 'order-a.bin', sizes['order-a.bin'], seed=21),
            'big.bin': h.make_file('nginx', 'big.bin', sizes['big.bin'], seed=22),
            'order-b.bin': h.make_file('fault', 'order-b.bin', sizes['order-b.bin'], seed=23),
        }
        remotes = [h.fault_url('order-a.bin'), h.nginx_url('big.bin'),
                   h.fault_url('order-b.bin', rate=1 * MiB)]
        names = ['order-a.bin', 'big.bin', 'order-b.bin']
        locals_ = [os.path.join(d, n) for n in names]
        job_id, path = self.create(name='nightly image')
        self.alice.job(path, 'AddFileSet', 'a(ss)', list(zip(remotes, locals_)))
        files = self.files_of(path)
        temps = [self.file_props(f)['TemporaryName'] for f in files]
        h.fault_reset()

        self.alice.job(path, 'Resume')
        self.assertIn(self.alice.job_prop(path, 'State'),
                      ('queued', 'connecting', 'transferring'))
        done, total, _ = self.wait_bytes(
            path, lambda b, t, s: s == 'transferring' and t != UINT64_MAX and 0 < b < t,
            'transferring with 0 < BytesTransferred < BytesTotal')
        self.assertEqual(total, sum(sizes.values()))
        self.assertEqual(self.alice.wait_job_state(path, 'transferred', timeout=30),
                         'transferred')

        props = self.alice.get_all(path, JOB_IFACE)
        total = sum(sizes.values())
        self.assertEqual((props['FilesTotal'], props['FilesTransferred'], props['BytesTotal'],
                          props['BytesTransferred']), (3, 3, total, total))
        self.assertGreater(props['TransferCompletionTime'], props['CreationTime'])
        self.assertLessEqual(abs(props['TransferCompletionTime'] - now_usec()), 60_000_000)
        self.assertEqual(props['Error'], NO_ERROR)
        for fpath, local, tmp, name in zip(files, locals_, temps, names):
            p = self.file_props(fpath)
            self.assertEqual((p['BytesTotal'], p['BytesTransferred'], p['Completed']),
                             (sizes[name], sizes[name], False))
            self.assertFalse(os.path.exists(local), 'final name exists before Complete')
            self.assertTrue(os.path.exists(tmp), 'temporary file missing while transferred')
        # Files are fetched in AddFile order.
        fetched = [e['path'] for e in h.fault_log() if e['path'].startswith('/f/order-')]
        self.assertEqual(fetched[0], '/f/order-a.bin')
        self.assertEqual(fetched[-1], '/f/order-b.bin')
        self.assertEqual(sorted(fetched), fetched)

        self.assertEqual(self.alice.job(path, 'Complete'), 'complete')
        self.assertEqual(self.alice.job_prop(path, 'State'), 'acknowledged')
        for fpath, local, tmp, name in zip(files, locals_, temps, names):
            self.assertEqual(sha256_file(local), digests[name], name)
            st = os.stat(local)
            self.assertEqual((st.st_uid, st.st_gid), (ALICE, ALICE), name)
            self.assertFalse(os.path.exists(tmp), tmp)
            self.assertTrue(self.file_props(fpath)['Completed'])
        self.assertEqual(self.tmp_leftovers(d), [])
        self.assertEqual(sorted(os.listdir(d)), sorted(names))

    def test_cancel_while_transferring_keeps_existing_file(self):
        h = self.h
        d = self.userdir()
        local = os.path.join(d, 'keep.bin')
        with open(local, 'wb') as f:
            f.write(b'alice wrote this before\n')
        os.chown(local, ALICE, ALICE)
        original = sha256_file(local)
        h.make_file('fault', 'cancel.bin', 8 * MiB, seed=31)
        _, path = self.create(name='to cancel')
        self.alice.job(path, 'AddFile', 'ss', h.fault_url('cancel.bin', rate=256 * 1024), local)
        tmp = self.file_props(self.files_of(path)[0])['TemporaryName']
        self.alice.job(path, 'Resume')
        self.wait_bytes(path, lambda b, t, s: s == 'transferring' and b > 0,
                        'transferring with BytesTransferred > 0')
        self.assertTrue(os.path.exists(tmp))

        self.alice.job(path, 'Cancel')
        self.assertEqual(self.alice.job_prop(path, 'State'), 'cancelled')
        self.assertFalse(os.path.exists(tmp), 'temporary file left after Cancel')
        self.assertEqual(sha256_file(local), original, 'Cancel touched the existing file')
        self.assertEqual(os.stat(local).st_uid, ALICE)
        self.assertEqual(sorted(os.listdir(d)), ['keep.bin'])

    def test_suspend_stops_transfer_and_resume_continues_with_range(self):
        h = self.h
        d = self.userdir()
        size = 4 * MiB
        digest = h.make_file('fault', 'pause.bin', size, seed=41)
        url = h.fault_url('pause.bin', rate=1 * MiB)
        local = os.path.join(d, 'pause.bin')
        _, path = self.create(name='pause')
        self.alice.job(path, 'AddFile', 'ss', url, local)
        h.fault_reset()
        self.alice.job(path, 'Resume')
        self.wait_bytes(path, lambda b, t, s: s == 'transferring' and b >= 512 * 1024,
                        'half a MiB transferred')

        self.alice.job(path, 'Suspend')
        self.assertEqual(self.alice.job_prop(path, 'State'), 'suspended')
        first = self.alice.job_prop(path, 'BytesTransferred')
        self.assertGreater(first, 0)
        self.assertLess(first, size)
        time.sleep(1.0)  # measuring that nothing moves: a bounded wait is the point
        self.assertEqual(self.alice.job_prop(path, 'BytesTransferred'), first)
        self.assertEqual(self.alice.job_prop(path, 'State'), 'suspended')
        self.assertFalse(os.path.exists(local))

        n_before = len(h.fault_log())
        self.alice.job(path, 'Resume')
        self.alice.wait_job_state(path, 'transferred', timeout=30)
        later = [e for e in h.fault_log()[n_before:] if e['path'] == '/f/pause.bin']
        self.assertTrue(later, 'no request after Resume')
        self.assertTrue(any(e['range'] and re.match(r'bytes=[1-9][0-9]*-', e['range'])
                            for e in later), [e['range'] for e in later])
        self.assertEqual(self.alice.job(path, 'Complete'), 'complete')
        self.assertEqual(sha256_file(local), digest)

    def test_resume_on_empty_job_is_empty(self):
        job_id, path = self.create(name='empty')
        e = self.assertBusError(ERR + 'Empty', self.alice.job, path, 'Resume')
        self.assertIn(job_id, e.message)
        self.assertEqual(self.alice.job_prop(path, 'State'), 'suspended')

    def test_complete_before_transferred_is_partial(self):
        h = self.h
        d = self.userdir()
        done_digest = h.make_file('nginx', 'partial-done.bin', 1 * MiB, seed=51)
        h.make_file('fault', 'partial-slow.bin', 8 * MiB, seed=52)
        done_local = os.path.join(d, 'done.bin')
        slow_local = os.path.join(d, 'slow.bin')
        _, path = self.create(name='partial')
        self.alice.job(path, 'AddFileSet', 'a(ss)', [
            (h.nginx_url('partial-done.bin'), done_local),
            (h.fault_url('partial-slow.bin', rate=256 * 1024), slow_local)])
        f0, f1 = self.files_of(path)
        slow_tmp = self.file_props(f1)['TemporaryName']
        self.alice.job(path, 'Resume')
        self.h.wait_for(lambda: self.alice.get(f1, FILE_IFACE, 'BytesTransferred') > 0,
                        timeout=20, what='the second file to make progress')
        self.assertTrue(os.path.exists(slow_tmp))
        self.assertEqual(self.alice.job_prop(path, 'FilesTransferred'), 1)

        self.assertEqual(self.alice.job(path, 'Complete'), 'partial')
        self.assertEqual(self.alice.job_prop(path, 'State'), 'acknowledged')
        self.assertEqual(sha256_file(done_local), done_digest)
        self.assertEqual(os.stat(done_local).st_uid, ALICE)
        self.assertFalse(os.path.exists(slow_local))
        self.assertFalse(os.path.exists(slow_tmp), 'temporary file of the unfinished file left')
        self.assertEqual((self.alice.get(f0, FILE_IFACE, 'Completed'),
                          self.alice.get(f1, FILE_IFACE, 'Completed')), (True, False))
        self.assertEqual(sorted(os.listdir(d)), ['done.bin'])

    def test_final_jobs(self):
        h = self.h
        d = self.userdir()
        h.make_file('nginx', 'final.bin', 100_000, seed=61)
        acked_id, acked = self.create(name='to acknowledge')
        self.alice.job(acked, 'AddFile', 'ss', h.nginx_url('final.bin'), os.path.join(d, 'a.bin'))
        self.alice.job(acked, 'Resume')
        self.alice.wait_job_state(acked, 'transferred')
        self.assertEqual(self.alice.job(acked, 'Complete'), 'complete')
        cancelled_id, cancelled = self.create(name='to cancel')
        self.alice.job(cancelled, 'AddFile', 'ss', h.nginx_url('final.bin'),
                       os.path.join(d, 'c.bin'))
        self.alice.job(cancelled, 'Cancel')
        empty_id, empty = self.create(name='empty, cancelled')
        self.alice.job(empty, 'Cancel')

        listed = {r[0] for r in self.alice.manager('ListJobs', 't', 0)}
        listed_all = {r[0] for r in self.root.manager('ListJobs', 't', 1)}
        for job_id, path, state in ((acked_id, acked, 'acknowledged'),
                                    (cancelled_id, cancelled, 'cancelled'),
                                    (empty_id, empty, 'cancelled')):
            with self.subTest(state=state, job=path):
                self.assertNotIn(job_id, listed)
                self.assertNotIn(job_id, listed_all)
                for c in (self.alice, self.root):
                    self.assertBusError(ERR + 'NotFound', c.manager, 'GetJob', 's', job_id)
                props = self.alice.get_all(path, JOB_IFACE)
                self.assertEqual((props['State'], props['Id']), (state, job_id))
                calls = {
                    'Cancel': lambda: self.alice.job(path, 'Cancel'),
                    'Complete': lambda: self.alice.job(path, 'Complete'),
                    'Suspend': lambda: self.alice.job(path, 'Suspend'),
                    'Resume': lambda: self.alice.job(path, 'Resume'),
                    'AddFile': lambda: self.alice.job(path, 'AddFile', 'ss',
                                                      h.nginx_url('final.bin'),
                                                      os.path.join(d, 'new.bin')),
                    'AddFileSet': lambda: self.alice.job(path, 'AddFileSet', 'a(ss)', [
                        (h.nginx_url('final.bin'), os.path.join(d, 'new2.bin'))]),
                    'Set DisplayName': lambda: self.alice.set(path, JOB_IFACE, 'DisplayName',
                                                              's', 'again'),
                    'Set Priority': lambda: self.alice.set(path, JOB_IFACE, 'Priority', 's', 'low'),
                    'Set NotifyFlags': lambda: self.alice.set(path, JOB_IFACE, 'NotifyFlags',
                                                              'u', 1),
                    'Set MinimumRetryDelay': lambda: self.alice.set(path, JOB_IFACE,
                                                                    'MinimumRetryDelay', 'u', 60),
                }
                for what, call in calls.items():
                    with self.subTest(what):
                        self.assertBusError(ERR + 'InvalidState', call)
                self.assertEqual(self.alice.get_all(path, JOB_IFACE), props)
        self.assertEqual(sorted(os.listdir(d)), ['a.bin'])

    def test_bitsctl_job_verbs(self):
        h = self.h
        d = self.userdir()
        digest = h.make_file('nginx', 'ctl.bin', 2 * MiB + 5, seed=71)
        local = os.path.join(d, 'ctl.bin')

        def ctl(*args):
            r = h.bitsctl(ALICE, *args)
            self.assertEqual(r.returncode, 0, 'bitsctl %s: %s' % (' '.join(args), r.stderr))
            return r.stdout

        job_id = ctl('create', 'ctl job').strip()
        self.assertRegex(job_id, UUID_RE)
        path = self.alice.manager('GetJob', 's', job_id)
        self.assertEqual(self.alice.job_prop(path, 'DisplayName'), 'ctl job')
        self.assertEqual(self.alice.job_prop(path, 'Owner'), ALICE)
        ctl('add', job_id, h.nginx_url('ctl.bin'), local)
        self.assertEqual(self.alice.get(path + '/file/0', FILE_IFACE, 'LocalName'), local)
        listing = ctl('list')
        line = [ln for ln in listing.splitlines() if job_id in ln]
        self.assertEqual(len(line), 1, listing)
        self.assertIn('suspended', line[0])
        self.assertIn('ctl job', line[0])
        info = ctl('info', job_id)
        self.assertIn(job_id, info)
        self.assertIn('ctl job', info)
        self.assertIn('suspended', info)
        ctl('resume', job_id)
        self.alice.wait_job_state(path, 'transferred')
        self.assertIn('transferred', ctl('info', job_id))
        self.assertIn('complete', ctl('complete', job_id))
        self.assertEqual(self.alice.job_prop(path, 'State'), 'acknowledged')
        self.assertEqual(sha256_file(local), digest)
        self.assertNotIn(job_id, ctl('list'))

        other = ctl('create', 'ctl cancel').strip()
        ctl('cancel', other)
        self.assertNotIn(other, ctl('list'))
        self.assertBusError(ERR + 'NotFound', self.alice.manager, 'GetJob', 's', other)

        # Errors reach the user: not found, with a non-zero exit.
        r = h.bitsctl(ALICE, 'info', str(uuid.uuid4()))
        self.assertNotEqual(r.returncode, 0)
        self.assertTrue(r.stderr.strip())

    def test_bitsctl_transfer(self):
        h = self.h
        d = self.userdir()
        digest = h.make_file('nginx', 'xfer.bin', 3 * MiB + 1, seed=81)
        dest = os.path.join(d, 'xfer.bin')
        r = h.bitsctl(ALICE, 'transfer', h.nginx_url('xfer.bin'), dest, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip().splitlines(), [dest])
        self.assertEqual(sha256_file(dest), digest)
        self.assertEqual(os.stat(dest).st_uid, ALICE)
        self.assertEqual(sorted(os.listdir(d)), ['xfer.bin'])
        # The job was completed: nothing of alice's is left in the queue.
        self.assertEqual(self.alice.manager('ListJobs', 't', 0), [])

    def busctl(self, uid, *args):
        """busctl as UID on the private bus, JSON output; returns (CompletedProcess, parsed data or None)."""
        r = self.h.run_as(uid, ['busctl', '--system', '--json=short', *args], timeout=30)
        data = json.loads(r.stdout)['data'] if r.returncode == 0 and r.stdout.strip() else None
        return r, data

    def test_busctl_client_as_bob(self):
        """A whole download through busctl, as another non-root user than the python clients' alice."""
        h = self.h
        d = self.userdir(BOB)
        digest = h.make_file('nginx', 'busctl.bin', 2 * MiB + 7, seed=91)
        dest = os.path.join(d, 'busctl.bin')
        mgr = ('org.freedesktop.bits1', '/org/freedesktop/bits1', 'org.freedesktop.bits1.Manager')

        r, data = self.busctl(BOB, 'call', *mgr, 'CreateJob', 'ss', 'via busctl', 'download')
        self.assertEqual(r.returncode, 0, r.stderr)
        job_id, path = data
        self.assertRegex(job_id, UUID_RE)
        job = ('org.freedesktop.bits1', path, 'org.freedesktop.bits1.Job')
        r, _ = self.busctl(BOB, 'call', *job, 'AddFile', 'ss', h.nginx_url('busctl.bin'), dest)
        self.assertEqual(r.returncode, 0, r.stderr)
        r, _ = self.busctl(BOB, 'call', *job, 'Resume')
        self.assertEqual(r.returncode, 0, r.stderr)

        def state():
            r, data = self.busctl(BOB, 'get-property', *job, 'State')
            return data if r.returncode == 0 and data in ('transferred', 'error') else None
        self.assertEqual(h.wait_for(state, timeout=30, what='busctl job to finish'), 'transferred')
        r, data = self.busctl(BOB, 'get-property', *job, 'BytesTransferred')
        self.assertEqual(data, 2 * MiB + 7)
        r, data = self.busctl(BOB, 'call', *job, 'Complete')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(data, ['complete'])
        self.assertEqual(sha256_file(dest), digest)
        self.assertEqual(os.stat(dest).st_uid, BOB)

        # Errors reach busctl users with their names and the offending value.
        r, _ = self.busctl(BOB, 'call', *mgr, 'GetJob', 's', 'not-a-job-id')
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('not-a-job-id', r.stderr)
        # alice's jobs do not exist for bob, not even through busctl.
        alice_id, alice_path = self.create(name='alice private')
        r, _ = self.busctl(BOB, 'get-property', 'org.freedesktop.bits1', alice_path,
                           'org.freedesktop.bits1.Job', 'DisplayName')
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn('alice private', r.stdout + r.stderr)
        self.alice.job(alice_path, 'Cancel')


# =============================================================================

class FinalRetention(LifecycleCase):

    config_text = '[Daemon]\nFinalJobRetentionSec=2\n'

    def test_final_job_objects_disappear_after_retention(self):
        d = self.userdir()
        jobs = []
        for how in ('Cancel', 'Complete'):
            job_id, path = self.create(name='retained ' + how)
            self.alice.job(path, 'AddFile', 'ss', self.h.nginx_url('ret.bin'),
                           os.path.join(d, how + '.bin'))
            self.alice.job(path, how)
            jobs.append((path, 'cancelled' if how == 'Cancel' else 'acknowledged'))
        finalized = time.monotonic()
        for path, state in jobs:
            self.assertEqual(self.alice.job_prop(path, 'State'), state)
            self.assertEqual(self.alice.get(path + '/file/0', FILE_IFACE, 'LocalName')
                             .startswith(d), True)

        def gone(path):
            def check():
                try:
                    self.alice.job_prop(path, 'State')
                except BusError as e:
                    return e
                return None
            return check

        for path, _ in jobs:
            e = self.h.wait_for(gone(path), timeout=15, what='%s to leave the bus' % path)
            self.assertEqual(e.name, UNKNOWN_OBJECT)
            self.assertBusError(UNKNOWN_OBJECT, self.alice.get, path + '/file/0', FILE_IFACE,
                                'LocalName')
            self.assertBusError(UNKNOWN_OBJECT, self.alice.job, path, 'Cancel')
        # Not before the configured retention (timer slack is 1 s).
        self.assertGreaterEqual(time.monotonic() - finalized, 1.0)


if __name__ == '__main__':
    harness.main()
