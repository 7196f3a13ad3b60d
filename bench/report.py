#!/usr/bin/env python3
"""bench/report.py RAW.tsv OUT.json: medians, ratios and the markdown tables of bench/run.py.

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



if __name__ == "__main__":
    main()
