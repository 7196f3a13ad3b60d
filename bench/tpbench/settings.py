"""Each mode's settings: repetitions, run lengths, counts, and the environment's knobs."""
import os
import resource


class Settings:
    def __init__(self, quick, levers=False, full_holds=True):
        self.quick = quick
        self.mode = "quick" if quick else "full"
        self.rate_threads = 8
        self.bulk_streams = (1, 4)
        if quick:
            self.reps, self.bulk_time, self.rate_time = 1, 2, 2
            self.rr_count, self.rr_mixed_count = 5000, 2000
            self.hold_counts, self.open_time = [1000], 30
        else:
            self.reps, self.bulk_time, self.rate_time = 3, 5, 5
            self.rr_count, self.rr_mixed_count = 20000, 5000
            self.hold_counts, self.open_time = [1000, 9000], 60
        self.fd_limit = raise_fd_limit()
        if (not quick and full_holds) or levers:
            # 9,000 through a proxy needs 2 descriptors each in the proxy, plus slack;
            # thousands of connections are where poll(2) and epoll part ways (--levers).
            big = 9000
            if self.fd_limit != "unlimited" and int(self.fd_limit) < 2 * big + 200:
                big = (int(self.fd_limit) - 200) // 2
            self.hold_counts = [1000, big]
        self.faults()
        self.api()

    def faults(self):
        """--faults: each phase briefly with --quick; the stage on poll only."""
        self.delay_n = 1000
        self.bw_rates = [10, 1000, 100000]  # KB/s, 1 KB = 1000 B (Toxiproxy's unit)
        if self.quick:
            self.delay_time, self.latbulk_rounds, self.latbulk_time = 3, 1, 2
            self.bw_reps, self.bw_times = 1, [3, 2, 2]
            self.stage_rounds, self.stage_time, self.stage_policies = 2, 1, ["poll"]
        else:
            self.delay_time, self.latbulk_rounds, self.latbulk_time = 15, 3, 5
            self.bw_reps, self.bw_times = 2, [6, 4, 4]
            self.stage_rounds = int(os.environ.get("FAULT_ROUNDS", "4"))
            self.stage_time, self.stage_policies = 3, ["poll", "thread"]

    def api(self):
        """--api: a proxy made through the API against --forward."""
        env = os.environ.get
        if self.quick:
            self.api_rounds = int(env("API_ROUNDS", "2"))
            self.api_time, self.api_rr_count, self.api_streams = 2, 5000, [1]
            self.api_delay_rounds, self.api_delay_time, self.api_idle_pairs = 1, 3, 50
            self.api_pairs = int(env("API_PAIRS", "100"))
        else:
            self.api_rounds = int(env("API_ROUNDS", "6"))
            self.api_time, self.api_rr_count, self.api_streams = 3, 10000, [1, 4]
            self.api_delay_rounds, self.api_delay_time, self.api_idle_pairs = 2, 6, 200
            self.api_pairs = int(env("API_PAIRS", "200"))
        # Each tunnel pings every api_interval_ms: lower it for a heavier load beside the calls.
        self.api_tunnels, self.api_interval_ms = 1000, int(env("API_INTERVAL_MS", "200"))
        self.api_hold_ms = self.api_gap_ms = 20


def raise_fd_limit():
    """Many held connections need descriptors: the soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    except (ValueError, OSError):
        pass
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
