#!/usr/bin/env bash
# The project's test command: installs what the build and the tests need when it is missing
# (Debian/Ubuntu: the build tools, doctest, and every peer program the tests talk to), then
# installs Toxiproxy's Node client from npm (tests/api/node, pinned by its package-lock.json), then
# configures, builds and runs every test with `cmake --workflow --preset dev`. A test whose peer
# is missing fails; TINYPROXY_ALLOW_SKIP=1 turns that into Skipped (for a machine without apt).
# Usage: tools/test.sh [preset]   (default: dev; any workflow preset in CMakePresets.json, e.g.
# release-tests: the suite at -O3)
set -euo pipefail

cd "$(dirname "$0")/.."
preset="${1:-dev}"

tools/install-deps.sh --tests
if [ "${TINYPROXY_ALLOW_SKIP:-0}" != 1 ]; then
    tools/install-peers.sh
fi

# Toxiproxy's Node client, as package-lock.json pins it: installed when node_modules is missing
# or older than the lock file. Its output only when it fails.
node_dir=tests/api/node
if [ ! -d "$node_dir/node_modules" ] ||
    [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules" ]; then
    if command -v npm >/dev/null 2>&1; then
        if ! npm_log="$(cd "$node_dir" && npm ci --no-audit --no-fund 2>&1)"; then
            printf '%s\n' "$npm_log" >&2
            echo "tools/test.sh: npm ci in $node_dir failed" >&2
            exit 1
        fi
    elif [ "${TINYPROXY_ALLOW_SKIP:-0}" != 1 ]; then
        echo "tools/test.sh: npm is missing (tools/install-deps.sh --tests installs it)" >&2
        exit 1
    fi
fi

# Workflow presets need CMake 3.25.
cmake_version="$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')"
if [ "$(printf '%s\n3.25\n' "$cmake_version" | sort -V | head -n1)" != "3.25" ]; then
    echo "tools/test.sh: CMake >= 3.25 is needed, found $cmake_version" >&2
    exit 1
fi

exec cmake --workflow --preset "$preset"
