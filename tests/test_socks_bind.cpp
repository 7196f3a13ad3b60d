// SOCKS BIND (SOCKS4 and SOCKS5) served end to end on every policy (thread, poll, portable poll,
// fork, and the shipped thread-pool policy): the first reply names the listener, a peer
// connects, the second reply names it, then a tunnel like CONNECT's; a peer from elsewhere is
// turned away, and a peer that never comes ends the wait at the connect deadline.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include "support/loopback.hpp"
#include "thread_pool_policy.hpp" // examples/: the shipped user-written policy

#include <string> // payloads

using namespace tptest;
using namespace std::chrono_literals;
using tinyproxy::endpoint;

namespace {

struct bind_pool_policy : thread_pool_policy {
    bind_pool_policy() : thread_pool_policy(16) {}
};

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

tinyproxy::socks_mode bind_socks(bool bind = true) {
    tinyproxy::socks_mode::config cfg;
    cfg.bind = bind;
    return tinyproxy::socks_mode(cfg);
}

tinyproxy::options bind_options(std::chrono::milliseconds connect_timeout = 5000ms) {
    tinyproxy::options opts;
    opts.listen = tinyproxy::parse_endpoint("127.0.0.1:0");
    opts.connect_timeout = connect_timeout;
    opts.idle_timeout = 30s;
    return opts;
}

/// A SOCKS5 greeting and BIND for `peer` (IPv4).
bytes socks5_bind(const std::array<std::uint8_t, 4>& peer, std::uint16_t port = 0) {
    bytes out = {5, 1, 0, 5, 2, 0, 1};
    out.insert(out.end(), peer.begin(), peer.end());
    out.push_back(static_cast<std::uint8_t>(port >> 8));
    out.push_back(static_cast<std::uint8_t>(port & 0xFF));
    return out;
}

/// A SOCKS4 BIND for `peer`.
bytes socks4_bind(const std::array<std::uint8_t, 4>& peer, std::uint16_t port = 0) {
    bytes out = {4, 2, static_cast<std::uint8_t>(port >> 8),
                 static_cast<std::uint8_t>(port & 0xFF)};
    out.insert(out.end(), peer.begin(), peer.end());
    out.insert(out.end(), {'u', 0});
    return out;
}

/// The address a SOCKS5 IPv4 reply names.
endpoint socks5_reply_address(const bytes& reply) {
    return endpoint{tinyproxy::ip_address::v4({reply[4], reply[5], reply[6], reply[7]}),
                    tinyproxy::load_be<std::uint16_t>(reply.data() + 8)};
}
/// The address a SOCKS4 reply names.
endpoint socks4_reply_address(const bytes& reply) {
    return endpoint{tinyproxy::ip_address::v4({reply[4], reply[5], reply[6], reply[7]}),
                    tinyproxy::load_be<std::uint16_t>(reply.data() + 2)};
}

/// Through `client` and `peer`, a tunnel both ways, and a half-close passed on.
void check_tunnel(tinyproxy::socket& client, tinyproxy::socket& peer) {
    bytes from_peer = random_vector(30'000, 4);
    bytes from_client = random_vector(20'000, 5);
    REQUIRE(send_all(peer, from_peer));
    CHECK(read_exactly(client, from_peer.size()) == from_peer);
    REQUIRE(send_all(client, from_client));
    shutdown_write(client);
    CHECK(read_to_end(peer) == from_client);
    shutdown_write(peer);
    CHECK(read_to_end(client).empty());
}

} // namespace

TEST_CASE_TEMPLATE_DEFINE("socks bind end to end", Policy, socks_bind_end_to_end) {
    SUBCASE("SOCKS5: the listener, then the peer, then a tunnel") {
        running_proxy<Policy, tinyproxy::socks_mode> proxy(bind_socks(), bind_options());
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        make_blocking(client);
        REQUIRE(send_all(client, socks5_bind({127, 0, 0, 1}, 0)));
        REQUIRE(read_exactly(client, 2) == bytes{5, 0});
        bytes first = read_exactly(client, 10);
        REQUIRE(first.size() == 10);
        CHECK(first[1] == 0);
        CHECK(first[3] == 1);
        endpoint listening = socks5_reply_address(first);
        CHECK(listening.address == proxy.where().address); // where the client reached us
        REQUIRE(listening.port != 0);

        auto peer = connect_to(listening);
        REQUIRE(peer);
        make_blocking(peer);
        std::error_code ec;
        endpoint peer_address = peer.local_endpoint(ec);
        bytes second = read_exactly(client, 10);
        REQUIRE(second.size() == 10);
        CHECK(second[1] == 0);
        CHECK(socks5_reply_address(second) == peer_address); // the peer that connected
        check_tunnel(client, peer);
    }
    SUBCASE("SOCKS4: two 8-byte replies, then a tunnel") {
        running_proxy<Policy, tinyproxy::socks_mode> proxy(bind_socks(), bind_options());
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        make_blocking(client);
        REQUIRE(send_all(client, socks4_bind({127, 0, 0, 1}, 21)));
        bytes first = read_exactly(client, 8);
        REQUIRE(first.size() == 8);
        CHECK(first[0] == 0);
        CHECK(first[1] == 0x5A);
        endpoint listening = socks4_reply_address(first);
        CHECK(listening.address == proxy.where().address);
        REQUIRE(listening.port != 0);
        auto peer = connect_to(listening);
        REQUIRE(peer);
        make_blocking(peer);
        std::error_code ec;
        endpoint peer_address = peer.local_endpoint(ec);
        bytes second = read_exactly(client, 8);
        REQUIRE(second.size() == 8);
        CHECK(second[1] == 0x5A);
        CHECK(socks4_reply_address(second) == peer_address);
        check_tunnel(client, peer);
    }
    SUBCASE("a peer from elsewhere is turned away; none coming ends at the connect deadline") {
        running_proxy<Policy, tinyproxy::socks_mode> proxy(bind_socks(), bind_options(600ms));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        make_blocking(client, 10s);
        REQUIRE(send_all(client, socks5_bind({192, 0, 2, 1}, 0))); // a peer we are not
        REQUIRE(read_exactly(client, 2) == bytes{5, 0});
        bytes first = read_exactly(client, 10);
        REQUIRE(first.size() == 10);
        REQUIRE(first[1] == 0);
        auto stranger = connect_to(socks5_reply_address(first));
        if (stranger) { // accepted by the kernel, then closed by the proxy
            make_blocking(stranger, 10s);
            CHECK(read_to_end(stranger).empty());
        }
        bytes failure = read_exactly(client, 10);
        REQUIRE(failure.size() == 10);
        CHECK(failure[1] == 0x06); // the wait timed out
        CHECK(read_to_end(client).empty());
    }
    SUBCASE("SOCKS4: no peer in time gets 0x5B") {
        running_proxy<Policy, tinyproxy::socks_mode> proxy(bind_socks(), bind_options(300ms));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        make_blocking(client, 10s);
        REQUIRE(send_all(client, socks4_bind({0, 0, 0, 0}, 0))); // any peer
        bytes reply = read_exactly(client, 8);
        REQUIRE(reply.size() == 8);
        CHECK(reply[1] == 0x5A);
        bytes failure = read_exactly(client, 8);
        REQUIRE(failure.size() == 8);
        CHECK(failure[1] == 0x5B);
    }
    SUBCASE("BIND turned off (--no-bind): 0x07 and 0x5B, as before") {
        running_proxy<Policy, tinyproxy::socks_mode> proxy(bind_socks(false), bind_options());
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        make_blocking(client);
        REQUIRE(send_all(client, socks5_bind({127, 0, 0, 1}, 0)));
        REQUIRE(read_exactly(client, 2) == bytes{5, 0});
        bytes reply = read_exactly(client, 10);
        REQUIRE(reply.size() == 10);
        CHECK(reply[1] == 0x07);
        auto client4 = connect_to(proxy.where());
        REQUIRE(client4);
        make_blocking(client4);
        REQUIRE(send_all(client4, socks4_bind({127, 0, 0, 1}, 21)));
        bytes reply4 = read_exactly(client4, 8);
        REQUIRE(reply4.size() == 8);
        CHECK(reply4[1] == 0x5B);
    }
}

TEST_CASE_TEMPLATE_INVOKE(socks_bind_end_to_end, tinyproxy::thread_policy, tinyproxy::poll_policy,
                          tinyproxy::portable_poll_policy, bind_pool_policy);
TEST_CASE_TEMPLATE_APPLY(socks_bind_end_to_end, std::tuple<tinyproxy::fork_policy>);
