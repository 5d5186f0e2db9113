#!/usr/bin/python3
"""A fault-injecting HTTP/1.1 reverse proxy for testing S3 clients.

It listens on 127.0.0.1, forwards every request byte for byte (less an
``Expect: 100-continue`` header, which it answers itself) to one upstream
host:port over a keep-alive connection of its own, and injects faults into
chosen requests:

  http500   answers 500 InternalError itself; the request is not forwarded
  http503   answers 503 ServiceUnavailable itself; not forwarded
  slowdown  answers 503 SlowDown itself; not forwarded
  reset     forwards; sends the response head and half the body, then resets
            the connection (RST: SO_LINGER 0)
  truncate  forwards; sends the head (with the true Content-Length) and half
            the body, then closes the connection normally (FIN)
  stall     forwards; holds the whole response for stall_seconds, then sends it
  drop      reads the request, does not forward it, resets the connection
            without any response
  badxml    forwards; an XML answer (any status: listings, errors, results)
            comes back malformed but well framed (Content-Length fits):
            cut short, a run of bytes garbled, or its last end tag dropped
  hugexml   forwards; an XML answer comes back as a listing that never ends:
            the real start of the document, then <Contents> entries, either
            with a Content-Length of huge_bytes (default 160 MiB) or, with
            huge_bytes 0, chunked without end; sent until the client hangs up
  badetag   forwards; the answer to a PUT or POST (PUT Object, UploadPart,
            CopyObject, CompleteMultipartUpload) names another ETag: the 32
            hex digits in its ETag header and in an <ETag> of its XML body
            are replaced by other ones (a "-N" suffix is kept)

(For a response without a body, reset and truncate send half the head.)
The last three only touch answers they apply to (XML bodies; 2xx answers to
PUT/POST with an ETag); others pass untouched and are counted in
stats()['not_applied'] - or, with defer_rewrites, the fault is kept and
applied to the next answer it fits (at most 4 pending per kind; counted in
stats()['deferred']), so that a workload with few XML answers still gets
its share.  stats()['applied'] counts the faults that took effect.

Which requests: a scripted queue is used first ("the next requests get
http503, pass, reset"), then a seeded random draw with probability ``rate``
of one of ``kinds``. Only requests whose method is in ``methods`` (all if
unset) and whose target matches ``path_regex`` (all if unset) are eligible;
others pass untouched and do not consume the script.

Use it in-process (the pytest fixture does)::

    p = FaultProxy('127.0.0.1', 4568).start()
    p.configure(rate=0.2, kinds=['http503', 'reset'], seed=1)
    p.script('http503', 'pass', 'truncate')
    ... point the client at p.endpoint ...
    p.stats()   # {'requests': .., 'faults': {'http503': ..}, ...}
    p.stop()

or as a program::

    faultproxy.py --upstream 127.0.0.1:4568 [--port 0] [--control-port 0]
        [--port-file F] [--rate R] [--kinds k,k] [--seed N] [--methods GET,PUT]
        [--path-regex RE] [--script k,k,pass,k] [--stall-seconds S]
        [--config-file JSON] [--max-lifetime 600]

which prints one JSON line {"port", "control_port", "endpoint", ...} (also
written to --port-file) and runs until SIGTERM/SIGINT or --max-lifetime.

Control endpoint (JSON over HTTP on control_port, 127.0.0.1):
    GET  /stats          counters
    GET  /log            the requests seen: method, target, fault, status
    GET  /config         the current configuration
    POST /config         {"rate":.., "kinds":[..], "seed":.., "methods":[..],
                          "path_regex":.., "stall_seconds":.., "huge_bytes":..,
                          "defer_rewrites":..,
                          "script":[..] (replaces the queue),
                          "append_script":[..]}
    POST /reset          zero the counters and the log
    POST /stop           stop the proxy

The proxy stops by itself after max_lifetime seconds (default 600).
"""

import argparse
import email.utils
import hashlib
import http.server
import json
import os
import random
import re
import select
import signal
import socket
import struct
import sys
import threading
import time

KINDS = ('http500', 'http503', 'slowdown', 'reset', 'truncate', 'stall', 'drop',
         'badxml', 'hugexml', 'badetag')
REWRITES = ('badxml', 'hugexml', 'badetag')
PASS = ('pass', 'none', 'ok')

_ERRORS = {
    'http500': (500, 'Internal Server Error', 'InternalError',
                'We encountered an internal error. Please try again.'),
    'http503': (503, 'Service Unavailable', 'ServiceUnavailable',
                'Reduce your request rate.'),
    'slowdown': (503, 'Slow Down', 'SlowDown', 'Please reduce your request rate.'),
}


class _Closed(Exception):
    """The peer closed the connection (or it broke)."""


class _Reader:
    """Buffered reads from a socket: heads, lines, exact byte counts."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        try:
            data = self.sock.recv(262144)
        except (OSError, ValueError) as e:
            raise _Closed(str(e))
        if not data:
            raise _Closed('eof')
        self.buf += data

    def head(self, limit=1 << 20):
        """Bytes up to and including the blank line; None on a clean EOF
        before any byte."""
        while True:
            i = self.buf.find(b'\r\n\r\n')
            if i >= 0:
                out = bytes(self.buf[:i + 4])
                del self.buf[:i + 4]
                return out
            if len(self.buf) > limit:
                raise _Closed('head too large')
            try:
                self._fill()
            except _Closed:
                if not self.buf:
                    return None
                raise

    def line(self):
        while True:
            i = self.buf.find(b'\r\n')
            if i >= 0:
                out = bytes(self.buf[:i + 2])
                del self.buf[:i + 2]
                return out
            if len(self.buf) > 65536:
                raise _Closed('line too long')
            self._fill()

    def exact(self, n, sink):
        """Passes exactly n bytes to sink, in pieces."""
        while n > 0:
            if not self.buf:
                self._fill()
            take = min(n, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take

    def until_eof(self, sink):
        while True:
            if self.buf:
                sink(bytes(self.buf))
                self.buf.clear()
            try:
                self._fill()
            except _Closed:
                return

    def pending(self):
        return bool(self.buf)


def _parse_head(head):
    """(first line parts, [(name_lower, value, raw_line)])"""
    lines = head[:-4].split(b'\r\n')
    first = lines[0].decode('latin-1').split(' ', 2)
    headers = []
    for raw in lines[1:]:
        name, _, value = raw.partition(b':')
        headers.append((name.strip().lower().decode('latin-1'),
                        value.strip().decode('latin-1'), raw))
    return first, headers


def _header(headers, name):
    for n, v, _ in headers:
        if n == name:
            return v
    return None


def _body_framing(headers):
    """('chunked', None) | ('length', n) | ('none', 0)"""
    te = _header(headers, 'transfer-encoding')
    if te and 'chunked' in te.lower():
        return 'chunked', None
    cl = _header(headers, 'content-length')
    if cl is not None:
        return 'length', int(cl)
    return 'none', 0


def _read_chunked(reader, sink):
    """Passes a chunked body through raw: sizes, data, trailers."""
    while True:
        size_line = reader.line()
        sink(size_line)
        size = int(size_line.split(b';', 1)[0].strip() or b'0', 16)
        if size == 0:
            while True:
                t = reader.line()
                sink(t)
                if t == b'\r\n':
                    return
        reader.exact(size + 2, sink)


def _read_body(reader, framing, sink, until_eof=False):
    kind, n = framing
    if kind == 'chunked':
        _read_chunked(reader, sink)
    elif kind == 'length':
        reader.exact(n, sink)
    elif until_eof:
        reader.until_eof(sink)


def _dechunk(raw):
    """The payload of a raw chunked body (as _read_chunked passed it)."""
    out, i = [], 0
    while True:
        j = raw.index(b'\r\n', i)
        size = int(raw[i:j].split(b';', 1)[0].strip() or b'0', 16)
        if size == 0:
            return b''.join(out)
        out.append(raw[j + 2:j + 2 + size])
        i = j + 2 + size + 2


def _is_xml(rheaders, body):
    ctype = (_header(rheaders, 'content-type') or '').lower()
    return bool(body) and ('xml' in ctype or body.lstrip()[:5] == b'<?xml')


def _with_body(rhead, body, keep):
    """The response head with its framing replaced by a Content-Length for
    body (and Connection: close unless keep)."""
    lines = rhead[:-4].split(b'\r\n')
    out = [lines[0]]
    for raw in lines[1:]:
        name = raw.partition(b':')[0].strip().lower()
        if name not in (b'content-length', b'transfer-encoding', b'connection'):
            out.append(raw)
    out.append(b'Content-Length: %d' % len(body))
    out.append(b'Connection: ' + (b'keep-alive' if keep else b'close'))
    return b'\r\n'.join(out) + b'\r\n\r\n'


def _other_hex(hex32):
    """Another 32 hex digits (same case) for hex32."""
    h = hashlib.md5(b'faultproxy' + hex32).hexdigest()
    return (h.upper() if hex32.isupper() else h).encode()


_HEX32 = re.compile(rb'[0-9a-fA-F]{32}')


def _garble(body, rng):
    """A malformed version of an XML document, and how it was made."""
    how = rng.choice(('cut', 'garble', 'unclosed'))
    n = len(body)
    if how == 'cut' or n < 64:
        return body[:max(1, int(n * rng.uniform(0.3, 0.9)))], 'cut'
    if how == 'garble':
        at = rng.randrange(n // 4, n * 3 // 4)
        junk = bytes(rng.choice(b'<>&\x00\xff"/=') for _ in range(rng.randrange(8, 33)))
        return body[:at] + junk + body[at + len(junk):], 'garble'
    end = body.rstrip()
    i = end.rfind(b'</')
    return (end[:i] if i > 0 else end[:n // 2]), 'unclosed'


def _reset(sock):
    """Closes with an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    def __init__(self, upstream_host, upstream_port, port=0, host='127.0.0.1',
                 control_port=0, rate=0.0, kinds=('http503',), seed=0,
                 methods=None, path_regex=None, stall_seconds=30.0,
                 max_lifetime=600.0, log_limit=100000, huge_bytes=160 << 20):
        self.upstream = (upstream_host, int(upstream_port))
        self.host = host
        self._want_port = port
        self._want_control_port = control_port
        self.max_lifetime = max_lifetime
        self.log_limit = log_limit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks = set()
        self._threads = []
        self._listener = None
        self._control = None
        self.port = None
        self.control_port = None
        self._rate = 0.0
        self._kinds = ['http503']
        self._seed = 0
        self._rng = random.Random(0)
        self._methods = None
        self._path_re = None
        self._stall = 30.0
        self._huge = 160 << 20
        self._defer = False
        self._pending = {}
        self._script = []
        self.configure(rate=rate, kinds=kinds, seed=seed, methods=methods,
                       path_regex=path_regex, stall_seconds=stall_seconds,
                       huge_bytes=huge_bytes)
        self.reset_stats()

    # ------------------------------------------------------------ control
    def configure(self, rate=None, kinds=None, seed=None, methods=None,
                  path_regex=None, stall_seconds=None, script=None,
                  append_script=None, huge_bytes=None, defer_rewrites=None, **unknown):
        """Changes the fault settings; None leaves a setting as it is.
        methods=[] or path_regex='' clears that filter."""
        if unknown:
            raise ValueError('unknown settings: %s' % ', '.join(sorted(unknown)))
        with self._lock:
            if rate is not None:
                rate = float(rate)
                if not 0.0 <= rate <= 1.0:
                    raise ValueError('rate must be within 0..1')
                self._rate = rate
            if kinds is not None:
                kinds = [kinds] if isinstance(kinds, str) else list(kinds)
                for k in kinds:
                    if k not in KINDS:
                        raise ValueError('unknown fault kind %r' % k)
                if not kinds:
                    raise ValueError('kinds must not be empty')
                self._kinds = kinds
            if seed is not None:
                self._seed = seed
                self._rng = random.Random(seed)
            if methods is not None:
                methods = [methods] if isinstance(methods, str) else methods
                self._methods = {m.upper() for m in methods} or None
            if path_regex is not None:
                self._path_re = re.compile(path_regex) if path_regex else None
            if stall_seconds is not None:
                self._stall = float(stall_seconds)
            if defer_rewrites is not None:
                self._defer = bool(defer_rewrites)
                if not self._defer:
                    self._pending = {}
            if huge_bytes is not None:
                if int(huge_bytes) < 0:
                    raise ValueError('huge_bytes must be >= 0 (0: without end)')
                self._huge = int(huge_bytes)
            if script is not None:
                self._script = self._check_script(script)
            if append_script is not None:
                self._script += self._check_script(append_script)
        return self

    @staticmethod
    def _check_script(items):
        items = [items] if isinstance(items, str) else list(items)
        for k in items:
            if k not in KINDS and k not in PASS:
                raise ValueError('unknown fault kind %r' % k)
        return items

    def script(self, *kinds):
        """Appends to the queue of faults for the next eligible requests
        ('pass' lets one through)."""
        return self.configure(append_script=kinds)

    def clear(self):
        """No more faults: rate 0, empty script, no filters."""
        return self.configure(rate=0.0, script=[], methods=[], path_regex='',
                              defer_rewrites=False)

    def config(self):
        with self._lock:
            return {'upstream': '%s:%d' % self.upstream, 'rate': self._rate,
                    'kinds': list(self._kinds), 'seed': self._seed,
                    'methods': sorted(self._methods) if self._methods else None,
                    'path_regex': self._path_re.pattern if self._path_re else None,
                    'stall_seconds': self._stall, 'huge_bytes': self._huge,
                    'defer_rewrites': self._defer, 'pending': dict(self._pending),
                    'script': list(self._script)}

    def stats(self):
        with self._lock:
            s = json.loads(json.dumps(self._stats))
            s['script_left'] = len(self._script)
            return s

    def log(self):
        with self._lock:
            return [dict(e) for e in self._log]

    def reset_stats(self):
        with self._lock:
            self._stats = {'requests': 0, 'connections': 0, 'faults': {},
                           'methods': {}, 'statuses': {}, 'upstream_errors': 0,
                           'not_applied': {}, 'garbled': {}, 'huge_bytes_sent': 0,
                           'applied': {}, 'deferred': {}}
            self._log = []

    @property
    def endpoint(self):
        return 'http://%s:%d' % (self.host, self.port)

    @property
    def control_endpoint(self):
        return 'http://%s:%d' % (self.host, self.control_port) if self.control_port else None

    # ------------------------------------------------------------ lifecycle
    def start(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self._want_port))
        ls.listen(128)
        ls.settimeout(0.5)
        self._listener = ls
        self.port = ls.getsockname()[1]
        if self._want_control_port is not None:
            self._control = _ControlServer((self.host, self._want_control_port), self)
            self.control_port = self._control.server_address[1]
            self._spawn(self._control.serve_forever, 0.2)
        self._started = time.monotonic()
        self._spawn(self._accept_loop)
        if self.max_lifetime:
            self._spawn(self._lifetime_watch)
        return self

    def stop(self):
        if self._stop.is_set():
            return
        self._stop.set()
        if self._control:
            self._control.shutdown()
            self._control.server_close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            _close(s)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)

    def wait(self, timeout=None):
        return self._stop.wait(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _lifetime_watch(self):
        if not self._stop.wait(self.max_lifetime):
            print('faultproxy: max lifetime %gs reached, stopping' % self.max_lifetime,
                  file=sys.stderr)
            threading.Thread(target=self.stop, daemon=True).start()

    def _accept_loop(self):
        ls = self._listener
        try:
            while not self._stop.is_set():
                try:
                    cs, _ = ls.accept()
                except socket.timeout:
                    continue
                except OSError:
                    break
                with self._lock:
                    self._stats['connections'] += 1
                    self._socks.add(cs)
                t = threading.Thread(target=self._serve, args=(cs,), daemon=True)
                t.start()
        finally:
            ls.close()

    # ------------------------------------------------------------ decisions
    def _decide(self, method, target):
        with self._lock:
            self._stats['requests'] += 1
            self._stats['methods'][method] = self._stats['methods'].get(method, 0) + 1
            n = self._stats['requests']
            kind = None
            eligible = ((self._methods is None or method in self._methods) and
                        (self._path_re is None or self._path_re.search(target)))
            if eligible:
                if self._script:
                    k = self._script.pop(0)
                    kind = None if k in PASS else k
                elif self._rate > 0 and self._rng.random() < self._rate:
                    kind = self._rng.choice(self._kinds)
            if kind:
                self._stats['faults'][kind] = self._stats['faults'].get(kind, 0) + 1
            entry = {'n': n, 'method': method, 'target': target, 'fault': kind,
                     'status': None}
            if len(self._log) < self.log_limit:
                self._log.append(entry)
            return kind, entry, self._stall

    def _count(self, table, key, n=1):
        with self._lock:
            if table == 'huge_bytes_sent':
                self._stats[table] += n
            else:
                self._stats[table][key] = self._stats[table].get(key, 0) + n

    def _record(self, entry, status):
        with self._lock:
            entry['status'] = status
            if status is not None:
                k = str(status)
                self._stats['statuses'][k] = self._stats['statuses'].get(k, 0) + 1

    # ------------------------------------------------------------ serving
    def _serve(self, cs):
        cs.settimeout(600)
        client = _Reader(cs)
        up_holder = [None]  # (socket, _Reader) of the upstream connection
        try:
            while not self._stop.is_set():
                head = client.head()
                if head is None:
                    return
                if not self._one(cs, client, head, up_holder):
                    return
        except (_Closed, OSError, ValueError, IndexError):
            return
        finally:
            up = up_holder[0]
            with self._lock:
                self._socks.discard(cs)
                if up is not None:
                    self._socks.discard(up[0])
            _close(cs)
            if up is not None:
                _close(up[0])

    def _one(self, cs, client, head, up_holder):
        """Handles one request; returns whether to keep the client connection."""
        (method, target, version), headers = _parse_head(head)
        method = method.upper()
        kind, entry, stall = self._decide(method, target)
        conn_hdr = (_header(headers, 'connection') or '').lower()
        client_keep = ('close' not in conn_hdr and
                       (version != 'HTTP/1.0' or 'keep-alive' in conn_hdr))
        expect = (_header(headers, 'expect') or '').lower() == '100-continue'
        framing = _body_framing(headers)
        has_body = framing[0] == 'chunked' or framing[1] > 0

        if kind in _ERRORS and expect and has_body:
            # Refuse before the body is sent, as a server may; the body is
            # never read, so the connection cannot be reused.
            self._send_error(cs, kind, method, keep=False)
            self._record(entry, _ERRORS[kind][0])
            self._count('applied', kind)
            return False
        if expect and has_body:
            cs.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
        body = []
        _read_body(client, framing, body.append)
        body = b''.join(body)

        if kind in _ERRORS:
            self._send_error(cs, kind, method, keep=client_keep)
            self._record(entry, _ERRORS[kind][0])
            self._count('applied', kind)
            return client_keep
        if kind == 'drop':
            self._record(entry, None)
            self._count('applied', kind)
            _reset(cs)
            return False

        out_head = b'\r\n'.join(
            [head.split(b'\r\n', 1)[0]] +
            [raw for name, _, raw in headers if name != 'expect']) + b'\r\n\r\n'
        try:
            up, rhead, rheaders, status = self._forward(up_holder, out_head + body, method)
        except (_Closed, OSError) as e:
            with self._lock:
                self._stats['upstream_errors'] += 1
            self._send_raw_error(cs, 502, 'Bad Gateway', 'upstream: %s' % e)
            self._record(entry, 502)
            return False
        sock, reader = up
        rframing = _body_framing(rheaders)
        no_body = method == 'HEAD' or status in (204, 304) or 100 <= status < 200
        rconn = (_header(rheaders, 'connection') or '').lower()
        close_delimited = not no_body and rframing[0] == 'none'
        up_keep = 'close' not in rconn and not close_delimited
        keep = client_keep and up_keep

        if kind is None and not no_body:
            kind = self._take_pending(method, status, rheaders)
            if kind:
                entry['fault'] = kind + ' (deferred)'
        if kind is None:
            cs.sendall(rhead)
            if not no_body:
                _read_body(reader, rframing, cs.sendall, until_eof=True)
            self._record(entry, status)
        else:
            parts = []
            if not no_body:
                _read_body(reader, rframing, parts.append, until_eof=True)
            rbody = b''.join(parts)
            self._record(entry, status)
            if kind == 'stall':
                self._count('applied', kind)
                if self._stop.wait(stall):
                    return False
                cs.sendall(rhead + rbody)
            elif kind in REWRITES:
                if rframing[0] == 'chunked' and rbody:
                    rbody = _dechunk(rbody)
                    rhead = _with_body(rhead, rbody, keep)
                applied = self._rewrite(cs, kind, method, status, rhead, rheaders, rbody,
                                        keep, entry)
                if not applied:
                    self._not_applied(kind)
                    cs.sendall(rhead + rbody)
                else:
                    self._count('applied', kind)
                    if kind == 'hugexml':
                        keep = False
            else:  # reset / truncate
                self._count('applied', kind)
                if rbody:
                    data = rhead + rbody[:len(rbody) // 2]
                else:
                    data = rhead[:len(rhead) // 2]
                cs.sendall(data)
                time.sleep(0.05)  # let the client take in what was sent
                if kind == 'reset':
                    _reset(cs)
                else:
                    _close(cs)
                keep = False
        if not up_keep:
            self._discard(sock)
            up_holder[0] = None
        return keep

    def _not_applied(self, kind):
        with self._lock:
            if self._defer and self._pending.get(kind, 0) < 4:
                self._pending[kind] = self._pending.get(kind, 0) + 1
                table = 'deferred'
            else:
                table = 'not_applied'
            self._stats[table][kind] = self._stats[table].get(kind, 0) + 1

    def _take_pending(self, method, status, rheaders):
        """A deferred rewrite that fits this answer (judged by its head), or
        None."""
        xml = 'xml' in (_header(rheaders, 'content-type') or '').lower()
        with self._lock:
            for kind in sorted(self._pending):
                fits = (method in ('PUT', 'POST') and 200 <= status < 300
                        if kind == 'badetag' else xml)
                if fits:
                    self._pending[kind] -= 1
                    if not self._pending[kind]:
                        del self._pending[kind]
                    return kind
        return None

    def _rewrite(self, cs, kind, method, status, rhead, rheaders, rbody, keep, entry):
        """Sends a rewritten answer; False when the fault does not apply."""
        if kind == 'badetag':
            if method not in ('PUT', 'POST') or not 200 <= status < 300:
                return False
            lines = rhead[:-4].split(b'\r\n')
            hit = False
            for i, raw in enumerate(lines[1:], 1):
                if raw.partition(b':')[0].strip().lower() == b'etag' and _HEX32.search(raw):
                    lines[i] = _HEX32.sub(lambda m: _other_hex(m.group(0)), raw, count=1)
                    hit = True
            body = rbody
            if _is_xml(rheaders, rbody):
                body, n = re.subn(rb'(<ETag>[^<]*?)([0-9a-fA-F]{32})',
                                  lambda m: m.group(1) + _other_hex(m.group(2)),
                                  rbody, count=1)
                hit = hit or n > 0
            if not hit:
                return False
            head = b'\r\n'.join(lines) + b'\r\n\r\n'
            if body is not rbody:
                head = _with_body(head, body, keep)
            cs.sendall(head + body)
            return True
        if not _is_xml(rheaders, rbody):
            return False
        if kind == 'badxml':
            with self._lock:
                body, how = _garble(rbody, self._rng)
            self._count('garbled', how)
            cs.sendall(_with_body(rhead, body, keep) + body)
            return True
        # hugexml: the real start of the document, then entries without end
        start = rbody.find(b'>', rbody.find(b'<', rbody.find(b'?>') + 2 if b'?>' in rbody else 0))
        prefix = rbody[:start + 1] if start > 0 else b'<ListBucketResult>'
        entry_xml = (b'<Contents><Key>hugexml/' + b'k' * 200 + b'</Key><Size>1</Size>'
                     b'<ETag>&quot;' + b'0' * 32 + b'&quot;</ETag>'
                     b'<LastModified>2020-01-01T00:00:00.000Z</LastModified></Contents>')
        block = entry_xml * max(1, (1 << 20) // len(entry_xml))
        limit = self._huge
        lines = rhead[:-4].split(b'\r\n')
        head = [lines[0]] + [raw for raw in lines[1:]
                             if raw.partition(b':')[0].strip().lower() not in
                             (b'content-length', b'transfer-encoding', b'connection')]
        head.append(b'Content-Length: %d' % limit if limit else b'Transfer-Encoding: chunked')
        head.append(b'Connection: close')
        sent = 0
        try:
            cs.sendall(b'\r\n'.join(head) + b'\r\n\r\n')
            data = prefix
            while not self._stop.is_set():
                if limit:
                    data = data[:limit - sent]
                    if not data:
                        break
                    cs.sendall(data)
                else:
                    cs.sendall(b'%x\r\n' % len(data) + data + b'\r\n')
                sent += len(data)
                data = block
        except OSError:
            pass   # the client hung up: what it is meant to do
        finally:
            self._count('huge_bytes_sent', None, sent)
            _close(cs)
        return True

    def _discard(self, sock):
        with self._lock:
            self._socks.discard(sock)
        _close(sock)

    def _connect(self):
        s = socket.create_connection(self.upstream, timeout=30)
        s.settimeout(600)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._socks.add(s)
        return (s, _Reader(s))

    def _forward(self, up_holder, request, method):
        """Sends the request upstream (reconnecting once if a reused connection
        turns out to be dead) and reads the response head, skipping 1xx."""
        for attempt in (0, 1):
            up = up_holder[0]
            reused = up is not None
            if reused:
                r, _, _ = select.select([up[0]], [], [], 0)
                if r or up[1].pending():  # EOF or junk on an idle connection
                    self._discard(up[0])
                    up = None
            if up is None:
                up = self._connect()
                reused = False
            up_holder[0] = up
            try:
                up[0].sendall(request)
                while True:
                    rhead = up[1].head()
                    if rhead is None:
                        raise _Closed('upstream closed')
                    (_, code, *_), rheaders = _parse_head(rhead)
                    status = int(code)
                    if 100 <= status < 200 and status != 101:
                        continue
                    return up, rhead, rheaders, status
            except (_Closed, OSError):
                self._discard(up[0])
                up_holder[0] = None
                if not reused or attempt == 1:
                    raise
        raise _Closed('unreachable')

    def _send_error(self, cs, kind, method, keep):
        status, reason, code, message = _ERRORS[kind]
        with self._lock:
            rid = 'FAULTPROXY%08d' % self._stats['requests']
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code>'
                '<Message>%s</Message><RequestId>%s</RequestId></Error>'
                % (code, message, rid)).encode()
        self._send_response(cs, status, reason, body, method, keep,
                            [('Content-Type', 'application/xml'),
                             ('x-amz-request-id', rid)])

    def _send_raw_error(self, cs, status, reason, text):
        try:
            self._send_response(cs, status, reason, text.encode(), 'GET', False,
                                [('Content-Type', 'text/plain')])
        except OSError:
            pass

    @staticmethod
    def _send_response(cs, status, reason, body, method, keep, extra):
        if method == 'HEAD':
            body = b''
        lines = ['HTTP/1.1 %d %s' % (status, reason),
                 'Date: %s' % email.utils.formatdate(usegmt=True),
                 'Server: faultproxy',
                 'Content-Length: %d' % len(body),
                 'Connection: %s' % ('keep-alive' if keep else 'close')]
        lines += ['%s: %s' % h for h in extra]
        cs.sendall(('\r\n'.join(lines) + '\r\n\r\n').encode() + body)


class _ControlServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, proxy):
        self.proxy = proxy
        super().__init__(addr, _ControlHandler)


class _ControlHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def _reply(self, code, obj):
        data = (json.dumps(obj, indent=1) + '\n').encode()
        self.send_response(code)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        p = self.server.proxy
        routes = {'/stats': p.stats, '/log': p.log, '/config': p.config}
        fn = routes.get(self.path.split('?')[0])
        if fn is None:
            return self._reply(404, {'error': 'no such path'})
        self._reply(200, fn())

    def do_POST(self):
        p = self.server.proxy
        n = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(n) if n else b''
        path = self.path.split('?')[0]
        try:
            if path == '/config':
                p.configure(**(json.loads(raw or b'{}')))
                return self._reply(200, p.config())
            if path == '/reset':
                p.reset_stats()
                return self._reply(200, p.stats())
            if path == '/stop':
                self._reply(200, {'stopping': True})
                threading.Thread(target=p.stop, daemon=True).start()
                return None
        except (ValueError, TypeError) as e:
            return self._reply(400, {'error': str(e)})
        return self._reply(404, {'error': 'no such path'})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--upstream', required=True, help='HOST:PORT')
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=0)
    ap.add_argument('--control-port', type=int, default=0)
    ap.add_argument('--port-file')
    ap.add_argument('--rate', type=float, default=0.0)
    ap.add_argument('--kinds', default='http503')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--methods')
    ap.add_argument('--path-regex')
    ap.add_argument('--script', help='comma-separated kinds (pass = no fault)')
    ap.add_argument('--stall-seconds', type=float, default=30.0)
    ap.add_argument('--huge-bytes', type=int, default=160 << 20,
                    help='hugexml body size (0: chunked without end)')
    ap.add_argument('--config-file', help='JSON object of /config settings')
    ap.add_argument('--max-lifetime', type=float, default=600.0)
    a = ap.parse_args(argv)
    uh, _, up = a.upstream.rpartition(':')
    p = FaultProxy(uh or '127.0.0.1', int(up), port=a.port, host=a.host,
                   control_port=a.control_port, rate=a.rate,
                   kinds=a.kinds.split(','), seed=a.seed,
                   methods=a.methods.split(',') if a.methods else None,
                   path_regex=a.path_regex, stall_seconds=a.stall_seconds,
                   max_lifetime=a.max_lifetime, huge_bytes=a.huge_bytes)
    if a.script:
        p.script(*a.script.split(','))
    if a.config_file:
        with open(a.config_file) as f:
            p.configure(**json.load(f))
    p.start()
    info = {'port': p.port, 'control_port': p.control_port, 'endpoint': p.endpoint,
            'control_endpoint': p.control_endpoint, 'upstream': a.upstream}
    line = json.dumps(info)
    if a.port_file:
        with open(a.port_file + '.tmp', 'w') as f:
            f.write(line + '\n')
        os.replace(a.port_file + '.tmp', a.port_file)
    print(line, flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=p.stop, daemon=True).start())
    while not p.wait(1.0):
        pass
    print('faultproxy: stopped; ' + json.dumps(p.stats()), file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
