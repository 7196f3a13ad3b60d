// SPDX-License-Identifier: MIT
// The connect part of a session whose client asked for a SOCKS BIND: a listener on the address
// the client reached us on, waiting under one deadline for one connection from the peer the
// client named.
#pragma once

#include <chrono>       // the connect timeout
#include <cstdint>      // counts
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // the expected addresses

#include <poll.h> // POLLIN

#include "tinyproxy/config.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"

namespace tinyproxy {
namespace detail {

/// Listens for the one connection a BIND asks for. A connection from any address other than
/// the expected ones is closed at once and the wait goes on; the first from an expected one
/// is the peer. No expected address (the client named 0.0.0.0 or ::): any peer.
class bind_wait {
public:
    /// Listens on `local`'s address, port 0; the deadline is `timeout` from `now`.
    std::error_code open(const endpoint& local, std::vector<ip_address> expected, time_point now,
                         std::chrono::milliseconds timeout);

    endpoint listening() const noexcept { return listener_.local_endpoint(); }
    int fd() const noexcept { return listener_ ? listener_.native_handle() : -1; }
    static constexpr short events() noexcept { return POLLIN; }
    time_point deadline() const noexcept { return deadline_; }

    /// Takes what is pending. True once the expected peer has connected (take_peer()); `ec`
    /// when the listener failed.
    bool on_ready(std::error_code& ec) noexcept;
    /// Once on_ready() said so: the peer's socket (the listener is closed) and its address.
    socket take_peer() noexcept {
        listener_.close();
        return std::move(peer_);
    }
    const endpoint& peer() const noexcept { return peer_address_; }
    /// Connections closed because they came from elsewhere.
    std::uint64_t refused() const noexcept { return refused_; }
    void close() noexcept {
        listener_.close();
        peer_.close();
    }

private:
    bool expected(const ip_address& address) const noexcept;

    listener listener_;
    std::vector<ip_address> expected_;
    time_point deadline_ = time_point::max();
    socket peer_;
    endpoint peer_address_;
    std::uint64_t refused_ = 0;
};

// ---------------------------------------------------------------------------------------------

inline std::error_code bind_wait::open(const endpoint& local, std::vector<ip_address> expected,
                                       time_point now, std::chrono::milliseconds timeout) {
    std::error_code ec;
    listener_ = listener::open(endpoint{local.address, 0}, 1, ec);
    if (ec) {
        return ec;
    }
    listener_.set_nonblocking(true, ec);
    if (ec) {
        listener_.close();
        return ec;
    }
    expected_ = std::move(expected);
    deadline_ = deadline_after(now, timeout);
    return {};
}

inline bool bind_wait::on_ready(std::error_code& ec) noexcept {
    ec.clear();
    // Bounded: a flood of strangers is closed a few at a time, between other sessions' turns.
    for (int n = 0; n < 16; ++n) {
        endpoint from;
        socket s = listener_.accept(from, true, ec);
        if (ec) {
            if (would_block(ec)) {
                ec.clear();
            }
            return false;
        }
        if (expected(from.address)) {
            peer_ = std::move(s);
            peer_address_ = from;
            return true;
        }
        ++refused_; // closed as `s` goes: not the peer the client named
    }
    return false;
}

inline bool bind_wait::expected(const ip_address& address) const noexcept {
    if (expected_.empty()) {
        return true;
    }
    for (const ip_address& a : expected_) {
        if (a == address) {
            return true;
        }
    }
    return false;
}

} // namespace detail
} // namespace tinyproxy
