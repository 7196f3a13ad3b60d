// Unit tests for poller.hpp: poll_poller and epoll_poller keep one interface and report the
// same readiness, including a descriptor number that is closed and given to a new socket.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <chrono>  // deadlines
#include <cstdint> // tokens
#include <memory>  // socket pairs that move
#include <thread>  // two pollers waiting at once
#include <vector>  // ready lists

#include <poll.h>       // POLLIN, POLLOUT, POLLHUP
#include <sys/socket.h> // socketpair
#include <unistd.h>     // write, close

#include <tinyproxy/tinyproxy.hpp>

namespace {

using namespace std::chrono_literals;

/// A connected pair of non-blocking stream sockets, closed at the end unless released.
struct socket_pair {
    int ends[2] = {-1, -1};
    socket_pair() {
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, ends) == 0);
    }
    ~socket_pair() {
        for (int fd : ends) {
            if (fd >= 0) {
                ::close(fd);
            }
        }
    }
    void close_end(int i) {
        ::close(ends[i]);
        ends[i] = -1;
    }
};

/// What one wait reports, as token -> revents (empty when nothing is ready).
template <class Poller>
std::vector<tinyproxy::ready_event> wait_once(Poller& poller, std::chrono::milliseconds limit) {
    std::vector<tinyproxy::ready_event> ready;
    std::error_code ec;
    poller.wait(tinyproxy::steady_clock::now() + limit, ready, ec);
    CHECK_FALSE(ec);
    return ready;
}

short revents_of(const std::vector<tinyproxy::ready_event>& ready, std::uint64_t token) {
    for (const auto& event : ready) {
        if (event.token == token) {
            return event.revents;
        }
    }
    return 0;
}

} // namespace

TEST_SUITE_BEGIN("poller");

#if TINYPROXY_HAS_EPOLL
#    define TINYPROXY_TEST_POLLERS tinyproxy::poll_poller, tinyproxy::epoll_poller
#else
#    define TINYPROXY_TEST_POLLERS tinyproxy::poll_poller
#endif

TEST_CASE_TEMPLATE("poller reports a readable descriptor with its token, and nothing when idle",
                   Poller, TINYPROXY_TEST_POLLERS) {
    Poller poller;
    socket_pair pair;
    tinyproxy::poller_slot slot;
    std::error_code ec;
    REQUIRE(poller.update(slot, pair.ends[0], POLLIN, 0, 42, ec));
    CHECK(wait_once(poller, 50ms).empty());
    REQUIRE(::write(pair.ends[1], "x", 1) == 1);
    auto ready = wait_once(poller, 1000ms);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].token == 42);
    CHECK((ready[0].revents & POLLIN) != 0);
    poller.close();
}

#if TINYPROXY_HAS_RDHUP
TEST_CASE_TEMPLATE("poller: a peer's end of stream is reported as POLLRDHUP when asked for", Poller,
                   TINYPROXY_TEST_POLLERS) {
    // The relay asks for POLLRDHUP with POLLIN to hear a FIN along with the last bytes; epoll
    // must ask for EPOLLRDHUP and report it back as POLLRDHUP, as poll(2) does.
    Poller poller;
    socket_pair pair;
    tinyproxy::poller_slot slot;
    std::error_code ec;
    REQUIRE(poller.update(slot, pair.ends[0], POLLIN | POLLRDHUP, 0, 7, ec));
    REQUIRE(::write(pair.ends[1], "last", 4) == 4);
    CHECK((revents_of(wait_once(poller, 1000ms), 7) & POLLRDHUP) == 0); // bytes, no FIN yet
    REQUIRE(::shutdown(pair.ends[1], SHUT_WR) == 0);
    short revents = revents_of(wait_once(poller, 1000ms), 7);
    CHECK((revents & POLLIN) != 0);
    CHECK((revents & POLLRDHUP) != 0);
}
#endif

TEST_CASE_TEMPLATE("poller: a shared listener is reported readable when a client waits, until "
                   "it is unwatched",
                   Poller, TINYPROXY_TEST_POLLERS) {
    Poller poller;
    auto listener = tinyproxy::listener::open(tinyproxy::parse_endpoint("127.0.0.1:0"), 4);
    tinyproxy::poller_slot slot;
    std::error_code ec;
    REQUIRE(poller.watch_shared(slot, listener.native_handle(), 7, ec));
    REQUIRE(poller.watch_shared(slot, listener.native_handle(), 7, ec)); // again: no change
    CHECK(wait_once(poller, 50ms).empty());
    auto client =
        tinyproxy::connect(listener.local_endpoint(), tinyproxy::steady_clock::now() + 5s, ec);
    REQUIRE_FALSE(ec);
    auto ready = wait_once(poller, 1000ms);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].token == 7);
    CHECK((ready[0].revents & POLLIN) != 0);
    REQUIRE(poller.update(slot, -1, 0, 0, 7, ec));
    CHECK(wait_once(poller, 50ms).empty());
    REQUIRE(poller.watch_shared(slot, listener.native_handle(), 8, ec)); // and watched again
    ready = wait_once(poller, 1000ms);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].token == 8);
    poller.close();
}

#if TINYPROXY_HAS_EPOLL
TEST_CASE("epoll_poller: a client at a listener two pollers share wakes one of them, not both") {
    // Several event loops accept from one listener: without EPOLLEXCLUSIVE every loop would
    // wake for each new client, and all but one would find nothing to accept.
    auto listener = tinyproxy::listener::open(tinyproxy::parse_endpoint("127.0.0.1:0"), 4);
    tinyproxy::epoll_poller pollers[2];
    tinyproxy::poller_slot slots[2];
    std::error_code ec;
    for (int i = 0; i < 2; ++i) {
        REQUIRE(pollers[i].watch_shared(slots[i], listener.native_handle(), 1, ec));
    }
    std::vector<tinyproxy::ready_event> ready[2];
    std::thread waiters[2];
    for (int i = 0; i < 2; ++i) {
        waiters[i] = std::thread([&, i] {
            std::error_code wait_error;
            pollers[i].wait(tinyproxy::steady_clock::now() + 1500ms, ready[i], wait_error);
        });
    }
    std::this_thread::sleep_for(300ms); // both are waiting by now
    auto client =
        tinyproxy::connect(listener.local_endpoint(), tinyproxy::steady_clock::now() + 5s, ec);
    REQUIRE_FALSE(ec);
    for (auto& waiter : waiters) {
        waiter.join();
    }
    CHECK(ready[0].size() + ready[1].size() == 1);
}
#endif

TEST_CASE_TEMPLATE("poller: new interest replaces the old one; fd -1 stops watching even a "
                   "hang-up; events 0 still reports it",
                   Poller, TINYPROXY_TEST_POLLERS) {
    Poller poller;
    socket_pair pair;
    tinyproxy::poller_slot slot;
    std::error_code ec;
    REQUIRE(poller.update(slot, pair.ends[0], POLLOUT, 0, 7, ec));
    CHECK((revents_of(wait_once(poller, 1000ms), 7) & POLLOUT) != 0); // an empty buffer
    REQUIRE(poller.update(slot, pair.ends[0], POLLIN, 0, 7, ec));
    CHECK(wait_once(poller, 50ms).empty()); // nothing to read, and POLLOUT no longer asked

    pair.close_end(1); // the peer hangs up
    REQUIRE(poller.update(slot, pair.ends[0], 0, 0, 7, ec));
    CHECK((revents_of(wait_once(poller, 1000ms), 7) & (POLLHUP | POLLERR | POLLIN)) != 0);
    REQUIRE(poller.update(slot, -1, 0, 0, 7, ec));
    CHECK(slot.fd == -1);
    CHECK(wait_once(poller, 50ms).empty()); // unwatched: the hang-up is not reported again
    poller.close();
}

TEST_CASE_TEMPLATE("poller: a socket closed and replaced by one with the same number is watched "
                   "(the serial tells them apart)",
                   Poller, TINYPROXY_TEST_POLLERS) {
    Poller poller;
    auto first = std::make_unique<socket_pair>();
    tinyproxy::poller_slot slot;
    std::error_code ec;
    REQUIRE(poller.update(slot, first->ends[0], POLLIN, 1, 9, ec));
    const int number = first->ends[0];
    // As when a session's connect to one address fails and the next address is tried: the
    // old socket is closed (which takes it out of an epoll set behind the poller's back) and
    // the new one gets the same number, with the same interest.
    first->close_end(0);
    socket_pair second; // takes the lowest free numbers: `number` among them
    int reused = second.ends[0] == number ? 0 : (second.ends[1] == number ? 1 : -1);
    REQUIRE(reused >= 0);
    REQUIRE(poller.update(slot, number, POLLIN, 2, 9, ec)); // same number, events; serial 2
    CHECK_FALSE(ec);
    REQUIRE(::write(second.ends[1 - reused], "y", 1) == 1);
    CHECK((revents_of(wait_once(poller, 1000ms), 9) & POLLIN) != 0);

    // Closed for good: the owner forgets it, and nothing more is reported for it.
    second.close_end(reused);
    poller.forget(slot);
    CHECK(slot.fd == -1);
    CHECK(wait_once(poller, 50ms).empty());
    poller.close();
}

TEST_CASE_TEMPLATE("poller: many slots, removed in any order, each keeps reporting its own token",
                   Poller, TINYPROXY_TEST_POLLERS) {
    Poller poller;
    constexpr int count = 6;
    std::vector<std::unique_ptr<socket_pair>> pairs;
    std::vector<tinyproxy::poller_slot> slots(count);
    std::error_code ec;
    for (int i = 0; i < count; ++i) {
        pairs.push_back(std::make_unique<socket_pair>());
        REQUIRE(poller.update(slots[static_cast<std::size_t>(i)], pairs.back()->ends[0], POLLIN, 0,
                              static_cast<std::uint64_t>(100 + i), ec));
    }
    // Remove the first, the middle and the last; the rest must still map to their tokens.
    for (int gone : {0, 3, 5}) {
        REQUIRE(poller.update(slots[static_cast<std::size_t>(gone)], -1, 0, 0, 0, ec));
    }
    for (int i = 0; i < count; ++i) {
        REQUIRE(::write(pairs[static_cast<std::size_t>(i)]->ends[1], "z", 1) == 1);
    }
    auto ready = wait_once(poller, 1000ms);
    for (int i = 0; i < count; ++i) {
        bool removed = i == 0 || i == 3 || i == 5;
        CAPTURE(i);
        CHECK(((revents_of(ready, static_cast<std::uint64_t>(100 + i)) & POLLIN) != 0) == !removed);
    }
    CHECK(ready.size() == 3);
    poller.close();
}

TEST_SUITE_END();
