// SPDX-License-Identifier: MIT
// IPv4/IPv6 addresses and endpoints: parse "host:port" and "[v6]:port", format, resolve names.
#pragma once

#include <algorithm>    // std::equal
#include <array>        // address bytes
#include <cstdint>      // std::uint16_t
#include <cstring>      // std::memcpy
#include <optional>     // parse results
#include <string>       // formatting
#include <string_view>  // parsing
#include <system_error> // error reporting
#include <vector>       // resolved address lists

#include <arpa/inet.h>  // inet_pton, inet_ntop
#include <netdb.h>      // getaddrinfo
#include <netinet/in.h> // sockaddr_in, sockaddr_in6
#include <sys/socket.h> // sockaddr_storage

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"

namespace tinyproxy {

/// An IPv4 or IPv6 address held as its network-order bytes (what SOCKS and the PROXY protocol
/// put on the wire), plus the scope id of a link-local IPv6 address.
class ip_address {
public:
    /// 0.0.0.0
    constexpr ip_address() noexcept = default;

    static ip_address v4(const std::array<std::uint8_t, 4>& bytes) noexcept {
        ip_address a;
        std::memcpy(a.bytes_.data(), bytes.data(), 4);
        return a;
    }
    static ip_address v6(const std::array<std::uint8_t, 16>& bytes,
                         std::uint32_t scope_id = 0) noexcept {
        ip_address a;
        a.is_v6_ = true;
        a.bytes_ = bytes;
        a.scope_id_ = scope_id;
        return a;
    }
    static ip_address loopback_v4() noexcept { return v4({127, 0, 0, 1}); }
    static ip_address loopback_v6() noexcept {
        return v6({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1});
    }
    static ip_address any_v6() noexcept { return v6({}); }

    /// Parses a numeric address ("127.0.0.1", "::1", "fe80::1%2"); nothing for anything else.
    static std::optional<ip_address> parse(std::string_view text);

    bool is_v4() const noexcept { return !is_v6_; }
    bool is_v6() const noexcept { return is_v6_; }
    /// The address in network order: 4 bytes for IPv4, 16 for IPv6.
    byte_view bytes() const noexcept { return {bytes_.data(), is_v6_ ? 16u : 4u}; }
    std::uint32_t scope_id() const noexcept { return scope_id_; }
    bool is_loopback() const noexcept;
    bool is_unspecified() const noexcept;

    /// "192.0.2.1", "2001:db8::1", "fe80::1%2"
    std::string to_string() const;

    friend bool operator==(const ip_address& a, const ip_address& b) noexcept {
        return a.is_v6_ == b.is_v6_ && a.scope_id_ == b.scope_id_ && a.bytes_ == b.bytes_;
    }
    friend bool operator!=(const ip_address& a, const ip_address& b) noexcept { return !(a == b); }

private:
    std::array<std::uint8_t, 16> bytes_{};
    std::uint32_t scope_id_ = 0;
    bool is_v6_ = false;
};

/// A numeric address and a port: where a socket is bound or connected.
struct endpoint {
    ip_address address;
    std::uint16_t port = 0;

    /// "192.0.2.1:80", "[2001:db8::1]:443"
    std::string to_string() const;

    friend bool operator==(const endpoint& a, const endpoint& b) noexcept {
        return a.port == b.port && a.address == b.address;
    }
    friend bool operator!=(const endpoint& a, const endpoint& b) noexcept { return !(a == b); }
};

/// A host (name or numeric address, without brackets) and a port, not yet resolved.
struct host_port {
    std::string host;
    std::uint16_t port = 0;

    /// "example.com:80", "[::1]:8080"
    std::string to_string() const;
    /// The host as a numeric address, when it is one.
    std::optional<ip_address> numeric_address() const { return ip_address::parse(host); }
};

/// A range of addresses, "10.0.0.0/8" or "2001:db8::/32": what an allow-list holds.
struct cidr {
    ip_address network;
    unsigned prefix = 0; ///< leading bits that must match: 0..32 for IPv4, 0..128 for IPv6

    /// True when `address` is in the range. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is
    /// the IPv4 address it carries.
    bool contains(const ip_address& address) const noexcept;
    std::string to_string() const { return network.to_string() + "/" + std::to_string(prefix); }
};

/// Parses "ADDRESS/PREFIX", or a bare address (a range of one). Bits past the prefix must be 0.
cidr parse_cidr(std::string_view text, std::error_code& ec);
/// As above; throws std::system_error naming the text.
cidr parse_cidr(std::string_view text);

/// Parses "HOST:PORT", "[V6]:PORT" (names allowed, nothing resolved). Port 0 is accepted:
/// for a listener it means "pick a free port".
host_port parse_host_port(std::string_view text, std::error_code& ec);
/// As above; throws std::system_error naming the text.
host_port parse_host_port(std::string_view text);

/// Parses a numeric "IP:PORT" or "[V6]:PORT".
endpoint parse_endpoint(std::string_view text, std::error_code& ec);
/// As above; throws std::system_error naming the text.
endpoint parse_endpoint(std::string_view text);

/// Every address `target` stands for, in the resolver's order of preference (numeric hosts
/// need no lookup). An empty list comes with an error.
std::vector<endpoint> resolve(const host_port& target, std::error_code& ec);
/// As above; throws std::system_error naming the target.
std::vector<endpoint> resolve(const host_port& target);

/// Fills `storage` with the sockaddr for `ep`; returns its length.
socklen_t to_sockaddr(const endpoint& ep, sockaddr_storage& storage) noexcept;
/// The endpoint a sockaddr holds; an unspecified IPv4 endpoint for other families.
endpoint from_sockaddr(const sockaddr* address, socklen_t length) noexcept;

// ---------------------------------------------------------------------------------------------

inline std::optional<ip_address> ip_address::parse(std::string_view text) {
    // inet_pton reads a C string: an embedded NUL would hide whatever follows it.
    if (text.empty() || text.size() > INET6_ADDRSTRLEN + 11 ||
        text.find('\0') != std::string_view::npos) {
        return std::nullopt;
    }
    std::string copy(text);
    std::array<std::uint8_t, 16> bytes{};
    if (copy.find(':') == std::string::npos) {
        if (::inet_pton(AF_INET, copy.c_str(), bytes.data()) != 1) {
            return std::nullopt;
        }
        return v4({bytes[0], bytes[1], bytes[2], bytes[3]});
    }
    std::uint32_t scope_id = 0;
    auto percent = copy.find('%');
    if (percent != std::string::npos) {
        // Only numeric scope ids: names would need if_nametoindex, a lookup with side effects.
        std::string_view scope = std::string_view(copy).substr(percent + 1);
        if (scope.empty() || scope.size() > 9) {
            return std::nullopt;
        }
        for (char c : scope) {
            if (c < '0' || c > '9') {
                return std::nullopt;
            }
            scope_id = scope_id * 10 + static_cast<std::uint32_t>(c - '0');
        }
        copy.resize(percent);
    }
    if (::inet_pton(AF_INET6, copy.c_str(), bytes.data()) != 1) {
        return std::nullopt;
    }
    return v6(bytes, scope_id);
}

inline bool ip_address::is_loopback() const noexcept {
    if (is_v4()) {
        return bytes_[0] == 127;
    }
    return *this == loopback_v6();
}

inline bool ip_address::is_unspecified() const noexcept {
    auto b = bytes();
    return std::all_of(b.begin(), b.end(), [](std::uint8_t x) { return x == 0; });
}

inline std::string ip_address::to_string() const {
    if (!is_v6_) {
        // By hand: glibc's inet_ntop formats with sprintf, whose vfprintf takes over 2 KB of
        // stack, the deepest call a thread_policy session made (a SOCKS5 request for an IPv4
        // target), and so a page of memory for every such session while it lives.
        std::string out;
        out.reserve(15);
        for (std::size_t i = 0; i < 4; ++i) {
            if (i > 0) {
                out += '.';
            }
            unsigned value = bytes_[i];
            if (value >= 100) {
                out += static_cast<char>('0' + value / 100);
            }
            if (value >= 10) {
                out += static_cast<char>('0' + value / 10 % 10);
            }
            out += static_cast<char>('0' + value % 10);
        }
        return out;
    }
    char text[INET6_ADDRSTRLEN] = {};
    ::inet_ntop(is_v6_ ? AF_INET6 : AF_INET, bytes_.data(), text, sizeof text);
    std::string out(text);
    if (is_v6_ && scope_id_ != 0) {
        out += '%';
        out += std::to_string(scope_id_);
    }
    return out;
}

inline std::string endpoint::to_string() const {
    if (address.is_v6()) {
        return "[" + address.to_string() + "]:" + std::to_string(port);
    }
    return address.to_string() + ":" + std::to_string(port);
}

inline std::string host_port::to_string() const {
    if (host.find(':') != std::string::npos) {
        return "[" + host + "]:" + std::to_string(port);
    }
    return host + ":" + std::to_string(port);
}

namespace detail {

inline bool parse_port(std::string_view text, std::uint16_t& port) noexcept {
    if (text.empty() || text.size() > 5) {
        return false;
    }
    std::uint32_t value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return false;
        }
        value = value * 10 + static_cast<std::uint32_t>(c - '0');
    }
    if (value > 65535) {
        return false;
    }
    port = static_cast<std::uint16_t>(value);
    return true;
}

/// A host name as DNS allows it (RFC 1123 letters, digits, '-', '.', plus '_' seen in the
/// wild), or anything that parses as a numeric address.
inline bool valid_host(std::string_view host) {
    if (host.empty() || host.size() > 253) {
        return false;
    }
    if (ip_address::parse(host)) {
        return true;
    }
    // "127.1", "2130706433", "0x7f.0.0.1": getaddrinfo reads these as IPv4 addresses (with
    // inet_aton's rules), so a rule that looks at numeric hosts before resolving could be
    // walked around. A last label of decimal digits, or 0x and hex digits, is such a number;
    // no real host name ends in one (RFC 3696 section 2). "db1" or "beef1" are fine.
    auto dot = host.rfind('.');
    std::string_view last_label = host.substr(dot == std::string_view::npos ? 0 : dot + 1);
    bool hex_form = last_label.size() > 2 && last_label[0] == '0' &&
                    (last_label[1] == 'x' || last_label[1] == 'X');
    std::string_view digits = hex_form ? last_label.substr(2) : last_label;
    const char* allowed = hex_form ? "0123456789abcdefABCDEF" : "0123456789";
    if (!digits.empty() && digits.find_first_not_of(allowed) == std::string_view::npos) {
        return false;
    }
    for (char c : host) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_';
        if (!ok) {
            return false;
        }
    }
    return true;
}

[[noreturn]] inline void throw_address_error(std::error_code ec, std::string_view what,
                                             std::string_view text) {
    throw std::system_error(ec, std::string(what) + " '" + std::string(text) + "'");
}

} // namespace detail

inline host_port parse_host_port(std::string_view text, std::error_code& ec) {
    ec.clear();
    host_port out;
    std::string_view host;
    std::string_view port;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            ec = errc::invalid_address;
            return {};
        }
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
        auto parsed = ip_address::parse(host);
        if (!parsed || !parsed->is_v6()) {
            ec = errc::invalid_address;
            return {};
        }
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos) {
            ec = errc::invalid_address;
            return {};
        }
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        // A bare IPv6 address would be ambiguous ("::1:80"): brackets are required.
        if (host.find(':') != std::string_view::npos) {
            ec = errc::invalid_address;
            return {};
        }
    }
    if (!detail::valid_host(host) || !detail::parse_port(port, out.port)) {
        ec = errc::invalid_address;
        return {};
    }
    out.host = std::string(host);
    return out;
}

inline host_port parse_host_port(std::string_view text) {
    std::error_code ec;
    host_port out = parse_host_port(text, ec);
    if (ec) {
        detail::throw_address_error(ec, "cannot parse address", text);
    }
    return out;
}

inline endpoint parse_endpoint(std::string_view text, std::error_code& ec) {
    host_port parsed = parse_host_port(text, ec);
    if (ec) {
        return {};
    }
    auto address = parsed.numeric_address();
    if (!address) {
        ec = errc::invalid_address;
        return {};
    }
    return endpoint{*address, parsed.port};
}

inline endpoint parse_endpoint(std::string_view text) {
    std::error_code ec;
    endpoint out = parse_endpoint(text, ec);
    if (ec) {
        detail::throw_address_error(ec, "cannot parse numeric address", text);
    }
    return out;
}

namespace detail {

/// The IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d), or the address itself.
inline ip_address unmapped(const ip_address& address) noexcept {
    auto b = address.bytes();
    if (address.is_v4() || !std::all_of(b.begin(), b.begin() + 10, [](auto x) { return x == 0; }) ||
        b[10] != 0xFF || b[11] != 0xFF) {
        return address;
    }
    return ip_address::v4({b[12], b[13], b[14], b[15]});
}

/// True when the first `bits` bits of a and b (each `size` bytes) are equal.
inline bool same_prefix(const std::uint8_t* a, const std::uint8_t* b, unsigned bits) noexcept {
    unsigned whole = bits / 8;
    for (unsigned i = 0; i < whole; ++i) {
        if (a[i] != b[i]) {
            return false;
        }
    }
    unsigned rest = bits % 8;
    if (rest == 0) {
        return true;
    }
    auto mask = static_cast<std::uint8_t>(0xFF << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

} // namespace detail

inline bool cidr::contains(const ip_address& address) const noexcept {
    ip_address candidate = detail::unmapped(address);
    if (candidate.is_v4() != network.is_v4()) {
        return false;
    }
    return detail::same_prefix(candidate.bytes().data(), network.bytes().data(), prefix);
}

inline cidr parse_cidr(std::string_view text, std::error_code& ec) {
    ec.clear();
    auto slash = text.find('/');
    auto address = ip_address::parse(text.substr(0, slash));
    if (!address || address->scope_id() != 0) {
        ec = errc::invalid_address;
        return {};
    }
    unsigned bits = static_cast<unsigned>(address->bytes().size() * 8);
    unsigned prefix = bits;
    if (slash != std::string_view::npos) {
        std::uint16_t parsed = 0;
        if (!detail::parse_port(text.substr(slash + 1), parsed) || parsed > bits) {
            ec = errc::invalid_address;
            return {};
        }
        prefix = parsed;
    }
    // "10.1.2.3/8" is almost always a typo for 10.0.0.0/8 or 10.1.2.3/32: refuse it.
    std::array<std::uint8_t, 16> host_bits{};
    auto b = address->bytes();
    for (std::size_t i = 0; i < b.size(); ++i) {
        unsigned from = static_cast<unsigned>(i * 8);
        unsigned keep = prefix > from ? std::min(8u, prefix - from) : 0u;
        host_bits[i] = static_cast<std::uint8_t>(b[i] & (0xFFu >> keep));
    }
    if (!std::all_of(host_bits.begin(), host_bits.end(), [](auto x) { return x == 0; })) {
        ec = errc::invalid_address;
        return {};
    }
    return cidr{*address, prefix};
}

inline cidr parse_cidr(std::string_view text) {
    std::error_code ec;
    cidr out = parse_cidr(text, ec);
    if (ec) {
        detail::throw_address_error(ec, "cannot parse address range", text);
    }
    return out;
}

inline socklen_t to_sockaddr(const endpoint& ep, sockaddr_storage& storage) noexcept {
    storage = sockaddr_storage{};
    if (ep.address.is_v4()) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&storage);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(ep.port);
        std::memcpy(&sin->sin_addr, ep.address.bytes().data(), 4);
        return sizeof(sockaddr_in);
    }
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&storage);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(ep.port);
    sin6->sin6_scope_id = ep.address.scope_id();
    std::memcpy(&sin6->sin6_addr, ep.address.bytes().data(), 16);
    return sizeof(sockaddr_in6);
}

inline endpoint from_sockaddr(const sockaddr* address, socklen_t length) noexcept {
    endpoint out;
    if (address == nullptr) {
        return out;
    }
    if (address->sa_family == AF_INET && length >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
        sockaddr_in sin{};
        std::memcpy(&sin, address, sizeof sin);
        std::array<std::uint8_t, 4> bytes{};
        std::memcpy(bytes.data(), &sin.sin_addr, 4);
        out.address = ip_address::v4(bytes);
        out.port = ntohs(sin.sin_port);
    } else if (address->sa_family == AF_INET6 &&
               length >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
        sockaddr_in6 sin6{};
        std::memcpy(&sin6, address, sizeof sin6);
        std::array<std::uint8_t, 16> bytes{};
        std::memcpy(bytes.data(), &sin6.sin6_addr, 16);
        out.address = ip_address::v6(bytes, sin6.sin6_scope_id);
        out.port = ntohs(sin6.sin6_port);
    }
    return out;
}

inline std::vector<endpoint> resolve(const host_port& target, std::error_code& ec) {
    ec.clear();
    if (auto numeric = target.numeric_address()) {
        return {endpoint{*numeric, target.port}};
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    addrinfo* found = nullptr;
    int status = ::getaddrinfo(target.host.c_str(), nullptr, &hints, &found);
    std::vector<endpoint> out;
    if (status == 0) {
        for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
            endpoint ep = from_sockaddr(ai->ai_addr, ai->ai_addrlen);
            ep.port = target.port;
            bool known_family = ai->ai_family == AF_INET || ai->ai_family == AF_INET6;
            if (known_family && std::find(out.begin(), out.end(), ep) == out.end()) {
                out.push_back(ep);
            }
        }
        ::freeaddrinfo(found);
    }
    if (out.empty()) {
        ec = errc::name_not_resolved;
    }
    return out;
}

inline std::vector<endpoint> resolve(const host_port& target) {
    std::error_code ec;
    auto out = resolve(target, ec);
    if (ec) {
        detail::throw_address_error(ec, "cannot resolve", target.to_string());
    }
    return out;
}

} // namespace tinyproxy
