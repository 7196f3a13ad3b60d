// SPDX-License-Identifier: MIT
// poll_policy: one thread, one event loop over non-blocking sockets (epoll or poll(2)).
#pragma once

#include <chrono> // the accept back-off
#include <memory> // the main loop
#include <thread> // more loops
#include <vector> // more loops, their pollers

#include "tinyproxy/config.hpp"
#include "tinyproxy/poller.hpp"
#include "tinyproxy/policy/detail/event_loop.hpp"

namespace tinyproxy {

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
