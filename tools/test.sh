#!/usr/bin/env bash
# The project's test command: installs what the build needs when it is missing (Debian/Ubuntu),
# then configures, builds and runs every test with `cmake --workflow --preset dev`.
# Usage: tools/test.sh [preset]   (default: dev; any workflow preset in CMakePresets.json)
set -euo pipefail

cd "$(dirname "$0")/.."
preset="${1:-dev}"

# What the tests need, as Debian packages; each is checked first, so a ready machine skips apt.
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if command -v dpkg >/dev/null 2>&1; then
    dpkg -s doctest-dev >/dev/null 2>&1 || missing+=(doctest-dev)
fi

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "tools/test.sh: missing ${missing[*]} and no apt-get to install them" >&2
        exit 1
    fi
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "tools/test.sh: missing ${missing[*]}; run as root or install sudo" >&2
            exit 1
        fi
    fi
    echo "tools/test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Workflow presets need CMake 3.25.
cmake_version="$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')"
if [ "$(printf '%s\n3.25\n' "$cmake_version" | sort -V | head -n1)" != "3.25" ]; then
    echo "tools/test.sh: CMake >= 3.25 is needed, found $cmake_version" >&2
    exit 1
fi

exec cmake --workflow --preset "$preset"
