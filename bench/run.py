#!/usr/bin/env python3
"""bench/run.py [--quick] [MODE] [--quiet]: tinyproxy against direct TCP and the proxies people
deploy (haproxy, nginx stream, rinetd, socat, microsocks), side by side in one run on loopback.

Installs the peers with apt when missing, builds tinyproxy in Release and the bench's programs
(bench/load, bench/floor, bench/stage_proxy: CMake, TINYPROXY_BUILD_BENCH) in build/bench,
measures bulk throughput (iperf3 and bench/load bulk), CPU per GB, connection rate,
request/response latency (also pinned to one CPU; and, in a full run, beside 4 bulk streams
through the same proxy) and memory per held connection, alternating targets run by run, then
prints a markdown table of medians and writes bench/results/<date>-<HHMM>-<quick|full>.json.
CPU is counted for the proxy's process tree and system-wide (/proc/stat, less an idle baseline).

Modes (one at a time; --quick shortens each):
  (none)      the full run: 3 repetitions, about 16-20 minutes; --quick: 1 repetition, 3 minutes
  --levers    what each lever bought: the forwarder built for poll(2) and copies only, then
              epoll, then splice, then two loops, next to haproxy and nginx (-levers.json)
  --syscalls  the system calls tinyproxy (forward and SOCKS5), haproxy and nginx make per
              connection and per round trip (perf); TINYPROXY=path counts another build
  --ab        BASELINE=path: this build's CLI against another's, AB_ROUNDS (6) rounds of 3 s,
              A B then B A: conn/s and CPU per connection (forward and SOCKS5), pinned RR, and
              iperf3 1 and 4 streams (unless AB_BULK=0); medians and ratios
  --mixed     only the RR-beside-bulk phase, every target, and its medians
  --floor     bulk, rate and latency through bench/floor.cpp (the fewest system calls a
              forwarder can make) next to tinyproxy, haproxy, nginx and microsocks; every
              sample to bench/results/<date>-<HHMM>-floor.tsv
  --faults    the relay stages and Toxiproxy's faults (issue 13), FAULT_ROUNDS (4) stage
              rounds; -faults[-quick].json: about 5 minutes, under 1 with --quick
  --api       the Toxiproxy-compatible API (issue 14), API_ROUNDS (6; 2 quick) rounds,
              API_PAIRS toxic pairs; -api[-quick].json: about 3 minutes, under 1 with --quick
  --http      bench/http_proxy.py, the HTTP-proxy benchmark (the other arguments go to it)
  --udp       bench/udp_socks.py, the SOCKS5 UDP benchmark (the other arguments go to it)
  --self-test a smoke run of every mode against one peer, about 30 s; fails if any mode does

Options: --quiet (no progress line on stderr). Environment: TINYPROXY=path (the CLI to
measure), KEEP_WORK=1 (keep the configs and logs in /tmp/tinyproxy-bench.*). Method and meaning
of each number: bench/README.md. Every process it starts is ended on exit, error or Ctrl-C."""
import os
import shutil
import signal
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from tpbench import modes, prepare, procs, targets  # noqa: E402
from tpbench.bench import Bench  # noqa: E402
from tpbench.progress import Progress  # noqa: E402
from tpbench.settings import Settings  # noqa: E402

MODES = ("--levers", "--syscalls", "--ab", "--mixed", "--floor", "--faults", "--api",
         "--self-test")


def plan(mode, s):
    """(phase, estimated seconds) of a run, for the progress line's time left."""
    nf, ns = len(targets.FORWARDERS), len(targets.SOCKS)
    if mode == "--levers":
        nf, ns = len(targets.LEVERS_FORWARDERS), 0
    bulk = s.reps * 2 * (nf + ns + 2) * (s.bulk_time + 0.6)
    rate = s.reps * (nf + ns) * (s.rate_time + 0.3)
    rr = 2 * s.reps * (nf + ns) * (s.rr_count * 40e-6 + 0.2)
    mixed = s.reps * (nf + ns) * (s.bulk_time + 3.5)
    memory = sum(count / 1500 + 2 for count in s.hold_counts) * (nf + ns - 1)
    if mode == "--mixed":
        return [("mixed", mixed)]
    if mode == "--floor":
        return [("bulk", bulk), ("rate", rate), ("rr", rr)]
    if mode == "--ab":
        rounds = int(os.environ.get("AB_ROUNDS", "6"))
        return [("ab rate", rounds * 4 * 3.3), ("ab rr", rounds * 2 * 0.6),
                ("ab bulk", rounds * 4 * 3.7)]
    if mode == "--faults":
        return [("faults delay", 3 * (s.delay_time * 1.5 + 2)),
                ("faults latency bulk", 2 * s.latbulk_rounds * (s.latbulk_time + 1)),
                ("faults bandwidth", s.bw_reps * (sum(s.bw_times) + 3)),
                ("faults stage", s.stage_rounds * len(s.stage_policies) * 6 * (s.stage_time + 0.5))]
    if mode == "--api":
        return [("api parity", s.api_rounds * 2 * (2 + len(s.api_streams)) * (s.api_time + 0.5)),
                ("api tunnels", 2 * s.api_delay_rounds * (s.api_delay_time * 1.5 + 2)),
                ("api toxics", (s.api_idle_pairs + s.api_pairs) * 0.045 + 8)]
    if mode == "--syscalls":
        return [("syscalls", 4 * 6)]
    steps = [("bulk", bulk), ("rate", rate), ("rr", rr)]
    if not s.quick:
        steps.append(("mixed", mixed))
    return steps + [("memory", memory)]


def dispatch(args, flag, script, what):
    """FLAG (--http, --udp): bench/SCRIPT, the benchmark of WHAT, with the other arguments."""
    path = os.path.join(HERE, script)
    if not os.path.exists(path):
        print(f"run.py {flag}: {path} is missing (the {what} benchmark)", file=sys.stderr)
        return 2
    rest = [a for a in args if a != flag]
    os.execv(sys.executable, [sys.executable, path, *rest])
    return 2
    rest = [a for a in args if a != "--udp"]
    os.execv(sys.executable, [sys.executable, script, *rest])
    return 2


def parse(args):
    quick = quiet = False
    mode = None
    for arg in args:
        if arg == "--quick":
            quick = True
        elif arg == "--quiet":
            quiet = True
        elif arg in MODES:
            if mode and mode != arg:
                raise SystemExit(f"run.py: {mode} and {arg} are separate runs: one at a time")
            mode = arg
        elif arg in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        else:
            print(f"run.py: unknown argument '{arg}' (only --quick, --quiet, "
                  + ", ".join(MODES) + ", --http and --udp)", file=sys.stderr)
            raise SystemExit(2)
    return quick, quiet, mode


def run_mode(b, mode, command, results_dir):
    if mode == "--syscalls":
        phases_syscalls(b)
    elif mode == "--mixed":
        modes.mixed_only(b)
    elif mode == "--floor":
        modes.floor(b, results_dir)
    elif mode == "--faults":
        modes.run_faults(b, command, results_dir)
    elif mode == "--api":
        modes.run_api(b, command, results_dir)
    elif mode == "--ab":
        modes.ab(b)
    else:
        modes.full(b, command, results_dir, levers=mode == "--levers")


def phases_syscalls(b):
    from tpbench import phases
    phases.phase_syscalls(b)


def self_test_one(mode):
    """A child of --self-test: MODE only, with the programs its parent built
    (TPBENCH_PROGRAMS)."""
    import json
    from tpbench import selftest
    os.chdir(ROOT)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    work = tempfile.mkdtemp(prefix="tinyproxy-bench.")
    b = Bench(ROOT, work, Settings(quick=True), Progress(quiet=True))
    b.programs = json.loads(os.environ["TPBENCH_PROGRAMS"])
    try:
        return selftest.run_one(b, mode)
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_everything()
        if os.environ.get("KEEP_WORK") != "1":
            shutil.rmtree(work, ignore_errors=True)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(args):
    if "--http" in args:
        return dispatch(args, "--http", "http_proxy.py", "HTTP-proxy")
    if "--udp" in args:
        return dispatch(args, "--udp", "udp_socks.py", "SOCKS5 UDP")
    if args[:1] == ["--self-test-one"] and len(args) == 2:  # one mode of --self-test
        return self_test_one(args[1])
    quick, quiet, mode = parse(args)
    os.chdir(ROOT)
    command = "bench/run.py" + "".join(f" {a}" for a in args)
    # Both by hand: a shell starts a background job with SIGINT ignored, and Python then
    # installs no handler of its own.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    work = tempfile.mkdtemp(prefix="tinyproxy-bench.")
    settings = Settings(quick, levers=mode == "--levers")
    progress = Progress(plan(mode, settings), quiet=quiet)
    b = Bench(ROOT, work, settings, progress)
    status = 0
    try:
        prepare.install_missing(b.log, work)
        prepare.check_required()
        b.programs = prepare.build(ROOT, work, b.log, need_floor=mode in ("--floor", "--self-test"),
                                   need_stage=mode in ("--faults", "--self-test"),
                                   need_portable=mode == "--levers")
        if mode == "--self-test":
            from tpbench import selftest
            status = selftest.run(b)
        else:
            run_mode(b, mode, command, os.path.join(ROOT, "bench", "results"))
    except KeyboardInterrupt:
        b.log("interrupted")
        status = 130
    except RuntimeError as e:
        b.log(f"run.py: {e}")
        status = 1
    finally:
        progress.finish()
        procs.stop_everything()
        if os.environ.get("KEEP_WORK") == "1":
            print(f"run.py: logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
