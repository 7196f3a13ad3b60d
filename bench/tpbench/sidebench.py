"""What the benchmarks beside run.py (http_proxy.py, udp_socks.py) share: their processes'
chores, the facts of a run, the medians and ratios of their tables, the JSON they write, and
the frame of their main(). Stdlib only."""
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from tpbench.procs import tree_pids
from tpbench.settings import raise_fd_limit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONF = os.path.join(ROOT, "bench", "conf")
BUILD = os.environ.get("BENCH_BUILD_DIR") or os.path.join(ROOT, "build", "bench")
OURS = os.path.join(BUILD, "examples", "tinyproxy")


def log(t0, text):
    print(f"[{time.time() - t0:4.0f}s] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes
def free_port():
    """A port nothing listens on now: bind port 0 and let the kernel choose."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(root):
    """VmRSS summed over ROOT's process tree, in KB (squid and nginx run several processes)."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total


def wait_port(port, proc, timeout):
    """True once 127.0.0.1:PORT accepts a connection, within TIMEOUT s, while PROC lives."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def fill_template(name, out_path, **values):
    """bench/conf/NAME with each @KEY@ replaced by its value, written to OUT_PATH."""
    with open(os.path.join(CONF, name)) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace(f"@{key.upper()}@", str(value))
    missing = re.findall(r"(?m)^[^#\n]*(@[A-Z_]+@)", text)
    if missing:
        raise ValueError(f"{name}: no value for {missing}")
    with open(out_path, "w") as f:
        f.write(text)


def tail(directory, size=200):
    """The last SIZE characters a process started in DIRECTORY wrote (its file "out")."""
    try:
        with open(os.path.join(directory, "out"), errors="replace") as f:
            return " ".join(f.read()[-size:].split())
    except OSError:
        return "no output"


# ---------------------------------------------------------------- facts of a run
def package_version(pkg):
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                          text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def our_commit():
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "include",
                            "examples"]).returncode
    return rev + ("+dirty" if dirty else "")


def machine_facts(script, packages):
    """The date, the command, the machine, the load, and the versions of PACKAGES and ours."""
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   "")
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"bench/{script}" + "".join(f" {a}" for a in sys.argv[1:]),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu,
        "load_average_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "versions": {pkg: package_version(pkg) for pkg in packages} |
                    {"tinyproxy.hpp": our_commit()},
    }


# ---------------------------------------------------------------- tables and results
def medians_of(samples):
    return {t: {m: statistics.median(v) for m, v in ms.items() if v} for t, ms in samples.items()}


def ratio(a, b):
    """A ÷ B as the tables print it ("–" when either is missing); three digits below 0.1."""
    if a is None or b is None or a != a or b != b or b == 0:
        return "–"
    value = a / b
    return f"{value:.3f}×" if value < 0.1 else f"{value:.2f}×"


def metric_tables(metrics, targets, ours, references, medians, fmt, extra, no_ratio=None):
    """The markdown tables of a side bench, one per metric: a row per target (direct left out of
    memory), its figure (FMT), what goes beside it (EXTRA: (header for a metric, cell for a
    metric and a target)), and for OURS a ratio to each of REFERENCES with its goal. METRICS:
    (title, metric, unit, "higher" or "lower", one goal per reference, "" for none).
    NO_RATIO(metric, reference): leave that ratio out. Returns the lines."""
    header, cell = extra
    lines = []
    for title, metric, unit, better, *goals in metrics:
        lines += [f"#### {title} ({unit}; {better} is better)", "",
                  f"| target | {unit} | {header(metric)} | "
                  + " | ".join(f"ours ÷ {r}" for r in references) + " |",
                  "|---|---|---|" + "---|" * len(references)]
        for target in targets:
            name = target["name"]
            if metric.startswith("mem_") and target["kind"] == "direct":
                continue
            value = medians.get(name, {}).get(metric)
            ratios = []
            for reference, goal in zip(references, goals):
                if name not in ours or (no_ratio and no_ratio(metric, reference)):
                    ratios.append("")
                    continue
                ratios.append(ratio(value, medians.get(reference, {}).get(metric))
                              + (f" (goal {goal})" if goal else ""))
            lines.append(f"| {target['label']} | {fmt(value, unit)} | {cell(metric, name)} | "
                         + " | ".join(ratios) + " |")
        lines.append("")
    return lines


def write_results(kind, mode, facts, fields):
    """bench/results/<date>-<HHMM>-KIND[-quick].json: FACTS and FIELDS; returns its path."""
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
    out = os.path.join(ROOT, "bench", "results",
                       f"{stamp}-{kind}{'-quick' if mode == 'quick' else ''}.json")
    with open(out, "w") as f:
        json.dump(dict(facts, mode=mode, **fields), f, indent=1, sort_keys=True)
        f.write("\n")
    return out


def finish_run(t0, kind, mode, facts, table, fields):
    """Prints the tables, completes the facts, writes the results, and says where."""
    print(table)
    facts["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    facts["seconds"] = round(time.time() - t0)
    out = write_results(kind, mode, facts, dict(fields, table_markdown=table))
    log(t0, f"wrote {os.path.relpath(out, ROOT)}")


# ---------------------------------------------------------------- main
def run_main(script, doc, body):
    """The frame of a side bench's main(): [--quick] or --help, the descriptor limit raised, a
    work directory (kept with KEEP_WORK=1), SIGTERM and Ctrl-C ending every process the body
    started (its own finally does that). BODY(mode, work, t0) does the run."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(doc)
        return 0
    unknown = [a for a in args if a != "--quick"]
    if unknown:
        print(f"{script}: unknown argument {unknown[0]} (only --quick)", file=sys.stderr)
        return 2
    mode = "quick" if "--quick" in args else "full"
    t0 = time.time()
    raise_fd_limit()
    work = tempfile.mkdtemp(prefix=f"tinyproxy-{script.split('.')[0]}-bench.")
    os.chmod(work, 0o755)
    # SIGTERM becomes an exception, so the body's finally ends every process it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        body(mode, work, t0)
        return 0
    except KeyboardInterrupt:
        log(t0, "interrupted")
        return 130
    finally:
        if os.environ.get("KEEP_WORK") == "1":
            print(f"{script}: logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def fd_soft_limit(cap=65536):
    """The descriptor soft limit (raised by run_main), at most CAP."""
    return min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], cap)
