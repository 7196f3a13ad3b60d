#!/usr/bin/env python3
"""bench/http_proxy.py [--quick]: tinyproxy --http against the HTTP proxies people deploy.

Issue 17's benchmark, on loopback, side by side in one run: an nginx origin serving one 1 KB
file, reached directly (the baseline), through tinyproxy --http (poll and thread policies),
through the tinyproxy C daemon (Debian's tinyproxy-bin) and through squid. The load client is
ab (apache2-utils): `ab -X PROXY -c C -t T [-k] http://127.0.0.1:ORIGIN/1k.bin`, with and
without keep-alive, repeated with the target order alternating; then the memory each proxy
holds per idle client. Installs the peers with apt when missing (as bench/run.sh does), builds
the Release CLI into build/bench, prints the tables and writes
bench/results/<date>-<HHMM>-http[-quick].json. Method: bench/README.md, "HTTP forward proxy".
The peers' configurations are the templates in bench/conf/. Every process it starts is ended
on exit, also on Ctrl-C and errors. Stdlib only."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# What run.py and udp_socks.py do too is theirs and this one's in one place: tpbench/.
from tpbench.prepare import apt_install, cmake_build  # noqa: E402
from tpbench.procs import stop  # noqa: E402
from tpbench.sidebench import (BUILD, OURS, ROOT, fd_soft_limit, fill_template,  # noqa: E402
                               finish_run, free_port, log, machine_facts, medians_of,
                               metric_tables, rss_kb, run_main, tail, wait_port)

DAEMON = "/usr/bin/tinyproxy"
SQUID = "/usr/sbin/squid"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
FILE_NAME = "1k.bin"
FILE_SIZE = 1024

SETTINGS = {
    # concurrency of ab; seconds per ab run; repetitions; idle clients held in the memory phase
    "full": {"concurrency": 32, "seconds": 5, "reps": 3, "held_clients": 500},
    "quick": {"concurrency": 32, "seconds": 1, "reps": 1, "held_clients": 100},
}

# The targets, in the order of odd repetitions (even ones run them backwards).
# kind: how the target is started (see start_target); args: extra arguments for ours.
TARGETS = [
    {"name": "direct", "label": "direct to nginx (no proxy)", "kind": "direct"},
    {"name": "ours-poll", "label": "**tinyproxy.hpp --http (poll)**", "kind": "ours",
     "args": ["--policy", "poll"]},
    {"name": "ours-poll2", "label": "**tinyproxy.hpp --http (poll, --loops 2)**", "kind": "ours",
     "args": ["--policy", "poll", "--loops", "2"]},
    {"name": "ours-thread", "label": "**tinyproxy.hpp --http (thread)**", "kind": "ours",
     "args": ["--policy", "thread"]},
    {"name": "daemon", "label": "tinyproxy C daemon", "kind": "daemon"},
    {"name": "squid", "label": "squid", "kind": "squid"},
]
OURS_NAMES = [t["name"] for t in TARGETS if t["kind"] == "ours"]
PROXY_NAMES = [t["name"] for t in TARGETS if t["kind"] != "direct"]

PACKAGES = {  # what must be there -> the Debian package that brings it
    "/usr/bin/ab": "apache2-utils",
    DAEMON: "tinyproxy-bin",
    SQUID: "squid",
    NGINX: "nginx-light",
}

START_TIMEOUT = 20  # seconds for a peer to listen (squid takes a few)


# ---------------------------------------------------------------- install and build
def install_missing(work, t0):
    """apt-get installs what PACKAGES lists and is missing."""
    want = [pkg for path, pkg in PACKAGES.items() if not os.path.exists(path)]
    if want:
        apt_install(want, work, lambda text: log(t0, text), "missing peers are reported")


def build_ours(work):
    """The Release CLI in build/bench (BENCH_BUILD_DIR), configured as run.py configures it."""
    cmake_build(ROOT, BUILD, ["tinyproxy_cli"], os.path.join(work, "build.log"))


# ---------------------------------------------------------------- processes
class Runner:
    """Starts and ends the origin and the targets, each in a directory of its own in WORK."""

    def __init__(self, work, fd_limit, max_clients):
        self.work = work
        self.fd_limit = fd_limit
        self.max_clients = max_clients
        self.procs = []  # everything started, ended in close() whatever happened
        self.seq = 0

    def new_dir(self, key):
        self.seq += 1
        directory = os.path.join(self.work, f"{self.seq}-{key}")
        os.makedirs(directory)
        os.chmod(directory, 0o777)
        return directory

    def start_origin(self):
        """nginx serving www/1k.bin; returns (process, port)."""
        directory = self.new_dir("origin")
        os.makedirs(os.path.join(directory, "www"))
        with open(os.path.join(directory, "www", FILE_NAME), "wb") as f:
            f.write(os.urandom(FILE_SIZE))
        port = free_port()
        conf = os.path.join(directory, "nginx.conf")
        fill_template("nginx-origin.conf", conf, dir=directory, port=port, fd_limit=self.fd_limit,
                      worker_connections=self.fd_limit // 2)
        proc = self.run(directory, [NGINX, "-p", directory, "-e", os.path.join(directory, "err"),
                                    "-c", conf, "-g", "daemon off;"])
        if not wait_port(port, proc, START_TIMEOUT):
            sys.exit(f"http_proxy.py: the nginx origin did not start: {tail(directory)}")
        return proc, port

    def run(self, directory, argv):
        out = open(os.path.join(directory, "out"), "w")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=directory,
                                stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append(proc)
        return proc

    def start_target(self, target):
        """Starts TARGET; returns (process or None for direct, port or None, why it failed)."""
        kind = target["kind"]
        if kind == "direct":
            return None, None, None
        directory = self.new_dir(target["name"])
        port = free_port()
        if kind == "ours":
            if not os.path.exists(OURS):
                return None, None, "not built"
            proc = self.run(directory, [OURS, "--listen", f"127.0.0.1:{port}", "--http",
                                        "--max-connections", str(self.fd_limit), "--quiet",
                                        *target.get("args", [])])
        elif kind == "daemon":
            if not os.path.exists(DAEMON):
                return None, None, "not installed"
            conf = os.path.join(directory, "tinyproxy.conf")
            fill_template("tinyproxy-daemon.conf", conf, dir=directory, port=port,
                          max_clients=self.max_clients)
            proc = self.run(directory, [DAEMON, "-d", "-c", conf])
        elif kind == "squid":
            if not os.path.exists(SQUID):
                return None, None, "not installed"
            conf = os.path.join(directory, "squid.conf")
            fill_template("squid.conf", conf, dir=directory, port=port, fd_limit=self.fd_limit)
            proc = self.run(directory, [SQUID, "-N", "-f", conf])
        else:
            raise ValueError(kind)
        if not wait_port(port, proc, START_TIMEOUT):
            why = f"did not start: {tail(directory)}"
            stop(proc)
            return None, None, why
        time.sleep(0.2)  # squid and nginx finish starting their processes
        return proc, port, None

    def close(self):
        for proc in reversed(self.procs):
            stop(proc)
        self.procs = []


# ---------------------------------------------------------------- load: ab
def run_ab(proxy_port, origin_port, concurrency, seconds, keep_alive, work):
    """One ab run, bounded by SECONDS (and a timeout of its own); returns its figures."""
    csv_path = os.path.join(work, "ab-percentiles.csv")
    argv = ["ab", "-q", "-r", "-s", "10", "-c", str(concurrency), "-t", str(seconds),
            "-n", "100000000", "-e", csv_path]
    if keep_alive:
        argv.append("-k")
    if proxy_port:
        argv += ["-X", f"127.0.0.1:{proxy_port}"]
    argv.append(f"http://127.0.0.1:{origin_port}/{FILE_NAME}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return {"error": "ab timed out"}
    text = done.stdout
    if done.returncode != 0 or "Requests per second" not in text:
        return {"error": " ".join((done.stderr or text)[-200:].split())}

    def number(field):
        found = re.search(rf"^{re.escape(field)}:\s+([0-9.]+)", text, re.M)
        return float(found.group(1)) if found else 0.0

    percentiles = {}
    with open(csv_path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) == 2 and parts[0].isdigit():
                percentiles[int(parts[0])] = float(parts[1])
    return {
        "rps": number("Requests per second"),
        "p50_ms": percentiles.get(50, float("nan")),
        "p99_ms": percentiles.get(99, float("nan")),
        "complete": number("Complete requests"),
        "failed": number("Failed requests"),
        "non_2xx": number("Non-2xx responses"),
        "keep_alive_requests": number("Keep-Alive requests"),
    }


# ---------------------------------------------------------------- memory: idle clients
def request_bytes(origin_port):
    # As ab sends it, but HTTP/1.1, as curl and browsers do: the connection stays open after.
    return (f"GET http://127.0.0.1:{origin_port}/{FILE_NAME} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{origin_port}\r\nUser-Agent: bench-http-proxy\r\n"
            "Accept: */*\r\n\r\n").encode()


def read_response(sock, deadline):
    """Reads one response with a Content-Length body; True when it is whole and a 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        if time.time() > deadline:
            return False
        chunk = sock.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")) or not length:
        return False
    while len(body) < int(length.group(1)):
        if time.time() > deadline:
            return False
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def still_open(sock):
    """True when the peer has not closed SOCK (nothing to read, or bytes still to read)."""
    sock.setblocking(False)  # a socket with a timeout would wait that long for a byte
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def hold_clients(proxy_port, origin_port, count, state, time_limit):
    """Opens up to COUNT clients to the proxy within TIME_LIMIT s and leaves them idle.
    state 'after-request': each had one whole keep-alive exchange first.
    state 'mid-request': each sent the request line and one header, not the end of the head.
    Returns (sockets, failures)."""
    deadline = time.time() + time_limit
    request = request_bytes(origin_port)
    socks, failures = [], 0
    for _ in range(count):
        if time.time() > deadline:
            break
        try:
            sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
        except OSError:
            failures += 1
            continue
        socks.append(sock)
        try:
            if state == "after-request":
                sock.sendall(request)
                if not read_response(sock, min(deadline, time.time() + 5)):
                    failures += 1
            else:
                sock.sendall(request[: request.index(b"\r\n", request.index(b"\r\n") + 2) + 2])
        except OSError:
            failures += 1
    return socks, failures


def measure_memory(proc, proxy_port, origin_port, count, state):
    """RSS of the proxy's tree after one warm-up exchange, then while COUNT idle clients in
    STATE are held; returns the figures (KB per held client is the delta over those held)."""
    warm, _ = hold_clients(proxy_port, origin_port, 1, "after-request", 10)
    for s in warm:
        s.close()
    time.sleep(0.3)
    before = rss_kb(proc.pid)
    socks, failures = hold_clients(proxy_port, origin_port, count, state, 60)
    try:
        time.sleep(0.5)  # lets the proxy finish the work of the last ones
        during = rss_kb(proc.pid)
        held = sum(1 for s in socks if still_open(s))
    finally:
        for s in socks:
            s.close()
    per_client = (during - before) / held if held else float("nan")
    return {"rss_before_kb": before, "rss_held_kb": during, "opened": len(socks),
            "held": held, "failures": failures, "kb_per_client": per_client}


# ---------------------------------------------------------------- phases
def phase_throughput(runner, origin_port, cfg, targets, t0, samples, notes):
    """Every target started once; each repetition runs ab on each, keep-alive and without,
    odd repetitions in TARGETS order and even ones backwards."""
    started = {}
    for target in targets:
        proc, port, why = runner.start_target(target)
        if why:
            notes.setdefault("missing", {})[target["name"]] = why
            log(t0, f"{target['name']}: {why}")
            continue
        started[target["name"]] = (target, proc, port)
        # Warm-up: the first connections (and a thread pool's first threads) are not counted.
        run_ab(port, origin_port, cfg["concurrency"], 1, True, runner.work)
    names = list(started)
    for rep in range(cfg["reps"]):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            _, proc, port = started[name]
            for keep_alive in (True, False):
                mode = "ka" if keep_alive else "close"
                figures = run_ab(port, origin_port, cfg["concurrency"], cfg["seconds"],
                                 keep_alive, runner.work)
                if proc is not None and proc.poll() is not None:
                    figures = {"error": f"the proxy exited ({proc.returncode})"}
                if "error" in figures:
                    notes.setdefault("errors", []).append(f"{name} {mode} rep {rep + 1}: "
                                                          f"{figures['error']}")
                    log(t0, f"{name} {mode}: {figures['error']}")
                    continue
                for key, value in figures.items():
                    samples.setdefault(name, {}).setdefault(f"{mode}_{key}", []).append(value)
                log(t0, f"rep {rep + 1} {name:11} {mode:5} {figures['rps']:9.0f} req/s  "
                        f"p50 {figures['p50_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms  "
                        f"keep-alive {figures['keep_alive_requests']:.0f}  "
                        f"failed {figures['failed']:.0f}  non-2xx {figures['non_2xx']:.0f}")
    for _, proc, _ in started.values():
        stop(proc)


def phase_memory(runner, origin_port, cfg, targets, t0, samples, notes):
    """For each proxy and each client state, a fresh proxy holding cfg['held_clients']."""
    for state in ("after-request", "mid-request"):
        for target in targets:
            if target["kind"] == "direct":
                continue
            proc, port, why = runner.start_target(target)
            if why:
                notes.setdefault("missing", {})[target["name"]] = why
                continue
            try:
                figures = measure_memory(proc, port, origin_port, cfg["held_clients"], state)
            finally:
                stop(proc)
            for key, value in figures.items():
                samples.setdefault(target["name"], {}).setdefault(f"mem_{state}_{key}",
                                                                  []).append(value)
            log(t0, f"memory {state:13} {target['name']:11} held {figures['held']}/"
                    f"{figures['opened']}  {figures['rss_before_kb']} -> "
                    f"{figures['rss_held_kb']} KB  {figures['kb_per_client']:.1f} KB/client")


# ---------------------------------------------------------------- report
METRICS = [  # (title, metric, unit, better: "higher" or "lower", goal on ours/daemon, ours/squid)
    ("Requests/s with keep-alive (ab -k)", "ka_rps", "req/s", "higher", "≥ 2", "≥ 1.2"),
    ("Requests/s without keep-alive", "close_rps", "req/s", "higher", "≥ 2", "≥ 1.2"),
    ("p50 latency with keep-alive", "ka_p50_ms", "ms", "lower", "", ""),
    ("p99 latency with keep-alive", "ka_p99_ms", "ms", "lower", "", ""),
    ("p50 latency without keep-alive", "close_p50_ms", "ms", "lower", "", ""),
    ("p99 latency without keep-alive", "close_p99_ms", "ms", "lower", "", ""),
    ("Memory per idle keep-alive client (after one request)", "mem_after-request_kb_per_client",
     "KB", "lower", "< 1", "< 1"),
    ("Memory per client in the middle of its request head", "mem_mid-request_kb_per_client",
     "KB", "lower", "< 1", "< 1"),
]


def fmt(value, unit):
    if value is None or value != value:
        return "–"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    return f"{value:,.1f}"


def extra_column(metric, target, medians):
    """What goes beside a figure: held clients for memory, keep-alive requests for ab."""
    m = medians.get(target, {})
    if metric.startswith("mem_"):
        state = metric.split("_")[1]
        return f"{m.get(f'mem_{state}_held', 0):.0f}/{m.get(f'mem_{state}_opened', 0):.0f}"
    mode = metric.split("_")[0]
    done = m.get(f"{mode}_complete")
    ka = m.get(f"{mode}_keep_alive_requests")
    bad = m.get(f"{mode}_failed", 0) + m.get(f"{mode}_non_2xx", 0)
    if done is None:
        return "–"
    return f"{ka / done:.0%} kept" + (f", {bad:.0f} failed" if bad else "")


def report(medians, cfg, notes):
    lines = metric_tables(
        METRICS, TARGETS, OURS_NAMES, ("daemon", "squid"), medians, fmt,
        (lambda metric: "held/opened" if metric.startswith("mem_") else "keep-alive; failed",
         lambda metric, name: extra_column(metric, name, medians)))
    lines += [f"ab: -c {cfg['concurrency']}, -t {cfg['seconds']} s per run, median of "
              f"{cfg['reps']} repetition(s), a {FILE_SIZE} B file; memory: "
              f"{cfg['held_clients']} clients held, RSS delta of the proxy's process tree ÷ "
              "clients still open.", ""]
    for name, why in sorted(notes.get("missing", {}).items()):
        lines.append(f"Missing: {name}: {why}")
    for error in notes.get("errors", []):
        lines.append(f"Error: {error}")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- main
def run(mode, work, t0):
    cfg = SETTINGS[mode]
    fd_limit = fd_soft_limit()
    runner = Runner(work, fd_limit, 2 * cfg["held_clients"] + 4 * cfg["concurrency"])
    try:
        log(t0, "installing what is missing, building tinyproxy (Release) in build/bench")
        install_missing(work, t0)
        if not shutil.which("ab"):
            sys.exit("http_proxy.py: ab (apache2-utils) is required")
        build_ours(work)
        facts = machine_facts("http_proxy.py", ("nginx", "squid", "tinyproxy-bin",
                                                "apache2-utils"))
        _, origin_port = runner.start_origin()
        samples, notes = {}, {}
        log(t0, f"requests/s and latency: ab -c {cfg['concurrency']} -t {cfg['seconds']}, "
                f"{cfg['reps']} repetition(s)")
        phase_throughput(runner, origin_port, cfg, TARGETS, t0, samples, notes)
        log(t0, f"memory: {cfg['held_clients']} idle clients per proxy")
        phase_memory(runner, origin_port, cfg, TARGETS, t0, samples, notes)
        medians = medians_of(samples)
        finish_run(t0, "http", mode, facts, report(medians, cfg, notes), {
            "settings": dict(cfg, file_bytes=FILE_SIZE),
            "targets": {t["name"]: t["label"] for t in TARGETS},
            "missing": notes.get("missing", {}), "errors": notes.get("errors", []),
            "medians": medians, "samples": samples})
    finally:
        runner.close()


if __name__ == "__main__":
    sys.exit(run_main("http_proxy.py", __doc__, run))
