"""TCP helpers for the API tests: upstream servers the test runs itself on 127.0.0.1:0, and
bounded reads (every wait has a deadline). Standard library only."""
import queue
import socket
import threading
import time

from api_support import scaled


class Upstream:
    """A listener on 127.0.0.1:0 whose accepted connections wait in a queue (Toxiproxy's
    testhelper.NewUpstream): the test reads and writes them itself."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.connections = queue.Queue()
        self.accepted = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)
            self.on_accept(conn)

    def on_accept(self, conn):
        self.connections.put(conn)

    def next_connection(self, timeout=None):
        try:
            return self.connections.get(timeout=timeout or scaled(10))
        except queue.Empty:
            raise AssertionError("the proxy made no connection to the upstream in time")

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for conn in self.accepted:
            try:
                conn.close()
            except OSError:
                pass


class EchoUpstream(Upstream):
    """An upstream that sends back every byte it reads, and closes its side after the client's
    end of stream."""

    def on_accept(self, conn):
        threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    conn.shutdown(socket.SHUT_WR)
                    return
                conn.sendall(data)
        except OSError:
            return


def connect(address, timeout=None):
    """A connected socket to "host:port" (any address the name resolves to)."""
    host, _, port = address.rpartition(":")
    conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout or scaled(10))
    return conn


def can_connect(address):
    """True when a TCP connection to `address` is accepted (Toxiproxy's AssertProxyUp)."""
    try:
        conn = connect(address, timeout=scaled(5))
    except OSError:
        return False
    conn.close()
    return True


def recv_exact(conn, count, timeout=None):
    """Exactly `count` bytes from `conn`, or AssertionError (end of stream, reset, deadline)."""
    deadline = time.monotonic() + (timeout or scaled(10))
    data = bytearray()
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("read %d of %d bytes before the deadline" % (len(data), count))
        conn.settimeout(left)
        try:
            chunk = conn.recv(min(count - len(data), 1 << 20))
        except socket.timeout:
            continue
        except ConnectionResetError:
            raise AssertionError("reset after %d of %d bytes" % (len(data), count))
        if not chunk:
            raise AssertionError("end of stream after %d of %d bytes" % (len(data), count))
        data += chunk
    return bytes(data)


def read_until_closed(conn, timeout=None):
    """Reads until the peer closes: (bytes read, "eof" | "reset" | "timeout")."""
    deadline = time.monotonic() + (timeout or scaled(10))
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(data), "timeout"
        conn.settimeout(left)
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data += chunk


def nothing_arrives(conn, seconds):
    """True when no byte (and no end of stream) arrives on `conn` for `seconds`."""
    conn.settimeout(seconds)
    try:
        chunk = conn.recv(65536)
    except socket.timeout:
        return True
    except ConnectionResetError:
        return False
    return False  # a byte, or the end of stream


def assert_echo_response(client, server, message=b"hello world\n", timeout=None):
    """Toxiproxy's AssertEchoResponse: `message` goes client -> server, then server -> client,
    each arriving whole and unchanged."""
    client.sendall(message)
    got = recv_exact(server, len(message), timeout)
    if got != message:
        raise AssertionError("server read %r, not %r" % (got, message))
    server.sendall(got)
    back = recv_exact(client, len(message), timeout)
    if back != message:
        raise AssertionError("client read %r, not %r" % (back, message))
