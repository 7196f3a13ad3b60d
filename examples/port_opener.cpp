// port_opener: the socket wrappers and byte helpers on their own, no proxy: an echo server that
// shows what each client sends. A handy upstream for trying the proxies.
//
//   port_opener [PORT]
//
// Listens on 127.0.0.1:PORT (default 0: a free port), prints "listening on IP:PORT", then each
// client's address and a hex dump of its bytes, which it echoes back. SIGINT or SIGTERM end it.
#include <tinyproxy/tinyproxy.hpp>

#include <algorithm> // std::min
#include <atomic>    // the stop flag
#include <charconv>  // std::from_chars
#include <chrono>    // deadlines
#include <csignal>   // std::signal
#include <cstdint>   // bytes
#include <cstdio>    // std::printf: one call, one whole line, from any thread
#include <cstring>   // std::strlen
#include <future>    // a thread per client, joined when its future goes
#include <list>      // the clients' futures
#include <string>    // hex and text columns
#include <thread>    // std::this_thread::sleep_for

namespace {
std::atomic<bool> stopping{false}; // set by SIGINT and SIGTERM; no wait lasts over 100 ms
extern "C" void on_signal(int) { stopping = true; }

/// Prints `bytes` 16 a line: "<who> <offset>  <hex>  |<text>|".
void dump(const std::string& who, std::size_t offset, tinyproxy::byte_view bytes) {
    for (tinyproxy::byte_reader in(bytes); in.remaining() > 0; offset += 16) {
        std::string hex, text;
        for (std::uint8_t b : in.bytes(std::min<std::size_t>(16, in.remaining()))) {
            hex += {"0123456789abcdef"[b >> 4], "0123456789abcdef"[b & 15], ' '};
            text += b >= 0x20 && b < 0x7f ? static_cast<char>(b) : '.';
        }
        std::printf("%s %08zx  %-48s |%s|\n", who.c_str(), offset, hex.c_str(), text.c_str());
    }
}

/// Echoes what the client sends; when it stops sending (or resets), stops too and closes.
void serve(tinyproxy::socket client, const std::string& who) {
    std::printf("%s connected\n", who.c_str());
    std::uint8_t buffer[4096];
    std::size_t total = 0;
    while (!stopping) {
        std::error_code ec;
        auto soon = tinyproxy::steady_clock::now() + std::chrono::milliseconds(100);
        std::size_t n = client.receive_some(buffer, sizeof buffer, soon, ec);
        if (ec == std::errc::timed_out) {
            continue; // nothing yet: look at the stop flag again
        }
        if (ec || n == 0) {
            break; // reset, or end of stream
        }
        dump(who, total, {buffer, n});
        total += client.send_all({buffer, n}, soon + std::chrono::seconds(5), ec);
        if (ec) {
            break;
        }
    }
    std::error_code ignored;
    client.shutdown_write(ignored);
    std::printf("%s closed after %zu bytes\n", who.c_str(), total);
}
} // namespace

int main(int argc, char** argv) {
    std::uint16_t port = 0;
    const char* arg = argc == 2 ? argv[1] : "0";
    auto [end, error] = std::from_chars(arg, arg + std::strlen(arg), port);
    if (argc > 2 || error != std::errc() || *end != '\0') {
        std::fprintf(stderr, "usage: port_opener [PORT]\n");
        return 2;
    }
    std::error_code ec;
    auto server = tinyproxy::listener::open({tinyproxy::ip_address::loopback_v4(), port}, 64, ec);
    if (!ec) {
        server.set_nonblocking(true, ec);
    }
    if (ec) {
        std::fprintf(stderr, "port_opener: cannot listen on port %s: %s\n", arg,
                     ec.message().c_str());
        return 1;
    }
    std::setvbuf(stdout, nullptr, _IOLBF, 0); // a line at a time, even into a pipe
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::printf("listening on %s\n", server.local_endpoint().to_string().c_str());

    std::list<std::future<void>> clients; // a future from std::async joins its thread as it goes
    while (!stopping) {
        clients.remove_if([](const std::future<void>& client) {
            return client.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
        });
        tinyproxy::endpoint peer;
        tinyproxy::socket client = server.accept(peer, true, ec);
        if (ec) { // none waiting (the library has no public accept with a deadline): nap
            ec.clear();
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            continue;
        }
        clients.push_back(
            std::async(std::launch::async, serve, std::move(client), peer.to_string()));
    }
}
