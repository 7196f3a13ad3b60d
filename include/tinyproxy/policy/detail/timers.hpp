// SPDX-License-Identifier: MIT
// The event loop's deadlines: one timer per session slot, in a min-heap, earliest first.
#pragma once

#include <algorithm> // heap operations, std::remove_if
#include <cstddef>   // std::size_t
#include <cstdint>   // slots, generations
#include <vector>    // the heap, the armed timers

#include "tinyproxy/detail/sys.hpp"

namespace tinyproxy {
namespace detail {

/// At most one live timer per slot (a slot and its generation, as in slot_table), earliest
/// first. Arming a slot for a later time than its live timer does nothing: that timer fires
/// first, and its owner arms again for the time it has then, so a deadline that only moves on
/// (an idle timeout) costs nothing per call. Arming for an earlier time pushes a new timer and
/// leaves the old one in the heap, stale: pop_due() skips it. When the heap is mostly stale it is
/// rebuilt from the live timers, so it stays proportional to them, not to the timers ever armed.
class timer_heap {
public:
    struct timer {
        time_point when;
        std::uint32_t slot;
        std::uint32_t generation;
    };

    /// The earliest timer's time (stale or not: waking for one costs a turn, not a miss); max
    /// when none.
    time_point next() const noexcept { return heap_.empty() ? time_point::max() : heap_[0].when; }
    /// Arms the slot's timer for `deadline` (max: none), unless its live timer fires no later.
    /// Throws only for want of memory, and then every timer stands as it did.
    void arm(std::uint32_t slot, std::uint32_t generation, time_point deadline);
    /// The slot's live timer, if any, is stale from now on (its session ended).
    void disarm(std::uint32_t slot) noexcept;
    /// Takes the earliest live timer due by `now` into `due`; false when none is due.
    bool pop_due(time_point now, timer& due) noexcept;

    /// Timers in the heap, stale ones included.
    std::size_t size() const noexcept { return heap_.size(); }
    /// Live timers.
    std::size_t live() const noexcept { return live_; }

private:
    struct armed_timer {
        time_point when = time_point::max(); // max for none
        std::uint32_t generation = 0;
    };
    // The heap's order: std::push_heap keeps the greatest first, so greater is earlier.
    static bool later(const timer& a, const timer& b) noexcept { return a.when > b.when; }

    bool is_live(const timer& t) const noexcept {
        const armed_timer& armed = armed_[t.slot];
        return armed.when == t.when && armed.generation == t.generation;
    }
    bool mostly_stale() const noexcept { return heap_.size() > 2 * live_ + 1024; }
    void drop_stale() noexcept;

    std::vector<timer> heap_;        // a min-heap by `when`, with stale entries
    std::vector<armed_timer> armed_; // by slot: its live timer
    std::size_t live_ = 0;
};

inline void timer_heap::arm(std::uint32_t slot, std::uint32_t generation, time_point deadline) {
    if (slot >= armed_.size()) {
        armed_.resize(slot + std::size_t{1});
    }
    armed_timer& armed = armed_[slot];
    if (armed.when != time_point::max() && armed.generation == generation &&
        deadline >= armed.when) {
        return; // the live timer fires first, and its owner arms again then
    }
    if (deadline == time_point::max()) {
        return; // no deadline, no timer
    }
    if (mostly_stale()) {
        drop_stale();
    }
    heap_.push_back({deadline, slot, generation});
    std::push_heap(heap_.begin(), heap_.end(), later);
    if (armed.when == time_point::max()) {
        ++live_;
    }
    armed = {deadline, generation};
}

inline void timer_heap::disarm(std::uint32_t slot) noexcept {
    if (slot < armed_.size() && armed_[slot].when != time_point::max()) {
        armed_[slot].when = time_point::max();
        --live_;
    }
}

inline bool timer_heap::pop_due(time_point now, timer& due) noexcept {
    while (!heap_.empty() && heap_[0].when <= now) {
        std::pop_heap(heap_.begin(), heap_.end(), later);
        due = heap_.back();
        heap_.pop_back();
        if (is_live(due)) {
            armed_[due.slot].when = time_point::max();
            --live_;
            return true;
        }
    }
    return false;
}

inline void timer_heap::drop_stale() noexcept {
    heap_.erase(
        std::remove_if(heap_.begin(), heap_.end(), [this](const timer& t) { return !is_live(t); }),
        heap_.end());
    std::make_heap(heap_.begin(), heap_.end(), later);
}

} // namespace detail
} // namespace tinyproxy
