// Unit tests for protocol/http_message.hpp: request and response heads, body framing, the body
// scanner and the heads rewritten for the next hop, with no sockets. Every stream is fed whole,
// byte by byte and split at every position, with the same outcome.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <cstddef>      // std::size_t
#include <cstdint>      // body lengths
#include <string>       // inputs
#include <string_view>  // inputs
#include <system_error> // error codes
#include <vector>       // tables

#include <tinyproxy/tinyproxy.hpp>

#include "support/http_message_feed.hpp"
#include "support/split_feed.hpp"

namespace {

using tinyproxy::errc;
using tinyproxy::http_body_scanner;
using tinyproxy::http_framing;
using tinyproxy::http_head_limits;
using tinyproxy::http_request_head;
using tinyproxy::http_request_parser;
using tinyproxy::http_response_head;
using tinyproxy::http_response_parser;
using kind = tinyproxy::http_framing::kind;

void expect(bool ok, const char* what) { CHECK_MESSAGE(ok, what); }

tinyproxy::byte_view view(std::string_view text) { return tinyproxy::byte_view(text); }

/// Reads `input` whole, then byte by byte and split once at every position (twice for short
/// inputs); every way reads the same requests and ends the same way, which is returned.
tptest::request_run requests(std::string_view input, http_head_limits limits = {}) {
    tptest::request_run whole = tptest::drive_requests(view(input), {}, limits, expect);
    std::size_t gap = input.size() < 400 ? 5 : 0;
    for (const tptest::cuts& plan : tptest::split_plans(input.size(), 1, gap)) {
        tptest::check_same_heads(tptest::drive_requests(view(input), plan, limits, expect), whole,
                                 tptest::same_request_head, expect);
    }
    return whole;
}

/// The one request `input` holds, read to its last byte.
http_request_head request(std::string_view input) {
    tptest::request_run run = requests(input);
    CHECK_FALSE(run.failed);
    REQUIRE(run.heads.size() == 1);
    CHECK(run.used == input.size());
    return run.heads.front();
}

/// The status that refuses `input`, checking the error too.
int refusal(std::string_view input, std::error_code why = errc::protocol_error,
            http_head_limits limits = {}) {
    tptest::request_run run = requests(input, limits);
    CHECK(run.failed);
    CHECK(run.heads.empty());
    CHECK(run.error == why);
    return run.error_status;
}

tptest::response_run responses(std::string_view input, std::string_view method = "GET",
                               http_head_limits limits = {}) {
    tptest::response_run whole = tptest::drive_responses(view(input), {}, method, limits, expect);
    for (const tptest::cuts& plan : tptest::split_plans(input.size(), 1, 5)) {
        tptest::check_same_heads(tptest::drive_responses(view(input), plan, method, limits, expect),
                                 whole, tptest::same_response_head, expect);
    }
    return whole;
}

http_response_head response(std::string_view input, std::string_view method = "GET") {
    tptest::response_run run = responses(input, method);
    CHECK_FALSE(run.failed);
    REQUIRE(run.heads.size() == 1);
    CHECK(run.used == input.size());
    return run.heads.front();
}

tptest::body_run body(http_framing framing, std::string_view input, http_head_limits limits = {}) {
    tptest::body_run whole = tptest::drive_body(framing, view(input), {}, limits, expect);
    std::size_t gap = input.size() < 400 ? 3 : 0;
    for (const tptest::cuts& plan : tptest::split_plans(input.size(), 1, gap)) {
        tptest::check_same_body(tptest::drive_body(framing, view(input), plan, limits, expect),
                                whole, expect);
    }
    return whole;
}

const http_framing chunked{kind::chunked, 0};

/// The chunked body `input` holds, scanned to its end and not a byte past it.
void chunked_body_ends(std::string_view input, std::string_view after = "GET ") {
    std::string stream = std::string(input) + std::string(after);
    tptest::body_run run = body(chunked, stream);
    CHECK(run.what == http_body_scanner::status::complete);
    CHECK(run.used == input.size());
}

std::error_code chunked_body_fails(std::string_view input, http_head_limits limits = {}) {
    tptest::body_run run = body(chunked, input, limits);
    CHECK(run.what == http_body_scanner::status::failed);
    return run.error;
}

} // namespace

TEST_SUITE_BEGIN("http_message");

TEST_CASE("http_request_parser: an absolute-form GET") {
    http_request_head head = request("GET http://example.com/a/b?c=1&d HTTP/1.1\r\n"
                                     "Host: example.com\r\n"
                                     "User-Agent:  curl/8.5.0 \r\n"
                                     "Accept:*/*\r\n"
                                     "\r\n");
    CHECK(head.method == "GET");
    CHECK(head.target == "http://example.com/a/b?c=1&d");
    CHECK(head.minor_version == 1);
    CHECK_FALSE(head.connect);
    CHECK(head.origin.host == "example.com");
    CHECK(head.origin.port == 80);
    CHECK(head.path == "/a/b?c=1&d");
    CHECK(head.body.what == kind::none);
    CHECK(head.keep_alive);
    CHECK_FALSE(head.expect_continue);
    REQUIRE(head.fields.size() == 3);
    CHECK(head.fields[1].name == "User-Agent");
    CHECK(head.fields[1].value == "curl/8.5.0");
    CHECK(head.fields[2].value == "*/*");
    REQUIRE(head.field("user-agent") != nullptr);
    CHECK(*head.field("USER-AGENT") == "curl/8.5.0");
    CHECK(head.field("cookie") == nullptr);
}

TEST_CASE("http_request_parser: authorities and paths") {
    struct row {
        const char* target;
        const char* host;
        std::uint16_t port;
        const char* path;
    };
    const row rows[] = {
        {"http://example.com", "example.com", 80, "/"},
        {"http://example.com?q=1", "example.com", 80, "/?q=1"},
        {"http://example.com/", "example.com", 80, "/"},
        {"HTTP://Example.COM:8080/x", "Example.COM", 8080, "/x"},
        {"hTtP://example.com:/x", "example.com", 80, "/x"},
        {"http://10.0.0.1/", "10.0.0.1", 80, "/"},
        {"http://10.0.0.1:65535/a", "10.0.0.1", 65535, "/a"},
        {"http://[::1]/", "::1", 80, "/"},
        {"http://[2001:db8::1]:8080/p?q", "2001:db8::1", 8080, "/p?q"},
        {"http://a/b//c/?x=/y", "a", 80, "/b//c/?x=/y"},
    };
    for (const row& r : rows) {
        CAPTURE(r.target);
        http_request_head head =
            request("GET " + std::string(r.target) + " HTTP/1.1\r\nHost: x\r\n\r\n");
        CHECK(head.origin.host == r.host);
        CHECK(head.origin.port == r.port);
        CHECK(head.path == r.path);
    }
}

TEST_CASE("http_request_parser: line ends, versions and keep-alive") {
    http_request_head lf = request("\r\n\nGET http://a/ HTTP/1.1\nHost: a\n\n");
    CHECK(lf.path == "/");
    CHECK(lf.keep_alive);

    http_request_head old = request("GET http://a/ HTTP/1.0\r\n\r\n");
    CHECK(old.minor_version == 0);
    CHECK_FALSE(old.keep_alive);
    CHECK(request("GET http://a/ HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    CHECK(request("GET http://a/ HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n").keep_alive);
    CHECK_FALSE(
        request("GET http://a/ HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    CHECK_FALSE(
        request("GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n").keep_alive);
    CHECK_FALSE(request("GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: x\r\n"
                        "Connection: ,close,\r\n\r\n")
                    .keep_alive);
    CHECK_FALSE(
        request("GET http://a/ HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n").keep_alive);
    CHECK(request("GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n").keep_alive);
    CHECK(request("GET http://a/ HTTP/1.9\r\nHost: a\r\n\r\n").minor_version == 9);

    CHECK(request("POST http://a/ HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
                  "Content-Length: 3\r\n\r\n")
              .expect_continue);
}

TEST_CASE("http_request_parser: body framing") {
    http_request_head length =
        request("POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n");
    CHECK(length.body.what == kind::length);
    CHECK(length.body.length == 42);
    CHECK(request("POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").body.what ==
          kind::length);
    http_request_head largest = request(
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n");
    CHECK(largest.body.length == 9223372036854775807u);
    CHECK(request("POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
              .body.what == kind::chunked);
    CHECK(request("POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n")
              .body.what == kind::chunked);
    CHECK(request("POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n")
              .body.what == kind::chunked);

    http_request_head connect =
        request("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    CHECK(connect.connect);
    CHECK(connect.origin.host == "example.com");
    CHECK(connect.origin.port == 443);
    CHECK(connect.body.what == kind::none);
    http_request_head v6 = request("CONNECT [::1]:8443 HTTP/1.0\r\n\r\n");
    CHECK(v6.origin.host == "::1");
    CHECK(v6.origin.port == 8443);
}

TEST_CASE("http_request_parser: smuggling and malformed heads are refused with 400") {
    const char* heads[] = {
        // framing two readers could read differently
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        "Content-Length: 5\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
        // Host
        "GET http://a/ HTTP/1.1\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        "GET http://a/ HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        // field lines
        "GET http://a/ HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tfolded\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\n Host: a\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\n: empty name\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\nX: a\x01z\r\n\r\n",
        // request lines
        "GET http://a/ HTTP/1.1 \r\nHost: a\r\n\r\n",
        "GET  http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/\r\nHost: a\r\n\r\n",
        "GET\thttp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "G(T http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/ http/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/ HTTP/1.10\r\nHost: a\r\n\r\n",
        "GET http://a/\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        // targets a proxy cannot forward
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET a.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://user:pass@a:8080/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http:// HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a:0/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a:65536/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a:x/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://127.1/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a%2eb/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://[fe80::1%25eth0]/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://::1/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://[::1/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT example.com:0 HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT http://example.com:443/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n",
    };
    for (const char* head : heads) {
        CAPTURE(head);
        CHECK(refusal(head) == 400);
    }
}

TEST_CASE("http_request_parser: other schemes are 501, other major versions 505") {
    for (const char* target : {"https://a/", "HTTPS://a:443/", "ftp://a/", "ws://a/", "wss://a/",
                               "httpx://a/", "h+t.t-p://a/"}) {
        CAPTURE(target);
        CHECK(refusal("GET " + std::string(target) + " HTTP/1.1\r\nHost: a\r\n\r\n") == 501);
    }
    for (const char* version : {"HTTP/2.0", "HTTP/0.9", "HTTP/3.1"}) {
        CAPTURE(version);
        CHECK(refusal("GET http://a/ " + std::string(version) + "\r\nHost: a\r\n\r\n",
                      errc::unsupported_version) == 505);
    }
}

TEST_CASE("http_request_parser: 414 for a long target, 431 for long or many fields") {
    http_head_limits limits;
    limits.max_line = 40;
    limits.max_fields = 3;
    limits.max_head = 200;
    std::string line = "GET http://a/" + std::string(40 - 13 - 11, 'x') + " HTTP/1.1\r\n";
    REQUIRE(line.size() == 40);
    tptest::request_run fits = requests(line + "Host: a\r\n\r\n", limits);
    CHECK_FALSE(fits.failed);
    CHECK(fits.heads.size() == 1);

    std::string longer = "GET http://a/" + std::string(40, 'x') + " HTTP/1.1\r\nHost: a\r\n\r\n";
    CHECK(refusal(longer, errc::message_too_large, limits) == 414);
    // Past max_line in the version, or before the method's space: not the target's fault.
    CHECK(refusal("GET http://a/" + std::string(21, 'x') + " HTTP/1.1\r\n\r\n",
                  errc::message_too_large, limits) == 400);
    CHECK(refusal(std::string(45, 'G') + " http://a/ HTTP/1.1\r\n\r\n", errc::message_too_large,
                  limits) == 400);

    std::string field = "X-Long: " + std::string(31, 'v') + "\r\n";
    CHECK(field.size() == 41);
    CHECK(refusal("GET http://a/ HTTP/1.1\r\nHost: a\r\n" + field + "\r\n", errc::message_too_large,
                  limits) == 431);
    std::string three = "GET http://a/ HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n";
    CHECK(requests(three + "\r\n", limits).heads.size() == 1);
    CHECK(refusal(three + "C: 3\r\n\r\n", errc::message_too_large, limits) == 431);

    limits.max_fields = 100;
    tptest::request_run big =
        requests("GET http://a/ HTTP/1.1\r\nHost: a\r\nA: " + std::string(25, 'a') +
                     "\r\nB: " + std::string(25, 'b') + "\r\n\r\n",
                 limits);
    CHECK_FALSE(big.failed);
    // Empty lines before the request line count against max_head too.
    CHECK(refusal(std::string(200, '\n') + "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
                  errc::message_too_large, limits) == 431);
    std::string past;
    for (int i = 0; i < 6; ++i) {
        past += "F" + std::to_string(i) + ": " + std::string(25, 'v') + "\r\n";
    }
    CHECK(refusal("GET http://a/ HTTP/1.1\r\nHost: a\r\n" + past + "\r\n", errc::message_too_large,
                  limits) == 431);
}

TEST_CASE("http_request_parser: used stops at the head's end; pipelined requests") {
    const std::string first = "POST http://a/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
    const std::string second = "GET http://b:81/y HTTP/1.1\r\nHost: b\r\n\r\n";

    http_request_parser parser;
    std::string stream = first + "hello" + second;
    std::size_t used = 0;
    REQUIRE(parser.feed(view(stream), used) == http_request_parser::status::complete);
    CHECK(used == first.size());
    CHECK(parser.started());
    std::size_t again = 7;
    CHECK(parser.feed(view(stream), again) == http_request_parser::status::complete);
    CHECK(again == 0);
    http_request_head head = parser.take();
    CHECK(head.body.length == 5);
    CHECK_FALSE(parser.started());
    REQUIRE(parser.feed(view(stream).subview(used + 5), used) ==
            http_request_parser::status::complete);
    CHECK(used == second.size());
    CHECK(parser.take().origin.port == 81);

    // Heads back to back, read in every split.
    tptest::request_run run = requests(second + "\r\n" + second + first);
    CHECK_FALSE(run.failed);
    REQUIRE(run.heads.size() == 3);
    CHECK(run.ends[0] == second.size());
    CHECK(run.ends[1] == 2 * second.size() + 2);
    CHECK(run.heads[2].method == "POST");

    // A refusal after a good request leaves the good one read.
    tptest::request_run bad = requests(second + "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK(bad.failed);
    CHECK(bad.error_status == 400);
    CHECK(bad.heads.size() == 1);

    // started(): an empty line counts; reset() forgets it.
    http_request_parser idle;
    CHECK_FALSE(idle.started());
    CHECK(idle.feed(view("\r\n"), used) == http_request_parser::status::need_more);
    CHECK(idle.started());
    idle.reset();
    CHECK_FALSE(idle.started());

    // Every truncation of a request needs more.
    for (std::size_t size = 0; size < second.size(); ++size) {
        http_request_parser partial;
        CHECK(partial.feed(view(second).first(size), used) ==
              http_request_parser::status::need_more);
        CHECK(used == size);
    }
}

TEST_CASE("http_body_scanner: chunked bodies") {
    chunked_body_ends("0\r\n\r\n");
    chunked_body_ends("5\r\nhello\r\n0\r\n\r\n");
    chunked_body_ends("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "");
    chunked_body_ends("A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n");
    chunked_body_ends("000\r\n\r\n");
    chunked_body_ends("0000000000000005\r\nhello\r\n0000000000000000\r\n\r\n");
    // extensions: ';' and visible text (quoted strings, '=' and BWS) up to the line's end
    chunked_body_ends("5;name=value\r\nhello\r\n5 ; x ; y=\"q \\\" z\"\r\nworld\r\n"
                      "0;last\r\n\r\n");
    chunked_body_ends("5\t;ext\r\nhello\r\n0\r\n\r\n");
    chunked_body_ends("3;\xe9\r\nabc\r\n0\r\n\r\n");
    // trailers
    chunked_body_ends("5\r\nhello\r\n0\r\nX-Checksum: abc\r\nExpires:\r\n\r\n");
    chunked_body_ends("0\r\nX-T:1\r\n\r\n", "0\r\n\r\n");
    // chunk data is anything, CR and LF included
    chunked_body_ends("4\r\n\r\n\r\n\r\n0\r\n\r\n");

    // A huge chunk-size is read: the body just goes on.
    tptest::body_run huge = body(chunked, "ffffffffffffffff\r\nabc");
    CHECK(huge.what == http_body_scanner::status::more);
    CHECK(huge.used == 21);
}

TEST_CASE("http_body_scanner: malformed chunked bodies fail") {
    const char* bodies[] = {
        "\r\n",                           // no chunk-size
        ";x\r\n",                         // extension without size
        "5x\r\nhello\r\n0\r\n\r\n",       // junk after the size
        "5 \r\nhello\r\n0\r\n\r\n",       // whitespace not before ';'
        "-5\r\n",                         // a sign
        "0x5\r\n",                        // a prefix
        "00000000000000005\r\nhello\r\n", // 17 hex digits
        "10000000000000000\r\n",          // 2^64
        "5\nhello\r\n0\r\n\r\n",          // bare LF after the size
        "5\rhello\r\n0\r\n\r\n",          // bare CR after the size
        "5;x\nhello\r\n0\r\n\r\n",        // bare LF after an extension
        "5;a\x01\r\nhello\r\n0\r\n\r\n",  // control character in an extension
        "5\r\nhello\n0\r\n\r\n",          // bare LF after the data
        "5\r\nhelloX\r\n0\r\n\r\n",       // data longer than its size
        "5\r\nhello\r\r\n0\r\n\r\n",      // CR CR LF
        "0\r\n\n",                        // bare LF ending the trailers
        "0\r\nX: 1\n\r\n",                // bare LF ending a trailer
        "0\r\nX: 1\r\n folded\r\n\r\n",   // obs-fold in the trailers
        "0\r\nno colon\r\n\r\n",          // not a field
        "0\r\nX : 1\r\n\r\n",             // space before the colon
        "0\r\nX: a\x7f\r\n\r\n",          // control character in a trailer
        "0\r\nX: 1\r\r\n",                // CR CR LF in a trailer
    };
    for (const char* input : bodies) {
        CAPTURE(input);
        CHECK(chunked_body_fails(input) == errc::protocol_error);
    }

    http_head_limits limits;
    limits.max_line = 16;
    limits.max_fields = 2;
    // The chunk-size line, line end included, within max_line.
    CHECK(body(chunked, "5;" + std::string(12, 'e') + "\r\nhello\r\n0\r\n\r\n", limits).what ==
          http_body_scanner::status::complete);
    CHECK(chunked_body_fails("5;" + std::string(13, 'e') + "\r\nhello\r\n0\r\n\r\n", limits) ==
          errc::message_too_large);
    CHECK(body(chunked, "0\r\nA: 1\r\nB: 2\r\n\r\n", limits).what ==
          http_body_scanner::status::complete);
    CHECK(chunked_body_fails("0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits) ==
          errc::message_too_large);
    CHECK(chunked_body_fails("0\r\nA: " + std::string(20, 'v') + "\r\n\r\n", limits) ==
          errc::message_too_large);
}

TEST_CASE("http_body_scanner: length, none and until_close") {
    tptest::body_run length = body({kind::length, 5}, "helloGET / HTTP/1.1\r\n");
    CHECK(length.what == http_body_scanner::status::complete);
    CHECK(length.used == 5);
    tptest::body_run short_body = body({kind::length, 5}, "hell");
    CHECK(short_body.what == http_body_scanner::status::more);
    CHECK(short_body.used == 4);

    tptest::body_run empty = body({kind::length, 0}, "GET");
    CHECK(empty.what == http_body_scanner::status::complete);
    CHECK(empty.used == 0);
    tptest::body_run none = body({kind::none, 0}, "GET");
    CHECK(none.what == http_body_scanner::status::complete);
    CHECK(none.used == 0);
    CHECK(http_body_scanner{}.complete());
    CHECK(http_body_scanner({kind::length, 0}).complete());
    CHECK_FALSE(http_body_scanner({kind::length, 1}).complete());
    CHECK_FALSE(http_body_scanner(chunked).complete());

    const std::string anything = "anything\r\n0\r\n\r\nat all";
    tptest::body_run until_close = body({kind::until_close, 0}, anything);
    CHECK(until_close.what == http_body_scanner::status::more);
    CHECK(until_close.used == anything.size());

    // A length past what size_t counts in one feed is fine: it only counts down.
    http_body_scanner big({kind::length, 9223372036854775807u});
    std::size_t used = 0;
    CHECK(big.feed(view("abc"), used) == http_body_scanner::status::more);
    CHECK(used == 3);
}

TEST_CASE("http_response_parser: framing") {
    struct row {
        const char* method;
        const char* head;
        kind what;
        std::uint64_t length;
        bool keep_alive;
    };
    const row rows[] = {
        {"GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", kind::length, 5, true},
        {"GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", kind::length,
         5, true},
        {"GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", kind::chunked, 0, true},
        {"GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", kind::chunked, 0,
         true},
        {"GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", kind::until_close, 0, false},
        {"GET", "HTTP/1.1 200 OK\r\n\r\n", kind::until_close, 0, false},
        {"GET", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", kind::length,
         2, false},
        {"GET", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", kind::length, 2, false},
        {"GET", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
         kind::length, 2, true},
        {"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", kind::none, 0, true},
        {"HEAD", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", kind::none, 0, true},
        {"HEAD", "HTTP/1.1 404 Not Found\r\n\r\n", kind::none, 0, true},
        {"GET", "HTTP/1.1 204 No Content\r\n\r\n", kind::none, 0, true},
        {"GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", kind::none, 0, true},
        {"GET", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", kind::none, 0,
         true},
        {"CONNECT", "HTTP/1.1 200 Connection established\r\n\r\n", kind::none, 0, true},
        {"CONNECT", "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
         kind::length, 0, true},
        {"POST", "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", kind::length, 0, true},
        {"GET", "HTTP/1.1 599 Odd\r\nContent-Length: 1\r\n\r\n", kind::length, 1, true},
    };
    for (const row& r : rows) {
        CAPTURE(r.method);
        CAPTURE(r.head);
        http_response_head head = response(r.head, r.method);
        CHECK(head.body.what == r.what);
        CHECK(head.body.length == r.length);
        CHECK(head.keep_alive == r.keep_alive);
    }
}

TEST_CASE("http_response_parser: status lines") {
    http_response_head ok = response("HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 0\r\n\r\n");
    CHECK(ok.minor_version == 1);
    CHECK(ok.status == 200);
    CHECK(ok.reason == "OK");
    CHECK(*ok.field("server") == "x");
    CHECK_FALSE(ok.interim());
    CHECK(response("HTTP/1.1 200 \r\n\r\n").reason.empty());
    CHECK(response("HTTP/1.1 200\r\n\r\n").reason.empty());
    CHECK(response("HTTP/1.1 200\n\n").status == 200);
    CHECK(response("\r\nHTTP/1.0 404 Not  Found \r\n\r\n").reason == "Not  Found ");
    CHECK(response("HTTP/1.1 200 caf\xc3\xa9\tok\r\n\r\n").reason == "caf\xc3\xa9\tok");
    CHECK(response("HTTP/1.1 999 x\r\n\r\n").status == 999);

    const char* bad[] = {
        "HTTP/1.1 99 Low\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2x0 OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n",
        "HTTP/1.1\t200 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX : 1\r\n\r\n",
        "HTTP/1.1 200 OK\rX: 1\r\n\r\n",
        "HTTP/1.1 200 O\x01K\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "SSH-2.0-OpenSSH_9.2\r\n\r\n",
    };
    for (const char* input : bad) {
        CAPTURE(input);
        tptest::response_run run = responses(input);
        CHECK(run.failed);
        CHECK(run.error_status == 502);
        CHECK(run.error == errc::protocol_error);
    }
    tptest::response_run two = responses("HTTP/2.0 200 OK\r\n\r\n");
    CHECK(two.error_status == 502);
    CHECK(two.error == errc::unsupported_version);

    http_head_limits limits;
    limits.max_fields = 1;
    tptest::response_run many = responses("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", "GET", limits);
    CHECK(many.error_status == 502);
    CHECK(many.error == errc::message_too_large);
    limits.max_line = 20;
    limits.max_fields = 10;
    tptest::response_run line = responses("HTTP/1.1 200 A long reason\r\n\r\n", "GET", limits);
    CHECK(line.error_status == 502);
    CHECK(line.error == errc::message_too_large);
}

TEST_CASE("http_response_parser: interim responses, then the final one") {
    const std::string interim = "HTTP/1.1 100 Continue\r\n\r\n";
    const std::string hints = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
    const std::string final_head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    tptest::response_run run = responses(interim + hints + final_head + "okHTTP/1.1", "POST");
    CHECK_FALSE(run.failed);
    REQUIRE(run.heads.size() == 3);
    CHECK(run.heads[0].interim());
    CHECK(run.heads[0].status == 100);
    CHECK(run.heads[0].body.what == kind::none);
    CHECK(run.heads[1].interim());
    CHECK(run.heads[2].status == 200);
    CHECK(run.heads[2].body.what == kind::length);
    CHECK(run.used == interim.size() + hints.size() + final_head.size());

    // The method survives take(): a HEAD's final response after a 100 has no body either.
    http_response_parser parser;
    parser.reset("HEAD");
    std::string stream = interim + "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
    std::size_t used = 0;
    REQUIRE(parser.feed(view(stream), used) == http_response_parser::status::complete);
    CHECK(parser.take().interim());
    REQUIRE(parser.feed(view(stream).subview(used), used) ==
            http_response_parser::status::complete);
    http_response_head head = parser.take();
    CHECK(head.status == 200);
    CHECK(head.body.what == kind::none);
    CHECK_FALSE(http_response_head{}.interim());
}

TEST_CASE("origin_request_head: hop-by-hop fields dropped, Host first, Via appended") {
    http_request_head head = request("GET http://Example.com:8080/p?q HTTP/1.1\r\n"
                                     "User-Agent: ua\r\n"
                                     "Host: wrong.example\r\n"
                                     "Connection: keep-alive, X-Hop\r\n"
                                     "X-Hop: 1\r\n"
                                     "x-hop: 2\r\n"
                                     "Proxy-Connection: keep-alive\r\n"
                                     "Keep-Alive: 300\r\n"
                                     "Proxy-Authorization: Basic dTpw\r\n"
                                     "TE: trailers\r\n"
                                     "Trailer: X-Sum\r\n"
                                     "Upgrade: h2c\r\n"
                                     "Via: 1.0 other\r\n"
                                     "Accept: */*\r\n"
                                     "Max-Forwards: 5\r\n"
                                     "\r\n");
    CHECK(tinyproxy::origin_request_head(head, "tinyproxy") == "GET /p?q HTTP/1.1\r\n"
                                                               "Host: Example.com:8080\r\n"
                                                               "User-Agent: ua\r\n"
                                                               "Via: 1.0 other\r\n"
                                                               "Accept: */*\r\n"
                                                               "Max-Forwards: 5\r\n"
                                                               "Via: 1.1 tinyproxy\r\n"
                                                               "\r\n");

    CHECK(tinyproxy::origin_request_head(request("GET http://[::1]/ HTTP/1.1\r\nHost: x\r\n\r\n"),
                                         "p") ==
          "GET / HTTP/1.1\r\nHost: [::1]\r\nVia: 1.1 p\r\n\r\n");
    CHECK(tinyproxy::origin_request_head(
              request("GET http://[::1]:8080 HTTP/1.1\r\nHost: x\r\n\r\n"), "p") ==
          "GET / HTTP/1.1\r\nHost: [::1]:8080\r\nVia: 1.1 p\r\n\r\n");

    // Bodies pass through unchanged, so their framing fields do too.
    CHECK(tinyproxy::origin_request_head(
              request("POST http://a/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                      "Expect: 100-continue\r\n\r\n"),
              "p") == "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                      "Expect: 100-continue\r\nVia: 1.1 p\r\n\r\n");
    CHECK(tinyproxy::origin_request_head(
              request("PUT http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"), "p") ==
          "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nVia: 1.1 p\r\n\r\n");
}

TEST_CASE("the framing fields are kept even when Connection names them") {
    // Dropping them while the body passes through would turn the body into another message.
    CHECK(tinyproxy::origin_request_head(
              request("POST http://a/ HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, "
                      "host, X-A\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n"),
              "p") == "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nVia: 1.1 p\r\n\r\n");
    CHECK(tinyproxy::client_response_head(
              response("HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n"),
              "p", 1,
              false) == "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVia: 1.1 p\r\n\r\n");
}

TEST_CASE("origin_request_head: HTTP/1.0 and Max-Forwards") {
    CHECK(tinyproxy::origin_request_head(
              request("GET http://a/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), "tp") ==
          "GET / HTTP/1.0\r\nHost: a\r\nVia: 1.0 tp\r\nConnection: keep-alive\r\n\r\n");
    CHECK(tinyproxy::origin_request_head(request("GET http://a:81/ HTTP/1.0\r\n\r\n"), "tp") ==
          "GET / HTTP/1.0\r\nHost: a:81\r\nVia: 1.0 tp\r\n\r\n");

    struct row {
        const char* method;
        const char* value;
        const char* sent;
    };
    const row rows[] = {
        {"OPTIONS", "5", "4"},
        {"TRACE", "1", "0"},
        {"TRACE", "0", "0"},
        {"OPTIONS", "010", "9"},
        {"GET", "5", "5"},
        {"TRACE", "x", "x"},
        {"TRACE", "18446744073709551616", "18446744073709551616"},
    };
    for (const row& r : rows) {
        CAPTURE(r.method);
        CAPTURE(r.value);
        http_request_head head = request(std::string(r.method) + " http://a/ HTTP/1.1\r\nHost: " +
                                         "a\r\nMax-Forwards: " + r.value + "\r\n\r\n");
        CHECK(tinyproxy::origin_request_head(head, "tp") ==
              std::string(r.method) + " / HTTP/1.1\r\nHost: a\r\nMax-Forwards: " + r.sent +
                  "\r\nVia: 1.1 tp\r\n\r\n");
    }
}

TEST_CASE("client_response_head: hop-by-hop fields dropped, Via and Connection appended") {
    http_response_head head = response("HTTP/1.1 200 OK\r\n"
                                       "Content-Type: text/plain\r\n"
                                       "Connection: X-Foo\r\n"
                                       "X-Foo: bar\r\n"
                                       "Keep-Alive: timeout=5\r\n"
                                       "Proxy-Authenticate: Basic realm=\"x\"\r\n"
                                       "Transfer-Encoding: chunked\r\n"
                                       "Upgrade: foo\r\n"
                                       "Trailer: X-Sum\r\n"
                                       "Via: 1.1 cache\r\n"
                                       "\r\n");
    const std::string kept = "HTTP/1.1 200 OK\r\n"
                             "Content-Type: text/plain\r\n"
                             "Proxy-Authenticate: Basic realm=\"x\"\r\n"
                             "Transfer-Encoding: chunked\r\n"
                             "Via: 1.1 cache\r\n"
                             "Via: 1.1 tinyproxy\r\n";
    CHECK(tinyproxy::client_response_head(head, "tinyproxy", 1, false) == kept + "\r\n");
    CHECK(tinyproxy::client_response_head(head, "tinyproxy", 1, true) ==
          kept + "Connection: close\r\n\r\n");
    CHECK(tinyproxy::client_response_head(head, "tinyproxy", 0, false) ==
          kept + "Connection: keep-alive\r\n\r\n");
    CHECK(tinyproxy::client_response_head(head, "tinyproxy", 0, true) ==
          kept + "Connection: close\r\n\r\n");

    http_response_head old =
        response("HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n");
    CHECK(tinyproxy::client_response_head(old, "p", 1, false) ==
          "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nVia: 1.0 p\r\n\r\n");
    CHECK(tinyproxy::client_response_head(response("HTTP/1.1 204\r\n\r\n"), "p", 1, false) ==
          "HTTP/1.1 204 \r\nVia: 1.1 p\r\n\r\n");
}

TEST_SUITE_END();
