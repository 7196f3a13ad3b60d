// bench/stage_proxy.cpp: a port forwarder on the library with or without a pass-through user
// stage on each direction, so that bench/run.sh --faults can measure what a stage costs.
//
//   stage_proxy --listen HOST:PORT --forward HOST:PORT [--policy poll|thread]
//               [--stage none|pass] [--quiet]
//
// Prints "listening on IP:PORT" (run.sh reads it, as it does tinyproxy's) and forwards every
// client until SIGINT or SIGTERM. --stage pass gives both directions of every tunnel one
// pass_stage: a user stage that keeps relay_stage's defaults, which pass every byte and the end
// of stream on at once, unchanged. --stage none (the default) sets no factory: the plain path.
// --quiet is accepted and ignored (run.sh passes it to every tinyproxy-like target).
#include <tinyproxy/tinyproxy.hpp>

#include <atomic>       // the stop function the signal handler calls
#include <charconv>     // std::from_chars: ports
#include <csignal>      // sigaction
#include <cstdint>      // std::uint16_t
#include <iostream>     // std::cout, std::cerr
#include <memory>       // std::make_unique: the stages
#include <optional>     // an address that did not parse
#include <string>       // arguments
#include <string_view>  // arguments
#include <system_error> // std::error_code
#include <type_traits>  // std::is_same: the thread policy's stack
#include <utility>      // std::move

namespace {

/// A user stage that overrides nothing: every member keeps relay_stage's default.
class pass_stage final : public tinyproxy::relay_stage {};

struct command_line {
    tinyproxy::endpoint listen{tinyproxy::ip_address::loopback_v4(), 0};
    std::string forward_host;
    std::uint16_t forward_port = 0;
    std::string policy = "poll";
    std::string stage = "none";
};

std::atomic<void (*)()> stop_running{nullptr}; // what SIGINT and SIGTERM call

extern "C" void on_signal(int) {
    if (auto stop = stop_running.load()) {
        stop(); // proxy::stop() is async-signal-safe
    }
}

/// HOST:PORT split at the last colon; false when the port is not 1..65535.
bool split_host_port(std::string_view text, std::string& host, std::uint16_t& port) {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
        return false;
    }
    std::string_view digits = text.substr(colon + 1);
    auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    host = std::string(text.substr(0, colon));
    return error == std::errc() && end == digits.data() + digits.size() && !host.empty();
}

bool parse(int argc, char** argv, command_line& cmd) {
    bool have_forward = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view flag = argv[i];
        if (flag == "--quiet") {
            continue;
        }
        if (i + 1 >= argc) {
            return false;
        }
        std::string_view value = argv[++i];
        std::string host;
        std::uint16_t port = 0;
        if (flag == "--listen") {
            // An IP address only (no name to resolve): run.sh passes 127.0.0.1:0.
            auto ip = split_host_port(value, host, port) ? tinyproxy::ip_address::parse(host)
                                                         : std::nullopt;
            if (!ip) {
                return false;
            }
            cmd.listen = tinyproxy::endpoint{*ip, port};
        } else if (flag == "--forward") {
            have_forward =
                split_host_port(value, cmd.forward_host, cmd.forward_port) && cmd.forward_port != 0;
        } else if (flag == "--policy" && (value == "poll" || value == "thread")) {
            cmd.policy = std::string(value);
        } else if (flag == "--stage" && (value == "none" || value == "pass")) {
            cmd.stage = std::string(value);
        } else {
            return false;
        }
    }
    return have_forward;
}

template <class Policy>
int serve(const command_line& cmd) {
    using proxy_type = tinyproxy::basic_proxy<Policy, tinyproxy::forward_mode>;
    static std::atomic<proxy_type*> running{nullptr};
    tinyproxy::options opts;
    opts.listen = cmd.listen;
    if (cmd.stage == "pass") {
        opts.stages = [](const tinyproxy::tunnel_info&, tinyproxy::tunnel_stages& stages) {
            stages.to_upstream.push_back(std::make_unique<pass_stage>());
            stages.to_client.push_back(std::make_unique<pass_stage>());
            stages.label = "pass";
        };
    }
    Policy policy;
    if constexpr (std::is_same<Policy, tinyproxy::thread_policy>::value) {
        policy.stack_size = 256 * 1024; // as the CLI does
    }
    proxy_type proxy(opts, tinyproxy::forward_mode({cmd.forward_host, cmd.forward_port}),
                     std::move(policy));
    std::error_code ec;
    proxy.listen(ec);
    if (ec) {
        std::cerr << "stage_proxy: cannot listen on " << opts.listen.to_string() << ": "
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
    proxy.run(); // until SIGINT or SIGTERM
    stop_running = nullptr;
    running = nullptr;
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    command_line cmd;
    if (!parse(argc, argv, cmd)) {
        std::cerr << "usage: stage_proxy --listen HOST:PORT --forward HOST:PORT "
                     "[--policy poll|thread] [--stage none|pass] [--quiet]\n";
        return 2;
    }
    return cmd.policy == "thread" ? serve<tinyproxy::thread_policy>(cmd)
                                  : serve<tinyproxy::poll_policy>(cmd);
}
