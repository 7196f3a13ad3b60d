// SPDX-License-Identifier: MIT
// Test support: a loopback TCP echo server, each client on a thread of its own, that records what
// it received and how many clients it had. Every wait in it has a deadline.
#pragma once

#include <algorithm>    // std::max
#include <atomic>       // counters
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <list>         // client threads
#include <mutex>        // the record
#include <string>       // what was received
#include <system_error> // set-up failures
#include <thread>       // the acceptor and the clients
#include <vector>       // the receive buffer

#include <poll.h> // pollfd

#include <tinyproxy/tinyproxy.hpp>

#include "support/timing.hpp"

namespace tptest {

/// The accept loop of a test server that gives each client a thread of its own: accepts every
/// client of the non-blocking `listener` and hands it to `on_client`, on the calling thread,
/// until `stop_fd` turns readable (or 120 s pass, which no test takes).
template <class OnClient>
void accept_until_stopped(tinyproxy::listener& listener, int stop_fd, OnClient on_client) {
    const time_point give_up = after(ms(120'000));
    while (steady_clock::now() < give_up) {
        pollfd fds[2] = {{stop_fd, POLLIN, 0}, {listener.native_handle(), POLLIN, 0}};
        std::error_code ec;
        tinyproxy::detail::poll_fds(fds, 2, give_up, ec);
        if (fds[0].revents != 0 || ec) {
            return;
        }
        if (fds[1].revents == 0) {
            continue;
        }
        tinyproxy::endpoint peer;
        tinyproxy::socket client = listener.accept(peer, true, ec);
        if (!ec) {
            on_client(std::move(client));
        }
    }
}

/// Echoes every client: what comes in goes back; at the client's end of stream, once everything
/// is echoed, it shuts down its write side and closes. A client idle for 30 s is dropped, and the
/// server gives up after 120 s whatever happens. stop() (and the destructor) ends every thread.
class echo_server {
public:
    explicit echo_server(tinyproxy::endpoint where = {tinyproxy::ip_address::loopback_v4(), 0})
        : listener_(tinyproxy::listener::open(where, 128)) {
        int fds[2] = {-1, -1};
        std::error_code ec;
        if (!tinyproxy::detail::make_pipe(fds, ec)) {
            throw std::system_error(ec, "echo_server: pipe");
        }
        stop_read_.reset(fds[0]);
        stop_write_.reset(fds[1]);
        listener_.set_nonblocking(true, ec);
        if (ec) {
            throw std::system_error(ec, "echo_server: set-up failed");
        }
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    echo_server(const echo_server&) = delete;
    echo_server& operator=(const echo_server&) = delete;
    ~echo_server() { stop(); }

    tinyproxy::endpoint endpoint() const { return listener_.local_endpoint(); }
    /// "127.0.0.1:PORT", for --forward.
    std::string address() const { return endpoint().to_string(); }
    std::size_t accepted() const noexcept { return accepted_.load(); }
    /// The most clients that were connected at the same time.
    std::size_t most_at_once() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return most_at_once_;
    }
    /// Everything received, over all clients, in arrival order.
    std::string received() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return received_;
    }
    /// Closes every connection and ends every thread; the listener stays bound until the end.
    void stop() {
        stop_write_.reset(); // every wait below also watches the stop pipe
        if (acceptor_.joinable()) {
            acceptor_.join();
        }
        for (std::thread& t : clients_) {
            t.join();
        }
        clients_.clear();
    }

private:
    void accept_loop() {
        accept_until_stopped(listener_, stop_read_.get(), [this](tinyproxy::socket client) {
            accepted_.fetch_add(1);
            count(+1);
            clients_.emplace_back([this, c = std::move(client)]() mutable { echo(c); });
        });
    }

    void count(int change) {
        std::lock_guard<std::mutex> lock(mutex_);
        connected_ = change > 0 ? connected_ + 1 : connected_ - 1;
        most_at_once_ = std::max(most_at_once_, connected_);
    }

    void echo(tinyproxy::socket& client) {
        bool end_of_stream = echo_until_end(client);
        // Counted out before our end of stream goes: whoever connected cannot see the connection
        // finish, and connect again, before this client is no longer counted.
        count(-1);
        if (end_of_stream) {
            std::error_code ec;
            client.shutdown_write(ec);
        }
    }

    /// Echoes until the client's end of stream (true), or a failure, stop or 30 s idle (false).
    bool echo_until_end(tinyproxy::socket& client) {
        std::vector<std::uint8_t> buffer(64 * 1024);
        for (;;) {
            pollfd fds[2] = {{stop_read_.get(), POLLIN, 0}, {client.native_handle(), POLLIN, 0}};
            std::error_code ec;
            tinyproxy::detail::poll_fds(fds, 2, after(ms(30'000)), ec);
            if (fds[0].revents != 0 || fds[1].revents == 0 || ec) {
                return false; // stopping, or idle far too long
            }
            std::size_t n = client.receive(buffer.data(), buffer.size(), ec);
            if (ec && tinyproxy::detail::would_block(ec)) {
                continue;
            }
            if (ec) {
                return false;
            }
            if (n == 0) {
                return true;
            }
            {
                std::lock_guard<std::mutex> lock(mutex_);
                received_.append(reinterpret_cast<const char*>(buffer.data()), n);
            }
            client.send_all({buffer.data(), n}, after(ms(10'000)), ec);
            if (ec) {
                return false;
            }
        }
    }

    tinyproxy::listener listener_;
    tinyproxy::unique_fd stop_read_;
    tinyproxy::unique_fd stop_write_;
    std::atomic<std::size_t> accepted_{0};
    mutable std::mutex mutex_;
    std::size_t connected_ = 0;
    std::size_t most_at_once_ = 0;
    std::string received_;
    std::list<std::thread> clients_; // touched by the accept thread only, until it is joined
    std::thread acceptor_;
};

} // namespace tptest
