// Unit tests for protocol/http_connect.hpp: the HTTP CONNECT handshake, with no sockets. Every
// vector is fed whole, byte by byte and split at every position, with the same outcome.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <algorithm>    // std::min
#include <cerrno>       // ETIMEDOUT
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // decoded values
#include <string>       // inputs and responses
#include <string_view>  // inputs
#include <system_error> // error codes
#include <vector>       // cut points

#include <tinyproxy/tinyproxy.hpp>

#include "support/split_feed.hpp"

namespace {

using tinyproxy::credentials;
using tinyproxy::errc;
using tinyproxy::handshake_step;
using tinyproxy::http_connect_handshake;
using config = tinyproxy::http_connect_handshake::config;
using action = tinyproxy::handshake_step::action;

const std::string response_400 =
    "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
const std::string response_405 = "HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\n"
                                 "Connection: close\r\nContent-Length: 0\r\n\r\n";
const std::string response_407 = "HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 "Proxy-Authenticate: Basic realm=\"tinyproxy\"\r\nConnection: "
                                 "close\r\nContent-Length: 0\r\n\r\n";
const std::string response_414 =
    "HTTP/1.1 414 URI Too Long\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
const std::string response_431 = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                 "Connection: close\r\nContent-Length: 0\r\n\r\n";
const std::string response_505 =
    "HTTP/1.1 505 HTTP Version Not Supported\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

std::string as_string(const std::vector<std::uint8_t>& bytes) {
    return std::string(bytes.begin(), bytes.end());
}

std::string action_name(action a) {
    switch (a) {
    case action::need_more:
        return "need_more";
    case action::connect:
        return "connect";
    case action::fail:
        return "fail";
    }
    return "?";
}

/// What a caller sees: the terminal step, with the bytes it never fed to the parser added to
/// to_upstream on connect (it would send them upstream itself).
struct outcome {
    std::string what;
    std::string to_client;
    std::string target; // host_port::to_string(), on connect
    std::string to_upstream;
    std::error_code error;
};

/// The split-feed driver's check: a doctest CHECK that names the invariant.
void expect(bool ok, const char* what) { CHECK_MESSAGE(ok, what); }

/// Feeds `input` cut at `cuts` (increasing positions); stops at the first terminal step. Besides
/// the invariants of tests/support/split_feed.hpp: need_more and connect send nothing.
outcome drive(const config& cfg, std::string_view input, const tptest::cuts& cuts) {
    http_connect_handshake handshake(cfg);
    tinyproxy::byte_view stream{reinterpret_cast<const std::uint8_t*>(input.data()), input.size()};
    tptest::handshake_run r = tptest::drive_handshake(handshake, stream, cuts, expect);
    CHECK(r.to_client_before_end == 0);
    if (r.what == action::need_more) {
        return outcome{"need_more", "", "", "", {}};
    }
    outcome out{action_name(r.what), as_string(r.to_client), "", "", r.error};
    if (r.what == action::connect) {
        out.target = r.target.to_string();
        out.to_upstream = as_string(r.upstream);
        CHECK(r.to_client.empty());
    }
    return out;
}

void check_same(const outcome& a, const outcome& b) {
    CHECK(a.what == b.what);
    CHECK(a.to_client == b.to_client);
    CHECK(a.target == b.target);
    CHECK(a.to_upstream == b.to_upstream);
    CHECK(a.error == b.error);
}

/// Feeds `input` whole, byte by byte, and split once at every position (plus a few three-way
/// splits for long inputs); every way gives the same outcome, which is returned.
outcome run(std::string_view input, const config& cfg = {}) {
    outcome whole = drive(cfg, input, {});
    std::size_t stride = input.size() > 4096 ? input.size() / 997 + 1 : 1;
    for (const tptest::cuts& plan : tptest::split_plans(input.size(), stride, 7)) {
        check_same(whole, drive(cfg, input, plan));
    }
    return whole;
}

/// Base64 (RFC 4648 section 4, padded), for building Proxy-Authorization values.
std::string base64(std::string_view text) {
    static constexpr char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < text.size(); i += 3) {
        std::uint32_t group = static_cast<std::uint32_t>(static_cast<unsigned char>(text[i])) << 16;
        if (i + 1 < text.size()) {
            group |= static_cast<std::uint32_t>(static_cast<unsigned char>(text[i + 1])) << 8;
        }
        if (i + 2 < text.size()) {
            group |= static_cast<std::uint32_t>(static_cast<unsigned char>(text[i + 2]));
        }
        out += alphabet[(group >> 18) & 63];
        out += alphabet[(group >> 12) & 63];
        out += i + 1 < text.size() ? alphabet[(group >> 6) & 63] : '=';
        out += i + 2 < text.size() ? alphabet[group & 63] : '=';
    }
    return out;
}

config with_credentials(std::string user, std::string password) {
    config cfg;
    cfg.required = credentials{std::move(user), std::move(password)};
    return cfg;
}

std::string connect_with(std::string_view authorization_line) {
    return "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n" +
           std::string(authorization_line) + "\r\n\r\n";
}

const std::string curl_request = "CONNECT example.com:443 HTTP/1.1\r\n"
                                 "Host: example.com:443\r\n"
                                 "User-Agent: curl/7.88.1\r\n"
                                 "Proxy-Connection: Keep-Alive\r\n"
                                 "\r\n";

} // namespace

TEST_SUITE_BEGIN("http_connect");

TEST_CASE("a CONNECT request is a connect step to its host and port") {
    outcome out = run(curl_request);
    CHECK(out.what == "connect");
    CHECK(out.target == "example.com:443");
    CHECK(out.to_upstream.empty());
    CHECK(out.to_client.empty());

    http_connect_handshake handshake;
    handshake_step step = handshake.feed(std::string_view(curl_request));
    REQUIRE(step.what == action::connect);
    CHECK(step.target.host == "example.com");
    CHECK(step.target.port == 443);

    // RFC 9110 section 9.3.6's example, and the smallest request there is.
    CHECK(
        run("CONNECT server.example.com:80 HTTP/1.1\r\nHost: server.example.com\r\n\r\n").target ==
        "server.example.com:80");
    CHECK(run("CONNECT a:1 HTTP/1.0\r\n\r\n").target == "a:1");
    CHECK(run("CONNECT a:65535 HTTP/1.1\r\n\r\n").target == "a:65535");
}

TEST_CASE("connected() and failed() are exact responses") {
    http_connect_handshake handshake;
    CHECK(as_string(handshake.connected()) == "HTTP/1.1 200 Connection established\r\n\r\n");

    const std::string bad_gateway =
        "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    const std::string gateway_timeout =
        "HTTP/1.1 504 Gateway Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    const std::string forbidden =
        "HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    CHECK(as_string(handshake.failed(std::make_error_code(std::errc::connection_refused))) ==
          bad_gateway);
    CHECK(as_string(handshake.failed(std::make_error_code(std::errc::host_unreachable))) ==
          bad_gateway);
    CHECK(as_string(handshake.failed(std::make_error_code(std::errc::network_unreachable))) ==
          bad_gateway);
    CHECK(as_string(handshake.failed(errc::name_not_resolved)) == bad_gateway);
    CHECK(as_string(handshake.failed({})) == bad_gateway);
    CHECK(as_string(handshake.failed(errc::connect_timeout)) == gateway_timeout);
    CHECK(as_string(handshake.failed(std::make_error_code(std::errc::timed_out))) ==
          gateway_timeout);
    CHECK(as_string(handshake.failed(std::error_code(ETIMEDOUT, std::system_category()))) ==
          gateway_timeout);
    CHECK(as_string(handshake.failed(errc::not_allowed)) == forbidden);
}

TEST_CASE("IPv6 targets in brackets and IPv4 literals") {
    outcome v6 = run("CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n");
    CHECK(v6.what == "connect");
    CHECK(v6.target == "[2001:db8::1]:443");

    http_connect_handshake handshake;
    handshake_step step = handshake.feed(std::string_view("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n"));
    REQUIRE(step.what == action::connect);
    CHECK(step.target.host == "::1");
    CHECK(step.target.port == 8443);
    REQUIRE(step.target.numeric_address());
    CHECK(step.target.numeric_address()->is_v6());

    CHECK(run("CONNECT 192.0.2.7:22 HTTP/1.1\r\n\r\n").target == "192.0.2.7:22");
    CHECK(run("CONNECT [::ffff:192.0.2.7]:22 HTTP/1.1\r\n\r\n").target == "[::ffff:192.0.2.7]:22");
}

TEST_CASE("bytes pipelined after the blank line go upstream intact") {
    // A TLS ClientHello's first bytes, NULs and CRLFs included, right behind the head.
    std::string tunnel("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n\0\0GET /", 22);
    outcome out = run(curl_request + tunnel);
    CHECK(out.what == "connect");
    CHECK(out.to_upstream == tunnel);

    // Another request after the head is tunnel data too, never parsed.
    std::string second = "CONNECT other:1 HTTP/1.1\r\n\r\n";
    CHECK(run(curl_request + second).to_upstream == second);

    // One feed holding head and data: to_upstream is exactly what followed the blank line.
    http_connect_handshake handshake;
    std::string with_data = curl_request + "hello";
    handshake_step step = handshake.feed(std::string_view(with_data));
    REQUIRE(step.what == action::connect);
    CHECK(as_string(step.to_upstream) == "hello");
}

TEST_CASE("bare LF line ends and empty lines before the request line") {
    CHECK(run("CONNECT example.com:443 HTTP/1.1\nHost: example.com\n\nrest").to_upstream == "rest");
    CHECK(run("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\n\r\nrest").to_upstream ==
          "rest");
    outcome leading = run("\r\n\n\r\nCONNECT example.com:443 HTTP/1.1\r\n\r\n");
    CHECK(leading.what == "connect");
    CHECK(leading.target == "example.com:443");
}

TEST_CASE("every truncation of a valid request needs more") {
    const std::string requests[] = {
        curl_request,
        "CONNECT [2001:db8::1]:443 HTTP/1.1\nHost: x\n\n",
        "\r\nCONNECT a:1 HTTP/1.0\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
    };
    for (const std::string& request : requests) {
        CAPTURE(request);
        for (std::size_t length = 0; length < request.size(); ++length) {
            CAPTURE(length);
            CHECK(run(std::string_view(request).substr(0, length)).what == "need_more");
            CHECK(run(std::string_view(request).substr(0, length), with_credentials("user", "pass"))
                      .what == "need_more");
        }
        CHECK(run(request).what == "connect");
    }
    CHECK(run(requests[2], with_credentials("user", "pass")).what == "connect");
}

TEST_CASE("other methods get 405 with Allow: CONNECT") {
    for (const char* method : {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "TRACE", "PATCH",
                               "PRI", "connect", "Connect", "CONNECTX", "X-CUSTOM!"}) {
        CAPTURE(method);
        outcome out = run(std::string(method) + " http://example.com/ HTTP/1.1\r\n\r\n");
        CHECK(out.what == "fail");
        CHECK(out.to_client == response_405);
        CHECK(out.error == errc::method_not_allowed);
    }
    // The answer comes with the request line, before any header.
    outcome early = run("GET / HTTP/1.1\r\nHost: exa");
    CHECK(early.to_client == response_405);
    // Even with credentials required, 405 comes first.
    CHECK(run("GET / HTTP/1.1\r\n\r\n", with_credentials("u", "p")).to_client == response_405);
}

TEST_CASE("malformed request lines get 400") {
    const std::string bad[] = {
        "CONNECT example.com HTTP/1.1\r\n",            // no port
        "CONNECT example.com: HTTP/1.1\r\n",           // empty port
        "CONNECT example.com:0 HTTP/1.1\r\n",          // port 0
        "CONNECT example.com:65536 HTTP/1.1\r\n",      // port out of range
        "CONNECT example.com:-1 HTTP/1.1\r\n",         // not a number
        "CONNECT example.com:443/ HTTP/1.1\r\n",       // a path
        "CONNECT http://example.com:443 HTTP/1.1\r\n", // absolute form
        "CONNECT / HTTP/1.1\r\n",                      // origin form
        "CONNECT * HTTP/1.1\r\n",                      // asterisk form
        "CONNECT user@example.com:443 HTTP/1.1\r\n",   // userinfo
        "CONNECT ::1:443 HTTP/1.1\r\n",                // IPv6 without brackets
        "CONNECT [::1]443 HTTP/1.1\r\n",               // no colon after the bracket
        "CONNECT [example.com]:443 HTTP/1.1\r\n",      // brackets around a name
        "CONNECT [fe80::1%2]:443 HTTP/1.1\r\n",        // zone id
        "CONNECT [fe80::1%252]:443 HTTP/1.1\r\n",      // escaped zone id
        "CONNECT 127.1:443 HTTP/1.1\r\n",              // a numeric-looking name
        "CONNECT ex_am%20ple.com:443 HTTP/1.1\r\n",    // not a host name
        "CONNECT :443 HTTP/1.1\r\n",                   // no host
        "CONNECT  example.com:443 HTTP/1.1\r\n",       // two spaces
        "CONNECT example.com:443  HTTP/1.1\r\n",       // two spaces
        "CONNECT example.com:443 HTTP/1.1 \r\n",       // trailing space
        "CONNECT example.com:443\r\n",                 // no version (HTTP/0.9 style)
        "CONNECT\r\n",                                 // method alone
        "CONNECT \r\n",                                // method and a space
        " CONNECT example.com:443 HTTP/1.1\r\n",       // leading space
        "CONNECT\texample.com:443 HTTP/1.1\r\n",       // tab
        "GE(T / HTTP/1.1\r\n",                         // method not a token
        "\"GET\" / HTTP/1.1\r\n",                      // method not a token
        "CONNECT example.com:443 HTTP/1.1\rX\n",       // bare CR
        "CONNECT exam\rple.com:443 HTTP/1.1\r\n",      // bare CR
        "CONNECT ex\xc3\xa9mple.com:443 HTTP/1.1\r\n", // a byte >= 0x80
    };
    for (const std::string& line : bad) {
        CAPTURE(line);
        outcome out = run(line + "\r\n");
        CHECK(out.what == "fail");
        CHECK(out.to_client == response_400);
        CHECK(out.error == errc::protocol_error);
    }
}

TEST_CASE("malformed header lines get 400") {
    const std::string bad[] = {
        " folded: value",          // obs-fold on the first header line
        "\tfolded: value",         // obs-fold with a tab
        "Host : example.com",      // space before the colon
        "Host\t: example.com",     // tab before the colon
        ": no name",               // empty name
        "no colon at all",         // no colon
        "Bad[name]: x",            // name not a token
        "Na me: x",                // space in the name
        std::string("X: a\0b", 6), // NUL in a value
        "X: a\x01",                // control character in a value
        "X: a\x7f",                // DEL in a value
        "X: a\rb",                 // bare CR in a value
    };
    for (const std::string& field : bad) {
        CAPTURE(field);
        outcome out = run("CONNECT example.com:443 HTTP/1.1\r\n" + field + "\r\n\r\n");
        CHECK(out.what == "fail");
        CHECK(out.to_client == response_400);
        CHECK(out.error == errc::protocol_error);
    }
    // obs-fold on a later line too.
    CHECK(run("CONNECT a:1 HTTP/1.1\r\nX: a\r\n b\r\n\r\n").to_client == response_400);
    // Field values may hold tabs, obs-text (bytes >= 0x80) and be empty.
    CHECK(run("CONNECT a:1 HTTP/1.1\r\nX:\r\nY: \ta\tb \r\nZ: caf\xc3\xa9\r\n\r\n").what ==
          "connect");
}

TEST_CASE("HTTP versions") {
    CHECK(run("CONNECT a:1 HTTP/1.0\r\n\r\n").what == "connect");
    CHECK(run("CONNECT a:1 HTTP/1.1\r\n\r\n").what == "connect");
    CHECK(run("CONNECT a:1 HTTP/1.9\r\n\r\n").what == "connect"); // a later minor version
    for (const char* version : {"HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/9.9"}) {
        CAPTURE(version);
        outcome out = run("CONNECT a:1 " + std::string(version) + "\r\n\r\n");
        CHECK(out.to_client == response_505);
        CHECK(out.error == errc::unsupported_version);
    }
    for (const char* version : {"HTTP/1", "HTTP/2", "http/1.1", "HTTP/1.1x", "HTTP/11.1",
                                "HTTP/1.10", "HTTPS/1.1", "FOO/1.1", "HTTP/a.b", "HTTP 1.1"}) {
        CAPTURE(version);
        outcome out = run("CONNECT a:1 " + std::string(version) + "\r\n\r\n");
        CHECK(out.to_client == response_400);
        CHECK(out.error == errc::protocol_error);
    }
    // The HTTP/2 connection preface is refused, not tunnelled.
    CHECK(run("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").to_client == response_505);
}

TEST_CASE("Basic authentication: good credentials connect") {
    config cfg = with_credentials("Aladdin", "open sesame");
    // RFC 7617 section 2's example.
    outcome out =
        run(connect_with("Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==") + "tail", cfg);
    CHECK(out.what == "connect");
    CHECK(out.target == "example.com:443");
    CHECK(out.to_upstream == "tail");
    // The field name and the scheme are case-insensitive; spaces around the value are OWS.
    CHECK(run(connect_with("PROXY-AUTHORIZATION: basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="), cfg).what ==
          "connect");
    CHECK(run(connect_with("proxy-authorization:\tBASIC   QWxhZGRpbjpvcGVuIHNlc2FtZQ== \t"), cfg)
              .what == "connect");
    // RFC 7617 section 2.1's UTF-8 example, and a password holding colons.
    CHECK(run(connect_with("Proxy-Authorization: Basic dGVzdDoxMjPCow=="),
              with_credentials("test", "123\xc2\xa3"))
              .what == "connect");
    CHECK(run(connect_with("Proxy-Authorization: Basic " + base64("u:p:a:s:s")),
              with_credentials("u", "p:a:s:s"))
              .what == "connect");
    CHECK(run(connect_with("Proxy-Authorization: Basic " + base64(":")), with_credentials("", ""))
              .what == "connect");
    // Without required credentials the field is ignored, whatever it holds.
    CHECK(run(connect_with("Proxy-Authorization: Digest whatever")).what == "connect");
    CHECK(run(connect_with("Proxy-Authorization: Basic !!!")).what == "connect");
}

TEST_CASE("Basic authentication: missing or wrong credentials get 407") {
    config cfg = with_credentials("user", "pass");
    const std::string wrong[] = {
        "X-Other: 1",                                            // missing
        "Authorization: Basic " + base64("user:pass"),           // the origin server's field
        "Proxy-Authorization: Basic " + base64("user:pas"),      // wrong password
        "Proxy-Authorization: Basic " + base64("user:passs"),    // longer password
        "Proxy-Authorization: Basic " + base64("user:pasx"),     // last byte wrong
        "Proxy-Authorization: Basic " + base64("vser:pass"),     // first byte wrong
        "Proxy-Authorization: Basic " + base64("User:pass"),     // user names are case-sensitive
        "Proxy-Authorization: Basic " + base64("use:rpass"),     // same bytes, other split
        "Proxy-Authorization: Basic " + base64("user:"),         // empty password
        "Proxy-Authorization: Basic " + base64(":pass"),         // empty user
        "Proxy-Authorization: Digest username=\"user\"",         // another scheme
        "Proxy-Authorization: Bearer dXNlcjpwYXNz",              // another scheme
        "Proxy-Authorization: Basically " + base64("user:pass"), // not the Basic scheme
        "Proxy-Authorization:",                                  // empty
    };
    for (const std::string& field : wrong) {
        CAPTURE(field);
        outcome out = run(connect_with(field), cfg);
        CHECK(out.what == "fail");
        CHECK(out.to_client == response_407);
        CHECK(out.error == errc::auth_failed);
    }
    CHECK(run(connect_with("Proxy-Authorization: Basic " + base64("user:pass")), cfg).what ==
          "connect");
}

TEST_CASE("Basic authentication: malformed credentials get 400") {
    config cfg = with_credentials("user", "pass");
    const std::string malformed[] = {
        "Basic",                 // no credentials
        "Basic ",                // no credentials
        "Basic dXNlcjpwYXNz=",   // bad length
        "Basic dXNlcjpwYXN",     // missing padding
        "Basic dXNlcjpwYXM",     // missing padding
        "Basic dXNlcjpw!XNz",    // bad character
        "Basic dXNl cjpwYXNz",   // space inside
        "Basic dXNlcjpwYX=z",    // '=' inside
        "Basic dXNlcjpwYXN=",    // unused bits set ("pas" + 2 bits)
        "Basic ====",            // padding only
        "Basic dXNlcjpwYXNz\tx", // trailing junk
        "Basic dXNlcnBhc3M=",    // "userpass": no colon
        "Basic dXNlcjpwYXNz,",   // a list
    };
    for (const std::string& value : malformed) {
        CAPTURE(value);
        outcome out = run(connect_with("Proxy-Authorization: " + value), cfg);
        CHECK(out.what == "fail");
        CHECK(out.to_client == response_400);
        CHECK(out.error == errc::protocol_error);
    }
    // Two Proxy-Authorization fields, even both right.
    std::string twice = "Proxy-Authorization: Basic " + base64("user:pass") + "\r\n" +
                        "Proxy-Authorization: Basic " + base64("user:pass");
    CHECK(run(connect_with(twice), cfg).to_client == response_400);
}

TEST_CASE("the 407 realm is a quoted-string") {
    config cfg = with_credentials("u", "p");
    cfg.realm = "my \"proxy\" \\ zone";
    CHECK(run(connect_with("X: y"), cfg).to_client ==
          "HTTP/1.1 407 Proxy Authentication Required\r\n"
          "Proxy-Authenticate: Basic realm=\"my \\\"proxy\\\" \\\\ zone\"\r\n"
          "Connection: close\r\nContent-Length: 0\r\n\r\n");
    cfg.realm = "evil\r\nSet-Cookie: x=1";
    CHECK(run(connect_with("X: y"), cfg).to_client ==
          "HTTP/1.1 407 Proxy Authentication Required\r\n"
          "Proxy-Authenticate: Basic realm=\"evilSet-Cookie: x=1\"\r\n"
          "Connection: close\r\nContent-Length: 0\r\n\r\n");
}

TEST_CASE("a 64 KiB request line fails as soon as max_line is passed") {
    const std::size_t max_line = config{}.max_line;
    struct long_line {
        std::string text;
        std::string response;
    };
    const long_line cases[] = {
        {"CONNECT " + std::string(64 * 1024, 'a') + ".com:443 HTTP/1.1\r\n\r\n", response_414},
        {"GET /" + std::string(64 * 1024, 'a') + " HTTP/1.1\r\n\r\n", response_414},
        {std::string(64 * 1024, 'A') + "\r\n\r\n", response_400},
        {"CONNECT a:1 HTTP/1.1" + std::string(64 * 1024, 'x') + "\r\n\r\n", response_400},
    };
    for (const long_line& c : cases) {
        CHECK(run(c.text).to_client == c.response);
        // Fed 1 KiB at a time, it fails with the chunk that holds byte max_line + 1.
        http_connect_handshake handshake;
        std::size_t fed = 0;
        handshake_step step;
        while (fed < c.text.size() && step.what == action::need_more) {
            std::size_t count = std::min<std::size_t>(1024, c.text.size() - fed);
            step = handshake.feed(std::string_view(c.text).substr(fed, count));
            fed += count;
        }
        CHECK(step.what == action::fail);
        CHECK(step.error == errc::message_too_large);
        CHECK(as_string(step.to_client) == c.response);
        CHECK(fed == (max_line / 1024 + 1) * 1024);
    }
}

TEST_CASE("10,000 headers fail with 431 once max_headers is passed") {
    std::string request = "CONNECT example.com:443 HTTP/1.1\r\n";
    std::vector<std::size_t> ends; // where each header line ends
    for (int i = 0; i < 10'000; ++i) {
        request += "X-H: " + std::to_string(i) + "\r\n";
        ends.push_back(request.size());
    }
    request += "\r\n";
    CHECK(run(request).to_client == response_431);

    http_connect_handshake handshake;
    std::size_t max_headers = config{}.max_headers;
    // All of max_headers fields: still reading.
    handshake_step step =
        handshake.feed(std::string_view(request).substr(0, ends[max_headers - 1]));
    CHECK(step.what == action::need_more);
    // One more: 431 at its line end, nothing after it read.
    step = handshake.feed(std::string_view(request).substr(
        ends[max_headers - 1], ends[max_headers] - ends[max_headers - 1]));
    CHECK(step.what == action::fail);
    CHECK(step.error == errc::message_too_large);
    CHECK(as_string(step.to_client) == response_431);

    // Exactly max_headers fields are fine.
    std::string just_enough = request.substr(0, ends[99]);
    CHECK(run(just_enough + "\r\n").what == "connect");
}

TEST_CASE("line, header and head limits are exact") {
    config cfg;
    cfg.max_line = 32;
    cfg.max_headers = 2;
    cfg.max_head_bytes = 80;

    // A request line of exactly max_line bytes with its CRLF, and one byte more.
    std::string line = "CONNECT example.com:443 HTTP/1.1\r\n"; // 34 bytes
    REQUIRE(line.size() == 34);
    cfg.max_line = 34;
    CHECK(run(line + "\r\n", cfg).what == "connect");
    cfg.max_line = 33;
    CHECK(run(line + "\r\n", cfg).to_client == response_400); // the version is what overflows
    CHECK(run("CONNECT example.com:443 HTTP/1.1\n\n", cfg).what == "connect"); // bare LF: 33
    cfg.max_line = 20;
    CHECK(run(line + "\r\n", cfg).to_client == response_414); // still in the target

    // A header line of exactly max_line bytes, and one more.
    cfg.max_line = 34;
    CHECK(run("CONNECT a:1 HTTP/1.1\r\nX: " + std::string(29, 'v') + "\r\n\r\n", cfg).what ==
          "connect");
    CHECK(run("CONNECT a:1 HTTP/1.1\r\nX: " + std::string(30, 'v') + "\r\n\r\n", cfg).to_client ==
          response_431);

    // max_headers fields, and one more.
    CHECK(run("CONNECT a:1 HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", cfg).what == "connect");
    CHECK(run("CONNECT a:1 HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", cfg).to_client ==
          response_431);

    // A head of exactly max_head_bytes (blank line included), and one byte more.
    std::string head = "CONNECT a:1 HTTP/1.1\r\nA: " + std::string(30, 'v') + "\r\nB: ";
    head += std::string(80 - head.size() - 4, 'w') + "\r\n\r\n";
    REQUIRE(head.size() == 80);
    cfg.max_line = 64;
    outcome fits = run(head + "tunnel", cfg);
    CHECK(fits.what == "connect");
    CHECK(fits.to_upstream == "tunnel");
    cfg.max_head_bytes = 79;
    CHECK(run(head + "tunnel", cfg).to_client == response_431);
    // Leading empty lines count.
    cfg.max_head_bytes = 80;
    CHECK(run("\r\n" + head, cfg).to_client == response_431);
    CHECK(run(std::string(100, '\n'), cfg).to_client == response_431);
}

TEST_CASE("garbage, NUL bytes and binary records fail at once") {
    // A TLS ClientHello: its first byte is a control character.
    outcome tls = run(std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11));
    CHECK(tls.to_client == response_400);
    http_connect_handshake handshake;
    CHECK(handshake.feed(std::string_view("\x16", 1)).to_client.size() == response_400.size());

    CHECK(run(std::string("\0", 1)).to_client == response_400);
    CHECK(run(std::string("CONNECT\0 a:1 HTTP/1.1\r\n\r\n", 25)).to_client == response_400);
    CHECK(run("\x80\xff").to_client == response_400);
    CHECK(run("\r\r\n").to_client == response_400); // a bare CR before the request line
    CHECK(run("\x7f").to_client == response_400);
    // A PROXY protocol v2 signature sent to the HTTP port.
    CHECK(run(std::string("\r\n\r\n\0\r\nQUIT\n", 12)).to_client == response_400);
    // Printable garbage waits for its line end (or max_line), then fails.
    CHECK(run("hello world").what == "need_more");
    CHECK(run("hello world\r\n").to_client == response_400);
    CHECK(run("SSH-2.0-OpenSSH_9.2\r\n").to_client == response_400);
}

TEST_CASE("an empty feed needs more, and a finished handshake refuses more") {
    http_connect_handshake handshake;
    CHECK(handshake.feed(tinyproxy::byte_view{}).what == action::need_more);
    CHECK(handshake.feed(std::string_view("CONNECT a:1 HTTP/1.1\r\n")).what == action::need_more);
    CHECK(handshake.feed(tinyproxy::byte_view{}).what == action::need_more);
    CHECK(handshake.feed(std::string_view("\r\n")).what == action::connect);
    CHECK(handshake.finished());
    handshake_step again = handshake.feed(std::string_view("\r\n"));
    CHECK(again.what == action::fail);
    CHECK(again.error == errc::protocol_error);
    CHECK(again.to_client.empty());
    CHECK(handshake.feed(tinyproxy::byte_view{}).what == action::fail);
}

TEST_CASE("strict base64 decoding") {
    using tinyproxy::detail::http_head::base64_decode;
    // RFC 4648 section 10's vectors (the empty one is not a credential).
    CHECK(base64_decode("Zg==") == std::optional<std::string>("f"));
    CHECK(base64_decode("Zm8=") == std::optional<std::string>("fo"));
    CHECK(base64_decode("Zm9v") == std::optional<std::string>("foo"));
    CHECK(base64_decode("Zm9vYg==") == std::optional<std::string>("foob"));
    CHECK(base64_decode("Zm9vYmE=") == std::optional<std::string>("fooba"));
    CHECK(base64_decode("Zm9vYmFy") == std::optional<std::string>("foobar"));
    CHECK(base64_decode("+/+/") == std::optional<std::string>("\xfb\xff\xbf"));
    CHECK(base64_decode("AAAA") == std::optional<std::string>(std::string(3, '\0')));
    for (const char* bad : {"", "Z", "Zg", "Zg=", "Zg===", "Z===", "====", "Zh==", "Zm9=", "Zm-v",
                            "Zm_v", "Zm9v\n", " Zm9v", "Zg==Zg==", "Zm9v====", "Z=g="}) {
        CAPTURE(bad);
        CHECK(!base64_decode(bad));
    }
    // Round trips of every byte value.
    std::string all;
    for (int i = 0; i < 256; ++i) {
        all += static_cast<char>(i);
        CHECK(base64_decode(base64(all)) == std::optional<std::string>(all));
    }
}

TEST_CASE("credential comparison") {
    using tinyproxy::detail::http_head::constant_time_equal;
    CHECK(constant_time_equal("", ""));
    CHECK(constant_time_equal("user:pass", "user:pass"));
    CHECK(!constant_time_equal("user:pass", "user:pasS"));
    CHECK(!constant_time_equal("user:pass", "user:pas"));
    CHECK(!constant_time_equal("user:pas", "user:pass"));
    CHECK(!constant_time_equal("", "x"));
    CHECK(!constant_time_equal(std::string("a\0", 2), "a"));
}

TEST_SUITE_END();
