// The one relay engine: moves bytes both ways between two non-blocking sockets, with bounded
// buffers, half-close and reset propagation, and byte counts.
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // byte counters
#include <system_error> // std::error_code
#include <vector>       // pending bytes

#include <poll.h>       // POLLIN, POLLOUT
#include <sys/socket.h> // SHUT_WR

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/detail/sys.hpp"

namespace tinyproxy {

/// A relay between a client and an upstream socket, as a state machine with no waiting of its
/// own: `pump()` moves whatever can move now, `client_events()` / `upstream_events()` say what
/// to wait for next (POLLIN / POLLOUT), and the caller waits however it likes: a poll(2) over two
/// descriptors on a thread, or an event loop over thousands. Every policy drives this one class.
///
/// Rules it keeps:
/// - bytes read from one side are written to the other in order, and none is dropped: at most
///   one read's worth waits per direction, and reading stops until it has been written;
/// - end of stream from one side becomes shutdown(SHUT_WR) on the other once everything read
///   before it has been written; the other direction carries on (half-close);
/// - a reset or error on either side ends the relay (`failed()`), and the caller closes both
///   sockets, the still-open one with a reset (`SO_LINGER` 0) so the peer learns of it.
///
/// Buffers are lazy: bytes are read into the caller's scratch buffer and written straight on;
/// only what the destination would not take is copied into a per-direction buffer, which is
/// freed again once drained. An idle tunnel holds no buffer at all.
class relay {
public:
    relay(int client_fd, int upstream_fd) noexcept
        : halves_{half{client_fd, upstream_fd, {}, 0, false, false, 0},
                  half{upstream_fd, client_fd, {}, 0, false, false, 0}} {}

    /// Bytes to send upstream before anything read from the client: what a client pipelined
    /// behind its handshake, or a PROXY protocol header.
    void prime_upstream(byte_view bytes) { (void)keep(halves_[0], bytes); }
    /// Bytes to send to the client before anything read from upstream.
    void prime_client(byte_view bytes) { (void)keep(halves_[1], bytes); }

    /// Moves every byte that can move now without blocking, using `scratch` for reads (its size
    /// bounds one read, and so the bytes buffered per direction). Returns true when anything
    /// happened (bytes moved, end of stream seen): the caller's idle clock restarts.
    bool pump(std::uint8_t* scratch, std::size_t scratch_size) noexcept;

    /// What to wait for on the client socket next: POLLIN, POLLOUT, both, or 0.
    short client_events() const noexcept { return events_on(0); }
    /// What to wait for on the upstream socket next.
    short upstream_events() const noexcept { return events_on(1); }
    /// Whether to keep the client socket in the poll set even when client_events() is 0: a
    /// client that has half-closed can still reset, and poll reports that (POLLERR/POLLHUP)
    /// only for descriptors it watches. False once nothing more will be written to the client,
    /// which is also when POLLHUP alone could no longer mean an error.
    bool watch_client() const noexcept {
        return client_events() != 0 || (!finished() && !halves_[1].done);
    }
    bool watch_upstream() const noexcept {
        return upstream_events() != 0 || (!finished() && !halves_[0].done);
    }

    /// Both directions have ended cleanly, or one side failed.
    bool finished() const noexcept { return failed() || (halves_[0].done && halves_[1].done); }
    bool failed() const noexcept { return static_cast<bool>(error_); }
    /// The reset or error that ended the relay; empty for a clean finish.
    std::error_code error() const noexcept { return error_; }
    /// True when the error came from the client's socket, false when from the upstream's.
    bool error_on_client() const noexcept { return error_on_client_; }

    std::uint64_t bytes_to_upstream() const noexcept { return halves_[0].bytes_written; }
    std::uint64_t bytes_to_client() const noexcept { return halves_[1].bytes_written; }
    /// Bytes waiting for a slow destination (per direction at most one scratch buffer's worth).
    std::size_t bytes_buffered() const noexcept {
        return halves_[0].pending.size() - halves_[0].pending_offset + halves_[1].pending.size() -
               halves_[1].pending_offset;
    }

private:
    /// One direction: bytes read from `from`, written to `to`.
    struct half {
        int from;
        int to;
        std::vector<std::uint8_t> pending; // read but not yet written; empty when idle
        std::size_t pending_offset;        // how much of `pending` has been written
        bool eof;                          // `from` said end of stream
        bool done;                         // ... and `to` has been shut down for writing
        std::uint64_t bytes_written;
    };

    static void append(half& h, byte_view bytes) {
        h.pending.insert(h.pending.end(), bytes.begin(), bytes.end());
    }
    bool has_pending(const half& h) const noexcept { return h.pending_offset < h.pending.size(); }
    short events_on(int side) const noexcept;
    bool pump_half(half& h, std::uint8_t* scratch, std::size_t scratch_size) noexcept;
    /// Writes what is pending; false when the destination is full or failed.
    bool flush(half& h, bool& progressed) noexcept;
    void probe_half_closed(int side) noexcept;
    /// Copies bytes the destination has not taken yet into the direction's own buffer.
    bool keep(half& h, byte_view rest) noexcept;
    void fail(const std::error_code& ec, int fd) noexcept {
        if (!error_) {
            error_ = ec;
            error_on_client_ = fd == halves_[0].from;
        }
    }

    half halves_[2]; // [0] client -> upstream, [1] upstream -> client
    std::error_code error_;
    bool error_on_client_ = false;
};

// ---------------------------------------------------------------------------------------------

inline short relay::events_on(int side) const noexcept {
    if (finished()) {
        return 0;
    }
    // Side 0 is the client: it is the source of halves_[0] and the destination of halves_[1].
    const half& outgoing = halves_[side];     // reads from this side
    const half& incoming = halves_[1 - side]; // writes to this side
    short events = 0;
    if (!outgoing.eof && !has_pending(outgoing)) {
        events |= POLLIN;
    }
    if (has_pending(incoming)) {
        events |= POLLOUT;
    }
    return events;
}

inline bool relay::flush(half& h, bool& progressed) noexcept {
    while (has_pending(h)) {
        std::error_code ec;
        std::size_t n = detail::send_some(h.to, h.pending.data() + h.pending_offset,
                                          h.pending.size() - h.pending_offset, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                fail(ec, h.to);
            }
            return false;
        }
        h.pending_offset += n;
        h.bytes_written += n;
        progressed = true;
    }
    if (!h.pending.empty()) {
        // Drained: give the memory back, so an idle tunnel costs no buffer.
        std::vector<std::uint8_t>().swap(h.pending);
        h.pending_offset = 0;
    }
    return true;
}

inline bool relay::keep(half& h, byte_view rest) noexcept {
    try {
        append(h, rest);
        return true;
    } catch (...) { // out of memory ends this tunnel, not the proxy
        fail(std::make_error_code(std::errc::not_enough_memory), h.from);
        return false;
    }
}

inline bool relay::pump_half(half& h, std::uint8_t* scratch, std::size_t scratch_size) noexcept {
    bool progressed = false;
    // A few rounds at most, so that in an event loop one fast tunnel cannot starve the others;
    // level-triggered readiness brings us straight back if there is more.
    for (int round = 0; round < 4; ++round) {
        if (!flush(h, progressed) || h.eof) {
            break;
        }
        std::error_code ec;
        std::size_t n = detail::recv_some(h.from, scratch, scratch_size, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                fail(ec, h.from);
            }
            break;
        }
        progressed = true;
        if (n == 0) {
            h.eof = true;
            break;
        }
        // Write straight from scratch; keep only what the destination would not take.
        std::size_t written = detail::send_some(h.to, scratch, n, ec);
        if (ec && !detail::would_block(ec)) {
            fail(ec, h.to);
            break;
        }
        written = ec ? 0 : written;
        h.bytes_written += written;
        if (written < n) {
            keep(h, byte_view{scratch + written, n - written});
            break;
        }
    }
    // End of stream passes on once everything read before it has been written.
    if (h.eof && !h.done && !has_pending(h) && !failed()) {
        std::error_code ignored; // the peer may be gone already; its reset shows on a read
        detail::shutdown_socket(h.to, SHUT_WR, ignored);
        h.done = true;
        progressed = true;
    }
    return progressed;
}

inline void relay::probe_half_closed(int side) noexcept {
    // The side has said end of stream and has nothing to receive: no read or write will show
    // its reset, so ask the socket for a pending error.
    const half& outgoing = halves_[side];
    if (outgoing.eof && events_on(side) == 0 && !halves_[1 - side].done) {
        std::error_code ec = detail::connect_result(outgoing.from);
        if (ec) {
            fail(ec, outgoing.from);
        }
    }
}

inline bool relay::pump(std::uint8_t* scratch, std::size_t scratch_size) noexcept {
    bool progressed = false;
    probe_half_closed(0);
    probe_half_closed(1);
    for (half& h : halves_) {
        if (!h.done && !failed()) {
            progressed = pump_half(h, scratch, scratch_size) || progressed;
        }
    }
    return progressed || failed();
}

} // namespace tinyproxy
