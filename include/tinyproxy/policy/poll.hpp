// poll_policy: one thread, one event loop over non-blocking sockets (epoll or poll(2)).
#pragma once

#include <algorithm>          // std::min, the timer heap
#include <chrono>             // back-off
#include <condition_variable> // the resolver's queue
#include <cstddef>            // std::ptrdiff_t
#include <cstdint>            // session ids
#include <deque>              // resolver requests
#include <memory>             // sessions, resolver
#include <mutex>              // the resolver's queue
#include <system_error>       // std::error_code
#include <thread>             // the resolver's thread
#include <utility>            // std::move
#include <vector>             // sessions, timers

#include <cerrno> // EMFILE
#include <poll.h> // poll

#include "tinyproxy/config.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/poller.hpp"
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
/// others. A bulk transfer that shares the loop is served one read's worth at a time, after the
/// other tunnels, and between two bulk ones the loop looks (without blocking) for who else is
/// ready: a small exchange waits for one read and its write, not for a turn of bulk transfers.
/// A tunnel that has the loop to itself reads as much per call as on a thread of its own.
/// Pick it for many concurrent clients, or whenever in doubt; it is the default.
///
/// `Poller` waits for readiness: `epoll_poller` (Linux) or `poll_poller` (everywhere); see
/// poller.hpp. `poll_policy` picks the best one the platform has.
///
/// Of the Server it makes the event loop's calls (the policy interface: server.hpp), and
/// request_stop() when one of several loops fails, to end the others.
/// run() throws std::system_error when the loop cannot start (no descriptor for epoll).
template <class Poller>
class basic_poll_policy {
public:
    /// How long the listener rests after accept fails for lack of descriptors or memory.
    std::chrono::milliseconds accept_backoff{100};
    /// The most clients accepted in one turn of the loop, so a connection storm cannot starve
    /// established tunnels.
    int accepts_per_turn = 64;
    /// Event loops, each on its own thread, all accepting from the one listener: a session
    /// stays on the loop that accepted it. 1 (the default) is the single-threaded loop the
    /// rest of this comment describes; more use more cores, for many streams at once.
    unsigned loops = 1;

    template <class Server>
    void run(Server& server);

private:
    // Made with the policy, so a proxy's descriptors are all open before it runs.
    Poller poller_;
};

#if TINYPROXY_HAS_EPOLL
using poll_policy = basic_poll_policy<epoll_poller>;
#else
using poll_policy = basic_poll_policy<poll_poller>;
#endif
/// The event loop on poll(2), on every platform: the portable path, kept built and tested.
using portable_poll_policy = basic_poll_policy<poll_poller>;

namespace detail {

/// The state of one run of the event loop. Sessions live in numbered slots; a descriptor's
/// token names its slot, the slot's generation (so an event for a session that has ended is
/// recognised and dropped) and which of its two sockets it is.
template <class Server, class Poller>
class event_loop {
public:
    event_loop(Server& server, Poller& poller, std::chrono::milliseconds accept_backoff,
               int accepts_per_turn)
        : server_(server), poller_(poller), accept_backoff_(accept_backoff),
          accepts_per_turn_(accepts_per_turn < 1 ? 1 : accepts_per_turn),
          scratch_(std::max<std::size_t>(server.limits().buffer_size, 1)) {}
    event_loop(const event_loop&) = delete;
    event_loop& operator=(const event_loop&) = delete;

    /// Watches the stop signal and the listener; throws std::system_error if it cannot.
    void start();
    /// Serves until the stop signal, then ends every session still open.
    void run();

private:
    using session_type = typename Server::session_type;

    struct entry {
        session_type session;
        bool resolving = false;
        poller_slot client{};
        poller_slot upstream{};
        short client_revents = 0; // gathered over one wait
        short upstream_revents = 0;
        bool touched = false;                    // in touched_ or saturated_, not yet served
        std::uint32_t served_in = ~0u;           // the last turn that served it
        time_point timer_at = time_point::max(); // the live timer's time, max for none
    };
    struct timer {
        time_point when;
        std::uint32_t slot;
        std::uint32_t generation;
        bool operator<(const timer& other) const noexcept { return when > other.when; }
    };

    static constexpr std::uint64_t stop_token = ~std::uint64_t{0};
    static constexpr std::uint64_t listener_token = stop_token - 1;
    static constexpr std::uint64_t resolver_token = stop_token - 2;
    std::uint64_t token(std::uint32_t slot, int side) const noexcept {
        return (std::uint64_t{slot} << 32) | (std::uint64_t{generations_[slot]} << 1) |
               static_cast<std::uint64_t>(side);
    }
    entry* find(std::uint64_t token) noexcept {
        auto slot = static_cast<std::uint32_t>(token >> 32);
        auto generation = static_cast<std::uint32_t>(token & 0xffffffffu) >> 1;
        return find(slot, generation);
    }
    entry* find(std::uint32_t slot, std::uint32_t generation) noexcept {
        if (slot >= entries_.size() || !entries_[slot] || generations_[slot] != generation) {
            return nullptr;
        }
        return entries_[slot].get();
    }

    bool wait_and_dispatch();
    /// Files one reported event; false for the stop signal.
    bool note(const ready_event& event);
    /// Between two bulk tunnels: who else is ready now (a wait that does not block).
    void peek_between(time_point now);
    void serve_touched(time_point now);
    void serve(std::uint32_t slot, time_point now, int rounds);
    void take_resolved(time_point now);
    void expire_timers(time_point now);
    void accept_clients(time_point now);
    /// After the session acted: its new interest to the poller, or its end. `client_heard`:
    /// this turn reported something on a client whose upstream was connecting.
    void settle(std::uint32_t slot, time_point now, bool client_heard = false);
    void end(std::uint32_t slot) noexcept;
    void arm_timer(std::uint32_t slot, entry& e);
    void watch_listener(bool on) noexcept;
    time_point next_wake() const noexcept;

    Server& server_;
    Poller& poller_;
    const std::chrono::milliseconds accept_backoff_;
    const int accepts_per_turn_;
    std::vector<std::uint8_t> scratch_;
    background_resolver resolver_;
    poller_slot stop_slot_{};
    poller_slot listener_slot_{};
    poller_slot resolver_slot_{};
    time_point listener_resting_until_ = time_point::min();

    std::vector<std::unique_ptr<entry>> entries_; // by slot; empty when free
    std::vector<std::uint32_t> generations_;      // by slot; bumped when a session ends
    std::vector<std::uint32_t> free_slots_;
    std::vector<timer> timers_; // a min-heap, with stale entries
    std::vector<ready_event> ready_;
    std::vector<std::uint32_t> touched_;   // sessions to serve this turn, in the order heard
    std::vector<std::uint32_t> saturated_; // ... of those, bulk ones: served after the rest
    std::uint32_t turn_ = 0;
    std::size_t served_this_turn_ = 0;
    std::size_t served_last_turn_ = 0;
    bool accept_ready_ = false;
    bool resolver_ready_ = false;
};

template <class Server, class Poller>
void event_loop<Server, Poller>::start() {
    std::error_code ec;
    if (!poller_.update(stop_slot_, server_.stop_fd(), POLLIN, 0, stop_token, ec)) {
        // No epoll descriptor (descriptors ran out when the policy was made), or no memory.
        throw std::system_error(ec, "tinyproxy: the event loop cannot start");
    }
    watch_listener(true);
}

template <class Server, class Poller>
void event_loop<Server, Poller>::run() {
    while (wait_and_dispatch()) {
        time_point now = steady_clock::now();
        // Sessions first, then name lookups, deadlines and new clients.
        serve_touched(now);
        if (resolver_ready_) {
            take_resolved(now);
        }
        expire_timers(now);
        if (listener_slot_.fd < 0 && now >= listener_resting_until_) {
            watch_listener(true);
        }
        if (accept_ready_) {
            accept_clients(now);
        }
    }
    for (std::uint32_t slot = 0; slot < entries_.size(); ++slot) {
        if (entries_[slot]) {
            entries_[slot]->session.abort(make_error_code(errc::stopped));
            end(slot);
        }
    }
    // The poller outlives this loop: leave nothing in it that points here.
    std::error_code ignored;
    for (poller_slot* slot : {&stop_slot_, &listener_slot_, &resolver_slot_}) {
        poller_.update(*slot, -1, 0, 0, 0, ignored);
    }
}

template <class Server, class Poller>
bool event_loop<Server, Poller>::wait_and_dispatch() {
    ready_.clear();
    accept_ready_ = false;
    resolver_ready_ = false;
    std::error_code ec;
    poller_.wait(next_wake(), ready_, ec);
    if (ec) {
        return false; // only a programming error (or no memory for the ready list) gets here
    }
    for (const ready_event& event : ready_) {
        if (!note(event)) {
            return false;
        }
    }
    return true;
}

template <class Server, class Poller>
bool event_loop<Server, Poller>::note(const ready_event& event) {
    if (event.token == stop_token) {
        return false;
    }
    if (event.token == listener_token) {
        accept_ready_ = true;
    } else if (event.token == resolver_token) {
        resolver_ready_ = true;
    } else if (entry* e = find(event.token)) {
        auto slot = static_cast<std::uint32_t>(event.token >> 32);
        bool bulk = e->session.saturated();
        if (!e->touched && bulk && e->served_in == turn_) {
            return true; // it had its share of this turn; readiness is level-triggered
        }
        ((event.token & 1) == 0 ? e->client_revents : e->upstream_revents) |= event.revents;
        if (!e->touched) {
            e->touched = true;
            // Cannot throw: each holds a session at most once, and has room for all of them.
            (bulk ? saturated_ : touched_).push_back(slot);
        }
    }
    return true;
}

template <class Server, class Poller>
void event_loop<Server, Poller>::peek_between(time_point now) {
    ready_.clear();
    std::error_code ec;
    poller_.wait(now, ready_, ec); // a time already here: it does not block
    for (const ready_event& event : ready_) {
        // The stop signal stays readable: the next wait reports it again, and stops the loop.
        (void)note(event);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::serve_touched(time_point now) {
    // Request/response and handshaking sessions first, then bulk transfers (those whose last
    // call moved all a call may). After each bulk one, a wait that does not block hears who
    // else is ready: a small exchange waits behind one bulk pump, not behind a turn of them.
    std::size_t next = 0;
    std::size_t next_bulk = 0;
    while (next < touched_.size() || next_bulk < saturated_.size()) {
        bool bulk = next == touched_.size();
        std::uint32_t slot = bulk ? saturated_[next_bulk++] : touched_[next++];
        // A tunnel that has the loop to itself (nothing else served this turn or the last,
        // nobody else waiting) reads as much as it would on a thread of its own; one that
        // shares it, one read's worth per call.
        bool alone = served_this_turn_ == 0 && served_last_turn_ <= 1 && next == touched_.size() &&
                     next_bulk == saturated_.size();
        serve(slot, now, alone ? relay::max_rounds : relay::shared_rounds);
        if (bulk && next_bulk < saturated_.size()) {
            // Those served leave the queues, so a session heard again joins them once more.
            touched_.clear();
            next = 0;
            saturated_.erase(saturated_.begin(),
                             saturated_.begin() + static_cast<std::ptrdiff_t>(next_bulk));
            next_bulk = 0;
            now = steady_clock::now();
            peek_between(now);
        }
    }
    touched_.clear();
    saturated_.clear();
    ++turn_; // the sessions served in this turn are heard again in the next
    served_last_turn_ = served_this_turn_;
    served_this_turn_ = 0;
}

template <class Server, class Poller>
void event_loop<Server, Poller>::serve(std::uint32_t slot, time_point now, int rounds) {
    entry& e = *entries_[slot]; // nothing ends a session between dispatch and here
    short client_revents = e.client_revents;
    short upstream_revents = e.upstream_revents;
    e.client_revents = 0;
    e.upstream_revents = 0;
    e.touched = false;
    e.served_in = turn_;
    ++served_this_turn_;
    // Heard from a client whose upstream was connecting: it may have to leave the set.
    bool client_heard = client_revents != 0 && e.session.connecting();
    e.session.on_ready(client_revents, upstream_revents, now, scratch_.data(), scratch_.size(),
                       rounds);
    settle(slot, now, client_heard);
}

template <class Server, class Poller>
void event_loop<Server, Poller>::take_resolved(time_point now) {
    for (auto& answer : resolver_.take()) {
        entry* e = find(answer.id);
        if (e != nullptr && e->resolving) {
            e->resolving = false;
            e->session.on_resolved(std::move(answer.candidates), answer.error, now);
            settle(static_cast<std::uint32_t>(answer.id >> 32), now);
        }
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::expire_timers(time_point now) {
    while (!timers_.empty() && timers_.front().when <= now) {
        std::pop_heap(timers_.begin(), timers_.end());
        timer due = timers_.back();
        timers_.pop_back();
        entry* e = find(due.slot, due.generation);
        if (e == nullptr || e->timer_at != due.when) {
            continue; // the session ended, or this timer was replaced by an earlier one
        }
        e->timer_at = time_point::max();
        if (now >= e->session.deadline()) {
            e->session.on_deadline(now);
        }
        settle(due.slot, now); // re-arms for the deadline as it is now
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::accept_clients(time_point now) {
    for (int n = 0; n < accepts_per_turn_; ++n) {
        accepted_client client;
        std::error_code ec;
        if (server_.try_accept(client, ec) != accept_status::client) {
            if (ec == std::errc::too_many_files_open ||
                ec == std::errc::too_many_files_open_in_system ||
                ec == std::errc::no_buffer_space || ec == std::errc::not_enough_memory) {
                // Out of descriptors: the pending client stays queued, and a watched listener
                // would report it again at once. Rest instead of spinning.
                listener_resting_until_ = now + accept_backoff_;
                watch_listener(false);
            }
            return;
        }
        std::uint32_t slot = 0;
        try {
            auto e = std::make_unique<entry>(entry{server_.make_session(std::move(client))});
            if (free_slots_.empty()) {
                // Room first, so that nothing below (nor end(), nor a dispatch) can throw.
                std::size_t slots = entries_.size() + 1;
                entries_.reserve(slots);
                generations_.reserve(slots);
                free_slots_.reserve(slots);
                touched_.reserve(slots);
                saturated_.reserve(slots);
                generations_.push_back(0);
                free_slots_.push_back(static_cast<std::uint32_t>(entries_.size()));
                entries_.emplace_back();
            }
            slot = free_slots_.back();
            free_slots_.pop_back();
            entries_[slot] = std::move(e);
        } catch (...) {
            continue; // no memory for this client: it is closed, the loop goes on
        }
        session_type& session = entries_[slot]->session;
        session.start(now);
        if (!session.done() && (session.client_events() & POLLIN) != 0) {
            // A client that speaks first (SOCKS, HTTP CONNECT, a PROXY header) has usually
            // sent by the time it is accepted: read now rather than after one more wait.
            session.on_ready(POLLIN, 0, now, scratch_.data(), scratch_.size(),
                             relay::shared_rounds);
        }
        settle(slot, now);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::settle(std::uint32_t slot, time_point now, bool client_heard) {
    entry& e = *entries_[slot];
    session_type& s = e.session;
    if (s.wants_resolve() && !e.resolving) {
        e.resolving = true;
        bool queued = false;
        try {
            queued = resolver_.submit(token(slot, 0), s.resolve_target());
        } catch (...) {
        }
        if (!queued) {
            s.on_resolved({}, std::make_error_code(std::errc::resource_unavailable_try_again), now);
        } else if (resolver_slot_.fd < 0) {
            std::error_code ec;
            poller_.update(resolver_slot_, resolver_.notify_fd(), POLLIN, 0, resolver_token, ec);
        }
    }
    if (!s.done()) {
        std::error_code ec;
        int client = s.watch_client() ? s.client_fd() : -1;
        short client_events = s.client_events();
        bool connecting = s.connecting();
        if (client < 0 && connecting && !client_heard && e.client.fd == s.client_fd()) {
            // Unwatched while its upstream connects, and watched again right after: a quiet
            // client stays in the set as it was, which saves removing and adding it back. One
            // that speaks or hangs up meanwhile is heard here, and removed then.
            client = e.client.fd;
            client_events = e.client.events;
        }
        int upstream = s.watch_upstream() ? s.upstream_fd() : -1;
        if (!poller_.update(e.client, client, client_events, 0, token(slot, 0), ec) ||
            !poller_.update(e.upstream, upstream, s.upstream_events(), s.upstream_serial(),
                            token(slot, 1), ec)) {
            s.abort(ec); // the poller could not take it (no memory): end this session only
        }
    }
    if (s.done()) {
        end(slot);
        return;
    }
    try {
        arm_timer(slot, e);
    } catch (...) { // no memory for a timer: a session without a deadline is not allowed
        s.abort(std::make_error_code(std::errc::not_enough_memory));
        end(slot);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::arm_timer(std::uint32_t slot, entry& e) {
    time_point deadline = e.session.deadline();
    if (deadline >= e.timer_at) {
        return; // the live timer fires first and re-arms then: a moved idle deadline is free
    }
    std::size_t live = entries_.size() - free_slots_.size();
    if (timers_.size() > 2 * live + 1024) {
        // Mostly timers of ended sessions: rebuild from the live ones, so the heap stays
        // proportional to the sessions, not to the connections ever made.
        timers_.clear();
        for (std::uint32_t i = 0; i < entries_.size(); ++i) {
            if (entries_[i] && entries_[i]->timer_at != time_point::max()) {
                timers_.push_back({entries_[i]->timer_at, i, generations_[i]});
            }
        }
        std::make_heap(timers_.begin(), timers_.end());
    }
    timers_.push_back({deadline, slot, generations_[slot]});
    std::push_heap(timers_.begin(), timers_.end());
    e.timer_at = deadline;
}

template <class Server, class Poller>
void event_loop<Server, Poller>::end(std::uint32_t slot) noexcept {
    entry& e = *entries_[slot];
    // A session ends with its sockets closed; the poller only forgets them.
    poller_.forget(e.client);
    poller_.forget(e.upstream);
    server_.session_ended(e.session.result());
    entries_[slot].reset();
    ++generations_[slot];
    generations_[slot] &= 0x7fffffffu; // 31 bits in a token
    free_slots_.push_back(slot);       // cannot throw: its capacity grows with entries_
}

template <class Server, class Poller>
void event_loop<Server, Poller>::watch_listener(bool on) noexcept {
    std::error_code ec;
    // Shared: with several loops, a new client wakes one of them, not all (and the rest would
    // only find nothing to accept).
    if (!(on ? poller_.watch_shared(listener_slot_, server_.listener_fd(), listener_token, ec)
             : poller_.update(listener_slot_, -1, 0, 0, listener_token, ec))) {
        listener_resting_until_ = steady_clock::now() + accept_backoff_; // try again later
    }
}

template <class Server, class Poller>
time_point event_loop<Server, Poller>::next_wake() const noexcept {
    time_point wake = timers_.empty() ? time_point::max() : timers_.front().when;
    if (listener_slot_.fd < 0) {
        wake = std::min(wake, listener_resting_until_);
    }
    return wake;
}

} // namespace detail

template <class Poller>
template <class Server>
void basic_poll_policy<Poller>::run(Server& server) {
    using loop_type = detail::event_loop<Server, Poller>;
    // This thread's loop is made and started first: if it cannot be, nothing else was begun.
    auto main_loop = std::make_unique<loop_type>(server, poller_, accept_backoff, accepts_per_turn);
    main_loop->start();
    std::vector<Poller> more_pollers;
    std::vector<std::thread> more_loops;
    try {
        for (unsigned n = 1; n < loops; ++n) {
            more_pollers.emplace_back();
        }
        more_loops.reserve(more_pollers.size());
        for (Poller& poller : more_pollers) {
            more_loops.emplace_back([this, &server, &poller] {
                try {
                    loop_type loop(server, poller, accept_backoff, accepts_per_turn);
                    loop.start();
                    loop.run();
                } catch (...) { // this loop could not start: the others serve on
                }
            });
        }
    } catch (...) {
        // No memory or no thread for another loop: serve with the loops there are.
    }
    try {
        main_loop->run();
    } catch (...) {
        server.request_stop(); // (only no memory gets here) end the other loops too
        for (std::thread& loop : more_loops) {
            loop.join();
        }
        throw;
    }
    for (std::thread& loop : more_loops) {
        loop.join(); // every loop sees the same stop signal
    }
    for (Poller& poller : more_pollers) {
        poller.close();
    }
    poller_.close(); // a proxy runs once, and leaves no descriptor open when run() returns
}

} // namespace tinyproxy
