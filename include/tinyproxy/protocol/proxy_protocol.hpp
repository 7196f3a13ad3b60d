// SPDX-License-Identifier: MIT
// The PROXY protocol (haproxy's proxy-protocol.txt, versions 1 and 2): encode a header that names
// the real client, and decode one sans-I/O.
#pragma once

#include <array>        // address bytes, the v2 signature
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // decoded endpoints
#include <string>       // v1 lines
#include <string_view>  // v1 parsing
#include <system_error> // std::error_code
#include <vector>       // byte buffers

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"

namespace tinyproxy {
namespace proxy_protocol {

/// The 12 bytes every version 2 header starts with.
constexpr std::array<std::uint8_t, 12> v2_signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                       0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
/// The longest version 1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses).
constexpr std::size_t v1_max_line = 107;
/// The fixed part of a version 2 header: signature, version and command, family, length.
constexpr std::size_t v2_fixed_size = 16;
/// The decoder's default cap on a version 2 length field (addresses plus TLVs). The format allows
/// 65535; real senders stay far below (haproxy's SSL TLVs, AWS and GCP ids: a few hundred).
constexpr std::size_t default_max_v2_length = 2048;

/// What a header says about the connection it precedes.
struct header {
    /// A v2 LOCAL command, a v2 PROXY command with an unspecified family or one that is not TCP
    /// over IPv4/IPv6 (UDP, UNIX), or v1 "PROXY UNKNOWN": no addresses; the receiver uses the
    /// connection's own.
    bool local = false;
    std::optional<endpoint> source;      ///< the real client
    std::optional<endpoint> destination; ///< the address the client connected to
    int version = 0;                     ///< 1 or 2; 0 until decoded
};

/// "PROXY TCP4 s d sp dp\r\n", or TCP6 when either address is IPv6: an IPv4 address beside an
/// IPv6 one is written IPv4-mapped (::ffff:a.b.c.d), so it decodes as that IPv6 address. IPv6
/// scope ids are not carried.
[[nodiscard]] std::vector<std::uint8_t> encode_v1(const endpoint& source,
                                                  const endpoint& destination);
/// A v2 PROXY command for TCP over IPv4 (both addresses IPv4) or IPv6 (otherwise, with an IPv4
/// address mapped as ::ffff:a.b.c.d); no TLVs; scope ids are not carried.
[[nodiscard]] std::vector<std::uint8_t> encode_v2(const endpoint& source,
                                                  const endpoint& destination);
/// A v2 LOCAL command (family UNSPEC, no addresses): a connection the proxy made on its own.
[[nodiscard]] std::vector<std::uint8_t> encode_v2_local();

/// Reads one header from the start of a connection, fed in pieces of any size. The version is
/// told from the first bytes ("PROXY " or the v2 signature); anything else is invalid as soon as
/// it cannot be a prefix of either. It never buffers more than the header itself: at most
/// v1_max_line bytes, or v2_fixed_size plus the length cap.
///
/// Version 1: exactly one line "PROXY TCP4|TCP6 src dst sport dport\r\n" with single spaces,
/// IPv4 addresses as four decimal numbers 0..255 without leading zeros, IPv6 addresses as
/// inet_pton reads them (no zone id), ports 0..65535 without leading zeros. "PROXY UNKNOWN",
/// alone or followed by a space and anything up to the CRLF, is local. A lone CR or LF, a
/// control character, or no CRLF within 107 bytes is invalid.
///
/// Version 2: version nibble 2 (else unsupported_version), command LOCAL or PROXY. LOCAL skips
/// the whole block, whatever the family says. PROXY with TCP over IPv4 (0x11) or IPv6 (0x21)
/// decodes both endpoints; UNSPEC (family or transport 0), UDP (0x12, 0x22) and UNIX (0x31,
/// 0x32) fall back to local, as the spec allows; any other family or transport is invalid. The
/// length must hold the address block of the family it names; what follows the addresses must
/// be well-formed TLVs, each inside the length (their contents are skipped, except a CRC32C
/// TLV, which is verified). A length past the cap is invalid (message_too_large) as soon as it
/// is read.
class decoder {
public:
    enum class status { need_more, done, invalid };

    decoder() noexcept = default;
    /// `max_v2_length` caps a version 2 length field (at most 65535 is ever possible).
    explicit decoder(std::size_t max_v2_length) noexcept : max_v2_length_(max_v2_length) {}

    /// Feeds the next bytes. Once done, further bytes are kept for take_rest() (the caller
    /// bounds them); once invalid, it stays invalid.
    [[nodiscard]] status feed(byte_view bytes);
    status state() const noexcept { return status_; }
    /// The header, once done (a default header before).
    const header& result() const noexcept { return result_; }
    /// The bytes after the header, from every feed, once done; later calls return only what was
    /// fed since.
    [[nodiscard]] std::vector<std::uint8_t> take_rest();
    /// Why it is invalid: errc::protocol_error, errc::message_too_large or
    /// errc::unsupported_version; empty otherwise.
    std::error_code error() const noexcept { return error_; }

private:
    enum class format { unknown, v1, v2 };

    void consume(std::uint8_t byte);
    void consume_v1(std::uint8_t byte);
    void consume_v2(std::uint8_t byte);
    void finish_v1();
    void finish_v2();
    void fail(errc why);
    void succeed();

    std::size_t max_v2_length_ = default_max_v2_length;
    status status_ = status::need_more;
    format format_ = format::unknown;
    std::vector<std::uint8_t> buffer_; // the header so far
    std::size_t v2_size_ = 0;          // the whole v2 header, once its length is read
    header result_;
    std::vector<std::uint8_t> rest_;
    std::error_code error_;
};

} // namespace proxy_protocol

// ---------------------------------------------------------------------------------------------

namespace detail {
namespace proxy_header {

constexpr std::uint8_t command_local = 0x0;
constexpr std::uint8_t command_proxy = 0x1;
constexpr std::uint8_t tcp_over_ipv4 = 0x11;
constexpr std::uint8_t tcp_over_ipv6 = 0x21;
constexpr std::uint8_t tlv_crc32c = 0x03;

/// The address block a v2 family/transport byte needs, or -1 for one the spec does not define.
inline int address_block_size(std::uint8_t family) noexcept {
    switch (family) {
    case 0x11:
    case 0x12:
        return 12;
    case 0x21:
    case 0x22:
        return 36;
    case 0x31:
    case 0x32:
        return 216;
    default:
        break;
    }
    bool known_family = (family >> 4) <= 3;
    bool known_transport = (family & 0x0F) <= 2;
    if (known_family && known_transport) {
        return 0; // UNSPEC family or transport: addresses, if any, are ignored
    }
    return -1;
}

/// CRC-32C (Castagnoli, RFC 4960 appendix B), bit by bit: headers are short.
inline std::uint32_t crc32c(byte_view bytes) noexcept {
    std::uint32_t crc = 0xFFFFFFFFu;
    for (std::uint8_t byte : bytes) {
        crc ^= byte;
        for (int bit = 0; bit < 8; ++bit) {
            crc = (crc & 1u) != 0 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        }
    }
    return crc ^ 0xFFFFFFFFu;
}

/// A decimal number 0..max without leading zeros ("0" itself is fine).
inline bool parse_decimal(std::string_view text, std::uint32_t max, std::uint32_t& value) noexcept {
    if (text.empty() || text.size() > 5 || (text.size() > 1 && text.front() == '0')) {
        return false;
    }
    std::uint32_t number = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return false;
        }
        number = number * 10 + static_cast<std::uint32_t>(c - '0');
    }
    if (number > max) {
        return false;
    }
    value = number;
    return true;
}

/// Exactly four decimal numbers 0..255, no leading zeros, one dot between each.
inline std::optional<ip_address> parse_v4(std::string_view text) noexcept {
    std::array<std::uint8_t, 4> bytes{};
    for (std::size_t i = 0; i < 4; ++i) {
        auto dot = text.find('.');
        bool last = i == 3;
        if (last != (dot == std::string_view::npos)) {
            return std::nullopt;
        }
        std::uint32_t value = 0;
        if (!parse_decimal(text.substr(0, dot), 255, value)) {
            return std::nullopt;
        }
        bytes[i] = static_cast<std::uint8_t>(value);
        text = last ? std::string_view{} : text.substr(dot + 1);
    }
    return ip_address::v4(bytes);
}

/// An IPv6 address as inet_pton reads it (hex groups, one "::", a dotted IPv4 tail), no zone id.
inline std::optional<ip_address> parse_v6(std::string_view text) {
    for (char c : text) {
        bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                  c == ':' || c == '.';
        if (!ok) {
            return std::nullopt;
        }
    }
    auto parsed = ip_address::parse(text);
    if (!parsed || !parsed->is_v6()) {
        return std::nullopt;
    }
    return parsed;
}

/// `address` as 16 bytes: IPv6 as it is, IPv4 mapped (::ffff:a.b.c.d).
inline std::array<std::uint8_t, 16> as_v6_bytes(const ip_address& address) noexcept {
    std::array<std::uint8_t, 16> out{};
    byte_view bytes = address.bytes();
    if (address.is_v6()) {
        for (std::size_t i = 0; i < 16; ++i) {
            out[i] = bytes[i];
        }
    } else {
        out[10] = 0xFF;
        out[11] = 0xFF;
        for (std::size_t i = 0; i < 4; ++i) {
            out[12 + i] = bytes[i];
        }
    }
    return out;
}

/// Splits off the text up to the next single space; false when there is none.
inline bool next_field(std::string_view& text, std::string_view& field) noexcept {
    auto space = text.find(' ');
    if (space == std::string_view::npos) {
        return false;
    }
    field = text.substr(0, space);
    text.remove_prefix(space + 1);
    return true;
}

} // namespace proxy_header
} // namespace detail

namespace proxy_protocol {

inline std::vector<std::uint8_t> encode_v1(const endpoint& source, const endpoint& destination) {
    namespace d = detail::proxy_header;
    std::string line = "PROXY ";
    if (source.address.is_v4() && destination.address.is_v4()) {
        line += "TCP4 " + source.address.to_string() + " " + destination.address.to_string();
    } else {
        // Rebuilt without the scope id, which to_string() would append as "%n".
        line += "TCP6 " + ip_address::v6(d::as_v6_bytes(source.address)).to_string() + " " +
                ip_address::v6(d::as_v6_bytes(destination.address)).to_string();
    }
    line += " " + std::to_string(source.port) + " " + std::to_string(destination.port) + "\r\n";
    return std::vector<std::uint8_t>(line.begin(), line.end());
}

inline std::vector<std::uint8_t> encode_v2(const endpoint& source, const endpoint& destination) {
    namespace d = detail::proxy_header;
    std::vector<std::uint8_t> out;
    byte_writer writer(out);
    writer.bytes(byte_view{v2_signature.data(), v2_signature.size()});
    writer.u8(0x20 | d::command_proxy);
    if (source.address.is_v4() && destination.address.is_v4()) {
        writer.u8(d::tcp_over_ipv4).u16(12);
        writer.bytes(source.address.bytes()).bytes(destination.address.bytes());
    } else {
        auto source_bytes = d::as_v6_bytes(source.address);
        auto destination_bytes = d::as_v6_bytes(destination.address);
        writer.u8(d::tcp_over_ipv6).u16(36);
        writer.bytes(byte_view{source_bytes.data(), 16});
        writer.bytes(byte_view{destination_bytes.data(), 16});
    }
    writer.u16(source.port).u16(destination.port);
    return out;
}

inline std::vector<std::uint8_t> encode_v2_local() {
    std::vector<std::uint8_t> out;
    byte_writer(out)
        .bytes(byte_view{v2_signature.data(), v2_signature.size()})
        .u8(0x20 | detail::proxy_header::command_local)
        .u8(0x00)
        .u16(0);
    return out;
}

inline decoder::status decoder::feed(byte_view bytes) {
    if (status_ == status::invalid) {
        return status_;
    }
    std::size_t used = 0;
    while (status_ == status::need_more && used < bytes.size()) {
        if (format_ == format::v2 && buffer_.size() >= v2_fixed_size) {
            // The length is known and checked: copy the rest of the block in one go.
            std::size_t wanted = v2_size_ - buffer_.size();
            std::size_t available = bytes.size() - used;
            std::size_t count = wanted < available ? wanted : available;
            buffer_.insert(buffer_.end(), bytes.begin() + used, bytes.begin() + used + count);
            used += count;
            if (buffer_.size() == v2_size_) {
                finish_v2();
            }
            continue;
        }
        consume(bytes[used++]);
    }
    if (status_ == status::done) {
        rest_.insert(rest_.end(), bytes.begin() + used, bytes.end());
    }
    return status_;
}

inline std::vector<std::uint8_t> decoder::take_rest() {
    std::vector<std::uint8_t> out;
    out.swap(rest_);
    return out;
}

inline void decoder::consume(std::uint8_t byte) {
    if (format_ == format::unknown) {
        if (byte == 'P') {
            format_ = format::v1;
        } else if (byte == v2_signature[0]) {
            format_ = format::v2;
        } else {
            fail(errc::protocol_error);
            return;
        }
    }
    if (format_ == format::v1) {
        consume_v1(byte);
    } else {
        consume_v2(byte);
    }
}

inline void decoder::consume_v1(std::uint8_t byte) {
    static constexpr std::string_view prefix = "PROXY ";
    if (buffer_.size() < prefix.size()) {
        if (byte != static_cast<std::uint8_t>(prefix[buffer_.size()])) {
            fail(errc::protocol_error);
            return;
        }
        buffer_.push_back(byte);
        return;
    }
    bool after_cr = buffer_.back() == '\r';
    if (byte == '\n') {
        if (!after_cr) {
            fail(errc::protocol_error); // a lone LF
            return;
        }
        buffer_.push_back(byte);
        finish_v1();
        return;
    }
    if (after_cr || (byte != '\r' && (byte < 0x20 || byte > 0x7E))) {
        fail(errc::protocol_error); // a lone CR, or a byte no v1 line holds
        return;
    }
    buffer_.push_back(byte);
    if (buffer_.size() >= proxy_protocol::v1_max_line) {
        fail(errc::message_too_large); // no room left for the LF within 107 bytes
    }
}

inline void decoder::consume_v2(std::uint8_t byte) {
    namespace d = detail::proxy_header;
    std::size_t position = buffer_.size();
    if (position < v2_signature.size() && byte != v2_signature[position]) {
        fail(errc::protocol_error);
        return;
    }
    buffer_.push_back(byte);
    if (position == 12) {
        if ((byte >> 4) != 2) {
            fail(errc::unsupported_version);
        } else if ((byte & 0x0F) > d::command_proxy) {
            fail(errc::protocol_error);
        }
    } else if (position == 13) {
        bool proxy = (buffer_[12] & 0x0F) == d::command_proxy;
        if (proxy && d::address_block_size(byte) < 0) {
            fail(errc::protocol_error);
        }
    } else if (position == 15) {
        std::size_t length = load_be<std::uint16_t>(buffer_.data() + 14);
        bool proxy = (buffer_[12] & 0x0F) == d::command_proxy;
        if (length > max_v2_length_) {
            fail(errc::message_too_large);
        } else if (proxy && length < static_cast<std::size_t>(d::address_block_size(buffer_[13]))) {
            fail(errc::protocol_error); // the length cannot hold the addresses it announces
        } else {
            v2_size_ = v2_fixed_size + length;
            if (length == 0) {
                finish_v2();
            }
        }
    }
}

inline void decoder::finish_v1() {
    namespace d = detail::proxy_header;
    // Between "PROXY " and the CRLF.
    auto text = std::string_view(reinterpret_cast<const char*>(buffer_.data()), buffer_.size());
    text = text.substr(6, text.size() - 8);
    constexpr std::string_view unknown = "UNKNOWN";
    if (text.substr(0, unknown.size()) == unknown &&
        (text.size() == unknown.size() || text[unknown.size()] == ' ')) {
        result_.local = true; // whatever follows UNKNOWN is ignored, as the spec says
        succeed();
        return;
    }
    std::string_view protocol;
    std::string_view source_text;
    std::string_view destination_text;
    std::string_view source_port_text;
    bool fields = d::next_field(text, protocol) && d::next_field(text, source_text) &&
                  d::next_field(text, destination_text) && d::next_field(text, source_port_text);
    std::string_view destination_port_text = text; // the last field: no space may follow
    std::optional<ip_address> source;
    std::optional<ip_address> destination;
    if (fields && protocol == "TCP4") {
        source = d::parse_v4(source_text);
        destination = d::parse_v4(destination_text);
    } else if (fields && protocol == "TCP6") {
        source = d::parse_v6(source_text);
        destination = d::parse_v6(destination_text);
    }
    std::uint32_t source_port = 0;
    std::uint32_t destination_port = 0;
    if (!source || !destination || !d::parse_decimal(source_port_text, 65535, source_port) ||
        !d::parse_decimal(destination_port_text, 65535, destination_port)) {
        fail(errc::protocol_error);
        return;
    }
    result_.source = endpoint{*source, static_cast<std::uint16_t>(source_port)};
    result_.destination = endpoint{*destination, static_cast<std::uint16_t>(destination_port)};
    succeed();
}

inline void decoder::finish_v2() {
    namespace d = detail::proxy_header;
    const std::uint8_t family = buffer_[13];
    if ((buffer_[12] & 0x0F) == d::command_local) {
        result_.local = true; // the block, family included, is ignored
        succeed();
        return;
    }
    // The length was checked against the family's address block when it was read.
    const auto address_size = static_cast<std::size_t>(d::address_block_size(family));
    if (address_size == 0) {
        result_.local = true; // UNSPEC: use the connection's own addresses
        succeed();
        return;
    }
    // TLVs: type (1), length (2), value; each must end inside the header.
    bool seen_crc = false;
    std::size_t position = v2_fixed_size + address_size;
    while (position < v2_size_) {
        if (v2_size_ - position < 3) {
            fail(errc::protocol_error);
            return;
        }
        const std::uint8_t type = buffer_[position];
        const std::size_t length = load_be<std::uint16_t>(buffer_.data() + position + 1);
        const std::size_t value = position + 3;
        if (length > v2_size_ - value) {
            fail(errc::protocol_error);
            return;
        }
        if (type == d::tlv_crc32c) {
            if (seen_crc || length != 4) {
                fail(errc::protocol_error);
                return;
            }
            seen_crc = true;
            // The checksum of the whole header with the checksum field zeroed.
            std::vector<std::uint8_t> copy = buffer_; // exactly the header here
            for (std::size_t i = 0; i < 4; ++i) {
                copy[value + i] = 0;
            }
            if (d::crc32c(copy) != load_be<std::uint32_t>(buffer_.data() + value)) {
                fail(errc::protocol_error);
                return;
            }
        }
        position = value + length;
    }
    if (family == d::tcp_over_ipv4 || family == d::tcp_over_ipv6) {
        byte_reader reader(byte_view{buffer_.data() + v2_fixed_size, address_size});
        ip_address source;
        ip_address destination;
        if (family == d::tcp_over_ipv4) {
            std::array<std::uint8_t, 4> source_bytes{};
            std::array<std::uint8_t, 4> destination_bytes{};
            for (auto& b : source_bytes) {
                b = reader.u8();
            }
            for (auto& b : destination_bytes) {
                b = reader.u8();
            }
            source = ip_address::v4(source_bytes);
            destination = ip_address::v4(destination_bytes);
        } else {
            std::array<std::uint8_t, 16> source_bytes{};
            std::array<std::uint8_t, 16> destination_bytes{};
            for (auto& b : source_bytes) {
                b = reader.u8();
            }
            for (auto& b : destination_bytes) {
                b = reader.u8();
            }
            source = ip_address::v6(source_bytes);
            destination = ip_address::v6(destination_bytes);
        }
        std::uint16_t source_port = reader.u16();
        std::uint16_t destination_port = reader.u16();
        result_.source = endpoint{source, source_port};
        result_.destination = endpoint{destination, destination_port};
    } else {
        result_.local = true; // UDP or UNIX: not something a TCP proxy can use
    }
    succeed();
}

inline void decoder::fail(errc why) {
    status_ = status::invalid;
    error_ = why;
    result_ = header{};
    buffer_.clear();
    buffer_.shrink_to_fit();
}

inline void decoder::succeed() {
    status_ = status::done;
    result_.version = format_ == format::v1 ? 1 : 2;
    buffer_.clear();
    buffer_.shrink_to_fit();
}

} // namespace proxy_protocol
} // namespace tinyproxy
