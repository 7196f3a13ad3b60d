// The HTTP forward proxy's two relay stages and its Mode session, driven without sockets
// (tests/support/http_exchange_driver.hpp): what the origin and the client receive, byte-exact.
#include <doctest/doctest.h>

#include <string>

#include "support/http_exchange_driver.hpp"

using tptest::http_exchange_driver;

namespace {

const std::string get1 = "GET http://a.test/one HTTP/1.1\r\nHost: a.test\r\n\r\n";
const std::string get2 = "GET http://a.test/two HTTP/1.1\r\nHost: a.test\r\n\r\n";
const std::string origin_get1 =
    "GET /one HTTP/1.1\r\nHost: a.test\r\nVia: 1.1 tinyproxy.hpp\r\n\r\n";
const std::string origin_get2 =
    "GET /two HTTP/1.1\r\nHost: a.test\r\nVia: 1.1 tinyproxy.hpp\r\n\r\n";
const std::string resp1 = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const std::string resp2 =
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
const std::string client_resp1 =
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: 1.1 tinyproxy.hpp\r\n\r\nhello";
const std::string client_resp2 = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVia: 1.1 "
                                 "tinyproxy.hpp\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

/// Feeds `text` cut at `cut` (none when cut is 0 or past the end), or a byte at a time.
template <class Feed>
void feed_split(const std::string& text, std::size_t cut, bool bytewise, Feed feed) {
    if (bytewise) {
        for (char c : text) {
            feed(std::string(1, c));
        }
        return;
    }
    if (cut == 0 || cut >= text.size()) {
        feed(text);
        return;
    }
    feed(text.substr(0, cut));
    feed(text.substr(cut));
}

} // namespace

TEST_CASE("http exchange: two keep-alive GETs, Content-Length then chunked, in every split") {
    const std::string client = get1 + get2;
    const std::string origin = resp1 + resp2;
    for (std::size_t mode = 0; mode < 2; ++mode) {
        std::size_t cuts = mode == 0 ? client.size() + origin.size() : 1;
        for (std::size_t cut = 0; cut < cuts; ++cut) {
            http_exchange_driver d;
            std::size_t client_cut = cut < client.size() ? cut : 0;
            std::size_t origin_cut = cut >= client.size() ? cut - client.size() : 0;
            feed_split(client, client_cut, mode == 1, [&](const std::string& s) { d.client(s); });
            feed_split(origin, origin_cut, mode == 1, [&](const std::string& s) { d.origin(s); });
            REQUIRE(d.connects.size() == 1);
            CHECK(d.connects[0].host == "a.test");
            CHECK(d.connects[0].port == 80);
            CHECK(d.to_origin[0] == origin_get1 + origin_get2);
            CHECK(d.to_client == client_resp1 + client_resp2);
            CHECK(d.after_end == 0);
            CHECK_FALSE(d.client_gone());
        }
    }
}

TEST_CASE("http exchange: a request for another origin waits, then the client is handed back") {
    http_exchange_driver d;
    d.client(get1 + "GET http://b.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n");
    REQUIRE(d.connects.size() == 1);
    CHECK(d.hand_backs == 0); // the first response is still owed
    d.origin(resp1.substr(0, 20));
    CHECK(d.hand_backs == 0);
    d.origin(resp1.substr(20));
    CHECK(d.hand_backs == 1);
    REQUIRE(d.connects.size() == 2);
    CHECK(d.connects[1].host == "b.test");
    CHECK(d.to_client == client_resp1);
    CHECK(d.to_origin[1] == "GET /x HTTP/1.1\r\nHost: b.test\r\nVia: 1.1 tinyproxy.hpp\r\n\r\n");
}

TEST_CASE("http exchange: a malformed second request is handed back and refused with 400") {
    http_exchange_driver d;
    d.client(get1 + "POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n");
    d.origin(resp1);
    CHECK(d.hand_backs == 1);
    CHECK(d.failed);
    CHECK(d.to_origin[0] == origin_get1);
    REQUIRE(d.to_client.size() > client_resp1.size());
    CHECK(d.to_client.compare(0, client_resp1.size(), client_resp1) == 0);
    CHECK(d.to_client.compare(client_resp1.size(), 12, "HTTP/1.1 400") == 0);
}

TEST_CASE("http exchange: an origin that talks out of turn is cut off") {
    // Nothing is awaited, so there is no request to answer with a 502 (bad_response): the
    // tunnel closes, and the client has what was answered before.
    http_exchange_driver d;
    d.client(get1);
    d.origin(resp1);
    d.origin("HTTP/1.1 200 OK\r\n\r\n");
    const auto* flags = d.tunnel_flags();
    REQUIRE(flags != nullptr);
    CHECK(flags->closed);
    CHECK(d.to_client == client_resp1);
}

TEST_CASE("http exchange: 100 Continue and the final response both reach the client") {
    http_exchange_driver d;
    d.client("POST http://a.test/p HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\n"
             "Content-Length: 2\r\n\r\n");
    d.origin("HTTP/1.1 100 Continue\r\n\r\n");
    d.client("hi");
    d.origin(resp1);
    CHECK(d.to_origin[0] == "POST /p HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\n"
                            "Content-Length: 2\r\nVia: 1.1 tinyproxy.hpp\r\n\r\nhi");
    CHECK(d.to_client == "HTTP/1.1 100 Continue\r\nVia: 1.1 tinyproxy.hpp\r\n\r\n" + client_resp1);
}

TEST_CASE("http exchange: a response head cut short by the origin is a 502 and a close") {
    http_exchange_driver d;
    d.client(get1);
    d.origin("HTTP/1.1 200 OK\r\nContent-");
    d.origin_end();
    const auto* flags = d.tunnel_flags();
    REQUIRE(flags != nullptr);
    CHECK(flags->closed);
    CHECK(d.to_client.compare(0, 12, "HTTP/1.1 502") == 0);
}
