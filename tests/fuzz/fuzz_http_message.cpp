// libFuzzer target for protocol/http_message.hpp. The first input byte picks the limits (the
// defaults, or small ones the input can reach), the method the responses answer, and how the
// rest is cut into feeds (tests/support/split_feed.hpp); the rest is read twice, as a client's
// stream (request heads, each followed by the body its framing says, pipelined) and as an
// origin's (interim and final response heads, each final one followed by its body, again and
// again). Checked: the outcome does not depend on the cuts (whole, the seed's cuts, a byte at a
// time for short inputs); need_more and more use every byte and nothing is used twice; heads hold
// what the syntax allows; origin_request_head writes one well-formed head that keeps the body's
// framing fields, and client_response_head one that reads back to the same status and framing.
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint8_t
#include <string>       // heads
#include <string_view>  // methods
#include <system_error> // error codes
#include <vector>       // runs

#include <tinyproxy/tinyproxy.hpp>

#include "support/http_message_feed.hpp"
#include "support/split_feed.hpp"

namespace {

using tinyproxy::byte_view;
using tinyproxy::http_body_scanner;
using tinyproxy::http_framing;
using tinyproxy::http_head_limits;

const tptest::trap_on_failure check;

http_head_limits limits_for(std::uint8_t selector) {
    http_head_limits limits;
    if ((selector & 0x04) != 0) {
        limits.max_line = 40;
        limits.max_fields = 4;
        limits.max_head = 160;
    }
    return limits;
}

std::string_view method_for(std::uint8_t selector) {
    static constexpr std::string_view methods[] = {"GET", "HEAD", "CONNECT", "POST"};
    return methods[(selector >> 3) & 3];
}

/// Where each head and each body ended, and how the stream's reading ended.
template <class Head>
struct stream_run {
    std::vector<Head> heads;
    std::vector<std::size_t> ends;
    bool failed = false;
    int error_status = 0;
    std::error_code error;
    std::size_t used = 0;
};

/// Scans a body in `piece`; true once it completed (`piece` then starts after it).
template <class Run>
bool body_step(http_body_scanner& scanner, byte_view& piece, Run& out, bool& ended) {
    std::size_t used = 0;
    http_body_scanner::status state = scanner.feed(piece, used);
    check(used <= piece.size(), "a body used more than fed");
    out.used += used;
    if (state == http_body_scanner::status::more) {
        check(used == piece.size(), "more left bytes unused");
        return false;
    }
    if (state == http_body_scanner::status::failed) {
        check(static_cast<bool>(scanner.error()), "a body failed without why");
        out.failed = true;
        out.error = scanner.error();
        ended = true;
        return false;
    }
    out.ends.push_back(out.used);
    piece = piece.subview(used);
    return true;
}

/// Reads a client's stream: heads, each followed by its body.
stream_run<tinyproxy::http_request_head> drive_client(byte_view stream, const tptest::cuts& at,
                                                      http_head_limits limits) {
    using status = tinyproxy::http_request_parser::status;
    stream_run<tinyproxy::http_request_head> out;
    tinyproxy::http_request_parser parser(limits);
    http_body_scanner scanner;
    bool in_body = false;
    tptest::feed_in_pieces(stream, at, [&](byte_view piece) {
        for (;;) {
            bool ended = false;
            if (in_body) {
                if (!body_step(scanner, piece, out, ended)) {
                    return ended;
                }
                in_body = false;
            }
            std::size_t used = 0;
            status state = parser.feed(piece, used);
            check(used <= piece.size(), "a head used more than fed");
            out.used += used;
            if (state == status::need_more) {
                check(used == piece.size(), "need_more left bytes unused");
                return false;
            }
            if (state == status::failed) {
                out.failed = true;
                out.error_status = parser.error_status();
                out.error = parser.error();
                return true;
            }
            out.heads.push_back(parser.take());
            out.ends.push_back(out.used);
            check(out.heads.back().body.what != http_framing::kind::until_close,
                  "a request read until close");
            scanner = http_body_scanner(out.heads.back().body, limits);
            in_body = true;
            piece = piece.subview(used);
        }
    });
    return out;
}

/// Reads an origin's stream: interim heads, a final head and its body, again and again.
stream_run<tinyproxy::http_response_head> drive_origin(byte_view stream, const tptest::cuts& at,
                                                       std::string_view method,
                                                       http_head_limits limits) {
    using status = tinyproxy::http_response_parser::status;
    stream_run<tinyproxy::http_response_head> out;
    tinyproxy::http_response_parser parser(limits);
    parser.reset(method);
    http_body_scanner scanner;
    bool in_body = false;
    tptest::feed_in_pieces(stream, at, [&](byte_view piece) {
        for (;;) {
            bool ended = false;
            if (in_body) {
                if (!body_step(scanner, piece, out, ended)) {
                    return ended;
                }
                in_body = false;
                parser.reset(method);
            }
            std::size_t used = 0;
            status state = parser.feed(piece, used);
            check(used <= piece.size(), "a head used more than fed");
            out.used += used;
            if (state == status::need_more) {
                check(used == piece.size(), "need_more left bytes unused");
                return false;
            }
            if (state == status::failed) {
                out.failed = true;
                out.error_status = parser.error_status();
                out.error = parser.error();
                check(out.error_status == 502, "a response refused with other than 502");
                return true;
            }
            out.heads.push_back(parser.take());
            out.ends.push_back(out.used);
            if (!out.heads.back().interim()) {
                scanner = http_body_scanner(out.heads.back().body, limits);
                in_body = true;
            }
            piece = piece.subview(used);
        }
    });
    return out;
}

template <class Head, class Same>
void check_same(const stream_run<Head>& a, const stream_run<Head>& b, Same&& same) {
    check(a.failed == b.failed && a.error_status == b.error_status && a.error == b.error,
          "a different outcome");
    check(a.used == b.used && a.ends == b.ends, "ended elsewhere");
    check(a.heads.size() == b.heads.size(), "a different count of heads");
    for (std::size_t i = 0; i < a.heads.size() && i < b.heads.size(); ++i) {
        check(same(a.heads[i], b.heads[i]), "a head read differently");
    }
}

bool printable(std::string_view text) {
    for (char c : text) {
        auto byte = static_cast<unsigned char>(c);
        if ((byte < 0x20 && c != '\t') || byte == 0x7F) {
            return false;
        }
    }
    return true;
}

void check_fields(const std::vector<tinyproxy::http_field>& fields) {
    namespace h = tinyproxy::detail::http_head;
    for (const tinyproxy::http_field& field : fields) {
        check(h::is_token(field.name), "a field name that is not a token");
        check(printable(field.value), "a control character in a field value");
    }
}

void check_request(const tinyproxy::http_request_head& head) {
    namespace h = tinyproxy::detail::http_head;
    check(h::is_token(head.method), "a method that is not a token");
    check(head.minor_version >= 0 && head.minor_version <= 9, "a minor version past 9");
    check(!head.origin.host.empty() && head.origin.port != 0, "no origin");
    check_fields(head.fields);
    if (head.connect) {
        check(head.body.what == http_framing::kind::none, "a CONNECT with a body");
        return;
    }
    check(!head.path.empty() && head.path.front() == '/', "a path not in origin form");
    std::string sent = tinyproxy::origin_request_head(head, "fuzz");
    std::string line = head.method + " " + head.path + " HTTP/1.";
    check(sent.compare(0, line.size(), line) == 0, "a request line not as read");
    check(sent.find("\r\n\r\n") == sent.size() - 4, "not one head");
    // Field names keep their case: look for the framing fields in a lowercase copy.
    std::string lower = sent;
    for (char& c : lower) {
        c = h::ascii_lower(c);
    }
    if (head.body.what == http_framing::kind::length) {
        const std::string* length = head.field("content-length");
        check(length != nullptr &&
                  lower.find("\r\ncontent-length: " + *length + "\r\n") != std::string::npos,
              "Content-Length not forwarded");
    }
    if (head.body.what == http_framing::kind::chunked) {
        check(lower.find("\r\ntransfer-encoding: ") != std::string::npos,
              "Transfer-Encoding not forwarded");
    }
}

void check_response(const tinyproxy::http_response_head& head, std::string_view method,
                    http_head_limits limits, bool close) {
    check(head.status >= 100 && head.status <= 999, "a status outside 100..999");
    check_fields(head.fields);
    std::string sent = tinyproxy::client_response_head(head, "fuzz", close ? 0 : 1, close);
    // It reads back the same (the limits grow by the fields the proxy adds).
    limits.max_fields += 2;
    limits.max_head += 64;
    limits.max_line += 64;
    tinyproxy::http_response_parser again(limits);
    again.reset(method);
    std::size_t used = 0;
    check(again.feed(byte_view(sent), used) == tinyproxy::http_response_parser::status::complete,
          "a response head that does not read back");
    check(used == sent.size(), "a response head with bytes after it");
    tinyproxy::http_response_head read = again.take();
    check(read.status == head.status && read.reason == head.reason, "a different status line");
    check(tptest::same_framing(read.body, head.body), "a different framing");
    check(!close || !read.keep_alive, "close sent without Connection: close");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    const std::uint8_t selector = data[0];
    const byte_view stream(data + 1, size - 1);
    const http_head_limits limits = limits_for(selector);
    const std::string_view method = method_for(selector);
    std::vector<tptest::cuts> plans{tptest::seeded_cuts(selector, stream.size())};
    if (stream.size() <= 4096) {
        plans.push_back(tptest::every_byte(stream.size()));
    }

    auto client = drive_client(stream, {}, limits);
    for (const tinyproxy::http_request_head& head : client.heads) {
        check_request(head);
    }
    if (client.failed && client.error_status != 0) {
        int status = client.error_status;
        check(status == 400 || status == 414 || status == 431 || status == 501 || status == 505,
              "an undocumented status");
    }
    auto origin = drive_origin(stream, {}, method, limits);
    for (const tinyproxy::http_response_head& head : origin.heads) {
        check_response(head, method, limits, (selector & 0x20) != 0);
    }
    for (const tptest::cuts& plan : plans) {
        check_same(drive_client(stream, plan, limits), client, tptest::same_request_head);
        check_same(drive_origin(stream, plan, method, limits), origin, tptest::same_response_head);
    }
    return 0;
}
