"""System-wide CPU time from /proc/stat: all CPUs' busy time during a sample, less what the
machine spends busy when the bench runs nothing (the idle baseline)."""
import os
import time

_TICK = os.sysconf("SC_CLK_TCK")


def read():
    """(busy seconds of all CPUs since boot, monotonic time) now."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / _TICK, time.monotonic()


class Baseline:
    """The idle machine's busy CPU seconds per second, measured once by measure()."""

    def __init__(self):
        self.per_second = 0.0

    def measure(self, seconds=1.0):
        start = read()
        time.sleep(seconds)
        end = read()
        self.per_second = max(0.0, (end[0] - start[0]) / (end[1] - start[1]))
        return self.per_second

    def used_since(self, start):
        """Busy CPU seconds since START (a read()), less the idle baseline over that time."""
        end = read()
        return max(0.0, end[0] - start[0] - self.per_second * (end[1] - start[1]))
