#!/usr/bin/env bash
# The README's build command: installs cmake and a compiler when missing, then builds the
# examples in Release into build/ (build/examples/tinyproxy is the command-line proxy).
set -euo pipefail

cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTINYPROXY_BUILD_TESTS=OFF >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
echo "built build/examples/tinyproxy"
