// The Modes end to end, on every policy: SOCKS5, HTTP CONNECT and the PROXY protocol layer in
// front of a loopback upstream, spoken byte by byte by a raw client (curl and haproxy are in
// test_interop.cpp).
#include <doctest/doctest.h>

#include "support/loopback.hpp"

#include <future>
#include <string>

using namespace tptest;
using namespace std::chrono_literals;

namespace {

bytes as_bytes(const std::string& text) { return bytes(text.begin(), text.end()); }

/// Reads exactly `count` bytes (or fewer at end of stream / timeout).
bytes read_exactly(tinyproxy::socket& s, std::size_t count) {
    bytes out(count);
    std::size_t got = 0;
    while (got < count) {
        ssize_t n = ::recv(s.native_handle(), out.data() + got, count - got, 0);
        if (n <= 0) {
            break;
        }
        got += static_cast<std::size_t>(n);
    }
    out.resize(got);
    return out;
}

/// Reads an HTTP response head (to the blank line).
std::string read_head(tinyproxy::socket& s) {
    std::string head;
    char c = 0;
    while (head.size() < 16384 && ::recv(s.native_handle(), &c, 1, 0) == 1) {
        head += c;
        if (head.size() >= 4 && head.compare(head.size() - 4, 4, "\r\n\r\n") == 0) {
            break;
        }
    }
    return head;
}

/// A SOCKS5 no-auth greeting and a CONNECT request for `to` (IPv4), in one buffer.
bytes socks5_connect(const tinyproxy::endpoint& to) {
    bytes out = {5, 1, 0, 5, 1, 0, 1};
    auto a = to.address.bytes();
    out.insert(out.end(), a.begin(), a.end());
    out.push_back(static_cast<std::uint8_t>(to.port >> 8));
    out.push_back(static_cast<std::uint8_t>(to.port & 0xFF));
    return out;
}

tinyproxy::endpoint refused_port() {
    auto l = tinyproxy::listener::open(tinyproxy::parse_endpoint("127.0.0.1:0"));
    return l.local_endpoint(); // closed on return: connecting there is refused
}

} // namespace

TEST_CASE_TEMPLATE_DEFINE("modes end to end", Policy, modes_end_to_end) {
    upstream echo_server(echo);

    SUBCASE("SOCKS5: the request and the bytes behind it in one write, then a tunnel") {
        running_proxy<Policy, tinyproxy::socks_mode> proxy(tinyproxy::socks_mode{});
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        bytes request = socks5_connect(echo_server.where());
        bytes pipelined = random_vector(50'000, 21);
        bytes all = request;
        all.insert(all.end(), pipelined.begin(), pipelined.end());
        REQUIRE(send_all(client, all));
        bytes method = read_exactly(client, 2);
        CHECK(method == bytes{5, 0});
        bytes reply = read_exactly(client, 10);
        REQUIRE(reply.size() == 10);
        CHECK(reply[0] == 5);
        CHECK(reply[1] == 0); // succeeded
        CHECK(reply[3] == 1); // the bound address is IPv4 ...
        CHECK(bytes(reply.begin() + 4, reply.begin() + 8) == bytes{127, 0, 0, 1});
        CHECK((reply[8] != 0 || reply[9] != 0)); // ... with its real port
        shutdown_write(client);
        CHECK(read_to_end(client) == pipelined); // nothing pipelined was lost
    }

    SUBCASE("SOCKS5 replies say what went wrong: refused 0x05, BIND 0x07, address type 0x08") {
        running_proxy<Policy, tinyproxy::socks_mode> proxy(tinyproxy::socks_mode{});
        auto refused = connect_to(proxy.where());
        REQUIRE(send_all(refused, socks5_connect(refused_port())));
        CHECK(read_exactly(refused, 2) == bytes{5, 0});
        bytes reply = read_exactly(refused, 10);
        REQUIRE(reply.size() >= 2);
        CHECK(reply[1] == 0x05);

        auto bind = connect_to(proxy.where());
        bytes bind_request = socks5_connect(echo_server.where());
        bind_request[4] = 2; // CMD BIND
        REQUIRE(send_all(bind, bind_request));
        CHECK(read_exactly(bind, 2) == bytes{5, 0});
        bytes bind_reply = read_exactly(bind, 10);
        REQUIRE(bind_reply.size() >= 2);
        CHECK(bind_reply[1] == 0x07);

        auto atyp = connect_to(proxy.where());
        REQUIRE(send_all(atyp, bytes{5, 1, 0, 5, 1, 0, 2, 1, 2, 3, 4}));
        CHECK(read_exactly(atyp, 2) == bytes{5, 0});
        bytes atyp_reply = read_exactly(atyp, 2);
        REQUIRE(atyp_reply.size() == 2);
        CHECK(atyp_reply[1] == 0x08);
    }

    SUBCASE("SOCKS5 with credentials: the right ones open a tunnel, wrong ones get 0x01") {
        tinyproxy::socks_mode::config cfg;
        cfg.required = tinyproxy::credentials{"alice", "secret"};
        running_proxy<Policy, tinyproxy::socks_mode> proxy(tinyproxy::socks_mode{cfg});
        for (const std::string& password : {std::string("secret"), std::string("wrong")}) {
            CAPTURE(password);
            auto c = connect_to(proxy.where());
            REQUIRE(send_all(c, bytes{5, 1, 2}));
            REQUIRE(read_exactly(c, 2) == bytes{5, 2}); // username/password chosen
            bytes login = {1, 5, 'a', 'l', 'i', 'c', 'e'};
            login.push_back(static_cast<std::uint8_t>(password.size()));
            login.insert(login.end(), password.begin(), password.end());
            REQUIRE(send_all(c, login));
            bytes status = read_exactly(c, 2);
            REQUIRE(status.size() == 2);
            CHECK((status[1] == 0) == (password == "secret"));
        }
    }

    SUBCASE("a handshake that never comes is closed at the handshake deadline") {
        auto opts = running_proxy<Policy, tinyproxy::socks_mode>::default_options();
        opts.handshake_timeout = 300ms;
        running_proxy<Policy, tinyproxy::socks_mode> proxy(tinyproxy::socks_mode{}, opts);
        auto silent = connect_to(proxy.where());
        auto begin = tinyproxy::steady_clock::now();
        bool clean = false;
        read_to_end(silent, &clean);
        auto waited = tinyproxy::steady_clock::now() - begin;
        CHECK(waited >= 250ms);
        CHECK(waited < scaled(5s));
    }

    SUBCASE("HTTP CONNECT: 200, then the pipelined bytes and a tunnel") {
        running_proxy<Policy, tinyproxy::http_connect_mode> proxy(tinyproxy::http_connect_mode{});
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        auto target = echo_server.where();
        std::string request = "CONNECT " + target.to_string() +
                              " HTTP/1.1\r\nHost: " + target.to_string() + "\r\n\r\n";
        bytes pipelined = random_vector(20'000, 22);
        bytes all = as_bytes(request);
        all.insert(all.end(), pipelined.begin(), pipelined.end());
        REQUIRE(send_all(client, all));
        std::string head = read_head(client);
        CHECK(head.rfind("HTTP/1.1 200", 0) == 0);
        shutdown_write(client);
        CHECK(read_to_end(client) == pipelined);
    }

    SUBCASE("HTTP: GET gets 405, a refused upstream 502, and a 64 KiB request line is refused "
            "while another client is served") {
        running_proxy<Policy, tinyproxy::http_connect_mode> proxy(tinyproxy::http_connect_mode{});
        auto get = connect_to(proxy.where());
        REQUIRE(send_all(get, as_bytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n")));
        std::string head = read_head(get);
        CHECK(head.rfind("HTTP/1.1 405", 0) == 0);
        CHECK(head.find("Allow: CONNECT") != std::string::npos);

        auto refused = connect_to(proxy.where());
        REQUIRE(send_all(refused,
                         as_bytes("CONNECT " + refused_port().to_string() + " HTTP/1.1\r\n\r\n")));
        CHECK(read_head(refused).rfind("HTTP/1.1 502", 0) == 0);

        auto huge = connect_to(proxy.where());
        std::thread flood([&] { send_all(huge, as_bytes("CONNECT " + std::string(65536, 'a'))); });
        auto other = connect_to(proxy.where());
        auto target = echo_server.where();
        REQUIRE(send_all(other, as_bytes("CONNECT " + target.to_string() + " HTTP/1.1\r\n\r\n")));
        CHECK(read_head(other).rfind("HTTP/1.1 200", 0) == 0);
        std::string refusal = read_head(huge);
        CHECK(refusal.rfind("HTTP/1.1 4", 0) == 0); // 414/431/400: refused, not buffered
        flood.join();
    }

    SUBCASE("PROXY protocol accepted: the header's client is the one reported and allowed") {
        using tinyproxy::proxy_protocol_version;
        auto forward = tinyproxy::forward_mode(
            {echo_server.where().address.to_string(), echo_server.where().port});
        std::vector<tinyproxy::session_result> results;
        std::mutex mutex;
        auto opts = running_proxy<Policy>::default_options();
        opts.on_event = [&](const tinyproxy::session_event& event) {
            if (event.what == tinyproxy::session_event::kind::closed) {
                std::lock_guard<std::mutex> lock(mutex);
                results.push_back(*event.result);
            }
        };
        tinyproxy::with_proxy_protocol<tinyproxy::forward_mode>::config cfg;
        cfg.accept = true;
        cfg.allow = {tinyproxy::parse_cidr("192.0.2.0/24")};
        using layered_mode = tinyproxy::with_proxy_protocol<tinyproxy::forward_mode>;
        running_proxy<Policy, layered_mode> proxy(layered_mode(forward, cfg), opts);

        auto allowed = tinyproxy::parse_endpoint("192.0.2.7:4242");
        auto denied = tinyproxy::parse_endpoint("198.51.100.7:4242");
        for (const auto& claimed : {allowed, denied}) {
            auto c = connect_to(proxy.where());
            bytes header = tinyproxy::proxy_protocol::encode_v2(claimed, proxy.where());
            bytes data = random_vector(1000, 23);
            header.insert(header.end(), data.begin(), data.end());
            REQUIRE(send_all(c, header));
            shutdown_write(c);
            bytes got = read_to_end(c);
            CHECK((got == data) == (claimed == allowed));
        }
        if (!std::is_same<Policy, tinyproxy::fork_policy>::value) {
            // The hook runs where sessions run: for fork that is another process.
            REQUIRE(eventually([&] {
                std::lock_guard<std::mutex> lock(mutex);
                return results.size() == 2;
            }));
            std::lock_guard<std::mutex> lock(mutex);
            bool saw_allowed = false;
            bool saw_denied = false;
            for (const auto& r : results) {
                saw_allowed = saw_allowed || (r.client == allowed && !r.error);
                saw_denied = saw_denied ||
                             (r.client == denied && r.error == tinyproxy::errc::client_not_allowed);
            }
            CHECK(saw_allowed);
            CHECK(saw_denied);
        }
    }

    SUBCASE("PROXY protocol sent: upstream reads a v1 header naming the client, then its bytes") {
        std::promise<bytes> received;
        upstream recorder([&](tinyproxy::socket& s) { received.set_value(read_to_end(s)); });
        tinyproxy::with_proxy_protocol<tinyproxy::forward_mode>::config cfg;
        cfg.send = tinyproxy::proxy_protocol_version::v1;
        using layered_mode = tinyproxy::with_proxy_protocol<tinyproxy::forward_mode>;
        running_proxy<Policy, layered_mode> proxy(
            layered_mode(tinyproxy::forward_mode({"127.0.0.1", recorder.where().port}), cfg));
        auto c = connect_to(proxy.where());
        tinyproxy::endpoint me = {};
        std::error_code ec;
        me = c.local_endpoint(ec);
        REQUIRE(send_all(c, as_bytes("hello")));
        shutdown_write(c);
        auto got = received.get_future();
        REQUIRE(got.wait_for(5s) == std::future_status::ready);
        std::string text = [&] {
            bytes b = got.get();
            return std::string(b.begin(), b.end());
        }();
        std::string expected = "PROXY TCP4 127.0.0.1 127.0.0.1 " + std::to_string(me.port) + " " +
                               std::to_string(proxy.where().port) + "\r\nhello";
        CHECK(text == expected);
    }
}

TEST_CASE_TEMPLATE_INVOKE(modes_end_to_end, tinyproxy::thread_policy, tinyproxy::poll_policy,
                          tinyproxy::portable_poll_policy);
TEST_CASE_TEMPLATE_APPLY(modes_end_to_end, std::tuple<tinyproxy::fork_policy>);
