// tinyproxy: the command-line proxy. A port forwarder on any of the three policies.
//
//   tinyproxy [--listen HOST:PORT] [--policy thread|fork|poll] --forward HOST:PORT
//             [--connect-timeout SEC] [--idle-timeout SEC]
//
// Prints "listening on HOST:PORT" once listening; SIGINT or SIGTERM stop it (exit 0); bad
// arguments exit 2, a listener that cannot be opened exits 1.
#include <tinyproxy/tinyproxy.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace {

constexpr const char* usage_text =
    "usage: tinyproxy [--listen HOST:PORT] [--policy thread|fork|poll] --forward HOST:PORT\n"
    "                 [--connect-timeout SEC] [--idle-timeout SEC]\n"
    "\n"
    "  --listen HOST:PORT     where to accept clients (default 127.0.0.1:1080; port 0 picks a\n"
    "                         free port; IPv6 as [::1]:PORT)\n"
    "  --policy NAME          thread, fork or poll (default poll)\n"
    "  --forward HOST:PORT    the upstream every client is connected to\n"
    "  --connect-timeout SEC  give up connecting upstream after SEC seconds (default 10)\n"
    "  --idle-timeout SEC     close a tunnel idle for SEC seconds (default 300)\n"
    "  --help                 print this and exit\n";

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct command_line {
    tinyproxy::options options;
    std::string policy = "poll";
    tinyproxy::host_port forward;
    bool has_forward = false;
};

// The running proxy's stop(), for the signal handler (stop() is async-signal-safe, and so is
// a lock-free atomic load).
std::atomic<void (*)()> stop_running{nullptr};

extern "C" void on_signal(int) {
    if (auto stop = stop_running.load()) {
        stop();
    }
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

command_line parse(int argc, char** argv) {
    command_line cmd;
    for (int i = 1; i < argc; ++i) {
        std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") {
            std::cout << usage_text;
            std::exit(0);
        }
        if (flag != "--listen" && flag != "--policy" && flag != "--forward" &&
            flag != "--connect-timeout" && flag != "--idle-timeout") {
            throw usage_error("unknown option '" + flag + "'");
        }
        if (i + 1 >= argc) {
            throw usage_error(flag + ": missing value");
        }
        std::string value = argv[++i];
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
            cmd.has_forward = true;
        } else if (flag == "--connect-timeout") {
            cmd.options.connect_timeout = parse_seconds(flag, value);
        } else {
            cmd.options.idle_timeout = parse_seconds(flag, value);
        }
    }
    if (!cmd.has_forward) {
        throw usage_error("--forward HOST:PORT is required");
    }
    return cmd;
}

template <class Policy>
int serve(const command_line& cmd) {
    static std::atomic<tinyproxy::basic_proxy<Policy, tinyproxy::forward_mode>*> running{nullptr};
    tinyproxy::basic_proxy<Policy, tinyproxy::forward_mode> proxy(
        cmd.options, tinyproxy::forward_mode(cmd.forward));
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
    struct sigaction action {};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);

    std::cout << "listening on " << proxy.local_endpoint().to_string() << std::endl;
    proxy.run();
    stop_running = nullptr;
    running = nullptr;
    return 0;
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
        return serve<tinyproxy::thread_policy>(cmd);
    }
    if (cmd.policy == "fork") {
        return serve<tinyproxy::fork_policy>(cmd);
    }
    return serve<tinyproxy::poll_policy>(cmd);
}
