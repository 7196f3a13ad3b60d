// Black-box tests of the command-line proxy (examples/tinyproxy.cpp): its arguments and exit
// codes, the listening line, signals, IPv6, and data through every policy.
#include <doctest/doctest.h>

#include "support/cli_helpers.hpp"

#include <algorithm>    // std::count
#include <csignal>      // SIGTERM, SIGINT
#include <cstddef>      // std::size_t
#include <cstdio>       // sscanf: /proc/PID/maps
#include <cstdlib>      // strtoul
#include <cstring>      // memcpy: ELF headers
#include <fstream>      // the CLI's ELF image
#include <iterator>     // istreambuf_iterator
#include <string>       // arguments
#include <system_error> // std::error_code
#include <thread>       // concurrent clients
#include <utility>      // std::pair
#include <vector>       // arguments, results

#include <dirent.h> // a process's threads (/proc/PID/task) and descriptors (/proc/PID/fd)
#if defined(__ELF__)
#    include <elf.h> // Elf64_Ehdr, PT_DYNAMIC, DF_BIND_NOW
#endif
#include <unistd.h> // readlink

namespace {

using namespace tptest;

/// The CLI forwarding to `forward` on an ephemeral loopback port, plus `extra` flags.
std::vector<std::string> cli_args(const std::string& forward, std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"--listen", "127.0.0.1:0", "--forward", forward};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

/// SIGTERM and SIGINT each end the proxy with status 0 within 2 s, idle or while a tunnel is
/// open; the client then sees its connection closed.
/// Entries of /proc/PID/`what` for which `counts(path of the entry)` holds; -1 when unreadable.
template <class Predicate>
int count_proc_entries(pid_t pid, const char* what, Predicate counts) {
    std::string dir_path = "/proc/" + std::to_string(pid) + "/" + what;
    DIR* dir = ::opendir(dir_path.c_str());
    if (dir == nullptr) {
        return -1;
    }
    int count = 0;
    while (dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] != '.' && counts(dir_path + "/" + entry->d_name)) {
            ++count;
        }
    }
    ::closedir(dir);
    return count;
}

/// Threads of process `pid`.
int process_threads(pid_t pid) {
    return count_proc_entries(pid, "task", [](const std::string&) { return true; });
}

void check_signals_stop(const std::string& policy) {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    echo_server echo;
    for (int signal : {SIGTERM, SIGINT}) {
        for (bool tunnel_open : {false, true}) {
            CAPTURE(signal);
            CAPTURE(tunnel_open);
            process proxy(path, cli_args(echo.address(), {"--policy", policy}));
            tinyproxy::endpoint where = read_listening(proxy);
            tinyproxy::socket client;
            if (tunnel_open) {
                client = require_connect(where);
                REQUIRE(ping(client));
            }
            expect_clean_exit(proxy, signal, ms(2000));
            if (tunnel_open) {
                CHECK(wait_closed(client, after(ms(2000))));
            }
        }
    }
}

/// 1 MiB there and back through one client that half-closes after sending, then 20 clients at
/// once, every byte checked.
/// With `threads`, the proxy must run at least that many threads (its event loops) meanwhile.
void check_data(const std::string& policy, std::vector<std::string> more_args = {},
                int threads_at_least = 0) {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    echo_server echo;
    std::vector<std::string> extra = {"--policy", policy};
    extra.insert(extra.end(), more_args.begin(), more_args.end());
    process proxy(path, cli_args(echo.address(), extra));
    tinyproxy::endpoint where = read_listening(proxy);

    {
        bytes payload = random_vector(1024 * 1024, 1);
        tinyproxy::socket client = require_connect(where);
        transfer t = exchange(client, payload, after(ms(15'000)));
        CHECK(t.error == "");
        CHECK(t.eof);
        CHECK(t.received.size() == payload.size());
        CHECK(t.received == payload);
    }

    constexpr std::size_t clients = 20;
    std::vector<transfer> results(clients);
    std::vector<bytes> payloads(clients);
    std::vector<std::string> connect_errors(clients);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < clients; ++i) {
        payloads[i] = random_vector(64 * 1024 + i, static_cast<unsigned>(100 + i));
        threads.emplace_back([&, i] {
            std::error_code ec;
            tinyproxy::socket client = connect_to(where, ec);
            if (ec) {
                connect_errors[i] = ec.message();
                return;
            }
            results[i] = exchange(client, payloads[i], after(ms(15'000)));
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
    if (threads_at_least > 0) { // checked once it has served: the loops start after listening
        CHECK(process_threads(proxy.pid()) >= threads_at_least);
    }
    expect_clean_exit(proxy, SIGTERM);
}

/// How many pipes process `pid` holds open, from /proc/PID/fd; -1 where that cannot be read.
int pipes_held(pid_t pid) {
    return count_proc_entries(pid, "fd", [](const std::string& link) {
        char target[64] = {};
        ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
        return n > 0 && std::string(target, static_cast<std::size_t>(n)).rfind("pipe:", 0) == 0;
    });
}

/// The --verbose line of the one session in `log` (the line with " bytes up, "), or "".
std::string session_line(const std::string& log) {
    std::string found;
    std::size_t lines = 0;
    for (std::size_t at = 0; at < log.size();) {
        std::size_t end = log.find('\n', at);
        end = end == std::string::npos ? log.size() : end;
        std::string line = log.substr(at, end - at);
        if (line.find(" bytes up, ") != std::string::npos &&
            line.find(" accepted, ") == std::string::npos) {
            found = line;
            ++lines;
        }
        at = end + 1;
    }
    return lines == 1 ? found : std::string();
}

bool ends_with(const std::string& text, const std::string& tail) {
    return text.size() >= tail.size() &&
           text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
}

/// Stops the proxy and returns its stderr, every session line in it.
std::string stop_and_log(process& proxy) {
    expect_clean_exit(proxy, SIGTERM);
    CHECK(proxy.read_to_end(after(ms(2000))));
    return proxy.stderr_text();
}

/// --toxic through the CLI on `policy`, each case with a proxy of its own: a latency fault
/// delays the round trip by at least its latency, keeps every byte and the client's half-close,
/// and --verbose names it; one that does not apply (toxicity=0) is named "none"; limit_data
/// gives the client exactly its bytes, then EOF; reset_peer resets the client after its first
/// write.
void check_faults(const std::string& policy) {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    echo_server echo;
    const std::vector<std::string> on = {"--policy", policy, "--verbose"};
    auto with = [&](std::vector<std::string> more) {
        more.insert(more.begin(), on.begin(), on.end());
        return more;
    };

    SUBCASE("no --toxic: the session line names no faults") {
        process proxy(path, cli_args(echo.address(), with({})));
        tinyproxy::socket client = require_connect(read_listening(proxy));
        transfer t = exchange(client, random_vector(1000, 40), after(scaled(ms(10'000))));
        CHECK(t.eof);
        client.close();
        std::string line = session_line(stop_and_log(proxy));
        CAPTURE(line);
        CHECK(line != "");
        CHECK(line.find("faults=") == std::string::npos);
    }

    SUBCASE("latency=100: the round trip takes 100 ms or more, every byte and the half-close "
            "kept, and the session line says faults=latency_downstream") {
        process proxy(path, cli_args(echo.address(), with({"--toxic", "latency,latency=100"})));
        tinyproxy::socket client = require_connect(read_listening(proxy));
        bytes payload = random_vector(256 * 1024, 41);
        const time_point start = steady_clock::now();
        // The client half-closes once it has sent everything; the whole reply comes after.
        transfer t = exchange(client, payload, start + scaled(ms(10'000)));
        const ms took = elapsed_since(start);
        CAPTURE(took.count());
        CHECK(t.error == "");
        CHECK(t.eof);
        CHECK(t.received.size() == payload.size());
        CHECK(t.received == payload);
        CHECK(took >= ms(100));
        CHECK(took < scaled(ms(10'000)));
        client.close();
        std::string line = session_line(stop_and_log(proxy));
        CAPTURE(line);
        CHECK(ends_with(line, " faults=latency_downstream"));
    }

    SUBCASE("--socks with latency=100: the handshake, then the delayed tunnel, bytes intact") {
        process proxy(
            path, with({"--listen", "127.0.0.1:0", "--socks", "--toxic", "latency,latency=100"}));
        tinyproxy::socket client = require_connect(read_listening(proxy));
        const tinyproxy::endpoint target = echo.endpoint();
        const auto address = target.address.bytes();
        // SOCKS5: no authentication, CONNECT to the echo server's IPv4 address and port.
        bytes request = {5, 1, 0, 5, 1, 0, 1};
        request.insert(request.end(), address.begin(), address.end()); // 4 bytes: IPv4
        request.push_back(static_cast<std::uint8_t>(target.port >> 8));
        request.push_back(static_cast<std::uint8_t>(target.port & 0xff));
        REQUIRE(send_all(client, request));
        std::uint8_t replies[12] = {};
        REQUIRE(::recv(client.native_handle(), replies, sizeof replies, MSG_WAITALL) == 12);
        CHECK(replies[0] == 5);
        CHECK(replies[1] == 0); // no authentication
        CHECK(replies[3] == 0); // succeeded
        bytes payload = random_vector(64 * 1024, 44);
        const time_point start = steady_clock::now();
        transfer t = exchange(client, payload, start + scaled(ms(10'000)));
        const ms took = elapsed_since(start);
        CAPTURE(took.count());
        CHECK(t.error == "");
        CHECK(t.eof);
        CHECK(t.received == payload);
        CHECK(took >= ms(100));
        client.close();
        std::string line = session_line(stop_and_log(proxy));
        CAPTURE(line);
        CHECK(ends_with(line, " faults=latency_downstream"));
    }

    SUBCASE("latency with toxicity=0 does not apply: faults=none, bytes intact") {
        process proxy(
            path, cli_args(echo.address(), with({"--toxic", "latency,latency=100,toxicity=0"})));
        tinyproxy::socket client = require_connect(read_listening(proxy));
        bytes payload = random_vector(64 * 1024, 42);
        transfer t = exchange(client, payload, after(scaled(ms(10'000))));
        CHECK(t.error == "");
        CHECK(t.eof);
        CHECK(t.received == payload);
        client.close();
        std::string line = session_line(stop_and_log(proxy));
        CAPTURE(line);
        CHECK(ends_with(line, " faults=none"));
    }

    SUBCASE("limit_data,bytes=1000: the client gets exactly the first 1000 bytes of a larger "
            "reply, then its end of stream") {
        const bytes reply = random_vector(10'000, 43);
        upstream replier([&](tinyproxy::socket& s) {
            read_to_end(s); // the client's request, to its half-close
            send_all(s, reply);
            shutdown_write(s);
        });
        process proxy(path, cli_args(replier.where().to_string(),
                                     with({"--toxic", "limit_data,bytes=1000"})));
        tinyproxy::socket client = require_connect(read_listening(proxy));
        transfer t = exchange(client, bytes{'h', 'i'}, after(scaled(ms(10'000))));
        CHECK(t.error == "");
        CHECK(t.eof);
        CHECK_FALSE(t.reset);
        REQUIRE(t.received.size() == 1000);
        CHECK(t.received == bytes(reply.begin(), reply.begin() + 1000));
        client.close();
        std::string line = session_line(stop_and_log(proxy));
        CAPTURE(line);
        CHECK(ends_with(line, " faults=limit_data_downstream"));
    }

    SUBCASE("reset_peer,timeout=0: the client's first write gets it a reset") {
        process proxy(path, cli_args(echo.address(), with({"--toxic", "reset_peer,timeout=0"})));
        tinyproxy::socket client = require_connect(read_listening(proxy));
        transfer t =
            exchange(client, bytes{'h', 'e', 'l', 'l', 'o'}, after(scaled(ms(10'000))), false);
        CAPTURE(t.error);
        CHECK(t.reset); // recv() said ECONNRESET
        CHECK_FALSE(t.eof);
        client.close();
        std::string line = session_line(stop_and_log(proxy));
        CAPTURE(line);
        CHECK(ends_with(line, " faults=reset_peer_downstream"));
    }
}

/// Which of `connections` clients, one after the other, a `limit_data,bytes=2,toxicity=0.5`
/// fault applied to under `--seed seed`: each sends "ping" and half-closes; the fault lets 2
/// bytes of the echo through, the plain path all 4.
std::vector<bool> limited_connections(const std::string& path, const std::string& policy,
                                      const std::string& seed, std::size_t connections) {
    echo_server echo;
    process proxy(path, cli_args(echo.address(), {"--policy", policy, "--quiet", "--seed", seed,
                                                  "--toxic", "limit_data,bytes=2,toxicity=0.5"}));
    const tinyproxy::endpoint where = read_listening(proxy);
    std::vector<bool> limited;
    for (std::size_t i = 0; i < connections; ++i) {
        tinyproxy::socket client = require_connect(where);
        transfer t = exchange(client, bytes{'p', 'i', 'n', 'g'}, after(scaled(ms(10'000))));
        CHECK(t.eof);
        CHECK((t.received.size() == 2 || t.received.size() == 4));
        limited.push_back(t.received.size() == 2);
    }
    expect_clean_exit(proxy, SIGTERM);
    return limited;
}

/// --seed: two runs with the same seed make the same toxicity decision for each connection
/// (the n-th client of one run as the n-th of the other), and toxicity 0.5 applies to some
/// and not to others.
void check_seed(const std::string& policy) {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    constexpr std::size_t connections = 24;
    const std::vector<bool> first = limited_connections(path, policy, "7", connections);
    const std::vector<bool> again = limited_connections(path, policy, "7", connections);
    CHECK(first == again);
    const auto applied = static_cast<std::size_t>(std::count(first.begin(), first.end(), true));
    CAPTURE(applied);
    CHECK(applied > 0);           // 2^-24 that a fair coin never says so
    CHECK(applied < connections); // nor always
}

/// Command-line arguments that must be refused, and what the refusal must name.
struct bad_case {
    std::vector<std::string> args;
    std::vector<std::string> named; // what the first line of stderr must mention
};

/// Each case exits 2, prints nothing on stdout, and on stderr one line "tinyproxy: ..." naming
/// the problem, then the usage at once.
void check_bad_arguments(const std::vector<bad_case>& cases) {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    for (const bad_case& c : cases) {
        std::string command_line;
        for (const std::string& arg : c.args) {
            command_line += " '" + arg + "'";
        }
        CAPTURE(command_line);
        finished_run run = run_to_exit(path, c.args);
        CHECK(run.exit_code == 2);
        CHECK(run.out == "");
        auto newline = run.err.find('\n');
        REQUIRE(newline != std::string::npos);
        std::string first_line = run.err.substr(0, newline);
        CAPTURE(first_line);
        CHECK(first_line.rfind("tinyproxy: ", 0) == 0);
        for (const std::string& word : c.named) {
            CHECK(first_line.find(word) != std::string::npos);
        }
        // The usage follows at once: the problem takes exactly one line.
        CHECK(run.err.compare(newline + 1, 16, "usage: tinyproxy") == 0);
    }
}

} // namespace

TEST_SUITE_BEGIN("cli");

TEST_CASE("cli --help prints the usage with the default listen address and exits 0") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    finished_run run = run_to_exit(path, {"--help"});
    CHECK(run.exit_code == 0);
    CHECK(run.out.rfind("usage: tinyproxy", 0) == 0);
    CHECK(run.out.find("127.0.0.1:1080") != std::string::npos);
    CHECK(run.out.find("--forward") != std::string::npos);
    CHECK(run.out.find("--no-splice") != std::string::npos);
    CHECK(run.out.find("--toxic SPEC") != std::string::npos);
    CHECK(run.out.find("--seed N") != std::string::npos);
    CHECK(run.err == "");
}

TEST_CASE("cli bad arguments exit 2 with one line naming the problem, then the usage") {
    const std::vector<bad_case> cases = {
        {{"--bogus", "--forward", "127.0.0.1:9"}, {"--bogus"}},
        {{"--forward"}, {"--forward", "missing value"}},
        {{"--forward", "127.0.0.1:70000"}, {"--forward", "127.0.0.1:70000"}},
        {{"--listen", "not an address", "--forward", "127.0.0.1:9"},
         {"--listen", "not an address"}},
        {{"--policy", "threads", "--forward", "127.0.0.1:9"}, {"--policy", "threads"}},
        {{"--socks", "--http-connect"}, {"--http-connect", "only one"}},
        {{"--forward", "127.0.0.1:9", "--socks"}, {"--socks", "only one"}},
        {{"--user", "nocolon"}, {"--user", "nocolon"}},
        {{"--forward", "127.0.0.1:9", "--user", "a:b"}, {"--user"}},
        {{"--send-proxy", "v3"}, {"--send-proxy", "v3"}},
        {{"--max-connections", "0"}, {"--max-connections", "0"}},
        {{"--max-connections", "-5"}, {"--max-connections", "-5"}},
        {{"--allow", "10.0.0.1/8"}, {"--allow", "10.0.0.1/8"}},
        {{"--allow", "300.0.0.0/8"}, {"--allow", "300.0.0.0/8"}},
        {{"--verbose", "--quiet"}, {"--verbose", "--quiet"}},
        {{"--handshake-timeout", "0"}, {"--handshake-timeout", "0"}},
        {{"stray"}, {"stray"}},
        {{"--connect-timeout", "-1", "--forward", "127.0.0.1:9"}, {"--connect-timeout", "-1"}},
        {{"--idle-timeout", "abc", "--forward", "127.0.0.1:9"}, {"--idle-timeout", "abc"}},
    };
    check_bad_arguments(cases);
}

TEST_CASE("cli a bad --toxic or --seed exits 2 with one line naming the problem, then the usage") {
    const std::string fwd = "--forward";
    const std::string to = "127.0.0.1:9";
    const std::vector<bad_case> cases = {
        {{fwd, to, "--toxic", "jitter"}, {"tinyproxy: --toxic: ", "unknown toxic type", "jitter"}},
        {{fwd, to, "--toxic", ""}, {"tinyproxy: --toxic: ", "unknown toxic type"}},
        {{fwd, to, "--toxic", "latency,delay=5"}, {"--toxic: ", "unknown key", "delay"}},
        {{fwd, to, "--toxic", "latency,latency=-5"}, {"--toxic: ", "latency", "'-5'"}},
        {{fwd, to, "--toxic", "latency,latency=abc"}, {"--toxic: ", "latency", "'abc'"}},
        {{fwd, to, "--toxic", "latency,latency=1.5"}, {"--toxic: ", "latency", "'1.5'"}},
        {{fwd, to, "--toxic", "latency,toxicity=1.5"}, {"--toxic: ", "toxicity", "'1.5'"}},
        {{fwd, to, "--toxic", "latency,toxicity=-0.1"}, {"--toxic: ", "toxicity", "'-0.1'"}},
        {{fwd, to, "--toxic", "slicer,average_size=0"}, {"--toxic: ", "average_size"}},
        {{fwd, to, "--toxic", "slicer"}, {"--toxic: ", "average_size"}},
        {{fwd, to, "--toxic", "bandwidth,rate=0"}, {"--toxic: ", "rate"}},
        {{fwd, to, "--toxic", "latency,latency=1,latency=2"}, {"--toxic: ", "latency", "twice"}},
        {{fwd, to, "--toxic", "latency,stream=sideways"}, {"--toxic: ", "stream", "sideways"}},
        {{fwd, to, "--toxic", "latency,latency"}, {"--toxic: ", "KEY=VALUE", "latency"}},
        // A good toxic before a bad one: the bad one is named.
        {{fwd, to, "--toxic", "latency,latency=10", "--toxic", "timeout,timeout=x"},
         {"--toxic: ", "timeout", "'x'"}},
        // Two faults by the same name (TYPE_STREAM unless name= says otherwise).
        {{fwd, to, "--toxic", "latency", "--toxic", "latency,latency=5"},
         {"--toxic: ", "latency_downstream"}},
        {{fwd, to, "--toxic"}, {"--toxic", "missing value"}},
        {{fwd, to, "--seed", "-1"}, {"tinyproxy: --seed: ", "'-1'"}},
        {{fwd, to, "--seed", "abc"}, {"--seed: ", "'abc'"}},
        {{fwd, to, "--seed", ""}, {"--seed: ", "''"}},
        {{fwd, to, "--seed", " 7"}, {"--seed: ", "' 7'"}},
        {{fwd, to, "--seed", "1.5"}, {"--seed: ", "'1.5'"}},
        {{fwd, to, "--seed", "18446744073709551616"}, {"--seed: ", "'18446744073709551616'"}},
        {{fwd, to, "--seed"}, {"--seed", "missing value"}},
    };
    check_bad_arguments(cases);
}

TEST_CASE("cli the issue's --toxic and --seed command lines are taken: each listens, then exits "
          "0 on SIGTERM") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    // As the issue writes them; the last two get --listen 127.0.0.1:0 in front, so that they
    // do not need port 1080 free (the default, which other tests may hold).
    const std::vector<std::vector<std::string>> command_lines = {
        {"--listen", "127.0.0.1:0", "--forward", "127.0.0.1:5432", "--toxic",
         "latency,latency=100,jitter=10"},
        {"--listen", "127.0.0.1:0", "--socks", "--toxic", "bandwidth,rate=500,stream=upstream",
         "--toxic", "slicer,average_size=64,delay=1000"},
        {"--listen", "127.0.0.1:0", "--forward", "db:5432", "--toxic",
         "reset_peer,timeout=2000,toxicity=0.25", "--seed", "7"},
        {"--listen", "127.0.0.1:0", "--forward", "127.0.0.1:5432", "--seed", "0"},
        {"--listen", "127.0.0.1:0", "--forward", "127.0.0.1:5432", "--seed", "18446744073709551615",
         "--toxic", "limit_data,bytes=10,name=first", "--toxic", "limit_data,bytes=20,name=second"},
    };
    for (const auto& args : command_lines) {
        std::string command_line;
        for (const std::string& arg : args) {
            command_line += " '" + arg + "'";
        }
        CAPTURE(command_line);
        process proxy(path, args);
        read_listening(proxy);
        expect_clean_exit(proxy, SIGTERM);
    }
}

TEST_CASE("cli --toxic through the thread policy: latency, toxicity=0, limit_data, reset_peer, "
          "and the faults on the --verbose line") {
    check_faults("thread");
}

TEST_CASE("cli --toxic through the fork policy: latency, toxicity=0, limit_data, reset_peer, "
          "and the faults on the --verbose line") {
    check_faults("fork");
}

TEST_CASE("cli --toxic through the poll policy: latency, toxicity=0, limit_data, reset_peer, "
          "and the faults on the --verbose line") {
    check_faults("poll");
}

TEST_CASE("cli --seed through the thread policy: the same seed, the same decisions") {
    check_seed("thread");
}

TEST_CASE("cli --seed through the fork policy: the same seed, the same decisions") {
    check_seed("fork");
}

TEST_CASE("cli --seed through the poll policy: the same seed, the same decisions") {
    check_seed("poll");
}

TEST_CASE("cli prints exactly one listening line, flushed, with the real port") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    echo_server echo;
    process proxy(path, cli_args(echo.address()));
    tinyproxy::endpoint where = read_listening(proxy); // read while the proxy still runs
    CHECK(where.address == tinyproxy::ip_address::loopback_v4());
    tinyproxy::socket client = require_connect(where); // the port printed is the one bound
    CHECK(ping(client));
    expect_clean_exit(proxy, SIGTERM);
    CHECK(proxy.read_to_end(after(ms(2000))));
    CHECK(proxy.stdout_text() == ""); // nothing after the one line
}

TEST_CASE("cli SIGTERM and SIGINT stop the thread policy within 2 s, a tunnel open") {
    check_signals_stop("thread");
}

TEST_CASE("cli SIGTERM and SIGINT stop the fork policy within 2 s, a tunnel open") {
    check_signals_stop("fork");
}

TEST_CASE("cli SIGTERM and SIGINT stop the poll policy within 2 s, a tunnel open") {
    check_signals_stop("poll");
}

TEST_CASE("cli data through the thread policy: 1 MiB round trip, 20 concurrent clients") {
    check_data("thread");
}

TEST_CASE("cli data through the fork policy: 1 MiB round trip, 20 concurrent clients") {
    check_data("fork");
}

TEST_CASE("cli data through the poll policy: 1 MiB round trip, 20 concurrent clients") {
    check_data("poll");
}

TEST_CASE("cli --loops 3: three event loops on three threads carry every byte, and SIGTERM "
          "stops them all") {
    check_data("poll", {"--loops", "3"}, 3);
}

TEST_CASE("cli --loops with another policy than poll, or not a count, exits 2") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    for (auto args : std::vector<std::vector<std::string>>{
             {"--policy", "thread", "--loops", "2"}, {"--loops", "0"}, {"--loops", "many"}}) {
        finished_run run = run_to_exit(path, args);
        CHECK(run.exit_code == 2);
        CHECK(run.err.find("--loops") != std::string::npos);
    }
}

TEST_CASE("cli --listen [::1]:0 prints the IPv6 address and serves data over IPv6") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    if (!ipv6_loopback_available()) {
        skip_test("this machine cannot bind ::1");
        return;
    }
    echo_server echo({tinyproxy::ip_address::loopback_v6(), 0});
    process proxy(path, {"--listen", "[::1]:0", "--forward", echo.address()});
    tinyproxy::endpoint where = read_listening(proxy);
    CHECK(where.address == tinyproxy::ip_address::loopback_v6());
    bytes payload = random_vector(100 * 1000, 6);
    tinyproxy::socket client = require_connect(where);
    transfer t = exchange(client, payload, after(ms(10'000)));
    CHECK(t.error == "");
    CHECK(t.received == payload);
    CHECK(echo.accepted() == 1);
    expect_clean_exit(proxy, SIGTERM);
}

TEST_CASE("cli a listen address already in use exits 1 with a message on stderr") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    tinyproxy::listener taken = tinyproxy::listener::open(loopback(), 1);
    std::string address = taken.local_endpoint().to_string();
    finished_run run = run_to_exit(path, {"--listen", address, "--forward", "127.0.0.1:9"});
    CHECK(run.exit_code == 1);
    CHECK(run.out == "");
    CAPTURE(run.err);
    CHECK(run.err.find("cannot listen on " + address) != std::string::npos);
}

TEST_CASE("cli a refused upstream closes the client in 2 s, and the next client is served") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    std::uint16_t port = closed_port();
    process proxy(path, cli_args(loopback(port).to_string()));
    tinyproxy::endpoint where = read_listening(proxy);
    for (int attempt = 0; attempt < 2; ++attempt) {
        CAPTURE(attempt);
        tinyproxy::socket client = require_connect(where);
        auto start = steady_clock::now();
        CHECK(wait_closed(client, start + ms(2000)));
        CHECK(elapsed_since(start) < scaled(ms(2000)));
    }
    // Once the upstream is there, the same proxy serves the next client.
    echo_server echo(loopback(port));
    tinyproxy::socket client = require_connect(where);
    bytes payload = random_vector(10'000, 7);
    transfer t = exchange(client, payload, after(ms(5000)));
    CHECK(t.error == "");
    CHECK(t.received == payload);
    expect_clean_exit(proxy, SIGTERM);
}

TEST_CASE("cli --connect-timeout and --idle-timeout are taken, and an idle tunnel is closed") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    echo_server echo;
    process proxy(path,
                  cli_args(echo.address(), {"--connect-timeout", "2", "--idle-timeout", "0.5"}));
    tinyproxy::endpoint where = read_listening(proxy);
    tinyproxy::socket client = require_connect(where);
    REQUIRE(ping(client));
    auto idle_since = steady_clock::now();
    CHECK(wait_closed(client, idle_since + ms(3000)));
    ms idle_for = elapsed_since(idle_since);
    CAPTURE(idle_for.count());
    CHECK(idle_for < scaled(ms(3000)));
    CHECK(idle_for >= ms(250)); // closed for being idle, not at once
    // The proxy itself goes on.
    tinyproxy::socket next = require_connect(where);
    CHECK(ping(next));
    expect_clean_exit(proxy, SIGTERM);
}

TEST_CASE("cli --no-splice is taken: bulk data goes through, and no pipe is made for it") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    echo_server echo;
    for (bool splice : {true, false}) {
        CAPTURE(splice);
        std::vector<std::string> extra{"--policy", "poll", "--quiet"};
        if (!splice) {
            extra.push_back("--no-splice");
        }
        process proxy(path, cli_args(echo.address(), extra));
        tinyproxy::endpoint where = read_listening(proxy);
        const int pipes_before = pipes_held(proxy.pid());
        tinyproxy::socket client = require_connect(where);
        bytes payload = random_vector(4 * 1024 * 1024, 7);
        transfer t = exchange(client, payload, after(ms(15'000)), false); // the tunnel stays up
        CHECK(t.error == "");
        CHECK(t.received == payload);
        // Bulk data went both ways: with splice(2), a direction that carried it holds a pipe
        // (two descriptors) until it ends; with --no-splice, none does.
        if (pipes_before >= 0) {
            int made = pipes_held(proxy.pid()) - pipes_before;
            CAPTURE(made);
            if (splice && TINYPROXY_HAS_SPLICE) {
                CHECK(made >= 2);
                CHECK(made <= 4);
            } else {
                CHECK(made == 0);
            }
        }
        transfer rest = exchange(client, {}, after(ms(5000)), true);
        CHECK(rest.eof);
        expect_clean_exit(proxy, SIGTERM);
    }
}

/// For each thread of process `pid` but the first that is blocked in a system call: how far
/// its stack pointer is above the low end of its stack (the start of the mapping holding the
/// stack pointer: a guard page below keeps that mapping from merging with another).
std::vector<std::size_t> stack_room(pid_t pid) {
    std::vector<std::pair<unsigned long, unsigned long>> mappings;
    std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
    std::string line;
    while (std::getline(maps, line)) {
        unsigned long lo = 0;
        unsigned long hi = 0;
        if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) == 2) {
            mappings.emplace_back(lo, hi);
        }
    }
    std::vector<std::size_t> room;
    std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
    count_proc_entries(pid, "task", [&](const std::string& task) {
        if (task == task_dir + "/" + std::to_string(pid)) {
            return false;
        }
        std::ifstream syscall(task + "/syscall"); // "NR args... SP PC" while blocked in NR
        std::vector<std::string> fields;
        std::string field;
        while (syscall >> field) {
            fields.push_back(field);
        }
        if (fields.size() < 3) {
            return false; // "running", or not ours to read
        }
        unsigned long sp = std::strtoul(fields[fields.size() - 2].c_str(), nullptr, 16);
        for (const auto& [lo, hi] : mappings) {
            if (sp >= lo && sp < hi) {
                room.push_back(static_cast<std::size_t>(sp - lo));
            }
        }
        return true;
    });
    return room;
}

TEST_CASE("cli --policy thread: session threads have 256 KiB stacks, not the 8 MiB default") {
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    echo_server echo;
    process proxy(path, cli_args(echo.address(), {"--policy", "thread", "--quiet"}));
    tinyproxy::endpoint where = read_listening(proxy);
    tinyproxy::socket client = require_connect(where);
    REQUIRE(ping(client)); // its thread waits in poll(2) now
    auto room = stack_room(proxy.pid());
    if (room.empty()) {
        skip_test("no thread's stack pointer could be read from /proc");
    } else if (TINYPROXY_SANITIZER_MIN_STACK != 0) {
        skip_test("ThreadSanitizer sizes and places thread stacks its own way");
    } else {
        for (std::size_t bytes_below : room) {
            CHECK(bytes_below < 320 * 1024); // 8 MiB with the default
            CHECK(bytes_below > 128 * 1024);
        }
    }
    expect_clean_exit(proxy, SIGTERM);
}

TEST_SUITE_END();

#if defined(__ELF__) && defined(__LP64__)
TEST_CASE("the CLI binds every symbol at start, so fork children copy no GOT page") {
    // With lazy binding, the first call of a function only children make (recv, splice, ...)
    // writes its GOT entry in each child, which then owns a copy of that page.
    std::string path = cli_program();
    if (path.empty()) {
        return;
    }
    std::ifstream in(path, std::ios::binary);
    std::vector<char> image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(image.size() >= sizeof(Elf64_Ehdr));
    Elf64_Ehdr header;
    std::memcpy(&header, image.data(), sizeof header);
    bool bind_now = false;
    for (std::size_t i = 0; i < header.e_phnum; ++i) {
        Elf64_Phdr program;
        std::size_t at = header.e_phoff + i * header.e_phentsize;
        REQUIRE(at + sizeof program <= image.size());
        std::memcpy(&program, image.data() + at, sizeof program);
        if (program.p_type != PT_DYNAMIC) {
            continue;
        }
        for (std::size_t d = 0; d + sizeof(Elf64_Dyn) <= program.p_filesz; d += sizeof(Elf64_Dyn)) {
            Elf64_Dyn entry;
            REQUIRE(program.p_offset + d + sizeof entry <= image.size());
            std::memcpy(&entry, image.data() + program.p_offset + d, sizeof entry);
            bind_now = bind_now || entry.d_tag == DT_BIND_NOW ||
                       (entry.d_tag == DT_FLAGS && (entry.d_un.d_val & DF_BIND_NOW) != 0) ||
                       (entry.d_tag == DT_FLAGS_1 && (entry.d_un.d_val & DF_1_NOW) != 0);
        }
    }
    CHECK(bind_now);
}
#endif
