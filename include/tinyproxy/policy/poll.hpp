// poll_policy: one thread, one event loop over non-blocking sockets.
#pragma once

#include <algorithm>          // std::min
#include <chrono>             // back-off
#include <condition_variable> // the resolver's queue
#include <cstdint>            // session ids
#include <deque>              // resolver requests
#include <memory>             // sessions, resolver
#include <mutex>              // the resolver's queue
#include <system_error>       // std::error_code
#include <thread>             // the resolver's thread
#include <utility>            // std::move
#include <vector>             // pollfd set, sessions

#include <cerrno> // EMFILE
#include <poll.h> // poll

#include "tinyproxy/config.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/session.hpp"

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
    ~background_resolver() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        if (worker_.joinable()) {
            worker_.join();
        }
    }

    /// Queues a lookup; false when the helper thread or its pipe cannot be made.
    bool submit(std::uint64_t id, host_port target) {
        if (!worker_.joinable()) {
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
        }
        std::lock_guard<std::mutex> lock(mutex_);
        requests_.push_back({id, std::move(target)});
        wake_.notify_one();
        return true;
    }

    /// -1 until the first request.
    int notify_fd() const noexcept { return notify_read_.get(); }

    std::vector<answer> take() {
        char drain[64];
        while (::read(notify_read_.get(), drain, sizeof drain) > 0) {
        }
        std::lock_guard<std::mutex> lock(mutex_);
        std::vector<answer> out;
        out.swap(answers_);
        return out;
    }

private:
    struct request {
        std::uint64_t id;
        host_port target;
    };

    void work() {
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

    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<request> requests_;
    std::vector<answer> answers_;
    bool stopping_ = false;
    unique_fd notify_read_;
    unique_fd notify_write_;
    std::thread worker_;
};

} // namespace detail

/// One thread serves every client with an event loop over non-blocking sockets: the cheapest
/// per connection (no thread, no process, no buffer while a tunnel is idle), and nothing one
/// client does (sending nothing, reading nothing, an upstream that never answers) holds up the
/// others. Pick it for many concurrent clients, or whenever in doubt; it is the default.
///
/// Besides stop_fd() it calls the Server's
///     int listener_fd() const noexcept;
///     accept_status try_accept(accepted_client& out, std::error_code& ec) noexcept;
///     session_type make_session(accepted_client client);  // not yet started
///     void session_ended(const session_result& result) noexcept;
///     const session_options& limits() const noexcept;
class poll_policy {
public:
    /// How long the listener rests after accept fails for lack of descriptors or memory.
    std::chrono::milliseconds accept_backoff{100};
    /// The most clients accepted in one turn of the loop, so a connection storm cannot starve
    /// established tunnels.
    int accepts_per_turn = 64;

    template <class Server>
    void run(Server& server);

private:
    static short revents_at(const std::vector<pollfd>& fds, int slot) noexcept {
        return slot >= 0 ? fds[static_cast<std::size_t>(slot)].revents : short{0};
    }

    template <class Session>
    struct entry {
        std::uint64_t id;
        Session session;
        bool resolving;
        int client_slot;   // index into the pollfd set, or -1
        int upstream_slot; // index into the pollfd set, or -1
    };
};

template <class Server>
void poll_policy::run(Server& server) {
    using session_type = typename Server::session_type;
    using entry_type = entry<session_type>;

    std::vector<std::unique_ptr<entry_type>> sessions;
    std::vector<pollfd> fds;
    std::vector<std::uint8_t> scratch(std::max<std::size_t>(server.limits().buffer_size, 1));
    detail::background_resolver resolver;
    std::uint64_t next_id = 1;
    time_point listener_resting_until = time_point::min();

    // After every event: a session that now needs a name resolved hands it to the resolver.
    auto settle = [&](entry_type& e) {
        if (e.session.wants_resolve() && !e.resolving) {
            e.resolving = true;
            if (!resolver.submit(e.id, e.session.resolve_target())) {
                auto no_thread = std::make_error_code(std::errc::resource_unavailable_try_again);
                e.session.on_resolved({}, no_thread, steady_clock::now());
            }
        }
    };

    for (;;) {
        time_point now = steady_clock::now();
        fds.clear();
        fds.push_back({server.stop_fd(), POLLIN, 0});
        bool listening = now >= listener_resting_until;
        fds.push_back({listening ? server.listener_fd() : -1, POLLIN, 0});
        fds.push_back({resolver.notify_fd(), POLLIN, 0});
        time_point wake_at = listening ? time_point::max() : listener_resting_until;
        for (auto& e : sessions) {
            e->client_slot = -1;
            if (e->session.watch_client()) {
                e->client_slot = static_cast<int>(fds.size());
                fds.push_back({e->session.client_fd(), e->session.client_events(), 0});
            }
            e->upstream_slot = -1;
            if (e->session.watch_upstream()) {
                e->upstream_slot = static_cast<int>(fds.size());
                fds.push_back({e->session.upstream_fd(), e->session.upstream_events(), 0});
            }
            wake_at = std::min(wake_at, e->session.deadline());
        }

        std::error_code ec;
        detail::poll_fds(fds.data(), static_cast<nfds_t>(fds.size()), wake_at, ec);
        if (fds[0].revents != 0 || ec) {
            break; // stopping (or poll itself failed, which only a programming error causes)
        }
        now = steady_clock::now();

        // Sessions first, then new clients: the slots above belong to the sessions as they were.
        std::size_t existing = sessions.size();
        for (std::size_t i = 0; i < existing; ++i) {
            entry_type& e = *sessions[i];
            short client_revents = revents_at(fds, e.client_slot);
            short upstream_revents = revents_at(fds, e.upstream_slot);
            if (client_revents != 0 || upstream_revents != 0) {
                e.session.on_ready(client_revents, upstream_revents, now, scratch.data(),
                                   scratch.size());
            }
            if (!e.session.done() && now >= e.session.deadline()) {
                e.session.on_deadline(now);
            }
            settle(e);
        }

        if (fds[2].revents != 0) {
            for (auto& answer : resolver.take()) {
                for (std::size_t i = 0; i < existing; ++i) {
                    entry_type& e = *sessions[i];
                    if (e.id == answer.id && !e.session.done()) {
                        e.resolving = false;
                        e.session.on_resolved(std::move(answer.candidates), answer.error, now);
                        settle(e);
                    }
                }
            }
        }

        if (fds[1].revents != 0) {
            for (int n = 0; n < accepts_per_turn; ++n) {
                accepted_client client;
                std::error_code accept_error;
                if (server.try_accept(client, accept_error) != accept_status::client) {
                    if (accept_error == std::errc::too_many_files_open ||
                        accept_error == std::errc::too_many_files_open_in_system ||
                        accept_error == std::errc::no_buffer_space ||
                        accept_error == std::errc::not_enough_memory) {
                        // Out of descriptors: the pending client stays queued, and polling the
                        // listener would report it again at once. Rest instead of spinning.
                        listener_resting_until = now + accept_backoff;
                    }
                    break;
                }
                auto e = std::make_unique<entry_type>(
                    entry_type{next_id++, server.make_session(std::move(client)), false, -1, -1});
                e->session.start(now);
                settle(*e);
                sessions.push_back(std::move(e));
            }
        }

        // Report and drop finished sessions (their sockets are already closed).
        auto finished = [&server](const std::unique_ptr<entry_type>& e) {
            if (!e->session.done()) {
                return false;
            }
            server.session_ended(e->session.result());
            return true;
        };
        sessions.erase(std::remove_if(sessions.begin(), sessions.end(), finished), sessions.end());
    }

    for (auto& e : sessions) {
        e->session.abort(make_error_code(errc::stopped));
        server.session_ended(e->session.result());
    }
}

} // namespace tinyproxy
