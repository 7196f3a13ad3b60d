#!/usr/bin/env python3
"""bench/report.py RAW.tsv OUT.json: medians, ratios and the markdown tables of bench/run.py.
bench/report.py --charts RUN.json [--floor FLOOR.tsv] [--out DIR]: its SVG charts (matplotlib).
bench/report.py --targets RUN.json FLOOR.tsv: the performance issue's targets, each ratio against
its goal, from a full run and a --floor run.

RAW holds one sample a line: target, metric, value. The run's facts come in BENCH_* environment
variables, or as the same keys in the mapping run.py passes to main(). Prints the tables and
writes OUT.json (stdlib only)."""
import json
import os
import statistics
import sys

FORWARDERS = ["direct", "haproxy", "nginx", "rinetd", "socat", "tp-poll", "tp-thread", "tp-fork"]
FORWARD_PEERS = ["haproxy", "nginx", "rinetd", "socat"]
SOCKS_ROWS = ["direct", "tp-poll", "microsocks", "tp-socks-poll", "tp-socks-thread"]
PSS_TARGETS = {"nginx", "socat", "tp-fork"}  # process trees: PSS summed over them


def label(target, versions):
    def major(pkg):
        v = versions.get(pkg, "")
        return ".".join(v.split("-")[0].split(".")[:2]) if v and v != "unknown" else ""

    names = {
        "direct": "direct (no proxy)",
        "haproxy": f"haproxy {major('haproxy')} (tcp mode)",
        "nginx": f"nginx {major('nginx')} stream",
        "rinetd": f"rinetd {major('rinetd')}",
        "socat": f"socat {major('socat')} (fork)",
        "microsocks": f"microsocks {major('microsocks')}".rstrip(),
        "tp-poll": "**tinyproxy poll**",
        "tp-thread": "**tinyproxy thread**",
        "tp-fork": "**tinyproxy fork**",
        "tp-socks-poll": "**tinyproxy --socks poll**",
        "tp-socks-thread": "**tinyproxy --socks thread**",
        "tp-portable": "**tinyproxy poll: poll(2), copy** (portable build)",
        "tp-copy": "**tinyproxy poll: epoll, copy** (--no-splice)",
        "tp-loops2": "**tinyproxy poll: epoll, splice, 2 loops** (--loops 2)",
    }
    return " ".join(names.get(target, target).split())


def load_samples(raw_path):
    """RAW.tsv as {target: {metric: [values]}}; a line that is not target, metric, number is
    skipped. run.py's --ab, --mixed and --floor summaries read their samples with it too."""
    samples = {}
    with open(raw_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                continue
            try:
                samples.setdefault(parts[0], {}).setdefault(parts[1], []).append(float(parts[2]))
            except ValueError:
                pass
    return samples


def median_of(samples, target, metric):
    """The median of one target's metric, or NaN when it has no sample."""
    return statistics.median(samples.get(target, {}).get(metric, [float("nan")]))


def system_cpu_table(lines, forwarders, socks, get, cell, label, versions, idle):
    """CPU counted system-wide beside the proxy's own: all CPUs' busy time from /proc/stat during
    each sample, less the idle machine's (measured before the run). It includes the client and
    the upstream, and the kernel's softirq and worker time on the proxy's behalf, which the
    per-process figure misses; less direct's, it is what the proxy added."""
    if not any(get(t, "rate_sys_cpu_us_per_conn") is not None for t in forwarders + socks):
        return

    def minus_direct(t, metric, digits):
        v, d = get(t, metric), get("direct", metric)
        return "–" if v is None or d is None or t == "direct" else f"{v - d:,.{digits}f}"

    def rows(targets, bulk):
        head = ["target", "CPU s/GB 1 / 4: process", "system", "system − direct",
                "CPU µs/conn: process", "system", "system − direct"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for t in targets:
            process = ("–" if t == "direct" else
                       f"{cell(t, f'{bulk}1_cpu_s_per_gb', 2)} / {cell(t, f'{bulk}4_cpu_s_per_gb', 2)}")
            system = (f"{cell(t, f'{bulk}1_sys_cpu_s_per_gb', 2)} / "
                      f"{cell(t, f'{bulk}4_sys_cpu_s_per_gb', 2)}")
            added = (f"{minus_direct(t, f'{bulk}1_sys_cpu_s_per_gb', 2)} / "
                     f"{minus_direct(t, f'{bulk}4_sys_cpu_s_per_gb', 2)}")
            lines.append(f"| {label(t, versions)} | {process} | {system} | {added} | "
                         f"{'–' if t == 'direct' else cell(t, 'rate_cpu_us_per_conn', 0)} | "
                         f"{cell(t, 'rate_sys_cpu_us_per_conn', 0)} | "
                         f"{minus_direct(t, 'rate_sys_cpu_us_per_conn', 0)} |")
        lines.append("")

    lines.append("#### CPU system-wide (all CPUs' busy time from /proc/stat, less the idle "
                 f"machine's {float(idle or 'nan'):.2f} CPU s/s)")
    lines.append("")
    lines.append("Process: the proxy's process tree. System: the whole machine during the sample "
                 "(client, upstream, proxy, and the kernel's softirq and worker time); less "
                 "direct's: what the proxy added. Forwarders: iperf3; SOCKS5: bench/load bulk.")
    lines.append("")
    nproc = os.cpu_count() or 1
    if float(idle or "nan") > 0.25 * nproc:
        lines.append(f"**The machine was busy before the run** ({float(idle):.2f} of {nproc} CPUs): "
                     "what the run added hides in what was there; these figures mean little.")
        lines.append("")
    rows(forwarders, "bulk")
    if socks:
        rows([t for t in ("direct", "tp-poll") if t in forwarders] + socks, "lbulk")


def main(argv=None, facts=None):
    """ARGV: RAW.tsv OUT.json (sys.argv[1:] by default); FACTS: the BENCH_* keys (the
    environment by default)."""
    raw_path, out_path = argv if argv else sys.argv[1:3]
    env = (os.environ if facts is None else facts).get
    forwarders = env("BENCH_FORWARDERS", " ".join(FORWARDERS)).split()
    socks = env("BENCH_SOCKS", "microsocks tp-socks-poll tp-socks-thread").split()
    samples = load_samples(raw_path)
    medians = {t: {m: statistics.median(v) for m, v in ms.items()} for t, ms in samples.items()}
    hold_counts = [int(n) for n in env("BENCH_HOLD_COUNTS", "1000").split()]
    versions = dict(kv.split("=", 1) for kv in env("BENCH_VERSIONS", "").split() if "=" in kv)
    missing = dict(
        line.split("=", 1) for line in env("BENCH_MISSING", "").splitlines() if "=" in line
    )

    # Derived: memory of the right kind, and KB per held connection.
    for t, m in medians.items():
        kind = "pss" if t in PSS_TARGETS else "rss"
        if f"mem_idle_{kind}_kb" in m:
            m["mem_idle_kb"] = m[f"mem_idle_{kind}_kb"]
        for n in hold_counts:
            held = m.get(f"held_{n}")
            if held and f"mem_{n}_{kind}_kb" in m and "mem_idle_kb" in m:
                m[f"mem_{n}_kb"] = m[f"mem_{n}_{kind}_kb"]
                m[f"kb_per_conn_{n}"] = (m[f"mem_{n}_kb"] - m["mem_idle_kb"]) / held

    def get(t, metric):
        return medians.get(t, {}).get(metric)

    def fmt(value, digits):
        if value is None:
            return None
        if digits == 0:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"

    def cell(t, metric, digits, rows_missing=True):
        if rows_missing and t in missing:
            return "missing"
        v = fmt(get(t, metric), digits)
        if v is None:
            failed = any(k.endswith("_failed") and metric.startswith(k[: k.index("_")])
                         for k in samples.get(t, {}))
            return "failed" if failed else "–"
        return v

    def pair(t, a, b, digits):
        if t in missing:
            return "missing"
        return f"{cell(t, a, digits)} / {cell(t, b, digits)}"

    def mem_cells(t):
        if t == "direct":
            return ["–"] * (len(hold_counts) + 2)
        if t in missing:
            return ["missing"] * (len(hold_counts) + 2)
        kind = "PSS" if t in PSS_TARGETS else "RSS"
        idle = get(t, "mem_idle_kb")
        out = [f"{idle:,.0f} {kind}" if idle is not None else "–"]
        for n in hold_counts:
            v = get(t, f"kb_per_conn_{n}")
            held = get(t, f"held_{n}")
            if v is None:
                out.append("failed" if held == 0 or f"held_{n}" in medians.get(t, {}) else "–")
            else:
                note = "" if held is not None and held >= n else f" (held {held:,.0f})"
                out.append(f"{v:.1f}{note}")
        opens = [get(t, f"open_s_{n}") for n in hold_counts]
        out.append(" / ".join("–" if v is None else f"{v:.1f}" for v in opens))
        return out

    words = env("BENCH_COSTS", "").split()
    costs = dict(zip(words[::2], words[1::2]))
    lines = []
    run_line = (f"{env('BENCH_DATE', '?')}, `{env('BENCH_COMMAND', '?')}`, "
                f"{env('BENCH_NPROC', '?')} CPUs ({env('BENCH_CPU', '?')}), "
                f"kernel {env('BENCH_KERNEL', '?')}, load average {env('BENCH_LOAD_BEFORE', '?')} "
                f"before and {env('BENCH_LOAD_AFTER', '?')} after, "
                f"{env('BENCH_REPS', '?')} rep(s), medians; "
                f"fork+exit+wait {costs.get('fork_us', '?')} µs, "
                f"thread create+join {costs.get('thread_us', '?')} µs on this machine")
    lines.append(f"Run: {run_line}.")
    lines.append("")
    mem_heads = [f"KB/conn @{n:,}" for n in hold_counts] + [
        "s to open " + " / ".join(f"{n:,}" for n in hold_counts)]

    # ---- forwarding
    lines.append("#### Port forwarding (bulk: iperf3)")
    lines.append("")
    summary_head = ["target", "Gbit/s 1 / 4 streams", "CPU s/GB 1 / 4", "conn/s", "CPU µs/conn",
                    "RR p50 / p99 µs", "RR pinned p50 / p99 µs", "RR beside 4 bulk p50 / p99 µs",
                    "idle KB"] + mem_heads

    def summary_table(targets, bulk, name_of):
        """The per-target table; `bulk` names the bulk metrics ("bulk": iperf3, "lbulk": load)."""
        lines.append("| " + " | ".join(summary_head) + " |")
        lines.append("|" + "---|" * len(summary_head))
        for t in targets:
            row = [name_of(t), pair(t, f"{bulk}1_gbps", f"{bulk}4_gbps", 1),
                   "–" if t == "direct" else
                   pair(t, f"{bulk}1_cpu_s_per_gb", f"{bulk}4_cpu_s_per_gb", 2),
                   cell(t, "rate_cps", 0),
                   "–" if t == "direct" else cell(t, "rate_cpu_us_per_conn", 0),
                   pair(t, "rr_p50_us", "rr_p99_us", 1), pair(t, "rrpin_p50_us", "rrpin_p99_us", 1),
                   pair(t, "mixrr_p50_us", "mixrr_p99_us", 0)]
            row += mem_cells(t)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")

    summary_table(forwarders, "bulk", lambda t: label(t, versions))

    # ---- ratios
    higher = {"bulk1_gbps", "bulk4_gbps", "lbulk1_gbps", "lbulk4_gbps", "rate_cps"}
    ratio_metrics = [("Gbit/s 1", "bulk1_gbps"), ("Gbit/s 4", "bulk4_gbps"),
                     ("CPU s/GB 1", "bulk1_cpu_s_per_gb"), ("conn/s", "rate_cps"),
                     ("RR p50", "rr_p50_us"), ("RR pinned p50", "rrpin_p50_us"),
                     ("RR p99 beside bulk", "mixrr_p99_us")]
    ratio_metrics += [(f"KB/conn @{n:,}", f"kb_per_conn_{n}") for n in hold_counts]

    def best(peers, metric):
        values = [(get(p, metric), p) for p in peers if p not in missing and get(p, metric) is not None]
        if not values:
            return None, None
        return (max if metric in higher else min)(values)

    def ratio(t, metric, ref_value):
        v = get(t, metric)
        if v is None or not ref_value or t in missing:
            return "–"
        return f"{v / ref_value:.2f}"

    bests = {m: best(FORWARD_PEERS, m) for _, m in ratio_metrics}
    lines.append("Ratios, value ÷ direct / value ÷ best peer (the peer named under the header). "
                 "Above 1 is better for Gbit/s and conn/s, below 1 for the rest.")
    lines.append("")
    head = ["target"] + [f"{name} (best: {bests[m][1] or '–'})" for name, m in ratio_metrics]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for t in forwarders[1:]:
        row = [label(t, versions)]
        for _, m in ratio_metrics:
            d = get("direct", m) if not m.startswith(("kb_", "bulk1_cpu")) else None
            row.append(f"{ratio(t, m, d) if d else '–'} / {ratio(t, m, bests[m][0])}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    # ---- SOCKS5
    if socks:
        lines.append("#### SOCKS5 (bulk: bench/load bulk to a sink; direct and the forwarder for "
                     "reference)")
        lines.append("")
        summary_table(SOCKS_ROWS, "lbulk",
                      lambda t: label(t, versions) + (" (forward)" if t == "tp-poll" else ""))
        socks_metrics = [("Gbit/s 1", "lbulk1_gbps"), ("Gbit/s 4", "lbulk4_gbps"),
                         ("CPU s/GB 1", "lbulk1_cpu_s_per_gb"), ("conn/s", "rate_cps"),
                         ("RR p50", "rr_p50_us"), ("RR pinned p50", "rrpin_p50_us"),
                         ("RR p99 beside bulk", "mixrr_p99_us")]
        socks_metrics += [(f"KB/conn @{n:,}", f"kb_per_conn_{n}") for n in hold_counts]
        lines.append("Ratios, value ÷ microsocks / value ÷ our forwarder (poll).")
        lines.append("")
        head = ["target"] + [name for name, _ in socks_metrics]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for t in [t for t in socks if t.startswith("tp-")]:
            row = [label(t, versions)]
            for _, m in socks_metrics:
                row.append(f"{ratio(t, m, get('microsocks', m))} / {ratio(t, m, get('tp-poll', m))}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")

    system_cpu_table(lines, forwarders, socks, get, cell, label, versions,
                     env("BENCH_SYS_IDLE_CPU_S_PER_S"))

    if missing:
        lines.append("Missing: " + "; ".join(f"{k}: {v.strip()}" for k, v in sorted(missing.items())))
        lines.append("")
    errors = {t: get(t, "rate_errors") for t in medians if get(t, "rate_errors")}
    if errors:
        lines.append("Connection-rate errors (median per run): " +
                     ", ".join(f"{t} {v:.0f}" for t, v in sorted(errors.items())))
        lines.append("")

    table = "\n".join(lines)
    print(table)
    result = {
        "date": env("BENCH_DATE"),
        "mode": env("BENCH_MODE"),
        "command": env("BENCH_COMMAND"),
        "nproc": int(env("BENCH_NPROC", "0")),
        "kernel": env("BENCH_KERNEL"),
        "cpu": env("BENCH_CPU"),
        "load_average_before": env("BENCH_LOAD_BEFORE"),
        "load_average_after": env("BENCH_LOAD_AFTER"),
        "ulimit_n": env("BENCH_FD_LIMIT"),
        "seconds": int(env("BENCH_SECONDS", "0")),
        "machine_costs_us": {k: float(v) for k, v in costs.items()},
        "system_idle_cpu_s_per_s": float(env("BENCH_SYS_IDLE_CPU_S_PER_S", "nan")),
        "settings": {
            "reps": int(env("BENCH_REPS", "0")),
            "bulk_seconds": float(env("BENCH_BULK_TIME", "0")),
            "rate_seconds": float(env("BENCH_RATE_TIME", "0")),
            "rate_workers": 8,
            "rr_round_trips": int(env("BENCH_RR_COUNT", "0")),
            "rr_beside_bulk_round_trips": int(env("BENCH_RR_MIXED_COUNT", "0")),
            "hold_counts": hold_counts,
        },
        "versions": versions,
        "missing": {k: v.strip() for k, v in missing.items()},
        "medians": medians,
        "samples": samples,
        "table_markdown": table,
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")



# ---------------------------------------------------------------- charts (--charts)
SOCKS_TARGETS = ["microsocks", "tp-socks-poll", "tp-socks-thread"]
LEVER_TARGETS = ["tp-portable", "tp-copy", "tp-loops2"]
FLOOR_TARGETS = ["floor", "floor-threads", "floor-splice", "floor-socks"]
QUANTILES = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9]


def _import_pyplot():
    """matplotlib's pyplot (Agg), or None. Debian's python3-matplotlib serves /usr/bin/python3:
    under another interpreter, charts() runs again there."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "tinyproxy-bench"  # the same run, the same SVG
    import matplotlib.pyplot as plt
    return plt


def charts(run_path, out_dir, floor_path=None):
    """SVG charts of the run in RUN_PATH (a results JSON) into OUT_DIR: throughput, conn/s,
    pinned RR and KB per connection per target as bars, with direct and the floor (the best
    shape of a --floor run's samples in FLOOR_PATH, when given) as lines; latency CDFs for RR
    and RR beside bulk. Returns the files written."""
    plt = _import_pyplot()
    if plt is None:
        raise SystemExit("report.py --charts: matplotlib is missing (apt-get install "
                         "python3-matplotlib)")
    with open(run_path) as f:
        run = json.load(f)
    medians = run["medians"]
    versions = run.get("versions", {})
    floor_samples = load_samples(floor_path) if floor_path else {}

    def floor_best(metric, pick):
        values = [median_of(floor_samples, t, metric) for t in FLOOR_TARGETS]
        values = [v for v in values if v == v]
        return pick(values) if values else None

    known = FORWARDERS + LEVER_TARGETS + SOCKS_TARGETS
    names = [t for t in known if t in medians and t != "direct"]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    stamp = f"{run.get('date', '?')}, `{run.get('command', '?')}`".replace("`", "")

    def short(t):
        return label(t, versions).replace("**", "").replace("tinyproxy", "tp")

    def bars(ax, metric, title, unit, pick, floor_metric=None):
        shown = [t for t in names if metric in medians[t]]
        values = [medians[t][metric] for t in shown]
        colours = ["#1f77b4" if t.startswith("tp-") else "#999999" for t in shown]
        ax.bar(range(len(shown)), values, color=colours)
        ax.set_xticks(range(len(shown)), [short(t) for t in shown], rotation=35, ha="right",
                      fontsize=8)
        direct = medians.get("direct", {}).get(metric)
        if direct is not None:
            ax.axhline(direct, color="#2ca02c", linestyle="--", label=f"direct {direct:,.3g}")
        best = floor_best(floor_metric or metric, pick)
        if best is not None:
            ax.axhline(best, color="#d62728", linestyle=":", label=f"floor {best:,.3g}")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        if direct is not None or best is not None:
            ax.legend(fontsize=8)

    def save(fig, name):
        fig.suptitle(stamp, fontsize=7, y=0.01, va="bottom")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = os.path.join(out_dir, name)
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        written.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    bars(axes[0], "bulk1_gbps", "Bulk, iperf3, 1 stream (higher is better)", "Gbit/s", max)
    bars(axes[1], "bulk4_gbps", "Bulk, iperf3, 4 streams", "Gbit/s", max)
    save(fig, "throughput.svg")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars(ax, "rate_cps", "Connections per second, 8 workers (higher is better)", "conn/s", max)
    save(fig, "conn_rate.svg")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars(ax, "rrpin_p50_us", "64 B ping-pong pinned to one CPU, p50 (lower is better)", "µs", min)
    save(fig, "rr_pinned.svg")

    counts = run.get("settings", {}).get("hold_counts", [1000])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    shown = [t for t in names if any(f"kb_per_conn_{n}" in medians[t] for n in counts)]
    width = 0.8 / max(1, len(counts))
    for i, n in enumerate(counts):
        ax.bar([x + i * width for x in range(len(shown))],
               [medians[t].get(f"kb_per_conn_{n}", 0) for t in shown], width,
               label=f"{n:,} held")
    ax.set_xticks([x + width * (len(counts) - 1) / 2 for x in range(len(shown))],
                  [short(t) for t in shown], rotation=35, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_title("Memory per held idle connection (lower is better)", fontsize=10)
    ax.set_ylabel("KB per connection (log)")
    ax.legend(fontsize=8)
    save(fig, "kb_per_conn.svg")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, variant, title in ((axes[0], "rr", "RR latency, 64 B ping-pong"),
                               (axes[1], "mixrr", "RR beside 4 bulk streams")):
        drawn = 0
        for index, t in enumerate(["direct"] + names):  # one colour per target in both panels
            m = medians.get(t, {})
            points = sorted((m[f"{variant}_p{q:g}_us"], q / 100) for q in QUANTILES
                            if f"{variant}_p{q:g}_us" in m)
            if len(points) < 3:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".",
                    color=f"C{index % 10}", label=short(t),
                    linewidth=2 if t.startswith("tp-") else 1)
            drawn += 1
        ax.set_xscale("log")
        ax.set_xlabel("µs (log)")
        ax.set_ylabel("fraction of round trips")
        ax.set_title(title + ("" if drawn else ": not measured in this run"), fontsize=10)
        if drawn:
            ax.legend(fontsize=7)
    save(fig, "latency_cdf.svg")
    return written


def charts_main(args):
    """report.py --charts RUN.json [--floor FLOOR.tsv] [--out DIR]"""
    if _import_pyplot() is None and os.path.exists("/usr/bin/python3") and \
            os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", os.path.abspath(__file__), *args])
    run_path = args[1]
    floor_path = args[args.index("--floor") + 1] if "--floor" in args else None
    out_dir = (args[args.index("--out") + 1] if "--out" in args
               else os.path.splitext(run_path)[0] + "-charts")
    for path in charts(run_path, out_dir, floor_path):
        print(path)


# ---------------------------------------------------------------- the targets (issue 16)
def _ratio_row(name, value, goal, higher, how):
    """One row: the ratio, its goal, met or not, and how it was taken."""
    if value is None or value != value:
        return f"| {name} | – | {'≥' if higher else '≤'} {goal} | not measured | {how} |"
    met = value >= goal if higher else value <= goal
    return (f"| {name} | {value:.2f}× | {'≥' if higher else '≤'} {goal} | "
            f"{'yes' if met else '**no**'} | {how} |")


def _ahead_row(name, medians, ours, theirs, metrics):
    """Whether OURS beats THEIRS on every metric both have (higher or lower is better)."""
    behind, compared = [], 0
    for metric, higher in metrics:
        a, b = medians.get(ours, {}).get(metric), medians.get(theirs, {}).get(metric)
        if a is None or b is None or a != a or b != b:
            continue
        compared += 1
        if (a < b) if higher else (a > b):
            behind.append(f"{metric} {a:,.1f} against {b:,.1f}")
    verdict = "yes" if compared and not behind else ("not measured" if not compared else "**no**")
    detail = f"ahead on {compared - len(behind)} of {compared}" + (
        f"; behind: {', '.join(behind)}" if behind else "")
    return f"| {name} | {detail} | every metric | {verdict} | medians of the full run |"


SHARED_FORWARD = [("bulk1_gbps", True), ("bulk4_gbps", True), ("bulk1_cpu_s_per_gb", False),
                  ("bulk4_cpu_s_per_gb", False), ("rate_cps", True),
                  ("rate_cpu_us_per_conn", False), ("rr_p50_us", False), ("rr_p99_us", False),
                  ("rrpin_p50_us", False), ("rrpin_p99_us", False), ("mixrr_p50_us", False),
                  ("mixrr_p99_us", False), ("kb_per_conn_1000", False),
                  ("kb_per_conn_9000", False)]
SHARED_SOCKS = [("lbulk" + m[4:], h) if m.startswith("bulk") else (m, h) for m, h in SHARED_FORWARD]


def targets_table(run_path, floor_path):
    """The targets of the performance issue (bench/README.md, "Against the targets") as a
    markdown table: ratios from the full run in RUN_PATH and the --floor run's samples in
    FLOOR_PATH, each beside its goal. The poll policy unless named."""
    with open(run_path) as f:
        run = json.load(f)
    full = run["medians"]
    floor = {t: {m: statistics.median(v) for m, v in ms.items()}
             for t, ms in load_samples(floor_path).items()}

    def get(medians, target, metric):
        value = medians.get(target, {}).get(metric)
        return float("nan") if value is None else value

    def best(medians, targets, metric, higher=True):
        have = [(get(medians, t, metric), t) for t in targets if get(medians, t, metric) ==
                get(medians, t, metric)]
        if not have:
            return float("nan"), "–"
        return (max if higher else min)(have)

    rows = ["| target | measured | goal | met? | how |", "|---|---|---|---|---|"]
    # Against the floor, in the --floor run.
    shapes = ["floor", "floor-threads", "floor-splice"]
    rr_floor, rr_shape = best(floor, shapes, "rrpin_p50_us", higher=False)
    rows.append(_ratio_row("pinned RR p50 ÷ the floor's best shape",
                           get(floor, "tp-poll", "rrpin_p50_us") / rr_floor, 1.03, False,
                           f"--floor run; best shape {rr_shape}, {rr_floor:.1f} µs"))
    ours_socks = get(floor, "tp-socks-poll", "rate_cps") / get(floor, "tp-poll", "rate_cps")
    floor_socks = get(floor, "floor-socks", "rate_cps") / get(floor, "floor", "rate_cps")
    rows.append(_ratio_row("SOCKS5 conn/s ÷ own forwarding, ÷ the floor's same ratio",
                           ours_socks / floor_socks, 0.97, True,
                           f"--floor run; ours {ours_socks:.2f}, the floor's {floor_socks:.2f}"))
    rows.append(_ratio_row("4-stream bulk ÷ the splice floor",
                           get(floor, "tp-poll", "bulk4_gbps") /
                           get(floor, "floor-splice", "bulk4_gbps"), 0.95, True, "--floor run"))
    rate_floor, rate_shape = best(floor, shapes, "rate_cps")
    rows.append(_ratio_row("conn/s ÷ the floor", get(floor, "tp-poll", "rate_cps") / rate_floor,
                           0.97, True, f"--floor run; best shape {rate_shape}, "
                                       f"{rate_floor:,.0f} conn/s"))
    # Against the peers, in the full run (and the floor run's peers, which it also measures).
    for name, medians, peers in (("full run", full, FORWARD_PEERS),
                                 ("--floor run", floor, ["haproxy", "nginx"])):
        peer, who = best(medians, peers, "rate_cps")
        rows.append(_ratio_row(f"conn/s ÷ best peer ({name})",
                               get(medians, "tp-poll", "rate_cps") / peer, 1.25, True,
                               f"best peer {who}"))
    for streams in (1, 4):
        peer, who = best(full, FORWARD_PEERS, f"bulk{streams}_gbps")
        rows.append(_ratio_row(f"{streams}-stream bulk ÷ best peer",
                               get(full, "tp-poll", f"bulk{streams}_gbps") / peer, 1.15, True,
                               f"full run; best peer {who}"))
    rows.append(_ratio_row("SOCKS5 conn/s ÷ microsocks",
                           get(full, "tp-socks-poll", "rate_cps") /
                           get(full, "microsocks", "rate_cps"), 1.5, True, "full run"))
    kb = max(get(full, "tp-poll", "kb_per_conn_1000"), get(full, "tp-poll", "kb_per_conn_9000"))
    rows.append(f"| KB per held connection (1,000 and 9,000 held) | {kb:.1f} KB | ≤ 2 KB | "
                f"{'yes' if kb <= 2 else '**no**'} | full run; the larger of the two |")
    rows.append(_ahead_row("thread policy ahead of microsocks (SOCKS5)", full, "tp-socks-thread",
                           "microsocks", SHARED_SOCKS))
    rows.append(_ahead_row("fork policy ahead of socat", full, "tp-fork", "socat",
                           SHARED_FORWARD))
    # CPU, counted system-wide: what the proxy added to the whole machine's busy time.
    # Per GB, the last round's goal restated system-wide; per connection, no goal but the best
    # peer's.
    for metric, what, goal in (("bulk1_sys_cpu_s_per_gb", "CPU per GB, 1 stream", 0.75),
                               ("bulk4_sys_cpu_s_per_gb", "CPU per GB, 4 streams", 0.75),
                               ("rate_sys_cpu_us_per_conn", "CPU per connection", 1.0)):
        direct = get(full, "direct", metric)
        added = {t: {metric: get(full, t, metric) - direct} for t in ["tp-poll"] + FORWARD_PEERS}
        peer, who = best(added, FORWARD_PEERS, metric, higher=False)
        rows.append(_ratio_row(f"{what}, system-wide less direct's, ÷ best peer's",
                               get(added, "tp-poll", metric) / peer, goal, False,
                               f"full run; ours {get(added, 'tp-poll', metric):,.2f}, best peer {who} "
                               f"{peer:,.2f}"))
    return "\n".join(rows) + "\n"


def targets_main(args):
    """report.py --targets RUN.json FLOOR.tsv"""
    if len(args) != 3:
        raise SystemExit("usage: report.py --targets RUN.json FLOOR.tsv")
    print(targets_table(args[1], args[2]), end="")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--charts"]:
        charts_main(sys.argv[1:])
    elif sys.argv[1:2] == ["--targets"]:
        targets_main(sys.argv[1:])
    else:
        main()
