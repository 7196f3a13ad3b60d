// SPDX-License-Identifier: MIT
// Interoperability test support: finding a peer program (curl, haproxy, nginx) or failing the
// test (skipping it with TINYPROXY_ALLOW_SKIP=1), an in-process HTTP server, running curl and
// reading its result, a temporary directory for peer configs, and starting a peer server on a
// free port. Every wait here has a deadline.
#pragma once

#include <atomic>       // counters
#include <cstdint>      // ports
#include <cstdlib>      // std::getenv
#include <filesystem>   // the temporary directory
#include <fstream>      // config files
#include <functional>   // a peer's command line, made for a port
#include <list>         // connection threads
#include <memory>       // a started peer's process
#include <optional>     // a port, or none
#include <sstream>      // splitting curl's trailer
#include <string>       // paths, output
#include <system_error> // std::error_code
#include <thread>       // the server's threads, naps
#include <utility>      // std::move
#include <vector>       // arguments

#include <poll.h>   // poll
#include <stdlib.h> // mkdtemp
#include <unistd.h> // access

#include <doctest/doctest.h>
#include <tinyproxy/tinyproxy.hpp>

#include "support/cli_helpers.hpp"
#include "support/skip.hpp"
#include "support/timing.hpp"

namespace tptest {

// --- peer programs ------------------------------------------------------------------------------

/// The full path of an installed program: the PATH, then the sbin directories (haproxy and
/// nginx live in /usr/sbin, which a user's PATH may lack); "" when it is nowhere.
inline std::string find_program(const std::string& name) {
    std::vector<std::string> dirs;
    if (const char* path = std::getenv("PATH")) {
        std::string list = path;
        std::size_t start = 0;
        for (;;) {
            std::size_t colon = list.find(':', start);
            dirs.push_back(list.substr(start, colon - start));
            if (colon == std::string::npos) {
                break;
            }
            start = colon + 1;
        }
    }
    for (const char* dir :
         {"/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin"}) {
        dirs.emplace_back(dir);
    }
    for (const std::string& dir : dirs) {
        if (dir.empty()) {
            continue;
        }
        std::string candidate = dir + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0 && !std::filesystem::is_directory(candidate)) {
            return candidate;
        }
    }
    return {};
}

/// The path of the peer program `name`. When it is not installed the test fails, or with
/// TINYPROXY_ALLOW_SKIP=1 is skipped and "" is returned (the caller then returns).
inline std::string peer_program(const std::string& name) {
    return required_program(name, find_program(name), "run tools/install-peers.sh");
}

// --- addresses -----------------------------------------------------------------------------------

/// True when a socket can be bound to `address` (port 0): on Linux all of 127.0.0.0/8 is
/// loopback, so 127.0.0.2 and 127.0.0.3 tell apart connections that 127.0.0.1 would not.
inline bool can_bind(const std::string& address) {
    auto ip = tinyproxy::ip_address::parse(address);
    if (!ip) {
        return false;
    }
    std::error_code ec;
    tinyproxy::listener probe = tinyproxy::listener::open({*ip, 0}, 1, ec);
    return !ec;
}

/// A port that was free a moment ago: bound on 127.0.0.1, then closed (a small race, which
/// start_peer() covers by trying a second port).
inline std::uint16_t free_port() {
    tinyproxy::listener probe = tinyproxy::listener::open(loopback(), 1);
    return probe.local_endpoint().port;
}

/// "http://HOST:PORT/" for an endpoint, IPv6 in brackets.
inline std::string url(const tinyproxy::endpoint& where) {
    return "http://" + where.to_string() + "/";
}

/// "http://NAME:PORT/" for a host name.
inline std::string url(const std::string& name, std::uint16_t port) {
    return "http://" + name + ":" + std::to_string(port) + "/";
}

// --- an HTTP server ------------------------------------------------------------------------------

/// Answers every request on `where` with 200 and `body` (then closes the connection), each
/// connection on a thread of its own. Counts the connections and the complete requests it saw.
/// The destructor ends every thread and joins it.
class http_server {
public:
    http_server(tinyproxy::endpoint where, std::string body)
        : body_(std::move(body)), listener_(tinyproxy::listener::open(where, 64)) {
        int fds[2] = {-1, -1};
        std::error_code ec;
        REQUIRE(tinyproxy::detail::make_pipe(fds, ec));
        stop_read_.reset(fds[0]);
        stop_write_.reset(fds[1]);
        listener_.set_nonblocking(true, ec);
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;
    ~http_server() {
        stop_write_.reset(); // every wait below also watches the stop pipe
        acceptor_.join();
        for (std::thread& t : connections_) {
            t.join();
        }
    }

    tinyproxy::endpoint local_endpoint() const { return listener_.local_endpoint(); }
    std::uint16_t port() const { return listener_.local_endpoint().port; }
    const std::string& body() const noexcept { return body_; }
    /// Requests read to their blank line (and answered).
    std::size_t requests() const noexcept { return requests_.load(); }
    std::size_t connections() const noexcept { return connections_accepted_.load(); }

private:
    void accept_loop() {
        accept_until_stopped(listener_, stop_read_.get(), [this](tinyproxy::socket client) {
            connections_accepted_.fetch_add(1);
            connections_.emplace_back([this, c = std::move(client)]() mutable { serve(c); });
        });
    }

    /// Reads one request head (5 s at most), answers it and closes.
    void serve(tinyproxy::socket& client) {
        const time_point until = after(ms(5000));
        std::string head;
        char buffer[4096];
        while (head.find("\r\n\r\n") == std::string::npos) {
            pollfd fds[2] = {{stop_read_.get(), POLLIN, 0}, {client.native_handle(), POLLIN, 0}};
            std::error_code ec;
            tinyproxy::detail::poll_fds(fds, 2, until, ec);
            if (fds[0].revents != 0 || fds[1].revents == 0 || ec || head.size() > 65536) {
                return; // stopping, too slow or too long
            }
            std::size_t n = client.receive(buffer, sizeof buffer, ec);
            if (ec && tinyproxy::detail::would_block(ec)) {
                continue;
            }
            if (ec || n == 0) {
                return; // closed before a whole request
            }
            head.append(buffer, n);
        }
        requests_.fetch_add(1);
        std::string response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                               std::to_string(body_.size()) + "\r\nConnection: close\r\n\r\n" +
                               body_;
        std::error_code ec;
        client.send_all({reinterpret_cast<const std::uint8_t*>(response.data()), response.size()},
                        until, ec);
        client.shutdown_write(ec);
        // Waits (briefly) for the client to close first, so our close cannot reset a response
        // it has not read yet.
        wait_closed(client, after(ms(2000)));
    }

    std::string body_;
    tinyproxy::listener listener_;
    tinyproxy::unique_fd stop_read_;
    tinyproxy::unique_fd stop_write_;
    std::atomic<std::size_t> requests_{0};
    std::atomic<std::size_t> connections_accepted_{0};
    std::list<std::thread> connections_; // touched by the accept thread only, until it is joined
    std::thread acceptor_;
};

// --- running programs ----------------------------------------------------------------------------

/// What a program that ran to its end left.
struct run_result {
    bool finished = false; ///< exited within the time given (otherwise it was killed)
    int exit_code = -1;
    std::string out;
    std::string err;
};

/// Runs `path` with `args` until it exits, `within` at most (then it is killed and reaped).
inline run_result run_program(const std::string& path, const std::vector<std::string>& args,
                              ms within = ms(15'000)) {
    run_result result;
    process program(path, args);
    time_point until = after(within);
    program.read_to_end(until);
    result.finished = program.wait(until);
    result.exit_code = program.exit_code();
    result.out = program.stdout_text();
    result.err = program.stderr_text();
    return result; // the process goes here: killed and reaped if it is still running
}

/// What curl did: its exit code, the body it wrote, and what -w reported about the transfer.
struct curl_result {
    bool finished = false;
    int exit_code = -1;
    std::string body;
    std::string http_connect; ///< the CONNECT response code ("000" when there was none)
    std::string http_code;    ///< the HTTP response code
    std::string local_ip;     ///< curl's own address on its first connection
    std::string local_port;
    std::string err;

    /// "127.0.0.1:PORT", or "[::1]:PORT" as tinyproxy prints an IPv6 endpoint.
    std::string local_endpoint() const {
        return (local_ip.find(':') != std::string::npos ? "[" + local_ip + "]" : local_ip) + ":" +
               local_port;
    }
};

/// Runs curl with `args` (after -q, so no ~/.curlrc applies), silent but for errors, with
/// bounded times. Proxy settings from the environment matter only to calls without a proxy
/// option: those pass --noproxy '*' themselves.
inline curl_result run_curl(const std::string& curl, const std::vector<std::string>& args) {
    static const std::string marker = "\n@@interop-curl@@";
    std::vector<std::string> all{"-q",
                                 "-sS",
                                 "--max-time",
                                 "10",
                                 "--connect-timeout",
                                 "5",
                                 "-w",
                                 marker +
                                     " %{http_connect} %{http_code} %{local_ip} %{local_port}\n"};
    all.insert(all.end(), args.begin(), args.end());
    run_result run = run_program(curl, all, ms(15'000));
    curl_result out;
    out.finished = run.finished;
    out.exit_code = run.exit_code;
    out.err = run.err;
    std::size_t at = run.out.rfind(marker);
    if (at == std::string::npos) {
        out.body = run.out;
        return out;
    }
    out.body = run.out.substr(0, at);
    std::istringstream trailer(run.out.substr(at + marker.size()));
    trailer >> out.http_connect >> out.http_code >> out.local_ip >> out.local_port;
    return out;
}

// --- peer servers --------------------------------------------------------------------------------

/// A fresh directory for config files, removed with everything in it at the end.
class temp_dir {
public:
    temp_dir() {
        const char* base = std::getenv("TMPDIR");
        std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
                              "/tinyproxy-interop-XXXXXX";
        REQUIRE_MESSAGE(::mkdtemp(pattern.data()) != nullptr, "cannot create " << pattern);
        path_ = pattern;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    const std::string& path() const noexcept { return path_; }

    /// Writes `text` to the file `name` in this directory and returns its full path.
    std::string write(const std::string& name, const std::string& text) const {
        std::string file = path_ + "/" + name;
        std::ofstream stream(file, std::ios::binary | std::ios::trunc);
        stream << text;
        stream.close();
        REQUIRE_MESSAGE(stream.good(), "cannot write " << file);
        return file;
    }

private:
    std::string path_;
};

/// Connects to `where` until it accepts (true), `program` exits, or `until` passes.
inline bool wait_accepting(const tinyproxy::endpoint& where, process& program, time_point until) {
    while (steady_clock::now() < until) {
        std::error_code ec;
        tinyproxy::socket probe = tinyproxy::connect(where, after(ms(500)), ec);
        if (!ec) {
            return true;
        }
        if (program.wait(steady_clock::now())) {
            return false; // exited: it could not listen
        }
        std::this_thread::sleep_for(ms(20));
    }
    return false;
}

/// A peer server started by start_peer(): its process (killed and reaped when this goes) and
/// the loopback port it listens on.
struct started_peer {
    std::unique_ptr<process> program;
    std::uint16_t port = 0;
    tinyproxy::endpoint endpoint() const { return loopback(port); }
};

/// Starts `path` with the arguments `make_args(port)` gives for a free loopback port (writing its
/// config there), and waits until the port accepts, 10 s at most. The port is free only when
/// picked: a peer that exits (someone took it meanwhile) is tried once more on another port.
inline started_peer
start_peer(const std::string& path,
           const std::function<std::vector<std::string>(std::uint16_t)>& make_args) {
    std::string failures;
    for (int attempt = 0; attempt < 2; ++attempt) {
        started_peer peer;
        peer.port = free_port();
        peer.program = std::make_unique<process>(path, make_args(peer.port));
        if (wait_accepting(peer.endpoint(), *peer.program, after(ms(10'000)))) {
            return peer;
        }
        peer.program->read_to_end(after(ms(1000)));
        failures += "\n  port " + std::to_string(peer.port) + ", exit " +
                    std::to_string(peer.program->exit_code()) + ": " + peer.program->stderr_text() +
                    peer.program->stdout_text();
    }
    FAIL(path << " did not start listening:" << failures);
    return {};
}

// --- the proxy under test ------------------------------------------------------------------------

/// The tinyproxy CLI started with `args`, and the address it printed.
struct cli_proxy {
    std::unique_ptr<process> program;
    tinyproxy::endpoint where;

    cli_proxy(const std::string& cli, const std::vector<std::string>& args)
        : program(std::make_unique<process>(cli, args)), where(read_listening(*program)) {}
    /// "HOST:PORT" as a proxy option wants it (IPv6 in brackets).
    std::string address() const { return where.to_string(); }
    /// SIGTERM: exit 0 within 3 s expected; then everything it wrote to stderr.
    std::string stop() {
        expect_clean_exit(*program, SIGTERM, ms(3000));
        program->read_to_end(after(ms(3000)));
        return program->stderr_text();
    }
};

} // namespace tptest
