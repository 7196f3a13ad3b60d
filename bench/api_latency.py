#!/usr/bin/env python3
"""bench/api_latency.py --api HOST:PORT [--proxy b] [--pairs 200] [--hold-ms 20] [--gap-ms 20]

First times --gets (50) calls of GET /version, which change nothing: the API's own round trip,
each after --gap-ms as the others.
Then times the Toxiproxy API calls that add a toxic to a proxy (POST /proxies/NAME/toxics) and
remove it (DELETE /proxies/NAME/toxics/TOXIC), --pairs times, on one keep-alive connection, as
a test suite's client does. The pairs alternate a latency toxic of 1 ms (downstream) and a
bandwidth toxic of 10,000 KB/s (upstream); each stays --hold-ms, then --gap-ms pass before the
next. Before and after, it reads the proxy's counters from GET /metrics: connections open, how
those that ended ended, how often each toxic applied. Prints one line of KEY VALUE pairs
(times in microseconds) for bench/run.sh --api; every call's failure goes to stderr. Stdlib
only; bounded by --time-limit and a --timeout per call."""
import argparse
import http.client
import json
import re
import socket
import sys
import time

# (type, stream, attributes): small enough that 1,000 tunnels pinging keep their pace.
TOXICS = (
    ("latency", "downstream", {"latency": 1}),
    ("bandwidth", "upstream", {"rate": 10000}),
)
CLOSE_REASONS = ("clean", "reset", "timeout", "unreachable", "fault", "stopped", "error")


class Api:
    """One keep-alive HTTP connection to the API, opened again (untimed) when it broke."""

    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = None
        self.reconnects = 0

    def _connect(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.conn.connect()
        # http.client sends a small body with its head in one write; NODELAY keeps a
        # response-less wait for a delayed ACK out of the timings all the same.
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, method, path, body=None):
        """(status or None, seconds, response body or the error)."""
        if self.conn is None:
            self._connect()
            self.reconnects += 1
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        start = time.perf_counter()
        try:
            self.conn.request(method, path, body=data, headers=headers)
            response = self.conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as e:
            elapsed = time.perf_counter() - start
            self.conn.close()
            self.conn = None
            return None, elapsed, repr(e)
        elapsed = time.perf_counter() - start
        if response.will_close:
            self.conn.close()
            self.conn = None
        return response.status, elapsed, payload


def metrics_of(api, proxy):
    """{name or name:label: value} of `proxy`'s samples in GET /metrics, {} when it failed."""
    status, _, body = api.call("GET", "/metrics")
    if status != 200:
        return {}
    found = {}
    pattern = re.compile(r'^(\w+)\{proxy="([^"]*)"(?:,\w+="([^"]*)")?\} (\S+)$')
    for line in body.decode(errors="replace").splitlines():
        m = pattern.match(line)
        if m and m.group(2) == proxy:
            key = m.group(1) + (":" + m.group(3) if m.group(3) else "")
            found[key] = float(m.group(4))
    return found


def at(sorted_values, q):
    """The q-quantile as bench/load takes it: the value at index q * (n - 1)."""
    return sorted_values[int(q * (len(sorted_values) - 1))]


def summary(prefix, seconds):
    """KEY VALUE pairs: count, p50, p99, max (µs) of `seconds`."""
    if not seconds:
        return [(prefix + "count", 0)]
    v = sorted(s * 1e6 for s in seconds)
    return [(prefix + "count", len(v)), (prefix + "p50_us", f"{at(v, 0.50):.1f}"),
            (prefix + "p99_us", f"{at(v, 0.99):.1f}"), (prefix + "max_us", f"{v[-1]:.1f}")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", required=True, help="the API's HOST:PORT")
    parser.add_argument("--proxy", default="b")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--hold-ms", type=float, default=20)
    parser.add_argument("--gap-ms", type=float, default=20)
    parser.add_argument("--gets", type=int, default=50, help="GET /version calls first")
    parser.add_argument("--timeout", type=float, default=10, help="seconds per call")
    parser.add_argument("--time-limit", type=float, default=120, help="seconds in all")
    a = parser.parse_args()
    host, _, port = a.api.rpartition(":")
    api = Api(host, int(port), a.timeout)

    # A call that changes nothing first: the API's own round trip, the floor of the others.
    # Each after the same pause as theirs: a call on a CPU woken from sleep takes longer.
    gets = []
    for _ in range(a.gets):
        time.sleep(a.gap_ms / 1000)
        status, seconds, _ = api.call("GET", "/version")
        if status == 200:
            gets.append(seconds)
    before = metrics_of(api, a.proxy)
    adds = {kind[0]: [] for kind in TOXICS}
    removes = {kind[0]: [] for kind in TOXICS}
    errors = 0

    def failed(what, status, detail):
        nonlocal errors
        errors += 1
        if errors <= 5:
            print(f"api_latency: {what}: {status} {detail[:200]!r}", file=sys.stderr)

    started = time.perf_counter()
    done = 0
    for i in range(a.pairs):
        if time.perf_counter() - started > a.time_limit:
            print(f"api_latency: stopped at the time limit after {done} pairs", file=sys.stderr)
            break
        kind, stream, attributes = TOXICS[i % len(TOXICS)]
        name = f"bench_{kind}_{i}"
        body = {"name": name, "type": kind, "stream": stream, "toxicity": 1.0,
                "attributes": attributes}
        path = f"/proxies/{a.proxy}/toxics"
        status, seconds, detail = api.call("POST", path, body)
        if status == 200:
            adds[kind].append(seconds)
        else:
            failed(f"POST {path} ({name})", status, detail)
        time.sleep(a.hold_ms / 1000)
        status, seconds, detail = api.call("DELETE", f"{path}/{name}")
        if status == 204:
            removes[kind].append(seconds)
        else:
            failed(f"DELETE {path}/{name}", status, detail)
        done += 1
        time.sleep(a.gap_ms / 1000)
    elapsed = time.perf_counter() - started
    after = metrics_of(api, a.proxy)
    status, _, left = api.call("GET", f"/proxies/{a.proxy}/toxics")
    toxics_left = len(json.loads(left)) if status == 200 else -1

    pairs = [("pairs", done), ("seconds", f"{elapsed:.3f}"), ("errors", errors),
             ("reconnects", api.reconnects - 1), ("toxics_left", toxics_left)]
    pairs += summary("get_", gets)
    pairs += summary("add_", [s for v in adds.values() for s in v])
    pairs += summary("remove_", [s for v in removes.values() for s in v])
    for kind, _, _ in TOXICS:
        pairs += summary(f"{kind}_add_", adds[kind])
        pairs += summary(f"{kind}_remove_", removes[kind])
    if before and after:
        active = "tinyproxy_proxy_connections_active"
        pairs += [("active_before", f"{before.get(active, -1):.0f}"),
                  ("active_after", f"{after.get(active, -1):.0f}")]
        for key, out in [(f"tinyproxy_proxy_connections_closed_total:{r}", f"closed_{r}")
                         for r in CLOSE_REASONS] + \
                        [(f"tinyproxy_proxy_toxics_applied_total:{k}", f"applied_{k}")
                         for k, _, _ in TOXICS] + \
                        [("tinyproxy_proxy_connections_accepted_total", "accepted")]:
            pairs.append((out, f"{after.get(key, 0) - before.get(key, 0):.0f}"))
    else:
        pairs.append(("metrics_failed", 1))
    print(" ".join(f"{k} {v}" for k, v in pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
