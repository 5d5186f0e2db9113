"""Helpers of the write-path tests: snapshots of trees with their attributes,
comparison of a mount against a local reference directory, and what aws-cli
sees of a bucket (keys, head-object metadata, object sha256).

    snap = snapshot(root)      # {rel: Entry(type, mode, uid, gid, size, mtime_ns, data, xattrs)}
    problems = compare(got, want, exact_mtime=..., slack=2)
    assert not problems, '\\n'.join(problems)
"""

import errno
import hashlib
import json
import os
import stat
import subprocess
import tempfile
from collections import namedtuple

Entry = namedtuple('Entry', 'type mode uid gid size mtime_ns data xattrs ino')


def sha256_file(path):
    h = hashlib.sha256()
    try:
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
    except OSError as e:
        raise OSError(e.errno, '%s: %s' % (path, e.strerror)) from e
    return h.hexdigest()


def user_xattrs(path):
    """{name: value} of the user.* attributes (not following a symlink)."""
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return out
        raise
    for n in names:
        if n.startswith('user.'):
            out[n] = os.getxattr(path, n, follow_symlinks=False)
    return out


def snapshot(root, xattrs=True):
    """Every entry below root (root itself excluded)."""
    out = {}

    def fail(e):
        raise e
    os.stat(root)
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                kind, data, size = 'dir', None, 0
            elif stat.S_ISLNK(st.st_mode):
                kind, data, size = 'link', os.readlink(p), st.st_size
            elif stat.S_ISREG(st.st_mode):
                kind, data, size = 'file', sha256_file(p), st.st_size
            else:
                kind, data, size = 'other', None, st.st_size
            xa = user_xattrs(p) if xattrs and kind != 'link' else {}
            out[rel] = Entry(kind, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns,
                             data, xa, st.st_ino)
    return out


def tree(root):
    """{rel: (type, size, sha256 or target)} as mount.tree_of, but a walk
    error (a dead mount) raises instead of giving an empty tree."""
    return {rel: (e.type, 0 if e.type != 'file' else e.size,
                  e.data) for rel, e in snapshot(root, xattrs=False).items()}


def compare(got, want, exact_mtime=None, slack=2, mtime_dirs=False, xattrs=True,
            owner=True, label=('mount', 'reference')):
    """Differences between two snapshots, as readable lines (empty: equal).

    exact_mtime: paths (of `want`) whose mtime must agree to the second
    (set by utime); None: all of them.  Other files and links may differ by
    `slack` seconds (mount and reference are written a moment apart).
    Directory mtimes are compared only with mtime_dirs (S3 has no notion of a
    directory's mtime changing with its entries)."""
    g, w = label
    out = []
    for rel in sorted(set(got) | set(want)):
        a, b = got.get(rel), want.get(rel)
        if a is None:
            out.append('%s: missing in %s' % (rel, g))
            continue
        if b is None:
            out.append('%s: only in %s (%s)' % (rel, g, a.type))
            continue
        if a.type != b.type:
            out.append('%s: type %s in %s, %s in %s' % (rel, a.type, g, b.type, w))
            continue
        if a.mode != b.mode and a.type != 'link':
            out.append('%s: mode %o in %s, %o in %s' % (rel, a.mode, g, b.mode, w))
        if a.type == 'link' and not stat.S_ISLNK(a.mode):
            out.append('%s: mode %o is not a link' % (rel, a.mode))
        if owner and (a.uid, a.gid) != (b.uid, b.gid):
            out.append('%s: owner %d:%d in %s, %d:%d in %s' % (rel, a.uid, a.gid, g,
                                                               b.uid, b.gid, w))
        if a.type == 'file' and a.size != b.size:
            out.append('%s: size %d in %s, %d in %s' % (rel, a.size, g, b.size, w))
        if a.data != b.data:
            out.append('%s: %s %r in %s, %r in %s' % (
                rel, 'content sha256' if a.type == 'file' else 'target', a.data, g, b.data, w))
        if xattrs and a.type != 'link' and a.xattrs != b.xattrs:
            out.append('%s: xattrs %r in %s, %r in %s' % (rel, a.xattrs, g, b.xattrs, w))
        if a.type == 'dir' and not mtime_dirs and not (exact_mtime and rel in exact_mtime):
            continue
        sa, sb = a.mtime_ns // 10**9, b.mtime_ns // 10**9
        if exact_mtime is None or rel in exact_mtime:
            if sa != sb:
                out.append('%s: mtime %d in %s, %d in %s (set by utime)' % (rel, sa, g, sb, w))
        elif abs(a.mtime_ns - b.mtime_ns) > slack * 10**9:
            out.append('%s: mtime %.3f in %s, %.3f in %s' % (rel, a.mtime_ns / 1e9, g,
                                                             b.mtime_ns / 1e9, w))
    return out


# ------------------------------------------------------------ the bucket, by aws-cli

def list_objects(server, bucket, prefix=''):
    """{key: size} through `aws s3api list-objects-v2` (all pages)."""
    args = ['s3api', 'list-objects-v2', '--bucket', bucket, '--output', 'json']
    if prefix:
        args += ['--prefix', prefix]
    p = server.aws(*args)
    data = json.loads(p.stdout or '{}') if p.stdout.strip() else {}
    return {o['Key']: o['Size'] for o in data.get('Contents', [])}


def head_object(server, bucket, key, check=True):
    """aws s3api head-object as a dict (None when absent and not check)."""
    p = server.aws('s3api', 'head-object', '--bucket', bucket, '--key', key,
                   '--output', 'json', check=check)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)


def object_sha256(server, bucket, key):
    fd, tmp = tempfile.mkstemp(prefix='bucketfs-get-')
    os.close(fd)
    try:
        server.aws('s3', 'cp', '--quiet', 's3://%s/%s' % (bucket, key), tmp)
        return sha256_file(tmp), os.path.getsize(tmp)
    finally:
        os.unlink(tmp)


def object_bytes(server, bucket, key):
    status, _, body = server.request('GET', '/%s/%s' % (bucket, key))
    assert status == 200, 'GET %s: HTTP %d %s' % (key, status, body[:300])
    return body


def s3fs_xattr_decode(value):
    """s3fs's x-amz-meta-xattr: URL-encoded JSON {name: base64(value)}."""
    import base64
    import urllib.parse
    obj = json.loads(urllib.parse.unquote(value))
    return {k: base64.b64decode(v) if v else b'' for k, v in obj.items()}


def check_bucket_against(server, bucket, snap, exact_mtime=None, slack=2, contents=True,
                         xattrs=True):
    """What aws-cli sees of the bucket against a snapshot of the reference
    tree: the keys (a file or link is `path`, a directory `path/`), sizes,
    x-amz-meta-mode/uid/gid/mtime as s3fs writes them, link targets, contents
    (sha256 of the object), user.* xattrs.  Returns readable problems."""
    out = []
    keys = list_objects(server, bucket)
    want_keys = {}
    for rel, e in snap.items():
        if e.type == 'dir':
            want_keys[rel + '/'] = 0
        else:
            want_keys[rel] = e.size
    for k in sorted(set(keys) | set(want_keys)):
        if k not in keys:
            # a directory may be implied by its contents only
            if k.endswith('/') and any(x.startswith(k) for x in keys):
                continue
            out.append('bucket: key %r missing' % k)
        elif k not in want_keys:
            out.append('bucket: extra key %r (size %d)' % (k, keys[k]))
        elif keys[k] != want_keys[k]:
            out.append('bucket: key %r size %d, want %d' % (k, keys[k], want_keys[k]))
    for rel, e in sorted(snap.items()):
        key = rel + '/' if e.type == 'dir' else rel
        if key not in keys:
            continue
        h = head_object(server, bucket, key)
        md = {k.lower(): v for k, v in h.get('Metadata', {}).items()}
        try:
            mode = int(md['mode'])
        except (KeyError, ValueError):
            out.append('bucket: %s: x-amz-meta-mode %r' % (key, md.get('mode')))
            mode = None
        if mode is not None and mode != e.mode:
            out.append('bucket: %s: x-amz-meta-mode %o, want %o' % (key, mode, e.mode))
        for name, want in (('uid', e.uid), ('gid', e.gid)):
            if md.get(name) != str(want):
                out.append('bucket: %s: x-amz-meta-%s %r, want %d' % (key, name, md.get(name),
                                                                     want))
        try:
            mt = float(md['mtime'])
        except (KeyError, ValueError):
            out.append('bucket: %s: x-amz-meta-mtime %r' % (key, md.get('mtime')))
            mt = None
        if mt is not None and (e.type != 'dir' or (exact_mtime and rel in exact_mtime)):
            if exact_mtime is None or rel in exact_mtime:
                if int(mt) != e.mtime_ns // 10**9:
                    out.append('bucket: %s: x-amz-meta-mtime %s, want %d' % (
                        key, md['mtime'], e.mtime_ns // 10**9))
            elif abs(mt - e.mtime_ns / 1e9) > slack:
                out.append('bucket: %s: x-amz-meta-mtime %s, want ~%.3f' % (
                    key, md['mtime'], e.mtime_ns / 1e9))
        if xattrs and e.type != 'link':
            raw = md.get('xattr')
            try:
                got = s3fs_xattr_decode(raw) if raw else {}
            except Exception as ex:  # noqa: BLE001 - reported as a problem
                got = 'undecodable %r: %s' % (raw, ex)
            if got != e.xattrs:
                out.append('bucket: %s: x-amz-meta-xattr %r -> %r, want %r' % (
                    key, raw, got, e.xattrs))
        if h.get('ContentLength') != (0 if e.type == 'dir' else e.size):
            out.append('bucket: %s: ContentLength %r, want %d' % (key, h.get('ContentLength'),
                                                                 e.size))
        if e.type == 'link':
            body = object_bytes(server, bucket, key)
            if body != os.fsencode(e.data):
                out.append('bucket: %s: link object holds %r, want %r' % (key, body, e.data))
        elif e.type == 'file' and contents:
            body = object_bytes(server, bucket, key)
            if hashlib.sha256(body).hexdigest() != e.data:
                out.append('bucket: %s: content differs (%d bytes)' % (key, len(body)))
    return out


def errno_of(fn, *args, **kw):
    """(result, 0) or (None, errno)."""
    try:
        return fn(*args, **kw), 0
    except OSError as e:
        return None, e.errno


def fusermount_u(mp, lazy=False):
    subprocess.run(['fusermount3', '-u'] + (['-z'] if lazy else []) + [mp],
                   capture_output=True)
