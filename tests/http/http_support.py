"""Test support for the black-box tests of the CLI's HTTP forward mode (tests/http/*.py).

Standard library only. Runs the proxy under test on 127.0.0.1 (the CLI, `--cli PATH`, which
prints `listening on HOST:PORT`; or, to prove the harness against another real proxy, the
tinyproxy C daemon, `--daemon PATH`, with a temporary config on a free port), local origins
(http.server on 127.0.0.1:0, HTTP/1.1 with keep-alive), real clients (curl, wget) with a clean
environment, and a raw HTTP/1.1 response reader for byte-level tests. Every wall-clock upper
bound is scaled by TINYPROXY_TIMING_SCALE (as tests/support/timing.hpp does).
"""
import hashlib
import http.server
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
# Shared with tests/api and tests/socks_udp; the names tests here import from this module.
from cli_harness import (SKIP_EXIT_CODE, CliProcess, free_port, missing,  # noqa: E402,F401
                         scaled, skips_allowed, take_argument, timing_scale)

# The proxy variables a client would honour: every client run starts without them, so only
# what a test sets is used.
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY", "no_proxy", "NO_PROXY", "ftp_proxy", "FTP_PROXY")


def refused_port():
    """A loopback port nobody listens on (bound, never listened, then closed)."""
    return free_port()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


_payloads = {}
_payloads_lock = threading.Lock()


def payload(size):
    """`size` bytes of random data seeded by the size: the origin and the test agree on them."""
    with _payloads_lock:
        if size not in _payloads:
            _payloads[size] = random.Random(size).randbytes(size)
        return _payloads[size]


# --- the proxy under test ------------------------------------------------------------------


class ProxyUnderTest(CliProcess):
    """Our CLI (`kind` "ours"), the tinyproxy C daemon ("daemon") or squid ("squid"), listening
    on 127.0.0.1 (the other two with a temporary config on a free port). `mode` is the mode
    flag (None: no flag, the default), `policy` a --policy value (None: the default), `user`
    "NAME:PASS" or None. stop() ends it with SIGTERM and returns the exit status."""

    def __init__(self, kind, path, mode="--http", policy=None, user=None, extra_args=()):
        self.kind = kind
        self._config_dir = None
        if kind == "ours":
            command = [path, "--listen", "127.0.0.1:0"]
            if mode:
                command.append(mode)
            if policy:
                command += ["--policy", policy]
            if user:
                command += ["--user", user]
            super().__init__(command + list(extra_args), "the proxy")
            return
        port = free_port()
        if kind == "daemon":
            command = [path, "-d", "-c", self._daemon_config(port, user)]
        else:
            command = [path, "-N", "-f", self._squid_config(port, user)]
        super().__init__(command, "the " + kind, port)

    def _daemon_config(self, port, user):
        self._config_dir = tempfile.mkdtemp(prefix="tinyproxy-daemon-")
        lines = ["Port %d" % port, "Listen 127.0.0.1", "Timeout 30", "MaxClients 64",
                 "LogLevel Info", "PidFile \"%s/pid\"" % self._config_dir]
        if os.geteuid() == 0:
            lines += ["User nobody", "Group nogroup"]
        if user:
            name, _, password = user.partition(":")
            lines.append("BasicAuth %s %s" % (name, password))
        config = os.path.join(self._config_dir, "tinyproxy.conf")
        with open(config, "w") as out:
            out.write("\n".join(lines) + "\n")
        return config

    def _squid_config(self, port, user):
        if user:
            raise AssertionError("squid runs without --user here (no auth helper configured)")
        self._config_dir = tempfile.mkdtemp(prefix="tinyproxy-squid-")
        os.chmod(self._config_dir, 0o777)  # squid drops to its own user
        lines = ["http_port 127.0.0.1:%d" % port, "http_access allow all",
                 "cache deny all", "cache_mem 8 MB", "access_log none",
                 "cache_log stdio:/dev/stderr", "pid_filename %s/squid.pid" % self._config_dir,
                 "coredump_dir %s" % self._config_dir, "shutdown_lifetime 0 seconds",
                 "pipeline_prefetch 10"]
        config = os.path.join(self._config_dir, "squid.conf")
        with open(config, "w") as out:
            out.write("\n".join(lines) + "\n")
        return config

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def _close_pipes(self):
        super()._close_pipes()
        if self._config_dir:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None


# --- the origins -------------------------------------------------------------------------


class OriginServer(http.server.ThreadingHTTPServer):
    """The origin's listener: counts the TCP connections it accepts (so a test can tell how
    many upstream connections the proxy opened) and records every request it reads."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, name, idle_timeout=None, host="127.0.0.1"):
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, 0), OriginHandler)
        self.name = name
        self.idle_timeout = idle_timeout  # seconds an idle connection stays open; None: no limit
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = []  # (connection id, request line, [(name, value)])

    def next_connection_id(self):
        with self.lock:
            self.connections += 1
            return self.connections

    def handle_error(self, request, client_address):
        """A connection the proxy reset or closed mid-request is no failure of the origin's: the
        test that caused it sees the consequence (quiet, unlike socketserver's traceback)."""

    def record(self, entry):
        with self.lock:
            self.requests.append(entry)


class OriginHandler(http.server.BaseHTTPRequestHandler):
    """The origin's routes:
      /bytes/N        N bytes of payload(N), Content-Length (HEAD: the headers only)
      /chunked/N      the same bytes, Transfer-Encoding: chunked, in chunks of varied sizes
      /close/N        the same bytes, Connection: close, no length (delimited by the close)
      /bytes-close/N  the same bytes with Content-Length and Connection: close (then closes)
      /chunked-ext/N  the same bytes chunked, with chunk extensions and a trailer field
      /early-hints/N  a 103 Early Hints, then the 200 of /bytes/N
      /drip/N         the bytes of /bytes/N with Content-Length, written in 10 pieces 20 ms apart
      /status/204     204, no body
      /status/304     304 with a Content-Length of a body it does not send (RFC 9110 8.6)
      /echo           (any method) JSON: sha256 and length of the request body (Content-Length
                      or chunked), the framing headers received
      /headers        JSON: the request line and the headers as received
      /conn           JSON: this origin's name, this connection's id, the request's number on
                      it, and how many connections the origin has accepted so far
      /hop-response   a 200 whose Connection header names X-Origin-Hop, with X-Origin-Hop and
                      Keep-Alive (hop-by-hop: a proxy must not pass them on)
    A request body the origin cannot frame (a bad chunk size) gets 422, not 400, so that a test
    can tell the proxy's refusal from a forwarded malformed body.
    """

    protocol_version = "HTTP/1.1"
    # The head and the body are separate writes: without TCP_NODELAY, Nagle and the peer's
    # delayed ACK hold every keep-alive response after the first back by ~40 ms.
    disable_nagle_algorithm = True
    server_version = "origin"
    sys_version = ""

    def setup(self):
        self.timeout = self.server.idle_timeout  # StreamRequestHandler.setup applies it
        super().setup()
        self.connection_id = self.server.next_connection_id()
        self.requests_on_connection = 0

    def log_message(self, *args):
        pass  # quiet: a failing test prints what it needs

    def _route(self):
        self.requests_on_connection += 1
        self.server.record((self.connection_id, self.requestline, list(self.headers.items())))
        path = urllib.parse.urlsplit(self.path).path
        parts = path.strip("/").split("/")
        head = self.command == "HEAD"
        if parts[0] == "bytes" and len(parts) == 2:
            return self._send_bytes(int(parts[1]), head)
        if parts[0] == "chunked" and len(parts) == 2:
            return self._send_chunked(int(parts[1]))
        if parts[0] == "close" and len(parts) == 2:
            return self._send_close_delimited(int(parts[1]))
        if parts[0] == "bytes-close" and len(parts) == 2:
            self.close_connection = True
            return self._send_bytes(int(parts[1]), head, [("Connection", "close")])
        if parts[0] == "chunked-ext" and len(parts) == 2:
            return self._send_chunked(int(parts[1]), extensions=True)
        if parts[0] == "drip" and len(parts) == 2:
            return self._send_drip(int(parts[1]))
        if parts[0] == "early-hints" and len(parts) == 2:
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            return self._send_bytes(int(parts[1]), head)
        if path == "/status/204":
            self.send_response(204)
            self.end_headers()
            return None
        if path == "/status/304":
            self.send_response(304)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", "1000")
            self.end_headers()
            return None
        if path == "/echo":
            return self._send_echo()
        if path == "/hop-response":
            self.send_response(200)
            self.send_header("Connection", "X-Origin-Hop")
            self.send_header("X-Origin-Hop", "1")
            self.send_header("Keep-Alive", "timeout=5")
            self.send_header("X-End-To-End", "1")
            self.send_header("Content-Length", "2")
            self.end_headers()
            if not head:
                self.wfile.write(b"ok")
            return None
        if path == "/headers":
            return self._send_json({"request_line": self.requestline, "path": self.path,
                                    "headers": list(self.headers.items())}, head)
        if path == "/conn":
            with self.server.lock:
                total = self.server.connections
            return self._send_json({"origin": self.server.name, "connection": self.connection_id,
                                    "request": self.requests_on_connection,
                                    "connections": total}, head)
        self.send_error(404)
        return None

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = _route

    def _send_bytes(self, size, head, extra_headers=()):
        body = payload(size)
        self.send_response(200)
        for name, value in extra_headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("X-Sha256", sha256(body))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_chunked(self, size, extensions=False):
        body = payload(size)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        if extensions:
            self.send_header("Trailer", "X-Checksum")
        self.end_headers()
        if self.command == "HEAD":
            return
        sizes = [1, 7, 100, 4096, 65536]
        at = 0
        turn = 0
        while at < size:
            piece = body[at:at + sizes[turn % len(sizes)]]
            extension = b';piece=%d;name="a b"' % turn if extensions else b""
            self.wfile.write(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece))
            at += len(piece)
            turn += 1
        if extensions:
            self.wfile.write(b"0;last\r\nX-Checksum: %s\r\n\r\n" % sha256(body).encode())
        else:
            self.wfile.write(b"0\r\n\r\n")

    def _send_drip(self, size):
        body = payload(size)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        step = max(1, size // 10)
        for at in range(0, size, step):
            self.wfile.write(body[at:at + step])
            time.sleep(0.02)

    def _send_close_delimited(self, size):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(payload(size))

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline(16)
        length = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(length) if length else b""

    def _send_echo(self):
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self.send_error(422, "the origin got a body it cannot frame")
            return
        self._send_json({"sha256": sha256(body), "length": len(body),
                         "content_length": self.headers.get("Content-Length"),
                         "transfer_encoding": self.headers.get("Transfer-Encoding"),
                         "expect": self.headers.get("Expect")}, False)

    def _send_json(self, value, head):
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class Origin:
    """An OriginServer serving on its own thread; `url(path)` is an absolute URL to it."""

    def __init__(self, name, idle_timeout=None, host="127.0.0.1"):
        self.server = OriginServer(name, idle_timeout, host)
        self.port = self.server.server_address[1]
        self.authority = "%s:%d" % ("[%s]" % host if ":" in host else host, self.port)
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path):
        return "http://%s%s" % (self.authority, path)

    @property
    def connections(self):
        with self.server.lock:
            return self.server.connections

    def requests(self):
        with self.server.lock:
            return list(self.server.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --- clients -----------------------------------------------------------------------------


def clean_environment(**extra):
    """os.environ without any proxy variable, plus `extra`."""
    env = {name: value for name, value in os.environ.items() if name not in PROXY_VARIABLES}
    env.update(extra)
    return env


class ClientRun:
    def __init__(self, command, returncode, stdout, stderr):
        self.command = command
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self):
        return "%s -> exit %s\nstdout: %r\nstderr: %s" % (
            " ".join(self.command), self.returncode, self.stdout[:500],
            self.stderr.decode(errors="replace")[-3000:])


def run_client(command, env=None, timeout=None, stdin_data=None):
    """Runs a client to its end (bounded); a ClientRun with its exit status and output."""
    done = subprocess.run(command, input=stdin_data, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env or clean_environment(),
                          timeout=timeout or scaled(20))
    return ClientRun(command, done.returncode, done.stdout, done.stderr)


# --- raw HTTP/1.1 --------------------------------------------------------------------------


class RawResponse:
    def __init__(self, status_line, headers, body):
        self.status_line = status_line
        self.status = int(status_line.split(b" ")[1])
        self.headers = headers  # [(name, value)] as bytes, in order
        self.body = body

    def header(self, name):
        """The first header named `name` (case-insensitive), as str, or None."""
        for key, value in self.headers:
            if key.lower() == name.lower().encode():
                return value.decode(errors="replace")
        return None

    def all(self, name):
        return [v.decode(errors="replace") for k, v in self.headers
                if k.lower() == name.lower().encode()]

    def json(self):
        return json.loads(self.body.decode())

    def __repr__(self):
        head = b"\r\n".join([self.status_line] + [k + b": " + v for k, v in self.headers])
        return "%r + %d body bytes %r" % (head, len(self.body), self.body[:200])


class RawConnection:
    """One TCP connection to the proxy, written as bytes and read as HTTP/1.1 responses, with a
    transcript of everything sent and received (for reports)."""

    def __init__(self, address, timeout=None):
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout or scaled(10))
        self.buffer = bytearray()
        self.sent = bytearray()
        self.received = bytearray()

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sent += data
        self.sock.sendall(data)

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            raise AssertionError("connection reset by the proxy; %s" % self.transcript())
        except socket.timeout:
            raise AssertionError("no answer within the deadline; %s" % self.transcript())
        if chunk:
            self.buffer += chunk
            self.received += chunk
        return bool(chunk)

    def _line(self):
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise AssertionError("end of stream inside a response head; received %r"
                                     % bytes(self.received[-2000:]))
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        self.buffer = bytearray(rest)
        return line

    def _exact(self, count):
        while len(self.buffer) < count:
            if not self._fill():
                raise AssertionError("end of stream after %d of %d body bytes"
                                     % (len(self.buffer), count))
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def read_response(self, method="GET"):
        """The next response (1xx interim ones skipped), framed per RFC 9112 section 6.3."""
        while True:
            status_line = self._line()
            headers = []
            while True:
                line = self._line()
                if not line:
                    break
                name, _, value = line.partition(b":")
                headers.append((name.strip(), value.strip()))
            response = RawResponse(status_line, headers, b"")
            if not 100 <= response.status < 200:
                break
        if method == "HEAD" or response.status in (204, 304):
            return response
        if "chunked" in (response.header("Transfer-Encoding") or "").lower():
            body = bytearray()
            while True:
                size = int(self._line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._exact(size)
                self._line()
            response.body = bytes(body)
        elif response.header("Content-Length") is not None:
            response.body = self._exact(int(response.header("Content-Length")))
        else:
            while self._fill():
                pass
            response.body = bytes(self.buffer)
            self.buffer = bytearray()
        return response

    def closed_by_peer(self, timeout=None):
        """True when the peer closes (or resets) within `timeout` with nothing more sent."""
        self.sock.settimeout(timeout or scaled(5))
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        self.received += chunk
        return not chunk and not self.buffer

    def transcript(self):
        return "sent:\n%r\nreceived:\n%r" % (bytes(self.sent), bytes(self.received[:3000]))
