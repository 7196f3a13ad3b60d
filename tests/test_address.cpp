// Unit tests for address.hpp (parse, format, sockaddr conversion, resolve) and error.hpp.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <array>        // IPv4 bytes
#include <cstring>      // std::memcmp
#include <set>          // distinct messages
#include <string>       // inputs
#include <string_view>  // inputs with a NUL
#include <system_error> // error codes
#include <type_traits>  // is_error_code_enum
#include <vector>       // input tables

#include <arpa/inet.h>  // htons
#include <netinet/in.h> // sockaddr_in, sockaddr_in6
#include <sys/un.h>     // sockaddr_un

#include <tinyproxy/tinyproxy.hpp>

#include "support/stack_probe.hpp"
#include "support/unit_helpers.hpp"

// Defined in test_bytes.cpp: the category object as another translation unit sees it.
const std::error_category* unit_bytes_tu_error_category();

namespace {

using tinyproxy::endpoint;
using tinyproxy::host_port;
using tinyproxy::ip_address;

const tinyproxy::errc all_errcs[] = {
    tinyproxy::errc::invalid_address,      tinyproxy::errc::name_not_resolved,
    tinyproxy::errc::connect_timeout,      tinyproxy::errc::handshake_timeout,
    tinyproxy::errc::handshake_incomplete, tinyproxy::errc::idle_timeout,
    tinyproxy::errc::protocol_error,       tinyproxy::errc::stopped,
    tinyproxy::errc::child_failed,         tinyproxy::errc::unsupported_version,
    tinyproxy::errc::unsupported_command,  tinyproxy::errc::unsupported_address_type,
    tinyproxy::errc::no_acceptable_method, tinyproxy::errc::auth_failed,
    tinyproxy::errc::message_too_large,    tinyproxy::errc::method_not_allowed,
    tinyproxy::errc::not_allowed,
};

/// Inputs that are not "HOST:PORT" or "[V6]:PORT".
const std::vector<std::string> bad_host_ports = {
    "",
    "localhost",                   // no port
    "127.0.0.1",                   // no port
    "127.0.0.1:65536",             // port out of range
    "127.0.0.1:99999",             // port out of range
    "127.0.0.1:123456",            // too many digits
    "127.0.0.1:-1",                // negative port
    "127.0.0.1:+80",               // sign
    "127.0.0.1: 80",               // space in the port
    "127.0.0.1:8o",                // letter in the port
    "1.2.3.4:",                    // empty port
    ":80",                         // empty host
    "::1:80",                      // IPv6 without brackets
    "fe80::1:443",                 // IPv6 without brackets
    "[::1]80",                     // no colon after the bracket
    "[::1]",                       // no port
    "[::1]:",                      // empty port
    "[1.2.3.4]:80",                // IPv4 in brackets
    "[example.com]:80",            // a name in brackets
    "[]:80",                       // empty brackets
    "[::1",                        // unclosed bracket
    "[::1:80",                     // unclosed bracket
    "::1]:80",                     // stray bracket
    "host name:80",                // space in the host
    "host\tname:80",               // tab in the host
    "exa/mple.com:80",             // slash in the host
    "user@example.com:80",         // '@' in the host
    std::string(254, 'a') + ":80", // longer than DNS allows
};

} // namespace

TEST_SUITE_BEGIN("address");

TEST_CASE("parse_host_port accepts names, IPv4, bracketed IPv6 and port 0") {
    struct good {
        const char* text;
        const char* host;
        std::uint16_t port;
    };
    const good inputs[] = {
        {"127.0.0.1:80", "127.0.0.1", 80},
        {"[::1]:8080", "::1", 8080},
        {"example.com:443", "example.com", 443},
        {"localhost:0", "localhost", 0},
        {"[fe80::1%2]:80", "fe80::1%2", 80},
        {"a-b_c.example:65535", "a-b_c.example", 65535},
        {"0.0.0.0:1", "0.0.0.0", 1},
        {"[::]:00080", "::", 80},
        {"[::ffff:1.2.3.4]:7", "::ffff:1.2.3.4", 7},
    };
    for (const good& input : inputs) {
        INFO("input: " << input.text);
        std::error_code ec = tinyproxy::errc::stopped; // must be cleared on success
        host_port parsed = tinyproxy::parse_host_port(input.text, ec);
        CHECK_FALSE(ec);
        CHECK(parsed.host == input.host);
        CHECK(parsed.port == input.port);
        host_port thrown = tinyproxy::parse_host_port(input.text);
        CHECK(thrown.host == input.host);
        CHECK(thrown.port == input.port);
    }
    std::string longest(253, 'a');
    std::error_code ec;
    CHECK(tinyproxy::parse_host_port(longest + ":1", ec).host == longest);
    CHECK_FALSE(ec);
}

TEST_CASE("parse_host_port rejects malformed text with invalid_address, and the throw names it") {
    for (const std::string& text : bad_host_ports) {
        INFO("input: '" << text << "'");
        std::error_code ec;
        (void)tinyproxy::parse_host_port(text, ec);
        CHECK(ec == tinyproxy::errc::invalid_address);
        bool threw = false;
        try {
            (void)tinyproxy::parse_host_port(text);
        } catch (const std::system_error& e) {
            threw = true;
            CHECK(e.code() == tinyproxy::errc::invalid_address);
            CHECK(std::string(e.what()).find("'" + text + "'") != std::string::npos);
        }
        CHECK(threw);
    }
}

TEST_CASE("parse_endpoint accepts numeric addresses only") {
    std::error_code ec;
    endpoint v4 = tinyproxy::parse_endpoint("127.0.0.1:80", ec);
    CHECK_FALSE(ec);
    CHECK(v4.address == ip_address::loopback_v4());
    CHECK(v4.port == 80);

    endpoint v6 = tinyproxy::parse_endpoint("[::1]:8080", ec);
    CHECK_FALSE(ec);
    CHECK(v6.address == ip_address::loopback_v6());
    CHECK(v6.port == 8080);

    endpoint scoped = tinyproxy::parse_endpoint("[fe80::1%2]:80", ec);
    CHECK_FALSE(ec);
    CHECK(scoped.address.is_v6());
    CHECK(scoped.address.scope_id() == 2);

    for (const char* name : {"example.com:443", "localhost:0", "1.2.3:80", "256.0.0.1:80"}) {
        INFO("input: " << name);
        (void)tinyproxy::parse_endpoint(name, ec);
        CHECK(ec == tinyproxy::errc::invalid_address);
        CHECK_THROWS_WITH_AS(tinyproxy::parse_endpoint(name),
                             doctest::Contains((std::string("'") + name + "'").c_str()),
                             std::system_error);
    }
    for (const std::string& text : bad_host_ports) {
        INFO("input: '" << text << "'");
        (void)tinyproxy::parse_endpoint(text, ec);
        CHECK(ec == tinyproxy::errc::invalid_address);
    }
}

TEST_CASE("ip_address::parse reads IPv4, IPv6 and numeric scope ids, and nothing else") {
    auto v4 = ip_address::parse("192.0.2.33");
    REQUIRE(v4);
    CHECK(v4->is_v4());
    CHECK(tptest::as_string(v4->bytes()) == std::string("\xC0\x00\x02\x21", 4));

    auto v6 = ip_address::parse("2001:db8::1");
    REQUIRE(v6);
    CHECK(v6->is_v6());
    REQUIRE(v6->bytes().size() == 16);
    CHECK(v6->bytes()[0] == 0x20);
    CHECK(v6->bytes()[1] == 0x01);
    CHECK(v6->bytes()[15] == 0x01);
    CHECK(v6->scope_id() == 0);

    auto scoped = ip_address::parse("fe80::1%42");
    REQUIRE(scoped);
    CHECK(scoped->scope_id() == 42);
    CHECK(scoped->to_string() == "fe80::1%42");

    for (const char* bad : {"", "1.2.3", "256.1.1.1", "1.2.3.4.5", "example.com", "::1::2",
                            "fe80::1%", "fe80::1%eth0", "fe80::1%-1", "fe80::1%1234567890",
                            "1.2.3.4%2", "[::1]", " 1.2.3.4", "1.2.3.4 "}) {
        INFO("input: '" << bad << "'");
        CHECK_FALSE(ip_address::parse(bad));
    }
}

TEST_CASE("ip_address::parse rejects text with an embedded NUL") {
    // inet_pton stops at the NUL: "127.0.0.1\0.evil.example" would otherwise be taken for
    // 127.0.0.1 (a host name from the wire, say a SOCKS5 domain, may hold any byte).
    using namespace std::string_view_literals;
    CHECK_FALSE(ip_address::parse("127.0.0.1\0"sv));
    CHECK_FALSE(ip_address::parse("127.0.0.1\0.evil.example"sv));
    CHECK_FALSE(ip_address::parse("::1\0junk"sv));
    CHECK_FALSE(ip_address::parse("fe80::1\0%2"sv));
    std::error_code ec;
    (void)tinyproxy::parse_host_port("127.0.0.1\0.evil.example:80"sv, ec);
    CHECK(ec == tinyproxy::errc::invalid_address);
    (void)tinyproxy::parse_endpoint("127.0.0.1\0:80"sv, ec);
    CHECK(ec == tinyproxy::errc::invalid_address);
}

TEST_CASE("is_loopback and is_unspecified") {
    for (const char* yes : {"127.0.0.1", "127.1.2.3", "127.255.255.255", "::1"}) {
        INFO(yes);
        auto a = ip_address::parse(yes);
        REQUIRE(a);
        CHECK(a->is_loopback());
    }
    for (const char* no : {"128.0.0.1", "126.255.255.255", "0.0.0.0", "10.0.0.1", "::", "::2",
                           "fe80::1", "2001:db8::1"}) {
        INFO(no);
        auto a = ip_address::parse(no);
        REQUIRE(a);
        CHECK_FALSE(a->is_loopback());
    }
    CHECK(ip_address::loopback_v4().is_loopback());
    CHECK(ip_address::loopback_v6().is_loopback());
    CHECK(ip_address().is_unspecified());
    CHECK(ip_address().is_v4());
    CHECK(ip_address::any_v6().is_unspecified());
    CHECK(ip_address::any_v6().is_v6());
    CHECK_FALSE(ip_address::loopback_v4().is_unspecified());
    CHECK_FALSE(ip_address::loopback_v6().is_unspecified());
    // The same bytes in the other family are a different address.
    CHECK(ip_address() != ip_address::any_v6());
}

TEST_CASE("endpoint and host_port to_string round-trip through the parsers") {
    for (const char* text :
         {"127.0.0.1:80", "0.0.0.0:0", "255.255.255.255:65535", "[::1]:8080", "[2001:db8::1]:443",
          "[fe80::1%2]:80", "[::]:1", "[::ffff:192.0.2.1]:9"}) {
        INFO(text);
        endpoint parsed = tinyproxy::parse_endpoint(text);
        CHECK(parsed.to_string() == text);
        CHECK(tinyproxy::parse_endpoint(parsed.to_string()) == parsed);
        host_port hp = tinyproxy::parse_host_port(text);
        CHECK(hp.to_string() == text);
    }
    // Formatting is canonical (RFC 5952), whatever the input spelled.
    CHECK(tinyproxy::parse_endpoint("[2001:0DB8:0:0:0:0:0:1]:443").to_string() ==
          "[2001:db8::1]:443");
    CHECK(host_port{"example.com", 80}.to_string() == "example.com:80");
    CHECK(host_port{"::1", 8080}.to_string() == "[::1]:8080");
    CHECK(tinyproxy::parse_host_port(host_port{"::1", 8080}.to_string()).host == "::1");
}

TEST_CASE("endpoint equality looks at family, bytes, scope and port") {
    endpoint a = tinyproxy::parse_endpoint("127.0.0.1:80");
    CHECK(a == tinyproxy::parse_endpoint("127.0.0.1:80"));
    CHECK(a != tinyproxy::parse_endpoint("127.0.0.1:81"));
    CHECK(a != tinyproxy::parse_endpoint("127.0.0.2:80"));
    CHECK(tinyproxy::parse_endpoint("[fe80::1%1]:80") != tinyproxy::parse_endpoint("[fe80::1]:80"));
}

TEST_CASE("to_sockaddr and from_sockaddr round-trip IPv4 and IPv6 endpoints") {
    sockaddr_storage storage{};
    endpoint v4 = tinyproxy::parse_endpoint("192.0.2.1:8080");
    socklen_t length = tinyproxy::to_sockaddr(v4, storage);
    REQUIRE(length == sizeof(sockaddr_in));
    sockaddr_in sin{};
    std::memcpy(&sin, &storage, sizeof sin);
    CHECK(sin.sin_family == AF_INET);
    CHECK(sin.sin_port == htons(8080));
    CHECK(std::memcmp(&sin.sin_addr, "\xC0\x00\x02\x01", 4) == 0);
    CHECK(tinyproxy::from_sockaddr(reinterpret_cast<sockaddr*>(&storage), length) == v4);

    endpoint v6 = tinyproxy::parse_endpoint("[fe80::abcd%7]:443");
    length = tinyproxy::to_sockaddr(v6, storage);
    REQUIRE(length == sizeof(sockaddr_in6));
    sockaddr_in6 sin6{};
    std::memcpy(&sin6, &storage, sizeof sin6);
    CHECK(sin6.sin6_family == AF_INET6);
    CHECK(sin6.sin6_port == htons(443));
    CHECK(sin6.sin6_scope_id == 7);
    CHECK(sin6.sin6_addr.s6_addr[0] == 0xFE);
    CHECK(sin6.sin6_addr.s6_addr[15] == 0xCD);
    endpoint back = tinyproxy::from_sockaddr(reinterpret_cast<sockaddr*>(&storage), length);
    CHECK(back == v6);
    CHECK(back.to_string() == "[fe80::abcd%7]:443");

    // Anything else comes back as the unspecified IPv4 endpoint.
    endpoint fallback{};
    CHECK(tinyproxy::from_sockaddr(nullptr, 0) == fallback);
    CHECK(tinyproxy::from_sockaddr(reinterpret_cast<sockaddr*>(&storage),
                                   sizeof(sockaddr_in6) - 1) == fallback);
    sockaddr_un unix_address{};
    unix_address.sun_family = AF_UNIX;
    CHECK(tinyproxy::from_sockaddr(reinterpret_cast<sockaddr*>(&unix_address),
                                   sizeof unix_address) == fallback);
}

TEST_CASE("resolve(localhost) gives loopback addresses with the port") {
    std::error_code ec;
    auto found = tinyproxy::resolve(host_port{"localhost", 4242}, ec);
    REQUIRE_FALSE(ec);
    REQUIRE_FALSE(found.empty());
    for (const endpoint& ep : found) {
        INFO(ep.to_string());
        CHECK(ep.address.is_loopback());
        CHECK(ep.port == 4242);
    }
    // No duplicates (getaddrinfo lists one address per socket type unless told otherwise).
    for (std::size_t i = 0; i < found.size(); ++i) {
        for (std::size_t j = i + 1; j < found.size(); ++j) {
            CHECK(found[i] != found[j]);
        }
    }
}

TEST_CASE("resolve of a numeric host gives exactly that address") {
    std::error_code ec = tinyproxy::errc::stopped; // must be cleared
    auto found = tinyproxy::resolve(host_port{"192.0.2.7", 99}, ec);
    CHECK_FALSE(ec);
    REQUIRE(found.size() == 1);
    CHECK(found[0] == tinyproxy::parse_endpoint("192.0.2.7:99"));

    found = tinyproxy::resolve(host_port{"fe80::1%3", 1});
    REQUIRE(found.size() == 1);
    CHECK(found[0].address.scope_id() == 3);
}

TEST_CASE("resolve of a name that does not exist gives name_not_resolved") {
    std::error_code ec;
    auto found = tinyproxy::resolve(host_port{"no-such-host.invalid", 80}, ec);
    CHECK(found.empty());
    CHECK(ec == tinyproxy::errc::name_not_resolved);
    CHECK_THROWS_WITH_AS(tinyproxy::resolve(host_port{"no-such-host.invalid", 80}),
                         doctest::Contains("no-such-host.invalid:80"), std::system_error);
}

TEST_CASE("error category: named tinyproxy, one object per program") {
    CHECK(std::string(tinyproxy::error_category().name()) == "tinyproxy");
    CHECK(&tinyproxy::error_category() == &tinyproxy::error_category());
    CHECK(unit_bytes_tu_error_category() == &tinyproxy::error_category());
}

TEST_CASE("error category: every errc has its own non-empty message") {
    std::set<std::string> messages;
    const std::string unknown = tinyproxy::error_category().message(0);
    int highest = 0;
    for (tinyproxy::errc e : all_errcs) {
        std::error_code ec = tinyproxy::make_error_code(e);
        INFO("errc value " << ec.value());
        CHECK(ec.value() != 0);
        CHECK_FALSE(ec.message().empty());
        CHECK(ec.message() != unknown);
        messages.insert(ec.message());
        highest = ec.value() > highest ? ec.value() : highest;
    }
    CHECK(messages.size() == sizeof all_errcs / sizeof all_errcs[0]);
    // Values are dense from 1: whatever is added later has its own message too, up to the first
    // value that has none.
    int value = 1;
    for (; value < 1000 && tinyproxy::error_category().message(value) != unknown; ++value) {
        messages.insert(tinyproxy::error_category().message(value));
    }
    CHECK(value > highest);
    CHECK(messages.size() == static_cast<std::size_t>(value - 1));
    CHECK_FALSE(unknown.empty());
}

TEST_CASE("error category: errc converts to error_code implicitly and compares") {
    static_assert(std::is_error_code_enum<tinyproxy::errc>::value, "errc is an error code enum");
    std::error_code ec = tinyproxy::errc::idle_timeout; // implicit, through is_error_code_enum
    CHECK(ec);
    CHECK(ec.category() == tinyproxy::error_category());
    CHECK(ec.value() == static_cast<int>(tinyproxy::errc::idle_timeout));
    CHECK(ec == tinyproxy::errc::idle_timeout);
    CHECK(ec != tinyproxy::errc::handshake_timeout);
    CHECK(ec == tinyproxy::make_error_code(tinyproxy::errc::idle_timeout));
    // Same number, other category: not equal.
    std::error_code system_same_value(ec.value(), std::system_category());
    CHECK(ec != system_same_value);
    CHECK(std::error_code() != tinyproxy::errc::invalid_address);
    // An error_code made by the library equals the enum it came from.
    std::error_code parse_error;
    (void)tinyproxy::parse_host_port("nonsense", parse_error);
    CHECK(parse_error == tinyproxy::errc::invalid_address);
    CHECK(parse_error.category().name() == std::string("tinyproxy"));
}

TEST_SUITE_END();

TEST_CASE("host names ending in a number inet_aton would read are refused, others are names") {
    for (const char* numeric :
         {"127.1:80", "2130706433:80", "0x7f000001:80", "10.0x1:80", "host.017:80"}) {
        CAPTURE(numeric);
        std::error_code ec;
        (void)tinyproxy::parse_host_port(numeric, ec);
        CHECK(ec == tinyproxy::errc::invalid_address);
    }
    for (const char* name : {"db1:5432", "node.dc1:22", "beef1:1", "cache2:80", "web01:80",
                             "0xgood.example:80", "example.com.:80"}) {
        CAPTURE(name);
        std::error_code ec;
        auto parsed = tinyproxy::parse_host_port(name, ec);
        CHECK_FALSE(ec);
        CHECK_FALSE(parsed.host.empty());
    }
}

TEST_CASE("ip_address::to_string writes IPv4 as inet_ntop does, without its deep stack") {
    // Every octet value in every position, against inet_ntop.
    for (unsigned position = 0; position < 4; ++position) {
        for (unsigned value = 0; value < 256; ++value) {
            std::array<std::uint8_t, 4> bytes = {1, 22, 133, 4};
            bytes[position] = static_cast<std::uint8_t>(value);
            char expected[INET_ADDRSTRLEN] = {};
            REQUIRE(::inet_ntop(AF_INET, bytes.data(), expected, sizeof expected) != nullptr);
            CHECK(tinyproxy::ip_address::v4(bytes).to_string() == expected);
        }
    }
    // glibc's inet_ntop formats with sprintf, over 2 KB of stack: the deepest call a SOCKS5
    // session made, and so a page of memory for each thread_policy session.
    auto address = tinyproxy::ip_address::v4({203, 0, 113, 255});
    std::string text;
    std::size_t used = tptest::stack_bytes_used([&] { text = address.to_string(); });
    CHECK(text == "203.0.113.255");
    CAPTURE(used);
    CHECK(used < 1024);
}
