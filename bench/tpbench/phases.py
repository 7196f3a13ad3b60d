"""The phases of the default run (bulk, rate, rr, mixed, memory) and of --syscalls and --ab,
each a function of the Bench and the targets it measures."""
import os
import shutil
import subprocess
import time

from . import procs
from .bench import first_line, pairs


def phase_bulk(b, forwarders, socks):
    """iperf3 through each forwarder; bench/load bulk through each SOCKS5 proxy, with direct
    and our forwarder (poll) as references for the SOCKS table, through the same client."""
    s = b.s
    b.log("bulk: iperf3 through each forwarder, bench/load bulk through each SOCKS5 proxy")
    iperf, iperf_port = b.start_iperf()
    if iperf:
        b.start_all(iperf_port, forwarders)
    else:
        b.log("iperf3 missing: no iperf3 bulk numbers")
    sink, sink_port = b.start_upstream("sink")
    socks_refs = []
    if socks:
        b.start_all(sink_port, socks)
        b.port_of["direct@sink"] = sink_port
        b.start_target("tp-poll", "tp-poll@sink", sink_port)
        socks_refs = ["direct", "tp-poll"]
    b.progress.phase("bulk", s.reps * len(s.bulk_streams)
                     * (len(forwarders) + len(socks_refs) + len(socks)))
    for rep in range(1, s.reps + 1):
        for streams in s.bulk_streams:
            for name in forwarders:
                b.progress.step(f"{name} -P {streams}", rep, s.reps)
                if not iperf or not b.up(name):
                    continue
                out = b.iperf_sample(name, name, streams, s.bulk_time)
                if out is None:
                    b.log(f"iperf3 through {name} (-P {streams}) failed")
                    continue
                b.log(f"  rep {rep}  -P {streams}  {name}  {out} Gbit/s")
            for name in socks_refs + socks:
                b.progress.step(f"{name} {streams} streams", rep, s.reps)
                key = f"{name}@sink" if name in ("direct", "tp-poll") else name
                if not b.up(key):
                    continue
                out = b.load_bulk_sample(name, key, sink_port, streams, s.bulk_time)
                if out is None:
                    b.log(f"bench/load bulk through {name} ({streams} streams) failed")
                    continue
                b.log(f"  rep {rep}  {streams} streams (load)  {name}  {out} Gbit/s")
    b.stop_all()
    procs.stop(iperf)
    procs.stop(sink)


def phase_rate(b, names):
    s = b.s
    b.log(f"rate: {s.rate_threads} workers, {s.rate_time} s per run")
    server, port = b.start_upstream("server")
    b.start_all(port, names)
    b.progress.phase("rate", s.reps * len(names))
    for rep in range(1, s.reps + 1):
        for name in names:
            b.progress.step(name, rep, s.reps)
            if not b.up(name):
                continue
            out = b.rate_sample(name, port, s.rate_time)
            if out is None:
                b.log(f"rate through {name} failed")
                continue
            b.log(f"  rep {rep}  {name}  {out[0]} conn/s ({out[1]} errors)")
    b.stop_all()
    procs.stop(server)


def phase_rr(b, names):
    """One connection, 64 B ping-pong: free, then everything pinned to CPU 0."""
    s = b.s
    b.log(f"rr: one connection, 64 B ping-pong, {s.rr_count} round trips")
    echo, port = b.start_upstream("echo")
    b.start_all(port, names)
    b.progress.phase("rr", 2 * s.reps * len(names))
    for pinned in (False, True):
        variant = "rrpin" if pinned else "rr"
        if pinned:
            procs.pin_tree(echo.pid, 0)
            b.pin_targets(names)
        for rep in range(1, s.reps + 1):
            for name in names:
                b.progress.step(f"{name} {variant}", rep, s.reps)
                if not b.up(name):
                    continue
                v = b.rr_sample(name, name, port, s.rr_count, variant, pinned)
                if v is None:
                    b.log(f"rr through {name} failed")
                    continue
                b.log(f"  rep {rep}  {variant}  {name}  p50 {v['p50_us']} us  p99 {v['p99_us']} us")
    b.stop_all()
    procs.stop(echo)


def phase_mixed(b, names):
    """The rr client's round trips while 4 `load bulk` streams go through the same proxy, to one
    `load mixed` upstream (a sink for the bulk streams, an echo on a thread of its own for the
    pings): what a small exchange pays for sharing a proxy with bulk transfers."""
    s = b.s
    b.log(f"mixed: {s.rr_mixed_count} round trips beside 4 bulk streams through the same proxy")
    mixed, port = b.start_upstream("mixed")
    b.start_all(port, names)
    bulk_out = os.path.join(b.work, "mixed-bulk.out")
    b.progress.phase("mixed", s.reps * len(names))
    for rep in range(1, s.reps + 1):
        for name in names:
            b.progress.step(name, rep, s.reps)
            if not b.up(name):
                continue
            args = b.client_args(name, name, port)
            bulk = procs.spawn([b.programs["load"], "bulk", *args, "--streams", 4, "--time",
                                s.bulk_time + 2], bulk_out)
            time.sleep(1)  # the streams are up to speed
            out = b.load("rr", *args, "--count", s.rr_mixed_count, "--time", s.bulk_time,
                         timeout=60)
            try:
                bulk.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            procs.stop(bulk)
            if not out.startswith("count"):
                b.log(f"rr beside bulk through {name} failed")
                b.record(name, "mixrr_failed", 1)
                continue
            v = pairs(out)
            b.record_quantiles(name, "mixrr", v)
            with open(bulk_out, errors="replace") as f:
                beside = pairs(f.read()).get("gbps", "")
            b.log(f"  rep {rep}  {name}  p50 {v['p50_us']} us  p99 {v['p99_us']} us "
                  f"({v['count']} round trips) beside {beside} Gbit/s")
    b.stop_all()
    procs.stop(mixed)


def phase_memory(b, names):
    """Idle, then each of hold_counts idle connections held through each proxy (a fresh one
    per count)."""
    s = b.s
    b.log("memory: idle, then " + " ".join(map(str, s.hold_counts))
          + " idle connections held through each proxy")
    hold, port = b.start_upstream("hold")
    b.progress.phase("memory", len(s.hold_counts) * len(names))
    for count in s.hold_counts:
        for name in names:
            b.progress.step(f"{name} {count} connections")
            if name in b.missing:
                continue
            if not b.start_target(name, name, port):
                b.log(f"{name}: {b.missing[name]}")
                continue
            time.sleep(0.2)
            idle = b.proc_stats(b.proc_of[name])
            file_path = os.path.join(b.work, f"hold-{name}-{count}.out")
            holder = procs.spawn([b.programs["load"], "hold", count,
                                  *b.client_args(name, name, port), "--time", 300,
                                  "--open-time", s.open_time], file_path)
            out = procs.wait_for_line(file_path, lambda t: first_line(t, "held") or None,
                                      s.open_time + 15, holder)
            time.sleep(0.3)  # let forked children and threads settle
            held = b.proc_stats(b.proc_of[name])
            procs.stop(holder)
            b.stop_target(name)
            if not out or not held or not idle:
                b.log(f"memory through {name} failed")
                continue
            b.record(name, "mem_idle_rss_kb", idle["rss_kb"])
            b.record(name, "mem_idle_pss_kb", idle["pss_kb"])
            v = pairs(out)
            b.record(name, f"held_{count}", v["held"])
            b.record(name, f"open_s_{count}", v["seconds"])
            b.record(name, f"mem_{count}_rss_kb", held["rss_kb"])
            b.record(name, f"mem_{count}_pss_kb", held["pss_kb"])
            b.record(name, f"procs_{count}", held["procs"])
            b.log(f"  {name}  held {v['held']}/{count}  rss {held['rss_kb']} KB  "
                  f"pss {held['pss_kb']} KB  ({held['procs']} processes)")
    procs.stop(hold)


# ---------------------------------------------------------------- --syscalls
def count_syscalls(b, key, argv):
    """(calls, output): the system calls KEY's process tree made while ARGV ran. perf counts
    the raw_syscalls:sys_enter tracepoint in the kernel without slowing the proxy down (strace
    would, and a slowed proxy finds replies waiting that a real one waits for)."""
    stat = os.path.join(b.fresh_dir("perf"), "perf.csv")
    pids = ",".join(map(str, procs.tree_pids(b.proc_of[key].pid)))
    counter = procs.spawn(["perf", "stat", "-e", "raw_syscalls:sys_enter", "-x,", "-o", stat,
                           "-p", pids])
    time.sleep(0.5)  # attached
    output = procs.run(argv, 120)
    counter.send_signal(2)  # SIGINT: perf writes its counts
    try:
        counter.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    procs.stop(counter)
    calls = 0
    with open(stat) as f:
        for line in f:
            if "raw_syscalls:sys_enter" in line:
                calls = int(float(line.split(",")[0]))
    return calls, output


def phase_syscalls(b, seconds=2, round_trips=2000):
    if not shutil.which("perf"):
        if subprocess.run(["apt-get", "install", "-y", "-q", "linux-perf"],
                          stdout=subprocess.DEVNULL).returncode != 0:
            raise RuntimeError("perf is missing and could not be installed")
    b.log(f"system calls per connection (one at a time, {seconds} s) and per round trip "
          f"({round_trips + 200:,}), with perf")
    server, server_port = b.start_upstream("server")
    echo, echo_port = b.start_upstream("echo")
    print("| target | system calls per connection | per round trip |")
    print("|---|---|---|")
    names = ["tp-poll", "haproxy", "nginx", "tp-socks-poll"]
    b.progress.phase("syscalls", len(names))
    for name in names:
        b.progress.step(name)
        if not b.start_target(name, f"{name}@rate", server_port) or not b.start_target(
                name, f"{name}@rr", echo_port):
            print(f"| {name} | missing | missing |")
            b.stop_all()
            continue
        load = b.programs["load"]
        calls, out = count_syscalls(b, f"{name}@rate", [
            load, "rate", *b.client_args(name, f"{name}@rate", server_port), "--threads", 1,
            "--time", seconds])
        conns = int(pairs(out).get("conns", 0)) or 1
        rr_calls, _ = count_syscalls(b, f"{name}@rr", [
            load, "rr", *b.client_args(name, f"{name}@rr", echo_port), "--count", round_trips])
        # load rr makes 200 round trips of warm-up before the counted ones
        print(f"| {name} | {calls / conns:.1f} ({conns} connections) | "
              f"{rr_calls / (round_trips + 200):.2f} |",
              flush=True)
        b.stop_target(f"{name}@rate")
        b.stop_target(f"{name}@rr")
    procs.stop(server)
    procs.stop(echo)


# ---------------------------------------------------------------- --ab
def _alternate(rep, names):
    """A B in odd rounds, B A in even ones (of the first two names)."""
    return names if rep % 2 else [names[1], names[0]] + names[2:]


def phase_ab(b, forwarders, socks, rounds, seconds=3, rr_count=None):
    """Connection rate and CPU per connection of this build (tp-*) and BASELINE's (tpb-*),
    forward and SOCKS5, in the order A B B A A B ...: on this machine the first of a pair did
    up to 10 % better whichever build it was. Then pinned RR, and iperf3 unless AB_BULK=0."""
    s = b.s
    b.log(f"A/B: {b.programs['tp']} against {b.programs['baseline']}, {rounds} rounds of "
          f"{seconds} s, {s.rate_threads} workers")
    server, server_port = b.start_upstream("server")
    b.start_all(server_port, forwarders + socks)
    b.progress.phase("ab rate", rounds * (len(forwarders) + len(socks)))
    for rep in range(1, rounds + 1):
        order = forwarders + socks if rep % 2 else (_alternate(rep, forwarders)
                                                   + _alternate(rep, socks))
        for name in order:
            b.progress.step(name, rep, rounds)
            if not b.up(name):
                continue
            out = b.rate_sample(name, server_port, seconds)
            if out is not None:
                b.log(f"  round {rep}  {name}  {out[0]} conn/s")
    b.stop_all()
    procs.stop(server)

    # Pinned request/response latency (64 B ping-pong, everything on CPU 0), alternating too.
    echo, echo_port = b.start_upstream("echo")
    b.start_all(echo_port, forwarders)
    procs.pin_tree(echo.pid, 0)
    b.pin_targets(forwarders)
    count = rr_count or int(os.environ.get("AB_RR_COUNT", "10000"))
    b.progress.phase("ab rr", rounds * len(forwarders))
    for rep in range(1, rounds + 1):
        for name in _alternate(rep, forwarders):
            b.progress.step(name, rep, rounds)
            if not b.up(name):
                continue
            v = b.rr_sample(name, name, echo_port, count, "rrpin", True)
            if v is not None:
                b.log(f"  round {rep}  pinned rr  {name}  p50 {v['p50_us']} us  "
                      f"p99 {v['p99_us']} us")
    b.stop_all()
    procs.stop(echo)

    # Bulk, forwarding only: iperf3 through each build, 1 and 4 streams, alternating.
    if os.environ.get("AB_BULK", "1") == "0":
        return
    iperf, iperf_port = b.start_iperf()
    if not iperf:
        return
    for name in forwarders:
        if not b.start_target(name, name, iperf_port):
            b.log(f"{name}: {b.missing[name]}")
    b.progress.phase("ab bulk", rounds * len(s.bulk_streams) * len(forwarders))
    for rep in range(1, rounds + 1):
        for streams in s.bulk_streams:
            for name in _alternate(rep, forwarders):
                b.progress.step(f"{name} -P {streams}", rep, rounds)
                if not b.up(name):
                    continue
                out = b.iperf_sample(name, name, streams, seconds)
                if out is not None:
                    b.log(f"  round {rep}  -P {streams}  {name}  {out} Gbit/s")
    b.stop_all()
    procs.stop(iperf)
