#!/usr/bin/env bash
# Installs, with apt, what building tinyproxy needs (cmake, g++, make) and, with --tests, what
# its tests need as well (doctest-dev, python3, and nodejs and npm for the test that drives the
# API with Toxiproxy's Node client, tests/api/node). Each package is checked first, so a machine
# that has everything runs no apt at all. Used by tools/build.sh and tools/test.sh.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ "${1:-}" = "--tests" ]; then
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    # Without apt, TINYPROXY_ALLOW_SKIP=1 goes on without them: the Node client's test skips.
    if [ "${TINYPROXY_ALLOW_SKIP:-0}" != 1 ] || command -v apt-get >/dev/null 2>&1; then
        command -v node >/dev/null 2>&1 || missing+=(nodejs)
        command -v npm >/dev/null 2>&1 || missing+=(npm)
    fi
    if command -v dpkg >/dev/null 2>&1; then
        dpkg -s doctest-dev >/dev/null 2>&1 || missing+=(doctest-dev)
    fi
fi

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps.sh: missing ${missing[*]} and no apt-get to install them" >&2
        exit 1
    fi
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "install-deps.sh: missing ${missing[*]}; run as root or install sudo" >&2
            exit 1
        fi
    fi
    echo "install-deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
