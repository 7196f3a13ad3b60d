// thread_policy: one thread per client.
#pragma once

#include <atomic>  // a finished flag per worker
#include <chrono>  // the reaping tick
#include <list>    // workers, stable addresses
#include <thread>  // std::thread
#include <utility> // std::move

#include "tinyproxy/config.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/session.hpp"

namespace tinyproxy {

/// A thread per client: simple, and every session may block (a Mode that resolves names or
/// calls a slow service costs only its own thread). Pick it for tens to a few thousand
/// concurrent clients; each costs a thread stack.
///
/// The policy interface (see basic_proxy in proxy.hpp): a policy is a class with
///     template <class Server> void run(Server& server);
/// that runs until `server` says it is stopping, and before returning joins, reaps and closes
/// everything it started. A blocking policy needs only these calls of the Server:
///     accept_status accept_next(accepted_client& out, time_point until);
///     session_result serve(accepted_client client);  // one session, to its end, here
///     void session_ended(const session_result&) noexcept; // for a client it could not serve
///     bool stopping() const noexcept;  // e.g. for a worker waiting on a full queue
class thread_policy {
public:
    template <class Server>
    void run(Server& server) {
        std::list<worker> workers;
        for (;;) {
            accepted_client client;
            // Wake once a second even when idle, to join threads that have finished.
            auto status = server.accept_next(client, steady_clock::now() + std::chrono::seconds(1));
            join_finished(workers);
            if (status == accept_status::stopped) {
                break;
            }
            if (status == accept_status::client) {
                start_worker(workers, server, std::move(client));
            }
        }
        // Sessions see the stop signal themselves and end; wait for each.
        for (worker& w : workers) {
            w.thread.join();
        }
    }

private:
    struct worker {
        std::thread thread;
        std::atomic<bool> finished{false};
    };

    template <class Server>
    static void start_worker(std::list<worker>& workers, Server& server, accepted_client client) {
        worker& w = workers.emplace_back();
        try {
            w.thread = std::thread([&server, &w, c = std::move(client)]() mutable {
                server.serve(std::move(c));
                w.finished.store(true, std::memory_order_release);
            });
        } catch (...) {
            // No thread to be had (resource limits): the client is closed with the lambda.
            workers.pop_back();
            session_result refused;
            refused.error = std::make_error_code(std::errc::resource_unavailable_try_again);
            server.session_ended(refused);
        }
    }

    static void join_finished(std::list<worker>& workers) {
        for (auto it = workers.begin(); it != workers.end();) {
            if (it->finished.load(std::memory_order_acquire)) {
                it->thread.join();
                it = workers.erase(it);
            } else {
                ++it;
            }
        }
    }
};

} // namespace tinyproxy
