// Unit tests for the event loop's parts that stand alone (policy/detail/): the slot table and
// its tokens, the timer heap, the background resolver. The loop itself is exercised by the
// policy conformance suite (test_policies.cpp).
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <algorithm> // std::max
#include <chrono>    // times
#include <cstddef>   // std::size_t
#include <cstdint>   // slots, generations
#include <memory>    // entries
#include <vector>    // expected orders

#include <poll.h> // poll, the resolver's notify descriptor

#include <tinyproxy/tinyproxy.hpp>

namespace {

using namespace std::chrono_literals;
using tinyproxy::time_point;
using tinyproxy::detail::client_side;
using tinyproxy::detail::timer_heap;
using tinyproxy::detail::upstream_side;

struct entry {
    int value = 0;
};
using table = tinyproxy::detail::slot_table<entry>;

std::unique_ptr<entry> make_entry(int value) { return std::make_unique<entry>(entry{value}); }

/// Every live timer due by `now`, in the order popped, as slots.
std::vector<std::uint32_t> pop_all(timer_heap& timers, time_point now) {
    std::vector<std::uint32_t> slots;
    timer_heap::timer due{};
    while (timers.pop_due(now, due)) {
        slots.push_back(due.slot);
    }
    return slots;
}

} // namespace

TEST_CASE("slot_table: a token of an ended session is not found, even once its slot is reused") {
    table slots;
    std::uint32_t first = slots.add(make_entry(1));
    std::uint64_t client = slots.token(first, client_side);
    std::uint64_t upstream = slots.token(first, upstream_side);
    REQUIRE(slots.find(client) != nullptr);
    CHECK(slots.find(client)->value == 1);
    CHECK(slots.find(upstream) == slots.find(client));
    CHECK(table::side_of(client) == client_side);
    CHECK(table::side_of(upstream) == upstream_side);
    CHECK(table::slot_of(upstream) == first);

    slots.remove(first);
    CHECK(slots.find(client) == nullptr);
    CHECK(slots.find(upstream) == nullptr);
    CHECK(slots.at(first) == nullptr);

    std::uint32_t second = slots.add(make_entry(2));
    CHECK(second == first); // the freed slot, reused
    CHECK(slots.find(client) == nullptr);
    CHECK(slots.find(upstream) == nullptr);
    REQUIRE(slots.find(slots.token(second, client_side)) != nullptr);
    CHECK(slots.find(slots.token(second, client_side))->value == 2);
    CHECK(slots.token(second, client_side) != client);
}

TEST_CASE("slot_table: slots are reused, entries stay where they are, live counts the used") {
    table slots;
    CHECK(slots.size_after_add() == 1);
    std::uint32_t a = slots.add(make_entry(10));
    std::uint32_t b = slots.add(make_entry(11));
    std::uint32_t c = slots.add(make_entry(12));
    CHECK(a == 0);
    CHECK(b == 1);
    CHECK(c == 2);
    entry* kept = slots.at(c);
    CHECK(slots.size() == 3);
    CHECK(slots.live() == 3);
    CHECK(slots.size_after_add() == 4);

    slots.remove(b);
    CHECK(slots.live() == 2);
    CHECK(slots.size_after_add() == 3); // the free slot takes the next one
    CHECK(slots.add(make_entry(13)) == b);
    CHECK(slots.size() == 3);

    for (int n = 0; n < 100; ++n) {
        (void)slots.add(make_entry(n));
    }
    CHECK(slots.size() == 103);
    CHECK(slots.at(c) == kept);
    CHECK(kept->value == 12);
    CHECK(slots.find(1000, 0) == nullptr); // a slot never made
}

TEST_CASE("slot_table: generations move on with each end and wrap in 31 bits") {
    CHECK(table::next_generation(0) == 1);
    CHECK(table::next_generation(0x7ffffffeu) == 0x7fffffffu);
    CHECK(table::next_generation(0x7fffffffu) == 0);

    // The largest slot and generation survive a token's round trip, each side apart.
    std::uint64_t token = table::make_token(0xfffffffeu, 0x7fffffffu, upstream_side);
    CHECK(table::slot_of(token) == 0xfffffffeu);
    CHECK(table::generation_of(token) == 0x7fffffffu);
    CHECK(table::side_of(token) == upstream_side);
    CHECK(table::make_token(0xfffffffeu, 0x7fffffffu, client_side) == token - 1);

    table slots;
    for (int n = 0; n < 1000; ++n) {
        std::uint32_t slot = slots.add(make_entry(n));
        REQUIRE(slot == 0);
        CHECK(slots.generation(slot) == static_cast<std::uint32_t>(n));
        slots.remove(slot);
    }
    CHECK(slots.generation(0) == 1000);
}

TEST_CASE("timer_heap: the earliest timer first, and none before it is due") {
    time_point t0 = tinyproxy::steady_clock::now();
    timer_heap timers;
    CHECK(timers.next() == time_point::max());
    timers.arm(3, 0, t0 + 30ms);
    timers.arm(1, 0, t0 + 10ms);
    timers.arm(4, 0, t0 + 40ms);
    timers.arm(2, 0, t0 + 20ms);
    timers.arm(0, 0, t0 + 5ms);
    timers.arm(5, 0, time_point::max()); // no deadline, no timer
    CHECK(timers.live() == 5);
    CHECK(timers.next() == t0 + 5ms);

    CHECK(pop_all(timers, t0).empty());
    CHECK(pop_all(timers, t0 + 20ms) == std::vector<std::uint32_t>{0, 1, 2});
    CHECK(timers.next() == t0 + 30ms);
    CHECK(pop_all(timers, time_point::max() - 1ms) == std::vector<std::uint32_t>{3, 4});
    CHECK(timers.live() == 0);
    CHECK(timers.size() == 0);
    CHECK(timers.next() == time_point::max());
}

TEST_CASE("timer_heap: a replaced timer's stale entry is skipped, and a later deadline is free") {
    time_point t0 = tinyproxy::steady_clock::now();
    timer_heap timers;
    timers.arm(0, 0, t0 + 10ms);
    timers.arm(0, 0, t0 + 20ms); // later: the live timer fires first, nothing is pushed
    CHECK(timers.size() == 1);
    timers.arm(0, 0, t0 + 5ms); // earlier: replaces it, the old entry stays, stale
    CHECK(timers.size() == 2);
    CHECK(timers.live() == 1);

    timer_heap::timer due{};
    REQUIRE(timers.pop_due(t0 + 30ms, due));
    CHECK(due.slot == 0);
    CHECK(due.when == t0 + 5ms);
    CHECK_FALSE(timers.pop_due(t0 + 30ms, due)); // the one at 10ms was replaced
    CHECK(timers.size() == 0);

    // A session that ended: its timer is stale, and so is the old generation's in a reused slot.
    timers.arm(1, 0, t0 + 10ms);
    timers.disarm(1);
    CHECK(timers.live() == 0);
    CHECK(pop_all(timers, t0 + 30ms).empty());
    timers.arm(2, 0, t0 + 10ms);
    timers.disarm(2);
    timers.arm(2, 1, t0 + 15ms);
    REQUIRE(timers.pop_due(t0 + 30ms, due));
    CHECK(due.generation == 1);
    CHECK(due.when == t0 + 15ms);
    CHECK_FALSE(timers.pop_due(t0 + 30ms, due));
}

TEST_CASE("timer_heap: rebuilt when mostly stale, so it stays bounded as sessions come and go") {
    time_point t0 = tinyproxy::steady_clock::now();
    timer_heap timers;
    constexpr std::uint32_t open_at_once = 8;
    std::size_t largest = 0;
    for (std::uint32_t n = 0; n < 100'000; ++n) {
        std::uint32_t slot = n % open_at_once;
        std::uint32_t generation = n / open_at_once;
        if (n >= open_at_once) {
            timers.disarm(slot); // the slot's previous session ended
        }
        // Far off (none falls due), and each earlier than the last: a replaced one goes stale.
        timers.arm(slot, generation, t0 + std::chrono::hours(1) - std::chrono::milliseconds(n));
        timers.arm(slot, generation, t0 + std::chrono::minutes(1) - std::chrono::milliseconds(n));
        largest = std::max(largest, timers.size());
    }
    CHECK(timers.live() == open_at_once);
    CHECK(largest <= 2 * open_at_once + 1024 + 1);

    // The live ones all still fire, each once.
    std::vector<std::uint32_t> fired = pop_all(timers, t0 + std::chrono::hours(2));
    CHECK(fired.size() == open_at_once);
    CHECK(timers.live() == 0);
}

TEST_CASE("background_resolver: an answer comes back with its id, and the descriptor says so") {
    tinyproxy::detail::background_resolver resolver;
    CHECK(resolver.notify_fd() == -1);
    REQUIRE(resolver.submit(42, tinyproxy::host_port{"127.0.0.1", 8080}));
    REQUIRE(resolver.notify_fd() >= 0);

    std::vector<tinyproxy::detail::background_resolver::answer> answers;
    for (int waits = 0; waits < 100 && answers.empty(); ++waits) {
        pollfd ready{resolver.notify_fd(), POLLIN, 0};
        (void)::poll(&ready, 1, 100); // a deadline on every wait: 10 s in all
        answers = resolver.take();
    }
    REQUIRE(answers.size() == 1);
    CHECK(answers[0].id == 42);
    CHECK_FALSE(answers[0].error);
    REQUIRE(answers[0].candidates.size() == 1);
    CHECK(answers[0].candidates[0].port == 8080);
}
