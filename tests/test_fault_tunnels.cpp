// SPDX-License-Identifier: MIT
// Toxiproxy's faults on real tunnels, through every policy: what each does to the bytes, that
// none is lost or reordered (both ways), that half-close and resets are passed on, and that
// faults changed on live tunnels keep every byte (Toxiproxy's TestNoDataDropped, on sockets).
// Timing is checked only as lower bounds; upper bounds are generous and scaled.
#include <doctest/doctest.h>

#include <atomic>    // the changer's stop flag
#include <cerrno>    // ECONNRESET
#include <chrono>    // elapsed times
#include <cstdint>   // counters
#include <future>    // an upstream told when to go on
#include <memory>    // the shared toxic set
#include <mutex>     // labels collected from session threads
#include <new>       // std::bad_alloc
#include <stdexcept> // a stage that throws
#include <ostream>   // doctest prints std::error_code with operator<<
#include <string>    // labels
#include <thread>    // the live changer
#include <vector>    // payloads

#include <sys/socket.h> // recv

#include "support/loopback.hpp"

using namespace tptest;

namespace {

using tinyproxy::parse_toxic;
using tinyproxy::toxic;
using tinyproxy::toxic_set;

/// Options that give every tunnel the faults of `toxics`.
tinyproxy::options faulty(const std::shared_ptr<toxic_set>& toxics, std::uint64_t seed = 1) {
    tinyproxy::options opts = running_proxy<tinyproxy::thread_policy>::default_options();
    opts.stages = tinyproxy::fault_stages(toxics, seed);
    return opts;
}

/// A set holding `specs`, frozen (as the command line's is).
std::shared_ptr<toxic_set> frozen_set(std::initializer_list<const char*> specs) {
    auto toxics = std::make_shared<toxic_set>();
    for (const char* spec : specs) {
        toxics->add(parse_toxic(spec));
    }
    toxics->freeze();
    return toxics;
}

/// Sends `payload`, half-closes, and reads the whole reply; `clean` says whether it ended in EOF.
bytes send_then_read(tinyproxy::socket& client, const bytes& payload, bool* clean) {
    std::thread writer([&] {
        send_all(client, payload);
        shutdown_write(client);
    });
    bytes reply = read_to_end(client, clean);
    writer.join();
    return reply;
}

/// The errno a read ends with: 0 for EOF, ECONNRESET for a reset, -1 if bytes came first.
int read_outcome(tinyproxy::socket& s) {
    std::uint8_t byte = 0;
    ssize_t n = ::recv(s.native_handle(), &byte, 1, 0);
    return n == 0 ? 0 : n < 0 ? errno : -1;
}

} // namespace

TEST_CASE_TEMPLATE_DEFINE("faults on real tunnels", Policy, fault_tunnels) {
    upstream echo_server(echo);

    SUBCASE("latency both ways: each direction is delayed by at least its latency, every byte "
            "arrives in order, and the client's half-close still gets the whole reply") {
        auto toxics =
            frozen_set({"latency,latency=100,jitter=20", "latency,latency=60,stream=upstream"});
        running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        const bytes payload = random_vector(512 * 1024, 11);
        const auto start = steady_clock::now();
        bool clean = false;
        const bytes echoed = send_then_read(client, payload, &clean);
        CHECK(elapsed_since(start) >= 100ms - 20ms + 60ms);
        CHECK(clean);
        CHECK(echoed.size() == payload.size());
        CHECK(first_difference(as_string(echoed), as_string(payload)) == std::string::npos);
    }

    SUBCASE("bandwidth: 250 kB at 500 KB/s take at least 0.35 s, and arrive whole") {
        auto toxics = frozen_set({"bandwidth,rate=500"});
        running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        const bytes payload = random_vector(250 * 1000, 12);
        const auto start = steady_clock::now();
        bool clean = false;
        const bytes echoed = send_then_read(client, payload, &clean);
        // The first 100 ms worth (50 kB) may go at once: the rest paces at 500 bytes a ms.
        CHECK(elapsed_since(start) >= 350ms);
        CHECK(clean);
        CHECK(echoed == payload);
    }

    SUBCASE("slicer and slow_close: the bytes arrive whole, in order; the FIN comes late") {
        auto toxics = frozen_set(
            {"slicer,average_size=100,size_variation=50,delay=100", "slow_close,delay=300"});
        running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        const bytes payload = random_vector(20 * 1000, 13);
        REQUIRE(send_all(client, payload));
        shutdown_write(client);
        bytes echoed;
        std::uint8_t buffer[65536];
        time_point last_byte = steady_clock::now();
        for (;;) {
            ssize_t n = ::recv(client.native_handle(), buffer, sizeof buffer, 0);
            if (n <= 0) {
                CHECK(n == 0);
                break;
            }
            last_byte = steady_clock::now();
            echoed.insert(echoed.end(), buffer, buffer + n);
        }
        CHECK(elapsed_since(last_byte) >= 300ms - 5ms); // the FIN, not the bytes, was held
        CHECK(echoed == payload);
    }

    SUBCASE("limit_data: the client gets exactly that many bytes, then end of stream") {
        auto toxics = frozen_set({"limit_data,bytes=1000"});
        running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        const bytes payload = random_vector(64 * 1024, 14);
        REQUIRE(send_all(client, payload));
        bool clean = false;
        const bytes echoed = read_to_end(client, &clean);
        CHECK(clean);
        REQUIRE(echoed.size() == 1000);
        CHECK(echoed == bytes(payload.begin(), payload.begin() + 1000));
    }

    SUBCASE("reset_peer: the client's first write is answered with a reset") {
        auto toxics = frozen_set({"reset_peer,timeout=0,stream=upstream"});
        running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        REQUIRE(send_all(client, as_vector("hello")));
        CHECK(read_outcome(client) == ECONNRESET);
    }

    SUBCASE("reset_peer after a timeout: bytes stop at the first one, the reset comes later") {
        auto toxics = frozen_set({"reset_peer,timeout=200"});
        running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        const auto start = steady_clock::now();
        REQUIRE(send_all(client, as_vector("hello")));
        CHECK(read_outcome(client) == ECONNRESET); // not "hello": it was held
        CHECK(elapsed_since(start) >= 200ms);
    }

    SUBCASE("timeout: no byte passes, and the tunnel is closed after the timeout") {
        auto toxics = frozen_set({"timeout,timeout=200"});
        running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        const auto start = steady_clock::now();
        REQUIRE(send_all(client, as_vector("hello")));
        bool clean = false;
        CHECK(read_to_end(client, &clean).empty());
        CHECK(clean);
        CHECK(elapsed_since(start) >= 200ms);
    }

    SUBCASE("toxicity 0 never applies: the tunnel is plain, its bytes whole") {
        auto toxics = frozen_set({"timeout,timeout=0,toxicity=0"});
        running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        const bytes payload = random_vector(1024 * 1024, 15);
        bool clean = false;
        CHECK(send_then_read(client, payload, &clean) == payload);
        CHECK(clean);
    }
}

TEST_CASE_TEMPLATE_INVOKE(fault_tunnels, tinyproxy::thread_policy, tinyproxy::poll_policy);
// Kept apart so that a name filter can leave the process-per-connection policy out under TSan.
TEST_CASE_TEMPLATE_APPLY(fault_tunnels, std::tuple<tinyproxy::fork_policy>);

// --- faults changed on live tunnels: thread and poll policies (a fork child has its own copy) -

TEST_CASE_TEMPLATE("faults changed on live tunnels: a toxic added and removed in a loop while "
                   "65,535 ordered values go through loses, doubles and reorders none",
                   Policy, tinyproxy::thread_policy, tinyproxy::poll_policy) {
    // Upstream writes the values 0..65534, two bytes each, big-endian, one write each.
    upstream counter([](tinyproxy::socket& s) {
        for (std::uint32_t i = 0; i < 65535; ++i) {
            const bytes value{static_cast<std::uint8_t>(i >> 8), static_cast<std::uint8_t>(i)};
            if (!send_all(s, value)) {
                return;
            }
            if (i % 2048 == 0) { // spread over many changes, not one burst between two
                std::this_thread::sleep_for(2ms);
            }
        }
        shutdown_write(s);
    });
    auto toxics = std::make_shared<toxic_set>(); // live: not frozen
    running_proxy<Policy> proxy(forward_to(counter.where()), faulty(toxics));
    std::atomic<bool> done{false};
    std::atomic<int> changes{0};
    std::thread changer([&] {
        const auto give_up = steady_clock::now() + 60s;
        while (!done && steady_clock::now() < give_up) {
            toxics->add(parse_toxic("latency,latency=1000"));
            std::this_thread::sleep_for(1ms);
            toxics->remove("latency_downstream");
            ++changes;
        }
    });
    auto client = connect_to(proxy.where());
    REQUIRE(client);
    bool clean = false;
    const bytes got = read_to_end(client, &clean);
    done = true;
    changer.join();
    CHECK(clean);
    REQUIRE(got.size() == 2 * 65535);
    std::size_t wrong = 0;
    for (std::uint32_t i = 0; i < 65535 && wrong == 0; ++i) {
        const std::uint32_t value = (std::uint32_t{got[2 * i]} << 8) | got[2 * i + 1];
        wrong = value == i ? 0 : i + 1;
    }
    CHECK_MESSAGE(wrong == 0, "value " << (wrong - 1) << " out of place");
    CHECK(changes >= 10);
}

TEST_CASE_TEMPLATE("faults changed on live tunnels: a timeout of 0 holds the bytes until it is "
                   "removed, then every one goes on, in order",
                   Policy, tinyproxy::thread_policy, tinyproxy::poll_policy) {
    upstream echo_server(echo);
    auto toxics = std::make_shared<toxic_set>();
    toxics->add(parse_toxic("timeout,timeout=0,stream=upstream"));
    running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
    auto client = connect_to(proxy.where());
    REQUIRE(client);
    const bytes payload = random_vector(100 * 1000, 16);
    REQUIRE(send_all(client, payload));
    pollfd ready{client.native_handle(), POLLIN, 0};
    CHECK(::poll(&ready, 1, 300) == 0); // held: nothing echoed
    REQUIRE(toxics->remove("timeout_upstream"));
    shutdown_write(client);
    bool clean = false;
    CHECK(read_to_end(client, &clean) == payload);
    CHECK(clean);
}

TEST_CASE_TEMPLATE("faults added to a live set reach tunnels that are open and idle", Policy,
                   tinyproxy::thread_policy, tinyproxy::poll_policy) {
    upstream echo_server(echo);
    auto toxics = std::make_shared<toxic_set>();
    running_proxy<Policy> proxy(forward_to(echo_server.where()), faulty(toxics));
    auto client = connect_to(proxy.where());
    REQUIRE(client);
    REQUIRE(send_all(client, as_vector("ping")));
    bytes first(4);
    REQUIRE(::recv(client.native_handle(), first.data(), 4, MSG_WAITALL) == 4);
    // The tunnel is open and idle; a timeout added now closes it without another byte sent.
    const auto start = steady_clock::now();
    toxics->add(parse_toxic("timeout,timeout=100"));
    bool clean = false;
    CHECK(read_to_end(client, &clean).empty());
    CHECK(clean);
    CHECK(elapsed_since(start) >= 100ms);
}

TEST_CASE_TEMPLATE("faults: toxicity is rolled once per connection from the seed: the same "
                   "seed gives the same connections the same faults, another seed others",
                   Policy, tinyproxy::thread_policy, tinyproxy::poll_policy) {
    upstream echo_server(echo);
    auto labels_with = [&](std::uint64_t seed) {
        auto toxics =
            frozen_set({"latency,latency=0,toxicity=0.5", "slicer,average_size=10,toxicity=0.5"});
        std::mutex mutex;
        std::vector<std::string> labels(24);
        tinyproxy::options opts = faulty(toxics, seed);
        opts.on_event = [&](const tinyproxy::session_event& event) {
            if (event.what == tinyproxy::session_event::kind::closed && event.result != nullptr) {
                std::lock_guard<std::mutex> lock(mutex);
                // Clients are served one at a time, so the n-th session is the n-th client.
                for (std::string& label : labels) {
                    if (label.empty()) {
                        label = event.result->stages;
                        break;
                    }
                }
            }
        };
        {
            running_proxy<Policy> proxy(forward_to(echo_server.where()), opts);
            for (int i = 0; i < 24; ++i) {
                auto client = connect_to(proxy.where());
                REQUIRE(client);
                bool clean = false;
                CHECK(send_then_read(client, as_vector("x"), &clean) == as_vector("x"));
                const std::size_t before = static_cast<std::size_t>(i);
                CHECK(eventually([&] {
                    std::lock_guard<std::mutex> lock(mutex);
                    return !labels[before].empty();
                }));
            }
        }
        return labels;
    };
    const std::vector<std::string> first = labels_with(7);
    CHECK(labels_with(7) == first);
    CHECK(labels_with(8) != first);
    int with_latency = 0;
    for (const std::string& label : first) {
        with_latency += label.find("latency_downstream") != std::string::npos ? 1 : 0;
    }
    CHECK(with_latency > 0); // 24 rolls of one half: all alike has odds 2^-23
    CHECK(with_latency < 24);
}

// --- a factory or a stage that throws ends only its own tunnel --------------------------------

namespace {

/// Throws at the first byte it sees (an allocation that failed, a bug in a user's stage).
struct throwing_stage final : tinyproxy::relay_stage {
    void on_data(tinyproxy::stage_context&, tinyproxy::byte_view) override {
        throw std::runtime_error("a stage gave up");
    }
};

} // namespace

TEST_CASE_TEMPLATE("a stage factory or a stage that throws ends its tunnel with stage_failed; "
                   "the next client is served",
                   Policy, tinyproxy::thread_policy, tinyproxy::poll_policy) {
    upstream echo_server(echo);
    std::atomic<int> tunnels{0};
    std::mutex mutex;
    std::vector<std::error_code> endings;
    tinyproxy::options opts = running_proxy<Policy>::default_options();
    opts.stages = [&](const tinyproxy::tunnel_info&, tinyproxy::tunnel_stages& stages) {
        const int n = ++tunnels;
        if (n == 1) {
            throw std::bad_alloc();
        }
        if (n == 2) {
            stages.to_upstream.push_back(std::make_unique<throwing_stage>());
        }
    };
    opts.on_event = [&](const tinyproxy::session_event& event) {
        if (event.what == tinyproxy::session_event::kind::closed) {
            std::lock_guard<std::mutex> lock(mutex);
            endings.push_back(event.result->error);
        }
    };
    running_proxy<Policy> proxy(forward_to(echo_server.where()), opts);
    for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        auto client = connect_to(proxy.where());
        REQUIRE(client);
        bool clean = false;
        const bytes echoed = send_then_read(client, as_vector("hello"), &clean);
        CHECK(echoed == (i == 2 ? as_vector("hello") : bytes{}));
        if (i > 0) { // a tunnel that started: a stage's failure resets it, the last one is clean
            CHECK(clean == (i == 2));
        }
        CHECK(eventually([&] {
            std::lock_guard<std::mutex> lock(mutex);
            return endings.size() == static_cast<std::size_t>(i + 1);
        }));
    }
    std::lock_guard<std::mutex> lock(mutex);
    REQUIRE(endings.size() == 3);
    CHECK(endings[0] == tinyproxy::errc::stage_failed);
    CHECK(endings[1] == tinyproxy::errc::stage_failed);
    CHECK_FALSE(endings[2]);
}

TEST_CASE_TEMPLATE("faults changed on live tunnels: an update replaces a toxic in its place, and "
                   "a limit_data count carries over",
                   Policy, tinyproxy::thread_policy, tinyproxy::poll_policy) {
    // Upstream sends 600 bytes, waits until told, then 3,000 more.
    std::promise<void> go_on;
    std::shared_future<void> told = go_on.get_future().share();
    const bytes first = random_vector(600, 17);
    const bytes rest = random_vector(3000, 18);
    upstream speaker([&](tinyproxy::socket& s) {
        send_all(s, first);
        told.wait_for(30s);
        send_all(s, rest);
        shutdown_write(s);
        read_to_end(s);
    });
    auto toxics = std::make_shared<toxic_set>();
    toxics->add(parse_toxic("limit_data,bytes=1000"));
    running_proxy<Policy> proxy(forward_to(speaker.where()), faulty(toxics));
    auto client = connect_to(proxy.where());
    REQUIRE(client);
    bytes got(600);
    REQUIRE(::recv(client.native_handle(), got.data(), got.size(), MSG_WAITALL) == 600);
    CHECK(got == first);
    // 600 of the 1,000 have passed; the limit moves to 2,000 for what follows, counting them.
    REQUIRE(toxics->update("limit_data_downstream", parse_toxic("limit_data,bytes=2000")));
    toxic now;
    REQUIRE(toxics->find("limit_data_downstream", now));
    CHECK(now.bytes == 2000);
    go_on.set_value();
    bool clean = false;
    const bytes after = read_to_end(client, &clean);
    CHECK(clean);
    REQUIRE(after.size() == 1400); // 2,000 in all: the 600 before the update count
    CHECK(after == bytes(rest.begin(), rest.begin() + 1400));
}

TEST_CASE_TEMPLATE("live traffic counters: the bytes of an open tunnel are counted as they move, "
                   "each way, and add up to the session's counts once it ends",
                   Policy, tinyproxy::thread_policy, tinyproxy::poll_policy) {
    upstream echo_server(echo);
    tinyproxy::options opts = running_proxy<Policy>::default_options();
    opts.traffic = std::make_shared<tinyproxy::traffic_counters>();
    running_proxy<Policy> proxy(forward_to(echo_server.where()), opts);
    auto client = connect_to(proxy.where());
    REQUIRE(client);
    const bytes payload = random_vector(300 * 1000, 17);
    REQUIRE(send_all(client, payload));
    bytes echoed(payload.size());
    REQUIRE(::recv(client.native_handle(), echoed.data(), echoed.size(), MSG_WAITALL) ==
            static_cast<ssize_t>(echoed.size()));
    CHECK(echoed == payload);
    // Still open: the counts come as the pump that wrote the bytes returns, which may be just
    // after the client read them.
    const auto give_up = steady_clock::now() + 5s;
    while (opts.traffic->to_client.load() < payload.size() && steady_clock::now() < give_up) {
        std::this_thread::sleep_for(1ms);
    }
    CHECK(opts.traffic->to_upstream.load() == payload.size());
    CHECK(opts.traffic->to_client.load() == payload.size());
    shutdown_write(client);
    bool clean = false;
    CHECK(read_to_end(client, &clean).empty());
    CHECK(clean);
    proxy.stop();
    CHECK(opts.traffic->to_upstream.load() == payload.size());
    CHECK(opts.traffic->to_client.load() == payload.size());
}
