"""Test support for the black-box tests of the CLI's Toxiproxy-compatible API (tests/api/*.py).

Standard library only. Finds the CLI (TINYPROXY_CLI_PATH, or --cli PATH on the command line),
starts it with `--api 127.0.0.1:0`, reads its one `listening on HOST:PORT` line, talks HTTP to it,
and scales every wall-clock upper bound by TINYPROXY_TIMING_SCALE (as tests/support/timing.hpp
does). A missing CLI fails the test, or skips it (exit 77, ctest's SKIP_RETURN_CODE) when
TINYPROXY_ALLOW_SKIP=1.
"""
import http.client
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
# Shared with tests/http and tests/socks_udp; the names tests here import from this module.
from cli_harness import (SKIP_EXIT_CODE, CliProcess, free_port, require_cli,  # noqa: E402,F401
                         scaled, skips_allowed, split_address, take_argument, timing_scale)


def take_cli_argument(argv):
    """Removes `--cli PATH` from argv (so unittest never sees it) and returns PATH, or None."""
    return take_argument(argv, "--cli")


class ApiServer(CliProcess):
    """The CLI running `--api 127.0.0.1:0` plus `extra_args`; stop() sends SIGTERM and returns
    the exit status. The API's address is `host`, `port`."""

    def __init__(self, cli, extra_args=()):
        super().__init__([cli, "--api", "127.0.0.1:0"] + list(extra_args))


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower(), "")

    def json(self):
        return json.loads(self.body.decode())

    def __repr__(self):
        return "HTTP %d %r" % (self.status, self.body[:300])


class ApiClient:
    """One HTTP request per connection to the API, as a plain test client (User-Agent
    `tinyproxy-api-test` unless told otherwise)."""

    def __init__(self, host, port):
        self.host = host
        self.port = port

    def request(self, method, path, body=None, headers=None, raw_body=None, timeout=None):
        """`body` is sent as JSON; `raw_body` (bytes or str) as it is."""
        all_headers = {"User-Agent": "tinyproxy-api-test"}
        all_headers.update(headers or {})
        payload = None
        if raw_body is not None:
            payload = raw_body.encode() if isinstance(raw_body, str) else raw_body
        elif body is not None:
            payload = json.dumps(body).encode()
        if payload is not None:
            all_headers.setdefault("Content-Type", "application/json")
        connection = http.client.HTTPConnection(self.host, self.port,
                                                timeout=timeout or scaled(10))
        try:
            connection.request(method, path, body=payload, headers=all_headers)
            reply = connection.getresponse()
            data = reply.read()
            headers_read = {name.lower(): value for name, value in reply.getheaders()}
            return Response(reply.status, headers_read, data)
        finally:
            connection.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def patch(self, path, body=None, **kw):
        return self.request("PATCH", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def raw_exchange(self, data, timeout=None):
        """Sends `data` as it is on a new connection, then reads until the server closes or
        `timeout` passes; returns what it read (b"" when closed without a reply)."""
        deadline = time.monotonic() + (timeout or scaled(10))
        received = b""
        with socket.create_connection((self.host, self.port), timeout=scaled(10)) as conn:
            try:
                conn.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may refuse before reading all of it
            while time.monotonic() < deadline:
                conn.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    break
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
                if b"\r\n\r\n" in received and _complete(received):
                    break
        return received


def _complete(data):
    """True when `data` holds a whole HTTP response (headers and a Content-Length body)."""
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or 0)
    return True
