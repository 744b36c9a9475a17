#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Fault-injecting HTTP proxy for the registry tests (loopback only, standard library only).

Forwards every request to the registry at --upstream and counts the blob bytes it sends back, so that a test can
show that a resumed pull transferred less. Faults are armed through control requests:

  GET  /__stats                          {"blob_bytes": N, "blob_requests": N, "token_requests": N,
                                          "max_blob_streams": N (most blob bodies sent at once)}
  POST /__reset                          zero the counters, disarm every fault, leave bearer mode
  POST /__fault?mode=M&count=N&after=B&seconds=S
        corrupt   flip one byte of the blob body at offset B          (N responses)
        truncate  close the connection after B bytes of blob body     (N responses)
        reset     send a TCP reset after B bytes of blob body         (N responses)
        stall     after B bytes, send nothing for S seconds, then close (N responses)
        error500  answer blob GETs with 500                            (N responses)
        manifest500  answer manifest GETs with 500                     (N responses)
        norange   drop the Range header of blob GETs                   (N requests)
  POST /__bearer?on=1[&user=U&password=P][&uses=N][&deny=1]
                                         require "Authorization: Bearer <token>" on /v2/ and serve tokens at
                                         /token (the WWW-Authenticate challenge names realm, service, scope);
                                         with user, /token wants those basic credentials; with uses, a token
                                         expires after N requests; with deny, tokens are granted but never
                                         accepted (a scope the registry refuses)

The first line on stdout is "PORT <n>" once the proxy listens.
"""

import argparse
import base64
import http.client
import http.server
import json
import re
import secrets
import socket
import struct
import sys
import threading
import time
import urllib.parse

BLOB_GET = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$")
MANIFEST_GET = re.compile(r"^/v2/.+/manifests/[^/]+$")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "trailer"}


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.blob_bytes = 0
        self.blob_requests = 0
        self.blob_streams = 0
        self.max_blob_streams = 0
        self.token_requests = 0
        self.faults = []  # [mode, remaining, after, seconds]
        self.bearer = False
        self.bearer_basic = None
        self.token_uses = 0
        self.token_deny = False
        self.tokens = {}  # token -> requests left, or None for unlimited

    def take_fault(self, modes):
        with self.lock:
            for f in self.faults:
                if f[0] in modes and f[1] > 0:
                    f[1] -= 1
                    return f[0], f[2], f[3]
        return None


STATE = State()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = None

    def log_message(self, fmt, *args):
        pass

    def send_json(self, code, obj, extra=None):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def control(self, path, query):
        q = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        if path == "/__stats":
            with STATE.lock:
                return self.send_json(200, {"blob_bytes": STATE.blob_bytes, "blob_requests": STATE.blob_requests,
                                            "token_requests": STATE.token_requests,
                                            "max_blob_streams": STATE.max_blob_streams})
        if path == "/__reset":
            with STATE.lock:
                STATE.reset()
            return self.send_json(200, {})
        if path == "/__fault":
            with STATE.lock:
                STATE.faults.append([q["mode"], int(q.get("count", "1")), int(q.get("after", "0")),
                                     float(q.get("seconds", "0"))])
            return self.send_json(200, {})
        if path == "/__bearer":
            with STATE.lock:
                STATE.bearer = q.get("on", "1") == "1"
                STATE.bearer_basic = None
                if "user" in q:
                    pair = "%s:%s" % (q["user"], q.get("password", ""))
                    STATE.bearer_basic = "Basic " + base64.b64encode(pair.encode()).decode()
                STATE.token_uses = int(q.get("uses", "0"))
                STATE.token_deny = q.get("deny", "0") == "1"
            return self.send_json(200, {})
        return self.send_json(404, {})

    def token(self, query):
        q = urllib.parse.parse_qs(query)
        with STATE.lock:
            STATE.token_requests += 1
            if STATE.bearer_basic and self.headers.get("Authorization", "") != STATE.bearer_basic:
                return self.send_json(401, {"error": "bad credentials"},
                                      {"WWW-Authenticate": 'Basic realm="quantd-test-token"'})
            if q.get("service", [""])[0] != "quantd-test" or not q.get("scope", [""])[0].startswith("repository:"):
                return self.send_json(400, {"error": "bad service or scope"})
            tok = secrets.token_hex(16)
            if not STATE.token_deny:
                STATE.tokens[tok] = STATE.token_uses or None
        return self.send_json(200, {"token": tok, "expires_in": 300})

    def handle_any(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/__"):
            return self.control(url.path, url.query)
        if url.path == "/token":
            return self.token(url.query)
        length = int(self.headers.get("Content-Length", "0") or "0")
        body = self.rfile.read(length) if length > 0 else None

        if STATE.bearer and url.path.startswith("/v2/"):
            auth = self.headers.get("Authorization", "")
            with STATE.lock:
                tok = auth[7:] if auth.startswith("Bearer ") else None
                ok = tok in STATE.tokens
                if ok and STATE.tokens[tok] is not None:
                    STATE.tokens[tok] -= 1
                    if STATE.tokens[tok] <= 0:
                        del STATE.tokens[tok]
            if not ok:
                host = self.headers.get("Host")
                m = re.match(r"^/v2/(.+?)/(manifests|blobs)/", url.path)
                scope = "repository:%s:pull" % m.group(1) if m else ""
                challenge = 'Bearer realm="http://%s/token",service="quantd-test"' % host
                if scope:
                    challenge += ',scope="%s"' % scope
                return self.send_json(401, {"errors": [{"code": "UNAUTHORIZED"}]},
                                      {"WWW-Authenticate": challenge})

        if self.command == "GET" and MANIFEST_GET.match(url.path) and STATE.take_fault({"manifest500"}):
            return self.send_json(500, {"errors": [{"code": "INJECTED"}]})
        is_blob = self.command == "GET" and BLOB_GET.match(url.path) is not None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if STATE.bearer:
            headers.pop("Authorization", None)
        fault = None
        if is_blob:
            with STATE.lock:
                STATE.blob_requests += 1
            if self.take_norange():
                headers.pop("Range", None)
            fault = STATE.take_fault({"corrupt", "truncate", "reset", "stall", "error500"})
            if fault and fault[0] == "error500":
                return self.send_json(500, {"errors": [{"code": "INJECTED"}]})

        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        self.send_response_only(resp.status, resp.reason)
        resp_len = resp.getheader("Content-Length")
        data = None
        if resp_len is None and self.command != "HEAD":
            data = resp.read()
            resp_len = str(len(data))
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if resp_len is not None:
            self.send_header("Content-Length", resp_len)
        self.end_headers()
        if self.command == "HEAD":
            conn.close()
            return
        if data is not None:
            self.wfile.write(data)
            conn.close()
            return
        counted = is_blob and 200 <= resp.status < 300
        if counted:
            with STATE.lock:
                STATE.blob_streams += 1
                STATE.max_blob_streams = max(STATE.max_blob_streams, STATE.blob_streams)
        try:
            self.stream(resp, int(resp_len), counted, fault)
        finally:
            if counted:
                with STATE.lock:
                    STATE.blob_streams -= 1
        conn.close()

    def take_norange(self):
        return STATE.take_fault({"norange"}) is not None

    def stream(self, resp, remaining, count, fault):
        sent = 0
        while remaining > 0:
            chunk = resp.read(min(65536, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            if fault and fault[0] in ("truncate", "reset", "stall") and sent + len(chunk) > fault[1]:
                keep = fault[1] - sent
                self.wfile.write(chunk[:keep])
                self.count(keep, count)
                self.wfile.flush()
                if fault[0] == "stall":
                    time.sleep(fault[2])
                if fault[0] == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if fault and fault[0] == "corrupt" and sent <= fault[1] < sent + len(chunk):
                b = bytearray(chunk)
                b[fault[1] - sent] ^= 0xFF
                chunk = bytes(b)
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            self.count(len(chunk), count)
            sent += len(chunk)

    def count(self, n, count):
        if count:
            with STATE.lock:
                STATE.blob_bytes += n

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True, help="127.0.0.1:PORT of the registry")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("fault-proxy: the upstream must be a loopback address")
    Handler.upstream = (host, int(port))
    srv = Server(("127.0.0.1", args.port), Handler)
    print("PORT %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
