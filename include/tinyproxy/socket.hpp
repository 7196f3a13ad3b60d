// SPDX-License-Identifier: MIT
// RAII descriptors and TCP sockets: listen, accept, connect with a deadline, send, receive.
#pragma once

#include <array>        // IPv4-mapped addresses
#include <atomic>       // the stop signal, set from any thread or a signal handler
#include <cstddef>      // std::size_t
#include <cstring>      // std::memcpy
#include <string>       // error messages
#include <system_error> // error reporting
#include <utility>      // std::exchange
#include <vector>       // address lists

#include "tinyproxy/config.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"

namespace tinyproxy {

/// Owns one descriptor and closes it exactly once. Move-only; a moved-from handle is empty.
class unique_fd {
public:
    constexpr unique_fd() noexcept = default;
    constexpr explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& other) noexcept {
        if (this != &other) {
            reset(std::exchange(other.fd_, -1));
        }
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { detail::close_fd(fd_); }

    constexpr int get() const noexcept { return fd_; }
    constexpr explicit operator bool() const noexcept { return fd_ >= 0; }
    /// Gives up ownership without closing.
    int release() noexcept { return std::exchange(fd_, -1); }
    /// Closes the held descriptor (if any) and takes `fd`.
    void reset(int fd = -1) noexcept { detail::close_fd(std::exchange(fd_, fd)); }

private:
    int fd_ = -1;
};

namespace detail {

/// A stop request that any thread, a signal handler or a forked child's parent can make, and
/// that a poll(2) sees: the read end of a pipe turns readable (end of file) once the write end
/// is closed.
class stop_signal {
public:
    stop_signal() noexcept = default;
    stop_signal(const stop_signal&) = delete;
    stop_signal& operator=(const stop_signal&) = delete;
    ~stop_signal() { close_writer(); }

    /// Makes the pipe; a request made before it stays made (the write end is closed at once).
    bool open(std::error_code& ec) noexcept {
        int fds[2] = {-1, -1};
        if (!make_pipe(fds, ec)) {
            return false;
        }
        read_.reset(fds[0]);
        close_fd(write_.exchange(fds[1]));
        if (requested()) {
            close_writer(); // request() came first
        }
        return true;
    }
    /// Async-signal-safe: an atomic store, an atomic exchange and a close(2).
    void request() noexcept {
        requested_.store(true, std::memory_order_release);
        close_writer();
    }
    bool requested() const noexcept { return requested_.load(std::memory_order_acquire); }
    /// The end to wait on; -1 before open() and after close().
    int fd() const noexcept { return read_.get(); }
    /// Drops the write end only (a forked child drops its parent's).
    void close_writer() noexcept { close_fd(write_.exchange(-1)); }
    void close() noexcept {
        read_.reset();
        close_writer();
    }

private:
    unique_fd read_;
    std::atomic<int> write_{-1};
    std::atomic<bool> requested_{false};
};

} // namespace detail

/// A connected TCP socket.
class socket {
public:
    socket() noexcept = default;
    explicit socket(unique_fd fd) noexcept : fd_(std::move(fd)) {}

    int native_handle() const noexcept { return fd_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(fd_); }
    unique_fd release() noexcept { return std::move(fd_); }
    void close() noexcept { fd_.reset(); }

    /// Reads what is there (0 means the peer finished sending). On a non-blocking socket with
    /// nothing to read, ec is would_block.
    std::size_t receive(void* data, std::size_t size, std::error_code& ec) noexcept {
        ec.clear();
        return detail::recv_some(fd_.get(), data, size, ec);
    }
    /// Writes what fits; never raises SIGPIPE.
    std::size_t send(const void* data, std::size_t size, std::error_code& ec) noexcept {
        ec.clear();
        return detail::send_some(fd_.get(), data, size, ec);
    }
    /// Writes all of `bytes`, waiting up to `until` for room. Returns the count written.
    std::size_t send_all(byte_view bytes, time_point until, std::error_code& ec) noexcept;
    /// Reads at least one byte, waiting up to `until`. Returns 0 at end of stream.
    std::size_t receive_some(void* data, std::size_t size, time_point until,
                             std::error_code& ec) noexcept;

    /// Says "no more data from us": the peer reads end of stream, and can still send.
    void shutdown_write(std::error_code& ec) noexcept {
        ec.clear();
        detail::shutdown_socket(fd_.get(), SHUT_WR, ec);
    }
    void set_nonblocking(bool on, std::error_code& ec) noexcept {
        ec.clear();
        detail::set_nonblocking(fd_.get(), on, ec);
    }
    /// Sends small writes at once instead of batching them (Nagle off): a proxy must not add
    /// delay to interactive traffic.
    void set_nodelay(bool on, std::error_code& ec) noexcept {
        ec.clear();
        detail::set_nodelay(fd_.get(), on, ec);
    }
    /// Closing with SO_LINGER 0 sends a reset instead of a FIN: how a proxy passes on a reset.
    void set_linger_reset(std::error_code& ec) noexcept;

    endpoint local_endpoint(std::error_code& ec) const noexcept;
    endpoint remote_endpoint(std::error_code& ec) const noexcept;

private:
    unique_fd fd_;
};

/// A listening TCP socket.
class listener {
public:
    listener() noexcept = default;

    /// Binds `where` (SO_REUSEADDR on; an IPv6 listener takes IPv6 only) and listens.
    static listener open(const endpoint& where, int backlog, std::error_code& ec) noexcept;
    /// As above; throws std::system_error naming the address.
    static listener open(const endpoint& where, int backlog = 1024);

    /// Takes one pending client. A non-blocking listener with none pending gives would_block.
    /// The client socket is close-on-exec, and non-blocking when `nonblocking` is set.
    socket accept(endpoint& peer, bool nonblocking, std::error_code& ec) noexcept;

    int native_handle() const noexcept { return fd_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(fd_); }
    void set_nonblocking(bool on, std::error_code& ec) noexcept {
        ec.clear();
        detail::set_nonblocking(fd_.get(), on, ec);
    }
    /// Nagle off for the listener, and so (TINYPROXY_ACCEPT_INHERITS_NODELAY) for every socket
    /// accept() takes from it from then on.
    void set_nodelay(bool on, std::error_code& ec) noexcept {
        ec.clear();
        detail::set_nodelay(fd_.get(), on, ec);
    }
    /// The bound address, with the real port when port 0 was asked for.
    endpoint local_endpoint() const noexcept { return local_; }
    void close() noexcept { fd_.reset(); }

private:
    unique_fd fd_;
    endpoint local_;
};

/// A non-blocking UDP socket bound to one address: what a SOCKS5 UDP association relays through.
class datagram_socket {
public:
    datagram_socket() noexcept = default;

    /// Binds `where` (port 0: any free port; an IPv6 socket takes IPv6 only), non-blocking.
    static datagram_socket open(const endpoint& where, std::error_code& ec) noexcept;
    /// Binds every address of both families ([::] with IPv4 mapped in), a free port: one socket
    /// that reaches IPv4 and IPv6 peers alike, from whichever local address routes there.
    /// Where the host has no IPv6, 0.0.0.0. IPv4 peers are named as IPv4, never as ::ffff:...
    static datagram_socket open_any(std::error_code& ec) noexcept;

    /// One datagram into `data`: its full length (more than `size` when it was cut short, where
    /// the platform says so), and its sender in `from`. would_block when there is none.
    std::size_t receive_from(void* data, std::size_t size, endpoint& from,
                             std::error_code& ec) noexcept;
    /// Sends one datagram to `to`; would_block when the socket's buffer is full.
    void send_to(const void* data, std::size_t size, const endpoint& to,
                 std::error_code& ec) noexcept;

    int native_handle() const noexcept { return fd_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(fd_); }
    /// The bound address, with the real port when port 0 was asked for.
    endpoint local_endpoint() const noexcept { return local_; }
    void close() noexcept { fd_.reset(); }

private:
    unique_fd fd_;
    endpoint local_;
    bool dual_stack_ = false; // an IPv6 socket that takes IPv4 too, as ::ffff:a.b.c.d
};

/// Starts a non-blocking connect to `to`. On return either the socket is connecting or
/// connected (ec empty; `connected` tells which) or ec says why it failed at once.
socket start_connect(const endpoint& to, bool& connected, std::error_code& ec) noexcept;

/// Connects to `to`, giving up at `until` (errc::connect_timeout). The socket comes back
/// non-blocking.
socket connect(const endpoint& to, time_point until, std::error_code& ec) noexcept;

/// Tries each address in turn until one connects; every attempt shares the one deadline.
/// The error is the last attempt's.
socket connect(const std::vector<endpoint>& candidates, time_point until,
               std::error_code& ec) noexcept;

/// Resolves `target` (blocking: for callers with a thread to spare) and connects to each
/// address in turn.
socket connect(const host_port& target, time_point until, std::error_code& ec);

// ---------------------------------------------------------------------------------------------

namespace detail {

/// Waits until `fd` is ready for `events` or `until` passes (errc::connect_timeout is not
/// right for every caller, so the timeout is reported as std::errc::timed_out).
inline bool wait_for(int fd, short events, time_point until, std::error_code& ec) noexcept {
    for (;;) {
        pollfd entry{fd, events, 0};
        int ready = poll_fds(&entry, 1, until, ec);
        if (ec) {
            return false;
        }
        if (ready > 0) {
            return true;
        }
        if (steady_clock::now() >= until) {
            ec = std::make_error_code(std::errc::timed_out);
            return false;
        }
    }
}

/// getsockname(2) or getpeername(2) as an endpoint.
inline endpoint socket_name(int fd, bool peer, std::error_code& ec) noexcept {
    ec.clear();
    sockaddr_storage storage{};
    socklen_t length = sizeof storage;
    auto* address = reinterpret_cast<sockaddr*>(&storage);
    int status = peer ? ::getpeername(fd, address, &length) : ::getsockname(fd, address, &length);
    if (status < 0) {
        ec = last_error();
        return {};
    }
    return from_sockaddr(address, length);
}

} // namespace detail

inline std::size_t socket::send_all(byte_view bytes, time_point until,
                                    std::error_code& ec) noexcept {
    ec.clear();
    std::size_t sent = 0;
    while (sent < bytes.size()) {
        // MSG_DONTWAIT: even on a blocking socket the wait is ours, with its deadline.
        std::size_t n = detail::send_some(native_handle(), bytes.data() + sent, bytes.size() - sent,
                                          ec, MSG_DONTWAIT);
        if (ec && detail::would_block(ec)) {
            ec.clear();
            if (!detail::wait_for(native_handle(), POLLOUT, until, ec)) {
                return sent;
            }
            continue;
        }
        if (ec) {
            return sent;
        }
        sent += n;
    }
    return sent;
}

inline std::size_t socket::receive_some(void* data, std::size_t size, time_point until,
                                        std::error_code& ec) noexcept {
    ec.clear();
    for (;;) {
        std::size_t n = detail::recv_some(native_handle(), data, size, ec, MSG_DONTWAIT);
        if (!ec || !detail::would_block(ec)) {
            return n;
        }
        ec.clear();
        if (!detail::wait_for(native_handle(), POLLIN, until, ec)) {
            return 0;
        }
    }
}

inline void socket::set_linger_reset(std::error_code& ec) noexcept {
    ec.clear();
    ::linger option{1, 0};
    if (::setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &option, sizeof option) < 0) {
        ec = detail::last_error();
    }
}

inline endpoint socket::local_endpoint(std::error_code& ec) const noexcept {
    return detail::socket_name(fd_.get(), false, ec);
}

inline endpoint socket::remote_endpoint(std::error_code& ec) const noexcept {
    return detail::socket_name(fd_.get(), true, ec);
}

inline listener listener::open(const endpoint& where, int backlog, std::error_code& ec) noexcept {
    ec.clear();
    int family = where.address.is_v6() ? AF_INET6 : AF_INET;
    unique_fd fd(detail::open_socket(family, SOCK_STREAM, false, ec));
    if (ec) {
        return {};
    }
    // SO_REUSEADDR: a restarted proxy can bind while old connections sit in TIME_WAIT.
    if (!detail::set_int_option(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, ec)) {
        return {};
    }
    // An IPv6 listener serves IPv6 only, so "[::]:P" and "0.0.0.0:P" can both be bound.
    if (family == AF_INET6 && !detail::set_int_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, ec)) {
        return {};
    }
    sockaddr_storage storage{};
    socklen_t length = to_sockaddr(where, storage);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) < 0 ||
        ::listen(fd.get(), backlog) < 0) {
        ec = detail::last_error();
        return {};
    }
    listener out;
    out.local_ = detail::socket_name(fd.get(), false, ec);
    if (ec) {
        return {};
    }
    out.fd_ = std::move(fd);
    return out;
}

inline listener listener::open(const endpoint& where, int backlog) {
    std::error_code ec;
    listener out = open(where, backlog, ec);
    if (ec) {
        throw std::system_error(ec, "cannot listen on " + where.to_string());
    }
    return out;
}

inline socket listener::accept(endpoint& peer, bool nonblocking, std::error_code& ec) noexcept {
    ec.clear();
    sockaddr_storage storage{};
    int fd = detail::accept_socket(fd_.get(), storage, nonblocking, ec);
    if (fd < 0) {
        return {};
    }
    peer = from_sockaddr(reinterpret_cast<sockaddr*>(&storage), sizeof storage);
    return socket(unique_fd(fd));
}

inline datagram_socket datagram_socket::open(const endpoint& where, std::error_code& ec) noexcept {
    ec.clear();
    int family = where.address.is_v6() ? AF_INET6 : AF_INET;
    unique_fd fd(detail::open_socket(family, SOCK_DGRAM, true, ec));
    if (ec) {
        return {};
    }
    if (family == AF_INET6 && !detail::set_int_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, ec)) {
        return {};
    }
    sockaddr_storage storage{};
    socklen_t length = to_sockaddr(where, storage);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) < 0) {
        ec = detail::last_error();
        return {};
    }
    datagram_socket out;
    out.local_ = detail::socket_name(fd.get(), false, ec);
    if (ec) {
        return {};
    }
    out.fd_ = std::move(fd);
    return out;
}

inline datagram_socket datagram_socket::open_any(std::error_code& ec) noexcept {
    ec.clear();
    unique_fd fd(detail::open_socket(AF_INET6, SOCK_DGRAM, true, ec));
    if (ec || !detail::set_int_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 0, ec)) {
        return open(endpoint{}, ec); // no IPv6 here: IPv4 alone
    }
    sockaddr_storage storage{};
    socklen_t length = to_sockaddr(endpoint{ip_address::any_v6(), 0}, storage);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) < 0) {
        ec = detail::last_error();
        return {};
    }
    datagram_socket out;
    out.local_ = detail::socket_name(fd.get(), false, ec);
    if (ec) {
        return {};
    }
    out.fd_ = std::move(fd);
    out.dual_stack_ = true;
    return out;
}

inline std::size_t datagram_socket::receive_from(void* data, std::size_t size, endpoint& from,
                                                 std::error_code& ec) noexcept {
    ec.clear();
    sockaddr_storage storage{};
    socklen_t length = 0;
    std::size_t n = detail::recvfrom_some(fd_.get(), data, size, storage, length, ec);
    if (!ec) {
        from = from_sockaddr(reinterpret_cast<sockaddr*>(&storage), length);
        if (dual_stack_) {
            from.address = detail::unmapped(from.address);
        }
    }
    return n;
}

inline void datagram_socket::send_to(const void* data, std::size_t size, const endpoint& to,
                                     std::error_code& ec) noexcept {
    ec.clear();
    sockaddr_storage storage{};
    endpoint destination = to;
    if (dual_stack_ && to.address.is_v4()) { // ::ffff:a.b.c.d
        std::array<std::uint8_t, 16> mapped{};
        mapped[10] = 0xFF;
        mapped[11] = 0xFF;
        std::memcpy(mapped.data() + 12, to.address.bytes().data(), 4);
        destination.address = ip_address::v6(mapped);
    }
    socklen_t length = to_sockaddr(destination, storage);
    detail::sendto_some(fd_.get(), data, size, reinterpret_cast<sockaddr*>(&storage), length, ec);
}

inline socket start_connect(const endpoint& to, bool& connected, std::error_code& ec) noexcept {
    ec.clear();
    connected = false;
    int family = to.address.is_v6() ? AF_INET6 : AF_INET;
    unique_fd fd(detail::open_socket(family, SOCK_STREAM, true, ec));
    if (ec) {
        return {};
    }
    sockaddr_storage storage{};
    socklen_t length = to_sockaddr(to, storage);
    connected = detail::start_connect(fd.get(), reinterpret_cast<sockaddr*>(&storage), length, ec);
    if (ec) {
        return {};
    }
    return socket(std::move(fd));
}

inline socket connect(const endpoint& to, time_point until, std::error_code& ec) noexcept {
    bool connected = false;
    socket s = start_connect(to, connected, ec);
    if (ec || connected) {
        return s;
    }
    if (!detail::wait_for(s.native_handle(), POLLOUT, until, ec)) {
        if (ec == std::errc::timed_out) {
            ec = errc::connect_timeout;
        }
        return {};
    }
    ec = detail::connect_result(s.native_handle());
    if (ec) {
        return {};
    }
    return s;
}

inline socket connect(const std::vector<endpoint>& candidates, time_point until,
                      std::error_code& ec) noexcept {
    ec = errc::name_not_resolved; // what an empty list means
    for (const endpoint& candidate : candidates) {
        ec.clear();
        socket s = connect(candidate, until, ec);
        if (!ec) {
            return s;
        }
        if (ec == errc::connect_timeout) {
            break; // the shared deadline has passed: no time left for the others
        }
    }
    return {};
}

inline socket connect(const host_port& target, time_point until, std::error_code& ec) {
    auto candidates = resolve(target, ec);
    if (ec) {
        return {};
    }
    return connect(candidates, until, ec);
}

} // namespace tinyproxy
