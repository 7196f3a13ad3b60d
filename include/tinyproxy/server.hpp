// SPDX-License-Identifier: MIT
// The contract between a concurrency policy and the proxy it runs: the Server and Session calls
// a policy makes, stated once here, and the types they pass (clients, limits, results).
#pragma once

#include <atomic>       // live byte counters
#include <chrono>       // timeouts
#include <cstddef>      // std::size_t
#include <cstdint>      // byte counters
#include <memory>       // live byte counters, shared
#include <string>       // a session's stages, named
#include <system_error> // std::error_code
#include <type_traits>  // detecting optional Session members
#include <utility>      // std::declval

#include "tinyproxy/config.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// A policy says how sessions are scheduled (thread_policy, fork_policy, poll_policy, or one of
/// yours, as examples/custom_policy.cpp). It is a class with
///     template <class Server> void run(Server& server);
/// that serves clients until `server` says it is stopping (stopping(), or stop_fd() readable),
/// and before returning joins, reaps and closes everything it started. It may throw
/// std::system_error when it cannot start (basic_proxy::run passes it on).
///
/// The Server (proxy_server in proxy.hpp) offers, for every kind of policy:
///     bool stopping() const noexcept;
///     int stop_fd() const noexcept;   // turns readable once stop is requested, in this process
///                                     // and in forked children alike: include it in every wait
///     const session_options& limits() const noexcept;  // e.g. limits().buffer_size
///     void request_stop() noexcept;   // ends every policy loop (when one of several fails)
///     void session_ended(const session_result& result) noexcept; // counts and reports a
///                                     // session that ended (or a client it could not serve)
/// for a blocking policy, which runs each session to its end on a thread or process of its own:
///     accept_status accept_next(accepted_client& out, time_point until) noexcept;
///                                     // waits for a client, the stop signal or `until`
///     session_result serve(accepted_client client) noexcept;  // one session, to its end, here
///     session_result serve(accepted_client client, std::uint8_t* scratch,
///                          std::size_t size) noexcept;        // reading into `scratch`
///     void enter_child() noexcept;    // in a new fork child: drop what belongs to the parent
///     void count_ended(const session_result& result) noexcept; // counts a session that ended
///                                     // elsewhere (a fork child, which reported it itself)
/// and for an event loop, which drives many sessions itself:
///     using session_type = ...;       // basic_session<Mode::session>
///     int listener_fd() const noexcept;  // non-blocking: wait for it readable, then
///     accept_status try_accept(accepted_client& out, std::error_code& ec) noexcept;
///     session_type make_session(accepted_client client);  // not yet started; may throw
///
/// A Session (basic_session in session.hpp) is driven by readiness, and never blocks nor reads
/// the clock: the driver passes `now` to each call.
///     void start(time_point now) noexcept;
///     int client_fd() const noexcept;     short client_events() const noexcept;
///     int upstream_fd() const noexcept;   short upstream_events() const noexcept;  // -1, 0
///                                         // while there is no upstream socket
///     std::uint32_t upstream_serial() const noexcept;  // changes with each upstream socket
///     bool watch_client() const noexcept;  // poll even with events 0 (to hear of a reset)
///     bool watch_upstream() const noexcept;
///     time_point deadline() const noexcept;   // call on_deadline() once it has passed
///     bool wants_resolve() const noexcept;    // resolve resolve_target() as suits the driver
///     const host_port& resolve_target() const noexcept;
///     void on_resolved(std::vector<endpoint> candidates, std::error_code ec,
///                      time_point now) noexcept;
///     void on_ready(short client_revents, short upstream_revents, time_point now,
///                   std::uint8_t* scratch, std::size_t scratch_size,
///                   int rounds = relay::max_rounds) noexcept;  // revents 0: not ready
///     void on_deadline(time_point now) noexcept;
///     void abort(std::error_code why) noexcept;  // ends it at once (stop, driver failure)
///     bool connecting() const noexcept;   // resolving or connecting upstream
///     bool saturated() const noexcept;    // the last on_ready() moved all one call may: serve
///                                         // the other sessions before calling it again
///     bool done() const noexcept;
///     const session_result& result() const noexcept;
/// and, optionally (detail::tells_client_read_dry):
///     bool client_read_dry() const noexcept;  // start() read the client until it had no more
/// run_session (session/blocking.hpp) is the driver for one session on the calling thread.

namespace detail {
/// Whether a Session says client_read_dry() (see above); one that does not never has.
template <class Session, class = void>
struct tells_client_read_dry : std::false_type {};
template <class Session>
struct tells_client_read_dry<
    Session, std::void_t<decltype(std::declval<const Session&>().client_read_dry())>>
    : std::true_type {};

template <class Session>
bool client_read_dry(const Session& session) noexcept {
    if constexpr (tells_client_read_dry<Session>::value) {
        return session.client_read_dry();
    } else {
        (void)session;
        return false;
    }
}
} // namespace detail

/// Bytes relayed so far, each way, by every tunnel that shares it (session_options::traffic).
struct traffic_counters {
    std::atomic<std::uint64_t> to_upstream{0}; ///< client to upstream
    std::atomic<std::uint64_t> to_client{0};   ///< upstream to client
};

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
    /// Gives each tunnel its relay stages as it starts (stage.hpp): what sees, changes, delays
    /// or cuts its bytes. Unset, every tunnel takes the plain path, splice included, and the
    /// cost is one branch per tunnel. Copied into each session: capture by (shared) pointer.
    stage_factory stages;
    /// The most the stages of one direction hold before its source is no longer read
    /// (relay::stage_buffer_size): a delay's worth of the stream (100 ms at 100 MB/s is 10 MB).
    /// A bound, not an allocation: a tunnel holds what its stages hold at the time.
    std::size_t stage_buffer_size = 16 * 1024 * 1024;
    /// When set, every tunnel adds the bytes it relays here as they move, not only as it ends
    /// (session_result has those): live counters for a metrics endpoint, shared by the
    /// sessions of a proxy. Unset, it costs one branch per pump.
    std::shared_ptr<traffic_counters> traffic;
};

/// A client just accepted, before its session starts.
struct accepted_client {
    socket connection;
    endpoint peer;
    std::uint64_t serial = 0; ///< counted from 1 in the order accepted (tunnel_info::serial)
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

/// What a UDP association (SOCKS5 UDP ASSOCIATE) relayed and dropped: datagrams each way and
/// their data's bytes (headers not counted), and the drops by reason.
struct datagram_counts {
    std::uint64_t to_upstream = 0;       ///< datagrams from the client sent on to a remote
    std::uint64_t to_client = 0;         ///< datagrams from a remote sent back to the client
    std::uint64_t bytes_to_upstream = 0; ///< their data, client to remotes
    std::uint64_t bytes_to_client = 0;   ///< their data, remotes to client
    std::uint64_t dropped_fragment = 0;  ///< FRAG != 0: fragments are not reassembled
    std::uint64_t dropped_malformed = 0; ///< a header that does not parse
    std::uint64_t dropped_source = 0;    ///< from neither the client nor a remote it sent to
    std::uint64_t dropped_other = 0;     ///< unresolved, other family, cut short, send failed

    std::uint64_t dropped() const noexcept {
        return dropped_fragment + dropped_malformed + dropped_source + dropped_other;
    }
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
    std::string stages; ///< what stages the tunnel had (tunnel_stages::label)
    /// A UDP association's datagrams (its bytes are also in bytes_to_upstream/_client).
    datagram_counts datagrams;
    bool udp = false;   ///< the session was a UDP association (SOCKS5 UDP ASSOCIATE)
    time_point started; ///< when the session started
    time_point ended;   ///< when it ended
};

} // namespace tinyproxy
