// SPDX-License-Identifier: MIT
// fork_policy: one process per client.
#pragma once

#include <cerrno>  // EINTR
#include <chrono>  // reaping tick, grace period
#include <cstddef> // std::size_t
#include <thread>  // sleep while waiting for children
#include <utility> // std::move, std::swap
#include <vector>  // child ids

#include <csignal>    // kill, SIGKILL
#include <sys/wait.h> // waitpid
#include <unistd.h>   // fork, _exit

#include "tinyproxy/config.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/server.hpp"

namespace tinyproxy {

/// A process per client: the strongest isolation (a crash or leak in one session cannot touch
/// another), at the cost of a fork per connection. The child closes every descriptor it
/// inherited except its client and the stop signal, serves the one session and _exit()s; the
/// parent reaps its own children (only those, never another part of the program's) at least
/// ten times a second, so no zombie outlives its session by more than that.
///
/// Byte counts and other per-session figures stay in the child: the parent sees how many
/// sessions ran, not what moved through them.
///
/// Of the Server (the policy interface: server.hpp) it calls accept_next(); in a child
/// enter_child(), then serve(client, scratch, size) reading into `scratch` (see below), sized
/// by limits(), keeping stop_fd() open; session_ended() when fork() fails, and count_ended() as
/// each child is reaped.
///
/// Memory: a child costs the pages it writes (each is copied from the parent's on the first
/// write) plus the pages the parent writes while the child lives. A child therefore reads into
/// a buffer in a mapping of its own rather than one from the heap it shares with the parent: a
/// 64 KiB allocation there would grow that heap, and so copy the allocator's bookkeeping pages
/// too. A program linked with `-Wl,-z,now` also spares each child the copy of the pages that
/// lazy symbol binding would write on the first call of a function the parent never called.
class fork_policy {
public:
    /// How long stop waits for children to end by themselves before killing them.
    std::chrono::milliseconds stop_grace{1000};

    template <class Server>
    void run(Server& server) {
        // Made here, once, rather than in every child that reports an error: the first call
        // writes the guard of a function-local static, and with it a page the child would copy.
        (void)error_category();
        for (;;) {
            accepted_client client;
            auto status =
                server.accept_next(client, steady_clock::now() + std::chrono::milliseconds(100));
            reap(server, false);
            if (status == accept_status::stopped) {
                break;
            }
            if (status == accept_status::client) {
                spawn(server, std::move(client));
            }
        }
        stop_children(server);
    }

    /// Children still running (for tests and the curious; read it from the run() thread).
    std::size_t children() const noexcept { return children_.size(); }

private:
    template <class Server>
    void spawn(Server& server, accepted_client client) {
        pid_t pid = ::fork();
        if (pid == 0) {
            int keep[2] = {server.stop_fd(), client.connection.native_handle()};
            if (keep[0] > keep[1]) {
                std::swap(keep[0], keep[1]);
            }
            server.enter_child();
            detail::close_descriptors_except(keep, 2);
            detail::mapped_buffer scratch(server.limits().buffer_size); // empty if no mapping
            session_result result = server.serve(std::move(client), scratch.data(), scratch.size());
            ::_exit(result.error ? 1 : 0);
        }
        if (pid > 0) {
            children_.push_back(pid);
            return;
        }
        // No process to be had: the client closes here, in the parent, and counts as failed.
        session_result refused;
        refused.error = std::make_error_code(std::errc::resource_unavailable_try_again);
        server.session_ended(refused);
    }

    /// Collects every finished child, and counts its session; with `all`, waits for all.
    template <class Server>
    void reap(Server& server, bool all) {
        for (auto it = children_.begin(); it != children_.end();) {
            int status = 0;
            pid_t r = ::waitpid(*it, &status, all ? 0 : WNOHANG);
            if (r == *it || (r < 0 && errno != EINTR)) {
                session_result result;
                if (r < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    result.error = make_error_code(errc::child_failed);
                }
                server.count_ended(result); // the child reported it to the hook itself
                it = children_.erase(it);
            } else if (r < 0) {
                continue; // EINTR: ask again
            } else {
                ++it;
            }
        }
    }

    template <class Server>
    void stop_children(Server& server) {
        // Children watch the stop signal and end by themselves; give them a moment.
        auto give_up = steady_clock::now() + stop_grace;
        while (!children_.empty() && steady_clock::now() < give_up) {
            reap(server, false);
            if (!children_.empty()) {
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
        }
        for (pid_t pid : children_) {
            ::kill(pid, SIGKILL);
        }
        reap(server, true);
    }

    std::vector<pid_t> children_;
};

} // namespace tinyproxy
