// The policy conformance suite: one set of guarantees, run against thread, fork and poll and the
// policy examples/custom_policy.cpp ships, written the way a user writes one (a thread pool).
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include "support/loopback.hpp"
#include "support/skip.hpp"
#include "thread_pool_policy.hpp" // examples/: the shipped user-written policy

#include <algorithm>
#include <future>
#include <mutex>
#include <new>       // std::bad_alloc
#include <stdexcept> // std::runtime_error
#include <cstdio>
#include <set>
#include <sstream>
#include <type_traits>

#include <netinet/in.h>  // IPPROTO_TCP
#include <netinet/tcp.h> // TCP_NODELAY
#include <pthread.h>     // pthread_getattr_np
#include <sys/syscall.h> // SYS_gettid
#include <unistd.h>      // syscall

using namespace tptest;
using namespace std::chrono_literals;

namespace {

/// The thread pool policy examples/custom_policy.cpp ships (a policy written the way a user
/// writes one), with enough workers for the suite's 100 concurrent clients: a pool serves one
/// session per worker at a time.
struct pool_policy : thread_pool_policy {
    pool_policy() : thread_pool_policy(128) {}
};

/// Sends `payload` and reads the echo at the same time (both directions in flight at once).
bytes round_trip(const tinyproxy::endpoint& proxy, const bytes& payload) {
    auto client = connect_to(proxy);
    REQUIRE(client);
    std::thread writer([&] {
        send_all(client, payload);
        shutdown_write(client);
    });
    bytes echoed = read_to_end(client);
    writer.join();
    return echoed;
}

/// A proxy run in a host process (fork_policy) must have ended cleanly with no child left.
template <class Proxy>
void check_clean_exit(Proxy&) {}
void check_clean_exit(running_proxy<tinyproxy::fork_policy>& proxy) {
    CHECK_MESSAGE(proxy.host_exit() == 0, "the fork proxy's host exited with children left");
}

/// Waits for the fork policy's children to be reaped (others have none).
void expect_no_children() {
    CHECK_MESSAGE(eventually([] { return child_states().empty(); }), "children left behind");
}

} // namespace

TEST_CASE_TEMPLATE_DEFINE("policy conformance", Policy, policy_conformance) {
    const int descriptors_before = open_descriptors();
    {
        upstream echo_server(echo);

        SUBCASE("payloads of 0 B, 1 B, 64 KiB and 16 MiB arrive byte-exact both ways") {
            running_proxy<Policy> proxy(forward_to(echo_server.where()));
            std::uint32_t seed = 1;
            for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{64 * 1024},
                                     std::size_t{16 * 1024 * 1024}}) {
                CAPTURE(size);
                bytes payload = random_vector(size, seed++);
                bytes echoed = round_trip(proxy.where(), payload);
                CHECK(echoed.size() == payload.size());
                CHECK(echoed == payload);
            }
        }

        SUBCASE("half-close from the client: upstream reads EOF, then its whole reply arrives") {
            bytes request = random_vector(300 * 1024, 7);
            bytes reply = random_vector(2 * 1024 * 1024, 8);
            std::promise<bytes> received;
            upstream replier([&](tinyproxy::socket& s) {
                received.set_value(read_to_end(s)); // until the client's EOF
                // Think a while, so the proxy must keep watching us after the client's EOF.
                std::this_thread::sleep_for(100ms);
                send_all(s, reply); // then a full reply on the open half
                shutdown_write(s);
            });
            running_proxy<Policy> proxy(forward_to(replier.where()));
            auto client = connect_to(proxy.where());
            REQUIRE(client);
            REQUIRE(send_all(client, request));
            shutdown_write(client);
            bool clean = false;
            bytes got = read_to_end(client, &clean);
            CHECK(clean);
            CHECK(got == reply);
            auto upstream_got = received.get_future();
            REQUIRE(upstream_got.wait_for(5s) == std::future_status::ready);
            CHECK(upstream_got.get() == request);
        }

        SUBCASE("half-close from upstream: the client reads EOF, then its reply arrives whole") {
            bytes greeting = random_vector(500 * 1024, 9);
            bytes answer = random_vector(1024 * 1024, 10);
            std::promise<bytes> received;
            upstream speaker([&](tinyproxy::socket& s) {
                send_all(s, greeting);
                shutdown_write(s); // upstream is done talking, still listening
                received.set_value(read_to_end(s));
            });
            running_proxy<Policy> proxy(forward_to(speaker.where()));
            auto client = connect_to(proxy.where());
            REQUIRE(client);
            bool clean = false;
            bytes got = read_to_end(client, &clean); // EOF passed on from upstream
            CHECK(clean);
            CHECK(got == greeting);
            REQUIRE(send_all(client, answer));
            shutdown_write(client);
            auto upstream_got = received.get_future();
            REQUIRE(upstream_got.wait_for(5s) == std::future_status::ready);
            CHECK(upstream_got.get() == answer);
        }

        SUBCASE("100 concurrent connections are all served intact") {
            running_proxy<Policy> proxy(forward_to(echo_server.where()));
            std::vector<std::thread> clients;
            std::atomic<int> intact{0};
            for (std::uint32_t i = 0; i < 100; ++i) {
                clients.emplace_back([&, i] {
                    bytes payload = random_vector(64 * 1024, 100 + i);
                    auto c = connect_to(proxy.where());
                    if (!c) {
                        return;
                    }
                    std::thread writer([&] {
                        send_all(c, payload);
                        shutdown_write(c);
                    });
                    bytes echoed = read_to_end(c);
                    writer.join();
                    if (echoed == payload) {
                        ++intact;
                    }
                });
            }
            for (auto& t : clients) {
                t.join();
            }
            CHECK(intact.load() == 100);
        }

        SUBCASE("upstream refused: the client is closed within 2 s, and others are served") {
            tinyproxy::endpoint closed_port;
            {
                auto l = tinyproxy::listener::open(tinyproxy::parse_endpoint("127.0.0.1:0"));
                closed_port = l.local_endpoint();
            }
            running_proxy<Policy> proxy(forward_to(closed_port));
            auto client = connect_to(proxy.where(), 2s);
            REQUIRE(client);
            auto begin = tinyproxy::steady_clock::now();
            std::uint8_t byte = 0;
            ssize_t n = ::recv(client.native_handle(), &byte, 1, 0);
            bool timed_out = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
            CHECK_FALSE(timed_out); // EOF or reset: closed, not left hanging
            CHECK(tinyproxy::steady_clock::now() - begin < 2s);
            // The proxy itself is still there for the next client.
            auto second = connect_to(proxy.where(), 2s);
            CHECK(second);
        }

        SUBCASE("a client that sends nothing does not delay another client") {
            running_proxy<Policy> proxy(forward_to(echo_server.where()));
            auto silent = connect_to(proxy.where());
            REQUIRE(silent);
            std::this_thread::sleep_for(50ms);
            bytes payload = random_vector(4096, 11);
            auto begin = tinyproxy::steady_clock::now();
            CHECK(round_trip(proxy.where(), payload) == payload);
            // Generous: this only proves the other client was not waited for.
            CHECK(tinyproxy::steady_clock::now() - begin < 3s);
        }

        SUBCASE("stop() with live connections returns promptly and ends them") {
            running_proxy<Policy> proxy(forward_to(echo_server.where()));
            std::vector<tinyproxy::socket> live;
            for (int i = 0; i < 5; ++i) {
                auto c = connect_to(proxy.where(), 3s);
                REQUIRE(c);
                REQUIRE(send_all(c, bytes(100, 0x42)));
                live.push_back(std::move(c));
            }
            for (auto& c : live) { // each tunnel is up: its echo came back
                std::uint8_t buffer[100];
                std::size_t got = 0;
                while (got < sizeof buffer) {
                    ssize_t n = ::recv(c.native_handle(), buffer + got, sizeof buffer - got, 0);
                    REQUIRE(n > 0);
                    got += static_cast<std::size_t>(n);
                }
            }
            auto took = proxy.stop();
            CHECK(took < scaled(1000ms));
            check_clean_exit(proxy);
            for (auto& c : live) { // and now each is closed
                bool clean = false;
                read_to_end(c, &clean);
                std::uint8_t byte = 0;
                CHECK(::recv(c.native_handle(), &byte, 1, 0) <= 0);
            }
        }
        expect_no_children();
    }
    // Everything the proxy, its sessions and the test's own servers opened is closed again.
    CHECK(eventually([&] { return open_descriptors() == descriptors_before; }));
}

/// poll_policy with two event loops on two threads, both accepting from the one listener.
struct two_loop_policy : tinyproxy::poll_policy {
    two_loop_policy() { loops = 2; }
};

TEST_CASE_TEMPLATE_INVOKE(policy_conformance, tinyproxy::thread_policy, tinyproxy::poll_policy,
                          tinyproxy::portable_poll_policy, two_loop_policy, pool_policy);
// Kept apart so that a name filter can leave the process-per-connection policy out under TSan.
TEST_CASE_TEMPLATE_APPLY(policy_conformance, std::tuple<tinyproxy::fork_policy>);

namespace {

/// thread_policy with no idle threads kept: a new thread for every client.
struct thread_per_session_policy : tinyproxy::thread_policy {
    thread_per_session_policy() { keep_idle_thread = std::chrono::milliseconds(0); }
};

} // namespace

TEST_CASE_TEMPLATE("thread policy: a thread that has finished its session serves the next client; "
                   "with keep_idle_thread 0 every client gets a new thread",
                   Policy, tinyproxy::thread_policy, thread_per_session_policy) {
    upstream echo_server(echo);
    std::mutex mutex;
    std::set<long> threads; // kernel thread ids: unlike std::thread::id, never reused soon
    std::atomic<int> closed{0};
    auto opts = running_proxy<Policy>::default_options();
    opts.on_event = [&](const tinyproxy::session_event& event) {
        if (event.what == tinyproxy::session_event::kind::closed) { // on the serving thread
            std::lock_guard<std::mutex> lock(mutex);
            threads.insert(static_cast<long>(::syscall(SYS_gettid)));
            ++closed;
        }
    };
    running_proxy<Policy> proxy(forward_to(echo_server.where()), opts);
    constexpr int clients = 20;
    for (int i = 0; i < clients; ++i) { // one after another
        bytes payload = random_vector(100, static_cast<std::uint32_t>(i));
        REQUIRE(round_trip(proxy.where(), payload) == payload);
        REQUIRE(eventually([&] { return closed.load() == i + 1; }));
        std::this_thread::sleep_for(std::chrono::milliseconds(20)); // it goes back to waiting
    }
    std::lock_guard<std::mutex> lock(mutex);
    if (std::is_same<Policy, tinyproxy::thread_policy>::value) {
        // One thread, give or take a client that came before the last one was waiting again.
        CHECK(threads.size() <= 5);
    } else {
        CHECK(threads.size() == static_cast<std::size_t>(clients));
    }
}

namespace {

/// TCP_NODELAY of the one socket of this process whose local (`peer` false) or remote address
/// is `where`; -1 when there is none. It asks each descriptor number in place, without dup():
/// the proxy's threads open and close theirs meanwhile (and ThreadSanitizer would call a dup
/// of a descriptor another thread closes a race).
int nodelay_of_socket_at(const tinyproxy::endpoint& where, bool peer) {
    for (int fd = 0; fd < 4096; ++fd) {
        sockaddr_storage storage{};
        socklen_t length = sizeof storage;
        auto* address = reinterpret_cast<sockaddr*>(&storage);
        int asked =
            peer ? ::getpeername(fd, address, &length) : ::getsockname(fd, address, &length);
        if (asked != 0 || tinyproxy::from_sockaddr(address, length) != where) {
            continue;
        }
        int value = 0;
        socklen_t size = sizeof value;
        if (::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, &size) == 0) {
            return value != 0 ? 1 : 0;
        }
    }
    return -1;
}

} // namespace

TEST_CASE_TEMPLATE("both legs of a tunnel have Nagle off (TCP_NODELAY)", Policy,
                   tinyproxy::thread_policy, tinyproxy::poll_policy,
                   tinyproxy::portable_poll_policy) {
    // Small writes must not wait for Nagle on either leg. On Linux the client's leg gets it
    // from the listener (the session does not set it again); this checks it got there.
    std::promise<tinyproxy::endpoint>
        proxy_side; // the proxy's upstream socket, as upstream sees it
    upstream holder([&](tinyproxy::socket& s) {
        std::error_code ec;
        proxy_side.set_value(s.remote_endpoint(ec));
        echo(s);
    });
    running_proxy<Policy> proxy(forward_to(holder.where()));
    auto client = connect_to(proxy.where());
    REQUIRE(client);
    bytes ping = random_vector(10, 3);
    REQUIRE(send_all(client, ping)); // the tunnel is relaying once the echo is back
    bytes back(ping.size());
    REQUIRE(::recv(client.native_handle(), back.data(), back.size(), MSG_WAITALL) ==
            static_cast<ssize_t>(back.size()));
    auto upstream_leg = proxy_side.get_future();
    REQUIRE(upstream_leg.wait_for(5s) == std::future_status::ready);
    std::error_code ec;
    tinyproxy::endpoint client_address = client.local_endpoint(ec);
    REQUIRE_FALSE(ec);

    CHECK(nodelay_of_socket_at(client_address, true) == 1); // the proxy's client leg
    CHECK(nodelay_of_socket_at(upstream_leg.get(), false) == 1);
    shutdown_write(client);
    CHECK(read_to_end(client).empty());
}

TEST_CASE("fork policy: no zombie outlives its session while the proxy runs") {
    upstream echo_server(echo);
    running_proxy<tinyproxy::fork_policy> proxy(forward_to(echo_server.where()));
    for (std::uint32_t i = 0; i < 20; ++i) {
        bytes payload = random_vector(1000, i);
        CHECK(round_trip(proxy.where(), payload) == payload);
    }
    // Every session has ended; the parent must reap each child soon after, without stop().
    CHECK_MESSAGE(eventually([&] {
                      for (const auto& state : child_states(proxy.host())) {
                          if (state.back() == 'Z') {
                              return false;
                          }
                      }
                      return true;
                  }),
                  "zombie children while running");
    proxy.stop();
    CHECK(proxy.host_exit() == 0);
}

namespace {

/// A user-written Mode: routes by the client's first byte ('H' to `hanging`, anything else to
/// `echoing`) and sends the bytes after it upstream. Proves the Mode seam, and lets one proxy
/// hold a connect that never completes next to working tunnels.
class first_byte_mode {
public:
    first_byte_mode(tinyproxy::endpoint hanging, tinyproxy::endpoint echoing)
        : hanging_(hanging), echoing_(echoing) {}

    class session {
    public:
        session(tinyproxy::endpoint hanging, tinyproxy::endpoint echoing)
            : hanging_(hanging), echoing_(echoing) {}
        tinyproxy::mode_step start() { return tinyproxy::mode_step::need_more(); }
        tinyproxy::mode_step on_client_data(tinyproxy::byte_view data) {
            const auto& to = data[0] == 'H' ? hanging_ : echoing_;
            bytes rest(data.begin() + 1, data.end());
            return tinyproxy::mode_step::connect_to({to.address.to_string(), to.port}, rest);
        }
        bytes on_connected(std::error_code, const tinyproxy::endpoint&,
                           const tinyproxy::endpoint&) {
            return {};
        }

    private:
        tinyproxy::endpoint hanging_;
        tinyproxy::endpoint echoing_;
    };

    session make_session(const tinyproxy::session_info&) const { return {hanging_, echoing_}; }

private:
    tinyproxy::endpoint hanging_;
    tinyproxy::endpoint echoing_;
};

} // namespace

namespace {

/// A Mode that throws: std::bad_alloc on the first byte 'M' (a parser out of memory), a
/// std::runtime_error from on_connected() after 'R'; any other first byte goes to `echoing`.
class throwing_mode {
public:
    explicit throwing_mode(tinyproxy::endpoint echoing) : echoing_(echoing) {}

    class session {
    public:
        explicit session(tinyproxy::endpoint echoing) : echoing_(echoing) {}
        tinyproxy::mode_step start() { return tinyproxy::mode_step::need_more(); }
        tinyproxy::mode_step on_client_data(tinyproxy::byte_view data) {
            if (data[0] == 'M') {
                throw std::bad_alloc();
            }
            throw_on_connected_ = data[0] == 'R';
            bytes rest(data.begin() + 1, data.end());
            return tinyproxy::mode_step::connect_to({echoing_.address.to_string(), echoing_.port},
                                                    rest);
        }
        bytes on_connected(std::error_code, const tinyproxy::endpoint&,
                           const tinyproxy::endpoint&) {
            if (throw_on_connected_) {
                throw std::runtime_error("a Mode with a bug");
            }
            return {};
        }

    private:
        tinyproxy::endpoint echoing_;
        bool throw_on_connected_ = false;
    };

    session make_session(const tinyproxy::session_info&) const { return session{echoing_}; }

private:
    tinyproxy::endpoint echoing_;
};

} // namespace

namespace {

/// The event loop's order of service, seen through a Server of the test's own: its sessions
/// only note when they are served. Each one's socket always has a byte to read, so every wait
/// reports every session; `bulk` ones say that their last call moved all a call may.
struct noting_session {
    char name = '?';
    bool bulk = false;
    tinyproxy::unique_fd fd;
    std::string* served = nullptr;
    std::string* rounds = nullptr; // the reads per call the loop allowed, one digit a call
    int stop_fd = -1;              // written when `served` is long enough: the loop stops
    bool ended = false;
    tinyproxy::session_result outcome{};
    tinyproxy::host_port nowhere{};

    void start(tinyproxy::time_point) noexcept {}
    bool done() const noexcept { return ended; }
    short client_events() const noexcept { return POLLIN; }
    short upstream_events() const noexcept { return 0; }
    bool watch_client() const noexcept { return true; }
    bool watch_upstream() const noexcept { return false; }
    int client_fd() const noexcept { return fd.get(); }
    int upstream_fd() const noexcept { return -1; }
    std::uint32_t upstream_serial() const noexcept { return 0; }
    tinyproxy::time_point deadline() const noexcept { return tinyproxy::time_point::max(); }
    bool wants_resolve() const noexcept { return false; }
    const tinyproxy::host_port& resolve_target() const noexcept { return nowhere; }
    void on_resolved(std::vector<tinyproxy::endpoint>, std::error_code,
                     tinyproxy::time_point) noexcept {}
    void on_ready(short, short, tinyproxy::time_point, std::uint8_t*, std::size_t,
                  int allowed) noexcept {
        served->push_back(name);
        rounds->push_back(static_cast<char>('0' + allowed));
        if (served->size() >= 60 && stop_fd >= 0) {
            CHECK(::write(stop_fd, "x", 1) == 1);
            stop_fd = -1;
        }
        ended = served->size() >= 200; // a loop whose turn never ends stops anyway
    }
    void on_deadline(tinyproxy::time_point) noexcept {}
    void abort(std::error_code) noexcept { ended = true; }
    bool connecting() const noexcept { return false; }
    bool saturated() const noexcept { return bulk; }
    const tinyproxy::session_result& result() const noexcept { return outcome; }
};

struct noting_server {
    using session_type = noting_session;

    noting_server() {
        int fds[2] = {-1, -1};
        REQUIRE(::pipe(fds) == 0);
        stop_read.reset(fds[0]);
        stop_write.reset(fds[1]);
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
        listener.reset(fds[0]);
        listener_peer.reset(fds[1]);
        REQUIRE(::write(fds[1], "x", 1) == 1); // "a client is waiting", for every wait
    }
    int stop_fd() const noexcept { return stop_read.get(); }
    int listener_fd() const noexcept { return listener.get(); }
    tinyproxy::accept_status try_accept(tinyproxy::accepted_client& out,
                                        std::error_code&) noexcept {
        if (accepted == names.size()) {
            served.push_back('|'); // the listener is always readable: a turn ends here
            return tinyproxy::accept_status::timeout;
        }
        int fds[2] = {-1, -1};
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) != 0 ||
            ::write(fds[1], "x", 1) != 1) {
            return tinyproxy::accept_status::timeout;
        }
        out.connection = tinyproxy::socket(tinyproxy::unique_fd(fds[0]));
        peers.emplace_back(fds[1]);
        return tinyproxy::accept_status::client;
    }
    noting_session make_session(tinyproxy::accepted_client client) {
        char name = names[accepted++];
        noting_session s;
        s.name = name;
        s.bulk = name != 'c';
        s.fd.reset(::dup(client.connection.native_handle()));
        s.served = &served;
        s.rounds = &rounds;
        s.stop_fd = stop_write.get();
        return s;
    }
    void session_ended(const tinyproxy::session_result&) noexcept {}
    const tinyproxy::session_options& limits() const noexcept { return options; }
    void request_stop() noexcept {}

    std::string names = "abc"; // a and b are bulk transfers, c a small exchange
    std::size_t accepted = 0;
    std::string served;
    std::string rounds;
    tinyproxy::session_options options;
    tinyproxy::unique_fd stop_read, stop_write, listener, listener_peer;
    std::vector<tinyproxy::unique_fd> peers;
};

/// Runs a Policy over `server` until its sessions have been served enough to stop it; false
/// when that took over 10 s (the loop is then stopped anyway, so the test fails, not hangs).
template <class Policy>
bool run_until_stopped(noting_server& server) {
    Policy policy;
    auto running = std::async(std::launch::async, [&] { policy.run(server); });
    bool stopped = running.wait_for(10s) == std::future_status::ready;
    if (!stopped) {
        CHECK(::write(server.stop_write.get(), "x", 1) == 1); // end it either way
    }
    running.get();
    return stopped;
}

} // namespace

TEST_CASE_TEMPLATE("the event loop serves a small exchange between two bulk transfers, and each "
                   "bulk transfer once a turn",
                   Policy, tinyproxy::poll_policy, tinyproxy::portable_poll_policy) {
    // A request/response tunnel that shares a loop with bulk transfers waits behind one bulk
    // call, not behind a turn of them: the loop serves the others first, and between two bulk
    // calls it looks (without blocking) for who else is ready.
    noting_server server;
    REQUIRE(run_until_stopped<Policy>(server));
    // Each session was first served as it was accepted, in the first turn; from then on,
    // every wait reports all three, so the order within a turn is the loop's own.
    INFO("served, turns ended by |: ", server.served);
    std::vector<std::string> turns;
    std::istringstream all(server.served);
    for (std::string turn; std::getline(all, turn, '|');) {
        turns.push_back(turn);
    }
    REQUIRE(turns.size() >= 5);
    CHECK(turns[0] == "abc");
    for (std::size_t t = 1; t + 1 < turns.size(); ++t) { // the last one may have been cut short
        const std::string& turn = turns[t];
        CHECK(turn.front() == 'c');                            // the small exchange first
        CHECK(std::count(turn.begin(), turn.end(), 'a') == 1); // each bulk transfer once
        CHECK(std::count(turn.begin(), turn.end(), 'b') == 1);
        for (std::size_t i = 0; i + 1 < turn.size(); ++i) {
            // and never two bulk calls in a row: the small exchange is heard between them
            CHECK_FALSE((turn[i] != 'c' && turn[i + 1] != 'c'));
        }
    }
    // Sharing the loop, every call (the first ones, as each was accepted, too) was allowed
    // one read per direction.
    INFO("reads allowed per call: ", server.rounds);
    CHECK(server.rounds.find_first_not_of('0' + tinyproxy::relay::shared_rounds) ==
          std::string::npos);
}

TEST_CASE_TEMPLATE("a bulk transfer that has the event loop to itself reads as on a thread of "
                   "its own",
                   Policy, tinyproxy::poll_policy, tinyproxy::portable_poll_policy) {
    // One read per call is for sharing: alone, a bulk tunnel makes relay::max_rounds reads a
    // call, as thread_policy does, rather than paying a wait for every pipe's worth.
    noting_server server;
    server.names = "a";
    REQUIRE(run_until_stopped<Policy>(server));
    INFO("served: ", server.served, "; reads allowed per call: ", server.rounds);
    REQUIRE(server.rounds.size() >= 10);
    CHECK(server.rounds[0] == '0' + tinyproxy::relay::shared_rounds); // as it was accepted
    CHECK(server.rounds.find_first_not_of('0' + tinyproxy::relay::max_rounds, 1) ==
          std::string::npos);
}

TEST_CASE_TEMPLATE("a Mode that throws ends only its own client's session; the proxy goes on",
                   Policy, tinyproxy::poll_policy, tinyproxy::portable_poll_policy,
                   tinyproxy::thread_policy) {
    // An event loop serves thousands of clients: one client's session running out of memory
    // (or a user's Mode with a bug) must close that client, not stop the loop for everyone.
    upstream echo_server(echo);
    running_proxy<Policy, throwing_mode> proxy(throwing_mode(echo_server.where()));
    for (std::uint8_t first : {std::uint8_t{'M'}, std::uint8_t{'R'}}) {
        auto client = connect_to(proxy.where());
        REQUIRE(send_all(client, bytes{first, 'x'}));
        CHECK(read_to_end(client).empty()); // closed, nothing relayed
    }
    bytes payload = random_vector(64 * 1024, 5);
    bytes request = {'E'};
    request.insert(request.end(), payload.begin(), payload.end());
    CHECK(round_trip(proxy.where(), request) == payload);
    auto stats = proxy.proxy().stats();
    CHECK(stats.failed >= 2);
    CHECK(proxy.stop() < scaled(1000ms));
}

TEST_CASE_TEMPLATE("a connect that never completes, a client that never reads and one that "
                   "never speaks do not stall others",
                   Policy, tinyproxy::poll_policy, tinyproxy::portable_poll_policy,
                   tinyproxy::thread_policy) {
    // A listener with a full backlog completes no more handshakes: connects to it hang.
    auto full = tinyproxy::listener::open(tinyproxy::parse_endpoint("127.0.0.1:0"), 0);
    std::vector<tinyproxy::socket> fillers;
    for (int i = 0; i < 8; ++i) {
        bool connected = false;
        std::error_code ec;
        fillers.push_back(tinyproxy::start_connect(full.local_endpoint(), connected, ec));
    }
    upstream echo_server(echo);
    auto opts = running_proxy<Policy, first_byte_mode>::default_options();
    opts.connect_timeout = 10s;
    running_proxy<Policy, first_byte_mode> proxy(
        first_byte_mode(full.local_endpoint(), echo_server.where()), opts);

    auto hanging = connect_to(proxy.where());
    REQUIRE(send_all(hanging, bytes{'H'}));
    auto silent = connect_to(proxy.where());
    REQUIRE(silent);
    auto deaf = connect_to(proxy.where()); // sends 8 MiB, never reads the echo
    REQUIRE(send_all(deaf, bytes{'E'}));
    bytes flood = random_vector(8 * 1024 * 1024, 3);
    std::thread flooder([&] { send_all(deaf, flood); }); // blocks once buffers fill; times out
    std::this_thread::sleep_for(200ms);

    bytes payload = random_vector(100 * 1024, 4);
    bytes request = {'E'};
    request.insert(request.end(), payload.begin(), payload.end());
    auto begin = tinyproxy::steady_clock::now();
    CHECK(round_trip(proxy.where(), request) == payload); // the pipelined bytes, in order
    CHECK(tinyproxy::steady_clock::now() - begin < 3s);
    CHECK(proxy.stop() < scaled(1000ms));
    flooder.join();
}

TEST_CASE_TEMPLATE("bytes a client sends while its upstream is still connecting follow once it "
                   "connects",
                   Policy, tinyproxy::poll_policy, tinyproxy::portable_poll_policy,
                   tinyproxy::thread_policy) {
    // The event loop leaves a quiet client registered while its upstream connects; one that
    // speaks meanwhile must neither be lost nor make the loop spin, and its bytes go up first.
    auto slow = tinyproxy::listener::open(tinyproxy::parse_endpoint("127.0.0.1:0"), 0);
    std::vector<tinyproxy::socket> fillers; // a full backlog: the proxy's SYN waits
    for (int i = 0; i < 8; ++i) {
        bool connected = false;
        std::error_code ec;
        fillers.push_back(tinyproxy::start_connect(slow.local_endpoint(), connected, ec));
    }
    upstream unused(echo);
    running_proxy<Policy, first_byte_mode> proxy(
        first_byte_mode(slow.local_endpoint(), unused.where()));
    auto client = connect_to(proxy.where());
    REQUIRE(send_all(client, bytes{'H', '1'}));
    std::this_thread::sleep_for(200ms); // the proxy is connecting by now
    bytes later = random_vector(1000, 5);
    REQUIRE(send_all(client, later));
    std::this_thread::sleep_for(200ms);

    // Let the proxy's handshake through: the fillers go (so that their own retried SYNs do
    // not take the one place in the queue), whatever is queued is accepted, and the proxy's
    // SYN, retried after 1 or 3 s, gets in.
    fillers.clear();
    std::vector<tinyproxy::socket> accepted;
    bytes got;
    auto until = tinyproxy::steady_clock::now() + 10s;
    while (got.size() < 1 + later.size() && tinyproxy::steady_clock::now() < until) {
        pollfd listening{slow.native_handle(), POLLIN, 0};
        if (::poll(&listening, 1, 50) == 1) {
            tinyproxy::endpoint peer;
            std::error_code ec;
            tinyproxy::socket s = slow.accept(peer, true, ec);
            if (!ec) {
                accepted.push_back(std::move(s));
            }
        }
        for (auto& s : accepted) {
            std::uint8_t buffer[4096];
            ssize_t n = ::recv(s.native_handle(), buffer, sizeof buffer, MSG_DONTWAIT);
            if (n > 0) {
                got.insert(got.end(), buffer, buffer + n);
            }
        }
    }
    bytes expected = {'1'};
    expected.insert(expected.end(), later.begin(), later.end());
    CHECK(got == expected);
}

#ifdef __linux__
namespace {

/// True if `p` lies in the process's brk heap ("[heap]" in /proc/self/maps).
bool in_brk_heap(const void* p) {
    FILE* maps = std::fopen("/proc/self/maps", "r");
    if (maps == nullptr) {
        return false;
    }
    char line[512];
    bool inside = false;
    auto at = reinterpret_cast<std::uintptr_t>(p);
    while (!inside && std::fgets(line, sizeof line, maps) != nullptr) {
        unsigned long lo = 0;
        unsigned long hi = 0;
        if (std::strstr(line, "[heap]") != nullptr && std::sscanf(line, "%lx-%lx", &lo, &hi) == 2) {
            inside = at >= lo && at < hi;
        }
    }
    std::fclose(maps);
    return inside;
}

/// A Mode that answers every client with where its first bytes were read into: "heap" (the
/// brk heap) or "elsewhere", then closes.
class scratch_probe_mode {
public:
    class session {
    public:
        tinyproxy::mode_step start() { return tinyproxy::mode_step::need_more(); }
        tinyproxy::mode_step on_client_data(tinyproxy::byte_view data) {
            std::string where = in_brk_heap(data.data()) ? "heap" : "elsewhere";
            return tinyproxy::mode_step::fail(make_error_code(tinyproxy::errc::protocol_error),
                                              bytes(where.begin(), where.end()));
        }
        bytes on_connected(std::error_code, const tinyproxy::endpoint&,
                           const tinyproxy::endpoint&) {
            return {};
        }
    };
    session make_session(const tinyproxy::session_info&) const { return {}; }
};

} // namespace

TEST_CASE("fork policy: a child reads into a mapping of its own, not the heap it shares with "
          "the parent") {
    // A 64 KiB buffer from the shared heap would grow it in the child, which copies the
    // allocator's pages along with the heap's (the memory cost of every held connection).
    running_proxy<tinyproxy::fork_policy, scratch_probe_mode> proxy(scratch_probe_mode{});
    auto client = connect_to(proxy.where());
    REQUIRE(send_all(client, bytes{'x'}));
    bytes answer = read_to_end(client);
    CHECK(std::string(answer.begin(), answer.end()) == "elsewhere");
}
#endif

namespace {

/// A Mode that answers every client with two numbers about the thread serving it: where in
/// its page the first bytes were read into, and how far that is above a local variable of this
/// call (the thread's stack), then closes.
class read_site_mode {
public:
    class session {
    public:
        tinyproxy::mode_step start() { return tinyproxy::mode_step::need_more(); }
        tinyproxy::mode_step on_client_data(tinyproxy::byte_view data) {
            volatile char local = 0;
            auto at = reinterpret_cast<std::uintptr_t>(data.data());
            auto here = reinterpret_cast<std::uintptr_t>(&local);
            auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
            std::string answer = std::to_string(at % page) + " " +
                                 std::to_string(at > here ? at - here : 0) + " " +
                                 std::to_string(stack_size());
            return tinyproxy::mode_step::fail(make_error_code(tinyproxy::errc::protocol_error),
                                              bytes(answer.begin(), answer.end()));
        }
        bytes on_connected(std::error_code, const tinyproxy::endpoint&,
                           const tinyproxy::endpoint&) {
            return {};
        }

    private:
        /// This thread's stack size, where the platform says (0 elsewhere).
        static std::size_t stack_size() {
            std::size_t size = 0;
#if defined(__GLIBC__)
            pthread_attr_t attr;
            if (pthread_getattr_np(pthread_self(), &attr) == 0) {
                void* where = nullptr;
                pthread_attr_getstack(&attr, &where, &size);
                pthread_attr_destroy(&attr);
            }
#endif
            return size;
        }
    };
    session make_session(const tinyproxy::session_info&) const { return {}; }
};

/// The three numbers read_site_mode answers, for one client of `proxy`.
std::vector<std::size_t> read_site(const tinyproxy::endpoint& proxy) {
    auto client = connect_to(proxy);
    REQUIRE(send_all(client, bytes{'x'}));
    bytes answer = read_to_end(client);
    std::istringstream in(std::string(answer.begin(), answer.end()));
    std::vector<std::size_t> numbers(3, 0);
    in >> numbers[0] >> numbers[1] >> numbers[2];
    return numbers;
}

} // namespace

TEST_CASE("thread policy: a session's first bytes land in its stack's top page, past the "
          "stack") {
    // The thread's top page is in memory anyway (glibc keeps the thread control block there):
    // a small read, like an idle tunnel's keepalive, then costs no page of its own.
    if (TINYPROXY_SANITIZER_MIN_STACK != 0) {
        skip_test("ThreadSanitizer keeps state of its own at the top of a thread's stack");
        return;
    }
    running_proxy<tinyproxy::thread_policy, read_site_mode> proxy(read_site_mode{});
    auto site = read_site(proxy.where());
    auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    CHECK(site[0] == page - tinyproxy::detail::thread_memory::shared_bytes);
    CHECK(site[1] > 0);         // above this call's frame ...
    CHECK(site[1] < 64 * 1024); // ... just above: the thread's stack, not the heap
}

#if defined(__GLIBC__)
TEST_CASE("thread policy: stack_size sets each session thread's stack") {
    struct small_stacks : tinyproxy::thread_policy {
        small_stacks() { stack_size = 256 * 1024; }
    };
    running_proxy<small_stacks, read_site_mode> proxy(read_site_mode{});
    auto site = read_site(proxy.where());
    // ThreadSanitizer wants more of a thread's stack for itself: stacks are larger then.
    const std::size_t expected = std::max<std::size_t>(256 * 1024, TINYPROXY_SANITIZER_MIN_STACK);
    CHECK(site[2] >= expected);
    CHECK(site[2] < expected + 64 * 1024);
}
#endif
