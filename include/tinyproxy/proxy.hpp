// SPDX-License-Identifier: MIT
// basic_proxy<Policy, Mode>: the listener, options, stop signal and counters, and the Server
// interface that a concurrency policy drives.
#pragma once

#include <algorithm>    // std::min
#include <atomic>       // counters
#include <cerrno>       // accept errors
#include <cstdint>      // counters
#include <functional>   // the event hook
#include <vector>       // the allow-list
#include <string>       // error messages
#include <system_error> // error reporting
#include <utility>      // std::move

#include <poll.h> // waiting for a client or the stop signal

#include "tinyproxy/config.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/server.hpp"
#include "tinyproxy/session.hpp"
#include "tinyproxy/session/blocking.hpp"
#include "tinyproxy/policy/thread.hpp"
#include "tinyproxy/policy/fork.hpp"
#include "tinyproxy/policy/poll.hpp"
#include "tinyproxy/mode/forward.hpp"

namespace tinyproxy {

/// Something that happened to a client, for the optional `options::on_event` hook.
struct session_event {
    enum class kind {
        rejected, ///< closed at once, before any byte was read (see `reason`)
        opened,   ///< a session starts
        closed,   ///< a session ended; `result` says how
    };
    kind what = kind::opened;
    endpoint client;
    /// For rejected: errc::client_not_allowed (outside every `allow` range) or
    /// std::errc::too_many_files_open (past `max_connections`). For closed: what ended it.
    std::error_code reason;
    /// For closed: bytes, target, upstream, times and the error that ended it.
    const session_result* result = nullptr;
};

/// Everything a proxy is told, with defaults that are safe to run as they are.
struct options : session_options {
    /// Where to listen. Loopback by default: serving other hosts takes a deliberate choice.
    endpoint listen{ip_address::loopback_v4(), 1080};
    int backlog = 1024;
    /// Clients past this many concurrent sessions are accepted and closed at once (0: no limit).
    std::size_t max_connections = 0;
    /// When not empty, a client outside every range is closed at once, before any byte is read.
    std::vector<cidr> allow;
    /// Called for every client rejected, opened and closed, on the thread (or, with
    /// fork_policy, in the process) that serves it, so it must be thread-safe. Unset, it costs
    /// one branch per event.
    std::function<void(const session_event&)> on_event;
};

/// Counters, readable from any thread while the proxy runs. Under fork_policy sessions run in
/// child processes: the parent counts them as they are reaped (a child's exit status says
/// whether its session failed), but the byte counts and the failure reasons stay in the
/// children, and read 0 (use `on_event`, which runs in the child, to see them).
struct stats {
    std::uint64_t accepted = 0;              ///< clients accepted (including those rejected)
    std::uint64_t active = 0;                ///< sessions running now
    std::uint64_t finished = 0;              ///< sessions ended cleanly
    std::uint64_t failed = 0;                ///< sessions ended by an error, reset or timeout
    std::uint64_t rejected_limit = 0;        ///< closed at once: past max_connections
    std::uint64_t rejected_access = 0;       ///< closed at once: outside every allow range
    std::uint64_t handshake_failures = 0;    ///< failed before the Mode decided (incl. timeouts)
    std::uint64_t connect_failures = 0;      ///< the upstream refused, did not resolve or timed out
    std::uint64_t bytes_to_upstream = 0;     ///< bytes relayed client -> upstream (ended sessions)
    std::uint64_t bytes_to_client = 0;       ///< bytes relayed upstream -> client (ended sessions)
    std::uint64_t udp_associations = 0;      ///< UDP associations ended (SOCKS5 UDP ASSOCIATE)
    std::uint64_t datagrams_to_upstream = 0; ///< their datagrams, client -> remotes
    std::uint64_t datagrams_to_client = 0;   ///< their datagrams, remotes -> client
    std::uint64_t datagrams_dropped = 0;     ///< fragments, malformed, other sources, ...
};

/// What a policy sees of a proxy: a listener, a stop signal, and sessions to run. Policies are
/// templates over it; which calls each kind of policy makes is stated in server.hpp.
template <class Mode>
class proxy_server {
public:
    using mode_type = Mode;
    using session_type = basic_session<typename Mode::session>;

    proxy_server(options opts, Mode mode) : options_(std::move(opts)), mode_(std::move(mode)) {}
    proxy_server(const proxy_server&) = delete;
    proxy_server& operator=(const proxy_server&) = delete;

    // --- set-up, by basic_proxy ------------------------------------------------------------

    void listen(std::error_code& ec) noexcept;
    endpoint local_endpoint() const noexcept { return listener_.local_endpoint(); }
    bool listening() const noexcept { return static_cast<bool>(listener_); }
    /// Async-signal-safe: an atomic exchange and a close(2).
    void request_stop() noexcept { stop_.request(); }

    // --- the Server interface policies call --------------------------------------------------

    bool stopping() const noexcept { return stop_.requested(); }
    /// Turns readable (end of file) once stop is requested, in this process and in forked
    /// children alike: every wait in the library includes it.
    int stop_fd() const noexcept { return stop_.fd(); }
    int listener_fd() const noexcept { return listener_.native_handle(); }
    const session_options& limits() const noexcept { return options_; }

    /// Waits for the next client, the stop signal, or `until`. When descriptors run out it
    /// rests instead of spinning, and tries again.
    accept_status accept_next(accepted_client& out, time_point until) noexcept;
    /// Takes a pending client without waiting (the listener is non-blocking).
    accept_status try_accept(accepted_client& out, std::error_code& ec) noexcept;
    /// A session for `client`, not yet started.
    session_type make_session(accepted_client client);
    /// Runs one client's session to its end on the calling thread, and counts it.
    session_result serve(accepted_client client) noexcept {
        return serve(std::move(client), nullptr, 0);
    }
    /// The same, reading into `scratch` (`scratch_size` bytes) when it is not null, instead of
    /// a buffer of options().buffer_size from the heap (fork_policy's children pass one).
    session_result serve(accepted_client client, std::uint8_t* scratch,
                         std::size_t scratch_size) noexcept;
    /// Counts a session that has ended, and reports it to the event hook.
    void session_ended(const session_result& result) noexcept;
    /// Counts a session that ended elsewhere (a fork child, which reported it itself).
    void count_ended(const session_result& result) noexcept;
    /// After run(): closes the listener and the stop signal (the proxy runs once).
    void close() noexcept {
        listener_.close();
        stop_.close();
    }
    /// Called in a freshly forked child: drops the parent's listener and stop-signal writer.
    void enter_child() noexcept {
        listener_.close();
        stop_.close_writer();
    }

    stats snapshot() const noexcept;
    const options& get_options() const noexcept { return options_; }
    const Mode& mode() const noexcept { return mode_; }

private:
    options options_;
    Mode mode_;
    listener listener_;
    /// try_accept() takes every client non-blocking; listen() adds Nagle off where it can.
    client_socket_setup client_setup_{true, false};
    detail::stop_signal stop_;
    /// Applies allow and max_connections to a client just accepted; false: it was closed.
    bool admit(accepted_client& client) noexcept;
    void report(const session_event& event) const noexcept {
        if (options_.on_event) {
            try {
                options_.on_event(event);
            } catch (...) { // a hook that throws must not end the proxy
            }
        }
    }

    std::atomic<std::uint64_t> accepted_{0};
    std::atomic<std::uint64_t> ended_{0};
    std::atomic<std::uint64_t> finished_{0};
    std::atomic<std::uint64_t> failed_{0};
    std::atomic<std::uint64_t> rejected_limit_{0};
    std::atomic<std::uint64_t> rejected_access_{0};
    std::atomic<std::uint64_t> handshake_failures_{0};
    std::atomic<std::uint64_t> connect_failures_{0};
    std::atomic<std::uint64_t> bytes_to_upstream_{0};
    std::atomic<std::uint64_t> bytes_to_client_{0};
    std::atomic<std::uint64_t> udp_associations_{0};
    std::atomic<std::uint64_t> datagrams_to_upstream_{0};
    std::atomic<std::uint64_t> datagrams_to_client_{0};
    std::atomic<std::uint64_t> datagrams_dropped_{0};
};

/// A proxy: a Policy says how sessions are scheduled (thread_policy, fork_policy, poll_policy
/// or your own), a Mode says where each client goes (forward_mode, ...).
///
///     tinyproxy::options opts;
///     opts.listen = tinyproxy::parse_endpoint("127.0.0.1:8080");
///     tinyproxy::basic_proxy<tinyproxy::poll_policy, tinyproxy::forward_mode> proxy(
///         opts, tinyproxy::forward_mode(tinyproxy::parse_host_port("example.com:80")));
///     proxy.run(); // until proxy.stop() from another thread or a signal handler
///
/// A proxy runs once: after stop() and the return of run(), make a new one to serve again.
template <class Policy, class Mode>
class basic_proxy {
public:
    using policy_type = Policy;
    using mode_type = Mode;

    basic_proxy(options opts, Mode mode, Policy policy = Policy())
        : server_(std::move(opts), std::move(mode)), policy_(std::move(policy)) {}

    /// Binds and listens now, so that local_endpoint() is known before run() (port 0 picks a
    /// free port). Throws std::system_error naming the address.
    void listen() {
        std::error_code ec;
        listen(ec);
        if (ec) {
            throw std::system_error(ec,
                                    "cannot listen on " + server_.get_options().listen.to_string());
        }
    }
    void listen(std::error_code& ec) noexcept { server_.listen(ec); }

    /// The bound address (with the real port), once listening.
    endpoint local_endpoint() const noexcept { return server_.local_endpoint(); }

    /// Serves clients until stop(); listens first if listen() was not called. When it returns,
    /// every thread it started is joined, every child reaped, every descriptor closed. Throws
    /// std::system_error when it cannot listen, or when the policy cannot start.
    void run() {
        if (!server_.listening()) {
            listen();
        }
        try {
            policy_.run(server_);
        } catch (...) { // the policy could not run (e.g. no descriptor for its event loop)
            server_.close();
            throw;
        }
        server_.close(); // a client arriving now is refused, not left in a dead backlog
    }

    /// Makes run() return promptly, ending the sessions in flight. Thread-safe, and safe to
    /// call from a signal handler.
    void stop() noexcept { server_.request_stop(); }

    tinyproxy::stats stats() const noexcept { return server_.snapshot(); }
    const options& get_options() const noexcept { return server_.get_options(); }
    Policy& policy() noexcept { return policy_; }
    const Mode& mode() const noexcept { return server_.mode(); }

private:
    proxy_server<Mode> server_;
    Policy policy_;
};

/// A port forwarder on the event loop: the usual choice.
using forward_proxy = basic_proxy<poll_policy, forward_mode>;
using thread_forward_proxy = basic_proxy<thread_policy, forward_mode>;
using fork_forward_proxy = basic_proxy<fork_policy, forward_mode>;

// ---------------------------------------------------------------------------------------------

template <class Mode>
void proxy_server<Mode>::listen(std::error_code& ec) noexcept {
    ec.clear();
    if (!stop_.open(ec)) {
        return;
    }
    listener_ = listener::open(options_.listen, options_.backlog, ec);
    if (!ec) {
        listener_.set_nonblocking(true, ec);
    }
    if (!ec && TINYPROXY_ACCEPT_INHERITS_NODELAY) {
        // Every client then comes with Nagle off. Failing here costs a setsockopt per client.
        std::error_code failed;
        listener_.set_nodelay(true, failed);
        client_setup_.nodelay = !failed;
    }
}

template <class Mode>
accept_status proxy_server<Mode>::try_accept(accepted_client& out, std::error_code& ec) noexcept {
    // Rejected clients are closed here and the next pending one taken, a bounded number of
    // times so a flood of rejected clients cannot hold the caller.
    for (int rejected = 0; rejected < 64; ++rejected) {
        out.connection = listener_.accept(out.peer, true, ec);
        if (ec) {
            return accept_status::timeout;
        }
        out.serial = accepted_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (admit(out)) {
            return accept_status::client;
        }
    }
    ec = std::make_error_code(std::errc::resource_unavailable_try_again);
    return accept_status::timeout;
}

template <class Mode>
bool proxy_server<Mode>::admit(accepted_client& client) noexcept {
    if (!options_.allow.empty()) {
        bool allowed = false;
        for (const cidr& range : options_.allow) {
            allowed = allowed || range.contains(client.peer.address);
        }
        if (!allowed) {
            client.connection.close();
            rejected_access_.fetch_add(1, std::memory_order_relaxed);
            report({session_event::kind::rejected, client.peer,
                    make_error_code(errc::client_not_allowed), nullptr});
            return false;
        }
    }
    if (options_.max_connections != 0) {
        std::uint64_t ended = ended_.load(std::memory_order_acquire);
        std::uint64_t rejected = rejected_limit_.load(std::memory_order_relaxed) +
                                 rejected_access_.load(std::memory_order_relaxed);
        std::uint64_t accepted = accepted_.load(std::memory_order_relaxed);
        // Sessions running, not counting this client (accepted already counts it).
        std::uint64_t active = accepted - 1 - ended - rejected;
        if (active >= options_.max_connections) {
            client.connection.close();
            rejected_limit_.fetch_add(1, std::memory_order_relaxed);
            report({session_event::kind::rejected, client.peer,
                    std::make_error_code(std::errc::too_many_files_open), nullptr});
            return false;
        }
    }
    return true;
}

template <class Mode>
accept_status proxy_server<Mode>::accept_next(accepted_client& out, time_point until) noexcept {
    for (;;) {
        if (stopping()) {
            return accept_status::stopped;
        }
        std::error_code ec;
        if (try_accept(out, ec) == accept_status::client) {
            return accept_status::client;
        }
        // Nothing pending: wait for a client. Out of descriptors (or another failure): the
        // client stays queued and the listener stays readable, so wait for the stop signal
        // alone for a moment rather than spin.
        bool nothing_pending = detail::would_block(ec);
        time_point rest = std::min(until, steady_clock::now() + std::chrono::milliseconds(100));
        pollfd fds[2] = {{stop_fd(), POLLIN, 0}, {nothing_pending ? listener_fd() : -1, POLLIN, 0}};
        std::error_code poll_error;
        detail::poll_fds(fds, 2, nothing_pending ? until : rest, poll_error);
        if (fds[0].revents != 0) {
            return accept_status::stopped;
        }
        if (steady_clock::now() >= until) {
            return accept_status::timeout;
        }
    }
}

template <class Mode>
typename proxy_server<Mode>::session_type proxy_server<Mode>::make_session(accepted_client client) {
    session_info info;
    info.client = client.peer;
    endpoint bound = listener_.local_endpoint();
    if (bound.address.is_unspecified()) { // listening on every address: ask which one
        std::error_code ignored;
        info.local = client.connection.local_endpoint(ignored);
    } else {
        info.local = bound; // one system call less per client
    }
    report({session_event::kind::opened, client.peer, {}, nullptr});
    return session_type(std::move(client.connection), mode_.make_session(info), options_,
                        client.peer, client_setup_, client.serial);
}

template <class Mode>
session_result proxy_server<Mode>::serve(accepted_client client, std::uint8_t* scratch,
                                         std::size_t scratch_size) noexcept {
    session_result result;
    if (stopping()) { // a client that was queued when stop came: close it, connect nowhere
        result.error = make_error_code(errc::stopped);
        session_ended(result);
        return result;
    }
    try {
        session_type session = make_session(std::move(client));
        result = scratch != nullptr && scratch_size > 0
                     ? run_session(session, stop_fd(), scratch, scratch_size)
                     : run_session(session, stop_fd(), options_.buffer_size);
    } catch (...) {
        // Out of memory, or a Mode that threw: this session ends, the proxy goes on.
        result.error = std::make_error_code(std::errc::not_enough_memory);
    }
    session_ended(result);
    return result;
}

template <class Mode>
void proxy_server<Mode>::session_ended(const session_result& result) noexcept {
    count_ended(result);
    report({session_event::kind::closed, result.client, result.error, &result});
}

template <class Mode>
void proxy_server<Mode>::count_ended(const session_result& result) noexcept {
    bytes_to_upstream_.fetch_add(result.bytes_to_upstream, std::memory_order_relaxed);
    bytes_to_client_.fetch_add(result.bytes_to_client, std::memory_order_relaxed);
    if (result.udp) {
        udp_associations_.fetch_add(1, std::memory_order_relaxed);
        datagrams_to_upstream_.fetch_add(result.datagrams.to_upstream, std::memory_order_relaxed);
        datagrams_to_client_.fetch_add(result.datagrams.to_client, std::memory_order_relaxed);
        datagrams_dropped_.fetch_add(result.datagrams.dropped(), std::memory_order_relaxed);
    }
    if (!result.error) {
        finished_.fetch_add(1, std::memory_order_relaxed);
    } else {
        failed_.fetch_add(1, std::memory_order_relaxed);
    }
    // A child's exit status or a stop says nothing about where a session went wrong.
    bool has_stage = result.error != errc::child_failed && result.error != errc::stopped;
    if (result.error && has_stage) {
        if (result.stage == session_result::stage_type::handshake) {
            handshake_failures_.fetch_add(1, std::memory_order_relaxed);
        } else if (result.stage == session_result::stage_type::connect) {
            connect_failures_.fetch_add(1, std::memory_order_relaxed);
        }
    }
    ended_.fetch_add(1, std::memory_order_release);
}

template <class Mode>
stats proxy_server<Mode>::snapshot() const noexcept {
    stats out;
    out.finished = finished_.load(std::memory_order_relaxed);
    std::uint64_t ended = ended_.load(std::memory_order_acquire);
    out.rejected_limit = rejected_limit_.load(std::memory_order_relaxed);
    out.rejected_access = rejected_access_.load(std::memory_order_relaxed);
    out.accepted = accepted_.load(std::memory_order_relaxed);
    // Each counter read on its own: no difference of two counters can show a session that
    // has not happened (a reader between two increments would).
    out.failed = failed_.load(std::memory_order_relaxed);
    std::uint64_t gone = ended + out.rejected_limit + out.rejected_access;
    out.active = out.accepted > gone ? out.accepted - gone : 0;
    out.handshake_failures = handshake_failures_.load(std::memory_order_relaxed);
    out.connect_failures = connect_failures_.load(std::memory_order_relaxed);
    out.bytes_to_upstream = bytes_to_upstream_.load(std::memory_order_relaxed);
    out.bytes_to_client = bytes_to_client_.load(std::memory_order_relaxed);
    out.udp_associations = udp_associations_.load(std::memory_order_relaxed);
    out.datagrams_to_upstream = datagrams_to_upstream_.load(std::memory_order_relaxed);
    out.datagrams_to_client = datagrams_to_client_.load(std::memory_order_relaxed);
    out.datagrams_dropped = datagrams_dropped_.load(std::memory_order_relaxed);
    return out;
}

} // namespace tinyproxy
