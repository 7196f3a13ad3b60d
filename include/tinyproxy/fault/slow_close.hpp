// SPDX-License-Identifier: MIT
// The slow_close fault: the end of stream is passed on a delay after it came.
#pragma once

#include <chrono>  // the delay
#include <cstddef> // std::size_t

#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// Toxiproxy's `slow_close`: bytes pass at once; the end of stream (the FIN) is passed on
/// `delay` after it came.
///
/// Holds: no bytes; only the end of stream, while it waits.
///
/// Unlike Toxiproxy: only this direction's end is delayed (the other direction goes on, and
/// the connection is not closed whole), and a removed fault passes a waiting end at once.
class slow_close_stage : public relay_stage {
public:
    explicit slow_close_stage(std::chrono::milliseconds delay) noexcept
        : delay_(delay.count() < 0 ? std::chrono::milliseconds(0) : delay) {}

    void on_end(stage_context& out) override {
        end_due_ = detail::deadline_after(out.now(), delay_);
        end_waiting_ = true;
        on_wake(out);
    }
    void on_wake(stage_context& out) override {
        if (end_waiting_ && end_due_ <= out.now()) {
            end_waiting_ = false;
            out.end();
        }
        out.wake_at(end_waiting_ ? end_due_ : time_point::max());
    }
    void on_remove(stage_context& out) override {
        if (end_waiting_) {
            end_waiting_ = false;
            out.end();
        }
        out.wake_at(time_point::max());
    }

private:
    std::chrono::milliseconds delay_;
    time_point end_due_ = time_point::max();
    bool end_waiting_ = false; // the end came and has not been passed on
};

} // namespace tinyproxy
