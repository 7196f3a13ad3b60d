#!/usr/bin/env bash
# The project's test command: installs what the build and the tests need when it is missing
# (Debian/Ubuntu: the build tools, doctest, and every peer program the tests talk to), then
# configures, builds and runs every test with `cmake --workflow --preset dev`. A test whose peer
# is missing fails; TINYPROXY_ALLOW_SKIP=1 turns that into Skipped (for a machine without apt).
# Usage: tools/test.sh [preset]   (default: dev; any workflow preset in CMakePresets.json)
set -euo pipefail

cd "$(dirname "$0")/.."
preset="${1:-dev}"

tools/install-deps.sh --tests
if [ "${TINYPROXY_ALLOW_SKIP:-0}" != 1 ]; then
    tools/install-peers.sh
fi

# Workflow presets need CMake 3.25.
cmake_version="$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')"
if [ "$(printf '%s\n3.25\n' "$cmake_version" | sort -V | head -n1)" != "3.25" ]; then
    echo "tools/test.sh: CMake >= 3.25 is needed, found $cmake_version" >&2
    exit 1
fi

exec cmake --workflow --preset "$preset"
