"""Each mode of bench/run.py: its phases in order, and the tables and files it leaves."""
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import report
from report import load_samples, median_of

from . import api, faults, phases, summaries, targets


def _now_stamp():
    """The date and time for a result's file name: runs of one day do not overwrite each other."""
    return time.strftime("%Y-%m-%d-%H%M", time.gmtime())


def _sh(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def version(pkg):
    return _sh(["dpkg-query", "-W", "-f=${Version}", pkg]) or "unknown"


def tinyproxy_version(root, paths=("include",)):
    head = _sh(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", root, "diff", "--quiet", "HEAD", "--", *paths],
                           capture_output=True).returncode != 0
    return head + ("+dirty" if dirty else "")


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def common_facts(b, command, load_before):
    return {
        "BENCH_DATE": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "BENCH_MODE": b.s.mode,
        "BENCH_COMMAND": command,
        "BENCH_NPROC": str(os.cpu_count()),
        "BENCH_KERNEL": platform.release(),
        "BENCH_CPU": cpu_model(),
        "BENCH_LOAD_BEFORE": load_before,
        "BENCH_LOAD_AFTER": load_average(),
        "BENCH_SECONDS": str(int(time.monotonic() - b.t0)),
        "BENCH_FD_LIMIT": b.s.fd_limit,
    }


def results_path(results_dir, suffix):
    os.makedirs(results_dir, exist_ok=True)
    return os.path.join(results_dir, f"{_now_stamp()}-{suffix}")


def write_summary_json(path, facts, samples, table):
    """The --faults and --api file: the run's facts, every sample, the medians, the table."""
    env = {k[6:].lower(): v for k, v in facts.items() if k.startswith("BENCH_")}
    medians = {name: {m: median_of(samples, name, m) for m in metrics}
               for name, metrics in samples.items()}
    with open(path, "w") as f:
        json.dump({**env, "samples": samples, "medians": medians, "table": table}, f, indent=1,
                  sort_keys=True, allow_nan=True)
        f.write("\n")


# ---------------------------------------------------------------- the modes
def full(b, command, results_dir, levers=False, forwarders=None, socks=None, mixed=None):
    """The default run (and --quick, --levers): bulk, rate, rr, mixed (full runs), memory;
    the report's tables, and results/<date>-<HHMM>-<mode>[-levers].json. Returns the path."""
    s = b.s
    if forwarders is None:
        forwarders = targets.LEVERS_FORWARDERS if levers else targets.FORWARDERS
        socks = [] if levers else targets.SOCKS
    load_before = load_average()
    costs = b.load("costs").strip()
    b.log(f"mode {s.mode}, {os.cpu_count()} CPUs, load average {load_before}, ulimit -n "
          f"{s.fd_limit}, {costs}")
    b.log(f"idle baseline: {b.idle_cpu.measure(b.idle_seconds):.3f} CPU s/s busy system-wide")
    phases.phase_bulk(b, forwarders, socks)
    phases.phase_rate(b, forwarders + socks)
    phases.phase_rr(b, forwarders + socks)
    if mixed if mixed is not None else not s.quick:  # about 70 s: --quick stays short without it
        phases.phase_mixed(b, forwarders + socks)
    phases.phase_memory(b, forwarders[1:] + socks)
    b.progress.finish()
    out = results_path(results_dir, s.mode + ("-levers" if levers else "") + ".json")
    versions = {p: version(p) for p in ("haproxy", "nginx", "libnginx-mod-stream", "rinetd",
                                        "socat", "microsocks", "iperf3")}
    facts = {
        **common_facts(b, command, load_before),
        "BENCH_COSTS": costs,
        "BENCH_MISSING": "".join(f"{k}={v}\n" for k, v in b.missing.items()),
        "BENCH_REPS": str(s.reps), "BENCH_BULK_TIME": str(s.bulk_time),
        "BENCH_RATE_TIME": str(s.rate_time), "BENCH_RR_COUNT": str(s.rr_count),
        "BENCH_RR_MIXED_COUNT": str(s.rr_mixed_count),
        "BENCH_HOLD_COUNTS": " ".join(map(str, s.hold_counts)),
        "BENCH_FORWARDERS": " ".join(forwarders), "BENCH_SOCKS": " ".join(socks),
        "BENCH_VERSIONS": " ".join(f"{k}={v}" for k, v in versions.items())
        + f" tinyproxy={tinyproxy_version(b.root)}",
        "BENCH_SYS_IDLE_CPU_S_PER_S": f"{b.idle_cpu.per_second:.4f}",
    }
    report.main([b.raw, out], facts)
    draw_charts(b, out)
    b.log(f"done in {int(time.monotonic() - b.t0)} s; results in {out}")
    return out


def draw_charts(b, run_json):
    """report.py --charts beside the run's JSON (<name>-charts/*.svg); a failure is logged only,
    the tables and the JSON stand without them."""
    result = subprocess.run([sys.executable, os.path.join(b.root, "bench", "report.py"),
                             "--charts", run_json], capture_output=True, text=True)
    if result.returncode:
        b.log(f"no charts: {result.stderr.strip()[-300:]}")
    else:
        b.log(f"charts in {os.path.splitext(run_json)[0]}-charts/")


def mixed_only(b, forwarders=None, socks=None):
    """--mixed: only the RR-beside-bulk phase, every target, and its medians; nothing written."""
    forwarders = targets.FORWARDERS if forwarders is None else forwarders
    socks = targets.SOCKS if socks is None else socks
    phases.phase_mixed(b, forwarders + socks)
    b.progress.finish()
    print(summaries.mixed_table(load_samples(b.raw)))


def floor(b, results_dir, bulk_forwarders=None, forwarders=None, socks=None):
    """--floor: next to the floor; medians, and every sample to results/<date>-<HHMM>-floor.tsv."""
    bulk_forwarders = targets.FLOOR_BULK_FORWARDERS if bulk_forwarders is None else bulk_forwarders
    forwarders = targets.FLOOR_FORWARDERS if forwarders is None else forwarders
    socks = targets.FLOOR_SOCKS if socks is None else socks
    b.idle_cpu.measure(b.idle_seconds)
    phases.phase_bulk(b, bulk_forwarders, [])
    phases.phase_rate(b, forwarders + socks)
    phases.phase_rr(b, forwarders + socks)
    b.progress.finish()
    print(summaries.floor_table(load_samples(b.raw), forwarders, socks))
    out = results_path(results_dir, "floor.tsv")
    shutil.copyfile(b.raw, out)  # every sample, as measured
    return out


def ab(b, forwarders=None, socks=None):
    """--ab: this build against BASELINE's, alternating; medians and ratios, nothing written."""
    if not os.access(b.programs.get("baseline", ""), os.X_OK):
        raise SystemExit("run.py --ab: BASELINE=path to another tinyproxy CLI")
    rounds = int(os.environ.get("AB_ROUNDS", "6"))
    b.idle_cpu.measure(b.idle_seconds)
    phases.phase_ab(b, forwarders or targets.AB_FORWARDERS, socks or targets.AB_SOCKS, rounds)
    b.progress.finish()
    print(summaries.ab_table(load_samples(b.raw)))


def run_faults(b, command, results_dir):
    s = b.s
    load_before = load_average()
    b.log(f"faults ({s.mode}), {os.cpu_count()} CPUs, load average {load_before}, ulimit -n "
          f"{s.fd_limit}")
    b.idle_cpu.measure(b.idle_seconds)
    faults.run_faults(b)
    b.progress.finish()
    samples = load_samples(b.raw)
    table = faults.faults_table(samples, s.bw_rates)
    print(table)
    out = results_path(results_dir, "faults" + ("-quick" if s.quick else "") + ".json")
    facts = {
        **common_facts(b, command, load_before),
        "BENCH_BW_RATES": " ".join(map(str, s.bw_rates)),
        "BENCH_SETTINGS": (f"DELAY_N={s.delay_n} DELAY_TIME={s.delay_time} "
                           f"LATBULK_ROUNDS={s.latbulk_rounds} LATBULK_TIME={s.latbulk_time} "
                           f"BW_REPS={s.bw_reps} BW_TIMES={' '.join(map(str, s.bw_times))} "
                           f"STAGE_ROUNDS={s.stage_rounds} STAGE_TIME={s.stage_time} "
                           f"STAGE_POLICIES={' '.join(s.stage_policies)}"),
        "BENCH_VERSIONS": f"iperf3={version('iperf3')} tinyproxy={tinyproxy_version(b.root)}",
    }
    write_summary_json(out, facts, samples, table)
    b.log(f"done in {int(time.monotonic() - b.t0)} s; results in {out}")
    return out


def run_api(b, command, results_dir):
    s = b.s
    load_before = load_average()
    b.log(f"api ({s.mode}), {os.cpu_count()} CPUs, load average {load_before}, ulimit -n "
          f"{s.fd_limit}")
    b.idle_cpu.measure(b.idle_seconds)
    api.run_api(b)
    b.progress.finish()
    samples = load_samples(b.raw)
    table = api.api_table(samples, s.api_tunnels, s.api_interval_ms)
    print(table)
    out = results_path(results_dir, "api" + ("-quick" if s.quick else "") + ".json")
    settings = (f"API_ROUNDS={s.api_rounds} API_TIME={s.api_time} API_RR_COUNT={s.api_rr_count} "
                f"API_STREAMS={' '.join(map(str, s.api_streams))} RATE_THREADS={s.rate_threads} "
                f"API_DELAY_ROUNDS={s.api_delay_rounds} API_DELAY_TIME={s.api_delay_time} "
                f"API_IDLE_PAIRS={s.api_idle_pairs} API_PAIRS={s.api_pairs} "
                f"API_TUNNELS={s.api_tunnels} API_INTERVAL_MS={s.api_interval_ms} "
                f"API_HOLD_MS={s.api_hold_ms} API_GAP_MS={s.api_gap_ms}")
    facts = {
        **common_facts(b, command, load_before),
        "BENCH_SETTINGS": settings,
        "BENCH_TUNNELS": str(s.api_tunnels), "BENCH_INTERVAL_MS": str(s.api_interval_ms),
        "BENCH_VERSIONS": (f"iperf3={version('iperf3')} python3={platform.python_version()} "
                           f"tinyproxy={tinyproxy_version(b.root, ('include', 'examples'))}"),
    }
    write_summary_json(out, facts, samples, table)
    b.log(f"done in {int(time.monotonic() - b.t0)} s; results in {out}")
    return out
