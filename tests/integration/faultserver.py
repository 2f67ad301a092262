#!/usr/bin/python3
"""A small scriptable HTTP/1.1 server for bitsd's integration tests (stdlib only).

Serves the files of one directory at /f/<name> with ETag, Last-Modified, HEAD,
keep-alive and single-range support. Each test scripts its own misbehaviour
through query parameters, so tests never need server-side state of their own:

  status=N [retry_after=S]      answer N with a small body (and Retry-After)
  fail_first=K [fail_status=N]  the first K requests for this exact path+query
                                answer N (default 503), later ones succeed
  rate=BYTES_PER_SEC            throttle the body
  disconnect_after=N            close the connection after N body bytes
  noranges=1                    ignore Range/If-Range, no Accept-Ranges
  delay=S                       wait S seconds before sending headers
  hang=1                        never answer (until the client leaves)
  auth=USER:PASSWORD            require HTTP Basic authentication (401 otherwise)

Control endpoints:
  GET  /_log                        JSON list of every request served so far
  POST /_reset                      clear the log and the fail_first counters
  POST /_replace?name=X&size=N&seed=S
                                    atomically replace file X (new inode, so a new
                                    ETag); answers {"sha256": ...}

Usage: faultserver.py DIR [--port N]. Listens on 127.0.0.1 only, prints
"PORT <n>" on stdout once it accepts connections, and exits when its stdin
reaches EOF (the harness holds the other end, so the server never outlives it).
"""

import base64
import email.utils
import hashlib
import json
import os
import random
import select
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK = 1 << 20             # pattern block; every block gets its own header
MAX_LOG = 100_000           # request log entries kept
MAX_WAIT = 600.0            # upper bound for delay= and hang=
CHUNK = 256 * 1024          # body write size when not throttled


def pattern_block(seed):
    return random.Random(seed).randbytes(BLOCK)


def write_pattern_file(path, size, seed):
    """Write SIZE deterministic pseudo-random bytes to PATH, return their sha256 hex.

    One random 1 MiB block (from SEED) is repeated, but each block starts with a
    unique header (seed, block index), so data placed at a wrong offset changes
    the hash. Writes go out in 8 MiB pieces: 1 GiB takes about a second."""
    block = pattern_block(seed)
    per_write = 8
    buf = bytearray(block * per_write)
    digest = hashlib.sha256()
    index = 0
    left = size
    with open(path, 'wb') as f:
        while left > 0:
            for k in range(per_write):
                hdr = b'<bits %d %d>' % (seed, index + k)
                buf[k * BLOCK:k * BLOCK + len(hdr)] = hdr
            n = min(left, len(buf))
            view = memoryview(buf)[:n]
            f.write(view)
            digest.update(view)
            left -= n
            index += per_write
    return digest.hexdigest()


def parse_range(value, size):
    """Return (start, end) inclusive, 'unsatisfiable', or None (ignore the header).

    Only a single byte range is supported; a list of ranges is ignored (served
    as 200), which RFC 9110 allows."""
    if not value.startswith('bytes=') or ',' in value:
        return None
    spec = value[len('bytes='):].strip()
    first, sep, last = spec.partition('-')
    if not sep:
        return None
    try:
        if first == '':
            n = int(last)
            if n < 0:
                return None
            if n == 0 or size == 0:
                return 'unsatisfiable'
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last != '' else None
    except ValueError:
        return None
    if start < 0 or (end is not None and end < start):
        return None
    if start >= size:
        return 'unsatisfiable'
    return start, size - 1 if end is None else min(end, size - 1)


class State:
    def __init__(self, root):
        self.root = root
        self.lock = threading.Lock()
        self.log = []
        self.counters = {}
        self.stopping = threading.Event()

    def record(self, entry):
        with self.lock:
            if len(self.log) < MAX_LOG:
                self.log.append(entry)

    def count(self, key):
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + 1
            return self.counters[key]


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'bits-faultserver/1'
    state: State = None  # set by main()

    def log_message(self, fmt, *args):
        pass  # the JSON log is the record; stderr stays quiet

    # --- plumbing --------------------------------------------------------

    def _begin(self):
        url = urllib.parse.urlsplit(self.path)
        self.url_path = urllib.parse.unquote(url.path)
        self.raw_query = url.query
        self.params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        self.entry = {
            'method': self.command, 'path': self.url_path, 'query': self.raw_query,
            'headers': dict(self.headers.items()),
            'range': self.headers.get('Range'), 'if_range': self.headers.get('If-Range'),
            'client_port': self.client_address[1],
            'status': None, 'bytes_sent': 0, 'time': time.time(),
        }
        if not self.url_path.startswith('/_'):  # control requests stay out of the log
            self.state.record(self.entry)
        # Keep the connection in sync for keep-alive: consume any request body.
        length = int(self.headers.get('Content-Length') or 0)
        self.body = self.rfile.read(length) if length > 0 else b''

    def _head(self, status, headers):
        self.entry['status'] = status
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()

    def _small(self, status, text, extra=(), ctype='text/plain'):
        body = text.encode()
        self._head(status, [('Content-Type', ctype), ('Content-Length', str(len(body))),
                            *extra])
        if self.command != 'HEAD':
            self.wfile.write(body)
            self.entry['bytes_sent'] = len(body)

    def _num(self, name, default=None, kind=int):
        v = self.params.get(name)
        return kind(v) if v not in (None, '') else default

    # --- methods ---------------------------------------------------------

    def do_GET(self):
        self._begin()
        if self.url_path == '/_log':
            with self.state.lock:
                text = json.dumps(self.state.log)
            return self._small(200, text, ctype='application/json')
        self._serve()

    def do_HEAD(self):
        self._begin()
        self._serve()

    def do_POST(self):
        self._begin()
        if self.url_path == '/_reset':
            with self.state.lock:
                self.state.log.clear()
                self.state.counters.clear()
            return self._small(200, '{}', ctype='application/json')
        if self.url_path == '/_replace':
            name = self.params.get('name', '')
            if not self._valid_name(name):
                return self._small(400, 'bad name\n')
            path = os.path.join(self.state.root, name)
            tmp = path + '.replace-tmp'
            digest = write_pattern_file(tmp, self._num('size', 0), self._num('seed', 0))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)  # new inode → new ETag
            return self._small(200, json.dumps({'sha256': digest}), ctype='application/json')
        self._serve()

    # --- the file endpoint -----------------------------------------------

    @staticmethod
    def _valid_name(name):
        return name not in ('', '.', '..') and '/' not in name and '\0' not in name

    def _serve(self):
        p = self.params
        delay = self._num('delay', 0.0, float)
        if delay > 0:
            time.sleep(min(delay, MAX_WAIT))
        if p.get('hang') == '1':
            return self._hang()

        extra = []
        if 'retry_after' in p:
            extra.append(('Retry-After', p['retry_after']))
        if 'fail_first' in p:
            key = self.url_path + '?' + self.raw_query
            if self.state.count(key) <= self._num('fail_first'):
                return self._small(self._num('fail_status', 503), 'scripted failure\n', extra)
        if 'status' in p:
            return self._small(self._num('status'), 'status %s\n' % p['status'], extra)
        if 'auth' in p and not self._authorized(p['auth']):
            return self._small(401, 'unauthorized\n',
                               [('WWW-Authenticate', 'Basic realm="bits"')])

        if not self.url_path.startswith('/f/') or not self._valid_name(self.url_path[3:]):
            return self._small(404, 'not found\n')
        path = os.path.join(self.state.root, self.url_path[3:])
        try:
            f = open(path, 'rb')
        except OSError:
            return self._small(404, 'not found\n')
        with f:
            self._send_file(f)

    def _authorized(self, userpass):
        got = self.headers.get('Authorization', '')
        want = 'Basic ' + base64.b64encode(userpass.encode()).decode()
        return got == want

    def _send_file(self, f):
        st = os.fstat(f.fileno())
        size = st.st_size
        etag = '"%x-%x-%x"' % (st.st_ino, size, st.st_mtime_ns)
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        headers = [('ETag', etag), ('Last-Modified', last_modified),
                   ('Content-Type', 'application/octet-stream')]
        ranges = self.params.get('noranges') != '1'
        if ranges:
            headers.append(('Accept-Ranges', 'bytes'))

        start, end, status = 0, size - 1, 200
        rng = self.headers.get('Range')
        if ranges and rng is not None and self._if_range_holds(etag, last_modified):
            r = parse_range(rng, size)
            if r == 'unsatisfiable':
                return self._small(416, 'range not satisfiable\n',
                                   [('Content-Range', 'bytes */%d' % size), *headers[:2]])
            if r is not None:
                start, end = r
                status = 206
                headers.append(('Content-Range', 'bytes %d-%d/%d' % (start, end, size)))
        length = end - start + 1
        headers.append(('Content-Length', str(length)))
        self._head(status, headers)
        if self.command == 'HEAD':
            return
        f.seek(start)
        self._send_body(f, length)

    def _if_range_holds(self, etag, last_modified):
        cond = self.headers.get('If-Range')
        if cond is None:
            return True
        cond = cond.strip()
        if cond.startswith('"') or cond.startswith('W/'):
            return cond == etag  # strong comparison: a weak tag never matches
        return cond == last_modified

    def _send_body(self, f, length):
        rate = self._num('rate', 0)
        cut = self._num('disconnect_after')
        limit = length if cut is None else min(length, cut)
        chunk = CHUNK if rate <= 0 else max(1, min(16384, rate // 20))
        began = time.monotonic()
        sent = 0
        try:
            while sent < limit:
                data = f.read(min(chunk, limit - sent))
                if not data:
                    break  # file shrank under us; the client sees a short body
                self.wfile.write(data)
                sent += len(data)
                self.entry['bytes_sent'] = sent
                if rate > 0:
                    ahead = began + sent / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if sent < length:
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _hang(self):
        """Answer nothing; return when the client closes, the server stops or MAX_WAIT passed."""
        self.close_connection = True
        deadline = time.monotonic() + MAX_WAIT
        while not self.state.stopping.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            if readable:
                try:
                    if not self.connection.recv(4096, socket.MSG_PEEK):
                        return
                    self.connection.recv(4096)  # a pipelined request: drop it, keep hanging
                except OSError:
                    return


def main(argv):
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument('root')
    ap.add_argument('--port', type=int, default=0)
    args = ap.parse_args(argv)

    Handler.state = State(os.path.abspath(args.root))
    server = ThreadingHTTPServer(('127.0.0.1', args.port), Handler)
    server.daemon_threads = True
    print('PORT %d' % server.server_address[1], flush=True)

    def watch_stdin():
        # EOF on stdin means the harness is gone: stop serving.
        while sys.stdin.buffer.read(4096):
            pass
        Handler.state.stopping.set()
        server.shutdown()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    Handler.state.stopping.set()
    server.server_close()


if __name__ == '__main__':
    main(sys.argv[1:])
