// thread_policy: one thread per client.
#pragma once

#include <chrono>             // the joining tick, idle threads' wait
#include <condition_variable> // idle threads wait for a client
#include <cstddef>            // std::size_t
#include <deque>              // clients handed to idle threads
#include <list>               // threads, stable iterators
#include <mutex>              // the hand-over
#include <thread>             // std::thread
#include <utility>            // std::move
#include <vector>             // threads that ended

#include "tinyproxy/config.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/session.hpp"

namespace tinyproxy {

/// A thread per client: simple, and every session may block (a Mode that resolves names or
/// calls a slow service costs only its own thread). Pick it for tens to a few thousand
/// concurrent clients; each costs a thread stack. A thread that finished its session serves
/// the next client if one comes within `keep_idle_thread`, instead of a new thread.
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
    /// How long a thread that has finished a session waits for the next client before it
    /// ends. Reusing a waiting thread saves creating one per client (tens of microseconds,
    /// far more on some VMs); 0 ends each thread with its session.
    std::chrono::milliseconds keep_idle_thread{2000};

    template <class Server>
    void run(Server& server);
};

namespace detail {

/// The threads of one thread_policy run: a thread per session in flight, plus threads that
/// finished one and wait a while for the next client (handed over through `waiting_`).
template <class Server>
class thread_crew {
public:
    thread_crew(Server& server, std::chrono::milliseconds keep_idle)
        : server_(server), keep_idle_(keep_idle) {}
    thread_crew(const thread_crew&) = delete;
    thread_crew& operator=(const thread_crew&) = delete;

    /// Serves `client` on an idle thread if one waits, else on a new one.
    void dispatch(accepted_client client);
    /// Joins threads that have ended (from the accepting thread only).
    void join_ended();
    /// Wakes every idle thread to end, and joins them all; sessions end by the stop signal.
    void stop_and_join();

private:
    using thread_list = std::list<std::thread>;

    void work(accepted_client first, thread_list::iterator self);

    Server& server_;
    const std::chrono::milliseconds keep_idle_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<accepted_client> waiting_; // clients handed to idle threads, not yet taken
    std::size_t idle_ = 0;                // threads waiting for a client
    bool stopping_ = false;
    thread_list threads_;                      // the accepting thread's: every thread started
    std::vector<thread_list::iterator> ended_; // threads done, to join (under mutex_)
};

template <class Server>
void thread_crew<Server>::dispatch(accepted_client client) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (idle_ > waiting_.size()) {
            try {
                waiting_.push_back(std::move(client));
                wake_.notify_one();
                return;
            } catch (...) { // no memory to queue it: try a thread of its own below
            }
        }
    }
    auto self = threads_.end();
    try {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            ended_.reserve(threads_.size() + 1); // so that a thread can always report its end
        }
        self = threads_.emplace(threads_.end());
        *self = std::thread(
            [this, self, c = std::move(client)]() mutable { work(std::move(c), self); });
    } catch (...) {
        // No thread to be had (resource limits): the client is closed.
        if (self != threads_.end()) {
            threads_.erase(self);
        }
        session_result refused;
        refused.error = std::make_error_code(std::errc::resource_unavailable_try_again);
        server_.session_ended(refused);
    }
}

template <class Server>
void thread_crew<Server>::work(accepted_client first, thread_list::iterator self) {
    server_.serve(std::move(first));
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
        ++idle_;
        bool handed =
            wake_.wait_for(lock, keep_idle_, [this] { return stopping_ || !waiting_.empty(); });
        --idle_;
        if (!handed || waiting_.empty()) {
            break; // waited long enough, or stopping with nothing left to serve
        }
        accepted_client next = std::move(waiting_.front());
        waiting_.pop_front();
        lock.unlock();
        server_.serve(std::move(next)); // after a stop, closes the client at once
        lock.lock();
    }
    ended_.push_back(self); // capacity reserved when the thread was made
}

template <class Server>
void thread_crew<Server>::join_ended() {
    std::vector<thread_list::iterator> ended;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        ended.swap(ended_);
        ended_.reserve(threads_.size());
    }
    for (auto it : ended) {
        it->join();
        threads_.erase(it);
    }
}

template <class Server>
void thread_crew<Server>::stop_and_join() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) {
        t.join();
    }
    threads_.clear();
    ended_.clear();
}

} // namespace detail

template <class Server>
void thread_policy::run(Server& server) {
    detail::thread_crew<Server> crew(server, keep_idle_thread);
    for (;;) {
        accepted_client client;
        // Wake once a second even when idle, to join threads that have ended.
        auto status = server.accept_next(client, steady_clock::now() + std::chrono::seconds(1));
        crew.join_ended();
        if (status == accept_status::stopped) {
            break;
        }
        if (status == accept_status::client) {
            crew.dispatch(std::move(client));
        }
    }
    crew.stop_and_join();
}

} // namespace tinyproxy
