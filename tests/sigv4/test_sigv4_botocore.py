#!/usr/bin/python3
"""Differential test: s3_sigv4_sign() (through sigv4_tool) against botocore.

Generates random S3 requests -- methods, keys with spaces, UTF-8, '+ % ~ = & ?'
and slashes, query parameters with odd names and empty values, extra headers
with stray whitespace and repeated names, with and without a session token,
path-style and virtual-host hosts with and without ports -- signs each with
botocore's S3SigV4Auth at a fixed timestamp and with the C signer, and
requires the same canonical request, string to sign, signature and
Authorization value every time.

usage: test_sigv4_botocore.py SIGV4_TOOL [--count N] [--seed S]
The seed is printed; SIGV4_SEED in the environment also sets it.
"""

import argparse
import datetime
import hashlib
import os
import random
import subprocess
import sys
import types
from urllib.parse import urlsplit

import botocore.auth
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode


class FrozenDatetime(datetime.datetime):
    """botocore reads the clock with datetime.datetime.utcnow(); pin it."""

    frozen = None

    @classmethod
    def utcnow(cls):
        return cls.frozen


# botocore.auth does `import datetime` and calls datetime.datetime.utcnow().
botocore.auth.datetime = types.SimpleNamespace(datetime=FrozenDatetime)


class RecordingS3SigV4Auth(S3SigV4Auth):
    """S3SigV4Auth unchanged, but keeping what it built for comparison."""

    def canonical_request(self, request):
        self.last_canonical_request = super().canonical_request(request)
        return self.last_canonical_request

    def string_to_sign(self, request, canonical_request):
        self.last_string_to_sign = super().string_to_sign(request, canonical_request)
        return self.last_string_to_sign


# Characters that make encoding and sorting interesting.  No NUL: keys and
# parameters are C strings.
KEY_ALPHABET = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list(" +%~=&?/#;:,@!$'()*[]-_.\"<>\\^`{}|")
    + ["\t", "\n", "\x7f", "\x01"]
    + ["é", "ü", "ß", "日", "本", "語", "ሴ", "😀", "\u00a0", "\u2028"]
    + ["%2F", "%20", "..", "//", "a b", "+"]
)
QUERY_NAMES = [
    "prefix", "delimiter", "list-type", "continuation-token", "max-keys",
    "uploads", "uploadId", "partNumber", "versionId", "lifecycle", "acl",
    "encoding-type", "start-after", "fetch-owner", "x-id", "delete", "tagging",
    "Prefix", "X-Amz-Foo",
]
HEADER_NAMES = [
    "Content-Type", "content-type", "Range", "X-Amz-Storage-Class",
    "Cache-Control", "Content-Disposition", "If-Match", "If-None-Match",
    "Content-MD5", "x-amz-copy-source", "X-Amz-Metadata-Directive",
    "x-amz-server-side-encryption", "Content-Encoding", "x-amz-acl",
]
HOSTS = [
    "s3.amazonaws.com", "s3.us-west-2.amazonaws.com", "s3.eu-central-1.amazonaws.com",
    "localhost", "minio.internal.example", "127.0.0.1", "[::1]",
]
REGIONS = ["us-east-1", "us-west-2", "eu-central-1", "ap-northeast-3", "auto", "garage"]
METHODS = ["GET", "PUT", "HEAD", "DELETE", "POST"]
DEFAULT_PORT = {"http": 80, "https": 443}


def rand_text(rng, alphabet, lo, hi):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def rand_key(rng):
    return rand_text(rng, KEY_ALPHABET, 0, 30)


def rand_bucket(rng):
    return rand_text(rng, "abcdefghijklmnopqrstuvwxyz0123456789-", 3, 20)


def rand_header_value(rng):
    """Visible ASCII with blanks at the ends and runs of them inside."""
    words = [rand_text(rng, [chr(c) for c in range(0x21, 0x7F)], 0, 12)
             for _ in range(rng.randint(0, 4))]
    inner = "".join(rand_text(rng, " \t", 1, 3) + w for w in words)
    return rand_text(rng, " \t", 0, 3) + inner.lstrip(" \t") + rand_text(rng, " \t", 0, 3)


def rand_header_name(rng):
    if rng.random() < 0.4:
        meta = rand_text(rng, "abcdefghijklmnopqrstuvwxyz0123456789-_.", 1, 12)
        name = "x-amz-meta-" + meta
    else:
        name = rng.choice(HEADER_NAMES)
    if rng.random() < 0.3:
        name = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)
    return name


def rand_token(rng):
    return rand_text(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
                     20, 300)


def gen_case(rng):
    scheme = rng.choice(["http", "https"])
    bucket = rand_bucket(rng)
    base = rng.choice(HOSTS)
    path_style = rng.random() < 0.5 or base[0] in "[1" or base == "localhost"
    hostname = base if path_style else f"{bucket}.{base}"
    port = rng.choice([None, None, DEFAULT_PORT[scheme], rng.randint(1, 65535)])
    netloc = hostname if port is None else f"{hostname}:{port}"
    # What the caller sends: the port only when it is not the scheme's own.
    host = hostname if port in (None, DEFAULT_PORT[scheme]) else netloc

    key = rand_key(rng)
    if path_style:
        path = f"/{bucket}/{key}" if key or rng.random() < 0.5 else f"/{bucket}"
    else:
        path = f"/{key}"

    query = []
    for _ in range(rng.choice([0, 0, 1, 2, 3, 5])):
        name = rng.choice(QUERY_NAMES) if rng.random() < 0.6 else rand_text(
            rng, KEY_ALPHABET, 1, 8)
        value = rng.choice([None, "", rand_key(rng), str(rng.randint(0, 1000))])
        query.append((name, value))
    if query and rng.random() < 0.2:
        query.append((query[0][0], rand_key(rng)))  # a repeated name

    headers = []
    for _ in range(rng.choice([0, 1, 2, 4, 6])):
        headers.append((rand_header_name(rng), rand_header_value(rng)))
    if headers and rng.random() < 0.2:
        name = headers[0][0]
        headers.append((name.swapcase(), rand_header_value(rng)))

    when = datetime.datetime(2000, 1, 1) + datetime.timedelta(
        seconds=rng.randint(0, 100 * 365 * 86400))
    body = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 0, 1, 21, 300])))
    return {
        "method": rng.choice(METHODS),
        "url": f"{scheme}://{netloc}{percent_encode(path, safe='/~')}",
        "host": host,
        "path": path,
        "query": query,
        "headers": headers,
        "body": body,
        "unsigned": rng.random() < 0.2,
        "when": when,
        "region": rng.choice(REGIONS),
        "access_key": rand_text(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, 20),
        "secret_key": rand_text(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                "0123456789+/", 30, 40),
        "token": rng.choice([None, "", rand_token(rng), rand_token(rng)]),
    }


def botocore_sign(case):
    req = AWSRequest(method=case["method"], url=case["url"], data=case["body"],
                     params=[(n, "" if v is None else v) for n, v in case["query"]])
    for name, value in case["headers"]:
        req.headers[name] = value  # HTTPHeaders appends: repeats are kept
    if case["unsigned"]:
        req.context["client_config"] = types.SimpleNamespace(
            s3={"payload_signing_enabled": False})
    FrozenDatetime.frozen = case["when"]
    auth = RecordingS3SigV4Auth(
        Credentials(case["access_key"], case["secret_key"], case["token"] or None),
        "s3", case["region"])
    auth.add_auth(req)
    authorization = req.headers["Authorization"]
    return {
        "signature": authorization.rsplit("Signature=", 1)[1],
        "authorization": authorization,
        "canonical_request": auth.last_canonical_request,
        "string_to_sign": auth.last_string_to_sign,
        "url_path": urlsplit(case["url"]).path,
        "url_query": auth.canonical_query_string(req),
        "x-amz-date": req.headers["X-Amz-Date"],
        "x-amz-content-sha256": req.headers["X-Amz-Content-SHA256"],
        "x-amz-security-token": req.headers.get("X-Amz-Security-Token"),
    }


def hexf(s):
    return "-" if s is None else s.encode("utf-8").hex()


def tool_line(case):
    payload = "UNSIGNED-PAYLOAD" if case["unsigned"] else hashlib.sha256(case["body"]).hexdigest()
    case["payload_hash"] = payload
    case["amz_date"] = case["when"].strftime("%Y%m%dT%H%M%SZ")
    fields = [hexf(x) for x in (case["method"], case["host"], case["path"], payload,
                                case["amz_date"], case["region"], "s3", case["access_key"],
                                case["secret_key"], case["token"])]
    fields.append(str(len(case["query"])))
    for n, v in case["query"]:
        fields += [hexf(n), hexf(v)]
    fields.append(str(len(case["headers"])))
    for n, v in case["headers"]:
        fields += [hexf(n), hexf(v)]
    return "\t".join(fields)


def parse_tool_output(line):
    f = line.split("\t")
    if f[0] != "OK":
        return {"error": line}
    unhex = [bytes.fromhex(x).decode("utf-8") for x in f[2:]]
    return {
        "signature": f[1],
        "authorization": unhex[0],
        "canonical_request": unhex[1],
        "string_to_sign": unhex[2],
        "url_path": unhex[3],
        "url_query": unhex[4],
    }


def report_mismatch(i, case, what, mine, theirs):
    print(f"MISMATCH in request #{i} ({what})", file=sys.stderr)
    print(f"  case: {case!r}", file=sys.stderr)
    print(f"  C signer:  {mine.get(what, mine)!r}", file=sys.stderr)
    print(f"  botocore:  {theirs.get(what)!r}", file=sys.stderr)
    print("--- C canonical request ---", file=sys.stderr)
    print(mine.get("canonical_request"), file=sys.stderr)
    print("--- botocore canonical request ---", file=sys.stderr)
    print(theirs.get("canonical_request"), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tool")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int,
                    default=int(os.environ.get("SIGV4_SEED") or
                                int.from_bytes(os.urandom(4), "big")))
    args = ap.parse_args()
    print(f"seed {args.seed} (rerun with --seed {args.seed} or SIGV4_SEED={args.seed})")
    rng = random.Random(args.seed)

    cases = [gen_case(rng) for _ in range(args.count)]
    stdin = "".join(tool_line(c) + "\n" for c in cases)
    run = subprocess.run([args.tool], input=stdin.encode("utf-8"), capture_output=True,
                         check=False)
    if run.returncode != 0:
        print(f"sigv4_tool exited {run.returncode}: {run.stderr.decode()}", file=sys.stderr)
        return 1
    lines = run.stdout.decode("utf-8").splitlines()
    if len(lines) != len(cases):
        print(f"sigv4_tool answered {len(lines)} of {len(cases)} requests", file=sys.stderr)
        return 1

    stats = {"token": 0, "query": 0, "headers": 0, "unsigned": 0, "port": 0}
    for i, (case, line) in enumerate(zip(cases, lines)):
        mine = parse_tool_output(line)
        theirs = botocore_sign(case)
        if "error" in mine:
            report_mismatch(i, case, "error", mine, theirs)
            return 1
        # The headers botocore adds are the ones the C caller sends.
        if (theirs["x-amz-date"] != case["amz_date"]
                or theirs["x-amz-content-sha256"] != case["payload_hash"]
                or theirs["x-amz-security-token"] != (case["token"] or None)):
            report_mismatch(i, case, "x-amz-date", {"x-amz-date": case["amz_date"]}, theirs)
            return 1
        for what in ("url_path", "url_query", "canonical_request", "string_to_sign",
                     "signature", "authorization"):
            if mine[what] != theirs[what]:
                report_mismatch(i, case, what, mine, theirs)
                return 1
        stats["token"] += bool(case["token"])
        stats["query"] += bool(case["query"])
        stats["headers"] += bool(case["headers"])
        stats["unsigned"] += case["unsigned"]
        stats["port"] += ":" in case["host"].rsplit("]", 1)[-1]
    print(f"{len(cases)} requests compared, all signatures identical "
          f"(with session token {stats['token']}, with query {stats['query']}, "
          f"with extra headers {stats['headers']}, unsigned payload {stats['unsigned']}, "
          f"host with port {stats['port']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
