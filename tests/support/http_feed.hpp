// SPDX-License-Identifier: MIT
// Test support shared by the unit tests and fuzz_http_request: feeds a byte stream to an
// http_request_reader in given pieces, takes every request it completes (pipelining), checks the
// reader's invariants feed by feed, and compares two runs of the same stream. No test framework
// here: a caller passes the check to use (a doctest CHECK, or a trap in the fuzzer).
#pragma once

#include <cstddef> // std::size_t
#include <string>  // error messages
#include <vector>  // requests

#include <tinyproxy/tinyproxy.hpp>

#include "support/split_feed.hpp"

namespace tptest {

/// How reading a stream ended.
struct http_run {
    std::vector<tinyproxy::http_request> requests; ///< every complete request, in order
    bool failed = false;
    int error_status = 0;
    std::string error_message;
    std::size_t used = 0; ///< bytes the reader used, in total
};

inline bool same_request(const tinyproxy::http_request& a, const tinyproxy::http_request& b) {
    if (a.method != b.method || a.target != b.target || a.minor_version != b.minor_version ||
        a.body != b.body || a.headers.size() != b.headers.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.headers.size(); ++i) {
        if (a.headers[i].name != b.headers[i].name || a.headers[i].value != b.headers[i].value) {
            return false;
        }
    }
    return true;
}

/// Feeds `stream` cut at `at` to a reader with `limits`, taking each complete request and
/// feeding on with what followed it, until the reader fails or the stream ends. Checks: a
/// need_more feed uses every byte; no feed uses more than it was given; every request keeps the
/// limits; a failed reader has a status and a message, and answers failed (using nothing) again.
template <class Check>
http_run drive_http(tinyproxy::byte_view stream, const cuts& at, tinyproxy::http_limits limits,
                    Check&& check) {
    using status = tinyproxy::http_request_reader::status;
    tinyproxy::http_request_reader reader(limits);
    http_run out;
    feed_in_pieces(stream, at, [&](tinyproxy::byte_view piece) {
        for (;;) {
            std::size_t used = 0;
            status state = reader.feed(piece, used);
            check(used <= piece.size(), "used more than fed");
            out.used += used;
            if (state == status::need_more) {
                check(used == piece.size(), "need_more left bytes unused");
                return false;
            }
            if (state == status::failed) {
                out.failed = true;
                out.error_status = reader.error_status();
                out.error_message = reader.error_message();
                check(out.error_status >= 400 && !out.error_message.empty(), "fail without why");
                std::size_t again = 1;
                check(reader.feed(piece, again) == status::failed && again == 0,
                      "a failed reader read on");
                return true;
            }
            tinyproxy::http_request request = reader.take();
            check(request.body.size() <= limits.max_body, "a body past max_body");
            check(request.headers.size() <= limits.max_headers, "more fields than max_headers");
            check(!request.method.empty() && !request.target.empty(), "a request without a line");
            out.requests.push_back(std::move(request));
            piece = piece.subview(used);
            if (piece.empty()) {
                return false;
            }
        }
    });
    return out;
}

/// Two cuts of one stream read the same requests and ended the same way.
template <class Check>
void check_same_http_run(const http_run& a, const http_run& b, Check&& check) {
    check(a.failed == b.failed && a.error_status == b.error_status, "a different outcome");
    check(a.error_message == b.error_message, "a different error message");
    check(a.used == b.used, "a different count of bytes used");
    check(a.requests.size() == b.requests.size(), "a different count of requests");
    for (std::size_t i = 0; i < a.requests.size() && i < b.requests.size(); ++i) {
        check(same_request(a.requests[i], b.requests[i]), "a request read differently");
    }
}

} // namespace tptest
