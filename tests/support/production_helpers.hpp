// SPDX-License-Identifier: MIT
// Test support for the production tests: a one-thread event-loop upstream (echo, stream, sink)
// that holds thousands of connections, client checks with deadlines, readings of another
// process through /proc (descriptors, CPU time), and a proxy host process started by exec'ing
// this test binary (fresh and single-threaded, so it may fork, start threads and lower its
// descriptor limit without touching the test process).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <cerrno>
#include <csignal>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tinyproxy/tinyproxy.hpp>

#include "support/loopback.hpp"
#include "support/timing.hpp"

extern char** environ;

// Defined when the UBSan runtime is linked in (a weak reference: null otherwise).
extern "C" __attribute__((weak)) void __ubsan_handle_dynamic_type_cache_miss(void*, void*,
                                                                             unsigned long);

namespace tptest {

using namespace std::chrono_literals;

// --- policies --------------------------------------------------------------------------------

template <class Policy>
constexpr bool is_fork = std::is_same<Policy, tinyproxy::fork_policy>::value;

template <class Policy>
const char* policy_name() {
    if (std::is_same<Policy, tinyproxy::thread_policy>::value) {
        return "thread";
    }
    if (std::is_same<Policy, tinyproxy::poll_policy>::value) {
        return "poll";
    }
    if (std::is_same<Policy, tinyproxy::portable_poll_policy>::value) {
        return "portable-poll";
    }
    return "fork";
}

/// The proxy's counters; nothing for fork_policy, whose proxy runs in a host process.
template <class Policy, class Mode>
std::optional<tinyproxy::stats> stats_of(running_proxy<Policy, Mode>& proxy) {
    return proxy.proxy().stats();
}
template <class Mode>
std::optional<tinyproxy::stats> stats_of(running_proxy<tinyproxy::fork_policy, Mode>&) {
    return std::nullopt;
}

inline std::string describe(const tinyproxy::stats& s) {
    return "accepted=" + std::to_string(s.accepted) + " active=" + std::to_string(s.active) +
           " finished=" + std::to_string(s.finished) + " failed=" + std::to_string(s.failed) +
           " rejected_limit=" + std::to_string(s.rejected_limit) +
           " rejected_access=" + std::to_string(s.rejected_access) +
           " handshake_failures=" + std::to_string(s.handshake_failures) +
           " connect_failures=" + std::to_string(s.connect_failures) +
           " bytes_to_upstream=" + std::to_string(s.bytes_to_upstream) +
           " bytes_to_client=" + std::to_string(s.bytes_to_client);
}

/// Waits until the proxy's counters satisfy `condition` (at once for fork_policy).
template <class Policy, class Mode, class Condition>
bool eventually_stats(running_proxy<Policy, Mode>& proxy, Condition condition,
                      std::chrono::milliseconds limit = 3s) {
    return eventually(
        [&] {
            auto s = stats_of(proxy);
            return !s || condition(*s);
        },
        limit);
}

/// Whether UBSan's runtime is in this binary. Its vptr check (part of -fsanitize=undefined)
/// tests that a vtable is readable by writing it to a pipe(2): in a process with no descriptor
/// left, that fails, and a valid virtual call is reported as "does not point to an object of
/// type ...". A process made to run out of descriptors cannot run under it.
inline bool ubsan_runtime_linked() { return &__ubsan_handle_dynamic_type_cache_miss != nullptr; }

// --- other processes, through /proc ----------------------------------------------------------

/// Descriptors `pid` has open (-1 when it cannot be read).
inline int process_descriptors(pid_t pid) {
    std::string path = "/proc/" + std::to_string(pid) + "/fd";
    DIR* dir = ::opendir(path.c_str());
    if (dir == nullptr) {
        return -1;
    }
    int count = 0;
    while (dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] != '.') {
            ++count;
        }
    }
    ::closedir(dir);
    return count;
}

/// CPU time `pid` has used (user + system, all its threads), in clock ticks; -1 on error.
inline long process_cpu_ticks(pid_t pid) {
    std::string path = "/proc/" + std::to_string(pid) + "/stat";
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    char text[1024] = {};
    ssize_t n = ::read(fd, text, sizeof text - 1);
    ::close(fd);
    const char* p = n > 0 ? std::strrchr(text, ')') : nullptr;
    if (p == nullptr) {
        return -1;
    }
    // Fields after "(comm)": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime stime ...
    long utime = 0;
    long stime = 0;
    if (std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &utime,
                    &stime) != 2) {
        return -1;
    }
    return utime + stime;
}

// --- clients -------------------------------------------------------------------------------

/// What became of a client's connection after a wait.
enum class fate {
    data,    ///< bytes arrived (for echo_exchange(): exactly the echo expected)
    garbled, ///< bytes arrived, but not the echo expected
    closed,  ///< end of stream or reset, with no data first
    open,    ///< nothing happened before the deadline
};

inline std::ostream& operator<<(std::ostream& out, fate f) {
    switch (f) {
    case fate::data:
        return out << "data";
    case fate::garbled:
        return out << "garbled";
    case fate::closed:
        return out << "closed";
    case fate::open:
        return out << "open";
    }
    return out << "?";
}

/// Waits up to `limit` for the first thing to happen on `s`: a byte (consumed), end of stream or
/// reset, or nothing.
inline fate wait_fate(tinyproxy::socket& s, std::chrono::milliseconds limit) {
    auto until = tinyproxy::steady_clock::now() + limit;
    for (;;) {
        pollfd fd{s.native_handle(), POLLIN, 0};
        std::error_code ec;
        int ready = tinyproxy::detail::poll_fds(&fd, 1, until, ec);
        if (ready > 0) {
            std::uint8_t byte = 0;
            ssize_t n = ::recv(s.native_handle(), &byte, 1, MSG_DONTWAIT);
            if (n > 0) {
                return fate::data;
            }
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                return fate::closed;
            }
        }
        if (tinyproxy::steady_clock::now() >= until) {
            return fate::open;
        }
    }
}

/// Reads exactly `size` bytes into `out` by `until`; false at end of stream, error or deadline.
inline bool read_exact(tinyproxy::socket& s, std::size_t size, bytes& out,
                       tinyproxy::time_point until) {
    out.clear();
    std::uint8_t buffer[65536];
    while (out.size() < size) {
        pollfd fd{s.native_handle(), POLLIN, 0};
        std::error_code ec;
        if (tinyproxy::detail::poll_fds(&fd, 1, until, ec) > 0) {
            std::size_t want = std::min(sizeof buffer, size - out.size());
            ssize_t n = ::recv(s.native_handle(), buffer, want, MSG_DONTWAIT);
            if (n > 0) {
                out.insert(out.end(), buffer, buffer + n);
                continue;
            }
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                return false;
            }
        }
        if (tinyproxy::steady_clock::now() >= until) {
            return false;
        }
    }
    return true;
}

/// Sends `payload` (small: at most a few KiB, so it never waits on the echo) and reads its echo:
/// data when exactly the payload came back, closed when the connection ended with nothing, open
/// when nothing came by the deadline.
inline fate echo_exchange(tinyproxy::socket& s, const bytes& payload,
                          std::chrono::milliseconds limit = 3s) {
    send_all(s, payload); // a closed connection shows below
    auto until = tinyproxy::steady_clock::now() + limit;
    bytes got;
    bytes one;
    while (got.size() < payload.size()) {
        if (!read_exact(s, 1, one, until)) {
            if (!got.empty()) {
                return fate::garbled;
            }
            return tinyproxy::steady_clock::now() >= until ? fate::open : fate::closed;
        }
        got.push_back(one[0]);
        if (got.back() != payload[got.size() - 1]) {
            return fate::garbled;
        }
    }
    return fate::data;
}

/// A fresh client: connect, exchange `payload`, half-close, read end of stream. True when the
/// echo came back whole and the tunnel then ended cleanly.
inline bool round_trip_ok(const tinyproxy::endpoint& proxy, const bytes& payload,
                          std::chrono::milliseconds limit = 3s) {
    auto c = connect_to(proxy, limit);
    if (!c || echo_exchange(c, payload, limit) != fate::data) {
        return false;
    }
    shutdown_write(c);
    return wait_fate(c, limit) == fate::closed;
}

/// Closes with SO_LINGER {1, 0}: the peer gets a reset, not an end of stream.
inline void reset_close(tinyproxy::socket& s) {
    ::linger option{1, 0};
    ::setsockopt(s.native_handle(), SOL_SOCKET, SO_LINGER, &option, sizeof option);
    s.close();
}

// --- an upstream for thousands of connections ----------------------------------------------

/// An upstream on 127.0.0.1:0 served by one thread with poll(2): echo (every byte back, then
/// close after the peer's end of stream), stream (sends without end, discards what it reads) or
/// sink (reads and discards). Connections it holds close as soon as their peer closes or resets.
class event_server {
public:
    enum class behaviour { echo, stream, sink };

    explicit event_server(behaviour what,
                          tinyproxy::endpoint where = tinyproxy::parse_endpoint("127.0.0.1:0"))
        : what_(what), listener_(tinyproxy::listener::open(where)) {
        std::error_code ec;
        listener_.set_nonblocking(true, ec);
        int fds[2] = {-1, -1};
        if (!tinyproxy::detail::make_pipe(fds, ec)) {
            throw std::system_error(ec, "pipe");
        }
        stop_read_.reset(fds[0]);
        stop_write_.reset(fds[1]);
        thread_ = std::thread([this] { loop(); });
    }
    event_server(const event_server&) = delete;
    event_server& operator=(const event_server&) = delete;
    ~event_server() {
        stop_write_.reset(); // the loop sees end of file, closes everything and returns
        thread_.join();
    }

    tinyproxy::endpoint where() const { return listener_.local_endpoint(); }
    /// Connections accepted so far.
    int accepts() const { return accepts_.load(); }
    /// Connections open now.
    int open_connections() const { return open_.load(); }
    /// Connections that ended in a reset or another error.
    int resets() const { return resets_.load(); }
    std::uint64_t bytes_received() const { return received_.load(); }

private:
    struct connection {
        tinyproxy::socket s;
        bytes pending; // echo: bytes still to send back
        std::size_t offset = 0;
        bool eof = false;
        bool gone = false;
    };

    short events_for(const connection& c) const {
        switch (what_) {
        case behaviour::echo: {
            short events = 0;
            std::size_t backlog = c.pending.size() - c.offset;
            if (!c.eof && backlog < (1u << 20)) {
                events |= POLLIN;
            }
            if (backlog > 0) {
                events |= POLLOUT;
            }
            return events;
        }
        case behaviour::stream:
            return POLLIN | POLLOUT;
        case behaviour::sink:
            return POLLIN;
        }
        return POLLIN;
    }

    void end(connection& c, bool error) {
        if (error) {
            ++resets_;
        }
        c.gone = true;
        c.s.close();
        --open_;
    }

    void on_ready(connection& c, short revents, std::vector<std::uint8_t>& buffer,
                  const bytes& block) {
        if ((revents & (POLLIN | POLLHUP | POLLERR)) != 0 && !c.eof) {
            ssize_t n = ::recv(c.s.native_handle(), buffer.data(), buffer.size(), MSG_DONTWAIT);
            if (n > 0) {
                received_ += static_cast<std::uint64_t>(n);
                if (what_ == behaviour::echo) {
                    c.pending.insert(c.pending.end(), buffer.data(), buffer.data() + n);
                }
            } else if (n == 0) {
                c.eof = true;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                end(c, true);
                return;
            }
        }
        if ((revents & (POLLOUT | POLLERR)) != 0) {
            const std::uint8_t* data = nullptr;
            std::size_t size = 0;
            if (what_ == behaviour::echo) {
                data = c.pending.data() + c.offset;
                size = c.pending.size() - c.offset;
            } else if (what_ == behaviour::stream) {
                data = block.data();
                size = block.size();
            }
            if (size > 0) {
                ssize_t n = ::send(c.s.native_handle(), data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n > 0 && what_ == behaviour::echo) {
                    c.offset += static_cast<std::size_t>(n);
                    if (c.offset == c.pending.size()) {
                        c.pending.clear();
                        c.offset = 0;
                    }
                } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    end(c, true);
                    return;
                }
            }
        }
        if (c.eof && (what_ != behaviour::echo || c.pending.size() == c.offset)) {
            end(c, false);
        }
    }

    void loop() {
        std::vector<std::unique_ptr<connection>> connections;
        std::vector<pollfd> fds;
        std::vector<std::uint8_t> buffer(64 * 1024);
        const bytes block = random_vector(64 * 1024, 77);
        for (;;) {
            fds.clear();
            fds.push_back({stop_read_.get(), POLLIN, 0});
            fds.push_back({listener_.native_handle(), POLLIN, 0});
            for (auto& c : connections) {
                fds.push_back({c->s.native_handle(), events_for(*c), 0});
            }
            if (::poll(fds.data(), static_cast<nfds_t>(fds.size()), 200) < 0 && errno != EINTR) {
                break;
            }
            if (fds[0].revents != 0) {
                break;
            }
            for (std::size_t i = 0; i < connections.size(); ++i) {
                if (fds[i + 2].revents != 0) {
                    on_ready(*connections[i], fds[i + 2].revents, buffer, block);
                }
            }
            if (fds[1].revents != 0) {
                for (;;) {
                    tinyproxy::endpoint peer;
                    std::error_code ec;
                    auto s = listener_.accept(peer, true, ec);
                    if (ec) {
                        break;
                    }
                    ++accepts_;
                    ++open_;
                    auto c = std::make_unique<connection>();
                    c->s = std::move(s);
                    connections.push_back(std::move(c));
                }
            }
            connections.erase(std::remove_if(connections.begin(), connections.end(),
                                             [](const auto& c) { return c->gone; }),
                              connections.end());
        }
        for (auto& c : connections) {
            end(*c, false);
        }
    }

    behaviour what_;
    tinyproxy::listener listener_;
    tinyproxy::unique_fd stop_read_;
    tinyproxy::unique_fd stop_write_;
    std::atomic<int> accepts_{0};
    std::atomic<int> open_{0};
    std::atomic<int> resets_{0};
    std::atomic<std::uint64_t> received_{0};
    std::thread thread_;
};

// --- a proxy host process started by exec ----------------------------------------------------

/// The environment variable that turns this test binary into a proxy host (see host_process):
/// "<thread|poll|fork> <upstream port on 127.0.0.1> <RLIMIT_NOFILE>".
constexpr const char* host_variable = "TINYPROXY_TEST_PROXY_HOST";
/// The descriptor on which the host reports its port (2 bytes, big-endian), then closes.
constexpr int host_report_fd = 3;

namespace host_detail {

template <class Policy>
[[noreturn]] void host_main(std::uint16_t upstream_port, rlim_t nofile) {
    int keep = host_report_fd;
    tinyproxy::detail::close_descriptors_except(&keep, 1);
    rlimit limit{};
    ::getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = nofile;
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
        ::_exit(10);
    }
    tinyproxy::options opts;
    opts.listen = tinyproxy::parse_endpoint("127.0.0.1:0");
    opts.connect_timeout = 5s;
    opts.idle_timeout = 30s;
    using proxy_type = tinyproxy::basic_proxy<Policy, tinyproxy::forward_mode>;
    static proxy_type* running = nullptr;
    proxy_type proxy(opts,
                     tinyproxy::forward_mode(tinyproxy::host_port{"127.0.0.1", upstream_port}));
    std::error_code ec;
    proxy.listen(ec);
    if (ec) {
        ::_exit(11);
    }
    running = &proxy;
    struct sigaction action {};
    action.sa_handler = [](int) { running->stop(); };
    ::sigaction(SIGTERM, &action, nullptr);

    std::uint16_t port = proxy.local_endpoint().port;
    std::uint8_t report[2] = {static_cast<std::uint8_t>(port >> 8),
                              static_cast<std::uint8_t>(port & 0xFF)};
    (void)!::write(host_report_fd, report, sizeof report);
    ::close(host_report_fd);
    // A session holds two descriptors (client, upstream): make the free ones an even number, so
    // that sessions fill the table exactly and accept(2) itself is what fails.
    long free_descriptors = static_cast<long>(nofile) - open_descriptors();
    if (free_descriptors % 2 != 0) {
        (void)::open("/dev/null", O_RDONLY | O_CLOEXEC); // held until exit, on purpose
    }

    proxy.run();
    int status = 0;
    bool children_left = ::waitpid(-1, &status, WNOHANG) != -1 || errno != ECHILD;
    ::_exit(children_left ? 3 : 0);
}

} // namespace host_detail

/// In a host process (the variable is set) runs the proxy and never returns; otherwise does
/// nothing. Called from a static initializer, before doctest's main.
inline void run_host_if_requested() {
    const char* spec = std::getenv(host_variable);
    if (spec == nullptr) {
        return;
    }
    char policy[16] = {};
    unsigned port = 0;
    unsigned long nofile = 0;
    if (std::sscanf(spec, "%15s %u %lu", policy, &port, &nofile) != 3 || port > 65535) {
        ::_exit(12);
    }
    auto upstream_port = static_cast<std::uint16_t>(port);
    std::string name = policy;
    if (name == "thread") {
        host_detail::host_main<tinyproxy::thread_policy>(upstream_port, nofile);
    } else if (name == "poll") {
        host_detail::host_main<tinyproxy::poll_policy>(upstream_port, nofile);
    } else if (name == "portable-poll") {
        host_detail::host_main<tinyproxy::portable_poll_policy>(upstream_port, nofile);
    } else if (name == "fork") {
        host_detail::host_main<tinyproxy::fork_policy>(upstream_port, nofile);
    }
    ::_exit(13);
}

/// A forward proxy (127.0.0.1:0 -> `upstream`) of the named policy, run by this test binary
/// exec'd anew: a fresh, single-threaded process (fork from a threaded test process is unsafe
/// for a process that forks or starts threads itself), with RLIMIT_NOFILE set to `nofile`. It
/// stops on SIGTERM and exits 0 only when it left no child behind.
class host_process {
public:
    host_process(const char* policy, const tinyproxy::endpoint& upstream, int nofile) {
        std::vector<std::string> env;
        for (char** e = environ; *e != nullptr; ++e) {
            if (std::string(*e).rfind(std::string(host_variable) + "=", 0) != 0) {
                env.emplace_back(*e);
            }
        }
        env.push_back(std::string(host_variable) + "=" + policy + " " +
                      std::to_string(upstream.port) + " " + std::to_string(nofile));
        std::vector<char*> envp;
        for (auto& e : env) {
            envp.push_back(&e[0]);
        }
        envp.push_back(nullptr);
        std::string self = "/proc/self/exe";
        char* argv[] = {&self[0], nullptr};

        int report[2] = {-1, -1};
        std::error_code ec;
        if (!tinyproxy::detail::make_pipe(report, ec)) {
            throw std::system_error(ec, "pipe");
        }
        pid_ = ::fork();
        if (pid_ == 0) { // async-signal-safe calls only, until execve
            if (report[1] == host_report_fd) {
                ::fcntl(report[1], F_SETFD, 0);
            } else if (::dup2(report[1], host_report_fd) < 0) {
                ::_exit(127);
            }
            ::execve(argv[0], argv, envp.data());
            ::_exit(127);
        }
        ::close(report[1]);
        tinyproxy::unique_fd reader(report[0]);
        if (pid_ < 0) {
            throw std::runtime_error("fork");
        }
        std::uint8_t port[2] = {0, 0};
        std::size_t got = 0;
        auto until = tinyproxy::steady_clock::now() + 20s;
        while (got < 2 && tinyproxy::steady_clock::now() < until) {
            pollfd fd{reader.get(), POLLIN, 0};
            if (tinyproxy::detail::poll_fds(&fd, 1, until, ec) > 0) {
                ssize_t n = ::read(reader.get(), port + got, 2 - got);
                if (n <= 0) {
                    break;
                }
                got += static_cast<std::size_t>(n);
            }
        }
        if (got == 2) {
            where_ = tinyproxy::parse_endpoint("127.0.0.1:0");
            where_.port = static_cast<std::uint16_t>((port[0] << 8) | port[1]);
        }
    }
    host_process(const host_process&) = delete;
    host_process& operator=(const host_process&) = delete;
    ~host_process() { stop(); }

    /// Port 0 when the host did not start.
    tinyproxy::endpoint where() const { return where_; }
    pid_t pid() const { return pid_; }

    /// SIGTERM, then waits (SIGKILL after 10 s). Returns the exit status (0: clean, no child
    /// left; 128+N: killed by signal N); `took` is how long the host needed.
    int stop(std::chrono::milliseconds* took = nullptr) {
        if (pid_ <= 0) {
            return status_;
        }
        auto begin = tinyproxy::steady_clock::now();
        ::kill(pid_, SIGTERM);
        int status = 0;
        while (::waitpid(pid_, &status, WNOHANG) == 0) {
            if (tinyproxy::steady_clock::now() - begin > 10s) {
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, &status, 0);
                break;
            }
            std::this_thread::sleep_for(1ms);
        }
        if (took != nullptr) {
            *took = std::chrono::duration_cast<std::chrono::milliseconds>(
                tinyproxy::steady_clock::now() - begin);
        }
        status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        pid_ = -1;
        return status_;
    }

private:
    tinyproxy::endpoint where_;
    pid_t pid_ = -1;
    int status_ = -1;
};

} // namespace tptest
