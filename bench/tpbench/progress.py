"""The progress line on stderr: phase, target, repetition, elapsed and estimated time left."""
import sys
import time


def _clock(seconds):
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """PLAN lists (phase, estimated seconds) for the whole run. Each phase calls phase() with
    its number of steps, then step() before each; time left is the current phase's steps left
    at its pace so far, plus the later phases' estimates scaled by how the finished ones
    compared with theirs. On a terminal one line is redrawn; otherwise a line is printed at
    most every 15 s."""

    def __init__(self, plan=(), quiet=False, stream=sys.stderr):
        self.plan = list(plan)
        self.quiet = quiet
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self.index = -1
        self.phase_name = ""
        self.phase_start = self.t0
        self.steps = self.done = 0
        self.estimated_done = self.actual_done = 0.0
        self.text = ""
        self.last_print = 0.0

    def phase(self, name, steps):
        now = time.monotonic()
        if 0 <= self.index < len(self.plan):
            self.estimated_done += self.plan[self.index][1]
            self.actual_done += now - self.phase_start
        names = [p for p, _ in self.plan]
        self.index = names.index(name, self.index + 1) if name in names[self.index + 1:] else -1
        self.phase_name, self.phase_start = name, now
        self.steps, self.done = max(1, steps), 0

    def left(self):
        now = time.monotonic()
        scale = self.actual_done / self.estimated_done if self.estimated_done else 1.0
        if self.done:
            current = (now - self.phase_start) / self.done * (self.steps - self.done)
        elif 0 <= self.index < len(self.plan):
            current = max(0.0, self.plan[self.index][1] * scale - (now - self.phase_start))
        else:
            current = 0.0
        later = sum(s for _, s in self.plan[self.index + 1:]) if self.index >= 0 else 0.0
        return current + later * scale

    def step(self, target="", rep=None, reps=None):
        """Called before each sample: TARGET it measures, REP of REPS."""
        if self.quiet:
            return
        repetition = f" rep {rep}/{reps}" if rep is not None else ""
        self.text = (f"{self.phase_name} {target}{repetition}  step {self.done + 1}/{self.steps}"
                     f"  {_clock(time.monotonic() - self.t0)} elapsed, ~{_clock(self.left())} left")
        self.done += 1
        now = time.monotonic()
        if self.tty:
            self.redraw()
        elif now - self.last_print >= 15:
            self.last_print = now
            print(f"[progress] {self.text}", file=self.stream, flush=True)

    def clear(self):
        if self.tty and self.text and not self.quiet:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def redraw(self):
        if self.tty and self.text and not self.quiet:
            self.stream.write(f"\r\033[K{self.text[:150]}")
            self.stream.flush()

    def finish(self):
        self.clear()
        self.text = ""
