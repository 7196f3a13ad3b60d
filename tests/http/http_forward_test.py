#!/usr/bin/env python3
"""Black-box tests of the CLI's HTTP forward proxy (`tinyproxy --http`, and `--auto`, the
default mode, which serves SOCKS4/4a/5 and HTTP on one port), with real clients: curl (`-x`, the
`http_proxy` variable, its SOCKS flags), wget, Python's urllib, and raw sockets for what only
bytes can show (pipelining, smuggling attempts, hop-by-hop headers). The origins are local
http.server instances (HTTP/1.1, keep-alive, chunked, HEAD, 204, 304, an upload echo and a
connection counter); every body is checked by its sha256.

    python3 tests/http/http_forward_test.py --cli build/dev/examples/tinyproxy \\
        [--policy thread|fork|poll] [TestClass ...]
    python3 tests/http/http_forward_test.py --daemon /usr/bin/tinyproxy [TestClass ...]
    python3 tests/http/http_forward_test.py --squid /usr/sbin/squid [--all-tests] [TestClass ...]

`--daemon` (the tinyproxy C daemon) and `--squid` run the same tests against another real proxy
(a temporary config on a free port), to prove the clients and origins: what only our proxy
promises (its Via, its status codes for refusals, upstream reuse, --auto, --policy) is checked
only against ours (the `ours_only` decorator, or `if self.ours:`). `--all-tests` runs the
ours_only tests against the other proxy anyway, to check such a test against a proxy that
keeps connections alive (squid): expect that proxy's quirks to fail.

Standard library only. Each test class starts its own proxy and origins; tests/http/
CMakeLists.txt runs one ctest test per class (per class and policy for PolicyTestCase
classes). A missing CLI or curl fails (exit 77, skipped, with TINYPROXY_ALLOW_SKIP=1).
"""
import base64
import functools
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from http_support import (Origin, ProxyUnderTest, RawConnection, clean_environment,  # noqa: E402
                          missing, payload, refused_port, run_client, scaled, sha256,
                          take_argument, PROXY_VARIABLES)

PROXY_KIND = "ours"  # or "daemon", "squid"; set in main()
RUN_OURS_ONLY = False  # --all-tests: run the ours_only tests against another proxy too
PROXY_PATH = None
POLICY = None  # --policy for PolicyTestCase classes; None: the CLI's default

OUR_VIA = "1.1 tinyproxy.hpp"
REALM = 'Basic realm="tinyproxy"'
MEGABYTE = 1 << 20
# What the origin serves in the fetch tests: empty, tiny, odd, around a buffer, ~1 MB.
SIZES = (0, 1, 1000, 65537, MEGABYTE + 3)


def ours_only(test):
    """A test of what only our proxy promises: skipped against the C daemon."""

    @functools.wraps(test)
    def run(self, *args, **kwargs):
        if not self.ours and not RUN_OURS_ONLY:
            self.skipTest("ours only: the tinyproxy daemon does not promise this")
        return test(self, *args, **kwargs)

    return run


class ProxyTestCase(unittest.TestCase):
    """One proxy and two origins (A and B) per class; the proxy must still be running when the
    class ends, and SIGTERM must end it with status 0."""

    mode = "--http"
    user = None
    extra_args = ()
    every_policy = False

    @classmethod
    def setUpClass(cls):
        cls.ours = PROXY_KIND == "ours"
        if not cls.ours and cls.mode != "--http":
            raise unittest.SkipTest("ours only: the daemon has no %s" % (cls.mode or "--auto"))
        if PROXY_KIND == "squid" and cls.user:
            raise unittest.SkipTest("squid runs here without an auth helper")
        cls.origin = Origin("A")
        cls.other_origin = Origin("B")
        cls.policy = POLICY if cls.every_policy else None
        cls.proxy = ProxyUnderTest(PROXY_KIND, PROXY_PATH, mode=cls.mode, policy=cls.policy,
                                   user=cls.user, extra_args=cls.extra_args)
        cls.scratch = tempfile.mkdtemp(prefix="tinyproxy-http-test-")

    @classmethod
    def tearDownClass(cls):
        alive = cls.proxy.running()
        status = cls.proxy.stop()
        cls.origin.close()
        cls.other_origin.close()
        shutil.rmtree(cls.scratch, ignore_errors=True)
        if not alive:
            raise AssertionError("the proxy died during the tests: " + cls.proxy.stderr_text())
        if cls.ours and status != 0:
            raise AssertionError("SIGTERM ended the proxy with %r, not 0: %s"
                                 % (status, cls.proxy.stderr_text()))

    # --- helpers -----------------------------------------------------------------------------

    def file_path(self, name):
        return os.path.join(self.scratch, "%s-%s" % (self.id().rsplit(".", 1)[-1], name))

    def write_file(self, name, data):
        path = self.file_path(name)
        with open(path, "wb") as out:
            out.write(data)
        return path

    def read_file(self, path):
        with open(path, "rb") as source:
            return source.read()

    def curl(self, *args, env=None, proxy=True):
        """curl -sS through the proxy (-x, unless `proxy` is False); asserts exit 0."""
        command = ["curl", "-sS", "--max-time", str(scaled(15))]
        if proxy:
            command += ["-x", self.proxy.url]
        run = run_client(command + list(args), env=env)
        self.assertEqual(run.returncode, 0, run)
        return run

    def assert_body(self, body, size, what=""):
        self.assertEqual(len(body), size, what)
        self.assertEqual(sha256(body), sha256(payload(size)), what)

    def assert_via(self, headers, what=""):
        """A Via header reached the origin: ours exactly OUR_VIA, the daemon's its own."""
        via = [value for name, value in headers if name.lower() == "via"]
        self.assertTrue(via, "no Via reached the origin: %r %s" % (headers, what))
        if self.ours:
            self.assertEqual(via, [OUR_VIA], what)

    def origin_headers(self, reply_body):
        return json.loads(reply_body)["headers"]

    def raw(self):
        conn = RawConnection(self.proxy.address)
        self.addCleanup(conn.close)
        return conn

    def requests_to(self, origin, marker):
        """The origin's recorded requests whose request line holds `marker`."""
        return [entry for entry in origin.requests() if marker in entry[1]]


class PolicyTestCase(ProxyTestCase):
    """A class run once per policy (the --policy the script was given)."""

    every_policy = True


class ClientFetch(PolicyTestCase):
    """curl (-x and http_proxy), wget and urllib fetch and upload through `--http`: every body's
    sha256 is right, and every request reached the origin through the proxy (its Via)."""

    def test_curl_x_fetches_every_size(self):
        for size in SIZES:
            path = self.file_path("body%d" % size)
            self.curl(self.origin.url("/bytes/%d" % size), "-o", path)
            self.assert_body(self.read_file(path), size, "size %d" % size)

    def test_curl_http_proxy_variable_fetches(self):
        env = clean_environment(http_proxy=self.proxy.url)
        path = self.file_path("body")
        self.curl(self.origin.url("/bytes/%d" % MEGABYTE), "-o", path, env=env, proxy=False)
        self.assert_body(self.read_file(path), MEGABYTE)
        reply = self.curl(self.origin.url("/headers"), env=env, proxy=False)
        self.assert_via(self.origin_headers(reply.stdout))

    def test_curl_request_reaches_the_origin_with_via(self):
        reply = self.curl(self.origin.url("/headers"))
        self.assert_via(self.origin_headers(reply.stdout))
        self.assertTrue(json.loads(reply.stdout)["path"].startswith("/"),
                        "the origin got %r, not origin-form" % json.loads(reply.stdout))

    def test_curl_chunked_response(self):
        path = self.file_path("chunked")
        self.curl(self.origin.url("/chunked/%d" % (MEGABYTE + 11)), "-o", path)
        self.assert_body(self.read_file(path), MEGABYTE + 11)

    def test_curl_close_delimited_response(self):
        path = self.file_path("closed")
        self.curl(self.origin.url("/close/%d" % 300001), "-o", path)
        self.assert_body(self.read_file(path), 300001)

    def test_curl_head(self):
        reply = self.curl("-I", self.origin.url("/bytes/%d" % MEGABYTE))
        head = reply.stdout.decode()
        self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        self.assertIn("content-length: %d" % MEGABYTE, head.lower())
        self.assertIn("x-sha256: " + sha256(payload(MEGABYTE)), head.lower())

    def test_curl_204_and_304(self):
        reply = self.curl(self.origin.url("/status/204"), "-w", "%{http_code} %{size_download}")
        self.assertEqual(reply.stdout, b"204 0")
        reply = self.curl(self.origin.url("/status/304"), "-H", 'If-None-Match: "v1"',
                          "-w", "%{http_code} %{size_download}")
        self.assertEqual(reply.stdout, b"304 0")

    def test_curl_post_upload_echoes_sha256(self):
        # Over 1 MB, so curl sends Expect: 100-continue too (it sends the body anyway after 1 s
        # without an answer: RawProtocol checks that the 100 is passed on).
        data = payload(MEGABYTE + 5)
        upload = self.write_file("upload", data)
        reply = self.curl("--data-binary", "@" + upload, "-H",
                          "Content-Type: application/octet-stream", self.origin.url("/echo"))
        echo = json.loads(reply.stdout)
        self.assertEqual((echo["length"], echo["sha256"]), (len(data), sha256(data)), echo)

    def test_curl_chunked_upload_echoes_sha256(self):
        data = payload(200003)
        upload = self.write_file("upload", data)
        reply = self.curl("--data-binary", "@" + upload, "-H", "Transfer-Encoding: chunked",
                          self.origin.url("/echo"))
        echo = json.loads(reply.stdout)
        self.assertEqual((echo["length"], echo["sha256"]), (len(data), sha256(data)), echo)

    def test_curl_put_upload_echoes_sha256(self):
        data = payload(70001)
        upload = self.write_file("upload", data)
        reply = self.curl("-T", upload, self.origin.url("/echo"))
        echo = json.loads(reply.stdout)
        self.assertEqual((echo["length"], echo["sha256"]), (len(data), sha256(data)), echo)

    def test_curl_connect_tunnel(self):
        """CONNECT as before: curl -p tunnels to the origin through the same mode."""
        path = self.file_path("tunnel")
        self.curl("-p", self.origin.url("/bytes/%d" % MEGABYTE), "-o", path)
        self.assert_body(self.read_file(path), MEGABYTE)

    def require_wget(self):
        if shutil.which("wget") is None:
            if os.environ.get("TINYPROXY_ALLOW_SKIP") == "1":
                self.skipTest("wget is not installed")
            self.fail("wget is required (or set TINYPROXY_ALLOW_SKIP=1 to skip)")

    def test_wget_fetches(self):
        self.require_wget()
        for size in (1000, MEGABYTE + 3):
            path = self.file_path("wget%d" % size)
            run = run_client(["wget", "-q", "-O", path, "--tries=1",
                              "--timeout=%d" % scaled(15), "-e", "use_proxy=yes",
                              "-e", "http_proxy=" + self.proxy.url,
                              self.origin.url("/bytes/%d" % size)])
            self.assertEqual(run.returncode, 0, run)
            self.assert_body(self.read_file(path), size, "wget size %d" % size)

    def test_wget_http_proxy_variable_fetches_chunked(self):
        self.require_wget()
        path = self.file_path("wget-chunked")
        run = run_client(["wget", "-q", "-O", path, "--tries=1", "--timeout=%d" % scaled(15),
                          self.origin.url("/chunked/%d" % 500000)],
                         env=clean_environment(http_proxy=self.proxy.url))
        self.assertEqual(run.returncode, 0, run)
        self.assert_body(self.read_file(path), 500000)

    def urllib_opener(self, handlers=()):
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": self.proxy.url}), *handlers)

    def test_urllib_proxy_handler_fetches(self):
        opener = self.urllib_opener()
        for path, size in (("/bytes/%d" % MEGABYTE, MEGABYTE), ("/chunked/77777", 77777)):
            with opener.open(self.origin.url(path), timeout=scaled(15)) as reply:
                self.assertEqual(reply.status, 200)
                self.assert_body(reply.read(), size, path)
        with opener.open(self.origin.url("/headers"), timeout=scaled(15)) as reply:
            self.assert_via(self.origin_headers(reply.read()))

    def test_urllib_post_echoes_sha256(self):
        data = payload(300007)
        request = urllib.request.Request(self.origin.url("/echo"), data=data, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        with self.urllib_opener().open(request, timeout=scaled(15)) as reply:
            echo = json.loads(reply.read())
        self.assertEqual((echo["length"], echo["sha256"]), (len(data), sha256(data)), echo)


def num_connects(run):
    """curl -w '%{num_connects} %{http_code}\\n' output, as [(connects, code)] per URL."""
    return [tuple(int(field) for field in line.split())
            for line in run.stdout.decode().splitlines() if line.strip()]


class KeepAlive(PolicyTestCase):
    """Persistent connections: curl's several URLs in one run reuse one client connection, the
    origin sees one upstream connection for same-origin requests, alternating origins still
    get the right bodies, and one raw connection survives every kind of response framing."""

    WRITE_OUT = "%{num_connects} %{http_code}\n"

    def curl_many(self, urls):
        """One curl run fetching every URL (bodies to files); ([(connects, code)], [bodies])."""
        args = []
        paths = []
        for index, url in enumerate(urls):
            paths.append(self.file_path("many%d" % index))
            args += [url, "-o", paths[-1]]
        run = self.curl("-w", self.WRITE_OUT, *args)
        return num_connects(run), [self.read_file(path) for path in paths]

    @ours_only
    def test_several_urls_reuse_one_client_connection(self):
        sizes = (1000, MEGABYTE, 5, 65536)
        connects, bodies = self.curl_many(
            [self.origin.url("/bytes/%d" % size) for size in sizes])
        for size, body in zip(sizes, bodies):
            self.assert_body(body, size, "size %d" % size)
        self.assertEqual(connects, [(1, 200)] + [(0, 200)] * (len(sizes) - 1),
                         "curl connected to the proxy more than once")

    @ours_only
    def test_verbose_curl_reports_reuse(self):
        run = self.curl("-v", self.origin.url("/bytes/10"), "-o", os.devnull,
                        self.origin.url("/bytes/20"), "-o", os.devnull,
                        self.origin.url("/chunked/30"), "-o", os.devnull)
        log = run.stderr.decode(errors="replace")
        self.assertEqual(log.count("Re-using existing connection"), 2, log)

    @ours_only
    def test_same_origin_requests_share_one_upstream_connection(self):
        before = self.origin.connections
        connects, bodies = self.curl_many([self.origin.url("/conn")] * 3
                                          + [self.origin.url("/chunked/4000"),
                                             self.origin.url("/conn")])
        seen = [json.loads(bodies[i]) for i in (0, 1, 2, 4)]
        self.assert_body(bodies[3], 4000)
        self.assertEqual(connects, [(1, 200)] + [(0, 200)] * 4)
        # At most one new connection: a proxy may also reuse one an earlier test left open.
        self.assertLessEqual(self.origin.connections - before, 1,
                             "the proxy opened %d upstream connections for 5 requests: %r"
                             % (self.origin.connections - before, seen))
        first = seen[0]["request"]
        self.assertEqual([entry["request"] for entry in seen],
                         [first, first + 1, first + 2, first + 4], seen)
        self.assertEqual(len({entry["connection"] for entry in seen}), 1, seen)

    def test_two_origins_alternated_in_one_run(self):
        urls = []
        expected = []
        for turn in range(3):
            for origin, size in ((self.origin, 3000 + turn), (self.other_origin, 50000 + turn)):
                urls.append(origin.url("/bytes/%d" % size))
                expected.append(size)
        urls.append(self.other_origin.url("/conn"))
        connects, bodies = self.curl_many(urls)
        for size, body in zip(expected, bodies):
            self.assert_body(body, size, "size %d" % size)
        self.assertEqual(json.loads(bodies[-1])["origin"], "B")
        self.assertEqual([code for _, code in connects], [200] * len(urls))
        if self.ours:
            self.assertEqual([count for count, _ in connects], [1] + [0] * (len(urls) - 1),
                             "curl did not reuse its connection to the proxy")

    @ours_only
    def test_one_raw_connection_through_every_framing(self):
        """HEAD, 204 and 304 have no body (the 304 even names a Content-Length), chunked and
        fixed-length bodies end where they say: one client and one upstream connection carry
        them all, in order."""
        before = self.origin.connections
        conn = self.raw()
        host = self.origin.authority
        steps = (("GET", "/chunked/70000"), ("HEAD", "/bytes/%d" % MEGABYTE),
                 ("GET", "/status/204"), ("GET", "/status/304"), ("GET", "/bytes/1000"),
                 ("HEAD", "/chunked/10"), ("GET", "/conn"))
        replies = []
        for method, path in steps:
            conn.send(b"%s http://%s%s HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (method.encode(), host.encode(), path.encode(), host.encode()))
            replies.append(conn.read_response(method))
        self.assertEqual([reply.status for reply in replies],
                         [200, 200, 204, 304, 200, 200, 200], conn.transcript())
        self.assert_body(replies[0].body, 70000)
        self.assertEqual(replies[1].body, b"")
        self.assertEqual(replies[1].header("Content-Length"), str(MEGABYTE))
        self.assert_body(replies[4].body, 1000)
        self.assertGreaterEqual(replies[6].json()["request"], len(steps), replies[6])
        self.assertLessEqual(self.origin.connections - before, 1, conn.transcript())

    def test_origin_closing_after_a_response_is_reconnected(self):
        """An origin that answers `Connection: close` ends that upstream connection, not the
        run: the next requests to it still succeed."""
        urls = [self.origin.url(path) for path in
                ("/bytes-close/100", "/bytes/200", "/bytes-close/300", "/bytes-close/400",
                 "/chunked/500")]
        connects, bodies = self.curl_many(urls)
        self.assertEqual([code for _, code in connects], [200] * len(urls))
        for size, body in zip((100, 200, 300, 400, 500), bodies):
            self.assert_body(body, size, "size %d" % size)

    @ours_only
    def test_origin_idle_timeout_between_requests(self):
        """The origin closes an idle upstream connection on its own (as nginx's keepalive_timeout
        does) between two requests of one client connection: the second request is still
        answered (on a new upstream connection), not refused."""
        origin = Origin("idle", idle_timeout=0.2)
        self.addCleanup(origin.close)
        conn = self.raw()
        replies = []
        for turn in range(2):
            conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (origin.url("/conn").encode(), origin.authority.encode()))
            replies.append(conn.read_response())
            self.assertEqual(replies[-1].status, 200, conn.transcript())
            if turn == 0:
                time.sleep(0.6)  # the origin has closed its side by now
        self.assertEqual([r.json()["connection"] for r in replies], [1, 2], conn.transcript())

    def test_parallel_keep_alive_clients(self):
        """Twelve clients at once, each sending five requests on its own connection (Python's
        http.client, absolute-form through the proxy): every body right."""
        failures = []

        def client(index):
            try:
                conn = http.client.HTTPConnection(self.proxy.host, self.proxy.port,
                                                  timeout=scaled(10))
                try:
                    for turn in range(5):
                        size = 1000 * index + 17 * turn + (MEGABYTE if turn == 2 else 0)
                        origin = self.origin if (index + turn) % 2 else self.other_origin
                        try:
                            conn.request("GET", origin.url("/bytes/%d" % size))
                            reply = conn.getresponse()
                        except http.client.RemoteDisconnected:
                            # The daemon closes after each response without saying so; a
                            # client then retries. Ours must keep the connection.
                            if self.ours:
                                raise
                            conn.close()
                            conn.request("GET", origin.url("/bytes/%d" % size))
                            reply = conn.getresponse()
                        body = reply.read()
                        if reply.status != 200 or sha256(body) != sha256(payload(size)):
                            failures.append((index, turn, reply.status, len(body)))
                finally:
                    conn.close()
            except Exception as error:  # noqa: BLE001 - reported below with its client
                failures.append((index, repr(error)))

        threads = [threading.Thread(target=client, args=(index,)) for index in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(scaled(30))
        self.assertEqual(failures, [])

    @ours_only
    def test_every_bodiless_response_then_another_origin(self):
        """After a response with no body (Content-Length: 0, HEAD, 204, 304, an empty chunked
        one) the exchange is over: a request to another origin on the same client connection
        is answered."""
        for method, path in (("GET", "/bytes/0"), ("HEAD", "/bytes/100"), ("GET", "/status/204"),
                             ("GET", "/status/304"), ("GET", "/chunked/0"), ("GET", "/bytes/1")):
            conn = self.raw()
            conn.send(b"%s %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (method.encode(), self.origin.url(path).encode(),
                         self.origin.authority.encode()))
            first = conn.read_response(method)
            conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (self.other_origin.url("/bytes/17").encode(),
                         self.other_origin.authority.encode()))
            second = conn.read_response()
            self.assertEqual((first.status, second.status), (first.status, 200),
                             "%s %s: %s" % (method, path, conn.transcript()))
            self.assert_body(second.body, 17, "after %s %s" % (method, path))

    @ours_only
    def test_slow_reader_gets_every_byte(self):
        """The client reads nothing for a while as 8 MB come: the proxy holds back (it must not
        drop or reorder), then every byte arrives and the connection serves the next request."""
        size = 8 * MEGABYTE
        conn = self.raw()
        conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                  % (self.origin.url("/bytes/%d" % size).encode(), self.origin.authority.encode()))
        time.sleep(0.3)
        reply = conn.read_response()
        self.assertEqual(reply.status, 200)
        self.assert_body(reply.body, size)
        conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                  % (self.origin.url("/bytes/5").encode(), self.origin.authority.encode()))
        self.assert_body(conn.read_response().body, 5)

    def test_client_leaving_mid_response(self):
        """A client that closes while 8 MB are coming costs only its own connection: the next
        client is served by the same origin."""
        conn = RawConnection(self.proxy.address)
        conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                  % (self.origin.url("/bytes/%d" % (8 * MEGABYTE)).encode(),
                     self.origin.authority.encode()))
        while len(conn.received) < 100000:
            conn._fill()
        conn.close()
        path = self.file_path("after")
        self.curl(self.origin.url("/bytes/%d" % MEGABYTE), "-o", path)
        self.assert_body(self.read_file(path), MEGABYTE)

    @ours_only
    def test_client_half_close_after_its_request(self):
        """`printf 'GET ...' | nc -N`: the client shuts down its sending side after the request;
        the response still comes."""
        conn = self.raw()
        conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                  % (self.origin.url("/bytes/50000").encode(), self.origin.authority.encode()))
        conn.sock.shutdown(socket.SHUT_WR)
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assert_body(reply.body, 50000)

    @ours_only
    def test_another_origin_gets_its_own_upstream_connection(self):
        before_a, before_b = self.origin.connections, self.other_origin.connections
        conn = self.raw()
        for origin in (self.origin, self.other_origin, self.origin):
            conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (origin.url("/conn").encode(), origin.authority.encode()))
            reply = conn.read_response()
            self.assertEqual(reply.status, 200, conn.transcript())
            self.assertEqual(reply.json()["origin"], origin.server.name, conn.transcript())
        self.assertEqual(self.other_origin.connections - before_b, 1)
        self.assertIn(self.origin.connections - before_a, (1, 2))


class RawProtocol(ProxyTestCase):
    """Bytes on one socket: pipelined requests answered in order, hop-by-hop headers dropped,
    Via added, Host rewritten to the target, smuggling attempts refused with 400, https://
    absolute-form 501, a refused origin 502."""

    def request(self, target_path, method="GET", headers=(), body=b"", origin=None):
        origin = origin or self.origin
        lines = [b"%s %s HTTP/1.1" % (method.encode(), origin.url(target_path).encode()),
                 b"Host: " + origin.authority.encode()]
        lines += [header.encode() for header in headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    @ours_only
    def test_many_pipelined_requests_answered_in_order(self):
        conn = self.raw()
        sizes = [(index * 7919) % 20000 for index in range(40)]
        conn.send(b"".join(self.request("/bytes/%d" % size) for size in sizes))
        for size in sizes:
            reply = conn.read_response()
            self.assertEqual(reply.status, 200, conn.transcript())
            self.assert_body(reply.body, size, "pipelined size %d" % size)

    @ours_only
    def test_pipelined_requests_to_two_origins(self):
        conn = self.raw()
        plan = [(self.origin, 100), (self.other_origin, 200), (self.other_origin, 300),
                (self.origin, 400), (self.other_origin, 500)]
        conn.send(b"".join(self.request("/bytes/%d" % size, origin=origin)
                           for origin, size in plan))
        for origin, size in plan:
            reply = conn.read_response()
            self.assertEqual(reply.status, 200, conn.transcript())
            self.assert_body(reply.body, size, "%s %d" % (origin.server.name, size))

    def test_head_and_body_in_small_pieces(self):
        """A head split mid-line and a body written a few bytes at a time, with pauses: the
        request is whole at the origin."""
        conn = self.raw()
        body = payload(3000)
        message = self.request("/echo", "POST", ["Content-Length: %d" % len(body)], body)
        cuts = [0, 7, 30, len(message) - len(body) - 3, len(message) - len(body)]
        cuts += list(range(len(message) - len(body) + 500, len(message), 500)) + [len(message)]
        for start, end in zip(cuts, cuts[1:]):
            conn.send(message[start:end])
            time.sleep(0.01)
        reply = conn.read_response("POST")
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assertEqual(reply.json()["sha256"], sha256(body), reply)

    def test_slowly_written_response(self):
        conn = self.raw()
        conn.send(self.request("/drip/100000") + self.request("/bytes/10"))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assert_body(reply.body, 100000)
        if self.ours:
            self.assert_body(conn.read_response().body, 10)

    @ours_only
    def test_pipelined_chunked_upload_then_get(self):
        conn = self.raw()
        body = payload(9000)
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[at:at + 1234]), body[at:at + 1234])
                           for at in range(0, len(body), 1234)) + b"0\r\n\r\n"
        conn.send(self.request("/echo", "POST", ["Transfer-Encoding: chunked"], chunked)
                  + self.request("/bytes/321") + self.request("/echo", "PUT",
                                                            ["Content-Length: 3"], b"abc"))
        replies = [conn.read_response(m) for m in ("POST", "GET", "PUT")]
        self.assertEqual([r.status for r in replies], [200, 200, 200], conn.transcript())
        self.assertEqual(replies[0].json()["sha256"], sha256(body), replies[0])
        self.assert_body(replies[1].body, 321)
        self.assertEqual(replies[2].json()["sha256"], sha256(b"abc"), replies[2])

    def test_chunk_extensions_and_trailer_pass(self):
        conn = self.raw()
        conn.send(self.request("/chunked-ext/70001"))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assert_body(reply.body, 70001)
        path = self.file_path("ext")
        self.curl(self.origin.url("/chunked-ext/12345"), "-o", path)
        self.assert_body(self.read_file(path), 12345)

    @ours_only
    def test_early_hints_then_the_response(self):
        conn = self.raw()
        conn.send(self.request("/early-hints/5000") + self.request("/bytes/6"))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assert_body(reply.body, 5000)
        self.assertIn(b"HTTP/1.1 103 ", bytes(conn.received), conn.transcript())
        reply = conn.read_response()
        self.assert_body(reply.body, 6)
        path = self.file_path("hints")
        self.curl(self.origin.url("/early-hints/7000"), "-o", path)
        self.assert_body(self.read_file(path), 7000)

    def test_large_request_header_passes(self):
        cookie = "c=" + "x" * 6000
        conn = self.raw()
        conn.send(self.request("/headers", headers=["Cookie: " + cookie]))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        seen = {name.lower(): value for name, value in reply.json()["headers"]}
        self.assertEqual(seen.get("cookie"), cookie)

    @ours_only
    def test_other_schemes_are_refused(self):
        for scheme in ("ftp", "ws"):
            marker = "scheme=" + scheme
            conn = self.raw()
            conn.send(b"GET %s://%s/headers?%s HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (scheme.encode(), self.origin.authority.encode(), marker.encode(),
                         self.origin.authority.encode()))
            reply = conn.read_response()
            self.assertIn(reply.status, (400, 501), conn.transcript())
            self.assertEqual(self.requests_to(self.origin, marker), [], conn.transcript())

    @ours_only
    def test_origin_form_request_to_the_proxy_is_refused(self):
        """`GET /path` names no origin: the proxy cannot forward it (and must not loop to
        itself)."""
        conn = self.raw()
        conn.send(b"GET /headers?originform=1 HTTP/1.1\r\nHost: %s\r\n\r\n"
                  % self.proxy.address.encode())
        reply = conn.read_response()
        self.assertGreaterEqual(reply.status, 400, conn.transcript())
        self.assertLess(reply.status, 500, conn.transcript())

    def test_ipv6_origin(self):
        """An IPv6 literal target: the origin is reached, and Host names it in brackets."""
        try:
            origin = Origin("v6", host="::1")
        except OSError:
            self.skipTest("no IPv6 loopback")
        self.addCleanup(origin.close)
        conn = self.raw()
        conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                  % (origin.url("/headers").encode(), origin.authority.encode()))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        hosts = [value for name, value in reply.json()["headers"] if name.lower() == "host"]
        self.assertEqual(hosts, [origin.authority], conn.transcript())
        path = self.file_path("v6")
        self.curl(origin.url("/bytes/4096"), "-o", path)
        self.assert_body(self.read_file(path), 4096)

    @ours_only
    def test_unresolvable_host_is_502(self):
        conn = self.raw()
        conn.send(b"GET http://nosuch.invalid/ HTTP/1.1\r\nHost: nosuch.invalid\r\n\r\n")
        reply = conn.read_response()
        self.assertEqual(reply.status, 502, conn.transcript())
        self.assertTrue(reply.body, conn.transcript())

    @ours_only
    def test_max_forwards_zero_trace_is_answered_by_the_proxy(self):
        conn = self.raw()
        conn.send(self.request("/headers?trace=0", "TRACE", ["Max-Forwards: 0"]))
        reply = conn.read_response("TRACE")
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assertIn(b"TRACE ", reply.body, conn.transcript())
        self.assertEqual(self.requests_to(self.origin, "trace=0"), [], conn.transcript())
        conn.send(self.request("/bytes/9"))  # the connection is kept
        self.assert_body(conn.read_response().body, 9)

    @ours_only
    def test_connection_close_from_the_client_closes_after_the_response(self):
        conn = self.raw()
        conn.send(self.request("/bytes/500", headers=["Connection: close"]))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assert_body(reply.body, 500)
        self.assertTrue(conn.closed_by_peer(), conn.transcript())

    @ours_only
    def test_hop_by_hop_response_headers_do_not_reach_the_client(self):
        conn = self.raw()
        conn.send(self.request("/hop-response"))
        reply = conn.read_response()
        self.assertEqual((reply.status, reply.body), (200, b"ok"), conn.transcript())
        self.assertIsNone(reply.header("X-Origin-Hop"), conn.transcript())
        self.assertIsNone(reply.header("Keep-Alive"), conn.transcript())
        self.assertEqual(reply.header("X-End-To-End"), "1", conn.transcript())
        if self.ours:
            self.assertEqual(reply.all("Via"), [OUR_VIA], conn.transcript())

    @ours_only
    def test_expect_100_continue_passes_through(self):
        """The client waits for the origin's 100 Continue before it sends the body."""
        conn = self.raw()
        body = payload(4097)
        conn.send(self.request("/echo", "POST", ["Content-Length: %d" % len(body),
                                                 "Expect: 100-continue"]))
        conn.sock.settimeout(scaled(5))
        interim = conn._line()
        self.assertRegex(interim, rb"^HTTP/1\.1 100 ", conn.transcript())
        while conn._line():
            pass
        conn.send(body)
        reply = conn.read_response("POST")
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assertEqual(reply.json()["sha256"], sha256(body), reply)

    @ours_only
    def test_pipelined_requests_answered_in_order(self):
        conn = self.raw()
        body = payload(5000)
        conn.send(self.request("/bytes/100") + self.request("/conn")
                  + self.request("/echo", "POST", ["Content-Length: %d" % len(body)], body)
                  + self.request("/chunked/3333") + self.request("/bytes/7", "HEAD")
                  + self.request("/bytes/20000"))
        replies = [conn.read_response(method)
                   for method in ("GET", "GET", "POST", "GET", "HEAD", "GET")]
        self.assertEqual([r.status for r in replies], [200] * 6, conn.transcript())
        self.assert_body(replies[0].body, 100)
        self.assertEqual(replies[1].json()["origin"], "A")
        self.assertEqual(replies[2].json()["sha256"], sha256(body), replies[2])
        self.assert_body(replies[3].body, 3333)
        self.assertEqual(replies[4].body, b"")
        self.assert_body(replies[5].body, 20000)

    def test_hop_by_hop_headers_do_not_reach_the_origin(self):
        conn = self.raw()
        conn.send(self.request("/headers", headers=[
            "Proxy-Connection: keep-alive", "Connection: foo, Keep-Alive", "Foo: secret",
            "Keep-Alive: timeout=300", "TE: trailers", "Upgrade: h2c", "X-Kept: yes"]))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        received = {name.lower(): value for name, value in reply.json()["headers"]}
        for dropped in ("proxy-connection", "foo", "keep-alive", "te", "upgrade"):
            self.assertNotIn(dropped, received, "%s reached the origin: %r"
                             % (dropped, conn.transcript()))
        self.assertNotIn("foo", received.get("connection", "").lower(), received)
        self.assertEqual(received.get("x-kept"), "yes", received)
        self.assert_via(reply.json()["headers"], conn.transcript())

    @ours_only
    def test_proxy_authorization_does_not_reach_the_origin(self):
        conn = self.raw()
        conn.send(self.request("/headers", headers=["Proxy-Authorization: Basic dTpw"]))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        names = [name.lower() for name, _ in reply.json()["headers"]]
        self.assertNotIn("proxy-authorization", names, conn.transcript())

    def test_host_is_rewritten_to_the_target_and_origin_form_sent(self):
        conn = self.raw()
        conn.send(b"GET %s HTTP/1.1\r\nHost: wrong.example:99\r\n\r\n"
                  % self.origin.url("/headers?a=1&b=%20x").encode())
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        seen = reply.json()
        hosts = [value for name, value in seen["headers"] if name.lower() == "host"]
        self.assertEqual(hosts, [self.origin.authority], conn.transcript())
        self.assertEqual(seen["request_line"], "GET /headers?a=1&b=%20x HTTP/1.1",
                         conn.transcript())

    def test_http_1_0_request_without_host_gets_one(self):
        conn = self.raw()
        conn.send(b"GET %s HTTP/1.0\r\n\r\n" % self.origin.url("/headers").encode())
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        hosts = [value for name, value in reply.json()["headers"] if name.lower() == "host"]
        self.assertEqual(hosts, [self.origin.authority], conn.transcript())

    @ours_only
    def test_http_1_1_request_without_host_is_400(self):
        """RFC 9112 section 3.2: an HTTP/1.1 request without Host gets 400, even absolute-form."""
        self.assert_refused(b"GET %s HTTP/1.1\r\n\r\n"
                            % self.origin.url("/headers?nohost=1").encode(), "nohost=1")

    @ours_only
    def test_two_host_fields_are_400(self):
        self.assert_refused(self.request("/headers?twohosts=1", headers=["Host: other:1"]),
                            "twohosts=1")

    def assert_refused(self, request, marker, status=400):
        """`request` gets `status` and never reaches the origin (no request line holding
        `marker`)."""
        conn = self.raw()
        conn.send(request)
        reply = conn.read_response()
        self.assertEqual(reply.status, status, conn.transcript())
        self.assertTrue(reply.body, "no short body with the %d: %s" % (status, conn.transcript()))
        time.sleep(0.05)  # a request wrongly forwarded would have reached the origin by now
        self.assertEqual(self.requests_to(self.origin, marker), [], conn.transcript())
        return conn

    @ours_only
    def test_content_length_with_transfer_encoding_is_400(self):
        self.assert_refused(self.request("/echo?smuggle=clte", "POST", [
            "Content-Length: 5", "Transfer-Encoding: chunked"], b"0\r\n\r\nGET /x HTTP/1.1\r\n"),
            "smuggle=clte")

    @ours_only
    def test_differing_content_lengths_are_400(self):
        self.assert_refused(self.request("/echo?smuggle=clcl", "POST", [
            "Content-Length: 5", "Content-Length: 6"], b"hello!"), "smuggle=clcl")

    @ours_only
    def test_repeated_content_length_is_400(self):
        self.assert_refused(self.request("/echo?smuggle=cl2", "POST", [
            "Content-Length: 5", "Content-Length: 5"], b"hello"), "smuggle=cl2")

    @ours_only
    def test_content_length_list_is_400(self):
        self.assert_refused(self.request("/echo?smuggle=cllist", "POST", [
            "Content-Length: 5, 5"], b"hello"), "smuggle=cllist")

    @ours_only
    def test_obs_fold_is_400(self):
        self.assert_refused(self.request("/headers?smuggle=fold", headers=[
            "X-Folded: first", " second"]), "smuggle=fold")

    @ours_only
    def test_transfer_encoding_not_ending_in_chunked_is_400(self):
        """RFC 9112 section 6.3: a request whose final transfer coding is not chunked has no
        reliable length."""
        self.assert_refused(self.request("/echo?smuggle=gzip", "POST", [
            "Transfer-Encoding: gzip"], b"hello"), "smuggle=gzip")

    @ours_only
    def test_whitespace_before_the_colon_is_400(self):
        """RFC 9112 section 5.1: `Transfer-Encoding : chunked` must be rejected, not guessed."""
        self.assert_refused(self.request("/echo?smuggle=space", "POST", [
            "Content-Length: 5", "Transfer-Encoding : chunked"], b"0\r\n\r\n"), "smuggle=space")

    @ours_only
    def test_malformed_content_length_is_400(self):
        for value in ("+5", "5x", "0x5", "-1"):
            self.assert_refused(self.request("/echo?smuggle=cl%s" % value, "POST", [
                "Content-Length: " + value], b"hello"), "smuggle=cl%s" % value)

    @ours_only
    def test_huge_target_is_414(self):
        self.assert_refused(self.request("/headers?huge=" + "a" * 100000), "huge=", 414)

    @ours_only
    def test_huge_header_is_431(self):
        self.assert_refused(self.request("/headers?bighead=1", headers=["X-Big: " + "b" * 100000]),
                            "bighead=1", 431)

    @ours_only
    def test_too_many_header_fields_is_431(self):
        self.assert_refused(self.request("/headers?manyfields=1", headers=[
            "X-F%d: %d" % (index, index) for index in range(2000)]), "manyfields=1", 431)

    @ours_only
    def test_invalid_chunk_size_is_400(self):
        """The head is valid, so the proxy may forward it before it reads the bad chunk; it must
        answer 400 (not forward a body it cannot frame)."""
        conn = self.raw()
        conn.send(self.request("/echo?smuggle=chunk", "POST", ["Transfer-Encoding: chunked"],
                               b"zz\r\nhello\r\n0\r\n\r\n"))
        try:
            reply = conn.read_response()
        except AssertionError as error:
            time.sleep(0.1)  # what the proxy forwarded has reached the origin by now
            raise AssertionError("%s; the origin saw %r"
                                 % (error, self.requests_to(self.origin, "smuggle=chunk")))
        self.assertEqual(reply.status, 400, conn.transcript())

    @ours_only
    def test_https_absolute_form_is_501(self):
        self.assert_refused(b"GET https://%s/headers?scheme=https HTTP/1.1\r\nHost: %s\r\n\r\n"
                            % (self.origin.authority.encode(), self.origin.authority.encode()),
                            "scheme=https", 501)

    def test_refused_origin_is_502(self):
        port = refused_port()
        conn = self.raw()
        conn.send(b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                  % (port, port))
        reply = conn.read_response()
        if self.ours:
            self.assertEqual(reply.status, 502, conn.transcript())
            self.assertTrue(reply.body, conn.transcript())
        else:
            self.assertGreaterEqual(reply.status, 500, conn.transcript())

    def test_curl_sees_502_for_a_refused_origin(self):
        run = self.curl("-o", os.devnull, "-w", "%{http_code}",
                        "http://127.0.0.1:%d/" % refused_port())
        if self.ours:
            self.assertEqual(run.stdout, b"502", run)
        else:
            self.assertTrue(run.stdout.startswith(b"5"), run)

    @ours_only
    def test_after_a_502_the_connection_still_serves(self):
        """A refused origin ends that request, not necessarily the client's connection: when the
        proxy keeps it open, the next request on it is served."""
        port = refused_port()
        conn = self.raw()
        conn.send(b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                  % (port, port))
        reply = conn.read_response()
        self.assertEqual(reply.status, 502, conn.transcript())
        if (reply.header("Connection") or "").lower() == "close":
            return
        conn.send(self.request("/bytes/10"))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assert_body(reply.body, 10)

    @ours_only
    def test_max_forwards_zero_options_is_answered_by_the_proxy(self):
        conn = self.raw()
        conn.send(self.request("/headers?maxfwd=0", "OPTIONS", ["Max-Forwards: 0"]))
        reply = conn.read_response("OPTIONS")
        self.assertIn(reply.status, (200, 204), conn.transcript())
        self.assertEqual(self.requests_to(self.origin, "maxfwd=0"), [], conn.transcript())

    @ours_only
    def test_max_forwards_is_decremented(self):
        conn = self.raw()
        conn.send(self.request("/headers?maxfwd=5", "OPTIONS", ["Max-Forwards: 5"]))
        reply = conn.read_response("OPTIONS")
        self.assertEqual(reply.status, 200, conn.transcript())
        seen = {name.lower(): value for name, value in reply.json()["headers"]}
        self.assertEqual(seen.get("max-forwards"), "4", conn.transcript())

    def test_http_1_0_client_is_served(self):
        conn = self.raw()
        conn.send(b"GET %s HTTP/1.0\r\n\r\n" % self.origin.url("/bytes/2048").encode())
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assert_body(reply.body, 2048)
        # HTTP/1.0 without `Connection: keep-alive` is one request per connection.
        self.assertTrue(conn.closed_by_peer(), conn.transcript())


class ProxyAuth(ProxyTestCase):
    """--user: 407 with `Proxy-Authenticate: Basic realm="tinyproxy"` without (or with wrong)
    credentials, 200 with them, and the credentials never reach the origin."""

    user = "user:pass"

    def assert_auth_refused(self, status, what):
        """407 from ours; the daemon (1.11) answers a request without credentials 407 and one
        with wrong credentials 401 (its quirk)."""
        self.assertIn(status, (407,) if self.ours else (401, 407), what)

    def test_curl_without_credentials_gets_407(self):
        run = self.curl("-D", "-", "-o", os.devnull, self.origin.url("/bytes/10?t=noauth"))
        head = run.stdout.decode()
        self.assertRegex(head, r"^HTTP/1\.[01] 407 ", head)
        challenge = [line.split(":", 1)[1].strip() for line in head.splitlines()
                     if line.lower().startswith("proxy-authenticate:")]
        self.assertTrue(challenge and challenge[0].startswith("Basic"), head)
        if self.ours:
            self.assertEqual(challenge, [REALM], head)
        self.assertEqual(self.requests_to(self.origin, "t=noauth"), [])

    def test_curl_with_wrong_credentials_gets_407(self):
        run = self.curl("-U", "user:wrong", "-o", os.devnull, "-w", "%{http_code}",
                        self.origin.url("/bytes/10?t=wrongauth"))
        self.assert_auth_refused(int(run.stdout), run)
        self.assertEqual(self.requests_to(self.origin, "t=wrongauth"), [])

    def test_curl_with_credentials_gets_200(self):
        path = self.file_path("authed")
        run = self.curl("-U", "user:pass", "-o", path, "-w", "%{http_code}",
                        self.origin.url("/bytes/%d" % MEGABYTE))
        self.assertEqual(run.stdout, b"200", run)
        self.assert_body(self.read_file(path), MEGABYTE)

    def test_credentials_in_http_proxy_variable(self):
        env = clean_environment(http_proxy="http://user:pass@%s" % self.proxy.address)
        run = self.curl("-o", os.devnull, "-w", "%{http_code}", self.origin.url("/bytes/10"),
                        env=env, proxy=False)
        self.assertEqual(run.stdout, b"200", run)

    def test_credentials_do_not_reach_the_origin(self):
        run = self.curl("-U", "user:pass", self.origin.url("/headers"))
        names = [name.lower() for name, _ in self.origin_headers(run.stdout)]
        self.assertNotIn("proxy-authorization", names, run.stdout)

    def test_keep_alive_with_credentials(self):
        run = self.curl("-U", "user:pass", "-w", "%{num_connects} %{http_code}\n",
                        self.origin.url("/bytes/100"), "-o", os.devnull,
                        self.origin.url("/bytes/200"), "-o", os.devnull)
        codes = num_connects(run)
        self.assertEqual([code for _, code in codes], [200, 200], run)
        if self.ours:
            self.assertEqual([count for count, _ in codes], [1, 0], run)

    def test_raw_407_then_credentials_on_the_same_connection(self):
        conn = self.raw()
        target = self.origin.url("/bytes/33").encode()
        host = self.origin.authority.encode()
        conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host))
        reply = conn.read_response()
        self.assertEqual(reply.status, 407, conn.transcript())
        if (reply.header("Connection") or "").lower() == "close" or conn.closed_by_peer(0.2):
            conn = self.raw()  # the proxy may close after a 407; the client then reconnects
        token = base64.b64encode(b"user:pass")
        conn.send(b"GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n"
                  % (target, host, token))
        reply = conn.read_response()
        self.assertEqual(reply.status, 200, conn.transcript())
        self.assert_body(reply.body, 33)


class AutoMode(PolicyTestCase):
    """No mode flag (the default, --auto): one port serves HTTP forwarding, CONNECT, SOCKS5
    (with and without remote names), SOCKS4a and SOCKS4 to the same origin."""

    mode = None

    def fetch_through(self, *proxy_args, size=100003, proxy_url=None):
        path = self.file_path("auto")
        command = ["curl", "-sS", "--max-time", str(scaled(15))] + list(proxy_args)
        run = run_client(command + ["-o", path, self.origin.url("/bytes/%d" % size)])
        self.assertEqual(run.returncode, 0, run)
        self.assert_body(self.read_file(path), size, " ".join(proxy_args))

    def test_http_forwarding(self):
        self.fetch_through("-x", self.proxy.url)
        reply = self.curl(self.origin.url("/headers"))
        self.assert_via(self.origin_headers(reply.stdout))

    def test_http_connect_tunnel(self):
        self.fetch_through("-p", "-x", self.proxy.url)

    def test_socks5_hostname(self):
        self.fetch_through("--socks5-hostname", self.proxy.address)

    def test_socks5(self):
        self.fetch_through("--socks5", self.proxy.address)

    def test_socks4a(self):
        self.fetch_through("--socks4a", self.proxy.address)

    def test_socks4(self):
        self.fetch_through("--socks4", self.proxy.address)

    def test_http_keep_alive(self):
        run = self.curl("-w", "%{num_connects} %{http_code}\n",
                        self.origin.url("/bytes/100"), "-o", os.devnull,
                        self.origin.url("/chunked/200"), "-o", os.devnull,
                        self.other_origin.url("/bytes/300"), "-o", os.devnull)
        self.assertEqual(num_connects(run), [(1, 200), (0, 200), (0, 200)], run)

    def test_explicit_auto_flag_serves_both(self):
        proxy = ProxyUnderTest(PROXY_KIND, PROXY_PATH, mode="--auto", policy=self.policy)
        try:
            self.fetch_through("-x", proxy.url, size=777)
            self.fetch_through("--socks5-hostname", proxy.address, size=778)
            self.fetch_through("--socks4a", proxy.address, size=779)
        finally:
            status = proxy.stop()
        self.assertEqual(status, 0, proxy.stderr_text())


class AutoModeAuth(ProxyTestCase):
    """No mode flag with --user: HTTP clients need Basic credentials (407 without), SOCKS5
    clients the username/password method; both reach the origin with them."""

    mode = None
    user = "user:pass"

    def fetch(self, *args):
        command = ["curl", "-sS", "--max-time", str(scaled(15)), "-o", os.devnull,
                   "-w", "%{http_code}"] + list(args) + [self.origin.url("/bytes/1000")]
        return run_client(command)

    def test_http_without_credentials_gets_407(self):
        run = self.fetch("-x", self.proxy.url)
        self.assertEqual((run.returncode, run.stdout), (0, b"407"), run)

    def test_http_with_credentials(self):
        run = self.fetch("-x", self.proxy.url, "-U", "user:pass")
        self.assertEqual((run.returncode, run.stdout), (0, b"200"), run)

    def test_socks5_with_credentials(self):
        run = self.fetch("-x", "socks5h://user:pass@%s" % self.proxy.address)
        self.assertEqual((run.returncode, run.stdout), (0, b"200"), run)

    def test_socks5_without_credentials_fails(self):
        run = self.fetch("-x", "socks5h://%s" % self.proxy.address)
        self.assertNotEqual(run.returncode, 0, run)


class VerboseLog(ProxyTestCase):
    """--verbose: a session line per forwarded request names its method, target and status."""

    extra_args = ("--verbose",)

    @ours_only
    def test_session_line_names_method_target_and_status(self):
        self.curl(self.origin.url("/bytes/4321"), "-o", os.devnull)
        deadline = time.monotonic() + scaled(5)
        wanted = ("GET", str(self.origin.port), "200")
        while time.monotonic() < deadline:
            log = self.proxy.stderr_text()
            lines = [line for line in log.splitlines() if all(w in line for w in wanted)]
            if lines:
                return
            time.sleep(0.05)
        self.fail("no --verbose line with %r: %r" % (wanted, self.proxy.stderr_text()))

    @ours_only
    def test_a_line_for_every_request_on_a_connection(self):
        """Empty responses (Content-Length: 0, 204) end their exchange too: one line each."""
        paths = ("/bytes/9?verbose=1", "/status/204?verbose=2", "/bytes/0?verbose=3",
                 "/bytes/0?verbose=4")
        args = []
        for path in paths:
            args += [self.origin.url(path), "-o", os.devnull]
        self.curl(*args)
        deadline = time.monotonic() + scaled(5)
        while time.monotonic() < deadline:
            lines = [line for line in self.proxy.stderr_text().splitlines()
                     if "?verbose=" in line]
            if len(lines) >= len(paths):
                break
            time.sleep(0.05)
        self.assertEqual(sorted(line.split("?verbose=")[1][0] for line in lines),
                         ["1", "2", "3", "4"], self.proxy.stderr_text())


def main():
    global PROXY_KIND, PROXY_PATH, POLICY, RUN_OURS_ONLY
    argv = list(sys.argv)
    cli = take_argument(argv, "--cli")
    daemon = take_argument(argv, "--daemon")
    squid = take_argument(argv, "--squid")
    if "--all-tests" in argv:
        argv.remove("--all-tests")
        RUN_OURS_ONLY = True
    POLICY = take_argument(argv, "--policy")
    for name in PROXY_VARIABLES:
        os.environ.pop(name, None)  # urllib and curl see only the proxy a test names
    if daemon or squid:
        PROXY_KIND, PROXY_PATH = ("daemon", daemon) if daemon else ("squid", squid)
        if not os.access(PROXY_PATH, os.X_OK):
            missing("the %s %r is not executable" % (PROXY_KIND, PROXY_PATH))
    else:
        PROXY_PATH = cli or os.environ.get("TINYPROXY_CLI_PATH", "")
        if not (PROXY_PATH and os.access(PROXY_PATH, os.X_OK)):
            missing("the tinyproxy CLI is required (got %r): build the tinyproxy_cli target"
                    % PROXY_PATH)
    if shutil.which("curl") is None:
        missing("curl is required")
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
