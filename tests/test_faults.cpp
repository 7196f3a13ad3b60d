// Unit tests for the fault stages (fault/*.hpp): each stage alone in a stage_chain, driven at
// fake times into a recording sink. No sockets, no sleeping, no timed assertions: every time
// checked here is a fake one, exact.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <algorithm>    // std::max, std::min, std::find
#include <chrono>       // fake times
#include <cstddef>      // std::size_t
#include <cstdint>      // byte counts
#include <limits>       // the largest values a fault takes
#include <memory>       // the stage under test, owned by its chain
#include <stdexcept>    // a bad spec
#include <string>       // delivered bytes
#include <string_view>  // fed bytes
#include <system_error> // the reset's reason
#include <utility>      // std::move
#include <vector>       // deliveries

#include <tinyproxy/tinyproxy.hpp>

namespace {

using namespace std::chrono_literals;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using tinyproxy::byte_view;
using tinyproxy::fault_random;
using tinyproxy::time_point;

/// Fake time zero (well inside the clock's range both ways).
const time_point origin = time_point{} + std::chrono::hours(24);

/// A fake time, `since` after origin.
time_point at(nanoseconds since) { return origin + since; }

/// What one stage_chain delivered, and when (the driver sets `now` before each call), with
/// the end, resets and closes. Bulk runs keep a count and check the bytes against a pattern
/// instead of keeping them.
class recording_sink final : public tinyproxy::stage_sink {
public:
    struct delivery {
        time_point when;
        std::string bytes;
    };

    time_point now = origin;
    bool keep_bytes = true; // off: count, and check against pattern_byte()
    std::vector<delivery> deliveries;
    std::uint64_t delivered = 0; // bytes, in all
    std::size_t largest = 0;     // the largest single delivery
    std::uint64_t pattern_errors = 0;
    time_point first_delivery = time_point::max();
    time_point last_delivery = time_point::min();
    int ends = 0;
    time_point end_at = time_point::max(); // the first end
    bool bytes_after_end = false;
    int resets = 0;
    time_point reset_at = time_point::max();
    std::error_code reset_why;
    int closes = 0;
    time_point close_at = time_point::max();

    static char pattern_byte(std::uint64_t index) { return static_cast<char>(index % 251); }

    void deliver(byte_view bytes) noexcept override {
        bytes_after_end = bytes_after_end || ends != 0;
        if (keep_bytes) {
            deliveries.push_back(delivery{now, std::string(bytes.as_chars())});
        } else {
            for (std::size_t i = 0; i < bytes.size(); ++i) {
                pattern_errors += static_cast<char>(bytes[i]) != pattern_byte(delivered + i);
            }
        }
        delivered += bytes.size();
        largest = std::max(largest, bytes.size());
        first_delivery = std::min(first_delivery, now);
        last_delivery = now;
    }
    void deliver_end() noexcept override {
        end_at = ends == 0 ? now : end_at;
        ++ends;
    }
    void reset(std::error_code why) noexcept override {
        reset_at = resets == 0 ? now : reset_at;
        reset_why = why;
        ++resets;
    }
    void close() noexcept override {
        close_at = closes == 0 ? now : close_at;
        ++closes;
    }

    /// Everything delivered, in order.
    std::string all() const {
        std::string joined;
        for (const delivery& d : deliveries) {
            joined += d.bytes;
        }
        return joined;
    }
    /// When each delivered byte was delivered.
    std::vector<time_point> byte_times() const {
        std::vector<time_point> times;
        for (const delivery& d : deliveries) {
            times.insert(times.end(), d.bytes.size(), d.when);
        }
        return times;
    }
};

/// One stage alone in a chain, driven at fake times: each call first wakes the chain at every
/// wake-up due by its time, in order, as a driver pumping at exactly the asked times would.
class fake_run {
public:
    explicit fake_run(std::unique_ptr<tinyproxy::relay_stage> stage) {
        chain.push_back(std::move(stage));
    }

    tinyproxy::stage_chain chain;
    recording_sink sink;

    tinyproxy::relay_stage& stage() { return chain[0]; }

    /// Wakes the chain at each wake-up it asks for, up to and including `until`.
    void run_until(time_point until) {
        for (int wakes = 0; wakes < max_wakes; ++wakes) {
            const time_point wake = chain.next_wake();
            if (wake > until) {
                return;
            }
            move_to(std::max(wake, now_));
            chain.wake(now_, sink);
        }
        FAIL("the stage asked for more than " << max_wakes << " wake-ups");
    }
    /// Runs until nothing is due (or a day of fake time).
    void run_out() { run_until(origin + std::chrono::hours(48)); }

    void start(time_point when) {
        run_until(when);
        move_to(when);
        chain.start(when, sink);
    }
    void feed(time_point when, std::string_view bytes) {
        run_until(when);
        move_to(when);
        chain.feed(bytes, when, sink);
    }
    void feed_end(time_point when) {
        run_until(when);
        move_to(when);
        chain.feed_end(when, sink);
    }
    /// Takes the stage out (on_remove) at `when`.
    void erase(time_point when) {
        run_until(when);
        move_to(when);
        chain.erase(0, when, sink);
    }
    /// A pump at `when` only, missing every wake-up before it (a late driver).
    void wake_late(time_point when) {
        move_to(when);
        chain.wake(when, sink);
    }

private:
    static constexpr int max_wakes = 1000000;

    void move_to(time_point when) {
        REQUIRE(when >= now_); // fake time never goes back
        now_ = when;
        sink.now = when;
    }

    time_point now_ = origin;
};

template <class Stage, class... Args>
fake_run run_of(Args&&... args) {
    return fake_run(std::make_unique<Stage>(std::forward<Args>(args)...));
}

/// Chunk i of a test stream: distinct bytes, so order and loss show.
std::string chunk_text(std::size_t i, std::size_t size) {
    std::string text(size, '\0');
    for (std::size_t j = 0; j < size; ++j) {
        text[j] = static_cast<char>('a' + (i * 7 + j) % 26);
    }
    return text;
}

} // namespace

// --- latency -------------------------------------------------------------------------------

TEST_CASE("fault: latency delays each chunk by its latency, in order, and the end after them") {
    auto run = run_of<tinyproxy::latency_stage>(100ms, 0ms, fault_random(1));
    run.feed(at(0ms), "ab");
    run.feed(at(30ms), "cd");
    run.feed_end(at(50ms));
    CHECK(run.stage().held() == 4);
    CHECK(run.chain.next_wake() == at(100ms));
    run.run_until(at(99ms));
    CHECK(run.sink.delivered == 0);
    run.run_until(at(100ms));
    REQUIRE(run.sink.deliveries.size() == 1);
    CHECK(run.sink.deliveries[0].when == at(100ms));
    CHECK(run.sink.deliveries[0].bytes == "ab");
    CHECK(run.stage().held() == 2);
    CHECK(run.chain.next_wake() == at(130ms));
    run.run_until(at(149ms));
    REQUIRE(run.sink.deliveries.size() == 2);
    CHECK(run.sink.deliveries[1].when == at(130ms));
    CHECK(run.sink.deliveries[1].bytes == "cd");
    CHECK(run.sink.ends == 0); // the end came at 50 ms: due at 150 ms, a chunk's latency later
    run.run_out();
    CHECK(run.sink.ends == 1);
    CHECK(run.sink.end_at == at(150ms));
    CHECK_FALSE(run.sink.bytes_after_end);
    CHECK(run.stage().held() == 0);
    CHECK(run.chain.next_wake() == time_point::max());
}

TEST_CASE("fault: latency's end of stream waits for the last chunk, even one delayed longer") {
    auto run = run_of<tinyproxy::latency_stage>(100ms, 0ms, fault_random(1));
    run.feed(at(0ms), "x");
    run.feed_end(at(0ms));
    run.run_out();
    CHECK(run.sink.deliveries.at(0).when == at(100ms));
    CHECK(run.sink.end_at == at(100ms));
    CHECK_FALSE(run.sink.bytes_after_end);

    auto alone = run_of<tinyproxy::latency_stage>(100ms, 0ms, fault_random(1));
    alone.feed_end(at(5ms)); // no byte at all: the end is delayed like a chunk
    alone.run_until(at(104ms));
    CHECK(alone.sink.ends == 0);
    alone.run_out();
    CHECK(alone.sink.end_at == at(105ms));
}

TEST_CASE("fault: latency passes nothing before its time, whenever the driver calls") {
    auto run = run_of<tinyproxy::latency_stage>(100ms, 0ms, fault_random(1));
    run.feed(at(0ms), "a");
    run.feed(at(99999us), "b"); // a call a microsecond before the first chunk is due
    run.wake_late(at(99999us)); // and a pump then (a driver waking early)
    CHECK(run.sink.delivered == 0);
    run.wake_late(at(100ms));
    CHECK(run.sink.all() == "a");
    run.wake_late(at(199998us));
    CHECK(run.sink.all() == "a");
    run.wake_late(at(199999us));
    CHECK(run.sink.all() == "ab");
}

TEST_CASE("fault: latency with no latency and no jitter passes at once and holds nothing") {
    auto run = run_of<tinyproxy::latency_stage>(0ms, 0ms, fault_random(1));
    run.feed(at(10ms), "abc");
    CHECK(run.sink.all() == "abc");
    CHECK(run.sink.deliveries.at(0).when == at(10ms));
    CHECK(run.stage().held() == 0);
    CHECK(run.chain.next_wake() == time_point::max());
    run.feed_end(at(20ms));
    CHECK(run.sink.end_at == at(20ms));
}

namespace {

/// Feeds `count` chunks of `size` bytes, `gap` apart, through a latency stage; returns each
/// chunk's delay (first byte's delivery minus its feed time) after checking the bytes and
/// their order and that each chunk went out whole at one time.
std::vector<microseconds> latency_delays(milliseconds latency, milliseconds jitter,
                                         fault_random random, std::size_t count, milliseconds gap,
                                         std::size_t size = 8) {
    auto run = run_of<tinyproxy::latency_stage>(latency, jitter, random);
    std::string sent;
    for (std::size_t i = 0; i < count; ++i) {
        const std::string chunk = chunk_text(i, size);
        run.feed(at(gap * static_cast<int>(i)), chunk);
        sent += chunk;
    }
    run.feed_end(at(gap * static_cast<int>(count)));
    run.run_out();
    REQUIRE(run.sink.all() == sent);
    CHECK(run.sink.ends == 1);
    CHECK_FALSE(run.sink.bytes_after_end);
    const std::vector<time_point> times = run.sink.byte_times();
    std::vector<microseconds> delays;
    for (std::size_t i = 0; i < count; ++i) {
        const time_point fed = at(gap * static_cast<int>(i));
        const time_point first = times[i * size];
        CHECK(times[i * size + size - 1] == first); // a chunk goes whole
        CHECK(first >= fed);                        // never before it came
        delays.push_back(std::chrono::duration_cast<microseconds>(first - fed));
    }
    for (std::size_t i = 1; i < times.size(); ++i) {
        CHECK(times[i] >= times[i - 1]); // order kept: never before the byte ahead
    }
    return delays;
}

} // namespace

TEST_CASE("fault: latency jitter is drawn per chunk, in microseconds, within latency ± jitter") {
    // Chunks a second apart: none waits for the one ahead, so each delay is its own draw.
    const std::vector<microseconds> delays =
        latency_delays(100ms, 10ms, fault_random(7), 200, 1000ms);
    std::vector<microseconds> distinct;
    bool sub_millisecond = false;
    int shorter = 0; // than the latency: the jitter goes both ways
    int longer = 0;
    for (microseconds delay : delays) {
        CHECK(delay >= 90ms);
        CHECK(delay <= 110ms);
        shorter += delay < 95ms;
        longer += delay > 105ms;
        sub_millisecond = sub_millisecond || delay.count() % 1000 != 0;
        if (std::find(distinct.begin(), distinct.end(), delay) == distinct.end()) {
            distinct.push_back(delay);
        }
    }
    CHECK(distinct.size() > 150); // 20,001 possible draws: a jitter applied, per chunk
    CHECK(sub_millisecond);       // drawn in microseconds, not whole milliseconds
    CHECK(shorter > 20);          // a quarter of 200 draws is 50 each way
    CHECK(longer > 20);
}

TEST_CASE("fault: latency keeps order when a later chunk draws a shorter delay") {
    // Chunks 1 ms apart with ±20 ms of jitter: many draw shorter than the one ahead, and wait.
    const std::vector<microseconds> delays = latency_delays(5ms, 20ms, fault_random(3), 500, 1ms);
    microseconds longest_due(0); // due time of the latest chunk so far, since origin
    microseconds previous_due(-1);
    bool some_waited = false;
    for (std::size_t i = 0; i < delays.size(); ++i) {
        const microseconds fed = milliseconds(static_cast<int>(i));
        const microseconds due = fed + delays[i];
        CHECK(due <= std::max(longest_due, fed + 25ms)); // waits only for the one ahead
        // Two draws a millisecond apart land on one microsecond only by waiting.
        some_waited = some_waited || due == previous_due;
        longest_due = std::max(longest_due, due);
        previous_due = due;
    }
    CHECK(some_waited); // the case this test is for happened
}

TEST_CASE("fault: latency with the same seed makes the same delays, another seed others") {
    const auto seven = latency_delays(100ms, 50ms, fault_random(7), 50, 1000ms);
    const auto again = latency_delays(100ms, 50ms, fault_random(7), 50, 1000ms);
    const auto eight = latency_delays(100ms, 50ms, fault_random(8), 50, 1000ms);
    CHECK(seven == again);
    CHECK(seven != eight);
}

TEST_CASE("fault: latency removed passes everything it holds at once, then the end") {
    auto run = run_of<tinyproxy::latency_stage>(1000ms, 100ms, fault_random(1));
    run.feed(at(0ms), "abc");
    run.feed(at(10ms), "def");
    run.feed_end(at(20ms));
    run.run_until(at(30ms));
    CHECK(run.sink.delivered == 0);
    CHECK(run.chain.held() == 6);
    run.erase(at(30ms));
    CHECK(run.sink.all() == "abcdef");
    CHECK(run.sink.last_delivery == at(30ms));
    CHECK(run.sink.ends >= 1); // (stage_chain::erase passes the end on again after the last stage)
    CHECK(run.sink.end_at == at(30ms));
    CHECK_FALSE(run.sink.bytes_after_end);
    CHECK(run.chain.empty());

    auto open = run_of<tinyproxy::latency_stage>(1000ms, 0ms, fault_random(1));
    open.feed(at(0ms), "abc");
    open.erase(at(5ms));
    CHECK(open.sink.all() == "abc");
    CHECK(open.sink.ends == 0); // no end came: none is made up
}

// --- bandwidth -----------------------------------------------------------------------------

namespace {

/// Bytes `rate_kb` KB/s lets through in `elapsed`, rounded down.
std::uint64_t allowed_bytes(std::int64_t rate_kb, nanoseconds elapsed) {
    return static_cast<std::uint64_t>(elapsed.count()) * static_cast<std::uint64_t>(rate_kb) /
           1000000;
}

/// Sends `total` bytes through a bandwidth stage as the relay would: 64 KiB reads while the
/// chain holds less than a buffer's worth (back-pressure), a pump at each wake-up asked for.
/// Checks at every step that no more has gone than the rate allows; returns the rate achieved,
/// in bytes per second of fake time, first read to last delivery.
double achieved_rate(std::int64_t rate_kb, std::uint64_t total) {
    constexpr std::size_t read_size = 64 * 1024;
    constexpr std::size_t buffer = 1024 * 1024;
    auto run = run_of<tinyproxy::bandwidth_stage>(rate_kb);
    run.sink.keep_bytes = false;
    std::string read(read_size, '\0');
    std::uint64_t fed = 0;
    time_point now = origin;
    while (run.sink.delivered < total) {
        while (fed < total && run.chain.held() < buffer) {
            const std::size_t size =
                static_cast<std::size_t>(std::min<std::uint64_t>(read_size, total - fed));
            for (std::size_t i = 0; i < size; ++i) {
                read[i] = recording_sink::pattern_byte(fed + i);
            }
            run.feed(now, std::string_view(read.data(), size));
            fed += size;
        }
        const time_point wake = run.chain.next_wake();
        REQUIRE(wake != time_point::max());
        now = std::max(now, wake);
        run.run_until(now);
        REQUIRE(run.sink.delivered <= allowed_bytes(rate_kb, now - origin)); // never ahead
        CHECK(run.sink.largest <= static_cast<std::size_t>(rate_kb) * 100);  // 100 ms at most
    }
    CHECK(run.sink.delivered == total);
    CHECK(run.sink.pattern_errors == 0);
    const double seconds = std::chrono::duration<double>(run.sink.last_delivery - origin).count();
    return static_cast<double>(total) / seconds;
}

} // namespace

TEST_CASE("fault: bandwidth holds its rate within 1 % from 10 KB/s to 1 GB/s") {
    struct rate_case {
        std::int64_t rate_kb;
        std::uint64_t total; // two seconds' worth, or less at the high rates (memory)
    };
    const rate_case cases[] = {
        {10, 20000}, {1000, 2000000}, {100000, 20000000}, {1000000, 100000000}};
    for (const rate_case& c : cases) {
        CAPTURE(c.rate_kb);
        const double target = static_cast<double>(c.rate_kb) * 1000;
        const double rate = achieved_rate(c.rate_kb, c.total);
        CHECK(rate <= target * 1.01);
        CHECK(rate >= target * 0.99);
    }
}

TEST_CASE("fault: bandwidth schedules from its start, not from rounded steps") {
    // 3 KB/s does not divide a second into whole nanoseconds per byte: rounded per-step
    // sleeps would drift; the schedule puts the 10,000th byte at exactly 10/3 s, rounded up.
    auto run = run_of<tinyproxy::bandwidth_stage>(3);
    run.feed(at(0ms), std::string(10000, 'x'));
    CHECK(run.sink.delivered == 0); // the first bytes wait their time too, as Toxiproxy's
    CHECK(run.stage().held() == 10000);
    run.run_out();
    CHECK(run.sink.delivered == 10000);
    CHECK(run.sink.last_delivery == at(3333333334ns));
    CHECK(run.stage().held() == 0);
}

TEST_CASE("fault: bandwidth passes at most 100 ms worth at a time, even to a late driver") {
    auto run = run_of<tinyproxy::bandwidth_stage>(1); // 1 KB/s: 100 B per 100 ms
    run.feed(at(0ms), std::string(1000, 'x'));
    run.wake_late(at(2000ms)); // every wake-up before it missed: all 1,000 B are due
    CHECK(run.sink.delivered == 1000);
    CHECK(run.sink.deliveries.size() == 10);
    CHECK(run.sink.largest == 100);

    auto punctual = run_of<tinyproxy::bandwidth_stage>(1);
    punctual.feed(at(0ms), std::string(1000, 'x'));
    punctual.run_out();
    CHECK(punctual.sink.largest <= 100);
    CHECK(punctual.sink.deliveries.size() >= 10);
    CHECK(punctual.sink.last_delivery == at(1000ms));
}

TEST_CASE("fault: bandwidth gives no credit for idle time") {
    auto run = run_of<tinyproxy::bandwidth_stage>(10); // 10 KB/s: 1,000 B take 100 ms
    run.feed(at(0ms), std::string(1000, 'a'));
    run.run_until(at(10000ms));
    CHECK(run.sink.delivered == 1000);
    CHECK(run.sink.last_delivery == at(100ms));
    CHECK(run.chain.next_wake() == time_point::max());
    const std::size_t before = run.sink.deliveries.size();
    run.feed(at(10000ms), std::string(1000, 'b')); // after 9.9 s idle: no burst
    CHECK(run.sink.delivered == 1000);
    run.run_out();
    CHECK(run.sink.delivered == 2000);
    CHECK(run.sink.deliveries.at(before).when > at(10000ms));
    CHECK(run.sink.last_delivery == at(10100ms));
    for (std::size_t i = before; i < run.sink.deliveries.size(); ++i) {
        std::uint64_t sent = 0; // of the second batch, by this delivery
        for (std::size_t j = before; j <= i; ++j) {
            sent += run.sink.deliveries[j].bytes.size();
        }
        CHECK(sent <= allowed_bytes(10, run.sink.deliveries[i].when - at(10000ms)));
    }
}

TEST_CASE("fault: bandwidth passes the end once every held byte has gone, not later") {
    auto run = run_of<tinyproxy::bandwidth_stage>(1);
    run.feed(at(0ms), std::string(1000, 'x'));
    run.feed_end(at(500ms));
    run.run_until(at(999ms));
    CHECK(run.sink.ends == 0);
    run.run_out();
    CHECK(run.sink.ends == 1);
    CHECK(run.sink.end_at == at(1000ms));
    CHECK(run.sink.last_delivery == at(1000ms));
    CHECK_FALSE(run.sink.bytes_after_end);

    auto empty = run_of<tinyproxy::bandwidth_stage>(1);
    empty.feed_end(at(5ms)); // nothing held: at once
    CHECK(empty.sink.end_at == at(5ms));
}

TEST_CASE("fault: bandwidth removed passes what it holds at once, then the end") {
    auto run = run_of<tinyproxy::bandwidth_stage>(1);
    std::string sent;
    for (std::size_t i = 0; i < 10; ++i) {
        sent += chunk_text(i, 100);
    }
    run.feed(at(0ms), sent);
    run.feed_end(at(0ms));
    run.run_until(at(500ms));
    CHECK(run.sink.delivered == 500);
    CHECK(run.stage().held() == 500);
    run.erase(at(500ms));
    CHECK(run.sink.all() == sent);
    CHECK(run.sink.last_delivery == at(500ms));
    CHECK(run.sink.ends >= 1);
    CHECK(run.sink.end_at == at(500ms));
    CHECK_FALSE(run.sink.bytes_after_end);
}

// --- slicer --------------------------------------------------------------------------------

namespace {

/// The sizes of the slices a slicer with no delay makes of `chunks` chunks of `size` bytes,
/// after checking that the bytes came through whole and in order, all at the time fed.
std::vector<std::size_t> slice_sizes(std::size_t average, std::size_t variation,
                                     fault_random random, std::size_t chunks, std::size_t size) {
    auto run = run_of<tinyproxy::slicer_stage>(average, variation, 0us, random);
    std::string sent;
    for (std::size_t i = 0; i < chunks; ++i) {
        const std::string chunk = chunk_text(i, size);
        run.feed(at(milliseconds(static_cast<int>(i))), chunk);
        sent += chunk;
        CHECK(run.sink.delivered == sent.size()); // delay 0: the whole chunk, at once
        CHECK(run.stage().held() == 0);
    }
    CHECK(run.sink.all() == sent);
    std::vector<std::size_t> sizes;
    for (const recording_sink::delivery& d : run.sink.deliveries) {
        sizes.push_back(d.bytes.size());
    }
    return sizes;
}

} // namespace

TEST_CASE("fault: slicer cuts as Toxiproxy: halving while above average + variation") {
    // Variation 0 shows the cut: 1,000 halves to 500, 250, 125, 62|63, 31|32, 15|16, 7|8,
    // 128 slices of 7 or 8 (Toxiproxy's average is the largest a slice may be, not its mean).
    const std::vector<std::size_t> even = slice_sizes(10, 0, fault_random(1), 1, 1000);
    CHECK(even.size() == 128);
    for (std::size_t size : even) {
        CHECK((size == 7 || size == 8));
    }
    // With variation, each slice is at most average + variation, and at least
    // (average + variation + 1) / 2 - variation (the smallest half of a piece just too big).
    const std::vector<std::size_t> varied = slice_sizes(10, 4, fault_random(7), 20, 1000);
    std::size_t total = 0;
    for (std::size_t size : varied) {
        CHECK(size <= 14);
        CHECK(size >= 3);
        total += size;
    }
    CHECK(total == 20000);
    CHECK(varied.size() > 20000 / 14);
    // A chunk no larger than average + variation goes whole, in one slice.
    CHECK(slice_sizes(10, 4, fault_random(7), 3, 14) == std::vector<std::size_t>{14, 14, 14});
    CHECK(slice_sizes(10, 4, fault_random(7), 1, 2) == std::vector<std::size_t>{2});
}

namespace {

/// Toxiproxy's chunk() (toxics/slicer.go) as written there, recursive, with its draw
/// rand.Intn(2v) - v taken from `random`: the slices' sizes in order.
void toxiproxy_chunk(std::size_t start, std::size_t end, std::size_t average, std::size_t variation,
                     fault_random& random, std::vector<std::size_t>& out) {
    if (end - start <= average + variation) {
        out.push_back(end - start);
        return;
    }
    auto mid = static_cast<std::int64_t>(start + (end - start) / 2);
    if (variation > 0) {
        const auto v = static_cast<std::int64_t>(variation);
        mid += random.between(0, 2 * v - 1) - v;
    }
    toxiproxy_chunk(start, static_cast<std::size_t>(mid), average, variation, random, out);
    toxiproxy_chunk(static_cast<std::size_t>(mid), end, average, variation, random, out);
}

} // namespace

TEST_CASE("fault: slicer's cut is Toxiproxy's chunk(), draw for draw") {
    for (std::uint64_t seed : {std::uint64_t{1}, std::uint64_t{7}, std::uint64_t{8}}) {
        CAPTURE(seed);
        fault_random random(seed);
        std::vector<std::size_t> expected;
        for (std::size_t i = 0; i < 5; ++i) {
            toxiproxy_chunk(0, 1000 + 37 * i, 20, 15, random, expected);
        }
        auto run = run_of<tinyproxy::slicer_stage>(20, 15, 0us, fault_random(seed));
        for (std::size_t i = 0; i < 5; ++i) {
            run.feed(at(0ms), chunk_text(i, 1000 + 37 * i));
        }
        std::vector<std::size_t> sizes;
        for (const recording_sink::delivery& d : run.sink.deliveries) {
            sizes.push_back(d.bytes.size());
        }
        CHECK(sizes == expected);
    }
}

TEST_CASE("fault: slicer clamps a variation of average or more to average - 1") {
    const std::vector<std::size_t> sizes = slice_sizes(10, 50, fault_random(7), 10, 1000);
    std::size_t total = 0;
    for (std::size_t size : sizes) {
        CHECK(size >= 1);
        CHECK(size <= 19);
        total += size;
    }
    CHECK(total == 10000);
}

TEST_CASE("fault: slicer with the same seed cuts the same slices, another seed others") {
    const auto seven = slice_sizes(100, 50, fault_random(7), 10, 1000);
    CHECK(seven == slice_sizes(100, 50, fault_random(7), 10, 1000));
    CHECK(seven != slice_sizes(100, 50, fault_random(8), 10, 1000));
}

TEST_CASE("fault: slicer passes slices a delay apart, the next chunk's after the last") {
    auto run = run_of<tinyproxy::slicer_stage>(4, 0, 1000us, fault_random(1));
    run.feed(at(0ms), "0123456789abcdef"); // 16 B: slices of 4
    CHECK(run.sink.all() == "0123");       // the first at once
    CHECK(run.stage().held() == 12);
    CHECK(run.chain.next_wake() == at(1ms));
    run.feed(at(1500us), "ghij");
    run.feed_end(at(1600us));
    run.run_out();
    REQUIRE(run.sink.deliveries.size() == 5);
    const char* const expected[] = {"0123", "4567", "89ab", "cdef", "ghij"};
    for (std::size_t i = 0; i < 5; ++i) {
        CAPTURE(i);
        CHECK(run.sink.deliveries[i].bytes == expected[i]);
        CHECK(run.sink.deliveries[i].when == at(milliseconds(static_cast<int>(i))));
    }
    CHECK(run.sink.ends == 1);
    CHECK(run.sink.end_at == at(4ms)); // right after the last slice
    CHECK_FALSE(run.sink.bytes_after_end);
    CHECK(run.stage().held() == 0);
}

TEST_CASE("fault: slicer keeps its pace for a late driver, one pass per slice") {
    // 20 B at average 4: 10|10, 5|5, 2|3: eight slices, due at 0, 1, ... 7 ms.
    auto run = run_of<tinyproxy::slicer_stage>(4, 0, 1000us, fault_random(1));
    run.feed(at(0ms), "0123456789abcdefghij");
    CHECK(run.sink.all() == "01");
    run.wake_late(at(2500us)); // the wake-ups at 1 and 2 ms missed: both their slices go now
    REQUIRE(run.sink.deliveries.size() == 3);
    CHECK(run.sink.deliveries[1].bytes == "234");
    CHECK(run.sink.deliveries[2].bytes == "56");
    CHECK(run.chain.next_wake() == at(3ms)); // the schedule, not the late pump, sets the next
    run.run_out();
    CHECK(run.sink.all() == "0123456789abcdefghij");
    CHECK(run.sink.deliveries.size() == 8);
    CHECK(run.sink.last_delivery == at(7ms));
    run.feed(at(10ms), "klmn"); // after a pause: at once, and no credit for the pause
    run.feed(at(10ms), "opqr");
    CHECK(run.sink.deliveries.at(8).when == at(10ms));
    CHECK(run.chain.next_wake() == at(11ms));
}

TEST_CASE("fault: slicer removed passes the rest at once, then the end") {
    auto run = run_of<tinyproxy::slicer_stage>(10, 0, microseconds(1000000), fault_random(1));
    const std::string sent = chunk_text(0, 80);
    run.feed(at(0ms), sent);
    run.feed_end(at(0ms));
    run.run_until(at(500ms));
    CHECK(run.sink.delivered == 10);
    CHECK(run.stage().held() == 70);
    run.erase(at(500ms));
    CHECK(run.sink.all() == sent);
    CHECK(run.sink.last_delivery == at(500ms));
    CHECK(run.sink.ends >= 1);
    CHECK(run.sink.end_at == at(500ms));
    CHECK_FALSE(run.sink.bytes_after_end);
}

// --- slow_close ----------------------------------------------------------------------------

TEST_CASE("fault: slow_close passes bytes at once and the end a delay after it came") {
    auto run = run_of<tinyproxy::slow_close_stage>(500ms);
    run.feed(at(0ms), "abc");
    CHECK(run.sink.all() == "abc");
    CHECK(run.stage().held() == 0);
    run.feed(at(50ms), "def");
    run.feed_end(at(100ms));
    CHECK(run.sink.all() == "abcdef");
    CHECK(run.stage().held() == 0);
    run.run_until(at(599ms));
    CHECK(run.sink.ends == 0);
    run.run_out();
    CHECK(run.sink.ends == 1);
    CHECK(run.sink.end_at == at(600ms));
    CHECK_FALSE(run.sink.bytes_after_end);

    auto none = run_of<tinyproxy::slow_close_stage>(0ms);
    none.feed_end(at(7ms));
    CHECK(none.sink.end_at == at(7ms));
}

TEST_CASE("fault: slow_close removed passes a waiting end at once") {
    auto run = run_of<tinyproxy::slow_close_stage>(500ms);
    run.feed(at(0ms), "abc");
    run.feed_end(at(100ms));
    run.erase(at(200ms));
    CHECK(run.sink.all() == "abc");
    CHECK(run.sink.ends >= 1);
    CHECK(run.sink.end_at == at(200ms));
}

// --- timeout -------------------------------------------------------------------------------

TEST_CASE("fault: timeout holds every byte and the end, and closes the tunnel on time") {
    auto run = run_of<tinyproxy::timeout_stage>(1000ms);
    run.start(at(0ms));
    run.feed(at(100ms), "abc");
    run.feed(at(200ms), "def");
    run.feed_end(at(300ms));
    CHECK(run.stage().held() == 6);
    run.run_until(at(999ms));
    CHECK(run.sink.closes == 0);
    CHECK(run.sink.delivered == 0);
    CHECK(run.sink.ends == 0);
    run.run_out();
    CHECK(run.sink.closes == 1);
    CHECK(run.sink.close_at == at(1000ms)); // from the start, not from the first byte
    CHECK(run.sink.delivered == 0);
    CHECK(run.sink.ends == 0);
    CHECK(run.sink.resets == 0);
}

TEST_CASE("fault: timeout's timer runs from when the stage starts") {
    auto run = run_of<tinyproxy::timeout_stage>(1000ms);
    run.start(at(500ms)); // added to a live tunnel at 500 ms
    run.run_until(at(1499ms));
    CHECK(run.sink.closes == 0);
    run.run_out();
    CHECK(run.sink.close_at == at(1500ms));
}

TEST_CASE("fault: timeout 0 holds the direction open forever") {
    auto run = run_of<tinyproxy::timeout_stage>(0ms);
    run.start(at(0ms));
    run.feed(at(10ms), "abc");
    run.feed_end(at(20ms));
    run.run_out();
    CHECK(run.chain.next_wake() == time_point::max());
    CHECK(run.sink.closes == 0);
    CHECK(run.sink.delivered == 0);
    CHECK(run.sink.ends == 0);
    CHECK(run.stage().held() == 3);
}

TEST_CASE("fault: timeout removed passes every byte it held, then the end, and never closes") {
    auto run = run_of<tinyproxy::timeout_stage>(1000ms);
    run.start(at(0ms));
    run.feed(at(100ms), "abc");
    run.feed(at(200ms), "def");
    run.feed_end(at(300ms));
    run.erase(at(500ms));
    CHECK(run.sink.all() == "abcdef");
    CHECK(run.sink.last_delivery == at(500ms));
    CHECK(run.sink.ends >= 1);
    CHECK_FALSE(run.sink.bytes_after_end);
    run.run_out();
    CHECK(run.sink.closes == 0);
}

// --- reset_peer ----------------------------------------------------------------------------

TEST_CASE("fault: reset_peer resets a timeout after the first byte, holding what came") {
    auto run = run_of<tinyproxy::reset_peer_stage>(1000ms);
    run.start(at(0ms));
    run.run_until(at(5000ms));
    CHECK(run.sink.resets == 0); // no traffic, no reset (as Toxiproxy)
    run.feed(at(5000ms), "abc");
    run.feed(at(5500ms), "def");
    CHECK(run.stage().held() == 6);
    run.run_until(at(5999ms));
    CHECK(run.sink.resets == 0);
    run.run_out();
    CHECK(run.sink.resets == 1);
    CHECK(run.sink.reset_at == at(6000ms));
    CHECK(run.sink.reset_why == tinyproxy::make_error_code(tinyproxy::errc::reset_by_stage));
    CHECK(run.sink.delivered == 0);
    CHECK(run.sink.ends == 0);
    CHECK(run.sink.closes == 0);
}

TEST_CASE("fault: reset_peer's timer starts at the end of stream if that comes first") {
    auto run = run_of<tinyproxy::reset_peer_stage>(1000ms);
    run.feed_end(at(200ms));
    run.run_until(at(1199ms));
    CHECK(run.sink.resets == 0);
    run.run_out();
    CHECK(run.sink.reset_at == at(1200ms));
    CHECK(run.sink.ends == 0);
}

TEST_CASE("fault: reset_peer 0 resets in the first byte's call") {
    auto run = run_of<tinyproxy::reset_peer_stage>(0ms);
    run.start(at(0ms));
    CHECK(run.sink.resets == 0);
    run.feed(at(300ms), "abc");
    CHECK(run.sink.resets == 1);
    CHECK(run.sink.reset_at == at(300ms));
    CHECK(run.sink.delivered == 0);
    run.feed(at(400ms), "def");
    run.run_out();
    CHECK(run.sink.resets == 1);

    auto ended = run_of<tinyproxy::reset_peer_stage>(0ms);
    ended.feed_end(at(10ms));
    CHECK(ended.sink.resets == 1);
    CHECK(ended.sink.ends == 0);
}

TEST_CASE("fault: reset_peer removed before its reset passes what it held and never resets") {
    auto run = run_of<tinyproxy::reset_peer_stage>(1000ms);
    run.feed(at(0ms), "abc");
    run.feed_end(at(100ms));
    run.erase(at(500ms));
    CHECK(run.sink.all() == "abc");
    CHECK(run.sink.ends >= 1);
    CHECK_FALSE(run.sink.bytes_after_end);
    run.run_out();
    CHECK(run.sink.resets == 0);
}

// --- limit_data ----------------------------------------------------------------------------

TEST_CASE("fault: limit_data passes bytes up to its limit, cuts the chunk across it, closes") {
    auto run = run_of<tinyproxy::limit_data_stage>(10);
    auto& limit = static_cast<tinyproxy::limit_data_stage&>(run.stage());
    run.feed(at(0ms), "abcdef");
    CHECK(run.sink.all() == "abcdef");
    CHECK(limit.passed() == 6);
    CHECK(run.sink.closes == 0);
    run.feed(at(1ms), "ghijkl");
    CHECK(run.sink.all() == "abcdefghij");
    CHECK(limit.passed() == 10);
    CHECK(run.sink.closes == 1);
    CHECK(run.sink.close_at == at(1ms));
    run.feed(at(2ms), "mno"); // the relay reads no more; if it did, nothing would pass
    CHECK(run.sink.delivered == 10);
    CHECK(run.sink.closes == 1);
    CHECK(run.stage().held() == 0);

    auto exact = run_of<tinyproxy::limit_data_stage>(6);
    exact.feed(at(0ms), "abcdef");
    CHECK(exact.sink.all() == "abcdef");
    CHECK(exact.sink.closes == 1);
}

TEST_CASE("fault: limit_data with its limit reached closes at the first byte, passing none") {
    auto zero = run_of<tinyproxy::limit_data_stage>(0);
    zero.start(at(0ms));
    CHECK(zero.sink.closes == 0); // no byte, no close
    zero.feed(at(5ms), "abc");
    CHECK(zero.sink.delivered == 0);
    CHECK(zero.sink.closes == 1);

    auto carried = run_of<tinyproxy::limit_data_stage>(10, 8); // changed on a live tunnel
    carried.feed(at(0ms), "abcdef");
    CHECK(carried.sink.all() == "ab");
    CHECK(carried.sink.closes == 1);
    CHECK(static_cast<tinyproxy::limit_data_stage&>(carried.stage()).passed() == 10);

    auto over = run_of<tinyproxy::limit_data_stage>(10, 12);
    over.feed(at(0ms), "abc");
    CHECK(over.sink.delivered == 0);
    CHECK(over.sink.closes == 1);
}

TEST_CASE("fault: limit_data passes an end of stream before its limit on") {
    auto run = run_of<tinyproxy::limit_data_stage>(10);
    run.feed(at(0ms), "abc");
    run.feed_end(at(1ms));
    CHECK(run.sink.all() == "abc");
    CHECK(run.sink.ends == 1);
    CHECK(run.sink.end_at == at(1ms));
    CHECK(run.sink.closes == 0);
}

// --- all stages ----------------------------------------------------------------------------

TEST_CASE("fault: stages take the largest values without overflow, as never") {
    const milliseconds forever = milliseconds::max();
    {
        auto run = run_of<tinyproxy::latency_stage>(forever, 0ms, fault_random(1));
        run.feed(at(0ms), "abc");
        run.feed_end(at(1ms));
        CHECK(run.sink.delivered == 0);
        CHECK(run.chain.next_wake() > at(std::chrono::hours(24 * 365 * 50)));
        run.erase(at(2ms));
        CHECK(run.sink.all() == "abc");
        auto jittered = run_of<tinyproxy::latency_stage>(forever, forever, fault_random(1));
        jittered.feed(at(0ms), "abc");
        jittered.erase(at(2ms));
        CHECK(jittered.sink.all() == "abc");
    }
    {
        auto run = run_of<tinyproxy::bandwidth_stage>(std::numeric_limits<std::int64_t>::max());
        run.feed(at(0ms), std::string(65536, 'x'));
        run.run_until(at(1ms));
        CHECK(run.sink.delivered == 65536);
    }
    {
        const std::size_t huge = std::numeric_limits<std::size_t>::max();
        // average + variation is past the largest size_t: no piece is that large, none is cut.
        auto run = run_of<tinyproxy::slicer_stage>(huge / 2 + 2, huge / 2, microseconds::max(),
                                                   fault_random(1));
        run.feed(at(0ms), "abc");
        run.feed(at(1ms), "def");
        CHECK(run.sink.all() == "abc"); // one slice each; the next one "never"
        run.erase(at(2ms));
        CHECK(run.sink.all() == "abcdef");
    }
    {
        auto timeout = run_of<tinyproxy::timeout_stage>(forever);
        timeout.start(at(0ms));
        auto reset = run_of<tinyproxy::reset_peer_stage>(forever);
        reset.feed(at(0ms), "abc");
        auto slow = run_of<tinyproxy::slow_close_stage>(forever);
        slow.feed_end(at(0ms));
        timeout.run_out();
        reset.run_out();
        slow.run_out();
        CHECK(timeout.sink.closes == 0);
        CHECK(reset.sink.resets == 0);
        CHECK(slow.sink.ends == 0);
    }
}

// --- the toxic model: specs read, checked and written back -----------------------------------

TEST_CASE("fault: a spec is read with Toxiproxy's names, defaults and units, and written back") {
    const tinyproxy::toxic latency = tinyproxy::parse_toxic("latency,latency=100,jitter=10");
    CHECK(latency.type == tinyproxy::toxic_type::latency);
    CHECK(latency.latency == 100);
    CHECK(latency.jitter == 10);
    CHECK(latency.stream == tinyproxy::direction::to_client); // "downstream", the default
    CHECK(latency.toxicity == 1.0);
    CHECK(tinyproxy::name_of(latency) == "latency_downstream");
    const tinyproxy::toxic named =
        tinyproxy::parse_toxic("bandwidth,rate=500,stream=upstream,toxicity=0.25,name=slow");
    CHECK(named.stream == tinyproxy::direction::to_upstream);
    CHECK(named.rate == 500);
    CHECK(named.toxicity == 0.25);
    CHECK(tinyproxy::name_of(named) == "slow");
    for (const char* spec :
         {"latency,latency=100,jitter=10", "slicer,average_size=64,delay=1000",
          "reset_peer,timeout=2000,toxicity=0.25", "timeout,toxicity=1e-07",
          "limit_data,bytes=4611686018427387904,name=cap", "slow_close,delay=5"}) {
        CAPTURE(spec);
        const tinyproxy::toxic fault = tinyproxy::parse_toxic(spec);
        const tinyproxy::toxic again = tinyproxy::parse_toxic(tinyproxy::to_spec(fault));
        CHECK(tinyproxy::to_spec(again) == tinyproxy::to_spec(fault));
        CHECK(again.toxicity == fault.toxicity);
        CHECK(again.name == fault.name);
    }
}

TEST_CASE("fault: a bad spec is refused with a message naming what is wrong") {
    struct bad_spec {
        const char* spec;
        const char* says;
    };
    for (const bad_spec& bad :
         {bad_spec{"jitterbug", "unknown toxic type 'jitterbug'"},
          bad_spec{"latency,rate=5", "unknown key 'rate' for latency"},
          bad_spec{"latency,latency=-1", "latency: expected a whole number"},
          bad_spec{"latency,latency=1x", "latency: expected a whole number"},
          bad_spec{"latency,toxicity=1.5", "toxicity: expected a number"},
          bad_spec{"latency,toxicity=-0", "toxicity: expected a number"},
          bad_spec{"slicer,average_size=0", "average_size must be at least 1"},
          bad_spec{"bandwidth,rate=0", "rate must be at least 1"},
          bad_spec{"bandwidth", "rate must be at least 1"},
          bad_spec{"latency,latency=1,latency=2", "'latency' given twice"},
          bad_spec{"latency,stream=sideways", "stream: expected upstream"},
          bad_spec{"latency,", "expected KEY=VALUE"},
          bad_spec{"latency,latency=1000000001", "from 0 to 1000000000"}}) {
        CAPTURE(bad.spec);
        std::string message;
        try {
            (void)tinyproxy::parse_toxic(bad.spec);
        } catch (const std::invalid_argument& e) {
            message = e.what();
        }
        CHECK(message.find(bad.says) != std::string::npos);
    }
}
