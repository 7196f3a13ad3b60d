// SPDX-License-Identifier: MIT
// The faults' random numbers: a small seeded generator whose sequence is the same on every
// platform and standard library, so a seed reproduces the same decisions everywhere.
#pragma once

#include <cstdint> // the generator's state and draws

#include "tinyproxy/config.hpp"

namespace tinyproxy {

/// SplitMix64 (Steele, Lea and Flood, 2014): 64 bits of state, one addition and three
/// multiply-xor-shifts per draw. Not for secrets; for reproducible jitter, slice sizes and
/// toxicity rolls. The standard's distributions are not used because their results differ
/// between standard libraries; the draws below are exact and portable.
class fault_random {
public:
    explicit fault_random(std::uint64_t seed = 0) noexcept : state_(seed) {}

    /// A generator for one part of a run (a connection, a fault, a direction), derived from
    /// this one's seed and `salt` without drawing from it: the parts' sequences do not depend
    /// on the order in which they draw.
    fault_random derive(std::uint64_t salt) const noexcept {
        return fault_random(mix(state_ ^ mix(salt + 0x632be59bd9b4e019ULL)));
    }

    /// The next 64 random bits.
    std::uint64_t next() noexcept {
        state_ += 0x9e3779b97f4a7c15ULL;
        return mix(state_);
    }

    /// Uniform over [0, bound) (0 when bound is 0), without modulo bias.
    std::uint64_t below(std::uint64_t bound) noexcept {
        if (bound == 0) {
            return 0;
        }
        const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % bound);
        std::uint64_t draw = next();
        while (draw >= limit) { // rejects fewer than one draw in two, whatever the bound
            draw = next();
        }
        return draw % bound;
    }

    /// Uniform over [low, high] (low when high < low).
    std::int64_t between(std::int64_t low, std::int64_t high) noexcept {
        if (high <= low) {
            return low;
        }
        const std::uint64_t span =
            static_cast<std::uint64_t>(high) - static_cast<std::uint64_t>(low) + 1;
        const std::uint64_t offset = span == 0 ? next() : below(span); // span 0: all 2^64
        return static_cast<std::int64_t>(static_cast<std::uint64_t>(low) + offset);
    }

    /// Uniform over [0, 1), in steps of 2^-53.
    double unit() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

    /// The finaliser of SplitMix64: a bijection that spreads every input bit over the output.
    static constexpr std::uint64_t mix(std::uint64_t z) noexcept {
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }

private:
    std::uint64_t state_;
};

} // namespace tinyproxy
