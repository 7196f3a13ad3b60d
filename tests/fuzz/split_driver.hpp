// Shared by the fuzz targets of handshake parsers: feeds one input in the pieces the input itself
// chooses, checks the invariants every parser keeps, and traps (a crash libFuzzer reports) when
// one breaks. Tests only: not part of the library.
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <cstring>      // std::memcmp
#include <string>       // host names
#include <system_error> // std::error_code
#include <vector>       // pieces, replies

#include <tinyproxy/protocol/step.hpp>

namespace fuzz_support {

using tinyproxy::byte_view;
using tinyproxy::handshake_step;

/// An invariant: a broken one is a crash with this frame on the stack.
inline void require(bool ok) {
    if (!ok) {
        __builtin_trap();
    }
}

/// No reply a handshake parser sends in one feed is larger than this (SOCKS5's largest is 14
/// bytes: method selection, auth status and a failure reply).
constexpr std::size_t max_reply_size = 512;

/// Where a stream of `size` bytes is cut into feeds, decided by `seed`: 0 feeds it whole, 1 one
/// byte at a time, anything else pieces of pseudo-random sizes, small or large by the seed's top
/// bits.
inline std::vector<std::size_t> piece_sizes(std::uint8_t seed, std::size_t size) {
    std::vector<std::size_t> pieces;
    if (seed == 0) {
        pieces.push_back(size);
        return pieces;
    }
    std::uint32_t state = 0x9E3779B9u * seed | 1u;
    std::size_t limit = (seed & 0x80) ? 700 : (seed & 0x40) ? 40 : (seed == 1) ? 1 : 6;
    std::size_t left = size;
    while (left > 0) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        std::size_t piece = 1 + state % limit;
        piece = piece > left ? left : piece;
        pieces.push_back(piece);
        left -= piece;
    }
    return pieces;
}

/// How one run over a stream ended.
struct run_result {
    handshake_step::action what = handshake_step::action::need_more;
    std::error_code error;
    std::vector<std::uint8_t> to_client; ///< every feed's to_client, in order
    tinyproxy::host_port target;
    /// For connect: where the request ended in the stream (the first byte of to_upstream).
    std::size_t request_end = 0;
};

/// Feeds `stream` to `parser` in `pieces` and checks, feed by feed:
///  - before the end every step is a plain need_more (no error, nothing for upstream);
///  - no feed asks to send more than max_reply_size bytes;
///  - a connect step's to_upstream is exactly the tail of the piece that ended the request, so
///    nothing after the request is dropped, reordered or invented; its target has a host with
///    no control character and a port other than 0;
///  - a fail step has an error and nothing for upstream;
///  - once ended, the parser answers every further feed with fail(protocol_error), sending
///    nothing, and reports finished().
template <class Parser>
run_result run(Parser& parser, byte_view stream, const std::vector<std::size_t>& pieces) {
    run_result out;
    std::size_t at = 0;
    for (std::size_t piece : pieces) {
        byte_view chunk{stream.data() + at, piece};
        handshake_step step = parser.feed(chunk);
        at += piece;
        require(step.to_client.size() <= max_reply_size);
        out.to_client.insert(out.to_client.end(), step.to_client.begin(), step.to_client.end());
        if (step.what == handshake_step::action::need_more) {
            require(!step.error && step.to_upstream.empty() && step.target.host.empty());
            require(!parser.finished());
            continue;
        }
        out.what = step.what;
        out.error = step.error;
        if (step.what == handshake_step::action::connect) {
            require(!step.error);
            require(step.to_upstream.size() <= piece);
            require(step.to_upstream.empty() ||
                    std::memcmp(step.to_upstream.data(),
                                chunk.data() + (piece - step.to_upstream.size()),
                                step.to_upstream.size()) == 0);
            out.request_end = at - step.to_upstream.size();
            require(!step.target.host.empty() && step.target.port != 0);
            for (char c : step.target.host) {
                require(static_cast<unsigned char>(c) >= 0x20 && c != 0x7F);
            }
            out.target = step.target;
        } else {
            require(static_cast<bool>(step.error) && step.to_upstream.empty());
        }
        require(parser.finished());
        // Nothing more is consumed: the rest of the stream, and then one byte more.
        for (byte_view more : {stream.subview(at), stream.first(1)}) {
            handshake_step after = parser.feed(more);
            require(after.what == handshake_step::action::fail);
            require(after.error == tinyproxy::errc::protocol_error);
            require(after.to_client.empty() && after.to_upstream.empty());
        }
        return out;
    }
    require(!parser.finished());
    return out;
}

/// The same stream, cut differently, must end the same way: same outcome, same error, same
/// bytes for the client, and for connect the same target and the same end of request.
inline void require_same(const run_result& a, const run_result& b) {
    require(a.what == b.what);
    require(a.error == b.error);
    require(a.to_client == b.to_client);
    if (a.what == handshake_step::action::connect) {
        require(a.target.host == b.target.host && a.target.port == b.target.port);
        require(a.request_end == b.request_end);
    }
}

/// Runs `stream` through fresh parsers from `make`: cut as `seed` says, whole, and one byte at a
/// time, and requires the three to agree. Returns the whole run's result.
template <class Make>
run_result run_all_ways(Make make, byte_view stream, std::uint8_t seed) {
    auto whole_parser = make();
    run_result whole = run(whole_parser, stream, piece_sizes(0, stream.size()));
    auto split_parser = make();
    require_same(run(split_parser, stream, piece_sizes(seed, stream.size())), whole);
    auto byte_parser = make();
    require_same(run(byte_parser, stream, piece_sizes(1, stream.size())), whole);
    return whole;
}

} // namespace fuzz_support
