// Unit tests for protocol/socks4.hpp, protocol/socks5.hpp and socks_mode's session: no sockets,
// only bytes. Every vector is fed whole, one byte at a time and split at every position; every
// truncation is need_more; replies are checked byte for byte; bytes pipelined after a request
// come out intact.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <cerrno>           // system error numbers, as the socket layer reports them
#include <cstddef>          // std::size_t
#include <cstdint>          // bytes
#include <initializer_list> // byte literals
#include <random>           // garbage
#include <string>           // hex dumps, names
#include <system_error>     // error codes
#include <vector>           // messages

#include <tinyproxy/tinyproxy.hpp>

#include "support/split_feed.hpp"

using tinyproxy::byte_view;
using tinyproxy::credentials;
using tinyproxy::endpoint;
using tinyproxy::errc;
using tinyproxy::handshake_step;
using tinyproxy::ip_address;
using tinyproxy::socks4_handshake;
using tinyproxy::socks5_handshake;
using tinyproxy::socks_mode;

namespace {

using bytes = std::vector<std::uint8_t>;
using action = handshake_step::action;

// --- building messages ---------------------------------------------------------------------

bytes cat(std::initializer_list<bytes> parts) {
    bytes out;
    for (const bytes& part : parts) {
        out.insert(out.end(), part.begin(), part.end());
    }
    return out;
}

bytes text(const std::string& s) { return bytes(s.begin(), s.end()); }

/// "05 00 ff": what a failing CHECK prints.
std::string hex(const bytes& b) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (std::size_t i = 0; i < b.size(); ++i) {
        if (i != 0) {
            out += ' ';
        }
        out += digits[b[i] >> 4];
        out += digits[b[i] & 0x0F];
    }
    return out;
}

/// RFC 1929 request: VER 1, ULEN, UNAME, PLEN, PASSWD.
bytes auth_request(const std::string& user, const std::string& password) {
    return cat({{0x01, static_cast<std::uint8_t>(user.size())},
                text(user),
                {static_cast<std::uint8_t>(password.size())},
                text(password)});
}

/// RFC 1928 request with ATYP 3: VER 5, CMD, RSV, 3, LEN, NAME, PORT.
bytes domain_request(const std::string& name, std::uint16_t port, std::uint8_t command = 1) {
    return cat({{0x05, command, 0x00, 0x03, static_cast<std::uint8_t>(name.size())},
                text(name),
                {static_cast<std::uint8_t>(port >> 8), static_cast<std::uint8_t>(port & 0xFF)}});
}

/// SOCKS4 request: VN 4, CD, DSTPORT, DSTIP, USERID, NUL (and for 4a HOST, NUL).
bytes socks4_request(std::uint8_t command, std::uint16_t port, bytes ip, const std::string& user,
                     const std::string* host = nullptr) {
    bytes out = cat({{0x04, command, static_cast<std::uint8_t>(port >> 8),
                      static_cast<std::uint8_t>(port & 0xFF)},
                     ip,
                     text(user),
                     {0x00}});
    if (host != nullptr) {
        out = cat({out, text(*host), {0x00}});
    }
    return out;
}

const bytes no_auth_greeting = {0x05, 0x01, 0x00};
const bytes user_pass_greeting = {0x05, 0x01, 0x02};
const bytes connect_ipv4 = {0x05, 0x01, 0x00, 0x01, 192, 0, 2, 1, 0x00, 0x50};
const bytes pipelined = text("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");

credentials alice() { return credentials{"alice", "s3cret"}; }

socks5_handshake::config with_credentials(credentials c = alice()) {
    socks5_handshake::config cfg;
    cfg.required = std::move(c);
    return cfg;
}

// --- driving a parser ----------------------------------------------------------------------

/// What a client sees of a whole handshake: everything the parser asked to send, how it ended,
/// and what goes upstream first (to_upstream, then the bytes the caller never fed because the
/// handshake had ended: a session relays those).
using outcome = tptest::handshake_run;

/// The split-feed driver's check: a doctest CHECK that names the invariant.
void expect(bool ok, const char* what) { CHECK_MESSAGE(ok, what); }

/// Feeds `message` cut at `cuts` (ascending positions), stopping at the first connect or fail,
/// with the invariants of tests/support/split_feed.hpp checked feed by feed.
template <class Parser>
outcome drive(Parser parser, const bytes& message, const tptest::cuts& cuts) {
    return tptest::drive_handshake(parser, byte_view{message.data(), message.size()}, cuts, expect);
}

/// "cut at 3 7": which cut a failing CHECK was in.
std::string describe(const tptest::cuts& cuts) {
    std::string out = "cut at";
    for (std::size_t at : cuts) {
        out += " " + std::to_string(at);
    }
    return out;
}

/// Feeds `message` whole, one byte at a time, and split in two at every position; each must
/// end the same way. Returns the outcome of the whole feed.
template <class Make>
outcome check_splits(Make make, const bytes& message) {
    outcome whole = drive(make(), message, {});
    CHECK(whole.feeds == 1);
    for (const tptest::cuts& plan : tptest::split_plans(message.size())) {
        INFO(describe(plan));
        tptest::check_same_run(drive(make(), message, plan), whole, expect);
    }
    return whole;
}

/// Every proper prefix of `message` is need_more, fed whole or one byte at a time.
template <class Make>
void check_truncations(Make make, const bytes& message) {
    for (std::size_t length = 0; length < message.size(); ++length) {
        INFO("prefix of " << length << " bytes");
        bytes prefix(message.begin(), message.begin() + static_cast<long>(length));
        CHECK(drive(make(), prefix, {}).what == action::need_more);
        CHECK(drive(make(), prefix, tptest::every_byte(length)).what == action::need_more);
    }
}

auto socks5_plain = [] { return socks5_handshake(); };
auto socks5_auth = [] { return socks5_handshake(with_credentials()); };
auto socks4_default = [] { return socks4_handshake(); };

/// Feeds random bytes in random pieces: never a crash, small replies, need_more until the end.
template <class Make>
void feed_garbage(Make make, const bytes& prefix, std::uint32_t seed, int rounds) {
    std::mt19937 random(seed); // 32-bit values in a wider result_type
    for (int round = 0; round < rounds; ++round) {
        bytes input = prefix;
        std::size_t length = random() % 600;
        for (std::size_t i = 0; i < length; ++i) {
            // Mostly small values, so that versions, lengths and types are hit often.
            auto r = static_cast<std::uint32_t>(random());
            input.push_back(static_cast<std::uint8_t>(r % 4 == 0 ? r >> 8 : (r >> 8) % 8));
        }
        auto parser = make();
        std::size_t at = 0;
        bool ended = false;
        while (at < input.size() && !ended) {
            std::size_t piece = 1 + random() % 64;
            piece = piece > input.size() - at ? input.size() - at : piece;
            handshake_step step = parser.feed(byte_view{input.data() + at, piece});
            at += piece;
            REQUIRE(step.to_client.size() <= 64);
            if (step.what == action::connect) {
                REQUIRE(step.to_upstream.size() <= piece);
                REQUIRE(step.target.port != 0);
                REQUIRE(!step.target.host.empty());
                ended = true;
            } else if (step.what == action::fail) {
                REQUIRE(step.error);
                ended = true;
            } else {
                REQUIRE(step.to_upstream.empty());
            }
        }
        REQUIRE(parser.finished() == ended);
    }
}

} // namespace

TEST_SUITE_BEGIN("socks");

// --- SOCKS5: the RFC 1928 vectors ----------------------------------------------------------

TEST_CASE("socks5 no-auth greeting then CONNECT to an IPv4 address") {
    outcome o = check_splits(socks5_plain, cat({no_auth_greeting, connect_ipv4}));
    CHECK(o.what == action::connect);
    CHECK(hex(o.to_client) == "05 00"); // method selection: NO AUTHENTICATION REQUIRED
    CHECK(o.target.host == "192.0.2.1");
    CHECK(o.target.port == 80);
    CHECK(o.upstream.empty());
}

TEST_CASE("socks5 CONNECT to an IPv6 address") {
    bytes request = {0x05, 0x01, 0x00, 0x04, 0x20, 0x01, 0x0d, 0xb8, 0,    0,    0,
                     0,    0,    0,    0,    0,    0,    0,    0,    0x01, 0x01, 0xBB};
    outcome o = check_splits(socks5_plain, cat({no_auth_greeting, request}));
    CHECK(o.what == action::connect);
    CHECK(o.target.host == "2001:db8::1");
    CHECK(o.target.port == 443);
    CHECK(o.target.to_string() == "[2001:db8::1]:443");
}

TEST_CASE("socks5 CONNECT to a domain name passes the name through as given") {
    outcome o =
        check_splits(socks5_plain, cat({no_auth_greeting, domain_request("example.com", 80)}));
    CHECK(o.what == action::connect);
    CHECK(o.target.host == "example.com");
    CHECK(o.target.port == 80);
    CHECK(hex(o.to_client) == "05 00");
}

TEST_CASE("socks5 picks NO AUTH among several offered methods, and ignores RSV") {
    bytes greeting = {0x05, 0x03, 0x01, 0x02, 0x00};
    bytes request = connect_ipv4;
    request[2] = 0xFF; // RSV
    outcome o = check_splits(socks5_plain, cat({greeting, request}));
    CHECK(o.what == action::connect);
    CHECK(hex(o.to_client) == "05 00");
}

TEST_CASE("socks5 answers the method selection only once the whole methods list is in") {
    socks5_handshake parser;
    handshake_step step = parser.feed(bytes{0x05, 0x03, 0x01});
    CHECK(step.what == action::need_more);
    CHECK(step.to_client.empty());
    step = parser.feed(bytes{0x02});
    CHECK(step.to_client.empty());
    step = parser.feed(bytes{0x00});
    CHECK(step.what == action::need_more);
    CHECK(hex(step.to_client) == "05 00");
}

// --- SOCKS5: RFC 1929 username/password --------------------------------------------------------

TEST_CASE("socks5 username and password exchange, one message at a time like a real client") {
    socks5_handshake parser(with_credentials());
    handshake_step step = parser.feed(bytes{0x05, 0x02, 0x00, 0x02});
    CHECK(step.what == action::need_more);
    CHECK(hex(step.to_client) == "05 02"); // USERNAME/PASSWORD
    step = parser.feed(auth_request("alice", "s3cret"));
    CHECK(step.what == action::need_more);
    CHECK(hex(step.to_client) == "01 00"); // success
    step = parser.feed(connect_ipv4);
    CHECK(step.what == action::connect);
    CHECK(step.to_client.empty());
    CHECK(step.target.to_string() == "192.0.2.1:80");
}

TEST_CASE("socks5 username and password exchange pipelined, in every split") {
    outcome o = check_splits(
        socks5_auth, cat({user_pass_greeting, auth_request("alice", "s3cret"), connect_ipv4}));
    CHECK(o.what == action::connect);
    CHECK(hex(o.to_client) == "05 02 01 00");
    CHECK(o.target.to_string() == "192.0.2.1:80");
}

TEST_CASE("socks5 credentials of 255 bytes each, the largest message, in every split") {
    std::string user(255, 'u');
    std::string password(255, 'p');
    auto make = [&] { return socks5_handshake(with_credentials({user, password})); };
    bytes auth = auth_request(user, password);
    CHECK(auth.size() == socks5_handshake::max_message_size);
    outcome o = check_splits(make, cat({user_pass_greeting, auth, connect_ipv4}));
    CHECK(o.what == action::connect);
    CHECK(hex(o.to_client) == "05 02 01 00");
}

TEST_CASE("socks5 accepts an empty password when that is the configured one") {
    auto make = [] { return socks5_handshake(with_credentials({"bob", ""})); };
    outcome o =
        check_splits(make, cat({user_pass_greeting, auth_request("bob", ""), connect_ipv4}));
    CHECK(o.what == action::connect);
    CHECK(hex(o.to_client) == "05 02 01 00");
}

TEST_CASE("socks5 bad credentials get status 1 and fail with auth_failed") {
    const std::pair<std::string, std::string> wrong[] = {
        {"alice", "s3cre"},   {"alice", "s3cret!"}, {"alice", "S3cret"}, {"alic", "s3cret"},
        {"alice2", "s3cret"}, {"", "s3cret"},       {"alice", ""},       {"", ""},
        {"s3cret", "alice"},
    };
    for (const auto& pair : wrong) {
        INFO(pair.first << ":" << pair.second);
        outcome o = check_splits(
            socks5_auth,
            cat({user_pass_greeting, auth_request(pair.first, pair.second), connect_ipv4}));
        CHECK(o.what == action::fail);
        CHECK(o.error == errc::auth_failed);
        CHECK(hex(o.to_client) == "05 02 01 01");
    }
}

TEST_CASE("socks5 an RFC 1929 request in another version fails with status 1") {
    bytes auth = auth_request("alice", "s3cret");
    auth[0] = 0x05;
    outcome o = check_splits(socks5_auth, cat({user_pass_greeting, auth}));
    CHECK(o.what == action::fail);
    CHECK(o.error == errc::unsupported_version);
    CHECK(hex(o.to_client) == "05 02 01 01");
}

// --- SOCKS5: bytes after the request -----------------------------------------------------------

TEST_CASE("socks5 bytes pipelined after the request come out intact in to_upstream") {
    SUBCASE("no auth, IPv4") {
        outcome o = check_splits(socks5_plain, cat({no_auth_greeting, connect_ipv4, pipelined}));
        CHECK(o.what == action::connect);
        CHECK(hex(o.upstream) == hex(pipelined));
    }
    SUBCASE("with auth, domain name") {
        outcome o =
            check_splits(socks5_auth, cat({user_pass_greeting, auth_request("alice", "s3cret"),
                                           domain_request("example.com", 8080), pipelined}));
        CHECK(o.what == action::connect);
        CHECK(o.target.to_string() == "example.com:8080");
        CHECK(hex(o.upstream) == hex(pipelined));
    }
    SUBCASE("in the same feed as the request: exactly the bytes after it") {
        socks5_handshake parser;
        CHECK(parser.feed(no_auth_greeting).what == action::need_more);
        bytes payload(70'000, 0);
        for (std::size_t i = 0; i < payload.size(); ++i) {
            payload[i] = static_cast<std::uint8_t>(i * 7 + 3); // NULs and all
        }
        handshake_step step = parser.feed(cat({connect_ipv4, payload}));
        CHECK(step.what == action::connect);
        CHECK(step.to_upstream == payload);
        CHECK(step.to_client.empty());
    }
    SUBCASE("a request split across feeds, the data in the last one") {
        socks5_handshake parser;
        bytes all = cat({no_auth_greeting, connect_ipv4, pipelined});
        CHECK(parser.feed(byte_view{all.data(), 7}).what == action::need_more);
        handshake_step step = parser.feed(byte_view{all.data() + 7, all.size() - 7});
        CHECK(step.what == action::connect);
        CHECK(hex(step.to_upstream) == hex(pipelined));
    }
}

// --- SOCKS5: truncations -----------------------------------------------------------------------

TEST_CASE("socks5 every truncation of a valid exchange is need_more") {
    SUBCASE("no auth, IPv4") {
        check_truncations(socks5_plain, cat({no_auth_greeting, connect_ipv4}));
    }
    SUBCASE("no auth, domain of 255 bytes") {
        check_truncations(socks5_plain,
                          cat({no_auth_greeting, domain_request(std::string(255, 'a'), 443)}));
    }
    SUBCASE("username and password, IPv6") {
        bytes request = {0x05, 0x01, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0,
                         0,    0,    0,    0,    0, 0, 0, 0, 1, 0, 0x16};
        check_truncations(socks5_auth,
                          cat({user_pass_greeting, auth_request("alice", "s3cret"), request}));
    }
}

// --- SOCKS5: replies ---------------------------------------------------------------------------

TEST_CASE("socks5 success replies carry the bound IPv4 or IPv6 address and port") {
    socks5_handshake parser;
    endpoint v4{ip_address::v4({10, 1, 2, 3}), 0xC350};
    CHECK(hex(parser.connected(v4)) == "05 00 00 01 0a 01 02 03 c3 50");
    endpoint v6{ip_address::v6({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42}),
                1080};
    CHECK(hex(parser.connected(v6)) ==
          "05 00 00 04 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 42 04 38");
}

TEST_CASE("socks5 reply_code maps every error to its REP code, and failed() carries it") {
    struct mapping {
        std::error_code why;
        std::uint8_t rep;
    };
    const mapping table[] = {
        {make_error_code(errc::not_allowed), 0x02},
        {std::error_code(ENETUNREACH, std::system_category()), 0x03},
        {std::make_error_code(std::errc::network_unreachable), 0x03},
        {std::error_code(ENETDOWN, std::system_category()), 0x03},
        {std::error_code(EHOSTUNREACH, std::system_category()), 0x04},
        {make_error_code(errc::name_not_resolved), 0x04},
        {std::error_code(ECONNREFUSED, std::system_category()), 0x05},
        {std::make_error_code(std::errc::connection_refused), 0x05},
        {make_error_code(errc::connect_timeout), 0x06},
        {std::error_code(ETIMEDOUT, std::system_category()), 0x06},
        {make_error_code(errc::unsupported_command), 0x07},
        {make_error_code(errc::unsupported_address_type), 0x08},
        {make_error_code(errc::protocol_error), 0x01},
        {make_error_code(errc::invalid_address), 0x01},
        {std::error_code(ECONNRESET, std::system_category()), 0x01},
        {std::error_code(), 0x01}, // never "succeeded" from a failure path
    };
    socks5_handshake parser;
    for (const mapping& m : table) {
        INFO(m.why.message());
        CHECK(int(socks5_handshake::reply_code(m.why)) == int(m.rep));
        bytes expected = {0x05, m.rep, 0x00, 0x01, 0, 0, 0, 0, 0, 0};
        CHECK(hex(parser.failed(m.why)) == hex(expected));
    }
}

// --- SOCKS5: malformed input -------------------------------------------------------------------

TEST_CASE("socks5 a first byte other than 5 fails at once with unsupported_version") {
    for (std::uint8_t first : bytes{0x04, 0x00, 0x01, 0x06, 0x47, 0xFF}) {
        socks5_handshake parser;
        handshake_step step = parser.feed(bytes{first});
        CHECK(step.what == action::fail);
        CHECK(step.error == errc::unsupported_version);
        CHECK(step.to_client.empty());
    }
    outcome o = check_splits(socks5_plain, bytes{0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1, 0x00});
    CHECK(o.error == errc::unsupported_version);
}

TEST_CASE("socks5 NMETHODS = 0 fails with {5, 0xFF}") {
    outcome o = check_splits(socks5_plain, bytes{0x05, 0x00});
    CHECK(o.what == action::fail);
    CHECK(o.error == errc::no_acceptable_method);
    CHECK(hex(o.to_client) == "05 ff");
}

TEST_CASE("socks5 no acceptable method fails with {5, 0xFF}") {
    SUBCASE("no credentials configured, the client offers only USERNAME/PASSWORD and GSSAPI") {
        outcome o = check_splits(socks5_plain, cat({bytes{0x05, 0x02, 0x02, 0x01}, connect_ipv4}));
        CHECK(o.what == action::fail);
        CHECK(o.error == errc::no_acceptable_method);
        CHECK(hex(o.to_client) == "05 ff");
    }
    SUBCASE("credentials configured, the client offers only NO AUTH") {
        outcome o = check_splits(socks5_auth, cat({no_auth_greeting, connect_ipv4}));
        CHECK(o.what == action::fail);
        CHECK(o.error == errc::no_acceptable_method);
        CHECK(hex(o.to_client) == "05 ff");
    }
}

TEST_CASE("socks5 BIND, UDP ASSOCIATE and unknown commands get REP 0x07") {
    for (std::uint8_t command : bytes{0x02, 0x03, 0x00, 0x04, 0xFF}) {
        INFO("CMD " << int(command));
        bytes request = connect_ipv4;
        request[1] = command;
        outcome o = check_splits(socks5_plain, cat({no_auth_greeting, request, pipelined}));
        CHECK(o.what == action::fail);
        CHECK(o.error == errc::unsupported_command);
        CHECK(hex(o.to_client) == "05 00 05 07 00 01 00 00 00 00 00 00");
    }
}

TEST_CASE("socks5 an unknown ATYP gets REP 0x08 as soon as it arrives") {
    for (std::uint8_t atyp : bytes{0x02, 0x00, 0x05, 0xFF}) {
        INFO("ATYP " << int(atyp));
        socks5_handshake parser;
        CHECK(parser.feed(no_auth_greeting).what == action::need_more);
        handshake_step step = parser.feed(bytes{0x05, 0x01, 0x00, atyp});
        CHECK(step.what == action::fail);
        CHECK(step.error == errc::unsupported_address_type);
        CHECK(hex(step.to_client) == "05 08 00 01 00 00 00 00 00 00");
    }
}

TEST_CASE("socks5 a request in another version fails with REP 0x01") {
    bytes request = connect_ipv4;
    request[0] = 0x04;
    outcome o = check_splits(socks5_plain, cat({no_auth_greeting, request}));
    CHECK(o.what == action::fail);
    CHECK(o.error == errc::unsupported_version);
    CHECK(hex(o.to_client) == "05 00 05 01 00 01 00 00 00 00 00 00");
}

TEST_CASE("socks5 a domain length of 255 is valid and passed through whole") {
    std::string name(251, 'a');
    name += ".com"; // 255 bytes: longer than DNS allows, but the protocol's limit
    outcome o =
        check_splits(socks5_plain, cat({no_auth_greeting, domain_request(name, 443), pipelined}));
    CHECK(o.what == action::connect);
    CHECK(o.target.host == name);
    CHECK(o.target.host.size() == 255);
    CHECK(o.target.port == 443);
    CHECK(hex(o.upstream) == hex(pipelined));
}

TEST_CASE("socks5 an empty domain name or one with control characters gets REP 0x04") {
    const std::string names[] = {std::string(),   std::string("a\0b", 3),
                                 "example.com\n", std::string("\0", 1),
                                 "tab\there",     "del\x7f"};
    for (const std::string& name : names) {
        INFO("name of " << name.size() << " bytes");
        outcome o = check_splits(socks5_plain, cat({no_auth_greeting, domain_request(name, 80)}));
        CHECK(o.what == action::fail);
        CHECK(o.error == errc::name_not_resolved);
        CHECK(hex(o.to_client) == "05 00 05 04 00 01 00 00 00 00 00 00");
    }
}

TEST_CASE("socks5 port 0 gets REP 0x01 (general failure)") {
    bytes request = connect_ipv4;
    request[8] = 0;
    request[9] = 0;
    outcome o = check_splits(socks5_plain, cat({no_auth_greeting, request}));
    CHECK(o.what == action::fail);
    CHECK(o.error == errc::invalid_address);
    CHECK(hex(o.to_client) == "05 00 05 01 00 01 00 00 00 00 00 00");
    o = check_splits(socks5_plain, cat({no_auth_greeting, domain_request("example.com", 0)}));
    CHECK(o.error == errc::invalid_address);
}

TEST_CASE("socks5 a feed after connect or fail answers protocol_error and sends nothing") {
    socks5_handshake parser;
    CHECK(parser.feed(cat({no_auth_greeting, connect_ipv4})).what == action::connect);
    for (int i = 0; i < 3; ++i) {
        handshake_step step = parser.feed(connect_ipv4);
        CHECK(step.what == action::fail);
        CHECK(step.error == errc::protocol_error);
        CHECK(step.to_client.empty());
        CHECK(step.to_upstream.empty());
    }
    socks5_handshake failed;
    CHECK(failed.feed(bytes{0x05, 0x00}).what == action::fail);
    CHECK(failed.feed(cat({no_auth_greeting, connect_ipv4})).error == errc::protocol_error);
    CHECK(failed.feed(bytes{}).error == errc::protocol_error);
}

TEST_CASE("socks5 empty feeds change nothing") {
    socks5_handshake parser;
    CHECK(parser.feed(bytes{}).what == action::need_more);
    CHECK(parser.feed(bytes{0x05}).what == action::need_more);
    CHECK(parser.feed(bytes{}).what == action::need_more);
    CHECK(hex(parser.feed(bytes{0x01, 0x00}).to_client) == "05 00");
    CHECK(parser.feed(bytes{}).to_client.empty());
    CHECK(parser.feed(connect_ipv4).what == action::connect);
}

TEST_CASE("socks5 random garbage never crashes, with and without credentials") {
    feed_garbage(socks5_plain, {}, 1, 3000);
    feed_garbage(socks5_auth, {}, 2, 3000);
    feed_garbage(socks5_plain, no_auth_greeting, 3, 3000);
    feed_garbage(socks5_auth, cat({user_pass_greeting, auth_request("alice", "s3cret")}), 4, 3000);
    feed_garbage(socks5_plain, cat({no_auth_greeting, bytes{0x05, 0x01, 0x00, 0x03}}), 5, 3000);
}

// --- SOCKS4 and SOCKS4a ------------------------------------------------------------------------

TEST_CASE("socks4 CONNECT to an IPv4 address with a user id") {
    outcome o = check_splits(socks4_default, socks4_request(1, 80, {192, 0, 2, 1}, "alice"));
    CHECK(o.what == action::connect);
    CHECK(o.target.to_string() == "192.0.2.1:80");
    CHECK(o.to_client.empty()); // the reply comes from connected() once the upstream answered
    CHECK(o.upstream.empty());
    socks4_handshake parser;
    CHECK(parser.feed(socks4_request(1, 80, {192, 0, 2, 1}, "alice")).what == action::connect);
    CHECK(parser.user_id() == "alice");
}

TEST_CASE("socks4 CONNECT with an empty user id") {
    outcome o = check_splits(socks4_default, socks4_request(1, 8080, {127, 0, 0, 1}, ""));
    CHECK(o.what == action::connect);
    CHECK(o.target.to_string() == "127.0.0.1:8080");
}

TEST_CASE("socks4a CONNECT to a host name after the user id") {
    std::string host = "example.com";
    outcome o = check_splits(socks4_default, socks4_request(1, 443, {0, 0, 0, 1}, "bob", &host));
    CHECK(o.what == action::connect);
    CHECK(o.target.to_string() == "example.com:443");
    CHECK(o.to_client.empty());
    o = check_splits(socks4_default, socks4_request(1, 443, {0, 0, 0, 255}, "", &host));
    CHECK(o.target.to_string() == "example.com:443");
}

TEST_CASE("socks4 DSTIP 0.0.0.0 is not SOCKS4a: what follows the user id goes upstream") {
    outcome o =
        check_splits(socks4_default,
                     cat({socks4_request(1, 80, {0, 0, 0, 0}, ""), text("example.com"), {0x00}}));
    CHECK(o.what == action::connect);
    CHECK(o.target.host == "0.0.0.0");
    CHECK(hex(o.upstream) == hex(cat({text("example.com"), {0x00}})));
}

TEST_CASE("socks4 and socks4a bytes pipelined after the request come out intact") {
    std::string host = "example.org";
    outcome o = check_splits(socks4_default,
                             cat({socks4_request(1, 80, {10, 0, 0, 1}, "u", nullptr), pipelined}));
    CHECK(o.what == action::connect);
    CHECK(hex(o.upstream) == hex(pipelined));
    o = check_splits(socks4_default,
                     cat({socks4_request(1, 80, {0, 0, 0, 7}, "u", &host), pipelined}));
    CHECK(o.what == action::connect);
    CHECK(o.target.host == "example.org");
    CHECK(hex(o.upstream) == hex(pipelined));

    socks4_handshake parser;
    bytes payload(70'000, 0); // NULs in the data must not be taken for the request's
    handshake_step step = parser.feed(cat({socks4_request(1, 80, {10, 0, 0, 1}, "u"), payload}));
    CHECK(step.what == action::connect);
    CHECK(step.to_upstream == payload);
}

TEST_CASE("socks4 every truncation of a valid request is need_more") {
    std::string host = "example.com";
    check_truncations(socks4_default, socks4_request(1, 80, {192, 0, 2, 1}, "alice"));
    check_truncations(socks4_default, socks4_request(1, 80, {0, 0, 0, 1}, "alice", &host));
    check_truncations(socks4_default, socks4_request(1, 80, {0, 0, 0, 1}, "", &host));
}

TEST_CASE("socks4 replies: 0x5A with the bound IPv4 address and port, 0x5B on failure") {
    socks4_handshake parser;
    CHECK(hex(parser.connected(endpoint{ip_address::v4({10, 1, 2, 3}), 0xC350})) ==
          "00 5a c3 50 0a 01 02 03");
    CHECK(hex(parser.connected(endpoint{ip_address::loopback_v6(), 1080})) ==
          "00 5a 04 38 00 00 00 00");
    CHECK(hex(parser.failed(make_error_code(errc::connect_timeout))) == "00 5b 00 00 00 00 00 00");
    CHECK(hex(parser.failed(std::error_code(ECONNREFUSED, std::system_category()))) ==
          "00 5b 00 00 00 00 00 00");
}

TEST_CASE("socks4 a first byte other than 4 fails at once and sends nothing") {
    for (std::uint8_t first : bytes{0x05, 0x00, 0x03, 0x47}) {
        socks4_handshake parser;
        handshake_step step = parser.feed(bytes{first});
        CHECK(step.what == action::fail);
        CHECK(step.error == errc::unsupported_version);
        CHECK(step.to_client.empty());
    }
}

TEST_CASE("socks4 BIND and unknown commands fail with 0x5B once the request is in") {
    std::string host = "example.com";
    for (std::uint8_t command : bytes{0x02, 0x00, 0x03, 0xFF}) {
        INFO("CD " << int(command));
        outcome o = check_splits(socks4_default, socks4_request(command, 21, {192, 0, 2, 1}, "u"));
        CHECK(o.what == action::fail);
        CHECK(o.error == errc::unsupported_command);
        CHECK(hex(o.to_client) == "00 5b 00 00 00 00 00 00");
        o = check_splits(socks4_default, socks4_request(command, 21, {0, 0, 0, 1}, "u", &host));
        CHECK(o.error == errc::unsupported_command);
    }
    socks4_handshake parser; // not before: the user id is still to come
    CHECK(parser.feed(bytes{0x04, 0x02, 0x00, 0x15, 1, 2, 3, 4}).what == action::need_more);
}

TEST_CASE("socks4 port 0 fails with 0x5B") {
    outcome o = check_splits(socks4_default, socks4_request(1, 0, {192, 0, 2, 1}, ""));
    CHECK(o.what == action::fail);
    CHECK(o.error == errc::invalid_address);
    CHECK(hex(o.to_client) == "00 5b 00 00 00 00 00 00");
}

TEST_CASE("socks4 a user id of exactly the bound is fine, one byte more fails") {
    outcome o =
        check_splits(socks4_default, socks4_request(1, 80, {10, 0, 0, 1}, std::string(255, 'x')));
    CHECK(o.what == action::connect);
    o = check_splits(socks4_default, socks4_request(1, 80, {10, 0, 0, 1}, std::string(256, 'x')));
    CHECK(o.what == action::fail);
    CHECK(o.error == errc::message_too_large);
    CHECK(hex(o.to_client) == "00 5b 00 00 00 00 00 00");

    socks4_handshake::config small;
    small.max_user_id = 4;
    auto make = [small] { return socks4_handshake(small); };
    CHECK(check_splits(make, socks4_request(1, 80, {10, 0, 0, 1}, "abcd")).what == action::connect);
    CHECK(check_splits(make, socks4_request(1, 80, {10, 0, 0, 1}, "abcde")).error ==
          errc::message_too_large);
}

TEST_CASE("socks4 a 64 KiB user id with no NUL fails as soon as the bound is passed") {
    bytes request = {0x04, 0x01, 0x00, 0x50, 10, 0, 0, 1};
    request.resize(request.size() + 64 * 1024, 'x');

    SUBCASE("one byte at a time: the feed that passes the bound fails") {
        socks4_handshake parser;
        std::size_t fed = 0;
        handshake_step step;
        while (fed < request.size()) {
            step = parser.feed(byte_view{request.data() + fed, 1});
            ++fed;
            if (step.what != action::need_more) {
                break;
            }
        }
        CHECK(step.what == action::fail);
        CHECK(step.error == errc::message_too_large);
        CHECK(fed == 8 + 255 + 1);
        CHECK(parser.user_id().size() <= 255);
    }
    SUBCASE("in 4 KiB pieces: the first piece fails") {
        socks4_handshake parser;
        handshake_step step = parser.feed(byte_view{request.data(), 4096});
        CHECK(step.what == action::fail);
        CHECK(step.error == errc::message_too_large);
        CHECK(parser.user_id().size() <= 255);
    }
    SUBCASE("whole: nothing of it is stored") {
        socks4_handshake parser;
        handshake_step step = parser.feed(request);
        CHECK(step.what == action::fail);
        CHECK(hex(step.to_client) == "00 5b 00 00 00 00 00 00");
        CHECK(parser.user_id().size() <= 255);
    }
}

TEST_CASE("socks4a a host name past its bound fails, and empty or control characters too") {
    std::string longest(255, 'h');
    std::string too_long(256, 'h');
    outcome o = check_splits(socks4_default, socks4_request(1, 80, {0, 0, 0, 1}, "u", &longest));
    CHECK(o.what == action::connect);
    CHECK(o.target.host == longest);
    o = check_splits(socks4_default, socks4_request(1, 80, {0, 0, 0, 1}, "u", &too_long));
    CHECK(o.what == action::fail);
    CHECK(o.error == errc::message_too_large);
    CHECK(hex(o.to_client) == "00 5b 00 00 00 00 00 00");

    // 64 KiB of host name with no NUL: fails on the first piece, like the user id.
    socks4_handshake parser;
    bytes request = socks4_request(1, 80, {0, 0, 0, 1}, "u");
    request.resize(request.size() + 64 * 1024, 'h');
    CHECK(parser.feed(byte_view{request.data(), 1024}).error == errc::message_too_large);

    socks4_handshake::config small;
    small.max_host_name = 11;
    std::string host = "example.com";
    std::string longer = "example.comm";
    auto make = [small] { return socks4_handshake(small); };
    CHECK(check_splits(make, socks4_request(1, 80, {0, 0, 0, 1}, "", &host)).what ==
          action::connect);
    CHECK(check_splits(make, socks4_request(1, 80, {0, 0, 0, 1}, "", &longer)).error ==
          errc::message_too_large);

    for (const std::string& bad : {std::string(), std::string("a\nb"), std::string("\x01")}) {
        o = check_splits(socks4_default, socks4_request(1, 80, {0, 0, 0, 1}, "u", &bad));
        CHECK(o.what == action::fail);
        CHECK(o.error == errc::name_not_resolved);
        CHECK(hex(o.to_client) == "00 5b 00 00 00 00 00 00");
    }
}

TEST_CASE("socks4 a feed after connect or fail answers protocol_error and sends nothing") {
    socks4_handshake parser;
    CHECK(parser.feed(socks4_request(1, 80, {10, 0, 0, 1}, "")).what == action::connect);
    handshake_step step = parser.feed(bytes{0x04});
    CHECK(step.what == action::fail);
    CHECK(step.error == errc::protocol_error);
    CHECK(step.to_client.empty());
    socks4_handshake failed;
    CHECK(failed.feed(bytes{0x05}).what == action::fail);
    CHECK(failed.feed(socks4_request(1, 80, {10, 0, 0, 1}, "")).error == errc::protocol_error);
}

TEST_CASE("socks4 random garbage never crashes") {
    feed_garbage(socks4_default, {}, 11, 3000);
    feed_garbage(socks4_default, {0x04, 0x01}, 12, 3000);
    feed_garbage(socks4_default, {0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1}, 13, 3000);
    socks4_handshake::config tiny;
    tiny.max_user_id = 2;
    tiny.max_host_name = 3;
    feed_garbage([tiny] { return socks4_handshake(tiny); }, {0x04, 0x01, 0x00, 0x50, 0, 0, 0, 9},
                 14, 3000);
}

// --- socks_mode: the session a proxy holds -----------------------------------------------------

TEST_CASE("socks_mode a held SOCKS session costs no more than a forwarded one") {
    // A session lives as long as its tunnel: parsers kept in it after the handshake (a SOCKS5 one
    // buffers a whole 513-byte message) would cost every held SOCKS tunnel ~700 bytes more than a
    // forwarded one (per-connection memory, bench/run.sh's KB per idle connection).
    using tinyproxy::basic_session;
    CHECK(sizeof(basic_session<socks_mode::session>) <=
          sizeof(basic_session<tinyproxy::forward_mode::session>) + 32);
}

TEST_CASE("socks_mode SOCKS5: the reply after connecting, then any feed is protocol_error") {
    socks_mode mode;
    const endpoint bound{ip_address::v4({10, 1, 2, 3}), 0xC350};
    const bytes handshake = cat({no_auth_greeting, connect_ipv4, pipelined});
    for (bool refused : {false, true}) {
        INFO((refused ? "refused" : "connected"));
        socks_mode::session session = mode.make_session({});
        CHECK(session.start().what == action::need_more);
        // The first byte alone picks the version; the rest goes to the parser it picked.
        CHECK(session.on_client_data(byte_view{handshake.data(), 1}).what == action::need_more);
        handshake_step step =
            session.on_client_data(byte_view{handshake.data() + 1, handshake.size() - 1});
        REQUIRE(step.what == action::connect);
        CHECK(step.target.to_string() == "192.0.2.1:80");
        CHECK(hex(step.to_client) == "05 00");
        CHECK(hex(step.to_upstream) == hex(pipelined));
        std::error_code result;
        if (refused) {
            result = std::error_code(ECONNREFUSED, std::system_category());
        }
        CHECK(hex(session.on_connected(result, refused ? endpoint{} : bound, {})) ==
              (refused ? "05 05 00 01 00 00 00 00 00 00" : "05 00 00 01 0a 01 02 03 c3 50"));
        handshake_step after = session.on_client_data(no_auth_greeting);
        CHECK(after.what == action::fail);
        CHECK(after.error == errc::protocol_error);
        CHECK(after.to_client.empty());
    }
}

TEST_CASE("socks_mode SOCKS4: the reply after connecting, then any feed is protocol_error") {
    socks_mode mode;
    const endpoint bound{ip_address::v4({10, 1, 2, 3}), 0xC350};
    for (bool refused : {false, true}) {
        INFO((refused ? "refused" : "connected"));
        socks_mode::session session = mode.make_session({});
        handshake_step step = session.on_client_data(socks4_request(1, 80, {192, 0, 2, 1}, "bob"));
        REQUIRE(step.what == action::connect);
        CHECK(step.target.to_string() == "192.0.2.1:80");
        CHECK(step.to_client.empty());
        std::error_code result;
        if (refused) {
            result = make_error_code(errc::connect_timeout);
        }
        CHECK(hex(session.on_connected(result, refused ? endpoint{} : bound, {})) ==
              (refused ? "00 5b 00 00 00 00 00 00" : "00 5a c3 50 0a 01 02 03"));
        handshake_step after = session.on_client_data(bytes{0x04});
        CHECK(after.what == action::fail);
        CHECK(after.error == errc::protocol_error);
        CHECK(after.to_client.empty());
    }
}

TEST_CASE("socks_mode with credentials refuses SOCKS4 with 0x5B and takes nothing more") {
    socks_mode::config cfg;
    cfg.required = alice();
    socks_mode mode(cfg);
    socks_mode::session session = mode.make_session({});
    handshake_step step = session.on_client_data(socks4_request(1, 80, {192, 0, 2, 1}, "alice"));
    CHECK(step.what == action::fail);
    CHECK(step.error == errc::auth_failed);
    CHECK(hex(step.to_client) == "00 5b 00 00 00 00 00 00");
    CHECK(session.on_client_data(socks4_request(1, 80, {192, 0, 2, 1}, "alice")).error ==
          errc::protocol_error);
}

// --- BIND and UDP ASSOCIATE, when accepted ---------------------------------------------------

namespace {

socks5_handshake::config accepting_all() {
    socks5_handshake::config cfg;
    cfg.accept_bind = true;
    cfg.accept_udp_associate = true;
    return cfg;
}

auto socks5_accepting = [] { return socks5_handshake(accepting_all()); };

/// The step a whole feed of `message` ends with (what check_splits does not keep: its kind).
template <class Parser>
handshake_step whole_step(Parser parser, const bytes& message) {
    return parser.feed(byte_view{message.data(), message.size()});
}

} // namespace

TEST_CASE("socks5 BIND, when accepted, asks for a listener for the expected peer") {
    using request = handshake_step::request;
    bytes request_v4 = {0x05, 0x02, 0x00, 0x01, 192, 0, 2, 1, 0x00, 0x15};
    outcome o = check_splits(socks5_accepting, cat({no_auth_greeting, request_v4, pipelined}));
    CHECK(o.what == action::connect);
    CHECK(o.target.host == "192.0.2.1");
    CHECK(o.target.port == 21);
    CHECK(o.upstream == pipelined);
    handshake_step step =
        whole_step(socks5_handshake(accepting_all()), cat({no_auth_greeting, request_v4}));
    CHECK(step.kind == request::bind);
    CHECK(hex(step.to_client) == "05 00");

    SUBCASE("port 0 is allowed: the client seldom knows the peer's port") {
        bytes zero_port = request_v4;
        zero_port[8] = 0;
        zero_port[9] = 0;
        o = check_splits(socks5_accepting, cat({no_auth_greeting, zero_port}));
        CHECK(o.what == action::connect);
        CHECK(o.target.port == 0);
    }
    SUBCASE("IPv6 and a name, too") {
        bytes v6 = {0x05, 0x02, 0x00, 0x04, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0,
                    0,    0,    0,    0,    0,    0,    0,    0,    1, 0, 0};
        step = whole_step(socks5_handshake(accepting_all()), cat({no_auth_greeting, v6}));
        CHECK(step.kind == request::bind);
        CHECK(step.target.host == "2001:db8::1");
        step = whole_step(socks5_handshake(accepting_all()),
                          cat({no_auth_greeting, domain_request("ftp.example", 20, 0x02)}));
        CHECK(step.kind == request::bind);
        CHECK(step.target.host == "ftp.example");
    }
    SUBCASE("with credentials, only after them") {
        socks5_handshake::config cfg = accepting_all();
        cfg.required = alice();
        auto make = [cfg] { return socks5_handshake(cfg); };
        o = check_splits(make,
                         cat({user_pass_greeting, auth_request("alice", "s3cret"), request_v4}));
        CHECK(o.what == action::connect);
        o = check_splits(make,
                         cat({user_pass_greeting, auth_request("alice", "wrong"), request_v4}));
        CHECK(o.what == action::fail);
        CHECK(o.error == errc::auth_failed);
    }
}

TEST_CASE("socks5 UDP ASSOCIATE, when accepted, names where the datagrams will come from") {
    using request = handshake_step::request;
    SUBCASE("an address and port") {
        bytes r = {0x05, 0x03, 0x00, 0x01, 127, 0, 0, 1, 0x30, 0x39};
        outcome o = check_splits(socks5_accepting, cat({no_auth_greeting, r}));
        CHECK(o.what == action::connect);
        CHECK(o.target.host == "127.0.0.1");
        CHECK(o.target.port == 12345);
        CHECK(whole_step(socks5_handshake(accepting_all()), cat({no_auth_greeting, r})).kind ==
              request::udp_associate);
    }
    SUBCASE("0.0.0.0 and port 0: the client does not know yet") {
        bytes r = {0x05, 0x03, 0x00, 0x01, 0, 0, 0, 0, 0, 0};
        outcome o = check_splits(socks5_accepting, cat({no_auth_greeting, r}));
        CHECK(o.what == action::connect);
        CHECK(o.target.host == "0.0.0.0");
        CHECK(o.target.port == 0);
    }
    SUBCASE("IPv6 ::, port 0") {
        bytes r = {0x05, 0x03, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        handshake_step step =
            whole_step(socks5_handshake(accepting_all()), cat({no_auth_greeting, r}));
        CHECK(step.what == action::connect);
        CHECK(step.kind == request::udp_associate);
        CHECK(step.target.host == "::");
    }
    SUBCASE("a CONNECT stays a CONNECT, port 0 still refused") {
        CHECK(whole_step(socks5_handshake(accepting_all()), cat({no_auth_greeting, connect_ipv4}))
                  .kind == request::connect);
        bytes zero = connect_ipv4;
        zero[8] = 0;
        zero[9] = 0;
        outcome o = check_splits(socks5_accepting, cat({no_auth_greeting, zero}));
        CHECK(o.error == errc::invalid_address);
        CHECK(hex(o.to_client) == "05 00 05 01 00 01 00 00 00 00 00 00");
    }
    SUBCASE("each accepted alone") {
        socks5_handshake::config only_udp;
        only_udp.accept_udp_associate = true;
        bytes bind_r = {0x05, 0x02, 0x00, 0x01, 192, 0, 2, 1, 0x00, 0x15};
        outcome o = check_splits([only_udp] { return socks5_handshake(only_udp); },
                                 cat({no_auth_greeting, bind_r}));
        CHECK(o.error == errc::unsupported_command);
        CHECK(hex(o.to_client) == "05 00 05 07 00 01 00 00 00 00 00 00");
        socks5_handshake::config only_bind;
        only_bind.accept_bind = true;
        bytes udp_r = {0x05, 0x03, 0x00, 0x01, 0, 0, 0, 0, 0, 0};
        o = check_splits([only_bind] { return socks5_handshake(only_bind); },
                         cat({no_auth_greeting, udp_r}));
        CHECK(o.error == errc::unsupported_command);
    }
    SUBCASE("unknown commands still get 0x07") {
        for (std::uint8_t command : bytes{0x00, 0x04, 0xFF}) {
            bytes r = connect_ipv4;
            r[1] = command;
            outcome o = check_splits(socks5_accepting, cat({no_auth_greeting, r}));
            CHECK(o.error == errc::unsupported_command);
        }
    }
    SUBCASE("every truncation is need_more") {
        check_truncations(socks5_accepting,
                          cat({no_auth_greeting, {0x05, 0x03, 0x00, 0x01, 0, 0, 0, 0, 0, 0}}));
    }
}

TEST_CASE("socks4 BIND, when accepted, asks for a listener for the expected peer") {
    socks4_handshake::config cfg;
    cfg.accept_bind = true;
    auto make = [cfg] { return socks4_handshake(cfg); };
    outcome o = check_splits(make, cat({socks4_request(0x02, 21, {192, 0, 2, 1}, "u"), pipelined}));
    CHECK(o.what == action::connect);
    CHECK(o.target.host == "192.0.2.1");
    CHECK(o.target.port == 21);
    CHECK(o.upstream == pipelined);
    handshake_step step = whole_step(make(), socks4_request(0x02, 0, {192, 0, 2, 1}, "u"));
    CHECK(step.what == action::connect);
    CHECK(step.kind == handshake_step::request::bind);
    CHECK(step.target.port == 0);
    std::string host = "ftp.example";
    step = whole_step(make(), socks4_request(0x02, 20, {0, 0, 0, 1}, "u", &host));
    CHECK(step.kind == handshake_step::request::bind);
    CHECK(step.target.host == "ftp.example");
    // A CONNECT is still a CONNECT, port 0 still refused; unknown commands still 0x5B.
    CHECK(whole_step(make(), socks4_request(0x01, 80, {192, 0, 2, 1}, "u")).kind ==
          handshake_step::request::connect);
    CHECK(check_splits(make, socks4_request(0x01, 0, {192, 0, 2, 1}, "u")).error ==
          errc::invalid_address);
    CHECK(check_splits(make, socks4_request(0x03, 80, {192, 0, 2, 1}, "u")).error ==
          errc::unsupported_command);
    check_truncations(make, socks4_request(0x02, 21, {192, 0, 2, 1}, "user"));
}

TEST_SUITE_END();
