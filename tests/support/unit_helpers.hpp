// SPDX-License-Identifier: MIT
// Test support for the unit tests (bytes, address, socket, relay, session): descriptor checks,
// socket pairs made with raw POSIX calls, and reads and writes that always have a deadline (the
// payloads, deadlines and echo server they use come with it). Everything here bounds its waits,
// so a broken library fails a test instead of hanging it.
#pragma once

#include <cerrno>       // errno
#include <cstddef>      // std::size_t
#include <cstdint>      // byte values
#include <ostream>      // doctest prints std::error_code with operator<<
#include <string>       // what a read found
#include <string_view>  // what to write
#include <system_error> // error codes
#include <vector>       // descriptors, payloads

#include <fcntl.h>       // fcntl
#include <netinet/in.h>  // sockaddr_in
#include <netinet/tcp.h> // TCP_NODELAY
#include <poll.h>        // poll
#include <sys/socket.h>  // socketpair, send, recv
#include <unistd.h>      // close, pipe

#include <tinyproxy/tinyproxy.hpp>

#include "support/echo_server.hpp"
#include "support/payload.hpp"
#include "support/timing.hpp"

namespace tptest {

/// True while `fd` names an open descriptor.
inline bool fd_is_open(int fd) {
    errno = 0;
    return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

inline bool has_flag(int fd, int fl_flag) { return (::fcntl(fd, F_GETFL) & fl_flag) != 0; }

inline bool has_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

inline void make_nonblocking(int fd) {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        throw std::system_error(errno, std::system_category(), "fcntl(O_NONBLOCK)");
    }
}

inline void set_int_option(int fd, int level, int name, int value) {
    if (::setsockopt(fd, level, name, &value, sizeof value) < 0) {
        throw std::system_error(errno, std::system_category(), "setsockopt");
    }
}

/// send(2) flags that never raise SIGPIPE where the platform has MSG_NOSIGNAL (elsewhere the
/// tests that care set SIGPIPE themselves).
#ifdef MSG_NOSIGNAL
constexpr int no_sigpipe = MSG_NOSIGNAL;
#else
constexpr int no_sigpipe = 0;
#endif

inline void set_cloexec(int fd) {
    if (::fcntl(fd, F_SETFD, ::fcntl(fd, F_GETFD) | FD_CLOEXEC) < 0) {
        throw std::system_error(errno, std::system_category(), "fcntl(FD_CLOEXEC)");
    }
}

/// A pipe, both ends close-on-exec.
inline void make_pipe(int (&fds)[2]) {
    if (::pipe(fds) < 0) {
        throw std::system_error(errno, std::system_category(), "pipe");
    }
    set_cloexec(fds[0]);
    set_cloexec(fds[1]);
}

/// Closing a socket after this sends a reset (RST) instead of a FIN.
inline void arm_reset(int fd) {
    ::linger option{1, 0};
    if (::setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, sizeof option) < 0) {
        throw std::system_error(errno, std::system_category(), "setsockopt(SO_LINGER)");
    }
}

/// Two connected stream sockets: `first` is the "connecting" end, `second` the other.
struct fd_pair {
    tinyproxy::unique_fd first;
    tinyproxy::unique_fd second;
};

inline fd_pair unix_pair(bool nonblocking) {
    int fds[2] = {-1, -1};
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0) {
        throw std::system_error(errno, std::system_category(), "socketpair");
    }
    fd_pair out{tinyproxy::unique_fd(fds[0]), tinyproxy::unique_fd(fds[1])};
    for (int fd : fds) {
        set_cloexec(fd);
        if (nonblocking) {
            make_nonblocking(fd);
        }
    }
    return out;
}

/// A connected TCP pair over 127.0.0.1, made with raw system calls (not the library's).
inline fd_pair tcp_pair(bool nonblocking) {
    auto fail = [](const char* what) {
        throw std::system_error(errno, std::system_category(), what);
    };
    tinyproxy::unique_fd listen_fd(::socket(AF_INET, SOCK_STREAM, 0));
    if (!listen_fd) {
        fail("socket");
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (::bind(listen_fd.get(), reinterpret_cast<sockaddr*>(&address), length) < 0 ||
        ::listen(listen_fd.get(), 4) < 0 ||
        ::getsockname(listen_fd.get(), reinterpret_cast<sockaddr*>(&address), &length) < 0) {
        fail("bind/listen");
    }
    tinyproxy::unique_fd client(::socket(AF_INET, SOCK_STREAM, 0));
    if (!client) {
        fail("socket");
    }
    make_nonblocking(client.get());
    if (::connect(client.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) < 0 &&
        errno != EINPROGRESS) {
        fail("connect");
    }
    pollfd ready{listen_fd.get(), POLLIN, 0};
    if (::poll(&ready, 1, 5000) != 1) {
        fail("poll(listener)");
    }
    tinyproxy::unique_fd server(::accept(listen_fd.get(), nullptr, nullptr));
    if (!server) {
        fail("accept");
    }
    pollfd connected{client.get(), POLLOUT, 0};
    if (::poll(&connected, 1, 5000) != 1) {
        fail("poll(connect)");
    }
    int flags = ::fcntl(client.get(), F_GETFL);
    ::fcntl(client.get(), F_SETFL, flags & ~O_NONBLOCK);
    for (int fd : {client.get(), server.get()}) {
        set_cloexec(fd);
        set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, 1);
        if (nonblocking) {
            make_nonblocking(fd);
        }
    }
    return {std::move(client), std::move(server)};
}

/// Sends all of `data` (SIGPIPE never raised), waiting for room until `until`.
inline bool write_all(int fd, std::string_view data, time_point until) {
    std::size_t sent = 0;
    while (sent < data.size()) {
        ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, no_sigpipe | MSG_DONTWAIT);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return false;
        }
        pollfd entry{fd, POLLOUT, 0};
        if (steady_clock::now() >= until || ::poll(&entry, 1, ms_until(until)) < 0) {
            return false;
        }
    }
    return true;
}

/// What a bounded read found.
struct read_result {
    std::string data;
    bool eof = false;       ///< the peer finished sending
    int error = 0;          ///< errno of a failed recv
    bool timed_out = false; ///< the deadline passed first
};

/// Reads until `count` bytes have come, the peer finishes, an error, or `until`.
inline read_result read_exactly(int fd, std::size_t count, time_point until) {
    read_result out;
    char buffer[65536];
    while (out.data.size() < count) {
        pollfd entry{fd, POLLIN, 0};
        int ready = ::poll(&entry, 1, ms_until(until));
        if (ready == 0) {
            out.timed_out = true;
            return out;
        }
        if (ready < 0 && errno != EINTR) {
            out.error = errno;
            return out;
        }
        std::size_t want = count - out.data.size();
        ssize_t n = ::recv(fd, buffer, want < sizeof buffer ? want : sizeof buffer, MSG_DONTWAIT);
        if (n > 0) {
            out.data.append(buffer, static_cast<std::size_t>(n));
        } else if (n == 0) {
            out.eof = true;
            return out;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            out.error = errno;
            return out;
        }
    }
    return out;
}

/// Reads everything until the peer finishes (eof), an error, or `until`.
inline read_result read_to_eof(int fd, time_point until) {
    return read_exactly(fd, std::string::npos, until);
}

} // namespace tptest
