// SPDX-License-Identifier: MIT
// The timeout fault: nothing passes, and the tunnel is closed after a timeout.
#pragma once

#include <chrono>  // the timeout
#include <cstddef> // std::size_t

#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/stage.hpp"
#include "tinyproxy/fault/held_bytes.hpp"

namespace tinyproxy {

/// Toxiproxy's `timeout`: no byte passes, nor the end of stream; `timeout` after the stage
/// started (on_start: the tunnel's start, or the moment the fault was added to it) the tunnel
/// is closed cleanly, both ways (stage_context::close). A timeout of 0 holds the direction
/// stalled until the fault is removed.
///
/// Holds: every byte that came, in order (at most the relay's stage buffer: then the source
/// is no longer read, as a stalled peer's would not be), and the end of stream.
///
/// Unlike Toxiproxy, which drops them: a removed fault passes on every byte it held, then the
/// end of stream if it came; no byte is lost by removing a fault. When the timeout closes the
/// tunnel, what it holds is dropped with it, as Toxiproxy's close drops it.
class timeout_stage : public relay_stage {
public:
    explicit timeout_stage(std::chrono::milliseconds timeout) noexcept
        : timeout_(timeout.count() < 0 ? std::chrono::milliseconds(0) : timeout) {}

    void on_start(stage_context& out) override {
        if (timeout_.count() > 0) {
            out.wake_at(detail::deadline_after(out.now(), timeout_));
        }
    }
    void on_data(stage_context& out, byte_view bytes) override {
        (void)out;
        if (!closed_) {
            bytes_.append(bytes);
        }
    }
    void on_end(stage_context& out) override {
        (void)out;
        end_came_ = true;
    }
    void on_wake(stage_context& out) override {
        if (!closed_) {
            closed_ = true;
            bytes_.clear(); // the close drops what the stages hold
            out.close();
        }
    }
    void on_remove(stage_context& out) override {
        if (closed_) {
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
    std::chrono::milliseconds timeout_;
    detail::held_bytes bytes_;
    bool end_came_ = false;
    bool closed_ = false; // the timeout has closed the tunnel
};

} // namespace tinyproxy
