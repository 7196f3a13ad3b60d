// tinyproxy: the command-line proxy. SOCKS4/4a/5 and HTTP on one port (the default), a SOCKS
// proxy, an HTTP proxy (forwarding and CONNECT), an HTTP CONNECT proxy or a port forwarder, on
// any of the three policies, optionally speaking the PROXY protocol.
//
//   tinyproxy [--listen HOST:PORT] [--policy thread|fork|poll]
//             [--auto | --socks | --http | --http-connect | --forward HOST:PORT]
//             [--user NAME:PASS] [--no-udp] [--no-bind]
//             [--accept-proxy] [--send-proxy v1|v2]
//             [--connect-timeout SEC] [--idle-timeout SEC] [--handshake-timeout SEC]
//             [--max-connections N] [--allow CIDR]... [--verbose | --quiet]
//             [--loops N] [--no-splice] [--toxic SPEC]... [--seed N]
//   tinyproxy --api HOST:PORT [--config FILE] [--policy thread|poll] [--seed N] ...
//
// Prints "listening on HOST:PORT" once listening; SIGINT or SIGTERM stop it (exit 0); bad
// arguments exit 2, a listener that cannot be opened exits 1. With --api it serves
// Toxiproxy's HTTP API there instead (and "listening on" names the API's address): the
// proxies are made, changed and deleted through it, each with its toxics. Each --toxic adds a
// Toxiproxy fault (TYPE[,KEY=VALUE]..., as tinyproxy::parse_toxic reads it) to every connection, in
// the order given; --seed makes their random decisions (jitter, slice sizes, toxicity) repeatable.
#include <tinyproxy/tinyproxy.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <system_error>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <unistd.h>

namespace {

constexpr const char* usage_text =
    "usage: tinyproxy [--listen HOST:PORT] [--policy thread|fork|poll]\n"
    "                 [--auto | --socks | --http | --http-connect | --forward HOST:PORT]\n"
    "                 [--user NAME:PASS] [--no-udp] [--no-bind]\n"
    "                 [--accept-proxy] [--send-proxy v1|v2]\n"
    "                 [--connect-timeout SEC] [--idle-timeout SEC] [--handshake-timeout SEC]\n"
    "                 [--max-connections N] [--allow CIDR]... [--verbose | --quiet]\n"
    "                 [--loops N] [--no-splice] [--toxic SPEC]... [--seed N]\n"
    "       tinyproxy --api HOST:PORT [--config FILE] [--policy thread|poll] [--seed N]\n"
    "                 [--connect-timeout SEC] [--idle-timeout SEC] [--max-connections N]\n"
    "                 [--allow CIDR]... [--loops N] [--no-splice] [--verbose | --quiet]\n"
    "\n"
    "  --listen HOST:PORT     where to accept clients (default 127.0.0.1:1080; port 0 picks a\n"
    "                         free port; IPv6 as [::1]:PORT)\n"
    "  --policy NAME          thread, fork or poll (default poll)\n"
    "  --auto                 SOCKS4, 4a, 5 and HTTP (forwarding and CONNECT) on one port,\n"
    "                         told apart by the first byte (the default mode)\n"
    "  --socks                a SOCKS4, 4a and 5 proxy\n"
    "  --http                 an HTTP/1.1 proxy: http:// requests forwarded (keep-alive both\n"
    "                         ways), and CONNECT\n"
    "  --http-connect         an HTTP CONNECT proxy (405 for every other method)\n"
    "  --forward HOST:PORT    a port forwarder: every client goes to HOST:PORT\n"
    "  --user NAME:PASS       require these credentials (SOCKS5 username/password, HTTP Basic)\n"
    "  --no-udp               refuse SOCKS5 UDP ASSOCIATE (REP 0x07); by default a client gets\n"
    "                         a UDP relay on the address it reached, for as long as its\n"
    "                         connection stays open (or until --idle-timeout)\n"
    "  --no-bind              refuse SOCKS4 and SOCKS5 BIND (0x5B, REP 0x07); by default a\n"
    "                         client gets a listener for one connection from the peer it names\n"
    "  --accept-proxy         clients begin with a PROXY protocol header (v1 or v2)\n"
    "  --send-proxy v1|v2     begin each upstream connection with a PROXY protocol header\n"
    "  --connect-timeout SEC  give up connecting upstream after SEC seconds (default 10)\n"
    "  --idle-timeout SEC     close a tunnel idle for SEC seconds (default 300)\n"
    "  --handshake-timeout SEC  close a client that has not finished its handshake after SEC\n"
    "                         seconds (default 10)\n"
    "  --max-connections N    close clients past N concurrent sessions at once (default: no\n"
    "                         limit)\n"
    "  --allow CIDR           serve only clients in this range (repeatable; IPv4 or IPv6;\n"
    "                         default: everyone); with --accept-proxy, the client its header\n"
    "                         names\n"
    "  --no-splice            relay with read/write instead of splice(2); for comparison\n"
    "  --verbose              print a line per session to stderr, with the faults that applied\n"
    "  --quiet                print nothing but errors (and the listening line)\n"
    "  --loops N              with --policy poll: N event loops on N threads (default 1)\n"
    "  --toxic SPEC           a fault on every connection, as Toxiproxy's toxics (repeatable,\n"
    "                         applied in order): TYPE[,KEY=VALUE]..., TYPE one of latency,\n"
    "                         bandwidth, slicer, slow_close, timeout, reset_peer, limit_data,\n"
    "                         noop; KEY one of its attributes, stream=upstream|downstream\n"
    "                         (default downstream), toxicity=0..1 (default 1) or name; for\n"
    "                         example --toxic latency,latency=100,jitter=10\n"
    "  --seed N               seed the faults' random choices (jitter, slice sizes, toxicity)\n"
    "                         with N, 0 to 2^64-1 (default: a random seed)\n"
    "  --api HOST:PORT        serve Toxiproxy's HTTP API there (Toxiproxy's port is 8474;\n"
    "                         port 0 picks a free one) instead of one proxy: its clients make,\n"
    "                         change and delete forward proxies and their toxics; GET /metrics\n"
    "                         gives Prometheus metrics. No idle timeout unless --idle-timeout\n"
    "  --config FILE          with --api: make the proxies of a Toxiproxy config file (a JSON\n"
    "                         array, as POST /populate takes) at start\n"
    "  --help                 print this and exit\n";

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum class mode_name { automatic, socks, http, http_connect, forward };

struct command_line {
    tinyproxy::options options;
    std::string policy = "poll";
    unsigned loops = 0; // 0: not given (one loop)
    std::optional<mode_name> mode;
    tinyproxy::host_port forward;
    std::optional<tinyproxy::credentials> user;
    bool accept_proxy = false;
    bool udp = true;  // SOCKS5 UDP ASSOCIATE served (--no-udp: refused)
    bool bind = true; // SOCKS BIND served (--no-bind: refused)
    tinyproxy::proxy_protocol_version send_proxy = tinyproxy::proxy_protocol_version::none;
    enum class verbosity { quiet, normal, verbose } talk = verbosity::normal;
    std::vector<tinyproxy::toxic> toxics;   // --toxic, in the order given
    std::optional<std::uint64_t> seed;      // --seed; none: drawn from std::random_device
    std::optional<tinyproxy::endpoint> api; // --api: the control API's address
    std::string config;                     // --config FILE
    bool idle_timeout_given = false;
    std::vector<std::string> proxy_flags; // flags that make one proxy: not with --api
};

// The running proxy's stop(), for the signal handler (stop() is async-signal-safe, and so is
// a lock-free atomic load).
std::atomic<void (*)()> stop_running{nullptr};

extern "C" void on_signal(int) {
    if (auto stop = stop_running.load()) {
        stop();
    }
}

/// SIGINT and SIGTERM call stop_running (set it first).
void stop_on_signals() {
    struct sigaction action {};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
}

std::chrono::milliseconds parse_seconds(std::string_view flag, const std::string& text) {
    char* end = nullptr;
    double seconds = std::strtod(text.c_str(), &end);
    if (text.empty() || end == nullptr || *end != '\0' || !(seconds >= 0.001) || seconds > 1e6) {
        throw usage_error(std::string(flag) + ": expected seconds from 0.001 to 1000000, not '" +
                          text + "'");
    }
    return std::chrono::milliseconds(static_cast<long long>(seconds * 1000 + 0.5));
}

tinyproxy::endpoint parse_listen(const std::string& text) {
    std::error_code ec;
    auto where = tinyproxy::parse_host_port(text, ec);
    if (!ec) {
        auto found = tinyproxy::resolve(where, ec); // "localhost:8080" is fine too
        if (!ec) {
            return found.front();
        }
    }
    throw usage_error("--listen: cannot use address '" + text + "'");
}

void set_mode(command_line& cmd, mode_name mode, const std::string& flag) {
    if (cmd.mode && *cmd.mode != mode) {
        throw usage_error(flag +
                          ": only one of --auto, --socks, --http, --http-connect and --forward");
    }
    cmd.mode = mode;
}

tinyproxy::credentials parse_user(const std::string& text) {
    auto colon = text.find(':');
    if (colon == std::string::npos || colon == 0 || colon > 255 || text.size() - colon - 1 > 255) {
        throw usage_error("--user: expected NAME:PASS (each 1 to 255 bytes), not '" + text + "'");
    }
    return {text.substr(0, colon), text.substr(colon + 1)};
}

tinyproxy::toxic parse_toxic_flag(const std::string& text) {
    try {
        return tinyproxy::parse_toxic(text);
    } catch (const std::invalid_argument& e) {
        throw usage_error(std::string("--toxic: ") + e.what());
    }
}

/// A whole number from 0 to 2^64-1, digits only (strtoull would take "-1" and " 7").
std::uint64_t parse_seed(const std::string& text) {
    std::uint64_t seed = 0;
    bool fits = !text.empty() && text.size() <= 20;
    for (char c : text) {
        fits = fits && c >= '0' && c <= '9' &&
               seed <= (std::numeric_limits<std::uint64_t>::max() - std::uint64_t(c - '0')) / 10;
        seed = fits ? seed * 10 + std::uint64_t(c - '0') : 0;
    }
    if (!fits) {
        throw usage_error("--seed: expected a whole number from 0 to " +
                          std::to_string(std::numeric_limits<std::uint64_t>::max()) + ", not '" +
                          text + "'");
    }
    return seed;
}

/// Options that take a value, and what to do with it.
void apply_value(command_line& cmd, const std::string& flag, const std::string& value) {
    if (flag == "--listen" || flag == "--forward" || flag == "--user" || flag == "--send-proxy" ||
        flag == "--toxic") {
        cmd.proxy_flags.push_back(flag);
    }
    if (flag == "--listen") {
        cmd.options.listen = parse_listen(value);
    } else if (flag == "--policy") {
        if (value != "thread" && value != "fork" && value != "poll") {
            throw usage_error("--policy: expected thread, fork or poll, not '" + value + "'");
        }
        cmd.policy = value;
    } else if (flag == "--forward") {
        std::error_code ec;
        cmd.forward = tinyproxy::parse_host_port(value, ec);
        if (ec || cmd.forward.port == 0) {
            throw usage_error("--forward: cannot use address '" + value + "'");
        }
        set_mode(cmd, mode_name::forward, flag);
    } else if (flag == "--user") {
        cmd.user = parse_user(value);
    } else if (flag == "--send-proxy") {
        if (value != "v1" && value != "v2") {
            throw usage_error("--send-proxy: expected v1 or v2, not '" + value + "'");
        }
        cmd.send_proxy = value == "v1" ? tinyproxy::proxy_protocol_version::v1
                                       : tinyproxy::proxy_protocol_version::v2;
    } else if (flag == "--connect-timeout") {
        cmd.options.connect_timeout = parse_seconds(flag, value);
    } else if (flag == "--idle-timeout") {
        cmd.options.idle_timeout = parse_seconds(flag, value);
        cmd.idle_timeout_given = true;
    } else if (flag == "--api") {
        std::error_code ec;
        auto where = tinyproxy::parse_host_port(value, ec);
        std::vector<tinyproxy::endpoint> found;
        if (!ec) {
            found = tinyproxy::resolve(where, ec);
        }
        if (ec || found.empty()) {
            throw usage_error("--api: cannot use address '" + value + "'");
        }
        cmd.api = found.front();
    } else if (flag == "--config") {
        cmd.config = value;
    } else if (flag == "--handshake-timeout") {
        cmd.options.handshake_timeout = parse_seconds(flag, value);
    } else if (flag == "--max-connections") {
        char* end = nullptr;
        unsigned long long n = std::strtoull(value.c_str(), &end, 10);
        if (value.empty() || value[0] == '-' || *end != '\0' || n == 0 || n > 10'000'000) {
            throw usage_error("--max-connections: expected a count from 1, not '" + value + "'");
        }
        cmd.options.max_connections = static_cast<std::size_t>(n);
    } else if (flag == "--loops") {
        char* end = nullptr;
        unsigned long n = std::strtoul(value.c_str(), &end, 10);
        if (value.empty() || value[0] == '-' || *end != '\0' || n == 0 || n > 256) {
            throw usage_error("--loops: expected a count from 1 to 256, not '" + value + "'");
        }
        cmd.loops = static_cast<unsigned>(n);
    } else if (flag == "--allow") {
        std::error_code ec;
        cmd.options.allow.push_back(tinyproxy::parse_cidr(value, ec));
        if (ec) {
            throw usage_error("--allow: expected an address range like 10.0.0.0/8, not '" + value +
                              "'");
        }
    } else if (flag == "--toxic") {
        cmd.toxics.push_back(parse_toxic_flag(value));
    } else if (flag == "--seed") {
        cmd.seed = parse_seed(value);
    } else {
        throw usage_error("unknown option '" + flag + "'");
    }
}

/// A seed for the faults when --seed gave none: 64 bits from std::random_device.
std::uint64_t random_seed() {
    std::random_device device;
    std::uint64_t seed = 0;
    for (int word = 0; word < 2; ++word) {
        seed = (seed << 32) ^ static_cast<std::uint64_t>(device());
    }
    return seed;
}

/// --toxic: every connection gets the faults, in the order given, through options.stages.
/// Without one, options.stages stays unset: the plain path, splice included.
void add_faults(command_line& cmd) {
    if (cmd.toxics.empty()) {
        return;
    }
    auto toxics = std::make_shared<tinyproxy::toxic_set>();
    for (const tinyproxy::toxic& fault : cmd.toxics) {
        try {
            toxics->add(fault);
        } catch (const std::invalid_argument& e) { // two with the same name
            throw usage_error(std::string("--toxic: ") + e.what());
        }
    }
    toxics->freeze(); // nothing changes them: connections need not look for changes
    cmd.options.stages =
        tinyproxy::fault_stages(std::move(toxics), cmd.seed ? *cmd.seed : random_seed());
}

/// --api serves Toxiproxy's forward proxies, made through the API: the flags that make the
/// one proxy of the command line have no place there.
void check_api_flags(const command_line& cmd) {
    if (!cmd.api) {
        if (!cmd.config.empty()) {
            throw usage_error("--config: only with --api");
        }
        return;
    }
    if (!cmd.proxy_flags.empty()) {
        throw usage_error(cmd.proxy_flags.front() +
                          ": not with --api (its proxies and toxics are made through the API)");
    }
    if (cmd.policy == "fork") {
        // A forked child has its own copy of the toxics: a change made through the API would
        // never reach the connections it serves.
        throw usage_error("--api: --policy thread or poll (a forked connection cannot see its "
                          "toxics change)");
    }
}

command_line parse(int argc, char** argv) {
    command_line cmd;
    for (int i = 1; i < argc; ++i) {
        std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") {
            std::cout << usage_text;
            std::exit(0);
        } else if (flag == "--auto") {
            set_mode(cmd, mode_name::automatic, flag);
            cmd.proxy_flags.push_back(flag);
        } else if (flag == "--socks") {
            set_mode(cmd, mode_name::socks, flag);
            cmd.proxy_flags.push_back(flag);
        } else if (flag == "--http") {
            set_mode(cmd, mode_name::http, flag);
            cmd.proxy_flags.push_back(flag);
        } else if (flag == "--http-connect") {
            set_mode(cmd, mode_name::http_connect, flag);
            cmd.proxy_flags.push_back(flag);
        } else if (flag == "--no-udp") {
            cmd.udp = false;
            cmd.proxy_flags.push_back(flag);
        } else if (flag == "--no-bind") {
            cmd.bind = false;
            cmd.proxy_flags.push_back(flag);
        } else if (flag == "--accept-proxy") {
            cmd.accept_proxy = true;
            cmd.proxy_flags.push_back(flag);
        } else if (flag == "--no-splice") {
            cmd.options.splice = false;
        } else if (flag == "--verbose" || flag == "--quiet") {
            auto wanted = flag == "--verbose" ? command_line::verbosity::verbose
                                              : command_line::verbosity::quiet;
            if (cmd.talk != command_line::verbosity::normal && cmd.talk != wanted) {
                throw usage_error("--verbose and --quiet exclude each other");
            }
            cmd.talk = wanted;
        } else if (flag.rfind("--", 0) != 0 || flag == "--") {
            throw usage_error("unexpected argument '" + flag + "'");
        } else {
            static const char* const with_value[] = {"--listen",
                                                     "--policy",
                                                     "--forward",
                                                     "--user",
                                                     "--send-proxy",
                                                     "--connect-timeout",
                                                     "--idle-timeout",
                                                     "--handshake-timeout",
                                                     "--max-connections",
                                                     "--allow",
                                                     "--loops",
                                                     "--toxic",
                                                     "--seed",
                                                     "--api",
                                                     "--config"};
            bool known = false;
            for (const char* name : with_value) {
                known = known || flag == name;
            }
            if (!known) {
                throw usage_error("unknown option '" + flag + "'");
            }
            if (i + 1 >= argc) {
                throw usage_error(flag + ": missing value");
            }
            apply_value(cmd, flag, argv[++i]);
        }
    }
    if (cmd.loops != 0 && cmd.policy != "poll") {
        throw usage_error("--loops: only with --policy poll");
    }
    if (cmd.user && cmd.mode == mode_name::forward) {
        throw usage_error("--user: a port forwarder has no handshake to check credentials in");
    }
    check_api_flags(cmd);
    add_faults(cmd);
    return cmd;
}

std::string describe(const tinyproxy::session_event& event) {
    using kind = tinyproxy::session_event::kind;
    std::string line = event.client.to_string();
    if (event.what == kind::rejected) {
        return line + " rejected: " + event.reason.message();
    }
    const tinyproxy::session_result& r = *event.result;
    if (!r.target.host.empty()) {
        line += " -> " + r.target.to_string();
    }
    if (r.udp) {
        const tinyproxy::datagram_counts& d = r.datagrams;
        line += " udp relay " + r.upstream.to_string() + ": " + std::to_string(d.to_upstream) +
                " datagrams up, " + std::to_string(d.to_client) + " down, " +
                std::to_string(d.dropped()) + " dropped (" + std::to_string(d.dropped_fragment) +
                " fragments, " + std::to_string(d.dropped_malformed) + " malformed, " +
                std::to_string(d.dropped_source) + " from elsewhere)";
    } else if (r.connected) {
        line += " (" + r.upstream.to_string() + ")";
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(r.ended - r.started).count();
    line += ": " + std::to_string(r.bytes_to_upstream) + " bytes up, " +
            std::to_string(r.bytes_to_client) + " down, " + std::to_string(ms) + " ms, " +
            (r.error ? r.error.message() : std::string("closed"));
    if (!r.stages.empty()) {
        line += " faults=" + r.stages; // those of the --toxic faults that applied, or "none"
    }
    return line;
}

/// --verbose: one line per session as it ends, and one per rejected client, on stderr (one
/// write each, so lines from several threads or processes do not interleave).
void log_event(const tinyproxy::session_event& event) {
    if (event.what == tinyproxy::session_event::kind::opened) {
        return;
    }
    std::string line = "tinyproxy: " + describe(event) + "\n";
    (void)!::write(2, line.data(), line.size());
}

void print_summary(const tinyproxy::stats& s) {
    std::cerr << "tinyproxy: " << s.accepted << " accepted, " << s.finished << " finished, "
              << s.failed << " failed (" << s.handshake_failures << " in handshake, "
              << s.connect_failures << " connecting), " << s.rejected_limit
              << " rejected by --max-connections, " << s.rejected_access << " by --allow; "
              << s.bytes_to_upstream << " bytes up, " << s.bytes_to_client << " down; "
              << s.udp_associations << " UDP associations, " << s.datagrams_to_upstream
              << " datagrams up, " << s.datagrams_to_client << " down, " << s.datagrams_dropped
              << " dropped\n";
}

template <class Policy, class Mode>
int serve(command_line cmd, Mode mode) {
    using layered = tinyproxy::with_proxy_protocol<Mode>;
    using proxy_type = tinyproxy::basic_proxy<Policy, layered>;
    static std::atomic<proxy_type*> running{nullptr};
    if (cmd.talk == command_line::verbosity::verbose) {
        cmd.options.on_event = log_event;
    }
    typename layered::config layers{cmd.accept_proxy, cmd.send_proxy, {}};
    if (cmd.accept_proxy) {
        // The TCP peer is the load balancer; --allow is about the client its header names.
        layers.allow = std::move(cmd.options.allow);
        cmd.options.allow.clear();
    }
    Policy policy;
    if constexpr (std::is_same<Policy, tinyproxy::poll_policy>::value) {
        policy.loops = cmd.loops == 0 ? 1 : cmd.loops;
    }
    if constexpr (std::is_same<Policy, tinyproxy::thread_policy>::value) {
        // Not the 8 MiB default: each stack that size has a page table page of its own (4 KB
        // of kernel memory per thread). Sessions here go about 8 KiB deep (--verbose or not);
        // resolving a name takes up to 12 KiB more (glibc getaddrinfo through DNS).
        policy.stack_size = 256 * 1024;
    }
    proxy_type proxy(cmd.options, layered(std::move(mode), std::move(layers)), std::move(policy));
    std::error_code ec;
    proxy.listen(ec);
    if (ec) {
        std::cerr << "tinyproxy: cannot listen on " << cmd.options.listen.to_string() << ": "
                  << ec.message() << "\n";
        return 1;
    }
    running = &proxy;
    stop_running = [] {
        if (auto* p = running.load()) {
            p->stop();
        }
    };
    stop_on_signals();

    std::cout << "listening on " << proxy.local_endpoint().to_string() << std::endl;
    proxy.run();
    stop_running = nullptr;
    running = nullptr;
    if (cmd.talk != command_line::verbosity::quiet) {
        print_summary(proxy.stats());
    }
    return 0;
}

/// Reads a whole file; false when it cannot.
bool read_file(const std::string& path, std::string& text) {
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (file == nullptr) {
        return false;
    }
    char chunk[4096];
    std::size_t n = 0;
    while ((n = std::fread(chunk, 1, sizeof chunk, file)) > 0 && text.size() < (64u << 20)) {
        text.append(chunk, n);
    }
    const bool ok = std::ferror(file) == 0;
    std::fclose(file);
    return ok;
}

/// --api: Toxiproxy's HTTP API, and the proxies made through it.
template <class Policy>
int serve_api(command_line cmd) {
    using server_type = tinyproxy::toxiproxy_server<Policy>;
    static std::atomic<server_type*> running{nullptr};
    tinyproxy::toxiproxy_options opts;
    opts.http.listen = *cmd.api;
    opts.proxies = cmd.options;
    if (!cmd.idle_timeout_given) { // Toxiproxy has none: pooled connections sit idle for long
        opts.proxies.idle_timeout = std::chrono::milliseconds::max();
    }
    if (cmd.talk == command_line::verbosity::verbose) {
        opts.proxies.on_event = log_event;
    }
    opts.seed = cmd.seed ? *cmd.seed : random_seed();
    const unsigned loops = cmd.loops == 0 ? 1 : cmd.loops;
    server_type server(opts, [loops] {
        Policy policy;
        if constexpr (std::is_same<Policy, tinyproxy::poll_policy>::value) {
            policy.loops = loops;
        } else {
            (void)loops; // only the poll policy has loops (clang warns of an unused capture)
        }
        if constexpr (std::is_same<Policy, tinyproxy::thread_policy>::value) {
            policy.stack_size = 256 * 1024; // as serve() says
        }
        return policy;
    });
    if (!cmd.config.empty()) {
        std::string text;
        if (!read_file(cmd.config, text)) {
            std::cerr << "tinyproxy: --config: cannot read '" << cmd.config << "'\n";
            return 2;
        }
        try {
            server.populate(text);
        } catch (const tinyproxy::api_error& e) {
            std::cerr << "tinyproxy: --config " << cmd.config << ": " << e.what() << "\n";
            return e.status == 400 ? 2 : 1; // a bad file, or a proxy that cannot listen
        }
    }
    try {
        server.listen();
    } catch (const std::system_error& e) {
        std::cerr << "tinyproxy: cannot listen on " << cmd.api->to_string() << ": "
                  << e.code().message() << "\n";
        return 1;
    }
    running = &server;
    stop_running = [] {
        if (auto* s = running.load()) {
            s->stop();
        }
    };
    stop_on_signals();

    std::cout << "listening on " << server.local_endpoint().to_string() << std::endl;
    server.run();
    stop_running = nullptr;
    running = nullptr;
    return 0;
}

/// --verbose: one line per HTTP request forwarded, as its response has gone.
void log_request(const tinyproxy::http_exchange_record& r) {
    std::string line = "tinyproxy: " + r.client.to_string() + " " + r.method + " " + r.target +
                       " " + std::to_string(r.status) + " " + std::to_string(r.response_bytes) +
                       " bytes\n";
    (void)!::write(2, line.data(), line.size());
}

tinyproxy::http_proxy_mode::config http_config(const command_line& cmd) {
    tinyproxy::http_proxy_mode::config cfg;
    cfg.required = cmd.user;
    if (cmd.talk == command_line::verbosity::verbose) {
        cfg.log = log_request;
    }
    return cfg;
}

template <class Policy>
int serve_mode(const command_line& cmd) {
    if (cmd.api) {
        if constexpr (std::is_same<Policy, tinyproxy::fork_policy>::value) {
            return 2; // not reached: check_api_flags() refused it
        } else {
            return serve_api<Policy>(cmd);
        }
    }
    switch (cmd.mode.value_or(mode_name::automatic)) {
    case mode_name::automatic: {
        tinyproxy::auto_mode::config cfg;
        cfg.socks.required = cmd.user;
        cfg.socks.udp_associate = cmd.udp;
        cfg.socks.bind = cmd.bind;
        cfg.http = http_config(cmd);
        return serve<Policy>(cmd, tinyproxy::auto_mode(std::move(cfg)));
    }
    case mode_name::http:
        return serve<Policy>(cmd, tinyproxy::http_proxy_mode(http_config(cmd)));
    case mode_name::forward:
        return serve<Policy>(cmd, tinyproxy::forward_mode(cmd.forward));
    case mode_name::http_connect: {
        tinyproxy::http_connect_mode::config cfg;
        cfg.required = cmd.user;
        return serve<Policy>(cmd, tinyproxy::http_connect_mode(cfg));
    }
    case mode_name::socks:
        break;
    }
    tinyproxy::socks_mode::config cfg;
    cfg.required = cmd.user;
    cfg.udp_associate = cmd.udp;
    cfg.bind = cmd.bind;
    return serve<Policy>(cmd, tinyproxy::socks_mode(cfg));
}

} // namespace

int main(int argc, char** argv) {
    command_line cmd;
    try {
        cmd = parse(argc, argv);
    } catch (const usage_error& e) {
        std::cerr << "tinyproxy: " << e.what() << "\n" << usage_text;
        return 2;
    }
    if (cmd.policy == "thread") {
        return serve_mode<tinyproxy::thread_policy>(cmd);
    }
    if (cmd.policy == "fork") {
        return serve_mode<tinyproxy::fork_policy>(cmd);
    }
    return serve_mode<tinyproxy::poll_policy>(cmd);
}
