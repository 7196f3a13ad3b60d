// SPDX-License-Identifier: MIT
// The first part of a session: the handshake driver, which feeds the Mode's session what the
// client sends, sends the client what the Mode answers, and keeps the handshake deadline.
#pragma once

#include <chrono>       // the handshake timeout
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // a step, when the Mode took bytes
#include <system_error> // std::error_code
#include <type_traits>  // std::is_nothrow_move_constructible
#include <utility>      // std::move
#include <vector>       // byte buffers

#include <poll.h> // POLLIN, POLLOUT

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {
namespace detail {

/// Holds a Mode's session and the bytes it owes the client until a tunnel starts (or the client
/// is closed). It reads and sends on the socket it is given; what a step means (wait, connect,
/// fail) is for the caller to act on.
template <class ModeSession>
class handshake_driver {
public:
    explicit handshake_driver(ModeSession mode) noexcept(
        std::is_nothrow_move_constructible<ModeSession>::value)
        : mode_(std::move(mode)) {}

    ModeSession& mode() noexcept { return mode_; }
    const ModeSession& mode() const noexcept { return mode_; }

    /// The Mode's first step; the handshake deadline begins at `now`.
    mode_step start(time_point now, std::chrono::milliseconds timeout) {
        deadline_ = deadline_after(now, timeout);
        return mode_.start();
    }
    /// The client is back from a tunnel that handed it back (stage_context::hand_back): the
    /// Mode's next step, from the Mode's on_handed_back(), under a new handshake deadline.
    mode_step resume(time_point now, std::chrono::milliseconds timeout) {
        release();
        heard_client_ = true; // it has spoken through the tunnel
        deadline_ = deadline_after(now, timeout);
        return mode_.on_handed_back();
    }
    /// The handshake deadline, or, once closing, the end of the client's time to take the reply.
    time_point deadline() const noexcept { return deadline_; }

    /// Takes a step's bytes: `to_client` is owed to the client, `to_upstream` kept for the
    /// tunnel. A step comes only once the bytes of the last one are out.
    void take(mode_step& step) {
        to_client_ = std::move(step.to_client);
        to_client_offset_ = 0;
        to_upstream_ = std::move(step.to_upstream);
    }

    /// What to wait for on the client: its next bytes, or room for the ones owed to it. The
    /// same as a relay asks (POLLRDHUP too, where there is one), so a client kept registered
    /// while its upstream connects needs no change when its tunnel starts.
    short client_events() const noexcept {
        return owes_client() ? POLLOUT : POLLIN | peer_closed_event;
    }
    bool owes_client() const noexcept { return to_client_offset_ < to_client_.size(); }

    /// Sends what is owed, as far as the socket takes it; an error other than would-block.
    std::error_code send(socket& client);

    /// The client's readiness: sends what is owed, or reads and feeds the Mode. A step when the
    /// Mode took bytes; `ec` when the client failed or closed before the Mode decided.
    std::optional<mode_step> on_ready(socket& client, short revents, std::uint8_t* scratch,
                                      std::size_t scratch_size, std::error_code& ec);

    /// The client is to be closed once it has `reply`, after the bytes still owed; it gets a
    /// second from `now` to take them. Afterwards owes_client() says whether any are left.
    void close_with(std::vector<std::uint8_t> reply, time_point now);

    /// `reply` is owed to the client after what is owed already (a BIND's or UDP ASSOCIATE's
    /// reply, while the session waits on something other than the client); the deadline stays.
    void owe(const std::vector<std::uint8_t>& reply) {
        to_client_.erase(to_client_.begin(),
                         to_client_.begin() + static_cast<std::ptrdiff_t>(to_client_offset_));
        to_client_offset_ = 0;
        to_client_.insert(to_client_.end(), reply.begin(), reply.end());
    }

    /// The bytes owed to the client and those kept for upstream, for the tunnel to send first.
    byte_view unsent_to_client() const noexcept {
        return byte_view{to_client_.data() + to_client_offset_,
                         to_client_.size() - to_client_offset_};
    }
    const std::vector<std::uint8_t>& to_upstream() const noexcept { return to_upstream_; }
    /// The bytes kept for upstream, taken out (the connect's probe, detail::connector).
    std::vector<std::uint8_t> take_to_upstream() noexcept { return std::move(to_upstream_); }
    /// Whether the client has been read: false while the Mode decided without a byte from it
    /// (forwarding), so that whatever the client sends belongs to the tunnel.
    bool heard_client() const noexcept { return heard_client_; }
    /// Frees both once the tunnel has them.
    void release() noexcept {
        std::vector<std::uint8_t>().swap(to_client_);
        std::vector<std::uint8_t>().swap(to_upstream_);
        to_client_offset_ = 0;
    }

private:
    ModeSession mode_;
    time_point deadline_ = time_point::max();
    std::vector<std::uint8_t> to_client_;
    std::size_t to_client_offset_ = 0;
    std::vector<std::uint8_t> to_upstream_;
    bool heard_client_ = false;
};

// ---------------------------------------------------------------------------------------------

template <class ModeSession>
std::error_code handshake_driver<ModeSession>::send(socket& client) {
    std::error_code ec;
    while (!ec && owes_client()) {
        std::size_t n = client.send(to_client_.data() + to_client_offset_,
                                    to_client_.size() - to_client_offset_, ec);
        if (!ec) {
            to_client_offset_ += n;
        }
    }
    return ec && !would_block(ec) ? ec : std::error_code{};
}

template <class ModeSession>
std::optional<mode_step>
handshake_driver<ModeSession>::on_ready(socket& client, short revents, std::uint8_t* scratch,
                                        std::size_t scratch_size, std::error_code& ec) {
    ec.clear();
    if (owes_client()) {
        if ((revents & (POLLOUT | POLLERR | POLLHUP)) != 0) {
            ec = send(client);
        }
        return std::nullopt;
    }
    if ((revents & (POLLIN | POLLERR | POLLHUP)) == 0) {
        return std::nullopt;
    }
    std::size_t n = client.receive(scratch, scratch_size, ec);
    if (ec) {
        if (would_block(ec)) {
            ec.clear();
        }
        return std::nullopt;
    }
    if (n == 0) {
        ec = make_error_code(errc::handshake_incomplete);
        return std::nullopt;
    }
    heard_client_ = true;
    return mode_.on_client_data(byte_view{scratch, n});
}

template <class ModeSession>
void handshake_driver<ModeSession>::close_with(std::vector<std::uint8_t> reply, time_point now) {
    // Bytes the Mode asked for earlier and not yet sent go out first, then the reply.
    to_client_.erase(to_client_.begin(),
                     to_client_.begin() + static_cast<std::ptrdiff_t>(to_client_offset_));
    to_client_offset_ = 0;
    to_client_.insert(to_client_.end(), reply.begin(), reply.end());
    // A client that will not take a few reply bytes in a second is not worth waiting for.
    deadline_ = now + std::chrono::seconds(1);
}

} // namespace detail
} // namespace tinyproxy
