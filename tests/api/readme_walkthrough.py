#!/usr/bin/env python3
"""Runs the README's Toxiproxy walk-through (the ```sh block of "A Toxiproxy-compatible server")
against the real CLI and checks that every command prints the answer its `# -> ` line shows.

    python3 tests/api/readme_walkthrough.py --cli build/dev/examples/tinyproxy [--readme README.md]

The block's fixed ports (8474 for the API, 26379 for the proxy, 6379 for its upstream) are swapped
for free ones, here and in the answers, and an echo server stands in for the upstream. The
block's claim that answers come a second late on connections already open is checked too, on a
connection opened before the toxic. Exit 0 when every answer matches, 1 otherwise, 77 (skipped)
when curl is missing and TINYPROXY_ALLOW_SKIP=1.
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

SECTION = "### A Toxiproxy-compatible server"
PORTS = {"8474": "api", "26379": "proxy", "6379": "upstream"}
ANSWER = "# -> "


def walkthrough(readme_path):
    """The sh block of the section: a list of (command, expected answer lines, note lines)."""
    text = open(readme_path, encoding="utf-8").read()
    start = text.index(SECTION)
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S).group(1)
    steps = []
    pending = ""
    for line in block.splitlines():
        if line.startswith(ANSWER):
            steps[-1][1].append(line[len(ANSWER):])
        elif line.startswith("#"):
            steps[-1][2].append(line)
        elif line.endswith("\\"):
            pending += line[:-1] + " "
        else:
            steps.append((pending + line, [], []))
            pending = ""
    return steps


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def substitute(text, ports):
    """`text` with each fixed port (after a colon, whole) replaced by its free one."""
    return re.sub(r"(?<=:)(\d+)\b",
                  lambda m: ports[PORTS[m.group(1)]] if m.group(1) in PORTS else m.group(1), text)


class EchoUpstream:
    """An echo server for the walk-through's upstream, on its own thread, until close()."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = str(self.listener.getsockname()[1])
        self.done = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.done:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self):
        self.done = True
        self.listener.close()


def echo_seconds(conn, payload=b"ping"):
    """Seconds one echo of `payload` takes on an open connection."""
    began = time.monotonic()
    conn.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = conn.recv(len(payload) - len(got))
        if not chunk:
            raise AssertionError("the proxy closed a connection it should have kept")
        got += chunk
    if got != payload:
        raise AssertionError(f"echo came back as {got!r}")
    return time.monotonic() - began


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cli", required=True)
    parser.add_argument("--readme",
                        default=os.path.join(os.path.dirname(__file__), "..", "..", "README.md"))
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("readme_walkthrough: curl is missing", file=sys.stderr)
        return 77 if os.environ.get("TINYPROXY_ALLOW_SKIP") == "1" else 1

    steps = walkthrough(args.readme)
    upstream = EchoUpstream()
    ports = {"api": free_port(), "proxy": free_port(), "upstream": upstream.port}
    first, first_answer, _ = steps[0]
    if not first.startswith("tinyproxy ") or not first.endswith("&"):
        print(f"readme_walkthrough: the block must start the server: {first}", file=sys.stderr)
        return 1
    server = subprocess.Popen([args.cli] + substitute(first, ports).split()[1:-1],
                              stdout=subprocess.PIPE, text=True)
    failures = 0
    early = None  # a connection opened before any toxic
    try:
        line = server.stdout.readline().rstrip("\n")
        if [line] != [substitute(a, ports) for a in first_answer]:
            print(f"FAIL server: printed {line!r}", file=sys.stderr)
            return 1
        for command, answer, notes in steps[1:]:
            command = substitute(command, ports)
            expected = "\n".join(substitute(a, ports) for a in answer)
            got = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                 timeout=30).stdout.rstrip("\n")
            if got != expected:
                failures += 1
                print(f"FAIL {command}\n  expected: {expected}\n  got:      {got}",
                      file=sys.stderr)
            else:
                print(f"ok   {command}")
            if early is None and '"name":"redis"' in expected:
                early = socket.create_connection(("127.0.0.1", int(ports["proxy"])), timeout=10)
                if echo_seconds(early) > 0.9:
                    failures += 1
                    print("FAIL an echo was slow before any toxic", file=sys.stderr)
            if any("a second late" in note for note in notes):
                late = socket.create_connection(("127.0.0.1", int(ports["proxy"])), timeout=10)
                for name, conn in (("open before the toxic", early), ("opened after it", late)):
                    took = echo_seconds(conn)
                    ok = 0.95 <= took < 10
                    failures += not ok
                    print(f"{'ok  ' if ok else 'FAIL'} an echo on a connection {name} took "
                          f"{took:.3f} s", file=sys.stdout if ok else sys.stderr)
                late.close()
    finally:
        if early is not None:
            early.close()
        server.terminate()
        server.wait(timeout=10)
        upstream.close()
    print(f"readme_walkthrough: {len(steps)} steps, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
