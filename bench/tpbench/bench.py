"""One run's state: its work directory and samples, the targets it started, and the samplers
every phase shares (iperf3, load bulk/rate/rr/delay, CPU of a process tree)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

from . import procs, syscpu, targets
from .progress import Progress


def pairs(line):
    """bench/load's "key value key value ..." line as a dict of strings."""
    words = line.split()
    return dict(zip(words[::2], words[1::2]))


def first_line(text, word):
    """The first line of TEXT that starts with WORD, or ""."""
    for line in text.splitlines():
        if line.startswith(word):
            return line
    return ""


def listening_port(text):
    """The port of tinyproxy's "listening on 127.0.0.1:PORT" line, or None."""
    m = re.search(r"^listening on 127\.0\.0\.1:(\d+)$", text, re.M)
    return int(m.group(1)) if m else None


class Bench:
    def __init__(self, root, work, settings, progress=None):
        self.root = root
        self.work = work
        self.s = settings  # the mode's settings (Settings)
        self.raw = os.path.join(work, "raw.tsv")
        open(self.raw, "w").close()
        self.t0 = time.monotonic()
        self.progress = progress or Progress(quiet=True)
        self.programs = {}  # key -> path: load, tp, portable, floor, stage_proxy, baseline
        self.port_of = {}
        self.proc_of = {}
        self.api_of = {}
        self.missing = {}
        self.seq = 0
        self.idle_cpu = syscpu.Baseline()
        self.idle_seconds = 1.0  # how long the idle baseline is measured

    # ------------------------------------------------------------ logging and samples
    def log(self, message):
        self.progress.clear()
        print(f"[{int(time.monotonic() - self.t0):4d}s] {message}", file=sys.stderr, flush=True)
        self.progress.redraw()

    def record(self, name, metric, value):
        with open(self.raw, "a") as f:
            f.write(f"{name}\t{metric}\t{value}\n")

    def fresh_dir(self, label):
        """A new directory under the work directory: no stale output to read."""
        self.seq += 1
        path = os.path.join(self.work, f"{self.seq}-{label}")
        os.makedirs(path, exist_ok=True)
        return path

    # ------------------------------------------------------------ bench/load helpers
    def load(self, *args, timeout=30):
        return procs.run([self.programs["load"], *args], timeout)

    def free_port(self):
        return int(self.load("ports", "1").split()[0])

    def waitport(self, port, seconds=5):
        return subprocess.run([self.programs["load"], "waitport", str(port), str(seconds)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def proc_stats(self, proc):
        """{cpu_s, rss_kb, pss_kb, procs} of PROC's tree (strings), or {} when it failed."""
        if proc is None:
            return {}
        return pairs(first_line(self.load("proc", str(proc.pid)), "cpu_s"))

    def cpu_of(self, key):
        """CPU seconds of KEY's process tree (0 for direct)."""
        proc = self.proc_of.get(key)
        return float(self.proc_stats(proc).get("cpu_s", 0)) if proc else 0.0

    def up(self, key):
        return bool(self.port_of.get(key))

    # ------------------------------------------------------------ targets
    def start_target(self, name, key, upstream):
        """Starts NAME as KEY, forwarding to 127.0.0.1:UPSTREAM (SOCKS targets ignore it);
        sets port_of[KEY] and proc_of[KEY], or marks NAME missing and returns False."""
        directory = self.fresh_dir(key)
        if name == "direct":
            self.port_of[key], self.proc_of[key] = upstream, None
            return True
        if name == "tp-api":
            return self._start_api(key, upstream, directory)
        variant = targets.tinyproxy_variant(name)
        if variant:
            return self._start_tinyproxy(name, key, upstream, directory, variant)
        return self._start_peer(name, key, upstream, directory)

    def _start_peer(self, name, key, upstream, directory):
        spec = targets.PEERS[name]
        program = targets.peer_program(name)
        if not program:
            self.missing[name] = "not installed"
            return False
        needed = spec.get("needs")
        if needed and not os.path.exists(needed[0]):
            self.missing[name] = needed[1]
            return False
        port = self.free_port()
        fill = {"port": port, "upstream": upstream, "dir": directory, "program": program,
                "fd_limit": self.s.fd_limit, "stream_module": targets.NGINX_STREAM,
                "conf": os.path.join(directory, spec.get("conf", "none"))}
        if "conf" in spec:
            with open(fill["conf"], "w") as f:
                f.write(targets.read_template(spec["conf"]).format(**fill))
        argv = [a.format(**fill) for a in spec["argv"]]
        if "args" in spec:
            argv += [a.format(**fill) for a in targets.read_template(spec["args"]).split("\n") if a]
        proc = procs.spawn(argv, os.path.join(directory, "out"), os.path.join(directory, "err"))
        self.proc_of[key], self.port_of[key] = proc, port
        if not self.waitport(port, 5) or proc.poll() is not None:
            self.missing[name] = "did not start: " + self._head(directory, "err").replace("\n", " ")
            self.stop_target(key)
            return False
        time.sleep(spec.get("settle", 0))
        return True

    def _start_tinyproxy(self, name, key, upstream, directory, variant):
        program_key, policy, more = variant
        argv = [self.programs.get(program_key, ""), "--listen", "127.0.0.1:0",
                *targets.how_of(name, upstream), "--policy", policy, *more, "--quiet"]
        out = os.path.join(directory, "out")
        try:
            proc = procs.spawn(argv, out, os.path.join(directory, "err"))
        except OSError as e:
            self.missing[name] = f"did not start: {e}"
            return False
        self.proc_of[key] = proc
        port = procs.wait_for_line(out, listening_port, 5)
        if port is None:
            self.missing[name] = "did not start: " + self._head(directory, "err")
            self.stop_target(key)
            return False
        self.port_of[key] = port
        return True

    def _start_api(self, key, upstream, directory):
        """The CLI serving Toxiproxy's API, and proxy "b" made through it (--api)."""
        out = os.path.join(directory, "out")
        try:
            proc = procs.spawn([self.programs["tp"], "--api", "127.0.0.1:0", "--policy", "poll",
                                "--quiet"], out, os.path.join(directory, "err"))
        except OSError as e:
            self.missing["tp-api"] = f"did not start: {e}"
            return False
        self.proc_of[key] = proc
        api_port = procs.wait_for_line(out, listening_port, 5)
        answer = ""
        port = None
        if api_port is not None:
            body = json.dumps({"name": "b", "listen": "127.0.0.1:0",
                               "upstream": f"127.0.0.1:{upstream}"}, separators=(",", ":"))
            answer = procs.run(["curl", "-sS", "--max-time", "5", "-X", "POST",
                                f"http://127.0.0.1:{api_port}/proxies", "-d", body], 10)
            m = re.search(r'"listen":"127\.0\.0\.1:(\d+)"', answer)
            if m and self.waitport(int(m.group(1)), 5):
                port = int(m.group(1))
        if port is None:
            text = (self._head(directory, "err") + answer)[:200].replace("\n", " ")
            self.missing["tp-api"] = f"did not start: {text}"
            self.stop_target(key)
            return False
        self.api_of[key] = f"127.0.0.1:{api_port}"
        self.port_of[key] = port
        return True

    @staticmethod
    def _head(directory, file_name, size=200):
        try:
            with open(os.path.join(directory, file_name), errors="replace") as f:
                return f.read(size)
        except OSError:
            return ""

    def stop_target(self, key):
        procs.stop(self.proc_of.pop(key, None))
        self.port_of.pop(key, None)

    def start_all(self, upstream, names):
        for name in names:
            if name in self.missing:
                continue
            if not self.start_target(name, name, upstream):
                self.log(f"{name}: {self.missing[name]}")

    def stop_all(self):
        for key in list(self.proc_of) + list(self.port_of):
            self.stop_target(key)

    def pin_targets(self, names, cpus=0):
        for name in names:
            if self.proc_of.get(name):
                procs.pin_tree(self.proc_of[name].pid, cpus)

    # ------------------------------------------------------------ upstreams
    def start_upstream(self, kind):
        """A bench/load server (server, echo, sink, mixed, hold): (Popen, port)."""
        directory = self.fresh_dir(f"upstream-{kind}")
        out = os.path.join(directory, "out")
        proc = procs.spawn([self.programs["load"], kind, "0", "--time", "1800"], out)
        port = procs.wait_for_line(
            out, lambda t: int(m.group(1)) if (m := re.search(r"^port (\d+)$", t, re.M)) else None,
            5, proc)
        if port is None:
            raise RuntimeError(f"the {kind} upstream did not start")
        return proc, port

    def start_iperf(self):
        """An iperf3 server: (Popen, port), or (None, None) when iperf3 is missing."""
        if not shutil.which("iperf3"):
            return None, None
        port = self.free_port()
        proc = procs.spawn(["iperf3", "-s", "-B", "127.0.0.1", "-p", port],
                           os.path.join(self.work, "iperf3-server.log"))
        if not self.waitport(port, 5):
            self.log("iperf3 server did not start")
        return proc, port

    # ------------------------------------------------------------ samplers
    def client_args(self, name, key, upstream):
        """bench/load's arguments to reach KEY (SOCKS targets are asked for UPSTREAM)."""
        if targets.is_socks(name):
            return ["--port", str(upstream), "--socks5", str(self.port_of[key])]
        return ["--port", str(self.port_of[key])]

    def iperf_sample(self, name, key, streams, seconds):
        """One iperf3 run through KEY's port, recorded as NAME's: Gbit/s received, and CPU s
        per GB (the proxy's, and the system's). The Gbit/s as text, or None when it failed."""
        before, sys_before = self.cpu_of(key), syscpu.read()
        out = procs.run(["iperf3", "-c", "127.0.0.1", "-p", self.port_of[key], "-t", seconds,
                         "-P", streams, "-J", "--connect-timeout", "3000"], seconds + 20)
        time.sleep(0.1)
        after, sys_used = self.cpu_of(key), self.idle_cpu.used_since(sys_before)
        try:
            received = json.loads(out)["end"]["sum_received"]
            gbps, nbytes = f"{received['bits_per_second'] / 1e9:.3f}", received["bytes"]
        except (ValueError, KeyError, TypeError):
            self.record(name, f"bulk{streams}_failed", 1)
            return None
        self.record(name, f"bulk{streams}_gbps", gbps)
        if name != "direct":
            self.record(name, f"bulk{streams}_cpu_s_per_gb", (after - before) / (nbytes / 1e9))
        self.record(name, f"bulk{streams}_sys_cpu_s_per_gb", sys_used / (nbytes / 1e9))
        return gbps

    def load_bulk_sample(self, name, key, upstream, streams, seconds):
        """One `load bulk` run through KEY (lbulk metrics); its Gbit/s, or None."""
        before, sys_before = self.cpu_of(key), syscpu.read()
        out = self.load("bulk", *self.client_args(name, key, upstream), "--streams", streams,
                        "--time", seconds, timeout=seconds + 20)
        time.sleep(0.1)
        after, sys_used = self.cpu_of(key), self.idle_cpu.used_since(sys_before)
        if not out.startswith("bytes"):
            self.record(name, f"lbulk{streams}_failed", 1)
            return None
        v = pairs(out)
        self.record(name, f"lbulk{streams}_gbps", v["gbps"])
        nbytes = float(v["bytes"])
        if name != "direct":
            self.record(name, f"lbulk{streams}_cpu_s_per_gb", (after - before) / (nbytes / 1e9))
        self.record(name, f"lbulk{streams}_sys_cpu_s_per_gb", sys_used / (nbytes / 1e9))
        return v["gbps"]

    def rate_sample(self, name, upstream, seconds):
        """One `load rate` run through NAME; records conn/s, errors, CPU µs per connection
        (the proxy's, and the system's); (rate, errors) as text, or None when it failed."""
        before, sys_before = self.cpu_of(name), syscpu.read()
        out = self.load("rate", *self.client_args(name, name, upstream), "--threads",
                        self.s.rate_threads, "--time", seconds, timeout=seconds + 20)
        after, sys_used = self.cpu_of(name), self.idle_cpu.used_since(sys_before)
        if not out.startswith("conns"):
            return None
        v = pairs(out)
        conns = int(v["conns"])
        self.record(name, "rate_cps", v["rate"])
        self.record(name, "rate_errors", v["errors"])
        if conns > 0:
            if name != "direct":
                self.record(name, "rate_cpu_us_per_conn", (after - before) / conns * 1e6)
            self.record(name, "rate_sys_cpu_us_per_conn", sys_used / conns * 1e6)
        return v["rate"], v["errors"]

    def rr_sample(self, name, key, upstream, count, variant, pinned, time_limit=60):
        """One `load rr` run (64 B ping-pong) through KEY, recorded as VARIANT_p50_us and
        _p99_us; the parsed line, or None."""
        out = self.load("rr", *self.client_args(name, key, upstream), "--count", count, "--time",
                        time_limit, timeout=90) if not pinned else procs.run(
            [self.programs["load"], "rr", *self.client_args(name, key, upstream), "--count",
             count, "--time", time_limit], 90, prefix=("taskset", "-c", "0"))
        if not out.startswith("count"):
            return None
        v = pairs(out)
        self.record_quantiles(name, variant, v)
        return v

    def record_quantiles(self, name, variant, v):
        """VARIANT_p50_us and _p99_us, then the other quantiles `load rr` printed (the CDFs)."""
        self.record(name, f"{variant}_p50_us", v["p50_us"])
        self.record(name, f"{variant}_p99_us", v["p99_us"])
        for key, value in v.items():
            if re.fullmatch(r"p[0-9.]+_us", key) and key not in ("p50_us", "p99_us"):
                self.record(name, f"{variant}_{key}", value)

    def delay_run(self, name, tunnels, seconds, subtract):
        """`load delay` through NAME (started, to an echo): TUNNELS each pinging 16 B every
        200 ms for SECONDS, less SUBTRACT µs. (its output, the proxy's `load proc` fields before
        the tunnels, and halfway through); both {} for direct."""
        proc = self.proc_of.get(name)
        idle = held = {}
        if proc:
            time.sleep(0.2)
            idle = self.proc_stats(proc)
        file_path = os.path.join(self.fresh_dir(f"delay-{name}"), "out")
        client = procs.spawn([self.programs["load"], "delay", tunnels, "--port",
                              self.port_of[name], "--time", seconds, "--subtract-us", subtract,
                              "--open-time", 30], file_path)
        procs.wait_for_line(file_path, lambda t: first_line(t, "open") or None, 35, client)
        time.sleep(seconds / 2)  # every tunnel pinging
        if idle:
            held = self.proc_stats(proc)
        deadline = time.monotonic() + seconds + 10
        while client.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        procs.stop(client)
        with open(file_path, errors="replace") as f:
            return f.read(), idle, held
