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
import select
import signal
import socket
import subprocess
import sys
import threading
import time

SKIP_EXIT_CODE = 77


def timing_scale():
    """How many times longer than nominal an upper bound is: TINYPROXY_TIMING_SCALE, else 1."""
    try:
        value = int(os.environ.get("TINYPROXY_TIMING_SCALE", "1"))
    except ValueError:
        return 1
    return value if 0 < value <= 1000 else 1


def scaled(seconds):
    """An upper bound of `seconds`, scaled by timing_scale()."""
    return seconds * timing_scale()


def skips_allowed():
    return os.environ.get("TINYPROXY_ALLOW_SKIP") == "1"


def take_cli_argument(argv):
    """Removes `--cli PATH` from argv (so unittest never sees it) and returns PATH, or None."""
    if "--cli" in argv:
        at = argv.index("--cli")
        if at + 1 < len(argv):
            path = argv[at + 1]
            del argv[at:at + 2]
            return path
    return None


def require_cli(path):
    """`path` (or TINYPROXY_CLI_PATH) when it names an executable; otherwise exits: 77 with
    TINYPROXY_ALLOW_SKIP=1, else 1 naming what is missing."""
    path = path or os.environ.get("TINYPROXY_CLI_PATH", "")
    if path and os.access(path, os.X_OK):
        return path
    what = "the tinyproxy CLI is required (got %r): build the tinyproxy_cli target" % path
    if skips_allowed():
        print("skipped: " + what, file=sys.stderr)
        sys.exit(SKIP_EXIT_CODE)
    print(what + ", or set TINYPROXY_ALLOW_SKIP=1 to skip", file=sys.stderr)
    sys.exit(1)


def free_port():
    """A loopback TCP port that was free a moment ago (for tests that must name a port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def split_address(text):
    """("host", port) from "host:port" or "[v6]:port"."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class ApiServer:
    """The CLI running `--api 127.0.0.1:0` plus `extra_args`; stop() sends SIGTERM and returns
    the exit status. The API's address is `host`, `port`. Its stderr is drained as it comes (a
    full pipe would block the server), its stdout read once it has exited."""

    def __init__(self, cli, extra_args=()):
        self.process = subprocess.Popen(
            [cli, "--api", "127.0.0.1:0"] + list(extra_args),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stderr = bytearray()
        self._stdout_rest = b""
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self.host, self.port = self._read_listening(scaled(10))
        self._drain.start()

    def _drain_stderr(self):
        while True:
            chunk = os.read(self.process.stderr.fileno(), 65536)
            if not chunk:
                return
            self._stderr += chunk

    def _read_listening(self, timeout):
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(left, 0))
            if not ready:
                self.kill()
                raise AssertionError("no `listening on` line within %.0f s" % timeout)
            byte = os.read(self.process.stdout.fileno(), 1)
            if not byte:
                status = self.process.wait()
                self._drain_stderr()
                self._close_pipes()
                raise AssertionError("the CLI exited (%s) before listening: %s"
                                     % (status, self._stderr.decode(errors="replace")))
            line += byte
        text = line.decode().strip()
        if not text.startswith("listening on "):
            self.kill()
            raise AssertionError("expected `listening on HOST:PORT`, got %r" % text)
        return split_address(text[len("listening on "):])

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    def running(self):
        return self.process.poll() is None

    def stop(self, sig=signal.SIGTERM):
        """Sends `sig` and returns the exit status (None when it had to be killed)."""
        if self.process.poll() is not None:
            self._close_pipes()
            return self.process.returncode
        self.process.send_signal(sig)
        try:
            status = self.process.wait(timeout=scaled(5))
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._close_pipes()
        return status

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_pipes()

    def _close_pipes(self):
        """Once the server has exited: keeps what is left on stdout, waits for the stderr
        drain (bounded), closes both pipes."""
        if self.process.stdout.closed:
            return
        ready, _, _ = select.select([self.process.stdout], [], [], scaled(5))
        if ready:
            self._stdout_rest = self.process.stdout.read()
        if self._drain.is_alive():
            self._drain.join(scaled(5))
        self.process.stdout.close()
        if not self._drain.is_alive():
            self.process.stderr.close()

    def stdout_after_listening(self):
        """What the server wrote on stdout after its `listening on` line (once it has
        exited)."""
        return self._stdout_rest

    def stderr_text(self):
        """What the server wrote on stderr (all of it once it has exited)."""
        if self.process.poll() is not None:
            self._close_pipes()
        return self._stderr.decode(errors="replace")


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
