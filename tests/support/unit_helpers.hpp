// Helpers for the unit tests (bytes, address, socket, relay, session): socket pairs made with raw
// POSIX calls, reads and writes that always have a deadline, random payloads, a loopback echo
// server on a thread. Everything here bounds its waits, so a broken library fails a test instead
// of hanging it.
#pragma once

#include <cerrno>       // errno
#include <chrono>       // deadlines
#include <cstddef>      // std::size_t
#include <cstdint>      // byte values
#include <mutex>        // the echo server's record
#include <ostream>      // doctest prints std::error_code with operator<<
#include <random>       // payloads
#include <string>       // payloads and records
#include <string_view>  // payload views
#include <system_error> // error codes
#include <thread>       // the echo server
#include <vector>       // descriptors, payloads

#include <fcntl.h>       // fcntl
#include <netinet/in.h>  // sockaddr_in
#include <netinet/tcp.h> // TCP_NODELAY
#include <poll.h>        // poll
#include <sys/socket.h>  // socketpair, send, recv
#include <unistd.h>      // close, pipe

#include <tinyproxy/tinyproxy.hpp>

namespace unit_support {

using tinyproxy::steady_clock;
using tinyproxy::time_point;

/// A deadline `ms` milliseconds from now.
inline time_point in_ms(long ms) { return steady_clock::now() + std::chrono::milliseconds(ms); }

/// Milliseconds from now until `until`, for poll(2); 0 once it has passed.
inline int ms_until(time_point until) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - steady_clock::now());
    if (left.count() <= 0) {
        return 0;
    }
    return left.count() > 60'000 ? 60'000 : static_cast<int>(left.count()) + 1;
}

inline long elapsed_ms(time_point since) {
    return static_cast<long>(
        std::chrono::duration_cast<std::chrono::milliseconds>(steady_clock::now() - since).count());
}

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

/// `size` reproducible pseudo-random bytes.
inline std::string random_bytes(std::size_t size, std::uint32_t seed) {
    std::mt19937 generator(seed);
    std::string out(size, '\0');
    for (std::size_t i = 0; i < size; i += 4) {
        auto word = static_cast<std::uint32_t>(generator());
        for (std::size_t j = i; j < i + 4 && j < size; ++j) {
            out[j] = static_cast<char>(word & 0xFFu);
            word >>= 8;
        }
    }
    return out;
}

/// Where two byte strings first differ (std::string::npos when equal): a short failure message
/// instead of two megabyte-long strings.
inline std::size_t first_difference(std::string_view a, std::string_view b) {
    std::size_t common = a.size() < b.size() ? a.size() : b.size();
    for (std::size_t i = 0; i < common; ++i) {
        if (a[i] != b[i]) {
            return i;
        }
    }
    return a.size() == b.size() ? std::string::npos : common;
}

inline std::string as_string(tinyproxy::byte_view bytes) { return std::string(bytes.as_chars()); }

inline std::vector<std::uint8_t> as_vector(std::string_view text) {
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

/// A loopback TCP echo server on its own thread: echoes every byte of every client, and answers
/// a client's end of stream with its own once everything is echoed. It records what it
/// received. Its thread gives up after 30 s whatever happens, and the destructor stops it.
class echo_server {
public:
    echo_server() {
        listener_ = tinyproxy::listener::open(
            tinyproxy::endpoint{tinyproxy::ip_address::loopback_v4(), 0}, 16);
        std::error_code ec;
        listener_.set_nonblocking(true, ec);
        if (ec) {
            throw std::system_error(ec, "echo_server set-up failed");
        }
        int fds[2] = {-1, -1};
        make_pipe(fds);
        stop_read_.reset(fds[0]);
        stop_write_.reset(fds[1]);
        thread_ = std::thread([this] { run(); });
    }
    echo_server(const echo_server&) = delete;
    echo_server& operator=(const echo_server&) = delete;
    ~echo_server() { stop(); }

    tinyproxy::endpoint endpoint() const { return listener_.local_endpoint(); }
    /// Everything received, over all clients, in arrival order.
    std::string received() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return received_;
    }
    int accepted() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return accepted_;
    }
    void stop() {
        stop_write_.reset();
        if (thread_.joinable()) {
            thread_.join();
        }
    }

private:
    struct connection {
        tinyproxy::unique_fd fd;
        std::string pending;
        bool eof = false;
    };

    void run() {
        std::vector<connection> connections;
        time_point give_up = in_ms(30'000);
        char buffer[65536];
        while (steady_clock::now() < give_up) {
            std::vector<pollfd> fds;
            fds.push_back({stop_read_.get(), POLLIN, 0});
            fds.push_back({listener_.native_handle(), POLLIN, 0});
            for (connection& c : connections) {
                short events = c.pending.empty() ? (c.eof ? 0 : POLLIN) : POLLOUT;
                fds.push_back({c.fd.get(), events, 0});
            }
            if (::poll(fds.data(), static_cast<nfds_t>(fds.size()), 50) < 0 && errno != EINTR) {
                return;
            }
            if (fds[0].revents != 0) {
                return;
            }
            if (fds[1].revents != 0) {
                tinyproxy::endpoint peer;
                std::error_code ec;
                tinyproxy::socket s = listener_.accept(peer, true, ec);
                if (!ec) {
                    connections.push_back({s.release(), {}, false});
                    std::lock_guard<std::mutex> lock(mutex_);
                    ++accepted_;
                }
            }
            for (connection& c : connections) {
                if (!c.fd) {
                    continue;
                }
                if (c.pending.empty() && !c.eof) {
                    ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, MSG_DONTWAIT);
                    if (n > 0) {
                        c.pending.assign(buffer, static_cast<std::size_t>(n));
                        std::lock_guard<std::mutex> lock(mutex_);
                        received_.append(buffer, static_cast<std::size_t>(n));
                    } else if (n == 0) {
                        c.eof = true;
                    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                        c.fd.reset();
                        continue;
                    }
                }
                if (!c.pending.empty()) {
                    ssize_t n = ::send(c.fd.get(), c.pending.data(), c.pending.size(),
                                       no_sigpipe | MSG_DONTWAIT);
                    if (n > 0) {
                        c.pending.erase(0, static_cast<std::size_t>(n));
                    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                        c.fd.reset();
                        continue;
                    }
                }
                if (c.eof && c.pending.empty()) {
                    ::shutdown(c.fd.get(), SHUT_WR);
                    c.fd.reset();
                }
            }
        }
    }

    tinyproxy::listener listener_;
    tinyproxy::unique_fd stop_read_;
    tinyproxy::unique_fd stop_write_;
    mutable std::mutex mutex_;
    std::string received_;
    int accepted_ = 0;
    std::thread thread_;
};

} // namespace unit_support
