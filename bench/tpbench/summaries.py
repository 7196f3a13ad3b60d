"""The tables --ab, --mixed and --floor print from a run's samples (nothing written)."""
from report import median_of


def ab_table(samples):
    med = lambda name, metric: median_of(samples, name, metric)
    div = lambda a, b: a / b if b else float("nan")
    lines = ["| mode | conn/s this / baseline | ratio | CPU µs/conn this / baseline | ratio |",
             "|---|---|---|---|---|"]
    for mode, a, b in (("forward", "tp-poll", "tpb-poll"),
                       ("SOCKS5", "tp-socks-poll", "tpb-socks-poll")):
        ra, rb = med(a, "rate_cps"), med(b, "rate_cps")
        ca, cb = med(a, "rate_cpu_us_per_conn"), med(b, "rate_cpu_us_per_conn")
        lines.append(f"| {mode} | {ra:,.0f} / {rb:,.0f} | {div(ra, rb):.2f} | {ca:.1f} / {cb:.1f} "
                     f"| {div(ca, cb):.2f} |")
    lines += ["", "| pinned RR (forward) | p50 µs this / baseline | ratio | p99 µs this / baseline "
              "| ratio |", "|---|---|---|---|---|"]
    pa, pb = med("tp-poll", "rrpin_p50_us"), med("tpb-poll", "rrpin_p50_us")
    qa, qb = med("tp-poll", "rrpin_p99_us"), med("tpb-poll", "rrpin_p99_us")
    lines.append(f"| 64 B ping-pong | {pa:.1f} / {pb:.1f} | {div(pa, pb):.2f} | {qa:.1f} / {qb:.1f} "
                 f"| {div(qa, qb):.2f} |")
    lines += ["", "| iperf3 (forward) | Gbit/s this / baseline | ratio | CPU s/GB this / baseline "
              "| ratio |", "|---|---|---|---|---|"]
    for streams in (1, 4):
        ga, gb = med("tp-poll", f"bulk{streams}_gbps"), med("tpb-poll", f"bulk{streams}_gbps")
        ca, cb = (med("tp-poll", f"bulk{streams}_cpu_s_per_gb"),
                  med("tpb-poll", f"bulk{streams}_cpu_s_per_gb"))
        lines.append(f"| {streams} stream{'s' if streams > 1 else ''} | {ga:.2f} / {gb:.2f} "
                     f"| {div(ga, gb):.2f} | {ca:.3f} / {cb:.3f} | {div(ca, cb):.3f} |")
    return "\n".join(lines)


def mixed_table(samples):
    lines = ["| target | RR beside 4 bulk p50 / p99 µs |", "|---|---|"]
    for name, m in samples.items():
        if "mixrr_p50_us" in m:
            lines.append(f"| {name} | {median_of(samples, name, 'mixrr_p50_us'):,.0f} / "
                         f"{median_of(samples, name, 'mixrr_p99_us'):,.0f} |")
    return "\n".join(lines)


def floor_table(samples, forwarders, socks):
    med = lambda name, metric: median_of(samples, name, metric)
    small = (("rate_cps", "conn/s", max), ("rate_cpu_us_per_conn", "CPU µs/conn", min),
             ("rr_p50_us", "RR p50 µs", min), ("rrpin_p50_us", "RR pinned p50 µs", min))
    bulk = (("bulk1_gbps", "Gbit/s 1", max), ("bulk4_gbps", "Gbit/s 4", max),
            ("bulk1_cpu_s_per_gb", "CPU s/GB 1", min), ("bulk4_cpu_s_per_gb", "CPU s/GB 4", min))
    best = {m: pick(med(p, m) for p in ("haproxy", "nginx")) for m, _, pick in small + bulk}
    lines = []

    def table(names, against, refs, cols=small):
        lines.append("| target | " + " | ".join(f"{title} (÷ {against})" for _, title, _ in cols)
                     + " |")
        lines.append("|---|" + "---|" * len(cols))
        for name in names:
            if name in samples and any(m in samples[name] for m, _, _ in cols):
                cells = [f"{med(name, m):,.1f} ({med(name, m) / refs(name, m):.2f})"
                         for m, _, _ in cols]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")

    table(forwarders, "best of haproxy and nginx", lambda name, m: best[m])
    table(forwarders, "best of haproxy and nginx", lambda name, m: best[m], bulk)
    table(forwarders, "direct", lambda name, m: med("direct", m), bulk[:2])
    table(socks, "microsocks", lambda name, m: med("microsocks", m))
    forward_of = {"tp-socks-poll": "tp-poll", "floor-socks": "floor"}
    table(forward_of, "the same proxy forwarding", lambda name, m: med(forward_of[name], m))
    return "\n".join(lines)
