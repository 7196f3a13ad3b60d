#!/usr/bin/env python3
"""Black-box tests of the CLI's Toxiproxy-compatible control API (`tinyproxy --api`), written
against Toxiproxy 2.12: api_test.go's cases over HTTP, toxics/*_test.go's as TCP checks through
a proxy the API created, link_test.go's TestNoDataDropped, and what issue 14 adds (the security
rules, bounded requests, metrics, a config file at start).

Our code, their assertions: where a case is a port, its docstring names the Toxiproxy test.
Where the project deliberately differs from Toxiproxy (README "Fault injection"), the test says
so and checks the project's documented behaviour.

    python3 tests/api/toxiproxy_api_test.py --cli build/dev/examples/tinyproxy [TestClass ...]

Standard library only. Each test class starts its own server; tests/api/CMakeLists.txt runs one
ctest test per class. A missing CLI fails (exit 77, skipped, with TINYPROXY_ALLOW_SKIP=1).
"""
import json
import os
import re
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from api_support import (ApiClient, ApiServer, free_port, require_cli, scaled,  # noqa: E402
                         split_address, take_cli_argument)
from tcp_support import (EchoUpstream, Upstream, assert_echo_response, can_connect,  # noqa: E402
                         connect, nothing_arrives, read_until_closed, recv_exact)

CLI = None  # set in main()

# The metric names the server exposes on GET /metrics (Prometheus text format 0.0.4), in one
# place so that a rename is one edit here.
METRIC_BYTES = "tinyproxy_proxy_bytes_total"  # labels: proxy, direction=upstream|downstream
METRIC_ACCEPTED = "tinyproxy_proxy_connections_accepted_total"  # label: proxy
METRIC_ACTIVE = "tinyproxy_proxy_connections_active"  # label: proxy

# Every attribute of each toxic type, as Toxiproxy's toxics/*.go name them in JSON.
TOXIC_ATTRIBUTES = {
    "latency": {"latency": 10, "jitter": 1},
    "bandwidth": {"rate": 100},
    "slow_close": {"delay": 10},
    "timeout": {"timeout": 10},
    "reset_peer": {"timeout": 10},
    "slicer": {"average_size": 64, "size_variation": 16, "delay": 10},
    "limit_data": {"bytes": 100},
}

STREAM_ERROR = "stream was invalid, can be either upstream or downstream"


class ApiTestCase(unittest.TestCase):
    """One server per class; every test starts with no proxy (Toxiproxy's WithServer clears the
    collection after each test) and the server must still answer when the class ends."""

    server_args = ()

    @classmethod
    def setUpClass(cls):
        cls.server = ApiServer(CLI, cls.server_args)
        cls.api = ApiClient(cls.server.host, cls.server.port)

    @classmethod
    def tearDownClass(cls):
        try:
            alive = cls.server.running() and cls.api.get("/version").status == 200
        except OSError:
            alive = False
        status = cls.server.stop()
        if not alive:
            raise AssertionError("the server died during the tests: " + cls.server.stderr_text())
        if status != 0:
            raise AssertionError("SIGTERM ended the server with %r, not 0: %s"
                                 % (status, cls.server.stderr_text()))

    def setUp(self):
        self.closers = []

    def tearDown(self):
        for close in reversed(self.closers):
            try:
                close()
            except OSError:
                pass
        reply = self.api.get("/proxies")
        if reply.status == 200:
            for name in reply.json():
                self.api.delete("/proxies/" + name)

    # --- helpers -----------------------------------------------------------------------------

    def keep(self, thing):
        """Closes `thing` (a socket or an upstream) when the test ends."""
        self.closers.append(thing.close)
        return thing

    def upstream(self):
        return self.keep(Upstream())

    def echo_upstream(self):
        return self.keep(EchoUpstream())

    def dial(self, address):
        return self.keep(connect(address))

    def create_proxy(self, name, upstream, listen="127.0.0.1:0", enabled=True):
        """POST /proxies as the Go client's CreateProxy sends it; the 201 reply's body."""
        reply = self.api.post("/proxies", {"name": name, "listen": listen, "upstream": upstream,
                                           "enabled": enabled, "toxics": None})
        self.assertEqual(reply.status, 201, reply)
        return reply.json()

    def add_toxic(self, proxy, type_name, stream="downstream", name="", toxicity=1.0,
                  attributes=None, expect=200):
        """POST /proxies/{proxy}/toxics as the Go client's AddToxic sends it (`stream` None
        leaves it out, as the client's omitempty does)."""
        body = {"name": name, "type": type_name, "toxicity": toxicity, "attributes": attributes}
        if stream is not None:
            body["stream"] = stream
        reply = self.api.post("/proxies/%s/toxics" % proxy, body)
        self.assertEqual(reply.status, expect, reply)
        return reply.json()

    def update_toxic(self, proxy, name, attributes, toxicity=None):
        """PATCH as the Go client's UpdateToxic (toxicity left out when None)."""
        body = {"attributes": attributes}
        if toxicity is not None:
            body["toxicity"] = toxicity
        reply = self.api.patch("/proxies/%s/toxics/%s" % (proxy, name), body)
        self.assertEqual(reply.status, 200, reply)
        return reply.json()

    def remove_toxic(self, proxy, name):
        reply = self.api.delete("/proxies/%s/toxics/%s" % (proxy, name))
        self.assertEqual(reply.status, 204, reply)

    def toxics(self, proxy):
        reply = self.api.get("/proxies/%s/toxics" % proxy)
        self.assertEqual(reply.status, 200, reply)
        return reply.json()

    def proxies(self):
        reply = self.api.get("/proxies")
        self.assertEqual(reply.status, 200, reply)
        return reply.json()

    def assert_api_error(self, reply, status, message=None, prefix=None):
        """An error reply: `status`, a JSON body {"error": message, "status": status}."""
        self.assertEqual(reply.status, status, reply)
        self.assertTrue(reply.header("Content-Type").startswith("application/json"), reply.headers)
        body = reply.json()
        self.assertEqual(body.get("status"), status, body)
        if message is not None:
            self.assertEqual(body.get("error"), message, body)
        if prefix is not None:
            self.assertTrue(str(body.get("error", "")).startswith(prefix), body)
        return body

    def assert_toxic_exists(self, toxics, name, type_name, stream, exists):
        """Toxiproxy's AssertToxicExists: with `exists`, a toxic `name` of that type and stream
        is listed; without, no toxic `name` is listed on `stream`."""
        found = [toxic for toxic in toxics if toxic["name"] == name]
        if exists:
            self.assertEqual(len(found), 1, toxics)
            self.assertEqual(found[0]["type"], type_name, found[0])
            self.assertEqual(found[0]["stream"], stream, found[0])
            return found[0]
        self.assertFalse([t for t in found if t["stream"] == stream], toxics)
        return None

    def assert_proxy_up(self, listen, up):
        """Toxiproxy's AssertProxyUp: a TCP connection to `listen` succeeds iff `up`."""
        self.assertEqual(can_connect(listen), up, "proxy at %s expected %s" %
                         (listen, "up" if up else "down"))


def localhost(port):
    return "localhost:%d" % port


def loopback(port):
    return "127.0.0.1:%d" % port


class ApiTest(ApiTestCase):
    """api_test.go, case by case (its fixed ports replaced by free ones)."""

    def test_request_id(self):
        """TestRequestId."""
        reply = self.api.get("/version", headers={"User-Agent": "curl"})
        self.assertEqual(reply.status, 200)
        self.assertIn("x-toxiproxy-request-id", reply.headers, reply.headers)

    def test_browser_gets_403(self):
        """TestBrowserGets403."""
        agent = ("Mozilla/5.0 (Linux; Android 4.4.2); Nexus 5 Build/KOT49H) AppleWebKit/537.36"
                 "(KHTML, like Gecko) Chrome/33.0.1750.117 Mobile Safari/537.36"
                 " OPR/20.0.1396.72047")
        reply = self.api.get("/proxies", headers={"User-Agent": agent})
        self.assertEqual(reply.status, 403, reply)

    def test_non_browser_gets_200(self):
        """TestNonBrowserGets200."""
        reply = self.api.get("/proxies", headers={"User-Agent": "Wget/2.1"})
        self.assertNotEqual(reply.status, 403, reply)
        self.assertEqual(reply.status, 200, reply)

    def test_index_with_no_proxies(self):
        """TestIndexWithNoProxies."""
        self.assertEqual(self.proxies(), {})

    def test_create_proxy_blank_name(self):
        """TestCreateProxyBlankName."""
        reply = self.api.post("/proxies", {"name": "", "listen": "", "upstream": "",
                                           "enabled": True, "toxics": None})
        self.assert_api_error(reply, 400, "missing required field: name")

    def test_create_proxy_blank_upstream(self):
        """TestCreateProxyBlankUpstream."""
        reply = self.api.post("/proxies", {"name": "test", "listen": "", "upstream": "",
                                           "enabled": True, "toxics": None})
        self.assert_api_error(reply, 400, "missing required field: upstream")

    def populate(self, entries, expect=201):
        reply = self.api.post("/populate", entries)
        self.assertEqual(reply.status, expect, reply)
        return reply.json()

    @staticmethod
    def entry(name, listen, upstream, enabled=True):
        """One proxy as the Go client's Populate sends it."""
        return {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled,
                "toxics": None}

    def test_populate_proxy(self):
        """TestPopulateProxy."""
        p1, p2, u1, u2 = free_port(), free_port(), free_port(), free_port()
        result = self.populate([self.entry("one", localhost(p1), localhost(u1)),
                                self.entry("two", localhost(p2), localhost(u2))])
        proxies = result["proxies"]
        self.assertEqual(len(proxies), 2, result)
        self.assertEqual([p["name"] for p in proxies], ["one", "two"])
        for proxy in proxies:
            self.assert_proxy_up(proxy["listen"], True)

    def test_populate_default_enabled(self):
        """TestPopulateDefaultEnabled: no "enabled" means enabled."""
        p1, u1 = free_port(), free_port()
        reply = self.api.post("/populate", raw_body='[{"name": "test", "listen": "%s", '
                              '"upstream": "%s"}]' % (localhost(p1), localhost(u1)))
        self.assertEqual(reply.status, 201, reply)
        proxies = self.proxies()
        self.assertEqual(list(proxies), ["test"])
        for proxy in proxies.values():
            self.assert_proxy_up(proxy["listen"], True)

    def test_populate_disabled_proxy(self):
        """TestPopulateDisabledProxy."""
        p1, p2, u1, u2 = free_port(), free_port(), free_port(), free_port()
        result = self.populate([self.entry("one", localhost(p1), localhost(u1), enabled=False),
                                self.entry("two", localhost(p2), localhost(u2))])
        self.assertEqual([p["name"] for p in result["proxies"]], ["one", "two"])
        self.assert_proxy_up(localhost(p1), False)
        self.assert_proxy_up(localhost(p2), True)

    def test_populate_existing_proxy(self):
        """TestPopulateExistingProxy: an identical entry leaves the proxy (and its toxics)
        untouched; `localhost` listens come back resolved."""
        p1, p2, p3 = free_port(), free_port(), free_port()
        u1, u2, u3 = free_port(), free_port(), free_port()
        self.create_proxy("one", localhost(u1), listen=localhost(p1))
        self.create_proxy("two", localhost(u2), listen=localhost(p2))
        self.add_toxic("one", "latency", "downstream", attributes=None)
        result = self.populate([self.entry("one", localhost(p1), localhost(u1)),
                                self.entry("two", loopback(p3), localhost(u3))])
        proxies = result["proxies"]
        self.assertEqual([p["name"] for p in proxies], ["one", "two"])
        self.assertEqual([p["listen"] for p in proxies], [loopback(p1), loopback(p3)])
        toxics = self.toxics("one")
        self.assertEqual(len(toxics), 1, "populate did not preserve the existing proxy")
        self.assertEqual(toxics[0]["type"], "latency")
        for proxy in proxies:
            self.assert_proxy_up(proxy["listen"], True)

    def test_populate_with_bad_name(self):
        """TestPopulateWithBadName: nothing is created ("proxies" is [], never null)."""
        p1, u1 = free_port(), free_port()
        reply = self.api.post("/populate", [self.entry("one", localhost(p1), localhost(u1)),
                                            {"name": "", "listen": "", "upstream": "",
                                             "enabled": True, "toxics": None}])
        body = self.assert_api_error(reply, 400, "missing required field: name at proxy 2")
        self.assertEqual(body.get("proxies"), [], body)
        self.assertEqual(self.proxies(), {})

    def test_populate_proxy_with_bad_data_should_return_error(self):
        """TestPopulateProxyWithBadDataShouldReturnError, as the project specifies it: Toxiproxy
        checks only names and upstreams before it makes any proxy, so there "local373" fails
        at listen time and "one" stays; issue 14 asks /populate to validate all before creating
        any, and the server checks each listen's form too: a 400, nothing made, "proxies" [].
        Toxiproxy's "the ones before stay" is checked where it still holds, for a listen that
        can only fail when bound (test_populate_listen_in_use_keeps_the_ones_before)."""
        p1, p3 = free_port(), free_port()
        u1, u2, u3 = free_port(), free_port(), free_port()
        reply = self.api.post("/populate", [self.entry("one", localhost(p1), localhost(u1)),
                                            self.entry("two", "local373", localhost(u2)),
                                            self.entry("three", localhost(p3), localhost(u3))])
        body = self.assert_api_error(reply, 400, prefix="bad request body")
        self.assertTrue(body["error"].endswith(" at proxy 2"), body)
        self.assertEqual(body.get("proxies"), [], body)
        self.assertEqual(self.proxies(), {})
        self.assert_proxy_up(localhost(p1), False)

    def test_populate_listen_in_use_keeps_the_ones_before(self):
        """TestPopulateProxyWithBadDataShouldReturnError's other half, for an error only
        binding finds: the entries before it stay (and are in "proxies", as Toxiproxy's
        Populate handler returns them), those after it are not made."""
        busy = self.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        p1, p3 = free_port(), free_port()
        u1, u2, u3 = free_port(), free_port(), free_port()
        reply = self.api.post("/populate",
                              [self.entry("one", localhost(p1), localhost(u1)),
                               self.entry("two", loopback(busy.getsockname()[1]), localhost(u2)),
                               self.entry("three", localhost(p3), localhost(u3))])
        body = self.assert_api_error(reply, 500)
        self.assertIn("address already in use", body["error"].lower(), body)
        self.assertEqual([p["name"] for p in body.get("proxies", [])], ["one"], body)
        proxies = self.proxies()
        self.assertEqual(sorted(proxies), ["one"])
        self.assert_proxy_up(proxies["one"]["listen"], True)
        self.assert_proxy_up(localhost(p3), False)

    def test_populate_add_toxic(self):
        """TestPopulateAddToxic."""
        p1, u1 = free_port(), free_port()
        result = self.populate([self.entry("one", localhost(p1), localhost(u1))])
        self.assertEqual([p["name"] for p in result["proxies"]], ["one"])
        self.add_toxic("one", "latency", "downstream")

    def test_listing_proxies(self):
        """TestListingProxies: listen resolved, upstream kept as given, no toxics."""
        port = free_port()
        self.create_proxy("mysql_master", "localhost:20001", listen=localhost(port))
        proxies = self.proxies()
        self.assertIn("mysql_master", proxies)
        proxy = proxies["mysql_master"]
        self.assertEqual(proxy["name"], "mysql_master")
        self.assertEqual(proxy["listen"], loopback(port))
        self.assertEqual(proxy["upstream"], "localhost:20001")
        self.assertEqual(proxy["toxics"], [])
        self.assert_toxic_exists(proxy["toxics"], "latency", "", "", False)

    def test_create_and_get_proxy(self):
        """TestCreateAndGetProxy."""
        port = free_port()
        self.create_proxy("mysql_master", "localhost:20001", listen=localhost(port))
        reply = self.api.get("/proxies/mysql_master")
        self.assertEqual(reply.status, 200, reply)
        proxy = reply.json()
        self.assertEqual((proxy["name"], proxy["listen"], proxy["upstream"], proxy["enabled"]),
                         ("mysql_master", loopback(port), "localhost:20001", True))
        self.assert_toxic_exists(proxy["toxics"], "latency", "", "", False)

    def test_create_proxy_with_save(self):
        """TestCreateProxyWithSave."""
        port = free_port()
        self.create_proxy("mysql_master", "localhost:20001", listen=localhost(port))
        proxy = self.api.get("/proxies/mysql_master").json()
        self.assertEqual(proxy["listen"], loopback(port))
        self.assertTrue(proxy["enabled"])
        self.assert_proxy_up(proxy["listen"], True)

    def test_create_disabled_proxy(self):
        """TestCreateDisabledProxy: a proxy created disabled keeps its listen as given."""
        port = free_port()
        self.create_proxy("mysql_master", "localhost:20001", listen=localhost(port),
                          enabled=False)
        proxy = self.api.get("/proxies/mysql_master").json()
        self.assertEqual((proxy["name"], proxy["listen"], proxy["upstream"], proxy["enabled"]),
                         ("mysql_master", localhost(port), "localhost:20001", False))
        self.assert_proxy_up(localhost(port), False)

    def test_create_disabled_proxy_and_enable(self):
        """TestCreateDisabledProxyAndEnable: the Go client's Save is a POST of the whole proxy
        to /proxies/{name}."""
        port = free_port()
        self.create_proxy("mysql_master", "localhost:20001", listen=localhost(port),
                          enabled=False)
        proxy = self.api.get("/proxies/mysql_master").json()
        self.assertFalse(proxy["enabled"])
        proxy["enabled"] = True
        reply = self.api.post("/proxies/mysql_master", proxy)
        self.assertEqual(reply.status, 200, reply)
        proxy = reply.json()
        self.assertTrue(proxy["enabled"])
        self.assert_proxy_up(proxy["listen"], True)
        proxy["enabled"] = False
        reply = self.api.post("/proxies/mysql_master", proxy)
        self.assertEqual(reply.status, 200, reply)
        self.assertFalse(reply.json()["enabled"])
        self.assert_proxy_up(proxy["listen"], False)

    def test_delete_proxy(self):
        """TestDeleteProxy."""
        port = free_port()
        proxy = self.create_proxy("mysql_master", "localhost:20001", listen=localhost(port))
        self.assertTrue(self.proxies())
        self.assert_proxy_up(proxy["listen"], True)
        reply = self.api.delete("/proxies/mysql_master")
        self.assertEqual(reply.status, 204, reply)
        self.assertEqual(reply.body, b"")
        self.assert_proxy_up(proxy["listen"], False)
        self.assertEqual(self.proxies(), {})
        self.assert_api_error(self.api.delete("/proxies/mysql_master"), 404, "proxy not found")

    def test_create_proxy_port_conflict(self):
        """TestCreateProxyPortConflict: a listen address in use is a 500 (Go's text is
        "listen tcp 127.0.0.1:3310: bind: address already in use"; we check the errno's)."""
        port = free_port()
        self.create_proxy("mysql_master", "localhost:20001", listen=localhost(port))
        reply = self.api.post("/proxies", {"name": "test", "listen": localhost(port),
                                           "upstream": "localhost:20001", "enabled": True,
                                           "toxics": None})
        body = self.assert_api_error(reply, 500)
        self.assertIn("address already in use", body["error"].lower(), body)
        self.assertNotIn("test", self.proxies())
        self.assertEqual(self.api.delete("/proxies/mysql_master").status, 204)
        self.create_proxy("test", "localhost:20001", listen=localhost(port))

    def test_create_proxy_name_conflict(self):
        """TestCreateProxyNameConflict."""
        p1, p2 = free_port(), free_port()
        self.create_proxy("mysql_master", "localhost:20001", listen=localhost(p1))
        reply = self.api.post("/proxies", {"name": "mysql_master", "listen": localhost(p2),
                                           "upstream": "localhost:20001", "enabled": True,
                                           "toxics": None})
        self.assert_api_error(reply, 409, "proxy already exists")
        self.assertEqual(self.api.delete("/proxies/mysql_master").status, 204)
        self.create_proxy("mysql_master", "localhost:20001", listen=localhost(p2))

    def test_reset_state(self):
        """TestResetState."""
        port = free_port()
        self.create_proxy("mysql_master", "localhost:20001", listen=localhost(port))
        latency = self.add_toxic("mysql_master", "latency", "downstream",
                                 attributes={"latency": 100, "jitter": 10})
        self.assertEqual(latency["attributes"]["latency"], 100)
        self.assertEqual(latency["attributes"]["jitter"], 10)
        reply = self.api.post("/reset")
        self.assertEqual(reply.status, 204, reply)
        proxies = self.proxies()
        self.assertIn("mysql_master", proxies)
        self.assertTrue(proxies["mysql_master"]["enabled"])
        self.assert_toxic_exists(self.toxics("mysql_master"), "latency", "", "", False)
        self.assertEqual(self.toxics("mysql_master"), [])
        self.assert_proxy_up(proxies["mysql_master"]["listen"], True)

    def test_listing_toxics(self):
        """TestListingToxics: an array, empty."""
        self.create_proxy("mysql_master", "localhost:20001")
        self.assertEqual(self.toxics("mysql_master"), [])

    def test_add_toxic(self):
        """TestAddToxic."""
        self.create_proxy("mysql_master", "localhost:20001")
        latency = self.add_toxic("mysql_master", "latency", "downstream", name="foobar",
                                 attributes={"latency": 100, "jitter": 10})
        self.assertEqual((latency["attributes"]["latency"], latency["attributes"]["jitter"]),
                         (100, 10))
        toxic = self.assert_toxic_exists(self.toxics("mysql_master"), "foobar", "latency",
                                         "downstream", True)
        self.assertEqual(toxic["toxicity"], 1.0)
        self.assertEqual(toxic["attributes"]["latency"], 100)
        self.assertEqual(toxic["attributes"]["jitter"], 10)

    def test_add_multiple_toxics(self):
        """TestAddMultipleToxics: "attributes": null (the Go client's nil map) takes the
        defaults, and every attribute is echoed."""
        self.create_proxy("mysql_master", "localhost:20001")
        self.add_toxic("mysql_master", "latency", "downstream", name="latency1")
        self.add_toxic("mysql_master", "latency", "downstream", name="latency2")
        toxics = self.toxics("mysql_master")
        self.assert_toxic_exists(toxics, "latency1", "latency", "downstream", True)
        toxic = self.assert_toxic_exists(toxics, "latency2", "latency", "downstream", True)
        self.assertEqual(toxic["toxicity"], 1.0)
        self.assertEqual(toxic["attributes"], {"latency": 0, "jitter": 0})
        self.assert_toxic_exists(toxics, "latency1", "", "upstream", False)
        self.assert_toxic_exists(toxics, "latency2", "", "upstream", False)

    def test_add_conflicting_toxic(self):
        """TestAddConflictingToxic."""
        self.create_proxy("mysql_master", "localhost:20001")
        self.add_toxic("mysql_master", "latency", "downstream", name="foobar")
        reply = self.api.post("/proxies/mysql_master/toxics",
                              {"name": "foobar", "type": "slow_close", "stream": "downstream",
                               "toxicity": 1, "attributes": None})
        self.assert_api_error(reply, 409, "toxic already exists")
        toxics = self.toxics("mysql_master")
        toxic = self.assert_toxic_exists(toxics, "foobar", "latency", "downstream", True)
        self.assertEqual(toxic["toxicity"], 1.0)
        self.assertEqual(toxic["attributes"], {"latency": 0, "jitter": 0})
        self.assert_toxic_exists(toxics, "foobar", "", "upstream", False)

    def test_add_conflicting_toxics_multistream(self):
        """TestAddConflictingToxicsMultistream: names are unique across both streams."""
        self.create_proxy("mysql_master", "localhost:20001")
        self.add_toxic("mysql_master", "latency", "upstream", name="foobar")
        reply = self.api.post("/proxies/mysql_master/toxics",
                              {"name": "foobar", "type": "latency", "stream": "downstream",
                               "toxicity": 1, "attributes": None})
        self.assert_api_error(reply, 409, "toxic already exists")
        toxics = self.toxics("mysql_master")
        toxic = self.assert_toxic_exists(toxics, "foobar", "latency", "upstream", True)
        self.assertEqual(toxic["attributes"], {"latency": 0, "jitter": 0})
        self.assert_toxic_exists(toxics, "foobar", "", "downstream", False)

    def test_add_conflicting_toxics_multistream_defaults(self):
        """TestAddConflictingToxicsMultistreamDefaults: a blank name is TYPE_STREAM."""
        self.create_proxy("mysql_master", "localhost:20001")
        self.add_toxic("mysql_master", "latency", "upstream")
        self.add_toxic("mysql_master", "latency", "downstream")
        toxics = self.toxics("mysql_master")
        for name, stream in (("latency_upstream", "upstream"),
                             ("latency_downstream", "downstream")):
            toxic = self.assert_toxic_exists(toxics, name, "latency", stream, True)
            self.assertEqual(toxic["toxicity"], 1.0)
            self.assertEqual(toxic["attributes"], {"latency": 0, "jitter": 0})

    def test_add_toxic_with_toxicity(self):
        """TestAddToxicWithToxicity."""
        self.create_proxy("mysql_master", "localhost:20001")
        latency = self.add_toxic("mysql_master", "latency", "downstream", toxicity=0.2,
                                 attributes={"latency": 100, "jitter": 10})
        self.assertAlmostEqual(latency["toxicity"], 0.2, places=6)
        self.assertEqual(latency["attributes"], {"latency": 100, "jitter": 10})
        toxic = self.assert_toxic_exists(self.toxics("mysql_master"), "latency_downstream",
                                         "latency", "downstream", True)
        self.assertAlmostEqual(toxic["toxicity"], 0.2, places=6)
        self.assertEqual(toxic["attributes"], {"latency": 100, "jitter": 10})

    def test_add_noop(self):
        """TestAddNoop: no "stream" means downstream."""
        self.create_proxy("mysql_master", "localhost:20001")
        noop = self.add_toxic("mysql_master", "noop", None, name="foobar")
        self.assertEqual((noop["toxicity"], noop["name"], noop["type"], noop["stream"]),
                         (1.0, "foobar", "noop", "downstream"))
        toxic = self.assert_toxic_exists(self.toxics("mysql_master"), "foobar", "noop",
                                         "downstream", True)
        self.assertEqual(toxic["toxicity"], 1.0)

    def test_update_toxics(self):
        """TestUpdateToxics: a PATCH merges the attributes given; toxicity stays when left
        out."""
        self.create_proxy("mysql_master", "localhost:20001")
        latency = self.add_toxic("mysql_master", "latency", "downstream",
                                 attributes={"latency": 100, "jitter": 10})
        self.assertEqual(latency["toxicity"], 1.0)
        latency = self.update_toxic("mysql_master", "latency_downstream", {"latency": 1000},
                                    toxicity=0.5)
        self.assertEqual(latency["toxicity"], 0.5)
        self.assertEqual(latency["attributes"], {"latency": 1000, "jitter": 10})
        latency = self.update_toxic("mysql_master", "latency_downstream", {"latency": 500})
        self.assertEqual(latency["toxicity"], 0.5)
        self.assertEqual(latency["attributes"], {"latency": 500, "jitter": 10})
        toxic = self.assert_toxic_exists(self.toxics("mysql_master"), "latency_downstream",
                                         "latency", "downstream", True)
        self.assertEqual(toxic["toxicity"], 0.5)
        self.assertEqual(toxic["attributes"], {"latency": 500, "jitter": 10})

    def test_remove_toxic(self):
        """TestRemoveToxic."""
        self.create_proxy("mysql_master", "localhost:20001")
        self.add_toxic("mysql_master", "latency", "downstream")
        toxic = self.assert_toxic_exists(self.toxics("mysql_master"), "latency_downstream",
                                         "latency", "downstream", True)
        self.assertEqual(toxic["attributes"], {"latency": 0, "jitter": 0})
        self.remove_toxic("mysql_master", "latency_downstream")
        self.assert_toxic_exists(self.toxics("mysql_master"), "latency_downstream", "", "",
                                 False)

    def test_version_endpoint_returns_version(self):
        """TestVersionEndpointReturnsVersion ({"version": "git"} there): a JSON object with
        a version of at least 2.6.0, as clients pick PATCH by it."""
        reply = self.api.get("/version")
        self.assertEqual(reply.status, 200, reply)
        self.assertTrue(reply.header("Content-Type").startswith("application/json"))
        version = reply.json()["version"]
        numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
        self.assertGreaterEqual(numbers, (2, 6, 0), version)

    def test_invalid_stream(self):
        """TestInvalidStream (the text is api.go's ErrInvalidStream)."""
        self.create_proxy("mysql_master", "localhost:20001")
        reply = self.api.post("/proxies/mysql_master/toxics",
                              {"name": "", "type": "latency", "stream": "walrustream",
                               "toxicity": 1, "attributes": None})
        self.assert_api_error(reply, 400, STREAM_ERROR)
        self.assertEqual(self.toxics("mysql_master"), [])


class ApiBehaviourTest(ApiTestCase):
    """What issue 14 asks of the API beyond api_test.go: routes and errors of every endpoint,
    partial updates, /populate and /reset in full, live connections on disable and delete."""

    def test_request_ids_differ_and_errors_carry_one(self):
        """Toxiproxy's request id middleware tags every routed response, errors included."""
        ids = set()
        for path in ("/version", "/proxies", "/proxies/nope", "/nothing/here"):
            reply = self.api.get(path)
            ids.add(reply.header("X-Toxiproxy-Request-Id"))
        self.assertNotIn("", ids)
        self.assertEqual(len(ids), 4, ids)

    def test_listen_port_zero_comes_back_with_the_real_port(self):
        proxy = self.create_proxy("zero", "localhost:20001")
        host, port = split_address(proxy["listen"])
        self.assertEqual(host, "127.0.0.1")
        self.assertNotEqual(port, 0)
        self.assert_proxy_up(proxy["listen"], True)
        self.assertEqual(self.api.get("/proxies/zero").json()["listen"], proxy["listen"])

    def test_proxy_object_shape(self):
        proxy = self.create_proxy("shape", "localhost:20001")
        self.assertEqual(set(proxy), {"name", "listen", "upstream", "enabled", "toxics"})
        self.add_toxic("shape", "latency", "upstream", attributes={"latency": 5})
        listed = self.api.get("/proxies/shape").json()
        self.assertEqual(len(listed["toxics"]), 1)
        self.assertEqual(set(listed["toxics"][0]),
                         {"name", "type", "stream", "toxicity", "attributes"})

    def test_every_toxic_type_echoes_every_attribute(self):
        self.create_proxy("types", "localhost:20001")
        for type_name, attributes in TOXIC_ATTRIBUTES.items():
            toxic = self.add_toxic("types", type_name, "upstream", attributes=attributes)
            self.assertEqual(toxic["name"], type_name + "_upstream")
            self.assertEqual(toxic["attributes"], attributes, type_name)
            shown = self.api.get("/proxies/types/toxics/" + toxic["name"])
            self.assertEqual(shown.status, 200, shown)
            self.assertEqual(shown.json(), toxic)
        self.assertEqual(len(self.toxics("types")), len(TOXIC_ATTRIBUTES))

    def test_unknown_proxy_is_404_everywhere(self):
        toxic = {"name": "", "type": "latency", "stream": "downstream", "toxicity": 1,
                 "attributes": None}
        for method, path, body in (("GET", "/proxies/nope", None),
                                   ("POST", "/proxies/nope", {"enabled": False}),
                                   ("PATCH", "/proxies/nope", {"enabled": False}),
                                   ("DELETE", "/proxies/nope", None),
                                   ("GET", "/proxies/nope/toxics", None),
                                   ("POST", "/proxies/nope/toxics", toxic),
                                   ("GET", "/proxies/nope/toxics/latency_downstream", None),
                                   ("PATCH", "/proxies/nope/toxics/latency_downstream",
                                    {"attributes": {}}),
                                   ("DELETE", "/proxies/nope/toxics/latency_downstream", None)):
            with self.subTest(method=method, path=path):
                reply = self.api.request(method, path, body=body)
                self.assert_api_error(reply, 404, "proxy not found")

    def test_unknown_toxic_is_404(self):
        self.create_proxy("p", "localhost:20001")
        for method, body in (("GET", None), ("POST", {"attributes": {}}),
                             ("PATCH", {"attributes": {}}), ("DELETE", None)):
            with self.subTest(method=method):
                reply = self.api.request(method, "/proxies/p/toxics/nope", body=body)
                self.assert_api_error(reply, 404, "toxic not found")

    def test_invalid_toxic_type(self):
        self.create_proxy("p", "localhost:20001")
        reply = self.api.post("/proxies/p/toxics", {"type": "walrus", "stream": "upstream"})
        self.assert_api_error(reply, 400, "invalid toxic type")
        self.assertEqual(self.toxics("p"), [])

    def test_unknown_route_and_wrong_method(self):
        self.assertEqual(self.api.get("/nothing/here").status, 404)
        self.assertEqual(self.api.request("PUT", "/proxies", body={}).status, 405)
        self.assertEqual(self.api.request("DELETE", "/version").status, 405)

    def test_proxy_partial_update_keeps_the_rest(self):
        """PATCH with one field keeps the others; a new upstream reaches new connections."""
        first, second = self.echo_upstream(), self.upstream()
        proxy = self.create_proxy("p", first.address)
        reply = self.api.patch("/proxies/p", {"upstream": second.address})
        self.assertEqual(reply.status, 200, reply)
        updated = reply.json()
        self.assertEqual(updated["upstream"], second.address)
        self.assertEqual(updated["enabled"], True)
        self.assertEqual(updated["name"], "p")
        client = self.dial(updated["listen"])
        server = self.keep(second.next_connection())
        assert_echo_response(client, server)
        self.assertTrue(updated["listen"] == proxy["listen"]
                        or split_address(proxy["listen"])[1] == 0, (proxy, updated))

    def test_upstream_is_resolved_when_a_client_connects(self):
        """A name that does not resolve is accepted at creation; the client is closed."""
        proxy = self.create_proxy("p", "no-such-host.invalid:9")
        client = self.dial(proxy["listen"])
        _, how = read_until_closed(client, scaled(10))
        self.assertIn(how, ("eof", "reset"))
        echo = self.echo_upstream()
        proxy = self.create_proxy("q", "localhost:%d" % echo.port)
        client = self.dial(proxy["listen"])
        client.sendall(b"ping")
        self.assertEqual(recv_exact(client, 4), b"ping")

    def test_disabling_closes_live_connections(self):
        """enabled:false closes the listener and every live connection; enabling again
        listens again."""
        upstream = self.upstream()
        proxy = self.create_proxy("p", upstream.address)
        client = self.dial(proxy["listen"])
        server = self.keep(upstream.next_connection())
        assert_echo_response(client, server)
        reply = self.api.patch("/proxies/p", {"enabled": False})
        self.assertEqual(reply.status, 200, reply)
        self.assertFalse(reply.json()["enabled"])
        _, how = read_until_closed(client, scaled(5))
        self.assertIn(how, ("eof", "reset"), "the live client connection stayed open")
        _, how = read_until_closed(server, scaled(5))
        self.assertIn(how, ("eof", "reset"), "the live upstream connection stayed open")
        self.assert_proxy_up(proxy["listen"], False)
        reply = self.api.patch("/proxies/p", {"enabled": True})
        self.assertEqual(reply.status, 200, reply)
        self.assert_proxy_up(reply.json()["listen"], True)

    def test_deleting_closes_live_connections(self):
        upstream = self.upstream()
        proxy = self.create_proxy("p", upstream.address)
        client = self.dial(proxy["listen"])
        server = self.keep(upstream.next_connection())
        assert_echo_response(client, server)
        self.assertEqual(self.api.delete("/proxies/p").status, 204)
        _, how = read_until_closed(client, scaled(5))
        self.assertIn(how, ("eof", "reset"))
        self.assert_proxy_up(proxy["listen"], False)

    def test_populate_validates_all_before_creating_any(self):
        p1, p2 = free_port(), free_port()
        entries = [{"name": "one", "listen": loopback(p1), "upstream": "localhost:20001"},
                   {"name": "two", "listen": loopback(p2), "upstream": "localhost:20001"},
                   {"name": "three", "listen": "127.0.0.1:0"}]
        reply = self.api.post("/populate", entries)
        body = self.assert_api_error(reply, 400, "missing required field: upstream at proxy 3")
        self.assertEqual(body.get("proxies"), [])
        self.assertEqual(self.proxies(), {})
        self.assert_proxy_up(loopback(p1), False)

    def test_populate_empty_and_replacing(self):
        reply = self.api.post("/populate", [])
        self.assertEqual(reply.status, 201, reply)
        self.assertEqual(reply.json(), {"proxies": []})
        echo = self.echo_upstream()
        port = free_port()
        reply = self.api.post("/populate", [{"name": "p", "listen": loopback(port),
                                             "upstream": "localhost:20001"}])
        self.assertEqual(reply.status, 201, reply)
        created = reply.json()["proxies"][0]
        self.assertEqual(created["toxics"], [])
        # A changed entry replaces the proxy: the new upstream serves new connections.
        reply = self.api.post("/populate", [{"name": "p", "listen": loopback(port),
                                             "upstream": echo.address}])
        self.assertEqual(reply.status, 201, reply)
        self.assertEqual(reply.json()["proxies"][0]["upstream"], echo.address)
        client = self.dial(loopback(port))
        client.sendall(b"ping")
        self.assertEqual(recv_exact(client, 4), b"ping")
        self.assertEqual(list(self.proxies()), ["p"])

    def test_reset_reenables_removes_toxics_and_deletes_nothing(self):
        one = self.create_proxy("one", "localhost:20001")
        self.create_proxy("two", "localhost:20002")
        self.add_toxic("one", "latency", "upstream", attributes={"latency": 10})
        self.add_toxic("two", "slow_close", "downstream", attributes={"delay": 10})
        reply = self.api.patch("/proxies/one", {"enabled": False})
        self.assertEqual(reply.status, 200, reply)
        reply = self.api.post("/reset")
        self.assertEqual(reply.status, 204, reply)
        self.assertEqual(reply.body, b"")
        proxies = self.proxies()
        self.assertEqual(sorted(proxies), ["one", "two"])
        for proxy in proxies.values():
            self.assertTrue(proxy["enabled"], proxy)
            self.assertEqual(proxy["toxics"], [])
        self.assertEqual(split_address(proxies["one"]["listen"])[0], "127.0.0.1")
        self.assert_proxy_up(proxies["one"]["listen"], True)
        self.assertTrue(one["listen"])

    def test_malformed_json_is_400_with_the_error_body(self):
        self.create_proxy("p", "localhost:20001")
        self.add_toxic("p", "latency", "upstream")
        for method, path in (("POST", "/proxies"), ("POST", "/proxies/p"), ("PATCH", "/proxies/p"),
                             ("POST", "/proxies/p/toxics"),
                             ("PATCH", "/proxies/p/toxics/latency_upstream"),
                             ("POST", "/proxies/p/toxics/latency_upstream"),
                             ("POST", "/populate")):
            for text in ('{"name": ', "not json", '{"name": "x",}', "[1, 2", "\xff\xfe"):
                with self.subTest(method=method, path=path, body=text):
                    reply = self.api.request(method, path, raw_body=text.encode("latin-1"))
                    self.assert_api_error(reply, 400, prefix="bad request body")
        self.assertEqual(list(self.proxies()), ["p"])
        self.assertEqual(len(self.toxics("p")), 1)

    def test_json_of_the_wrong_shape_is_400(self):
        self.create_proxy("p", "localhost:20001")
        for method, path, text in (("POST", "/proxies", "[1, 2]"),
                                   ("POST", "/proxies", '{"name": 5, "upstream": "x:1"}'),
                                   ("POST", "/populate", '{"name": "x"}'),
                                   ("POST", "/populate", '[{"name": ["x"]}]'),
                                   ("POST", "/proxies/p/toxics", '"latency"'),
                                   ("POST", "/proxies/p/toxics",
                                    '{"type": "latency", "attributes": {"latency": "soon"}}')):
            with self.subTest(path=path, body=text):
                reply = self.api.request(method, path, raw_body=text)
                self.assert_api_error(reply, 400, prefix="bad request body")
        self.assertEqual(list(self.proxies()), ["p"])
        self.assertEqual(self.toxics("p"), [])

    def test_browsers_are_refused_on_every_method(self):
        agent = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}
        reply = self.api.post("/proxies", {"name": "p", "upstream": "localhost:20001",
                                           "listen": "127.0.0.1:0"}, headers=agent)
        self.assertEqual(reply.status, 403, reply)
        self.assertEqual(self.api.post("/reset", headers=agent).status, 403)
        self.assertEqual(self.api.get("/version", headers=agent).status, 403)
        self.assertEqual(self.proxies(), {})
        # Only a prefix counts, as in Toxiproxy's stopBrowsersMiddleware.
        self.assertEqual(self.api.get("/version", headers={"User-Agent": "curl Mozilla/"}).status,
                         200)

    def test_host_header_must_be_an_ip_literal_or_localhost(self):
        """DNS rebinding: a page on evil.example that resolves its name to 127.0.0.1 sends
        Host: evil.example."""
        port = self.server.port
        for host in ("evil.example:%d" % port, "evil.example", "localhost.evil.example:%d" % port,
                     "127.0.0.1.nip.io:%d" % port):
            with self.subTest(host=host):
                reply = self.api.get("/proxies", headers={"Host": host})
                self.assertEqual(reply.status, 403, reply)
        reply = self.api.post("/proxies", {"name": "p", "upstream": "localhost:20001",
                                           "listen": "127.0.0.1:0"},
                              headers={"Host": "evil.example:%d" % port})
        self.assertEqual(reply.status, 403, reply)
        self.assertEqual(self.proxies(), {})
        for host in ("127.0.0.1:%d" % port, "localhost:%d" % port, "127.0.0.1", "localhost"):
            with self.subTest(host=host):
                self.assertEqual(self.api.get("/proxies", headers={"Host": host}).status, 200)

    def assert_refused_cleanly(self, raw):
        """`raw` gets a 4xx reply or a close, within the deadline, and the server lives on."""
        answer = self.api.raw_exchange(raw, timeout=scaled(10))
        if answer:
            status_line = answer.split(b"\r\n", 1)[0]
            match = re.match(rb"HTTP/1\.[01] (\d{3})", status_line)
            self.assertTrue(match, answer[:200])
            self.assertTrue(400 <= int(match.group(1)) < 500, status_line)
        self.assertEqual(self.api.get("/version").status, 200)

    def test_oversize_requests_are_refused_cleanly(self):
        head = "POST /proxies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        self.assert_refused_cleanly(
            (head + "Content-Length: %d\r\n\r\n" % (64 << 20)).encode() + b" " * (1 << 20))
        self.assert_refused_cleanly(
            (head + "X-Big: %s\r\nContent-Length: 2\r\n\r\n{}" % ("a" * (1 << 20))).encode())
        many = "".join("X-H%d: v\r\n" % i for i in range(20000))
        self.assert_refused_cleanly((head + many + "Content-Length: 2\r\n\r\n{}").encode())
        self.assert_refused_cleanly(b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n")
        self.assertEqual(self.proxies(), {})

    def test_garbage_and_cut_requests_leave_the_server_up(self):
        self.assert_refused_cleanly(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20)
        self.assert_refused_cleanly(b"NOT HTTP AT ALL\r\n\r\n")
        self.assert_refused_cleanly(b"GET /version HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")
        self.assert_refused_cleanly(
            b"POST /proxies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n")
        # Cut off mid-request: the server must not wait on it forever nor fall over.
        with socket.create_connection((self.server.host, self.server.port)) as conn:
            conn.sendall(b"POST /proxies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
                         b"\r\n{\"name\":")
        self.assertEqual(self.api.get("/version").status, 200)

    def test_keep_alive_serves_a_second_request_or_says_close(self):
        request = b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: t\r\n\r\n"
        with socket.create_connection((self.server.host, self.server.port),
                                      timeout=scaled(10)) as conn:
            conn.sendall(request)
            first = read_one_response(conn)
            self.assertTrue(first.startswith(b"HTTP/1.1 200"), first[:100])
            if b"connection: close" in first.lower():
                return
            conn.sendall(request)
            second = read_one_response(conn)
            self.assertTrue(second.startswith(b"HTTP/1.1 200"), second[:100])

    def test_concurrent_api_clients(self):
        """Eight clients at once create, change and delete their own proxies and toxics."""
        errors = []

        def work(index):
            try:
                for round_number in range(10):
                    name = "c%d_%d" % (index, round_number)
                    reply = self.api.post("/proxies", {"name": name, "listen": "127.0.0.1:0",
                                                       "upstream": "localhost:20001"})
                    assert reply.status == 201, reply
                    reply = self.api.post("/proxies/%s/toxics" % name,
                                          {"type": "latency", "attributes": {"latency": 1}})
                    assert reply.status == 200, reply
                    reply = self.api.patch("/proxies/%s/toxics/latency_downstream" % name,
                                           {"attributes": {"latency": 2}})
                    assert reply.status == 200, reply
                    assert self.api.get("/proxies").status == 200
                    reply = self.api.delete("/proxies/" + name)
                    assert reply.status == 204, reply
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append("client %d: %r" % (index, error))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(scaled(60))
        self.assertFalse([t for t in threads if t.is_alive()], "a client hung")
        self.assertEqual(errors, [])
        self.assertEqual(self.proxies(), {})


def read_one_response(conn):
    """One HTTP response (headers and its Content-Length body) from `conn`."""
    data = b""
    deadline = time.monotonic() + scaled(10)
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length and time.monotonic() < deadline:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value} from Prometheus text format 0.0.4; raises on
    a line that is not a comment, a blank or a sample."""
    samples = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)( \d+)?$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if line.startswith("# TYPE "):
                parts = line.split()
                assert len(parts) == 4 and parts[3] in (
                    "counter", "gauge", "histogram", "summary", "untyped"), line
            continue
        match = sample.match(line)
        assert match, "not a Prometheus sample line: %r" % line
        labels = dict(label.findall(match.group(3) or ""))
        samples[(match.group(1), frozenset(labels.items()))] = float(match.group(4))
    return samples


def metric(samples, name, **labels):
    """The value of `name` with exactly `labels`, or None."""
    return samples.get((name, frozenset(labels.items())))


class MetricsTest(ApiTestCase):
    """GET /metrics: Prometheus text 0.0.4, per proxy, byte counters live."""

    def scrape(self):
        reply = self.api.get("/metrics")
        self.assertEqual(reply.status, 200, reply)
        self.assertTrue(reply.header("Content-Type").startswith("text/plain"), reply.headers)
        self.assertIn("version=0.0.4", reply.header("Content-Type"))
        return parse_metrics(reply.body.decode())

    def test_metrics_parse_with_no_proxy(self):
        self.scrape()

    def test_bytes_and_connections_per_proxy_while_open(self):
        echo = self.echo_upstream()
        proxy = self.create_proxy("metered", echo.address)
        client = self.dial(proxy["listen"])
        payload = os.urandom(10000)
        client.sendall(payload)
        self.assertEqual(recv_exact(client, len(payload)), payload)
        deadline = time.monotonic() + scaled(5)
        while True:  # byte counters are live: the connection is still open
            samples = self.scrape()
            up = metric(samples, METRIC_BYTES, proxy="metered", direction="upstream")
            down = metric(samples, METRIC_BYTES, proxy="metered", direction="downstream")
            if (up or 0) >= len(payload) and (down or 0) >= len(payload):
                break
            if time.monotonic() > deadline:
                self.fail("bytes not counted while open: up=%r down=%r; names: %s"
                          % (up, down, sorted({name for name, _ in samples})))
            time.sleep(0.05)
        self.assertEqual(metric(samples, METRIC_ACCEPTED, proxy="metered"), 1)
        self.assertEqual(metric(samples, METRIC_ACTIVE, proxy="metered"), 1)
        client.close()
        deadline = time.monotonic() + scaled(5)
        while metric(self.scrape(), METRIC_ACTIVE, proxy="metered") != 0:
            self.assertLess(time.monotonic(), deadline, "active connections did not drop to 0")
            time.sleep(0.05)


class ToxicsTest(ApiTestCase):
    """toxics/*_test.go as TCP checks through a proxy the API made, to upstreams run here.
    Lower bounds on time are exact (a delay is never short); upper bounds are generous and
    scaled."""

    def established(self):
        """Toxiproxy's WithEstablishedProxy: (client, server) with data both ways checked."""
        upstream = self.upstream()
        proxy = self.create_proxy("test", upstream.address)
        client = self.dial(proxy["listen"])
        server = self.keep(upstream.next_connection())
        assert_echo_response(client, server, b"foobar")
        return client, server

    def latency_case(self, up_ms, down_ms):
        """DoLatencyTest: a 32 KiB line, its arrival upstream delayed by up_ms, the echo's
        arrival by down_ms."""
        client, server = self.established()
        if up_ms is not None:
            self.add_toxic("test", "latency", "upstream", name="latency_up",
                           attributes={"latency": up_ms})
        if down_ms is not None:
            self.add_toxic("test", "latency", "downstream", name="latency_down",
                           attributes={"latency": down_ms})
        message = b"hello world " + b"a" * (32 * 1024) + b"\n"
        start = time.monotonic()
        client.sendall(message)
        self.assertEqual(recv_exact(server, len(message)), message)
        server_read = time.monotonic() - start
        start2 = time.monotonic()
        server.sendall(message)
        self.assertEqual(recv_exact(client, len(message)), message)
        client_read = time.monotonic() - start2
        up, down = (up_ms or 0) / 1000.0, (down_ms or 0) / 1000.0
        self.assertGreaterEqual(server_read, up - 0.005)
        self.assertLess(server_read, up + scaled(0.5))
        self.assertGreaterEqual(client_read, down - 0.005)
        self.assertLess(client_read, down + scaled(0.5))
        for name, ms in (("latency_up", up_ms), ("latency_down", down_ms)):
            if ms is not None:
                self.remove_toxic("test", name)

    def test_upstream_latency(self):
        self.latency_case(100, None)

    def test_downstream_latency(self):
        self.latency_case(None, 100)

    def test_fullstream_latency_even(self):
        self.latency_case(100, 100)

    def test_fullstream_latency_bias_up(self):
        self.latency_case(400, 100)

    def test_zero_latency(self):
        self.latency_case(0, 0)

    def test_fullstream_latency_bias_down(self):
        self.latency_case(100, 400)

    def test_two_latency_toxics_add_up(self):
        """TestTwoLatencyToxics."""
        client, server = self.established()
        for index in range(2):
            self.add_toxic("test", "latency", "upstream", name="latency_%d" % index,
                           attributes={"latency": 250})
        message = b"hello world " + b"a" * (32 * 1024) + b"\n"
        start = time.monotonic()
        client.sendall(message)
        self.assertEqual(recv_exact(server, len(message)), message)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.5 - 0.005)
        self.assertLess(elapsed, 0.5 + scaled(0.5))

    def test_latency_keeps_the_bandwidth(self):
        """TestLatencyToxicBandwidth: the latency is paid once, not per chunk."""
        upstream = self.upstream()
        proxy = self.create_proxy("test", upstream.address)
        client = self.dial(proxy["listen"])
        server = self.keep(upstream.next_connection())
        self.add_toxic("test", "latency", "downstream", attributes={"latency": 100})
        chunk = b"hello world " * 1000
        rounds = 400  # 4.8 MB: at one 100 ms wait per 64 KiB chunk it would take 7 s
        writer = threading.Thread(target=lambda: server.sendall(chunk * rounds), daemon=True)
        start = time.monotonic()
        writer.start()
        self.assertEqual(recv_exact(client, len(chunk) * rounds, scaled(20)), chunk * rounds)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.1 - 0.005)
        self.assertLess(elapsed, scaled(3.0))

    def test_latency_toxic_close_race(self):
        """TestLatencyToxicCloseRace (100 rounds, not 1000): add, connect, write, close,
        remove."""
        upstream = self.upstream()
        proxy = self.create_proxy("test", upstream.address)
        for _ in range(100):
            self.add_toxic("test", "latency", "upstream", attributes={"latency": 10})
            conn = connect(proxy["listen"])
            conn.sendall(b"hello")
            conn.close()
            self.remove_toxic("test", "latency_upstream")
        self.assertEqual(self.toxics("test"), [])

    def test_bandwidth(self):
        """TestBandwidthToxic: 240 KB upstream at 400 KB/s takes 0.6 s (the rate is in KB/s,
        1 KB = 1000 B)."""
        upstream = self.upstream()
        proxy = self.create_proxy("test", upstream.address)
        client = self.dial(proxy["listen"])
        server = self.keep(upstream.next_connection())
        rate = 400
        self.add_toxic("test", "bandwidth", "upstream", attributes={"rate": rate})
        payload = b"hello world " * 20000
        writer = threading.Thread(target=lambda: client.sendall(payload), daemon=True)
        start = time.monotonic()
        writer.start()
        self.assertEqual(recv_exact(server, len(payload), scaled(20)), payload)
        elapsed = time.monotonic() - start
        expected = len(payload) / (rate * 1000.0)
        self.assertGreaterEqual(elapsed, expected * 0.8, "faster than the rate")
        self.assertLess(elapsed, expected + scaled(1.5))

    def read_pieces(self, conn, total, timeout):
        """Reads `total` bytes, counting the reads it took."""
        deadline = time.monotonic() + timeout
        data, reads = b"", 0
        while len(data) < total:
            self.assertLess(time.monotonic(), deadline, "slices did not all arrive")
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = conn.recv(65536)
            self.assertTrue(chunk, "end of stream")
            data += chunk
            reads += 1
        return data, reads

    # Toxiproxy counts the slicer's output chunks; over TCP a reader may get two slices in one
    # read when it is slow (busy cores), so a count of reads only bounds the slices from below.
    # Slices go out `delay` apart, so the time the last byte takes bounds them from above:
    # s slices take at least (s - 1) * delay.

    def test_slicer(self):
        """TestSlicerToxic: about total/average_size slices (between n/2 and n/2 + n), every
        byte in order."""
        client, server = self.established()
        delay = 0.02
        self.add_toxic("test", "slicer", "downstream",
                       attributes={"average_size": 100, "size_variation": 50,
                                   "delay": int(delay * 1e6)})
        data = b"hello world " * 200  # 2400 B: n = 24
        start = time.monotonic()
        server.sendall(data)
        got, reads = self.read_pieces(client, len(data), scaled(10))
        elapsed = time.monotonic() - start
        self.assertEqual(got, data)
        self.assertLessEqual(reads, 24 // 2 + 24)
        # At least n/2 slices; one gap fewer per chunk the proxy may have read it in (two).
        self.assertGreaterEqual(elapsed, (24 // 2 - 2) * delay - 0.005)

    def test_slicer_zero_size_variation(self):
        """TestSlicerToxicZeroSizeVariation: average_size 1 makes 24 one-byte slices."""
        client, server = self.established()
        delay = 0.02
        self.add_toxic("test", "slicer", "downstream",
                       attributes={"average_size": 1, "delay": int(delay * 1e6)})
        data = b"hello world " * 2
        start = time.monotonic()
        server.sendall(data)
        got, reads = self.read_pieces(client, len(data), scaled(10))
        elapsed = time.monotonic() - start
        self.assertEqual(got, data)
        self.assertLessEqual(reads, 24)
        self.assertGreaterEqual(elapsed, 23 * delay - 0.005, "fewer than 24 slices")

    def test_timeout_stops_data_then_closes(self):
        client, server = self.established()
        self.add_toxic("test", "timeout", "upstream", attributes={"timeout": 500})
        start = time.monotonic()
        client.sendall(b"held")
        data, how = read_until_closed(server, scaled(5) + 0.5)
        self.assertEqual(data, b"", "a byte passed the timeout toxic")
        self.assertIn(how, ("eof", "reset"))
        self.assertGreaterEqual(time.monotonic() - start, 0.5 - 0.005)
        _, how = read_until_closed(client, scaled(5))
        self.assertIn(how, ("eof", "reset"))

    def test_timeout_toxic_does_not_cause_hang(self):
        """TestTimeoutToxicDoesNotCauseHang: removing a latency before a timeout 0 answers
        at once."""
        client, _ = self.established()
        self.add_toxic("test", "latency", "upstream", name="might_block",
                       attributes={"latency": 10})
        self.add_toxic("test", "timeout", "upstream", name="timeout", attributes={"timeout": 0})
        for _ in range(5):
            client.sendall(b"hello")
            time.sleep(0.2)
        start = time.monotonic()
        self.remove_toxic("test", "might_block")
        self.assertLess(time.monotonic() - start, scaled(2))

    def test_timeout_zero_removed_passes_what_it_held(self):
        """Toxiproxy's TestTimeoutToxicClosesConnectionOnRemove expects the connection closed
        when a timeout 0 is removed (its data is dropped); the project keeps every byte instead
        (README: "0 holds it open until the toxic is removed, and then every held byte goes
        on"): this checks the project's rule."""
        client, server = self.established()
        self.add_toxic("test", "timeout", "upstream", name="to_delete", attributes={"timeout": 0})
        client.sendall(b"held bytes")
        self.assertTrue(nothing_arrives(server, 0.3))
        self.remove_toxic("test", "to_delete")
        self.assertEqual(recv_exact(server, 10), b"held bytes")
        assert_echo_response(client, server)

    def reset_case(self, stream, timeout_ms):
        """resetTCPHelper: the client's read ends in ECONNRESET (then end of stream)."""
        upstream = self.upstream()
        proxy = self.create_proxy("test", upstream.address)
        self.add_toxic("test", "reset_peer", stream, name="resettcp",
                       attributes={"timeout": timeout_ms} if timeout_ms else {})
        message = b"reset toxic payload\n"
        start = time.monotonic()
        client = self.dial(proxy["listen"])
        client.sendall(message)
        if stream == "downstream":
            server = self.keep(upstream.next_connection())
            if recv_exact(server, len(message)) == message:
                server.sendall(message)
        data, how = read_until_closed(client, scaled(5) + timeout_ms / 1000.0)
        elapsed = time.monotonic() - start
        self.assertEqual(how, "reset", "expected a connection reset, got %s after %r"
                         % (how, data))
        self.assertEqual(client.recv(10), b"")
        self.assertGreaterEqual(elapsed, timeout_ms / 1000.0 - 0.005)
        self.assertLess(elapsed, timeout_ms / 1000.0 + scaled(1))

    def test_reset_peer_no_timeout(self):
        self.reset_case("upstream", 0)

    def test_reset_peer_with_timeout(self):
        self.reset_case("upstream", 100)

    def test_reset_peer_with_timeout_downstream(self):
        self.reset_case("downstream", 100)

    def limit_case(self, limit, sizes):
        """limit_data: the client gets the first `limit` bytes of what the upstream sends,
        then the connection closes."""
        client, server = self.established()
        self.add_toxic("test", "limit_data", "downstream", attributes={"bytes": limit})
        sent = b""
        for size in sizes:
            chunk = os.urandom(size)
            sent += chunk
            try:
                server.sendall(chunk)
            except OSError:
                break
            time.sleep(0.02)
        data, how = read_until_closed(client, scaled(5))
        self.assertEqual(data, sent[:limit])
        self.assertIn(how, ("eof", "reset"))

    def test_limit_data_chunk_smaller_than_limit(self):
        """Below the limit nothing closes."""
        client, server = self.established()
        self.add_toxic("test", "limit_data", "downstream", attributes={"bytes": 100})
        chunk = os.urandom(50)
        server.sendall(chunk)
        self.assertEqual(recv_exact(client, 50), chunk)
        self.assertTrue(nothing_arrives(client, 0.3))

    def test_limit_data_chunk_length_matches_limit(self):
        self.limit_case(100, [100])

    def test_limit_data_chunk_bigger_than_limit(self):
        self.limit_case(100, [150])

    def test_limit_data_multiple_chunks(self):
        self.limit_case(100, [30, 30, 30, 30])

    def test_limit_data_may_be_restarted(self):
        """TestLimitDataToxicMayBeRestarted: an update keeps the count of bytes passed."""
        client, server = self.established()
        self.add_toxic("test", "limit_data", "downstream", attributes={"bytes": 100})
        first, second = os.urandom(90), os.urandom(20)
        server.sendall(first)
        self.assertEqual(recv_exact(client, 90), first)
        self.update_toxic("test", "limit_data_downstream", {"bytes": 100})
        server.sendall(second)
        data, how = read_until_closed(client, scaled(5))
        self.assertEqual(data, second[:10])
        self.assertIn(how, ("eof", "reset"))

    def test_limit_data_second_chunk_would_overflow_limit(self):
        self.limit_case(100, [90, 20])

    def test_limit_data_limit_is_set_to_zero(self):
        """bytes 0: not one byte passes, and the connection closes."""
        self.limit_case(0, [100])

    def test_limit_data_removed_passes_everything(self):
        """TestLimitDataToxicMayBeInterrupted, end to end: a limit_data taken out before its
        limit stops nothing any more."""
        client, server = self.established()
        self.add_toxic("test", "limit_data", "downstream", attributes={"bytes": 100})
        first, second = os.urandom(50), os.urandom(200)
        server.sendall(first)
        self.assertEqual(recv_exact(client, 50), first)
        self.remove_toxic("test", "limit_data_downstream")
        server.sendall(second)
        self.assertEqual(recv_exact(client, 200), second)
        assert_echo_response(client, server)

    def test_proxy_latency(self):
        """TestProxyLatency: 100 echoes through a proxy with no toxic. Toxiproxy wants under
        300 µs a crossing; on shared cores the bound here is 5 ms (scaled), and it is the
        average over all 200 crossings."""
        client, server = self.established()
        start = time.monotonic()
        for _ in range(100):
            assert_echo_response(client, server)
        average = (time.monotonic() - start) / 200
        self.assertLess(average, scaled(0.005))

    def test_slow_close(self):
        """slow_close: the bytes come at once, the close `delay` later."""
        client, server = self.established()
        self.add_toxic("test", "slow_close", "downstream", attributes={"delay": 500})
        server.sendall(b"last words")
        start = time.monotonic()
        server.shutdown(socket.SHUT_WR)
        self.assertEqual(recv_exact(client, 10, scaled(0.5)), b"last words")
        data, how = read_until_closed(client, scaled(5) + 0.5)
        self.assertEqual((data, how), (b"", "eof"))
        self.assertGreaterEqual(time.monotonic() - start, 0.5 - 0.005)

    def test_persistent_connections(self):
        """TestPersistentConnections: noop toxics, then /reset, the connection carries on."""
        client, server = self.established()
        self.add_toxic("test", "noop", "upstream", name="noop_up")
        self.add_toxic("test", "noop", "downstream", name="noop_down")
        assert_echo_response(client, server)
        self.assertEqual(self.api.post("/reset").status, 204)
        assert_echo_response(client, server)
        self.assertEqual(self.api.post("/reset").status, 204)
        assert_echo_response(client, server)

    def test_toxic_add_remove(self):
        """TestToxicAddRemove: toxics come and go while 100 echoes cross."""
        client, server = self.established()
        running = threading.Event()
        running.set()
        errors = []

        rounds = [0]

        def toggle():
            enabled = False
            while running.is_set() and rounds[0] < 2000:
                try:
                    if enabled:
                        added = self.api.post("/proxies/test/toxics",
                                              {"name": "noop_up", "type": "noop",
                                               "stream": "upstream"})
                        self.api.delete("/proxies/test/toxics/noop_down")
                    else:
                        self.api.delete("/proxies/test/toxics/noop_up")
                        added = self.api.post("/proxies/test/toxics",
                                              {"name": "noop_down", "type": "noop",
                                               "stream": "downstream"})
                except OSError as error:
                    errors.append(error)
                    return
                if added.status != 200:  # each add follows the removal of that name
                    errors.append(added)
                    return
                enabled, rounds[0] = not enabled, rounds[0] + 1

        toggler = threading.Thread(target=toggle, daemon=True)
        toggler.start()
        try:
            for _ in range(100):
                assert_echo_response(client, server)
        finally:
            running.clear()
            toggler.join(scaled(10))
        self.assertEqual(errors, [])
        self.assertGreater(rounds[0], 0, "no toxic was added while the echoes crossed")

    def test_toxicity(self):
        """TestToxicity (link_test.go): a timeout with toxicity 0 lets the bytes through;
        updated to toxicity 1 and a timeout of 100 ms, it closes the same live connection
        (Toxiproxy: end of stream within 150 ms; here the bound is generous)."""
        client, server = self.established()
        self.add_toxic("test", "timeout", "downstream", name="timeout1", toxicity=0,
                       attributes={"timeout": 0})
        server.sendall(b"*")
        self.assertEqual(recv_exact(client, 1), b"*")
        start = time.monotonic()
        self.update_toxic("test", "timeout1", {"timeout": 100}, toxicity=1)
        server.sendall(b"*")
        data, how = read_until_closed(client, scaled(5))
        elapsed = time.monotonic() - start
        self.assertEqual(data, b"", "a byte passed the timeout once its toxicity was 1")
        self.assertIn(how, ("eof", "reset"))
        self.assertGreaterEqual(elapsed, 0.1 - 0.005)
        self.assertLess(elapsed, 0.1 + scaled(1))

    def test_remove_toxic_with_broken_connection(self):
        """TestRemoveToxicWithBrokenConnection (link_test.go): bandwidth toxics both ways on
        a connection the client breaks (a reset) while it writes; removing them answers at
        once. Toxiproxy's rate is 0 there, which stalls its bandwidth toxic; the server
        refuses a rate of 0 (README), so the rate is 1 KB/s, which stalls it as well."""
        client, _ = self.established()
        for stream in ("downstream", "upstream"):
            self.add_toxic("test", "bandwidth", stream, attributes={"rate": 1})
        counter = struct.pack(">H", 42)
        client.settimeout(scaled(5))
        try:
            for _ in range(2000):
                client.sendall(counter)
        except OSError:
            pass  # the proxy may stop reading: the toxic holds what it read
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset, not a FIN
        for stream in ("downstream", "upstream"):
            start = time.monotonic()
            self.remove_toxic("test", "bandwidth_" + stream)
            self.assertLess(time.monotonic() - start, scaled(2), stream)
        self.assertEqual(self.toxics("test"), [])

    def test_changing_a_toxic_reaches_a_live_connection(self):
        client, server = self.established()
        self.add_toxic("test", "latency", "downstream", attributes={"latency": 100})
        for latency in (100, 600, 0):
            if latency != 100:
                self.update_toxic("test", "latency_downstream", {"latency": latency})
            start = time.monotonic()
            server.sendall(b"tick")
            self.assertEqual(recv_exact(client, 4), b"tick")
            elapsed = time.monotonic() - start
            self.assertGreaterEqual(elapsed, latency / 1000.0 - 0.005, latency)
            self.assertLess(elapsed, latency / 1000.0 + scaled(0.5), latency)
        self.remove_toxic("test", "latency_downstream")
        assert_echo_response(client, server)


class NoDataDroppedTest(ApiTestCase):
    """link_test.go's TestNoDataDropped, end to end: 65,535 two-byte counters cross the proxy
    (each way) while a latency toxic of 1000 ms is added and removed over and over; every
    byte arrives, in order, then the end of stream."""

    def run_case(self, stream):
        upstream = self.upstream()
        proxy = self.create_proxy("test", upstream.address)
        client = self.dial(proxy["listen"])
        server = self.keep(upstream.next_connection())
        sender, receiver = (server, client) if stream == "downstream" else (client, server)
        payload = b"".join(struct.pack(">H", i) for i in range(65535))
        done = threading.Event()
        cycles = [0]
        errors = []

        def toggle():
            while not done.is_set() and cycles[0] < 5000:
                add = self.api.post("/proxies/test/toxics",
                                    {"type": "latency", "stream": stream,
                                     "attributes": {"latency": 1000}})
                remove = self.api.delete("/proxies/test/toxics/latency_" + stream)
                if add.status != 200 or remove.status != 204:
                    errors.append((add, remove))
                    return
                cycles[0] += 1

        def send():
            for at in range(0, len(payload), 1024):
                sender.sendall(payload[at:at + 1024])
            sender.shutdown(socket.SHUT_WR)

        toggler = threading.Thread(target=toggle, daemon=True)
        writer = threading.Thread(target=send, daemon=True)
        toggler.start()
        writer.start()
        try:
            data, how = read_until_closed(receiver, scaled(30))
        finally:
            done.set()
            toggler.join(scaled(10))
            writer.join(scaled(10))
        self.assertEqual(errors, [])
        self.assertGreater(cycles[0], 0)
        self.assertEqual(len(data), len(payload), "got %d of %d bytes (%s)"
                         % (len(data), len(payload), how))
        for i in range(0, len(payload), 2):
            if data[i:i + 2] != payload[i:i + 2]:
                self.fail("read incorrect bytes at counter %d: %r" % (i // 2, data[i:i + 2]))
        self.assertEqual(how, "eof")

    def test_no_data_dropped_downstream(self):
        self.run_case("downstream")

    def test_no_data_dropped_upstream(self):
        self.run_case("upstream")


class ConfigTest(unittest.TestCase):
    """`--config FILE` loads a JSON array of proxies (the /populate shape) at start; SIGINT
    ends the server with 0 as SIGTERM does."""

    def test_config_file_at_start_and_sigint(self):
        echo = EchoUpstream()
        self.addCleanup(echo.close)
        port, disabled_port = free_port(), free_port()
        config = [{"name": "web", "listen": loopback(port), "upstream": echo.address},
                  {"name": "off", "listen": loopback(disabled_port), "upstream": echo.address,
                   "enabled": False}]
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(config, handle)
        self.addCleanup(os.unlink, handle.name)
        server = ApiServer(CLI, ["--config", handle.name])
        self.addCleanup(server.kill)
        api = ApiClient(server.host, server.port)
        proxies = api.get("/proxies").json()
        self.assertEqual(sorted(proxies), ["off", "web"])
        self.assertEqual(proxies["web"]["listen"], loopback(port))
        self.assertTrue(proxies["web"]["enabled"])
        self.assertFalse(proxies["off"]["enabled"])
        self.assertFalse(can_connect(loopback(disabled_port)))
        conn = connect(loopback(port))
        conn.sendall(b"ping")
        self.assertEqual(recv_exact(conn, 4), b"ping")
        conn.close()
        self.assertEqual(server.stop(signal.SIGINT), 0, server.stderr_text())

    def test_listening_line_is_the_only_stdout_line(self):
        server = ApiServer(CLI)
        self.addCleanup(server.kill)
        self.assertEqual(ApiClient(server.host, server.port).get("/version").status, 200)
        self.assertEqual(server.stop(), 0)
        self.assertEqual(server.stdout_after_listening(), b"")


def main():
    global CLI
    CLI = require_cli(take_cli_argument(sys.argv))
    unittest.main(verbosity=2)


if __name__ == "__main__":
    main()
