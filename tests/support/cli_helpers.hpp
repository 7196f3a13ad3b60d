// SPDX-License-Identifier: MIT
// Black-box test support: start a program with its output piped, read its "listening on" line,
// stop it with a signal; an in-process echo upstream; clients that send and receive at once.
// Every wait here has a deadline.
#pragma once

#include <algorithm>    // std::find, std::max
#include <atomic>       // counters, flags
#include <cerrno>       // errno after read(2)
#include <chrono>       // deadlines
#include <cstdint>      // bytes
#include <cstdlib>      // std::getenv
#include <list>         // echo threads
#include <mutex>        // client counts
#include <optional>     // a line, or none
#include <random>       // payloads
#include <string>       // paths, output
#include <system_error> // std::error_code
#include <thread>       // echo threads, naps
#include <utility>      // std::move
#include <vector>       // arguments, payloads

#include <csignal>    // kill, signal numbers
#include <fcntl.h>    // O_CLOEXEC, O_RDONLY
#include <poll.h>     // poll
#include <spawn.h>    // posix_spawn
#include <sys/wait.h> // waitpid
#include <unistd.h>   // access, read, close

#include <sys/socket.h> // send, recv

#include <doctest/doctest.h>
#include <tinyproxy/tinyproxy.hpp>

#include "support/echo_server.hpp"
#include "support/loopback.hpp"
#include "support/payload.hpp"
#include "support/skip.hpp"
#include "support/timing.hpp"

// Set by CMake: the CLI's full path ("" when not built), and the examples' directory.
#ifndef TINYPROXY_CLI_PATH
#    define TINYPROXY_CLI_PATH ""
#endif
#ifndef TINYPROXY_EXAMPLES_DIR
#    define TINYPROXY_EXAMPLES_DIR ""
#endif

extern char** environ;

namespace tptest {

/// Start-up can be slow under sanitizers: the time a program gets to print its first line.
constexpr ms startup_time{10'000};

// --- the programs under test -------------------------------------------------------------------

/// `path` when it names an executable that this build made; otherwise a failure, or with
/// TINYPROXY_ALLOW_SKIP=1 a skip and "" (the test then returns).
inline std::string built_program(const std::string& path, const std::string& what) {
    return required_program(
        what, path, "build it (cmake --build with TINYPROXY_BUILD_EXAMPLES=ON, the default)");
}

/// The command-line proxy, or "" (the test then returns).
inline std::string cli_program() { return built_program(TINYPROXY_CLI_PATH, "the tinyproxy CLI"); }

/// examples/<name>, or "" (the test then returns).
inline std::string example_program(const std::string& name) {
    std::string dir = TINYPROXY_EXAMPLES_DIR;
    return built_program(dir.empty() ? std::string() : dir + "/" + name, "example " + name);
}

// --- a child process with its output piped -----------------------------------------------------

/// A program started with stdin from /dev/null (or, `with_stdin`, a pipe from us) and stdout
/// and stderr piped to us. If it is still running when this goes, it is killed and reaped:
/// nothing is left behind.
class process {
public:
    process(const std::string& path, const std::vector<std::string>& args,
            bool with_stdin = false) {
        int out[2] = {-1, -1};
        int err[2] = {-1, -1};
        int in[2] = {-1, -1};
        std::error_code ec;
        tinyproxy::unique_fd in_read;
        if (with_stdin) {
            REQUIRE(tinyproxy::detail::make_pipe(in, ec));
            in_read.reset(in[0]);
            stdin_.reset(in[1]);
        }
        REQUIRE(tinyproxy::detail::make_pipe(out, ec));
        stdout_.reset(out[0]);
        tinyproxy::unique_fd out_write(out[1]);
        REQUIRE(tinyproxy::detail::make_pipe(err, ec));
        stderr_.reset(err[0]);
        tinyproxy::unique_fd err_write(err[1]);

        std::vector<std::string> argv_text{path};
        argv_text.insert(argv_text.end(), args.begin(), args.end());
        std::vector<char*> argv;
        for (std::string& arg : argv_text) {
            argv.push_back(arg.data());
        }
        argv.push_back(nullptr);

        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        if (with_stdin) {
            posix_spawn_file_actions_adddup2(&actions, in[0], 0);
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        }
        posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        posix_spawn_file_actions_adddup2(&actions, err[1], 2);
        // The child starts with default signal handling and nothing blocked, whatever the test
        // runner set for itself.
        posix_spawnattr_t attributes;
        posix_spawnattr_init(&attributes);
        sigset_t none;
        sigemptyset(&none);
        posix_spawnattr_setsigmask(&attributes, &none);
        sigset_t defaults;
        sigemptyset(&defaults);
        sigaddset(&defaults, SIGINT);
        sigaddset(&defaults, SIGTERM);
        sigaddset(&defaults, SIGPIPE);
        posix_spawnattr_setsigdefault(&attributes, &defaults);
        posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        int status =
            ::posix_spawn(&pid_, path.c_str(), &actions, &attributes, argv.data(), environ);
        posix_spawnattr_destroy(&attributes);
        posix_spawn_file_actions_destroy(&actions);
        REQUIRE_MESSAGE(status == 0, "cannot start " << path);
        tinyproxy::detail::set_nonblocking(stdout_.get(), true, ec);
        tinyproxy::detail::set_nonblocking(stderr_.get(), true, ec);
    }

    process(const process&) = delete;
    process& operator=(const process&) = delete;

    ~process() {
        if (pid_ > 0 && !reaped_) {
            ::kill(pid_, SIGKILL);
            int ignored = 0;
            ::waitpid(pid_, &ignored, 0);
        }
    }

    pid_t pid() const noexcept { return pid_; }

    /// Writes `text` to the program's stdin (made `with_stdin`); false if it could not.
    bool write_stdin(const std::string& text) {
        tinyproxy::detail::sigpipe_guard guard; // a program gone: false, not our SIGPIPE
        std::size_t sent = 0;
        while (stdin_ && sent < text.size()) {
            ssize_t n = ::write(stdin_.get(), text.data() + sent, text.size() - sent);
            if (n <= 0) {
                guard.take_raised();
                return false;
            }
            sent += static_cast<std::size_t>(n);
        }
        return stdin_ && sent == text.size();
    }
    /// Ends the program's stdin.
    void close_stdin() { stdin_.reset(); }

    /// The next line on stdout without its newline; nothing at end of stream or past `until`.
    std::optional<std::string> read_line(time_point until) {
        for (;;) {
            auto newline = std::find(out_.begin(), out_.end(), '\n');
            if (newline != out_.end()) {
                std::string line(out_.begin(), newline);
                out_.erase(out_.begin(), newline + 1);
                return line;
            }
            if (!stdout_ || steady_clock::now() >= until) {
                return std::nullopt;
            }
            fill(until);
        }
    }

    /// Reads stdout and stderr until both end (the program and every child of it closed them)
    /// or `until` passes; true when both ended.
    bool read_to_end(time_point until) {
        while (stdout_ || stderr_) {
            if (steady_clock::now() >= until) {
                return false;
            }
            fill(until);
        }
        return true;
    }

    /// What stdout held that read_line() has not taken, and everything read from stderr.
    const std::string& stdout_text() const noexcept { return out_; }
    const std::string& stderr_text() const noexcept { return err_; }

    void send_signal(int signal) { ::kill(pid_, signal); }

    /// Waits for the program to exit, until `until`; true once it has been reaped.
    bool wait(time_point until) {
        while (!reaped_) {
            int status = 0;
            pid_t r = ::waitpid(pid_, &status, WNOHANG);
            if (r == pid_) {
                reaped_ = true;
                status_ = status;
                break;
            }
            if (steady_clock::now() >= until) {
                return false;
            }
            std::this_thread::sleep_for(ms(5));
        }
        return true;
    }

    /// The exit code, or -1 when it did not exit normally (or has not been reaped).
    int exit_code() const noexcept {
        return reaped_ && WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
    }
    /// The signal that killed it, or 0.
    int killed_by() const noexcept {
        return reaped_ && WIFSIGNALED(status_) ? WTERMSIG(status_) : 0;
    }

private:
    /// Waits until stdout or stderr has something (or ends), or `until`, and reads it.
    void fill(time_point until) {
        pollfd fds[2] = {{stdout_ ? stdout_.get() : -1, POLLIN, 0},
                         {stderr_ ? stderr_.get() : -1, POLLIN, 0}};
        std::error_code ec;
        tinyproxy::detail::poll_fds(fds, 2, until, ec);
        char buffer[4096];
        for (int i = 0; i < 2; ++i) {
            if (fds[i].revents == 0) {
                continue;
            }
            tinyproxy::unique_fd& fd = i == 0 ? stdout_ : stderr_;
            ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
            if (n > 0) {
                (i == 0 ? out_ : err_).append(buffer, static_cast<std::size_t>(n));
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                fd.reset(); // end of stream
            }
        }
    }

    pid_t pid_ = -1;
    bool reaped_ = false;
    int status_ = 0;
    tinyproxy::unique_fd stdin_; // ours to write, when made with_stdin
    tinyproxy::unique_fd stdout_;
    tinyproxy::unique_fd stderr_;
    std::string out_;
    std::string err_;
};

/// Reads the "listening on HOST:PORT" line a proxy prints first, and returns the endpoint.
inline tinyproxy::endpoint read_listening(process& program) {
    auto line = program.read_line(after(startup_time));
    REQUIRE_MESSAGE(line.has_value(), "no 'listening on' line; stderr: " << program.stderr_text());
    const std::string prefix = "listening on ";
    REQUIRE_MESSAGE(line->rfind(prefix, 0) == 0, "unexpected first line: '" << *line << "'");
    std::error_code ec;
    tinyproxy::endpoint where = tinyproxy::parse_endpoint(line->substr(prefix.size()), ec);
    REQUIRE_MESSAGE(!ec, "cannot parse '" << *line << "'");
    CHECK(where.port != 0);
    CHECK(*line == prefix + where.to_string()); // exactly the line, nothing more
    return where;
}

/// Sends `signal` and expects exit status 0 within `within`; kills it (and fails) otherwise.
inline void expect_clean_exit(process& program, int signal, ms within = ms(2000)) {
    auto start = steady_clock::now();
    program.send_signal(signal);
    if (!program.wait(start + within)) {
        FAIL_CHECK("still running " << within.count() << " ms after signal " << signal);
        program.send_signal(SIGKILL);
        program.wait(after(ms(5000)));
        return;
    }
    CHECK_MESSAGE(program.exit_code() == 0, "exit code " << program.exit_code() << ", signal "
                                                         << program.killed_by()
                                                         << "; stderr: " << program.stderr_text());
}

/// Runs a program that should end by itself, collecting its output.
struct finished_run {
    int exit_code = -1;
    std::string out;
    std::string err;
};

inline finished_run run_to_exit(const std::string& path, const std::vector<std::string>& args) {
    process program(path, args);
    auto until = after(ms(5000));
    CHECK_MESSAGE(program.read_to_end(until), "output did not end");
    CHECK_MESSAGE(program.wait(until), "did not exit");
    return {program.exit_code(), program.stdout_text(), program.stderr_text()};
}

// --- sockets -----------------------------------------------------------------------------------

inline tinyproxy::endpoint loopback(std::uint16_t port = 0) {
    return {tinyproxy::ip_address::loopback_v4(), port};
}

/// A port nothing listens on: bound, then closed again.
inline std::uint16_t closed_port() {
    tinyproxy::listener probe = tinyproxy::listener::open(loopback(), 1);
    return probe.local_endpoint().port;
}

inline bool ipv6_loopback_available() {
    std::error_code ec;
    tinyproxy::listener probe =
        tinyproxy::listener::open({tinyproxy::ip_address::loopback_v6(), 0}, 1, ec);
    return !ec;
}

/// connect_to() for a test that needs the connection: the test fails if it cannot connect.
inline tinyproxy::socket require_connect(const tinyproxy::endpoint& where) {
    std::error_code ec;
    tinyproxy::socket s = connect_to(where, ec);
    REQUIRE_MESSAGE(!ec, "cannot connect to " << where.to_string() << ": " << ec.message());
    return s;
}

/// What a client saw: the bytes it received, and how its reading ended.
struct transfer {
    bytes received;
    bool eof = false;   ///< the peer finished sending (FIN)
    bool reset = false; ///< the connection was reset
    std::string error;  ///< a timeout or another failure; empty otherwise
};

/// Sends all of `payload` while reading whatever comes back; after the last byte, half-closes
/// (when `half_close`) and reads until end of stream, a reset, or `until`. Safe to run on many
/// threads at once (it asserts nothing).
inline transfer exchange(tinyproxy::socket& s, const bytes& payload, time_point until,
                         bool half_close = true) {
    transfer out;
    out.received.reserve(payload.size());
    std::size_t sent = 0;
    bool shut = false;
    std::vector<std::uint8_t> buffer(64 * 1024);
    for (;;) {
        if (sent == payload.size() && half_close && !shut) {
            std::error_code ec;
            s.shutdown_write(ec);
            shut = true;
        }
        short events = POLLIN;
        if (sent < payload.size()) {
            events = static_cast<short>(events | POLLOUT);
        }
        pollfd entry{s.native_handle(), events, 0};
        std::error_code ec;
        tinyproxy::detail::poll_fds(&entry, 1, until, ec);
        if (entry.revents == 0) {
            if (steady_clock::now() >= until) {
                out.error = "timed out after sending " + std::to_string(sent) + " and receiving " +
                            std::to_string(out.received.size()) + " bytes";
                return out;
            }
            continue;
        }
        if ((entry.revents & POLLOUT) != 0 && sent < payload.size()) {
            // MSG_DONTWAIT: connect_to() gives a blocking socket, and this loop must not block.
            ssize_t n = ::send(s.native_handle(), payload.data() + sent, payload.size() - sent,
                               MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n >= 0) {
                sent += static_cast<std::size_t>(n);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                // The peer may have reset: reading below says how.
                sent = payload.size();
                shut = true;
            }
        }
        if ((entry.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
            ssize_t received =
                ::recv(s.native_handle(), buffer.data(), buffer.size(), MSG_DONTWAIT);
            if (received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                continue;
            }
            if (received < 0) {
                out.reset = errno == ECONNRESET;
                if (!out.reset) {
                    out.error = "receive failed: " +
                                std::error_code(errno, std::generic_category()).message();
                }
                return out;
            }
            auto n = static_cast<std::size_t>(received);
            if (n == 0) {
                out.eof = true;
                if (sent < payload.size()) {
                    out.error = "end of stream after sending only " + std::to_string(sent);
                }
                return out;
            }
            out.received.insert(out.received.end(), buffer.data(), buffer.data() + n);
            if (!half_close && !payload.empty() && sent == payload.size() &&
                out.received.size() >= payload.size()) {
                return out; // everything came back; the connection stays open
            }
        }
    }
}

/// Reads until the peer closes (end of stream or reset) or `until`; true when it closed.
inline bool wait_closed(tinyproxy::socket& s, time_point until) {
    transfer t = exchange(s, {}, until, false);
    return t.eof || t.reset;
}

/// Sends `text` without closing and reads the same count back: proves a tunnel is up.
inline bool ping(tinyproxy::socket& s, const std::string& text = "ping") {
    bytes payload(text.begin(), text.end());
    transfer t = exchange(s, payload, after(ms(3000)), false);
    return t.error.empty() && !t.eof && !t.reset && t.received == payload;
}

} // namespace tptest
