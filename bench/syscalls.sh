#!/usr/bin/env bash
# bench/syscalls.sh: system calls a proxy makes per short connection and per request/response
# round trip, counted by the kernel (perf), for tinyproxy (poll policy, forward and SOCKS5) next to
# haproxy and nginx. Unlike timings, these counts hardly depend on what else the machine runs.
# Needs build/bench/ from bench/run.sh (or builds it), and perf (Debian: linux-perf, installed
# with apt when missing; run as root).
# TINYPROXY=path/to/tinyproxy counts another build of the CLI (an older commit, say).
# Loopback only; every process it starts is ended on exit.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
WORK=$(mktemp -d /tmp/tinyproxy-syscalls.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        pkill -TERM -P "$pid" 2>/dev/null
        kill -TERM "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

command -v perf >/dev/null 2>&1 || { apt-get install -y -q linux-perf >/dev/null || exit 1; }
if [ ! -x build/bench/examples/tinyproxy ] || [ ! -x build/bench/load ]; then
    cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DTINYPROXY_BUILD_TESTS=OFF >/dev/null &&
        cmake --build build/bench -j2 --target tinyproxy_cli >/dev/null &&
        g++ -O2 -std=c++17 -pthread bench/load.cpp -o build/bench/load || exit 1
fi
LOAD=build/bench/load
TP=${TINYPROXY:-build/bench/examples/tinyproxy} # TINYPROXY=path counts another build

# start_upstream KIND -> its port on stdout (bench/load's server or echo)
start_upstream() {
    "$LOAD" "$1" 0 --time 600 >"$WORK/$1.out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do
        grep -q '^port ' "$WORK/$1.out" && break
        sleep 0.1
    done
    sed -n 's/^port //p' "$WORK/$1.out"
}
SERVER_PORT=$(start_upstream server)
ECHO_PORT=$(start_upstream echo)

# start_target NAME UPSTREAM_PORT -> TARGET_PID and TARGET_PORT (empty when it cannot run here)
start_target() {
    local name=$1 up=$2 port dir=$WORK/$1-$2
    TARGET_PID='' TARGET_PORT=''
    mkdir -p "$dir"
    case "$name" in
    tinyproxy | tinyproxy-socks)
        local how=(--forward "127.0.0.1:$up")
        [ "$name" = tinyproxy-socks ] && how=(--socks)
        "$TP" --listen 127.0.0.1:0 "${how[@]}" --policy poll --quiet >"$dir/out" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 50); do
            port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$dir/out")
            [ -n "$port" ] && break
            sleep 0.1
        done
        TARGET_PID=$! TARGET_PORT=$port
        ;;
    haproxy)
        command -v haproxy >/dev/null 2>&1 || return 0
        port=$("$LOAD" ports 1)
        printf 'defaults\n mode tcp\n timeout connect 5s\n timeout client 300s\n timeout server 300s\nfrontend f\n bind 127.0.0.1:%s\n default_backend b\nbackend b\n server up 127.0.0.1:%s\n' \
            "$port" "$up" >"$dir/haproxy.cfg"
        haproxy -db -f "$dir/haproxy.cfg" >"$dir/out" 2>&1 &
        PIDS+=($!)
        "$LOAD" waitport "$port" 5 >/dev/null && TARGET_PID=$! TARGET_PORT=$port
        ;;
    nginx)
        local module=/usr/lib/nginx/modules/ngx_stream_module.so
        command -v nginx >/dev/null 2>&1 && [ -e "$module" ] || return 0
        port=$("$LOAD" ports 1)
        printf 'load_module %s;\ndaemon off;\nworker_processes auto;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\nevents { worker_connections 1024; }\nstream { server { listen 127.0.0.1:%s; proxy_pass 127.0.0.1:%s; } }\n' \
            "$module" "$dir" "$dir" "$port" "$up" >"$dir/nginx.conf"
        nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/out" 2>&1 &
        PIDS+=($!)
        "$LOAD" waitport "$port" 5 >/dev/null && TARGET_PID=$! TARGET_PORT=$port
        ;;
    esac
}

# count PID -- COMMAND...: system calls the process tree of PID (every thread of PID and of its
# children) made while COMMAND ran, and COMMAND's output, as "CALLS<TAB>OUTPUT". perf counts
# the raw_syscalls:sys_enter tracepoint in the kernel, without slowing the proxy down (strace
# would, and a slowed proxy finds replies waiting that a real one would wait for).
count() {
    local pid=$1 stat=$WORK/stat.$RANDOM counter
    shift 2 # PID --
    local pids=("$pid")
    mapfile -t -O 1 pids < <(pgrep -P "$pid")
    perf stat -e raw_syscalls:sys_enter -x, -o "$stat" -p "$(IFS=,; echo "${pids[*]}")" &
    counter=$!
    sleep 0.5 # attached
    local output
    output=$("$@")
    kill -INT "$counter" 2>/dev/null
    wait "$counter" 2>/dev/null
    printf '%s\t%s\n' "$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$stat")" "$output"
}

echo "| target | system calls per connection | per round trip |"
echo "|---|---|---|"
for name in tinyproxy haproxy nginx tinyproxy-socks; do
    start_target "$name" "$SERVER_PORT"
    rate_pid=$TARGET_PID rate_port=$TARGET_PORT
    start_target "$name" "$ECHO_PORT"
    rr_pid=$TARGET_PID rr_port=$TARGET_PORT
    if [ -z "$rate_port" ] || [ -z "$rr_port" ]; then
        echo "| $name | missing | missing |"
        continue
    fi
    socks=()
    [ "$name" = tinyproxy-socks ] && socks=(--socks5)
    if [ ${#socks[@]} -eq 0 ]; then
        rate_args=(--port "$rate_port") rr_args=(--port "$rr_port")
    else
        rate_args=(--port "$SERVER_PORT" --socks5 "$rate_port")
        rr_args=(--port "$ECHO_PORT" --socks5 "$rr_port")
    fi
    # One connection at a time for 2 s; 2,200 round trips (200 warm-up, then 2,000).
    IFS=$'\t' read -r calls out < <(count "$rate_pid" -- "$LOAD" rate "${rate_args[@]}" --threads 1 --time 2)
    conns=$(awk '{print $2}' <<<"$out")
    IFS=$'\t' read -r rr_calls _ < <(count "$rr_pid" -- "$LOAD" rr "${rr_args[@]}" --count 2000)
    awk -v n="$name" -v c="$calls" -v k="$conns" -v r="$rr_calls" \
        'BEGIN { printf "| %s | %.1f (%d connections) | %.2f |\n", n, c / k, k, r / 2200 }'
done
