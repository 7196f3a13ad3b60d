"""Black-box tests of the CLI's SOCKS5 UDP ASSOCIATE with a real client: Python's PySocks
(Debian python3-socks), `socksocket(AF_INET, SOCK_DGRAM)` with a SOCKS5 proxy, sends datagrams
through `tinyproxy --socks` (and the default --auto) to a UDP echo on loopback, to an IPv4, an
IPv6 and a named destination, and reads them back with the address they came from.

Usage: socks_udp_test.py --cli PATH [--policy thread|fork|poll] [unittest arguments]
Exits 77 (skipped) when PySocks is missing and TINYPROXY_ALLOW_SKIP=1.
"""
import os
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
# Shared with tests/http and tests/api.
from cli_harness import CliProcess, missing, require_cli, scaled, take_argument  # noqa: E402


def import_socks():
    """PySocks: from this interpreter, else from Debian's python3 packages (socks.py is one
    pure-Python file that any Python 3 can load)."""
    try:
        import socks  # noqa: F401
        return sys.modules["socks"]
    except ImportError:
        pass
    debian = "/usr/lib/python3/dist-packages"
    if os.path.isfile(os.path.join(debian, "socks.py")):
        sys.path.append(debian)
        import socks  # noqa: F811
        return socks
    missing("PySocks (python3-socks) is not installed (tools/install-peers.sh)")


CLI = take_argument(sys.argv, "--cli")
POLICY = take_argument(sys.argv, "--policy")
socks = import_socks()


class UdpEcho:
    """Echoes every datagram to its sender, on `host`, port 0, until closed."""

    def __init__(self, family, host):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data, sender = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received += 1
            self.sock.sendto(data, sender)

    def close(self):
        self._stop = True
        self._thread.join(scaled(5))
        self.sock.close()


class Proxy(CliProcess):
    """The CLI on 127.0.0.1:0 with `args` and --verbose; `stderr` its lines so far."""

    def __init__(self, *args):
        command = [CLI, "--listen", "127.0.0.1:0", "--verbose"] + list(args)
        if POLICY:
            command += ["--policy", POLICY]
        super().__init__(command, "the proxy")

    @property
    def stderr(self):
        return self.stderr_text().splitlines(keepends=True)


def udp_client(proxy_port):
    client = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    client.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port)
    client.settimeout(scaled(5))
    return client


def can_use_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


class PySocksUdp(unittest.TestCase):
    mode = "--socks"

    def setUp(self):
        self.proxy = Proxy(self.mode)
        self.echo4 = UdpEcho(socket.AF_INET, "127.0.0.1")
        self.echo6 = UdpEcho(socket.AF_INET6, "::1") if can_use_ipv6() else None

    def tearDown(self):
        self.echo4.close()
        if self.echo6:
            self.echo6.close()
        self.assertEqual(self.proxy.stop(), 0, "".join(self.proxy.stderr))

    def round_trip(self, destination, expected_sender, payloads):
        client = udp_client(self.proxy.port)
        try:
            for data in payloads:
                client.sendto(data, destination)
                got, sender = client.recvfrom(65536)
                self.assertEqual(got, data)
                self.assertEqual(sender[:2], expected_sender)
        finally:
            client.close()

    def test_ipv4(self):
        port = self.echo4.port
        self.round_trip(("127.0.0.1", port), ("127.0.0.1", port),
                        [b"ping", os.urandom(1200), b"\x00" * 64])

    def test_ipv6(self):
        if not self.echo6:
            self.skipTest("this machine cannot bind ::1")
        port = self.echo6.port
        self.round_trip(("::1", port), ("::1", port), [b"ping6", os.urandom(1200)])

    def test_name(self):
        port = self.echo4.port
        self.round_trip(("localhost", port), ("127.0.0.1", port), [b"by name", b"again"])

    def test_several_clients_at_once(self):
        port = self.echo4.port
        clients = [udp_client(self.proxy.port) for _ in range(4)]
        try:
            for n, client in enumerate(clients):
                client.sendto(b"client %d" % n, ("127.0.0.1", port))
            for n, client in enumerate(clients):
                got, _ = client.recvfrom(65536)
                self.assertEqual(got, b"client %d" % n)
        finally:
            for client in clients:
                client.close()

    def test_verbose_line_counts_datagrams(self):
        self.round_trip(("127.0.0.1", self.echo4.port), ("127.0.0.1", self.echo4.port),
                        [b"one", b"two"])
        self.assertEqual(self.proxy.stop(), 0)
        self.proxy.stop = lambda: 0  # stopped once; tearDown must not wait again
        log = "".join(self.proxy.stderr)
        self.assertIn("udp relay 127.0.0.1:", log)
        self.assertIn("2 datagrams up, 2 down, 0 dropped", log)


class PySocksUdpAuto(PySocksUdp):
    """The same through the default mode (SOCKS and HTTP on one port)."""
    mode = "--auto"


class PySocksNoUdp(unittest.TestCase):
    def test_refused(self):
        proxy = Proxy("--socks", "--no-udp")
        try:
            client = udp_client(proxy.port)
            with self.assertRaises(socks.SOCKS5Error) as raised:
                client.sendto(b"x", ("127.0.0.1", 9))
            self.assertIn("0x07", str(raised.exception))
            client.close()
        finally:
            self.assertEqual(proxy.stop(), 0)


if __name__ == "__main__":
    require_cli(CLI)
    unittest.main()
