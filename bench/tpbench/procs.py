"""Processes the bench starts: each in its own process group, all ended on exit (stdlib only)."""
import os
import signal
import subprocess
import time

_started = []  # every Popen the bench made, so that stop_everything() finds them


def tree_pids(root):
    """ROOT and all its descendants (from /proc; no tools needed), root first."""
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                line = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        rest = line[line.rfind(")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(entry))
    queue, i = [root], 0
    while i < len(queue):
        queue.extend(kids.get(queue[i], []))
        i += 1
    return queue


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line
    except OSError:
        return False
    return False


def _signal_all(pids, pgid, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    if pgid:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass


def stop(proc, grace=3.0):
    """Ends PROC (a Popen) and its descendants: SIGTERM, up to GRACE seconds, then SIGKILL."""
    if proc is None:
        return
    if proc.poll() is None:
        pids = tree_pids(proc.pid)
        _signal_all(pids, proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (proc.poll() is None or any(map(_alive, pids))):
            time.sleep(0.05)
        _signal_all(tree_pids(proc.pid) + pids, proc.pid, signal.SIGKILL)
    else:
        # The leader is gone; its group may not be (socat's forked children).
        _signal_all([], proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if proc in _started:
        _started.remove(proc)


def spawn(argv, stdout=None, stderr=None, cwd=None, env=None):
    """Starts ARGV in a process group of its own (stdout/stderr: paths, or None to discard)."""
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL
    err = open(stderr, "wb") if stderr else (out if stdout else subprocess.DEVNULL)
    try:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                start_new_session=True)
    finally:
        for f in {out, err}:
            if f is not subprocess.DEVNULL:
                f.close()
    _started.append(proc)
    return proc


def run(argv, timeout, prefix=(), stderr_path=None):
    """Runs ARGV to its end (at most TIMEOUT seconds), its output as text; "" if it timed out
    or could not start. PREFIX goes before it (taskset -c 0)."""
    err = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([str(a) for a in (*prefix, *argv)], stdout=subprocess.PIPE,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return ""
    finally:
        if err is not subprocess.DEVNULL:
            err.close()
    _started.append(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        return ""
    finally:
        stop(proc, grace=0.5)


def stop_everything():
    """Ends every process the bench started and has not stopped yet, and their descendants."""
    for proc in list(_started):
        if proc.poll() is None:
            _signal_all(tree_pids(proc.pid), proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline and any(p.poll() is None for p in _started):
        time.sleep(0.05)
    for proc in list(_started):
        stop(proc, grace=0)


def pin_tree(pid, cpus):
    """Pins every thread of every process in PID's tree to CPUS (taskset)."""
    for p in tree_pids(pid):
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpus), str(p)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_line(path, parse, seconds, proc=None):
    """Polls the file at PATH until PARSE(text) gives a value (returned), PROC ends, or
    SECONDS pass (None)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(path, errors="replace") as f:
                value = parse(f.read())
            if value is not None:
                return value
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
