// SPDX-License-Identifier: MIT
// Test support: a scriptable loopback upstream, blocking client helpers with deadlines, a proxy
// (in this process, or in a forked one for fork_policy) running on its own thread, and process
// checks (descriptors, children).
#pragma once

#include <atomic>       // flags, counters
#include <chrono>       // timeouts
#include <csignal>      // the fork host's SIGTERM
#include <cstdint>      // bytes
#include <cstdio>       // std::sscanf
#include <cstring>      // std::strrchr
#include <functional>   // an upstream's handler
#include <list>         // handler threads
#include <mutex>        // the handler list
#include <stdexcept>    // set-up failures
#include <string>       // child states
#include <system_error> // std::error_code
#include <thread>       // the upstream, the proxy's runner
#include <vector>       // payloads, child states

#include <dirent.h>     // /proc listings
#include <fcntl.h>      // open
#include <poll.h>       // poll
#include <sys/socket.h> // send, recv, shutdown
#include <sys/time.h>   // timeval
#include <sys/wait.h>   // waitpid
#include <unistd.h>     // fork, pipe, read

#include <tinyproxy/tinyproxy.hpp>

#include "support/payload.hpp"
#include "support/timing.hpp"

namespace tptest {

using namespace std::chrono_literals;

/// Makes a socket blocking with send/receive timeouts: no test call waits forever.
inline void make_blocking(tinyproxy::socket& s, std::chrono::milliseconds timeout = 10s) {
    std::error_code ec;
    s.set_nonblocking(false, ec);
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(s.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/// Connects to `where` (5 s at most) and returns a blocking socket whose sends and receives give
/// up after `timeout`; an empty socket, with `ec` set, when it cannot connect.
inline tinyproxy::socket connect_to(const tinyproxy::endpoint& where, std::error_code& ec,
                                    std::chrono::milliseconds timeout = 10s) {
    auto s = tinyproxy::connect(where, tinyproxy::steady_clock::now() + 5s, ec);
    if (ec) {
        return {};
    }
    make_blocking(s, timeout);
    return s;
}

/// connect_to() for a test that expects it may fail: an empty socket when it cannot connect.
inline tinyproxy::socket connect_to(const tinyproxy::endpoint& where,
                                    std::chrono::milliseconds timeout = 10s) {
    std::error_code ec;
    return connect_to(where, ec, timeout);
}

inline bool send_all(tinyproxy::socket& s, const bytes& data) {
    std::size_t sent = 0;
    while (sent < data.size()) {
        ssize_t n = ::send(s.native_handle(), data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) {
            return false;
        }
        sent += static_cast<std::size_t>(n);
    }
    return true;
}

/// Reads until end of stream (or error, or timeout); `clean` says whether it ended in EOF.
inline bytes read_to_end(tinyproxy::socket& s, bool* clean = nullptr) {
    bytes out;
    std::uint8_t buffer[65536];
    for (;;) {
        ssize_t n = ::recv(s.native_handle(), buffer, sizeof buffer, 0);
        if (n <= 0) {
            if (clean != nullptr) {
                *clean = n == 0;
            }
            return out;
        }
        out.insert(out.end(), buffer, buffer + n);
    }
}

inline void shutdown_write(tinyproxy::socket& s) { ::shutdown(s.native_handle(), SHUT_WR); }

/// An upstream on 127.0.0.1:0 that runs `handler` on a thread for every connection.
class upstream {
public:
    using handler_type = std::function<void(tinyproxy::socket&)>;

    explicit upstream(handler_type handler,
                      tinyproxy::endpoint where = tinyproxy::parse_endpoint("127.0.0.1:0"))
        : handler_(std::move(handler)), listener_(tinyproxy::listener::open(where)) {
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    ~upstream() {
        stopping_ = true;
        acceptor_.join();
        for (auto& t : workers_) {
            t.join();
        }
    }
    tinyproxy::endpoint where() const { return listener_.local_endpoint(); }
    int connections() const { return connections_.load(); }

private:
    void accept_loop() {
        while (!stopping_) {
            pollfd fd{listener_.native_handle(), POLLIN, 0};
            if (::poll(&fd, 1, 20) <= 0) {
                continue;
            }
            tinyproxy::endpoint peer;
            std::error_code ec;
            auto s = listener_.accept(peer, false, ec);
            if (ec) {
                continue;
            }
            ++connections_;
            make_blocking(s);
            std::lock_guard<std::mutex> lock(mutex_);
            workers_.emplace_back([this, c = std::move(s)]() mutable { handler_(c); });
        }
    }

    handler_type handler_;
    tinyproxy::listener listener_;
    std::atomic<bool> stopping_{false};
    std::atomic<int> connections_{0};
    std::mutex mutex_;
    std::list<std::thread> workers_;
    std::thread acceptor_;
};

/// Echoes until end of stream, then shuts its write side.
inline void echo(tinyproxy::socket& s) {
    std::uint8_t buffer[65536];
    for (;;) {
        ssize_t n = ::recv(s.native_handle(), buffer, sizeof buffer, 0);
        if (n <= 0) {
            break;
        }
        bytes chunk(buffer, buffer + n);
        if (!send_all(s, chunk)) {
            return;
        }
    }
    shutdown_write(s);
}

/// A forward mode to `where`.
inline tinyproxy::forward_mode forward_to(const tinyproxy::endpoint& where) {
    return tinyproxy::forward_mode(tinyproxy::host_port{where.address.to_string(), where.port});
}

/// A proxy of the given policy in front of `target`, running on its own thread.
template <class Policy, class Mode = tinyproxy::forward_mode>
class running_proxy {
public:
    running_proxy(Mode mode, tinyproxy::options opts = default_options())
        : proxy_(opts, std::move(mode)) {
        proxy_.listen();
        runner_ = std::thread([this] { proxy_.run(); });
    }
    ~running_proxy() { stop(); }

    static tinyproxy::options default_options() {
        tinyproxy::options opts;
        opts.listen = tinyproxy::parse_endpoint("127.0.0.1:0");
        opts.connect_timeout = 5s;
        opts.idle_timeout = 30s;
        return opts;
    }
    /// Stops and joins; returns how long run() took to return after stop().
    std::chrono::milliseconds stop() {
        if (!runner_.joinable()) {
            return 0ms;
        }
        auto begin = tinyproxy::steady_clock::now();
        proxy_.stop();
        runner_.join();
        return std::chrono::duration_cast<std::chrono::milliseconds>(
            tinyproxy::steady_clock::now() - begin);
    }
    tinyproxy::endpoint where() const { return proxy_.local_endpoint(); }
    tinyproxy::basic_proxy<Policy, Mode>& proxy() { return proxy_; }

private:
    tinyproxy::basic_proxy<Policy, Mode> proxy_;
    std::thread runner_;
};

/// fork_policy runs in a process of its own, started here with fork() and single-threaded from
/// then on: a process-per-connection proxy forks for every client, and forking a process that
/// runs other threads (this test binary runs clients and servers on threads) can leave a child
/// stuck on a lock another thread held at the fork, as ASan's allocator does. The host exits 0
/// only if, after run() returned, it has no child left.
template <class Mode>
class running_proxy<tinyproxy::fork_policy, Mode> {
public:
    running_proxy(Mode mode, tinyproxy::options opts = default_options()) {
        tinyproxy::basic_proxy<tinyproxy::fork_policy, Mode> proxy(opts, std::move(mode));
        proxy.listen();
        where_ = proxy.local_endpoint();
        int ready[2];
        if (::pipe(ready) != 0) {
            throw std::runtime_error("pipe");
        }
        host_ = ::fork();
        if (host_ == 0) {
            ::close(ready[0]);
            host_proxy() = &proxy;
            struct sigaction action {};
            action.sa_handler = [](int) { host_proxy()->stop(); };
            ::sigaction(SIGTERM, &action, nullptr);
            char one = 1;
            (void)!::write(ready[1], &one, 1); // the handler is in place
            proxy.run();
            int status = 0;
            bool children_left = ::waitpid(-1, &status, WNOHANG) != -1 || errno != ECHILD;
            ::_exit(children_left ? 3 : 0);
        }
        ::close(ready[1]);
        char one = 0;
        pollfd fd{ready[0], POLLIN, 0};
        ::poll(&fd, 1, 5000);
        (void)!::read(ready[0], &one, 1);
        ::close(ready[0]);
        // `proxy` closes its listener and stop pipe here, in this process only.
    }
    ~running_proxy() { stop(); }

    static tinyproxy::options default_options() {
        return running_proxy<tinyproxy::thread_policy, Mode>::default_options();
    }
    /// Sends SIGTERM (the host calls stop()) and waits; how long the host took to exit.
    std::chrono::milliseconds stop() {
        if (host_ <= 0) {
            return 0ms;
        }
        auto begin = tinyproxy::steady_clock::now();
        ::kill(host_, SIGTERM);
        int status = 0;
        while (::waitpid(host_, &status, WNOHANG) == 0) {
            if (tinyproxy::steady_clock::now() - begin > 10s) {
                ::kill(host_, SIGKILL);
                ::waitpid(host_, &status, 0);
                break;
            }
            std::this_thread::sleep_for(1ms);
        }
        host_exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        host_ = -1;
        return std::chrono::duration_cast<std::chrono::milliseconds>(
            tinyproxy::steady_clock::now() - begin);
    }
    tinyproxy::endpoint where() const { return where_; }
    pid_t host() const { return host_; }
    /// The host's exit status once stopped: 0 when it ended cleanly with no child left.
    int host_exit() const { return host_exit_; }

private:
    static tinyproxy::basic_proxy<tinyproxy::fork_policy, Mode>*& host_proxy() {
        static tinyproxy::basic_proxy<tinyproxy::fork_policy, Mode>* proxy = nullptr;
        return proxy;
    }

    tinyproxy::endpoint where_;
    pid_t host_ = -1;
    int host_exit_ = -1;
};

/// How many descriptors this process has open.
inline int open_descriptors() {
    int count = 0;
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) {
        return -1;
    }
    while (dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] != '.') {
            ++count;
        }
    }
    ::closedir(dir);
    return count - 1; // the directory's own descriptor
}

/// Child processes of `parent` (this process by default), any state, found through /proc.
inline std::vector<std::string> child_states(pid_t parent = ::getpid()) {
    std::vector<std::string> states;
    DIR* dir = ::opendir("/proc");
    if (dir == nullptr) {
        return states;
    }
    std::string self = std::to_string(parent);
    while (dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') {
            continue;
        }
        std::string path = std::string("/proc/") + entry->d_name + "/stat";
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        char text[512] = {};
        ssize_t n = ::read(fd, text, sizeof text - 1);
        ::close(fd);
        if (n <= 0) {
            continue;
        }
        // pid (comm) state ppid ...: comm may hold spaces, so start after the last ')'.
        const char* close_paren = std::strrchr(text, ')');
        if (close_paren == nullptr) {
            continue;
        }
        char state = 0;
        int ppid = 0;
        if (std::sscanf(close_paren + 1, " %c %d", &state, &ppid) == 2 &&
            std::to_string(ppid) == self) {
            states.push_back(std::string(entry->d_name) + ":" + state);
        }
    }
    ::closedir(dir);
    return states;
}

/// Polls `condition` every 10 ms until it holds or `limit` passes.
template <class Condition>
bool eventually(Condition condition, std::chrono::milliseconds limit = 3s) {
    auto give_up = tinyproxy::steady_clock::now() + limit;
    while (!condition()) {
        if (tinyproxy::steady_clock::now() >= give_up) {
            return false;
        }
        std::this_thread::sleep_for(10ms);
    }
    return true;
}

} // namespace tptest
