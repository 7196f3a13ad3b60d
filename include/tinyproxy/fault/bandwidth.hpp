// SPDX-License-Identifier: MIT
// The bandwidth fault: a direction moves at most `rate` KB/s.
#pragma once

#include <chrono>  // the schedule's nanoseconds
#include <cstddef> // std::size_t
#include <cstdint> // byte counts and rates

#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/stage.hpp"
#include "tinyproxy/fault/held_bytes.hpp"

namespace tinyproxy {

/// Toxiproxy's `bandwidth`: the direction moves at most `rate` KB/s (1 KB = 1000 B). The n-th
/// byte since the schedule started may go once n bytes' worth of time has passed since its
/// start (exact integer nanoseconds, never a sum of rounded sleeps), so the rate holds in
/// aggregate from 1 KB/s to beyond 1 GB/s whatever the wake-ups' precision: a late wake-up
/// passes what became due meanwhile. The schedule restarts when the stage falls idle (nothing
/// held), so no credit builds up while the direction is quiet. Bytes go in passes of at most
/// 100 ms worth (as Toxiproxy), and the stage asks to be woken when 10 ms worth more may go
/// (or all it holds, if less): smoother than Toxiproxy's 100 ms steps at low rates, yet about
/// a hundred wake-ups a second for a busy direction, not one per chunk.
///
/// Holds: what the rate has not let through yet; at most the relay's stage buffer.
///
/// Unlike Toxiproxy: the end of stream is passed on once every byte before it has gone
/// (half-close kept), and a removed fault passes what it holds at once.
class bandwidth_stage : public relay_stage {
public:
    explicit bandwidth_stage(std::int64_t rate_kb_per_s) noexcept
        : rate_kb_(clamped(rate_kb_per_s)) {}

    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;
    void on_wake(stage_context& out) override { release(out); }
    void on_remove(stage_context& out) override;
    std::size_t held() const noexcept override { return bytes_.size(); }

private:
    /// The rate kept within 1 KB/s .. 1 PB/s, where the schedule's arithmetic cannot overflow.
    static std::uint64_t clamped(std::int64_t rate_kb) noexcept {
        constexpr std::int64_t fastest = 1000000000000; // KB/s: a petabyte a second
        return static_cast<std::uint64_t>(rate_kb < 1 ? 1 : rate_kb < fastest ? rate_kb : fastest);
    }
    /// Bytes the schedule lets through in `elapsed` since its start (rounded down).
    std::uint64_t bytes_in(std::chrono::nanoseconds elapsed) const noexcept;
    /// When the schedule lets its `count`-th byte through (rounded up, so that bytes_in() of
    /// that time reaches `count`).
    time_point time_of(std::uint64_t count) const noexcept;
    /// Passes what the schedule allows by now, and the end after the last byte; asks for the
    /// next wake-up.
    void release(stage_context& out);
    std::size_t largest_pass() const noexcept; // 100 ms worth
    std::size_t wake_step() const noexcept;    // 10 ms worth

    std::uint64_t rate_kb_;    // KB/s: bytes per millisecond
    detail::held_bytes bytes_; // not let through yet
    time_point start_{};       // of the schedule
    std::uint64_t sent_ = 0;   // bytes passed since start_
    bool end_came_ = false;
    bool end_passed_ = false;
};

// ---------------------------------------------------------------------------------------------

inline std::uint64_t bandwidth_stage::bytes_in(std::chrono::nanoseconds elapsed) const noexcept {
    if (elapsed.count() <= 0) {
        return 0;
    }
    // elapsed * rate / 10^6 (rate in bytes per ms), split so that neither product overflows.
    const auto ns = static_cast<std::uint64_t>(elapsed.count());
    const std::uint64_t whole_ms = ns / 1000000;
    const std::uint64_t rest_ns = ns % 1000000;
    if (whole_ms > ~std::uint64_t{0} / rate_kb_ / 2) {
        return ~std::uint64_t{0} / 2; // more than will ever be sent
    }
    return whole_ms * rate_kb_ + rest_ns * rate_kb_ / 1000000;
}

inline time_point bandwidth_stage::time_of(std::uint64_t count) const noexcept {
    // count * 10^6 / rate nanoseconds, rounded up, split so that neither product overflows.
    const std::uint64_t whole = count / rate_kb_;
    const std::uint64_t rest = count % rate_kb_;
    constexpr std::uint64_t longest_ns = std::uint64_t{1} << 62; // about 146 years: never
    if (whole > longest_ns / 1000000) {
        return time_point::max();
    }
    const std::uint64_t ns = whole * 1000000 + (rest * 1000000 + rate_kb_ - 1) / rate_kb_;
    return detail::deadline_after(start_, std::chrono::nanoseconds(static_cast<std::int64_t>(ns)));
}

inline std::size_t bandwidth_stage::largest_pass() const noexcept {
    const std::uint64_t bytes = rate_kb_ * 100;
    return bytes < static_cast<std::size_t>(-1) ? static_cast<std::size_t>(bytes)
                                                : static_cast<std::size_t>(-1);
}

inline std::size_t bandwidth_stage::wake_step() const noexcept {
    const std::uint64_t bytes = rate_kb_ * 10;
    return bytes < static_cast<std::size_t>(-1) ? static_cast<std::size_t>(bytes)
                                                : static_cast<std::size_t>(-1);
}

inline void bandwidth_stage::on_data(stage_context& out, byte_view bytes) {
    if (bytes.empty()) {
        return;
    }
    // Bytes pass only once due, so with none held the schedule has caught up: the direction
    // was idle, and the schedule starts again from now rather than owe it that time as credit.
    if (bytes_.empty()) {
        start_ = out.now();
        sent_ = 0;
    }
    bytes_.append(bytes);
    release(out);
}

inline void bandwidth_stage::on_end(stage_context& out) {
    end_came_ = true;
    release(out);
}

inline void bandwidth_stage::release(stage_context& out) {
    const std::uint64_t allowed = bytes_in(out.now() - start_);
    std::uint64_t room = allowed > sent_ ? allowed - sent_ : 0;
    while (room != 0 && !bytes_.empty()) {
        const std::size_t slice =
            room < largest_pass() ? static_cast<std::size_t>(room) : largest_pass();
        const byte_view bytes = bytes_.front(slice);
        out.pass(bytes);
        bytes_.drop_front(bytes.size());
        sent_ += bytes.size();
        room -= bytes.size();
    }
    if (bytes_.empty()) {
        if (end_came_ && !end_passed_) {
            end_passed_ = true;
            out.end();
        }
        out.wake_at(time_point::max());
        return;
    }
    const std::size_t step = bytes_.size() < wake_step() ? bytes_.size() : wake_step();
    out.wake_at(time_of(sent_ + step));
}

inline void bandwidth_stage::on_remove(stage_context& out) {
    bytes_.pass_all(out);
    if (end_came_ && !end_passed_) {
        end_passed_ = true;
        out.end();
    }
    out.wake_at(time_point::max());
}

} // namespace tinyproxy
