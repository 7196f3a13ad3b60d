// SPDX-License-Identifier: MIT
// The bytes a fault stage holds, first in first out, in one buffer (internal to the faults).
#pragma once

#include <cstddef> // std::size_t
#include <cstdint> // the bytes
#include <vector>  // the buffer

#include "tinyproxy/bytes.hpp"
#include "tinyproxy/stage.hpp"

namespace tinyproxy {
namespace detail {

/// A byte queue: appended at the back, passed on from the front. One contiguous buffer rather
/// than a buffer per chunk, so what a stage holds costs its bytes and not an allocation each
/// (a stream read a byte at a time would otherwise cost tens of bytes per byte).
class held_bytes {
public:
    std::size_t size() const noexcept { return bytes_.size() - head_; }
    bool empty() const noexcept { return size() == 0; }

    /// Puts `bytes` behind the ones held.
    void append(byte_view bytes) {
        if (head_ != 0 && head_ >= bytes_.size() / 2) { // reclaim the passed half: amortised O(1)
            bytes_.erase(bytes_.begin(), bytes_.begin() + static_cast<std::ptrdiff_t>(head_));
            head_ = 0;
        }
        bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
    }

    /// The first `count` bytes held (all of them when fewer are held): valid until the next
    /// append() or drop_front().
    byte_view front(std::size_t count) const noexcept {
        return byte_view{bytes_.data() + head_, count < size() ? count : size()};
    }

    /// Forgets the first `count` bytes (they have been passed on).
    void drop_front(std::size_t count) noexcept {
        head_ += count < size() ? count : size();
        if (head_ == bytes_.size()) {
            clear();
        }
    }

    /// Passes every byte held on at once, in order, and forgets them: what a fault taken out
    /// of a live chain does with what it held (relay_stage::on_remove).
    void pass_all(stage_context& out) {
        if (!empty()) {
            out.pass(front(size()));
            clear();
        }
    }

    /// Forgets everything; a buffer grown by a burst is given back rather than kept for the
    /// tunnel's life (a stalled stream may have grown it to the relay's whole stage buffer).
    void clear() noexcept {
        head_ = 0;
        if (bytes_.capacity() > kept_capacity) {
            std::vector<std::uint8_t>().swap(bytes_);
        } else {
            bytes_.clear();
        }
    }

private:
    static constexpr std::size_t kept_capacity = 64 * 1024; // what a steady stream reuses

    std::vector<std::uint8_t> bytes_;
    std::size_t head_ = 0; // the bytes before it have been passed on
};

} // namespace detail
} // namespace tinyproxy
