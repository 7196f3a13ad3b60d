// tinyproxy.hpp 0.1.0: header-only C++17 TCP proxy library, as one file.
//
// GENERATED FILE, DO NOT EDIT. Generated from include/tinyproxy/ by tools/amalgamate.py:
// edit the parts under include/tinyproxy/, then run `python3 tools/amalgamate.py`.
#pragma once

// ---- begin tinyproxy/tinyproxy.hpp ----
// The whole library: includes every part, nothing else.

// #include "tinyproxy/config.hpp"
// ---- begin tinyproxy/config.hpp ----
// Version and feature macros; the only header that tests operating-system macros.

#define TINYPROXY_VERSION_MAJOR 0
#define TINYPROXY_VERSION_MINOR 1
#define TINYPROXY_VERSION_PATCH 0
#define TINYPROXY_VERSION_STRING "0.1.0"

// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK in one call (Linux, the BSDs).
#if !defined(TINYPROXY_NO_ACCEPT4) &&                                                              \
    (defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__))
#    define TINYPROXY_HAS_ACCEPT4 1
#else
#    define TINYPROXY_HAS_ACCEPT4 0
#endif

// SOCK_CLOEXEC / SOCK_NONBLOCK flags on socket(2) and pipe2(2).
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
#    define TINYPROXY_HAS_SOCK_FLAGS 1
#else
#    define TINYPROXY_HAS_SOCK_FLAGS 0
#endif

// MSG_NOSIGNAL on send(2); elsewhere (macOS) the SO_NOSIGPIPE socket option does the same job.
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
#    define TINYPROXY_HAS_MSG_NOSIGNAL 1
#else
#    define TINYPROXY_HAS_MSG_NOSIGNAL 0
#endif

// close_range(2), to close every inherited descriptor in a forked child in one call.
#if !defined(TINYPROXY_NO_CLOSE_RANGE) && defined(__linux__)
#    define TINYPROXY_HAS_CLOSE_RANGE 1
#else
#    define TINYPROXY_HAS_CLOSE_RANGE 0
#endif
// ---- end tinyproxy/config.hpp ----
// #include "tinyproxy/bytes.hpp"
// ---- begin tinyproxy/bytes.hpp ----
// Big-endian byte packing: load/store by shifts, a bounds-checked reader and an appending writer.

#include <cstddef>     // std::size_t
#include <cstdint>     // fixed-width integers
#include <string>      // length-prefixed strings
#include <string_view> // views over received bytes
#include <type_traits> // unsigned integer checks
#include <vector>      // the writer's output

// #include "tinyproxy/config.hpp"

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
// ---- end tinyproxy/bytes.hpp ----
// #include "tinyproxy/error.hpp"
// ---- begin tinyproxy/error.hpp ----
// The library's own error conditions as one std::error_category.

#include <string>       // messages
#include <system_error> // error_code, error_category

// #include "tinyproxy/config.hpp"

namespace tinyproxy {

/// Conditions the library itself detects (the operating system's errors stay in
/// std::system_category). Zero is never used: a default error_code means success.
enum class errc {
    invalid_address = 1,      ///< text that is not HOST:PORT, [V6]:PORT or a valid port
    name_not_resolved,        ///< getaddrinfo found no address for a host name
    connect_timeout,          ///< no upstream address connected before the connect deadline
    handshake_timeout,        ///< the client did not finish its handshake in time
    handshake_incomplete,     ///< the client closed before finishing its handshake
    idle_timeout,             ///< no byte moved either way for the idle timeout
    protocol_error,           ///< the client spoke something the mode does not accept
    stopped,                  ///< the proxy was stopped while the operation was waiting
    child_failed,             ///< a session in a forked child ended with an error (fork_policy)
    unsupported_version,      ///< a handshake in a protocol version we do not speak
    unsupported_command,      ///< a request other than CONNECT (SOCKS BIND, UDP ASSOCIATE)
    unsupported_address_type, ///< an address type the protocol does not define
    no_acceptable_method,     ///< no authentication method both sides accept (SOCKS5)
    auth_failed,              ///< wrong or missing credentials
    message_too_large,        ///< a handshake field or header past its hard limit
    method_not_allowed,       ///< an HTTP method other than CONNECT
    not_allowed,              ///< the destination is not allowed by the proxy's rules
};

namespace detail {

class error_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "tinyproxy"; }
    std::string message(int condition) const override {
        switch (static_cast<errc>(condition)) {
        case errc::invalid_address:
            return "invalid address";
        case errc::name_not_resolved:
            return "host name not resolved";
        case errc::connect_timeout:
            return "connect timed out";
        case errc::handshake_timeout:
            return "handshake timed out";
        case errc::handshake_incomplete:
            return "client closed during the handshake";
        case errc::idle_timeout:
            return "idle timeout";
        case errc::protocol_error:
            return "protocol error";
        case errc::stopped:
            return "proxy stopped";
        case errc::child_failed:
            return "session in child process failed";
        case errc::unsupported_version:
            return "unsupported protocol version";
        case errc::unsupported_command:
            return "command not supported";
        case errc::unsupported_address_type:
            return "address type not supported";
        case errc::no_acceptable_method:
            return "no acceptable authentication method";
        case errc::auth_failed:
            return "authentication failed";
        case errc::message_too_large:
            return "handshake message too large";
        case errc::method_not_allowed:
            return "method not allowed";
        case errc::not_allowed:
            return "destination not allowed";
        }
        return "unknown tinyproxy error";
    }
};

} // namespace detail

/// The category of tinyproxy::errc; one object for the whole program (a function-local static
/// in an inline function is shared across translation units).
inline const std::error_category& error_category() noexcept {
    static const detail::error_category_impl category;
    return category;
}

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), error_category()};
}

} // namespace tinyproxy

namespace std {
template <>
struct is_error_code_enum<tinyproxy::errc> : true_type {};
} // namespace std
// ---- end tinyproxy/error.hpp ----
// #include "tinyproxy/address.hpp"
// ---- begin tinyproxy/address.hpp ----
// IPv4/IPv6 addresses and endpoints: parse "host:port" and "[v6]:port", format, resolve names.

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

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"

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
    // "127.1", "2130706433", "0x7f.0.0.1": getaddrinfo reads these as IPv4 addresses, so a
    // rule that looks at numeric hosts before resolving could be walked around. No real
    // host name ends in a label of digits (RFC 3696 section 2); refuse them.
    std::string_view last_label =
        host.substr(host.rfind('.') == std::string_view::npos ? 0 : host.rfind('.') + 1);
    bool numeric_label = !last_label.empty();
    for (char c : last_label) {
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                   c == 'x' || c == 'X';
        numeric_label = numeric_label && hex;
    }
    bool has_digit = last_label.find_first_of("0123456789") != std::string_view::npos;
    if (numeric_label && has_digit) {
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
// ---- end tinyproxy/address.hpp ----
// #include "tinyproxy/detail/sys.hpp"
// ---- begin tinyproxy/detail/sys.hpp ----
// One thin wrapper per system call: (args..., std::error_code&) noexcept, EINTR handled here.

#include <cerrno>       // errno
#include <chrono>       // deadlines
#include <cstddef>      // std::size_t
#include <limits>       // the highest descriptor number
#include <system_error> // std::error_code

#include <fcntl.h>        // fcntl, O_NONBLOCK, FD_CLOEXEC
#include <netinet/in.h>   // IPPROTO_TCP
#include <netinet/tcp.h>  // TCP_NODELAY
#include <poll.h>         // poll
#include <sys/resource.h> // getrlimit
#include <sys/socket.h>   // socket calls
#include <unistd.h>       // close, pipe, read, write
#if TINYPROXY_HAS_CLOSE_RANGE
#    include <sys/syscall.h> // SYS_close_range
#endif

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/error.hpp"

namespace tinyproxy {

/// The one clock every deadline is measured on.
using steady_clock = std::chrono::steady_clock;
using time_point = steady_clock::time_point;

namespace detail {

/// errno as an error_code: the one place the library reads errno.
inline std::error_code last_error() noexcept { return {errno, std::system_category()}; }

inline bool would_block(const std::error_code& ec) noexcept {
    return ec == std::errc::operation_would_block ||
           ec == std::errc::resource_unavailable_try_again;
}

/// close(2), never retried: after EINTR the descriptor is already gone on Linux, and a retry
/// could close a descriptor another thread has just been given.
inline void close_fd(int fd) noexcept {
    if (fd >= 0) {
        ::close(fd);
    }
}

inline bool set_cloexec(int fd, std::error_code& ec) noexcept {
    int flags = ::fcntl(fd, F_GETFD);
    if (flags < 0 || ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

inline bool set_nonblocking(int fd, bool on, std::error_code& ec) noexcept {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0) {
        ec = last_error();
        return false;
    }
    int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    if (wanted != flags && ::fcntl(fd, F_SETFL, wanted) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

/// A socket with close-on-exec set (so a fork+exec elsewhere in the program never inherits it)
/// and, where the platform asks for it, SO_NOSIGPIPE.
inline int open_socket(int family, int type, bool nonblocking, std::error_code& ec) noexcept {
#if TINYPROXY_HAS_SOCK_FLAGS
    int fd = ::socket(family, type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) {
        ec = last_error();
    }
    return fd;
#else
    int fd = ::socket(family, type, 0);
    if (fd < 0) {
        ec = last_error();
        return -1;
    }
    if (!set_cloexec(fd, ec) || (nonblocking && !set_nonblocking(fd, true, ec))) {
        close_fd(fd);
        return -1;
    }
#    ifdef SO_NOSIGPIPE
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#    endif
    return fd;
#endif
}

/// accept4(2) with SOCK_CLOEXEC, and SOCK_NONBLOCK when asked; EINTR retried, and ECONNABORTED
/// (a client that reset before we accepted it) reported as "would block" so callers just move on.
inline int accept_socket(int listen_fd, sockaddr_storage& peer, bool nonblocking,
                         std::error_code& ec) noexcept {
    for (;;) {
        socklen_t length = sizeof peer;
#if TINYPROXY_HAS_ACCEPT4
        int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &length,
                           SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0));
#else
        int fd = ::accept(listen_fd, reinterpret_cast<sockaddr*>(&peer), &length);
        if (fd >= 0 && (!set_cloexec(fd, ec) || !set_nonblocking(fd, nonblocking, ec))) {
            close_fd(fd);
            return -1;
        }
#endif
        if (fd >= 0) {
            return fd;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == ECONNABORTED) {
            ec = std::make_error_code(std::errc::resource_unavailable_try_again);
            return -1;
        }
        ec = last_error();
        return -1;
    }
}

/// connect(2) on a non-blocking socket: true when connected at once; false with ec empty when
/// the connection is in progress; false with ec set on failure.
inline bool start_connect(int fd, const sockaddr* address, socklen_t length,
                          std::error_code& ec) noexcept {
    if (::connect(fd, address, length) == 0) {
        return true;
    }
    // EINTR on connect means the attempt goes on in the background, like EINPROGRESS.
    if (errno == EINPROGRESS || errno == EINTR) {
        return false;
    }
    ec = last_error();
    return false;
}

/// The socket's pending error (SO_ERROR, which reading clears): the outcome of a non-blocking
/// connect once the socket is writable, or a reset that no read or write has reported yet.
inline std::error_code connect_result(int fd) noexcept {
    int error = 0;
    socklen_t length = sizeof error;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) < 0) {
        return last_error();
    }
    return {error, std::system_category()};
}

/// recv(2): the count read (0 means end of stream); EINTR retried; EAGAIN comes back as an
/// error for which would_block() is true.
inline std::size_t recv_some(int fd, void* data, std::size_t size, std::error_code& ec,
                             int flags = 0) noexcept {
    for (;;) {
        ssize_t n = ::recv(fd, data, size, flags);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
}

/// send(2) that never raises SIGPIPE; EINTR retried.
inline std::size_t send_some(int fd, const void* data, std::size_t size, std::error_code& ec,
                             int flags = 0) noexcept {
#if TINYPROXY_HAS_MSG_NOSIGNAL
    flags |= MSG_NOSIGNAL;
#endif // elsewhere SO_NOSIGPIPE was set when the socket was made
    for (;;) {
        ssize_t n = ::send(fd, data, size, flags);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
}

inline bool shutdown_socket(int fd, int how, std::error_code& ec) noexcept {
    if (::shutdown(fd, how) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

inline bool set_int_option(int fd, int level, int name, int value, std::error_code& ec) noexcept {
    if (::setsockopt(fd, level, name, &value, sizeof value) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

/// `now + wait`, saturating at the largest time point: a timeout of milliseconds::max()
/// means "never", not an overflow.
template <class Rep, class Period>
time_point deadline_after(time_point now, std::chrono::duration<Rep, Period> wait) noexcept {
    if (wait <= wait.zero()) {
        return now;
    }
    auto room = time_point::max() - now;
    if (std::chrono::duration_cast<std::chrono::duration<double>>(wait).count() >=
        std::chrono::duration_cast<std::chrono::duration<double>>(room).count()) {
        return time_point::max();
    }
    return now + std::chrono::duration_cast<steady_clock::duration>(wait);
}

/// Milliseconds from now until `until`, rounded up and clamped to what poll(2) takes;
/// -1 (wait forever) for the largest time point.
inline int poll_timeout_ms(time_point until) noexcept {
    if (until == time_point::max()) {
        return -1;
    }
    auto now = steady_clock::now();
    if (until <= now) {
        return 0;
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count() + 1;
    return ms > 60'000 ? 60'000 : static_cast<int>(ms);
}

/// poll(2) until `until`. Returns the count of ready descriptors, 0 on timeout, and 0 as well
/// when a signal interrupted it: callers loop on their own deadline, so an EINTR is simply an
/// early return, never an error.
inline int poll_fds(pollfd* fds, nfds_t count, time_point until, std::error_code& ec) noexcept {
    int n = ::poll(fds, count, poll_timeout_ms(until));
    if (n < 0) {
        if (errno == EINTR) {
            return 0;
        }
        ec = last_error();
        return 0;
    }
    return n;
}

/// A pipe with both ends close-on-exec.
inline bool make_pipe(int (&fds)[2], std::error_code& ec) noexcept {
#if TINYPROXY_HAS_SOCK_FLAGS
    if (::pipe2(fds, O_CLOEXEC) < 0) {
        ec = last_error();
        return false;
    }
    return true;
#else
    if (::pipe(fds) < 0) {
        ec = last_error();
        return false;
    }
    if (!set_cloexec(fds[0], ec) || !set_cloexec(fds[1], ec)) {
        close_fd(fds[0]);
        close_fd(fds[1]);
        return false;
    }
    return true;
#endif
}

/// Closes descriptors first..last; false when the platform cannot do it in one call.
inline bool close_fd_range(int first, int last) noexcept {
#if TINYPROXY_HAS_CLOSE_RANGE && defined(SYS_close_range)
    return ::syscall(SYS_close_range, static_cast<unsigned>(first), static_cast<unsigned>(last),
                     0u) == 0;
#else
    (void)first;
    (void)last;
    return false;
#endif
}

/// Closes every descriptor from 3 on except those in `keep` (ascending). A forked child calls
/// it so that it holds nothing of its parent's: a socket the parent closes must really close.
inline void close_descriptors_except(const int* keep, std::size_t count) noexcept {
    rlimit limit{};
    int highest = 65535;
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
        limit.rlim_cur < 1048576) {
        highest = static_cast<int>(limit.rlim_cur) - 1;
    }
    int first = 3;
    for (std::size_t i = 0; i <= count; ++i) {
        int last = i < count ? keep[i] - 1 : highest;
        int range_end = i < count ? last : std::numeric_limits<int>::max();
        if (last >= first && !close_fd_range(first, range_end)) {
            for (int fd = first; fd <= last; ++fd) {
                ::close(fd);
            }
        }
        if (i < count && keep[i] + 1 > first) {
            first = keep[i] + 1;
        }
    }
}

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/detail/sys.hpp ----
// #include "tinyproxy/socket.hpp"
// ---- begin tinyproxy/socket.hpp ----
// RAII descriptors and TCP sockets: listen, accept, connect with a deadline, send, receive.

#include <cstddef>      // std::size_t
#include <string>       // error messages
#include <system_error> // error reporting
#include <utility>      // std::exchange
#include <vector>       // address lists

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"

namespace tinyproxy {

/// Owns one descriptor and closes it exactly once. Move-only; a moved-from handle is empty.
class unique_fd {
public:
    constexpr unique_fd() noexcept = default;
    constexpr explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& other) noexcept {
        if (this != &other) {
            reset(std::exchange(other.fd_, -1));
        }
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { detail::close_fd(fd_); }

    constexpr int get() const noexcept { return fd_; }
    constexpr explicit operator bool() const noexcept { return fd_ >= 0; }
    /// Gives up ownership without closing.
    int release() noexcept { return std::exchange(fd_, -1); }
    /// Closes the held descriptor (if any) and takes `fd`.
    void reset(int fd = -1) noexcept { detail::close_fd(std::exchange(fd_, fd)); }

private:
    int fd_ = -1;
};

/// A connected TCP socket.
class socket {
public:
    socket() noexcept = default;
    explicit socket(unique_fd fd) noexcept : fd_(std::move(fd)) {}

    int native_handle() const noexcept { return fd_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(fd_); }
    unique_fd release() noexcept { return std::move(fd_); }
    void close() noexcept { fd_.reset(); }

    /// Reads what is there (0 means the peer finished sending). On a non-blocking socket with
    /// nothing to read, ec is would_block.
    std::size_t receive(void* data, std::size_t size, std::error_code& ec) noexcept {
        ec.clear();
        return detail::recv_some(fd_.get(), data, size, ec);
    }
    /// Writes what fits; never raises SIGPIPE.
    std::size_t send(const void* data, std::size_t size, std::error_code& ec) noexcept {
        ec.clear();
        return detail::send_some(fd_.get(), data, size, ec);
    }
    /// Writes all of `bytes`, waiting up to `until` for room. Returns the count written.
    std::size_t send_all(byte_view bytes, time_point until, std::error_code& ec) noexcept;
    /// Reads at least one byte, waiting up to `until`. Returns 0 at end of stream.
    std::size_t receive_some(void* data, std::size_t size, time_point until,
                             std::error_code& ec) noexcept;

    /// Says "no more data from us": the peer reads end of stream, and can still send.
    void shutdown_write(std::error_code& ec) noexcept {
        ec.clear();
        detail::shutdown_socket(fd_.get(), SHUT_WR, ec);
    }
    void set_nonblocking(bool on, std::error_code& ec) noexcept {
        ec.clear();
        detail::set_nonblocking(fd_.get(), on, ec);
    }
    /// Sends small writes at once instead of batching them (Nagle off): a proxy must not add
    /// delay to interactive traffic.
    void set_nodelay(bool on, std::error_code& ec) noexcept {
        ec.clear();
        detail::set_int_option(fd_.get(), IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0, ec);
    }
    /// Closing with SO_LINGER 0 sends a reset instead of a FIN: how a proxy passes on a reset.
    void set_linger_reset(std::error_code& ec) noexcept;

    endpoint local_endpoint(std::error_code& ec) const noexcept;
    endpoint remote_endpoint(std::error_code& ec) const noexcept;

private:
    unique_fd fd_;
};

/// A listening TCP socket.
class listener {
public:
    listener() noexcept = default;

    /// Binds `where` (SO_REUSEADDR on; an IPv6 listener takes IPv6 only) and listens.
    static listener open(const endpoint& where, int backlog, std::error_code& ec) noexcept;
    /// As above; throws std::system_error naming the address.
    static listener open(const endpoint& where, int backlog = 1024);

    /// Takes one pending client. A non-blocking listener with none pending gives would_block.
    /// The client socket is close-on-exec, and non-blocking when `nonblocking` is set.
    socket accept(endpoint& peer, bool nonblocking, std::error_code& ec) noexcept;

    int native_handle() const noexcept { return fd_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(fd_); }
    void set_nonblocking(bool on, std::error_code& ec) noexcept {
        ec.clear();
        detail::set_nonblocking(fd_.get(), on, ec);
    }
    /// The bound address, with the real port when port 0 was asked for.
    endpoint local_endpoint() const noexcept { return local_; }
    void close() noexcept { fd_.reset(); }

private:
    unique_fd fd_;
    endpoint local_;
};

/// Starts a non-blocking connect to `to`. On return either the socket is connecting or
/// connected (ec empty; `connected` tells which) or ec says why it failed at once.
socket start_connect(const endpoint& to, bool& connected, std::error_code& ec) noexcept;

/// Connects to `to`, giving up at `until` (errc::connect_timeout). The socket comes back
/// non-blocking.
socket connect(const endpoint& to, time_point until, std::error_code& ec) noexcept;

/// Tries each address in turn until one connects; every attempt shares the one deadline.
/// The error is the last attempt's.
socket connect(const std::vector<endpoint>& candidates, time_point until,
               std::error_code& ec) noexcept;

/// Resolves `target` (blocking: for callers with a thread to spare) and connects to each
/// address in turn.
socket connect(const host_port& target, time_point until, std::error_code& ec);

// ---------------------------------------------------------------------------------------------

namespace detail {

/// Waits until `fd` is ready for `events` or `until` passes (errc::connect_timeout is not
/// right for every caller, so the timeout is reported as std::errc::timed_out).
inline bool wait_for(int fd, short events, time_point until, std::error_code& ec) noexcept {
    for (;;) {
        pollfd entry{fd, events, 0};
        int ready = poll_fds(&entry, 1, until, ec);
        if (ec) {
            return false;
        }
        if (ready > 0) {
            return true;
        }
        if (steady_clock::now() >= until) {
            ec = std::make_error_code(std::errc::timed_out);
            return false;
        }
    }
}

/// getsockname(2) or getpeername(2) as an endpoint.
inline endpoint socket_name(int fd, bool peer, std::error_code& ec) noexcept {
    ec.clear();
    sockaddr_storage storage{};
    socklen_t length = sizeof storage;
    auto* address = reinterpret_cast<sockaddr*>(&storage);
    int status = peer ? ::getpeername(fd, address, &length) : ::getsockname(fd, address, &length);
    if (status < 0) {
        ec = last_error();
        return {};
    }
    return from_sockaddr(address, length);
}

} // namespace detail

inline std::size_t socket::send_all(byte_view bytes, time_point until,
                                    std::error_code& ec) noexcept {
    ec.clear();
    std::size_t sent = 0;
    while (sent < bytes.size()) {
        // MSG_DONTWAIT: even on a blocking socket the wait is ours, with its deadline.
        std::size_t n = detail::send_some(native_handle(), bytes.data() + sent, bytes.size() - sent,
                                          ec, MSG_DONTWAIT);
        if (ec && detail::would_block(ec)) {
            ec.clear();
            if (!detail::wait_for(native_handle(), POLLOUT, until, ec)) {
                return sent;
            }
            continue;
        }
        if (ec) {
            return sent;
        }
        sent += n;
    }
    return sent;
}

inline std::size_t socket::receive_some(void* data, std::size_t size, time_point until,
                                        std::error_code& ec) noexcept {
    ec.clear();
    for (;;) {
        std::size_t n = detail::recv_some(native_handle(), data, size, ec, MSG_DONTWAIT);
        if (!ec || !detail::would_block(ec)) {
            return n;
        }
        ec.clear();
        if (!detail::wait_for(native_handle(), POLLIN, until, ec)) {
            return 0;
        }
    }
}

inline void socket::set_linger_reset(std::error_code& ec) noexcept {
    ec.clear();
    ::linger option{1, 0};
    if (::setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &option, sizeof option) < 0) {
        ec = detail::last_error();
    }
}

inline endpoint socket::local_endpoint(std::error_code& ec) const noexcept {
    return detail::socket_name(fd_.get(), false, ec);
}

inline endpoint socket::remote_endpoint(std::error_code& ec) const noexcept {
    return detail::socket_name(fd_.get(), true, ec);
}

inline listener listener::open(const endpoint& where, int backlog, std::error_code& ec) noexcept {
    ec.clear();
    int family = where.address.is_v6() ? AF_INET6 : AF_INET;
    unique_fd fd(detail::open_socket(family, SOCK_STREAM, false, ec));
    if (ec) {
        return {};
    }
    // SO_REUSEADDR: a restarted proxy can bind while old connections sit in TIME_WAIT.
    if (!detail::set_int_option(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, ec)) {
        return {};
    }
    // An IPv6 listener serves IPv6 only, so "[::]:P" and "0.0.0.0:P" can both be bound.
    if (family == AF_INET6 && !detail::set_int_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, ec)) {
        return {};
    }
    sockaddr_storage storage{};
    socklen_t length = to_sockaddr(where, storage);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) < 0 ||
        ::listen(fd.get(), backlog) < 0) {
        ec = detail::last_error();
        return {};
    }
    listener out;
    out.local_ = detail::socket_name(fd.get(), false, ec);
    if (ec) {
        return {};
    }
    out.fd_ = std::move(fd);
    return out;
}

inline listener listener::open(const endpoint& where, int backlog) {
    std::error_code ec;
    listener out = open(where, backlog, ec);
    if (ec) {
        throw std::system_error(ec, "cannot listen on " + where.to_string());
    }
    return out;
}

inline socket listener::accept(endpoint& peer, bool nonblocking, std::error_code& ec) noexcept {
    ec.clear();
    sockaddr_storage storage{};
    int fd = detail::accept_socket(fd_.get(), storage, nonblocking, ec);
    if (fd < 0) {
        return {};
    }
    peer = from_sockaddr(reinterpret_cast<sockaddr*>(&storage), sizeof storage);
    return socket(unique_fd(fd));
}

inline socket start_connect(const endpoint& to, bool& connected, std::error_code& ec) noexcept {
    ec.clear();
    connected = false;
    int family = to.address.is_v6() ? AF_INET6 : AF_INET;
    unique_fd fd(detail::open_socket(family, SOCK_STREAM, true, ec));
    if (ec) {
        return {};
    }
    sockaddr_storage storage{};
    socklen_t length = to_sockaddr(to, storage);
    connected = detail::start_connect(fd.get(), reinterpret_cast<sockaddr*>(&storage), length, ec);
    if (ec) {
        return {};
    }
    return socket(std::move(fd));
}

inline socket connect(const endpoint& to, time_point until, std::error_code& ec) noexcept {
    bool connected = false;
    socket s = start_connect(to, connected, ec);
    if (ec || connected) {
        return s;
    }
    if (!detail::wait_for(s.native_handle(), POLLOUT, until, ec)) {
        if (ec == std::errc::timed_out) {
            ec = errc::connect_timeout;
        }
        return {};
    }
    ec = detail::connect_result(s.native_handle());
    if (ec) {
        return {};
    }
    return s;
}

inline socket connect(const std::vector<endpoint>& candidates, time_point until,
                      std::error_code& ec) noexcept {
    ec = errc::name_not_resolved; // what an empty list means
    for (const endpoint& candidate : candidates) {
        ec.clear();
        socket s = connect(candidate, until, ec);
        if (!ec) {
            return s;
        }
        if (ec == errc::connect_timeout) {
            break; // the shared deadline has passed: no time left for the others
        }
    }
    return {};
}

inline socket connect(const host_port& target, time_point until, std::error_code& ec) {
    auto candidates = resolve(target, ec);
    if (ec) {
        return {};
    }
    return connect(candidates, until, ec);
}

} // namespace tinyproxy
// ---- end tinyproxy/socket.hpp ----
// #include "tinyproxy/protocol/step.hpp"
// ---- begin tinyproxy/protocol/step.hpp ----
// handshake_step: what a sans-I/O handshake parser answers each time it is fed bytes.

#include <cstdint>      // bytes
#include <string>       // credentials
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // byte buffers

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"

namespace tinyproxy {

/// A user name and password, as SOCKS5 (RFC 1929) and HTTP Basic carry them.
struct credentials {
    std::string username;
    std::string password;
};

/// The answer of a handshake (a SOCKS or HTTP CONNECT parser, or a Mode's session) to the bytes
/// it has been fed so far. The caller does the I/O: it sends `to_client` (whatever the action),
/// then, for need_more, feeds the client's next bytes; for connect, connects to `target` and
/// sends `to_upstream` before anything else; for fail, closes once `to_client` is out.
struct handshake_step {
    enum class action {
        need_more, ///< send `to_client` (if any), then feed the client's next bytes
        connect,   ///< connect to `target`, then send `to_upstream` first
        fail,      ///< send `to_client` (if any), then close; `error` says why
    };
    action what = action::need_more;
    std::vector<std::uint8_t> to_client;
    host_port target;
    /// For connect: bytes the client sent after its request (pipelined), to go upstream first
    /// and in order. A parser never drops them.
    std::vector<std::uint8_t> to_upstream;
    std::error_code error;

    static handshake_step need_more(std::vector<std::uint8_t> reply = {}) {
        handshake_step s;
        s.to_client = std::move(reply);
        return s;
    }
    static handshake_step connect_to(host_port where, std::vector<std::uint8_t> first_bytes = {}) {
        handshake_step s;
        s.what = action::connect;
        s.target = std::move(where);
        s.to_upstream = std::move(first_bytes);
        return s;
    }
    static handshake_step fail(std::error_code why, std::vector<std::uint8_t> reply = {}) {
        handshake_step s;
        s.what = action::fail;
        s.error = why;
        s.to_client = std::move(reply);
        return s;
    }
};

} // namespace tinyproxy
// ---- end tinyproxy/protocol/step.hpp ----
// #include "tinyproxy/relay.hpp"
// ---- begin tinyproxy/relay.hpp ----
// The one relay engine: moves bytes both ways between two non-blocking sockets, with bounded
// buffers, half-close and reset propagation, and byte counts.

#include <cstddef>      // std::size_t
#include <cstdint>      // byte counters
#include <system_error> // std::error_code
#include <vector>       // pending bytes

#include <poll.h>       // POLLIN, POLLOUT
#include <sys/socket.h> // SHUT_WR

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/detail/sys.hpp"

namespace tinyproxy {

/// A relay between a client and an upstream socket, as a state machine with no waiting of its
/// own: `pump()` moves whatever can move now, `client_events()` / `upstream_events()` say what
/// to wait for next (POLLIN / POLLOUT), and the caller waits however it likes: a poll(2) over two
/// descriptors on a thread, or an event loop over thousands. Every policy drives this one class.
///
/// Rules it keeps:
/// - bytes read from one side are written to the other in order, and none is dropped: at most
///   one read's worth waits per direction, and reading stops until it has been written;
/// - end of stream from one side becomes shutdown(SHUT_WR) on the other once everything read
///   before it has been written; the other direction carries on (half-close);
/// - a reset or error on either side ends the relay (`failed()`), and the caller closes both
///   sockets, the still-open one with a reset (`SO_LINGER` 0) so the peer learns of it.
///
/// Buffers are lazy: bytes are read into the caller's scratch buffer and written straight on;
/// only what the destination would not take is copied into a per-direction buffer, which is
/// freed again once drained. An idle tunnel holds no buffer at all.
class relay {
public:
    relay(int client_fd, int upstream_fd) noexcept
        : halves_{half{client_fd, upstream_fd, {}, 0, false, false, 0},
                  half{upstream_fd, client_fd, {}, 0, false, false, 0}} {}

    /// Bytes to send upstream before anything read from the client: what a client pipelined
    /// behind its handshake, or a PROXY protocol header.
    void prime_upstream(byte_view bytes) { (void)keep(halves_[0], bytes); }
    /// Bytes to send to the client before anything read from upstream.
    void prime_client(byte_view bytes) { (void)keep(halves_[1], bytes); }

    /// Moves every byte that can move now without blocking, using `scratch` for reads (its size
    /// bounds one read, and so the bytes buffered per direction). Returns true when anything
    /// happened (bytes moved, end of stream seen): the caller's idle clock restarts.
    bool pump(std::uint8_t* scratch, std::size_t scratch_size) noexcept;

    /// What to wait for on the client socket next: POLLIN, POLLOUT, both, or 0.
    short client_events() const noexcept { return events_on(0); }
    /// What to wait for on the upstream socket next.
    short upstream_events() const noexcept { return events_on(1); }
    /// Whether to keep the client socket in the poll set even when client_events() is 0: a
    /// client that has half-closed can still reset, and poll reports that (POLLERR/POLLHUP)
    /// only for descriptors it watches. False once nothing more will be written to the client,
    /// which is also when POLLHUP alone could no longer mean an error.
    bool watch_client() const noexcept {
        return client_events() != 0 || (!finished() && !halves_[1].done);
    }
    bool watch_upstream() const noexcept {
        return upstream_events() != 0 || (!finished() && !halves_[0].done);
    }

    /// Both directions have ended cleanly, or one side failed.
    bool finished() const noexcept { return failed() || (halves_[0].done && halves_[1].done); }
    bool failed() const noexcept { return static_cast<bool>(error_); }
    /// The reset or error that ended the relay; empty for a clean finish.
    std::error_code error() const noexcept { return error_; }
    /// True when the error came from the client's socket, false when from the upstream's.
    bool error_on_client() const noexcept { return error_on_client_; }

    std::uint64_t bytes_to_upstream() const noexcept { return halves_[0].bytes_written; }
    std::uint64_t bytes_to_client() const noexcept { return halves_[1].bytes_written; }
    /// Bytes waiting for a slow destination (per direction at most one scratch buffer's worth).
    std::size_t bytes_buffered() const noexcept {
        return halves_[0].pending.size() - halves_[0].pending_offset + halves_[1].pending.size() -
               halves_[1].pending_offset;
    }

private:
    /// One direction: bytes read from `from`, written to `to`.
    struct half {
        int from;
        int to;
        std::vector<std::uint8_t> pending; // read but not yet written; empty when idle
        std::size_t pending_offset;        // how much of `pending` has been written
        bool eof;                          // `from` said end of stream
        bool done;                         // ... and `to` has been shut down for writing
        std::uint64_t bytes_written;
    };

    static void append(half& h, byte_view bytes) {
        h.pending.insert(h.pending.end(), bytes.begin(), bytes.end());
    }
    bool has_pending(const half& h) const noexcept { return h.pending_offset < h.pending.size(); }
    short events_on(int side) const noexcept;
    bool pump_half(half& h, std::uint8_t* scratch, std::size_t scratch_size) noexcept;
    /// Writes what is pending; false when the destination is full or failed.
    bool flush(half& h, bool& progressed) noexcept;
    void probe_half_closed(int side) noexcept;
    /// Copies bytes the destination has not taken yet into the direction's own buffer.
    bool keep(half& h, byte_view rest) noexcept;
    void fail(const std::error_code& ec, int fd) noexcept {
        if (!error_) {
            error_ = ec;
            error_on_client_ = fd == halves_[0].from;
        }
    }

    half halves_[2]; // [0] client -> upstream, [1] upstream -> client
    std::error_code error_;
    bool error_on_client_ = false;
};

// ---------------------------------------------------------------------------------------------

inline short relay::events_on(int side) const noexcept {
    if (finished()) {
        return 0;
    }
    // Side 0 is the client: it is the source of halves_[0] and the destination of halves_[1].
    const half& outgoing = halves_[side];     // reads from this side
    const half& incoming = halves_[1 - side]; // writes to this side
    short events = 0;
    if (!outgoing.eof && !has_pending(outgoing)) {
        events |= POLLIN;
    }
    if (has_pending(incoming)) {
        events |= POLLOUT;
    }
    return events;
}

inline bool relay::flush(half& h, bool& progressed) noexcept {
    while (has_pending(h)) {
        std::error_code ec;
        std::size_t n = detail::send_some(h.to, h.pending.data() + h.pending_offset,
                                          h.pending.size() - h.pending_offset, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                fail(ec, h.to);
            }
            return false;
        }
        h.pending_offset += n;
        h.bytes_written += n;
        progressed = true;
    }
    if (!h.pending.empty()) {
        // Drained: give the memory back, so an idle tunnel costs no buffer.
        std::vector<std::uint8_t>().swap(h.pending);
        h.pending_offset = 0;
    }
    return true;
}

inline bool relay::keep(half& h, byte_view rest) noexcept {
    try {
        append(h, rest);
        return true;
    } catch (...) { // out of memory ends this tunnel, not the proxy
        fail(std::make_error_code(std::errc::not_enough_memory), h.from);
        return false;
    }
}

inline bool relay::pump_half(half& h, std::uint8_t* scratch, std::size_t scratch_size) noexcept {
    bool progressed = false;
    // A few rounds at most, so that in an event loop one fast tunnel cannot starve the others;
    // level-triggered readiness brings us straight back if there is more.
    for (int round = 0; round < 4; ++round) {
        if (!flush(h, progressed) || h.eof) {
            break;
        }
        std::error_code ec;
        std::size_t n = detail::recv_some(h.from, scratch, scratch_size, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                fail(ec, h.from);
            }
            break;
        }
        progressed = true;
        if (n == 0) {
            h.eof = true;
            break;
        }
        // Write straight from scratch; keep only what the destination would not take.
        std::size_t written = detail::send_some(h.to, scratch, n, ec);
        if (ec && !detail::would_block(ec)) {
            fail(ec, h.to);
            break;
        }
        written = ec ? 0 : written;
        h.bytes_written += written;
        if (written < n) {
            keep(h, byte_view{scratch + written, n - written});
            break;
        }
    }
    // End of stream passes on once everything read before it has been written.
    if (h.eof && !h.done && !has_pending(h) && !failed()) {
        std::error_code ignored; // the peer may be gone already; its reset shows on a read
        detail::shutdown_socket(h.to, SHUT_WR, ignored);
        h.done = true;
        progressed = true;
    }
    return progressed;
}

inline void relay::probe_half_closed(int side) noexcept {
    // The side has said end of stream and has nothing to receive: no read or write will show
    // its reset, so ask the socket for a pending error.
    const half& outgoing = halves_[side];
    if (outgoing.eof && events_on(side) == 0 && !halves_[1 - side].done) {
        std::error_code ec = detail::connect_result(outgoing.from);
        if (ec) {
            fail(ec, outgoing.from);
        }
    }
}

inline bool relay::pump(std::uint8_t* scratch, std::size_t scratch_size) noexcept {
    bool progressed = false;
    probe_half_closed(0);
    probe_half_closed(1);
    for (half& h : halves_) {
        if (!h.done && !failed()) {
            progressed = pump_half(h, scratch, scratch_size) || progressed;
        }
    }
    return progressed || failed();
}

} // namespace tinyproxy
// ---- end tinyproxy/relay.hpp ----
// #include "tinyproxy/session.hpp"
// ---- begin tinyproxy/session.hpp ----
// One proxied connection as a state machine: handshake (the Mode decides where to go), resolve,
// connect with a deadline, relay; plus the loop that drives one session on a thread or process.

#include <chrono>       // timeouts
#include <cstddef>      // std::size_t
#include <cstdint>      // byte counters
#include <optional>     // the relay, once connected
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // byte buffers, address lists

#include <poll.h> // pollfd

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/protocol/step.hpp"
// #include "tinyproxy/relay.hpp"

namespace tinyproxy {

/// Limits every session keeps, whatever the policy.
struct session_options {
    /// From the first connect attempt to the last address giving up.
    std::chrono::milliseconds connect_timeout{10'000};
    /// From accept to the Mode deciding where the client goes.
    std::chrono::milliseconds handshake_timeout{10'000};
    /// A tunnel in which no byte moves either way for this long is closed.
    std::chrono::milliseconds idle_timeout{300'000};
    /// The most one read takes, and so the most buffered per direction (0 counts as 1).
    std::size_t buffer_size = 64 * 1024;
};

/// What a Mode knows about a new client.
struct session_info {
    endpoint client; ///< the client's address
    endpoint local;  ///< the address the client connected to
};

/// What a Mode's session answers at each step of its handshake (see handshake_step).
using mode_step = handshake_step;

/// A client just accepted, before its session starts.
struct accepted_client {
    socket connection;
    endpoint peer;
};

/// What waiting for the next client ended with.
enum class accept_status {
    client,  ///< a client was accepted
    timeout, ///< the wait's deadline passed first
    stopped, ///< the proxy is stopping: the policy should wind down
};

/// How a session ended.
struct session_result {
    /// How far a session got before it ended.
    enum class stage_type {
        handshake, ///< the Mode had not decided where to go
        connect,   ///< resolving or connecting upstream
        relay,     ///< the tunnel was up
    };

    std::error_code error; ///< empty when both directions finished cleanly
    std::uint64_t bytes_to_upstream = 0;
    std::uint64_t bytes_to_client = 0;
    bool connected = false; ///< an upstream connection was made
    stage_type stage = stage_type::handshake;
    endpoint client;    ///< the client, as accepted
    host_port target;   ///< where the Mode sent it (empty before it decided)
    endpoint upstream;  ///< the address connected to, once connected
    time_point started; ///< when the session started
    time_point ended;   ///< when it ended
};

/// One client's session, driven by readiness: the driver waits for `client_events()` on
/// `client_fd()`, `upstream_events()` on `upstream_fd()` and for `deadline()`, then calls
/// `on_ready()` or `on_deadline()`; when `wants_resolve()` it resolves `resolve_target()` in a
/// way that suits it and calls `on_resolved()`. It never blocks and never reads the clock.
///
/// `ModeSession` is a Mode's per-client handshake object:
///     mode_step start();                             // before any byte is read
///     mode_step on_client_data(byte_view bytes);     // after need_more: the next bytes
///     std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
///                                            const endpoint& upstream); // reply to the client
template <class ModeSession>
class basic_session {
public:
    basic_session(socket client, ModeSession mode, const session_options& limits,
                  const endpoint& client_address =
                      {}) noexcept(std::is_nothrow_move_constructible<ModeSession>::value)
        : client_(std::move(client)), mode_(std::move(mode)), limits_(limits) {
        result_.client = client_address;
    }

    /// Starts the handshake; `now` begins the handshake deadline.
    void start(time_point now);

    int client_fd() const noexcept { return client_.native_handle(); }
    /// -1 until an upstream connection is being made.
    int upstream_fd() const noexcept { return upstream_ ? upstream_.native_handle() : -1; }
    short client_events() const noexcept;
    short upstream_events() const noexcept;
    /// Whether to poll a socket even when its events are 0 (to hear of a reset).
    bool watch_client() const noexcept {
        return state_ == state::relaying ? relay_->watch_client() : client_events() != 0;
    }
    bool watch_upstream() const noexcept {
        return state_ == state::relaying ? relay_->watch_upstream() : upstream_events() != 0;
    }
    time_point deadline() const noexcept { return deadline_; }

    bool wants_resolve() const noexcept { return state_ == state::resolving; }
    const host_port& resolve_target() const noexcept { return target_; }
    void on_resolved(std::vector<endpoint> candidates, std::error_code ec, time_point now);

    /// Readiness (revents) for each socket; 0 for one that is not ready.
    void on_ready(short client_revents, short upstream_revents, time_point now,
                  std::uint8_t* scratch, std::size_t scratch_size);
    /// Call when `now` has reached `deadline()`.
    void on_deadline(time_point now);
    /// Ends the session at once (the proxy is stopping, or the driver failed).
    void abort(std::error_code why) noexcept { finish(why); }

    bool done() const noexcept { return state_ == state::done; }
    const session_result& result() const noexcept { return result_; }
    const host_port& target() const noexcept { return target_; }

private:
    enum class state {
        handshaking, // reading the client until the Mode decides
        resolving,   // waiting for the driver to resolve target_
        connecting,  // a non-blocking connect to candidates_[next_candidate_ - 1] in progress
        relaying,    // tunnel up
        failing,     // sending the Mode's failure reply, then closing
        done,
    };

    void apply(mode_step step, time_point now);
    void begin_connect(time_point now);
    void try_next_candidate();
    void on_connect_result(std::error_code ec, time_point now);
    void start_relay(std::vector<std::uint8_t> reply, time_point now);
    void fail_with_reply(std::error_code why, std::vector<std::uint8_t> reply, time_point now);
    void handshake_ready(short revents, time_point now, std::uint8_t* scratch,
                         std::size_t scratch_size);
    bool send_to_client(); // writes to_client_; false on error
    void relay_ready(time_point now, std::uint8_t* scratch, std::size_t scratch_size);
    void finish(std::error_code why) noexcept;

    socket client_;
    socket upstream_;
    ModeSession mode_;
    session_options limits_;
    state state_ = state::handshaking;
    time_point deadline_ = time_point::max();
    time_point connect_deadline_ = time_point::max();
    host_port target_;
    std::vector<endpoint> candidates_;
    std::size_t next_candidate_ = 0;
    std::error_code last_connect_error_;
    std::vector<std::uint8_t> to_client_;
    std::size_t to_client_offset_ = 0;
    std::vector<std::uint8_t> to_upstream_;
    std::optional<relay> relay_;
    session_result result_;
    time_point now_{}; // the latest time a driver passed in
};

/// Runs one session to its end on the calling thread, waiting with poll(2). It ends early when
/// `stop_fd` becomes readable (the proxy's stop signal; -1 for none). Names are resolved here,
/// blocking this thread only.
template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd,
                           std::size_t scratch_size);

// ---------------------------------------------------------------------------------------------

template <class ModeSession>
void basic_session<ModeSession>::start(time_point now) {
    now_ = now;
    std::error_code ec;
    client_.set_nonblocking(true, ec);
    if (ec) {
        finish(ec);
        return;
    }
    result_.started = now;
    deadline_ = detail::deadline_after(now, limits_.handshake_timeout);
    apply(mode_.start(), now);
}

template <class ModeSession>
short basic_session<ModeSession>::client_events() const noexcept {
    switch (state_) {
    case state::handshaking:
        return to_client_offset_ < to_client_.size() ? POLLOUT : POLLIN;
    case state::failing:
        return POLLOUT;
    case state::relaying:
        return relay_->client_events();
    default:
        return 0;
    }
}

template <class ModeSession>
short basic_session<ModeSession>::upstream_events() const noexcept {
    switch (state_) {
    case state::connecting:
        return POLLOUT;
    case state::relaying:
        return relay_->upstream_events();
    default:
        return 0;
    }
}

template <class ModeSession>
void basic_session<ModeSession>::apply(mode_step step, time_point now) {
    to_client_ = std::move(step.to_client);
    to_client_offset_ = 0;
    switch (step.what) {
    case mode_step::action::need_more:
        send_to_client();
        return;
    case mode_step::action::connect:
        result_.stage = session_result::stage_type::connect;
        target_ = std::move(step.target);
        result_.target = target_;
        to_upstream_ = std::move(step.to_upstream);
        begin_connect(now);
        return;
    case mode_step::action::fail:
        fail_with_reply(step.error ? step.error : make_error_code(errc::protocol_error), {}, now);
        return;
    }
}

template <class ModeSession>
void basic_session<ModeSession>::begin_connect(time_point now) {
    connect_deadline_ = detail::deadline_after(now, limits_.connect_timeout);
    deadline_ = connect_deadline_;
    if (auto numeric = target_.numeric_address()) {
        on_resolved({endpoint{*numeric, target_.port}}, {}, now);
        return;
    }
    state_ = state::resolving;
}

template <class ModeSession>
void basic_session<ModeSession>::on_resolved(std::vector<endpoint> candidates, std::error_code ec,
                                             time_point now) {
    now_ = now;
    if (state_ != state::resolving && state_ != state::handshaking) {
        return; // ended meanwhile
    }
    candidates_ = std::move(candidates);
    next_candidate_ = 0;
    last_connect_error_ = ec ? ec : make_error_code(errc::name_not_resolved);
    state_ = state::connecting;
    try_next_candidate();
    if (!upstream_) {
        on_connect_result(last_connect_error_, now);
    }
}

template <class ModeSession>
void basic_session<ModeSession>::try_next_candidate() {
    upstream_.close();
    while (next_candidate_ < candidates_.size()) {
        std::error_code ec;
        bool connected = false;
        socket attempt = start_connect(candidates_[next_candidate_++], connected, ec);
        if (!ec) {
            // Connected at once or in progress: either way, writability reports the outcome.
            upstream_ = std::move(attempt);
            return;
        }
        last_connect_error_ = ec;
    }
}

template <class ModeSession>
void basic_session<ModeSession>::on_connect_result(std::error_code ec, time_point now) {
    if (!ec) {
        std::error_code ignored;
        endpoint local = upstream_.local_endpoint(ignored);
        endpoint remote = upstream_.remote_endpoint(ignored);
        result_.upstream = remote;
        start_relay(mode_.on_connected({}, local, remote), now);
        return;
    }
    last_connect_error_ = ec;
    if (ec != errc::connect_timeout) {
        try_next_candidate();
        if (upstream_) {
            return; // the next address is being tried
        }
    }
    upstream_.close();
    fail_with_reply(ec, mode_.on_connected(ec, endpoint{}, endpoint{}), now);
}

template <class ModeSession>
void basic_session<ModeSession>::start_relay(std::vector<std::uint8_t> reply, time_point now) {
    std::error_code ignored; // Nagle off is an optimisation; a failure changes nothing else
    client_.set_nodelay(true, ignored);
    upstream_.set_nodelay(true, ignored);
    result_.connected = true;
    result_.stage = session_result::stage_type::relay;
    relay_.emplace(client_.native_handle(), upstream_.native_handle());
    // Anything the Mode had not yet sent (to_client_ is empty by now for every mode that
    // waits for its replies to go out) precedes the connect reply.
    relay_->prime_client(
        byte_view{to_client_.data() + to_client_offset_, to_client_.size() - to_client_offset_});
    relay_->prime_client(reply);
    relay_->prime_upstream(to_upstream_);
    std::vector<std::uint8_t>().swap(to_client_);
    std::vector<std::uint8_t>().swap(to_upstream_);
    to_client_offset_ = 0;
    state_ = state::relaying;
    deadline_ = detail::deadline_after(now, limits_.idle_timeout);
}

template <class ModeSession>
void basic_session<ModeSession>::fail_with_reply(std::error_code why,
                                                 std::vector<std::uint8_t> reply, time_point now) {
    result_.error = why;
    // Bytes the Mode asked for earlier and not yet sent go out first, then the reply.
    to_client_.erase(to_client_.begin(),
                     to_client_.begin() + static_cast<std::ptrdiff_t>(to_client_offset_));
    to_client_offset_ = 0;
    to_client_.insert(to_client_.end(), reply.begin(), reply.end());
    if (to_client_.empty()) {
        finish(why);
        return;
    }
    state_ = state::failing;
    // A client that will not take a few reply bytes in a second is not worth waiting for.
    deadline_ = now + std::chrono::seconds(1);
    if (send_to_client() && to_client_offset_ == to_client_.size()) {
        finish(why);
    }
}

template <class ModeSession>
bool basic_session<ModeSession>::send_to_client() {
    std::error_code ec;
    while (!ec && to_client_offset_ < to_client_.size()) {
        std::size_t n = client_.send(to_client_.data() + to_client_offset_,
                                     to_client_.size() - to_client_offset_, ec);
        if (!ec) {
            to_client_offset_ += n;
        }
    }
    if (ec && !detail::would_block(ec)) {
        finish(ec);
        return false;
    }
    return true;
}

template <class ModeSession>
void basic_session<ModeSession>::handshake_ready(short revents, time_point now,
                                                 std::uint8_t* scratch, std::size_t scratch_size) {
    if (to_client_offset_ < to_client_.size()) {
        if ((revents & (POLLOUT | POLLERR | POLLHUP)) != 0) {
            send_to_client();
        }
        return;
    }
    if ((revents & (POLLIN | POLLERR | POLLHUP)) == 0) {
        return;
    }
    std::error_code ec;
    std::size_t n = client_.receive(scratch, scratch_size, ec);
    if (ec) {
        if (!detail::would_block(ec)) {
            finish(ec);
        }
        return;
    }
    if (n == 0) {
        finish(make_error_code(errc::handshake_incomplete));
        return;
    }
    apply(mode_.on_client_data(byte_view{scratch, n}), now);
}

template <class ModeSession>
void basic_session<ModeSession>::relay_ready(time_point now, std::uint8_t* scratch,
                                             std::size_t scratch_size) {
    if (relay_->pump(scratch, scratch_size)) {
        deadline_ = detail::deadline_after(now, limits_.idle_timeout);
    }
    if (!relay_->finished()) {
        return;
    }
    std::error_code error = relay_->error();
    if (error) {
        // Pass the reset on: the side that did not fail is closed with RST, not FIN.
        std::error_code ignored;
        (relay_->error_on_client() ? upstream_ : client_).set_linger_reset(ignored);
    }
    finish(error);
}

template <class ModeSession>
void basic_session<ModeSession>::on_ready(short client_revents, short upstream_revents,
                                          time_point now, std::uint8_t* scratch,
                                          std::size_t scratch_size) {
    now_ = now;
    switch (state_) {
    case state::handshaking:
        handshake_ready(client_revents, now, scratch, scratch_size);
        return;
    case state::connecting:
        if (upstream_revents != 0) {
            on_connect_result(detail::connect_result(upstream_.native_handle()), now);
        }
        return;
    case state::relaying:
        if (client_revents != 0 || upstream_revents != 0) {
            relay_ready(now, scratch, scratch_size);
        }
        return;
    case state::failing:
        if (client_revents != 0 && send_to_client() && to_client_offset_ == to_client_.size()) {
            finish(result_.error);
        }
        return;
    default:
        return;
    }
}

template <class ModeSession>
void basic_session<ModeSession>::on_deadline(time_point now) {
    now_ = now;
    if (now < deadline_) {
        return;
    }
    switch (state_) {
    case state::handshaking:
        finish(make_error_code(errc::handshake_timeout));
        return;
    case state::resolving:
    case state::connecting: {
        auto ec = make_error_code(errc::connect_timeout);
        upstream_.close();
        fail_with_reply(ec, mode_.on_connected(ec, endpoint{}, endpoint{}), now);
        return;
    }
    case state::relaying:
        finish(make_error_code(errc::idle_timeout));
        return;
    default:
        finish(result_.error ? result_.error : make_error_code(errc::handshake_timeout));
        return;
    }
}

template <class ModeSession>
void basic_session<ModeSession>::finish(std::error_code why) noexcept {
    if (state_ == state::done) {
        return;
    }
    if (relay_) {
        result_.bytes_to_upstream = relay_->bytes_to_upstream();
        result_.bytes_to_client = relay_->bytes_to_client();
    }
    if (!result_.error) {
        result_.error = why;
    }
    state_ = state::done;
    deadline_ = time_point::max();
    result_.ended = now_;
    upstream_.close();
    client_.close();
}

template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd,
                           std::size_t scratch_size) {
    std::vector<std::uint8_t> scratch(scratch_size == 0 ? 1 : scratch_size);
    session.start(steady_clock::now());
    while (!session.done()) {
        if (session.wants_resolve()) {
            std::error_code ec;
            auto candidates = resolve(session.resolve_target(), ec);
            session.on_resolved(std::move(candidates), ec, steady_clock::now());
            continue;
        }
        // A descriptor the session does not watch is left out: poll would still report its
        // hang-up, over and over, while we do not want to read it yet.
        pollfd fds[3] = {
            {stop_fd, POLLIN, 0},
            {session.watch_client() ? session.client_fd() : -1, session.client_events(), 0},
            {session.watch_upstream() ? session.upstream_fd() : -1, session.upstream_events(), 0}};
        std::error_code ec;
        detail::poll_fds(fds, 3, session.deadline(), ec);
        if (ec) {
            session.abort(ec);
            break;
        }
        if (fds[0].revents != 0) {
            session.abort(make_error_code(errc::stopped));
            break;
        }
        time_point now = steady_clock::now();
        session.on_ready(fds[1].revents, fds[2].revents, now, scratch.data(), scratch.size());
        if (!session.done() && now >= session.deadline()) {
            session.on_deadline(now);
        }
    }
    return session.result();
}

} // namespace tinyproxy
// ---- end tinyproxy/session.hpp ----
// #include "tinyproxy/policy/thread.hpp"
// ---- begin tinyproxy/policy/thread.hpp ----
// thread_policy: one thread per client.

#include <atomic>  // a finished flag per worker
#include <chrono>  // the reaping tick
#include <list>    // workers, stable addresses
#include <thread>  // std::thread
#include <utility> // std::move

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/session.hpp"

namespace tinyproxy {

/// A thread per client: simple, and every session may block (a Mode that resolves names or
/// calls a slow service costs only its own thread). Pick it for tens to a few thousand
/// concurrent clients; each costs a thread stack.
///
/// The policy interface (see basic_proxy in proxy.hpp): a policy is a class with
///     template <class Server> void run(Server& server);
/// that runs until `server` says it is stopping, and before returning joins, reaps and closes
/// everything it started. A blocking policy needs only these calls of the Server:
///     accept_status accept_next(accepted_client& out, time_point until);
///     session_result serve(accepted_client client);  // one session, to its end, here
///     void session_ended(const session_result&) noexcept; // for a client it could not serve
///     bool stopping() const noexcept;  // e.g. for a worker waiting on a full queue
class thread_policy {
public:
    template <class Server>
    void run(Server& server) {
        std::list<worker> workers;
        for (;;) {
            accepted_client client;
            // Wake once a second even when idle, to join threads that have finished.
            auto status = server.accept_next(client, steady_clock::now() + std::chrono::seconds(1));
            join_finished(workers);
            if (status == accept_status::stopped) {
                break;
            }
            if (status == accept_status::client) {
                start_worker(workers, server, std::move(client));
            }
        }
        // Sessions see the stop signal themselves and end; wait for each.
        for (worker& w : workers) {
            w.thread.join();
        }
    }

private:
    struct worker {
        std::thread thread;
        std::atomic<bool> finished{false};
    };

    template <class Server>
    static void start_worker(std::list<worker>& workers, Server& server, accepted_client client) {
        worker& w = workers.emplace_back();
        try {
            w.thread = std::thread([&server, &w, c = std::move(client)]() mutable {
                server.serve(std::move(c));
                w.finished.store(true, std::memory_order_release);
            });
        } catch (...) {
            // No thread to be had (resource limits): the client is closed with the lambda.
            workers.pop_back();
            session_result refused;
            refused.error = std::make_error_code(std::errc::resource_unavailable_try_again);
            server.session_ended(refused);
        }
    }

    static void join_finished(std::list<worker>& workers) {
        for (auto it = workers.begin(); it != workers.end();) {
            if (it->finished.load(std::memory_order_acquire)) {
                it->thread.join();
                it = workers.erase(it);
            } else {
                ++it;
            }
        }
    }
};

} // namespace tinyproxy
// ---- end tinyproxy/policy/thread.hpp ----
// #include "tinyproxy/policy/fork.hpp"
// ---- begin tinyproxy/policy/fork.hpp ----
// fork_policy: one process per client.

#include <cerrno>  // EINTR
#include <chrono>  // reaping tick, grace period
#include <thread>  // sleep while waiting for children
#include <utility> // std::move, std::swap
#include <vector>  // child ids

#include <csignal>    // kill, SIGKILL
#include <sys/wait.h> // waitpid
#include <unistd.h>   // fork, _exit

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/session.hpp"

namespace tinyproxy {

/// A process per client: the strongest isolation (a crash or leak in one session cannot touch
/// another), at the cost of a fork per connection. The child closes every descriptor it
/// inherited except its client and the stop signal, serves the one session and _exit()s; the
/// parent reaps its own children (only those, never another part of the program's) at least
/// ten times a second, so no zombie outlives its session by more than that.
///
/// Byte counts and other per-session figures stay in the child: the parent sees how many
/// sessions ran, not what moved through them.
///
/// Besides accept_next() and serve() (see thread_policy), it calls the Server's
///     void enter_child() noexcept;  // in a new child: drop what belongs to the parent
///     void session_ended(const session_result& result) noexcept; // when fork() fails
///     void count_ended(const session_result& result) noexcept;   // as each child is reaped
/// and reads `server.stop_fd()` to keep it open in the child.
class fork_policy {
public:
    /// How long stop waits for children to end by themselves before killing them.
    std::chrono::milliseconds stop_grace{1000};

    template <class Server>
    void run(Server& server) {
        for (;;) {
            accepted_client client;
            auto status =
                server.accept_next(client, steady_clock::now() + std::chrono::milliseconds(100));
            reap(server, false);
            if (status == accept_status::stopped) {
                break;
            }
            if (status == accept_status::client) {
                spawn(server, std::move(client));
            }
        }
        stop_children(server);
    }

    /// Children still running (for tests and the curious; read it from the run() thread).
    std::size_t children() const noexcept { return children_.size(); }

private:
    template <class Server>
    void spawn(Server& server, accepted_client client) {
        pid_t pid = ::fork();
        if (pid == 0) {
            int keep[2] = {server.stop_fd(), client.connection.native_handle()};
            if (keep[0] > keep[1]) {
                std::swap(keep[0], keep[1]);
            }
            server.enter_child();
            detail::close_descriptors_except(keep, 2);
            session_result result = server.serve(std::move(client));
            ::_exit(result.error ? 1 : 0);
        }
        if (pid > 0) {
            children_.push_back(pid);
            return;
        }
        // No process to be had: the client closes here, in the parent, and counts as failed.
        session_result refused;
        refused.error = std::make_error_code(std::errc::resource_unavailable_try_again);
        server.session_ended(refused);
    }

    /// Collects every finished child, and counts its session; with `all`, waits for all.
    template <class Server>
    void reap(Server& server, bool all) {
        for (auto it = children_.begin(); it != children_.end();) {
            int status = 0;
            pid_t r = ::waitpid(*it, &status, all ? 0 : WNOHANG);
            if (r == *it || (r < 0 && errno != EINTR)) {
                session_result result;
                if (r < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    result.error = make_error_code(errc::child_failed);
                }
                server.count_ended(result); // the child reported it to the hook itself
                it = children_.erase(it);
            } else if (r < 0) {
                continue; // EINTR: ask again
            } else {
                ++it;
            }
        }
    }

    template <class Server>
    void stop_children(Server& server) {
        // Children watch the stop signal and end by themselves; give them a moment.
        auto give_up = steady_clock::now() + stop_grace;
        while (!children_.empty() && steady_clock::now() < give_up) {
            reap(server, false);
            if (!children_.empty()) {
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
        }
        for (pid_t pid : children_) {
            ::kill(pid, SIGKILL);
        }
        reap(server, true);
    }

    std::vector<pid_t> children_;
};

} // namespace tinyproxy
// ---- end tinyproxy/policy/fork.hpp ----
// #include "tinyproxy/policy/poll.hpp"
// ---- begin tinyproxy/policy/poll.hpp ----
// poll_policy: one thread, one event loop over non-blocking sockets.

#include <algorithm>          // std::min
#include <chrono>             // back-off
#include <condition_variable> // the resolver's queue
#include <cstdint>            // session ids
#include <deque>              // resolver requests
#include <memory>             // sessions, resolver
#include <mutex>              // the resolver's queue
#include <system_error>       // std::error_code
#include <thread>             // the resolver's thread
#include <utility>            // std::move
#include <vector>             // pollfd set, sessions

#include <cerrno> // EMFILE
#include <poll.h> // poll

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/session.hpp"

namespace tinyproxy {
namespace detail {

/// Resolves host names on a helper thread so that a slow or dead DNS server never stalls the
/// event loop. Results come back through `take()`; `notify_fd()` turns readable when there are
/// some. The thread starts with the first request; the destructor joins it (waiting for at most
/// the one getaddrinfo call in progress).
class background_resolver {
public:
    struct answer {
        std::uint64_t id;
        std::vector<endpoint> candidates;
        std::error_code error;
    };

    background_resolver() = default;
    background_resolver(const background_resolver&) = delete;
    background_resolver& operator=(const background_resolver&) = delete;
    ~background_resolver() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        if (worker_.joinable()) {
            worker_.join();
        }
    }

    /// Queues a lookup; false when the helper thread or its pipe cannot be made.
    bool submit(std::uint64_t id, host_port target) {
        if (!worker_.joinable()) {
            std::error_code ec;
            int fds[2] = {-1, -1};
            if (!make_pipe(fds, ec)) {
                return false;
            }
            notify_read_.reset(fds[0]);
            notify_write_.reset(fds[1]);
            set_nonblocking(fds[0], true, ec);
            set_nonblocking(fds[1], true, ec);
            try {
                worker_ = std::thread([this] { work(); });
            } catch (...) {
                return false;
            }
        }
        std::lock_guard<std::mutex> lock(mutex_);
        requests_.push_back({id, std::move(target)});
        wake_.notify_one();
        return true;
    }

    /// -1 until the first request.
    int notify_fd() const noexcept { return notify_read_.get(); }

    std::vector<answer> take() {
        char drain[64];
        while (::read(notify_read_.get(), drain, sizeof drain) > 0) {
        }
        std::lock_guard<std::mutex> lock(mutex_);
        std::vector<answer> out;
        out.swap(answers_);
        return out;
    }

private:
    struct request {
        std::uint64_t id;
        host_port target;
    };

    void work() {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [this] { return stopping_ || !requests_.empty(); });
            if (stopping_) {
                return;
            }
            request next = std::move(requests_.front());
            requests_.pop_front();
            lock.unlock();
            answer result{next.id, {}, {}};
            result.candidates = resolve(next.target, result.error);
            lock.lock();
            answers_.push_back(std::move(result));
            char one = 1;
            (void)!::write(notify_write_.get(), &one, 1); // a full pipe already says "ready"
        }
    }

    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<request> requests_;
    std::vector<answer> answers_;
    bool stopping_ = false;
    unique_fd notify_read_;
    unique_fd notify_write_;
    std::thread worker_;
};

} // namespace detail

/// One thread serves every client with an event loop over non-blocking sockets: the cheapest
/// per connection (no thread, no process, no buffer while a tunnel is idle), and nothing one
/// client does (sending nothing, reading nothing, an upstream that never answers) holds up the
/// others. Pick it for many concurrent clients, or whenever in doubt; it is the default.
///
/// Besides stop_fd() it calls the Server's
///     int listener_fd() const noexcept;
///     accept_status try_accept(accepted_client& out, std::error_code& ec) noexcept;
///     session_type make_session(accepted_client client);  // not yet started
///     void session_ended(const session_result& result) noexcept;
///     const session_options& limits() const noexcept;
class poll_policy {
public:
    /// How long the listener rests after accept fails for lack of descriptors or memory.
    std::chrono::milliseconds accept_backoff{100};
    /// The most clients accepted in one turn of the loop, so a connection storm cannot starve
    /// established tunnels.
    int accepts_per_turn = 64;

    template <class Server>
    void run(Server& server);

private:
    static short revents_at(const std::vector<pollfd>& fds, int slot) noexcept {
        return slot >= 0 ? fds[static_cast<std::size_t>(slot)].revents : short{0};
    }

    template <class Session>
    struct entry {
        std::uint64_t id;
        Session session;
        bool resolving;
        int client_slot;   // index into the pollfd set, or -1
        int upstream_slot; // index into the pollfd set, or -1
    };
};

template <class Server>
void poll_policy::run(Server& server) {
    using session_type = typename Server::session_type;
    using entry_type = entry<session_type>;

    std::vector<std::unique_ptr<entry_type>> sessions;
    std::vector<pollfd> fds;
    std::vector<std::uint8_t> scratch(std::max<std::size_t>(server.limits().buffer_size, 1));
    detail::background_resolver resolver;
    std::uint64_t next_id = 1;
    time_point listener_resting_until = time_point::min();

    // After every event: a session that now needs a name resolved hands it to the resolver.
    auto settle = [&](entry_type& e) {
        if (e.session.wants_resolve() && !e.resolving) {
            e.resolving = true;
            if (!resolver.submit(e.id, e.session.resolve_target())) {
                auto no_thread = std::make_error_code(std::errc::resource_unavailable_try_again);
                e.session.on_resolved({}, no_thread, steady_clock::now());
            }
        }
    };

    for (;;) {
        time_point now = steady_clock::now();
        fds.clear();
        fds.push_back({server.stop_fd(), POLLIN, 0});
        bool listening = now >= listener_resting_until;
        fds.push_back({listening ? server.listener_fd() : -1, POLLIN, 0});
        fds.push_back({resolver.notify_fd(), POLLIN, 0});
        time_point wake_at = listening ? time_point::max() : listener_resting_until;
        for (auto& e : sessions) {
            e->client_slot = -1;
            if (e->session.watch_client()) {
                e->client_slot = static_cast<int>(fds.size());
                fds.push_back({e->session.client_fd(), e->session.client_events(), 0});
            }
            e->upstream_slot = -1;
            if (e->session.watch_upstream()) {
                e->upstream_slot = static_cast<int>(fds.size());
                fds.push_back({e->session.upstream_fd(), e->session.upstream_events(), 0});
            }
            wake_at = std::min(wake_at, e->session.deadline());
        }

        std::error_code ec;
        detail::poll_fds(fds.data(), static_cast<nfds_t>(fds.size()), wake_at, ec);
        if (fds[0].revents != 0 || ec) {
            break; // stopping (or poll itself failed, which only a programming error causes)
        }
        now = steady_clock::now();

        // Sessions first, then new clients: the slots above belong to the sessions as they were.
        std::size_t existing = sessions.size();
        for (std::size_t i = 0; i < existing; ++i) {
            entry_type& e = *sessions[i];
            short client_revents = revents_at(fds, e.client_slot);
            short upstream_revents = revents_at(fds, e.upstream_slot);
            if (client_revents != 0 || upstream_revents != 0) {
                e.session.on_ready(client_revents, upstream_revents, now, scratch.data(),
                                   scratch.size());
            }
            if (!e.session.done() && now >= e.session.deadline()) {
                e.session.on_deadline(now);
            }
            settle(e);
        }

        if (fds[2].revents != 0) {
            for (auto& answer : resolver.take()) {
                for (std::size_t i = 0; i < existing; ++i) {
                    entry_type& e = *sessions[i];
                    if (e.id == answer.id && !e.session.done()) {
                        e.resolving = false;
                        e.session.on_resolved(std::move(answer.candidates), answer.error, now);
                        settle(e);
                    }
                }
            }
        }

        if (fds[1].revents != 0) {
            for (int n = 0; n < accepts_per_turn; ++n) {
                accepted_client client;
                std::error_code accept_error;
                if (server.try_accept(client, accept_error) != accept_status::client) {
                    if (accept_error == std::errc::too_many_files_open ||
                        accept_error == std::errc::too_many_files_open_in_system ||
                        accept_error == std::errc::no_buffer_space ||
                        accept_error == std::errc::not_enough_memory) {
                        // Out of descriptors: the pending client stays queued, and polling the
                        // listener would report it again at once. Rest instead of spinning.
                        listener_resting_until = now + accept_backoff;
                    }
                    break;
                }
                auto e = std::make_unique<entry_type>(
                    entry_type{next_id++, server.make_session(std::move(client)), false, -1, -1});
                e->session.start(now);
                settle(*e);
                sessions.push_back(std::move(e));
            }
        }

        // Report and drop finished sessions (their sockets are already closed).
        auto finished = [&server](const std::unique_ptr<entry_type>& e) {
            if (!e->session.done()) {
                return false;
            }
            server.session_ended(e->session.result());
            return true;
        };
        sessions.erase(std::remove_if(sessions.begin(), sessions.end(), finished), sessions.end());
    }

    for (auto& e : sessions) {
        e->session.abort(make_error_code(errc::stopped));
        server.session_ended(e->session.result());
    }
}

} // namespace tinyproxy
// ---- end tinyproxy/policy/poll.hpp ----
// #include "tinyproxy/mode/forward.hpp"
// ---- begin tinyproxy/mode/forward.hpp ----
// forward_mode: every client goes to one fixed upstream (a port forwarder).

#include <cstdint>      // bytes
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/session.hpp"

namespace tinyproxy {

/// The simplest Mode: no handshake, every client is connected to `upstream` at once, and the
/// client's bytes (even those it sent before the upstream answered) go there untouched. A name
/// is resolved for every client, and each of its addresses is tried in turn.
///
/// A Mode is any class with
///     session make_session(const session_info& client) const;  // called once per client
/// where `session` is the per-client handshake object described at basic_session.
/// make_session may be called from several threads at once, so it only reads the Mode.
class forward_mode {
public:
    explicit forward_mode(host_port upstream) : upstream_(std::move(upstream)) {}

    class session {
    public:
        explicit session(host_port upstream) : upstream_(std::move(upstream)) {}

        mode_step start() { return mode_step::connect_to(upstream_); }
        /// Never called: start() already decided.
        mode_step on_client_data(byte_view) { return mode_step::fail(errc::protocol_error); }
        /// A forwarder has nothing to tell the client: on failure it just closes.
        std::vector<std::uint8_t> on_connected(std::error_code, const endpoint&, const endpoint&) {
            return {};
        }

    private:
        host_port upstream_;
    };

    session make_session(const session_info&) const { return session{upstream_}; }
    const host_port& upstream() const noexcept { return upstream_; }

private:
    host_port upstream_;
};

} // namespace tinyproxy
// ---- end tinyproxy/mode/forward.hpp ----
// #include "tinyproxy/proxy.hpp"
// ---- begin tinyproxy/proxy.hpp ----
// basic_proxy<Policy, Mode>: the listener, options, stop signal and counters, and the Server
// interface that a concurrency policy drives.

#include <algorithm>    // std::min
#include <atomic>       // stop flag, counters
#include <cerrno>       // accept errors
#include <cstdint>      // counters
#include <functional>   // the event hook
#include <vector>       // the allow-list
#include <string>       // error messages
#include <system_error> // error reporting
#include <utility>      // std::move

#include <poll.h> // waiting for a client or the stop signal

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/session.hpp"
// #include "tinyproxy/policy/thread.hpp"
// #include "tinyproxy/policy/fork.hpp"
// #include "tinyproxy/policy/poll.hpp"
// #include "tinyproxy/mode/forward.hpp"

namespace tinyproxy {

/// Something that happened to a client, for the optional `options::on_event` hook.
struct session_event {
    enum class kind {
        rejected, ///< closed at once, before any byte was read (see `reason`)
        opened,   ///< a session starts
        closed,   ///< a session ended; `result` says how
    };
    kind what = kind::opened;
    endpoint client;
    /// For rejected: errc::not_allowed (outside every `allow` range) or
    /// std::errc::too_many_files_open (past `max_connections`). For closed: what ended it.
    std::error_code reason;
    /// For closed: bytes, target, upstream, times and the error that ended it.
    const session_result* result = nullptr;
};

/// Everything a proxy is told, with defaults that are safe to run as they are.
struct options : session_options {
    /// Where to listen. Loopback by default: serving other hosts takes a deliberate choice.
    endpoint listen{ip_address::loopback_v4(), 1080};
    int backlog = 1024;
    /// Clients past this many concurrent sessions are accepted and closed at once (0: no limit).
    std::size_t max_connections = 0;
    /// When not empty, a client outside every range is closed at once, before any byte is read.
    std::vector<cidr> allow;
    /// Called for every client rejected, opened and closed, on the thread (or, with
    /// fork_policy, in the process) that serves it, so it must be thread-safe. Unset, it costs
    /// one branch per event.
    std::function<void(const session_event&)> on_event;
};

/// Counters, readable from any thread while the proxy runs. Under fork_policy sessions run in
/// child processes: the parent counts them as they are reaped (a child's exit status says
/// whether its session failed), but the byte counts and the failure reasons stay in the
/// children, and read 0 (use `on_event`, which runs in the child, to see them).
struct stats {
    std::uint64_t accepted = 0;           ///< clients accepted (including those rejected)
    std::uint64_t active = 0;             ///< sessions running now
    std::uint64_t finished = 0;           ///< sessions ended cleanly
    std::uint64_t failed = 0;             ///< sessions ended by an error, reset or timeout
    std::uint64_t rejected_limit = 0;     ///< closed at once: past max_connections
    std::uint64_t rejected_access = 0;    ///< closed at once: outside every allow range
    std::uint64_t handshake_failures = 0; ///< failed before the Mode decided (incl. timeouts)
    std::uint64_t connect_failures = 0;   ///< the upstream refused, did not resolve or timed out
    std::uint64_t bytes_to_upstream = 0;  ///< bytes relayed client -> upstream (ended sessions)
    std::uint64_t bytes_to_client = 0;    ///< bytes relayed upstream -> client (ended sessions)
};

/// What a policy sees of a proxy: a listener, a stop signal, and sessions to run. Policies are
/// templates over it; the calls are documented at thread_policy (blocking policies), fork_policy
/// and poll_policy (event loops).
template <class Mode>
class proxy_server {
public:
    using mode_type = Mode;
    using session_type = basic_session<typename Mode::session>;

    proxy_server(options opts, Mode mode) : options_(std::move(opts)), mode_(std::move(mode)) {}
    proxy_server(const proxy_server&) = delete;
    proxy_server& operator=(const proxy_server&) = delete;
    ~proxy_server() { detail::close_fd(stop_write_.exchange(-1)); }

    // --- set-up, by basic_proxy ------------------------------------------------------------

    void listen(std::error_code& ec) noexcept;
    endpoint local_endpoint() const noexcept { return listener_.local_endpoint(); }
    bool listening() const noexcept { return static_cast<bool>(listener_); }
    /// Async-signal-safe: an atomic exchange and a close(2).
    void request_stop() noexcept {
        stopping_.store(true, std::memory_order_release);
        detail::close_fd(stop_write_.exchange(-1));
    }

    // --- the Server interface policies call --------------------------------------------------

    bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }
    /// Turns readable (end of file) once stop is requested, in this process and in forked
    /// children alike: every wait in the library includes it.
    int stop_fd() const noexcept { return stop_read_.get(); }
    int listener_fd() const noexcept { return listener_.native_handle(); }
    const session_options& limits() const noexcept { return options_; }

    /// Waits for the next client, the stop signal, or `until`. When descriptors run out it
    /// rests instead of spinning, and tries again.
    accept_status accept_next(accepted_client& out, time_point until) noexcept;
    /// Takes a pending client without waiting (the listener is non-blocking).
    accept_status try_accept(accepted_client& out, std::error_code& ec) noexcept;
    /// A session for `client`, not yet started.
    session_type make_session(accepted_client client);
    /// Runs one client's session to its end on the calling thread, and counts it.
    session_result serve(accepted_client client) noexcept;
    /// Counts a session that has ended, and reports it to the event hook.
    void session_ended(const session_result& result) noexcept;
    /// Counts a session that ended elsewhere (a fork child, which reported it itself).
    void count_ended(const session_result& result) noexcept;
    /// Called in a freshly forked child: drops the parent's listener and stop-signal writer.
    void enter_child() noexcept {
        listener_.close();
        detail::close_fd(stop_write_.exchange(-1));
    }

    stats snapshot() const noexcept;
    const options& get_options() const noexcept { return options_; }
    const Mode& mode() const noexcept { return mode_; }

private:
    options options_;
    Mode mode_;
    listener listener_;
    unique_fd stop_read_;
    std::atomic<int> stop_write_{-1};
    std::atomic<bool> stopping_{false};
    /// Applies allow and max_connections to a client just accepted; false: it was closed.
    bool admit(accepted_client& client) noexcept;
    void report(const session_event& event) const noexcept {
        if (options_.on_event) {
            try {
                options_.on_event(event);
            } catch (...) { // a hook that throws must not end the proxy
            }
        }
    }

    std::atomic<std::uint64_t> accepted_{0};
    std::atomic<std::uint64_t> ended_{0};
    std::atomic<std::uint64_t> finished_{0};
    std::atomic<std::uint64_t> rejected_limit_{0};
    std::atomic<std::uint64_t> rejected_access_{0};
    std::atomic<std::uint64_t> handshake_failures_{0};
    std::atomic<std::uint64_t> connect_failures_{0};
    std::atomic<std::uint64_t> bytes_to_upstream_{0};
    std::atomic<std::uint64_t> bytes_to_client_{0};
};

/// A proxy: a Policy says how sessions are scheduled (thread_policy, fork_policy, poll_policy
/// or your own), a Mode says where each client goes (forward_mode, ...).
///
///     tinyproxy::options opts;
///     opts.listen = tinyproxy::parse_endpoint("127.0.0.1:8080");
///     tinyproxy::basic_proxy<tinyproxy::poll_policy, tinyproxy::forward_mode> proxy(
///         opts, tinyproxy::forward_mode(tinyproxy::parse_host_port("example.com:80")));
///     proxy.run(); // until proxy.stop() from another thread or a signal handler
///
/// A proxy runs once: after stop() and the return of run(), make a new one to serve again.
template <class Policy, class Mode>
class basic_proxy {
public:
    using policy_type = Policy;
    using mode_type = Mode;

    basic_proxy(options opts, Mode mode, Policy policy = Policy())
        : server_(std::move(opts), std::move(mode)), policy_(std::move(policy)) {}

    /// Binds and listens now, so that local_endpoint() is known before run() (port 0 picks a
    /// free port). Throws std::system_error naming the address.
    void listen() {
        std::error_code ec;
        listen(ec);
        if (ec) {
            throw std::system_error(ec,
                                    "cannot listen on " + server_.get_options().listen.to_string());
        }
    }
    void listen(std::error_code& ec) noexcept { server_.listen(ec); }

    /// The bound address (with the real port), once listening.
    endpoint local_endpoint() const noexcept { return server_.local_endpoint(); }

    /// Serves clients until stop(); listens first if listen() was not called. When it returns,
    /// every thread it started is joined, every child reaped, every descriptor closed.
    void run() {
        if (!server_.listening()) {
            listen();
        }
        policy_.run(server_);
    }

    /// Makes run() return promptly, ending the sessions in flight. Thread-safe, and safe to
    /// call from a signal handler.
    void stop() noexcept { server_.request_stop(); }

    tinyproxy::stats stats() const noexcept { return server_.snapshot(); }
    const options& get_options() const noexcept { return server_.get_options(); }
    Policy& policy() noexcept { return policy_; }
    const Mode& mode() const noexcept { return server_.mode(); }

private:
    proxy_server<Mode> server_;
    Policy policy_;
};

/// A port forwarder on the event loop: the usual choice.
using forward_proxy = basic_proxy<poll_policy, forward_mode>;
using thread_forward_proxy = basic_proxy<thread_policy, forward_mode>;
using fork_forward_proxy = basic_proxy<fork_policy, forward_mode>;

// ---------------------------------------------------------------------------------------------

template <class Mode>
void proxy_server<Mode>::listen(std::error_code& ec) noexcept {
    ec.clear();
    int fds[2] = {-1, -1};
    if (!detail::make_pipe(fds, ec)) {
        return;
    }
    stop_read_.reset(fds[0]);
    detail::close_fd(stop_write_.exchange(fds[1]));
    if (stopping()) {
        detail::close_fd(stop_write_.exchange(-1)); // stop() came first
    }
    listener_ = listener::open(options_.listen, options_.backlog, ec);
    if (!ec) {
        listener_.set_nonblocking(true, ec);
    }
}

template <class Mode>
accept_status proxy_server<Mode>::try_accept(accepted_client& out, std::error_code& ec) noexcept {
    // Rejected clients are closed here and the next pending one taken, a bounded number of
    // times so a flood of rejected clients cannot hold the caller.
    for (int rejected = 0; rejected < 64; ++rejected) {
        out.connection = listener_.accept(out.peer, true, ec);
        if (ec) {
            return accept_status::timeout;
        }
        accepted_.fetch_add(1, std::memory_order_relaxed);
        if (admit(out)) {
            return accept_status::client;
        }
    }
    ec = std::make_error_code(std::errc::resource_unavailable_try_again);
    return accept_status::timeout;
}

template <class Mode>
bool proxy_server<Mode>::admit(accepted_client& client) noexcept {
    if (!options_.allow.empty()) {
        bool allowed = false;
        for (const cidr& range : options_.allow) {
            allowed = allowed || range.contains(client.peer.address);
        }
        if (!allowed) {
            client.connection.close();
            rejected_access_.fetch_add(1, std::memory_order_relaxed);
            report({session_event::kind::rejected, client.peer, make_error_code(errc::not_allowed),
                    nullptr});
            return false;
        }
    }
    if (options_.max_connections != 0) {
        std::uint64_t ended = ended_.load(std::memory_order_acquire);
        std::uint64_t rejected = rejected_limit_.load(std::memory_order_relaxed) +
                                 rejected_access_.load(std::memory_order_relaxed);
        std::uint64_t accepted = accepted_.load(std::memory_order_relaxed);
        // Sessions running, not counting this client (accepted already counts it).
        std::uint64_t active = accepted - 1 - ended - rejected;
        if (active >= options_.max_connections) {
            client.connection.close();
            rejected_limit_.fetch_add(1, std::memory_order_relaxed);
            report({session_event::kind::rejected, client.peer,
                    std::make_error_code(std::errc::too_many_files_open), nullptr});
            return false;
        }
    }
    return true;
}

template <class Mode>
accept_status proxy_server<Mode>::accept_next(accepted_client& out, time_point until) noexcept {
    for (;;) {
        if (stopping()) {
            return accept_status::stopped;
        }
        std::error_code ec;
        if (try_accept(out, ec) == accept_status::client) {
            return accept_status::client;
        }
        // Nothing pending: wait for a client. Out of descriptors (or another failure): the
        // client stays queued and the listener stays readable, so wait for the stop signal
        // alone for a moment rather than spin.
        bool nothing_pending = detail::would_block(ec);
        time_point rest = std::min(until, steady_clock::now() + std::chrono::milliseconds(100));
        pollfd fds[2] = {{stop_fd(), POLLIN, 0}, {nothing_pending ? listener_fd() : -1, POLLIN, 0}};
        std::error_code poll_error;
        detail::poll_fds(fds, 2, nothing_pending ? until : rest, poll_error);
        if (fds[0].revents != 0) {
            return accept_status::stopped;
        }
        if (steady_clock::now() >= until) {
            return accept_status::timeout;
        }
    }
}

template <class Mode>
typename proxy_server<Mode>::session_type proxy_server<Mode>::make_session(accepted_client client) {
    session_info info;
    info.client = client.peer;
    std::error_code ignored;
    info.local = client.connection.local_endpoint(ignored);
    report({session_event::kind::opened, client.peer, {}, nullptr});
    return session_type(std::move(client.connection), mode_.make_session(info), options_,
                        client.peer);
}

template <class Mode>
session_result proxy_server<Mode>::serve(accepted_client client) noexcept {
    session_result result;
    if (stopping()) { // a client that was queued when stop came: close it, connect nowhere
        result.error = make_error_code(errc::stopped);
        session_ended(result);
        return result;
    }
    try {
        session_type session = make_session(std::move(client));
        result = run_session(session, stop_fd(), options_.buffer_size);
    } catch (...) {
        // Out of memory, or a Mode that threw: this session ends, the proxy goes on.
        result.error = std::make_error_code(std::errc::not_enough_memory);
    }
    session_ended(result);
    return result;
}

template <class Mode>
void proxy_server<Mode>::session_ended(const session_result& result) noexcept {
    count_ended(result);
    report({session_event::kind::closed, result.client, result.error, &result});
}

template <class Mode>
void proxy_server<Mode>::count_ended(const session_result& result) noexcept {
    bytes_to_upstream_.fetch_add(result.bytes_to_upstream, std::memory_order_relaxed);
    bytes_to_client_.fetch_add(result.bytes_to_client, std::memory_order_relaxed);
    if (!result.error) {
        finished_.fetch_add(1, std::memory_order_relaxed);
    } else if (result.error != errc::child_failed && result.error != errc::stopped) {
        if (result.stage == session_result::stage_type::handshake) {
            handshake_failures_.fetch_add(1, std::memory_order_relaxed);
        } else if (result.stage == session_result::stage_type::connect) {
            connect_failures_.fetch_add(1, std::memory_order_relaxed);
        }
    }
    ended_.fetch_add(1, std::memory_order_release);
}

template <class Mode>
stats proxy_server<Mode>::snapshot() const noexcept {
    stats out;
    out.finished = finished_.load(std::memory_order_relaxed);
    std::uint64_t ended = ended_.load(std::memory_order_acquire);
    out.rejected_limit = rejected_limit_.load(std::memory_order_relaxed);
    out.rejected_access = rejected_access_.load(std::memory_order_relaxed);
    out.accepted = accepted_.load(std::memory_order_relaxed);
    out.failed = ended - out.finished;
    std::uint64_t gone = ended + out.rejected_limit + out.rejected_access;
    out.active = out.accepted > gone ? out.accepted - gone : 0;
    out.handshake_failures = handshake_failures_.load(std::memory_order_relaxed);
    out.connect_failures = connect_failures_.load(std::memory_order_relaxed);
    out.bytes_to_upstream = bytes_to_upstream_.load(std::memory_order_relaxed);
    out.bytes_to_client = bytes_to_client_.load(std::memory_order_relaxed);
    return out;
}

} // namespace tinyproxy
// ---- end tinyproxy/proxy.hpp ----
// ---- end tinyproxy/tinyproxy.hpp ----
