// SPDX-License-Identifier: MIT
// The SOCKS5 UDP request header (RFC 1928 section 7) that frames every datagram of a UDP
// association: parse and encode, sans-I/O.
#pragma once

#include <array>        // IPv6 addresses
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <cstring>      // std::memcpy
#include <string>       // host names
#include <system_error> // std::error_code
#include <vector>       // encoded datagrams

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"

namespace tinyproxy {

/// One datagram of a SOCKS5 UDP association, as RFC 1928 section 7 frames it:
///
///     RSV(2)=0 FRAG(1) ATYP(1) DST.ADDR DST.PORT(2) DATA
///
/// Between the client and the proxy, DST names where the data goes (client to proxy) or where
/// it came from (proxy to client).
struct socks_udp_datagram {
    std::uint8_t fragment = 0; ///< FRAG: 0 for a whole datagram (fragments are never served)
    host_port address;         ///< DST.ADDR as numeric text or a host name, and DST.PORT
    byte_view data;            ///< DATA: a view into the bytes parsed
};

/// The header sizes RFC 1928 allows: IPv4 10 bytes, IPv6 22, a name 7 + its length.
constexpr std::size_t socks_udp_header_v4 = 10;
constexpr std::size_t socks_udp_header_v6 = 22;

/// Parses one whole datagram into `out` (its data a view into `datagram`). Errors, and `out`
/// is then unspecified:
///  - shorter than its header (any truncation of the header): errc::protocol_error;
///  - RSV not 0: errc::protocol_error;
///  - ATYP other than 1, 3, 4: errc::unsupported_address_type;
///  - a host name that is empty or holds a control character: errc::name_not_resolved;
///  - DST.PORT 0: errc::invalid_address.
/// FRAG is read, not judged: a caller that does not reassemble drops fragment != 0.
[[nodiscard]] std::error_code parse_socks_udp(byte_view datagram, socks_udp_datagram& out);

/// The header's size for a datagram from or to `from`.
inline std::size_t socks_udp_header_size(const endpoint& from) noexcept {
    return from.address.is_v6() ? socks_udp_header_v6 : socks_udp_header_v4;
}
/// Writes the header naming `from` (FRAG 0) at `out`, which has socks_udp_header_size(from)
/// bytes of room, so that a relay can frame a datagram it read just after that room.
void write_socks_udp_header(const endpoint& from, std::uint8_t* out) noexcept;
/// A whole datagram for `address` (numeric: ATYP 1 or 4; otherwise a name, ATYP 3, of at most
/// 255 bytes, errc::message_too_large past that) with `fragment` and `data`, appended to `out`.
std::error_code encode_socks_udp(const host_port& address, byte_view data,
                                 std::vector<std::uint8_t>& out, std::uint8_t fragment = 0);

// ---------------------------------------------------------------------------------------------

inline std::error_code parse_socks_udp(byte_view datagram, socks_udp_datagram& out) {
    constexpr std::uint8_t atyp_ipv4 = 1;
    constexpr std::uint8_t atyp_domain = 3;
    constexpr std::uint8_t atyp_ipv6 = 4;
    byte_reader in(datagram);
    const std::uint16_t reserved = in.u16();
    out.fragment = in.u8();
    const std::uint8_t atyp = in.u8();
    if (!in || reserved != 0) {
        return make_error_code(errc::protocol_error);
    }
    if (atyp == atyp_ipv4) {
        byte_view a = in.bytes(4);
        if (!in) {
            return make_error_code(errc::protocol_error);
        }
        out.address.host = ip_address::v4({a[0], a[1], a[2], a[3]}).to_string();
    } else if (atyp == atyp_ipv6) {
        byte_view raw = in.bytes(16);
        if (!in) {
            return make_error_code(errc::protocol_error);
        }
        std::array<std::uint8_t, 16> a{};
        std::memcpy(a.data(), raw.data(), a.size());
        out.address.host = ip_address::v6(a).to_string();
    } else if (atyp == atyp_domain) {
        out.address.host = in.string_u8();
        if (!in) {
            return make_error_code(errc::protocol_error);
        }
        if (!detail::usable_host_name(out.address.host)) {
            return make_error_code(errc::name_not_resolved);
        }
    } else {
        return make_error_code(errc::unsupported_address_type);
    }
    out.address.port = in.u16();
    if (!in) {
        return make_error_code(errc::protocol_error);
    }
    if (out.address.port == 0) {
        return make_error_code(errc::invalid_address);
    }
    out.data = in.rest();
    return {};
}

inline void write_socks_udp_header(const endpoint& from, std::uint8_t* out) noexcept {
    const bool v6 = from.address.is_v6();
    out[0] = 0; // RSV
    out[1] = 0;
    out[2] = 0; // FRAG
    out[3] = v6 ? 4 : 1;
    byte_view address = from.address.bytes();
    std::memcpy(out + 4, address.data(), address.size());
    store_be<std::uint16_t>(out + 4 + address.size(), from.port);
}

inline std::error_code encode_socks_udp(const host_port& address, byte_view data,
                                        std::vector<std::uint8_t>& out, std::uint8_t fragment) {
    byte_writer w(out);
    if (auto numeric = address.numeric_address()) {
        w.u16(0).u8(fragment).u8(numeric->is_v6() ? 4 : 1).bytes(numeric->bytes());
    } else {
        if (address.host.size() > 255) {
            return make_error_code(errc::message_too_large);
        }
        w.u16(0).u8(fragment).u8(3).string_u8(address.host);
    }
    w.u16(address.port).bytes(data);
    return {};
}

} // namespace tinyproxy
