// hexdump_stage: a user-written relay stage that passes every byte on unchanged and logs a hex
// dump of the first bytes of its direction (examples/hexdump.cpp puts one on each side).
//
// A stage is a class deriving from tinyproxy::relay_stage that overrides what it changes (here
// on_data and on_end; the rest pass on by default). It runs on the thread or in the process
// that serves the tunnel, so what it logs to must be safe to call from there: the line sink is
// called once per whole line, and a sink that writes each line with one write(2) keeps lines
// from different tunnels apart (as hexdump_to_stderr() does).
#pragma once

#include <tinyproxy/tinyproxy.hpp>

#include <algorithm>   // std::min
#include <cstddef>     // std::size_t
#include <cstdint>     // byte values
#include <cstdio>      // std::snprintf: offsets and hex
#include <functional>  // the line sink
#include <string>      // lines
#include <string_view> // a line, handed to the sink
#include <utility>     // std::move

#include <unistd.h> // write(2): hexdump_to_stderr

/// Where dump lines go: called with one line at a time, without its newline.
using hexdump_sink = std::function<void(std::string_view line)>;

/// Passes everything on at once, unchanged, and hands the sink a hex dump of the first
/// `first_bytes` bytes of its direction, 16 a line, each line prefixed by `label` and the
/// offset in the stream: "#1 client>upstream 00000000  70 69 6e 67  |ping|". A chunk read
/// from the socket starts a new line. At the end of stream it logs how many bytes went by.
class hexdump_stage : public tinyproxy::relay_stage {
public:
    hexdump_stage(std::string label, std::size_t first_bytes, hexdump_sink sink)
        : label_(std::move(label)), first_bytes_(first_bytes), sink_(std::move(sink)) {}

    // [readme: hexdump-stage]
    void on_data(tinyproxy::stage_context& out, tinyproxy::byte_view bytes) override {
        for (std::size_t at = 0; at < bytes.size() && seen_ + at < first_bytes_; at += line_size) {
            std::size_t count = std::min({bytes.size() - at, first_bytes_ - seen_ - at, line_size});
            dump_line(bytes.subview(at).first(count), seen_ + at);
        }
        seen_ += bytes.size();
        out.pass(bytes); // unchanged, at once: this stage holds nothing
    }
    // [readme: end]

    void on_end(tinyproxy::stage_context& out) override {
        sink_(label_ + " end of stream after " + std::to_string(seen_) + " bytes");
        out.end();
    }

private:
    static constexpr std::size_t line_size = 16; // bytes a dump line shows

    void dump_line(tinyproxy::byte_view bytes, std::size_t offset) {
        char text[32];
        std::snprintf(text, sizeof text, " %08zx ", offset);
        std::string line = label_ + text;
        std::string printable;
        for (std::uint8_t byte : bytes) {
            std::snprintf(text, sizeof text, " %02x", byte);
            line += text;
            printable += byte >= 0x20 && byte < 0x7f ? static_cast<char>(byte) : '.';
        }
        line.append(3 * (line_size - bytes.size()), ' '); // the text column lines up
        sink_(line + "  |" + printable + "|");
    }

    std::string label_;
    std::size_t first_bytes_;
    hexdump_sink sink_;
    std::size_t seen_ = 0; // bytes of this direction so far
};

/// A sink that writes each line to stderr with one write(2), so that lines from tunnels served
/// on other threads or in other processes at the same time do not interleave.
inline void hexdump_to_stderr(std::string_view line) {
    std::string whole = std::string(line) + "\n";
    (void)!::write(2, whole.data(), whole.size());
}
