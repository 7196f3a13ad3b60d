// Unit tests for session.hpp: basic_session with a test-local Mode, driven by run_session on a
// thread against loopback upstreams.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <chrono>       // timeouts
#include <cstdint>      // bytes
#include <future>       // the session's result, with a deadline
#include <memory>       // the Mode's record
#include <string>       // payloads
#include <system_error> // error codes
#include <thread>       // the session thread
#include <utility>      // std::move
#include <vector>       // replies

#include <fcntl.h>      // fcntl
#include <poll.h>       // pollfd, POLLIN, POLLOUT
#include <sys/socket.h> // shutdown

#include <tinyproxy/tinyproxy.hpp>

#include "support/unit_helpers.hpp"
#include "support/skip.hpp"

using namespace tptest;
using tinyproxy::byte_view;
using tinyproxy::endpoint;
using tinyproxy::mode_step;

namespace {

/// What the Mode saw, read by the test once the session has ended.
struct go_record {
    int data_calls = 0;
    int connected_calls = 0;
    std::error_code connect_result;
    endpoint local;
    endpoint upstream;
};

/// A line protocol: greets with "HELLO\n", then reads "GO host:port\n" (in as many pieces as
/// the client likes), connects there and sends whatever followed the newline first; answers
/// "OK\n" or "FAIL\n" once the connect is decided. Anything else gets "ERR\n".
class go_mode_session {
public:
    /// `announce`: the connect step also carries "CONNECTING\n" for the client.
    explicit go_mode_session(std::shared_ptr<go_record> record, bool announce = false)
        : record_(std::move(record)), announce_(announce) {}

    mode_step start() { return mode_step::need_more(as_vector("HELLO\n")); }

    mode_step on_client_data(byte_view bytes) {
        ++record_->data_calls;
        buffer_.append(bytes.as_chars());
        auto newline = buffer_.find('\n');
        if (newline == std::string::npos) {
            if (buffer_.size() > 512) {
                return mode_step::fail(tinyproxy::errc::protocol_error, as_vector("ERR\n"));
            }
            return mode_step::need_more();
        }
        std::string line = buffer_.substr(0, newline);
        if (line.rfind("GO ", 0) != 0) {
            return mode_step::fail(tinyproxy::errc::protocol_error, as_vector("ERR\n"));
        }
        std::error_code ec;
        tinyproxy::host_port target = tinyproxy::parse_host_port(line.substr(3), ec);
        if (ec) {
            return mode_step::fail(ec, as_vector("ERR\n"));
        }
        mode_step step = mode_step::connect_to(target, as_vector(buffer_.substr(newline + 1)));
        if (announce_) {
            step.to_client = as_vector("CONNECTING\n");
        }
        return step;
    }

    std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
                                           const endpoint& upstream) {
        ++record_->connected_calls;
        record_->connect_result = result;
        record_->local = local;
        record_->upstream = upstream;
        return as_vector(result ? "FAIL\n" : "OK\n");
    }

private:
    std::shared_ptr<go_record> record_;
    bool announce_ = false;
    std::string buffer_;
};

using go_session = tinyproxy::basic_session<go_mode_session>;

/// The same Mode, saying that its reply never names the upstream socket's own address.
class go_mode_session_no_local : public go_mode_session {
public:
    using go_mode_session::go_mode_session;
    static constexpr bool uses_local_endpoint = false;
};

const endpoint loopback_any_port{tinyproxy::ip_address::loopback_v4(), 0};

/// Short limits, so that a broken session ends by itself within seconds.
tinyproxy::session_options short_limits() {
    tinyproxy::session_options limits;
    limits.connect_timeout = std::chrono::milliseconds(3000);
    limits.handshake_timeout = std::chrono::milliseconds(3000);
    limits.idle_timeout = std::chrono::milliseconds(3000);
    return limits;
}

/// A client connected to a front listener, and the accepted (blocking) socket the session gets.
struct front_connection {
    tinyproxy::socket client;
    tinyproxy::socket accepted;
};

front_connection connect_client() {
    tinyproxy::listener front = tinyproxy::listener::open(loopback_any_port, 4);
    std::error_code ec;
    tinyproxy::socket client = tinyproxy::connect(front.local_endpoint(), in_ms(5000), ec);
    REQUIRE_FALSE(ec);
    pollfd entry{front.native_handle(), POLLIN, 0};
    REQUIRE(::poll(&entry, 1, 5000) == 1);
    endpoint peer;
    tinyproxy::socket accepted = front.accept(peer, false, ec);
    REQUIRE_FALSE(ec);
    return {std::move(client), std::move(accepted)};
}

/// Runs a session on its own thread. With a stop pipe (the default) the destructor stops and
/// joins it whatever happened, so a test cannot hang on a broken session.
class session_runner {
public:
    explicit session_runner(go_session& session, bool with_stop_fd = true) {
        int stop_fd = -1;
        if (with_stop_fd) {
            int fds[2] = {-1, -1};
            make_pipe(fds);
            stop_read_.reset(fds[0]);
            stop_write_.reset(fds[1]);
            stop_fd = fds[0];
        }
        std::packaged_task<tinyproxy::session_result()> task(
            [&session, stop_fd] { return tinyproxy::run_session(session, stop_fd, 16384); });
        result_ = task.get_future();
        thread_ = std::thread(std::move(task));
    }
    session_runner(const session_runner&) = delete;
    session_runner& operator=(const session_runner&) = delete;
    ~session_runner() {
        stop_write_.reset();
        if (thread_.joinable()) {
            thread_.join();
        }
    }

    /// True once run_session has returned, waiting at most `ms`.
    bool ends_within(long ms) {
        return result_.wait_for(std::chrono::milliseconds(ms)) == std::future_status::ready;
    }
    /// run_session's result; call after ends_within() said true.
    tinyproxy::session_result result() {
        thread_.join();
        return result_.get();
    }
    /// Closes the stop pipe's write end: its read end turns readable, as when a proxy stops.
    void stop() { stop_write_.reset(); }

private:
    tinyproxy::unique_fd stop_read_;
    tinyproxy::unique_fd stop_write_;
    std::future<tinyproxy::session_result> result_;
    std::thread thread_;
};

std::string go_line(const endpoint& where) { return "GO " + where.to_string() + "\n"; }

void sleep_ms(long ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

/// A Mode that decides before reading the client, as forwarding does: everything the client
/// sends belongs to the tunnel.
class straight_mode_session {
public:
    explicit straight_mode_session(tinyproxy::host_port target) : target_(std::move(target)) {}
    mode_step start() { return mode_step::connect_to(target_); }
    mode_step on_client_data(byte_view) { return mode_step::need_more(); } // never called
    std::vector<std::uint8_t> on_connected(std::error_code, const endpoint&, const endpoint&) {
        return {};
    }

private:
    tinyproxy::host_port target_;
};

using straight_session = tinyproxy::basic_session<straight_mode_session>;

tinyproxy::host_port target_of(const endpoint& where) {
    std::error_code ec;
    tinyproxy::host_port target = tinyproxy::parse_host_port(where.to_string(), ec);
    REQUIRE_FALSE(ec);
    return target;
}

/// Drives a session by hand until `until` says true or `ms` have passed: polls its sockets for
/// what it asks, and passes on what they report.
template <class Session, class Until>
bool drive_until(Session& session, Until until, long ms) {
    std::vector<std::uint8_t> scratch(16384);
    const auto deadline = tinyproxy::steady_clock::now() + std::chrono::milliseconds(ms);
    while (!until() && !session.done() && tinyproxy::steady_clock::now() < deadline) {
        pollfd fds[2] = {{session.client_fd(), session.client_events(), 0},
                         {session.upstream_fd(), session.upstream_events(), 0}};
        ::poll(fds, 2, 20);
        session.on_ready(fds[0].revents, fds[1].revents, tinyproxy::steady_clock::now(),
                         scratch.data(), scratch.size());
    }
    return until();
}

/// Waits until `fd` is readable: what a client sent has reached the socket the session gets.
void wait_readable(int fd) {
    pollfd entry{fd, POLLIN, 0};
    REQUIRE(::poll(&entry, 1, 5000) == 1);
}

/// Capitalises every letter it passes on.
class upper_stage : public tinyproxy::relay_stage {
public:
    void on_data(tinyproxy::stage_context& out, byte_view bytes) override {
        std::string text(bytes.as_chars());
        for (char& c : text) {
            c = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
        }
        out.pass(std::string_view(text));
    }
};

} // namespace

TEST_SUITE_BEGIN("session");

TEST_CASE("a handshake split across several sends connects and relays both ways") {
    echo_server echo;
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session, false); // run_session(session, -1, 16384)

    CHECK(read_exactly(client, 6, in_ms(5000)).data == "HELLO\n");
    std::string line = go_line(echo.endpoint());
    // Pieces with pauses between them, so the session reads them one by one.
    for (std::string piece : {line.substr(0, 1), line.substr(1, 4), line.substr(5, 6),
                              line.substr(11, line.size() - 12), line.substr(line.size() - 1)}) {
        REQUIRE(write_all(client, piece, in_ms(5000)));
        sleep_ms(30);
    }
    CHECK(read_exactly(client, 3, in_ms(5000)).data == "OK\n");
    REQUIRE(write_all(client, "ping", in_ms(5000)));
    CHECK(read_exactly(client, 4, in_ms(5000)).data == "ping");
    ::shutdown(client, SHUT_WR);
    read_result rest = read_to_eof(client, in_ms(5000));
    CHECK(rest.eof);
    CHECK(rest.data.empty());

    REQUIRE(runner.ends_within(5000));
    tinyproxy::session_result result = runner.result();
    CHECK_FALSE(result.error);
    CHECK(result.connected);
    CHECK(result.bytes_to_upstream == 4);
    CHECK(result.bytes_to_client == 3 + 4); // "OK\n" and the echo; the greeting came before
    CHECK(record->data_calls >= 2);         // the handshake really came in pieces
    CHECK(record->connected_calls == 1);
    CHECK_FALSE(record->connect_result);
    CHECK(record->upstream == echo.endpoint());
    CHECK(record->local.address.is_loopback());
    CHECK(echo.received() == "ping");
    CHECK(session.done());
}

TEST_CASE("a Mode that does not use the local endpoint is not told it") {
    // uses_local_endpoint = false saves the getsockname(2): on_connected() gets an empty
    // `local`, and still the address connected to.
    echo_server echo;
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    tinyproxy::basic_session<go_mode_session_no_local> session(
        std::move(front.accepted), go_mode_session_no_local(record), short_limits());
    std::thread driver([&] { (void)tinyproxy::run_session(session, -1, 16384); });

    CHECK(read_exactly(client, 6, in_ms(5000)).data == "HELLO\n");
    REQUIRE(write_all(client, go_line(echo.endpoint()), in_ms(5000)));
    CHECK(read_exactly(client, 3, in_ms(5000)).data == "OK\n");
    ::shutdown(client, SHUT_WR);
    CHECK(read_to_eof(client, in_ms(5000)).eof);
    driver.join();
    CHECK(record->connected_calls == 1);
    CHECK(record->upstream == echo.endpoint());
    CHECK(record->local.port == 0);
    CHECK(record->local.address.is_unspecified());
}

TEST_CASE("start() makes the client non-blocking, unless told it already is") {
    // proxy_server accepts every client non-blocking and says so (client_socket_setup), which
    // saves an fcntl(2) per client; anyone else's socket is made non-blocking by start().
    for (bool told : {false, true}) {
        CAPTURE(told);
        auto record = std::make_shared<go_record>();
        front_connection front = connect_client(); // a blocking accepted socket
        int accepted = front.accepted.native_handle();
        tinyproxy::client_socket_setup setup;
        setup.nonblocking = told;
        go_session session(std::move(front.accepted), go_mode_session(record), short_limits(), {},
                           setup);
        session.start(tinyproxy::steady_clock::now());
        int flags = ::fcntl(accepted, F_GETFL);
        REQUIRE(flags >= 0);
        // Told: the session believed it and asked nothing (a real caller tells the truth).
        CHECK(((flags & O_NONBLOCK) != 0) == !told);
    }
}

TEST_CASE("a handshaking client is waited on for what its tunnel will wait for") {
    // The same events before and after the tunnel starts, so an event loop that keeps the
    // client registered while its upstream connects need not modify it afterwards (epoll_ctl).
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    auto now = tinyproxy::steady_clock::now();
    session.start(now);
    std::vector<std::uint8_t> scratch(1024);
    if ((session.client_events() & POLLOUT) != 0) { // the greeting, first
        session.on_ready(POLLOUT, 0, now, scratch.data(), scratch.size());
    }
    REQUIRE_FALSE(session.done());
    const tinyproxy::relay idle_tunnel(-1, -1);
    CHECK(session.client_events() == idle_tunnel.client_events());
}

TEST_CASE("an upstream that has answered by the time connect() returns starts the tunnel at once") {
    // On loopback the TCP handshake is over before connect() returns: the session asks at
    // once (no wait) and relays, instead of having its driver watch for writability first. A
    // refused address is moved past at once the same way, onto the next one.
    echo_server echo;
    const endpoint refused = tinyproxy::listener::open(loopback_any_port, 4).local_endpoint();
    for (bool refused_first : {false, true}) {
        CAPTURE(refused_first);
        auto record = std::make_shared<go_record>();
        front_connection front = connect_client();
        int client = front.client.native_handle();
        go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
        auto now = tinyproxy::steady_clock::now();
        std::vector<std::uint8_t> scratch(1024);
        session.start(now);
        session.on_ready(POLLOUT, 0, now, scratch.data(), scratch.size()); // the greeting
        REQUIRE(read_exactly(client, 6, in_ms(5000)).data == "HELLO\n");
        if (refused_first) {
            // What a name resolving to two addresses gives: the closed port, then the echo.
            session.on_resolved({refused, echo.endpoint()}, {}, now);
        } else {
            REQUIRE(write_all(client, go_line(echo.endpoint()), in_ms(5000)));
            pollfd arrived{session.client_fd(), POLLIN, 0};
            REQUIRE(::poll(&arrived, 1, 5000) == 1);
            session.on_ready(POLLIN, 0, now, scratch.data(), scratch.size()); // reads, connects
        }
        // That one call connected, started the tunnel and sent the reply: no wait between.
        CHECK((session.upstream_events() & POLLOUT) == 0);
        CHECK((session.upstream_events() & POLLIN) != 0);
        CHECK(read_exactly(client, 3, in_ms(1000)).data == "OK\n");
        CHECK(record->upstream == echo.endpoint());
        CHECK_FALSE(record->connect_result);
    }
}

TEST_CASE("bytes pipelined behind the handshake reach upstream first and in order") {
    echo_server echo;
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    // The handshake and 100 KiB in one send, then 100 KiB more at once, then a little more
    // later: none of it waits for "OK\n".
    const std::string first = random_bytes(100 * 1024, 21);
    const std::string second = random_bytes(100 * 1024, 22);
    const std::string third = "third";
    REQUIRE(write_all(client, go_line(echo.endpoint()) + first, in_ms(5000)));
    REQUIRE(write_all(client, second, in_ms(5000)));
    sleep_ms(20);
    REQUIRE(write_all(client, third, in_ms(5000)));
    ::shutdown(client, SHUT_WR);

    const std::string expected = "HELLO\nOK\n" + first + second + third;
    read_result got = read_to_eof(client, in_ms(10'000));
    CHECK(got.eof);
    CHECK(got.data.size() == expected.size());
    CHECK(first_difference(got.data, expected) == std::string::npos);
    CHECK(first_difference(echo.received(), first + second + third) == std::string::npos);

    REQUIRE(runner.ends_within(5000));
    tinyproxy::session_result result = runner.result();
    CHECK_FALSE(result.error);
    CHECK(result.bytes_to_upstream == first.size() + second.size() + third.size());
    CHECK(result.bytes_to_client == 3 + first.size() + second.size() + third.size());
}

TEST_CASE("a refused upstream gets the client FAIL and then end of stream") {
    tinyproxy::listener gone = tinyproxy::listener::open(loopback_any_port, 1);
    endpoint refused = gone.local_endpoint();
    gone.close();

    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    REQUIRE(write_all(client, go_line(refused) + "never delivered", in_ms(5000)));
    read_result got = read_to_eof(client, in_ms(5000));
    CHECK(got.data == "HELLO\nFAIL\n");
    CHECK(got.eof);

    REQUIRE(runner.ends_within(5000));
    tinyproxy::session_result result = runner.result();
    CHECK(result.error == std::errc::connection_refused);
    CHECK_FALSE(result.connected);
    CHECK(result.bytes_to_upstream == 0);
    CHECK(record->connected_calls == 1);
    CHECK(record->connect_result == std::errc::connection_refused);
}

TEST_CASE("a silent client is closed at the handshake timeout") {
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    tinyproxy::session_options limits = short_limits();
    limits.handshake_timeout = std::chrono::milliseconds(200);
    go_session session(std::move(front.accepted), go_mode_session(record), limits);
    auto start = steady_clock::now();
    session_runner runner(session);

    read_result got = read_to_eof(client, in_ms(5000));
    CHECK(got.data == "HELLO\n");
    CHECK(got.eof);
    REQUIRE(runner.ends_within(5000));
    long took = elapsed_ms(start);
    CHECK(took >= 190);
    CHECK(took < scaled_ms(2000));
    tinyproxy::session_result result = runner.result();
    CHECK(result.error == tinyproxy::errc::handshake_timeout);
    CHECK_FALSE(result.connected);
    CHECK(record->connected_calls == 0);
}

TEST_CASE("a client trickling bytes still meets the handshake deadline") {
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    tinyproxy::session_options limits = short_limits();
    limits.handshake_timeout = std::chrono::milliseconds(300);
    go_session session(std::move(front.accepted), go_mode_session(record), limits);
    auto start = steady_clock::now();
    session_runner runner(session);

    // One byte every 50 ms, never a newline: each byte is progress, but not a handshake.
    bool ended = false;
    for (int i = 0; i < 40 && !ended; ++i) {
        (void)write_all(client, "G", in_ms(1000));
        ended = runner.ends_within(50);
    }
    REQUIRE(ended);
    long took = elapsed_ms(start);
    CHECK(took >= 290);
    CHECK(took < scaled_ms(2000));
    CHECK(runner.result().error == tinyproxy::errc::handshake_timeout);
    CHECK(record->data_calls >= 2);
}

TEST_CASE("an idle tunnel is closed at the idle timeout, and traffic restarts the clock") {
    echo_server echo;
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    tinyproxy::session_options limits = short_limits();
    limits.idle_timeout = std::chrono::milliseconds(400);
    go_session session(std::move(front.accepted), go_mode_session(record), limits);
    session_runner runner(session);

    REQUIRE(write_all(client, go_line(echo.endpoint()), in_ms(5000)));
    CHECK(read_exactly(client, 9, in_ms(5000)).data == "HELLO\nOK\n");
    // Traffic every 100 ms for 800 ms: two idle timeouts' worth, but never idle.
    auto last_traffic = steady_clock::now();
    for (int i = 0; i < 8; ++i) {
        REQUIRE(write_all(client, "k", in_ms(1000)));
        CHECK(read_exactly(client, 1, in_ms(1000)).data == "k");
        last_traffic = steady_clock::now();
        CHECK_FALSE(runner.ends_within(100));
    }
    REQUIRE(runner.ends_within(3000));
    long took = elapsed_ms(last_traffic);
    CHECK(took >= 350);
    CHECK(took < scaled_ms(2000));
    tinyproxy::session_result result = runner.result();
    CHECK(result.error == tinyproxy::errc::idle_timeout);
    CHECK(result.connected);
    CHECK(result.bytes_to_upstream == 8);
    CHECK(result.bytes_to_client == 3 + 8);
    read_result rest = read_to_eof(client, in_ms(5000));
    CHECK(rest.data.empty());
    CHECK((rest.eof || rest.error == ECONNRESET));
}

TEST_CASE("closing the stop pipe ends run_session promptly with errc::stopped") {
    echo_server echo;
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    bool relaying = false;
    SUBCASE("during the handshake") { relaying = false; }
    SUBCASE("while relaying") { relaying = true; }
    if (relaying) {
        REQUIRE(write_all(client, go_line(echo.endpoint()), in_ms(5000)));
        CHECK(read_exactly(client, 9, in_ms(5000)).data == "HELLO\nOK\n");
    } else {
        CHECK(read_exactly(client, 6, in_ms(5000)).data == "HELLO\n");
    }
    CHECK_FALSE(runner.ends_within(50));
    auto start = steady_clock::now();
    runner.stop();
    REQUIRE(runner.ends_within(1000));
    CHECK(elapsed_ms(start) < scaled_ms(500));
    tinyproxy::session_result result = runner.result();
    CHECK(result.error == tinyproxy::errc::stopped);
    CHECK(result.connected == relaying);
    CHECK(result.bytes_to_client == (relaying ? 3u : 0u)); // counted even when stopped
    read_result rest = read_to_eof(client, in_ms(5000));
    CHECK(rest.data.empty());
    CHECK((rest.eof || rest.error == ECONNRESET));
}

TEST_CASE("a client that closes during the handshake ends with handshake_incomplete") {
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    CHECK(read_exactly(client, 6, in_ms(5000)).data == "HELLO\n");
    REQUIRE(write_all(client, "GO 127.0.0.1:", in_ms(5000)));
    ::shutdown(client, SHUT_WR);
    REQUIRE(runner.ends_within(3000));
    CHECK(runner.result().error == tinyproxy::errc::handshake_incomplete);
    CHECK(read_to_eof(client, in_ms(5000)).eof);
}

TEST_CASE("a Mode's failure reply reaches the client before the close") {
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    REQUIRE(write_all(client, "JUMP somewhere\n", in_ms(5000)));
    read_result got = read_to_eof(client, in_ms(5000));
    CHECK(got.data == "HELLO\nERR\n");
    CHECK(got.eof);
    REQUIRE(runner.ends_within(3000));
    tinyproxy::session_result result = runner.result();
    CHECK(result.error == tinyproxy::errc::protocol_error);
    CHECK_FALSE(result.connected);
    CHECK(record->connected_calls == 0);
}

TEST_CASE("a target given by name is resolved and connected") {
    std::error_code ec;
    auto localhost = tinyproxy::resolve(tinyproxy::host_port{"localhost", 1}, ec);
    bool has_v4 = false;
    for (const endpoint& ep : localhost) {
        has_v4 = has_v4 || ep.address == tinyproxy::ip_address::loopback_v4();
    }
    if (!has_v4) {
        skip_test("localhost does not resolve to 127.0.0.1 here");
        return;
    }
    echo_server echo;
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    std::string line = "GO localhost:" + std::to_string(echo.endpoint().port) + "\nhi";
    REQUIRE(write_all(client, line, in_ms(5000)));
    ::shutdown(client, SHUT_WR);
    read_result got = read_to_eof(client, in_ms(5000));
    CHECK(got.data == "HELLO\nOK\nhi");
    REQUIRE(runner.ends_within(3000));
    tinyproxy::session_result result = runner.result();
    CHECK_FALSE(result.error);
    CHECK(session.resolve_target().host == "localhost");
    CHECK(record->upstream == echo.endpoint());
}

TEST_CASE("half-close through a session: upstream answers after the client's end of stream") {
    tinyproxy::listener upstream_listener = tinyproxy::listener::open(loopback_any_port, 4);
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    REQUIRE(
        write_all(client, go_line(upstream_listener.local_endpoint()) + "question", in_ms(5000)));
    ::shutdown(client, SHUT_WR);
    pollfd entry{upstream_listener.native_handle(), POLLIN, 0};
    REQUIRE(::poll(&entry, 1, 5000) == 1);
    endpoint peer;
    std::error_code accept_ec;
    tinyproxy::socket upstream = upstream_listener.accept(peer, true, accept_ec);
    REQUIRE_FALSE(accept_ec);
    REQUIRE(upstream);

    // Upstream hears the whole question and the end of it before it says a word.
    read_result question = read_to_eof(upstream.native_handle(), in_ms(5000));
    CHECK(question.data == "question");
    CHECK(question.eof);
    const std::string answer = random_bytes(300 * 1024, 23);
    REQUIRE(write_all(upstream.native_handle(), answer, in_ms(5000)));
    upstream.close();

    read_result got = read_to_eof(client, in_ms(5000));
    CHECK(got.eof);
    const std::string expected = "HELLO\nOK\n" + answer;
    CHECK(got.data.size() == expected.size());
    CHECK(first_difference(got.data, expected) == std::string::npos);
    REQUIRE(runner.ends_within(3000));
    tinyproxy::session_result result = runner.result();
    CHECK_FALSE(result.error);
    CHECK(result.bytes_to_upstream == 8);
    CHECK(result.bytes_to_client == 3 + answer.size());
}

TEST_CASE("an upstream reset reaches the client as a reset") {
    tinyproxy::listener upstream_listener = tinyproxy::listener::open(loopback_any_port, 4);
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    REQUIRE(write_all(client, go_line(upstream_listener.local_endpoint()), in_ms(5000)));
    CHECK(read_exactly(client, 9, in_ms(5000)).data == "HELLO\nOK\n");
    pollfd entry{upstream_listener.native_handle(), POLLIN, 0};
    REQUIRE(::poll(&entry, 1, 5000) == 1);
    endpoint peer;
    std::error_code accept_ec;
    tinyproxy::socket upstream = upstream_listener.accept(peer, true, accept_ec);
    REQUIRE_FALSE(accept_ec);
    REQUIRE(upstream);
    arm_reset(upstream.native_handle());
    upstream.close();

    REQUIRE(runner.ends_within(3000));
    tinyproxy::session_result result = runner.result();
    CHECK(result.error == std::errc::connection_reset);
    CHECK(result.connected);
    read_result got = read_to_eof(client, in_ms(5000));
    CHECK(got.error == ECONNRESET);
    CHECK(got.data.empty());
}

TEST_CASE("a client reset reaches upstream as a reset") {
    tinyproxy::listener upstream_listener = tinyproxy::listener::open(loopback_any_port, 4);
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    REQUIRE(write_all(front.client.native_handle(),
                      go_line(upstream_listener.local_endpoint()) + "partial request",
                      in_ms(5000)));
    CHECK(read_exactly(front.client.native_handle(), 9, in_ms(5000)).data == "HELLO\nOK\n");
    pollfd entry{upstream_listener.native_handle(), POLLIN, 0};
    REQUIRE(::poll(&entry, 1, 5000) == 1);
    endpoint peer;
    std::error_code accept_ec;
    tinyproxy::socket upstream = upstream_listener.accept(peer, true, accept_ec);
    REQUIRE_FALSE(accept_ec);
    CHECK(read_exactly(upstream.native_handle(), 15, in_ms(5000)).data == "partial request");

    arm_reset(front.client.native_handle());
    front.client.close();
    REQUIRE(runner.ends_within(3000));
    tinyproxy::session_result result = runner.result();
    CHECK(result.error == std::errc::connection_reset);
    read_result got = read_to_eof(upstream.native_handle(), in_ms(5000));
    CHECK(got.error == ECONNRESET);
    CHECK(got.data.empty());
}

TEST_CASE("an upstream that never answers gets the client FAIL at the connect timeout") {
    // A listener that never accepts, its backlog full, leaves the next connect hanging.
    tinyproxy::listener silent = tinyproxy::listener::open(loopback_any_port, 0);
    std::vector<tinyproxy::socket> queued;
    bool full = false;
    for (int attempt = 0; attempt < 32 && !full; ++attempt) {
        std::error_code ec;
        tinyproxy::socket s = tinyproxy::connect(silent.local_endpoint(), in_ms(200), ec);
        full = ec == tinyproxy::errc::connect_timeout;
        queued.push_back(std::move(s));
    }
    if (!full) {
        skip_test("this network stack answers every attempt even with a full backlog");
        return;
    }
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    tinyproxy::session_options limits = short_limits();
    limits.connect_timeout = std::chrono::milliseconds(300);
    go_session session(std::move(front.accepted), go_mode_session(record), limits);
    session_runner runner(session);

    REQUIRE(write_all(client, go_line(silent.local_endpoint()), in_ms(5000)));
    CHECK(read_exactly(client, 6, in_ms(5000)).data == "HELLO\n");
    auto start = steady_clock::now();
    read_result got = read_to_eof(client, in_ms(5000));
    long took = elapsed_ms(start);
    CHECK(got.data == "FAIL\n");
    CHECK(got.eof);
    CHECK(took >= 250);
    CHECK(took < scaled_ms(2000));
    REQUIRE(runner.ends_within(3000));
    tinyproxy::session_result result = runner.result();
    CHECK(result.error == tinyproxy::errc::connect_timeout);
    CHECK_FALSE(result.connected);
    CHECK(record->connect_result == tinyproxy::errc::connect_timeout);
    CHECK(record->connected_calls == 1);
}

TEST_CASE("to_client of a connect step reaches the client whether the connect works or not") {
    // handshake_step: "The caller does the I/O: it sends `to_client` (whatever the action)".
    echo_server echo;
    endpoint target = echo.endpoint();
    bool works = true;
    SUBCASE("the connect works") { works = true; }
    SUBCASE("the connect is refused") {
        works = false;
        tinyproxy::listener gone = tinyproxy::listener::open(loopback_any_port, 1);
        target = gone.local_endpoint();
    }
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record, true), short_limits());
    session_runner runner(session);

    REQUIRE(write_all(client, go_line(target), in_ms(5000)));
    ::shutdown(client, SHUT_WR);
    read_result got = read_to_eof(client, in_ms(5000));
    CHECK(got.eof);
    const std::string expected = works ? "HELLO\nCONNECTING\nOK\n" : "HELLO\nCONNECTING\nFAIL\n";
    CHECK(got.data == expected);
    REQUIRE(runner.ends_within(3000));
    CHECK(runner.result().connected == works);
}

TEST_CASE("a client that half-closes and then resets has upstream reset promptly") {
    // The request and its end of stream, then an abort while upstream is still thinking: the
    // session must end on the reset (and reset upstream), not wait for the idle timeout.
    tinyproxy::listener upstream_listener = tinyproxy::listener::open(loopback_any_port, 4);
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    session_runner runner(session);

    REQUIRE(write_all(front.client.native_handle(),
                      go_line(upstream_listener.local_endpoint()) + "request", in_ms(5000)));
    ::shutdown(front.client.native_handle(), SHUT_WR);
    pollfd entry{upstream_listener.native_handle(), POLLIN, 0};
    REQUIRE(::poll(&entry, 1, 5000) == 1);
    endpoint peer;
    std::error_code accept_ec;
    tinyproxy::socket upstream = upstream_listener.accept(peer, true, accept_ec);
    REQUIRE_FALSE(accept_ec);
    read_result request = read_to_eof(upstream.native_handle(), in_ms(5000));
    CHECK(request.data == "request");
    REQUIRE(request.eof);
    CHECK(read_exactly(front.client.native_handle(), 9, in_ms(5000)).data == "HELLO\nOK\n");

    arm_reset(front.client.native_handle());
    front.client.close();
    auto start = steady_clock::now();
    bool ended = runner.ends_within(1000); // short_limits(): the idle timeout is 3 s
    CHECK(ended);
    CHECK(elapsed_ms(start) < scaled_ms(1000));
    runner.stop();
    REQUIRE(runner.ends_within(5000));
    tinyproxy::session_result result = runner.result();
    CHECK((result.error == std::errc::connection_reset || result.error == std::errc::broken_pipe));
    // Upstream already has the end of stream, so the reset shows on its next write: it fails
    // at once instead of being accepted as it would be after a plain close.
    pollfd reset{upstream.native_handle(), 0, 0};
    CHECK(::poll(&reset, 1, 1000) == 1);
    CHECK((reset.revents & (POLLERR | POLLHUP)) != 0);
    errno = 0;
    CHECK(::send(upstream.native_handle(), "late", 4, no_sigpipe | MSG_DONTWAIT) == -1);
    CHECK((errno == ECONNRESET || errno == EPIPE));
}

TEST_CASE("a failed connect reaches the Mode's on_connected once, with why it failed") {
    // The connector's one failure path: whatever failed, the Mode is told once, its reply goes
    // to the client, and the session ends with the same error. Driven by hand, without a thread.
    auto record = std::make_shared<go_record>();
    front_connection front = connect_client();
    int client = front.client.native_handle();
    go_session session(std::move(front.accepted), go_mode_session(record), short_limits());
    auto now = tinyproxy::steady_clock::now();
    std::vector<std::uint8_t> scratch(1024);
    session.start(now);
    session.on_ready(POLLOUT, 0, now, scratch.data(), scratch.size()); // the greeting
    REQUIRE(read_exactly(client, 6, in_ms(5000)).data == "HELLO\n");
    REQUIRE(write_all(client, "GO unresolved.invalid:80\n", in_ms(5000)));
    pollfd arrived{session.client_fd(), POLLIN, 0};
    REQUIRE(::poll(&arrived, 1, 5000) == 1);
    session.on_ready(POLLIN, 0, now, scratch.data(), scratch.size());
    REQUIRE(session.wants_resolve());
    CHECK(session.connecting());
    CHECK(session.resolve_target().host == "unresolved.invalid");
    CHECK(record->connected_calls == 0);

    std::error_condition expected; // a refusal comes as system:111, equal to generic:111
    SUBCASE("every address refused") {
        tinyproxy::listener first = tinyproxy::listener::open(loopback_any_port, 1);
        tinyproxy::listener second = tinyproxy::listener::open(loopback_any_port, 1);
        std::vector<endpoint> closed{first.local_endpoint(), second.local_endpoint()};
        first.close();
        second.close();
        expected = std::errc::connection_refused;
        session.on_resolved(closed, {}, now);
        // Loopback refuses at once, but a slower stack reports it when the socket is ready.
        for (int wait = 0; wait < 50 && session.connecting(); ++wait) {
            pollfd ready{session.upstream_fd(), session.upstream_events(), 0};
            REQUIRE(::poll(&ready, 1, 100) >= 0);
            session.on_ready(0, ready.revents, now, scratch.data(), scratch.size());
        }
    }
    SUBCASE("the name does not resolve") {
        auto why = std::make_error_code(std::errc::resource_unavailable_try_again);
        expected = why.default_error_condition();
        session.on_resolved({}, why, now);
    }
    SUBCASE("the name resolves to no address") {
        expected = make_error_code(tinyproxy::errc::name_not_resolved).default_error_condition();
        session.on_resolved({}, {}, now);
    }
    SUBCASE("the connect deadline passes while resolving") {
        expected = make_error_code(tinyproxy::errc::connect_timeout).default_error_condition();
        auto later = now + short_limits().connect_timeout;
        CHECK(session.deadline() <= later);
        session.on_deadline(later);
        session.on_resolved({}, {}, later); // a late answer changes nothing
    }
    CHECK_FALSE(session.connecting());
    CHECK(record->connected_calls == 1);
    CHECK(record->connect_result == expected);
    // The reply is a few bytes: the client's socket takes it at once, and the session ends.
    CHECK(session.done());
    read_result got = read_to_eof(client, in_ms(5000));
    CHECK(got.data == "FAIL\n");
    CHECK(got.eof);
    CHECK(session.result().error == expected);
    CHECK(session.result().stage == tinyproxy::session_result::stage_type::connect);
    CHECK_FALSE(session.result().connected);
}

TEST_CASE("a Mode that decides before reading has the client's first bytes probe the connect") {
    // Forwarding: the client's first bytes are sent as the connect's probe, in the same call
    // that connects (no poll(2) first, no wait for the driver). A refused address fails that
    // send, and the same bytes go to the next address.
    echo_server echo;
    const endpoint refused = tinyproxy::listener::open(loopback_any_port, 4).local_endpoint();
    for (bool refused_first : {false, true}) {
        CAPTURE(refused_first);
        echo_server fresh; // its received() holds this round's bytes only
        front_connection front = connect_client();
        int client = front.client.native_handle();
        REQUIRE(write_all(client, "first bytes", in_ms(5000)));
        wait_readable(front.accepted.native_handle());
        straight_session session(std::move(front.accepted),
                                 straight_mode_session(refused_first
                                                           ? tinyproxy::host_port{"two.invalid", 80}
                                                           : target_of(fresh.endpoint())),
                                 short_limits());
        auto now = tinyproxy::steady_clock::now();
        session.start(now);
        if (refused_first) {
            REQUIRE(session.wants_resolve());
            session.on_resolved({refused, fresh.endpoint()}, {}, now); // the closed port first
        }
        // Not one on_ready() since: the bytes went with the connect.
        REQUIRE_FALSE(session.connecting());
        REQUIRE_FALSE(session.done());
        for (int wait = 0; wait < 200 && fresh.received() != "first bytes"; ++wait) {
            sleep_ms(5);
        }
        CHECK(fresh.received() == "first bytes");
        CHECK(session.result().upstream == fresh.endpoint());

        // The relay goes on from there: the echo back, then the end of stream each way.
        REQUIRE(write_all(client, " and more", in_ms(5000)));
        ::shutdown(client, SHUT_WR);
        CHECK(drive_until(
            session, [&] { return session.done(); }, 5000));
        read_result got = read_to_eof(client, in_ms(5000));
        CHECK(got.data == "first bytes and more");
        CHECK(session.result().bytes_to_upstream == 20);
        CHECK(session.result().bytes_to_client == 20);
        CHECK_FALSE(session.result().error);
    }
    CHECK(echo.accepted() == 0);
}

TEST_CASE("the first bytes of a tunnel with stages go through its stages, not as the probe") {
    echo_server echo;
    front_connection front = connect_client();
    int client = front.client.native_handle();
    REQUIRE(write_all(client, "shout", in_ms(5000)));
    wait_readable(front.accepted.native_handle());
    tinyproxy::session_options limits = short_limits();
    limits.stages = [](const tinyproxy::tunnel_info&, tinyproxy::tunnel_stages& stages) {
        stages.to_upstream.push_back(std::make_unique<upper_stage>());
    };
    straight_session session(std::move(front.accepted),
                             straight_mode_session(target_of(echo.endpoint())), limits);
    session.start(tinyproxy::steady_clock::now());
    ::shutdown(client, SHUT_WR);
    CHECK(drive_until(
        session, [&] { return session.done(); }, 5000));
    CHECK(read_to_eof(client, in_ms(5000)).data == "SHOUT");
    CHECK(echo.received() == "SHOUT");
}

TEST_CASE("a client reset before its Mode decided ends the session without a connect") {
    echo_server echo;
    front_connection front = connect_client();
    arm_reset(front.client.native_handle());
    front.client.close(); // a reset, and not a byte before it
    wait_readable(front.accepted.native_handle());
    straight_session session(std::move(front.accepted),
                             straight_mode_session(target_of(echo.endpoint())), short_limits());
    session.start(tinyproxy::steady_clock::now());
    CHECK(session.done());
    CHECK(session.result().error == std::errc::connection_reset);
    CHECK_FALSE(session.result().connected);
    sleep_ms(20);
    CHECK(echo.accepted() == 0);
}

TEST_SUITE_END();
