// SPDX-License-Identifier: MIT
// The event loop's sessions in numbered slots, and the tokens that name a slot's sockets.
#pragma once

#include <cstddef> // std::size_t
#include <cstdint> // slots, generations, tokens
#include <memory>  // std::unique_ptr
#include <utility> // std::move
#include <vector>  // entries, generations, free slots

namespace tinyproxy {
namespace detail {

/// Which of a session's two sockets a token names.
constexpr int client_side = 0;
constexpr int upstream_side = 1;

/// Entries in numbered slots, a freed slot reused by the next entry. A token (what the poller
/// hands back with an event) names a slot, the slot's generation and a side; the generation
/// moves on when the slot's entry is removed, so a token of an entry that has gone is not
/// found, even once its slot holds another. Entries stay where they are while others come and
/// go. Slot 0xffffffff is never used: tokens above every slot's are free for other descriptors.
template <class Entry>
class slot_table {
public:
    /// Generations take 31 bits of a token: after 0x7fffffff comes 0.
    static constexpr std::uint32_t next_generation(std::uint32_t generation) noexcept {
        return (generation + 1) & 0x7fffffffu;
    }
    static constexpr std::uint64_t make_token(std::uint32_t slot, std::uint32_t generation,
                                              int side) noexcept {
        return (std::uint64_t{slot} << 32) | (std::uint64_t{generation} << 1) |
               static_cast<std::uint64_t>(side);
    }
    static constexpr std::uint32_t slot_of(std::uint64_t token) noexcept {
        return static_cast<std::uint32_t>(token >> 32);
    }
    static constexpr std::uint32_t generation_of(std::uint64_t token) noexcept {
        return static_cast<std::uint32_t>(token & 0xffffffffu) >> 1;
    }
    static constexpr int side_of(std::uint64_t token) noexcept {
        return static_cast<int>(token & 1);
    }

    /// Slots ever made, in use or free: every slot number is below it.
    std::size_t size() const noexcept { return entries_.size(); }
    /// Slots in use.
    std::size_t live() const noexcept { return entries_.size() - free_slots_.size(); }
    /// size() once one more entry is added: what a list with room for every slot must hold.
    std::size_t size_after_add() const noexcept {
        return entries_.size() + (free_slots_.empty() ? 1 : 0);
    }

    /// Puts `entry` (not null) in a free slot, or in a new one, and returns the slot. Throws
    /// only for want of memory, and then changes nothing; remove() never throws.
    std::uint32_t add(std::unique_ptr<Entry> entry);
    /// Destroys the entry in `slot` (in use) and frees the slot; its tokens are found no more.
    void remove(std::uint32_t slot) noexcept;

    /// The entry a token names; null when that entry has gone (or never was).
    Entry* find(std::uint64_t token) noexcept { return find(slot_of(token), generation_of(token)); }
    Entry* find(std::uint32_t slot, std::uint32_t generation) noexcept;
    /// The entry in `slot`, whatever its generation; null when the slot is free.
    Entry* at(std::uint32_t slot) noexcept { return entries_[slot].get(); }

    std::uint32_t generation(std::uint32_t slot) const noexcept { return generations_[slot]; }
    /// The token for one side of the entry now in `slot`.
    std::uint64_t token(std::uint32_t slot, int side) const noexcept {
        return make_token(slot, generations_[slot], side);
    }

private:
    std::vector<std::unique_ptr<Entry>> entries_; // by slot; empty when free
    std::vector<std::uint32_t> generations_;      // by slot; moved on when its entry goes
    std::vector<std::uint32_t> free_slots_;       // its capacity grows with entries_
};

template <class Entry>
std::uint32_t slot_table<Entry>::add(std::unique_ptr<Entry> entry) {
    if (free_slots_.empty()) {
        // Room first, so that nothing below (nor remove()) can throw.
        std::size_t slots = entries_.size() + 1;
        entries_.reserve(slots);
        generations_.reserve(slots);
        free_slots_.reserve(slots);
        generations_.push_back(0);
        free_slots_.push_back(static_cast<std::uint32_t>(entries_.size()));
        entries_.emplace_back();
    }
    std::uint32_t slot = free_slots_.back();
    free_slots_.pop_back();
    entries_[slot] = std::move(entry);
    return slot;
}

template <class Entry>
void slot_table<Entry>::remove(std::uint32_t slot) noexcept {
    entries_[slot].reset();
    generations_[slot] = next_generation(generations_[slot]);
    free_slots_.push_back(slot); // cannot throw: its capacity grows with entries_
}

template <class Entry>
Entry* slot_table<Entry>::find(std::uint32_t slot, std::uint32_t generation) noexcept {
    if (slot >= entries_.size() || !entries_[slot] || generations_[slot] != generation) {
        return nullptr;
    }
    return entries_[slot].get();
}

} // namespace detail
} // namespace tinyproxy
