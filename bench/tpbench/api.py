"""--api: what issue 14's control API costs a proxy made through it, and how long its toxic
calls take while that proxy carries traffic. tp-poll is `tinyproxy --forward`, tp-api a proxy
made with POST /proxies on `tinyproxy --api`: the same build, poll policy, no toxic."""
import os
import sys
import time

from . import procs
from .bench import first_line, pairs
from .faults import record_delay
from report import median_of


def _order(rep):
    """The pair in this round's order, A B then B A."""
    return ["tp-poll", "tp-api"] if rep % 2 else ["tp-api", "tp-poll"]


def phase_parity(b):
    """conn/s (8 workers), pinned 64 B ping-pong and iperf3 through each, alternating."""
    s = b.s
    rounds = s.api_rounds
    b.log(f"API proxy against --forward: conn/s, pinned RR, iperf3 "
          f"{' '.join(map(str, s.api_streams))} stream(s); {rounds} rounds of {s.api_time} s")
    b.progress.phase("api parity", rounds * 2 * (2 + len(s.api_streams)))
    server, port = b.start_upstream("server")
    b.start_all(port, ["tp-poll", "tp-api"])
    for rep in range(1, rounds + 1):
        for name in _order(rep):
            b.progress.step(f"{name} rate", rep, rounds)
            if not b.up(name):
                continue
            out = b.rate_sample(name, port, s.api_time)
            if out is None:
                b.log(f"rate through {name} failed")
                continue
            b.log(f"  round {rep}  {name}  {out[0]} conn/s ({out[1]} errors)")
    b.stop_all()
    procs.stop(server)

    echo, port = b.start_upstream("echo")
    b.start_all(port, ["tp-poll", "tp-api"])
    procs.pin_tree(echo.pid, 0)
    b.pin_targets(["tp-poll", "tp-api"])
    for rep in range(1, rounds + 1):
        for name in _order(rep):
            b.progress.step(f"{name} pinned rr", rep, rounds)
            if not b.up(name):
                continue
            v = b.rr_sample(name, name, port, s.api_rr_count, "rrpin", True)
            if v is None:
                b.log(f"pinned rr through {name} failed")
                continue
            b.log(f"  round {rep}  pinned rr  {name}  p50 {v['p50_us']} us  p99 {v['p99_us']} us")
    b.stop_all()
    procs.stop(echo)

    iperf, port = b.start_iperf()
    if not iperf:
        b.log("iperf3 missing: no bulk numbers")
        return
    b.start_all(port, ["tp-poll", "tp-api"])
    for rep in range(1, rounds + 1):
        for streams in s.api_streams:
            for name in _order(rep):
                b.progress.step(f"{name} -P {streams}", rep, rounds)
                if not b.up(name):
                    continue
                out = b.iperf_sample(name, name, streams, s.api_time)
                if out is None:
                    b.log(f"iperf3 through {name} (-P {streams}) failed")
                    continue
                b.log(f"  round {rep}  -P {streams}  {name}  {out} Gbit/s")
    b.stop_all()
    procs.stop(iperf)


def phase_tunnels(b):
    """API_TUNNELS tunnels pinging 16 B every 200 ms through each (a fresh proxy per run): round
    trips, and the proxy's memory per tunnel; api_delay_rounds rounds, alternating."""
    s = b.s
    b.log(f"API proxy against --forward: {s.api_tunnels} tunnels, 16 B every 200 ms each, "
          f"{s.api_delay_time} s, {s.api_delay_rounds} round(s)")
    b.progress.phase("api tunnels", 2 * s.api_delay_rounds)
    echo, port = b.start_upstream("echo")
    for rep in range(1, s.api_delay_rounds + 1):
        for name in _order(rep):
            b.progress.step(name, rep, s.api_delay_rounds)
            if not b.start_target(name, name, port):
                b.log(f"{name}: {b.missing[name]}")
                continue
            text, idle, held = b.delay_run(name, s.api_tunnels, s.api_delay_time, 0)
            record_delay(b, name, text, idle, held, 0)
            b.stop_target(name)
    procs.stop(echo)


def churn(b, name, count):
    """bench/api_latency.py against tp-api's API, COUNT toxics added and removed; records its
    KEY VALUE pairs as NAME's. False when it printed none."""
    s = b.s
    err = os.path.join(b.work, f"api-latency-{name}.err")
    out = procs.run([sys.executable, os.path.join(b.root, "bench", "api_latency.py"), "--api",
                     b.api_of["tp-api"], "--proxy", "b", "--pairs", count, "--hold-ms",
                     s.api_hold_ms, "--gap-ms", s.api_gap_ms, "--time-limit", 100], 120,
                    stderr_path=err)
    with open(err, errors="replace") as f:
        err_text = f.read(300)
    if not out.startswith("pairs"):
        b.log(f"api_latency.py ({name}) failed: {err_text}")
        return False
    if err_text:
        b.log(f"  api_latency.py: {err_text}")
    v = pairs(out)
    for key, value in v.items():
        b.record(name, key, value)
    f = lambda key: float(v.get(key, "nan")) / 1e3
    b.log(f"  {name}  {int(float(v.get('pairs', 0)))} pairs, {int(float(v.get('errors', 0)))} "
          f"errors: add p50 {f('add_p50_us'):.2f} ms p99 {f('add_p99_us'):.2f} ms max "
          f"{f('add_max_us'):.2f} ms; remove p50 {f('remove_p50_us'):.2f} ms p99 "
          f"{f('remove_p99_us'):.2f} ms max {f('remove_max_us'):.2f} ms")
    return True


def phase_toxics(b):
    """The toxic calls' HTTP times: api_idle_pairs pairs with no connection through the proxy,
    then api_pairs beside api_tunnels tunnels through it to an echo, each pinging 16 B every
    api_interval_ms (load delay), which must all come through unbroken."""
    s = b.s
    b.log(f"toxic API calls: {s.api_idle_pairs} add/remove pairs idle, {s.api_pairs} beside "
          f"{s.api_tunnels} tunnels pinging every {s.api_interval_ms} ms (each toxic held "
          f"{s.api_hold_ms} ms)")
    b.progress.phase("api toxics", 2)
    echo, port = b.start_upstream("echo")
    if not b.start_target("tp-api", "tp-api", port):
        b.log(f"tp-api: {b.missing['tp-api']}")
        procs.stop(echo)
        return
    b.progress.step("idle")
    churn(b, "api-idle", s.api_idle_pairs)
    # The tunnels ping for the churn's expected length (each pair about hold + gap + 2 ms)
    # and 3 s more, so that every call is made while they run.
    seconds = (s.api_pairs * (s.api_hold_ms + s.api_gap_ms + 2) + 999) // 1000 + 3
    file_path = os.path.join(b.work, "api-delay.out")
    client = procs.spawn([b.programs["load"], "delay", s.api_tunnels, "--port",
                          b.port_of["tp-api"], "--time", seconds, "--open-time", 30,
                          "--interval-ms", s.api_interval_ms], file_path)
    procs.wait_for_line(file_path, lambda t: first_line(t, "open") or None, 35, client)
    time.sleep(1)  # every tunnel pinging
    b.progress.step(f"beside {s.api_tunnels} tunnels")
    if churn(b, "api-load", s.api_pairs):
        beside = client.poll() is None
        b.record("api-load", "churn_beside_tunnels", int(beside))
        if not beside:
            b.log("  the tunnels ended before the calls did: raise their time")
    deadline = time.monotonic() + seconds + 10
    while client.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    procs.stop(client)
    b.stop_target("tp-api")
    procs.stop(echo)
    with open(file_path, errors="replace") as f:
        text = f.read()
    out = first_line(text, "count")
    if not out:
        b.log(f"the tunnels through tp-api failed: {text.replace(chr(10), ' ')[:200]}")
        b.record("api-load", "tunnels_failed", 1)
        return
    opened = pairs(first_line(text, "open"))  # open K failed F seconds S
    b.record("api-load", "tunnels_open_failed", opened.get("failed", "nan"))
    v = pairs(out)  # count N p50_us A p99_us B max_us C min_us D open K missing M lost L
    for metric, key in (("ping_count", "count"), ("ping_p50_us", "p50_us"),
                        ("ping_p99_us", "p99_us"), ("ping_max_us", "max_us"),
                        ("tunnels_open", "open"), ("tunnels_missing", "missing"),
                        ("tunnels_lost", "lost")):
        b.record("api-load", metric, v[key])
    b.log(f"  {s.api_tunnels} tunnels: {v['open']} open, {v['missing']} echoes missing, "
          f"{v['lost']} lost; pings p50 {v['p50_us']} us p99 {v['p99_us']} us max "
          f"{v['max_us']} us ({v['count']} round trips)")


def run_api(b):
    phase_parity(b)
    phase_tunnels(b)
    phase_toxics(b)


def api_table(samples, tunnels, interval):
    med = lambda name, metric: median_of(samples, name, metric)
    ok = lambda v: v == v  # not NaN
    lines = []
    out = lines.append
    verdict = lambda good: "**yes**" if good else "**no**"

    out("| through the proxy (poll, no toxic) | `--forward` | made by the API | API / forward |")
    out("|---|---|---|---|")
    rows = (("rate_cps", "conn/s (8 workers)", "{:,.0f}"),
            ("rate_cpu_us_per_conn", "CPU µs/conn", "{:.1f}"),
            ("rrpin_p50_us", "pinned RR p50 µs", "{:.1f}"),
            ("rrpin_p99_us", "pinned RR p99 µs", "{:.1f}"),
            ("bulk1_gbps", "iperf3 1 stream, Gbit/s", "{:.2f}"),
            ("bulk1_cpu_s_per_gb", "CPU s/GB, 1 stream", "{:.3f}"),
            ("bulk4_gbps", "iperf3 4 streams, Gbit/s", "{:.2f}"),
            ("bulk4_cpu_s_per_gb", "CPU s/GB, 4 streams", "{:.3f}"),
            ("delay_p50_us", f"{tunnels:,} tunnels, 16 B every 200 ms: p50 µs", "{:,.1f}"),
            ("delay_p99_us", f"{tunnels:,} tunnels: p99 µs", "{:,.1f}"),
            ("delay_kb_per_tunnel", "proxy KB/tunnel", "{:.2f}"))
    ratio = {}
    for metric, title, fmt in rows:
        a, b = med("tp-poll", metric), med("tp-api", metric)
        if ok(a) or ok(b):
            ratio[metric] = b / a if ok(a) and ok(b) and a else float("nan")
            out(f"| {title} | {fmt.format(a) if ok(a) else 'failed'} | "
                f"{fmt.format(b) if ok(b) else 'failed'} | {ratio[metric]:.3f} |")
    if all(ok(ratio.get(m, float("nan"))) for m in ("rate_cps", "rrpin_p50_us", "bulk1_gbps")):
        out("")
        out(f"Target (issue 14): level with `--forward` (within 5 %): conn/s "
            f"{verdict(ratio['rate_cps'] >= 0.95)}, "
            f"pinned RR p50 {verdict(ratio['rrpin_p50_us'] <= 1.05)}, "
            f"iperf3 1 stream {verdict(ratio['bulk1_gbps'] >= 0.95)}.")
    out("")

    out("| HTTP call (keep-alive) | calls | p50 ms | p99 ms | max ms |")
    out("|---|---|---|---|---|")
    calls = (("get_", "GET /version (changes nothing)"),
             ("add_", "POST /proxies/b/toxics (add)"),
             ("remove_", "DELETE /proxies/b/toxics/NAME (remove)"),
             ("latency_add_", "add `latency=1`"), ("latency_remove_", "remove `latency=1`"),
             ("bandwidth_add_", "add `bandwidth,rate=10000`"),
             ("bandwidth_remove_", "remove `bandwidth,rate=10000`"))
    for name, when in (("api-idle", "idle"), ("api-load", f"beside {tunnels:,} tunnels")):
        for prefix, title in calls:
            n = med(name, prefix + "count")
            if not ok(n) or n == 0:
                continue
            cells = " | ".join(f"{med(name, prefix + q) / 1e3:,.2f}"
                               for q in ("p50_us", "p99_us", "max_us"))
            out(f"| {when}: {title} | {n:,.0f} | {cells} |")
    out("")
    if ok(med("api-load", "pairs")):
        closed = {r: med("api-load", f"closed_{r}") for r in
                  ("clean", "reset", "timeout", "unreachable", "fault", "stopped", "error")}
        lost, missing, opened = (med("api-load", m)
                                 for m in ("tunnels_lost", "tunnels_missing", "tunnels_open"))
        errors = sum(v for v in (med(n, "errors") for n in ("api-idle", "api-load")) if ok(v))
        slowest = max([v for v in (med(n, f"{p}max_us") for n in ("api-idle", "api-load")
                                   for p in ("add_", "remove_")) if ok(v)] or [float("nan")])
        out(f"Beside the tunnels (16 B every {interval} ms each): {med('api-load', 'pairs'):,.0f} "
            f"pairs in {med('api-load', 'seconds'):.1f} s; "
            f"tunnels open {opened:,.0f} of {tunnels:,} (the proxy counted "
            f"{med('api-load', 'active_before'):,.0f} "
            f"active before the calls, {med('api-load', 'active_after'):,.0f} after); "
            f"connections the proxy closed meanwhile: "
            + ", ".join(f"{r} {v:.0f}" for r, v in closed.items())
            + f"; toxics applied to connections: latency {med('api-load', 'applied_latency'):,.0f}, "
            f"bandwidth {med('api-load', 'applied_bandwidth'):,.0f}; toxics left after: "
            f"{med('api-load', 'toxics_left'):.0f}. Pings meanwhile (some through the 1 ms "
            f"latency): p50 {med('api-load', 'ping_p50_us') / 1e3:.2f} ms, p99 "
            f"{med('api-load', 'ping_p99_us') / 1e3:.2f} ms, "
            f"max {med('api-load', 'ping_max_us') / 1e3:.2f} ms; echoes missing {missing:.0f}, "
            f"lost {lost:.0f}.")
        out("")
        unbroken = (opened == tunnels and lost == 0 and missing == 0 and ok(sum(closed.values()))
                    and sum(closed.values()) == 0)
        if med("api-load", "churn_beside_tunnels") == 0:
            out("(The tunnels had ended before the last call: some calls ran without them.)")
            out("")
        if ok(med("api-load", "metrics_failed")):
            out("(GET /metrics could not be read: the proxy's own counts are missing.)")
            out("")
        out(f"No tunnel broke while toxics came and went: {verdict(unbroken)}. "
            f"Every call answered, no HTTP error: {verdict(errors == 0)}; "
            f"the slowest add or remove: {slowest / 1e3:,.2f} ms (Toxiproxy users report 25 s "
            "hangs).")
    else:
        out("Toxic calls beside the tunnels: failed (see the log).")
    return "\n".join(lines)
