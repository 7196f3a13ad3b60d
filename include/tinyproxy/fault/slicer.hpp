// SPDX-License-Identifier: MIT
// The slicer fault: each chunk of a direction goes out in small slices, a delay apart.
#pragma once

#include <chrono>  // the delay between slices
#include <cstddef> // std::size_t
#include <cstdint> // the variation's draws
#include <deque>   // the sizes of the chunks not yet sliced
#include <vector>  // the pieces of the chunk being sliced

#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/stage.hpp"
#include "tinyproxy/fault/random.hpp"
#include "tinyproxy/fault/held_bytes.hpp"

namespace tinyproxy {

/// Toxiproxy's `slicer`: each chunk goes out in slices, each its own pass() (its own write),
/// cut as Toxiproxy's chunk() cuts: a piece larger than average_size + size_variation is
/// halved, the midpoint moved by a uniform draw in [-variation, variation), and each half cut
/// again. So no slice is larger than average + variation, and none smaller than about
/// (average - variation) / 2 unless its whole chunk is. A slice is due `delay` after the one
/// before it (the first slice of the next chunk too, or when it comes, if later); with delay 0
/// a chunk's slices go at once, as separate passes. A late wake-up (timers are coarser than
/// microseconds) passes the slices due meanwhile together, still one pass each, so the
/// slicer's pace holds in aggregate. The end of stream goes right after the last slice.
///
/// Holds: the slices not yet passed (at most the relay's stage buffer). Chunks are cut
/// lazily, a slice as it is due, so the cut costs a word per held chunk and the few pieces on
/// the way down, not a word per slice.
///
/// Unlike Toxiproxy: the cut's draws come from the seeded generator (reproducible), the end
/// of stream is passed on in order (half-close kept), and a removed fault passes what it
/// holds at once.
class slicer_stage : public relay_stage {
public:
    slicer_stage(std::size_t average_size, std::size_t size_variation,
                 std::chrono::microseconds delay, fault_random random) noexcept
        : average_(average_size < 1 ? 1 : average_size),
          variation_(size_variation < average_ ? size_variation : average_ - 1),
          delay_(delay.count() < 0 ? std::chrono::microseconds(0) : delay), random_(random) {}

    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;
    void on_wake(stage_context& out) override { release(out); }
    void on_remove(stage_context& out) override;
    std::size_t held() const noexcept override { return bytes_.size(); }

private:
    /// The size of the next slice, cutting the front chunk as far as that slice needs.
    std::size_t next_slice();
    /// average + variation, the largest piece left uncut (saturating: a huge average cuts none).
    std::size_t largest_slice() const noexcept {
        const std::size_t room = static_cast<std::size_t>(-1) - average_;
        return variation_ < room ? average_ + variation_ : static_cast<std::size_t>(-1);
    }
    /// Passes the slices due by now, each `delay` after the one before, and the end after the
    /// last; asks for the next.
    void release(stage_context& out);

    std::size_t average_;
    std::size_t variation_; // below average_, so that both halves of a cut are never empty
    std::chrono::microseconds delay_;
    fault_random random_;
    detail::held_bytes bytes_;
    std::deque<std::size_t> chunks_;          // sizes of the held chunks not cut yet, in order
    std::vector<std::size_t> pieces_;         // the front chunk's uncut pieces, the next on top
    time_point next_due_ = time_point::min(); // when the next slice is due
    bool end_came_ = false;
    bool end_passed_ = false;
};

// ---------------------------------------------------------------------------------------------

inline std::size_t slicer_stage::next_slice() {
    if (pieces_.empty()) {
        pieces_.push_back(chunks_.front());
        chunks_.pop_front();
    }
    // Toxiproxy's recursion, depth first with the left half first, on an explicit stack: the
    // draws come in the same order, and only the pieces on the way to the next slice exist.
    while (pieces_.back() > largest_slice()) {
        const std::size_t piece = pieces_.back();
        pieces_.pop_back();
        std::size_t left = piece / 2;
        if (variation_ > 0) {
            const auto v = static_cast<std::int64_t>(variation_);
            const std::int64_t move = random_.between(-v, v - 1);
            left = static_cast<std::size_t>(static_cast<std::int64_t>(left) + move);
        }
        pieces_.push_back(piece - left);
        pieces_.push_back(left);
    }
    const std::size_t slice = pieces_.back();
    pieces_.pop_back();
    return slice;
}

inline void slicer_stage::on_data(stage_context& out, byte_view bytes) {
    if (bytes.empty()) {
        return;
    }
    if (bytes_.empty() && next_due_ < out.now()) {
        next_due_ = out.now(); // after a pause: the schedule goes on from this chunk, no credit
    }
    bytes_.append(bytes);
    chunks_.push_back(bytes.size());
    release(out);
}

inline void slicer_stage::on_end(stage_context& out) {
    end_came_ = true;
    release(out);
}

inline void slicer_stage::release(stage_context& out) {
    while (!bytes_.empty() && next_due_ <= out.now()) {
        const std::size_t slice = next_slice();
        out.pass(bytes_.front(slice));
        bytes_.drop_front(slice);
        next_due_ = detail::deadline_after(next_due_, delay_); // delay 0: the next one at once
    }
    if (bytes_.empty() && end_came_ && !end_passed_) {
        end_passed_ = true;
        out.end();
    }
    out.wake_at(bytes_.empty() ? time_point::max() : next_due_);
}

inline void slicer_stage::on_remove(stage_context& out) {
    chunks_.clear();
    pieces_.clear();
    bytes_.pass_all(out);
    if (end_came_ && !end_passed_) {
        end_passed_ = true;
        out.end();
    }
    out.wake_at(time_point::max());
}

} // namespace tinyproxy
