// Unit tests for relay.hpp: the relay engine driven by a poll loop over socket pairs.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <cerrno>       // errno values
#include <cstdint>      // scratch bytes
#include <functional>   // drive() predicates
#include <string>       // payloads
#include <system_error> // error codes
#include <vector>       // scratch

#include <poll.h>       // poll
#include <sys/socket.h> // send, recv, shutdown

#include <tinyproxy/tinyproxy.hpp>

#include "support/unit_helpers.hpp"

using namespace unit_support;

namespace {

/// The test's end of one socket pair: sends `to_send` as fast as the socket takes it (then,
/// optionally, shuts down writing) and reads whatever arrives, all without blocking.
struct app_side {
    tinyproxy::unique_fd fd;
    std::string to_send;
    std::size_t sent = 0;
    bool shut_when_sent = true;
    bool shut = false;
    bool reading = true;
    std::string received;
    bool eof = false;
    int error = 0;

    void step() {
        if (!fd) {
            return;
        }
        while (sent < to_send.size() && error == 0) {
            std::size_t chunk = to_send.size() - sent < 65536 ? to_send.size() - sent : 65536;
            ssize_t n = ::send(fd.get(), to_send.data() + sent, chunk, no_sigpipe | MSG_DONTWAIT);
            if (n > 0) {
                sent += static_cast<std::size_t>(n);
            } else {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    error = errno;
                }
                break;
            }
        }
        if (sent == to_send.size() && shut_when_sent && !shut) {
            ::shutdown(fd.get(), SHUT_WR);
            shut = true;
        }
        char buffer[65536];
        while (reading && !eof && error == 0) {
            ssize_t n = ::recv(fd.get(), buffer, sizeof buffer, MSG_DONTWAIT);
            if (n > 0) {
                received.append(buffer, static_cast<std::size_t>(n));
            } else if (n == 0) {
                eof = true;
            } else {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    error = errno;
                }
                break;
            }
        }
    }
};

enum class transport { unix_stream, tcp_loopback };

fd_pair make_pair(transport kind) {
    return kind == transport::unix_stream ? unix_pair(true) : tcp_pair(true);
}

/// client app <-> [client_end  relay  upstream_end] <-> upstream app
class relay_rig {
public:
    relay_rig(transport kind, std::size_t scratch_size)
        : relay_rig(make_pair(kind), make_pair(kind), scratch_size) {}

    tinyproxy::relay& relay() { return relay_; }
    app_side& client() { return client_app_; }
    app_side& upstream() { return upstream_app_; }
    int client_end() const { return client_end_.get(); }
    int upstream_end() const { return upstream_end_.get(); }
    std::size_t scratch_size() const { return scratch_.size(); }
    int pumps() const { return pumps_; }

    /// Runs the test's ends and the relay (pumped only when poll reports what it asked for)
    /// until `done()` or `ms` pass. Returns done().
    bool drive(const std::function<bool()>& done, long ms) {
        time_point until = in_ms(ms);
        while (!done()) {
            if (steady_clock::now() >= until) {
                return false;
            }
            step(10);
        }
        return true;
    }
    /// Runs everything for `ms`, whatever happens.
    void drive_for(long ms) {
        time_point until = in_ms(ms);
        while (steady_clock::now() < until) {
            step(5);
        }
    }
    bool pump() {
        ++pumps_;
        return relay_.pump(scratch_.data(), scratch_.size());
    }

private:
    relay_rig(fd_pair client_pair, fd_pair upstream_pair, std::size_t scratch_size)
        : client_end_(std::move(client_pair.second)), upstream_end_(std::move(upstream_pair.first)),
          relay_(client_end_.get(), upstream_end_.get()), scratch_(scratch_size) {
        client_app_.fd = std::move(client_pair.first);
        upstream_app_.fd = std::move(upstream_pair.second);
    }

    void step(int poll_ms) {
        client_app_.step();
        upstream_app_.step();
        pollfd fds[2] = {{client_end_.get(), relay_.client_events(), 0},
                         {upstream_end_.get(), relay_.upstream_events(), 0}};
        if (::poll(fds, 2, poll_ms) > 0) {
            pump();
        }
    }

    tinyproxy::unique_fd client_end_;
    tinyproxy::unique_fd upstream_end_;
    tinyproxy::relay relay_;
    std::vector<std::uint8_t> scratch_;
    app_side client_app_;
    app_side upstream_app_;
    int pumps_ = 0;
};

} // namespace

TEST_SUITE_BEGIN("relay");

TEST_CASE("relay carries 1 MiB each way at once, intact, and counts every byte") {
    transport kind = transport::unix_stream;
    SUBCASE("unix socket pairs") { kind = transport::unix_stream; }
    SUBCASE("TCP over loopback") { kind = transport::tcp_loopback; }

    relay_rig rig(kind, 16 * 1024);
    CHECK(rig.relay().bytes_buffered() == 0);
    CHECK_FALSE(rig.relay().finished());
    const std::string up = random_bytes(1 << 20, 1);
    const std::string down = random_bytes(1 << 20, 2);
    rig.client().to_send = up;
    rig.upstream().to_send = down;

    bool done = rig.drive(
        [&] { return rig.client().eof && rig.upstream().eof && rig.relay().finished(); }, 10'000);
    REQUIRE(done);
    CHECK(rig.upstream().received.size() == up.size());
    CHECK(first_difference(rig.upstream().received, up) == std::string::npos);
    CHECK(rig.client().received.size() == down.size());
    CHECK(first_difference(rig.client().received, down) == std::string::npos);
    CHECK(rig.relay().bytes_to_upstream() == up.size());
    CHECK(rig.relay().bytes_to_client() == down.size());
    CHECK_FALSE(rig.relay().failed());
    CHECK_FALSE(rig.relay().error());
    CHECK(rig.relay().bytes_buffered() == 0);
    CHECK(rig.relay().client_events() == 0);
    CHECK(rig.relay().upstream_events() == 0);
}

TEST_CASE("half-close: the client's end of stream reaches upstream, whose reply still arrives") {
    transport kind = transport::unix_stream;
    SUBCASE("unix socket pairs") { kind = transport::unix_stream; }
    SUBCASE("TCP over loopback") { kind = transport::tcp_loopback; }

    relay_rig rig(kind, 8 * 1024);
    rig.client().to_send = "request: tell me everything";
    rig.upstream().shut_when_sent = false;

    REQUIRE(rig.drive([&] { return rig.upstream().eof; }, 5000));
    CHECK(rig.upstream().received == "request: tell me everything");
    CHECK_FALSE(rig.relay().finished());
    CHECK((rig.relay().client_events() & POLLIN) == 0);   // the client said it is done
    CHECK((rig.relay().upstream_events() & POLLIN) != 0); // upstream may still talk
    CHECK_FALSE(rig.client().eof);

    const std::string reply = random_bytes(300 * 1024, 3);
    rig.upstream().to_send = reply;
    rig.upstream().shut_when_sent = true;
    REQUIRE(rig.drive([&] { return rig.client().eof && rig.relay().finished(); }, 5000));
    CHECK(rig.client().received.size() == reply.size());
    CHECK(first_difference(rig.client().received, reply) == std::string::npos);
    CHECK_FALSE(rig.relay().failed());
    CHECK(rig.relay().bytes_to_upstream() == 27);
    CHECK(rig.relay().bytes_to_client() == reply.size());
    CHECK(rig.relay().bytes_buffered() == 0);
}

TEST_CASE("prime_upstream bytes go out before anything the client sent, in order") {
    relay_rig rig(transport::unix_stream, 4 * 1024);
    // More than a socket buffer holds, so the relay must hold the client's bytes back.
    const std::string header = random_bytes(512 * 1024, 4);
    const std::string body = random_bytes(100 * 1024, 5);
    rig.relay().prime_upstream(std::string_view(header));
    CHECK(rig.relay().bytes_buffered() == header.size());
    CHECK((rig.relay().upstream_events() & POLLOUT) != 0);
    CHECK((rig.relay().client_events() & POLLIN) == 0); // not until the primed bytes are out
    rig.client().to_send = body;
    rig.client().step(); // the client's bytes are waiting before the relay first runs
    rig.upstream().shut_when_sent = false;

    REQUIRE(rig.drive([&] { return rig.upstream().eof; }, 10'000));
    CHECK(rig.upstream().received.size() == header.size() + body.size());
    CHECK(first_difference(rig.upstream().received, header + body) == std::string::npos);
    CHECK(rig.relay().bytes_to_upstream() == header.size() + body.size());
    CHECK(rig.relay().bytes_buffered() == 0);
}

TEST_CASE("prime_client bytes go out before anything upstream sent, in order") {
    relay_rig rig(transport::unix_stream, 4 * 1024);
    const std::string greeting = random_bytes(300 * 1024, 6);
    const std::string data = random_bytes(50 * 1024, 7);
    rig.relay().prime_client(std::string_view(greeting));
    rig.upstream().to_send = data;
    rig.upstream().step();

    REQUIRE(rig.drive([&] { return rig.client().eof && rig.relay().finished(); }, 10'000));
    CHECK(rig.client().received.size() == greeting.size() + data.size());
    CHECK(first_difference(rig.client().received, greeting + data) == std::string::npos);
    CHECK(rig.relay().bytes_to_client() == greeting.size() + data.size());
    CHECK(rig.relay().bytes_to_upstream() == 0);
}

TEST_CASE("a reset from either peer ends the relay with failed() and the error") {
    relay_rig rig(transport::tcp_loopback, 16 * 1024);
    rig.client().to_send = "some bytes first";
    rig.client().shut_when_sent = false;
    rig.upstream().to_send = "and some back";
    rig.upstream().shut_when_sent = false;
    REQUIRE(rig.drive(
        [&] { return rig.upstream().received.size() == 16 && rig.client().received.size() == 13; },
        5000));
    CHECK_FALSE(rig.relay().finished());

    bool client_resets = true;
    SUBCASE("the client resets") { client_resets = true; }
    SUBCASE("upstream resets") { client_resets = false; }
    app_side& resetting = client_resets ? rig.client() : rig.upstream();
    arm_reset(resetting.fd.get());
    resetting.fd.reset();

    REQUIRE(rig.drive([&] { return rig.relay().finished(); }, 5000));
    CHECK(rig.relay().failed());
    CHECK(rig.relay().error() == std::errc::connection_reset);
    CHECK(rig.relay().error_on_client() == client_resets);
    CHECK(rig.relay().client_events() == 0);
    CHECK(rig.relay().upstream_events() == 0);
    CHECK(rig.relay().bytes_to_upstream() == 16);
    CHECK(rig.relay().bytes_to_client() == 13);
}

TEST_CASE("a destination that is gone fails the relay on write, blaming that side") {
    relay_rig rig(transport::unix_stream, 16 * 1024);
    rig.client().shut_when_sent = false;
    rig.upstream().fd.reset(); // upstream closes both ways before the client says anything
    // The relay sees upstream's end of stream and passes it on; the client keeps talking.
    REQUIRE(rig.drive([&] { return rig.client().eof; }, 5000));
    rig.client().to_send = "anyone there?";
    REQUIRE(rig.drive([&] { return rig.relay().finished(); }, 5000));
    CHECK(rig.relay().failed());
    CHECK(rig.relay().error() == std::errc::broken_pipe);
    CHECK_FALSE(rig.relay().error_on_client());
}

TEST_CASE(
    "backpressure: a destination that does not read stops the relay reading, losing nothing") {
    const std::size_t scratch = 16 * 1024;
    relay_rig rig(transport::unix_stream, scratch);
    const std::string payload = random_bytes(4 << 20, 10);
    rig.client().to_send = payload;
    rig.client().shut_when_sent = false;
    rig.upstream().reading = false;
    rig.upstream().shut_when_sent = false;

    rig.drive_for(300); // everything fills up: upstream's socket, the relay, the client's socket
    REQUIRE(rig.client().sent < payload.size());
    std::size_t buffered = rig.relay().bytes_buffered();
    CHECK(buffered > 0);
    CHECK(buffered <= scratch);
    CHECK((rig.relay().client_events() & POLLIN) == 0);
    CHECK((rig.relay().upstream_events() & POLLOUT) != 0);

    // Nothing moves, however often the relay is pumped: it neither reads nor buffers more.
    std::uint64_t to_upstream = rig.relay().bytes_to_upstream();
    std::size_t client_sent = rig.client().sent;
    CHECK_FALSE(rig.pump());
    rig.drive_for(100);
    for (int i = 0; i < 10; ++i) {
        (void)rig.pump();
        rig.client().step();
    }
    CHECK(rig.relay().bytes_to_upstream() == to_upstream);
    CHECK(rig.relay().bytes_buffered() == buffered);
    CHECK(rig.client().sent == client_sent);
    CHECK_FALSE(rig.relay().finished());

    // The reader comes back: every byte arrives, in order, and the buffer is released.
    rig.upstream().reading = true;
    rig.upstream().shut_when_sent = true;
    rig.client().shut_when_sent = true;
    REQUIRE(rig.drive(
        [&] { return rig.upstream().eof && rig.client().eof && rig.relay().finished(); }, 10'000));
    CHECK(rig.upstream().received.size() == payload.size());
    CHECK(first_difference(rig.upstream().received, payload) == std::string::npos);
    CHECK(rig.relay().bytes_to_upstream() == payload.size());
    CHECK(rig.relay().bytes_buffered() == 0);
    CHECK_FALSE(rig.relay().failed());
}

TEST_CASE("bytes_buffered returns to 0 as soon as a slow destination drains") {
    relay_rig rig(transport::unix_stream, 32 * 1024);
    rig.client().to_send = random_bytes(1 << 20, 11);
    rig.client().shut_when_sent = false;
    rig.upstream().reading = false;
    rig.upstream().shut_when_sent = false;
    rig.drive_for(100);
    REQUIRE(rig.relay().bytes_buffered() > 0);
    rig.upstream().reading = true;
    // Once the client has nothing more to say and upstream has read it all, nothing is held.
    REQUIRE(rig.drive(
        [&] {
            return rig.upstream().received.size() == rig.client().to_send.size() &&
                   rig.relay().bytes_buffered() == 0;
        },
        10'000));
    CHECK(rig.relay().bytes_to_upstream() == rig.client().to_send.size());
    CHECK_FALSE(rig.relay().finished()); // nobody has closed anything
    CHECK((rig.relay().client_events() & POLLIN) != 0);
    CHECK((rig.relay().upstream_events() & POLLOUT) == 0);
}

TEST_CASE("pump reports progress only when something happened") {
    relay_rig rig(transport::unix_stream, 1024);
    rig.upstream().shut_when_sent = false;
    CHECK_FALSE(rig.pump()); // nothing to read, nothing to write
    rig.client().to_send = "x";
    rig.client().shut_when_sent = false;
    rig.client().step();
    CHECK(rig.pump());
    rig.upstream().step();
    CHECK(rig.upstream().received == "x");
    CHECK_FALSE(rig.pump());
}

TEST_CASE("a reset from a client that has already half-closed still ends the relay") {
    // The client sends its request and its end of stream, then aborts (RST) while upstream is
    // still thinking. The relay no longer reads the client, but the reset must still end it
    // (relay.hpp: "a reset or error on either side ends the relay"), so that upstream is
    // reset in turn instead of working on for a client that is gone. The rig polls each side
    // even with no events asked for, so poll's POLLERR/POLLHUP for the reset reaches pump().
    relay_rig rig(transport::tcp_loopback, 16 * 1024);
    rig.client().to_send = "request";
    rig.upstream().shut_when_sent = false;
    REQUIRE(rig.drive([&] { return rig.upstream().eof; }, 5000));
    REQUIRE_FALSE(rig.relay().finished());
    arm_reset(rig.client().fd.get());
    rig.client().fd.reset();

    CHECK(rig.drive([&] { return rig.relay().finished(); }, 1000));
    CHECK(rig.relay().failed());
    CHECK(rig.relay().error_on_client());
    CHECK((rig.relay().error() == std::errc::connection_reset ||
           rig.relay().error() == std::errc::broken_pipe));
}

TEST_SUITE_END();
