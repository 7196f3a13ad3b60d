// SPDX-License-Identifier: MIT
// The latency fault: each chunk of a direction is delayed by latency ± jitter, order kept.
#pragma once

#include <chrono>  // the delays
#include <cstddef> // std::size_t
#include <cstdint> // microsecond counts
#include <deque>   // the held chunks' due times

#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/stage.hpp"
#include "tinyproxy/fault/random.hpp"
#include "tinyproxy/fault/held_bytes.hpp"

namespace tinyproxy {

/// Toxiproxy's `latency`: each chunk is passed on `latency` ± a uniform `jitter` (drawn in
/// microseconds over [-jitter, +jitter], one draw per chunk) after it came, never less than at
/// once, and never before the chunk before it: order is kept, so a chunk drawn short waits for
/// the one ahead. The end of stream follows the last chunk, delayed like one.
///
/// Holds: every chunk not yet due; at most the relay's stage buffer (back-pressure), which is
/// what a delay costs: at 100 MB/s, 100 ms of latency holds 10 MB.
///
/// Unlike Toxiproxy: the end of stream is delayed and passed on in order (half-close kept;
/// Toxiproxy closes the connection at once), the jitter comes from the seeded generator (the
/// same seed, the same delays), and a removed fault passes what it holds at once.
class latency_stage : public relay_stage {
public:
    latency_stage(std::chrono::milliseconds latency, std::chrono::milliseconds jitter,
                  fault_random random) noexcept
        : latency_us_(clamped_us(latency)), jitter_us_(clamped_us(jitter)), random_(random) {}

    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;
    void on_wake(stage_context& out) override { release(out); }
    void on_remove(stage_context& out) override;
    std::size_t held() const noexcept override { return bytes_.size(); }

private:
    struct due_chunk {
        time_point due;
        std::size_t size; // its bytes are the next ones in bytes_
    };

    /// Milliseconds as microseconds, kept small enough that latency + jitter cannot overflow
    /// (70 years is "never" here).
    static std::int64_t clamped_us(std::chrono::milliseconds value) noexcept {
        constexpr std::int64_t longest_ms = std::int64_t{1} << 41; // about 70 years
        const std::int64_t ms = value.count() < 0 ? 0 : value.count();
        return (ms < longest_ms ? ms : longest_ms) * 1000;
    }
    /// This chunk's delay: one draw, never below zero.
    std::chrono::microseconds draw_delay() noexcept;
    /// Passes every chunk due by now (and the end once it is due), then asks for the next.
    void release(stage_context& out);

    std::int64_t latency_us_;
    std::int64_t jitter_us_;
    fault_random random_;
    detail::held_bytes bytes_;
    std::deque<due_chunk> chunks_;            // in order; dues never decrease
    time_point last_due_ = time_point::min(); // of the last chunk queued or passed
    bool end_came_ = false;
    bool end_passed_ = false;
    time_point end_due_ = time_point::max();
};

// ---------------------------------------------------------------------------------------------

inline std::chrono::microseconds latency_stage::draw_delay() noexcept {
    std::int64_t delay = latency_us_;
    if (jitter_us_ > 0) {
        delay += random_.between(-jitter_us_, jitter_us_);
    }
    return std::chrono::microseconds(delay < 0 ? 0 : delay);
}

inline void latency_stage::on_data(stage_context& out, byte_view bytes) {
    if (bytes.empty()) {
        return;
    }
    const time_point wanted = detail::deadline_after(out.now(), draw_delay());
    const time_point due = wanted < last_due_ ? last_due_ : wanted; // never before the one ahead
    last_due_ = due;
    if (chunks_.empty() && due <= out.now()) {
        out.pass(bytes); // no delay: nothing to hold
        return;
    }
    bytes_.append(bytes);
    if (!chunks_.empty() && chunks_.back().due == due) {
        chunks_.back().size += bytes.size(); // one entry per due time
    } else {
        chunks_.push_back(due_chunk{due, bytes.size()});
    }
    release(out);
}

inline void latency_stage::on_end(stage_context& out) {
    end_came_ = true;
    const time_point wanted =
        detail::deadline_after(out.now(), std::chrono::microseconds(latency_us_));
    end_due_ = wanted < last_due_ ? last_due_ : wanted;
    release(out);
}

inline void latency_stage::release(stage_context& out) {
    std::size_t due_bytes = 0;
    while (!chunks_.empty() && chunks_.front().due <= out.now()) {
        due_bytes += chunks_.front().size;
        chunks_.pop_front();
    }
    if (due_bytes != 0) {
        out.pass(bytes_.front(due_bytes)); // the due chunks together: one write, not one each
        bytes_.drop_front(due_bytes);
    }
    if (chunks_.empty() && end_came_ && !end_passed_ && end_due_ <= out.now()) {
        end_passed_ = true;
        out.end();
    }
    if (!chunks_.empty()) {
        out.wake_at(chunks_.front().due);
    } else {
        out.wake_at(end_came_ && !end_passed_ ? end_due_ : time_point::max());
    }
}

inline void latency_stage::on_remove(stage_context& out) {
    chunks_.clear();
    bytes_.pass_all(out);
    if (end_came_ && !end_passed_) {
        end_passed_ = true;
        out.end();
    }
    out.wake_at(time_point::max());
}

} // namespace tinyproxy
