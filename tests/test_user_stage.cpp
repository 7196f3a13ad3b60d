// User-written relay stages through every policy, as a user writes and wires them (a stage class
// and options.stages): examples/hexdump_stage.hpp dumps the first bytes each way and passes every
// byte on, a test-local stage rewrites a string on the wire; and the examples/hexdump program.
#include <doctest/doctest.h>

#include "hexdump_stage.hpp"       // examples/: the shipped user-written stage
#include "support/cli_helpers.hpp" // the example program, run and read
#include "support/echo_server.hpp" // an upstream that records what it received
#include "support/loopback.hpp"    // running_proxy for each policy, blocking clients
#include "support/payload.hpp"     // random payloads

#include <algorithm>   // std::find_if, std::min
#include <chrono>      // deadlines
#include <cstddef>     // std::size_t
#include <cstdint>     // bytes
#include <cstdlib>     // std::strtoul: hex in dump lines
#include <fstream>     // the dump file, read back
#include <memory>      // std::make_unique: stages
#include <sstream>     // the dump file, whole
#include <string>      // lines, labels
#include <string_view> // the rewrite
#include <thread>      // a pause between two halves of a word
#include <vector>      // lines

#include <fcntl.h>  // open: the dump file, from any process
#include <stdlib.h> // mkstemp
#include <unistd.h> // write, close, unlink

using namespace tptest;

namespace {

/// A file the dump goes to, by path: a fork_policy child opens it itself (a child closes every
/// descriptor it inherited but its client and stdio), each line with one O_APPEND write, so
/// that sessions in threads and processes at once do not mix their lines.
class dump_file {
public:
    dump_file() {
        char name[] = "/tmp/tinyproxy_stage_XXXXXX";
        int fd = ::mkstemp(name);
        REQUIRE(fd >= 0);
        ::close(fd);
        path_ = name;
    }
    ~dump_file() { ::unlink(path_.c_str()); }
    dump_file(const dump_file&) = delete;
    dump_file& operator=(const dump_file&) = delete;

    /// A sink for hexdump_stage that appends to this file.
    hexdump_sink sink() const {
        return [path = path_](std::string_view line) {
            int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
            if (fd >= 0) {
                std::string whole = std::string(line) + "\n";
                (void)!::write(fd, whole.data(), whole.size());
                ::close(fd);
            }
        };
    }

    std::vector<std::string> lines() const {
        std::ifstream in(path_);
        std::vector<std::string> out;
        std::string line;
        while (std::getline(in, line)) {
            out.push_back(line);
        }
        return out;
    }

private:
    std::string path_;
};

/// The bytes the dump lines that begin with `label` show, put back together at the offsets
/// they name; false (and a message) when a line is not a dump line or leaves a gap or overlap.
bool undump(const std::vector<std::string>& lines, const std::string& label, bytes& shown,
            std::string& problem) {
    shown.clear();
    const std::string prefix = label + " ";
    for (const std::string& line : lines) {
        if (line.rfind(prefix, 0) != 0 || line.find(" end of stream after ") != std::string::npos) {
            continue;
        }
        // "<label> OOOOOOOO  hh hh ...  |text|"
        const std::size_t bar = line.find("  |", prefix.size());
        if (bar == std::string::npos || line.size() < prefix.size() + 8) {
            problem = "not a dump line: '" + line + "'";
            return false;
        }
        const std::size_t offset = std::strtoul(line.substr(prefix.size(), 8).c_str(), nullptr, 16);
        if (offset != shown.size()) {
            problem = "offset " + std::to_string(offset) + " after " +
                      std::to_string(shown.size()) + " bytes: '" + line + "'";
            return false;
        }
        std::istringstream hex(line.substr(prefix.size() + 8, bar - prefix.size() - 8));
        std::string pair;
        while (hex >> pair) {
            shown.push_back(static_cast<std::uint8_t>(std::strtoul(pair.c_str(), nullptr, 16)));
        }
    }
    return true;
}

/// How many lines say `text`.
std::size_t count_lines(const std::vector<std::string>& lines, const std::string& text) {
    std::size_t count = 0;
    for (const std::string& line : lines) {
        count += line == text ? 1 : 0;
    }
    return count;
}

/// Replaces every `from` with `to` in its direction, across chunk boundaries: it holds back a
/// tail that may be the start of `from` (fewer than from.size() bytes) until the next chunk or
/// the end of stream says what it is.
class rewrite_stage : public tinyproxy::relay_stage {
public:
    rewrite_stage(std::string from, std::string to) : from_(std::move(from)), to_(std::move(to)) {}

    void on_data(tinyproxy::stage_context& out, tinyproxy::byte_view bytes) override {
        pending_.append(bytes.as_chars());
        std::string result;
        std::size_t at = 0;
        for (std::size_t found; (found = pending_.find(from_, at)) != std::string::npos;) {
            result.append(pending_, at, found - at).append(to_);
            at = found + from_.size();
        }
        const std::size_t keep = partial_match(std::string_view(pending_).substr(at));
        result.append(pending_, at, pending_.size() - at - keep);
        pending_.erase(0, pending_.size() - keep);
        if (!result.empty()) {
            out.pass(std::string_view(result));
        }
    }
    void on_end(tinyproxy::stage_context& out) override {
        flush(out);
        out.end();
    }
    void on_remove(tinyproxy::stage_context& out) override { flush(out); }
    std::size_t held() const noexcept override { return pending_.size(); }

private:
    /// The longest tail of `text` that is a proper prefix of `from_`.
    std::size_t partial_match(std::string_view text) const {
        for (std::size_t n = std::min(text.size(), from_.size() - 1); n > 0; --n) {
            if (text.substr(text.size() - n) == std::string_view(from_).substr(0, n)) {
                return n;
            }
        }
        return 0;
    }
    void flush(tinyproxy::stage_context& out) {
        if (!pending_.empty()) {
            out.pass(std::string_view(pending_));
            pending_.clear();
        }
    }

    std::string from_;
    std::string to_;
    std::string pending_; // a tail that may begin `from_`
};

template <class Policy>
tinyproxy::options options_with(tinyproxy::stage_factory stages) {
    tinyproxy::options opts = running_proxy<Policy>::default_options();
    opts.stages = std::move(stages);
    return opts;
}

bytes text_bytes(std::string_view text) { return bytes(text.begin(), text.end()); }

} // namespace

TEST_SUITE_BEGIN("user stage");

TEST_CASE_TEMPLATE("user stage: a hex-dump stage each way passes every byte on, and dumps the "
                   "first bytes of each direction",
                   Policy, tinyproxy::thread_policy, tinyproxy::poll_policy,
                   tinyproxy::fork_policy) {
    echo_server echo;
    dump_file dump;
    const std::size_t first_bytes = 40; // two whole lines and a part one, at least
    auto factory = [sink = dump.sink(), first_bytes](const tinyproxy::tunnel_info& tunnel,
                                                     tinyproxy::tunnel_stages& stages) {
        const std::string serial = "#" + std::to_string(tunnel.serial);
        stages.to_upstream.push_back(
            std::make_unique<hexdump_stage>(serial + " client>upstream", first_bytes, sink));
        stages.to_client.push_back(
            std::make_unique<hexdump_stage>(serial + " upstream>client", first_bytes, sink));
    };
    running_proxy<Policy> proxy(forward_to(echo.endpoint()), options_with<Policy>(factory));

    bytes payload = text_bytes("GET / HTTP/1.0\r\nHost: example.com\r\n\r\n");
    const bytes rest = random_vector(256 * 1024, 31);
    payload.insert(payload.end(), rest.begin(), rest.end());
    auto client = connect_to(proxy.where());
    REQUIRE(client);
    std::thread writer([&] {
        send_all(client, payload);
        shutdown_write(client); // the half-close passes through the stage too
    });
    bool clean = false;
    const bytes echoed = read_to_end(client, &clean);
    writer.join();
    CHECK(clean);
    CHECK(echoed.size() == payload.size());
    CHECK(echoed == payload);
    CHECK(echo.received().size() == payload.size());

    // Each direction's end-of-stream line is written before its end of stream is passed on: it
    // is there once the client has read its EOF (under fork, a child wrote it).
    const std::vector<std::string> lines = dump.lines();
    const std::string total = std::to_string(payload.size());
    CHECK(count_lines(lines, "#1 client>upstream end of stream after " + total + " bytes") == 1);
    CHECK(count_lines(lines, "#1 upstream>client end of stream after " + total + " bytes") == 1);
    const bytes expected(payload.begin(), payload.begin() + first_bytes);
    for (const std::string label : {"#1 client>upstream", "#1 upstream>client"}) {
        CAPTURE(label);
        bytes shown;
        std::string problem;
        CHECK_MESSAGE(undump(lines, label, shown, problem), problem);
        CHECK(shown == expected); // exactly the first bytes, no more
    }
    // And the text column of the first line shows them as text.
    CHECK(std::find_if(lines.begin(), lines.end(), [](const std::string& line) {
              return line.rfind("#1 client>upstream 00000000  47 45 54 20", 0) == 0 &&
                     line.find("|GET / HTTP/1.0..") != std::string::npos;
          }) != lines.end());
}

TEST_CASE_TEMPLATE("user stage: a rewriting stage on to_client turns ping into pong on the wire, "
                   "across chunks, and leaves to_upstream alone",
                   Policy, tinyproxy::thread_policy, tinyproxy::poll_policy,
                   tinyproxy::fork_policy) {
    echo_server echo;
    auto factory = [](const tinyproxy::tunnel_info&, tinyproxy::tunnel_stages& stages) {
        stages.to_client.push_back(std::make_unique<rewrite_stage>("ping", "pong"));
        stages.label = "rewrite";
    };
    running_proxy<Policy> proxy(forward_to(echo.endpoint()), options_with<Policy>(factory));
    auto client = connect_to(proxy.where());
    REQUIRE(client);
    // The second "ping" comes in two halves, far enough apart to be read apart: the stage holds
    // "pi" until "ng" says it is a ping.
    REQUIRE(send_all(client, text_bytes("ping, ping again: pi")));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    REQUIRE(send_all(client, text_bytes("ngpingpin")));
    shutdown_write(client);
    bool clean = false;
    const bytes echoed = read_to_end(client, &clean);
    CHECK(clean);
    const std::string seen(echoed.begin(), echoed.end());
    CHECK(seen == "pong, pong again: pongpongpin"); // the tail "pin" passed on at the end
    CHECK(echo.received() == "ping, ping again: pingpingpin"); // upstream saw what was sent
}

TEST_SUITE_END();

TEST_CASE("examples hexdump relays 256 KiB unchanged and dumps the first bytes each way") {
    std::string path = example_program("hexdump");
    if (path.empty()) {
        return;
    }
    echo_server echo;
    process proxy(path, {"0", "127.0.0.1", std::to_string(echo.endpoint().port), "20"});
    tinyproxy::endpoint where = read_listening(proxy);
    bytes payload = text_bytes("hello, hexdump stage!");
    const bytes rest = random_vector(256 * 1024, 32);
    payload.insert(payload.end(), rest.begin(), rest.end());
    tinyproxy::socket client = require_connect(where);
    transfer t = exchange(client, payload, after(ms(10'000)));
    CHECK(t.error == "");
    CHECK(t.eof);
    CHECK(t.received == payload);
    expect_clean_exit(proxy, SIGTERM);
    CHECK(proxy.read_to_end(after(ms(2000))));

    std::vector<std::string> lines;
    std::istringstream err(proxy.stderr_text());
    for (std::string line; std::getline(err, line);) {
        lines.push_back(line);
    }
    CAPTURE(proxy.stderr_text());
    const bytes expected(payload.begin(), payload.begin() + 20);
    for (const std::string label : {"#1 client>upstream", "#1 upstream>client"}) {
        CAPTURE(label);
        bytes shown;
        std::string problem;
        CHECK_MESSAGE(undump(lines, label, shown, problem), problem);
        CHECK(shown == expected);
        CHECK(count_lines(lines, label + " end of stream after " + std::to_string(payload.size()) +
                                     " bytes") == 1);
    }

    for (const std::vector<std::string>& bad :
         std::vector<std::vector<std::string>>{{},
                                               {"0", "127.0.0.1"},
                                               {"x", "127.0.0.1", "80"},
                                               {"0", "127.0.0.1", "0"},
                                               {"0", "127.0.0.1", "80", "many"},
                                               {"0", "127.0.0.1", "80", "1", "extra"}}) {
        finished_run run = run_to_exit(path, bad);
        CHECK(run.exit_code == 2);
        CHECK(run.out == "");
        CHECK(run.err.rfind("usage: hexdump ", 0) == 0);
    }
}
