"""--faults: what issue 13's faults and stages cost and how close they come to what they
promise. Each phase starts its targets fresh; where two are compared they alternate, A B then
B A."""
from . import procs
from .bench import first_line, pairs
from report import median_of


def record_delay(b, name, text, idle, held, subtract):
    """Records a `load delay` result as NAME's (and the proxy's KB per tunnel); False if it
    failed."""
    out = first_line(text, "count")
    if not out:
        b.log(f"delay through {name} failed: {text.replace(chr(10), ' ')[:200]}")
        b.record(name, "delay_failed", 1)
        return False
    v = pairs(out)  # count N p50_us A p99_us B max_us C min_us D open K missing M lost L
    for metric, key in (("delay_count", "count"), ("delay_p50_us", "p50_us"),
                        ("delay_p99_us", "p99_us"), ("delay_max_us", "max_us"),
                        ("delay_open", "open"), ("delay_missing", "missing"),
                        ("delay_lost", "lost")):
        b.record(name, metric, v[key])
    line = (f"  {name}  p50 {v['p50_us']} us  p99 {v['p99_us']} us  max {v['max_us']} us  "
            f"({v['count']} round trips, {v['open']} tunnels)")
    if subtract:
        line += f"  (less {subtract} us)"
    if idle and held:
        idle_kb, held_kb = float(idle["rss_kb"]), float(held["rss_kb"])
        b.record(name, "delay_idle_rss_kb", idle["rss_kb"])
        b.record(name, "delay_held_rss_kb", held["rss_kb"])
        b.record(name, "delay_kb_per_tunnel", (held_kb - idle_kb) / max(1, int(v["open"])))
        line += f"  rss {idle['rss_kb']} -> {held['rss_kb']} KB"
    b.log(line)
    return True


def phase_delay(b):
    """DELAY_N tunnels, each pinging 16 B every 200 ms, to an echo: direct (the machine's round
    trip), through the poll policy without a fault, and with 100 ms of latency on the echoes
    (reported less the 100 ms); the proxy's memory per tunnel while they run."""
    s = b.s
    b.log(f"delay: {s.delay_n} tunnels, 16 B every 200 ms each, {s.delay_time} s; direct, "
          "tp-poll, tp-lat (--toxic latency,latency=100)")
    echo, port = b.start_upstream("echo")
    b.progress.phase("faults delay", 3)
    for name in ("direct", "tp-poll", "tp-lat"):
        b.progress.step(name)
        if not b.start_target(name, name, port):
            b.log(f"{name}: {b.missing[name]}")
            continue
        subtract = 100000 if name == "tp-lat" else 0
        text, idle, held = b.delay_run(name, s.delay_n, s.delay_time, subtract)
        record_delay(b, name, text, idle, held, subtract)
        b.stop_target(name)
    procs.stop(echo)


def phase_latency_bulk(b):
    """One load bulk stream to a sink through 100 ms of latency on the client-to-server stream
    (the one carrying the bulk), against the same proxy without a fault; alternating."""
    s = b.s
    b.log(f"bulk through latency: 1 stream, {s.latbulk_time} s, tp-poll and tp-lat-up "
          f"(latency=100,stream=upstream), {s.latbulk_rounds} rounds")
    sink, port = b.start_upstream("sink")
    b.start_all(port, ["tp-poll", "tp-lat-up"])
    b.progress.phase("faults latency bulk", 2 * s.latbulk_rounds)
    for rep in range(1, s.latbulk_rounds + 1):
        for name in ["tp-lat-up", "tp-poll"] if rep % 2 else ["tp-poll", "tp-lat-up"]:
            b.progress.step(name, rep, s.latbulk_rounds)
            if not b.up(name):
                continue
            out = b.load("bulk", "--port", b.port_of[name], "--streams", 1, "--time",
                         s.latbulk_time, timeout=s.latbulk_time + 30)
            if not out.startswith("bytes"):
                b.log(f"bulk through {name} failed")
                b.record(name, "latbulk_failed", 1)
                continue
            v = pairs(out)  # bytes B seconds S gbps G broken N
            mb_per_s = float(v["bytes"]) / float(v["seconds"]) / 1e6
            b.record(name, "latbulk_mb_per_s", mb_per_s)
            b.log(f"  round {rep}  {name}  {mb_per_s:.1f} MB/s")
    b.stop_all()
    procs.stop(sink)


def phase_bandwidth(b):
    """Bandwidth faults on the client-to-server stream: load bulk is the upstream too (the proxy
    forwards to its --listen-port) and counts the bytes/s arriving, first byte to last."""
    s = b.s
    b.log(f"bandwidth: {' '.join(map(str, s.bw_rates))} KB/s (stream=upstream), "
          f"{' '.join(map(str, s.bw_times))} s, {s.bw_reps} each")
    b.progress.phase("faults bandwidth", s.bw_reps * len(s.bw_rates))
    for rep in range(1, s.bw_reps + 1):
        for rate, seconds in zip(s.bw_rates, s.bw_times):
            name = f"tp-bw-{rate}"
            b.progress.step(name, rep, s.bw_reps)
            port = b.free_port()
            if not b.start_target(name, name, port):
                b.log(f"{name}: {b.missing[name]}")
                continue
            out = b.load("bulk", "--port", b.port_of[name], "--listen-port", port, "--streams", 1,
                         "--time", seconds, timeout=seconds + 30)
            b.stop_target(name)
            if not out.startswith("received"):
                b.log(f"bandwidth {rate} KB/s failed: {out.strip()}")
                b.record(name, "bw_failed", 1)
                continue
            v = pairs(out)  # received B span_s S bytes_per_s R sent T broken N
            b.record(name, "bw_bytes_per_s", v["bytes_per_s"])
            achieved = f"{float(v['bytes_per_s']) / (rate * 1000):.4f}"
            b.record(name, "bw_ratio", achieved)
            b.log(f"  rep {rep}  {rate} KB/s  {v['bytes_per_s']} B/s over {v['span_s']} s "
                  f"({v['received']} B)  achieved/target {achieved}")


def phase_stage(b):
    """bench/stage_proxy.cpp without a stage (sp-none-*) and with a pass-through user stage on
    both directions (sp-pass-*): iperf3 1 and 4 streams, then conn/s; none first in odd
    rounds, pass first in even ones."""
    s = b.s
    policies = s.stage_policies
    b.log(f"stage overhead: stage_proxy --stage none|pass, {' '.join(policies)}, "
          f"{s.stage_rounds} rounds of {s.stage_time} s")

    def order(rep, policy):
        pair = [f"sp-none-{policy}", f"sp-pass-{policy}"]
        return pair if rep % 2 else pair[::-1]

    b.progress.phase("faults stage", s.stage_rounds * len(policies) * 2 * (len(s.bulk_streams) + 1))
    iperf, iperf_port = b.start_iperf()
    if iperf:
        for policy in policies:
            b.start_all(iperf_port, order(1, policy))
        for rep in range(1, s.stage_rounds + 1):
            for streams in s.bulk_streams:
                for policy in policies:
                    for name in order(rep, policy):
                        b.progress.step(f"{name} -P {streams}", rep, s.stage_rounds)
                        if not b.up(name):
                            continue
                        out = b.iperf_sample(name, name, streams, s.stage_time)
                        if out is not None:
                            b.log(f"  round {rep}  -P {streams}  {name}  {out} Gbit/s")
        b.stop_all()
        procs.stop(iperf)
    else:
        b.log("iperf3 missing: no stage bulk numbers")
    server, port = b.start_upstream("server")
    for policy in policies:
        b.start_all(port, order(1, policy))
    for rep in range(1, s.stage_rounds + 1):
        for policy in policies:
            for name in order(rep, policy):
                b.progress.step(name, rep, s.stage_rounds)
                if not b.up(name):
                    continue
                out = b.rate_sample(name, port, s.stage_time)
                if out is not None:
                    b.log(f"  round {rep}  {name}  {out[0]} conn/s")
    b.stop_all()
    procs.stop(server)


def faults_table(samples, bw_rates):
    med = lambda name, metric: median_of(samples, name, metric)
    ok = lambda v: v == v  # not NaN
    lines = []
    out = lines.append
    verdict = lambda good: "**yes**" if good else "**no**"

    out("| latency fault, 16 B every 200 ms per tunnel | tunnels | round trips | p50 µs | p99 µs "
        "| max µs | proxy KB/tunnel |")
    out("|---|---|---|---|---|---|---|")
    rows = (("direct", "direct (no proxy): round trip"),
            ("tp-poll", "tinyproxy poll, no fault: round trip"),
            ("tp-lat", "tinyproxy poll, `latency=100`: round trip − 100 ms"))
    for name, title in rows:
        if ok(med(name, "delay_p50_us")):
            kb = med(name, "delay_kb_per_tunnel")
            out(f"| {title} | {med(name, 'delay_open'):,.0f} | {med(name, 'delay_count'):,.0f} "
                f"| {med(name, 'delay_p50_us'):,.1f} | {med(name, 'delay_p99_us'):,.1f} "
                f"| {med(name, 'delay_max_us'):,.1f} | {f'{kb:,.1f}' if ok(kb) else '–'} |")
        else:
            out(f"| {title} | failed | | | | | |")
    p50, p99 = med("tp-lat", "delay_p50_us"), med("tp-lat", "delay_p99_us")
    if ok(p50):
        out("")
        out(f"Target (issue 13): p50 within 1 ms of 100 ms: {verdict(abs(p50) <= 1000)}; "
            f"p99 within 5 ms: {verdict(abs(p99) <= 5000)}. "
            f"Echoes missing at the end: {med('tp-lat', 'delay_missing'):.0f}, "
            f"lost: {med('tp-lat', 'delay_lost'):.0f}.")
    out("")

    out("| one stream (load bulk) | MB/s (median) |")
    out("|---|---|")
    for name, title in (("tp-poll", "tinyproxy poll, no fault"),
                        ("tp-lat-up", "tinyproxy poll, `latency=100,stream=upstream`")):
        v = med(name, "latbulk_mb_per_s")
        out(f"| {title} | {f'{v:,.1f}' if ok(v) else 'failed'} |")
    v = med("tp-lat-up", "latbulk_mb_per_s")
    if ok(v):
        out("")
        out(f"Target (issue 13): ≥ 100 MB/s through a 100 ms latency fault: {verdict(v >= 100)}.")
    out("")

    out("| `bandwidth,rate=R,stream=upstream` | target B/s | achieved B/s (first to last byte) "
        "| achieved / target |")
    out("|---|---|---|---|")
    for rate in bw_rates:
        name = f"tp-bw-{rate}"
        v, r = med(name, "bw_bytes_per_s"), med(name, "bw_ratio")
        out(f"| rate={rate:,} ({rate * 1000:,} B/s) | {rate * 1000:,} | "
            f"{f'{v:,.0f}' if ok(v) else 'failed'} | {f'{r:.3f}' if ok(r) else '–'} |")
    out("")

    out("| pass-through user stage (stage_proxy) | none | pass | pass / none |")
    out("|---|---|---|---|")
    for policy in ("poll", "thread"):
        a, b = f"sp-none-{policy}", f"sp-pass-{policy}"
        for metric, title, fmt in (("bulk1_gbps", "iperf3 1 stream, Gbit/s", "{:.2f}"),
                                   ("bulk4_gbps", "iperf3 4 streams, Gbit/s", "{:.2f}"),
                                   ("bulk1_cpu_s_per_gb", "CPU s/GB, 1 stream", "{:.3f}"),
                                   ("bulk4_cpu_s_per_gb", "CPU s/GB, 4 streams", "{:.3f}"),
                                   ("rate_cps", "conn/s", "{:,.0f}"),
                                   ("rate_cpu_us_per_conn", "CPU µs/conn", "{:.1f}")):
            x, y = med(a, metric), med(b, metric)
            if ok(x) or ok(y):
                ratio = y / x if x else float("nan")
                out(f"| {policy}: {title} | {fmt.format(x)} | {fmt.format(y)} | {ratio:.3f} |")
    return "\n".join(lines)


def run_faults(b):
    phase_delay(b)
    phase_latency_bulk(b)
    phase_bandwidth(b)
    phase_stage(b)
