// http_proxy_mode and auto_mode end to end, on every policy: absolute-form requests forwarded
// with keep-alive both ways, a client handed back and sent on to another origin, pipelining,
// framing and the refusals, spoken by a raw client to small keep-alive origins (curl, wget and
// urllib are in tests/http/).
#include <doctest/doctest.h>

#include "support/loopback.hpp"

#include <atomic>
#include <thread>
#include <string>
#include <vector>

using namespace tptest;
using namespace std::chrono_literals;

namespace {

bytes as_bytes(const std::string& text) { return bytes(text.begin(), text.end()); }

/// Reads up to and including the blank line ending a head; empty at end of stream.
std::string read_head_of(tinyproxy::socket& s) {
    std::string head;
    char c = 0;
    while (head.size() < 65536 && ::recv(s.native_handle(), &c, 1, 0) == 1) {
        head += c;
        if (head.size() >= 4 && head.compare(head.size() - 4, 4, "\r\n\r\n") == 0) {
            return head;
        }
    }
    return {};
}

std::string read_exactly_text(tinyproxy::socket& s, std::size_t count) {
    std::string out(count, '\0');
    std::size_t got = 0;
    while (got < count) {
        ssize_t n = ::recv(s.native_handle(), &out[got], count - got, 0);
        if (n <= 0) {
            break;
        }
        got += static_cast<std::size_t>(n);
    }
    out.resize(got);
    return out;
}

/// A field's value in a head ("" when absent), the name matched without case.
std::string field_of(const std::string& head, const std::string& name) {
    std::string lower_head;
    for (char c : head) {
        lower_head += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    std::string lower_name;
    for (char c : name) {
        lower_name += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    auto at = lower_head.find("\r\n" + lower_name + ":");
    if (at == std::string::npos) {
        return {};
    }
    auto start = at + 3 + name.size();
    auto end = head.find("\r\n", start);
    std::string value = head.substr(start, end - start);
    while (!value.empty() && value.front() == ' ') {
        value.erase(value.begin());
    }
    return value;
}

/// One response: its head and its Content-Length body.
struct response {
    std::string head;
    std::string body;
    int status() const { return head.size() > 12 ? std::stoi(head.substr(9, 3)) : 0; }
};

response read_response(tinyproxy::socket& s) {
    response r;
    r.head = read_head_of(s);
    std::string length = field_of(r.head, "Content-Length");
    if (!length.empty()) {
        r.body = read_exactly_text(s, std::stoul(length));
    }
    return r;
}

/// A keep-alive HTTP/1.1 origin: answers each request with a body naming itself, its
/// connection and the request line and head it was sent (so a test sees what the proxy sent);
/// a POST's body is echoed back chunked. Closes when the request says so.
class origin {
public:
    explicit origin(std::string name)
        : name_(std::move(name)), server_([this](tinyproxy::socket& s) { serve(s); }) {}

    tinyproxy::endpoint where() const { return server_.where(); }
    int connections() const { return server_.connections(); }
    std::string url(const std::string& path) const {
        return "http://" + where().to_string() + path;
    }

private:
    void serve(tinyproxy::socket& s) {
        const int connection = ++served_;
        for (int request = 1;; ++request) {
            std::string head = read_head_of(s);
            if (head.empty()) {
                return;
            }
            std::string body;
            std::string length = field_of(head, "Content-Length");
            if (!length.empty()) {
                body = read_exactly_text(s, std::stoul(length));
            } else if (field_of(head, "Transfer-Encoding") == "chunked") {
                body = read_chunked(s);
            }
            std::string text = name_ + " connection " + std::to_string(connection) + " request " +
                               std::to_string(request) + "\n" + head;
            std::string answer;
            if (head.rfind("POST", 0) == 0) {
                answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: "
                         "keep-alive, X-Hop\r\nX-Hop: secret\r\n\r\n";
                for (std::size_t at = 0; at < body.size(); at += 1000) {
                    std::string chunk = body.substr(at, 1000);
                    char size[16];
                    std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
                    answer += size + chunk + "\r\n";
                }
                answer += "0\r\n\r\n";
            } else {
                const bool closing = head.find(" /close ") != std::string::npos;
                if (head.find(" /empty ") != std::string::npos) {
                    text.clear(); // Content-Length: 0
                }
                answer = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(text.size()) +
                         (closing ? "\r\nConnection: close" : "") + "\r\n\r\n" +
                         (head.rfind("HEAD", 0) == 0 ? "" : text);
            }
            if (!send_all(s, as_bytes(answer)) || head.find(" /close ") != std::string::npos) {
                return; // the socket closes as the handler returns
            }
        }
    }

    static std::string read_chunked(tinyproxy::socket& s) {
        std::string body;
        for (;;) {
            std::string line;
            char c = 0;
            while (::recv(s.native_handle(), &c, 1, 0) == 1 && c != '\n') {
                line += c;
            }
            std::size_t size = 0;
            try {
                size = std::stoul(line, nullptr, 16);
            } catch (const std::exception&) { // not a chunk size (or the connection ended)
                return body;
            }
            if (size == 0) {
                read_exactly_text(s, 2); // the CRLF ending the (empty) trailer section
                return body;
            }
            body += read_exactly_text(s, size);
            read_exactly_text(s, 2);
        }
    }

    std::string name_;
    std::atomic<int> served_{0};
    upstream server_;
};

std::string get(const std::string& url, const std::string& fields = "") {
    return "GET " + url + " HTTP/1.1\r\nHost: wrong.example\r\n" + fields + "\r\n";
}

tinyproxy::endpoint refused_endpoint() {
    auto l = tinyproxy::listener::open(tinyproxy::parse_endpoint("127.0.0.1:0"));
    return l.local_endpoint(); // closed on return: connecting there is refused
}

} // namespace

TEST_CASE_TEMPLATE_DEFINE("http_proxy_mode end to end", Policy, http_proxy_end_to_end) {
    origin a("origin-a");
    origin b("origin-b");
    running_proxy<Policy, tinyproxy::http_proxy_mode> proxy(tinyproxy::http_proxy_mode{});

    SUBCASE("requests to one origin share its connection; the head is rewritten both ways") {
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        for (int i = 1; i <= 3; ++i) {
            REQUIRE(send_all(client, as_bytes(get(a.url("/x?n=" + std::to_string(i)),
                                                  "Connection: X-Secret\r\nX-Secret: 1\r\n"
                                                  "Proxy-Connection: keep-alive\r\n"))));
            response r = read_response(client);
            REQUIRE(r.status() == 200);
            CHECK(field_of(r.head, "Via") == "1.1 tinyproxy.hpp");
            CHECK(r.body.find("origin-a connection 1 request " + std::to_string(i)) == 0);
            // Origin-form, Host from the target, hop-by-hop fields gone, Via added.
            CHECK(r.body.find("\nGET /x?n=" + std::to_string(i) + " HTTP/1.1\r\n") !=
                  std::string::npos);
            CHECK(field_of(r.body.substr(r.body.find('\n')), "Host") == a.where().to_string());
            CHECK(r.body.find("X-Secret") == std::string::npos);
            CHECK(r.body.find("Proxy-Connection") == std::string::npos);
            CHECK(field_of(r.body.substr(r.body.find('\n')), "Via") == "1.1 tinyproxy.hpp");
        }
        CHECK(a.connections() == 1);
    }

    SUBCASE("another origin: the client is handed back and sent on, its connection kept") {
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        const std::string order[] = {"a", "b", "b", "a", "b"};
        for (const std::string& which : order) {
            const origin& to = which == "a" ? a : b;
            REQUIRE(send_all(client, as_bytes(get(to.url("/")))));
            response r = read_response(client);
            REQUIRE(r.status() == 200);
            CHECK(r.body.rfind("origin-" + which, 0) == 0);
        }
        CHECK(a.connections() == 2);
        CHECK(b.connections() == 2);
    }

    SUBCASE("pipelined requests, two origins, answered in order; a POST's body both ways") {
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        std::string upload(25'000, 'u');
        for (std::size_t i = 0; i < upload.size(); ++i) {
            upload[i] = static_cast<char>('a' + i % 26);
        }
        std::string all =
            get(a.url("/1")) + get(b.url("/2")) + "POST " + a.url("/3") +
            " HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(upload.size()) +
            "\r\n\r\n" + upload + get(a.url("/4"));
        REQUIRE(send_all(client, as_bytes(all)));
        response first = read_response(client);
        CHECK(first.body.rfind("origin-a connection 1 request 1\nGET /1 ", 0) == 0);
        response second = read_response(client);
        CHECK(second.body.rfind("origin-b connection 1 request 1\nGET /2 ", 0) == 0);
        // The POST's answer is chunked: read the head, then the chunks.
        std::string post_head = read_head_of(client);
        CHECK(post_head.rfind("HTTP/1.1 200", 0) == 0);
        CHECK(field_of(post_head, "Transfer-Encoding") == "chunked");
        CHECK(field_of(post_head, "X-Hop").empty()); // named by Connection: hop-by-hop
        std::string echoed;
        for (;;) {
            std::string line;
            char c = 0;
            while (::recv(client.native_handle(), &c, 1, 0) == 1 && c != '\n') {
                line += c;
            }
            std::size_t size = std::stoul(line, nullptr, 16);
            if (size == 0) {
                CHECK(read_exactly_text(client, 2) == "\r\n");
                break;
            }
            echoed += read_exactly_text(client, size);
            CHECK(read_exactly_text(client, 2) == "\r\n");
        }
        CHECK(echoed == upload);
        response fourth = read_response(client);
        CHECK(fourth.body.rfind("origin-a connection 2 request 2\nGET /4 ", 0) == 0);
    }

    SUBCASE("an origin that closes after its answer: the client keeps its connection, the next "
            "request connects again, and the client's end of stream ends the session") {
        auto client = connect_to(proxy.where());
        REQUIRE(send_all(client, as_bytes(get(a.url("/close")))));
        response first = read_response(client);
        CHECK(first.status() == 200);
        CHECK(field_of(first.head, "Connection").empty()); // the client's connection stays
        REQUIRE(send_all(client, as_bytes(get(a.url("/again")))));
        CHECK(read_response(client).body.rfind("origin-a connection 2 request 1", 0) == 0);
        REQUIRE(send_all(client, as_bytes(get(a.url("/close")))));
        CHECK(read_response(client).body.rfind("origin-a connection 2 request 2", 0) == 0);
        shutdown_write(client);
        CHECK(read_to_end(client).empty()); // the proxy's FIN, not an idle timeout's
    }

    SUBCASE("Connection: close is answered, then the client's connection ends") {
        auto client = connect_to(proxy.where());
        REQUIRE(send_all(client, as_bytes(get(a.url("/"), "Connection: close\r\n"))));
        response r = read_response(client);
        CHECK(r.status() == 200);
        CHECK(field_of(r.head, "Connection") == "close");
        CHECK(read_to_end(client).empty());
    }

    SUBCASE("smuggling is refused before a byte goes on; a refused origin is a 502") {
        auto client = connect_to(proxy.where());
        REQUIRE(send_all(client,
                         as_bytes("POST " + a.url("/") +
                                  " HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: "
                                  "chunked\r\n\r\n0\r\n\r\n")));
        response r = read_response(client);
        CHECK(r.status() == 400);
        CHECK(read_to_end(client).empty());
        CHECK(a.connections() == 0);

        auto refused = connect_to(proxy.where());
        REQUIRE(send_all(refused, as_bytes(get("http://" + refused_endpoint().to_string() + "/"))));
        response bad = read_response(refused);
        CHECK(bad.status() == 502);
        CHECK(bad.body.find("Bad Gateway") != std::string::npos);

        auto https = connect_to(proxy.where());
        REQUIRE(send_all(https, as_bytes(get("https://" + a.where().to_string() + "/"))));
        CHECK(read_response(https).status() == 501);
    }

    SUBCASE("a Content-Length: 0 answer is complete at its head: the next request, to another "
            "origin, is answered") {
        auto client = connect_to(proxy.where());
        REQUIRE(send_all(client, as_bytes(get(a.url("/empty")) + get(b.url("/")))));
        response empty = read_response(client);
        CHECK(empty.status() == 200);
        CHECK(field_of(empty.head, "Content-Length") == "0");
        CHECK(read_response(client).body.rfind("origin-b connection 1 request 1", 0) == 0);
    }

    SUBCASE("a bad chunk size in a request body: 400, since no answer had begun") {
        auto client = connect_to(proxy.where());
        REQUIRE(send_all(client, as_bytes("POST " + a.url("/") +
                                          " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                                          "chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")));
        CHECK(read_response(client).status() == 400);
        CHECK(read_to_end(client).empty());
    }

    SUBCASE("after a request forwarded, a malformed one gets its 400 once the answer is out") {
        auto client = connect_to(proxy.where());
        REQUIRE(send_all(client, as_bytes(get(a.url("/ok")) + "GET " + a.url("/") +
                                          " HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                          "Content-Length: 1\r\n\r\nz")));
        CHECK(read_response(client).status() == 200);
        CHECK(read_response(client).status() == 400);
        CHECK(read_to_end(client).empty());
    }

    SUBCASE("a HEAD's answer has no body though it names a length; a slow client's requests "
            "come a byte at a time; OPTIONS with Max-Forwards 0 is answered here") {
        auto client = connect_to(proxy.where());
        REQUIRE(send_all(client, as_bytes("HEAD " + a.url("/") + " HTTP/1.1\r\nHost: x\r\n\r\n")));
        std::string head = read_head_of(client);
        CHECK(head.rfind("HTTP/1.1 200", 0) == 0);
        CHECK_FALSE(field_of(head, "Content-Length").empty());
        const std::string slow = get(a.url("/slow")) + get(a.url("/slower"));
        for (char c : slow) {
            REQUIRE(send_all(client, bytes{static_cast<std::uint8_t>(c)}));
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        CHECK(read_response(client).body.rfind("origin-a connection 1 request 2\nGET /slow ", 0) ==
              0);
        CHECK(read_response(client).body.rfind("origin-a connection 1 request 3\nGET /slower ",
                                               0) == 0);
        REQUIRE(send_all(client, as_bytes("OPTIONS " + a.url("/") +
                                          " HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n")));
        response options = read_response(client);
        CHECK(options.status() == 200);
        CHECK(field_of(options.head, "Allow").find("GET") != std::string::npos);
        REQUIRE(send_all(client, as_bytes(get(a.url("/after")))));
        CHECK(read_response(client).body.find("GET /after ") != std::string::npos);
    }

    SUBCASE("CONNECT on the same port: a raw tunnel after forwarded requests") {
        upstream echoes(echo);
        auto client = connect_to(proxy.where());
        REQUIRE(send_all(client, as_bytes(get(a.url("/")))));
        CHECK(read_response(client).status() == 200);
        REQUIRE(send_all(client, as_bytes("CONNECT " + echoes.where().to_string() +
                                          " HTTP/1.1\r\nHost: x\r\n\r\nraw bytes")));
        CHECK(read_head_of(client).rfind("HTTP/1.1 200", 0) == 0);
        shutdown_write(client);
        CHECK(read_to_end(client) == as_bytes("raw bytes"));
    }
}

TEST_CASE_TEMPLATE_INVOKE(http_proxy_end_to_end, tinyproxy::thread_policy, tinyproxy::poll_policy,
                          tinyproxy::fork_policy);

TEST_CASE_TEMPLATE_DEFINE("auto_mode: SOCKS5, SOCKS4 and HTTP on one port", Policy,
                          auto_mode_ports) {
    origin a("origin-a");
    running_proxy<Policy, tinyproxy::auto_mode> proxy(tinyproxy::auto_mode{});

    auto http = connect_to(proxy.where());
    REQUIRE(send_all(http, as_bytes(get(a.url("/")))));
    CHECK(read_response(http).body.rfind("origin-a", 0) == 0);

    auto socks5 = connect_to(proxy.where());
    bytes greeting = {5, 1, 0, 5, 1, 0, 1};
    const tinyproxy::endpoint origin_at = a.where(); // bytes() views into it: it must outlive them
    auto address = origin_at.address.bytes();
    greeting.insert(greeting.end(), address.begin(), address.end());
    greeting.push_back(static_cast<std::uint8_t>(origin_at.port >> 8));
    greeting.push_back(static_cast<std::uint8_t>(origin_at.port & 0xFF));
    REQUIRE(send_all(socks5, greeting));
    std::string replies = read_exactly_text(socks5, 2 + 10);
    CHECK(replies.substr(0, 4) == std::string("\x05\x00\x05\x00", 4));
    REQUIRE(send_all(socks5, as_bytes("GET / HTTP/1.1\r\nHost: a\r\n\r\n")));
    CHECK(read_response(socks5).body.rfind("origin-a", 0) == 0);

    auto socks4 = connect_to(proxy.where());
    bytes request = {4, 1, static_cast<std::uint8_t>(origin_at.port >> 8),
                     static_cast<std::uint8_t>(origin_at.port & 0xFF)};
    request.insert(request.end(), address.begin(), address.end());
    request.push_back(0);
    REQUIRE(send_all(socks4, request));
    CHECK(read_exactly_text(socks4, 8)[1] == 0x5A);
}

TEST_CASE_TEMPLATE_INVOKE(auto_mode_ports, tinyproxy::thread_policy, tinyproxy::poll_policy,
                          tinyproxy::fork_policy);

TEST_CASE("http_proxy_mode with credentials: every request without them gets 407 with "
          "Proxy-Authenticate, with them it goes on; CONNECT too") {
    origin a("origin-a");
    tinyproxy::http_proxy_mode::config cfg;
    cfg.required = tinyproxy::credentials{"alice", "secret"};
    running_proxy<tinyproxy::poll_policy, tinyproxy::http_proxy_mode> proxy(
        tinyproxy::http_proxy_mode{cfg});
    const std::string good = "Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n";  // alice:secret
    const std::string wrong = "Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n"; // alice:wrong

    auto none = connect_to(proxy.where());
    REQUIRE(send_all(none, as_bytes(get(a.url("/")))));
    response refused = read_response(none);
    CHECK(refused.status() == 407);
    CHECK(field_of(refused.head, "Proxy-Authenticate") == "Basic realm=\"tinyproxy\"");

    auto client = connect_to(proxy.where());
    REQUIRE(send_all(client, as_bytes(get(a.url("/1"), good))));
    response first = read_response(client);
    CHECK(first.status() == 200);
    CHECK(first.body.find("Proxy-Authorization") == std::string::npos); // not passed on
    // Checked on every request, not only the first of a connection.
    REQUIRE(send_all(client, as_bytes(get(a.url("/2"), wrong))));
    CHECK(read_response(client).status() == 407);
    CHECK(read_to_end(client).empty());

    upstream echoes(echo);
    auto tunnel = connect_to(proxy.where());
    REQUIRE(send_all(tunnel, as_bytes("CONNECT " + echoes.where().to_string() +
                                      " HTTP/1.1\r\nHost: x\r\n" + good + "\r\nping")));
    CHECK(read_head_of(tunnel).rfind("HTTP/1.1 200", 0) == 0);
    shutdown_write(tunnel);
    CHECK(read_to_end(tunnel) == as_bytes("ping"));
    CHECK(a.connections() == 1);
}
