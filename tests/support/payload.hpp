// SPDX-License-Identifier: MIT
// Test support: byte strings for payloads: reproducible random ones (as bytes or as a string),
// conversions, and where two of them first differ.
#pragma once

#include <cstddef>     // std::size_t
#include <cstdint>     // byte values
#include <random>      // payloads
#include <string>      // payloads as text
#include <string_view> // payload views
#include <vector>      // payloads as bytes

#include <tinyproxy/tinyproxy.hpp>

namespace tptest {

using bytes = std::vector<std::uint8_t>;

/// `size` reproducible pseudo-random bytes, as a string (the raw descriptor helpers write those).
inline std::string random_bytes(std::size_t size, std::uint32_t seed) {
    std::mt19937 generator(seed);
    std::string out(size, '\0');
    for (std::size_t i = 0; i < size; i += 4) {
        auto word = static_cast<std::uint32_t>(generator());
        for (std::size_t j = i; j < i + 4 && j < size; ++j) {
            out[j] = static_cast<char>(word & 0xFFu);
            word >>= 8;
        }
    }
    return out;
}

/// The same bytes as random_bytes(), as a vector (the socket helpers send those).
inline bytes random_vector(std::size_t size, std::uint32_t seed) {
    std::string text = random_bytes(size, seed);
    return bytes(text.begin(), text.end());
}

/// Where two byte strings first differ (std::string::npos when equal): a short failure message
/// instead of two megabyte-long strings.
inline std::size_t first_difference(std::string_view a, std::string_view b) {
    std::size_t common = a.size() < b.size() ? a.size() : b.size();
    for (std::size_t i = 0; i < common; ++i) {
        if (a[i] != b[i]) {
            return i;
        }
    }
    return a.size() == b.size() ? std::string::npos : common;
}

inline std::string as_string(tinyproxy::byte_view view) { return std::string(view.as_chars()); }

inline bytes as_vector(std::string_view text) { return bytes(text.begin(), text.end()); }

} // namespace tptest
