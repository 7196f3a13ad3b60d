// forward_poll: a port forwarder on the event loop (poll_policy), as a program embeds it.
//
//   forward_poll LISTEN_PORT HOST PORT
//
// Listens on 127.0.0.1:LISTEN_PORT (0 picks a free port), prints "listening on IP:PORT" and
// connects every client to HOST:PORT, until SIGINT or SIGTERM. One thread serves every client.
#include <tinyproxy/tinyproxy.hpp>

#include <atomic>       // the proxy the signal handler stops
#include <charconv>     // std::from_chars
#include <csignal>      // std::signal
#include <cstdint>      // std::uint16_t
#include <iostream>     // std::cout, std::cerr
#include <string_view>  // arguments
#include <system_error> // std::error_code

using proxy_type = tinyproxy::basic_proxy<tinyproxy::poll_policy, tinyproxy::forward_mode>;

namespace {
std::atomic<proxy_type*> running{nullptr}; // what SIGINT and SIGTERM stop

extern "C" void on_signal(int) {
    if (proxy_type* proxy = running.load()) {
        proxy->stop(); // async-signal-safe
    }
}

bool parse_port(std::string_view text, std::uint16_t& port) {
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), port);
    return error == std::errc() && end == text.data() + text.size();
}
} // namespace

int main(int argc, char** argv) {
    std::uint16_t listen_port = 0;
    std::uint16_t upstream_port = 0;
    if (argc != 4 || !parse_port(argv[1], listen_port) || !parse_port(argv[3], upstream_port) ||
        upstream_port == 0) {
        std::cerr << "usage: forward_poll LISTEN_PORT HOST PORT\n";
        return 2;
    }

    // [readme: embedding]
    tinyproxy::options opts;
    opts.listen = {tinyproxy::ip_address::loopback_v4(), listen_port};
    proxy_type proxy(opts, tinyproxy::forward_mode({argv[2], upstream_port}));
    std::error_code ec;
    proxy.listen(ec); // binds now, so that the real port is known before run()
    if (ec) {
        std::cerr << "forward_poll: cannot listen on " << opts.listen.to_string() << ": "
                  << ec.message() << "\n";
        return 1;
    }
    running = &proxy;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::cout << "listening on " << proxy.local_endpoint().to_string() << std::endl;
    proxy.run(); // until SIGINT or SIGTERM
    // [readme: end]
    running = nullptr;
}
