// SPDX-License-Identifier: MIT
// The second part of a session: the connector, which turns the Mode's target into a connected
// upstream socket: the numeric shortcut or a resolve, each address in turn, one deadline. The
// client's first bytes, when it has sent some, probe each attempt: sent, they prove it.
#pragma once

#include <chrono>       // the connect timeout
#include <cstddef>      // std::size_t
#include <cstdint>      // the socket serial, the probe's bytes
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // the addresses to try

#include <poll.h> // POLLOUT, POLLERR, POLLHUP

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"

namespace tinyproxy {
namespace detail {

/// Where a connector stands after each call.
enum class connect_status {
    resolving,         ///< the driver is to resolve target() and call on_resolved()
    connecting,        ///< wait for the upstream socket's writability, or the deadline
    connected,         ///< the socket the driver's readiness reported on is connected
    connected_at_once, ///< an address connected without waiting (on loopback, often the first)
    failed,            ///< no address connected: error() says why
};

/// Connects to one target with one deadline shared by all its addresses; never waits. The
/// caller passes the upstream socket's readiness and the time, and takes the socket once
/// connected.
///
/// The probe: a connect that is not over when connect() returns (EINPROGRESS, as on loopback
/// even when the handshake is already done) is asked for its outcome at once. With bytes for
/// upstream in hand (`probe`: what the client sent first), that question is their send(): sent
/// means connected, "would block" means still connecting, and an error (a refusal) means this
/// address failed and the next is tried, with the same bytes. Without them it is a poll(2)
/// with no wait. Either way one system call, but the send is one the tunnel would make anyway.
class connector {
public:
    /// Starts with `target`: its deadline is `timeout` from `now`. A numeric address needs no
    /// resolving, and is tried at once. `probe`: bytes for upstream to send first (see above);
    /// what the connected socket took of them is probe_sent(), the rest probe_unsent().
    connect_status begin(host_port target, time_point now, std::chrono::milliseconds timeout,
                         std::vector<std::uint8_t> probe = {});
    /// The addresses `target()` resolved to; `ec` when it did not resolve.
    connect_status on_resolved(std::vector<endpoint> candidates, std::error_code ec);
    /// The upstream socket's readiness (revents, not 0) while connecting.
    connect_status on_ready(short revents);
    /// The deadline passed: the connect has failed with errc::connect_timeout.
    connect_status on_deadline() noexcept;

    const host_port& target() const noexcept { return target_; }
    time_point deadline() const noexcept { return deadline_; }
    /// -1 unless an attempt is in progress (or connected and not yet taken).
    int upstream_fd() const noexcept { return upstream_ ? upstream_.native_handle() : -1; }
    /// Changes each time a new socket replaces the last (the next address is tried), so an
    /// event loop can tell it from the old one even when it got the same number.
    std::uint32_t upstream_serial() const noexcept {
        // One socket per address tried, counted on across targets (a session handed back to
        // its Mode connects again).
        return serial_base_ + static_cast<std::uint32_t>(next_candidate_);
    }
    /// Why the connect failed, once it did.
    std::error_code error() const noexcept { return last_error_; }

    /// Once connected: the socket, and the address it is connected to.
    socket take_upstream() noexcept { return std::move(upstream_); }
    const endpoint& connected_to() const noexcept { return candidates_[next_candidate_ - 1]; }
    /// Of the probe, the bytes the connected socket has taken, and those still to send.
    std::size_t probe_sent() const noexcept { return probe_sent_; }
    byte_view probe_unsent() const noexcept {
        return byte_view{probe_.data() + probe_sent_, probe_.size() - probe_sent_};
    }
    /// Frees the probe's bytes once the tunnel has taken what it still owes upstream.
    void release_probe() noexcept {
        std::vector<std::uint8_t>().swap(probe_);
        probe_sent_ = 0;
    }
    void close() noexcept { upstream_.close(); }

private:
    void try_next_candidate();
    connect_status connect_onward();
    /// The outcome of the attempt in progress, asked without waiting (see the class comment):
    /// connecting, connected_at_once, or failed when this address failed (last_error_ says why).
    connect_status ask_at_once();
    connect_status fail(std::error_code why) noexcept {
        upstream_.close();
        last_error_ = why;
        return connect_status::failed;
    }
    /// The connect's outcome once the upstream socket reported `revents`: writable without an
    /// error or hang-up is connected, with no need to ask the socket (SO_ERROR).
    std::error_code connect_outcome(short revents) const noexcept {
        return (revents & (POLLERR | POLLHUP)) != 0 ? connect_result(upstream_.native_handle())
                                                    : std::error_code{};
    }

    host_port target_;
    time_point deadline_ = time_point::max();
    std::vector<endpoint> candidates_;
    std::size_t next_candidate_ = 0;
    std::uint32_t serial_base_ = 0; // the sockets of the targets before this one
    std::error_code last_error_;
    socket upstream_;
    std::vector<std::uint8_t> probe_;
    std::size_t probe_sent_ = 0;
};

// ---------------------------------------------------------------------------------------------

inline connect_status connector::begin(host_port target, time_point now,
                                       std::chrono::milliseconds timeout,
                                       std::vector<std::uint8_t> probe) {
    target_ = std::move(target);
    probe_ = std::move(probe);
    probe_sent_ = 0;
    deadline_ = deadline_after(now, timeout);
    serial_base_ += static_cast<std::uint32_t>(next_candidate_) + 1;
    next_candidate_ = 0;
    if (auto numeric = target_.numeric_address()) {
        return on_resolved({endpoint{*numeric, target_.port}}, {});
    }
    return connect_status::resolving;
}

inline connect_status connector::on_resolved(std::vector<endpoint> candidates, std::error_code ec) {
    candidates_ = std::move(candidates);
    next_candidate_ = 0;
    last_error_ = ec ? ec : make_error_code(errc::name_not_resolved);
    return connect_onward();
}

inline void connector::try_next_candidate() {
    upstream_.close();
    while (next_candidate_ < candidates_.size()) {
        std::error_code ec;
        bool connected = false;
        socket attempt = start_connect(candidates_[next_candidate_++], connected, ec);
        if (!ec) {
            // Connected at once or in progress: either way, writability reports the outcome.
            upstream_ = std::move(attempt);
            return;
        }
        last_error_ = ec;
    }
}

inline connect_status connector::connect_onward() {
    // Each address in turn until one connects, one is still connecting, or none is left. On
    // loopback (and often nearby) the handshake is over by the time connect() returns: asking
    // at once, without waiting, starts the tunnel now and spares an event loop the writability
    // watch (two epoll_ctl calls) and one more wait per connection.
    for (;;) {
        try_next_candidate();
        if (!upstream_) {
            return fail(last_error_);
        }
        connect_status status = ask_at_once();
        if (status != connect_status::failed) {
            return status;
        }
    }
}

inline connect_status connector::ask_at_once() {
    std::error_code ec;
    if (!probe_.empty()) {
        std::size_t n = upstream_.send(probe_.data(), probe_.size(), ec);
        if (!ec) {
            probe_sent_ = n;
            return connect_status::connected_at_once;
        }
        if (would_block(ec)) {
            return connect_status::connecting; // not yet: the bytes wait with the rest
        }
    } else {
        short revents = ready_now(upstream_.native_handle(), POLLOUT);
        if (revents == 0) {
            return connect_status::connecting; // the driver waits for writability
        }
        ec = connect_outcome(revents);
        if (!ec) {
            return connect_status::connected_at_once;
        }
    }
    last_error_ = ec;
    return connect_status::failed;
}

inline connect_status connector::on_ready(short revents) {
    std::error_code ec = connect_outcome(revents);
    if (!ec) {
        return connect_status::connected;
    }
    if (ec == errc::connect_timeout) {
        return fail(ec); // a timed-out attempt ends the connect, as the deadline does
    }
    last_error_ = ec;
    return connect_onward();
}

inline connect_status connector::on_deadline() noexcept {
    return fail(make_error_code(errc::connect_timeout));
}

} // namespace detail
} // namespace tinyproxy
