// SPDX-License-Identifier: MIT
// thread_policy: one thread per client.
#pragma once

#include <algorithm>          // std::max
#include <chrono>             // the joining tick, idle threads' wait
#include <condition_variable> // idle threads wait for a client
#include <cstddef>            // std::size_t
#include <cstdint>            // std::uint8_t, std::uintptr_t
#include <deque>              // clients handed to idle threads
#include <list>               // threads, stable iterators
#include <mutex>              // the hand-over
#include <utility>            // std::move
#include <vector>             // threads that ended

#include <limits.h>   // PTHREAD_STACK_MIN
#include <pthread.h>  // threads on a stack we map
#include <sys/mman.h> // mprotect: the guard page
#include <unistd.h>   // sysconf(_SC_PAGESIZE)

#include "tinyproxy/config.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/server.hpp"

namespace tinyproxy {

/// A thread per client: simple, and every session may block (a Mode that resolves names or
/// calls a slow service costs only its own thread). Pick it for tens to a few thousand
/// concurrent clients; each costs a thread stack. A thread that finished its session serves
/// the next client if one comes within `keep_idle_thread`, instead of a new thread.
///
/// Memory: a thread costs the stack pages its sessions touch (with glibc the top one holds the
/// thread's control block and TLS) and the pages its scratch buffer is read into. The policy
/// maps each thread's stack itself, with the scratch buffer (session_options::buffer_size)
/// right above the stack's top, its first 128 bytes in the stack's top page: a small read, as
/// an idle tunnel's keepalives are, costs no page of its own; nor does the buffer take 64 KiB
/// from a malloc arena per thread.
///
/// Of the Server (the policy interface: server.hpp) it calls accept_next(), serve(client,
/// scratch, size), each thread reading into a buffer of `limits().buffer_size` bytes that it
/// maps itself, and session_ended() for a client it could not serve.
class thread_policy {
public:
    /// How long a thread that has finished a session waits for the next client before it
    /// ends. Reusing a waiting thread saves creating one per client (tens of microseconds,
    /// far more on some VMs); 0 ends each thread with its session.
    std::chrono::milliseconds keep_idle_thread{2000};
    /// Each thread's stack, in bytes; 0 takes the size new threads get by default (pthread's
    /// default attributes: on Linux the stack rlimit, usually 8 MiB). At least
    /// PTHREAD_STACK_MIN, and 4 MiB under ThreadSanitizer, which wants room of its own there.
    /// Only touched pages cost memory, but each thread reserves this much address space, and
    /// page tables to match. A session of the library's own Modes goes about 8 KiB deep (4 KiB
    /// of it glibc's thread control block and TLS); resolving a host name with getaddrinfo
    /// takes tens of KiB more, and a Mode or an event hook of yours whatever it takes: leave
    /// room for all of it.
    std::size_t stack_size = 0;

    template <class Server>
    void run(Server& server);
};

namespace detail {

/// The memory of one session thread: a guard page, its stack, and above the stack's top the
/// scratch buffer its sessions read into. The scratch buffer's first `shared_bytes` lie in the
/// stack's top page (with glibc, the thread control block's), which every thread touches
/// anyway: a read that small, what an idle tunnel's keepalives mostly are, costs no page of its
/// own. Few enough that the stack's own pages stay as they were for almost every depth.
class thread_memory {
public:
    static constexpr std::size_t shared_bytes = 128;

    thread_memory() noexcept = default;
    thread_memory(std::size_t stack_size, std::size_t scratch_size) noexcept {
        const std::size_t page = page_size();
        mapped_buffer mapping(round_up(page + stack_size + scratch_size + 2 * page, page));
        if (mapping.data() == nullptr || ::mprotect(mapping.data(), page, PROT_NONE) != 0) {
            return; // no memory, or no guard page below the stack
        }
        auto end = reinterpret_cast<std::uintptr_t>(mapping.data()) + mapping.size();
        std::uintptr_t scratch = (end - scratch_size) / page * page - shared_bytes;
        scratch_ = reinterpret_cast<std::uint8_t*>(scratch);
        scratch_size_ = scratch_size;
        stack_ = mapping.data() + page;
        mapping_ = std::move(mapping);
    }

    explicit operator bool() const noexcept { return mapping_.data() != nullptr; }
    void* stack() const noexcept { return stack_; }
    std::size_t stack_size() const noexcept { return static_cast<std::size_t>(scratch_ - stack_); }
    std::uint8_t* scratch() const noexcept { return scratch_; }
    std::size_t scratch_size() const noexcept { return scratch_size_; }

    /// The stack size new threads get by default.
    static std::size_t default_stack_size() noexcept {
        std::size_t size = 0;
        pthread_attr_t attr;
        if (pthread_attr_init(&attr) == 0) {
            pthread_attr_getstacksize(&attr, &size);
            pthread_attr_destroy(&attr);
        }
        return size != 0 ? size : std::size_t{8} << 20;
    }

private:
    static std::size_t page_size() noexcept {
        long page = ::sysconf(_SC_PAGESIZE);
        return page > 0 ? static_cast<std::size_t>(page) : 4096;
    }
    static std::size_t round_up(std::size_t n, std::size_t to) noexcept {
        return (n + to - 1) / to * to;
    }

    mapped_buffer mapping_; // guard page, stack, scratch buffer
    std::uint8_t* stack_ = nullptr;
    std::uint8_t* scratch_ = nullptr;
    std::size_t scratch_size_ = 0;
};

/// The threads of one thread_policy run: a thread per session in flight, plus threads that
/// finished one and wait a while for the next client (handed over through `waiting_`).
template <class Server>
class thread_crew {
public:
    thread_crew(Server& server, std::chrono::milliseconds keep_idle, std::size_t stack_size)
        : server_(server), keep_idle_(keep_idle),
          stack_size_(std::max<std::size_t>(
              stack_size != 0 ? stack_size : thread_memory::default_stack_size(),
              std::max<std::size_t>(static_cast<std::size_t>(PTHREAD_STACK_MIN),
                                    TINYPROXY_SANITIZER_MIN_STACK))),
          scratch_size_(std::max<std::size_t>(server.limits().buffer_size, 1)) {}
    thread_crew(const thread_crew&) = delete;
    thread_crew& operator=(const thread_crew&) = delete;

    /// Serves `client` on an idle thread if one waits, else on a new one.
    void dispatch(accepted_client client);
    /// Joins threads that have ended (from the accepting thread only).
    void join_ended();
    /// Wakes every idle thread to end, and joins them all; sessions end by the stop signal.
    void stop_and_join();

private:
    struct worker;
    using thread_list = std::list<worker>;
    /// One thread: its memory, and the client it serves next. The thread reads only its own
    /// worker; the accepting thread erases it once it has joined the thread.
    struct worker {
        thread_crew* crew = nullptr;
        typename thread_list::iterator self;
        thread_memory memory;
        accepted_client first;
        pthread_t id{};
    };

    static void* entry(void* w) {
        auto* self = static_cast<worker*>(w);
        self->crew->work(*self);
        return nullptr;
    }
    void work(worker& self);
    /// Waits up to keep_idle_ for a client handed over, into `self.first`; false (and the
    /// thread's end recorded) if none came.
    [[gnu::noinline]] bool next_client(worker& self);

    Server& server_;
    const std::chrono::milliseconds keep_idle_;
    const std::size_t stack_size_;
    const std::size_t scratch_size_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<accepted_client> waiting_; // clients handed to idle threads, not yet taken
    std::size_t idle_ = 0;                // threads waiting for a client
    bool stopping_ = false;
    thread_list threads_; // the accepting thread's: every thread started
    std::vector<typename thread_list::iterator> ended_; // threads done, to join (under mutex_)
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
    bool started = false;
    try {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            ended_.reserve(threads_.size() + 1); // so that a thread can always report its end
        }
        self = threads_.emplace(threads_.end());
        self->crew = this;
        self->self = self;
        self->memory = thread_memory(stack_size_, scratch_size_);
        self->first = std::move(client);
        pthread_attr_t attr;
        if (self->memory && pthread_attr_init(&attr) == 0) {
            started = pthread_attr_setstack(&attr, self->memory.stack(),
                                            self->memory.stack_size()) == 0 &&
                      pthread_create(&self->id, &attr, &thread_crew::entry, &*self) == 0;
            pthread_attr_destroy(&attr);
        }
    } catch (...) {
    }
    if (!started) {
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
void thread_crew<Server>::work(worker& self) {
    // Lean on purpose: this frame sits under every session the thread serves; the waiting
    // between sessions has a frame of its own.
    do {
        server_.serve(std::move(self.first), self.memory.scratch(), self.memory.scratch_size());
    } while (next_client(self)); // after a stop, serve() closes the client at once
}

template <class Server>
bool thread_crew<Server>::next_client(worker& self) {
    std::unique_lock<std::mutex> lock(mutex_);
    ++idle_;
    bool handed =
        wake_.wait_for(lock, keep_idle_, [this] { return stopping_ || !waiting_.empty(); });
    --idle_;
    if (!handed || waiting_.empty()) {
        // Waited long enough, or stopping with nothing left to serve: this thread ends.
        ended_.push_back(self.self); // capacity reserved when the thread was made
        return false;
    }
    self.first = std::move(waiting_.front());
    waiting_.pop_front();
    return true;
}

template <class Server>
void thread_crew<Server>::join_ended() {
    std::vector<typename thread_list::iterator> ended;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        ended.swap(ended_);
        ended_.reserve(threads_.size());
    }
    for (auto it : ended) {
        pthread_join(it->id, nullptr);
        threads_.erase(it); // and with it the thread's stack
    }
}

template <class Server>
void thread_crew<Server>::stop_and_join() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    for (worker& w : threads_) {
        pthread_join(w.id, nullptr);
    }
    threads_.clear();
    ended_.clear();
}

} // namespace detail

template <class Server>
void thread_policy::run(Server& server) {
    detail::thread_crew<Server> crew(server, keep_idle_thread, stack_size);
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
