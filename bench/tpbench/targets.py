"""The targets as data: the peers' programs and config files, tinyproxy's variants, and which
targets each mode measures."""
import os
import shutil

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"

# A peer: its program (looked up in PATH, else the fallback path), the config template under
# bench/conf/ it gets (written to its work directory as "conf"), or the file of its arguments,
# one a line; argv with placeholders; seconds to let workers come up after the port answers.
PEERS = {
    "haproxy": {"program": "haproxy", "fallback": "/usr/sbin/haproxy", "conf": "haproxy.cfg",
                "argv": ["{program}", "-db", "-f", "{conf}"]},
    "nginx": {"program": "nginx", "fallback": "/usr/sbin/nginx", "conf": "nginx.conf",
              "argv": ["{program}", "-p", "{dir}", "-e", "{dir}/error.log", "-c", "{conf}"],
              "needs": (NGINX_STREAM, "no stream module"), "settle": 0.2},
    "rinetd": {"program": "rinetd", "fallback": "/usr/sbin/rinetd", "conf": "rinetd.conf",
               "argv": ["{program}", "-f", "-c", "{conf}"]},
    "socat": {"program": "socat", "args": "socat.args", "argv": ["{program}"]},
    "microsocks": {"program": "microsocks", "args": "microsocks.args", "argv": ["{program}"]},
}

# tinyproxy's CLI and the programs that start like it (they print its "listening on" line):
# name -> program (a key of Bench.programs), policy, extra arguments. Names not listed follow
# the patterns in tinyproxy_variant().
VARIANTS = {
    # --levers: all poll, one lever at a time
    "tp-portable": ("portable", "poll", []),
    "tp-copy": ("tp", "poll", ["--no-splice"]),
    "tp-loops2": ("tp", "poll", ["--loops", "2"]),
    # --floor: bench/floor.cpp's shapes
    "floor": ("floor", "poll", []),
    "floor-threads": ("floor", "poll", ["--threads"]),
    "floor-socks": ("floor", "poll", []),
    "floor-splice": ("floor", "poll", ["--splice", "1048576"]),
    # --faults: a fault on every tunnel
    "tp-lat": ("tp", "poll", ["--toxic", "latency,latency=100", "--seed", "1"]),
    "tp-lat-up": ("tp", "poll", ["--toxic", "latency,latency=100,stream=upstream", "--seed", "1"]),
}


def is_socks(name):
    """Whether NAME is a SOCKS5 proxy (its clients ask it for the upstream)."""
    return name == "microsocks" or name == "floor-socks" or name.startswith(
        ("tp-socks-", "tpb-socks-"))


def tinyproxy_variant(name):
    """(program key, argv after the program) for a tinyproxy-like target, or None."""
    if not name.startswith(("tp-", "tpb-", "floor", "sp-")):
        return None
    if name in VARIANTS:
        program, policy, more = VARIANTS[name]
    elif name.startswith("tp-bw-"):  # --faults: tp-bw-RATE, a bandwidth fault of RATE KB/s
        rate = name[len("tp-bw-"):]
        program, policy, more = "tp", "poll", ["--toxic", f"bandwidth,rate={rate},stream=upstream",
                                               "--seed", "1"]
    elif name.startswith("sp-"):  # --faults: stage_proxy, sp-STAGE-POLICY
        _, stage, policy = name.split("-")
        program, more = "stage_proxy", ["--stage", stage]
    else:  # tp-POLICY, tp-socks-POLICY, and tpb-*: the same from BASELINE
        program = "baseline" if name.startswith("tpb-") else "tp"
        policy, more = name.rsplit("-", 1)[1], []
    return program, policy, more


def how_of(name, upstream):
    """The CLI's arguments that say where a session goes."""
    return ["--socks"] if is_socks(name) else ["--forward", f"127.0.0.1:{upstream}"]


def peer_program(name):
    """The peer's executable, or None when it is not installed."""
    spec = PEERS[name]
    found = shutil.which(spec["program"])
    if found:
        return found
    fallback = spec.get("fallback")
    return fallback if fallback and os.access(fallback, os.X_OK) else None


def read_template(file_name):
    """A file under bench/conf/ without its comment lines (those starting with #)."""
    with open(os.path.join(CONF_DIR, file_name)) as f:
        return "".join(line for line in f if not line.startswith("#"))


# Which targets each mode measures: (forwarders, SOCKS5 proxies). "direct" first.
FORWARDERS = ["direct", "haproxy", "nginx", "rinetd", "socat", "tp-poll", "tp-thread", "tp-fork"]
SOCKS = ["microsocks", "tp-socks-poll", "tp-socks-thread"]
LEVERS_FORWARDERS = ["direct", "haproxy", "nginx", "tp-portable", "tp-copy", "tp-poll",
                     "tp-loops2"]
FLOOR_FORWARDERS = ["direct", "haproxy", "nginx", "tp-poll", "floor", "floor-threads",
                    "floor-splice"]
FLOOR_SOCKS = ["microsocks", "tp-socks-poll", "floor-socks"]
# Bulk through the floors that take partial writes (a blocking thread, or splice), not through
# the copying one, which drops a connection whose send falls short.
FLOOR_BULK_FORWARDERS = ["direct", "haproxy", "nginx", "tp-poll", "floor-threads", "floor-splice"]
AB_FORWARDERS = ["tp-poll", "tpb-poll"]
AB_SOCKS = ["tp-socks-poll", "tpb-socks-poll"]
