#!/usr/bin/env python3
"""Builds single_include/tinyproxy/tinyproxy.hpp from the parts under include/tinyproxy/.

Starting from include/tinyproxy/tinyproxy.hpp, every `#include "tinyproxy/..."` line is replaced
by that file's text, depth-first in the order the lines appear; a file already inlined is not
inlined again, and each part's `#pragma once` is dropped (the output has one, at the top). The
output is deterministic: no timestamp, LF line endings.

It also enforces the layering (see LAYERS below and docs in design.md): a header may include only
headers of earlier layers, never from inside an #if block, and a protocol/*.hpp header stays
sans-I/O. Any violation fails the run, naming the file and line.

Usage:
    python3 tools/amalgamate.py           write single_include/tinyproxy/tinyproxy.hpp
    python3 tools/amalgamate.py --check   exit 1 if the checked-in file is out of date

Python 3 standard library only.
"""

import argparse
import difflib
import re
import sys
from pathlib import Path

# The layers, in order. A header may include headers of an earlier entry; headers matched by the
# same wildcard entry (protocol/*, policy/*, mode/*) may also include each other. The order is
# also the order of the parts in the generated file (depth-first from the umbrella).
LAYERS = [
    "config.hpp",
    "bytes.hpp",
    "error.hpp",
    "json.hpp",  # a JSON value, reader and writer: sans-I/O, for a control API
    "address.hpp",
    "detail/sys.hpp",
    "socket.hpp",
    "poller.hpp",
    "protocol/*.hpp",
    "mode/mode.hpp",  # the Mode concept, before the session that drives it (mode/* come later)
    "stage.hpp",
    "fault/random.hpp",  # the faults: a seeded generator, the toxic model, one stage a file,
    "fault/toxic.hpp",
    "fault/*.hpp",
    "faults.hpp",        # and the live set of toxics that gives each tunnel its fault stages
    "relay.hpp",
    "server.hpp",
    "session/handshake.hpp",
    "session/connector.hpp",
    "session/tunnel.hpp",
    "session/udp_association.hpp",
    "session/bind_wait.hpp",
    "session.hpp",
    "session/blocking.hpp",
    "policy/detail/resolver.hpp",
    "policy/detail/slots.hpp",
    "policy/detail/timers.hpp",
    "policy/detail/event_loop.hpp",
    "policy/*.hpp",
    "mode/*.hpp",
    "proxy.hpp",
    "api/http.hpp",            # the control API: HTTP/1.1, sans-I/O, and a small server for it,
    "api/http_server.hpp",
    "api/prometheus.hpp",      # the metrics' text format,
    "api/toxiproxy_json.hpp",  # Toxiproxy's JSON both ways,
    "api/proxies.hpp",         # the named proxies it manages,
    "api/toxiproxy.hpp",       # and its routes
    "tinyproxy.hpp",
]

UMBRELLA = "tinyproxy.hpp"

# Protocol parsers are sans-I/O: of ours they include only these (and other protocol/*.hpp) ...
PROTOCOL_ALLOWED = {"config.hpp", "bytes.hpp", "error.hpp", "address.hpp"}
# ... and none of these system headers.
PROTOCOL_FORBIDDEN_SYSTEM = {
    "sys/socket.h", "unistd.h", "fcntl.h", "poll.h", "sys/epoll.h", "sys/select.h",
    "sys/event.h", "netdb.h",
}

OUTPUT = Path("single_include") / "tinyproxy" / "tinyproxy.hpp"

OUR_INCLUDE = re.compile(r'^\s*#\s*include\s*"tinyproxy/([^"]+)"')
OUR_ANGLE_INCLUDE = re.compile(r"^\s*#\s*include\s*<tinyproxy/([^>]+)>")
ANY_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')
PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\s*$")
# Every part's first line, so that a part copied alone still says its licence; the generated
# file says it once, in its banner.
SPDX = "// SPDX-License-Identifier: MIT"
PP_IF = re.compile(r"^\s*#\s*(if|ifdef|ifndef)\b")
PP_ENDIF = re.compile(r"^\s*#\s*endif\b")
VERSION = re.compile(r'^\s*#\s*define\s+TINYPROXY_VERSION_STRING\s+"([^"]*)"', re.M)


class LayeringError(Exception):
    pass


def layer_of(name):
    """Index of the layer `name` (relative to include/tinyproxy/) belongs to, or None."""
    for index, pattern in enumerate(LAYERS):
        if "*" in pattern:
            folder = pattern.split("*")[0]  # "policy/": matches policy/x.hpp, not policy/a/b.hpp
            rest = name[len(folder):]
            if name.startswith(folder) and rest.endswith(".hpp") and "/" not in rest:
                return index
        elif name == pattern:
            return index
    return None


def read_text(path):
    text = path.read_text(encoding="utf-8")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text


class Amalgamator:
    def __init__(self, root):
        self.root = root
        self.parts = root / "include" / "tinyproxy"
        self.errors = []
        self.done = set()
        self.in_progress = []
        self.out = []

    def where(self, name, lineno):
        return "include/tinyproxy/%s:%d" % (name, lineno)

    def check_all_known(self):
        """Every header under include/tinyproxy/ has a place in LAYERS and keeps the rules."""
        if not self.parts.is_dir():
            raise LayeringError("%s does not exist" % self.parts)
        for path in sorted(self.parts.rglob("*")):
            if path.is_dir():
                continue
            name = path.relative_to(self.parts).as_posix()
            if not name.endswith(".hpp"):
                self.errors.append(
                    "include/tinyproxy/%s: only .hpp files belong under include/" % name)
            elif layer_of(name) is None:
                self.errors.append(
                    "include/tinyproxy/%s: unknown header: add it to the LAYERS table in "
                    "tools/amalgamate.py (and to the layer table in design.md) so its place in "
                    "the include order is known" % name)
            else:
                self.check_lines(name, read_text(path).split("\n")[:-1])

    def check_lines(self, name, lines):
        """The layering rules for one header; returns the list of our includes in order."""
        own_layer = layer_of(name)
        is_protocol = name.startswith("protocol/")
        depth = 0
        includes = []
        for lineno, line in enumerate(lines, start=1):
            if PP_IF.match(line):
                depth += 1
                continue
            if PP_ENDIF.match(line):
                depth = max(depth - 1, 0)
                continue
            angle = OUR_ANGLE_INCLUDE.match(line)
            if angle:
                self.errors.append(
                    '%s: write #include "tinyproxy/%s" (the quoted form is the one the '
                    "amalgamation inlines)" % (self.where(name, lineno), angle.group(1)))
                continue
            ours = OUR_INCLUDE.match(line)
            if ours:
                target = ours.group(1)
                if depth > 0:
                    self.errors.append(
                        '%s: #include "tinyproxy/%s" inside an #if block: our headers are '
                        "included unconditionally" % (self.where(name, lineno), target))
                target_layer = layer_of(target)
                if not (self.parts / target).is_file():
                    self.errors.append('%s: #include "tinyproxy/%s": no such header'
                                       % (self.where(name, lineno), target))
                elif target_layer is None:
                    pass  # reported by check_all_known
                elif target == name:
                    self.errors.append("%s: %s includes itself" % (self.where(name, lineno), name))
                elif target_layer > own_layer or (
                        target_layer == own_layer and "*" not in LAYERS[own_layer]):
                    self.errors.append(
                        "%s: upward include: %s (layer %s) may not include %s (layer %s); a "
                        "header includes only headers of earlier layers"
                        % (self.where(name, lineno), name, LAYERS[own_layer], target,
                           LAYERS[target_layer]))
                if is_protocol and target not in PROTOCOL_ALLOWED \
                        and not target.startswith("protocol/"):
                    self.errors.append(
                        "%s: protocol headers are sans-I/O and include only %s (and other "
                        "protocol/ headers), not tinyproxy/%s"
                        % (self.where(name, lineno), ", ".join(sorted(PROTOCOL_ALLOWED)), target))
                includes.append((lineno, target))
                continue
            other = ANY_INCLUDE.match(line)
            if other and is_protocol and other.group(1) in PROTOCOL_FORBIDDEN_SYSTEM:
                self.errors.append(
                    "%s: protocol headers are sans-I/O: no <%s>"
                    % (self.where(name, lineno), other.group(1)))
        return includes

    def inline(self, name, included_from=None):
        if name in self.done:
            return
        if name in self.in_progress:
            cycle = " -> ".join(self.in_progress + [name])
            self.errors.append("include cycle: %s" % cycle)
            return
        path = self.parts / name
        if not path.is_file():
            return  # reported where it is included
        lines = read_text(path).split("\n")[:-1]
        self.in_progress.append(name)
        self.out.append("// ---- begin tinyproxy/%s ----\n" % name)
        if not lines or lines[0] != SPDX:
            self.errors.append("include/tinyproxy/%s:1: the first line must be `%s`"
                               % (name, SPDX))
        for line in lines:
            if PRAGMA_ONCE.match(line) or line == SPDX:
                continue
            ours = OUR_INCLUDE.match(line)
            if ours and layer_of(ours.group(1)) is not None \
                    and (self.parts / ours.group(1)).is_file():
                target = ours.group(1)
                self.out.append('// #include "tinyproxy/%s"\n' % target)
                self.inline(target, name)
                continue
            self.out.append(line + "\n")
        self.out.append("// ---- end tinyproxy/%s ----\n" % name)
        self.in_progress.pop()
        self.done.add(name)

    def run(self):
        self.check_all_known()
        umbrella = self.parts / UMBRELLA
        if not umbrella.is_file():
            raise LayeringError("include/tinyproxy/%s does not exist" % UMBRELLA)
        version = VERSION.search(read_text(self.parts / "config.hpp")) \
            if (self.parts / "config.hpp").is_file() else None
        self.out.append(
            SPDX + "\n"
            "// tinyproxy.hpp%s: header-only C++17 TCP proxy library, as one file.\n"
            "// Copyright (c) 2026 the tinyproxy.hpp authors; MIT licence, see LICENSE.\n"
            "//\n"
            "// GENERATED FILE, DO NOT EDIT. Generated from include/tinyproxy/ by "
            "tools/amalgamate.py:\n"
            "// edit the parts under include/tinyproxy/, then run `python3 tools/amalgamate.py`."
            "\n" % (" " + version.group(1) if version else ""))
        self.out.append("#pragma once\n")
        self.out.append("\n")
        self.inline(UMBRELLA)

        # Every part must be reachable from the umbrella, or the single header lacks it.
        for path in sorted(self.parts.rglob("*.hpp")):
            name = path.relative_to(self.parts).as_posix()
            if name not in self.done and layer_of(name) is not None:
                self.errors.append(
                    "include/tinyproxy/%s: not reachable from tinyproxy.hpp: add "
                    '#include "tinyproxy/%s" to include/tinyproxy/tinyproxy.hpp' % (name, name))
        if self.errors:
            raise LayeringError("\n".join(self.errors))
        return "".join(self.out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the checked-in file differs")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository root (default: the parent of tools/)")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    try:
        text = Amalgamator(root).run()
    except LayeringError as error:
        print("amalgamate.py: layering check failed:\n%s" % error, file=sys.stderr)
        return 1

    output = root / OUTPUT
    if args.check:
        if not output.is_file():
            print("amalgamate.py: %s does not exist: run `python3 tools/amalgamate.py` and "
                  "commit it" % OUTPUT.as_posix(), file=sys.stderr)
            return 1
        current = output.read_bytes().decode("utf-8")
        if current == text:
            print("amalgamate.py: %s is up to date" % OUTPUT.as_posix())
            return 0
        diff = list(difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile="%s (checked in)" % OUTPUT.as_posix(),
            tofile="%s (generated from include/)" % OUTPUT.as_posix()))
        changed = sum(1 for line in diff
                      if line[:1] in "+-" and not line.startswith(("+++", "---")))
        limit = 60
        sys.stderr.write("".join(diff[:limit]))
        if len(diff) > limit:
            sys.stderr.write("... (%d more diff lines)\n" % (len(diff) - limit))
        print("amalgamate.py: %s is out of date (%d line(s) differ): run "
              "`python3 tools/amalgamate.py` and commit the result"
              % (OUTPUT.as_posix(), changed), file=sys.stderr)
        return 1

    output.parent.mkdir(parents=True, exist_ok=True)
    old = output.read_bytes() if output.is_file() else None
    data = text.encode("utf-8")
    if old != data:
        output.write_bytes(data)
        print("amalgamate.py: wrote %s" % OUTPUT.as_posix())
    else:
        print("amalgamate.py: %s unchanged" % OUTPUT.as_posix())
    return 0


if __name__ == "__main__":
    sys.exit(main())
