// SPDX-License-Identifier: MIT
// thread_pool_policy: a concurrency policy written outside the library, the way a user writes
// one: a fixed pool of threads. examples/custom_policy.cpp runs a port forwarder with it, and the
// policy conformance suite (tests/test_policies.cpp) holds it to every guarantee the library's
// own policies keep. The policy interface is stated in tinyproxy/server.hpp.
#pragma once

#include <algorithm>          // std::max
#include <chrono>             // the wait for room
#include <condition_variable> // the queue's signals
#include <cstddef>            // std::size_t
#include <deque>              // the queue
#include <mutex>              // the queue's lock
#include <thread>             // the workers
#include <vector>             // the workers

#include <tinyproxy/tinyproxy.hpp>

/// A fixed pool of `workers` threads, each serving one client at a time, fed by the accept loop
/// through a queue of at most `queue_limit` clients; while the queue is full, new clients wait
/// in the listener's backlog. On stop, queued clients are closed unserved (and counted as
/// failed), and run() returns once every worker is joined. Of the Server it calls accept_next()
/// and serve(), stopping() and session_ended() (see tinyproxy/server.hpp).
class thread_pool_policy {
public:
    explicit thread_pool_policy(std::size_t workers = 4, std::size_t queue_limit = 64)
        : workers_(std::max<std::size_t>(workers, 1)),
          queue_limit_(std::max<std::size_t>(queue_limit, 1)) {}

    template <class Server>
    void run(Server& server) {
        pool<Server> state(server);
        for (std::size_t i = 0; i < workers_; ++i) {
            state.threads.emplace_back([&state] { state.work(); });
        }
        for (;;) {
            state.wait_for_room(queue_limit_);
            tinyproxy::accepted_client client;
            auto status = server.accept_next(client, tinyproxy::time_point::max());
            if (status == tinyproxy::accept_status::stopped) {
                return; // ~pool closes the clients still queued and joins the workers
            }
            if (status == tinyproxy::accept_status::client) {
                std::lock_guard<std::mutex> lock(state.mutex);
                state.queue.push_back(std::move(client));
                state.ready.notify_one();
            }
        }
    }

private:
    template <class Server>
    struct pool {
        explicit pool(Server& s) : server(s) {}

        Server& server;
        std::mutex mutex;
        std::condition_variable ready; // a client was queued, or the pool is closing
        std::condition_variable room;  // a client was taken off the queue
        std::deque<tinyproxy::accepted_client> queue;
        bool closing = false;
        std::vector<std::thread> threads;

        void work() {
            for (;;) {
                std::unique_lock<std::mutex> lock(mutex);
                ready.wait(lock, [this] { return closing || !queue.empty(); });
                if (closing || server.stopping()) {
                    return; // what is still queued is closed by ~pool
                }
                tinyproxy::accepted_client client = std::move(queue.front());
                queue.pop_front();
                lock.unlock();
                room.notify_one();
                server.serve(std::move(client)); // to its end, or until stop
            }
        }
        void wait_for_room(std::size_t limit) { // or for stop, which only the Server can tell
            std::unique_lock<std::mutex> lock(mutex);
            while (queue.size() >= limit && !server.stopping()) {
                room.wait_for(lock, std::chrono::milliseconds(100));
            }
        }
        ~pool() {
            {
                std::lock_guard<std::mutex> lock(mutex);
                closing = true;
                tinyproxy::session_result unserved;
                unserved.error = tinyproxy::errc::stopped;
                for (std::size_t i = 0; i < queue.size(); ++i) {
                    server.session_ended(unserved); // so that stats() adds up
                }
                queue.clear(); // closes them
            }
            ready.notify_all();
            for (std::thread& t : threads) {
                t.join();
            }
        }
    };

    std::size_t workers_;
    std::size_t queue_limit_;
};
