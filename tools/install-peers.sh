#!/usr/bin/env bash
# Installs, with apt, the programs the interoperability tests (tests/test_interop.cpp) talk to:
# curl (SOCKS4/4a/5, HTTP CONNECT and HTTP proxy client), wget (the HTTP forward proxy's second
# client, tests/http), haproxy (PROXY protocol v1/v2 peer) and nginx
# (a second PROXY protocol peer: its http module's `listen ... proxy_protocol`, so no stream
# module is needed), and python3-socks (PySocks: the real SOCKS5 UDP client of tests/socks_udp).
# Each program is checked first, so a machine that has them all runs no apt at
# all; services the packages would start are kept from starting. Used by tools/test.sh, the
# README's test command (and so by .ci/run).
set -euo pipefail

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v wget >/dev/null 2>&1 || missing+=(wget)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -f /usr/lib/python3/dist-packages/socks.py ] || missing+=(python3-socks)

if ((${#missing[@]} == 0)); then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-peers.sh: missing ${missing[*]} and no apt-get to install them" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "install-peers.sh: missing ${missing[*]}; run as root or install sudo" >&2
        exit 1
    fi
fi

# haproxy and nginx would start system services on install (nginx on port 80): the tests start
# their own. Without a policy-rc.d already in place, one that refuses is put there for the
# install and removed afterwards.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
fi

# Quiet: apt's output is shown only when it fails.
echo "install-peers.sh: installing ${missing[*]}"
log="$(mktemp)"
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq &&
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "install-peers.sh: apt-get failed" >&2
    exit 1
fi
rm -f "$log"
