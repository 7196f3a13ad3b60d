#!/usr/bin/env bash
# bench/run.sh [--quick]: tinyproxy against direct TCP and the proxies people deploy (haproxy,
# nginx stream, rinetd, socat, microsocks), side by side in one run on loopback. Installs the
# peers with apt when missing, builds tinyproxy in Release and bench/load.cpp, measures bulk
# throughput (iperf3 and bench/load bulk), CPU per GB, connection rate, request/response latency
# (also pinned to one CPU; and, in a full run, beside 4 bulk streams through the same proxy) and
# memory per held connection, alternating targets run by run, then
# prints a markdown table of medians and writes bench/results/<date>-<HHMM>-<quick|full>.json.
# --levers measures what each lever bought instead: the same forwarder built for poll(2) and
# copies only, then epoll, then splice, then two loops, next to haproxy and nginx
# (bench/results/<date>-<HHMM>-<mode>-levers.json). --syscalls prints the system calls tinyproxy
# (forward and SOCKS5), haproxy and nginx make per connection and per round trip (perf), and
# nothing else; TINYPROXY=path counts another build of the CLI. BASELINE=path bench/run.sh --ab
# alternates this build's CLI with another build's (BASELINE) on connection rate and CPU per
# connection (forward and SOCKS5), pinned request/response latency, and on iperf3 bulk (1 and 4 streams), AB_ROUNDS (6) rounds of
# 3 s each, A B then B A, and prints the medians. --mixed
# [--quick] runs only the RR-beside-bulk phase, every target, and prints its medians. --floor
# [--quick] measures bulk, connection rate and latency (also pinned) through bench/floor.cpp,
# the fewest system calls a forwarder (or SOCKS5 proxy) can make, next to tinyproxy, haproxy,
# nginx and microsocks, and prints
# the medians (every sample to bench/results/<date>-<HHMM>-floor.tsv): how far any proxy on
# the socket API could go on this machine. --faults [--quick] measures the relay stages and
# Toxiproxy's faults (issue 13), each phase bounded, comparisons alternated: the delay a
# --toxic latency,latency=100 adds at 1,000 concurrent tunnels pinging every 200 ms (poll policy;
# p50/p99 over the 100 ms, against direct and the fault-free proxy) and the memory per tunnel;
# one bulk stream through a 100 ms latency fault (MB/s); bandwidth faults of 10 KB/s, 1 MB/s and
# 100 MB/s (achieved/target); and bench/stage_proxy.cpp with a pass-through user stage against
# none (iperf3 1 and 4 streams, conn/s; poll and thread), FAULT_ROUNDS (4) rounds, A B then B A;
# prints the tables and writes bench/results/<date>-<HHMM>-faults.json: about 5 minutes. With
# --quick, each phase briefly and the stage on poll only, to -faults-quick.json: under a minute.
# --api [--quick] measures the Toxiproxy-compatible API (issue 14): a proxy made through
# `tinyproxy --api` (POST /proxies, no toxic) against `tinyproxy --forward`, both poll, on
# connection rate, pinned request/response latency and iperf3 bulk, API_ROUNDS (6; 2 quick)
# rounds, A B then B A, and on 1,000 tunnels pinging (round trips, memory per tunnel); then
# the time of each HTTP call that adds a toxic to that proxy and removes it
# (bench/api_latency.py, API_PAIRS pairs), idle and beside 1,000 tunnels through it pinging
# every 200 ms, and whether any tunnel broke; prints the tables and writes
# bench/results/<date>-<HHMM>-api[-quick].json: about 3 minutes, under 1 with --quick.
# --http [--quick] runs bench/http_proxy.py: tinyproxy --http (poll, thread) against the
# tinyproxy C daemon and squid in front of an nginx origin, with ab: requests/s with keep-alive
# and without, p50/p99 latency, KB per idle client (bench/results/<date>-<HHMM>-http[-quick].json).
# Method and meaning of each number: bench/README.md. Every process it starts is ended on exit.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
MODE=full
LEVERS=0
SYSCALLS=0
AB=0
MIXED=0
FLOOR=0
FAULTS=0
API=0
HTTP=0
for arg in "$@"; do
    case "$arg" in
    --quick) MODE=quick ;;
    --levers) LEVERS=1 ;;
    --syscalls) SYSCALLS=1 ;;
    --ab) AB=1 ;;
    --mixed) MIXED=1 ;;
    --floor) FLOOR=1 ;;
    --faults) FAULTS=1 ;;
    --api) API=1 ;;
    --http) HTTP=1 ;;
    -h | --help)
        sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "run.sh: unknown argument '$arg' (only --quick, --levers, --syscalls, --ab, --mixed, --floor, --faults, --api and --http)" >&2
        exit 2
        ;;
    esac
done
# --http is bench/http_proxy.py's: it installs, builds, starts and ends its peers itself.
((HTTP)) && exec python3 bench/http_proxy.py $([ "$MODE" = quick ] && echo --quick)
COMMAND="bench/run.sh${*:+ $*}"
T0=$(date +%s)

if [ "$MODE" = quick ]; then
    REPS=1 BULK_TIME=2 RATE_TIME=2 RR_COUNT=5000 RR_MIXED_COUNT=2000 HOLD_COUNTS=(1000) OPEN_TIME=30
else
    REPS=3 BULK_TIME=5 RATE_TIME=5 RR_COUNT=20000 RR_MIXED_COUNT=5000 HOLD_COUNTS=(1000 9000) OPEN_TIME=60
fi
RATE_THREADS=8

log() { printf '[%4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

# ---------------------------------------------------------------- processes and cleanup
WORK=$(mktemp -d /tmp/tinyproxy-bench.XXXXXX)
RAW=$WORK/raw.tsv
: >"$RAW"
declare -A PORT_OF=() PID_OF=() MISSING=() API_OF=()

# PID and all its descendants, one per line (from /proc; no tools needed).
tree_pids() {
    local root=$1 line pid rest ppid
    local -A kids=()
    for stat in /proc/[0-9]*/stat; do
        { read -r line <"$stat"; } 2>/dev/null || continue
        pid=${line%% *}
        rest=${line##*) }
        ppid=${rest#* }
        ppid=${ppid%% *}
        kids[$ppid]+=" $pid"
    done
    local queue=("$root") i=0
    while ((i < ${#queue[@]})); do
        echo "${queue[i]}"
        # shellcheck disable=SC2206
        queue+=(${kids[${queue[i]}]:-})
        i=$((i + 1))
    done
}

# Ends a process and its descendants: SIGTERM, up to 3 s, then SIGKILL.
stop_tree() {
    local root=$1 pids p n
    [ -d "/proc/$root" ] || return 0
    mapfile -t pids < <(tree_pids "$root")
    kill -TERM "${pids[@]}" 2>/dev/null
    for ((n = 0; n < 60; n++)); do
        local alive=0
        for p in "${pids[@]}"; do
            if [ -d "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then
                alive=1
                break
            fi
        done
        ((alive)) || break
        sleep 0.05
    done
    kill -KILL "${pids[@]}" 2>/dev/null
    wait "$root" 2>/dev/null
    return 0
}

cleanup() {
    trap - EXIT INT TERM
    local pids p
    mapfile -t pids < <(tree_pids $$)
    for p in "${pids[@]}"; do
        [ "$p" = $$ ] || [ "$p" = "$BASHPID" ] || kill -TERM "$p" 2>/dev/null
    done
    sleep 0.3
    mapfile -t pids < <(tree_pids $$)
    for p in "${pids[@]}"; do
        [ "$p" = $$ ] || [ "$p" = "$BASHPID" ] || kill -KILL "$p" 2>/dev/null
    done
    wait 2>/dev/null
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "run.sh: logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- install and build
install_missing() {
    local want=()
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || want+=(haproxy)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || want+=(nginx-light)
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || want+=(libnginx-mod-stream)
    command -v socat >/dev/null 2>&1 || want+=(socat)
    command -v rinetd >/dev/null 2>&1 || [ -x /usr/sbin/rinetd ] || want+=(rinetd)
    command -v microsocks >/dev/null 2>&1 || want+=(microsocks)
    command -v iperf3 >/dev/null 2>&1 || want+=(iperf3)
    command -v python3 >/dev/null 2>&1 || want+=(python3)
    command -v curl >/dev/null 2>&1 || want+=(curl)
    command -v cmake >/dev/null 2>&1 || want+=(cmake)
    command -v g++ >/dev/null 2>&1 || want+=(g++)
    command -v make >/dev/null 2>&1 || want+=(make)
    command -v taskset >/dev/null 2>&1 || want+=(util-linux)
    ((${#want[@]})) || return 0
    if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
        log "cannot install ${want[*]} (needs root and apt-get); missing peers are reported"
        return 0
    fi
    log "installing ${want[*]}"
    # The peers' packages would start system services: refuse that for the install, unless a
    # policy is already in place (then it is left as it is).
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    # Installed one by one, so a package that cannot be had leaves the others installed.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$WORK/apt.log" 2>&1
    for pkg in "${want[@]}"; do
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" \
            >>"$WORK/apt.log" 2>&1 || log "apt-get install $pkg failed"
    done
    ((made_policy)) && rm -f "$policy"
    return 0
}
install_missing
for tool in cmake g++ python3 taskset; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "run.sh: $tool is required" >&2
        exit 1
    }
done
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
RINETD=$(command -v rinetd || echo /usr/sbin/rinetd)
NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so

BUILD=$ROOT/build/bench
log "building tinyproxy (Release) and bench/load.cpp in $BUILD"
# Configured once; `cmake --build` re-runs the configure step itself when CMakeLists change.
if ! { { [ -f "$BUILD/CMakeCache.txt" ] ||
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTINYPROXY_BUILD_TESTS=OFF; } &&
    cmake --build "$BUILD" -j2 --target tinyproxy_cli; } >"$WORK/build.log" 2>&1; then
    cat "$WORK/build.log" >&2
    exit 1
fi
TP=${TINYPROXY:-$BUILD/examples/tinyproxy}
TP_PORTABLE=
if ((LEVERS)); then
    # The portable paths as another platform gets them: poll(2), and copies instead of splice.
    PORTABLE=$ROOT/build/bench-portable
    log "building the portable tinyproxy (TINYPROXY_NO_EPOLL, TINYPROXY_NO_SPLICE) in $PORTABLE"
    if ! { { [ -f "$PORTABLE/CMakeCache.txt" ] ||
        cmake -S . -B "$PORTABLE" -DCMAKE_BUILD_TYPE=Release -DTINYPROXY_BUILD_TESTS=OFF \
            "-DCMAKE_CXX_FLAGS=-DTINYPROXY_NO_EPOLL -DTINYPROXY_NO_SPLICE"; } &&
        cmake --build "$PORTABLE" -j2 --target tinyproxy_cli; } >"$WORK/build-portable.log" 2>&1; then
        cat "$WORK/build-portable.log" >&2
        exit 1
    fi
    TP_PORTABLE=$PORTABLE/examples/tinyproxy
fi
LOAD=$BUILD/load
if [ ! -x "$LOAD" ] || [ bench/load.cpp -nt "$LOAD" ]; then
    g++ -O2 -std=c++17 -pthread -Wall -Wextra -o "$LOAD" bench/load.cpp || exit 1
fi
STAGE_PROXY=$BUILD/stage_proxy
# Release flags, as CMake's Release build of the CLI; rebuilt when it or a header changed.
if ((FAULTS)) && { [ ! -x "$STAGE_PROXY" ] || [ bench/stage_proxy.cpp -nt "$STAGE_PROXY" ] ||
    [ -n "$(find include -newer "$STAGE_PROXY" -print -quit)" ]; }; then
    log "building bench/stage_proxy.cpp"
    g++ -O3 -DNDEBUG -std=c++17 -pthread -Wall -Wextra -Iinclude -o "$STAGE_PROXY" \
        bench/stage_proxy.cpp || exit 1
fi
FLOOR_BIN=$BUILD/floor
if ((FLOOR)) && { [ ! -x "$FLOOR_BIN" ] || [ bench/floor.cpp -nt "$FLOOR_BIN" ]; }; then
    g++ -O2 -std=c++17 -pthread -Wall -Wextra -o "$FLOOR_BIN" bench/floor.cpp || exit 1
fi

# Many held connections need descriptors: the soft limit goes up to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
FD_LIMIT=$(ulimit -n)
if [ "$MODE" = full ]; then
    # 9,000 through a proxy needs 2 descriptors each in the proxy, plus slack.
    big=9000
    [ "$FD_LIMIT" != unlimited ] && ((FD_LIMIT < 2 * big + 200)) && big=$(((FD_LIMIT - 200) / 2))
    HOLD_COUNTS=(1000 "$big")
fi
if ((LEVERS)); then # thousands of connections are where poll(2) and epoll part ways
    big=9000
    [ "$FD_LIMIT" != unlimited ] && ((FD_LIMIT < 2 * big + 200)) && big=$(((FD_LIMIT - 200) / 2))
    HOLD_COUNTS=(1000 "$big")
fi

# ---------------------------------------------------------------- targets
FORWARDERS=(direct haproxy nginx rinetd socat tp-poll tp-thread tp-fork)
SOCKS=(microsocks tp-socks-poll tp-socks-thread)
if ((LEVERS)); then
    FORWARDERS=(direct haproxy nginx tp-portable tp-copy tp-poll tp-loops2)
    SOCKS=()
fi
if ((FLOOR)); then
    FORWARDERS=(direct haproxy nginx tp-poll floor floor-threads floor-splice)
    SOCKS=(microsocks tp-socks-poll floor-socks)
fi

free_port() { "$LOAD" ports 1; }

# The port of the "listening on 127.0.0.1:PORT" line tinyproxy prints to FILE, waiting up to 5 s.
listening_port() {
    local file=$1 n port
    for ((n = 0; n < 100; n++)); do
        port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$file" 2>/dev/null)
        [ -n "$port" ] && echo "$port" && return 0
        sleep 0.05
    done
    return 1
}

# api_create_proxy API UPSTREAM ANSWER: makes proxy "b" (127.0.0.1:0 -> 127.0.0.1:UPSTREAM)
# through the Toxiproxy API at API, keeps the answer in ANSWER and prints the port it listens on.
api_create_proxy() {
    local api=$1 upstream=$2 answer=$3 port
    curl -sS --max-time 5 -X POST "http://$api/proxies" \
        -d "{\"name\":\"b\",\"listen\":\"127.0.0.1:0\",\"upstream\":\"127.0.0.1:$upstream\"}" \
        >"$answer" 2>&1 || return 1
    port=$(sed -n 's/.*"listen":"127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$answer")
    [ -n "$port" ] && "$LOAD" waitport "$port" 5 && echo "$port"
}

# Starts NAME as KEY, forwarding to 127.0.0.1:UPSTREAM (SOCKS targets ignore it); sets
# PORT_OF[KEY] and PID_OF[KEY], or marks NAME missing.
SEQ=0
start_target() {
    local name=$1 key=$2 upstream=$3 port dir
    SEQ=$((SEQ + 1))
    dir=$WORK/$SEQ-$key # fresh for every start: no stale "listening on" line to read
    mkdir -p "$dir"
    case "$name" in
    direct)
        PORT_OF[$key]=$upstream
        PID_OF[$key]=
        return 0
        ;;
    haproxy)
        [ -x "$HAPROXY" ] || { MISSING[$name]="not installed" && return 1; }
        port=$(free_port)
        cat >"$dir/haproxy.cfg" <<EOF
global
    # threads: haproxy's default (one per CPU); maxconn: derived from ulimit -n
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend bench
    bind 127.0.0.1:$port
    default_backend upstream
backend upstream
    server up 127.0.0.1:$upstream
EOF
        "$HAPROXY" -db -f "$dir/haproxy.cfg" >"$dir/out" 2>"$dir/err" &
        ;;
    nginx)
        [ -x "$NGINX" ] || { MISSING[$name]="not installed" && return 1; }
        [ -e "$NGINX_STREAM" ] || { MISSING[$name]="no stream module" && return 1; }
        port=$(free_port)
        cat >"$dir/nginx.conf" <<EOF
load_module $NGINX_STREAM;
daemon off;
worker_processes auto;
worker_rlimit_nofile $FD_LIMIT;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $FD_LIMIT; }
stream {
    server {
        listen 127.0.0.1:$port;
        proxy_pass 127.0.0.1:$upstream;
    }
}
EOF
        "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/out" 2>"$dir/err" &
        ;;
    rinetd)
        [ -x "$RINETD" ] || { MISSING[$name]="not installed" && return 1; }
        port=$(free_port)
        echo "127.0.0.1 $port 127.0.0.1 $upstream" >"$dir/rinetd.conf"
        "$RINETD" -f -c "$dir/rinetd.conf" >"$dir/out" 2>"$dir/err" &
        ;;
    socat)
        command -v socat >/dev/null 2>&1 || { MISSING[$name]="not installed" && return 1; }
        port=$(free_port)
        # backlog=1024: socat's default of 5 would measure SYN drops, not socat.
        socat "TCP4-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork,backlog=1024" \
            "TCP4:127.0.0.1:$upstream" >"$dir/out" 2>"$dir/err" &
        ;;
    microsocks)
        command -v microsocks >/dev/null 2>&1 || { MISSING[$name]="not installed" && return 1; }
        port=$(free_port)
        microsocks -i 127.0.0.1 -p "$port" >"$dir/out" 2>"$dir/err" &
        ;;
    tp-api) # --api: the CLI serving Toxiproxy's API, and proxy "b" made through it
        "$TP" --api 127.0.0.1:0 --policy poll --quiet >"$dir/out" 2>"$dir/err" &
        PID_OF[$key]=$!
        local api_port
        if ! api_port=$(listening_port "$dir/out") ||
            ! port=$(api_create_proxy "127.0.0.1:$api_port" "$upstream" "$dir/proxy.json"); then
            MISSING[$name]="did not start: $(cat "$dir/err" "$dir/proxy.json" 2>/dev/null | head -c 200 | tr '\n' ' ')"
            stop_tree "${PID_OF[$key]}"
            PID_OF[$key]=
            return 1
        fi
        API_OF[$key]=127.0.0.1:$api_port
        PORT_OF[$key]=$port
        return 0
        ;;
    tp-* | tpb-* | floor* | sp-*)
        local policy=${name##*-} how=(--forward "127.0.0.1:$upstream") program=$TP more=()
        [[ $name == tp*-socks-* ]] && how=(--socks)
        [[ $name == tpb-* ]] && program=$BASELINE
        case "$name" in # the lever runs: all poll, one lever at a time
        tp-portable) policy=poll program=$TP_PORTABLE ;;
        tp-copy) policy=poll more=(--no-splice) ;;
        tp-loops2) policy=poll more=(--loops 2) ;;
        floor) policy=poll program=$FLOOR_BIN ;;
        floor-threads) policy=poll program=$FLOOR_BIN more=(--threads) ;;
        floor-socks) policy=poll program=$FLOOR_BIN how=(--socks) ;;
        floor-splice) policy=poll program=$FLOOR_BIN more=(--splice 1048576) ;;
        # --faults: the CLI with a fault on every tunnel, and stage_proxy (sp-STAGE-POLICY)
        tp-lat) policy=poll more=(--toxic "latency,latency=100" --seed 1) ;;
        tp-lat-up) policy=poll more=(--toxic "latency,latency=100,stream=upstream" --seed 1) ;;
        tp-bw-*) policy=poll more=(--toxic "bandwidth,rate=${name#tp-bw-},stream=upstream" --seed 1) ;;
        sp-*)
            program=$STAGE_PROXY
            more=(--stage "$(cut -d- -f2 <<<"$name")")
            ;;
        esac
        "$program" --listen 127.0.0.1:0 "${how[@]}" --policy "$policy" "${more[@]}" --quiet \
            >"$dir/out" 2>"$dir/err" &
        PID_OF[$key]=$!
        if ! port=$(listening_port "$dir/out"); then
            MISSING[$name]="did not start: $(head -c 200 "$dir/err")"
            stop_tree "${PID_OF[$key]}"
            return 1
        fi
        PORT_OF[$key]=$port
        return 0
        ;;
    esac
    PID_OF[$key]=$!
    PORT_OF[$key]=$port
    if ! "$LOAD" waitport "$port" 5 || ! [ -d "/proc/${PID_OF[$key]}" ]; then
        MISSING[$name]="did not start: $(head -c 200 "$dir/err" | tr '\n' ' ')"
        stop_tree "${PID_OF[$key]}"
        PID_OF[$key]=
        return 1
    fi
    [ "$name" = nginx ] && sleep 0.2 # workers
    return 0
}

stop_target() {
    local key=$1
    [ -n "${PID_OF[$key]:-}" ] && stop_tree "${PID_OF[$key]}"
    PID_OF[$key]=
    PORT_OF[$key]=
}

# Upstream servers of bench/load: start_upstream KIND -> UP_PID, UP_PORT.
start_upstream() {
    local kind=$1 n out
    SEQ=$((SEQ + 1))
    out=$WORK/$SEQ-upstream-$kind.out
    "$LOAD" "$kind" 0 --time 1800 >"$out" 2>&1 &
    UP_PID=$!
    UP_PORT=
    for ((n = 0; n < 100; n++)); do
        UP_PORT=$(sed -n 's/^port \([0-9]*\)$/\1/p' "$out" 2>/dev/null)
        [ -n "$UP_PORT" ] && return 0
        sleep 0.05
    done
    echo "run.sh: the $kind upstream did not start" >&2
    exit 1
}

# client arguments for bench/load: where KEY is reached (SOCKS targets ask for UPSTREAM).
client_args() {
    local name=$1 key=$2 upstream=$3
    if [[ " ${SOCKS[*]} " == *" $name "* ]]; then
        echo "--port $upstream --socks5 ${PORT_OF[$key]}"
    else
        echo "--port ${PORT_OF[$key]}"
    fi
}

cpu_of() { # CPU seconds of KEY's process tree (0 for direct)
    local pid=${PID_OF[$1]:-}
    if [ -z "$pid" ]; then
        echo 0
    else
        "$LOAD" proc "$pid" | awk '{print $2}'
    fi
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RAW"; }
up() { [ -n "${PORT_OF[$1]:-}" ]; }

start_all() { # start_all UPSTREAM NAME...
    local upstream=$1 name
    shift
    for name in "$@"; do
        [ -n "${MISSING[$name]:-}" ] && continue
        start_target "$name" "$name" "$upstream" || log "$name: ${MISSING[$name]}"
    done
}
stop_all() {
    local key
    for key in "${!PID_OF[@]}"; do
        stop_target "$key"
    done
}

# ---------------------------------------------------------------- bulk throughput
phase_bulk() {
    log "bulk: iperf3 through each forwarder, bench/load bulk through each SOCKS5 proxy"
    local iperf_port iperf_pid sink_pid sink_port
    if command -v iperf3 >/dev/null 2>&1; then
        iperf_port=$(free_port)
        iperf3 -s -B 127.0.0.1 -p "$iperf_port" >"$WORK/iperf3-server.log" 2>&1 &
        iperf_pid=$!
        "$LOAD" waitport "$iperf_port" 5 || log "iperf3 server did not start"
        start_all "$iperf_port" "${FORWARDERS[@]}"
    else
        log "iperf3 missing: no iperf3 bulk numbers"
    fi
    start_upstream sink
    sink_pid=$UP_PID sink_port=$UP_PORT
    local socks_refs=()
    if ((${#SOCKS[@]})); then
        start_all "$sink_port" "${SOCKS[@]}"
        # References for the SOCKS table, with the same client: direct and our forwarder (poll).
        PORT_OF[direct@sink]=$sink_port
        start_target tp-poll tp-poll@sink "$sink_port" || true
        socks_refs=(direct tp-poll)
    fi

    local rep streams name out before after bytes
    for ((rep = 1; rep <= REPS; rep++)); do
        for streams in 1 4; do
            for name in "${FORWARDERS[@]}"; do
                [ -n "${iperf_pid:-}" ] && up "$name" || continue
                if ! out=$(iperf_sample "$name" "$name" "$streams"); then
                    log "iperf3 through $name (-P $streams) failed"
                    continue
                fi
                log "  rep $rep  -P $streams  $name  $out Gbit/s"
            done
            for name in "${socks_refs[@]}" "${SOCKS[@]}"; do
                local key=$name args
                [[ $name == direct || $name == tp-poll ]] && key=$name@sink
                up "$key" || continue
                args=$(client_args "$name" "$key" "$sink_port")
                before=$(cpu_of "$key")
                # shellcheck disable=SC2086
                out=$(timeout $((BULK_TIME + 20)) "$LOAD" bulk $args --streams "$streams" \
                    --time "$BULK_TIME" 2>/dev/null)
                sleep 0.1
                after=$(cpu_of "$key")
                if [[ $out != bytes* ]]; then
                    log "bench/load bulk through $name ($streams streams) failed"
                    record "$name" "lbulk${streams}_failed" 1
                    continue
                fi
                set -- $out
                record "$name" "lbulk${streams}_gbps" "$6"
                [ "$name" != direct ] && record "$name" "lbulk${streams}_cpu_s_per_gb" \
                    "$(awk -v a="$after" -v b="$before" -v n="$2" 'BEGIN{print (a-b)/(n/1e9)}')"
                log "  rep $rep  $streams streams (load)  $name  $6 Gbit/s"
            done
        done
    done
    stop_all
    unset 'PORT_OF[direct@sink]'
    [ -n "${iperf_pid:-}" ] && stop_tree "$iperf_pid"
    stop_tree "$sink_pid"
}

# iperf_sample NAME KEY STREAMS: one iperf3 run (BULK_TIME seconds) through KEY's port, recorded
# as NAME's: Gbit/s received, and the proxy's CPU seconds per GB. Prints the Gbit/s; fails when
# the run did.
iperf_sample() {
    local name=$1 key=$2 streams=$3 before after out
    before=$(cpu_of "$key")
    # The receiver's sum from iperf3's JSON (awk: python would start slower).
    out=$(timeout $((BULK_TIME + 20)) iperf3 -c 127.0.0.1 -p "${PORT_OF[$key]}" \
        -t "$BULK_TIME" -P "$streams" -J --connect-timeout 3000 2>/dev/null |
        awk '/"sum_received"/ { f = 1 }
            f && /"bytes"/ { b = $2; gsub(/[^0-9.eE+]/, "", b) }
            f && /"bits_per_second"/ { v = $2; gsub(/[^0-9.eE+]/, "", v)
                printf "%.3f %s\n", v / 1e9, b; exit }')
    sleep 0.1
    after=$(cpu_of "$key")
    if [ -z "$out" ]; then
        record "$name" "bulk${streams}_failed" 1
        return 1
    fi
    record "$name" "bulk${streams}_gbps" "${out%% *}"
    [ "$name" != direct ] && record "$name" "bulk${streams}_cpu_s_per_gb" \
        "$(awk -v a="$after" -v b="$before" -v n="${out#* }" 'BEGIN{print (a-b)/(n/1e9)}')"
    echo "${out%% *}"
}

# ---------------------------------------------------------------- connection rate
phase_rate() {
    log "rate: $RATE_THREADS workers, ${RATE_TIME} s per run"
    start_upstream server
    local server_pid=$UP_PID server_port=$UP_PORT rep name out
    start_all "$server_port" "${FORWARDERS[@]}" "${SOCKS[@]}"
    for ((rep = 1; rep <= REPS; rep++)); do
        for name in "${FORWARDERS[@]}" "${SOCKS[@]}"; do
            up "$name" || continue
            if ! out=$(rate_sample "$name" "$server_port" "$RATE_TIME"); then
                log "rate through $name failed"
                continue
            fi
            set -- $out # RATE ERRORS
            log "  rep $rep  $name  $1 conn/s ($2 errors)"
        done
    done
    stop_all
    stop_tree "$server_pid"
}

# rate_sample NAME UPSTREAM SECONDS: one `load rate` run through NAME (8 workers); records its
# conn/s, errors and CPU µs per connection, and prints "RATE ERRORS". Fails when the run did.
rate_sample() {
    local name=$1 upstream=$2 seconds=$3 before after out
    before=$(cpu_of "$name")
    # shellcheck disable=SC2046 # client_args gives several words
    out=$(timeout $((seconds + 20)) "$LOAD" rate $(client_args "$name" "$name" "$upstream") \
        --threads "$RATE_THREADS" --time "$seconds" 2>/dev/null)
    after=$(cpu_of "$name")
    [[ $out == conns* ]] || return 1
    set -- $out # conns N errors E seconds S rate R
    record "$name" rate_cps "$8"
    record "$name" rate_errors "$4"
    [ "$name" != direct ] && (($2 > 0)) && record "$name" rate_cpu_us_per_conn \
        "$(awk -v a="$after" -v b="$before" -v n="$2" 'BEGIN{print (a-b)/n*1e6}')"
    echo "$8 $4"
}

# ---------------------------------------------------------------- request/response latency
pin_tree() { # pin_tree PID CPUS: every thread of every process in the tree
    local p
    for p in $(tree_pids "$1"); do
        taskset -a -p -c "$2" "$p" >/dev/null 2>&1
    done
}

phase_rr() {
    log "rr: one connection, 64 B ping-pong, $RR_COUNT round trips"
    start_upstream echo
    local echo_pid=$UP_PID echo_port=$UP_PORT rep name out pinned variant prefix
    start_all "$echo_port" "${FORWARDERS[@]}" "${SOCKS[@]}"
    for pinned in 0 1; do
        variant=rr prefix=()
        if ((pinned)); then
            variant=rrpin prefix=(taskset -c 0)
            pin_tree "$echo_pid" 0
            for name in "${FORWARDERS[@]}" "${SOCKS[@]}"; do
                [ -n "${PID_OF[$name]:-}" ] && pin_tree "${PID_OF[$name]}" 0
            done
        fi
        for ((rep = 1; rep <= REPS; rep++)); do
            for name in "${FORWARDERS[@]}" "${SOCKS[@]}"; do
                up "$name" || continue
                # shellcheck disable=SC2046
                out=$(timeout 90 "${prefix[@]}" "$LOAD" rr $(client_args "$name" "$name" "$echo_port") \
                    --count "$RR_COUNT" --time 60 2>/dev/null)
                if [[ $out != count* ]]; then
                    log "rr through $name failed"
                    continue
                fi
                set -- $out # count N p50_us A p99_us B max_us C
                record "$name" "${variant}_p50_us" "$4"
                record "$name" "${variant}_p99_us" "$6"
                log "  rep $rep  $variant  $name  p50 $4 us  p99 $6 us"
            done
        done
    done
    stop_all
    stop_tree "$echo_pid"
}

# ---------------------------------------------------------------- RR beside bulk streams
# The rr client's round trips while 4 `load bulk` streams go through the same proxy, to one
# `load mixed` upstream (a sink for the bulk streams, an echo on a thread of its own for the
# pings): what a small exchange pays for sharing a proxy with bulk transfers.
phase_mixed() {
    log "mixed: $RR_MIXED_COUNT round trips beside 4 bulk streams through the same proxy"
    start_upstream mixed
    local mixed_pid=$UP_PID mixed_port=$UP_PORT rep name out bulk_pid args
    start_all "$mixed_port" "${FORWARDERS[@]}" "${SOCKS[@]}"
    for ((rep = 1; rep <= REPS; rep++)); do
        for name in "${FORWARDERS[@]}" "${SOCKS[@]}"; do
            up "$name" || continue
            args=$(client_args "$name" "$name" "$mixed_port")
            # shellcheck disable=SC2086
            timeout 60 "$LOAD" bulk $args --streams 4 --time $((BULK_TIME + 2)) \
                >"$WORK/mixed-bulk.out" 2>/dev/null &
            bulk_pid=$!
            sleep 1 # the streams are up to speed
            # shellcheck disable=SC2086
            out=$(timeout 60 "$LOAD" rr $args --count "$RR_MIXED_COUNT" --time "$BULK_TIME" \
                2>/dev/null)
            wait "$bulk_pid"
            if [[ $out != count* ]]; then
                log "rr beside bulk through $name failed"
                record "$name" mixrr_failed 1
                continue
            fi
            set -- $out # count N p50_us A p99_us B max_us C
            record "$name" mixrr_p50_us "$4"
            record "$name" mixrr_p99_us "$6"
            log "  rep $rep  $name  p50 $4 us  p99 $6 us ($2 round trips) beside $(awk '{print $6}' "$WORK/mixed-bulk.out") Gbit/s"
        done
    done
    stop_all
    stop_tree "$mixed_pid"
}

# ---------------------------------------------------------------- memory
phase_memory() {
    log "memory: idle, then ${HOLD_COUNTS[*]} idle connections held through each proxy"
    start_upstream hold
    local hold_pid=$UP_PID hold_port=$UP_PORT name count idle held out holder n file
    for count in "${HOLD_COUNTS[@]}"; do
        for name in "${FORWARDERS[@]:1}" "${SOCKS[@]}"; do
            [ -n "${MISSING[$name]:-}" ] && continue
            start_target "$name" "$name" "$hold_port" || {
                log "$name: ${MISSING[$name]}"
                continue
            }
            sleep 0.2
            idle=$("$LOAD" proc "${PID_OF[$name]}")
            file=$WORK/hold-$name-$count.out
            # shellcheck disable=SC2046
            "$LOAD" hold "$count" $(client_args "$name" "$name" "$hold_port") --time 300 \
                --open-time "$OPEN_TIME" >"$file" 2>&1 &
            holder=$!
            out=
            for ((n = 0; n < (OPEN_TIME + 15) * 10; n++)); do
                out=$(grep '^held' "$file" 2>/dev/null)
                [ -n "$out" ] && break
                [ -d "/proc/$holder" ] || break
                sleep 0.1
            done
            sleep 0.3 # let forked children and threads settle
            held=$("$LOAD" proc "${PID_OF[$name]}" 2>/dev/null)
            stop_tree "$holder"
            stop_target "$name"
            if [ -z "$out" ] || [ -z "$held" ]; then
                log "memory through $name failed"
                continue
            fi
            set -- $idle # cpu_s X rss_kb Y pss_kb Z procs N
            record "$name" mem_idle_rss_kb "$4"
            record "$name" mem_idle_pss_kb "$6"
            set -- $out # held K failed F seconds S
            local k=$2
            record "$name" "held_$count" "$k"
            record "$name" "open_s_$count" "$6"
            set -- $held
            record "$name" "mem_${count}_rss_kb" "$4"
            record "$name" "mem_${count}_pss_kb" "$6"
            record "$name" "procs_${count}" "$8"
            log "  $name  held $k/$count  rss ${4} KB  pss ${6} KB  ($8 processes)"
        done
    done
    stop_tree "$hold_pid"
}

# ---------------------------------------------------------------- system calls (--syscalls)
# count_syscalls KEY COMMAND...: "CALLS OUTPUT", the system calls target KEY's process tree
# made while COMMAND ran, and COMMAND's output. perf counts the raw_syscalls:sys_enter
# tracepoint in the kernel without slowing the proxy down (strace would, and a slowed proxy
# finds replies waiting that a real one waits for).
count_syscalls() {
    local key=$1 stat=$WORK/perf-$SEQ.csv counter output
    shift
    SEQ=$((SEQ + 1))
    perf stat -e raw_syscalls:sys_enter -x, -o "$stat" \
        -p "$(tree_pids "${PID_OF[$key]}" | paste -sd,)" &
    counter=$!
    sleep 0.5 # attached
    output=$("$@")
    kill -INT "$counter" 2>/dev/null
    wait "$counter" 2>/dev/null
    echo "$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$stat") $output"
}

phase_syscalls() {
    command -v perf >/dev/null 2>&1 || apt-get install -y -q linux-perf >/dev/null || exit 1
    log "system calls per connection (one at a time, 2 s) and per round trip (2,200), with perf"
    start_upstream server
    local server_pid=$UP_PID server_port=$UP_PORT
    start_upstream echo
    local echo_pid=$UP_PID echo_port=$UP_PORT name calls conns
    echo "| target | system calls per connection | per round trip |"
    echo "|---|---|---|"
    for name in tp-poll haproxy nginx tp-socks-poll; do
        if ! start_target "$name" "$name@rate" "$server_port" ||
            ! start_target "$name" "$name@rr" "$echo_port"; then
            echo "| $name | missing | missing |"
            continue
        fi
        # shellcheck disable=SC2046 # client_args gives several words
        set -- $(count_syscalls "$name@rate" "$LOAD" rate \
            $(client_args "$name" "$name@rate" "$server_port") --threads 1 --time 2)
        calls=$1 conns=$3 # CALLS conns N errors E ...
        # shellcheck disable=SC2046
        set -- $(count_syscalls "$name@rr" "$LOAD" rr \
            $(client_args "$name" "$name@rr" "$echo_port") --count 2000)
        awk -v n="$name" -v c="$calls" -v k="$conns" -v r="$1" \
            'BEGIN { printf "| %s | %.1f (%d connections) | %.2f |\n", n, c / k, k, r / 2200 }'
        stop_target "$name@rate"
        stop_target "$name@rr"
    done
    stop_tree "$server_pid"
    stop_tree "$echo_pid"
}

# ---------------------------------------------------------------- one build against another (--ab)
# Connection rate and CPU per connection of this build (tp-*) and BASELINE's (tpb-*), forward
# and SOCKS5, for AB_ROUNDS rounds, in the order A B B A A B ...: on this machine the first of
# a pair did up to 10 % better whichever build it was. Then iperf3 the same way, unless
# AB_BULK=0. Medians and ratios, nothing written.
phase_ab() {
    local rounds=${AB_ROUNDS:-6} seconds=3 name rep out order
    [ -x "${BASELINE:-}" ] || { echo "run.sh --ab: BASELINE=path to another tinyproxy CLI" >&2 && exit 2; }
    log "A/B: $TP against $BASELINE, $rounds rounds of ${seconds} s, $RATE_THREADS workers"
    start_upstream server
    local server_pid=$UP_PID server_port=$UP_PORT
    start_all "$server_port" "${FORWARDERS[@]}" "${SOCKS[@]}"
    for ((rep = 1; rep <= rounds; rep++)); do
        order=("${FORWARDERS[@]}" "${SOCKS[@]}")
        ((rep % 2 == 0)) && order=("${FORWARDERS[1]}" "${FORWARDERS[0]}" "${SOCKS[1]}" "${SOCKS[0]}")
        for name in "${order[@]}"; do
            up "$name" || continue
            out=$(rate_sample "$name" "$server_port" "$seconds") || continue
            log "  round $rep  $name  ${out%% *} conn/s"
        done
    done
    stop_all
    stop_tree "$server_pid"
    # Pinned request/response latency (64 B ping-pong, everything on CPU 0), alternating too.
    start_upstream echo
    local echo_pid=$UP_PID echo_port=$UP_PORT
    start_all "$echo_port" "${FORWARDERS[@]}"
    pin_tree "$echo_pid" 0
    for name in "${FORWARDERS[@]}"; do
        [ -n "${PID_OF[$name]:-}" ] && pin_tree "${PID_OF[$name]}" 0
    done
    for ((rep = 1; rep <= rounds; rep++)); do
        order=("${FORWARDERS[@]}")
        ((rep % 2 == 0)) && order=("${FORWARDERS[1]}" "${FORWARDERS[0]}")
        for name in "${order[@]}"; do
            up "$name" || continue
            # shellcheck disable=SC2046
            out=$(timeout 90 taskset -c 0 "$LOAD" rr $(client_args "$name" "$name" "$echo_port") \
                --count "${AB_RR_COUNT:-10000}" --time 60 2>/dev/null) || continue
            [[ $out == count* ]] || continue
            set -- $out # count N p50_us A p99_us B max_us C
            record "$name" rrpin_p50_us "$4"
            record "$name" rrpin_p99_us "$6"
            log "  round $rep  pinned rr  $name  p50 $4 us  p99 $6 us"
        done
    done
    stop_all
    stop_tree "$echo_pid"
    # Bulk, forwarding only: iperf3 through each build, 1 and 4 streams, alternating.
    local iperf_port iperf_pid streams
    if [ "${AB_BULK:-1}" != 0 ] && command -v iperf3 >/dev/null 2>&1; then
        iperf_port=$(free_port)
        iperf3 -s -B 127.0.0.1 -p "$iperf_port" >"$WORK/iperf3-server.log" 2>&1 &
        iperf_pid=$!
        "$LOAD" waitport "$iperf_port" 5 || log "iperf3 server did not start"
        for name in "${FORWARDERS[@]}"; do
            start_target "$name" "$name" "$iperf_port" || log "$name: ${MISSING[$name]}"
        done
        for ((rep = 1; rep <= rounds; rep++)); do
            for streams in 1 4; do
                order=("${FORWARDERS[@]}")
                ((rep % 2 == 0)) && order=("${FORWARDERS[1]}" "${FORWARDERS[0]}")
                for name in "${order[@]}"; do
                    up "$name" || continue
                    out=$(BULK_TIME=$seconds iperf_sample "$name" "$name" "$streams") || continue
                    log "  round $rep  -P $streams  $name  $out Gbit/s"
                done
            done
        done
        stop_all
        stop_tree "$iperf_pid"
    fi
    python3 - "$RAW" <<'PY'
import sys
sys.path.insert(0, "bench")
from report import load_samples, median_of
samples = load_samples(sys.argv[1])
med = lambda name, metric: median_of(samples, name, metric)
print("| mode | conn/s this / baseline | ratio | CPU µs/conn this / baseline | ratio |")
print("|---|---|---|---|---|")
for mode, a, b in (("forward", "tp-poll", "tpb-poll"), ("SOCKS5", "tp-socks-poll", "tpb-socks-poll")):
    ra, rb = med(a, "rate_cps"), med(b, "rate_cps")
    ca, cb = med(a, "rate_cpu_us_per_conn"), med(b, "rate_cpu_us_per_conn")
    print(f"| {mode} | {ra:,.0f} / {rb:,.0f} | {ra / rb:.2f} | {ca:.1f} / {cb:.1f} | {ca / cb:.2f} |")
print()
print("| pinned RR (forward) | p50 µs this / baseline | ratio | p99 µs this / baseline | ratio |")
print("|---|---|---|---|---|")
pa, pb = med("tp-poll", "rrpin_p50_us"), med("tpb-poll", "rrpin_p50_us")
qa, qb = med("tp-poll", "rrpin_p99_us"), med("tpb-poll", "rrpin_p99_us")
print(f"| 64 B ping-pong | {pa:.1f} / {pb:.1f} | {pa / pb:.2f} | {qa:.1f} / {qb:.1f} | {qa / qb:.2f} |")
print()
print("| iperf3 (forward) | Gbit/s this / baseline | ratio | CPU s/GB this / baseline | ratio |")
print("|---|---|---|---|---|")
for streams in (1, 4):
    ga, gb = med("tp-poll", f"bulk{streams}_gbps"), med("tpb-poll", f"bulk{streams}_gbps")
    ca, cb = (med("tp-poll", f"bulk{streams}_cpu_s_per_gb"),
              med("tpb-poll", f"bulk{streams}_cpu_s_per_gb"))
    print(f"| {streams} stream{'s' if streams > 1 else ''} | {ga:.2f} / {gb:.2f} | {ga / gb:.2f} "
          f"| {ca:.3f} / {cb:.3f} | {ca / cb:.3f} |")
PY
}

# ---------------------------------------------------------------- relay stages and faults (--faults)
# What issue 13's faults and stages cost and how close they come to what they promise. Each
# phase starts its targets fresh; where two are compared they alternate, A B then B A.
if [ "$MODE" = quick ]; then
    DELAY_N=1000 DELAY_TIME=3 LATBULK_ROUNDS=1 LATBULK_TIME=2 BW_REPS=1 BW_TIMES=(3 2 2)
    STAGE_ROUNDS=2 STAGE_TIME=1 STAGE_POLICIES=(poll)
else
    DELAY_N=1000 DELAY_TIME=15 LATBULK_ROUNDS=3 LATBULK_TIME=5 BW_REPS=2 BW_TIMES=(6 4 4)
    STAGE_ROUNDS=${FAULT_ROUNDS:-4} STAGE_TIME=3 STAGE_POLICIES=(poll thread)
fi
BW_RATES=(10 1000 100000) # KB/s, 1 KB = 1000 B (Toxiproxy's unit)

# 1. DELAY_N tunnels, each pinging 16 B every 200 ms (load delay), to an echo: direct (the
# machine's round trip), through the poll policy without a fault, and with 100 ms of latency
# on the echoes (reported less the 100 ms); the proxy's memory per tunnel while they run.
phase_faults_delay() {
    log "delay: $DELAY_N tunnels, 16 B every 200 ms each, ${DELAY_TIME} s; direct, tp-poll, tp-lat (--toxic latency,latency=100)"
    start_upstream echo
    local echo_pid=$UP_PID echo_port=$UP_PORT name subtract
    for name in direct tp-poll tp-lat; do
        start_target "$name" "$name" "$echo_port" || {
            log "$name: ${MISSING[$name]}"
            continue
        }
        subtract=0
        [ "$name" = tp-lat ] && subtract=100000
        delay_sample "$name" "$DELAY_N" "$DELAY_TIME" "$subtract"
        stop_target "$name"
    done
    stop_tree "$echo_pid"
}

# delay_sample NAME TUNNELS SECONDS SUBTRACT_US: `load delay` through NAME (started, to an
# echo), each tunnel pinging 16 B every 200 ms for SECONDS; records the round trips less
# SUBTRACT_US, and the proxy's RSS before the tunnels and halfway through, per tunnel.
delay_sample() {
    local name=$1 tunnels=$2 seconds=$3 subtract=$4 idle='' held='' out file client n
    [ -n "${PID_OF[$name]}" ] && sleep 0.2 && idle=$("$LOAD" proc "${PID_OF[$name]}")
    SEQ=$((SEQ + 1))
    file=$WORK/$SEQ-delay-$name.out
    "$LOAD" delay "$tunnels" --port "${PORT_OF[$name]}" --time "$seconds" \
        --subtract-us "$subtract" --open-time 30 >"$file" 2>&1 &
    client=$!
    for ((n = 0; n < 350; n++)); do # opened (at most 30 s)
        grep -q '^open' "$file" 2>/dev/null && break
        [ -d "/proc/$client" ] || break
        sleep 0.1
    done
    sleep "$(awk -v t="$seconds" 'BEGIN { print t / 2 }')" # every tunnel pinging
    [ -n "$idle" ] && held=$("$LOAD" proc "${PID_OF[$name]}" 2>/dev/null)
    for ((n = 0; n < (seconds + 10) * 10; n++)); do
        [ -d "/proc/$client" ] || break
        sleep 0.1
    done
    stop_tree "$client"
    out=$(grep '^count' "$file")
    if [ -z "$out" ]; then
        log "delay through $name failed: $(tr '\n' ' ' <"$file" | head -c 200)"
        record "$name" delay_failed 1
        return 1
    fi
    set -- $out # count N p50_us A p99_us B max_us C min_us D open K missing M lost L
    record "$name" delay_count "$2"
    record "$name" delay_p50_us "$4"
    record "$name" delay_p99_us "$6"
    record "$name" delay_max_us "$8"
    record "$name" delay_open "${12}"
    record "$name" delay_missing "${14}"
    record "$name" delay_lost "${16}"
    local line="  $name  p50 $4 us  p99 $6 us  max $8 us  ($2 round trips, ${12} tunnels)"
    ((subtract)) && line+="  (less $subtract us)"
    if [ -n "$idle" ] && [ -n "$held" ]; then
        local idle_kb held_kb
        idle_kb=$(awk '{print $4}' <<<"$idle") held_kb=$(awk '{print $4}' <<<"$held")
        record "$name" delay_idle_rss_kb "$idle_kb"
        record "$name" delay_held_rss_kb "$held_kb"
        record "$name" delay_kb_per_tunnel \
            "$(awk -v a="$held_kb" -v b="$idle_kb" -v n="${12}" 'BEGIN{print (a-b)/n}')"
        line+="  rss $idle_kb -> $held_kb KB"
    fi
    log "$line"
}

# 2. One load bulk stream to a sink through 100 ms of latency on the client-to-server stream
# (the one carrying the bulk), against the same proxy without a fault; alternating.
phase_faults_latency_bulk() {
    log "bulk through latency: 1 stream, ${LATBULK_TIME} s, tp-poll and tp-lat-up (latency=100,stream=upstream), $LATBULK_ROUNDS rounds"
    start_upstream sink
    local sink_pid=$UP_PID sink_port=$UP_PORT rep name out order
    start_all "$sink_port" tp-poll tp-lat-up
    for ((rep = 1; rep <= LATBULK_ROUNDS; rep++)); do
        order=(tp-lat-up tp-poll)
        ((rep % 2 == 0)) && order=(tp-poll tp-lat-up)
        for name in "${order[@]}"; do
            up "$name" || continue
            out=$(timeout $((LATBULK_TIME + 30)) "$LOAD" bulk --port "${PORT_OF[$name]}" \
                --streams 1 --time "$LATBULK_TIME" 2>/dev/null)
            if [[ $out != bytes* ]]; then
                log "bulk through $name failed"
                record "$name" latbulk_failed 1
                continue
            fi
            set -- $out # bytes B seconds S gbps G broken N
            record "$name" latbulk_mb_per_s "$(awk -v b="$2" -v s="$4" 'BEGIN{print b/s/1e6}')"
            log "  round $rep  $name  $(awk -v b="$2" -v s="$4" 'BEGIN{printf "%.1f", b/s/1e6}') MB/s"
        done
    done
    stop_all
    stop_tree "$sink_pid"
}

# 3. Bandwidth faults on the client-to-server stream: load bulk is the upstream too (the proxy
# forwards to its --listen-port) and counts the bytes/s arriving, from the first byte to the last.
phase_faults_bandwidth() {
    log "bandwidth: ${BW_RATES[*]} KB/s (stream=upstream), ${BW_TIMES[*]} s, $BW_REPS each"
    local i rate name port out rep achieved
    for ((rep = 1; rep <= BW_REPS; rep++)); do
        for i in "${!BW_RATES[@]}"; do
            rate=${BW_RATES[i]} name=tp-bw-${BW_RATES[i]}
            port=$(free_port)
            start_target "$name" "$name" "$port" || {
                log "$name: ${MISSING[$name]}"
                continue
            }
            out=$(timeout $((BW_TIMES[i] + 30)) "$LOAD" bulk --port "${PORT_OF[$name]}" \
                --listen-port "$port" --streams 1 --time "${BW_TIMES[i]}" 2>/dev/null)
            stop_target "$name"
            if [[ $out != received* ]]; then
                log "bandwidth $rate KB/s failed: $out"
                record "$name" bw_failed 1
                continue
            fi
            set -- $out # received B span_s S bytes_per_s R sent T broken N
            record "$name" bw_bytes_per_s "$6"
            achieved=$(awk -v r="$6" -v t="$rate" 'BEGIN{printf "%.4f", r / (t * 1000)}')
            record "$name" bw_ratio "$achieved"
            log "  rep $rep  $rate KB/s  $6 B/s over $4 s ($2 B)  achieved/target $achieved"
        done
    done
}

# 4. bench/stage_proxy.cpp without a stage (sp-none-*) and with a pass-through user stage on
# both directions (sp-pass-*), poll and thread policies: iperf3 1 and 4 streams, then conn/s;
# STAGE_ROUNDS rounds, none first in odd rounds, pass first in even ones.
phase_faults_stage() {
    local policies=("${STAGE_POLICIES[@]}") policy rep streams name out order iperf_port iperf_pid
    log "stage overhead: stage_proxy --stage none|pass, ${policies[*]}, $STAGE_ROUNDS rounds of ${STAGE_TIME} s"
    stage_order() { # stage_order ROUND POLICY: the pair in this round's order
        if (($1 % 2)); then echo "sp-none-$2 sp-pass-$2"; else echo "sp-pass-$2 sp-none-$2"; fi
    }
    if command -v iperf3 >/dev/null 2>&1; then
        iperf_port=$(free_port)
        iperf3 -s -B 127.0.0.1 -p "$iperf_port" >"$WORK/iperf3-server.log" 2>&1 &
        iperf_pid=$!
        "$LOAD" waitport "$iperf_port" 5 || log "iperf3 server did not start"
        for policy in "${policies[@]}"; do
            start_all "$iperf_port" "sp-none-$policy" "sp-pass-$policy"
        done
        for ((rep = 1; rep <= STAGE_ROUNDS; rep++)); do
            for streams in 1 4; do
                for policy in "${policies[@]}"; do
                    # shellcheck disable=SC2207
                    order=($(stage_order "$rep" "$policy"))
                    for name in "${order[@]}"; do
                        up "$name" || continue
                        out=$(BULK_TIME=$STAGE_TIME iperf_sample "$name" "$name" "$streams") || continue
                        log "  round $rep  -P $streams  $name  $out Gbit/s"
                    done
                done
            done
        done
        stop_all
        stop_tree "$iperf_pid"
    else
        log "iperf3 missing: no stage bulk numbers"
    fi
    start_upstream server
    local server_pid=$UP_PID server_port=$UP_PORT
    for policy in "${policies[@]}"; do
        start_all "$server_port" "sp-none-$policy" "sp-pass-$policy"
    done
    for ((rep = 1; rep <= STAGE_ROUNDS; rep++)); do
        for policy in "${policies[@]}"; do
            # shellcheck disable=SC2207
            order=($(stage_order "$rep" "$policy"))
            for name in "${order[@]}"; do
                up "$name" || continue
                out=$(rate_sample "$name" "$server_port" "$STAGE_TIME") || continue
                log "  round $rep  $name  ${out%% *} conn/s"
            done
        done
    done
    stop_all
    stop_tree "$server_pid"
}

# Prints the --faults tables and writes them, every sample and the run's facts to $1.
faults_report() {
    BENCH_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) BENCH_MODE=$MODE BENCH_COMMAND=$COMMAND \
        BENCH_NPROC=$(nproc) BENCH_KERNEL=$(uname -r) \
        BENCH_CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1) \
        BENCH_LOAD_BEFORE=$LOAD_BEFORE BENCH_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg) \
        BENCH_SECONDS=$(($(date +%s) - T0)) BENCH_FD_LIMIT=$FD_LIMIT BENCH_BW_RATES="${BW_RATES[*]}" \
        BENCH_SETTINGS="DELAY_N=$DELAY_N DELAY_TIME=$DELAY_TIME LATBULK_ROUNDS=$LATBULK_ROUNDS LATBULK_TIME=$LATBULK_TIME BW_REPS=$BW_REPS BW_TIMES=${BW_TIMES[*]} STAGE_ROUNDS=$STAGE_ROUNDS STAGE_TIME=$STAGE_TIME STAGE_POLICIES=${STAGE_POLICIES[*]}" \
        BENCH_VERSIONS="iperf3=$(dpkg-query -W -f='${Version}' iperf3 2>/dev/null || echo unknown) tinyproxy=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- include 2>/dev/null || echo +dirty)" \
        python3 - "$RAW" "$1" <<'PY'
import json, os, sys
sys.path.insert(0, "bench")
from report import load_samples, median_of
samples = load_samples(sys.argv[1])
med = lambda name, metric: median_of(samples, name, metric)
ok = lambda v: v == v  # not NaN
lines = []
out = lines.append
verdict = lambda good: "**yes**" if good else "**no**"

out("| latency fault, 16 B every 200 ms per tunnel | tunnels | round trips | p50 µs | p99 µs | max µs | proxy KB/tunnel |")
out("|---|---|---|---|---|---|---|")
rows = (("direct", "direct (no proxy): round trip"),
        ("tp-poll", "tinyproxy poll, no fault: round trip"),
        ("tp-lat", "tinyproxy poll, `latency=100`: round trip − 100 ms"))
for name, title in rows:
    if ok(med(name, "delay_p50_us")):
        kb = med(name, "delay_kb_per_tunnel")
        out(f"| {title} | {med(name, 'delay_open'):,.0f} | {med(name, 'delay_count'):,.0f} "
            f"| {med(name, 'delay_p50_us'):,.1f} | {med(name, 'delay_p99_us'):,.1f} "
            f"| {med(name, 'delay_max_us'):,.1f} | {f'{kb:,.1f}' if ok(kb) else '–'} |")
    else:
        out(f"| {title} | failed | | | | | |")
p50, p99 = med("tp-lat", "delay_p50_us"), med("tp-lat", "delay_p99_us")
if ok(p50):
    out("")
    out(f"Target (issue 13): p50 within 1 ms of 100 ms: {verdict(abs(p50) <= 1000)}; "
        f"p99 within 5 ms: {verdict(abs(p99) <= 5000)}. "
        f"Echoes missing at the end: {med('tp-lat', 'delay_missing'):.0f}, "
        f"lost: {med('tp-lat', 'delay_lost'):.0f}.")
out("")

out("| one stream (load bulk) | MB/s (median) |")
out("|---|---|")
for name, title in (("tp-poll", "tinyproxy poll, no fault"),
                    ("tp-lat-up", "tinyproxy poll, `latency=100,stream=upstream`")):
    v = med(name, "latbulk_mb_per_s")
    out(f"| {title} | {f'{v:,.1f}' if ok(v) else 'failed'} |")
v = med("tp-lat-up", "latbulk_mb_per_s")
if ok(v):
    out("")
    out(f"Target (issue 13): ≥ 100 MB/s through a 100 ms latency fault: {verdict(v >= 100)}.")
out("")

out("| `bandwidth,rate=R,stream=upstream` | target B/s | achieved B/s (first to last byte) | achieved / target |")
out("|---|---|---|---|")
for rate in (int(r) for r in os.environ["BENCH_BW_RATES"].split()):
    name = f"tp-bw-{rate}"
    v, r = med(name, "bw_bytes_per_s"), med(name, "bw_ratio")
    out(f"| rate={rate:,} ({rate * 1000:,} B/s) | {rate * 1000:,} | "
        f"{f'{v:,.0f}' if ok(v) else 'failed'} | {f'{r:.3f}' if ok(r) else '–'} |")
out("")

out("| pass-through user stage (stage_proxy) | none | pass | pass / none |")
out("|---|---|---|---|")
for policy in ("poll", "thread"):
    a, b = f"sp-none-{policy}", f"sp-pass-{policy}"
    for metric, title, fmt in (("bulk1_gbps", "iperf3 1 stream, Gbit/s", "{:.2f}"),
                               ("bulk4_gbps", "iperf3 4 streams, Gbit/s", "{:.2f}"),
                               ("bulk1_cpu_s_per_gb", "CPU s/GB, 1 stream", "{:.3f}"),
                               ("bulk4_cpu_s_per_gb", "CPU s/GB, 4 streams", "{:.3f}"),
                               ("rate_cps", "conn/s", "{:,.0f}"),
                               ("rate_cpu_us_per_conn", "CPU µs/conn", "{:.1f}")):
        x, y = med(a, metric), med(b, metric)
        if ok(x) or ok(y):
            out(f"| {policy}: {title} | {fmt.format(x)} | {fmt.format(y)} | {y / x:.3f} |")
table = "\n".join(lines)
print(table)

env = {k[6:].lower(): v for k, v in os.environ.items() if k.startswith("BENCH_")}
medians = {name: {m: median_of(samples, name, m) for m in metrics} for name, metrics in samples.items()}
with open(sys.argv[2], "w") as f:
    json.dump({**env, "samples": samples, "medians": medians, "table": table}, f, indent=1,
              sort_keys=True, allow_nan=True)
    f.write("\n")
PY
}

# ---------------------------------------------------------------- Toxiproxy API (--api)
# What issue 14's control API costs a proxy made through it, and how long its toxic calls take
# while that proxy carries traffic. tp-poll is `tinyproxy --forward`, tp-api a proxy made with
# POST /proxies on `tinyproxy --api`: the same build, poll policy, no toxic.
if [ "$MODE" = quick ]; then
    API_ROUNDS=${API_ROUNDS:-2} API_TIME=2 API_RR_COUNT=5000 API_STREAMS=(1)
    API_DELAY_ROUNDS=1 API_DELAY_TIME=3 API_IDLE_PAIRS=50 API_PAIRS=${API_PAIRS:-100}
else
    API_ROUNDS=${API_ROUNDS:-6} API_TIME=3 API_RR_COUNT=10000 API_STREAMS=(1 4)
    API_DELAY_ROUNDS=2 API_DELAY_TIME=6 API_IDLE_PAIRS=200 API_PAIRS=${API_PAIRS:-200}
fi
# Each tunnel pings every API_INTERVAL_MS: lower it for a heavier load beside the calls.
API_TUNNELS=1000 API_INTERVAL_MS=${API_INTERVAL_MS:-200} API_HOLD_MS=20 API_GAP_MS=20

api_order() { # api_order ROUND: the pair in this round's order, A B then B A
    if (($1 % 2)); then echo "tp-poll tp-api"; else echo "tp-api tp-poll"; fi
}

# 1. conn/s (8 workers), pinned 64 B ping-pong and iperf3 through each, alternating.
phase_api_parity() {
    local rep name out order
    log "API proxy against --forward: conn/s, pinned RR, iperf3 ${API_STREAMS[*]} stream(s); $API_ROUNDS rounds of ${API_TIME} s"
    start_upstream server
    local server_pid=$UP_PID server_port=$UP_PORT
    start_all "$server_port" tp-poll tp-api
    for ((rep = 1; rep <= API_ROUNDS; rep++)); do
        # shellcheck disable=SC2207
        order=($(api_order "$rep"))
        for name in "${order[@]}"; do
            up "$name" || continue
            out=$(rate_sample "$name" "$server_port" "$API_TIME") || {
                log "rate through $name failed"
                continue
            }
            log "  round $rep  $name  ${out%% *} conn/s (${out#* } errors)"
        done
    done
    stop_all
    stop_tree "$server_pid"

    start_upstream echo
    local echo_pid=$UP_PID echo_port=$UP_PORT
    start_all "$echo_port" tp-poll tp-api
    pin_tree "$echo_pid" 0
    for name in tp-poll tp-api; do
        [ -n "${PID_OF[$name]:-}" ] && pin_tree "${PID_OF[$name]}" 0
    done
    for ((rep = 1; rep <= API_ROUNDS; rep++)); do
        # shellcheck disable=SC2207
        order=($(api_order "$rep"))
        for name in "${order[@]}"; do
            up "$name" || continue
            out=$(timeout 90 taskset -c 0 "$LOAD" rr --port "${PORT_OF[$name]}" \
                --count "$API_RR_COUNT" --time 60 2>/dev/null)
            if [[ $out != count* ]]; then
                log "pinned rr through $name failed"
                continue
            fi
            set -- $out # count N p50_us A p99_us B max_us C
            record "$name" rrpin_p50_us "$4"
            record "$name" rrpin_p99_us "$6"
            log "  round $rep  pinned rr  $name  p50 $4 us  p99 $6 us"
        done
    done
    stop_all
    stop_tree "$echo_pid"

    command -v iperf3 >/dev/null 2>&1 || {
        log "iperf3 missing: no bulk numbers"
        return 0
    }
    local iperf_port iperf_pid streams
    iperf_port=$(free_port)
    iperf3 -s -B 127.0.0.1 -p "$iperf_port" >"$WORK/iperf3-server.log" 2>&1 &
    iperf_pid=$!
    "$LOAD" waitport "$iperf_port" 5 || log "iperf3 server did not start"
    start_all "$iperf_port" tp-poll tp-api
    for ((rep = 1; rep <= API_ROUNDS; rep++)); do
        for streams in "${API_STREAMS[@]}"; do
            # shellcheck disable=SC2207
            order=($(api_order "$rep"))
            for name in "${order[@]}"; do
                up "$name" || continue
                out=$(BULK_TIME=$API_TIME iperf_sample "$name" "$name" "$streams") || {
                    log "iperf3 through $name (-P $streams) failed"
                    continue
                }
                log "  round $rep  -P $streams  $name  $out Gbit/s"
            done
        done
    done
    stop_all
    stop_tree "$iperf_pid"
}

# 2. API_TUNNELS tunnels pinging 16 B every 200 ms through each (a fresh proxy per run): round
# trips, and the proxy's memory per tunnel; API_DELAY_ROUNDS rounds, alternating.
phase_api_tunnels() {
    local rep name order
    log "API proxy against --forward: $API_TUNNELS tunnels, 16 B every 200 ms each, ${API_DELAY_TIME} s, $API_DELAY_ROUNDS round(s)"
    start_upstream echo
    local echo_pid=$UP_PID echo_port=$UP_PORT
    for ((rep = 1; rep <= API_DELAY_ROUNDS; rep++)); do
        # shellcheck disable=SC2207
        order=($(api_order "$rep"))
        for name in "${order[@]}"; do
            start_target "$name" "$name" "$echo_port" || {
                log "$name: ${MISSING[$name]}"
                continue
            }
            delay_sample "$name" "$API_TUNNELS" "$API_DELAY_TIME" 0
            stop_target "$name"
        done
    done
    stop_tree "$echo_pid"
}

# api_churn NAME PAIRS: bench/api_latency.py against tp-api's API, PAIRS toxics added and
# removed; records its KEY VALUE pairs as NAME's. Fails when it printed none.
api_churn() {
    local name=$1 pairs=$2 out
    out=$(timeout 120 python3 bench/api_latency.py --api "${API_OF[tp-api]}" --proxy b \
        --pairs "$pairs" --hold-ms "$API_HOLD_MS" --gap-ms "$API_GAP_MS" --time-limit 100 \
        2>"$WORK/api-latency-$name.err")
    [[ $out == pairs* ]] || {
        log "api_latency.py ($name) failed: $(head -c 300 "$WORK/api-latency-$name.err")"
        return 1
    }
    [ -s "$WORK/api-latency-$name.err" ] && log "  api_latency.py: $(head -c 300 "$WORK/api-latency-$name.err")"
    set -- $out # KEY VALUE ...
    while (($# >= 2)); do
        record "$name" "$1" "$2"
        shift 2
    done
    log "  $name  $(awk '{ for (i = 1; i < NF; i += 2) v[$i] = $(i + 1)
        printf "%d pairs, %d errors: add p50 %.2f ms p99 %.2f ms max %.2f ms; remove p50 %.2f ms p99 %.2f ms max %.2f ms",
            v["pairs"], v["errors"], v["add_p50_us"] / 1e3, v["add_p99_us"] / 1e3, v["add_max_us"] / 1e3,
            v["remove_p50_us"] / 1e3, v["remove_p99_us"] / 1e3, v["remove_max_us"] / 1e3 }' <<<"$out")"
}

# 3. The toxic calls' HTTP times: API_IDLE_PAIRS pairs with no connection through the proxy,
# then API_PAIRS beside API_TUNNELS tunnels through it to an echo, each pinging 16 B every
# API_INTERVAL_MS (load delay, as --faults' delay phase), which must all come through unbroken.
phase_api_toxics() {
    log "toxic API calls: $API_IDLE_PAIRS add/remove pairs idle, $API_PAIRS beside $API_TUNNELS tunnels pinging every $API_INTERVAL_MS ms (each toxic held ${API_HOLD_MS} ms)"
    start_upstream echo
    local echo_pid=$UP_PID echo_port=$UP_PORT file client n seconds out
    start_target tp-api tp-api "$echo_port" || {
        log "tp-api: ${MISSING[tp-api]}"
        stop_tree "$echo_pid"
        return 0
    }
    api_churn api-idle "$API_IDLE_PAIRS"
    # The tunnels ping for the churn's expected length (each pair about hold + gap + 2 ms)
    # and 3 s more, so that every call is made while they run.
    seconds=$(((API_PAIRS * (API_HOLD_MS + API_GAP_MS + 2) + 999) / 1000 + 3))
    file=$WORK/api-delay.out
    "$LOAD" delay "$API_TUNNELS" --port "${PORT_OF[tp-api]}" --time "$seconds" --open-time 30 \
        --interval-ms "$API_INTERVAL_MS" >"$file" 2>&1 &
    client=$!
    for ((n = 0; n < 350; n++)); do # opened (at most 30 s)
        grep -q '^open' "$file" 2>/dev/null && break
        [ -d "/proc/$client" ] || break
        sleep 0.1
    done
    sleep 1 # every tunnel pinging
    if api_churn api-load "$API_PAIRS"; then
        if [ -d "/proc/$client" ]; then
            record api-load churn_beside_tunnels 1
        else
            record api-load churn_beside_tunnels 0
            log "  the tunnels ended before the calls did: raise their time"
        fi
    fi
    for ((n = 0; n < (seconds + 10) * 10; n++)); do
        [ -d "/proc/$client" ] || break
        sleep 0.1
    done
    stop_tree "$client"
    stop_target tp-api
    stop_tree "$echo_pid"
    out=$(grep '^count' "$file")
    if [ -z "$out" ]; then
        log "the tunnels through tp-api failed: $(tr '\n' ' ' <"$file" | head -c 200)"
        record api-load tunnels_failed 1
        return 0
    fi
    local opened
    opened=$(grep '^open' "$file")
    set -- $opened # open K failed F seconds S
    record api-load tunnels_open_failed "$4"
    set -- $out # count N p50_us A p99_us B max_us C min_us D open K missing M lost L
    record api-load ping_count "$2"
    record api-load ping_p50_us "$4"
    record api-load ping_p99_us "$6"
    record api-load ping_max_us "$8"
    record api-load tunnels_open "${12}"
    record api-load tunnels_missing "${14}"
    record api-load tunnels_lost "${16}"
    log "  $API_TUNNELS tunnels: ${12} open, ${14} echoes missing, ${16} lost; pings p50 $4 us p99 $6 us max $8 us ($2 round trips)"
}

# Prints the --api tables and writes them, every sample and the run's facts to $1.
api_report() {
    BENCH_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) BENCH_MODE=$MODE BENCH_COMMAND=$COMMAND \
        BENCH_NPROC=$(nproc) BENCH_KERNEL=$(uname -r) \
        BENCH_CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1) \
        BENCH_LOAD_BEFORE=$LOAD_BEFORE BENCH_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg) \
        BENCH_SECONDS=$(($(date +%s) - T0)) BENCH_FD_LIMIT=$FD_LIMIT \
        BENCH_SETTINGS="API_ROUNDS=$API_ROUNDS API_TIME=$API_TIME API_RR_COUNT=$API_RR_COUNT API_STREAMS=${API_STREAMS[*]} RATE_THREADS=$RATE_THREADS API_DELAY_ROUNDS=$API_DELAY_ROUNDS API_DELAY_TIME=$API_DELAY_TIME API_IDLE_PAIRS=$API_IDLE_PAIRS API_PAIRS=$API_PAIRS API_TUNNELS=$API_TUNNELS API_INTERVAL_MS=$API_INTERVAL_MS API_HOLD_MS=$API_HOLD_MS API_GAP_MS=$API_GAP_MS" \
        BENCH_TUNNELS=$API_TUNNELS BENCH_INTERVAL_MS=$API_INTERVAL_MS \
        BENCH_VERSIONS="iperf3=$(dpkg-query -W -f='${Version}' iperf3 2>/dev/null || echo unknown) python3=$(python3 -c 'import platform; print(platform.python_version())') tinyproxy=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- include examples 2>/dev/null || echo +dirty)" \
        python3 - "$RAW" "$1" <<'PY'
import json, os, sys
sys.path.insert(0, "bench")
from report import load_samples, median_of
samples = load_samples(sys.argv[1])
med = lambda name, metric: median_of(samples, name, metric)
ok = lambda v: v == v  # not NaN
lines = []
out = lines.append
verdict = lambda good: "**yes**" if good else "**no**"

out("| through the proxy (poll, no toxic) | `--forward` | made by the API | API / forward |")
out("|---|---|---|---|")
rows = (("rate_cps", "conn/s (8 workers)", "{:,.0f}"),
        ("rate_cpu_us_per_conn", "CPU µs/conn", "{:.1f}"),
        ("rrpin_p50_us", "pinned RR p50 µs", "{:.1f}"),
        ("rrpin_p99_us", "pinned RR p99 µs", "{:.1f}"),
        ("bulk1_gbps", "iperf3 1 stream, Gbit/s", "{:.2f}"),
        ("bulk1_cpu_s_per_gb", "CPU s/GB, 1 stream", "{:.3f}"),
        ("bulk4_gbps", "iperf3 4 streams, Gbit/s", "{:.2f}"),
        ("bulk4_cpu_s_per_gb", "CPU s/GB, 4 streams", "{:.3f}"),
        ("delay_p50_us", f"{int(os.environ['BENCH_TUNNELS']):,} tunnels, 16 B every 200 ms: p50 µs", "{:,.1f}"),
        ("delay_p99_us", f"{int(os.environ['BENCH_TUNNELS']):,} tunnels: p99 µs", "{:,.1f}"),
        ("delay_kb_per_tunnel", "proxy KB/tunnel", "{:.2f}"))
ratio = {}
for metric, title, fmt in rows:
    a, b = med("tp-poll", metric), med("tp-api", metric)
    if ok(a) or ok(b):
        ratio[metric] = b / a if ok(a) and ok(b) and a else float("nan")
        out(f"| {title} | {fmt.format(a) if ok(a) else 'failed'} | "
            f"{fmt.format(b) if ok(b) else 'failed'} | {ratio[metric]:.3f} |")
if all(ok(ratio.get(m, float("nan"))) for m in ("rate_cps", "rrpin_p50_us", "bulk1_gbps")):
    out("")
    out(f"Target (issue 14): level with `--forward` (within 5 %): conn/s {verdict(ratio['rate_cps'] >= 0.95)}, "
        f"pinned RR p50 {verdict(ratio['rrpin_p50_us'] <= 1.05)}, "
        f"iperf3 1 stream {verdict(ratio['bulk1_gbps'] >= 0.95)}.")
out("")

tunnels = int(os.environ["BENCH_TUNNELS"])
out("| HTTP call (keep-alive) | calls | p50 ms | p99 ms | max ms |")
out("|---|---|---|---|---|")
calls = (("get_", "GET /version (changes nothing)"),
         ("add_", "POST /proxies/b/toxics (add)"), ("remove_", "DELETE /proxies/b/toxics/NAME (remove)"),
         ("latency_add_", "add `latency=1`"), ("latency_remove_", "remove `latency=1`"),
         ("bandwidth_add_", "add `bandwidth,rate=10000`"), ("bandwidth_remove_", "remove `bandwidth,rate=10000`"))
interval = int(os.environ["BENCH_INTERVAL_MS"])
for name, when in (("api-idle", "idle"), ("api-load", f"beside {tunnels:,} tunnels")):
    for prefix, title in calls:
        n = med(name, prefix + "count")
        if not ok(n) or n == 0:
            continue
        cells = " | ".join(f"{med(name, prefix + q) / 1e3:,.2f}" for q in ("p50_us", "p99_us", "max_us"))
        out(f"| {when}: {title} | {n:,.0f} | {cells} |")
out("")
if ok(med("api-load", "pairs")):
    closed = {r: med("api-load", f"closed_{r}") for r in
              ("clean", "reset", "timeout", "unreachable", "fault", "stopped", "error")}
    lost, missing, opened = (med("api-load", m) for m in ("tunnels_lost", "tunnels_missing", "tunnels_open"))
    errors = sum(v for v in (med(n, "errors") for n in ("api-idle", "api-load")) if ok(v))
    slowest = max([v for v in (med(n, f"{p}max_us") for n in ("api-idle", "api-load")
                               for p in ("add_", "remove_")) if ok(v)] or [float("nan")])
    out(f"Beside the tunnels (16 B every {interval} ms each): {med('api-load', 'pairs'):,.0f} pairs in {med('api-load', 'seconds'):.1f} s; "
        f"tunnels open {opened:,.0f} of {tunnels:,} (the proxy counted {med('api-load', 'active_before'):,.0f} "
        f"active before the calls, {med('api-load', 'active_after'):,.0f} after); "
        f"connections the proxy closed meanwhile: "
        + ", ".join(f"{r} {v:.0f}" for r, v in closed.items())
        + f"; toxics applied to connections: latency {med('api-load', 'applied_latency'):,.0f}, "
        f"bandwidth {med('api-load', 'applied_bandwidth'):,.0f}; toxics left after: "
        f"{med('api-load', 'toxics_left'):.0f}. Pings meanwhile (some through the 1 ms latency): "
        f"p50 {med('api-load', 'ping_p50_us') / 1e3:.2f} ms, p99 {med('api-load', 'ping_p99_us') / 1e3:.2f} ms, "
        f"max {med('api-load', 'ping_max_us') / 1e3:.2f} ms; echoes missing {missing:.0f}, lost {lost:.0f}.")
    out("")
    unbroken = (opened == tunnels and lost == 0 and missing == 0 and ok(sum(closed.values()))
                and sum(closed.values()) == 0)
    if med("api-load", "churn_beside_tunnels") == 0:
        out("(The tunnels had ended before the last call: some calls ran without them.)")
        out("")
    if ok(med("api-load", "metrics_failed")):
        out("(GET /metrics could not be read: the proxy's own counts are missing.)")
        out("")
    out(f"No tunnel broke while toxics came and went: {verdict(unbroken)}. "
        f"Every call answered, no HTTP error: {verdict(errors == 0)}; "
        f"the slowest add or remove: {slowest / 1e3:,.2f} ms (Toxiproxy users report 25 s hangs).")
else:
    out("Toxic calls beside the tunnels: failed (see the log).")
table = "\n".join(lines)
print(table)

env = {k[6:].lower(): v for k, v in os.environ.items() if k.startswith("BENCH_")}
medians = {name: {m: median_of(samples, name, m) for m in metrics} for name, metrics in samples.items()}
with open(sys.argv[2], "w") as f:
    json.dump({**env, "samples": samples, "medians": medians, "table": table}, f, indent=1,
              sort_keys=True, allow_nan=True)
    f.write("\n")
PY
}

# ---------------------------------------------------------------- run
if ((SYSCALLS)); then
    phase_syscalls
    exit 0
fi
if ((MIXED)); then # only the RR-beside-bulk phase, with its medians; nothing written
    phase_mixed
    python3 - "$RAW" <<'PY'
import sys
sys.path.insert(0, "bench")
from report import load_samples, median_of
samples = load_samples(sys.argv[1])
print("| target | RR beside 4 bulk p50 / p99 µs |")
print("|---|---|")
for name, m in samples.items():
    if "mixrr_p50_us" in m:
        print(f"| {name} | {median_of(samples, name, 'mixrr_p50_us'):,.0f} / "
              f"{median_of(samples, name, 'mixrr_p99_us'):,.0f} |")
PY
    exit 0
fi
if ((FLOOR)); then # next to the floor: medians, and every sample to bench/results/
    # Bulk through the floors that take partial writes (a blocking thread, or splice), not
    # through the copying one, which drops a connection whose send falls short.
    all_forwarders=("${FORWARDERS[@]}") all_socks=("${SOCKS[@]}")
    FORWARDERS=(direct haproxy nginx tp-poll floor-threads floor-splice) SOCKS=()
    phase_bulk
    FORWARDERS=("${all_forwarders[@]}") SOCKS=("${all_socks[@]}")
    phase_rate
    phase_rr
    python3 - "$RAW" "${FORWARDERS[*]}" "${SOCKS[*]}" <<'PY'
import sys
sys.path.insert(0, "bench")
from report import load_samples, median_of
samples = load_samples(sys.argv[1])
med = lambda name, metric: median_of(samples, name, metric)
small = (("rate_cps", "conn/s", max), ("rate_cpu_us_per_conn", "CPU µs/conn", min),
         ("rr_p50_us", "RR p50 µs", min), ("rrpin_p50_us", "RR pinned p50 µs", min))
bulk = (("bulk1_gbps", "Gbit/s 1", max), ("bulk4_gbps", "Gbit/s 4", max),
        ("bulk1_cpu_s_per_gb", "CPU s/GB 1", min), ("bulk4_cpu_s_per_gb", "CPU s/GB 4", min))
best = {m: pick(med(p, m) for p in ("haproxy", "nginx")) for m, _, pick in small + bulk}
def table(names, against, refs, cols=small):
    print(f"| target | " + " | ".join(f"{title} (÷ {against})" for _, title, _ in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in names:
        if name in samples and any(m in samples[name] for m, _, _ in cols):
            cells = [f"{med(name, m):,.1f} ({med(name, m) / refs(name, m):.2f})" for m, _, _ in cols]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print()
forwarders, socks = sys.argv[2].split(), sys.argv[3].split()
table(forwarders, "best of haproxy and nginx", lambda name, m: best[m])
table(forwarders, "best of haproxy and nginx", lambda name, m: best[m], bulk)
table(forwarders, "direct", lambda name, m: med("direct", m), bulk[:2])
table(socks, "microsocks", lambda name, m: med("microsocks", m))
forward_of = {"tp-socks-poll": "tp-poll", "floor-socks": "floor"}
table(forward_of, "the same proxy forwarding", lambda name, m: med(forward_of[name], m))
PY
    mkdir -p bench/results
    cp "$RAW" "bench/results/$(date -u +%Y-%m-%d-%H%M)-floor.tsv" # every sample, as measured
    exit 0
fi
if ((FAULTS)); then
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    log "faults ($MODE), $(nproc) CPUs, load average $LOAD_BEFORE, ulimit -n $FD_LIMIT"
    phase_faults_delay
    phase_faults_latency_bulk
    phase_faults_bandwidth
    phase_faults_stage
    mkdir -p bench/results
    OUT=bench/results/$(date -u +%Y-%m-%d-%H%M)-faults$([ "$MODE" = quick ] && echo -quick).json
    faults_report "$OUT" || exit 1
    log "done in $(($(date +%s) - T0)) s; results in $OUT"
    exit 0
fi
if ((API)); then
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    log "api ($MODE), $(nproc) CPUs, load average $LOAD_BEFORE, ulimit -n $FD_LIMIT"
    phase_api_parity
    phase_api_tunnels
    phase_api_toxics
    mkdir -p bench/results
    OUT=bench/results/$(date -u +%Y-%m-%d-%H%M)-api$([ "$MODE" = quick ] && echo -quick).json
    api_report "$OUT" || exit 1
    log "done in $(($(date +%s) - T0)) s; results in $OUT"
    exit 0
fi
if ((AB)); then
    FORWARDERS=(tp-poll tpb-poll)
    SOCKS=(tp-socks-poll tpb-socks-poll)
    phase_ab
    exit 0
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
COSTS=$("$LOAD" costs 2>/dev/null)
log "mode $MODE, $(nproc) CPUs, load average $LOAD_BEFORE, ulimit -n $FD_LIMIT, $COSTS"
phase_bulk
phase_rate
phase_rr
[ "$MODE" = full ] && phase_mixed # (about 70 s: --quick stays under 3 minutes without it)
phase_memory
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown; }
DATE=$(date -u +%Y-%m-%d-%H%M) # with the time: runs of one day do not overwrite each other
mkdir -p bench/results
OUT=bench/results/$DATE-$MODE$( ((LEVERS)) && echo -levers).json
missing_list=""
for name in "${!MISSING[@]}"; do
    missing_list+="$name=${MISSING[$name]}"$'\n'
done
BENCH_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) BENCH_MODE=$MODE BENCH_COMMAND=$COMMAND \
    BENCH_NPROC=$(nproc) BENCH_KERNEL=$(uname -r) \
    BENCH_CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1) \
    BENCH_COSTS=$COSTS BENCH_LOAD_BEFORE=$LOAD_BEFORE BENCH_LOAD_AFTER=$LOAD_AFTER BENCH_FD_LIMIT=$FD_LIMIT \
    BENCH_SECONDS=$(($(date +%s) - T0)) BENCH_MISSING=$missing_list \
    BENCH_REPS=$REPS BENCH_BULK_TIME=$BULK_TIME BENCH_RATE_TIME=$RATE_TIME \
    BENCH_RR_COUNT=$RR_COUNT BENCH_RR_MIXED_COUNT=$RR_MIXED_COUNT BENCH_HOLD_COUNTS="${HOLD_COUNTS[*]}" \
    BENCH_FORWARDERS="${FORWARDERS[*]}" BENCH_SOCKS="${SOCKS[*]}" \
    BENCH_VERSIONS="haproxy=$(version haproxy) nginx=$(version nginx) libnginx-mod-stream=$(version libnginx-mod-stream) rinetd=$(version rinetd) socat=$(version socat) microsocks=$(version microsocks) iperf3=$(version iperf3) tinyproxy=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- include 2>/dev/null || echo +dirty)" \
    python3 bench/report.py "$RAW" "$OUT" || exit 1
log "done in $(($(date +%s) - T0)) s; results in $OUT"
