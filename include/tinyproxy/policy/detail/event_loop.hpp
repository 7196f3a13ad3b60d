// SPDX-License-Identifier: MIT
// One run of poll_policy's event loop: who is served, in what order, and with how many reads.
#pragma once

#include <algorithm>    // std::max, std::min
#include <chrono>       // the accept back-off
#include <cstddef>      // std::size_t, std::ptrdiff_t
#include <cstdint>      // tokens, turns
#include <memory>       // std::unique_ptr
#include <system_error> // std::error_code, std::system_error
#include <utility>      // std::move
#include <vector>       // the ready list, the queues, the scratch buffer

#include <poll.h> // POLLIN

#include "tinyproxy/error.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/poller.hpp"
#include "tinyproxy/relay.hpp"
#include "tinyproxy/session.hpp"
#include "tinyproxy/policy/detail/resolver.hpp"
#include "tinyproxy/policy/detail/slots.hpp"
#include "tinyproxy/policy/detail/timers.hpp"

namespace tinyproxy {
namespace detail {

/// The state of one run of the event loop, and its scheduling. Each turn waits for readiness,
/// files every session heard in a queue, serves the queues, then takes name lookups, deadlines
/// and new clients. Sessions live in a slot_table; the poller's tokens are its tokens, so an
/// event for a session that has ended is recognised and dropped.
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
        bool touched = false;          // in touched_ or saturated_, not yet served
        std::uint32_t served_in = ~0u; // the last turn that served it
    };

    // Above every session's token (slot_table never uses the last slot).
    static constexpr std::uint64_t stop_token = ~std::uint64_t{0};
    static constexpr std::uint64_t listener_token = stop_token - 1;
    static constexpr std::uint64_t resolver_token = stop_token - 2;

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
    /// A client just accepted: its session, in a slot, started.
    void admit(accepted_client client, time_point now);
    /// After the session acted: its new interest to the poller, or its end. `client_heard`:
    /// this turn reported something on a client whose upstream was connecting.
    void settle(std::uint32_t slot, time_point now, bool client_heard = false);
    void request_resolve(std::uint32_t slot, entry& e, time_point now);
    void update_interest(std::uint32_t slot, entry& e, bool client_heard);
    void end(std::uint32_t slot) noexcept;
    void end_all();
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

    slot_table<entry> slots_;
    timer_heap timers_; // one per session slot, at the session's deadline
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
    end_all();
}

template <class Server, class Poller>
void event_loop<Server, Poller>::end_all() {
    for (std::uint32_t slot = 0; slot < slots_.size(); ++slot) {
        if (entry* e = slots_.at(slot)) {
            e->session.abort(make_error_code(errc::stopped));
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
    } else if (entry* e = slots_.find(event.token)) {
        std::uint32_t slot = slots_.slot_of(event.token);
        bool bulk = e->session.saturated();
        if (!e->touched && bulk && e->served_in == turn_) {
            return true; // it had its share of this turn; readiness is level-triggered
        }
        bool client = slots_.side_of(event.token) == client_side;
        (client ? e->client_revents : e->upstream_revents) |= event.revents;
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
    entry& e = *slots_.at(slot); // nothing ends a session between dispatch and here
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
        entry* e = slots_.find(answer.id);
        if (e != nullptr && e->resolving) {
            e->resolving = false;
            e->session.on_resolved(std::move(answer.candidates), answer.error, now);
            settle(slots_.slot_of(answer.id), now);
        }
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::expire_timers(time_point now) {
    timer_heap::timer due{};
    while (timers_.pop_due(now, due)) {
        entry* e = slots_.find(due.slot, due.generation);
        if (e == nullptr) {
            continue; // cannot happen (a session's end disarms its timer), but costs nothing
        }
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
        admit(std::move(client), now);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::admit(accepted_client client, time_point now) {
    std::uint32_t slot = 0;
    try {
        auto e = std::make_unique<entry>(entry{server_.make_session(std::move(client))});
        // Room first, so that nothing below (nor end(), nor a dispatch) can throw.
        touched_.reserve(slots_.size_after_add());
        saturated_.reserve(slots_.size_after_add());
        slot = slots_.add(std::move(e));
    } catch (...) {
        return; // no memory for this client: it is closed, the loop goes on
    }
    session_type& session = slots_.at(slot)->session;
    session.start(now);
    if (!session.done() && (session.client_events() & POLLIN) != 0 &&
        !detail::client_read_dry(session)) {
        // A client that speaks first (SOCKS, HTTP CONNECT, a PROXY header) has usually
        // sent by the time it is accepted: read now rather than after one more wait. One that
        // start() read already (a forwarded client's first bytes, sent as the connect's
        // probe) has nothing more yet.
        session.on_ready(POLLIN, 0, now, scratch_.data(), scratch_.size(), relay::shared_rounds);
    }
    settle(slot, now);
}

template <class Server, class Poller>
void event_loop<Server, Poller>::settle(std::uint32_t slot, time_point now, bool client_heard) {
    entry& e = *slots_.at(slot);
    session_type& s = e.session;
    if (s.wants_resolve() && !e.resolving) {
        request_resolve(slot, e, now);
    }
    if (!s.done()) {
        update_interest(slot, e, client_heard);
    }
    if (s.done()) {
        end(slot);
        return;
    }
    try {
        timers_.arm(slot, slots_.generation(slot), s.deadline());
    } catch (...) { // no memory for a timer: a session without a deadline is not allowed
        s.abort(std::make_error_code(std::errc::not_enough_memory));
        end(slot);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::request_resolve(std::uint32_t slot, entry& e, time_point now) {
    session_type& s = e.session;
    e.resolving = true;
    bool queued = false;
    try {
        queued = resolver_.submit(slots_.token(slot, client_side), s.resolve_target());
    } catch (...) {
    }
    if (!queued) {
        s.on_resolved({}, std::make_error_code(std::errc::resource_unavailable_try_again), now);
    } else if (resolver_slot_.fd < 0) {
        std::error_code ec;
        poller_.update(resolver_slot_, resolver_.notify_fd(), POLLIN, 0, resolver_token, ec);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::update_interest(std::uint32_t slot, entry& e, bool client_heard) {
    session_type& s = e.session;
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
    if (!poller_.update(e.client, client, client_events, 0, slots_.token(slot, client_side), ec) ||
        !poller_.update(e.upstream, upstream, s.upstream_events(), s.upstream_serial(),
                        slots_.token(slot, upstream_side), ec)) {
        s.abort(ec); // the poller could not take it (no memory): end this session only
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::end(std::uint32_t slot) noexcept {
    entry& e = *slots_.at(slot);
    // A session ends with its sockets closed; the poller only forgets them.
    poller_.forget(e.client);
    poller_.forget(e.upstream);
    server_.session_ended(e.session.result());
    timers_.disarm(slot);
    slots_.remove(slot);
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
    time_point wake = timers_.next();
    if (listener_slot_.fd < 0) {
        wake = std::min(wake, listener_resting_until_);
    }
    return wake;
}

} // namespace detail
} // namespace tinyproxy
