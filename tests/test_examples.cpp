// Black-box tests of the example programs: each forwarder relays data and stops on SIGTERM, the
// user-written pool policy serves more clients than it has workers, port_opener echoes and
// dumps, and every one of them rejects bad arguments with status 2 and its usage.
#include <doctest/doctest.h>

#include "support/cli_helpers.hpp"

#include <csignal>      // SIGTERM, SIGINT
#include <cstddef>      // std::size_t
#include <string>       // arguments, output
#include <system_error> // std::error_code
#include <thread>       // concurrent clients
#include <vector>       // arguments, results

namespace {

using namespace tptest;

/// `name LISTEN_PORT 127.0.0.1 ECHO_PORT [extra]`: prints its listening line, relays 256 KiB
/// there and back byte for byte, and exits 0 on SIGTERM.
void check_forwarder(const std::string& name, const std::vector<std::string>& extra = {}) {
    std::string path = example_program(name);
    if (path.empty()) {
        return;
    }
    echo_server echo;
    std::vector<std::string> args{"0", "127.0.0.1", std::to_string(echo.endpoint().port)};
    args.insert(args.end(), extra.begin(), extra.end());
    process proxy(path, args);
    tinyproxy::endpoint where = read_listening(proxy);
    CHECK(where.address == tinyproxy::ip_address::loopback_v4());

    bytes payload = random_vector(256 * 1024, 2);
    tinyproxy::socket client = require_connect(where);
    transfer t = exchange(client, payload, after(ms(10'000)));
    CHECK(t.error == "");
    CHECK(t.eof);
    CHECK(t.received.size() == payload.size());
    CHECK(t.received == payload);
    expect_clean_exit(proxy, SIGTERM);
}

/// Each argument list makes `name` exit 2 with its usage on stderr and nothing on stdout.
void check_usage(const std::string& name, const std::vector<std::vector<std::string>>& bad) {
    std::string path = example_program(name);
    if (path.empty()) {
        return;
    }
    for (const auto& args : bad) {
        std::string command_line = name;
        for (const std::string& arg : args) {
            command_line += " '" + arg + "'";
        }
        CAPTURE(command_line);
        finished_run run = run_to_exit(path, args);
        CHECK(run.exit_code == 2);
        CHECK(run.out == "");
        CHECK(run.err.rfind("usage: " + name + " ", 0) == 0);
    }
}

const std::vector<std::vector<std::string>> bad_forwarder_args = {
    {},
    {"0", "127.0.0.1"},
    {"x", "127.0.0.1", "80"},
    {"0", "127.0.0.1", "70000"},
    {"0", "127.0.0.1", "0"},
    {"-1", "127.0.0.1", "80"},
    {"0", "127.0.0.1", "80", "extra", "more"},
};

} // namespace

TEST_SUITE_BEGIN("examples");

TEST_CASE("examples forward_thread relays 256 KiB and exits 0 on SIGTERM") {
    check_forwarder("forward_thread");
    check_usage("forward_thread", bad_forwarder_args);
    check_usage("forward_thread", {{"0", "127.0.0.1", "80", "4"}});
}

TEST_CASE("examples forward_fork relays 256 KiB and exits 0 on SIGTERM") {
    check_forwarder("forward_fork");
    check_usage("forward_fork", bad_forwarder_args);
}

TEST_CASE("examples forward_poll relays 256 KiB and exits 0 on SIGTERM") {
    check_forwarder("forward_poll");
    check_usage("forward_poll", bad_forwarder_args);
}

TEST_CASE("examples custom_policy relays 256 KiB and exits 0 on SIGTERM") {
    check_forwarder("custom_policy");
    check_forwarder("custom_policy", {"1"});
    check_usage("custom_policy", bad_forwarder_args);
    check_usage("custom_policy", {{"0", "127.0.0.1", "80", "0"}, {"0", "127.0.0.1", "80", "x"}});
}

TEST_CASE("examples custom_policy with 2 workers serves 6 concurrent clients") {
    std::string path = example_program("custom_policy");
    if (path.empty()) {
        return;
    }
    echo_server echo;
    process proxy(path, {"0", "127.0.0.1", std::to_string(echo.endpoint().port), "2"});
    tinyproxy::endpoint where = read_listening(proxy);

    // All six connect and send at once; two are served while four wait their turn.
    constexpr std::size_t clients = 6;
    std::vector<bytes> payloads(clients);
    std::vector<transfer> results(clients);
    std::vector<std::string> connect_errors(clients);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < clients; ++i) {
        payloads[i] = random_vector(32 * 1024, static_cast<unsigned>(10 + i));
        threads.emplace_back([&, i] {
            std::error_code ec;
            tinyproxy::socket client = connect_to(where, ec);
            if (ec) {
                connect_errors[i] = ec.message();
                return;
            }
            results[i] = exchange(client, payloads[i], after(ms(10'000)));
        });
    }
    for (std::thread& t : threads) {
        t.join();
    }
    for (std::size_t i = 0; i < clients; ++i) {
        CAPTURE(i);
        CHECK(connect_errors[i] == "");
        CHECK(results[i].error == "");
        CHECK(results[i].eof);
        CHECK(results[i].received == payloads[i]);
    }
    CHECK(echo.accepted() == clients);
    // Each upstream connection lives within its worker's session: never more than two at once
    // (the event loop of forward_poll would have had all six open together).
    CHECK(echo.most_at_once() <= 2);
    expect_clean_exit(proxy, SIGTERM);
}

TEST_CASE("examples custom_policy on SIGTERM closes the clients still queued, unserved") {
    std::string path = example_program("custom_policy");
    if (path.empty()) {
        return;
    }
    echo_server echo;
    process proxy(path, {"0", "127.0.0.1", std::to_string(echo.endpoint().port), "1"});
    tinyproxy::endpoint where = read_listening(proxy);
    tinyproxy::socket served = require_connect(where); // holds the only worker
    REQUIRE(ping(served));
    std::vector<tinyproxy::socket> waiting;
    for (int i = 0; i < 3; ++i) {
        waiting.push_back(require_connect(where));
        std::error_code ec;
        waiting.back().send_all(tinyproxy::byte_view("queued"), after(ms(1000)), ec);
        CHECK(!ec);
    }
    std::this_thread::sleep_for(ms(100)); // let the accept loop queue them
    expect_clean_exit(proxy, SIGTERM);
    CHECK(wait_closed(served, after(ms(2000))));
    for (tinyproxy::socket& client : waiting) {
        CHECK(wait_closed(client, after(ms(2000))));
    }
    CHECK(echo.accepted() == 1); // the queued clients never reached the upstream
}

TEST_CASE("examples port_opener echoes, and prints the client's address and a hex dump") {
    std::string path = example_program("port_opener");
    if (path.empty()) {
        return;
    }
    process opener(path, {});
    tinyproxy::endpoint where = read_listening(opener);
    CHECK(where.address == tinyproxy::ip_address::loopback_v4());

    tinyproxy::socket client = require_connect(where);
    std::error_code ec;
    std::string who = client.local_endpoint(ec).to_string();
    std::string text = "hello, port_opener";
    bytes payload(text.begin(), text.end());
    payload.insert(payload.end(), {0x00, 0x01, 0x7f, 0xfe, 0xff});
    transfer t = exchange(client, payload, after(ms(5000)));
    CHECK(t.error == "");
    CHECK(t.eof); // it shut down its side after ours
    CHECK(t.received == payload);

    // Its report, line by line: the client connected, its bytes, its end.
    bool connected = false;
    bool first_row = false;
    bool second_row = false;
    bool closed = false;
    auto until = after(ms(3000));
    while (!closed) {
        auto line = opener.read_line(until);
        if (!line) {
            break;
        }
        if (line->rfind(who + " ", 0) != 0) {
            continue; // another client's line (there is none), or a line about no client
        }
        std::string rest = line->substr(who.size() + 1);
        connected = connected || rest == "connected";
        first_row = first_row || (rest.rfind("00000000  68 65 6c 6c 6f 2c 20 70", 0) == 0 &&
                                  rest.find("|hello, port_open|") != std::string::npos);
        second_row = second_row || (rest.rfind("00000010  65 72 00 01 7f fe ff ", 0) == 0 &&
                                    rest.find("|er.....|") != std::string::npos);
        closed = rest.rfind("closed", 0) == 0;
    }
    CHECK(connected);
    CHECK(first_row);
    CHECK(second_row);
    CHECK(closed);
    expect_clean_exit(opener, SIGTERM);
}

TEST_CASE("examples port_opener exits 0 on SIGINT, and 2 on bad arguments") {
    std::string path = example_program("port_opener");
    if (path.empty()) {
        return;
    }
    process opener(path, {"0"});
    tinyproxy::endpoint where = read_listening(opener);
    tinyproxy::socket client = require_connect(where); // one client still connected
    CHECK(ping(client));
    expect_clean_exit(opener, SIGINT);
    check_usage("port_opener", {{"x"}, {"70000"}, {"-1"}, {"1", "2"}});
}

TEST_CASE("examples fault_proxy: faults added, listed and removed from standard input reach a "
          "live connection, and no byte is lost") {
    std::string path = example_program("fault_proxy");
    if (path.empty()) {
        return;
    }
    echo_server echo;
    process proxy(path, {"0", "127.0.0.1", std::to_string(echo.endpoint().port), "7"}, true);
    tinyproxy::endpoint where = read_listening(proxy);
    auto answer = [&](const std::string& command) {
        REQUIRE(proxy.write_stdin(command + "\n"));
        auto line = proxy.read_line(after(ms(5000)));
        return line.value_or("(no answer)");
    };
    CHECK(answer("add timeout,timeout=0,stream=upstream") == "ok");
    CHECK(answer("add latency,latency=bad") ==
          "error: latency: expected a whole number from 0 to 1000000000, not 'bad'");
    CHECK(answer("remove nothing_here") == "error: no fault is called 'nothing_here'");
    CHECK(answer("frobnicate") == "error: expected add, update, remove or list, not 'frobnicate'");
    REQUIRE(proxy.write_stdin("list\n"));
    CHECK(proxy.read_line(after(ms(5000))) == "timeout,timeout=0,stream=upstream,toxicity=1");
    CHECK(proxy.read_line(after(ms(5000))) == "ok");

    // The timeout holds what the client sends: nothing comes back while it is there ...
    tinyproxy::socket client = require_connect(where);
    const bytes payload = random_vector(64 * 1024, 3);
    REQUIRE(send_all(client, payload));
    pollfd ready{client.native_handle(), POLLIN, 0};
    CHECK(::poll(&ready, 1, 300) == 0);
    // ... and once it is removed, every byte goes on, in order, on the same connection.
    CHECK(answer("remove timeout_upstream") == "ok");
    transfer t = exchange(client, {}, after(scaled(ms(10'000))));
    CHECK(t.error == "");
    CHECK(t.eof);
    CHECK(t.received == payload);

    proxy.close_stdin(); // the end of its input stops it
    CHECK(proxy.wait(after(scaled(ms(5000)))));
    CHECK(proxy.exit_code() == 0);
}

TEST_CASE("examples fault_proxy exits 2 on bad arguments") {
    check_usage("fault_proxy", {{},
                                {"0", "127.0.0.1"},
                                {"x", "127.0.0.1", "80"},
                                {"0", "127.0.0.1", "0"},
                                {"0", "127.0.0.1", "80", "seed"}});
}

TEST_SUITE_END();
