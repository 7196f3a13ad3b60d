// SPDX-License-Identifier: MIT
// The event loop's name lookups, on a helper thread so that DNS never stalls the loop.
#pragma once

#include <condition_variable> // the request queue
#include <cstdint>            // request ids
#include <deque>              // requests
#include <mutex>              // the request queue
#include <system_error>       // std::error_code
#include <thread>             // the helper thread
#include <utility>            // std::move
#include <vector>             // answers, candidates

#include <unistd.h> // read, write

#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"

namespace tinyproxy {
namespace detail {

/// Resolves host names on a helper thread so that a slow or dead DNS server never stalls the
/// event loop. Results come back through `take()`; `notify_fd()` turns readable when there are
/// some. The thread starts with the first request; the destructor joins it (waiting for at most
/// the one getaddrinfo call in progress).
class background_resolver {
public:
    struct answer {
        std::uint64_t id;
        std::vector<endpoint> candidates;
        std::error_code error;
    };

    background_resolver() = default;
    background_resolver(const background_resolver&) = delete;
    background_resolver& operator=(const background_resolver&) = delete;
    ~background_resolver();

    /// Queues a lookup; false when the helper thread or its pipe cannot be made.
    bool submit(std::uint64_t id, host_port target);
    /// -1 until the first request.
    int notify_fd() const noexcept { return notify_read_.get(); }
    /// The answers so far, each once.
    std::vector<answer> take();

private:
    struct request {
        std::uint64_t id;
        host_port target;
    };

    bool start_worker();
    void work();

    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<request> requests_;
    std::vector<answer> answers_;
    bool stopping_ = false;
    unique_fd notify_read_;
    unique_fd notify_write_;
    std::thread worker_;
};

inline background_resolver::~background_resolver() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (worker_.joinable()) {
        worker_.join();
    }
}

inline bool background_resolver::submit(std::uint64_t id, host_port target) {
    if (!worker_.joinable() && !start_worker()) {
        return false;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    requests_.push_back({id, std::move(target)});
    wake_.notify_one();
    return true;
}

inline std::vector<background_resolver::answer> background_resolver::take() {
    char drain[64];
    while (::read(notify_read_.get(), drain, sizeof drain) > 0) {
    }
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<answer> out;
    out.swap(answers_);
    return out;
}

inline bool background_resolver::start_worker() {
    std::error_code ec;
    int fds[2] = {-1, -1};
    if (!make_pipe(fds, ec)) {
        return false;
    }
    notify_read_.reset(fds[0]);
    notify_write_.reset(fds[1]);
    set_nonblocking(fds[0], true, ec);
    set_nonblocking(fds[1], true, ec);
    try {
        worker_ = std::thread([this] { work(); });
    } catch (...) {
        return false;
    }
    return true;
}

inline void background_resolver::work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
        wake_.wait(lock, [this] { return stopping_ || !requests_.empty(); });
        if (stopping_) {
            return;
        }
        request next = std::move(requests_.front());
        requests_.pop_front();
        lock.unlock();
        answer result{next.id, {}, {}};
        result.candidates = resolve(next.target, result.error);
        lock.lock();
        answers_.push_back(std::move(result));
        char one = 1;
        (void)!::write(notify_write_.get(), &one, 1); // a full pipe already says "ready"
    }
}

} // namespace detail
} // namespace tinyproxy
