// hexdump: a port forwarder that logs a hex dump of the first bytes each way of every tunnel,
// through a user-written relay stage (examples/hexdump_stage.hpp) on each direction.
//
//   hexdump LISTEN_PORT HOST PORT [FIRST_BYTES]
//
// Listens on 127.0.0.1:LISTEN_PORT (0 picks a free port), prints "listening on IP:PORT" and
// connects every client to HOST:PORT, until SIGINT or SIGTERM. The first FIRST_BYTES bytes
// (default 64) of each direction go to stderr as a hex dump; every byte is passed on unchanged.
#include <tinyproxy/tinyproxy.hpp>

#include "hexdump_stage.hpp"

#include <atomic>       // the proxy the signal handler stops
#include <charconv>     // std::from_chars
#include <csignal>      // std::signal
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint16_t
#include <iostream>     // std::cout, std::cerr
#include <memory>       // std::make_unique: the stages
#include <string>       // labels
#include <string_view>  // arguments
#include <system_error> // std::error_code

using proxy_type = tinyproxy::basic_proxy<tinyproxy::thread_policy, tinyproxy::forward_mode>;

namespace {
std::atomic<proxy_type*> running{nullptr}; // what SIGINT and SIGTERM stop

extern "C" void on_signal(int) {
    if (proxy_type* proxy = running.load()) {
        proxy->stop(); // async-signal-safe
    }
}

template <class Number>
bool parse_number(std::string_view text, Number& number) {
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), number);
    return error == std::errc() && end == text.data() + text.size();
}
} // namespace

int main(int argc, char** argv) {
    std::uint16_t listen_port = 0;
    std::uint16_t upstream_port = 0;
    std::size_t first_bytes = 64;
    if (argc < 4 || argc > 5 || !parse_number(argv[1], listen_port) ||
        !parse_number(argv[3], upstream_port) || upstream_port == 0 ||
        (argc == 5 && !parse_number(argv[4], first_bytes))) {
        std::cerr << "usage: hexdump LISTEN_PORT HOST PORT [FIRST_BYTES]\n";
        return 2;
    }

    tinyproxy::options opts;
    opts.listen = {tinyproxy::ip_address::loopback_v4(), listen_port};
    // [readme: hexdump-factory]
    // Called as each tunnel starts, on the thread that serves it: a stage for each direction.
    opts.stages = [first_bytes](const tinyproxy::tunnel_info& tunnel,
                                tinyproxy::tunnel_stages& stages) {
        auto dump = [&](const char* way) {
            std::string label = "#" + std::to_string(tunnel.serial) + " " + way;
            return std::make_unique<hexdump_stage>(label, first_bytes, hexdump_to_stderr);
        };
        stages.to_upstream.push_back(dump("client>upstream"));
        stages.to_client.push_back(dump("upstream>client"));
        stages.label = "hexdump";
    };
    // [readme: end]
    proxy_type proxy(opts, tinyproxy::forward_mode({argv[2], upstream_port}));
    std::error_code ec;
    proxy.listen(ec); // binds now, so that the real port is known before run()
    if (ec) {
        std::cerr << "hexdump: cannot listen on " << opts.listen.to_string() << ": " << ec.message()
                  << "\n";
        return 1;
    }
    running = &proxy;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::cout << "listening on " << proxy.local_endpoint().to_string() << std::endl;
    proxy.run(); // until SIGINT or SIGTERM
    running = nullptr;
}
