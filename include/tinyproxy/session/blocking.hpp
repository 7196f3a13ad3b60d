// SPDX-License-Identifier: MIT
// run_session: the blocking driver of one session on the calling thread (thread and fork
// policies, and basic_proxy's serve()), waiting with poll(2) and resolving names itself.
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // the scratch buffer
#include <memory>       // the scratch buffer
#include <system_error> // std::error_code
#include <utility>      // std::move

#include <poll.h> // pollfd

#include "tinyproxy/config.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/server.hpp"
#include "tinyproxy/session.hpp"

namespace tinyproxy {

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
