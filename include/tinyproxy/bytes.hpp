// SPDX-License-Identifier: MIT
// Big-endian byte packing: load/store by shifts, a bounds-checked reader and an appending writer.
#pragma once

#include <cstddef>     // std::size_t
#include <cstdint>     // fixed-width integers
#include <string>      // length-prefixed strings
#include <string_view> // views over received bytes
#include <type_traits> // unsigned integer checks
#include <vector>      // the writer's output

#include "tinyproxy/config.hpp"

namespace tinyproxy {

/// A non-owning view of bytes (C++17 has no std::span).
class byte_view {
public:
    constexpr byte_view() noexcept = default;
    constexpr byte_view(const std::uint8_t* data, std::size_t size) noexcept
        : data_(data), size_(size) {}
    byte_view(const std::vector<std::uint8_t>& bytes) noexcept // NOLINT: implicit by design
        : data_(bytes.data()), size_(bytes.size()) {}
    byte_view(std::string_view text) noexcept // NOLINT: implicit by design
        : data_(reinterpret_cast<const std::uint8_t*>(text.data())), size_(text.size()) {}

    constexpr const std::uint8_t* data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr std::uint8_t operator[](std::size_t i) const noexcept { return data_[i]; }
    constexpr const std::uint8_t* begin() const noexcept { return data_; }
    constexpr const std::uint8_t* end() const noexcept { return data_ + size_; }

    /// The bytes from `offset` on (empty when offset is past the end).
    constexpr byte_view subview(std::size_t offset) const noexcept {
        return offset >= size_ ? byte_view{} : byte_view{data_ + offset, size_ - offset};
    }
    constexpr byte_view first(std::size_t count) const noexcept {
        return byte_view{data_, count < size_ ? count : size_};
    }
    std::string_view as_chars() const noexcept {
        return {reinterpret_cast<const char*>(data_), size_};
    }

private:
    const std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

/// Reads an unsigned big-endian integer from `p`, which must hold sizeof(T) bytes.
template <class T>
constexpr T load_be(const std::uint8_t* p) noexcept {
    static_assert(std::is_unsigned<T>::value, "load_be reads unsigned integers");
    T value = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) {
        value = static_cast<T>((value << 8) | p[i]);
    }
    return value;
}

/// Writes `value` big-endian into `p`, which must have room for sizeof(T) bytes.
template <class T>
constexpr void store_be(std::uint8_t* p, T value) noexcept {
    static_assert(std::is_unsigned<T>::value, "store_be writes unsigned integers");
    for (std::size_t i = sizeof(T); i > 0; --i) {
        p[i - 1] = static_cast<std::uint8_t>(value & 0xFFu);
        value = static_cast<T>(value >> 8);
    }
}

/// A cursor over received bytes. Every read checks the bounds first: reading past the end
/// reads nothing, returns zero or an empty value, and leaves the reader "short" (`need_more()`),
/// which is sticky, so a parser reads a whole message and checks once at the end.
class byte_reader {
    // First, so that the constexpr reads below can use them in constant expressions (clang 14
    // refuses a member template defined after its constexpr caller).
    constexpr bool take(std::size_t count) noexcept {
        if (short_ || count > remaining()) {
            short_ = true;
            return false;
        }
        position_ += count;
        return true;
    }
    template <class T>
    constexpr T read_int() noexcept {
        if (!take(sizeof(T))) {
            return 0;
        }
        return load_be<T>(bytes_.data() + position_ - sizeof(T));
    }

public:
    constexpr byte_reader() noexcept = default;
    constexpr explicit byte_reader(byte_view bytes) noexcept : bytes_(bytes) {}

    constexpr std::uint8_t u8() noexcept { return read_int<std::uint8_t>(); }
    constexpr std::uint16_t u16() noexcept { return read_int<std::uint16_t>(); }
    constexpr std::uint32_t u32() noexcept { return read_int<std::uint32_t>(); }
    constexpr std::uint64_t u64() noexcept { return read_int<std::uint64_t>(); }

    /// The next `count` bytes as a view into the input.
    constexpr byte_view bytes(std::size_t count) noexcept {
        if (!take(count)) {
            return {};
        }
        return byte_view{bytes_.data() + position_ - count, count};
    }
    /// A string prefixed by its length as one byte (SOCKS5 host names, RFC 1929 credentials).
    std::string string_u8() { return length_prefixed(u8()); }
    /// A string prefixed by its length as two big-endian bytes.
    std::string string_u16() { return length_prefixed(u16()); }
    constexpr void skip(std::size_t count) noexcept { (void)take(count); }

    /// True once any read wanted more bytes than were left.
    constexpr bool need_more() const noexcept { return short_; }
    constexpr explicit operator bool() const noexcept { return !short_; }
    constexpr std::size_t position() const noexcept { return position_; }
    constexpr std::size_t remaining() const noexcept { return bytes_.size() - position_; }
    /// What is left after the last successful read (bytes a peer sent after a message).
    constexpr byte_view rest() const noexcept { return bytes_.subview(position_); }

private:
    std::string length_prefixed(std::size_t length) {
        byte_view text = bytes(length);
        return std::string(text.as_chars());
    }

    byte_view bytes_;
    std::size_t position_ = 0;
    bool short_ = false;
};

/// Appends big-endian fields to a byte vector, like Python's struct.pack("!...") but typed:
/// `byte_writer(out).u8(5).u16(port)`.
class byte_writer {
public:
    explicit byte_writer(std::vector<std::uint8_t>& out) noexcept : out_(&out) {}

    byte_writer& u8(std::uint8_t value) { return put(value); }
    byte_writer& u16(std::uint16_t value) { return put(value); }
    byte_writer& u32(std::uint32_t value) { return put(value); }
    byte_writer& u64(std::uint64_t value) { return put(value); }
    byte_writer& bytes(byte_view run) {
        out_->insert(out_->end(), run.begin(), run.end());
        return *this;
    }
    /// Writes the length as one byte, then the text; the caller keeps text under 256 bytes.
    byte_writer& string_u8(std::string_view text) {
        return u8(static_cast<std::uint8_t>(text.size())).bytes(text);
    }
    /// Writes the length as two bytes, then the text; the caller keeps text under 64 KiB.
    byte_writer& string_u16(std::string_view text) {
        return u16(static_cast<std::uint16_t>(text.size())).bytes(text);
    }
    std::size_t size() const noexcept { return out_->size(); }

private:
    template <class T>
    byte_writer& put(T value) {
        std::uint8_t packed[sizeof(T)] = {};
        store_be<T>(packed, value);
        out_->insert(out_->end(), packed, packed + sizeof(T));
        return *this;
    }

    std::vector<std::uint8_t>* out_;
};

} // namespace tinyproxy
