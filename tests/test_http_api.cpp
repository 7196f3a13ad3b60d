// Tests for api/http.hpp and api/http_server.hpp: the request reader with no sockets (every
// vector whole, a byte at a time and split at every position, with the same outcome), the
// response writer, and the server over loopback with raw sockets and with curl.
#include <doctest/doctest.h>

#include <atomic>       // the handler's counters
#include <chrono>       // timeouts
#include <cstddef>      // std::size_t
#include <cstdlib>      // std::atoi
#include <stdexcept>    // a handler that throws
#include <string>       // requests, responses
#include <string_view>  // views
#include <system_error> // listen's error
#include <thread>       // the server's thread
#include <vector>       // requests, sockets

#include <sys/socket.h> // recv, send

#include <tinyproxy/tinyproxy.hpp>

#include "support/http_feed.hpp"
#include "support/interop_helpers.hpp"
#include "support/loopback.hpp"
#include "support/skip.hpp"
#include "support/split_feed.hpp"
#include "support/timing.hpp"

namespace {

using namespace std::chrono_literals;
using tinyproxy::http_header;
using tinyproxy::http_limits;
using tinyproxy::http_request;
using tinyproxy::http_request_reader;
using tinyproxy::http_response;

const auto doctest_check = [](bool ok, const char* what) { CHECK_MESSAGE(ok, what); };

/// Text as bytes (a std::string is two conversions away from a byte_view).
tinyproxy::byte_view bytes_of(std::string_view text) { return text; }

/// Reads `stream` whole, then a byte at a time and split at every `stride`-th position (and at
/// pairs of positions `gap` apart), and checks every cut reads the same as the whole.
tptest::http_run read_every_way(const std::string& stream, http_limits limits = {},
                                std::size_t stride = 1, std::size_t gap = 7) {
    tptest::http_run whole = tptest::drive_http(bytes_of(stream), {}, limits, doctest_check);
    for (const tptest::cuts& plan : tptest::split_plans(stream.size(), stride, gap)) {
        tptest::http_run cut = tptest::drive_http(bytes_of(stream), plan, limits, doctest_check);
        tptest::check_same_http_run(cut, whole, doctest_check);
    }
    return whole;
}

/// The status a stream is refused with (0 when it is not), read every way.
int refusal(const std::string& stream, http_limits limits = {}) {
    tptest::http_run run = read_every_way(stream, limits, 3);
    return run.failed ? run.error_status : 0;
}

} // namespace

// --- the reader ----------------------------------------------------------------------------------

TEST_CASE("http reader: a GET with its fields, path and query, read every way") {
    const std::string stream = "GET /proxies/a%20b?x=1&y HTTP/1.1\r\nHost: localhost:8474\r\n"
                               "User-Agent: test\r\nX-Empty:\r\nX-Pad: \t spaced \t\r\n\r\n";
    tptest::http_run run = read_every_way(stream);
    REQUIRE_FALSE(run.failed);
    REQUIRE(run.requests.size() == 1);
    const http_request& request = run.requests[0];
    CHECK(run.used == stream.size());
    CHECK(request.method == "GET");
    CHECK(request.target == "/proxies/a%20b?x=1&y");
    CHECK(request.path() == "/proxies/a%20b");
    CHECK(request.query() == "x=1&y");
    CHECK(request.minor_version == 1);
    REQUIRE(request.headers.size() == 4);
    REQUIRE(request.header("HOST") != nullptr);
    CHECK(*request.header("host") == "localhost:8474");
    CHECK(*request.header("x-empty") == "");
    CHECK(*request.header("X-PAD") == "spaced");
    CHECK(request.header("missing") == nullptr);
    CHECK(request.body.empty());
    CHECK(request.keep_alive());
}

TEST_CASE("http reader: bare LF line ends, empty lines before the request, absolute form") {
    tptest::http_run run =
        read_every_way("\r\n\nGET http://localhost:8474/version?v HTTP/1.0\nHost: x\n\n");
    REQUIRE(run.requests.size() == 1);
    CHECK(run.requests[0].path() == "/version");
    CHECK(run.requests[0].query() == "v");
    CHECK(run.requests[0].minor_version == 0);
    tptest::http_run bare = read_every_way("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(bare.requests.size() == 1);
    CHECK(bare.requests[0].path() == "*");
    tptest::http_run no_path = read_every_way("GET http://h HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(no_path.requests.size() == 1);
    CHECK(no_path.requests[0].path() == "/");
}

TEST_CASE("http reader: a Content-Length body, and a repeated equal Content-Length") {
    const std::string body = "{\"name\":\"redis\",\"listen\":\"127.0.0.1:0\"}";
    const std::string stream = "POST /proxies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " +
                               std::to_string(body.size()) + "\r\n\r\n" + body;
    tptest::http_run run = read_every_way(stream);
    REQUIRE(run.requests.size() == 1);
    CHECK(run.requests[0].body == body);
    tptest::http_run twice = read_every_way(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc");
    REQUIRE(twice.requests.size() == 1);
    CHECK(twice.requests[0].body == "abc");
}

TEST_CASE("http reader: two pipelined requests in one feed, the first ending at `used`") {
    const std::string first = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
    const std::string second = "GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    http_request_reader reader;
    std::size_t used = 0;
    const std::string both = first + second;
    REQUIRE(reader.feed(bytes_of(both), used) == http_request_reader::status::complete);
    CHECK(used == first.size());
    std::size_t again = 99;
    CHECK(reader.feed(bytes_of(both).subview(used), again) ==
          http_request_reader::status::complete); // until take(), nothing more is read
    CHECK(again == 0);
    http_request a = reader.take();
    CHECK(a.path() == "/a");
    CHECK(a.body == "hi");
    CHECK_FALSE(reader.started());
    REQUIRE(reader.feed(bytes_of(both).subview(used), again) ==
            http_request_reader::status::complete);
    CHECK(again == second.size());
    http_request b = reader.take();
    CHECK(b.path() == "/b");
    CHECK_FALSE(b.keep_alive());
    // Every cut of the pair reads the same two requests.
    CHECK(read_every_way(both).requests.size() == 2);
}

TEST_CASE("http reader: chunked bodies, extensions skipped, trailers dropped") {
    const std::string stream = "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
                               "5;name=value\r\nhello\r\n"
                               "1 ; x\r\n \r\n"
                               "A\r\n0123456789\r\n"
                               "0\r\nX-Trailer: t\r\n\r\n"
                               "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    tptest::http_run run = read_every_way(stream);
    REQUIRE_FALSE(run.failed);
    REQUIRE(run.requests.size() == 2);
    CHECK(run.requests[0].body == "hello 0123456789");
    CHECK(run.requests[1].path() == "/next");
    tptest::http_run lf =
        read_every_way("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n");
    REQUIRE(lf.requests.size() == 1);
    CHECK(lf.requests[0].body == "abc");
}

TEST_CASE("http reader: Expect: 100-continue is told once the head is in") {
    http_request_reader reader;
    std::size_t used = 0;
    const std::string head =
        "PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n";
    CHECK_FALSE(reader.expects_continue());
    REQUIRE(reader.feed(bytes_of(head.substr(0, 20)), used) ==
            http_request_reader::status::need_more);
    CHECK(reader.started());
    CHECK_FALSE(reader.reading_body());
    CHECK_FALSE(reader.expects_continue());
    REQUIRE(reader.feed(bytes_of(head.substr(20)), used) == http_request_reader::status::need_more);
    CHECK(reader.reading_body());
    CHECK(reader.expects_continue());
    REQUIRE(reader.feed(bytes_of("ab"), used) == http_request_reader::status::need_more);
    CHECK(reader.expects_continue());
    REQUIRE(reader.feed(bytes_of("cd"), used) == http_request_reader::status::complete);
    CHECK_FALSE(reader.expects_continue());
    CHECK(reader.take().body == "abcd");
    CHECK_FALSE(reader.expects_continue());
}

TEST_CASE("http reader: keep-alive by version and Connection") {
    auto keep_alive = [](const std::string& version, const std::string& fields) {
        std::string stream = "GET / " + version + "\r\nHost: a\r\n" + fields + "\r\n";
        tptest::http_run run = tptest::drive_http(bytes_of(stream), {}, {}, doctest_check);
        REQUIRE(run.requests.size() == 1);
        return run.requests[0].keep_alive();
    };
    CHECK(keep_alive("HTTP/1.1", ""));
    CHECK_FALSE(keep_alive("HTTP/1.1", "Connection: close\r\n"));
    CHECK_FALSE(keep_alive("HTTP/1.1", "Connection: upgrade\r\nConnection: foo, Close\r\n"));
    CHECK_FALSE(keep_alive("HTTP/1.0", ""));
    CHECK(keep_alive("HTTP/1.0", "Connection: Keep-Alive\r\n"));
    CHECK(keep_alive("HTTP/1.9", "")); // a later 1.x minor is read as 1.1
}

TEST_CASE("http reader: malformed requests are refused with 400") {
    const char* const cases[] = {
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",              // trailing space in the request line
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",              // two spaces
        "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",            // a space in the target
        "GET foo HTTP/1.1\r\nHost: a\r\n\r\n",             // not origin, absolute or asterisk form
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",               // a method that is not a token
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",    // a bare CR in a value
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", // obs-fold
        "GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",      // whitespace before the colon
        "GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n",   // no colon
        "GET / HTTP/1.1\r\n\r\n",                          // 1.1 without Host
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",    // two Host fields
        "GET /\t HTTP/1.1\r\nHost: a\r\n\r\n",             // HTAB in the request line
        "GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",           // a byte >= 0x80 in the request line
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
        // Both framings: the request smuggling pattern.
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 x\r\nabc\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
    };
    for (const char* text : cases) {
        CAPTURE(text);
        CHECK(refusal(text) == 400);
    }
    // A NUL inside a value (a string literal would end at it).
    std::string nul = "GET / HTTP/1.1\r\nHost: a\r\nX: a";
    nul += '\0';
    nul += "b\r\n\r\n";
    CHECK(refusal(nul) == 400);
}

TEST_CASE("http reader: 413 for a body past max_body, by Content-Length or by chunks") {
    http_limits limits;
    limits.max_body = 10;
    CHECK(refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789", limits) ==
          0);
    CHECK(refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", limits) == 413);
    CHECK(refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                  limits) == 413);
    const std::string chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    CHECK(refusal(chunked + "6\r\n012345\r\n4\r\n6789\r\n0\r\n\r\n", limits) == 0);
    CHECK(refusal(chunked + "6\r\n012345\r\n5\r\n", limits) == 413);
    CHECK(refusal(chunked + "ffffffffffffffffffffffff\r\n", limits) == 413);
    limits.max_body = 0;
    CHECK(refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", limits) == 413);
    CHECK(refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", limits) == 0);
}

TEST_CASE("http reader: 431 for a head past max_head, too many fields, or long trailers") {
    http_limits limits;
    limits.max_head = 64;
    limits.max_headers = 3;
    const std::string head = "GET / HTTP/1.1\r\nHost: a\r\n";
    // Exactly max_head bytes, blank line included, passes; one more does not.
    std::string fits = head + "X: " + std::string(64 - head.size() - 7, 'v') + "\r\n\r\n";
    REQUIRE(fits.size() == 64);
    CHECK(refusal(fits, limits) == 0);
    std::string over = head + "X: " + std::string(64 - head.size() - 6, 'v') + "\r\n\r\n";
    CHECK(refusal(over, limits) == 431);
    // Fails on the first byte past the limit, without waiting for the end of the line.
    http_request_reader reader(limits);
    std::size_t used = 0;
    CHECK(reader.feed(bytes_of(std::string(65, 'G')), used) == http_request_reader::status::failed);
    CHECK(reader.error_status() == 431);
    CHECK(refusal(head + "A: 1\r\nB: 2\r\n\r\n", limits) == 0);
    CHECK(refusal(head + "A: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits) == 431);
    const std::string chunked =
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n";
    limits.max_head = 128;
    CHECK(refusal(chunked + "T: " + std::string(100, 't') + "\r\n\r\n", limits) == 0);
    CHECK(refusal(chunked + "T: " + std::string(130, 't') + "\r\n\r\n", limits) == 431);
}

TEST_CASE("http reader: 501 for other transfer codings, 505 for other versions") {
    CHECK(refusal("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n") == 501);
    CHECK(refusal("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") == 501);
    CHECK(refusal("GET / HTTP/2.0\r\nHost: a\r\n\r\n") == 505);
    CHECK(refusal("GET / HTTP/0.9\r\n\r\n") == 505);
    CHECK(refusal("GET / HTTP/1.10\r\nHost: a\r\n\r\n") == 400);
    CHECK(refusal("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == 505);         // the HTTP/2 preface
    CHECK(refusal(std::string("\x16\x03\x01\x02\x00\x01", 6)) == 400); // a TLS ClientHello
}

// --- the writer ----------------------------------------------------------------------------------

TEST_CASE("http writer: status line, framing fields, extra fields, body") {
    http_response ok;
    ok.body = "{\"a\":1}";
    CHECK(tinyproxy::format_response(ok) == "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                            "Content-Length: 7\r\n\r\n{\"a\":1}");
    http_response created;
    created.status = 201;
    created.content_type = "text/plain";
    created.close = true;
    created.headers.push_back({"Location", "/proxies/a\r\nX-Injected: 1"});
    CHECK(tinyproxy::format_response(created) ==
          "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
          "Connection: close\r\nLocation: /proxies/aX-Injected: 1\r\n\r\n");
    http_response none;
    none.status = 204;
    none.body = "dropped";
    CHECK(tinyproxy::format_response(none) == "HTTP/1.1 204 No Content\r\n\r\n");
    http_response unknown;
    unknown.status = 299;
    unknown.content_type.clear();
    CHECK(tinyproxy::format_response(unknown) == "HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n");
}

TEST_CASE("http writer: reason phrases and Toxiproxy's error body") {
    CHECK(tinyproxy::reason_phrase(200) == "OK");
    CHECK(tinyproxy::reason_phrase(204) == "No Content");
    CHECK(tinyproxy::reason_phrase(404) == "Not Found");
    CHECK(tinyproxy::reason_phrase(409) == "Conflict");
    CHECK(tinyproxy::reason_phrase(413) == "Content Too Large");
    CHECK(tinyproxy::reason_phrase(431) == "Request Header Fields Too Large");
    CHECK(tinyproxy::reason_phrase(505) == "HTTP Version Not Supported");
    CHECK(tinyproxy::reason_phrase(799).empty());
    http_response error = tinyproxy::json_error(404, "proxy not found: \"x\"");
    CHECK(error.status == 404);
    CHECK(error.content_type == "application/json");
    CHECK(error.body == "{\"error\":\"proxy not found: \\\"x\\\"\",\"status\":404}");
}

// --- the server ----------------------------------------------------------------------------------

namespace {

/// An http_server on 127.0.0.1:0, running on its own thread until destroyed.
class running_api {
public:
    explicit running_api(tinyproxy::http_server::handler handler,
                         tinyproxy::http_server_options options = {})
        : server_(with_port_zero(std::move(options)), std::move(handler)) {
        server_.listen();
        thread_ = std::thread([this] { server_.run(); });
    }
    running_api(const running_api&) = delete;
    running_api& operator=(const running_api&) = delete;
    ~running_api() { stop(); }

    tinyproxy::endpoint where() const { return server_.local_endpoint(); }
    std::string url(const std::string& path) const {
        return "http://" + where().to_string() + path;
    }
    void stop() {
        server_.stop();
        if (thread_.joinable()) {
            thread_.join();
        }
    }

private:
    static tinyproxy::http_server_options with_port_zero(tinyproxy::http_server_options options) {
        options.listen = tinyproxy::endpoint{tinyproxy::ip_address::loopback_v4(), 0};
        return options;
    }
    tinyproxy::http_server server_;
    std::thread thread_;
};

struct parsed_response {
    int status = 0; // 0: none came (end of stream, error or timeout)
    std::string head;
    std::string body;
};

/// A blocking client (every receive gives up after 10 s) that reads responses one at a time.
class api_client {
public:
    explicit api_client(const tinyproxy::endpoint& where) : socket_(tptest::connect_to(where)) {
        REQUIRE(static_cast<bool>(socket_));
    }
    bool send(const std::string& text) {
        return tptest::send_all(socket_, tptest::bytes(text.begin(), text.end()));
    }
    /// The next response: its head up to the blank line, then Content-Length bytes of body
    /// (none for a response to HEAD: `head_only`).
    parsed_response read(bool head_only = false) {
        parsed_response out;
        std::size_t end = 0;
        while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
            if (!receive()) {
                return out;
            }
        }
        out.head = buffer_.substr(0, end + 4);
        out.status = std::atoi(out.head.c_str() + 9);
        std::size_t length = 0;
        auto field = out.head.find("\r\nContent-Length: ");
        if (field != std::string::npos && !head_only) {
            length = std::stoul(out.head.substr(field + 18));
        }
        while (buffer_.size() < end + 4 + length) {
            if (!receive()) {
                out.status = 0;
                return out;
            }
        }
        out.body = buffer_.substr(end + 4, length);
        buffer_.erase(0, end + 4 + length);
        return out;
    }
    /// True when the server closed cleanly (FIN, not a reset) with nothing more to read.
    bool closed_cleanly() {
        if (!buffer_.empty()) {
            return false;
        }
        char byte = 0;
        return ::recv(socket_.native_handle(), &byte, 1, 0) == 0;
    }
    tinyproxy::socket& socket() { return socket_; }

private:
    bool receive() {
        char chunk[4096];
        ssize_t n = ::recv(socket_.native_handle(), chunk, sizeof chunk, 0);
        if (n <= 0) {
            return false;
        }
        buffer_.append(chunk, static_cast<std::size_t>(n));
        return true;
    }
    tinyproxy::socket socket_;
    std::string buffer_;
};

/// A handler that answers with the request's method, path and body size.
http_response echo_handler(const http_request& request) {
    http_response response;
    response.content_type = "text/plain";
    response.body = request.method + " " + std::string(request.path()) + " " +
                    std::to_string(request.body.size());
    return response;
}

std::string get(const std::string& path, const std::string& fields = "") {
    return "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + fields + "\r\n";
}

} // namespace

TEST_CASE("http server: keep-alive, pipelining in order, HEAD, HTTP/1.0") {
    running_api api(echo_handler);
    api_client client(api.where());
    REQUIRE(client.send(get("/one")));
    parsed_response one = client.read();
    CHECK(one.status == 200);
    CHECK(one.body == "GET /one 0");
    REQUIRE(client.send(get("/two")));
    CHECK(client.read().body == "GET /two 0"); // the same connection, kept alive
    // Three requests in one send, the middle one with a body: answered in order.
    REQUIRE(client.send(get("/a") +
                        "POST /b HTTP/1.1\r\nHost: [::1]:1\r\nContent-Length: 3\r\n\r\n"
                        "xyz" +
                        get("/c")));
    CHECK(client.read().body == "GET /a 0");
    CHECK(client.read().body == "POST /b 3");
    CHECK(client.read().body == "GET /c 0");
    REQUIRE(client.send("HEAD /h HTTP/1.1\r\nHost: localhost\r\n\r\n" + get("/after")));
    parsed_response head = client.read(true);
    // The GET's Content-Length, no body: the next bytes are the next response.
    CHECK(head.status == 200);
    CHECK(head.head.find("Content-Length: 9\r\n") != std::string::npos);
    CHECK(client.read().body == "GET /after 0");
    api_client old(api.where());
    REQUIRE(old.send("GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    parsed_response kept = old.read();
    CHECK(kept.body == "GET /old 0");
    CHECK(kept.head.find("Connection: keep-alive\r\n") != std::string::npos);
    REQUIRE(old.send("GET /last HTTP/1.0\r\n\r\n"));
    parsed_response last = old.read();
    CHECK(last.body == "GET /last 0");
    CHECK(last.head.find("Connection: close\r\n") != std::string::npos);
    CHECK(old.closed_cleanly());
}

TEST_CASE("http server: many pipelined requests with large responses, read late, come in order") {
    const std::string big(100 * 1024, 'r');
    running_api api([&big](const http_request& request) {
        http_response response;
        response.body = std::string(request.path()) + big;
        return response;
    });
    api_client client(api.where());
    std::string requests;
    for (int i = 0; i < 40; ++i) {
        requests += get("/" + std::to_string(i));
    }
    REQUIRE(client.send(requests)); // 4 MB of responses: far more than the socket buffers hold
    std::this_thread::sleep_for(100ms);
    for (int i = 0; i < 40; ++i) {
        parsed_response response = client.read();
        REQUIRE(response.status == 200);
        CHECK(response.body == "/" + std::to_string(i) + big);
    }
    REQUIRE(client.send(get("/again")));
    CHECK(client.read().body.substr(0, 6) == "/again");
}

TEST_CASE("http server: a request sent a byte at a time") {
    running_api api(echo_handler);
    api_client client(api.where());
    const std::string request =
        "POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello";
    for (char c : request) {
        REQUIRE(client.send(std::string(1, c)));
    }
    CHECK(client.read().body == "POST /slow 5");
}

TEST_CASE("http server: 403 to a browser and to a foreign Host, 400 without Host") {
    running_api api(echo_handler);
    api_client client(api.where());
    REQUIRE(client.send(get("/", "User-Agent: Mozilla/5.0 (X11)\r\n")));
    parsed_response browser = client.read();
    CHECK(browser.status == 403);
    CHECK(browser.body == "{\"error\":\"User agent not allowed\",\"status\":403}");
    REQUIRE(client.send("GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n"));
    parsed_response rebound = client.read();
    CHECK(rebound.status == 403);
    CHECK(rebound.body == "{\"error\":\"Host not allowed\",\"status\":403}");
    for (const char* host :
         {"localhost:8474", "LOCALHOST", "127.0.0.1:1", "10.1.2.3", "[::1]:8474", "[::1]"}) {
        CAPTURE(host);
        REQUIRE(client.send("GET / HTTP/1.1\r\nHost: " + std::string(host) + "\r\n\r\n"));
        CHECK(client.read().status == 200);
    }
    for (const char* host : {"localhost.evil.example", "127.0.0.1.nip.io:80", "[::1", "::1",
                             "127.0.0.1:", "127.0.0.1:x", "[fe80::1%1]", "[1.2.3.4]", ""}) {
        CAPTURE(host);
        REQUIRE(client.send("GET / HTTP/1.1\r\nHost: " + std::string(host) + "\r\n\r\n"));
        CHECK(client.read().status == 403);
    }
    REQUIRE(client.send("GET / HTTP/1.1\r\n\r\n"));
    parsed_response no_host = client.read();
    CHECK(no_host.status == 400);
    CHECK(no_host.body == "{\"error\":\"missing Host header\",\"status\":400}");
    CHECK(no_host.head.find("Connection: close\r\n") != std::string::npos);
    CHECK(client.closed_cleanly());
}

TEST_CASE("http server: the checks can be switched off") {
    tinyproxy::http_server_options options;
    options.refuse_browsers = false;
    options.check_host = false;
    running_api api(echo_handler, options);
    api_client client(api.where());
    REQUIRE(client.send("GET / HTTP/1.1\r\nHost: evil.example\r\nUser-Agent: Mozilla/5.0\r\n\r\n"));
    CHECK(client.read().status == 200);
}

TEST_CASE("http server: 431 and 413 are answered, then the connection closes cleanly") {
    tinyproxy::http_server_options options;
    options.limits.max_head = 1024;
    options.limits.max_body = 1000;
    running_api api(echo_handler, options);
    {
        api_client client(api.where());
        // A head past the limit, and more of it after: the unread rest must not reset the close.
        REQUIRE(client.send(get("/", "X: " + std::string(100000, 'h') + "\r\n")));
        parsed_response response = client.read();
        CHECK(response.status == 431);
        CHECK(response.body == "{\"error\":\"request header section too large\",\"status\":431}");
        CHECK(response.head.find("Connection: close\r\n") != std::string::npos);
        CHECK(client.closed_cleanly());
    }
    {
        api_client client(api.where());
        // More than one read of body after the head: the server drops it while it closes.
        REQUIRE(client.send("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200000\r\n"
                            "\r\n" +
                            std::string(200000, 'b')));
        parsed_response response = client.read();
        CHECK(response.status == 413);
        CHECK(response.body == "{\"error\":\"request body too large\",\"status\":413}");
        CHECK(client.closed_cleanly());
    }
}

TEST_CASE("http server: Expect: 100-continue gets 100 Continue before the body") {
    running_api api(echo_handler);
    api_client client(api.where());
    REQUIRE(client.send("POST /big HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                        "Content-Length: 2048\r\n\r\n"));
    parsed_response interim = client.read();
    CHECK(interim.status == 100);
    CHECK(interim.head == "HTTP/1.1 100 Continue\r\n\r\n");
    REQUIRE(client.send(std::string(2048, 'x')));
    parsed_response final_response = client.read();
    CHECK(final_response.status == 200);
    CHECK(final_response.body == "POST /big 2048");
}

TEST_CASE("http server: a handler that throws gives 500 with the error body") {
    running_api api([](const http_request& request) -> http_response {
        if (request.path() == "/throw") {
            throw std::runtime_error("boom");
        }
        if (request.path() == "/int") {
            throw 42;
        }
        return echo_handler(request);
    });
    api_client client(api.where());
    REQUIRE(client.send(get("/throw") + get("/int") + get("/fine")));
    parsed_response thrown = client.read();
    CHECK(thrown.status == 500);
    CHECK(thrown.body == "{\"error\":\"boom\",\"status\":500}");
    CHECK(client.read().status == 500);
    CHECK(client.read().body == "GET /fine 0"); // the connection lives on
}

TEST_CASE("http server: an idle client is closed, and a slow head gets 408") {
    tinyproxy::http_server_options options;
    options.idle_timeout = 200ms;
    options.head_timeout = 300ms;
    running_api api(echo_handler, options);
    api_client idle(api.where());
    REQUIRE(idle.send(get("/")));
    CHECK(idle.read().status == 200);
    auto start = tinyproxy::steady_clock::now();
    CHECK(idle.closed_cleanly()); // within the client's 10 s receive timeout
    CHECK(tptest::elapsed_ms(start) >= 150);
    options.idle_timeout = 60s;
    running_api slow_api(echo_handler, options);
    api_client slow(slow_api.where());
    REQUIRE(slow.send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"));
    parsed_response late = slow.read();
    CHECK(late.status == 408);
    CHECK(slow.closed_cleanly());
}

TEST_CASE("http server: clients past max_clients are closed at once") {
    tinyproxy::http_server_options options;
    options.max_clients = 2;
    running_api api(echo_handler, options);
    api_client first(api.where());
    api_client second(api.where());
    REQUIRE(first.send(get("/1")));
    REQUIRE(second.send(get("/2")));
    CHECK(first.read().status == 200);
    CHECK(second.read().status == 200); // both admitted
    api_client third(api.where());
    third.send(get("/3"));
    CHECK(third.read().status == 0);
    // Once one leaves, a new client is admitted (bounded retries: the close is seen in a turn).
    { api_client gone = std::move(first); }
    bool admitted = false;
    for (int attempt = 0; attempt < 50 && !admitted; ++attempt) {
        api_client next(api.where());
        next.send(get("/4"));
        admitted = next.read().status == 200;
        if (!admitted) {
            std::this_thread::sleep_for(20ms);
        }
    }
    CHECK(admitted);
}

TEST_CASE("http server: stop() with clients connected closes them and run() returns") {
    running_api api(echo_handler);
    api_client quiet(api.where());
    api_client busy(api.where());
    REQUIRE(busy.send(get("/")));
    CHECK(busy.read().status == 200);
    REQUIRE(quiet.send("GET / HTTP/1.1\r\n")); // half a head
    auto start = tinyproxy::steady_clock::now();
    api.stop(); // joins the thread: run() returned
    CHECK(tptest::elapsed_ms(start) < tptest::scaled_ms(5000));
    CHECK(quiet.read().status == 0);
    CHECK(busy.read().status == 0);
}

TEST_CASE("http server: listen() names the address it cannot bind; stop() before run()") {
    running_api first(echo_handler);
    tinyproxy::http_server_options options;
    options.listen = first.where();
    tinyproxy::http_server second(options, echo_handler);
    try {
        second.listen();
        FAIL("listen on a port in use succeeded");
    } catch (const std::system_error& error) {
        CHECK(std::string(error.what()).find(first.where().to_string()) != std::string::npos);
    }
    options.listen.port = 0;
    tinyproxy::http_server early(options, echo_handler);
    early.stop();
    early.run(); // returns at once
}

TEST_CASE("http server: curl GETs two URLs on one connection, POSTs a body with 100-continue") {
    std::string curl = tptest::peer_program("curl");
    if (curl.empty()) {
        return;
    }
    running_api api(echo_handler);
    tptest::curl_result two = tptest::run_curl(curl, {api.url("/a"), api.url("/b?q=1")});
    CHECK_MESSAGE(two.exit_code == 0, "curl: " << two.err);
    // curl writes its -w trailer after each transfer: the first one sits between the bodies.
    CHECK(two.body.substr(0, 8) == "GET /a 0");
    CHECK(two.body.size() >= 8);
    CHECK(two.body.substr(two.body.size() - 8) == "GET /b 0");
    // Past 1 KiB curl sends Expect: 100-continue and waits for 100 Continue, here for up to 30 s
    // (its --max-time is 10 s): only a 100 Continue lets it finish.
    tptest::curl_result post = tptest::run_curl(curl, {"--expect100-timeout", "30", "--data-binary",
                                                       std::string(4000, 'p'), api.url("/post")});
    CHECK_MESSAGE(post.exit_code == 0, "curl: " << post.err);
    CHECK(post.http_code == "200");
    CHECK(post.body == "POST /post 4000");
    tptest::curl_result chunked = tptest::run_curl(
        curl, {"-H", "Transfer-Encoding: chunked", "--data-binary", "abc", api.url("/chunked")});
    CHECK(chunked.body == "POST /chunked 3");
    tptest::curl_result browser = tptest::run_curl(curl, {"-A", "Mozilla/5.0", api.url("/")});
    CHECK(browser.http_code == "403");
    CHECK(browser.body == "{\"error\":\"User agent not allowed\",\"status\":403}");
    tptest::curl_result rebound =
        tptest::run_curl(curl, {"-H", "Host: evil.example", api.url("/")});
    CHECK(rebound.http_code == "403");
}
