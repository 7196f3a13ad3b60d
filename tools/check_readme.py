#!/usr/bin/env python3
"""Checks that every C++ snippet in README.md is a marked region of an example file (.cpp, .hpp).

An example marks a region with a line `// [readme: NAME]` and ends it with `// [readme: end]`;
the README shows the region (dedented) in a ```cpp block. So every snippet a reader copies is
code that CI compiles and runs. Standard library only; exit 1 naming the snippet that drifted.
"""
import pathlib
import re
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent


def regions():
    found = {}
    examples = ROOT / "examples"
    for path in sorted(list(examples.glob("*.cpp")) + list(examples.glob("*.hpp"))):
        lines = path.read_text().splitlines()
        name, body = None, []
        for line in lines:
            marker = re.match(r"\s*// \[readme: ([\w-]+)\]\s*$", line)
            if marker and marker.group(1) == "end" and name:
                found[name] = (path.name, textwrap.dedent("\n".join(body)).strip("\n"))
                name, body = None, []
            elif marker:
                name, body = marker.group(1), []
            elif name:
                body.append(line)
    return found


def main():
    readme = (ROOT / "README.md").read_text()
    snippets = re.findall(r"```cpp\n(.*?)```", readme, re.S)
    known = {text: (name, file) for name, (file, text) in regions().items()}
    if not snippets:
        print("check_readme: README.md has no ```cpp snippet")
        return 1
    failures = 0
    for snippet in snippets:
        text = snippet.strip("\n")
        if text not in known:
            failures += 1
            first = text.splitlines()[0] if text else "(empty)"
            print("check_readme: README snippet starting %r matches no marked example region"
                  % first)
    if failures == 0:
        print("check_readme: %d README snippet(s) match example regions" % len(snippets))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
