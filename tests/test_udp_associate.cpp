// SOCKS5 UDP ASSOCIATE served end to end on every policy (thread, poll, portable poll, fork, and
// the shipped thread-pool policy): a raw client asks for an association, sends datagrams through
// the relay to a UDP echo on loopback (IPv4, IPv6, a name), and gets them back framed; the
// refusals (another source, a fragment, a malformed header, UDP turned off) and the ends (the
// control connection closed, the idle timeout).
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include "support/loopback.hpp"
#include "support/skip.hpp"
#include "thread_pool_policy.hpp" // examples/: the shipped user-written policy

#include <atomic>  // the echo's stop flag
#include <string>  // hosts
#include <thread>  // the echo
#include <utility> // std::move

using namespace tptest;
using namespace std::chrono_literals;
using tinyproxy::endpoint;
using tinyproxy::host_port;

namespace {

struct udp_pool_policy : thread_pool_policy {
    udp_pool_policy() : thread_pool_policy(16) {}
};

/// A UDP echo on `address`, port 0, on a thread of its own until destroyed.
class udp_echo {
public:
    explicit udp_echo(const std::string& address) {
        std::error_code ec;
        socket_ = tinyproxy::datagram_socket::open(
            endpoint{*tinyproxy::ip_address::parse(address), 0}, ec);
        if (ec) {
            throw std::system_error(ec, "udp echo on " + address);
        }
        runner_ = std::thread([this] { run(); });
    }
    ~udp_echo() {
        stop_ = true;
        runner_.join();
    }
    endpoint where() const { return socket_.local_endpoint(); }
    int received() const { return received_.load(); }

private:
    void run() {
        std::vector<std::uint8_t> buffer(65536);
        while (!stop_) {
            std::error_code ec;
            auto until = tinyproxy::steady_clock::now() + 50ms;
            if (!tinyproxy::detail::wait_for(socket_.native_handle(), POLLIN, until, ec)) {
                continue;
            }
            endpoint from;
            std::size_t n = socket_.receive_from(buffer.data(), buffer.size(), from, ec);
            if (!ec) {
                ++received_;
                socket_.send_to(buffer.data(), n, from, ec);
            }
        }
    }

    tinyproxy::datagram_socket socket_;
    std::atomic<bool> stop_{false};
    std::atomic<int> received_{0};
    std::thread runner_;
};

/// One datagram on `s` within `timeout`; empty (and `got` false) when none came.
bytes receive_datagram(tinyproxy::datagram_socket& s, std::chrono::milliseconds timeout,
                       bool& got) {
    got = false;
    std::error_code ec;
    if (!tinyproxy::detail::wait_for(s.native_handle(), POLLIN,
                                     tinyproxy::steady_clock::now() + timeout, ec)) {
        return {};
    }
    bytes out(65536);
    endpoint from;
    std::size_t n = s.receive_from(out.data(), out.size(), from, ec);
    if (ec) {
        return {};
    }
    out.resize(n);
    got = true;
    return out;
}

/// Reads exactly `count` bytes (fewer at end of stream or on the socket's timeout).
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

/// A client of one association: its control connection, its UDP socket, the relay's address.
struct association {
    tinyproxy::socket control;
    tinyproxy::datagram_socket udp;
    endpoint relay;
    std::uint8_t rep = 0xFF; ///< the reply's REP

    /// Sends `data` for `to` through the relay.
    void send(const host_port& to, const bytes& data, std::uint8_t fragment = 0) {
        bytes datagram;
        REQUIRE(!tinyproxy::encode_socks_udp(to, data, datagram, fragment));
        send_raw(datagram);
    }
    void send_raw(const bytes& datagram) {
        std::error_code ec;
        udp.send_to(datagram.data(), datagram.size(), relay, ec);
        REQUIRE(!ec);
    }
};

/// Opens an association through the proxy at `proxy`, from a UDP socket on `address`; the
/// request names that socket's port (and `named_address`, 0.0.0.0 or :: by default).
association associate(const endpoint& proxy, const std::string& address) {
    association a;
    std::error_code ec;
    a.udp =
        tinyproxy::datagram_socket::open(endpoint{*tinyproxy::ip_address::parse(address), 0}, ec);
    REQUIRE(!ec);
    a.control = connect_to(proxy);
    REQUIRE(a.control);
    make_blocking(a.control);
    bytes request = {5, 1, 0, 5, 3, 0};
    const bool v6 = proxy.address.is_v6();
    request.push_back(v6 ? 4 : 1);
    request.insert(request.end(), v6 ? 16 : 4, 0); // the address: not said
    std::uint16_t port = a.udp.local_endpoint().port;
    request.push_back(static_cast<std::uint8_t>(port >> 8));
    request.push_back(static_cast<std::uint8_t>(port & 0xFF));
    REQUIRE(send_all(a.control, request));
    REQUIRE(read_exactly(a.control, 2) == bytes{5, 0});
    bytes head = read_exactly(a.control, 4);
    REQUIRE(head.size() == 4);
    a.rep = head[1];
    if (a.rep != 0) {
        read_exactly(a.control, 6);
        return a;
    }
    bytes rest = read_exactly(a.control, head[3] == 4 ? 18 : 6);
    REQUIRE(rest.size() == (head[3] == 4 ? 18u : 6u));
    if (head[3] == 4) {
        std::array<std::uint8_t, 16> raw{};
        std::copy(rest.begin(), rest.begin() + 16, raw.begin());
        a.relay.address = tinyproxy::ip_address::v6(raw);
    } else {
        a.relay.address = tinyproxy::ip_address::v4({rest[0], rest[1], rest[2], rest[3]});
    }
    a.relay.port = tinyproxy::load_be<std::uint16_t>(rest.data() + rest.size() - 2);
    return a;
}

tinyproxy::options udp_options(const std::string& listen) {
    tinyproxy::options opts;
    opts.listen = tinyproxy::parse_endpoint(listen);
    opts.connect_timeout = 5s;
    opts.idle_timeout = 30s;
    return opts;
}

tinyproxy::socks_mode udp_socks(bool udp = true) {
    tinyproxy::socks_mode::config cfg;
    cfg.udp_associate = udp;
    return tinyproxy::socks_mode(cfg);
}

/// Sends `data` to `to` through `a` and checks it comes back framed, naming `echo`.
void check_echo(association& a, const host_port& to, const endpoint& echo, const bytes& data) {
    a.send(to, data);
    bool got = false;
    bytes back = receive_datagram(a.udp, 5000ms * timing_scale(), got);
    REQUIRE(got);
    tinyproxy::socks_udp_datagram parsed;
    REQUIRE(!tinyproxy::parse_socks_udp(back, parsed));
    CHECK(parsed.fragment == 0);
    CHECK(parsed.address.host == echo.address.to_string());
    CHECK(parsed.address.port == echo.port);
    CHECK(bytes(parsed.data.begin(), parsed.data.end()) == data);
}

/// Whether a UDP socket can be bound at `where` now (the relay's socket is gone).
bool can_bind_udp(const endpoint& where) {
    std::error_code ec;
    auto s = tinyproxy::datagram_socket::open(where, ec);
    return !ec;
}

bool can_use_ipv6() {
    std::error_code ec;
    auto s = tinyproxy::datagram_socket::open(tinyproxy::parse_endpoint("[::1]:0"), ec);
    return !ec;
}

} // namespace

TEST_CASE_TEMPLATE_DEFINE("udp associate end to end", Policy, udp_associate_end_to_end) {
    SUBCASE("IPv4: the reply names the relay on the address the client reached, datagrams echo") {
        udp_echo echo("127.0.0.1");
        running_proxy<Policy, tinyproxy::socks_mode> proxy(udp_socks(), udp_options("127.0.0.1:0"));
        association a = associate(proxy.where(), "127.0.0.1");
        REQUIRE(a.rep == 0);
        CHECK(a.relay.address == proxy.where().address); // never 0.0.0.0
        CHECK(a.relay.port != 0);
        const host_port to{"127.0.0.1", echo.where().port};
        check_echo(a, to, echo.where(), as_vector("ping"));
        check_echo(a, to, echo.where(), random_vector(1200, 7));
        check_echo(a, to, echo.where(), {}); // an empty datagram is one too
    }
    SUBCASE("IPv6: ::1") {
        if (!can_use_ipv6()) {
            skip_test("this machine cannot bind ::1");
            return;
        }
        udp_echo echo("::1");
        running_proxy<Policy, tinyproxy::socks_mode> proxy(udp_socks(), udp_options("[::1]:0"));
        association a = associate(proxy.where(), "::1");
        REQUIRE(a.rep == 0);
        CHECK(a.relay.address == proxy.where().address);
        check_echo(a, host_port{"::1", echo.where().port}, echo.where(), as_vector("ping6"));
    }
    SUBCASE("an IPv4 client to an IPv6 remote, through the one relay socket") {
        if (!can_use_ipv6()) {
            skip_test("this machine cannot bind ::1");
            return;
        }
        udp_echo echo("::1");
        running_proxy<Policy, tinyproxy::socks_mode> proxy(udp_socks(), udp_options("127.0.0.1:0"));
        association a = associate(proxy.where(), "127.0.0.1");
        REQUIRE(a.rep == 0);
        check_echo(a, host_port{"::1", echo.where().port}, echo.where(), as_vector("4 to 6"));
    }
    SUBCASE("a name, resolved without blocking the loop, the answer naming the address") {
        udp_echo echo("127.0.0.1");
        running_proxy<Policy, tinyproxy::socks_mode> proxy(udp_socks(), udp_options("127.0.0.1:0"));
        association a = associate(proxy.where(), "127.0.0.1");
        REQUIRE(a.rep == 0);
        const host_port to{"localhost", echo.where().port};
        check_echo(a, to, echo.where(), as_vector("by name"));
        check_echo(a, to, echo.where(), as_vector("by name, again")); // the answer is kept
    }
    SUBCASE("another source, a fragment and a malformed header are dropped; the rest goes on") {
        udp_echo echo("127.0.0.1");
        running_proxy<Policy, tinyproxy::socks_mode> proxy(udp_socks(), udp_options("127.0.0.1:0"));
        association a = associate(proxy.where(), "127.0.0.1");
        REQUIRE(a.rep == 0);
        const host_port to{"127.0.0.1", echo.where().port};
        check_echo(a, to, echo.where(), as_vector("first"));

        // Another socket on the client's own host: not the port the request named.
        std::error_code ec;
        auto stranger =
            tinyproxy::datagram_socket::open(tinyproxy::parse_endpoint("127.0.0.1:0"), ec);
        REQUIRE(!ec);
        bytes datagram;
        REQUIRE(!tinyproxy::encode_socks_udp(to, as_vector("stranger"), datagram));
        stranger.send_to(datagram.data(), datagram.size(), a.relay, ec);
        REQUIRE(!ec);
        a.send(to, as_vector("fragment"), 1);
        a.send_raw({0, 1, 0, 1, 127, 0, 0, 1, 0, 7}); // RSV not 0
        a.send_raw({0, 0, 0});                        // cut short
        a.send_raw({0, 0, 0, 9, 1, 2, 3});            // no such ATYP
        bool got = false;
        receive_datagram(stranger, 300ms, got);
        CHECK_FALSE(got);
        receive_datagram(a.udp, 300ms, got);
        CHECK_FALSE(got);
        check_echo(a, to, echo.where(), as_vector("last")); // the association goes on
        CHECK(echo.received() == 2);
        if constexpr (!std::is_same<Policy, tinyproxy::fork_policy>::value) {
            a.control.close();
            auto& p = proxy.proxy();
            REQUIRE(eventually([&] { return p.stats().udp_associations == 1; },
                               5000ms * timing_scale()));
            tinyproxy::stats s = p.stats();
            CHECK(s.datagrams_to_upstream == 2);
            CHECK(s.datagrams_to_client == 2);
            CHECK(s.datagrams_dropped == 5);
            CHECK(s.bytes_to_upstream == 9);
            CHECK(s.bytes_to_client == 9);
        }
    }
    SUBCASE("closing the control connection frees the UDP socket at once") {
        udp_echo echo("127.0.0.1");
        running_proxy<Policy, tinyproxy::socks_mode> proxy(udp_socks(), udp_options("127.0.0.1:0"));
        association a = associate(proxy.where(), "127.0.0.1");
        REQUIRE(a.rep == 0);
        check_echo(a, host_port{"127.0.0.1", echo.where().port}, echo.where(), as_vector("x"));
        CHECK_FALSE(can_bind_udp(a.relay)); // in use while the association lives
        a.control.close();
        CHECK(eventually([&] { return can_bind_udp(a.relay); }, 5000ms * timing_scale()));
    }
    SUBCASE("an idle association ends after the idle timeout, closing its control connection") {
        tinyproxy::options opts = udp_options("127.0.0.1:0");
        opts.idle_timeout = 200ms;
        running_proxy<Policy, tinyproxy::socks_mode> proxy(udp_socks(), opts);
        association a = associate(proxy.where(), "127.0.0.1");
        REQUIRE(a.rep == 0);
        make_blocking(a.control, 10s);
        bool clean = false;
        CHECK(read_to_end(a.control, &clean).empty()); // closed by the proxy
        CHECK(eventually([&] { return can_bind_udp(a.relay); }, 5000ms * timing_scale()));
    }
    SUBCASE("UDP ASSOCIATE turned off (--no-udp): REP 0x07, as before") {
        running_proxy<Policy, tinyproxy::socks_mode> proxy(udp_socks(false),
                                                           udp_options("127.0.0.1:0"));
        association a = associate(proxy.where(), "127.0.0.1");
        CHECK(a.rep == 0x07);
    }
    SUBCASE("with credentials, only a client that logged in gets an association") {
        udp_echo echo("127.0.0.1");
        tinyproxy::socks_mode::config cfg;
        cfg.udp_associate = true;
        cfg.required = tinyproxy::credentials{"alice", "s3cret"};
        running_proxy<Policy, tinyproxy::socks_mode> proxy(tinyproxy::socks_mode(cfg),
                                                           udp_options("127.0.0.1:0"));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        make_blocking(client);
        // No authentication offered: refused before any request.
        REQUIRE(send_all(client, {5, 1, 0}));
        CHECK(read_exactly(client, 2) == bytes{5, 0xFF});
        auto wrong = connect_to(proxy.where());
        REQUIRE(wrong);
        make_blocking(wrong);
        bytes bad = {5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 5, 'w', 'r', 'o', 'n', 'g'};
        REQUIRE(send_all(wrong, bad));
        CHECK(read_exactly(wrong, 4) == bytes{5, 2, 1, 1});
        auto good = connect_to(proxy.where());
        REQUIRE(good);
        make_blocking(good);
        bytes login = {5,   1,   2,   1, 5, 'a', 'l', 'i', 'c', 'e', 6, 's', '3', 'c',
                       'r', 'e', 't', 5, 3, 0,   1,   0,   0,   0,   0, 0,   0};
        REQUIRE(send_all(good, login));
        bytes reply = read_exactly(good, 4 + 10);
        REQUIRE(reply.size() == 14);
        CHECK(reply[5] == 0); // succeeded
    }
}

TEST_CASE_TEMPLATE_INVOKE(udp_associate_end_to_end, tinyproxy::thread_policy,
                          tinyproxy::poll_policy, tinyproxy::portable_poll_policy, udp_pool_policy);
TEST_CASE_TEMPLATE_APPLY(udp_associate_end_to_end, std::tuple<tinyproxy::fork_policy>);
