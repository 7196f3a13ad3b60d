// SPDX-License-Identifier: MIT
// basic_session<ModeSession>: one proxied connection, composed of its three parts in turn: the
// handshake driver (the Mode decides where to go), the connector, and the tunnel.
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <memory>       // the parts of a BIND or UDP ASSOCIATE, made when one comes
#include <system_error> // std::error_code
#include <type_traits>  // std::is_nothrow_move_constructible
#include <utility>      // std::move
#include <vector>       // address lists, replies

#include <poll.h> // POLLOUT

#include "tinyproxy/config.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/mode/mode.hpp"
#include "tinyproxy/relay.hpp"
#include "tinyproxy/server.hpp"
#include "tinyproxy/session/handshake.hpp"
#include "tinyproxy/session/connector.hpp"
#include "tinyproxy/session/tunnel.hpp"
#include "tinyproxy/session/udp_association.hpp"
#include "tinyproxy/session/bind_wait.hpp"

namespace tinyproxy {

/// One client's session, driven by readiness: the Session calls a policy makes (server.hpp),
/// for any Mode session (mode/mode.hpp). It keeps the client socket and the result, and hands
/// the client to each part in turn: the handshake driver until the Mode decides, the connector
/// until an upstream connects (or the Mode's failure reply is sent), then the tunnel. A step
/// of kind `request::bind` waits for a connection from the peer instead of connecting
/// (detail::bind_wait: the Mode is asked for two replies, the listening address and the peer),
/// and one of kind `request::udp_associate` relays datagrams (detail::udp_association) until
/// the client closes its connection or the association is idle for the idle timeout.
///
/// The entry points never throw: an exception from the Mode (out of memory, or a bug) ends
/// the session with `std::errc::not_enough_memory`, so one client cannot stop an event loop.
template <class ModeSession>
class basic_session {
public:
    /// `client_setup`: what is already set on `client`; the session sets the rest (it makes
    /// the socket non-blocking in start(), and turns Nagle off once it relays).
    /// `serial`: the client's number, for the stages (tunnel_info::serial).
    basic_session(
        socket client, ModeSession mode, const session_options& limits,
        const endpoint& client_address = {}, client_socket_setup client_setup = {},
        std::uint64_t serial = 0) noexcept(std::is_nothrow_move_constructible<ModeSession>::value)
        : client_(std::move(client)), handshake_(std::move(mode)), limits_(limits),
          client_setup_(client_setup), serial_(serial) {
        result_.client = client_address;
    }

    /// Starts the handshake; `now` begins the handshake deadline.
    void start(time_point now) noexcept;

    int client_fd() const noexcept { return client_.native_handle(); }
    /// -1 until an upstream connection is being made.
    int upstream_fd() const noexcept;
    std::uint32_t upstream_serial() const noexcept { return connector_.upstream_serial(); }
    short client_events() const noexcept;
    short upstream_events() const noexcept;
    /// Whether to poll a socket even when its events are 0 (to hear of a reset).
    bool watch_client() const noexcept {
        return state_ == state::relaying                                  ? tunnel_.watch_client()
               : state_ == state::associating || state_ == state::binding ? true
                                                                          : client_events() != 0;
    }
    bool watch_upstream() const noexcept {
        return state_ == state::relaying ? tunnel_.watch_upstream() : upstream_events() != 0;
    }
    time_point deadline() const noexcept;

    bool wants_resolve() const noexcept {
        return state_ == state::resolving ||
               (state_ == state::associating && rare_->association.wants_resolve());
    }
    /// Where the Mode sent the client (empty before it decided), or the name a datagram of a
    /// UDP association is for.
    const host_port& resolve_target() const noexcept {
        return state_ == state::associating ? rare_->association.resolve_target()
               : resolving_bind()           ? rare_->bind_target
                                            : connector_.target();
    }
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

    /// Resolving or connecting upstream: the client is not read meanwhile.
    bool connecting() const noexcept {
        return state_ == state::resolving || state_ == state::connecting;
    }
    bool done() const noexcept { return state_ == state::done; }
    /// start() read the client until it had nothing more (the connect's probe): a driver that
    /// would read the client at once, before its first wait, would find nothing.
    bool client_read_dry() const noexcept { return client_read_dry_; }
    /// The last on_ready() moved as much as one call may (relay::saturated()): a bulk transfer
    /// that has more to move. An event loop serves the other tunnels first.
    bool saturated() const noexcept {
        return (state_ == state::relaying && tunnel_.saturated()) ||
               (state_ == state::associating && rare_->association.saturated());
    }
    const session_result& result() const noexcept { return result_; }

private:
    enum class state {
        handshaking, // reading the client until the Mode decides
        resolving,   // waiting for the driver to resolve the target
        connecting,  // a non-blocking connect in progress
        relaying,    // tunnel up
        binding,     // a BIND: waiting for the peer to connect
        associating, // a UDP ASSOCIATE: relaying datagrams
        failing,     // sending the Mode's failure reply, then closing
        done,
    };

    void apply(mode_step step, time_point now);
    /// The bytes to probe the connect with (detail::connector): those the Mode kept for
    /// upstream, or, when it decided without reading the client (forwarding), what the client
    /// has sent by now, in one read that does not wait. None when the tunnel will have stages:
    /// they see every byte first. False when that read found the client reset (finished).
    bool take_probe(std::vector<std::uint8_t>& probe);
    /// Acts on where the connector stands: wait, start the tunnel, or send the failure reply.
    void follow(detail::connect_status status, time_point now);
    void start_tunnel(time_point now);
    /// A UDP ASSOCIATE: the relay socket opens on the address the client reached us on.
    void start_association(const host_port& source, time_point now);
    /// A BIND: the listener opens there too, once the expected peer's addresses are known.
    void start_bind(std::vector<endpoint> expected, time_point now);
    /// The expected peer has connected: the Mode's second reply, then a tunnel to it.
    void bound(time_point now);
    /// The client's readiness while binding or associating: the replies owed go out, and a
    /// close (or, for an association, any bytes) is read.
    void control_ready(short client_revents, std::uint8_t* scratch, std::size_t scratch_size);
    /// The tunnel handed the client back (stage_context::hand_back): the upstream closes, and
    /// the Mode decides again, under a new handshake deadline.
    void take_back(time_point now);
    /// The tunnel has started: limits_.stages gives it its stages (or ends it, by throwing).
    void give_stages();
    void fail_with_reply(std::error_code why, std::vector<std::uint8_t> reply, time_point now);
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
    detail::handshake_driver<ModeSession> handshake_;
    detail::connector connector_;
    detail::tunnel tunnel_;
    /// The parts only a BIND or a UDP ASSOCIATE needs, made when one comes: most sessions are
    /// tunnels, and each of thousands held idle would otherwise carry them (two fifths of the
    /// session's size; bench/README.md, "KB per held connection").
    struct rare_parts {
        detail::udp_association association;
        detail::bind_wait bind_wait;
        host_port bind_target; // a BIND's peer, while its name is resolved
    };
    rare_parts& parts() {
        if (!rare_) {
            rare_ = std::make_unique<rare_parts>();
        }
        return *rare_;
    }
    /// A BIND's peer is being resolved (state::resolving for it, not for a connect).
    bool resolving_bind() const noexcept { return rare_ && !rare_->bind_target.host.empty(); }
    std::unique_ptr<rare_parts> rare_; // null until a BIND or a UDP ASSOCIATE
    session_options limits_;
    client_socket_setup client_setup_;
    std::uint64_t serial_;
    state state_ = state::handshaking;
    session_result result_;
    time_point now_{};             // the latest time a driver passed in
    bool client_read_dry_ = false; // see client_read_dry()
};

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
    apply(handshake_.start(now, limits_.handshake_timeout), now);
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
int basic_session<ModeSession>::upstream_fd() const noexcept {
    switch (state_) {
    case state::connecting:
        return connector_.upstream_fd();
    case state::relaying:
        return tunnel_.upstream_fd();
    case state::binding:
        return rare_->bind_wait.fd();
    case state::associating:
        return rare_->association.fd();
    default:
        return -1;
    }
}

template <class ModeSession>
short basic_session<ModeSession>::client_events() const noexcept {
    switch (state_) {
    case state::handshaking:
        return handshake_.client_events();
    case state::failing:
        return POLLOUT;
    case state::relaying:
        return tunnel_.client_events();
    case state::binding: // not read until the tunnel: only its close is heard, where it can be
        return handshake_.owes_client() ? POLLOUT : detail::peer_closed_event;
    case state::associating:
        return handshake_.owes_client() ? POLLOUT : POLLIN | detail::peer_closed_event;
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
        return tunnel_.upstream_events();
    case state::binding:
        return detail::bind_wait::events();
    case state::associating:
        return detail::udp_association::events();
    default:
        return 0;
    }
}

template <class ModeSession>
time_point basic_session<ModeSession>::deadline() const noexcept {
    switch (state_) {
    case state::handshaking:
    case state::failing:
        return handshake_.deadline();
    case state::resolving: // a BIND's peer is resolved under the handshake's deadline
        return resolving_bind() ? handshake_.deadline() : connector_.deadline();
    case state::connecting:
        return connector_.deadline();
    case state::relaying:
        return tunnel_.deadline();
    case state::binding:
        return rare_->bind_wait.deadline();
    case state::associating:
        return rare_->association.deadline();
    default:
        return time_point::max();
    }
}

template <class ModeSession>
void basic_session<ModeSession>::apply(mode_step step, time_point now) {
    if constexpr (detail::reports_client<ModeSession>::value) {
        if (const endpoint* client = handshake_.mode().client_address()) {
            result_.client = *client;
        }
    }
    handshake_.take(step);
    switch (step.what) {
    case mode_step::action::need_more:
        if (std::error_code ec = handshake_.send(client_)) {
            finish(ec);
        }
        return;
    case mode_step::action::connect:
        result_.stage = session_result::stage_type::connect;
        result_.target = step.target;
        if (step.kind == mode_step::request::udp_associate) {
            start_association(step.target, now);
            return;
        }
        if (step.kind == mode_step::request::bind) {
            // The peer to wait for, not one to connect to: only a name needs the driver.
            if (auto numeric = step.target.numeric_address()) {
                start_bind({endpoint{*numeric, step.target.port}}, now);
            } else {
                parts().bind_target = std::move(step.target);
                state_ = state::resolving;
            }
            return;
        }
        if (std::vector<std::uint8_t> probe; take_probe(probe)) {
            follow(connector_.begin(std::move(step.target), now, limits_.connect_timeout,
                                    std::move(probe)),
                   now);
        }
        return;
    case mode_step::action::fail:
        fail_with_reply(step.error ? step.error : make_error_code(errc::protocol_error), {}, now);
        return;
    }
}

template <class ModeSession>
bool basic_session<ModeSession>::take_probe(std::vector<std::uint8_t>& probe) {
    if (limits_.stages || detail::gives_stages<ModeSession>::value) {
        return true;
    }
    probe = handshake_.take_to_upstream();
    if (!probe.empty() || handshake_.heard_client()) {
        return true; // a client told nothing yet (SOCKS, CONNECT) waits: nothing to read
    }
    // Enough for a first request or a TLS ClientHello; the relay reads whatever follows. Read
    // straight into the probe, on the heap: a stack buffer would push every call below it a
    // page deeper, and a thread keeps each stack page it has touched (thread_policy). The
    // connector frees it once the tunnel has it.
    constexpr std::size_t probe_size = 2048;
    probe.resize(probe_size);
    std::error_code ec;
    std::size_t n = client_.receive(probe.data(), probe.size(), ec);
    if (ec && !detail::would_block(ec)) {
        finish(ec); // reset before its upstream was even tried: nothing to pass it on to
        return false;
    }
    client_read_dry_ = ec || (n != 0 && n < probe_size);
    if (ec || n == 0) {
        // Nothing to send (at end of stream the relay reads the end again and passes it on),
        // and nothing to hold while the connect is in progress.
        std::vector<std::uint8_t>().swap(probe);
    } else {
        probe.resize(n);
    }
    return true;
}

template <class ModeSession>
void basic_session<ModeSession>::follow(detail::connect_status status, time_point now) {
    switch (status) {
    case detail::connect_status::resolving:
        state_ = state::resolving;
        return;
    case detail::connect_status::connecting:
        state_ = state::connecting;
        return;
    case detail::connect_status::connected:
        start_tunnel(now);
        return;
    case detail::connect_status::connected_at_once:
        start_tunnel(now);
        // The Mode's reply (and any pipelined bytes) go now. Told nothing is ready, the pump
        // reads nothing, so it needs no scratch buffer: it only sends.
        if (state_ == state::relaying) { // not ended by its stage factory
            relay_ready(0, 0, now, nullptr, 0);
        }
        return;
    case detail::connect_status::failed: {
        // The one place a connect that failed (refused, unresolvable, timed out) is answered.
        std::error_code why = connector_.error();
        fail_with_reply(why, handshake_.mode().on_connected(why, endpoint{}, endpoint{}), now);
        return;
    }
    }
}

template <class ModeSession>
void basic_session<ModeSession>::on_resolved(std::vector<endpoint> candidates, std::error_code ec,
                                             time_point now) noexcept try {
    now_ = now;
    // Before the Mode decided, too: a driver (a test, say) may hand it addresses of its own.
    if (state_ == state::associating) {
        rare_->association.on_resolved(candidates, ec, now);
        return;
    }
    if (state_ != state::resolving && state_ != state::handshaking) {
        return; // ended meanwhile
    }
    if (resolving_bind()) {
        rare_->bind_target = host_port{};
        if (ec || candidates.empty()) {
            std::error_code why = make_error_code(errc::name_not_resolved);
            fail_with_reply(why, handshake_.mode().on_connected(why, endpoint{}, endpoint{}), now);
            return;
        }
        start_bind(std::move(candidates), now);
        return;
    }
    follow(connector_.on_resolved(std::move(candidates), ec), now);
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
void basic_session<ModeSession>::start_tunnel(time_point now) {
    endpoint local;
    socket upstream = connector_.take_upstream();
    if constexpr (detail::uses_local_endpoint<ModeSession>::value) {
        std::error_code ignored;
        local = upstream.local_endpoint(ignored);
    }
    const endpoint& remote = connector_.connected_to();
    result_.upstream = remote;
    std::vector<std::uint8_t> reply = handshake_.mode().on_connected({}, local, remote);
    result_.connected = true;
    result_.stage = session_result::stage_type::relay;
    // What the Mode kept for upstream, unless it went to the connector as the probe.
    byte_view to_upstream = handshake_.to_upstream().empty() ? connector_.probe_unsent()
                                                             : byte_view{handshake_.to_upstream()};
    tunnel_.start(client_, client_setup_.nodelay, std::move(upstream),
                  handshake_.unsent_to_client(), reply, to_upstream, connector_.probe_sent(),
                  limits_, now);
    connector_.release_probe(); // the relay has what it still owes upstream
    handshake_.release();
    state_ = state::relaying;
    if (limits_.stages || detail::gives_stages<ModeSession>::value) {
        give_stages();
    }
}

template <class ModeSession>
void basic_session<ModeSession>::start_association(const host_port& source, time_point now) {
    result_.udp = true;
    std::error_code ec;
    // The relay listens where the client reached us, and takes datagrams from where it is.
    endpoint local = client_.local_endpoint(ec);
    // The client as its result names it: a PROXY header's source, whose datagrams come straight
    // to us, not through the balancer that carried its TCP connection.
    endpoint client = result_.client;
    if (!ec && client == endpoint{}) {
        client = client_.remote_endpoint(ec);
    }
    if (!ec) {
        ec = parts().association.open(local, client.address, source, limits_, now);
    }
    if (ec) {
        fail_with_reply(ec, handshake_.mode().on_connected(ec, endpoint{}, endpoint{}), now);
        return;
    }
    result_.upstream = rare_->association.relay_address();
    result_.connected = true;
    result_.stage = session_result::stage_type::relay;
    handshake_.owe(
        handshake_.mode().on_connected({}, rare_->association.relay_address(), endpoint{}));
    state_ = state::associating;
    if (std::error_code send_error = handshake_.send(client_)) {
        finish(send_error);
    }
}

template <class ModeSession>
void basic_session<ModeSession>::start_bind(std::vector<endpoint> expected, time_point now) {
    std::vector<ip_address> addresses;
    for (const endpoint& e : expected) {
        if (!e.address.is_unspecified()) { // 0.0.0.0 or ::: the client does not know; any peer
            addresses.push_back(e.address);
        }
    }
    std::error_code ec;
    endpoint local = client_.local_endpoint(ec);
    if (!ec) {
        ec = parts().bind_wait.open(local, std::move(addresses), now, limits_.connect_timeout);
    }
    if (ec) {
        fail_with_reply(ec, handshake_.mode().on_connected(ec, endpoint{}, endpoint{}), now);
        return;
    }
    handshake_.owe(handshake_.mode().on_connected({}, rare_->bind_wait.listening(), endpoint{}));
    state_ = state::binding;
    if (std::error_code send_error = handshake_.send(client_)) {
        finish(send_error);
    }
}

template <class ModeSession>
void basic_session<ModeSession>::bound(time_point now) {
    socket peer = rare_->bind_wait.take_peer();
    const endpoint remote = rare_->bind_wait.peer();
    result_.upstream = remote;
    result_.connected = true;
    result_.stage = session_result::stage_type::relay;
    std::error_code ignored;
    endpoint local = peer.local_endpoint(ignored);
    std::vector<std::uint8_t> reply = handshake_.mode().on_connected({}, local, remote);
    tunnel_.start(client_, client_setup_.nodelay, std::move(peer), handshake_.unsent_to_client(),
                  reply, handshake_.to_upstream(), 0, limits_, now);
    handshake_.release();
    state_ = state::relaying;
    if (limits_.stages || detail::gives_stages<ModeSession>::value) {
        give_stages();
    }
    if (state_ == state::relaying) {
        relay_ready(0, 0, now, nullptr, 0); // the second reply goes now
    }
}

template <class ModeSession>
void basic_session<ModeSession>::control_ready(short client_revents, std::uint8_t* scratch,
                                               std::size_t scratch_size) {
    if (handshake_.owes_client()) {
        if (std::error_code ec = handshake_.send(client_)) {
            finish(ec);
        }
        return;
    }
    if (state_ == state::binding) {
        // Not read (its bytes are for the peer, later): only a hang-up ends the wait.
        if ((client_revents & (POLLHUP | POLLERR | detail::peer_closed_event)) != 0) {
            finish(make_error_code(errc::handshake_incomplete));
        }
        return;
    }
    // An association's control connection carries nothing more; its close ends the association
    // (RFC 1928 section 7), and whatever it sends is read and let go.
    for (int n = 0; n < 4; ++n) {
        std::error_code ec;
        std::size_t got = client_.receive(scratch, scratch_size, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                finish(ec);
            }
            return;
        }
        if (got == 0) {
            finish({});
            return;
        }
    }
}

template <class ModeSession>
void basic_session<ModeSession>::give_stages() {
    tunnel_info info{serial_, result_.client, result_.target, result_.upstream};
    tunnel_stages stages;
    try {
        // The Mode's own stages see the bytes first each way; the factory's come after them.
        if constexpr (detail::gives_stages<ModeSession>::value) {
            handshake_.mode().stages(info, stages);
        }
        if (limits_.stages) {
            limits_.stages(info, stages);
        }
    } catch (...) { // the factory could not: this tunnel ends, before a byte went through
        finish(make_error_code(errc::stage_failed));
        return;
    }
    result_.stages = std::move(stages.label);
    tunnel_.set_stages(std::move(stages));
}

template <class ModeSession>
void basic_session<ModeSession>::fail_with_reply(std::error_code why,
                                                 std::vector<std::uint8_t> reply, time_point now) {
    result_.error = why;
    handshake_.close_with(std::move(reply), now);
    if (!handshake_.owes_client()) {
        finish(why);
        return;
    }
    state_ = state::failing;
    std::error_code ec = handshake_.send(client_);
    if (ec || !handshake_.owes_client()) {
        finish(why);
    }
}

template <class ModeSession>
void basic_session<ModeSession>::relay_ready(short client_revents, short upstream_revents,
                                             time_point now, std::uint8_t* scratch,
                                             std::size_t scratch_size, int rounds) {
    if (!tunnel_.pump(client_, client_revents, upstream_revents, now, scratch, scratch_size,
                      rounds)) {
        return;
    }
    if (tunnel_.handed_back()) {
        take_back(now);
    } else {
        finish(tunnel_.error());
    }
}

template <class ModeSession>
void basic_session<ModeSession>::take_back(time_point now) {
    tunnel_.close(result_); // its byte counts are added to the session's
    if constexpr (detail::takes_back<ModeSession>::value) {
        state_ = state::handshaking;
        result_.stage = session_result::stage_type::handshake;
        apply(handshake_.resume(now, limits_.handshake_timeout), now);
    } else { // a stage of the user's handed back a client its Mode cannot take: as a close
        finish({});
    }
}

template <class ModeSession>
void basic_session<ModeSession>::on_ready(short client_revents, short upstream_revents,
                                          time_point now, std::uint8_t* scratch,
                                          std::size_t scratch_size, int rounds) noexcept try {
    now_ = now;
    switch (state_) {
    case state::handshaking: {
        std::error_code ec;
        auto step = handshake_.on_ready(client_, client_revents, scratch, scratch_size, ec);
        if (ec) {
            finish(ec);
        } else if (step) {
            apply(std::move(*step), now);
        }
        return;
    }
    case state::connecting:
        if (upstream_revents != 0) {
            follow(connector_.on_ready(upstream_revents), now);
            if (state_ == state::relaying) {
                short first = tunnel_.first_events();
                relay_ready(first, first, now, scratch, scratch_size, rounds);
            }
        }
        return;
    case state::relaying:
        if (client_revents != 0 || upstream_revents != 0) {
            relay_ready(client_revents, upstream_revents, now, scratch, scratch_size, rounds);
        }
        return;
    case state::binding: {
        if (client_revents != 0) {
            control_ready(client_revents, scratch, scratch_size);
        }
        if (state_ != state::binding || upstream_revents == 0) {
            return;
        }
        std::error_code ec;
        if (rare_->bind_wait.on_ready(ec)) {
            bound(now);
        } else if (ec) {
            fail_with_reply(ec, handshake_.mode().on_connected(ec, endpoint{}, endpoint{}), now);
        }
        return;
    }
    case state::associating:
        if (client_revents != 0) {
            control_ready(client_revents, scratch, scratch_size);
        }
        if (state_ == state::associating && upstream_revents != 0) {
            rare_->association.on_ready(scratch, scratch_size, now);
        }
        return;
    case state::failing:
        if (client_revents != 0) {
            std::error_code ec = handshake_.send(client_);
            if (ec || !handshake_.owes_client()) {
                finish(result_.error);
            }
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
    if (now < deadline()) {
        return;
    }
    switch (state_) {
    case state::handshaking:
        finish(make_error_code(errc::handshake_timeout));
        return;
    case state::resolving:
        if (resolving_bind()) { // a BIND's peer did not resolve in time
            rare_->bind_target = host_port{};
            std::error_code why = make_error_code(errc::connect_timeout);
            fail_with_reply(why, handshake_.mode().on_connected(why, endpoint{}, endpoint{}), now);
            return;
        }
        follow(connector_.on_deadline(), now);
        return;
    case state::connecting:
        follow(connector_.on_deadline(), now);
        return;
    case state::binding: { // no peer came in time
        rare_->bind_wait.close();
        std::error_code why = make_error_code(errc::connect_timeout);
        fail_with_reply(why, handshake_.mode().on_connected(why, endpoint{}, endpoint{}), now);
        return;
    }
    case state::associating:
        finish(make_error_code(errc::idle_timeout));
        return;
    case state::relaying:
        if (tunnel_.relay_due(now)) {
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
    tunnel_.close(result_); // its relay's pipes, if it spliced, close with the sockets
    if (rare_) {
        rare_->association.close(result_); // the UDP socket closes with the control connection
        rare_->bind_wait.close();
    }
    connector_.close();
    if (!result_.error) {
        result_.error = why;
    }
    state_ = state::done;
    result_.ended = now_;
    client_.close();
}

} // namespace tinyproxy
