"""What the Python black-box tests of the CLI share (tests/http, tests/api, tests/socks_udp):
their command-line and skip conventions, timing, free ports, and the CLI run as a process that
prints its `listening on HOST:PORT` line first, its stderr drained as it comes (a full pipe
would block it). Standard library only.

Every wall-clock upper bound is scaled by TINYPROXY_TIMING_SCALE (as tests/support/timing.hpp
does). A test that cannot run exits 77 (ctest's SKIP_RETURN_CODE) when TINYPROXY_ALLOW_SKIP=1,
and fails otherwise.
"""
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


def take_argument(argv, flag):
    """Removes `FLAG VALUE` from argv (so unittest never sees it) and returns VALUE, or None."""
    if flag in argv:
        at = argv.index(flag)
        if at + 1 < len(argv):
            value = argv[at + 1]
            del argv[at:at + 2]
            return value
    return None


def missing(what):
    """Exits: 77 (skipped) with TINYPROXY_ALLOW_SKIP=1, else 1, naming what is missing."""
    if skips_allowed():
        print("skipped: " + what, file=sys.stderr)
        sys.exit(SKIP_EXIT_CODE)
    print(what + " (or set TINYPROXY_ALLOW_SKIP=1 to skip)", file=sys.stderr)
    sys.exit(1)


def require_cli(path):
    """`path` (or TINYPROXY_CLI_PATH) when it names an executable; otherwise missing()."""
    path = path or os.environ.get("TINYPROXY_CLI_PATH", "")
    if not (path and os.access(path, os.X_OK)):
        missing("the tinyproxy CLI is required (got %r): build the tinyproxy_cli target" % path)
    return path


def free_port():
    """A loopback TCP port that was free a moment ago (for a peer that must be told one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def split_address(text):
    """("host", port) from "host:port" or "[v6]:port"."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class CliProcess:
    """The CLI run as `command`, which must listen on port 0 and so print `listening on
    HOST:PORT` first: `host` and `port` say where. A peer that prints no such line (the
    tinyproxy C daemon, squid) is told a `port` instead, and is ready once 127.0.0.1:`port`
    accepts. stop() ends it (SIGTERM) and returns the exit status; what it wrote is
    stdout_after_listening() and stderr_text()."""

    def __init__(self, command, what="the CLI", port=None):
        self.what = what
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stderr = bytearray()
        self._stdout_rest = b""
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        if port is None:
            self.host, self.port = self._read_listening(scaled(10))
        else:
            self.host, self.port = "127.0.0.1", port
            self._wait_accepting(scaled(10))

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

    def stdout_after_listening(self):
        """What it wrote on stdout after its `listening on` line (once it has exited)."""
        return self._stdout_rest

    def stderr_text(self):
        """What it wrote on stderr so far (all of it once it has exited)."""
        if self.process.poll() is not None:
            self._close_pipes()
        return self._stderr.decode(errors="replace")

    def _drain_stderr(self):
        while True:
            try:
                chunk = os.read(self.process.stderr.fileno(), 65536)
            except (OSError, ValueError):
                return
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
                self._close_pipes()
                raise AssertionError("%s exited (%s) before listening: %s"
                                     % (self.what, status, self.stderr_text()))
            line += byte
        text = line.decode().strip()
        if not text.startswith("listening on "):
            self.kill()
            raise AssertionError("expected `listening on HOST:PORT`, got %r" % text)
        return split_address(text[len("listening on "):])

    def _wait_accepting(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._close_pipes()
                raise AssertionError("%s exited (%s): %s"
                                     % (self.what, self.process.returncode, self.stderr_text()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise AssertionError("%s did not accept on port %d in time" % (self.what, self.port))

    def _close_pipes(self):
        """Once it has exited: keeps what is left on stdout, waits for the stderr drain
        (bounded), closes both pipes."""
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
