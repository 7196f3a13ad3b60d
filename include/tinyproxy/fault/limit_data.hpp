// SPDX-License-Identifier: MIT
// The limit_data fault: the tunnel is closed once a number of bytes have passed.
#pragma once

#include <cstddef> // std::size_t
#include <cstdint> // the byte counts

#include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// Toxiproxy's `limit_data`: bytes pass until `bytes` have passed in all (the chunk that
/// crosses the limit is cut there); then the tunnel is closed cleanly, both ways
/// (stage_context::close), at once. With the limit already reached (0 included), the first
/// byte to come closes it and nothing passes. `already_passed` carries the count over when the
/// fault is changed on a live connection. An end of stream before the limit passes on.
///
/// Holds: nothing. Like Toxiproxy (the close is what the fault is).
class limit_data_stage : public relay_stage {
public:
    explicit limit_data_stage(std::uint64_t bytes, std::uint64_t already_passed = 0) noexcept
        : limit_(bytes), passed_(already_passed) {}

    void on_data(stage_context& out, byte_view bytes) override {
        if (closed_ || bytes.empty()) {
            return;
        }
        const std::uint64_t room = passed_ < limit_ ? limit_ - passed_ : 0;
        const byte_view allowed =
            room < bytes.size() ? bytes.first(static_cast<std::size_t>(room)) : bytes;
        if (!allowed.empty()) {
            out.pass(allowed);
            passed_ += allowed.size();
        }
        if (passed_ >= limit_) {
            closed_ = true;
            out.close();
        }
    }

    /// Bytes passed so far, `already_passed` included.
    std::uint64_t passed() const noexcept { return passed_; }

private:
    std::uint64_t limit_;
    std::uint64_t passed_;
    bool closed_ = false; // the limit has closed the tunnel
};

} // namespace tinyproxy
