// SPDX-License-Identifier: MIT
// Test support shared by the unit tests and fuzz_http_message: feeds a byte stream to the
// protocol/http_message.hpp parsers (requests, responses, body scanner) in given pieces, checks
// their invariants feed by feed, and compares two runs of the same stream. No test framework
// here: a caller passes the check to use (a doctest CHECK, or a trap in the fuzzer).
#pragma once

#include <cstddef>      // std::size_t
#include <system_error> // std::error_code
#include <vector>       // heads

#include <tinyproxy/tinyproxy.hpp>

#include "support/split_feed.hpp"

namespace tptest {

inline bool same_fields(const std::vector<tinyproxy::http_field>& a,
                        const std::vector<tinyproxy::http_field>& b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (a[i].name != b[i].name || a[i].value != b[i].value) {
            return false;
        }
    }
    return true;
}

inline bool same_framing(const tinyproxy::http_framing& a, const tinyproxy::http_framing& b) {
    return a.what == b.what && a.length == b.length;
}

inline bool same_request_head(const tinyproxy::http_request_head& a,
                              const tinyproxy::http_request_head& b) {
    return a.method == b.method && a.target == b.target && a.minor_version == b.minor_version &&
           same_fields(a.fields, b.fields) && a.connect == b.connect &&
           a.origin.host == b.origin.host && a.origin.port == b.origin.port && a.path == b.path &&
           same_framing(a.body, b.body) && a.keep_alive == b.keep_alive &&
           a.expect_continue == b.expect_continue;
}

inline bool same_response_head(const tinyproxy::http_response_head& a,
                               const tinyproxy::http_response_head& b) {
    return a.minor_version == b.minor_version && a.status == b.status && a.reason == b.reason &&
           same_fields(a.fields, b.fields) && same_framing(a.body, b.body) &&
           a.keep_alive == b.keep_alive;
}

/// How reading heads from a stream ended.
template <class Head>
struct head_run {
    std::vector<Head> heads;       ///< every complete head, in order
    std::vector<std::size_t> ends; ///< where each head ended in the stream
    bool failed = false;
    int error_status = 0;
    std::error_code error;
    std::size_t used = 0; ///< bytes the parser used, in total
};

using request_run = head_run<tinyproxy::http_request_head>;
using response_run = head_run<tinyproxy::http_response_head>;

/// Feeds `stream` cut at `at` to `parser`, taking each complete head and feeding on with what
/// followed it (as a pipelining client's requests, or interim responses before a final one),
/// until `more(head)` says to stop, the parser fails or the stream ends. Checks: need_more uses
/// every byte; no feed uses more than it was given; complete uses at least a byte; a failed
/// parser has a status and an error, and answers failed (using nothing) again.
template <class Parser, class Head, class More, class Check>
head_run<Head> drive_heads(Parser& parser, tinyproxy::byte_view stream, const cuts& at, More&& more,
                           Check&& check) {
    using status = typename Parser::status;
    head_run<Head> out;
    feed_in_pieces(stream, at, [&](tinyproxy::byte_view piece) {
        for (;;) {
            std::size_t used = 0;
            status state = parser.feed(piece, used);
            check(used <= piece.size(), "used more than fed");
            out.used += used;
            if (state == status::need_more) {
                check(used == piece.size(), "need_more left bytes unused");
                return false;
            }
            if (state == status::failed) {
                out.failed = true;
                out.error_status = parser.error_status();
                out.error = parser.error();
                check(out.error_status >= 400 && static_cast<bool>(out.error), "fail without why");
                std::size_t again = 1;
                check(parser.feed(piece, again) == status::failed && again == 0,
                      "a failed parser read on");
                return true;
            }
            check(used > 0, "complete without a byte");
            std::size_t again = 1;
            check(parser.feed(piece.subview(used), again) == status::complete && again == 0,
                  "a complete parser read on");
            out.heads.push_back(parser.take());
            out.ends.push_back(out.used);
            if (!more(out.heads.back())) {
                return true;
            }
            piece = piece.subview(used);
            if (piece.empty()) {
                return false;
            }
        }
    });
    return out;
}

/// Requests, one after another (pipelined), until the stream ends or one fails.
template <class Check>
request_run drive_requests(tinyproxy::byte_view stream, const cuts& at,
                           tinyproxy::http_head_limits limits, Check&& check) {
    tinyproxy::http_request_parser parser(limits);
    return drive_heads<tinyproxy::http_request_parser, tinyproxy::http_request_head>(
        parser, stream, at, [](const tinyproxy::http_request_head&) { return true; }, check);
}

/// The responses to one request: interim ones, then the final one (where it stops).
template <class Check>
response_run drive_responses(tinyproxy::byte_view stream, const cuts& at,
                             std::string_view request_method, tinyproxy::http_head_limits limits,
                             Check&& check) {
    tinyproxy::http_response_parser parser(limits);
    parser.reset(request_method);
    return drive_heads<tinyproxy::http_response_parser, tinyproxy::http_response_head>(
        parser, stream, at,
        [](const tinyproxy::http_response_head& head) { return head.interim(); }, check);
}

template <class Head, class Same, class Check>
void check_same_heads(const head_run<Head>& a, const head_run<Head>& b, Same&& same,
                      Check&& check) {
    check(a.failed == b.failed && a.error_status == b.error_status && a.error == b.error,
          "a different outcome");
    check(a.used == b.used, "a different count of bytes used");
    check(a.ends == b.ends, "heads ended elsewhere");
    check(a.heads.size() == b.heads.size(), "a different count of heads");
    for (std::size_t i = 0; i < a.heads.size() && i < b.heads.size(); ++i) {
        check(same(a.heads[i], b.heads[i]), "a head read differently");
    }
}

/// How scanning a body ended.
struct body_run {
    tinyproxy::http_body_scanner::status what = tinyproxy::http_body_scanner::status::more;
    std::error_code error;
    std::size_t used = 0;
};

/// Feeds `stream` cut at `at` to a body scanner until it completes or fails. Checks: more uses
/// every byte; no feed uses more than it was given; complete() agrees with the status; a failed
/// scanner has an error; a finished scanner uses nothing more.
template <class Check>
body_run drive_body(tinyproxy::http_framing framing, tinyproxy::byte_view stream, const cuts& at,
                    tinyproxy::http_head_limits limits, Check&& check) {
    using status = tinyproxy::http_body_scanner::status;
    tinyproxy::http_body_scanner scanner(framing, limits);
    body_run out;
    feed_in_pieces(stream, at, [&](tinyproxy::byte_view piece) {
        std::size_t used = 0;
        out.what = scanner.feed(piece, used);
        check(used <= piece.size(), "used more than fed");
        out.used += used;
        check(scanner.complete() == (out.what == status::complete), "complete() disagrees");
        if (out.what == status::more) {
            check(used == piece.size(), "more left bytes unused");
            return false;
        }
        if (out.what == status::failed) {
            out.error = scanner.error();
            check(static_cast<bool>(out.error), "fail without why");
        }
        std::size_t again = 1;
        check(scanner.feed(piece.subview(used), again) == out.what && again == 0,
              "a finished scanner read on");
        return true;
    });
    if (framing.what == tinyproxy::http_framing::kind::until_close) {
        check(out.what == status::more && out.used == stream.size(), "until_close ended");
    }
    return out;
}

template <class Check>
void check_same_body(const body_run& a, const body_run& b, Check&& check) {
    check(a.what == b.what && a.error == b.error, "a different outcome");
    check(a.used == b.used, "a different count of bytes used");
}

} // namespace tptest
