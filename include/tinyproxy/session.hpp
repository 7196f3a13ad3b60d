// One proxied connection as a state machine: handshake (the Mode decides where to go), resolve,
// connect with a deadline, relay; plus the loop that drives one session on a thread or process.
#pragma once

#include <chrono>       // timeouts
#include <cstddef>      // std::size_t
#include <cstdint>      // byte counters
#include <memory>       // the scratch buffer
#include <optional>     // the relay, once connected
#include <type_traits>  // detecting optional Mode session members
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // byte buffers, address lists

#include <poll.h> // pollfd

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/protocol/step.hpp"
#include "tinyproxy/relay.hpp"

namespace tinyproxy {

/// Limits every session keeps, whatever the policy.
struct session_options {
    /// From the first connect attempt to the last address giving up.
    std::chrono::milliseconds connect_timeout{10'000};
    /// From accept to the Mode deciding where the client goes.
    std::chrono::milliseconds handshake_timeout{10'000};
    /// A tunnel in which no byte moves either way for this long is closed.
    std::chrono::milliseconds idle_timeout{300'000};
    /// The most one read takes, and so the most buffered per direction (0 counts as 1).
    std::size_t buffer_size = 64 * 1024;
    /// Zero-copy relay with splice(2) on Linux, for tunnels that carry bulk data; ignored where
    /// unavailable.
    bool splice = true;
};

/// What a Mode knows about a new client.
struct session_info {
    endpoint client; ///< the client's address
    endpoint local;  ///< the address the client connected to
};

/// What a Mode's session answers at each step of its handshake (see handshake_step).
using mode_step = handshake_step;

/// A client just accepted, before its session starts.
struct accepted_client {
    socket connection;
    endpoint peer;
};

/// What the accepting side has already set on a client socket, so that the session does not
/// set it again: a system call less per client for each.
struct client_socket_setup {
    bool nonblocking = false; ///< O_NONBLOCK is on (accept4 with SOCK_NONBLOCK)
    bool nodelay = false;     ///< TCP_NODELAY is on (inherited from a listener that had it)
};

/// What waiting for the next client ended with.
enum class accept_status {
    client,  ///< a client was accepted
    timeout, ///< the wait's deadline passed first
    stopped, ///< the proxy is stopping: the policy should wind down
};

/// How a session ended.
struct session_result {
    /// How far a session got before it ended.
    enum class stage_type {
        handshake, ///< the Mode had not decided where to go
        connect,   ///< resolving or connecting upstream
        relay,     ///< the tunnel was up
    };

    std::error_code error; ///< empty when both directions finished cleanly
    std::uint64_t bytes_to_upstream = 0;
    std::uint64_t bytes_to_client = 0;
    bool connected = false; ///< an upstream connection was made
    stage_type stage = stage_type::handshake;
    endpoint client;    ///< the client, as accepted
    host_port target;   ///< where the Mode sent it (empty before it decided)
    endpoint upstream;  ///< the address connected to, once connected
    time_point started; ///< when the session started
    time_point ended;   ///< when it ended
};

/// One client's session, driven by readiness: the driver waits for `client_events()` on
/// `client_fd()`, `upstream_events()` on `upstream_fd()` and for `deadline()`, then calls
/// `on_ready()` or `on_deadline()`; when `wants_resolve()` it resolves `resolve_target()` in a
/// way that suits it and calls `on_resolved()`. It never blocks and never reads the clock.
/// A call makes at most `rounds` reads per direction; `saturated()` says it stopped there, and
/// a driver of many sessions serves the others before calling it again.
///
/// `ModeSession` is a Mode's per-client handshake object:
///     mode_step start();                             // before any byte is read
///     mode_step on_client_data(byte_view bytes);     // after need_more: the next bytes
///     std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
///                                            const endpoint& upstream); // reply to the client
/// A Mode session whose reply never names the upstream socket's own address (`local`) may say
///     static constexpr bool uses_local_endpoint = false;
/// and `local` is then left empty: one getsockname(2) less per connection.
///
/// The entry points never throw: an exception from the Mode (out of memory, or a bug) ends
/// the session with `std::errc::not_enough_memory`, so one client cannot stop an event loop.
template <class ModeSession>
class basic_session {
public:
    /// `client_setup`: what is already set on `client`; the session sets the rest (it makes
    /// the socket non-blocking in start(), and turns Nagle off once it relays).
    basic_session(socket client, ModeSession mode, const session_options& limits,
                  const endpoint& client_address = {},
                  client_socket_setup client_setup =
                      {}) noexcept(std::is_nothrow_move_constructible<ModeSession>::value)
        : client_(std::move(client)), mode_(std::move(mode)), limits_(limits),
          client_setup_(client_setup) {
        result_.client = client_address;
    }

    /// Starts the handshake; `now` begins the handshake deadline.
    void start(time_point now) noexcept;

    int client_fd() const noexcept { return client_.native_handle(); }
    /// -1 until an upstream connection is being made.
    int upstream_fd() const noexcept { return upstream_ ? upstream_.native_handle() : -1; }
    /// Changes each time a new upstream socket replaces the last (the next address is tried),
    /// so an event loop can tell it from the old one even when it got the same number.
    std::uint32_t upstream_serial() const noexcept {
        return static_cast<std::uint32_t>(next_candidate_); // one socket per address tried
    }
    short client_events() const noexcept;
    short upstream_events() const noexcept;
    /// Whether to poll a socket even when its events are 0 (to hear of a reset).
    bool watch_client() const noexcept {
        return state_ == state::relaying ? relay_->watch_client() : client_events() != 0;
    }
    bool watch_upstream() const noexcept {
        return state_ == state::relaying ? relay_->watch_upstream() : upstream_events() != 0;
    }
    time_point deadline() const noexcept { return deadline_; }

    bool wants_resolve() const noexcept { return state_ == state::resolving; }
    const host_port& resolve_target() const noexcept { return target_; }
    void on_resolved(std::vector<endpoint> candidates, std::error_code ec, time_point now) noexcept;

    /// Readiness (revents) for each socket; 0 for one that is not ready. `rounds`: the most
    /// reads per direction a relaying session makes in this call (relay::pump).
    void on_ready(short client_revents, short upstream_revents, time_point now,
                  std::uint8_t* scratch, std::size_t scratch_size,
                  int rounds = relay::max_rounds) noexcept;
    /// Call when `now` has reached `deadline()`.
    void on_deadline(time_point now) noexcept;
    /// Ends the session at once (the proxy is stopping, or the driver failed).
    void abort(std::error_code why) noexcept { finish(why); }

    bool done() const noexcept { return state_ == state::done; }
    /// The last on_ready() moved as much as one call may (relay::saturated()): a bulk transfer
    /// that has more to move. An event loop serves the other tunnels first.
    bool saturated() const noexcept { return state_ == state::relaying && relay_->saturated(); }
    const session_result& result() const noexcept { return result_; }
    const host_port& target() const noexcept { return target_; }

private:
    enum class state {
        handshaking, // reading the client until the Mode decides
        resolving,   // waiting for the driver to resolve target_
        connecting,  // a non-blocking connect to candidates_[next_candidate_ - 1] in progress
        relaying,    // tunnel up
        failing,     // sending the Mode's failure reply, then closing
        done,
    };

    void apply(mode_step step, time_point now);
    void begin_connect(time_point now);
    void try_next_candidate();
    void connect_onward(time_point now);
    /// The connect's outcome once the upstream socket reported `revents`: writable without an
    /// error or hang-up is connected, with no need to ask the socket (SO_ERROR).
    std::error_code connect_outcome(short revents) const noexcept {
        return (revents & (POLLERR | POLLHUP)) != 0
                   ? detail::connect_result(upstream_.native_handle())
                   : std::error_code{};
    }
    void on_connect_result(std::error_code ec, time_point now);
    void connected(time_point now);
    void start_relay(std::vector<std::uint8_t> reply, time_point now);
    void fail_with_reply(std::error_code why, std::vector<std::uint8_t> reply, time_point now);
    void handshake_ready(short revents, time_point now, std::uint8_t* scratch,
                         std::size_t scratch_size);
    bool send_to_client(); // writes to_client_; false on error
    void relay_ready(short client_revents, short upstream_revents, time_point now,
                     std::uint8_t* scratch, std::size_t scratch_size,
                     int rounds = relay::max_rounds);
    void finish(std::error_code why) noexcept;
    /// A Mode (or a buffer) threw in start(), on_resolved(), on_ready() or on_deadline():
    /// this session ends, and whoever drives it (an event loop of thousands) goes on.
    void ended_by_exception() noexcept {
        finish(std::make_error_code(std::errc::not_enough_memory));
    }

    socket client_;
    socket upstream_;
    ModeSession mode_;
    session_options limits_;
    client_socket_setup client_setup_;
    state state_ = state::handshaking;
    time_point deadline_ = time_point::max();
    time_point connect_deadline_ = time_point::max();
    host_port target_;
    std::vector<endpoint> candidates_;
    std::size_t next_candidate_ = 0;
    std::error_code last_connect_error_;
    std::vector<std::uint8_t> to_client_;
    std::size_t to_client_offset_ = 0;
    std::vector<std::uint8_t> to_upstream_;
    std::optional<relay> relay_;
    time_point idle_deadline_ = time_point::max(); // relaying: no byte moved since then
    bool client_awaits_reply_ = false; // the relay began with a reply and nothing for upstream
    session_result result_;
    time_point now_{}; // the latest time a driver passed in
};

/// Runs one session to its end on the calling thread, waiting with poll(2). It ends early when
/// `stop_fd` becomes readable (the proxy's stop signal; -1 for none). Names are resolved here,
/// blocking this thread only.
template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd,
                           std::size_t scratch_size);
/// The same, reading into the caller's `scratch` (`scratch_size` bytes, at least 1) instead of
/// a buffer of its own: a fork child passes one from a fresh mapping (see fork_policy).
template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd, std::uint8_t* scratch,
                           std::size_t scratch_size);

// ---------------------------------------------------------------------------------------------

template <class ModeSession>
void basic_session<ModeSession>::start(time_point now) noexcept try {
    now_ = now;
    if (!client_setup_.nonblocking) {
        std::error_code ec;
        client_.set_nonblocking(true, ec);
        if (ec) {
            finish(ec);
            return;
        }
    }
    result_.started = now;
    deadline_ = detail::deadline_after(now, limits_.handshake_timeout);
    apply(mode_.start(), now);
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
short basic_session<ModeSession>::client_events() const noexcept {
    switch (state_) {
    case state::handshaking:
        // As the relay will ask (POLLRDHUP too, where there is one): a client kept registered
        // while its upstream connects then needs no change when its tunnel starts.
        return to_client_offset_ < to_client_.size() ? POLLOUT : POLLIN | detail::peer_closed_event;
    case state::failing:
        return POLLOUT;
    case state::relaying:
        return relay_->client_events();
    default:
        return 0;
    }
}

template <class ModeSession>
short basic_session<ModeSession>::upstream_events() const noexcept {
    switch (state_) {
    case state::connecting:
        return POLLOUT;
    case state::relaying:
        return relay_->upstream_events();
    default:
        return 0;
    }
}

namespace detail {

/// A Mode session may say who the client really is (a PROXY protocol header names it) with
/// `const endpoint* client_address() const`; results and logs then name that address.
template <class ModeSession, class = void>
struct reports_client : std::false_type {};
template <class ModeSession>
struct reports_client<ModeSession,
                      std::void_t<decltype(std::declval<const ModeSession&>().client_address())>>
    : std::true_type {};

/// Whether a Mode session reads the `local` argument of on_connected() (unless it says not).
template <class ModeSession, class = void>
struct uses_local_endpoint : std::true_type {};
template <class ModeSession>
struct uses_local_endpoint<ModeSession, std::void_t<decltype(ModeSession::uses_local_endpoint)>>
    : std::bool_constant<ModeSession::uses_local_endpoint> {};

} // namespace detail

template <class ModeSession>
void basic_session<ModeSession>::apply(mode_step step, time_point now) {
    if constexpr (detail::reports_client<ModeSession>::value) {
        if (const endpoint* client = mode_.client_address()) {
            result_.client = *client;
        }
    }
    to_client_ = std::move(step.to_client);
    to_client_offset_ = 0;
    switch (step.what) {
    case mode_step::action::need_more:
        send_to_client();
        return;
    case mode_step::action::connect:
        result_.stage = session_result::stage_type::connect;
        target_ = std::move(step.target);
        result_.target = target_;
        to_upstream_ = std::move(step.to_upstream);
        begin_connect(now);
        return;
    case mode_step::action::fail:
        fail_with_reply(step.error ? step.error : make_error_code(errc::protocol_error), {}, now);
        return;
    }
}

template <class ModeSession>
void basic_session<ModeSession>::begin_connect(time_point now) {
    connect_deadline_ = detail::deadline_after(now, limits_.connect_timeout);
    deadline_ = connect_deadline_;
    if (auto numeric = target_.numeric_address()) {
        on_resolved({endpoint{*numeric, target_.port}}, {}, now);
        return;
    }
    state_ = state::resolving;
}

template <class ModeSession>
void basic_session<ModeSession>::on_resolved(std::vector<endpoint> candidates, std::error_code ec,
                                             time_point now) noexcept try {
    now_ = now;
    if (state_ != state::resolving && state_ != state::handshaking) {
        return; // ended meanwhile
    }
    candidates_ = std::move(candidates);
    next_candidate_ = 0;
    last_connect_error_ = ec ? ec : make_error_code(errc::name_not_resolved);
    state_ = state::connecting;
    connect_onward(now);
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
void basic_session<ModeSession>::try_next_candidate() {
    upstream_.close();
    while (next_candidate_ < candidates_.size()) {
        std::error_code ec;
        bool connected = false;
        socket attempt = start_connect(candidates_[next_candidate_++], connected, ec);
        if (!ec) {
            // Connected at once or in progress: either way, writability reports the outcome.
            upstream_ = std::move(attempt);
            return;
        }
        last_connect_error_ = ec;
    }
}

template <class ModeSession>
void basic_session<ModeSession>::connect_onward(time_point now) {
    // Each address in turn until one connects, one is still connecting, or none is left. On
    // loopback (and often nearby) the handshake is over by the time connect() returns: asking
    // at once, without waiting, starts the tunnel now and spares an event loop the writability
    // watch (two epoll_ctl calls) and one more wait per connection.
    for (;;) {
        try_next_candidate();
        if (!upstream_) {
            fail_with_reply(last_connect_error_,
                            mode_.on_connected(last_connect_error_, endpoint{}, endpoint{}), now);
            return;
        }
        short revents = detail::ready_now(upstream_.native_handle(), POLLOUT);
        if (revents == 0) {
            return; // still connecting: the driver waits for writability
        }
        std::error_code ec = connect_outcome(revents);
        if (!ec) {
            connected(now);
            // The Mode's reply (and any pipelined bytes) go now. Told nothing is ready, the
            // pump reads nothing, so it needs no scratch buffer: it only sends.
            relay_ready(0, 0, now, nullptr, 0);
            return;
        }
        last_connect_error_ = ec;
    }
}

template <class ModeSession>
void basic_session<ModeSession>::on_connect_result(std::error_code ec, time_point now) {
    if (!ec) {
        connected(now);
        return;
    }
    last_connect_error_ = ec;
    if (ec == errc::connect_timeout) {
        upstream_.close();
        fail_with_reply(ec, mode_.on_connected(ec, endpoint{}, endpoint{}), now);
        return;
    }
    connect_onward(now);
}

template <class ModeSession>
void basic_session<ModeSession>::connected(time_point now) {
    endpoint local;
    if constexpr (detail::uses_local_endpoint<ModeSession>::value) {
        std::error_code ignored;
        local = upstream_.local_endpoint(ignored);
    }
    endpoint remote = candidates_[next_candidate_ - 1]; // the address just connected to
    result_.upstream = remote;
    start_relay(mode_.on_connected({}, local, remote), now);
}

template <class ModeSession>
void basic_session<ModeSession>::start_relay(std::vector<std::uint8_t> reply, time_point now) {
    std::error_code ignored; // Nagle off is an optimisation; a failure changes nothing else
    if (!client_setup_.nodelay) {
        client_.set_nodelay(true, ignored);
    }
    upstream_.set_nodelay(true, ignored);
    result_.connected = true;
    result_.stage = session_result::stage_type::relay;
    relay_.emplace(client_.native_handle(), upstream_.native_handle(), limits_.splice);
    relay_->closes_at_finish(); // finish() closes both sockets at once
    bool replying = !reply.empty() || to_client_offset_ < to_client_.size();
    client_awaits_reply_ = replying && to_upstream_.empty();
    // Anything the Mode had not yet sent (to_client_ is empty by now for every mode that
    // waits for its replies to go out) precedes the connect reply.
    relay_->prime_client(
        byte_view{to_client_.data() + to_client_offset_, to_client_.size() - to_client_offset_});
    relay_->prime_client(reply);
    relay_->prime_upstream(to_upstream_);
    std::vector<std::uint8_t>().swap(to_client_);
    std::vector<std::uint8_t>().swap(to_upstream_);
    to_client_offset_ = 0;
    state_ = state::relaying;
    idle_deadline_ = detail::deadline_after(now, limits_.idle_timeout);
    deadline_ = idle_deadline_;
}

template <class ModeSession>
void basic_session<ModeSession>::fail_with_reply(std::error_code why,
                                                 std::vector<std::uint8_t> reply, time_point now) {
    result_.error = why;
    // Bytes the Mode asked for earlier and not yet sent go out first, then the reply.
    to_client_.erase(to_client_.begin(),
                     to_client_.begin() + static_cast<std::ptrdiff_t>(to_client_offset_));
    to_client_offset_ = 0;
    to_client_.insert(to_client_.end(), reply.begin(), reply.end());
    if (to_client_.empty()) {
        finish(why);
        return;
    }
    state_ = state::failing;
    // A client that will not take a few reply bytes in a second is not worth waiting for.
    deadline_ = now + std::chrono::seconds(1);
    if (send_to_client() && to_client_offset_ == to_client_.size()) {
        finish(why);
    }
}

template <class ModeSession>
bool basic_session<ModeSession>::send_to_client() {
    std::error_code ec;
    while (!ec && to_client_offset_ < to_client_.size()) {
        std::size_t n = client_.send(to_client_.data() + to_client_offset_,
                                     to_client_.size() - to_client_offset_, ec);
        if (!ec) {
            to_client_offset_ += n;
        }
    }
    if (ec && !detail::would_block(ec)) {
        finish(ec);
        return false;
    }
    return true;
}

template <class ModeSession>
void basic_session<ModeSession>::handshake_ready(short revents, time_point now,
                                                 std::uint8_t* scratch, std::size_t scratch_size) {
    if (to_client_offset_ < to_client_.size()) {
        if ((revents & (POLLOUT | POLLERR | POLLHUP)) != 0) {
            send_to_client();
        }
        return;
    }
    if ((revents & (POLLIN | POLLERR | POLLHUP)) == 0) {
        return;
    }
    std::error_code ec;
    std::size_t n = client_.receive(scratch, scratch_size, ec);
    if (ec) {
        if (!detail::would_block(ec)) {
            finish(ec);
        }
        return;
    }
    if (n == 0) {
        finish(make_error_code(errc::handshake_incomplete));
        return;
    }
    apply(mode_.on_client_data(byte_view{scratch, n}), now);
}

template <class ModeSession>
void basic_session<ModeSession>::relay_ready(short client_revents, short upstream_revents,
                                             time_point now, std::uint8_t* scratch,
                                             std::size_t scratch_size, int rounds) {
    if (relay_->pump(now, scratch, scratch_size, client_revents, upstream_revents, rounds)) {
        idle_deadline_ = detail::deadline_after(now, limits_.idle_timeout);
    }
    // The relay's stages may need a pump before the idle timeout: whichever comes first.
    const time_point wake = relay_->next_wake();
    deadline_ = wake < idle_deadline_ ? wake : idle_deadline_;
    if (!relay_->finished()) {
        return;
    }
    std::error_code error = relay_->error();
    if (error) {
        // Pass the reset on: the side that did not fail is closed with RST, not FIN.
        std::error_code ignored;
        (relay_->error_on_client() ? upstream_ : client_).set_linger_reset(ignored);
    }
    finish(error);
}

template <class ModeSession>
void basic_session<ModeSession>::on_ready(short client_revents, short upstream_revents,
                                          time_point now, std::uint8_t* scratch,
                                          std::size_t scratch_size, int rounds) noexcept try {
    now_ = now;
    switch (state_) {
    case state::handshaking:
        handshake_ready(client_revents, now, scratch, scratch_size);
        return;
    case state::connecting:
        if (upstream_revents != 0) {
            on_connect_result(connect_outcome(upstream_revents), now);
            if (state_ == state::relaying) {
                // The reply and any pipelined bytes go now. A client told nothing (forwarding)
                // may have sent while we connected, and its upstream may answer at once: both
                // are read now, not one wait later. A client still waiting for our reply
                // (SOCKS, CONNECT) has sent nothing since, and its upstream has been sent
                // nothing: reading either would only say EAGAIN.
                short unknown = client_awaits_reply_ ? 0 : relay::unknown_events;
                relay_ready(unknown, unknown, now, scratch, scratch_size, rounds);
            }
        }
        return;
    case state::relaying:
        if (client_revents != 0 || upstream_revents != 0) {
            relay_ready(client_revents, upstream_revents, now, scratch, scratch_size, rounds);
        }
        return;
    case state::failing:
        if (client_revents != 0 && send_to_client() && to_client_offset_ == to_client_.size()) {
            finish(result_.error);
        }
        return;
    default:
        return;
    }
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
void basic_session<ModeSession>::on_deadline(time_point now) noexcept try {
    now_ = now;
    if (now < deadline_) {
        return;
    }
    switch (state_) {
    case state::handshaking:
        finish(make_error_code(errc::handshake_timeout));
        return;
    case state::resolving:
    case state::connecting: {
        auto ec = make_error_code(errc::connect_timeout);
        upstream_.close();
        fail_with_reply(ec, mode_.on_connected(ec, endpoint{}, endpoint{}), now);
        return;
    }
    case state::relaying:
        if (relay_->next_wake() <= now) {
            relay_ready(0, 0, now, nullptr, 0); // a stage's time has come: no socket is ready
            return;
        }
        finish(make_error_code(errc::idle_timeout));
        return;
    default:
        finish(result_.error ? result_.error : make_error_code(errc::handshake_timeout));
        return;
    }
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
void basic_session<ModeSession>::finish(std::error_code why) noexcept {
    if (state_ == state::done) {
        return;
    }
    if (relay_) {
        result_.bytes_to_upstream = relay_->bytes_to_upstream();
        result_.bytes_to_client = relay_->bytes_to_client();
        relay_.reset(); // its pipes, if it spliced, close with the sockets
    }
    if (!result_.error) {
        result_.error = why;
    }
    state_ = state::done;
    deadline_ = time_point::max();
    result_.ended = now_;
    upstream_.close();
    client_.close();
}

template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd,
                           std::size_t scratch_size) {
    // Not zero-filled: a std::vector would write every byte, and so make a thread or process
    // that serves an idle client pay for the whole buffer in memory. Pages nobody reads into
    // are never touched.
    const std::size_t size = scratch_size == 0 ? 1 : scratch_size;
    std::unique_ptr<std::uint8_t[]> scratch(new std::uint8_t[size]);
    return run_session(session, stop_fd, scratch.get(), size);
}

template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd, std::uint8_t* scratch,
                           std::size_t size) {
    session.start(steady_clock::now());
    while (!session.done()) {
        if (session.wants_resolve()) {
            std::error_code ec;
            auto candidates = resolve(session.resolve_target(), ec);
            session.on_resolved(std::move(candidates), ec, steady_clock::now());
            continue;
        }
        // A descriptor the session does not watch is left out: poll would still report its
        // hang-up, over and over, while we do not want to read it yet.
        pollfd fds[3] = {
            {stop_fd, POLLIN, 0},
            {session.watch_client() ? session.client_fd() : -1, session.client_events(), 0},
            {session.watch_upstream() ? session.upstream_fd() : -1, session.upstream_events(), 0}};
        std::error_code ec;
        detail::poll_fds(fds, 3, session.deadline(), ec);
        if (ec) {
            session.abort(ec);
            break;
        }
        if (fds[0].revents != 0) {
            session.abort(make_error_code(errc::stopped));
            break;
        }
        time_point now = steady_clock::now();
        session.on_ready(fds[1].revents, fds[2].revents, now, scratch, size);
        if (!session.done() && now >= session.deadline()) {
            session.on_deadline(now);
        }
    }
    return session.result();
}

} // namespace tinyproxy
