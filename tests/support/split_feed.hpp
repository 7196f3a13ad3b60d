// SPDX-License-Identifier: MIT
// Test support shared by the unit tests and the fuzz targets: the one split-feed driver. It cuts
// a stream into feeds (whole, a byte at a time, at every position, or as a seed says), feeds a
// sans-I/O parser piece by piece, and for handshake parsers checks the invariants every one keeps
// and that every cut of a stream ends the same way. No test framework here: a caller passes the
// check to use (a doctest CHECK in the tests, a trap in the fuzzers).
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes, seeds
#include <cstring>      // std::memcmp
#include <system_error> // std::error_code
#include <vector>       // cuts, replies

#include <tinyproxy/tinyproxy.hpp> // handshake_step (the one path both include roots have)

namespace tptest {

/// Where a stream is cut into feeds: ascending positions strictly inside it (none: one feed).
using cuts = std::vector<std::size_t>;

/// A cut after every byte: the stream fed one byte at a time.
inline cuts every_byte(std::size_t size) {
    cuts out;
    for (std::size_t at = 1; at < size; ++at) {
        out.push_back(at);
    }
    return out;
}

/// The cuts `seed` picks for a stream of `size` bytes: 0 none (whole), 1 after every byte,
/// anything else pieces of pseudo-random sizes, small or large by the seed's top bits.
inline cuts seeded_cuts(std::uint8_t seed, std::size_t size) {
    if (seed == 0) {
        return {};
    }
    if (seed == 1) {
        return every_byte(size);
    }
    std::uint32_t state = 0x9E3779B9u * seed | 1u;
    std::size_t limit = (seed & 0x80) ? 700 : (seed & 0x40) ? 40 : 6;
    cuts out;
    std::size_t at = 0;
    for (;;) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        at += 1 + state % limit;
        if (at >= size) {
            return out;
        }
        out.push_back(at);
    }
}

/// The ways a unit test cuts a stream of `size` bytes, besides whole: a byte at a time, once at
/// every `stride`-th position, and (when `gap` is not 0) twice, at each such position and `gap`
/// bytes after it.
inline std::vector<cuts> split_plans(std::size_t size, std::size_t stride = 1,
                                     std::size_t gap = 0) {
    std::vector<cuts> plans{every_byte(size)};
    for (std::size_t at = 1; at < size; at += stride) {
        plans.push_back({at});
        if (gap != 0 && at + gap < size) {
            plans.push_back({at, at + gap});
        }
    }
    return plans;
}

/// Feeds `stream` to `feed` in the pieces `at` cuts it into, until feed(piece) returns true (the
/// parser has ended). Returns how many bytes were fed.
template <class Feed>
std::size_t feed_in_pieces(tinyproxy::byte_view stream, const cuts& at, Feed&& feed) {
    std::size_t start = 0;
    for (std::size_t i = 0; i <= at.size(); ++i) {
        std::size_t end = i < at.size() ? at[i] : stream.size();
        if (feed(tinyproxy::byte_view{stream.data() + start, end - start})) {
            return end;
        }
        start = end;
    }
    return stream.size();
}

// --- handshake parsers: handshake_step feed(byte_view), bool finished() const ----------------

/// No reply a handshake parser sends in one feed is larger than this (SOCKS5's largest is 14
/// bytes: method selection, auth status and a failure reply).
constexpr std::size_t max_reply_size = 512;

/// How feeding a stream to a handshake parser ended.
struct handshake_run {
    tinyproxy::handshake_step::action what = tinyproxy::handshake_step::action::need_more;
    std::error_code error;
    std::vector<std::uint8_t> to_client;  ///< every feed's to_client, in order
    std::size_t to_client_before_end = 0; ///< how much of it need_more steps sent
    tinyproxy::host_port target;
    /// For connect: to_upstream, then the bytes never fed (a session relays both, in order).
    std::vector<std::uint8_t> upstream;
    /// For connect: where the request ended in the stream (the first byte of to_upstream).
    std::size_t request_end = 0;
    std::size_t feeds = 0; ///< feeds up to and including the last one
};

/// Feeds `stream` to `parser` cut at `at`, stopping at the first connect or fail, and checks with
/// `check(ok, what)` feed by feed:
///  - before the end every step is a plain need_more (no error, nothing for upstream, no target)
///    and the parser is not finished;
///  - no feed asks to send more than max_reply_size bytes;
///  - a connect step's to_upstream is exactly the tail of the piece that ended the request, so
///    nothing after the request is dropped, reordered or invented; its target has a host with
///    no control character and a port other than 0;
///  - a fail step has an error and nothing for upstream;
///  - once ended, the parser is finished and answers every further feed (the rest of the stream,
///    then the whole stream again) with fail(protocol_error), sending nothing.
template <class Parser, class Check>
handshake_run drive_handshake(Parser& parser, tinyproxy::byte_view stream, const cuts& at,
                              Check&& check) {
    using action = tinyproxy::handshake_step::action;
    handshake_run out;
    std::size_t fed = feed_in_pieces(stream, at, [&](tinyproxy::byte_view piece) {
        tinyproxy::handshake_step step = parser.feed(piece);
        ++out.feeds;
        check(step.to_client.size() <= max_reply_size, "a reply larger than max_reply_size");
        out.to_client.insert(out.to_client.end(), step.to_client.begin(), step.to_client.end());
        if (step.what == action::need_more) {
            out.to_client_before_end = out.to_client.size();
            check(!step.error, "need_more with an error");
            check(step.to_upstream.empty(), "need_more with bytes for upstream");
            check(step.target.host.empty(), "need_more with a target");
            check(!parser.finished(), "need_more from a finished parser");
            return false;
        }
        out.what = step.what;
        out.error = step.error;
        out.target = step.target;
        out.upstream = step.to_upstream;
        if (step.what == action::connect) {
            check(!step.error, "connect with an error");
            bool tail = step.to_upstream.size() <= piece.size() &&
                        (step.to_upstream.empty() ||
                         std::memcmp(step.to_upstream.data(),
                                     piece.data() + (piece.size() - step.to_upstream.size()),
                                     step.to_upstream.size()) == 0);
            check(tail, "to_upstream is not the tail of the last feed");
            // A BIND or UDP ASSOCIATE may leave the port to the proxy (it names a peer, not a
            // destination); a CONNECT may not.
            check(!step.target.host.empty() &&
                      (step.target.port != 0 ||
                       step.kind != tinyproxy::handshake_step::request::connect),
                  "connect without a target");
            for (char c : step.target.host) {
                check(static_cast<unsigned char>(c) >= 0x20 && c != 0x7F,
                      "a control character in the target host");
            }
        } else {
            check(static_cast<bool>(step.error), "fail without an error");
            check(step.to_upstream.empty(), "fail with bytes for upstream");
        }
        return true;
    });
    if (out.what == action::need_more) {
        check(!parser.finished(), "finished without a connect or fail");
        return out;
    }
    out.request_end = fed - (out.upstream.size() <= fed ? out.upstream.size() : fed);
    out.upstream.insert(out.upstream.end(), stream.data() + fed, stream.data() + stream.size());
    check(parser.finished(), "not finished after a connect or fail");
    for (tinyproxy::byte_view more : {stream.subview(fed), stream}) {
        tinyproxy::handshake_step after = parser.feed(more);
        check(after.what == action::fail, "a finished parser took more");
        check(after.error == tinyproxy::errc::protocol_error,
              "a finished parser's fail is not protocol_error");
        check(after.to_client.empty() && after.to_upstream.empty(),
              "a finished parser sent something");
    }
    return out;
}

/// Two cuts of the same stream ended the same way: same outcome, error and bytes for the client,
/// and for connect the same target, the same end of request and the same bytes for upstream.
template <class Check>
void check_same_run(const handshake_run& a, const handshake_run& b, Check&& check) {
    check(a.what == b.what, "a different outcome");
    check(a.error == b.error, "a different error");
    check(a.to_client == b.to_client, "different bytes for the client");
    if (a.what == tinyproxy::handshake_step::action::connect) {
        check(a.target.host == b.target.host && a.target.port == b.target.port,
              "a different target");
        check(a.request_end == b.request_end, "a different end of request");
        check(a.upstream == b.upstream, "different bytes for upstream");
    }
}

/// The check the fuzz targets pass: a broken invariant is a crash, which libFuzzer reports, with
/// the frame that found it on the stack.
struct trap_on_failure {
    void operator()(bool ok, const char* /*what*/ = nullptr) const {
        if (!ok) {
            __builtin_trap();
        }
    }
};

/// Runs `stream` through a fresh parser from `make()` whole, then through one more for each of
/// `plans`, and checks every run ends as the whole one did. Returns the whole run.
template <class Make, class Check>
handshake_run run_every_cut(Make&& make, tinyproxy::byte_view stream,
                            const std::vector<cuts>& plans, Check&& check) {
    auto whole_parser = make();
    handshake_run whole = drive_handshake(whole_parser, stream, {}, check);
    for (const cuts& plan : plans) {
        auto parser = make();
        check_same_run(drive_handshake(parser, stream, plan, check), whole, check);
    }
    return whole;
}

} // namespace tptest
