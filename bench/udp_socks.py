#!/usr/bin/env python3
"""bench/udp_socks.py [--quick]: SOCKS5 UDP ASSOCIATE through tinyproxy --socks and Dante.

Issue 18's benchmark, on loopback, side by side in one run: a UDP echo (bench/udp_load echo)
reached directly (the baseline), through tinyproxy --socks (poll and thread policies) and
through Dante (danted, Debian's dante-server). The client is bench/udp_load: datagrams per
second with 32 in flight at 64 B and 1,200 B payloads, round-trip latency with one datagram in
flight, repeated with the target order alternating; then the memory each proxy holds per UDP
association. Installs dante-server with apt when missing (as bench/http_proxy.py does), builds
the Release CLI and udp_load into build/bench (TINYPROXY_BUILD_BENCH), prints the tables and
writes bench/results/<date>-<HHMM>-udp[-quick].json. Method: bench/README.md, "SOCKS5 UDP".
Dante's configuration is the template bench/conf/danted.conf. Every process it starts is ended
on exit, also on Ctrl-C and errors. Stdlib only."""
import os
import re
import selectors
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# What run.py and http_proxy.py do too is theirs and this one's in one place: tpbench/.
from tpbench.prepare import apt_install, cmake_build  # noqa: E402
from tpbench.procs import stop  # noqa: E402
from tpbench.sidebench import (BUILD, OURS, ROOT, fill_template, finish_run,  # noqa: E402
                               free_port, log, machine_facts, medians_of, metric_tables, rss_kb,
                               run_main, tail, wait_port)

UDP_LOAD = os.path.join(BUILD, "bench", "udp_load")
DANTE = "/usr/sbin/danted"

SETTINGS = {
    # seconds per rate run; repetitions; round trips per rr run; associations held for memory
    "full": {"seconds": 5, "reps": 3, "window": 32, "rr_count": 2000, "held": 200},
    "quick": {"seconds": 1, "reps": 1, "window": 32, "rr_count": 2000, "held": 50},
}
SIZES = (64, 1200)  # payload bytes of the rate runs; rr uses the first

# The targets, in the order of odd repetitions (even ones run them backwards).
TARGETS = [
    {"name": "direct", "label": "direct UDP to the echo (no proxy)", "kind": "direct"},
    {"name": "ours-poll", "label": "**tinyproxy.hpp --socks (poll)**", "kind": "ours",
     "args": ["--policy", "poll"]},
    {"name": "ours-thread", "label": "**tinyproxy.hpp --socks (thread)**", "kind": "ours",
     "args": ["--policy", "thread"]},
    {"name": "dante", "label": "Dante (danted)", "kind": "dante"},
]
OURS_NAMES = [t["name"] for t in TARGETS if t["kind"] == "ours"]

START_TIMEOUT = 20  # seconds for a proxy to listen
LISTENING = re.compile(r"listening on (\S+):(\d+)")


# ---------------------------------------------------------------- install and build
def install_dante(work, t0):
    """apt-get installs dante-server when danted is missing."""
    if not os.path.exists(DANTE):
        apt_install(["dante-server"], work, lambda text: log(t0, text), "Dante is reported missing")


def build_ours(work):
    """The Release CLI and udp_load in build/bench, configured with TINYPROXY_BUILD_BENCH=ON."""
    cmake_build(ROOT, BUILD, ["tinyproxy_cli", "tinyproxy_bench_udp_load"],
                os.path.join(work, "build.log"))


# ---------------------------------------------------------------- processes
class Runner:
    """Starts and ends the echo and the targets, each in a directory of its own in WORK."""

    def __init__(self, work):
        self.work = work
        self.procs = []  # everything started, ended in close() whatever happened
        self.dirs = {}  # process id -> the directory it runs in (its output is there)
        self.seq = 0

    def new_dir(self, key):
        self.seq += 1
        directory = os.path.join(self.work, f"{self.seq}-{key}")
        os.makedirs(directory)
        os.chmod(directory, 0o777)  # danted's children run as nobody and log here
        return directory

    def run(self, directory, argv, stdout=None):
        out = open(os.path.join(directory, "out"), "w")
        proc = subprocess.Popen(argv, stdout=stdout or out, stderr=out if stdout else
                                subprocess.STDOUT, cwd=directory, stdin=subprocess.DEVNULL,
                                text=True)
        out.close()
        self.procs.append(proc)
        self.dirs[proc.pid] = directory
        return proc

    def start_echo(self):
        """udp_load echo; returns its port (it prints it, one line)."""
        directory = self.new_dir("echo")
        proc = self.run(directory, [UDP_LOAD, "echo", "--time", "3600"], stdout=subprocess.PIPE)
        line = read_line(proc, START_TIMEOUT)
        if not line.strip().isdigit():
            sys.exit(f"udp_socks.py: the echo did not start: {line!r} {tail(directory)}")
        return int(line)

    def start_target(self, target):
        """Starts TARGET; returns (process or None for direct, port or None, why it failed)."""
        kind = target["kind"]
        if kind == "direct":
            return None, None, None
        directory = self.new_dir(target["name"])
        if kind == "ours":
            if not os.path.exists(OURS):
                return None, None, "not built"
            proc = self.run(directory, [OURS, "--socks", "--listen", "127.0.0.1:0",
                                        *target.get("args", [])])
            port = listening_port(directory, proc, START_TIMEOUT)
        elif kind == "dante":
            if not os.path.exists(DANTE):
                return None, None, "not installed"
            port = free_port()
            conf = os.path.join(directory, "danted.conf")
            fill_template("danted.conf", conf, dir=directory, port=port)
            proc = self.run(directory, [DANTE, "-f", conf, "-p",
                                        os.path.join(directory, "danted.pid")])
        else:
            raise ValueError(kind)
        if not port or not wait_port(port, proc, START_TIMEOUT):
            why = f"did not start: {tail(directory)}"
            stop(proc)
            return None, None, why
        time.sleep(0.3)  # Dante forks its children after it listens
        return proc, port, None

    def close(self):
        for proc in reversed(self.procs):
            stop(proc)
        self.procs = []


def read_line(proc, timeout):
    """One line of PROC's stdout within TIMEOUT s ("" when none came)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout):
            return proc.stdout.readline()
    return ""


def listening_port(directory, proc, timeout):
    """The port of the "listening on HOST:PORT" line ours prints, within TIMEOUT s."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        with open(os.path.join(directory, "out"), errors="replace") as f:
            found = LISTENING.search(f.read())
        if found:
            return int(found.group(2))
        time.sleep(0.05)
    return None


# ---------------------------------------------------------------- the client
def udp_load(mode, echo_port, proxy_port, *options, timeout):
    """One udp_load run; returns its key=value figures as floats, or {"error": why}."""
    argv = [UDP_LOAD, mode, "--target", f"127.0.0.1:{echo_port}"]
    if proxy_port:
        argv += ["--socks", f"127.0.0.1:{proxy_port}"]
    argv += [str(o) for o in options]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"udp_load {mode} timed out"}
    figures = dict(re.findall(r"(\w+)=([0-9.]+)", done.stdout))
    if done.returncode != 0 or not figures:
        return {"error": " ".join((done.stderr or done.stdout)[-200:].split()) or
                f"udp_load exited {done.returncode}"}
    return {key: float(value) for key, value in figures.items()}


def add(samples, name, prefix, figures):
    for key, value in figures.items():
        samples.setdefault(name, {}).setdefault(f"{prefix}_{key}", []).append(value)


# ---------------------------------------------------------------- phases
def phase_traffic(runner, echo_port, cfg, t0, samples, notes):
    """Every target started once; each repetition measures the rate at each size and the
    round-trip latency on each, odd repetitions in TARGETS order and even ones backwards."""
    started = {}
    for target in TARGETS:
        proc, port, why = runner.start_target(target)
        if why:
            notes.setdefault("missing", {})[target["name"]] = why
            log(t0, f"{target['name']}: {why}")
            continue
        started[target["name"]] = (proc, port)
        # Warm-up: a first association (and a thread's or child's start) is not counted.
        udp_load("rate", echo_port, port, "--time", 1, "--window", cfg["window"], timeout=30)
    names = list(started)
    for rep in range(cfg["reps"]):
        for name in names if rep % 2 == 0 else names[::-1]:
            proc, port = started[name]
            runs = [(f"rate{size}", "rate", ["--size", size, "--time", cfg["seconds"],
                                             "--window", cfg["window"]]) for size in SIZES]
            runs.append(("rr", "rr", ["--size", SIZES[0], "--count", cfg["rr_count"],
                                      "--time", 60]))
            for prefix, mode, options in runs:
                figures = udp_load(mode, echo_port, port, *options, timeout=90)
                if proc is not None and proc.poll() is not None:
                    figures = {"error": f"the proxy exited ({proc.returncode})"}
                if "error" in figures:
                    notes.setdefault("errors", []).append(f"{name} {prefix} rep {rep + 1}: "
                                                          f"{figures['error']}")
                    log(t0, f"{name} {prefix}: {figures['error']}")
                    continue
                add(samples, name, prefix, figures)
                shown = " ".join(f"{k}={v:g}" for k, v in figures.items())
                log(t0, f"rep {rep + 1} {name:11} {prefix:8} {shown}")
    for name, (proc, _) in started.items():
        stop(proc)
        summary = exit_summary(runner, proc)
        if summary:
            notes.setdefault("exit_summaries", {})[name] = summary
            log(t0, f"{name} at exit: {summary}")


def exit_summary(runner, proc):
    """The counters line ours prints when it ends (datagrams relayed and dropped), if any."""
    if proc is None:
        return None
    with open(os.path.join(runner.dirs[proc.pid], "out"), errors="replace") as f:
        lines = [line.strip() for line in f if "UDP association" in line]
    return lines[-1] if lines else None


def measure_memory(proc, port, echo_port, count, work):
    """RSS of PROC's tree before and while udp_load hold keeps COUNT associations."""
    before = rss_kb(proc.pid)
    directory = os.path.join(work, f"hold-{port}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "err"), "w") as err:
        hold = subprocess.Popen([UDP_LOAD, "hold", "--target", f"127.0.0.1:{echo_port}",
                                 "--socks", f"127.0.0.1:{port}", "--count", str(count),
                                 "--time", "120"], stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, text=True)
    try:
        line = read_line(hold, 100)
        held = int(re.search(r"held=(\d+)", line).group(1)) if "held=" in line else 0
        time.sleep(0.5)  # the last association's buffers settle
        during = rss_kb(proc.pid)
    finally:
        stop(hold)
    per = (during - before) / held if held else float("nan")
    return {"rss_before_kb": before, "rss_held_kb": during, "held": held, "asked": count,
            "kb_per_association": per}


def phase_memory(runner, echo_port, cfg, t0, samples, notes):
    """For each proxy, a fresh one holding cfg['held'] associations."""
    for target in TARGETS:
        if target["kind"] == "direct":
            continue
        proc, port, why = runner.start_target(target)
        if why:
            notes.setdefault("missing", {})[target["name"]] = why
            continue
        try:
            figures = measure_memory(proc, port, echo_port, cfg["held"], runner.work)
        finally:
            stop(proc)
        add(samples, target["name"], "mem", figures)
        log(t0, f"memory {target['name']:11} held {figures['held']}/{figures['asked']}  "
                f"{figures['rss_before_kb']} -> {figures['rss_held_kb']} KB  "
                f"{figures['kb_per_association']:.1f} KB/association")


# ---------------------------------------------------------------- report
METRICS = [  # (title, metric, unit, better, goal on ours ÷ dante, goal on ours ÷ direct)
    ("Datagrams/s, 64 B payload, 32 in flight", "rate64_datagrams_per_s", "datagrams/s",
     "higher", "≥ 3", ""),
    ("Datagrams/s, 1,200 B payload, 32 in flight", "rate1200_datagrams_per_s", "datagrams/s",
     "higher", "≥ 3", ""),
    ("Round-trip latency p50, 64 B, one in flight", "rr_p50_us", "µs", "lower", "", "≤ 1.5"),
    ("Round-trip latency p99, 64 B, one in flight", "rr_p99_us", "µs", "lower", "", "≤ 1.5"),
    ("Memory per UDP association", "mem_kb_per_association", "KB", "lower", "", ""),
]


def fmt(value, unit):
    if value is None or value != value:
        return "–"
    if unit == "datagrams/s":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def extra_column(metric, medians, name):
    """Beside a figure: datagrams lost (rate, rr), or associations held/asked (memory)."""
    m = medians.get(name, {})
    prefix = metric.split("_")[0]
    if prefix == "mem":
        return f"{m.get('mem_held', 0):.0f}/{m.get('mem_asked', 0):.0f}"
    if f"{prefix}_lost" not in m:
        return "–"
    late = m.get(f"{prefix}_late", 0)
    return f"{m[f'{prefix}_lost']:.0f}" + (f" ({late:.0f} late)" if late else "")


def report(medians, cfg, notes):
    lines = metric_tables(
        METRICS, TARGETS, OURS_NAMES, ("dante", "direct"), medians, fmt,
        (lambda metric: "held/asked" if metric.startswith("mem_") else "lost (median)",
         lambda metric, name: extra_column(metric, medians, name)),
        no_ratio=lambda metric, reference: metric.startswith("mem_") and reference == "direct")
    lines += [f"udp_load rate: {cfg['window']} datagrams in flight, {cfg['seconds']} s per run, "
              f"100 ms of silence counts those in flight lost; rr: {cfg['rr_count']} round trips; "
              f"median of {cfg['reps']} repetition(s); memory: {cfg['held']} associations held "
              "(each proven by one round trip), RSS delta of the proxy's process tree ÷ "
              "associations held.", ""]
    for name, why in sorted(notes.get("missing", {}).items()):
        lines.append(f"Missing: {name}: {why}")
    for error in notes.get("errors", []):
        lines.append(f"Error: {error}")
    for name, summary in sorted(notes.get("exit_summaries", {}).items()):
        lines.append(f"{name} at exit: `{summary}`")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- main
def run(mode, work, t0):
    cfg = SETTINGS[mode]
    runner = Runner(work)
    try:
        log(t0, "installing dante-server if missing, building tinyproxy and udp_load in "
                "build/bench")
        install_dante(work, t0)
        build_ours(work)
        facts = machine_facts("udp_socks.py", ("dante-server",))
        echo_port = runner.start_echo()
        samples, notes = {}, {}
        log(t0, f"datagrams/s at {', '.join(map(str, SIZES))} B ({cfg['seconds']} s, window "
                f"{cfg['window']}) and rr ({cfg['rr_count']}), {cfg['reps']} repetition(s)")
        phase_traffic(runner, echo_port, cfg, t0, samples, notes)
        log(t0, f"memory: {cfg['held']} associations per proxy")
        phase_memory(runner, echo_port, cfg, t0, samples, notes)
        medians = medians_of(samples)
        finish_run(t0, "udp", mode, facts, report(medians, cfg, notes), {
            "settings": dict(cfg, sizes=list(SIZES)),
            "targets": {t["name"]: t["label"] for t in TARGETS},
            "missing": notes.get("missing", {}), "errors": notes.get("errors", []),
            "exit_summaries": notes.get("exit_summaries", {}), "medians": medians,
            "samples": samples})
    finally:
        runner.close()


if __name__ == "__main__":
    sys.exit(run_main("udp_socks.py", __doc__, run))
