"""A file system that stops answering: a minimal FUSE server speaking the kernel protocol on
/dev/fuse directly (stdlib only), for tests of what bitsd does when a user's file system hangs.

One flat directory, owned by a given user. Files can be looked up, created, opened, read, sized,
truncated, synced and removed; their data is kept in memory. While `hang_writes` (`hang_reads`)
is set, WRITE (READ) requests get no answer at all, as from a dead NFS server or a FUSE server that hangs: the writer
or reader blocks in the kernel until stop() aborts the connection.

    fs = HangFS('/some/dir', uid=4001, gid=4001)   # mounts it (as root)
    fs.hang_writes = True
    ...
    fs.stop()                                     # aborts pending requests, unmounts
"""

import ctypes
import errno
import os
import select
import stat
import struct
import subprocess
import threading
import time

FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_SETATTR = 1, 2, 3, 4
FUSE_UNLINK, FUSE_OPEN, FUSE_READ, FUSE_WRITE = 10, 14, 15, 16
FUSE_STATFS, FUSE_RELEASE, FUSE_FSYNC, FUSE_FLUSH, FUSE_INIT = 17, 18, 20, 25, 26
FUSE_OPENDIR, FUSE_RELEASEDIR, FUSE_CREATE, FUSE_INTERRUPT = 27, 29, 35, 36
FUSE_DESTROY, FUSE_BATCH_FORGET = 38, 42
NO_REPLY = {FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT}

IN_HEADER = struct.Struct('<IIQQIIIHH')       # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct('<IiQ')             # len error unique
ATTR = struct.Struct('<QQQQQQIIIIIIIIII')      # fuse_attr, 88 bytes
FATTR_SIZE = 1 << 3

ROOT = 1


class HangFS:

    def __init__(self, mountpoint, uid, gid):
        self.mountpoint = mountpoint
        self.uid, self.gid = uid, gid
        self.hang_writes = False
        self.hang_reads = False
        self.writes_seen = 0
        self.reads_seen = 0
        self.files = {}        # name -> (nodeid, bytearray)
        self.names = {}        # nodeid -> name
        self.next_node = 2
        self.pending = []      # unanswered WRITE requests (unique ids)
        self._stop = False
        self.fd = os.open('/dev/fuse', os.O_RDWR | os.O_CLOEXEC)
        opts = 'fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions' % self.fd
        libc = ctypes.CDLL(None, use_errno=True)
        MS_NOSUID, MS_NODEV = 2, 4
        if libc.mount(b'bits-hangfs', mountpoint.encode(), b'fuse.bits-hangfs', MS_NOSUID | MS_NODEV,
                      opts.encode()) != 0:
            e = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(e, 'mount fuse on %s: %s' % (mountpoint, os.strerror(e)))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def add_file(self, name, data):
        """A file NAME holding DATA (bytes)."""
        n = self.next_node
        self.next_node += 1
        self.files[name] = (n, bytearray(data))
        self.names[n] = name

    # ---- replies ----

    def _reply(self, unique, error=0, body=b''):
        data = OUT_HEADER.pack(OUT_HEADER.size + len(body), -error if error else 0, unique) + body
        try:
            os.write(self.fd, data)
        except OSError:
            pass        # the request was interrupted meanwhile

    def _attr(self, node):
        now = int(time.time())
        if node == ROOT:
            return ATTR.pack(ROOT, 0, 0, now, now, now, 0, 0, 0, stat.S_IFDIR | 0o755, 2,
                             self.uid, self.gid, 0, 4096, 0)
        data = self.files[self.names[node]][1]
        return ATTR.pack(node, len(data), (len(data) + 511) // 512, now, now, now, 0, 0, 0,
                         stat.S_IFREG | 0o644, 1, self.uid, self.gid, 0, 4096, 0)

    def _entry(self, node):
        # nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec + attr
        return struct.pack('<QQQQII', node, 0, 0, 0, 0, 0) + self._attr(node)

    def _attr_out(self, node):
        return struct.pack('<QII', 0, 0, 0) + self._attr(node)

    # ---- requests ----

    def _handle(self, op, unique, node, body):
        if op == FUSE_INIT:
            major, minor, readahead, flags = struct.unpack_from('<IIII', body)
            out = struct.pack('<IIIIHHIIHHII', 7, 31, readahead, 0, 16, 12, 1 << 20, 1, 256, 0, 0, 0)
            return self._reply(unique, 0, out + b'\0' * (64 - len(out)))
        if op in (FUSE_LOOKUP, FUSE_UNLINK):
            name = body.split(b'\0', 1)[0].decode()
            if name not in self.files:
                return self._reply(unique, errno.ENOENT)
            if op == FUSE_UNLINK:
                n, _ = self.files.pop(name)
                self.names.pop(n, None)
                return self._reply(unique)
            return self._reply(unique, 0, self._entry(self.files[name][0]))
        if op == FUSE_GETATTR:
            if node != ROOT and node not in self.names:
                return self._reply(unique, errno.ENOENT)
            return self._reply(unique, 0, self._attr_out(node))
        if op == FUSE_SETATTR:
            valid = struct.unpack_from('<I', body)[0]
            size = struct.unpack_from('<Q', body, 16)[0]
            if node in self.names and valid & FATTR_SIZE:
                data = self.files[self.names[node]][1]
                del data[size:]
                data.extend(b'\0' * (size - len(data)))
            return self._reply(unique, 0, self._attr_out(node))
        if op == FUSE_CREATE:
            name = body[16:].split(b'\0', 1)[0].decode()
            if name in self.files:
                return self._reply(unique, errno.EEXIST)
            n = self.next_node
            self.next_node += 1
            self.files[name] = (n, bytearray())
            self.names[n] = name
            return self._reply(unique, 0, self._entry(n) + struct.pack('<QIi', n, 0, 0))
        if op in (FUSE_OPEN, FUSE_OPENDIR):
            return self._reply(unique, 0, struct.pack('<QIi', node, 0, 0))
        if op == FUSE_READ:
            self.reads_seen += 1
            if self.hang_reads:
                self.pending.append(unique)
                return None
            fh, offset, size = struct.unpack_from('<QQI', body)
            data = self.files[self.names[node]][1]
            return self._reply(unique, 0, bytes(data[offset:offset + size]))
        if op == FUSE_WRITE:
            self.writes_seen += 1
            if self.hang_writes:
                self.pending.append(unique)
                return None
            fh, offset, size = struct.unpack_from('<QQI', body)
            data = self.files[self.names[node]][1]
            chunk = body[40:40 + size]
            if len(data) < offset:
                data.extend(b'\0' * (offset - len(data)))
            data[offset:offset + size] = chunk
            return self._reply(unique, 0, struct.pack('<II', size, 0))
        if op in (FUSE_RELEASE, FUSE_RELEASEDIR, FUSE_FLUSH, FUSE_FSYNC, FUSE_DESTROY):
            return self._reply(unique)
        if op == FUSE_STATFS:
            return self._reply(unique, 0, struct.pack('<QQQQQIIII', 1 << 20, 1 << 20, 1 << 20, 1000, 1000,
                                                        4096, 255, 4096, 0) + b'\0' * 24)
        return self._reply(unique, errno.ENOSYS)

    def _serve(self):
        buf_size = (1 << 20) + 4096 * 4
        while not self._stop:
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if not r:
                continue
            try:
                req = os.read(self.fd, buf_size)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                return      # ENODEV: unmounted
            length, op, unique, node = IN_HEADER.unpack_from(req)[:4]
            if op in NO_REPLY:
                continue
            self._handle(op, unique, node, req[IN_HEADER.size:length])

    def stop(self):
        """Abort the connection (every unanswered request fails) and unmount. Idempotent."""
        if self._stop:
            return
        self._stop = True
        self.thread.join(5)
        os.close(self.fd)       # the last /dev/fuse fd: the kernel aborts the connection
        subprocess.run(['umount', '-l', self.mountpoint], check=False)
