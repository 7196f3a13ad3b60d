// libFuzzer target for fault/toxic.hpp and the fault stages. The input is a toxic spec, then
// (after the first newline, if any) bytes that drive the stage it makes. Checked: a spec is
// either refused with std::invalid_argument or read into a toxic check_toxic() accepts, which
// to_spec() writes back into the same toxic; the stage it makes, fed the rest of the input in
// chunks at fake times and woken whenever it asks (a bounded number of times), passes on no
// more than it was given, in order, never anything after the end of stream, and once taken out
// of its chain has passed on everything it did not drop by reset or close.
#include <chrono>    // fake times
#include <cstddef>   // std::size_t
#include <cstdint>   // std::uint8_t
#include <stdexcept> // std::invalid_argument
#include <string>    // the spec, what was delivered

#include <tinyproxy/tinyproxy.hpp>

#include "support/split_feed.hpp"

namespace {

const tptest::trap_on_failure check;

/// Records what the chain delivers.
struct recording_sink final : tinyproxy::stage_sink {
    std::string delivered;
    bool ended = false;
    bool cut = false; // reset or closed: what the stages held is dropped
    void deliver(tinyproxy::byte_view bytes) noexcept override {
        check(!ended, "bytes after the end of stream");
        delivered.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }
    void deliver_end() noexcept override { ended = true; }
    void reset(std::error_code) noexcept override { cut = true; }
    void close() noexcept override { cut = true; }
};

bool same(const tinyproxy::toxic& a, const tinyproxy::toxic& b) {
    return a.name == b.name && a.type == b.type && a.stream == b.stream &&
           a.toxicity == b.toxicity && a.latency == b.latency && a.jitter == b.jitter &&
           a.rate == b.rate && a.average_size == b.average_size &&
           a.size_variation == b.size_variation && a.delay == b.delay && a.timeout == b.timeout &&
           a.bytes == b.bytes;
}

/// The stage for `fault`, driven with `traffic` cut into chunks by its own bytes.
void drive(const tinyproxy::toxic& fault, const std::string& traffic) {
    tinyproxy::stage_chain chain;
    chain.push_back(tinyproxy::make_fault_stage(fault, tinyproxy::fault_random(traffic.size())));
    recording_sink sink;
    tinyproxy::time_point now = tinyproxy::time_point{} + std::chrono::hours(24);
    std::string fed;
    for (std::size_t at = 0; at < traffic.size();) {
        const std::size_t size = 1 + static_cast<std::uint8_t>(traffic[at]) % 64;
        const std::string chunk = traffic.substr(at, size);
        at += size;
        chain.feed(std::string_view(chunk), now, sink);
        fed += chunk;
        now += std::chrono::microseconds(static_cast<std::uint8_t>(chunk[0]) * 97);
        for (int wakes = 0; wakes < 4 && chain.next_wake() <= now; ++wakes) {
            chain.wake(now, sink);
        }
    }
    chain.feed_end(now, sink);
    for (int wakes = 0; wakes < 64 && chain.next_wake() != tinyproxy::time_point::max(); ++wakes) {
        now = chain.next_wake() > now ? chain.next_wake() : now;
        if (now > tinyproxy::time_point{} + std::chrono::hours(24 * 365 * 50)) {
            break; // a fault of years: removing it below releases what it holds
        }
        chain.wake(now, sink);
    }
    check(chain.held() <= fed.size(), "holds more than it was given");
    chain.erase(0, now, sink);
    check(fed.compare(0, sink.delivered.size(), sink.delivered) == 0, "not what was fed, in order");
    if (!sink.cut) {
        check(sink.delivered == fed, "a byte lost though nothing was cut");
        check(sink.ended, "the end of stream lost");
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string input(reinterpret_cast<const char*>(data), size);
    const std::size_t newline = input.find('\n');
    const std::string spec = input.substr(0, newline);
    const std::string traffic =
        newline == std::string::npos ? std::string() : input.substr(newline + 1);
    tinyproxy::toxic fault;
    try {
        fault = tinyproxy::parse_toxic(spec);
    } catch (const std::invalid_argument&) {
        return 0; // refused, with a message: what a bad spec gets
    }
    check(tinyproxy::check_toxic(fault).empty(), "accepted a toxic check_toxic refuses");
    check(same(tinyproxy::parse_toxic(tinyproxy::to_spec(fault)), fault), "to_spec round trip");
    drive(fault, traffic.size() > 4096 ? traffic.substr(0, 4096) : traffic);
    return 0;
}
