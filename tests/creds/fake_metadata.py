#!/usr/bin/python3
"""Fake EC2 instance metadata (IMDSv2) and ECS container credential
endpoints for tests/creds, on one port of 127.0.0.1.

Prints the port the OS chose on the first line of stdout, then serves until
stdin reaches end of file (the test holds the other end, so a crashed test
never leaves a server behind).

  PUT /latest/api/token             needs X-aws-ec2-metadata-token-ttl-seconds
  GET /latest/meta-data/...         needs X-aws-ec2-metadata-token (else 401)
      iam/security-credentials/     -> the role name
      iam/security-credentials/ROLE -> credentials, a new serial every time
      placement/region              -> eu-fake-1
  GET /ecs/creds                    needs Authorization: ecs-auth-T0K3N
  GET /_stats                       request counters, "name=value" lines
  PUT /_control?fail=0|1&lifetime=S&delay=S
                                    fail: answer credential requests with 500;
                                    lifetime: seconds until Expiration;
                                    delay: seconds to wait before answering

Every credential set carries one serial in its key id, secret and token, so
the test can tell sets apart and see that a returned set is not mixed.
Secrets contain "S3CR3T" and tokens "T0K3N", so the test can check that none
reach the log.
"""

import http.server
import json
import secrets
import sys
import threading
import time
import urllib.parse

ROLE = "bucketfs-test-role"
REGION = "eu-fake-1"
ECS_AUTH = "ecs-auth-T0K3N"
CREDS_PREFIX = "/latest/meta-data/iam/security-credentials/"


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.tokens = set()
        self.serial = 0
        self.fail = False
        self.lifetime = 4
        self.delay = 0.0
        self.counts = dict.fromkeys(
            ["token_put", "role_get", "creds_get", "creds_fail", "region_get",
             "ecs_get", "rejected"], 0)

    def count(self, name):
        with self.lock:
            self.counts[name] += 1

    def next_creds(self):
        with self.lock:
            self.serial += 1
            serial = self.serial
            lifetime = self.lifetime
        # IMDS writes whole seconds, so the real lifetime is a little less.
        exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(time.time()) + lifetime))
        return serial, exp


STATE = State()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, ctype="text/plain"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/latest/api/token":
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                STATE.count("rejected")
                return self.reply(400, "bad ttl")
            token = "imds-session-T0K3N-" + secrets.token_urlsafe(16)
            with STATE.lock:
                STATE.tokens.add(token)
            STATE.count("token_put")
            return self.reply(200, token)
        if url.path == "/_control":
            q = urllib.parse.parse_qs(url.query)
            with STATE.lock:
                if "fail" in q:
                    STATE.fail = q["fail"][0] == "1"
                if "lifetime" in q:
                    STATE.lifetime = int(q["lifetime"][0])
                if "delay" in q:
                    STATE.delay = float(q["delay"][0])
            return self.reply(200, "ok")
        self.reply(404, "not found")

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_stats":
            with STATE.lock:
                text = "".join(f"{k}={v}\n" for k, v in STATE.counts.items())
            return self.reply(200, text)
        if path == "/ecs/creds":
            return self.ecs()
        if path.startswith("/latest/meta-data/"):
            return self.imds(path)
        self.reply(404, "not found")

    def imds(self, path):
        with STATE.lock:
            ok = self.headers.get("X-aws-ec2-metadata-token") in STATE.tokens
        if not ok:
            STATE.count("rejected")
            return self.reply(401, "")
        if path == CREDS_PREFIX:
            STATE.count("role_get")
            return self.reply(200, ROLE)
        if path == CREDS_PREFIX + ROLE:
            STATE.count("creds_get")
            if not self.wait_or_fail():
                return
            serial, exp = STATE.next_creds()
            doc = {
                "Code": "Success",
                "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "Type": "AWS-HMAC",
                "AccessKeyId": f"ASIAIMDS{serial:06d}",
                "SecretAccessKey": f"imds-S3CR3T-{serial:06d}",
                "Token": f"imds-T0K3N-{serial:06d}",
                "Expiration": exp,
            }
            # The real service indents and puts a space before the colon.
            return self.reply(200, json.dumps(doc, indent=2, separators=(",", " : ")))
        if path == "/latest/meta-data/placement/region":
            STATE.count("region_get")
            return self.reply(200, REGION)
        self.reply(404, "not found")

    def ecs(self):
        if self.headers.get("Authorization") != ECS_AUTH:
            STATE.count("rejected")
            return self.reply(401, "")
        STATE.count("ecs_get")
        if not self.wait_or_fail():
            return
        serial, exp = STATE.next_creds()
        doc = {
            "RoleArn": "arn:aws:iam::123456789012:role/ecs-task",
            "AccessKeyId": f"ASIAECS{serial:06d}",
            # A quote, a backslash, a slash, U+00C9 and U+1F600 (a surrogate
            # pair) exercise the JSON reader's escapes.
            "SecretAccessKey": f'ecs-S3CR3T"\\/-{serial:06d}',
            "Token": f"ecs-T0K3N-\u00c9\U0001F600-{serial:06d}",
            "Expiration": exp,
            "Nested": {"list": [1, -2.5e3, True, False, None, {"k": "v"}]},
        }
        body = json.dumps(doc).replace("/", "\\/")
        self.reply(200, body, "application/json")

    def wait_or_fail(self):
        with STATE.lock:
            fail, delay = STATE.fail, STATE.delay
        if delay:
            time.sleep(delay)
        if fail:
            STATE.count("creds_fail")
            self.reply(500, "failing on purpose")
            return False
        return True


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # One write, so that the test never sees half a line.
    sys.stdout.write(f"{server.server_address[1]}\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the test closes its end
    server.shutdown()


if __name__ == "__main__":
    main()
