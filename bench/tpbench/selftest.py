"""--self-test: every mode once, briefly, against one peer, so that the bench cannot rot
unnoticed (CI runs it). Each mode runs in a fresh work directory with tiny settings and few
targets; a mode fails when it raises, or when a sample it must take is missing. Nothing goes
to bench/results/."""
import contextlib
import io
import json
import os
import shutil
import sys
import time
import traceback

from report import load_samples

from . import modes, phases, prepare, procs, targets
from .bench import Bench


def tiny(s):
    """S cut down to seconds: one repetition, short runs, few connections."""
    s.reps, s.bulk_time, s.rate_time, s.bulk_streams = 1, 1, 0.5, (1,)
    s.rr_count, s.rr_mixed_count, s.hold_counts, s.open_time = 300, 100, [50], 10
    s.delay_n, s.delay_time, s.latbulk_rounds, s.latbulk_time = 50, 1, 1, 0.5
    s.bw_reps, s.bw_rates, s.bw_times = 1, [1000], [1]
    s.stage_rounds, s.stage_time, s.stage_policies = 1, 1, ["poll"]
    s.api_rounds, s.api_time, s.api_rr_count, s.api_streams = 1, 1, 300, [1]
    s.api_delay_rounds, s.api_delay_time, s.api_idle_pairs, s.api_pairs = 1, 1, 5, 10
    s.api_tunnels = 50
    return s


def _peer():
    """The one peer: haproxy, else socat (forwarders every Debian has)."""
    for name in ("haproxy", "socat", "rinetd"):
        if targets.peer_program(name):
            return name
    return None


def _has(samples, name, *metrics):
    missing = [m for m in metrics if m not in samples.get(name, {})]
    return [f"{name}: no {m}" for m in missing]


def checks(peer):
    """(mode, function(b, results) running it, function(samples, stdout) -> problems)."""
    fwd = ["direct", peer, "tp-poll"] if peer else ["direct", "tp-poll"]
    socks = ["tp-socks-poll"]

    def full(b, results):
        out = modes.full(b, "bench/run.py --self-test", results, forwarders=fwd, socks=socks,
                         mixed=False)
        if prepare.has_matplotlib():
            charts = os.path.splitext(out)[0] + "-charts"
            svgs = [f for f in os.listdir(charts) if f.endswith(".svg")] if os.path.isdir(
                charts) else []
            print(f"charts: {len(svgs)}" if len(svgs) == 5 else "no charts")

    def full_ok(samples, out):
        problems = []
        for name in fwd[1:]:
            problems += _has(samples, name, "bulk1_gbps", "rate_cps", "rr_p50_us",
                             "rrpin_p50_us", "mem_50_rss_kb")
        problems += _has(samples, "tp-socks-poll", "lbulk1_gbps", "rate_cps", "rr_p50_us")
        problems += _has(samples, "tp-poll", "rate_sys_cpu_us_per_conn", "rr_p99.9_us")
        if "no charts" in out:
            problems.append("report.py --charts failed")
        return problems

    def levers(b, results):
        modes.full(b, "bench/run.py --self-test", results, levers=True,
                   forwarders=["direct", "tp-loops2"], socks=[], mixed=False)

    def levers_ok(samples, _):
        return _has(samples, "tp-loops2", "bulk1_gbps", "rate_cps", "mem_50_rss_kb")

    def mixed(b, _):
        modes.mixed_only(b, forwarders=["tp-poll"], socks=[])

    def floor(b, results):
        modes.floor(b, results, bulk_forwarders=["direct", "floor-splice"],
                    forwarders=["direct", "tp-poll", "floor"], socks=["floor-socks"])

    def ab(b, _):
        b.programs["baseline"] = b.programs["tp"]
        b.progress.quiet = True
        phases.phase_ab(b, targets.AB_FORWARDERS, targets.AB_SOCKS, rounds=1, seconds=1,
                        rr_count=300)
        from . import summaries
        print(summaries.ab_table(load_samples(b.raw)))

    def faults(b, results):
        modes.run_faults(b, "bench/run.py --self-test", results)

    def api(b, results):
        modes.run_api(b, "bench/run.py --self-test", results)

    def syscalls(b, _):
        if not shutil.which("perf"):
            print("perf missing: skipped")
            return
        phases.phase_syscalls(b, seconds=0.5, round_trips=300)

    def syscalls_ok(_, out):
        if "perf missing" in out:
            return []
        return ["a target missing: " + out] if "missing" in out else []

    def targets_report(b, _):
        # report.py --targets on the newest full run and --floor run in bench/results.
        import report
        results = os.path.join(b.root, "bench", "results")
        runs = sorted(f for f in os.listdir(results) if f.endswith("-full.json"))
        floors = sorted(f for f in os.listdir(results) if f.endswith("-floor.tsv"))
        print(report.targets_table(os.path.join(results, runs[-1]),
                                   os.path.join(results, floors[-1])))

    def targets_ok(_, out):
        rows = [line for line in out.splitlines() if line.startswith("| ")]
        return [] if len(rows) >= 16 else ["report.py --targets printed: " + out[-300:]]

    return [
        ("default", full, full_ok),
        ("--levers", levers, levers_ok),
        ("--mixed", mixed, lambda s, _: _has(s, "tp-poll", "mixrr_p50_us")),
        ("--floor", floor, lambda s, _: _has(s, "floor", "rate_cps", "rrpin_p50_us")
         + _has(s, "floor-splice", "bulk1_gbps") + _has(s, "floor-socks", "rate_cps")),
        ("--ab", ab, lambda s, _: _has(s, "tp-poll", "rate_cps", "rrpin_p50_us", "bulk1_gbps")
         + _has(s, "tpb-poll", "rate_cps", "rrpin_p50_us", "bulk1_gbps")),
        ("--faults", faults, lambda s, _: _has(s, "tp-lat", "delay_p50_us")
         + _has(s, "tp-lat-up", "latbulk_mb_per_s") + _has(s, "tp-bw-1000", "bw_ratio")
         + _has(s, "sp-pass-poll", "bulk1_gbps", "rate_cps")),
        ("--api", api, lambda s, _: _has(s, "tp-api", "rate_cps", "rrpin_p50_us", "bulk1_gbps",
                                         "delay_p50_us") + _has(s, "api-load", "pairs")),
        ("--syscalls", syscalls, syscalls_ok),
        ("--targets", targets_report, targets_ok),
    ]


def run_one(parent, mode):
    """Runs MODE's check in this process: prints ok or FAIL (with the mode's output); the exit
    status."""
    peer = _peer()
    found = [c for c in checks(peer) if c[0] == mode]
    if not found:
        print(f"FAIL {mode}: no such mode")
        return 1
    _, function, check = found[0]
    b = Bench(parent.root, parent.work, tiny(parent.s), parent.progress)
    b.t0 = parent.t0
    b.idle_seconds = 0.2
    b.programs = dict(parent.programs)
    b.progress.quiet = True
    out = io.StringIO()
    start = time.monotonic()
    try:
        with contextlib.redirect_stdout(out):
            function(b, os.path.join(parent.work, "results"))
        problems = check(load_samples(b.raw), out.getvalue())
    except (Exception, SystemExit) as e:  # reported as this mode's failure
        problems = [f"raised {e!r}"]
        traceback.print_exc(file=sys.stderr)
    finally:
        b.stop_all()
    seconds = time.monotonic() - start
    if problems:
        print(f"FAIL {mode} ({seconds:.1f} s, against {peer}): " + "; ".join(problems))
        print(out.getvalue())
        return 1
    print(f"ok   {mode} ({seconds:.1f} s, against {peer})")
    return 0


def _run_all(parent, pending, running, finished, jobs, env):
    """Starts the modes in PENDING, JOBS at a time, until every one has finished."""
    while pending or running:
        while pending and len(running) < jobs:
            mode = pending.pop(0)
            stem = os.path.join(parent.work, "self-test" + mode.replace("-", "_"))
            argv = [sys.executable, os.path.join(parent.root, "bench", "run.py"),
                    "--self-test-one", mode]
            running[mode] = (procs.spawn(argv, stem + ".out", stem + ".err", env=env), stem)
        for mode, (proc, stem) in list(running.items()):
            if proc.poll() is not None:
                finished[mode] = (proc.returncode, stem)
                procs.stop(proc)
                del running[mode]
        time.sleep(0.1)


def run(parent):
    """Runs every mode, SELF_TEST_JOBS (4) at a time, each in a process of its own (bench/run.py
    --self-test-one MODE: its own work directory, samples and output); prints one line per
    mode, in order, and returns the exit status. Side by side they measure nothing worth
    reading, and need not: each only has to work."""
    names = [mode for mode, _, _ in checks(_peer())]
    jobs = max(1, int(os.environ.get("SELF_TEST_JOBS", "4")))
    env = {**os.environ, "TPBENCH_PROGRAMS": json.dumps(parent.programs)}
    t0 = time.monotonic()
    running, finished = {}, {}
    pending = list(names)
    try:
        _run_all(parent, pending, running, finished, jobs, env)
    finally:  # interrupted: each child ends its own processes and removes its work directory
        for proc, _ in running.values():
            procs.stop(proc, grace=5)
    failed = 0
    for mode in names:
        status, stem = finished[mode]
        with open(stem + ".out", errors="replace") as f:
            print(f.read().rstrip() or f"FAIL {mode}: no output (exit status {status})")
        if status:
            failed += 1
            with open(stem + ".err", errors="replace") as f:
                print("  its log, last lines:\n    " + "\n    ".join(f.read().splitlines()[-15:]))
    print(f"self-test: {len(names) - failed} passed, {failed} failed, "
          f"{time.monotonic() - t0:.0f} s")
    return 1 if failed else 0
