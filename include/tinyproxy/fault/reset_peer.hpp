// SPDX-License-Identifier: MIT
// The reset_peer fault: a timeout after the first byte, both sides get a reset.
#pragma once

#include <chrono>  // the timeout
#include <cstddef> // std::size_t

#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/stage.hpp"
#include "tinyproxy/fault/held_bytes.hpp"

namespace tinyproxy {

/// Toxiproxy's `reset_peer`: once the first byte (or the end of stream, if it comes first)
/// has come, nothing passes, and `timeout` later the tunnel is reset (both sides get an RST);
/// a timeout of 0 resets it at once, on that first byte. A direction that never sends is
/// never reset (as Toxiproxy).
///
/// Holds: what came after the first byte (that included), until the reset; at most the
/// relay's stage buffer.
///
/// Unlike Toxiproxy: a fault removed before its reset passes on what it held, then the end of
/// stream if it came; no byte is lost by removing a fault.
class reset_peer_stage : public relay_stage {
public:
    explicit reset_peer_stage(std::chrono::milliseconds timeout) noexcept
        : timeout_(timeout.count() < 0 ? std::chrono::milliseconds(0) : timeout) {}

    void on_data(stage_context& out, byte_view bytes) override {
        if (bytes.empty() || reset_) {
            return;
        }
        bytes_.append(bytes);
        arm(out);
    }
    void on_end(stage_context& out) override {
        end_came_ = true;
        arm(out);
    }
    void on_wake(stage_context& out) override { reset(out); }
    void on_remove(stage_context& out) override {
        if (reset_) {
            return;
        }
        bytes_.pass_all(out);
        if (end_came_) {
            out.end();
        }
        out.wake_at(time_point::max());
    }
    std::size_t held() const noexcept override { return bytes_.size(); }

private:
    /// The first byte or end has come: the timer starts (once).
    void arm(stage_context& out) {
        if (armed_ || reset_) {
            return;
        }
        armed_ = true;
        if (timeout_.count() == 0) {
            reset(out);
        } else {
            out.wake_at(detail::deadline_after(out.now(), timeout_));
        }
    }
    void reset(stage_context& out) {
        if (!reset_) {
            reset_ = true;
            bytes_.clear(); // the reset drops what the stages hold
            out.reset();
        }
    }

    std::chrono::milliseconds timeout_;
    detail::held_bytes bytes_;
    bool armed_ = false; // the first byte or end has come
    bool end_came_ = false;
    bool reset_ = false; // the tunnel has been reset
};

} // namespace tinyproxy
