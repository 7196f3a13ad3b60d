// custom_policy: a port forwarder run by a concurrency policy written outside the library, a
// fixed pool of threads (examples/thread_pool_policy.hpp).
//
//   custom_policy LISTEN_PORT HOST PORT [WORKERS]
//
// Listens on 127.0.0.1:LISTEN_PORT (0 picks a free port), prints "listening on IP:PORT" and
// connects every client to HOST:PORT, WORKERS (default 4) at a time, until SIGINT or SIGTERM.
#include <tinyproxy/tinyproxy.hpp>

#include <atomic>       // the proxy the signal handler stops
#include <charconv>     // std::from_chars
#include <csignal>      // std::signal
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint16_t
#include <iostream>     // std::cout, std::cerr
#include <string_view>  // arguments
#include <system_error> // std::error_code

#include "thread_pool_policy.hpp" // the policy

using proxy_type = tinyproxy::basic_proxy<thread_pool_policy, tinyproxy::forward_mode>;

namespace {
std::atomic<proxy_type*> running{nullptr}; // what SIGINT and SIGTERM stop

extern "C" void on_signal(int) {
    if (proxy_type* proxy = running.load()) {
        proxy->stop(); // async-signal-safe
    }
}

template <class Number>
bool parse_number(std::string_view text, Number& value) {
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    return error == std::errc() && end == text.data() + text.size();
}
} // namespace

int main(int argc, char** argv) {
    std::uint16_t listen_port = 0;
    std::uint16_t upstream_port = 0;
    std::size_t workers = 4;
    if (argc < 4 || argc > 5 || !parse_number(argv[1], listen_port) ||
        !parse_number(argv[3], upstream_port) || upstream_port == 0 ||
        (argc == 5 && (!parse_number(argv[4], workers) || workers == 0 || workers > 1024))) {
        std::cerr << "usage: custom_policy LISTEN_PORT HOST PORT [WORKERS]\n";
        return 2;
    }

    tinyproxy::options opts;
    opts.listen = {tinyproxy::ip_address::loopback_v4(), listen_port};
    proxy_type proxy(opts, tinyproxy::forward_mode({argv[2], upstream_port}),
                     thread_pool_policy(workers));
    std::error_code ec;
    proxy.listen(ec);
    if (ec) {
        std::cerr << "custom_policy: cannot listen on " << opts.listen.to_string() << ": "
                  << ec.message() << "\n";
        return 1;
    }
    running = &proxy;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::cout << "listening on " << proxy.local_endpoint().to_string() << std::endl;
    proxy.run(); // until SIGINT or SIGTERM
    running = nullptr;
}
