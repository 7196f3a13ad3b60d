// SPDX-License-Identifier: MIT
// Test support: deadlines and elapsed times, and the one factor every wall-clock upper bound in
// the tests is multiplied by (timing_scale), so a slow build (a sanitizer, a loaded machine)
// makes the bounds longer instead of making the tests fail.
#pragma once

#include <chrono>  // deadlines, durations
#include <cstdlib> // std::getenv, std::strtol

#include <tinyproxy/tinyproxy.hpp>

#if defined(__SANITIZE_ADDRESS__)
#    define TINYPROXY_TEST_ASAN 1
#elif defined(__has_feature)
#    if __has_feature(address_sanitizer)
#        define TINYPROXY_TEST_ASAN 1
#    endif
#endif
#if defined(__SANITIZE_THREAD__)
#    define TINYPROXY_TEST_TSAN 1
#elif defined(__has_feature)
#    if __has_feature(thread_sanitizer)
#        define TINYPROXY_TEST_TSAN 1
#    endif
#endif
#ifndef TINYPROXY_TEST_ASAN
#    define TINYPROXY_TEST_ASAN 0
#endif
#ifndef TINYPROXY_TEST_TSAN
#    define TINYPROXY_TEST_TSAN 0
#endif

namespace tptest {

using tinyproxy::steady_clock;
using tinyproxy::time_point;
using ms = std::chrono::milliseconds;

/// How many times longer than nominal a wall-clock upper bound is: TINYPROXY_TIMING_SCALE when
/// set to a positive integer, else 5 under ThreadSanitizer, 3 under AddressSanitizer, 1 otherwise.
/// Only upper bounds scale: a lower bound (a deadline is not hit early) holds at any speed.
inline int timing_scale() {
    static const int scale = [] {
        if (const char* text = std::getenv("TINYPROXY_TIMING_SCALE")) {
            long value = std::strtol(text, nullptr, 10);
            if (value > 0 && value <= 1000) {
                return static_cast<int>(value);
            }
        }
        return TINYPROXY_TEST_TSAN ? 5 : TINYPROXY_TEST_ASAN ? 3 : 1;
    }();
    return scale;
}

/// An upper bound of `nominal`, scaled by timing_scale().
template <class Rep, class Period>
std::chrono::duration<Rep, Period> scaled(std::chrono::duration<Rep, Period> nominal) {
    return nominal * timing_scale();
}

/// An upper bound of `nominal_ms` milliseconds, scaled by timing_scale().
inline long scaled_ms(long nominal_ms) { return nominal_ms * timing_scale(); }

/// The deadline `duration` from now.
inline time_point after(ms duration) { return steady_clock::now() + duration; }

/// The deadline `count` milliseconds from now.
inline time_point in_ms(long count) { return after(ms(count)); }

/// Milliseconds from now until `until`, for poll(2); 0 once it has passed.
inline int ms_until(time_point until) {
    auto left = std::chrono::duration_cast<ms>(until - steady_clock::now());
    if (left.count() <= 0) {
        return 0;
    }
    return left.count() > 60'000 ? 60'000 : static_cast<int>(left.count()) + 1;
}

/// The time since `start`.
inline ms elapsed_since(time_point start) {
    return std::chrono::duration_cast<ms>(steady_clock::now() - start);
}

/// The time since `start`, in milliseconds.
inline long elapsed_ms(time_point start) { return static_cast<long>(elapsed_since(start).count()); }

} // namespace tptest
