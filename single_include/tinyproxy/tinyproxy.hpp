// SPDX-License-Identifier: MIT
// tinyproxy.hpp 0.1.0: header-only C++17 TCP proxy library, as one file.
// Copyright (c) 2026 the tinyproxy.hpp authors; MIT licence, see LICENSE.
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

// epoll(7) behind poll_policy; poll(2) (portable_poll_policy) is built and tested everywhere.
#if !defined(TINYPROXY_NO_EPOLL) && defined(__linux__)
#    define TINYPROXY_HAS_EPOLL 1
#else
#    define TINYPROXY_HAS_EPOLL 0
#endif

// accept(2) gives a socket with its listener's TCP_NODELAY (Linux clones the listener's TCP
// state), so a proxy sets it once on the listener instead of once per client.
#if defined(__linux__)
#    define TINYPROXY_ACCEPT_INHERITS_NODELAY 1
#else
#    define TINYPROXY_ACCEPT_INHERITS_NODELAY 0
#endif

// POLLRDHUP / EPOLLRDHUP: the wait says the peer has sent its FIN, so a relay whose read came
// back short knows the socket is at end of stream without another read to hear it say so.
#if !defined(TINYPROXY_NO_RDHUP) && defined(__linux__)
#    define TINYPROXY_HAS_RDHUP 1
#else
#    define TINYPROXY_HAS_RDHUP 0
#endif

// splice(2), to relay bulk data socket -> pipe -> socket without copying it through user space.
#if !defined(TINYPROXY_NO_SPLICE) && defined(__linux__)
#    define TINYPROXY_HAS_SPLICE 1
#else
#    define TINYPROXY_HAS_SPLICE 0
#endif

// Built with ThreadSanitizer: it refuses a thread whose stack we map if that stack is smaller
// than it wants for itself (about 900 KiB with clang 14), so thread_policy's stacks are at least
// TINYPROXY_SANITIZER_MIN_STACK bytes then.
#if defined(__SANITIZE_THREAD__)
#    define TINYPROXY_SANITIZER_MIN_STACK (4u << 20)
#elif defined(__has_feature)
#    if __has_feature(thread_sanitizer)
#        define TINYPROXY_SANITIZER_MIN_STACK (4u << 20)
#    endif
#endif
#if !defined(TINYPROXY_SANITIZER_MIN_STACK)
#    define TINYPROXY_SANITIZER_MIN_STACK 0u
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
    client_not_allowed,       ///< the client is outside every allowed range
    reset_by_stage,           ///< a relay stage ended the tunnel with a reset
    stage_failed,             ///< a relay stage threw (out of memory): the tunnel ends
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
        case errc::client_not_allowed:
            return "client not allowed";
        case errc::reset_by_stage:
            return "reset by a relay stage";
        case errc::stage_failed:
            return "a relay stage failed";
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
// #include "tinyproxy/json.hpp"
// ---- begin tinyproxy/json.hpp ----
// JSON (RFC 8259) as a control API speaks it: a value type, a strict sans-I/O reader with a
// depth limit and messages that say where the text went wrong, and a compact writer.

#include <charconv>      // numbers, exact and locale-free
#include <cstddef>       // std::size_t
#include <cstdint>       // integers, code points
#include <optional>      // a reading that failed
#include <string>        // strings, text written
#include <string_view>   // text read
#include <system_error>  // std::errc from from_chars
#include <unordered_map> // an object's keys, checked for repeats in one pass
#include <utility>       // std::move, std::pair
#include <vector>        // arrays, objects

// #include "tinyproxy/config.hpp"

namespace tinyproxy {

namespace detail {
class json_reader;
}

/// One JSON value. Objects keep their members in the order written (a reply reads as its
/// request did); numbers keep their text, so an integer past 2^53 (a byte count) is not
/// rounded through a double: as_int64() reads it exactly.
class json_value {
public:
    enum class kind { null, boolean, number, string, array, object };
    using array_type = std::vector<json_value>;
    using member = std::pair<std::string, json_value>;
    using object_type = std::vector<member>;

    json_value() noexcept = default;
    json_value(std::nullptr_t) noexcept {}
    json_value(bool value) noexcept : kind_(kind::boolean), boolean_(value) {}
    json_value(std::int64_t value) : kind_(kind::number), text_(integer_text(value)) {}
    json_value(int value) : json_value(static_cast<std::int64_t>(value)) {}
    json_value(double value) : kind_(kind::number), text_(number_text(value)) {}
    json_value(std::string value) noexcept : kind_(kind::string), text_(std::move(value)) {}
    json_value(const char* value) : json_value(std::string(value)) {}
    json_value(array_type values) noexcept : kind_(kind::array), array_(std::move(values)) {}
    json_value(object_type members) noexcept : kind_(kind::object), object_(std::move(members)) {}

    /// A number as its JSON text (validated by the caller: the reader does).
    static json_value number_from_text(std::string text) {
        json_value out;
        out.kind_ = kind::number;
        out.text_ = std::move(text);
        return out;
    }
    static json_value array() { return json_value(array_type{}); }
    static json_value object() { return json_value(object_type{}); }

    kind type() const noexcept { return kind_; }
    bool is_null() const noexcept { return kind_ == kind::null; }
    bool is_bool() const noexcept { return kind_ == kind::boolean; }
    bool is_number() const noexcept { return kind_ == kind::number; }
    bool is_string() const noexcept { return kind_ == kind::string; }
    bool is_array() const noexcept { return kind_ == kind::array; }
    bool is_object() const noexcept { return kind_ == kind::object; }

    /// The value of a boolean (false for any other kind).
    bool as_bool() const noexcept { return kind_ == kind::boolean && boolean_; }
    /// A string's text, or a number's (empty for the other kinds).
    const std::string& text() const noexcept { return text_; }
    /// A number as the nearest double; false when this is not a number.
    bool as_double(double& out) const noexcept;
    /// A number that is a whole number within int64 (no fraction, no exponent, as Go's
    /// encoding/json reads an int64); false otherwise.
    bool as_int64(std::int64_t& out) const noexcept;
    const array_type& items() const noexcept { return array_; }
    array_type& items() noexcept { return array_; }
    const object_type& members() const noexcept { return object_; }

    /// An object's member called `key`, or null when there is none (or this is no object).
    const json_value* find(std::string_view key) const noexcept;
    /// Sets an object's member (replacing one of that name, in its place); a null value
    /// becomes an empty object first.
    json_value& set(std::string key, json_value value);
    /// Appends to an array; a null value becomes an empty array first.
    void push_back(json_value value);

    /// Compact JSON text: no spaces, strings escaped as RFC 8259 requires.
    std::string dump() const;
    void dump_to(std::string& out) const;

private:
    friend class detail::json_reader;
    static std::string integer_text(std::int64_t value);
    static std::string number_text(double value);

    kind kind_ = kind::null;
    bool boolean_ = false;
    std::string text_; // a string's value, or a number's text
    array_type array_;
    object_type object_;
};

/// Reads one JSON text (surrounding whitespace allowed, nothing else after it). On failure:
/// nullopt, and `error` says what and where ("expected ':' at offset 12"). Strict: strings
/// must be valid UTF-8 with no raw control characters, \u escapes must pair their surrogates,
/// nesting deeper than `max_depth` is refused (so no input can exhaust the stack). A key given
/// twice keeps its last value, as Go's encoding/json does.
std::optional<json_value> parse_json(std::string_view text, std::string& error,
                                     std::size_t max_depth = 64);

// ---------------------------------------------------------------------------------------------

namespace detail {

/// The reader: a cursor over the text, one function per production of RFC 8259's grammar.
class json_reader {
public:
    json_reader(std::string_view text, std::size_t max_depth) noexcept
        : text_(text), max_depth_(max_depth) {}

    std::optional<json_value> document(std::string& error);

private:
    bool value(json_value& out, std::size_t depth);
    bool object(json_value& out, std::size_t depth);
    bool array(json_value& out, std::size_t depth);
    /// A key given twice keeps its last value (Go's encoding/json), in its first place.
    static void keep_last_of_each(json_value::object_type& members);
    bool string(std::string& out);
    bool escape(std::string& out);
    bool number(json_value& out);
    bool literal(std::string_view word, json_value result, json_value& out);
    bool utf8_sequence(std::string& out);
    bool hex4(std::uint32_t& out);
    void skip_space() noexcept;
    bool at_end() const noexcept { return at_ >= text_.size(); }
    char peek() const noexcept { return at_end() ? '\0' : text_[at_]; }
    bool take(char c) noexcept;
    bool fail(const std::string& what);

    std::string_view text_;
    std::size_t max_depth_;
    std::size_t at_ = 0;
    std::string error_;
};

inline void append_utf8(std::string& out, std::uint32_t code) {
    if (code < 0x80) {
        out += static_cast<char>(code);
    } else if (code < 0x800) {
        out += static_cast<char>(0xC0 | (code >> 6));
        out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
        out += static_cast<char>(0xE0 | (code >> 12));
        out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (code >> 18));
        out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (code & 0x3F));
    }
}

inline void write_json_string(std::string& out, const std::string& text) {
    static constexpr char hex[] = "0123456789abcdef";
    out += '"';
    for (char c : text) {
        const auto byte = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (byte < 0x20) {
            switch (c) {
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            case '\b':
                out += "\\b";
                break;
            case '\f':
                out += "\\f";
                break;
            default:
                out += "\\u00";
                out += hex[byte >> 4];
                out += hex[byte & 0xF];
            }
        } else {
            out += c; // UTF-8 as it is: the reader only lets valid UTF-8 in
        }
    }
    out += '"';
}

inline bool json_reader::fail(const std::string& what) {
    if (error_.empty()) {
        error_ = what + " at offset " + std::to_string(at_);
    }
    return false;
}

inline void json_reader::skip_space() noexcept {
    while (!at_end() &&
           (text_[at_] == ' ' || text_[at_] == '\t' || text_[at_] == '\n' || text_[at_] == '\r')) {
        ++at_;
    }
}

inline bool json_reader::take(char c) noexcept {
    if (peek() == c && !at_end()) {
        ++at_;
        return true;
    }
    return false;
}

inline std::optional<json_value> json_reader::document(std::string& error) {
    json_value out;
    skip_space();
    bool ok = value(out, 0);
    if (ok) {
        skip_space();
        ok = at_end() || fail("unexpected text after the JSON value");
    }
    if (!ok) {
        error = error_;
        return std::nullopt;
    }
    return out;
}

inline bool json_reader::value(json_value& out, std::size_t depth) {
    switch (peek()) {
    case '{':
        return object(out, depth + 1);
    case '[':
        return array(out, depth + 1);
    case '"': {
        std::string text;
        if (!string(text)) {
            return false;
        }
        out = json_value(std::move(text));
        return true;
    }
    case 't':
        return literal("true", json_value(true), out);
    case 'f':
        return literal("false", json_value(false), out);
    case 'n':
        return literal("null", json_value(), out);
    default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) {
            return number(out);
        }
        return fail(at_end() ? "unexpected end of the JSON text" : "expected a JSON value");
    }
}

inline bool json_reader::literal(std::string_view word, json_value result, json_value& out) {
    if (text_.substr(at_, word.size()) != word) {
        return fail("expected a JSON value");
    }
    at_ += word.size();
    out = std::move(result);
    return true;
}

inline bool json_reader::object(json_value& out, std::size_t depth) {
    if (depth > max_depth_) {
        return fail("nested deeper than " + std::to_string(max_depth_));
    }
    ++at_; // '{'
    out = json_value::object();
    skip_space();
    if (take('}')) {
        return true;
    }
    for (;;) {
        skip_space();
        std::string key;
        if (peek() != '"') {
            return fail("expected a string for an object key");
        }
        if (!string(key)) {
            return false;
        }
        skip_space();
        if (!take(':')) {
            return fail("expected ':'");
        }
        skip_space();
        json_value member;
        if (!value(member, depth)) {
            return false;
        }
        out.object_.emplace_back(std::move(key), std::move(member));
        skip_space();
        if (take('}')) {
            keep_last_of_each(out.object_);
            return true;
        }
        if (!take(',')) {
            return fail("expected ',' or '}'");
        }
    }
}

inline void json_reader::keep_last_of_each(json_value::object_type& members) {
    if (members.size() < 2) {
        return;
    }
    // One pass with a map, not a search per key: an object of a hundred thousand keys costs a
    // hundred thousand steps, not ten billion.
    std::unordered_map<std::string_view, std::size_t> first_at;
    std::vector<bool> repeated(members.size(), false);
    bool any = false;
    for (std::size_t i = 0; i < members.size(); ++i) {
        auto [it, fresh] = first_at.emplace(members[i].first, i);
        if (!fresh) { // the last value wins, in the first one's place
            members[it->second].second = std::move(members[i].second);
            repeated[i] = true;
            any = true;
        }
    }
    if (!any) {
        return;
    }
    std::size_t kept = 0;
    for (std::size_t i = 0; i < members.size(); ++i) {
        if (!repeated[i]) {
            if (kept != i) {
                members[kept] = std::move(members[i]);
            }
            ++kept;
        }
    }
    members.resize(kept);
}

inline bool json_reader::array(json_value& out, std::size_t depth) {
    if (depth > max_depth_) {
        return fail("nested deeper than " + std::to_string(max_depth_));
    }
    ++at_; // '['
    out = json_value::array();
    skip_space();
    if (take(']')) {
        return true;
    }
    for (;;) {
        skip_space();
        json_value item;
        if (!value(item, depth)) {
            return false;
        }
        out.push_back(std::move(item));
        skip_space();
        if (take(']')) {
            return true;
        }
        if (!take(',')) {
            return fail("expected ',' or ']'");
        }
    }
}

inline bool json_reader::string(std::string& out) {
    ++at_; // '"'
    for (;;) {
        if (at_end()) {
            return fail("unterminated string");
        }
        const auto byte = static_cast<unsigned char>(text_[at_]);
        if (byte == '"') {
            ++at_;
            return true;
        }
        if (byte == '\\') {
            if (!escape(out)) {
                return false;
            }
        } else if (byte < 0x20) {
            return fail("a control character in a string");
        } else if (byte < 0x80) {
            out += static_cast<char>(byte);
            ++at_;
        } else if (!utf8_sequence(out)) {
            return false;
        }
    }
}

inline bool json_reader::hex4(std::uint32_t& out) {
    out = 0;
    for (int i = 0; i < 4; ++i, ++at_) {
        const char c = peek();
        std::uint32_t digit = 0;
        if (c >= '0' && c <= '9') {
            digit = static_cast<std::uint32_t>(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            digit = static_cast<std::uint32_t>(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            digit = static_cast<std::uint32_t>(c - 'A' + 10);
        } else {
            return fail("expected four hex digits after \\u");
        }
        out = out * 16 + digit;
    }
    return true;
}

inline bool json_reader::escape(std::string& out) {
    ++at_; // '\\'
    const char c = peek();
    ++at_;
    switch (c) {
    case '"':
        out += '"';
        return true;
    case '\\':
        out += '\\';
        return true;
    case '/':
        out += '/';
        return true;
    case 'b':
        out += '\b';
        return true;
    case 'f':
        out += '\f';
        return true;
    case 'n':
        out += '\n';
        return true;
    case 'r':
        out += '\r';
        return true;
    case 't':
        out += '\t';
        return true;
    case 'u':
        break;
    default:
        --at_;
        return fail("an unknown escape in a string");
    }
    std::uint32_t code = 0;
    if (!hex4(code)) {
        return false;
    }
    if (code >= 0xDC00 && code <= 0xDFFF) {
        return fail("a low surrogate without a high one");
    }
    if (code >= 0xD800 && code <= 0xDBFF) { // a high surrogate: its low one must follow
        std::uint32_t low = 0;
        if (!take('\\') || !take('u') || !hex4(low) || low < 0xDC00 || low > 0xDFFF) {
            return fail("a high surrogate without a low one");
        }
        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
    }
    append_utf8(out, code);
    return true;
}

inline bool json_reader::utf8_sequence(std::string& out) {
    // RFC 3629: the lead byte says the length; continuation bytes are 10xxxxxx; no overlong
    // forms, no surrogates, nothing past U+10FFFF.
    const auto lead = static_cast<unsigned char>(text_[at_]);
    std::size_t length = 0;
    std::uint32_t code = 0;
    std::uint32_t lowest = 0;
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2, code = lead & 0x1Fu, lowest = 0x80;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3, code = lead & 0x0Fu, lowest = 0x800;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4, code = lead & 0x07u, lowest = 0x10000;
    } else {
        return fail("invalid UTF-8 in a string");
    }
    if (text_.size() - at_ < length) {
        return fail("invalid UTF-8 in a string");
    }
    for (std::size_t i = 1; i < length; ++i) {
        const auto next = static_cast<unsigned char>(text_[at_ + i]);
        if ((next & 0xC0) != 0x80) {
            return fail("invalid UTF-8 in a string");
        }
        code = (code << 6) | (next & 0x3Fu);
    }
    if (code < lowest || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
        return fail("invalid UTF-8 in a string");
    }
    out.append(text_.data() + at_, length);
    at_ += length;
    return true;
}

inline bool json_reader::number(json_value& out) {
    const std::size_t start = at_;
    auto digits = [&] {
        const std::size_t first = at_;
        while (!at_end() && text_[at_] >= '0' && text_[at_] <= '9') {
            ++at_;
        }
        return at_ > first;
    };
    take('-');
    if (take('0')) {
        if (peek() >= '0' && peek() <= '9') {
            return fail("a number with a leading zero");
        }
    } else if (!digits()) {
        return fail("expected digits in a number");
    }
    if (take('.') && !digits()) {
        return fail("expected digits after '.' in a number");
    }
    if (take('e') || take('E')) {
        if (!take('+')) {
            take('-');
        }
        if (!digits()) {
            return fail("expected digits in a number's exponent");
        }
    }
    out = json_value::number_from_text(std::string(text_.substr(start, at_ - start)));
    return true;
}

} // namespace detail

inline std::optional<json_value> parse_json(std::string_view text, std::string& error,
                                            std::size_t max_depth) {
    detail::json_reader reader(text, max_depth);
    return reader.document(error);
}

inline bool json_value::as_double(double& out) const noexcept {
    if (kind_ != kind::number) {
        return false;
    }
    const auto [end, error] = std::from_chars(text_.data(), text_.data() + text_.size(), out);
    return error == std::errc() && end == text_.data() + text_.size();
}

inline bool json_value::as_int64(std::int64_t& out) const noexcept {
    if (kind_ != kind::number || text_.find_first_of(".eE") != std::string::npos) {
        return false;
    }
    const auto [end, error] = std::from_chars(text_.data(), text_.data() + text_.size(), out);
    return error == std::errc() && end == text_.data() + text_.size();
}

inline const json_value* json_value::find(std::string_view key) const noexcept {
    for (const member& m : object_) {
        if (m.first == key) {
            return &m.second;
        }
    }
    return nullptr;
}

inline json_value& json_value::set(std::string key, json_value value) {
    if (kind_ == kind::null) {
        kind_ = kind::object;
    }
    for (member& m : object_) {
        if (m.first == key) {
            m.second = std::move(value);
            return m.second;
        }
    }
    object_.emplace_back(std::move(key), std::move(value));
    return object_.back().second;
}

inline void json_value::push_back(json_value value) {
    if (kind_ == kind::null) {
        kind_ = kind::array;
    }
    array_.push_back(std::move(value));
}

inline std::string json_value::integer_text(std::int64_t value) {
    char text[24];
    const auto [end, error] = std::to_chars(text, text + sizeof text, value);
    return error == std::errc() ? std::string(text, end) : std::string("0");
}

inline std::string json_value::number_text(double value) {
    char text[32];
    const auto [end, error] = std::to_chars(text, text + sizeof text, value);
    const std::string written = error == std::errc() ? std::string(text, end) : std::string();
    // JSON has no inf or nan: they are written as 0 rather than as text no reader takes.
    if (written.empty() || written.find_first_of("in") != std::string::npos) {
        return "0";
    }
    return written;
}

inline std::string json_value::dump() const {
    std::string out;
    dump_to(out);
    return out;
}

inline void json_value::dump_to(std::string& out) const {
    switch (kind_) {
    case kind::null:
        out += "null";
        return;
    case kind::boolean:
        out += boolean_ ? "true" : "false";
        return;
    case kind::number:
        out += text_;
        return;
    case kind::string:
        detail::write_json_string(out, text_);
        return;
    case kind::array:
        out += '[';
        for (std::size_t i = 0; i < array_.size(); ++i) {
            out += i == 0 ? "" : ",";
            array_[i].dump_to(out);
        }
        out += ']';
        return;
    case kind::object:
        out += '{';
        for (std::size_t i = 0; i < object_.size(); ++i) {
            out += i == 0 ? "" : ",";
            detail::write_json_string(out, object_[i].first);
            out += ':';
            object_[i].second.dump_to(out);
        }
        out += '}';
        return;
    }
}

} // namespace tinyproxy
// ---- end tinyproxy/json.hpp ----
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
// ---- end tinyproxy/address.hpp ----
// #include "tinyproxy/detail/sys.hpp"
// ---- begin tinyproxy/detail/sys.hpp ----
// One thin wrapper per system call: (args..., std::error_code&) noexcept, EINTR handled here.

#include <atomic>       // the budget of grown pipes
#include <cerrno>       // errno
#include <chrono>       // deadlines
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint8_t
#include <limits>       // the highest descriptor number
#include <system_error> // std::error_code
#include <utility>      // std::exchange

#include <fcntl.h>        // fcntl, O_NONBLOCK, FD_CLOEXEC
#include <netinet/in.h>   // IPPROTO_TCP
#include <netinet/tcp.h>  // TCP_NODELAY
#include <poll.h>         // poll
#include <signal.h>       // pthread_sigmask, sigpending, sigtimedwait: SIGPIPE without a handler
#include <sys/mman.h>     // mmap, munmap: memory of our own, not the heap's
#include <sys/resource.h> // getrlimit
#include <sys/socket.h>   // socket calls
#include <time.h>         // timespec, the zero timeout of sigtimedwait
#include <unistd.h>       // close, pipe, read, write

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/error.hpp"

// After config.hpp, which defines the feature macros.
#if TINYPROXY_HAS_CLOSE_RANGE
#    include <sys/syscall.h> // SYS_close_range
#endif

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

#if TINYPROXY_HAS_RDHUP
/// What poll(2) reports (and epoll as EPOLLRDHUP) once the peer has sent its FIN.
constexpr short peer_closed_event = POLLRDHUP;
/// send(2): hold these bytes back for what follows at once (here, our FIN): one segment.
constexpr int more_follows_flag = MSG_MORE;
#else
constexpr short peer_closed_event = 0;
constexpr int more_follows_flag = 0;
#endif

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

/// recvfrom(2) of one datagram: its length (MSG_TRUNC where the platform has it: a datagram
/// longer than `size` reports its full length, so the caller can tell it was cut), and the
/// sender in `from`; EINTR retried; EAGAIN as for recv_some.
inline std::size_t recvfrom_some(int fd, void* data, std::size_t size, sockaddr_storage& from,
                                 socklen_t& from_length, std::error_code& ec) noexcept {
#ifdef MSG_TRUNC
    const int flags = MSG_TRUNC;
#else
    const int flags = 0;
#endif
    for (;;) {
        from_length = sizeof from;
        ssize_t n =
            ::recvfrom(fd, data, size, flags, reinterpret_cast<sockaddr*>(&from), &from_length);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
}

/// sendto(2) of one datagram; never raises SIGPIPE; EINTR retried.
inline std::size_t sendto_some(int fd, const void* data, std::size_t size, const sockaddr* to,
                               socklen_t to_length, std::error_code& ec) noexcept {
    int flags = 0;
#if TINYPROXY_HAS_MSG_NOSIGNAL
    flags |= MSG_NOSIGNAL;
#endif
    for (;;) {
        ssize_t n = ::sendto(fd, data, size, flags, to, to_length);
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

/// SO_LINGER 0: close() then sends a reset instead of a FIN.
inline bool set_linger_reset(int fd, std::error_code& ec) noexcept {
    ::linger option{1, 0};
    if (::setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, sizeof option) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

/// TCP_NODELAY: small writes go out at once instead of being batched (Nagle off).
inline bool set_nodelay(int fd, bool on, std::error_code& ec) noexcept {
    return set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0, ec);
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

/// What poll(2) reports for one descriptor right now, without waiting: 0 for nothing (or a
/// failed poll, which the caller's next real wait will meet again).
inline short ready_now(int fd, short events) noexcept {
    pollfd entry{fd, events, 0};
    return ::poll(&entry, 1, 0) == 1 ? entry.revents : 0;
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

/// A pipe with both ends close-on-exec, and non-blocking when asked.
inline bool make_pipe(int (&fds)[2], std::error_code& ec, bool nonblocking = false) noexcept {
#if TINYPROXY_HAS_SOCK_FLAGS
    if (::pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0)) < 0) {
        ec = last_error();
        return false;
    }
    return true;
#else
    if (::pipe(fds) < 0) {
        ec = last_error();
        return false;
    }
    if (!set_cloexec(fds[0], ec) || !set_cloexec(fds[1], ec) ||
        (nonblocking &&
         (!set_nonblocking(fds[0], true, ec) || !set_nonblocking(fds[1], true, ec)))) {
        close_fd(fds[0]);
        close_fd(fds[1]);
        return false;
    }
    return true;
#endif
}

/// A share of a process-wide budget (relay::shared_pipe_budget): taken once, given back when
/// released or destroyed, moved with its owner.
class pipe_growth {
public:
    pipe_growth() = default;
    pipe_growth(pipe_growth&& other) noexcept : held_(std::exchange(other.held_, false)) {}
    pipe_growth& operator=(pipe_growth&& other) noexcept {
        if (this != &other) {
            release();
            held_ = std::exchange(other.held_, false);
        }
        return *this;
    }
    pipe_growth(const pipe_growth&) = delete;
    pipe_growth& operator=(const pipe_growth&) = delete;
    ~pipe_growth() { release(); }

    /// Takes a share if fewer than `budget` are held in the process; false otherwise.
    bool take(int budget) noexcept {
        if (held_) {
            return true;
        }
        if (in_use().fetch_add(1, std::memory_order_relaxed) >= budget) {
            in_use().fetch_sub(1, std::memory_order_relaxed);
            return false;
        }
        held_ = true;
        return true;
    }
    void release() noexcept {
        if (held_) {
            in_use().fetch_sub(1, std::memory_order_relaxed);
            held_ = false;
        }
    }
    explicit operator bool() const noexcept { return held_; }
    /// The shares held in the process now (for tests).
    static int held_in_process() noexcept { return in_use().load(std::memory_order_relaxed); }

private:
    static std::atomic<int>& in_use() noexcept {
        static std::atomic<int> count{0};
        return count;
    }
    bool held_ = false;
};

/// Asks the kernel to let the pipe hold `size` bytes (F_SETPIPE_SZ, Linux) and returns what it
/// holds now: `size` or more when granted, its old capacity when refused (a user past the pipe
/// quota, or past pipe-max-size), 0 when even that is unknown.
inline std::size_t grow_pipe(int fd, std::size_t size) noexcept {
#if defined(F_SETPIPE_SZ) && defined(F_GETPIPE_SZ)
    int granted = ::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(size));
    if (granted < 0) {
        granted = ::fcntl(fd, F_GETPIPE_SZ);
    }
    return granted < 0 ? 0 : static_cast<std::size_t>(granted);
#else
    (void)fd;
    (void)size;
    return 64 * 1024; // POSIX says nothing; Linux and the BSDs make 64 KiB pipes
#endif
}

/// Memory in a private anonymous mapping of its own (empty if mmap fails), unmapped with it.
/// Not zero-filled by us: its pages are the kernel's zero page until written, so only what is
/// written costs memory, and in a fork child none of it is a copy of the parent's heap.
class mapped_buffer {
public:
    mapped_buffer() noexcept = default;
    explicit mapped_buffer(std::size_t size) noexcept {
        if (size == 0) {
            return;
        }
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            data_ = static_cast<std::uint8_t*>(p);
            size_ = size;
        }
    }
    mapped_buffer(mapped_buffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    mapped_buffer& operator=(mapped_buffer&& other) noexcept {
        if (this != &other) {
            release();
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }
    ~mapped_buffer() { release(); }

    std::uint8_t* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }

private:
    void release() noexcept {
        if (data_ != nullptr) {
            ::munmap(data_, size_);
        }
        data_ = nullptr;
        size_ = 0;
    }

    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

/// splice(2): moves up to `size` bytes from `from` to `to`, one of them a pipe, without copying
/// them through user space (SPLICE_F_MOVE) and without waiting on the pipe (SPLICE_F_NONBLOCK;
/// a socket must be non-blocking itself). Returns the count moved, 0 meaning end of stream when
/// `from` is a socket; EINTR retried; EAGAIN comes back as an error for which would_block() is
/// true. Fails with ENOSYS where the platform has no splice(2) (TINYPROXY_HAS_SPLICE is 0).
/// Unlike send_some it cannot say MSG_NOSIGNAL: into a socket whose peer is gone it raises
/// SIGPIPE, so whoever splices into a socket holds a sigpipe_guard.
inline std::size_t splice_some(int from, int to, std::size_t size, std::error_code& ec) noexcept {
#if TINYPROXY_HAS_SPLICE
    for (;;) {
        ssize_t n = ::splice(from, nullptr, to, nullptr, size, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
#else
    (void)from;
    (void)to;
    (void)size;
    ec = std::make_error_code(std::errc::function_not_supported);
    return 0;
#endif
}

/// pthread_sigmask(3): changes or reads the calling thread's signal mask. (It reports failure
/// by its return value, not errno.)
inline bool thread_signal_mask(int how, const sigset_t* set, sigset_t* old,
                               std::error_code& ec) noexcept {
    int error = ::pthread_sigmask(how, set, old);
    if (error != 0) {
        ec = std::error_code(error, std::system_category());
        return false;
    }
    return true;
}

/// sigpending(2): the signals pending for the calling thread or for the whole process.
inline bool pending_signals(sigset_t& pending, std::error_code& ec) noexcept {
    if (::sigpending(&pending) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

/// sigtimedwait(2) with a zero timeout: takes one pending signal of `set` (one directed at this
/// thread first, then one at the process) without waiting. Returns its number, or 0 when none of
/// `set` is pending. EINTR retried. Only where splice(2) exists, the one reason to call it;
/// elsewhere it takes nothing and returns 0.
inline int take_pending_signal(const sigset_t& set, std::error_code& ec) noexcept {
#if TINYPROXY_HAS_SPLICE
    const timespec no_wait{0, 0};
    for (;;) {
        int signal_number = ::sigtimedwait(&set, nullptr, &no_wait);
        if (signal_number > 0) {
            return signal_number;
        }
        if (errno == EAGAIN) {
            return 0;
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
#else
    (void)set;
    (void)ec;
    return 0;
#endif
}

/// Blocks SIGPIPE in the calling thread for its lifetime, and afterwards unblocks it only if it
/// was not blocked before; it installs no handler and leaves every other signal alone. It is for
/// writes that cannot say MSG_NOSIGNAL (splice(2) into a socket): while the guard lives, the
/// SIGPIPE such a write raises stays pending instead of killing the process, and
/// take_raised() then takes it back. A SIGPIPE that was already pending when the guard began
/// (the user's own, directed at this thread or the process) is left alone.
class sigpipe_guard {
public:
    sigpipe_guard() noexcept;
    ~sigpipe_guard();
    sigpipe_guard(const sigpipe_guard&) = delete;
    sigpipe_guard& operator=(const sigpipe_guard&) = delete;

    /// Call after a write into a socket failed: takes the SIGPIPE the write raised, if any.
    void take_raised() noexcept;

private:
    static sigset_t only_sigpipe() noexcept {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        return set;
    }

    bool unblock_at_end_ = false; // SIGPIPE was not blocked before: this guard blocked it
    bool was_pending_ = false;    // a SIGPIPE was pending already when the guard began
};

inline sigpipe_guard::sigpipe_guard() noexcept {
    const sigset_t set = only_sigpipe();
    sigset_t before;
    std::error_code ec;
    if (!thread_signal_mask(SIG_BLOCK, &set, &before, ec)) {
        return;
    }
    unblock_at_end_ = sigismember(&before, SIGPIPE) != 1;
    // While SIGPIPE is not blocked nothing can be pending for us: it would have been delivered.
    sigset_t pending;
    if (!unblock_at_end_ && pending_signals(pending, ec)) {
        was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    }
}

inline sigpipe_guard::~sigpipe_guard() {
    if (unblock_at_end_) {
        const sigset_t set = only_sigpipe();
        std::error_code ignored;
        thread_signal_mask(SIG_UNBLOCK, &set, nullptr, ignored);
    }
}

inline void sigpipe_guard::take_raised() noexcept {
    if (!was_pending_) {
        // A write raises SIGPIPE at this thread, and sigtimedwait takes those first.
        std::error_code ignored;
        (void)take_pending_signal(only_sigpipe(), ignored);
    }
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

#include <array>        // IPv4-mapped addresses
#include <atomic>       // the stop signal, set from any thread or a signal handler
#include <cstddef>      // std::size_t
#include <cstring>      // std::memcpy
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

namespace detail {

/// A stop request that any thread, a signal handler or a forked child's parent can make, and
/// that a poll(2) sees: the read end of a pipe turns readable (end of file) once the write end
/// is closed.
class stop_signal {
public:
    stop_signal() noexcept = default;
    stop_signal(const stop_signal&) = delete;
    stop_signal& operator=(const stop_signal&) = delete;
    ~stop_signal() { close_writer(); }

    /// Makes the pipe; a request made before it stays made (the write end is closed at once).
    bool open(std::error_code& ec) noexcept {
        int fds[2] = {-1, -1};
        if (!make_pipe(fds, ec)) {
            return false;
        }
        read_.reset(fds[0]);
        close_fd(write_.exchange(fds[1]));
        if (requested()) {
            close_writer(); // request() came first
        }
        return true;
    }
    /// Async-signal-safe: an atomic store, an atomic exchange and a close(2).
    void request() noexcept {
        requested_.store(true, std::memory_order_release);
        close_writer();
    }
    bool requested() const noexcept { return requested_.load(std::memory_order_acquire); }
    /// The end to wait on; -1 before open() and after close().
    int fd() const noexcept { return read_.get(); }
    /// Drops the write end only (a forked child drops its parent's).
    void close_writer() noexcept { close_fd(write_.exchange(-1)); }
    void close() noexcept {
        read_.reset();
        close_writer();
    }

private:
    unique_fd read_;
    std::atomic<int> write_{-1};
    std::atomic<bool> requested_{false};
};

} // namespace detail

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
        detail::set_nodelay(fd_.get(), on, ec);
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
    /// Nagle off for the listener, and so (TINYPROXY_ACCEPT_INHERITS_NODELAY) for every socket
    /// accept() takes from it from then on.
    void set_nodelay(bool on, std::error_code& ec) noexcept {
        ec.clear();
        detail::set_nodelay(fd_.get(), on, ec);
    }
    /// The bound address, with the real port when port 0 was asked for.
    endpoint local_endpoint() const noexcept { return local_; }
    void close() noexcept { fd_.reset(); }

private:
    unique_fd fd_;
    endpoint local_;
};

/// A non-blocking UDP socket bound to one address: what a SOCKS5 UDP association relays through.
class datagram_socket {
public:
    datagram_socket() noexcept = default;

    /// Binds `where` (port 0: any free port; an IPv6 socket takes IPv6 only), non-blocking.
    static datagram_socket open(const endpoint& where, std::error_code& ec) noexcept;
    /// Binds every address of both families ([::] with IPv4 mapped in), a free port: one socket
    /// that reaches IPv4 and IPv6 peers alike, from whichever local address routes there.
    /// Where the host has no IPv6, 0.0.0.0. IPv4 peers are named as IPv4, never as ::ffff:...
    static datagram_socket open_any(std::error_code& ec) noexcept;

    /// One datagram into `data`: its full length (more than `size` when it was cut short, where
    /// the platform says so), and its sender in `from`. would_block when there is none.
    std::size_t receive_from(void* data, std::size_t size, endpoint& from,
                             std::error_code& ec) noexcept;
    /// Sends one datagram to `to`; would_block when the socket's buffer is full.
    void send_to(const void* data, std::size_t size, const endpoint& to,
                 std::error_code& ec) noexcept;

    int native_handle() const noexcept { return fd_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(fd_); }
    /// The bound address, with the real port when port 0 was asked for.
    endpoint local_endpoint() const noexcept { return local_; }
    void close() noexcept { fd_.reset(); }

private:
    unique_fd fd_;
    endpoint local_;
    bool dual_stack_ = false; // an IPv6 socket that takes IPv4 too, as ::ffff:a.b.c.d
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

inline datagram_socket datagram_socket::open(const endpoint& where, std::error_code& ec) noexcept {
    ec.clear();
    int family = where.address.is_v6() ? AF_INET6 : AF_INET;
    unique_fd fd(detail::open_socket(family, SOCK_DGRAM, true, ec));
    if (ec) {
        return {};
    }
    if (family == AF_INET6 && !detail::set_int_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, ec)) {
        return {};
    }
    sockaddr_storage storage{};
    socklen_t length = to_sockaddr(where, storage);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) < 0) {
        ec = detail::last_error();
        return {};
    }
    datagram_socket out;
    out.local_ = detail::socket_name(fd.get(), false, ec);
    if (ec) {
        return {};
    }
    out.fd_ = std::move(fd);
    return out;
}

inline datagram_socket datagram_socket::open_any(std::error_code& ec) noexcept {
    ec.clear();
    unique_fd fd(detail::open_socket(AF_INET6, SOCK_DGRAM, true, ec));
    if (ec || !detail::set_int_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 0, ec)) {
        return open(endpoint{}, ec); // no IPv6 here: IPv4 alone
    }
    sockaddr_storage storage{};
    socklen_t length = to_sockaddr(endpoint{ip_address::any_v6(), 0}, storage);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) < 0) {
        ec = detail::last_error();
        return {};
    }
    datagram_socket out;
    out.local_ = detail::socket_name(fd.get(), false, ec);
    if (ec) {
        return {};
    }
    out.fd_ = std::move(fd);
    out.dual_stack_ = true;
    return out;
}

inline std::size_t datagram_socket::receive_from(void* data, std::size_t size, endpoint& from,
                                                 std::error_code& ec) noexcept {
    ec.clear();
    sockaddr_storage storage{};
    socklen_t length = 0;
    std::size_t n = detail::recvfrom_some(fd_.get(), data, size, storage, length, ec);
    if (!ec) {
        from = from_sockaddr(reinterpret_cast<sockaddr*>(&storage), length);
        if (dual_stack_) {
            from.address = detail::unmapped(from.address);
        }
    }
    return n;
}

inline void datagram_socket::send_to(const void* data, std::size_t size, const endpoint& to,
                                     std::error_code& ec) noexcept {
    ec.clear();
    sockaddr_storage storage{};
    endpoint destination = to;
    if (dual_stack_ && to.address.is_v4()) { // ::ffff:a.b.c.d
        std::array<std::uint8_t, 16> mapped{};
        mapped[10] = 0xFF;
        mapped[11] = 0xFF;
        std::memcpy(mapped.data() + 12, to.address.bytes().data(), 4);
        destination.address = ip_address::v6(mapped);
    }
    socklen_t length = to_sockaddr(destination, storage);
    detail::sendto_some(fd_.get(), data, size, reinterpret_cast<sockaddr*>(&storage), length, ec);
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
// #include "tinyproxy/poller.hpp"
// ---- begin tinyproxy/poller.hpp ----
// Readiness for many descriptors at once: poll(2) everywhere, epoll(7) on Linux. The event loop
// (policy/detail/event_loop.hpp) is their only user; each is one of its template arguments.

#include <cstddef>      // std::size_t
#include <cstdint>      // tokens
#include <system_error> // std::error_code
#include <vector>       // descriptor sets, ready lists

#include <cerrno> // EEXIST, ENOENT
#include <poll.h> // poll, POLLIN, ...

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/detail/sys.hpp"

// After config.hpp, which defines the feature macros.
#if TINYPROXY_HAS_EPOLL
#    include <sys/epoll.h> // epoll_create1, epoll_ctl, epoll_wait
#endif

namespace tinyproxy {

/// Where one watched descriptor stands in a poller. It belongs to whoever owns the descriptor
/// and must stay at the same address while registered (the poll(2) poller points back at it).
struct poller_slot {
    static constexpr std::size_t none = static_cast<std::size_t>(-1);
    int fd = -1;              ///< the descriptor registered, -1 for none
    short events = 0;         ///< POLLIN and/or POLLOUT it waits for (and POLLRDHUP)
    std::uint32_t serial = 0; ///< which socket of that number (numbers are reused)
    std::size_t index = none; ///< poll_poller only: its place in the pollfd array
};

/// A descriptor that is ready: the token it was registered with, and poll(2)-style revents.
struct ready_event {
    std::uint64_t token;
    short revents;
};

/// The Poller interface (both below keep it):
///     bool update(poller_slot&, int fd, short events, std::uint32_t serial,
///                 std::uint64_t token, std::error_code&) noexcept;
///         Watch `fd` for `events` (0 still reports errors and hang-ups) and report `token`;
///         fd -1 stops watching. `serial` changes when the owner's socket was closed and a new
///         one took its place, which may have the same number.
///     bool watch_shared(poller_slot&, int fd, std::uint64_t token, std::error_code&) noexcept;
///         Watch `fd` for reading where other pollers watch it too (a listener several event
///         loops accept from): a new client wakes one waiting poller, not every one of them
///         (epoll: EPOLLEXCLUSIVE). update() with fd -1 stops watching it.
///     void forget(poller_slot&) noexcept;   // the descriptor is already closed
///     void close() noexcept;                // done: release what the poller holds
///     void wait(time_point until, std::vector<ready_event>& out, std::error_code&) noexcept;
///         Appends what is ready; returns early (with nothing) on a signal.

/// poll(2): portable, and cheap while the set is small. The set is kept between waits (no
/// rebuild per turn), but poll(2) itself scans every descriptor on each call.
class poll_poller {
public:
    bool update(poller_slot& slot, int fd, short events, std::uint32_t serial, std::uint64_t token,
                std::error_code& ec) noexcept;
    /// poll(2) has no way to wake only one of several waiters: every one of them is told.
    bool watch_shared(poller_slot& slot, int fd, std::uint64_t token,
                      std::error_code& ec) noexcept {
        return update(slot, fd, POLLIN, 0, token, ec);
    }
    void forget(poller_slot& slot) noexcept { remove(slot); }
    void close() noexcept {
        fds_.clear();
        tokens_.clear();
        owners_.clear();
    }
    void wait(time_point until, std::vector<ready_event>& out, std::error_code& ec) noexcept;

private:
    void remove(poller_slot& slot) noexcept;

    std::vector<pollfd> fds_;
    std::vector<std::uint64_t> tokens_;
    std::vector<poller_slot*> owners_; // to fix a slot's index when another moves into place
};

inline bool poll_poller::update(poller_slot& slot, int fd, short events, std::uint32_t serial,
                                std::uint64_t token, std::error_code& ec) noexcept {
    if (fd < 0) {
        remove(slot);
        return true;
    }
    if (slot.index == poller_slot::none) {
        try {
            fds_.push_back({fd, events, 0});
            tokens_.push_back(token);
            owners_.push_back(&slot);
        } catch (...) {
            fds_.resize(owners_.size());
            tokens_.resize(owners_.size());
            ec = std::make_error_code(std::errc::not_enough_memory);
            return false;
        }
        slot.index = fds_.size() - 1;
    }
    fds_[slot.index] = {fd, events, 0};
    tokens_[slot.index] = token;
    slot.fd = fd;
    slot.events = events;
    slot.serial = serial;
    return true;
}

inline void poll_poller::remove(poller_slot& slot) noexcept {
    // A registered slot's index is always inside the set; saying so (rather than only
    // `!= none`) also shows g++'s optimiser that the set is not empty here, where it would
    // otherwise warn (-Warray-bounds) about popping an empty vector.
    if (slot.index < fds_.size()) {
        std::size_t last = fds_.size() - 1;
        if (slot.index != last) { // the last one moves into the hole
            fds_[slot.index] = fds_[last];
            tokens_[slot.index] = tokens_[last];
            owners_[slot.index] = owners_[last];
            owners_[slot.index]->index = slot.index;
        }
        fds_.pop_back();
        tokens_.pop_back();
        owners_.pop_back();
    }
    slot = poller_slot{};
}

inline void poll_poller::wait(time_point until, std::vector<ready_event>& out,
                              std::error_code& ec) noexcept {
    try {
        out.reserve(out.size() + fds_.size());
    } catch (...) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return;
    }
    int ready = detail::poll_fds(fds_.data(), static_cast<nfds_t>(fds_.size()), until, ec);
    for (std::size_t i = 0; ready > 0 && i < fds_.size(); ++i) {
        if (fds_[i].revents != 0) {
            out.push_back({tokens_[i], fds_[i].revents});
            --ready;
        }
    }
}

#if TINYPROXY_HAS_EPOLL

/// epoll(7), level-triggered, so it reports exactly what poll(2) would: the cost of a wait
/// follows the descriptors that are ready, not the number watched, and an unchanged interest
/// costs no system call.
class epoll_poller {
public:
    epoll_poller() noexcept : epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)) {}
    epoll_poller(epoll_poller&& other) noexcept : epoll_fd_(other.epoll_fd_) {
        other.epoll_fd_ = -1;
    }
    epoll_poller& operator=(epoll_poller&& other) noexcept {
        if (this != &other) {
            detail::close_fd(epoll_fd_);
            epoll_fd_ = other.epoll_fd_;
            other.epoll_fd_ = -1;
        }
        return *this;
    }
    ~epoll_poller() { close(); }
    /// Done with: the descriptor is closed (a proxy runs once, and leaves nothing open).
    void close() noexcept {
        detail::close_fd(epoll_fd_);
        epoll_fd_ = -1;
    }

    bool update(poller_slot& slot, int fd, short events, std::uint32_t serial, std::uint64_t token,
                std::error_code& ec) noexcept;
    bool watch_shared(poller_slot& slot, int fd, std::uint64_t token, std::error_code& ec) noexcept;
    /// Closing a descriptor took it out of the epoll set already.
    void forget(poller_slot& slot) noexcept { slot = poller_slot{}; }
    void wait(time_point until, std::vector<ready_event>& out, std::error_code& ec) noexcept;

private:
    static std::uint32_t to_epoll(short events) noexcept {
        return ((events & POLLIN) != 0 ? EPOLLIN : 0u) | ((events & POLLOUT) != 0 ? EPOLLOUT : 0u) |
               ((events & POLLRDHUP) != 0 ? EPOLLRDHUP : 0u);
    }
    static short to_poll(std::uint32_t events) noexcept {
        return static_cast<short>(
            ((events & EPOLLIN) != 0 ? POLLIN : 0) | ((events & EPOLLOUT) != 0 ? POLLOUT : 0) |
            ((events & EPOLLERR) != 0 ? POLLERR : 0) | ((events & EPOLLHUP) != 0 ? POLLHUP : 0) |
            ((events & EPOLLRDHUP) != 0 ? POLLRDHUP : 0));
    }
    bool control(int op, int fd, short events, std::uint64_t token, std::error_code& ec,
                 std::uint32_t flags = 0) noexcept;

    int epoll_fd_;
    epoll_event ready_[256];
};

inline bool epoll_poller::control(int op, int fd, short events, std::uint64_t token,
                                  std::error_code& ec, std::uint32_t flags) noexcept {
    epoll_event event{};
    event.events = to_epoll(events) | flags;
    event.data.u64 = token;
    if (::epoll_ctl(epoll_fd_, op, fd, &event) == 0) {
        return true;
    }
    ec = detail::last_error();
    return false;
}

inline bool epoll_poller::update(poller_slot& slot, int fd, short events, std::uint32_t serial,
                                 std::uint64_t token, std::error_code& ec) noexcept {
    if (epoll_fd_ < 0) {
        ec = std::make_error_code(std::errc::too_many_files_open);
        return false;
    }
    if (fd < 0) {
        if (slot.fd >= 0) { // still open: unwatched, it would keep reporting its hang-up
            std::error_code ignored;
            control(EPOLL_CTL_DEL, slot.fd, 0, 0, ignored);
        }
        slot = poller_slot{};
        return true;
    }
    bool same_socket = slot.fd == fd && slot.serial == serial;
    if (same_socket && slot.events == events) {
        return true;
    }
    std::error_code first;
    // A new socket is added; one whose number we held before was closed meanwhile (closing
    // took it out of the set), so it is added too. MOD/ADD fall back to each other for the
    // rare case where that guess is wrong.
    int op = same_socket ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (!control(op, fd, events, token, first)) {
        int other = op == EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
        bool retry = first.value() == (op == EPOLL_CTL_MOD ? ENOENT : EEXIST);
        if (!retry || !control(other, fd, events, token, ec)) {
            ec = retry ? ec : first;
            return false;
        }
    }
    slot.fd = fd;
    slot.events = events;
    slot.serial = serial;
    return true;
}

inline bool epoll_poller::watch_shared(poller_slot& slot, int fd, std::uint64_t token,
                                       std::error_code& ec) noexcept {
    if (epoll_fd_ < 0) {
        ec = std::make_error_code(std::errc::too_many_files_open);
        return false;
    }
    if (slot.fd == fd) {
        return true; // an exclusive watch cannot be modified, and need not be
    }
    std::error_code first;
    // EPOLLEXCLUSIVE came with Linux 4.5; an older kernel says EINVAL, and wakes everyone.
    if (!control(EPOLL_CTL_ADD, fd, POLLIN, token, first, EPOLLEXCLUSIVE) &&
        (first != std::errc::invalid_argument || !control(EPOLL_CTL_ADD, fd, POLLIN, token, ec))) {
        ec = ec ? ec : first;
        return false;
    }
    slot.fd = fd;
    slot.events = POLLIN;
    slot.serial = 0;
    return true;
}

inline void epoll_poller::wait(time_point until, std::vector<ready_event>& out,
                               std::error_code& ec) noexcept {
    constexpr int capacity = static_cast<int>(sizeof ready_ / sizeof ready_[0]);
    try {
        out.reserve(out.size() + capacity);
    } catch (...) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return;
    }
    int n = ::epoll_wait(epoll_fd_, ready_, capacity, detail::poll_timeout_ms(until));
    if (n < 0) {
        if (errno != EINTR) {
            ec = detail::last_error();
        }
        return;
    }
    for (int i = 0; i < n; ++i) {
        out.push_back({ready_[i].data.u64, to_poll(ready_[i].events)});
    }
}

#endif // TINYPROXY_HAS_EPOLL

} // namespace tinyproxy
// ---- end tinyproxy/poller.hpp ----
// #include "tinyproxy/protocol/step.hpp"
// ---- begin tinyproxy/protocol/step.hpp ----
// handshake_step: what a sans-I/O handshake parser answers each time it is fed bytes.

#include <cstdint>      // bytes
#include <string>       // credentials
#include <string_view>  // host names
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
///
/// A connect step is one of three requests (`kind`), as SOCKS has them: a TCP connection to
/// `target` (CONNECT); a listener that waits for one connection from `target` (BIND, SOCKS4 and
/// SOCKS5); a UDP relay for the client, whose datagrams come from `target` when that is not
/// empty or zero (UDP ASSOCIATE, SOCKS5).
struct handshake_step {
    enum class action {
        need_more, ///< send `to_client` (if any), then feed the client's next bytes
        connect,   ///< connect to `target`, then send `to_upstream` first
        fail,      ///< send `to_client` (if any), then close; `error` says why
    };
    /// What a connect step asks for (see above).
    enum class request {
        connect,       ///< a TCP connection to `target`
        bind,          ///< accept one TCP connection from `target`
        udp_associate, ///< relay UDP for a client whose datagrams come from `target`
    };
    action what = action::need_more;
    request kind = request::connect;
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
    /// A connect step for a request other than CONNECT (BIND, UDP ASSOCIATE).
    static handshake_step request_for(request what, host_port where,
                                      std::vector<std::uint8_t> first_bytes = {}) {
        handshake_step s = connect_to(std::move(where), std::move(first_bytes));
        s.kind = what;
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

namespace detail {

/// A host name a client sent (SOCKS4a, SOCKS5): not empty, no NUL or other control character.
inline bool usable_host_name(std::string_view name) noexcept {
    if (name.empty()) {
        return false;
    }
    for (char c : name) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7F) {
            return false;
        }
    }
    return true;
}

} // namespace detail

} // namespace tinyproxy
// ---- end tinyproxy/protocol/step.hpp ----
// #include "tinyproxy/protocol/http_connect.hpp"
// ---- begin tinyproxy/protocol/http_connect.hpp ----
// HTTP CONNECT (RFC 9110 section 9.3.6) as a sans-I/O handshake: a request head in, a target or
// a complete HTTP error response out.

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // configured credentials, the Proxy-Authorization value
#include <string>       // lines, responses
#include <string_view>  // parsing
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // byte buffers

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"

namespace tinyproxy {

/// The server side of an HTTP CONNECT handshake, one object per client. It is fed whatever
/// bytes arrived (any split, down to one byte at a time) and answers with a handshake_step:
///  - need_more: the head is not complete yet;
///  - connect: `target` is the request's "host:port"; `to_upstream` holds the bytes the client
///    sent after the blank line that ends its head (the start of the tunnel), untouched;
///  - fail: `to_client` is a complete HTTP/1.1 response ("Connection: close", no body) to send
///    before closing, and `error` says why.
/// Once a step is connect or fail the handshake is over: a further feed() answers fail
/// (errc::protocol_error) with nothing to send. After connecting upstream, the caller sends
/// connected() or failed(why).
///
/// What is accepted (RFC 9112 message syntax, strictly):
///  - the request line `CONNECT host:port HTTP/1.x`, single spaces, the target in authority
///    form as parse_host_port reads it ("[v6]:port" for IPv6; no zone id, no userinfo), the port
///    required and 1..65535; HTTP/1.0 and HTTP/1.1 (any HTTP/1.minor);
///  - CRLF or bare LF line ends; empty lines before the request line are skipped;
///  - header fields `token ":" OWS value OWS`; names are case-insensitive; only
///    Proxy-Authorization is interpreted (when credentials are required), the others are checked
///    for syntax and skipped. Content-Length and Transfer-Encoding mean nothing here: whatever
///    follows the head is tunnel data.
///
/// What is refused, and with which response (and error):
///  - 400 Bad Request (protocol_error): a malformed request line or header line, a bare CR, a
///    control character (NUL included) or a byte >= 0x80 in the request line, a control
///    character in a header line, an obs-fold line (starting with SP or HTAB), a target that is
///    not "host:port" (origin form "/x", absolute form "http://...", "*", a missing or zero
///    port, a host parse_host_port rejects), a malformed Basic credential (bad base64, no ':'),
///    two Proxy-Authorization fields. A control character (a TLS ClientHello, binary garbage)
///    fails at once, without waiting for the end of its line.
///  - 405 Method Not Allowed with "Allow: CONNECT" (method_not_allowed): any other token method
///    (methods are case-sensitive: "connect" is refused too).
///  - 407 Proxy Authentication Required with `Proxy-Authenticate: Basic realm="<realm>"`
///    (auth_failed): credentials required and Proxy-Authorization missing, not Basic, or wrong.
///  - 414 URI Too Long (message_too_large): the request line passes max_line while its target is
///    being read ("METHOD SP" seen, no second SP); 400 (message_too_large) when it passes
///    max_line anywhere else in the request line.
///  - 431 Request Header Fields Too Large (message_too_large): a header line past max_line, more
///    than max_headers fields, or the whole head (leading empty lines included) past
///    max_head_bytes.
///  - 505 HTTP Version Not Supported (unsupported_version): "HTTP/d.d" with a major other than 1.
/// Every limit fails on the first byte past it, so memory stays bounded by max_line.
class http_connect_handshake {
public:
    struct config {
        /// When set, Proxy-Authorization: Basic must carry exactly these credentials.
        std::optional<credentials> required;
        /// The realm named in the 407 response (quotes and backslashes are escaped, control
        /// characters dropped).
        std::string realm = "tinyproxy";
        /// The most bytes in the request line or in one header line, line end included.
        std::size_t max_line = 8192;
        /// The most header fields.
        std::size_t max_headers = 100;
        /// The most bytes in the whole head, the blank line that ends it included.
        std::size_t max_head_bytes = 64 * 1024;
    };

    http_connect_handshake() : http_connect_handshake(config{}) {}
    explicit http_connect_handshake(config cfg) : config_(std::move(cfg)) {}

    /// Feeds the client's next bytes (any number, zero included).
    [[nodiscard]] handshake_step feed(byte_view bytes);

    /// The response that opens the tunnel once the upstream is connected.
    [[nodiscard]] std::vector<std::uint8_t> connected() const;
    /// The response for an upstream that could not be reached: 504 Gateway Timeout for
    /// errc::connect_timeout and timeouts (std::errc::timed_out), 403 Forbidden for
    /// errc::not_allowed, 502 Bad Gateway for anything else (refused, unreachable,
    /// errc::name_not_resolved, ..., and an empty error code).
    [[nodiscard]] std::vector<std::uint8_t> failed(std::error_code why) const;

    /// True once a step was connect or fail.
    bool finished() const noexcept { return phase_ == phase::finished; }

private:
    enum class phase { request_line, headers, finished };

    std::optional<handshake_step> end_of_line();
    std::optional<handshake_step> request_line(std::string_view line);
    std::optional<handshake_step> header_line(std::string_view line);
    handshake_step end_of_head();
    handshake_step line_too_long();
    handshake_step reject(int status, std::error_code why);

    config config_;
    phase phase_ = phase::request_line;
    std::string line_; // the line being read, without its LF (a CR before it included)
    std::size_t head_bytes_ = 0;
    std::size_t header_count_ = 0;
    host_port target_;
    std::optional<std::string> authorization_; // Proxy-Authorization, when credentials are required
    bool duplicate_authorization_ = false;
};

// ---------------------------------------------------------------------------------------------

namespace detail {
namespace http_head {

/// tchar (RFC 9110 section 5.6.2).
inline bool is_tchar(std::uint8_t c) noexcept {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return true;
    }
    switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
        return true;
    default:
        return false;
    }
}

inline bool is_token(std::string_view text) noexcept {
    if (text.empty()) {
        return false;
    }
    for (char c : text) {
        if (!is_tchar(static_cast<std::uint8_t>(c))) {
            return false;
        }
    }
    return true;
}

inline char ascii_lower(char c) noexcept {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (ascii_lower(a[i]) != ascii_lower(b[i])) {
            return false;
        }
    }
    return true;
}

/// Strips optional whitespace (SP, HTAB) from both ends.
inline std::string_view trim_ows(std::string_view text) noexcept {
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
        text.remove_prefix(1);
    }
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
        text.remove_suffix(1);
    }
    return text;
}

/// The value of one base64 character (RFC 4648 section 4 alphabet), or -1.
inline int base64_value(char c) noexcept {
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}

/// Strict base64 (RFC 4648 section 4, as RFC 7617 uses it): the standard alphabet, padded to a
/// multiple of 4, '=' only as the last one or two characters, and the unused bits of the last
/// group zero (so every byte string has exactly one accepted encoding). Nothing for anything
/// else, the empty string included.
inline std::optional<std::string> base64_decode(std::string_view text) {
    if (text.empty() || text.size() % 4 != 0) {
        return std::nullopt;
    }
    std::size_t padding = 0;
    if (text.back() == '=') {
        padding = text[text.size() - 2] == '=' ? 2 : 1;
    }
    std::string out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t group = 0; group < text.size(); group += 4) {
        bool last = group + 4 == text.size();
        std::size_t digits = last ? 4 - padding : 4;
        std::uint32_t bits = 0;
        for (std::size_t i = 0; i < 4; ++i) {
            int value = 0;
            if (i < digits) {
                value = base64_value(text[group + i]);
                if (value < 0) {
                    return std::nullopt; // a bad character, or '=' before the end
                }
            }
            bits = (bits << 6) | static_cast<std::uint32_t>(value);
        }
        out.push_back(static_cast<char>((bits >> 16) & 0xFFu));
        if (digits >= 3) {
            out.push_back(static_cast<char>((bits >> 8) & 0xFFu));
        } else if (((bits >> 8) & 0xFFu) != 0) {
            return std::nullopt; // "Zh==": leftover bits set
        }
        if (digits == 4) {
            out.push_back(static_cast<char>(bits & 0xFFu));
        } else if ((bits & 0xFFu) != 0) {
            return std::nullopt;
        }
    }
    return out;
}

/// Compares two strings in a time that depends on their lengths only, never on where they first
/// differ (no early exit: a wrong password does not tell how much of it was right).
inline bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
    unsigned difference = a.size() == b.size() ? 0u : 1u;
    std::size_t longest = a.size() > b.size() ? a.size() : b.size();
    for (std::size_t i = 0; i < longest; ++i) {
        unsigned x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0u;
        unsigned y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0u;
        difference |= x ^ y;
    }
    return difference == 0;
}

inline const char* reason_phrase(int status) noexcept {
    switch (status) {
    case 200:
        return "Connection established";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 405:
        return "Method Not Allowed";
    case 407:
        return "Proxy Authentication Required";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 502:
        return "Bad Gateway";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

/// A complete response with no content that closes the connection; `fields` are extra header
/// lines, each ending in CRLF.
inline std::vector<std::uint8_t> closing_response(int status, std::string_view fields) {
    std::string text = "HTTP/1.1 " + std::to_string(status) + " " + reason_phrase(status) + "\r\n";
    text += fields;
    text += "Connection: close\r\nContent-Length: 0\r\n\r\n";
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

/// The status a proxy answers a failed connect with: 504 for a timeout, 403 for an address
/// not allowed, 502 for anything else (refused, unreachable, not resolved).
inline int connect_failure_status(std::error_code why) noexcept {
    if (why == errc::connect_timeout || why == std::errc::timed_out) {
        return 504;
    }
    return why == errc::not_allowed ? 403 : 502;
}

/// What a Basic Proxy-Authorization value says against `expected` (RFC 7617).
enum class basic_check { match, mismatch, malformed };

/// credentials = auth-scheme [ 1*SP token68 ] (RFC 9110 section 11.4); user-pass = user-id ":"
/// password, compared whole in constant time.
inline basic_check check_basic(std::string_view value, const credentials& expected) {
    std::string_view scheme = value.substr(0, value.find(' '));
    if (!iequals(scheme, "basic")) {
        return basic_check::mismatch;
    }
    std::string_view encoded = value.substr(scheme.size());
    while (!encoded.empty() && encoded.front() == ' ') {
        encoded.remove_prefix(1);
    }
    std::optional<std::string> decoded = base64_decode(encoded);
    if (!decoded || decoded->find(':') == std::string::npos) {
        return basic_check::malformed;
    }
    return constant_time_equal(*decoded, expected.username + ":" + expected.password)
               ? basic_check::match
               : basic_check::mismatch;
}

/// `realm` as a quoted-string: '"' and '\' escaped, control characters dropped (a realm from a
/// configuration file cannot split the response).
inline std::string quoted(std::string_view realm) {
    std::string out = "\"";
    for (char c : realm) {
        auto byte = static_cast<std::uint8_t>(c);
        if ((byte < 0x20 && c != '\t') || byte == 0x7F) {
            continue;
        }
        if (c == '"' || c == '\\') {
            out += '\\';
        }
        out += c;
    }
    out += '"';
    return out;
}

} // namespace http_head
} // namespace detail

inline handshake_step http_connect_handshake::feed(byte_view bytes) {
    if (phase_ == phase::finished) {
        return handshake_step::fail(errc::protocol_error);
    }
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        const std::uint8_t byte = bytes[i];
        if (++head_bytes_ > config_.max_head_bytes) {
            return reject(431, errc::message_too_large);
        }
        if (line_.size() + 1 > config_.max_line) {
            return line_too_long();
        }
        if (!line_.empty() && line_.back() == '\r' && byte != '\n') {
            return reject(400, errc::protocol_error); // a bare CR
        }
        if (byte == '\n') {
            std::optional<handshake_step> step = end_of_line();
            if (!step) {
                continue;
            }
            if (step->what == handshake_step::action::connect) {
                step->to_upstream.assign(bytes.begin() + i + 1, bytes.end());
            }
            return std::move(*step);
        }
        // Control characters never belong in a head (HTAB only inside header values), nor do
        // bytes >= 0x80 in a request line (they may appear as obs-text in field values).
        bool control = (byte < 0x20 && byte != '\r' && byte != '\t') || byte == 0x7F;
        bool bad_in_request_line = phase_ == phase::request_line && (byte == '\t' || byte >= 0x80);
        if (control || bad_in_request_line) {
            return reject(400, errc::protocol_error);
        }
        line_.push_back(static_cast<char>(byte));
    }
    return handshake_step::need_more();
}

inline std::optional<handshake_step> http_connect_handshake::end_of_line() {
    // A view of the line (its buffer is kept for the next one); nothing reads it after a reject.
    std::string_view line = line_;
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    std::optional<handshake_step> step;
    if (phase_ == phase::request_line) {
        // Empty lines before the request line are skipped (RFC 9112 section 2.2).
        if (!line.empty()) {
            step = request_line(line);
        }
    } else {
        step = line.empty() ? end_of_head() : header_line(line);
    }
    line_.clear();
    return step;
}

inline std::optional<handshake_step> http_connect_handshake::request_line(std::string_view line) {
    namespace h = detail::http_head;
    auto first_space = line.find(' ');
    if (first_space == std::string_view::npos) {
        return reject(400, errc::protocol_error);
    }
    std::string_view method = line.substr(0, first_space);
    std::string_view rest = line.substr(first_space + 1);
    auto second_space = rest.find(' ');
    if (!h::is_token(method) || second_space == std::string_view::npos) {
        return reject(400, errc::protocol_error);
    }
    std::string_view target = rest.substr(0, second_space);
    std::string_view version = rest.substr(second_space + 1);
    bool version_syntax = version.size() == 8 && version.substr(0, 5) == "HTTP/" &&
                          version[5] >= '0' && version[5] <= '9' && version[6] == '.' &&
                          version[7] >= '0' && version[7] <= '9';
    if (target.empty() || !version_syntax) {
        return reject(400, errc::protocol_error);
    }
    if (version[5] != '1') {
        return reject(505, errc::unsupported_version);
    }
    if (method != "CONNECT") {
        return reject(405, errc::method_not_allowed);
    }
    // Authority form only; a '%' would be a zone id, which a URI cannot carry unescaped.
    std::error_code ec;
    host_port parsed =
        target.find('%') == std::string_view::npos ? parse_host_port(target, ec) : host_port{};
    if (ec || parsed.host.empty() || parsed.port == 0) {
        return reject(400, errc::protocol_error);
    }
    target_ = std::move(parsed);
    phase_ = phase::headers;
    return std::nullopt;
}

inline std::optional<handshake_step> http_connect_handshake::header_line(std::string_view line) {
    namespace h = detail::http_head;
    if (++header_count_ > config_.max_headers) {
        return reject(431, errc::message_too_large);
    }
    // A line starting with whitespace is obs-fold (or whitespace after the request line): both
    // are refused (RFC 9112 sections 2.2 and 5.2).
    auto colon = line.find(':');
    if (line.front() == ' ' || line.front() == '\t' || colon == std::string_view::npos ||
        !h::is_token(line.substr(0, colon))) {
        return reject(400, errc::protocol_error);
    }
    if (config_.required && h::iequals(line.substr(0, colon), "proxy-authorization")) {
        if (authorization_) {
            duplicate_authorization_ = true;
        } else {
            authorization_ = std::string(h::trim_ows(line.substr(colon + 1)));
        }
    }
    return std::nullopt;
}

inline handshake_step http_connect_handshake::end_of_head() {
    namespace h = detail::http_head;
    if (config_.required) {
        if (duplicate_authorization_) {
            return reject(400, errc::protocol_error);
        }
        if (!authorization_) {
            return reject(407, errc::auth_failed);
        }
        switch (h::check_basic(*authorization_, *config_.required)) {
        case h::basic_check::malformed:
            return reject(400, errc::protocol_error);
        case h::basic_check::mismatch:
            return reject(407, errc::auth_failed);
        case h::basic_check::match:
            break;
        }
    }
    phase_ = phase::finished;
    return handshake_step::connect_to(target_);
}

inline handshake_step http_connect_handshake::line_too_long() {
    if (phase_ == phase::headers) {
        return reject(431, errc::message_too_large);
    }
    // Reading the target: "token SP" seen, and no second SP yet.
    std::string_view line = line_;
    auto first_space = line.find(' ');
    bool in_target = first_space != std::string_view::npos &&
                     detail::http_head::is_token(line.substr(0, first_space)) &&
                     line.find(' ', first_space + 1) == std::string_view::npos;
    return reject(in_target ? 414 : 400, errc::message_too_large);
}

inline handshake_step http_connect_handshake::reject(int status, std::error_code why) {
    namespace h = detail::http_head;
    phase_ = phase::finished;
    line_.clear();
    line_.shrink_to_fit();
    std::string fields;
    if (status == 405) {
        fields = "Allow: CONNECT\r\n";
    } else if (status == 407) {
        fields = "Proxy-Authenticate: Basic realm=" + h::quoted(config_.realm) + "\r\n";
    }
    return handshake_step::fail(why, h::closing_response(status, fields));
}

inline std::vector<std::uint8_t> http_connect_handshake::connected() const {
    static constexpr std::string_view text = "HTTP/1.1 200 Connection established\r\n\r\n";
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

inline std::vector<std::uint8_t> http_connect_handshake::failed(std::error_code why) const {
    return detail::http_head::closing_response(detail::http_head::connect_failure_status(why), {});
}

} // namespace tinyproxy
// ---- end tinyproxy/protocol/http_connect.hpp ----
// #include "tinyproxy/protocol/http_message.hpp"
// ---- begin tinyproxy/protocol/http_message.hpp ----
// HTTP/1.1 messages as a forward proxy reads them (RFC 9110, RFC 9112), sans-I/O: request and
// response heads parsed incrementally, each message's body framing decided (smuggling refused),
// bodies scanned to their end, and the heads rewritten for the next hop.

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes, body lengths
#include <string>       // fields, heads
#include <string_view>  // parsing
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // fields

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/http_connect.hpp"

namespace tinyproxy {

/// One header field, as received (the name's case kept, the value without surrounding OWS).
struct http_field {
    std::string name;
    std::string value;
};

/// How a message's body is delimited (RFC 9112 section 6.3).
struct http_framing {
    enum class kind {
        none,       ///< no body (a GET without length, a HEAD response, 1xx, 204, 304)
        length,     ///< exactly `length` bytes (Content-Length)
        chunked,    ///< Transfer-Encoding whose last coding is chunked
        until_close ///< a response read until the origin closes (no length, no chunked)
    };
    kind what = kind::none;
    std::uint64_t length = 0; ///< for kind::length
};

/// The limits a head is read under; each fails on the first byte past it.
struct http_head_limits {
    std::size_t max_line = 8192;      ///< the start line or one field line, line end included
    std::size_t max_fields = 100;     ///< header fields (trailer fields, in a chunked body)
    std::size_t max_head = 64 * 1024; ///< the whole head, leading empty lines included
};

/// A request head a proxy was sent.
struct http_request_head {
    std::string method;
    std::string target;    ///< the request-target as sent
    int minor_version = 1; ///< HTTP/1.minor
    std::vector<http_field> fields;

    bool connect = false;   ///< CONNECT host:port (`origin` is its target)
    host_port origin;       ///< the absolute-form's host and port (80 by default), or CONNECT's
    std::string path;       ///< the origin-form: the absolute-form's path and query ("/" if none)
    http_framing body;      ///< none, length or chunked (never until_close)
    bool keep_alive = true; ///< the client keeps the connection: 1.1 without "close", 1.0 with
                            ///< "keep-alive" (Connection and Proxy-Connection both read)
    bool expect_continue = false; ///< Expect: 100-continue

    /// The first field named `name` (case-insensitive); null if none.
    const std::string* field(std::string_view name) const noexcept;
};

/// A response head an origin sent.
struct http_response_head {
    int minor_version = 1;
    int status = 0;
    std::string reason;
    std::vector<http_field> fields;
    http_framing body;      ///< decided with the request's method (http_response_parser)
    bool keep_alive = true; ///< the origin keeps the connection (as for requests)

    const std::string* field(std::string_view name) const noexcept;
    /// 1xx other than 101: an interim response; the final one follows for the same request.
    bool interim() const noexcept { return status >= 100 && status < 200 && status != 101; }
};

namespace detail {
namespace http_message {

/// The lines of a head, a byte at a time: what http_request_parser and http_response_parser
/// share. Holds the line being read (memory bounded by max_line) and counts the head's bytes.
class head_lines {
public:
    enum class event {
        more, ///< the byte belongs to the line being read
        line, ///< a line ended: line() holds it, without its CR and LF
        line_too_long,
        head_too_long,
        bad_byte ///< a bare CR, or a control character
    };

    /// `start_line`: the byte is in the start line, where HTAB and bytes >= 0x80 are refused
    /// unless `obs_text` (a response's reason phrase may hold them).
    event next(std::uint8_t byte, const http_head_limits& limits, bool start_line, bool obs_text);
    std::string_view line() const noexcept;
    /// The line being read so far (after line_too_long: which part of the start line passed).
    std::string_view partial() const noexcept { return line_; }
    bool started() const noexcept { return head_bytes_ != 0; }
    std::size_t fields() const noexcept { return fields_; }
    void count_field() noexcept { ++fields_; }
    void reset();

private:
    std::string line_; // without its LF (a CR before it kept)
    bool line_ended_ = false;
    std::size_t head_bytes_ = 0;
    std::size_t fields_ = 0;
};

inline head_lines::event head_lines::next(std::uint8_t byte, const http_head_limits& limits,
                                          bool start_line, bool obs_text) {
    if (line_ended_) {
        line_.clear();
        line_ended_ = false;
    }
    if (++head_bytes_ > limits.max_head) {
        return event::head_too_long;
    }
    if (line_.size() + 1 > limits.max_line) {
        return event::line_too_long;
    }
    if (!line_.empty() && line_.back() == '\r' && byte != '\n') {
        return event::bad_byte;
    }
    if (byte == '\n') {
        line_ended_ = true;
        return event::line;
    }
    // HTAB only inside field values (and a reason phrase); obs-text likewise (RFC 9112 5.5).
    bool control = (byte < 0x20 && byte != '\r' && byte != '\t') || byte == 0x7F;
    bool bad_in_start_line = start_line && !obs_text && (byte == '\t' || byte >= 0x80);
    if (control || bad_in_start_line) {
        return event::bad_byte;
    }
    line_.push_back(static_cast<char>(byte));
    return event::more;
}

inline std::string_view head_lines::line() const noexcept {
    std::string_view line = line_;
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    return line;
}

inline void head_lines::reset() {
    line_.clear();
    line_ended_ = false;
    head_bytes_ = 0;
    fields_ = 0;
}

} // namespace http_message
} // namespace detail

/// Reads one request head, fed in any split (down to a byte at a time). Strict RFC 9112
/// syntax, as http_connect_handshake: CRLF or bare LF line ends, empty lines before the request
/// line skipped, no control characters, no obs-fold.
///
/// feed() consumes bytes up to and including the blank line that ends the head (never a byte
/// of the body): `used` says how many. On complete, take() gives the head, and reset() (or
/// take()) readies the parser for the next request on the same connection.
///
/// Failures and the status a proxy answers with (error_status()), error() saying why:
///  - 400 (protocol_error): malformed request line or field line, obs-fold, a bare CR, a
///    control character, more than one Host, no Host in HTTP/1.1, an origin-form or "*"
///    target (a proxy needs the absolute form), userinfo or a fragment in the target, a host
///    parse_host_port rejects, port 0 or > 65535; Transfer-Encoding with Content-Length,
///    Transfer-Encoding in HTTP/1.0, Transfer-Encoding whose last coding is not chunked or that
///    names chunked twice, more than one Content-Length field (even equal) or a list of them, a
///    Content-Length that is not 1*DIGIT or does not fit 63 bits;
///  - 414 (message_too_large): the request line past max_line while its target is read;
///  - 431 (message_too_large): a field line past max_line, more than max_fields, the head
///    past max_head;
///  - 501 (protocol_error): an absolute-form target whose scheme is not http (https://,
///    ftp://, ...: a forward proxy serves those through CONNECT);
///  - 505 (unsupported_version): HTTP/d.d with a major other than 1.
/// CONNECT's target is authority-form and must parse as host:port with a port (else 400).
class http_request_parser {
public:
    enum class status { need_more, complete, failed };

    explicit http_request_parser(http_head_limits limits = {}) : limits_(limits) {}

    status feed(byte_view bytes, std::size_t& used);
    /// The head, after feed() said complete; the parser is reset.
    http_request_head take();
    void reset();

    /// Whether any byte of a head has been read (an empty line before it counts too).
    bool started() const noexcept;
    int error_status() const noexcept { return error_status_; }
    std::error_code error() const noexcept { return error_; }

private:
    enum class phase { start_line, fields, complete, failed };

    status end_of_line(std::string_view line);
    status request_line(std::string_view line);
    status end_of_head();
    status line_too_long();
    status fail(int code, std::error_code why);

    http_head_limits limits_;
    int error_status_ = 0;
    std::error_code error_;
    phase phase_ = phase::start_line;
    detail::http_message::head_lines lines_;
    http_request_head head_;
};

/// Reads one response head, as http_request_parser reads requests. The framing of its body
/// depends on the request it answers: construct or reset() it with that request's method.
///
/// Framing (RFC 9112 section 6.3): HEAD, 1xx, 204 and 304 have none; a 2xx to CONNECT is not
/// read here; Transfer-Encoding whose last coding is chunked is chunked, other
/// Transfer-Encodings read until close; Content-Length is a length; nothing is until_close.
/// Failures (error_status() is then 502, the proxy's answer to the client): malformed status
/// line or field line, obs-fold, a status outside 100..999, Transfer-Encoding with
/// Content-Length, differing or listed Content-Lengths, limits as for requests.
class http_response_parser {
public:
    enum class status { need_more, complete, failed };

    explicit http_response_parser(http_head_limits limits = {}) : limits_(limits) {}

    /// The request this response answers: its method decides HEAD's no-body.
    void reset(std::string_view request_method);
    status feed(byte_view bytes, std::size_t& used);
    /// The head, after feed() said complete. For an interim (1xx) head, reset() is not needed:
    /// the next feed() reads the final response to the same request.
    http_response_head take();

    int error_status() const noexcept { return error_status_; }
    std::error_code error() const noexcept { return error_; }

private:
    enum class phase { start_line, fields, complete, failed };

    status end_of_line(std::string_view line);
    status status_line(std::string_view line);
    status end_of_head();
    status fail(std::error_code why);

    http_head_limits limits_;
    int error_status_ = 0;
    std::error_code error_;
    phase phase_ = phase::start_line;
    detail::http_message::head_lines lines_;
    http_response_head head_;
    std::string request_method_;
};

/// Finds where a body ends, fed in any split; passes nothing itself (the caller forwards the
/// bytes it says are body, untouched). For chunked bodies it checks the chunk framing
/// strictly: chunk-size is 1 to 16 hex digits, extensions are `;` then any visible text up to
/// the line's end (max_line), every line ends in CRLF (a bare LF or CR is a failure: the body
/// goes on unchanged, so the next hop must read it the same way), the data is followed by
/// CRLF, and the trailer section is field lines (max_fields of them, no obs-fold) and CRLF.
class http_body_scanner {
public:
    enum class status { more, complete, failed };

    http_body_scanner() = default;
    explicit http_body_scanner(http_framing framing, http_head_limits limits = {});

    /// Consumes the body's bytes from `bytes`: `used` says how many belong to it (the rest
    /// belongs to the next message). until_close never completes: the end of stream ends it.
    status feed(byte_view bytes, std::size_t& used);
    bool complete() const noexcept;
    /// 400 for a request's body (the caller decides for a response's).
    std::error_code error() const noexcept { return error_; }

private:
    enum class phase {
        size,       // chunk-size hex digits
        size_space, // whitespace after them (only a ';' may follow)
        extension,  // ';' and the rest of the chunk-size line
        size_lf,    // the LF after the chunk-size line's CR
        data,       // chunk data (or a Content-Length body)
        data_cr,    // the CR after chunk data
        data_lf,    // its LF
        trailer,    // a trailer field line (or the empty line that ends the body)
        trailer_lf, // the LF after a trailer line's CR
        complete,
        failed
    };

    status chunked_byte(std::uint8_t byte);
    status end_of_trailer_line();
    status fail(std::error_code why);

    http_framing framing_;
    http_head_limits limits_;
    phase phase_ = phase::complete;
    std::uint64_t remaining_ = 0; // bytes of the length body or of the chunk still to come
    std::size_t digits_ = 0;      // hex digits of the chunk-size read
    std::size_t line_bytes_ = 0;  // bytes of the chunk-size or trailer line, its CR included
    std::size_t trailer_fields_ = 0;
    std::string line_; // the trailer line being read, without its CR
    std::error_code error_;
};

/// The head to send the origin for `request` (not CONNECT): "METHOD path HTTP/1.m" (the
/// client's minor version, so an HTTP/1.0 client is never answered in chunks), then
/// every field but the hop-by-hop ones (Connection and every field it names, Proxy-Connection,
/// Keep-Alive, Proxy-Authorization, TE, Trailer, Upgrade) and Host, with Host set to the
/// target's authority (the port only when it is not 80), Max-Forwards decremented (TRACE and
/// OPTIONS only, where it is > 0), `Via: 1.<minor> <via>` appended (after any Via received;
/// none when `via` is empty), `Connection: keep-alive` for an HTTP/1.0 request that keeps the
/// connection, and the blank line. Content-Length and Transfer-Encoding are kept even when
/// Connection names them: the body is forwarded unchanged, so the next hop must frame it the same
/// way.
std::string origin_request_head(const http_request_head& request, std::string_view via);

/// The head to send the client for `response`: "HTTP/1.1 status reason", every field but the
/// hop-by-hop ones (as above, Proxy-Authenticate kept), `Via: 1.<minor> <via>` appended (none
/// when `via` is empty), `Connection: close` when `close`, else `Connection: keep-alive` when
/// the client's request was HTTP/1.0 (`client_minor_version` 0), and the blank line.
std::string client_response_head(const http_response_head& response, std::string_view via,
                                 int client_minor_version, bool close);

// ---------------------------------------------------------------------------------------------

namespace detail {
namespace http_message {

inline const std::string* find_field(const std::vector<http_field>& fields,
                                     std::string_view name) noexcept {
    for (const http_field& field : fields) {
        if (http_head::iequals(field.name, name)) {
            return &field.value;
        }
    }
    return nullptr;
}

/// `token ":" OWS value OWS`; false for anything else, obs-fold (a leading SP or HTAB) included.
inline bool parse_field_line(std::string_view line, http_field& out) {
    auto colon = line.find(':');
    if (line.empty() || line.front() == ' ' || line.front() == '\t' ||
        colon == std::string_view::npos || !http_head::is_token(line.substr(0, colon))) {
        return false;
    }
    out.name = std::string(line.substr(0, colon));
    out.value = std::string(http_head::trim_ows(line.substr(colon + 1)));
    return true;
}

/// Calls `each` with every element of the comma lists in the fields named `name`, without OWS
/// (empty elements skipped, as RFC 9110 section 5.6.1 asks of recipients).
template <class Each>
void for_each_element(const std::vector<http_field>& fields, std::string_view name, Each&& each) {
    for (const http_field& field : fields) {
        if (!http_head::iequals(field.name, name)) {
            continue;
        }
        std::string_view rest = field.value;
        while (!rest.empty()) {
            auto comma = rest.find(',');
            std::string_view element = http_head::trim_ows(rest.substr(0, comma));
            rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
            if (!element.empty()) {
                each(element);
            }
        }
    }
}

/// Whether Connection (or Proxy-Connection, which old clients send to proxies) lists `option`.
inline bool connection_lists(const std::vector<http_field>& fields, std::string_view option) {
    bool found = false;
    auto match = [&](std::string_view element) {
        found = found || http_head::iequals(element, option);
    };
    for_each_element(fields, "connection", match);
    for_each_element(fields, "proxy-connection", match);
    return found;
}

inline bool keep_alive(const std::vector<http_field>& fields, int minor_version) {
    if (connection_lists(fields, "close")) {
        return false;
    }
    return minor_version >= 1 || connection_lists(fields, "keep-alive");
}

/// What the Transfer-Encoding fields say.
struct transfer_codings {
    bool present = false;
    bool valid = true; ///< every coding a token (parameters after ';' allowed)
    bool chunked_last = false;
    int chunked_count = 0;
};

inline transfer_codings read_transfer_codings(const std::vector<http_field>& fields) {
    transfer_codings out;
    for (const http_field& field : fields) {
        if (http_head::iequals(field.name, "transfer-encoding")) {
            out.present = true;
        }
    }
    if (!out.present) {
        return out;
    }
    out.valid = false; // until a coding is seen: an empty Transfer-Encoding says nothing valid
    bool bad = false;
    for_each_element(fields, "transfer-encoding", [&](std::string_view element) {
        std::string_view coding = http_head::trim_ows(element.substr(0, element.find(';')));
        bad = bad || !http_head::is_token(coding);
        out.chunked_last = http_head::iequals(coding, "chunked");
        out.chunked_count += out.chunked_last ? 1 : 0;
        out.valid = true;
    });
    out.valid = out.valid && !bad;
    return out;
}

/// What the Content-Length fields say.
struct content_lengths {
    std::size_t fields = 0;
    bool valid = true;   ///< every value 1*DIGIT within 63 bits (a list is not)
    bool differ = false; ///< two fields with different values
    std::uint64_t value = 0;
};

/// 1*DIGIT that fits 63 bits.
inline bool parse_length(std::string_view text, std::uint64_t& value) noexcept {
    if (text.empty()) {
        return false;
    }
    constexpr std::uint64_t max = (std::uint64_t{1} << 63) - 1;
    value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return false;
        }
        auto digit = static_cast<std::uint64_t>(c - '0');
        if (value > (max - digit) / 10) {
            return false;
        }
        value = value * 10 + digit;
    }
    return true;
}

inline content_lengths read_content_lengths(const std::vector<http_field>& fields) {
    content_lengths out;
    for (const http_field& field : fields) {
        if (!http_head::iequals(field.name, "content-length")) {
            continue;
        }
        std::uint64_t value = 0;
        if (!parse_length(field.value, value)) {
            out.valid = false;
        } else if (out.fields != 0 && value != out.value) {
            out.differ = true;
        }
        out.value = value;
        ++out.fields;
    }
    return out;
}

/// The host:port of an http:// authority (80 when no port is given); false for a host
/// parse_host_port rejects, userinfo, a zone id or port 0.
inline bool parse_authority(std::string_view authority, host_port& out) {
    if (authority.empty() || authority.find('@') != std::string_view::npos ||
        authority.find('%') != std::string_view::npos) {
        return false;
    }
    std::string text(authority);
    auto close = text.rfind(']');
    auto colon = text.rfind(':');
    bool has_port = colon != std::string::npos && (close == std::string::npos || colon > close);
    if (has_port && colon + 1 == text.size()) {
        text.pop_back(); // "host:": an empty port is the default one (RFC 3986 section 3.2.3)
        has_port = false;
    }
    if (!has_port) {
        text += ":80";
    }
    std::error_code ec;
    out = parse_host_port(text, ec);
    return !ec && !out.host.empty() && out.port != 0;
}

/// scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) (RFC 3986 section 3.1).
inline bool is_scheme(std::string_view text) noexcept {
    if (text.empty()) {
        return false;
    }
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        bool other = (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
        if (!alpha && (i == 0 || !other)) {
            return false;
        }
    }
    return true;
}

/// Reads an absolute-form target into `origin` and `path`; 0, or the status that refuses it.
inline int parse_absolute_form(std::string_view target, host_port& origin, std::string& path) {
    auto separator = target.find("://");
    if (separator == std::string_view::npos || !is_scheme(target.substr(0, separator)) ||
        target.find('#') != std::string_view::npos) {
        return 400; // origin-form, "*", or not a URI a proxy can forward
    }
    if (!http_head::iequals(target.substr(0, separator), "http")) {
        return 501;
    }
    std::string_view rest = target.substr(separator + 3);
    auto path_start = rest.find_first_of("/?");
    std::string_view authority = rest.substr(0, path_start);
    if (!parse_authority(authority, origin)) {
        return 400;
    }
    std::string_view path_and_query =
        path_start == std::string_view::npos ? std::string_view{} : rest.substr(path_start);
    path = path_and_query.empty() || path_and_query.front() == '?' ? "/" : "";
    path += path_and_query;
    return 0;
}

/// "HTTP/d.d": false if not that syntax; `major` and `minor` its digits.
inline bool parse_version(std::string_view text, int& major, int& minor) noexcept {
    if (text.size() != 8 || text.substr(0, 5) != "HTTP/" || text[5] < '0' || text[5] > '9' ||
        text[6] != '.' || text[7] < '0' || text[7] > '9') {
        return false;
    }
    major = text[5] - '0';
    minor = text[7] - '0';
    return true;
}

/// Hop-by-hop fields (RFC 9110 section 7.6.1), and those that only concern one connection
/// to a proxy: never forwarded.
inline bool is_hop_by_hop(std::string_view name) noexcept {
    for (std::string_view hop : {"connection", "proxy-connection", "keep-alive",
                                 "proxy-authorization", "te", "trailer", "upgrade"}) {
        if (http_head::iequals(name, hop)) {
            return true;
        }
    }
    return false;
}

/// Whether a field is not forwarded: hop-by-hop, or named by a Connection field. The framing
/// fields stay whatever Connection says: the body passes through as it came, so dropping its
/// Content-Length would make its bytes the next hop's next message (request smuggling).
inline bool is_connection_field(const std::vector<http_field>& fields, std::string_view name) {
    if (is_hop_by_hop(name)) {
        return true;
    }
    if (http_head::iequals(name, "content-length") ||
        http_head::iequals(name, "transfer-encoding")) {
        return false;
    }
    bool named = false;
    for_each_element(fields, "connection", [&](std::string_view element) {
        named = named || http_head::iequals(element, name);
    });
    return named;
}

inline void append_field(std::string& head, std::string_view name, std::string_view value) {
    head += name;
    head += ": ";
    head += value;
    head += "\r\n";
}

/// Max-Forwards' value less one (RFC 9110 section 7.6.2), or the value itself when it is 0 or
/// not a number.
inline std::string decremented(const std::string& value) {
    std::uint64_t number = 0;
    if (!parse_length(value, number) || number == 0) {
        return value;
    }
    return std::to_string(number - 1);
}

inline void append_via(std::string& head, int minor_version, std::string_view via) {
    if (!via.empty()) {
        append_field(head, "Via", "1." + std::to_string(minor_version) + " " + std::string(via));
    }
}

} // namespace http_message
} // namespace detail

inline const std::string* http_request_head::field(std::string_view name) const noexcept {
    return detail::http_message::find_field(fields, name);
}

inline const std::string* http_response_head::field(std::string_view name) const noexcept {
    return detail::http_message::find_field(fields, name);
}

// --- http_request_parser ---------------------------------------------------------------------

inline http_request_parser::status http_request_parser::feed(byte_view bytes, std::size_t& used) {
    using event = detail::http_message::head_lines::event;
    used = 0;
    if (phase_ == phase::complete) {
        return status::complete;
    }
    if (phase_ == phase::failed) {
        return status::failed;
    }
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        used = i + 1;
        switch (lines_.next(bytes[i], limits_, phase_ == phase::start_line, false)) {
        case event::more:
            continue;
        case event::head_too_long:
            return fail(431, errc::message_too_large);
        case event::line_too_long:
            return line_too_long();
        case event::bad_byte:
            return fail(400, errc::protocol_error);
        case event::line:
            break;
        }
        status state = end_of_line(lines_.line());
        if (state != status::need_more) {
            return state;
        }
    }
    return status::need_more;
}

inline http_request_parser::status http_request_parser::end_of_line(std::string_view line) {
    if (phase_ == phase::start_line) {
        // Empty lines before the request line are skipped (RFC 9112 section 2.2).
        return line.empty() ? status::need_more : request_line(line);
    }
    if (line.empty()) {
        return end_of_head();
    }
    lines_.count_field();
    if (lines_.fields() > limits_.max_fields) {
        return fail(431, errc::message_too_large);
    }
    http_field field;
    if (!detail::http_message::parse_field_line(line, field)) {
        return fail(400, errc::protocol_error);
    }
    head_.fields.push_back(std::move(field));
    return status::need_more;
}

inline http_request_parser::status http_request_parser::request_line(std::string_view line) {
    namespace m = detail::http_message;
    auto first_space = line.find(' ');
    if (first_space == std::string_view::npos) {
        return fail(400, errc::protocol_error);
    }
    std::string_view method = line.substr(0, first_space);
    std::string_view rest = line.substr(first_space + 1);
    auto second_space = rest.find(' ');
    if (!detail::http_head::is_token(method) || second_space == std::string_view::npos) {
        return fail(400, errc::protocol_error);
    }
    std::string_view target = rest.substr(0, second_space);
    int major = 0;
    int minor = 0;
    if (target.empty() || !m::parse_version(rest.substr(second_space + 1), major, minor)) {
        return fail(400, errc::protocol_error);
    }
    if (major != 1) {
        return fail(505, errc::unsupported_version);
    }
    head_.method = std::string(method);
    head_.target = std::string(target);
    head_.minor_version = minor;
    if (method == "CONNECT") {
        // Authority form only; a '%' would be a zone id, which a URI cannot carry unescaped.
        std::error_code ec;
        host_port parsed =
            target.find('%') == std::string_view::npos ? parse_host_port(target, ec) : host_port{};
        if (ec || parsed.host.empty() || parsed.port == 0) {
            return fail(400, errc::protocol_error);
        }
        head_.connect = true;
        head_.origin = std::move(parsed);
    } else if (int refused = m::parse_absolute_form(target, head_.origin, head_.path)) {
        return fail(refused, errc::protocol_error);
    }
    phase_ = phase::fields;
    return status::need_more;
}

inline http_request_parser::status http_request_parser::end_of_head() {
    namespace m = detail::http_message;
    std::size_t hosts = 0;
    for (const http_field& field : head_.fields) {
        hosts += detail::http_head::iequals(field.name, "host") ? 1 : 0;
    }
    if (hosts > 1 || (hosts == 0 && head_.minor_version >= 1)) {
        return fail(400, errc::protocol_error);
    }
    // Framing (RFC 9112 section 6.3): anything two readers could read differently is refused,
    // so no body can smuggle a request past the proxy.
    m::transfer_codings codings = m::read_transfer_codings(head_.fields);
    m::content_lengths lengths = m::read_content_lengths(head_.fields);
    if (codings.present) {
        if (lengths.fields != 0 || head_.minor_version == 0 || !codings.valid ||
            !codings.chunked_last || codings.chunked_count != 1) {
            return fail(400, errc::protocol_error);
        }
        head_.body.what = http_framing::kind::chunked;
    } else if (lengths.fields != 0) {
        if (lengths.fields > 1 || !lengths.valid) {
            return fail(400, errc::protocol_error);
        }
        head_.body.what = http_framing::kind::length;
        head_.body.length = lengths.value;
    }
    if (head_.connect) {
        head_.body = http_framing{}; // what follows a CONNECT head is the tunnel
    }
    head_.keep_alive = m::keep_alive(head_.fields, head_.minor_version);
    const std::string* expect = head_.field("expect");
    head_.expect_continue =
        expect != nullptr && detail::http_head::iequals(*expect, "100-continue");
    phase_ = phase::complete;
    return status::complete;
}

inline http_request_parser::status http_request_parser::line_too_long() {
    if (phase_ == phase::fields) {
        return fail(431, errc::message_too_large);
    }
    // Reading the target: "token SP" seen, and no second SP yet.
    std::string_view line = lines_.partial();
    auto first_space = line.find(' ');
    bool in_target = first_space != std::string_view::npos &&
                     detail::http_head::is_token(line.substr(0, first_space)) &&
                     line.find(' ', first_space + 1) == std::string_view::npos;
    return fail(in_target ? 414 : 400, errc::message_too_large);
}

inline http_request_parser::status http_request_parser::fail(int code, std::error_code why) {
    phase_ = phase::failed;
    error_status_ = code;
    error_ = why;
    return status::failed;
}

inline http_request_head http_request_parser::take() {
    http_request_head head = std::move(head_);
    reset();
    return head;
}

inline void http_request_parser::reset() {
    phase_ = phase::start_line;
    lines_.reset();
    head_ = http_request_head{};
    error_status_ = 0;
    error_ = {};
}

inline bool http_request_parser::started() const noexcept { return lines_.started(); }

// --- http_response_parser --------------------------------------------------------------------

inline void http_response_parser::reset(std::string_view request_method) {
    request_method_ = std::string(request_method);
    phase_ = phase::start_line;
    lines_.reset();
    head_ = http_response_head{};
    error_status_ = 0;
    error_ = {};
}

inline http_response_parser::status http_response_parser::feed(byte_view bytes, std::size_t& used) {
    using event = detail::http_message::head_lines::event;
    used = 0;
    if (phase_ == phase::complete) {
        return status::complete;
    }
    if (phase_ == phase::failed) {
        return status::failed;
    }
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        used = i + 1;
        switch (lines_.next(bytes[i], limits_, phase_ == phase::start_line, true)) {
        case event::more:
            continue;
        case event::head_too_long:
        case event::line_too_long:
            return fail(errc::message_too_large);
        case event::bad_byte:
            return fail(errc::protocol_error);
        case event::line:
            break;
        }
        status state = end_of_line(lines_.line());
        if (state != status::need_more) {
            return state;
        }
    }
    return status::need_more;
}

inline http_response_parser::status http_response_parser::end_of_line(std::string_view line) {
    if (phase_ == phase::start_line) {
        return line.empty() ? status::need_more : status_line(line);
    }
    if (line.empty()) {
        return end_of_head();
    }
    lines_.count_field();
    if (lines_.fields() > limits_.max_fields) {
        return fail(errc::message_too_large);
    }
    http_field field;
    if (!detail::http_message::parse_field_line(line, field)) {
        return fail(errc::protocol_error);
    }
    head_.fields.push_back(std::move(field));
    return status::need_more;
}

inline http_response_parser::status http_response_parser::status_line(std::string_view line) {
    // status-line = HTTP-version SP status-code SP [ reason-phrase ]; a missing SP before an
    // empty reason is tolerated (RFC 9112 section 4).
    int major = 0;
    int minor = 0;
    if (line.size() < 12 || !detail::http_message::parse_version(line.substr(0, 8), major, minor) ||
        line[8] != ' ' || (line.size() > 12 && line[12] != ' ')) {
        return fail(errc::protocol_error);
    }
    if (major != 1) {
        return fail(errc::unsupported_version);
    }
    int code = 0;
    for (std::size_t i = 9; i < 12; ++i) {
        if (line[i] < '0' || line[i] > '9') {
            return fail(errc::protocol_error);
        }
        code = code * 10 + (line[i] - '0');
    }
    if (code < 100) {
        return fail(errc::protocol_error);
    }
    head_.minor_version = minor;
    head_.status = code;
    head_.reason = line.size() > 13 ? std::string(line.substr(13)) : std::string();
    phase_ = phase::fields;
    return status::need_more;
}

inline http_response_parser::status http_response_parser::end_of_head() {
    namespace m = detail::http_message;
    m::transfer_codings codings = m::read_transfer_codings(head_.fields);
    m::content_lengths lengths = m::read_content_lengths(head_.fields);
    if ((codings.present && lengths.fields != 0) || !lengths.valid || lengths.differ ||
        (codings.present && (!codings.valid || codings.chunked_count > 1))) {
        return fail(errc::protocol_error);
    }
    head_.keep_alive = m::keep_alive(head_.fields, head_.minor_version);
    int code = head_.status;
    bool no_body = request_method_ == "HEAD" || code < 200 || code == 204 || code == 304 ||
                   (request_method_ == "CONNECT" && code < 300);
    if (no_body) {
        head_.body = http_framing{};
    } else if (codings.present) {
        head_.body.what =
            codings.chunked_last ? http_framing::kind::chunked : http_framing::kind::until_close;
    } else if (lengths.fields != 0) {
        head_.body.what = http_framing::kind::length;
        head_.body.length = lengths.value;
    } else {
        head_.body.what = http_framing::kind::until_close;
    }
    if (head_.body.what == http_framing::kind::until_close) {
        head_.keep_alive = false; // the close is the body's end
    }
    phase_ = phase::complete;
    return status::complete;
}

inline http_response_parser::status http_response_parser::fail(std::error_code why) {
    phase_ = phase::failed;
    error_status_ = 502;
    error_ = why;
    return status::failed;
}

inline http_response_head http_response_parser::take() {
    http_response_head head = std::move(head_);
    std::string method = std::move(request_method_);
    reset(method);
    return head;
}

// --- http_body_scanner -----------------------------------------------------------------------

inline http_body_scanner::http_body_scanner(http_framing framing, http_head_limits limits)
    : framing_(framing), limits_(limits) {
    switch (framing.what) {
    case http_framing::kind::none:
        phase_ = phase::complete;
        break;
    case http_framing::kind::length:
        remaining_ = framing.length;
        phase_ = remaining_ == 0 ? phase::complete : phase::data;
        break;
    case http_framing::kind::chunked:
        phase_ = phase::size;
        break;
    case http_framing::kind::until_close:
        phase_ = phase::data;
        break;
    }
}

inline bool http_body_scanner::complete() const noexcept { return phase_ == phase::complete; }

inline http_body_scanner::status http_body_scanner::feed(byte_view bytes, std::size_t& used) {
    used = 0;
    if (phase_ == phase::complete) {
        return status::complete;
    }
    if (phase_ == phase::failed) {
        return status::failed;
    }
    if (framing_.what == http_framing::kind::until_close) {
        used = bytes.size();
        return status::more;
    }
    while (used < bytes.size()) {
        if (phase_ == phase::data) {
            std::uint64_t available = bytes.size() - used;
            std::uint64_t take = available < remaining_ ? available : remaining_;
            used += static_cast<std::size_t>(take);
            remaining_ -= take;
            if (remaining_ != 0) {
                return status::more;
            }
            if (framing_.what == http_framing::kind::length) {
                phase_ = phase::complete;
                return status::complete;
            }
            phase_ = phase::data_cr;
            continue;
        }
        status state = chunked_byte(bytes[used]);
        ++used;
        if (state != status::more) {
            return state;
        }
    }
    return status::more;
}

inline http_body_scanner::status http_body_scanner::chunked_byte(std::uint8_t byte) {
    const bool line_phase = phase_ == phase::size || phase_ == phase::size_space ||
                            phase_ == phase::extension || phase_ == phase::size_lf ||
                            phase_ == phase::trailer || phase_ == phase::trailer_lf;
    if (line_phase && ++line_bytes_ > limits_.max_line) {
        return fail(errc::message_too_large);
    }
    switch (phase_) {
    case phase::size: {
        int digit = -1;
        if (byte >= '0' && byte <= '9') {
            digit = byte - '0';
        } else if (byte >= 'a' && byte <= 'f') {
            digit = byte - 'a' + 10;
        } else if (byte >= 'A' && byte <= 'F') {
            digit = byte - 'A' + 10;
        }
        if (digit >= 0) {
            // 16 hex digits fit 64 bits: no overflow to check beyond the count.
            if (++digits_ > 16) {
                return fail(errc::protocol_error);
            }
            remaining_ = (remaining_ << 4) | static_cast<std::uint64_t>(digit);
            return status::more;
        }
        if (digits_ == 0) {
            return fail(errc::protocol_error);
        }
        if (byte == '\r') {
            phase_ = phase::size_lf;
        } else if (byte == ';') {
            phase_ = phase::extension;
        } else if (byte == ' ' || byte == '\t') {
            phase_ = phase::size_space; // BWS before ';' (RFC 9112 section 7.1.1)
        } else {
            return fail(errc::protocol_error);
        }
        return status::more;
    }
    case phase::size_space:
        if (byte == ';') {
            phase_ = phase::extension;
        } else if (byte != ' ' && byte != '\t') {
            return fail(errc::protocol_error);
        }
        return status::more;
    case phase::extension:
        if (byte == '\r') {
            phase_ = phase::size_lf;
        } else if ((byte < 0x20 && byte != '\t') || byte == 0x7F) {
            return fail(errc::protocol_error);
        }
        return status::more;
    case phase::size_lf:
        if (byte != '\n') {
            return fail(errc::protocol_error);
        }
        line_bytes_ = 0;
        digits_ = 0;
        phase_ = remaining_ == 0 ? phase::trailer : phase::data;
        return status::more;
    case phase::data_cr:
        if (byte != '\r') {
            return fail(errc::protocol_error);
        }
        phase_ = phase::data_lf;
        return status::more;
    case phase::data_lf:
        if (byte != '\n') {
            return fail(errc::protocol_error);
        }
        phase_ = phase::size;
        return status::more;
    case phase::trailer:
        if (byte == '\r') {
            phase_ = phase::trailer_lf;
        } else if ((byte < 0x20 && byte != '\t') || byte == 0x7F) {
            return fail(errc::protocol_error); // a bare LF, or a control character
        } else {
            line_.push_back(static_cast<char>(byte));
        }
        return status::more;
    case phase::trailer_lf:
        if (byte != '\n') {
            return fail(errc::protocol_error);
        }
        return end_of_trailer_line();
    case phase::data:
    case phase::complete:
    case phase::failed:
        break;
    }
    return fail(errc::protocol_error);
}

inline http_body_scanner::status http_body_scanner::end_of_trailer_line() {
    if (line_.empty()) {
        phase_ = phase::complete;
        return status::complete;
    }
    http_field field;
    if (++trailer_fields_ > limits_.max_fields) {
        return fail(errc::message_too_large);
    }
    if (!detail::http_message::parse_field_line(line_, field)) {
        return fail(errc::protocol_error);
    }
    line_.clear();
    line_bytes_ = 0;
    phase_ = phase::trailer;
    return status::more;
}

inline http_body_scanner::status http_body_scanner::fail(std::error_code why) {
    phase_ = phase::failed;
    error_ = why;
    line_.clear();
    line_.shrink_to_fit();
    return status::failed;
}

// --- the heads for the next hop --------------------------------------------------------------

inline std::string origin_request_head(const http_request_head& request, std::string_view via) {
    namespace m = detail::http_message;
    std::string head = request.method + " " + request.path + " HTTP/1." +
                       std::to_string(request.minor_version) + "\r\n";
    // The target's authority is the Host (RFC 9112 section 3.2.2): first, so no field an
    // origin reads before it can disagree.
    std::string host = request.origin.host.find(':') != std::string::npos
                           ? "[" + request.origin.host + "]"
                           : request.origin.host;
    if (request.origin.port != 80) {
        host += ":" + std::to_string(request.origin.port);
    }
    m::append_field(head, "Host", host);
    bool decrement = request.method == "TRACE" || request.method == "OPTIONS";
    for (const http_field& field : request.fields) {
        if (m::is_connection_field(request.fields, field.name) ||
            detail::http_head::iequals(field.name, "host")) {
            continue;
        }
        bool max_forwards = decrement && detail::http_head::iequals(field.name, "max-forwards");
        m::append_field(head, field.name, max_forwards ? m::decremented(field.value) : field.value);
    }
    m::append_via(head, request.minor_version, via);
    if (request.minor_version == 0 && request.keep_alive) {
        m::append_field(head, "Connection", "keep-alive");
    }
    head += "\r\n";
    return head;
}

inline std::string client_response_head(const http_response_head& response, std::string_view via,
                                        int client_minor_version, bool close) {
    namespace m = detail::http_message;
    std::string head =
        "HTTP/1.1 " + std::to_string(response.status) + " " + response.reason + "\r\n";
    for (const http_field& field : response.fields) {
        if (!m::is_connection_field(response.fields, field.name)) {
            m::append_field(head, field.name, field.value);
        }
    }
    m::append_via(head, response.minor_version, via);
    if (close) {
        m::append_field(head, "Connection", "close");
    } else if (client_minor_version == 0) {
        m::append_field(head, "Connection", "keep-alive");
    }
    head += "\r\n";
    return head;
}

} // namespace tinyproxy
// ---- end tinyproxy/protocol/http_message.hpp ----
// #include "tinyproxy/protocol/proxy_protocol.hpp"
// ---- begin tinyproxy/protocol/proxy_protocol.hpp ----
// The PROXY protocol (haproxy's proxy-protocol.txt, versions 1 and 2): encode a header that names
// the real client, and decode one sans-I/O.

#include <array>        // address bytes, the v2 signature
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // decoded endpoints
#include <string>       // v1 lines
#include <string_view>  // v1 parsing
#include <system_error> // std::error_code
#include <vector>       // byte buffers

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"

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
// ---- end tinyproxy/protocol/proxy_protocol.hpp ----
// #include "tinyproxy/protocol/socks4.hpp"
// ---- begin tinyproxy/protocol/socks4.hpp ----
// socks4_handshake: the server side of a SOCKS4 or SOCKS4a CONNECT request as a sans-I/O parser.

#include <algorithm>    // std::find, std::copy
#include <array>        // the fixed header
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <string>       // user id, host name
#include <string_view>  // name checks
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"

namespace tinyproxy {

/// The server side of a SOCKS4 request, and of its SOCKS4a form (DSTIP 0.0.0.x with x != 0,
/// then a host name after the user id):
///
///     VN=4 CD DSTPORT(2) DSTIP(4) USERID... NUL [HOST... NUL]
///
/// Feed it whatever bytes arrived, in any split; each feed answers a handshake_step. The user
/// id and host name are bounded (`config`): a field past its bound fails as soon as the bound is
/// passed, whatever the client still has to send, so a client cannot make it buffer more than
/// 8 + max_user_id + max_host_name bytes. Bytes after the request come back in the connect
/// step's `to_upstream`. Any truncation of a valid request is need_more.
///
/// Outcomes (to_client on fail is the 8-byte reply VN 0, CD 0x5B, unless said otherwise):
///  - connect: nothing to send yet; after connecting, the caller sends connected(local) or
///    failed(why);
///  - fail:
///     * not SOCKS4 (first byte not 4): nothing (unsupported_version), at the first byte;
///     * user id or host name past its bound: message_too_large;
///     * a command other than CONNECT, or BIND (2) when `config` does not accept it:
///       unsupported_command, once the whole request is in;
///     * a SOCKS4a host name that is empty or holds a control character: name_not_resolved;
///     * DSTPORT 0 in a CONNECT: invalid_address.
/// An accepted BIND answers a connect step of kind `request::bind` naming the peer the client
/// expects (DSTPORT 0 allowed); the caller sends connected(listening), then connected(peer).
/// Any feed after a connect or fail step answers fail(protocol_error) with nothing to send.
class socks4_handshake {
public:
    struct config {
        std::size_t max_user_id = 255;   ///< bytes before the user id's NUL
        std::size_t max_host_name = 255; ///< bytes before the SOCKS4a host name's NUL
        bool accept_bind = false;        ///< BIND is a request; unset, it gets 0x5B
    };

    static constexpr std::uint8_t version = 4;
    static constexpr std::uint8_t command_connect = 1;
    static constexpr std::uint8_t command_bind = 2;
    static constexpr std::uint8_t reply_granted = 0x5A;
    static constexpr std::uint8_t reply_rejected = 0x5B;

    socks4_handshake() = default;
    explicit socks4_handshake(config cfg) noexcept : config_(cfg) {}

    /// The client's next bytes. See the class comment for the outcomes.
    [[nodiscard]] handshake_step feed(byte_view bytes);

    /// VN 0, CD 0x5A, then the port and IPv4 address of `bound` (the proxy's address on the
    /// upstream connection; the address is 0.0.0.0 when that is IPv6, which SOCKS4 cannot say).
    std::vector<std::uint8_t> connected(const endpoint& bound) const;
    /// VN 0, CD 0x5B, port 0, address 0.0.0.0: SOCKS4 has one code for every failure.
    std::vector<std::uint8_t> failed(std::error_code why) const;

    /// The user id the client sent (at most max_user_id bytes; complete once finished()).
    const std::string& user_id() const noexcept { return user_id_; }
    /// True once feed() has answered connect or fail.
    bool finished() const noexcept { return stage_ == stage::finished; }

private:
    enum class stage { header, user_id, host_name, finished };
    static constexpr std::size_t header_size = 8;

    /// Appends input bytes to `field` up to and including a NUL (which is not stored); answers
    /// whether the NUL was found, and sets `too_long` once the field passes `bound`.
    static bool read_until_nul(byte_reader& input, std::string& field, std::size_t bound,
                               bool& too_long);
    handshake_step finish(byte_reader& input);
    handshake_step fail_with(std::error_code why, bool reply = true);
    bool is_socks4a() const noexcept;

    config config_;
    stage stage_ = stage::header;
    std::array<std::uint8_t, header_size> header_{};
    std::size_t header_bytes_ = 0;
    std::string user_id_;
    std::string host_name_;
};

// ---------------------------------------------------------------------------------------------

inline handshake_step socks4_handshake::feed(byte_view bytes) {
    if (stage_ == stage::finished) {
        return handshake_step::fail(errc::protocol_error);
    }
    byte_reader input(bytes);
    if (stage_ == stage::header) {
        byte_view more = input.bytes(std::min(header_size - header_bytes_, input.remaining()));
        std::copy(more.begin(), more.end(), header_.data() + header_bytes_);
        header_bytes_ += more.size();
        if (header_bytes_ >= 1 && header_[0] != version) {
            return fail_with(errc::unsupported_version, false); // not a SOCKS4 client
        }
        if (header_bytes_ < header_size) {
            return handshake_step::need_more();
        }
        stage_ = stage::user_id;
    }
    bool too_long = false;
    if (stage_ == stage::user_id) {
        if (!read_until_nul(input, user_id_, config_.max_user_id, too_long)) {
            return too_long ? fail_with(errc::message_too_large) : handshake_step::need_more();
        }
        stage_ = is_socks4a() ? stage::host_name : stage::finished;
    }
    if (stage_ == stage::host_name) {
        if (!read_until_nul(input, host_name_, config_.max_host_name, too_long)) {
            return too_long ? fail_with(errc::message_too_large) : handshake_step::need_more();
        }
        stage_ = stage::finished;
    }
    return finish(input);
}

inline bool socks4_handshake::read_until_nul(byte_reader& input, std::string& field,
                                             std::size_t bound, bool& too_long) {
    byte_view rest = input.rest();
    const std::uint8_t* nul = std::find(rest.begin(), rest.end(), std::uint8_t{0});
    auto length = static_cast<std::size_t>(nul - rest.begin());
    // Room left under the bound, checked before anything is copied: a 64 KiB user id with no
    // NUL fails here without being stored.
    if (length > bound - std::min(bound, field.size())) {
        too_long = true;
        return false;
    }
    field.append(input.bytes(length).as_chars());
    if (nul == rest.end()) {
        return false;
    }
    input.skip(1); // the NUL
    return true;
}

inline handshake_step socks4_handshake::finish(byte_reader& input) {
    byte_reader header(byte_view{header_.data(), header_.size()});
    header.skip(1); // VN, checked on arrival
    std::uint8_t command = header.u8();
    std::uint16_t port = header.u16();
    byte_view ip = header.bytes(4);
    const bool bind = command == command_bind && config_.accept_bind;
    if (command != command_connect && !bind) {
        return fail_with(errc::unsupported_command); // BIND not accepted, or no command at all
    }
    host_port target;
    if (is_socks4a()) {
        if (!detail::usable_host_name(host_name_)) {
            return fail_with(errc::name_not_resolved);
        }
        target.host = host_name_;
    } else {
        target.host = ip_address::v4({ip[0], ip[1], ip[2], ip[3]}).to_string();
    }
    if (port == 0 && !bind) { // a BIND may leave the port to us: the client seldom knows it
        return fail_with(errc::invalid_address);
    }
    target.port = port;
    byte_view rest = input.rest();
    return handshake_step::request_for(
        bind ? handshake_step::request::bind : handshake_step::request::connect, std::move(target),
        std::vector<std::uint8_t>(rest.begin(), rest.end()));
}

inline handshake_step socks4_handshake::fail_with(std::error_code why, bool reply) {
    stage_ = stage::finished;
    return handshake_step::fail(why, reply ? failed(why) : std::vector<std::uint8_t>{});
}

inline bool socks4_handshake::is_socks4a() const noexcept {
    // DSTIP 0.0.0.x with x != 0: "I could not resolve the name; here it is".
    return header_[4] == 0 && header_[5] == 0 && header_[6] == 0 && header_[7] != 0;
}

inline std::vector<std::uint8_t> socks4_handshake::connected(const endpoint& bound) const {
    std::vector<std::uint8_t> reply;
    reply.reserve(header_size);
    byte_writer out(reply);
    out.u8(0).u8(reply_granted).u16(bound.port);
    if (bound.address.is_v4()) {
        out.bytes(bound.address.bytes());
    } else {
        out.u32(0);
    }
    return reply;
}

inline std::vector<std::uint8_t> socks4_handshake::failed(std::error_code) const {
    std::vector<std::uint8_t> reply;
    reply.reserve(header_size);
    byte_writer(reply).u8(0).u8(reply_rejected).u16(0).u32(0);
    return reply;
}

} // namespace tinyproxy
// ---- end tinyproxy/protocol/socks4.hpp ----
// #include "tinyproxy/protocol/socks5.hpp"
// ---- begin tinyproxy/protocol/socks5.hpp ----
// socks5_handshake: the server side of a SOCKS5 handshake (RFC 1928, RFC 1929) as a sans-I/O
// parser.

#include <algorithm>    // std::min
#include <array>        // the message buffer
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // configured credentials
#include <string>       // host names
#include <string_view>  // credential comparison
#include <system_error> // std::error_code, std::errc
#include <utility>      // std::move
#include <vector>       // replies

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"

namespace tinyproxy {

/// The server side of a SOCKS5 handshake: method negotiation, username/password
/// authentication (RFC 1929) when credentials are configured, then one CONNECT request.
///
/// Feed it whatever bytes arrived, in any split (one byte at a time is fine); each feed answers
/// a handshake_step. It buffers at most one message (513 bytes, the largest RFC 1929 request),
/// never reads past the bytes it was given, and hands back the bytes that follow the request in
/// the connect step's `to_upstream`. Any truncation of a valid exchange is need_more.
///
/// What each outcome sends (to_client):
///  - need_more: the method selection {5, M} and the auth status {1, 0} once each is due;
///  - connect: those replies if they are still due (when the client pipelined its messages);
///    after connecting, the caller sends connected(local) or failed(why);
///  - fail: the replies due, then the one that says why, and the caller closes:
///     * not SOCKS5 (first byte not 5): nothing (unsupported_version);
///     * NMETHODS = 0, or no method we accept: {5, 0xFF} (no_acceptable_method);
///     * RFC 1929 version not 1: {1, 1} (unsupported_version); bad credentials: {1, 1}
///       (auth_failed);
///     * request version not 5: REP 0x01 (unsupported_version);
///     * a command other than CONNECT, BIND and UDP ASSOCIATE, or BIND or UDP ASSOCIATE when
///       `config` does not accept it: REP 0x07 (unsupported_command);
///     * ATYP other than 1, 3, 4: REP 0x08 (unsupported_address_type), as soon as ATYP arrives,
///       since the request's length is then unknown;
///     * a domain name that is empty or holds a control character (NUL included): REP 0x04
///       (name_not_resolved: no such name can resolve);
///     * port 0 in a CONNECT: REP 0x01 (invalid_address).
///
/// A BIND (when accepted) answers a connect step of kind `request::bind` naming the peer the
/// client expects (port 0 allowed: a client seldom knows it); the caller then sends
/// connected(listening), and connected(peer) once the peer has connected. A UDP ASSOCIATE
/// answers kind `request::udp_associate` naming where the client's datagrams will come from
/// (0.0.0.0 and port 0 allowed: the client may not know); the caller sends
/// connected(relay address) and relays until the client closes this connection.
///
/// Domain names are otherwise passed through as given (up to 255 bytes, as the protocol allows);
/// an IPv4 or IPv6 target comes out as its numeric text. Any feed after a connect or fail step
/// answers fail(protocol_error) with nothing to send.
class socks5_handshake {
public:
    struct config {
        /// Set: only USERNAME/PASSWORD (method 0x02) is accepted, with exactly these
        /// credentials. Unset: only NO AUTHENTICATION REQUIRED (0x00).
        std::optional<credentials> required;
        bool accept_bind = false;          ///< BIND is a request; unset, it gets REP 0x07
        bool accept_udp_associate = false; ///< UDP ASSOCIATE likewise
    };

    static constexpr std::uint8_t version = 5;
    static constexpr std::uint8_t method_no_auth = 0x00;
    static constexpr std::uint8_t method_username_password = 0x02;
    static constexpr std::uint8_t method_none_acceptable = 0xFF;
    static constexpr std::uint8_t auth_version = 1;
    static constexpr std::uint8_t command_connect = 1;
    static constexpr std::uint8_t command_bind = 2;
    static constexpr std::uint8_t command_udp_associate = 3;
    static constexpr std::uint8_t atyp_ipv4 = 1;
    static constexpr std::uint8_t atyp_domain = 3;
    static constexpr std::uint8_t atyp_ipv6 = 4;
    /// The largest message a client sends: an RFC 1929 request with a 255-byte user name and
    /// password (1 + 1 + 255 + 1 + 255).
    static constexpr std::size_t max_message_size = 513;

    socks5_handshake() = default;
    explicit socks5_handshake(config cfg) noexcept : config_(std::move(cfg)) {}

    /// The client's next bytes. See the class comment for what each outcome sends.
    [[nodiscard]] handshake_step feed(byte_view bytes);

    /// The success reply (REP 0x00) with BND.ADDR/BND.PORT = `bound`, the proxy's own address on
    /// the upstream connection (ATYP 1 for IPv4, 4 for IPv6).
    std::vector<std::uint8_t> connected(const endpoint& bound) const;
    /// The failure reply for `why` (REP from reply_code(), BND.ADDR 0.0.0.0, BND.PORT 0).
    std::vector<std::uint8_t> failed(std::error_code why) const;
    /// The REP code that says why a request failed: not_allowed 0x02; network unreachable or
    /// down 0x03; host unreachable or name_not_resolved 0x04; connection refused 0x05;
    /// connect_timeout or timed out 0x06 ("TTL expired"); unsupported_command 0x07;
    /// unsupported_address_type 0x08; anything else, an empty code included, 0x01. Never 0x00.
    static std::uint8_t reply_code(std::error_code why) noexcept;

    /// True once feed() has answered connect or fail.
    bool finished() const noexcept { return stage_ == stage::finished; }

private:
    enum class stage { greeting, auth, request, finished };

    /// How many bytes the message being read needs, judged from the bytes buffered so far: its
    /// full length once every length field is in, else more than is buffered. Sets `why` (and
    /// returns 0) as soon as the buffered bytes cannot start a valid message.
    std::size_t wanted(std::error_code& why) const noexcept;
    /// Acts on the complete message in the buffer; answers whether the handshake goes on.
    bool on_greeting(std::vector<std::uint8_t>& to_client, std::error_code& why);
    bool on_auth(std::vector<std::uint8_t>& to_client, std::error_code& why) const;
    bool on_request(host_port& target, handshake_step::request& kind, std::error_code& why) const;
    handshake_step fail_with(std::error_code why, std::vector<std::uint8_t> to_client);

    static bool same_secret(std::string_view given, std::string_view expected) noexcept;

    config config_;
    stage stage_ = stage::greeting;
    std::array<std::uint8_t, max_message_size> buffer_{};
    std::size_t buffered_ = 0;
};

// ---------------------------------------------------------------------------------------------

inline handshake_step socks5_handshake::feed(byte_view bytes) {
    if (stage_ == stage::finished) {
        return handshake_step::fail(errc::protocol_error);
    }
    std::vector<std::uint8_t> to_client; // replies due, in order
    byte_reader input(bytes);
    for (;;) {
        std::error_code why;
        std::size_t want = wanted(why);
        if (why) {
            return fail_with(why, std::move(to_client));
        }
        if (buffered_ < want) {
            if (input.remaining() == 0) {
                return handshake_step::need_more(std::move(to_client));
            }
            // Copy only what this message still needs: the rest may belong to the next one.
            // Then ask again: a field that decides the length (or fails) may just have arrived.
            byte_view more = input.bytes(std::min(want - buffered_, input.remaining()));
            std::copy(more.begin(), more.end(), buffer_.data() + buffered_);
            buffered_ += more.size();
            continue;
        }
        // buffered_ == want: one complete message.
        switch (stage_) {
        case stage::greeting:
            if (!on_greeting(to_client, why)) {
                return fail_with(why, std::move(to_client));
            }
            break;
        case stage::auth:
            if (!on_auth(to_client, why)) {
                return fail_with(why, std::move(to_client));
            }
            stage_ = stage::request;
            break;
        case stage::request: {
            host_port target;
            handshake_step::request kind = handshake_step::request::connect;
            if (!on_request(target, kind, why)) {
                return fail_with(why, std::move(to_client));
            }
            stage_ = stage::finished;
            byte_view rest = input.rest();
            handshake_step step = handshake_step::request_for(
                kind, std::move(target), std::vector<std::uint8_t>(rest.begin(), rest.end()));
            step.to_client = std::move(to_client);
            return step;
        }
        case stage::finished:
            break; // not reached: the loop returns when the stage becomes finished
        }
        buffered_ = 0;
    }
}

inline std::size_t socks5_handshake::wanted(std::error_code& why) const noexcept {
    const std::size_t n = buffered_;
    const auto& b = buffer_;
    switch (stage_) {
    case stage::greeting: // VER NMETHODS METHODS[NMETHODS]
        if (n >= 1 && b[0] != version) {
            why = errc::unsupported_version;
            return 0;
        }
        if (n < 2) {
            return 2;
        }
        if (b[1] == 0) {
            why = errc::no_acceptable_method;
            return 0;
        }
        return 2 + std::size_t{b[1]};
    case stage::auth: // VER ULEN UNAME[ULEN] PLEN PASSWD[PLEN]
        if (n >= 1 && b[0] != auth_version) {
            why = errc::unsupported_version;
            return 0;
        }
        if (n < 2) {
            return 2;
        }
        if (n < 3 + std::size_t{b[1]}) {
            return 3 + std::size_t{b[1]};
        }
        return 3 + std::size_t{b[1]} + std::size_t{b[2 + std::size_t{b[1]}]};
    case stage::request: // VER CMD RSV ATYP DST.ADDR DST.PORT
        if (n >= 1 && b[0] != version) {
            why = errc::unsupported_version;
            return 0;
        }
        if (n < 4) {
            return 4;
        }
        switch (b[3]) {
        case atyp_ipv4:
            return 4 + 4 + 2;
        case atyp_ipv6:
            return 4 + 16 + 2;
        case atyp_domain:
            return n < 5 ? 5 : 5 + std::size_t{b[4]} + 2;
        default:
            why = errc::unsupported_address_type;
            return 0;
        }
    case stage::finished:
        break;
    }
    why = errc::protocol_error;
    return 0;
}

inline bool socks5_handshake::on_greeting(std::vector<std::uint8_t>& to_client,
                                          std::error_code& why) {
    byte_reader message(byte_view{buffer_.data(), buffered_});
    message.skip(1); // VER, checked by wanted()
    byte_view methods = message.bytes(message.u8());
    const std::uint8_t ours = config_.required ? method_username_password : method_no_auth;
    bool offered = false;
    for (std::uint8_t method : methods) {
        offered = offered || method == ours;
    }
    if (!offered) {
        why = errc::no_acceptable_method;
        return false;
    }
    byte_writer(to_client).u8(version).u8(ours);
    stage_ = config_.required ? stage::auth : stage::request;
    return true;
}

inline bool socks5_handshake::on_auth(std::vector<std::uint8_t>& to_client,
                                      std::error_code& why) const {
    byte_reader message(byte_view{buffer_.data(), buffered_});
    message.skip(1); // VER, checked by wanted()
    byte_view username = message.bytes(message.u8());
    byte_view password = message.bytes(message.u8());
    // RFC 1929 says 1 to 255 bytes each; an empty field is read the same way and simply does not
    // match (unless the configured value is empty too). Both fields are always compared.
    bool user_ok = same_secret(username.as_chars(), config_.required->username);
    bool password_ok = same_secret(password.as_chars(), config_.required->password);
    if (!(user_ok && password_ok)) {
        why = errc::auth_failed;
        return false;
    }
    byte_writer(to_client).u8(auth_version).u8(0x00);
    return true;
}

inline bool socks5_handshake::on_request(host_port& target, handshake_step::request& kind,
                                         std::error_code& why) const {
    byte_reader message(byte_view{buffer_.data(), buffered_});
    message.skip(1); // VER, checked by wanted()
    std::uint8_t command = message.u8();
    message.skip(1); // RSV: ignored
    std::uint8_t atyp = message.u8();
    if (command == command_bind && config_.accept_bind) {
        kind = handshake_step::request::bind;
    } else if (command == command_udp_associate && config_.accept_udp_associate) {
        kind = handshake_step::request::udp_associate;
    } else if (command != command_connect) {
        why = errc::unsupported_command; // not accepted, or unknown
        return false;
    }
    if (atyp == atyp_ipv4) {
        byte_view a = message.bytes(4);
        target.host = ip_address::v4({a[0], a[1], a[2], a[3]}).to_string();
    } else if (atyp == atyp_ipv6) {
        std::array<std::uint8_t, 16> a{};
        byte_view raw = message.bytes(16);
        std::copy(raw.begin(), raw.end(), a.begin());
        target.host = ip_address::v6(a).to_string();
    } else {
        target.host = message.string_u8();
        if (!detail::usable_host_name(target.host)) {
            why = errc::name_not_resolved;
            return false;
        }
    }
    target.port = message.u16();
    if (!message || message.remaining() != 0) {
        why = errc::protocol_error; // wanted() and this reading disagree: a bug, not a client
        return false;
    }
    // BIND and UDP ASSOCIATE may leave the port to us: the client seldom knows it.
    if (target.port == 0 && kind == handshake_step::request::connect) {
        why = errc::invalid_address;
        return false;
    }
    return true;
}

inline handshake_step socks5_handshake::fail_with(std::error_code why,
                                                  std::vector<std::uint8_t> to_client) {
    const stage failed_at = stage_;
    stage_ = stage::finished;
    buffered_ = 0;
    if (failed_at == stage::greeting && why == errc::no_acceptable_method) {
        byte_writer(to_client).u8(version).u8(method_none_acceptable);
    } else if (failed_at == stage::auth) {
        byte_writer(to_client).u8(auth_version).u8(0x01); // any status but 0 is a failure
    } else if (failed_at == stage::request) {
        byte_writer(to_client).bytes(failed(why));
    }
    // A greeting in another version gets no answer: the client does not speak SOCKS5.
    return handshake_step::fail(why, std::move(to_client));
}

inline std::vector<std::uint8_t> socks5_handshake::connected(const endpoint& bound) const {
    std::vector<std::uint8_t> reply;
    reply.reserve(22);
    byte_writer(reply)
        .u8(version)
        .u8(0x00)
        .u8(0x00)
        .u8(bound.address.is_v6() ? atyp_ipv6 : atyp_ipv4)
        .bytes(bound.address.bytes())
        .u16(bound.port);
    return reply;
}

inline std::vector<std::uint8_t> socks5_handshake::failed(std::error_code why) const {
    std::vector<std::uint8_t> reply;
    reply.reserve(10);
    byte_writer(reply).u8(version).u8(reply_code(why)).u8(0x00).u8(atyp_ipv4).u32(0).u16(0);
    return reply;
}

inline std::uint8_t socks5_handshake::reply_code(std::error_code why) noexcept {
    if (why == errc::not_allowed) {
        return 0x02;
    }
    if (why == std::errc::network_unreachable || why == std::errc::network_down) {
        return 0x03;
    }
    if (why == std::errc::host_unreachable || why == errc::name_not_resolved) {
        return 0x04;
    }
    if (why == std::errc::connection_refused) {
        return 0x05;
    }
    if (why == errc::connect_timeout || why == std::errc::timed_out) {
        return 0x06;
    }
    if (why == errc::unsupported_command) {
        return 0x07;
    }
    if (why == errc::unsupported_address_type) {
        return 0x08;
    }
    return 0x01;
}

inline bool socks5_handshake::same_secret(std::string_view given,
                                          std::string_view expected) noexcept {
    // The time taken depends on the expected length only, not on where the first difference is.
    unsigned difference = given.size() == expected.size() ? 0u : 1u;
    for (std::size_t i = 0; i < expected.size(); ++i) {
        unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0u;
        difference |= static_cast<unsigned>(g ^ static_cast<unsigned char>(expected[i]));
    }
    return difference == 0;
}

} // namespace tinyproxy
// ---- end tinyproxy/protocol/socks5.hpp ----
// #include "tinyproxy/protocol/socks_udp.hpp"
// ---- begin tinyproxy/protocol/socks_udp.hpp ----
// The SOCKS5 UDP request header (RFC 1928 section 7) that frames every datagram of a UDP
// association: parse and encode, sans-I/O.

#include <array>        // IPv6 addresses
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <cstring>      // std::memcpy
#include <string>       // host names
#include <system_error> // std::error_code
#include <vector>       // encoded datagrams

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"

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
// ---- end tinyproxy/protocol/socks_udp.hpp ----
// #include "tinyproxy/mode/mode.hpp"
// ---- begin tinyproxy/mode/mode.hpp ----
// The Mode concept: what a Mode is told of a client (session_info), what its per-client session
// answers (mode_step), and the members a session drives it through.

#include <type_traits> // detecting optional Mode session members
#include <utility>     // std::declval

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"

namespace tinyproxy {

struct tunnel_info;   // stage.hpp: what a tunnel's stages are told
struct tunnel_stages; // stage.hpp: the stages a tunnel starts with

/// What a Mode knows about a new client.
struct session_info {
    endpoint client; ///< the client's address
    endpoint local;  ///< the address the client connected to
};

/// What a Mode's session answers at each step of its handshake (see handshake_step).
using mode_step = handshake_step;

/// A Mode says where each client goes. It is any class with
///     class session;                                           // see below
///     session make_session(const session_info& client) const;  // called once per client
/// make_session may be called from several threads at once, so it only reads the Mode.
///
/// Its `session` is the per-client handshake object a basic_session drives; it does no I/O:
///     mode_step start();                             // before any byte is read
///     mode_step on_client_data(byte_view bytes);     // after need_more: the next bytes
///     std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
///                                            const endpoint& upstream); // reply to the client
/// on_connected is called once the connect step is decided (unless the session ends first, as
/// when the proxy stops): with an empty `result` and both addresses once connected, or with why
/// the connect failed (refused, unresolvable, timed out) and empty addresses. Its reply goes to
/// the client before the tunnel's bytes, or before the close. Two members are optional:
///     static constexpr bool uses_local_endpoint = false;
/// for a session whose reply never names the upstream socket's own address (`local` is then
/// left empty: one getsockname(2) less per connection), and
///     const endpoint* client_address() const;
/// for a session that learns who the client really is (a PROXY protocol header names it):
/// results and logs then name that address (nullptr: the client as accepted). And two for a
/// Mode that reads the bytes in flight (http_proxy_mode):
///     void stages(const tunnel_info& tunnel, tunnel_stages& stages);
/// gives each tunnel stages (stage.hpp) that see its bytes before any of
/// session_options::stages, and
///     mode_step on_handed_back();
/// takes the client back when a stage of its tunnel hands it back (stage_context::hand_back):
/// the upstream is closed, and the answer is a step as on_client_data's, under a new
/// handshake deadline.
///
/// A session may throw (out of memory, or a bug): that client's session ends, nothing else.

namespace detail {

/// Whether a Mode session says who the client really is (`client_address()`, see above).
template <class ModeSession, class = void>
struct reports_client : std::false_type {};
template <class ModeSession>
struct reports_client<ModeSession,
                      std::void_t<decltype(std::declval<const ModeSession&>().client_address())>>
    : std::true_type {};

/// Whether a Mode session reads the `local` argument of on_connected() (unless it says not).
template <class ModeSession, class = void>
struct uses_local_endpoint : std::true_type {};
template <class ModeSession>
struct uses_local_endpoint<ModeSession, std::void_t<decltype(ModeSession::uses_local_endpoint)>>
    : std::bool_constant<ModeSession::uses_local_endpoint> {};

/// Whether a Mode session gives each tunnel stages of its own (mode/mode.hpp, `stages()`).
template <class ModeSession, class = void>
struct gives_stages : std::false_type {};
template <class ModeSession>
struct gives_stages<ModeSession,
                    std::void_t<decltype(std::declval<ModeSession&>().stages(
                        std::declval<const tunnel_info&>(), std::declval<tunnel_stages&>()))>>
    : std::true_type {};

/// Whether a Mode session takes a client handed back by its tunnel (`on_handed_back()`).
template <class ModeSession, class = void>
struct takes_back : std::false_type {};
template <class ModeSession>
struct takes_back<ModeSession, std::void_t<decltype(std::declval<ModeSession&>().on_handed_back())>>
    : std::true_type {};

} // namespace detail

} // namespace tinyproxy
// ---- end tinyproxy/mode/mode.hpp ----
// #include "tinyproxy/stage.hpp"
// ---- begin tinyproxy/stage.hpp ----
// The relay's stage seam: a stage sees, changes, holds, paces, splits or cuts the bytes of one
// direction of a tunnel, and a stage_chain runs an ordered list of them for the relay.

#include <chrono>       // how often late stages are looked for
#include <cstddef>      // std::size_t
#include <cstdint>      // a tunnel's serial number
#include <functional>   // stage_factory
#include <memory>       // std::unique_ptr: a chain owns its stages
#include <string>       // what a tunnel's stages are, for its log line
#include <system_error> // the reason for a reset
#include <utility>      // std::move
#include <vector>       // the stages in order

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"

namespace tinyproxy {

/// The two directions of a tunnel, each with its own chain of stages.
enum class direction {
    to_upstream = 0, ///< bytes the client sends
    to_client = 1,   ///< bytes upstream sends
};

/// Where the last stage of a chain delivers: the relay's side of the destination socket. The
/// relay implements it; a stage never sees it.
class stage_sink {
public:
    /// Bytes for the destination, in order.
    virtual void deliver(byte_view bytes) noexcept = 0;
    /// The end of stream: nothing more will be delivered.
    virtual void deliver_end() noexcept = 0;
    /// End the whole tunnel as a peer's reset would: both sides get a reset.
    virtual void reset(std::error_code why) noexcept = 0;
    /// End the whole tunnel cleanly: neither source is read again, each destination gets its
    /// end of stream once what was delivered to it so far has gone, and what the stages of
    /// either direction still hold is dropped.
    virtual void close() noexcept = 0;
    /// End the tunnel but keep the client's connection (stage_context::hand_back). A sink that
    /// cannot hand the client back closes instead.
    virtual void hand_back() noexcept { close(); }

protected:
    ~stage_sink() = default;
};

class stage_chain;

/// What one stage may do, handed to it for the length of one call (never kept past it): pass
/// bytes or the end of stream on to the next stage (the destination after the last), ask to
/// be woken at a time, or reset the tunnel.
class stage_context {
public:
    /// The time the driver passed to relay::pump(); a stage never reads a clock of its own.
    time_point now() const noexcept { return now_; }
    /// Passes bytes on, now, after everything this stage passed before. Ignored after end().
    void pass(byte_view bytes);
    /// Passes the end of stream on. A stage calls it once, after passing every byte it held;
    /// called before the source has ended, it ends the direction (the destination gets its FIN
    /// once the bytes passed so far have gone; the source is not read again).
    void end();
    /// Asks for on_wake() at `when` or soon after: the relay reports it in next_wake(), and the
    /// driver pumps then. Replaces this stage's earlier request; time_point::max() cancels it.
    void wake_at(time_point when) noexcept;
    /// Ends the tunnel with a reset on both sides (relay::failed() says `why`).
    void reset(std::error_code why = make_error_code(errc::reset_by_stage)) noexcept;
    /// Closes the tunnel cleanly, both ways (stage_sink::close): as a server that hangs up.
    /// Bytes this stage passes after it go nowhere.
    void close() noexcept;
    /// Ends the tunnel, but not the client's connection: neither source is read again, and
    /// once everything passed to the client so far has been written (what the stages of that
    /// direction hold included), the relay finishes (relay::handed_back()) without a FIN to
    /// the client. The session then gives the client back to its Mode, which decides anew
    /// (an HTTP client's next request, to another origin). What the stages of the direction to
    /// upstream still hold is dropped: a stage that hands back keeps what it needs first.
    void hand_back() noexcept;

private:
    friend class stage_chain;
    stage_context(stage_chain& chain, std::size_t index, time_point now, stage_sink& sink) noexcept
        : chain_(chain), index_(index), now_(now), sink_(sink) {}

    stage_chain& chain_;
    std::size_t index_; // of the stage this context was made for
    time_point now_;
    stage_sink& sink_;
};

/// One stage of a direction: the concept a user's stage (a hex-dump logger, a rewriter) or a
/// fault (latency, bandwidth, slicer, reset) implements. Each member has a default that
/// passes everything on at once, so a stage overrides only what it changes.
///
/// The rules a stage keeps:
/// - everything it is given, it passes on (changed or not), holds, or drops on purpose; in
///   order, and the end of stream after every byte it passes;
/// - what it holds, held() says: the relay stops reading the direction's source while the
///   chain holds a scratch buffer's worth (back-pressure), so a stage holds at most that much
///   of what it was given (plus what it makes of it: a rewrite to a longer string);
/// - it does not block and reads no clock: the time comes in stage_context::now(), and a stage
///   that holds bytes until a time asks for a wake-up (wake_at);
/// - it may throw (out of memory): the relay then ends the tunnel (errc::stage_failed), with a
///   reset on both sides, as a stage's reset() does.
class relay_stage {
public:
    virtual ~relay_stage() = default;

    /// Bytes read from the direction's source (or passed on by the stage before).
    virtual void on_data(stage_context& out, byte_view bytes) { out.pass(bytes); }
    /// The end of stream from the source (or the stage before); no on_data() follows.
    virtual void on_end(stage_context& out) { out.end(); }
    /// The time this stage asked for with wake_at() has come.
    virtual void on_wake(stage_context& out) { (void)out; }
    /// Once, before anything else: the tunnel has started (or this stage was added to a live
    /// chain). A stage whose timer runs from its start (a timeout) asks for its wake-up here.
    virtual void on_start(stage_context& out) { (void)out; }
    /// This stage is being taken out of a live chain (stage_chain::erase): it passes on at once
    /// everything it holds, in order, and the end of stream if that has reached it; nothing is
    /// lost by removing a stage. After it, the stage is destroyed.
    virtual void on_remove(stage_context& out) { (void)out; }
    /// Bytes this stage holds now, not yet passed on.
    virtual std::size_t held() const noexcept { return 0; }
};

/// The ordered stages of one direction, owned (each stage belongs to its chain, and the chain
/// to the relay it is given to: relay::set_stages()). The relay drives it; a stage reaches the
/// next one only through its stage_context.
class stage_chain {
public:
    stage_chain() = default;
    stage_chain(stage_chain&&) noexcept = default;
    stage_chain& operator=(stage_chain&&) noexcept = default;

    /// Appends a stage after the others: it sees what they pass on. It starts (on_start) at
    /// the chain's next call.
    void push_back(std::unique_ptr<relay_stage> stage) { insert(slots_.size(), std::move(stage)); }
    /// Puts a stage before the one at `index` (at the end when `index` is size()). A stage put
    /// behind an end of stream that has passed sees nothing.
    void insert(std::size_t index, std::unique_ptr<relay_stage> stage);
    /// Takes the stage at `index` out: it first passes on what it holds (on_remove), to the
    /// stages after it, and the end of stream too if that had reached it.
    void erase(std::size_t index, time_point now, stage_sink& sink);
    bool empty() const noexcept { return slots_.empty(); }
    std::size_t size() const noexcept { return slots_.size(); }
    relay_stage& operator[](std::size_t index) noexcept { return *slots_[index].stage; }

    /// What the stages hold together.
    std::size_t held() const noexcept;
    /// The earliest wake-up a stage asked for; time_point::max() when none did.
    time_point next_wake() const noexcept;

    /// Starts (on_start), first to last, the stages that have not started yet. Every other
    /// call below does this first.
    void start(time_point now, stage_sink& sink);
    /// Gives bytes read from the source to the first stage.
    void feed(byte_view bytes, time_point now, stage_sink& sink) {
        start(now, sink);
        deliver(0, bytes, now, sink);
    }
    /// Gives the source's end of stream to the first stage.
    void feed_end(time_point now, stage_sink& sink) {
        start(now, sink);
        deliver_end(0, now, sink);
    }
    /// Wakes, first to last, each stage whose time has come by `now` (a stage woken by what
    /// the one before passed on in this sweep included).
    void wake(time_point now, stage_sink& sink);

private:
    friend class stage_context;
    struct slot {
        std::unique_ptr<relay_stage> stage;
        time_point wake = time_point::max(); // asked for with wake_at()
        bool ended = false;                  // the end of stream has reached this stage
        bool started = false;                // on_start() has been called
    };

    /// To the stage at `index`, or past the last one to the sink.
    void deliver(std::size_t index, byte_view bytes, time_point now, stage_sink& sink);
    void deliver_end(std::size_t index, time_point now, stage_sink& sink);

    std::vector<slot> slots_;
    std::size_t unstarted_ = 0; // stages whose on_start() is still to come
    bool sink_ended_ = false;   // the end of stream has gone past the last stage
};

/// What a stage_factory is told of the tunnel it gives stages to.
struct tunnel_info {
    std::uint64_t serial = 0; ///< the client's number, counted from 1 in the order accepted
    endpoint client;          ///< the client, as accepted
    host_port target;         ///< where the Mode sent it
    endpoint upstream;        ///< the address connected to
};

/// Stages that may come to a direction after its tunnel started without any: a fault set that
/// can change but has nothing for that direction yet. The direction keeps the plain path
/// (splice included) until they come; the tunnel asks changed() at every pump, and at least
/// every look_every() while nothing moves. When it says yes, the tunnel calls make() for each
/// direction still without stages, as soon as that direction has nothing in a splice pipe,
/// and then looked(). Called on the thread or in the process that serves the tunnel.
class late_stages {
public:
    virtual ~late_stages() = default;
    /// Whether make() may give something it did not at the last look: cheap (an atomic load).
    virtual bool changed() noexcept = 0;
    /// The stages `which` takes now; an empty chain: none yet.
    virtual stage_chain make(direction which) = 0;
    /// Every direction has been asked since the last changed(): the next changed() compares
    /// with that.
    virtual void looked() noexcept = 0;
    /// How long a tunnel that moves nothing goes without asking changed().
    virtual std::chrono::milliseconds look_every() const noexcept = 0;
};

/// The stages one tunnel starts with: the factory fills in what it wants, and a direction
/// left empty takes the plain path (splice included).
struct tunnel_stages {
    stage_chain to_upstream; ///< bytes the client sends
    stage_chain to_client;   ///< bytes upstream sends
    /// What these stages are, in a few words, for the session's log line
    /// (session_result::stages): the factory's to fill in, empty by default.
    std::string label;
    /// Stages that may come later to a direction left empty here (none by default).
    std::unique_ptr<late_stages> later;
};

/// Called as each tunnel starts (after the handshake and the connect, before a byte is
/// relayed), on the thread or in the process that serves it: it must be thread-safe. It may
/// throw; the session then ends with errc::stage_failed.
using stage_factory = std::function<void(const tunnel_info& tunnel, tunnel_stages& stages)>;

// ---------------------------------------------------------------------------------------------

inline void stage_context::pass(byte_view bytes) { chain_.deliver(index_ + 1, bytes, now_, sink_); }

inline void stage_context::end() { chain_.deliver_end(index_ + 1, now_, sink_); }

inline void stage_context::wake_at(time_point when) noexcept { chain_.slots_[index_].wake = when; }

inline void stage_context::reset(std::error_code why) noexcept { sink_.reset(why); }

inline void stage_context::close() noexcept { sink_.close(); }

inline void stage_context::hand_back() noexcept { sink_.hand_back(); }

inline void stage_chain::insert(std::size_t index, std::unique_ptr<relay_stage> stage) {
    index = index < slots_.size() ? index : slots_.size();
    slot fresh{std::move(stage)};
    // Behind an end of stream that has passed, nothing more will come this way.
    fresh.ended = index < slots_.size() && slots_[index].ended;
    slots_.insert(slots_.begin() + static_cast<std::ptrdiff_t>(index), std::move(fresh));
    ++unstarted_;
}

inline void stage_chain::erase(std::size_t index, time_point now, stage_sink& sink) {
    if (index >= slots_.size()) {
        return;
    }
    start(now, sink); // the stages after it start before they see what it held
    {
        stage_context context(*this, index, now, sink);
        slots_[index].stage->on_remove(context);
    }
    // The end of stream that reached this stage goes on, whether or not the stage passed it.
    if (slots_[index].ended) {
        deliver_end(index + 1, now, sink);
    }
    slots_.erase(slots_.begin() + static_cast<std::ptrdiff_t>(index));
}

inline void stage_chain::start(time_point now, stage_sink& sink) {
    for (std::size_t i = 0; unstarted_ != 0 && i < slots_.size(); ++i) {
        if (!slots_[i].started) {
            slots_[i].started = true;
            --unstarted_;
            stage_context context(*this, i, now, sink);
            slots_[i].stage->on_start(context);
        }
    }
}

inline std::size_t stage_chain::held() const noexcept {
    std::size_t total = 0;
    for (const slot& s : slots_) {
        total += s.stage->held();
    }
    return total;
}

inline time_point stage_chain::next_wake() const noexcept {
    time_point earliest = time_point::max();
    for (const slot& s : slots_) {
        earliest = s.wake < earliest ? s.wake : earliest;
    }
    return earliest;
}

inline void stage_chain::wake(time_point now, stage_sink& sink) {
    start(now, sink);
    for (std::size_t i = 0; i < slots_.size(); ++i) {
        if (slots_[i].wake <= now) {
            slots_[i].wake = time_point::max(); // the stage asks again if it needs to
            stage_context context(*this, i, now, sink);
            slots_[i].stage->on_wake(context);
        }
    }
}

inline void stage_chain::deliver(std::size_t index, byte_view bytes, time_point now,
                                 stage_sink& sink) {
    if (index == slots_.size()) {
        sink.deliver(bytes);
    } else if (!slots_[index].ended) { // bytes behind an end of stream have nowhere to go
        stage_context context(*this, index, now, sink);
        slots_[index].stage->on_data(context, bytes);
    }
}

inline void stage_chain::deliver_end(std::size_t index, time_point now, stage_sink& sink) {
    if (index == slots_.size()) {
        if (!sink_ended_) { // once: erase() passes on an end a stage may have passed already
            sink_ended_ = true;
            sink.deliver_end();
        }
    } else if (!slots_[index].ended) {
        slots_[index].ended = true;
        stage_context context(*this, index, now, sink);
        slots_[index].stage->on_end(context);
    }
}

} // namespace tinyproxy
// ---- end tinyproxy/stage.hpp ----
// #include "tinyproxy/fault/random.hpp"
// ---- begin tinyproxy/fault/random.hpp ----
// The faults' random numbers: a small seeded generator whose sequence is the same on every
// platform and standard library, so a seed reproduces the same decisions everywhere.

#include <cstdint> // the generator's state and draws

// #include "tinyproxy/config.hpp"

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
// ---- end tinyproxy/fault/random.hpp ----
// #include "tinyproxy/fault/toxic.hpp"
// ---- begin tinyproxy/fault/toxic.hpp ----
// What a fault is, as Toxiproxy says it: a toxic's type, name, stream, toxicity and attributes
// (Toxiproxy's names and units), how it is checked, and its command-line form TYPE[,KEY=VALUE]...

#include <charconv>    // toxicity, read and written in every locale
#include <cmath>       // std::isfinite: toxicity
#include <cstddef>     // std::size_t: the number of types
#include <cstdint>     // attributes
#include <stdexcept>   // std::invalid_argument: a bad spec
#include <string>      // names, messages
#include <string_view> // spec text

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// Toxiproxy's toxic types, each a built-in stage (fault/*.hpp); noop passes every byte as it
/// comes (Toxiproxy has it; its own tests add it).
enum class toxic_type {
    latency,
    bandwidth,
    slicer,
    slow_close,
    timeout,
    reset_peer,
    limit_data,
    noop
};
/// How many toxic types there are (for tables indexed by type).
constexpr std::size_t toxic_type_count = 8;

/// One fault. The attributes keep Toxiproxy's names and units; those its type does not have
/// stay 0.
struct toxic {
    std::string name; ///< empty: TYPE_STREAM, as Toxiproxy names it
    toxic_type type = toxic_type::latency;
    direction stream = direction::to_client; ///< Toxiproxy's "downstream", its default
    double toxicity = 1.0;                   ///< the chance it applies to a connection
    std::int64_t latency = 0;                ///< latency: ms
    std::int64_t jitter = 0;                 ///< latency: ± ms
    std::int64_t rate = 0;                   ///< bandwidth: KB/s, 1 KB = 1000 B
    std::int64_t average_size = 0;           ///< slicer: bytes a slice
    std::int64_t size_variation = 0;         ///< slicer: ± bytes
    std::int64_t delay = 0;                  ///< slicer: µs between slices; slow_close: ms
    std::int64_t timeout = 0;                ///< timeout, reset_peer: ms
    std::int64_t bytes = 0;                  ///< limit_data: bytes before the close
};

/// An attribute of a type: its name and where a toxic keeps it.
struct toxic_attribute {
    std::string_view key;
    std::int64_t toxic::*field;
};

/// The largest value an attribute takes (limit_data's bytes: 2^62): over eleven days in ms,
/// 1 TB/s in KB/s; small enough that no time or rate computed from it overflows.
constexpr std::int64_t toxic_attribute_max = 1'000'000'000;

/// Toxiproxy's name of a type ("latency", "slow_close", ...).
std::string_view type_name(toxic_type type) noexcept;
/// The type a name says; false for none.
bool parse_toxic_type(std::string_view name, toxic_type& type) noexcept;
/// "upstream" (client to server) or "downstream" (server to client).
std::string_view stream_name(direction stream) noexcept;
bool parse_stream(std::string_view name, direction& stream) noexcept;
/// The attributes of a type, in Toxiproxy's order; `count` says how many.
const toxic_attribute* attributes_of(toxic_type type, std::size_t& count) noexcept;
/// The name a toxic goes by: its own, or TYPE_STREAM ("latency_downstream").
std::string name_of(const toxic& fault);
/// What is wrong with a toxic ("rate must be at least 1"); empty when nothing is.
std::string check_toxic(const toxic& fault);
/// Reads TYPE[,KEY=VALUE]... (keys: the type's attributes, and stream, toxicity, name), e.g.
/// "latency,latency=100,jitter=10". Throws std::invalid_argument saying what is wrong: an
/// unknown type or key, a key given twice, a value that is not a whole number from 0 (or for
/// toxicity, a number from 0 to 1), or a check_toxic() failure.
toxic parse_toxic(std::string_view spec);
/// The spec form of a toxic, every attribute given: parse_toxic(to_spec(t)) gives t back.
std::string to_spec(const toxic& fault);

// ---------------------------------------------------------------------------------------------

namespace detail {

inline constexpr std::string_view toxic_type_names[] = {
    "latency", "bandwidth", "slicer", "slow_close", "timeout", "reset_peer", "limit_data", "noop",
};
static_assert(sizeof(toxic_type_names) / sizeof(toxic_type_names[0]) == toxic_type_count,
              "a name for every toxic_type");

/// Whole number from 0 to `max`, every character a digit.
inline bool parse_count(std::string_view text, std::int64_t max, std::int64_t& value) noexcept {
    if (text.empty() || text.size() > 19) {
        return false;
    }
    std::int64_t result = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return false;
        }
        if (result > (max - (c - '0')) / 10) { // result * 10 + digit would pass max
            return false;
        }
        result = result * 10 + (c - '0');
        if (result > max) {
            return false;
        }
    }
    value = result;
    return true;
}

/// A number from 0 to 1 in decimal ("0.25", "1", ".5", "1e-7"), nothing else in the text.
inline bool parse_toxicity(std::string_view text, double& value) {
    if (text.empty() || text.size() > 32 ||
        text.find_first_not_of("0123456789.eE+-") != std::string_view::npos ||
        !((text.front() >= '0' && text.front() <= '9') || text.front() == '.')) {
        return false;
    }
    double result = 0; // from_chars, not strtod: the same in every locale
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), result);
    if (error != std::errc() || end != text.data() + text.size() || !std::isfinite(result) ||
        result < 0 || result > 1) {
        return false;
    }
    value = result;
    return true;
}

inline constexpr std::int64_t attribute_max(toxic_type type) noexcept {
    return type == toxic_type::limit_data ? std::int64_t{1} << 62 : toxic_attribute_max;
}

/// The shortest text that reads back as `value` ("0.1", not "0.10000000000000001"; "1e-07"),
/// in every locale.
inline std::string shortest(double value) {
    char text[32];
    const auto [end, error] = std::to_chars(text, text + sizeof text, value);
    return error == std::errc() ? std::string(text, end) : std::string("0");
}

inline std::string quoted(std::string_view text) { return "'" + std::string(text) + "'"; }

} // namespace detail

inline std::string_view type_name(toxic_type type) noexcept {
    return detail::toxic_type_names[static_cast<int>(type)];
}

inline bool parse_toxic_type(std::string_view name, toxic_type& type) noexcept {
    for (std::size_t i = 0; i < toxic_type_count; ++i) {
        if (detail::toxic_type_names[i] == name) {
            type = static_cast<toxic_type>(i);
            return true;
        }
    }
    return false;
}

inline std::string_view stream_name(direction stream) noexcept {
    return stream == direction::to_upstream ? "upstream" : "downstream";
}

inline bool parse_stream(std::string_view name, direction& stream) noexcept {
    if (name == "upstream" || name == "downstream") {
        stream = name == "upstream" ? direction::to_upstream : direction::to_client;
        return true;
    }
    return false;
}

inline const toxic_attribute* attributes_of(toxic_type type, std::size_t& count) noexcept {
    static constexpr toxic_attribute latency[] = {{"latency", &toxic::latency},
                                                  {"jitter", &toxic::jitter}};
    static constexpr toxic_attribute bandwidth[] = {{"rate", &toxic::rate}};
    static constexpr toxic_attribute slicer[] = {{"average_size", &toxic::average_size},
                                                 {"size_variation", &toxic::size_variation},
                                                 {"delay", &toxic::delay}};
    static constexpr toxic_attribute slow_close[] = {{"delay", &toxic::delay}};
    static constexpr toxic_attribute timeout[] = {{"timeout", &toxic::timeout}};
    static constexpr toxic_attribute limit_data[] = {{"bytes", &toxic::bytes}};
    switch (type) {
    case toxic_type::latency:
        count = 2;
        return latency;
    case toxic_type::bandwidth:
        count = 1;
        return bandwidth;
    case toxic_type::slicer:
        count = 3;
        return slicer;
    case toxic_type::slow_close:
        count = 1;
        return slow_close;
    case toxic_type::timeout:
    case toxic_type::reset_peer:
        count = 1;
        return timeout;
    case toxic_type::limit_data:
        count = 1;
        return limit_data;
    case toxic_type::noop:
        break;
    }
    count = 0;
    return nullptr;
}

inline std::string name_of(const toxic& fault) {
    if (!fault.name.empty()) {
        return fault.name;
    }
    return std::string(type_name(fault.type)) + "_" + std::string(stream_name(fault.stream));
}

inline std::string check_toxic(const toxic& fault) {
    if (!(fault.toxicity >= 0 && fault.toxicity <= 1)) { // NaN fails both
        return "toxicity must be from 0 to 1";
    }
    std::size_t count = 0;
    const toxic_attribute* attributes = attributes_of(fault.type, count);
    for (std::size_t i = 0; i < count; ++i) {
        const std::int64_t value = fault.*attributes[i].field;
        if (value < 0 || value > detail::attribute_max(fault.type)) {
            return std::string(attributes[i].key) + " must be from 0 to " +
                   std::to_string(detail::attribute_max(fault.type));
        }
    }
    if (fault.type == toxic_type::bandwidth && fault.rate < 1) {
        return "rate must be at least 1 (KB/s)";
    }
    if (fault.type == toxic_type::slicer && fault.average_size < 1) {
        return "average_size must be at least 1 (bytes)";
    }
    if (fault.name.find_first_of(",=") != std::string::npos) {
        return "a name cannot hold ',' or '='";
    }
    return {};
}

inline toxic parse_toxic(std::string_view spec) {
    toxic fault;
    const std::size_t first_comma = spec.find(',');
    const std::string_view type = spec.substr(0, first_comma);
    if (!parse_toxic_type(type, fault.type)) {
        throw std::invalid_argument("unknown toxic type " + detail::quoted(type) +
                                    " (expected latency, bandwidth, slicer, slow_close, timeout, "
                                    "reset_peer, limit_data or noop)");
    }
    std::size_t attribute_count = 0;
    const toxic_attribute* attributes = attributes_of(fault.type, attribute_count);
    std::string seen = ","; // the keys given so far, each followed by a comma
    std::string_view rest =
        first_comma == std::string_view::npos ? std::string_view() : spec.substr(first_comma + 1);
    while (first_comma != std::string_view::npos) {
        const std::size_t comma = rest.find(',');
        const std::string_view item = rest.substr(0, comma);
        const std::size_t equals = item.find('=');
        if (equals == std::string_view::npos || equals == 0) {
            throw std::invalid_argument("expected KEY=VALUE, not " + detail::quoted(item));
        }
        const std::string_view key = item.substr(0, equals);
        const std::string_view value = item.substr(equals + 1);
        const std::string marker = std::string(key) + ",";
        if (seen.find("," + marker) != std::string::npos) {
            throw std::invalid_argument(detail::quoted(key) + " given twice");
        }
        seen += marker;
        bool known = true;
        if (key == "stream") {
            if (!parse_stream(value, fault.stream)) {
                throw std::invalid_argument("stream: expected upstream or downstream, not " +
                                            detail::quoted(value));
            }
        } else if (key == "toxicity") {
            if (!detail::parse_toxicity(value, fault.toxicity)) {
                throw std::invalid_argument("toxicity: expected a number from 0 to 1, not " +
                                            detail::quoted(value));
            }
        } else if (key == "name") {
            if (value.empty()) {
                throw std::invalid_argument("name: expected a name, not nothing");
            }
            fault.name = std::string(value);
        } else {
            known = false;
            for (std::size_t i = 0; i < attribute_count; ++i) {
                if (attributes[i].key == key) {
                    known = true;
                    const std::int64_t max = detail::attribute_max(fault.type);
                    if (!detail::parse_count(value, max, fault.*attributes[i].field)) {
                        throw std::invalid_argument(
                            std::string(key) + ": expected a whole number from 0 to " +
                            std::to_string(max) + ", not " + detail::quoted(value));
                    }
                }
            }
        }
        if (!known) {
            throw std::invalid_argument("unknown key " + detail::quoted(key) + " for " +
                                        std::string(type_name(fault.type)));
        }
        if (comma == std::string_view::npos) {
            break;
        }
        rest = rest.substr(comma + 1);
    }
    const std::string problem = check_toxic(fault);
    if (!problem.empty()) {
        throw std::invalid_argument(std::string(type_name(fault.type)) + ": " + problem);
    }
    return fault;
}

inline std::string to_spec(const toxic& fault) {
    std::string spec(type_name(fault.type));
    std::size_t count = 0;
    const toxic_attribute* attributes = attributes_of(fault.type, count);
    for (std::size_t i = 0; i < count; ++i) {
        spec +=
            "," + std::string(attributes[i].key) + "=" + std::to_string(fault.*attributes[i].field);
    }
    spec += ",stream=" + std::string(stream_name(fault.stream));
    spec += ",toxicity=" + detail::shortest(fault.toxicity);
    if (!fault.name.empty()) {
        spec += ",name=" + fault.name;
    }
    return spec;
}

} // namespace tinyproxy
// ---- end tinyproxy/fault/toxic.hpp ----
// #include "tinyproxy/fault/latency.hpp"
// ---- begin tinyproxy/fault/latency.hpp ----
// The latency fault: each chunk of a direction is delayed by latency ± jitter, order kept.

#include <chrono>  // the delays
#include <cstddef> // std::size_t
#include <cstdint> // microsecond counts
#include <deque>   // the held chunks' due times

// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/stage.hpp"
// #include "tinyproxy/fault/random.hpp"
// #include "tinyproxy/fault/held_bytes.hpp"
// ---- begin tinyproxy/fault/held_bytes.hpp ----
// The bytes a fault stage holds, first in first out, in one buffer (internal to the faults).

#include <cstddef> // std::size_t
#include <cstdint> // the bytes
#include <vector>  // the buffer

// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/stage.hpp"

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
// ---- end tinyproxy/fault/held_bytes.hpp ----

namespace tinyproxy {

/// Toxiproxy's `latency`: each chunk is passed on `latency` ± a uniform `jitter` (drawn in
/// microseconds over [-jitter, +jitter], one draw per chunk) after it came, never less than at
/// once, and never before the chunk before it: order is kept, so a chunk drawn short waits for
/// the one ahead. The end of stream follows the last chunk, delayed like one.
///
/// Holds: every chunk not yet due; at most the relay's stage buffer (back-pressure), which is
/// what a delay costs: at 100 MB/s, 100 ms of latency holds 10 MB.
///
/// Unlike Toxiproxy: the end of stream is delayed and passed on in order (half-close kept;
/// Toxiproxy closes the connection at once), the jitter comes from the seeded generator (the
/// same seed, the same delays), and a removed fault passes what it holds at once.
class latency_stage : public relay_stage {
public:
    latency_stage(std::chrono::milliseconds latency, std::chrono::milliseconds jitter,
                  fault_random random) noexcept
        : latency_us_(clamped_us(latency)), jitter_us_(clamped_us(jitter)), random_(random) {}

    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;
    void on_wake(stage_context& out) override { release(out); }
    void on_remove(stage_context& out) override;
    std::size_t held() const noexcept override { return bytes_.size(); }

private:
    struct due_chunk {
        time_point due;
        std::size_t size; // its bytes are the next ones in bytes_
    };

    /// Milliseconds as microseconds, kept small enough that latency + jitter cannot overflow
    /// (70 years is "never" here).
    static std::int64_t clamped_us(std::chrono::milliseconds value) noexcept {
        constexpr std::int64_t longest_ms = std::int64_t{1} << 41; // about 70 years
        const std::int64_t ms = value.count() < 0 ? 0 : value.count();
        return (ms < longest_ms ? ms : longest_ms) * 1000;
    }
    /// This chunk's delay: one draw, never below zero.
    std::chrono::microseconds draw_delay() noexcept;
    /// Passes every chunk due by now (and the end once it is due), then asks for the next.
    void release(stage_context& out);

    std::int64_t latency_us_;
    std::int64_t jitter_us_;
    fault_random random_;
    detail::held_bytes bytes_;
    std::deque<due_chunk> chunks_;            // in order; dues never decrease
    time_point last_due_ = time_point::min(); // of the last chunk queued or passed
    bool end_came_ = false;
    bool end_passed_ = false;
    time_point end_due_ = time_point::max();
};

// ---------------------------------------------------------------------------------------------

inline std::chrono::microseconds latency_stage::draw_delay() noexcept {
    std::int64_t delay = latency_us_;
    if (jitter_us_ > 0) {
        delay += random_.between(-jitter_us_, jitter_us_);
    }
    return std::chrono::microseconds(delay < 0 ? 0 : delay);
}

inline void latency_stage::on_data(stage_context& out, byte_view bytes) {
    if (bytes.empty()) {
        return;
    }
    const time_point wanted = detail::deadline_after(out.now(), draw_delay());
    const time_point due = wanted < last_due_ ? last_due_ : wanted; // never before the one ahead
    last_due_ = due;
    if (chunks_.empty() && due <= out.now()) {
        out.pass(bytes); // no delay: nothing to hold
        return;
    }
    bytes_.append(bytes);
    if (!chunks_.empty() && chunks_.back().due == due) {
        chunks_.back().size += bytes.size(); // one entry per due time
    } else {
        chunks_.push_back(due_chunk{due, bytes.size()});
    }
    release(out);
}

inline void latency_stage::on_end(stage_context& out) {
    end_came_ = true;
    const time_point wanted =
        detail::deadline_after(out.now(), std::chrono::microseconds(latency_us_));
    end_due_ = wanted < last_due_ ? last_due_ : wanted;
    release(out);
}

inline void latency_stage::release(stage_context& out) {
    std::size_t due_bytes = 0;
    while (!chunks_.empty() && chunks_.front().due <= out.now()) {
        due_bytes += chunks_.front().size;
        chunks_.pop_front();
    }
    if (due_bytes != 0) {
        out.pass(bytes_.front(due_bytes)); // the due chunks together: one write, not one each
        bytes_.drop_front(due_bytes);
    }
    if (chunks_.empty() && end_came_ && !end_passed_ && end_due_ <= out.now()) {
        end_passed_ = true;
        out.end();
    }
    if (!chunks_.empty()) {
        out.wake_at(chunks_.front().due);
    } else {
        out.wake_at(end_came_ && !end_passed_ ? end_due_ : time_point::max());
    }
}

inline void latency_stage::on_remove(stage_context& out) {
    chunks_.clear();
    bytes_.pass_all(out);
    if (end_came_ && !end_passed_) {
        end_passed_ = true;
        out.end();
    }
    out.wake_at(time_point::max());
}

} // namespace tinyproxy
// ---- end tinyproxy/fault/latency.hpp ----
// #include "tinyproxy/fault/bandwidth.hpp"
// ---- begin tinyproxy/fault/bandwidth.hpp ----
// The bandwidth fault: a direction moves at most `rate` KB/s.

#include <chrono>  // the schedule's nanoseconds
#include <cstddef> // std::size_t
#include <cstdint> // byte counts and rates

// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/stage.hpp"
// #include "tinyproxy/fault/held_bytes.hpp"

namespace tinyproxy {

/// Toxiproxy's `bandwidth`: the direction moves at most `rate` KB/s (1 KB = 1000 B). The n-th
/// byte since the schedule started may go once n bytes' worth of time has passed since its
/// start (exact integer nanoseconds, never a sum of rounded sleeps), so the rate holds in
/// aggregate from 1 KB/s to beyond 1 GB/s whatever the wake-ups' precision: a late wake-up
/// passes what became due meanwhile. The schedule restarts when the stage falls idle (nothing
/// held), so no credit builds up while the direction is quiet. Bytes go in passes of at most
/// 100 ms worth (as Toxiproxy), and the stage asks to be woken when 10 ms worth more may go
/// (or all it holds, if less): smoother than Toxiproxy's 100 ms steps at low rates, yet about
/// a hundred wake-ups a second for a busy direction, not one per chunk.
///
/// Holds: what the rate has not let through yet; at most the relay's stage buffer.
///
/// Unlike Toxiproxy: the end of stream is passed on once every byte before it has gone
/// (half-close kept), and a removed fault passes what it holds at once.
class bandwidth_stage : public relay_stage {
public:
    explicit bandwidth_stage(std::int64_t rate_kb_per_s) noexcept
        : rate_kb_(clamped(rate_kb_per_s)) {}

    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;
    void on_wake(stage_context& out) override { release(out); }
    void on_remove(stage_context& out) override;
    std::size_t held() const noexcept override { return bytes_.size(); }

private:
    /// The rate kept within 1 KB/s .. 1 PB/s, where the schedule's arithmetic cannot overflow.
    static std::uint64_t clamped(std::int64_t rate_kb) noexcept {
        constexpr std::int64_t fastest = 1000000000000; // KB/s: a petabyte a second
        return static_cast<std::uint64_t>(rate_kb < 1 ? 1 : rate_kb < fastest ? rate_kb : fastest);
    }
    /// Bytes the schedule lets through in `elapsed` since its start (rounded down).
    std::uint64_t bytes_in(std::chrono::nanoseconds elapsed) const noexcept;
    /// When the schedule lets its `count`-th byte through (rounded up, so that bytes_in() of
    /// that time reaches `count`).
    time_point time_of(std::uint64_t count) const noexcept;
    /// Passes what the schedule allows by now, and the end after the last byte; asks for the
    /// next wake-up.
    void release(stage_context& out);
    std::size_t largest_pass() const noexcept; // 100 ms worth
    std::size_t wake_step() const noexcept;    // 10 ms worth

    std::uint64_t rate_kb_;    // KB/s: bytes per millisecond
    detail::held_bytes bytes_; // not let through yet
    time_point start_{};       // of the schedule
    std::uint64_t sent_ = 0;   // bytes passed since start_
    bool end_came_ = false;
    bool end_passed_ = false;
};

// ---------------------------------------------------------------------------------------------

inline std::uint64_t bandwidth_stage::bytes_in(std::chrono::nanoseconds elapsed) const noexcept {
    if (elapsed.count() <= 0) {
        return 0;
    }
    // elapsed * rate / 10^6 (rate in bytes per ms), split so that neither product overflows.
    const auto ns = static_cast<std::uint64_t>(elapsed.count());
    const std::uint64_t whole_ms = ns / 1000000;
    const std::uint64_t rest_ns = ns % 1000000;
    if (whole_ms > ~std::uint64_t{0} / rate_kb_ / 2) {
        return ~std::uint64_t{0} / 2; // more than will ever be sent
    }
    return whole_ms * rate_kb_ + rest_ns * rate_kb_ / 1000000;
}

inline time_point bandwidth_stage::time_of(std::uint64_t count) const noexcept {
    // count * 10^6 / rate nanoseconds, rounded up, split so that neither product overflows.
    const std::uint64_t whole = count / rate_kb_;
    const std::uint64_t rest = count % rate_kb_;
    constexpr std::uint64_t longest_ns = std::uint64_t{1} << 62; // about 146 years: never
    if (whole > longest_ns / 1000000) {
        return time_point::max();
    }
    const std::uint64_t ns = whole * 1000000 + (rest * 1000000 + rate_kb_ - 1) / rate_kb_;
    return detail::deadline_after(start_, std::chrono::nanoseconds(static_cast<std::int64_t>(ns)));
}

inline std::size_t bandwidth_stage::largest_pass() const noexcept {
    const std::uint64_t bytes = rate_kb_ * 100;
    return bytes < static_cast<std::size_t>(-1) ? static_cast<std::size_t>(bytes)
                                                : static_cast<std::size_t>(-1);
}

inline std::size_t bandwidth_stage::wake_step() const noexcept {
    const std::uint64_t bytes = rate_kb_ * 10;
    return bytes < static_cast<std::size_t>(-1) ? static_cast<std::size_t>(bytes)
                                                : static_cast<std::size_t>(-1);
}

inline void bandwidth_stage::on_data(stage_context& out, byte_view bytes) {
    if (bytes.empty()) {
        return;
    }
    // Bytes pass only once due, so with none held the schedule has caught up: the direction
    // was idle, and the schedule starts again from now rather than owe it that time as credit.
    if (bytes_.empty()) {
        start_ = out.now();
        sent_ = 0;
    }
    bytes_.append(bytes);
    release(out);
}

inline void bandwidth_stage::on_end(stage_context& out) {
    end_came_ = true;
    release(out);
}

inline void bandwidth_stage::release(stage_context& out) {
    const std::uint64_t allowed = bytes_in(out.now() - start_);
    std::uint64_t room = allowed > sent_ ? allowed - sent_ : 0;
    while (room != 0 && !bytes_.empty()) {
        const std::size_t slice =
            room < largest_pass() ? static_cast<std::size_t>(room) : largest_pass();
        const byte_view bytes = bytes_.front(slice);
        out.pass(bytes);
        bytes_.drop_front(bytes.size());
        sent_ += bytes.size();
        room -= bytes.size();
    }
    if (bytes_.empty()) {
        if (end_came_ && !end_passed_) {
            end_passed_ = true;
            out.end();
        }
        out.wake_at(time_point::max());
        return;
    }
    const std::size_t step = bytes_.size() < wake_step() ? bytes_.size() : wake_step();
    out.wake_at(time_of(sent_ + step));
}

inline void bandwidth_stage::on_remove(stage_context& out) {
    bytes_.pass_all(out);
    if (end_came_ && !end_passed_) {
        end_passed_ = true;
        out.end();
    }
    out.wake_at(time_point::max());
}

} // namespace tinyproxy
// ---- end tinyproxy/fault/bandwidth.hpp ----
// #include "tinyproxy/fault/slicer.hpp"
// ---- begin tinyproxy/fault/slicer.hpp ----
// The slicer fault: each chunk of a direction goes out in small slices, a delay apart.

#include <chrono>  // the delay between slices
#include <cstddef> // std::size_t
#include <cstdint> // the variation's draws
#include <deque>   // the sizes of the chunks not yet sliced
#include <vector>  // the pieces of the chunk being sliced

// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/stage.hpp"
// #include "tinyproxy/fault/random.hpp"
// #include "tinyproxy/fault/held_bytes.hpp"

namespace tinyproxy {

/// Toxiproxy's `slicer`: each chunk goes out in slices, each its own pass() (its own write),
/// cut as Toxiproxy's chunk() cuts: a piece larger than average_size + size_variation is
/// halved, the midpoint moved by a uniform draw in [-variation, variation), and each half cut
/// again. So no slice is larger than average + variation, and none smaller than about
/// (average - variation) / 2 unless its whole chunk is. A slice is due `delay` after the one
/// before it (the first slice of the next chunk too, or when it comes, if later); with delay 0
/// a chunk's slices go at once, as separate passes. A late wake-up (timers are coarser than
/// microseconds) passes the slices due meanwhile together, still one pass each, so the
/// slicer's pace holds in aggregate. The end of stream goes right after the last slice.
///
/// Holds: the slices not yet passed (at most the relay's stage buffer). Chunks are cut
/// lazily, a slice as it is due, so the cut costs a word per held chunk and the few pieces on
/// the way down, not a word per slice.
///
/// Unlike Toxiproxy: the cut's draws come from the seeded generator (reproducible), the end
/// of stream is passed on in order (half-close kept), and a removed fault passes what it
/// holds at once.
class slicer_stage : public relay_stage {
public:
    slicer_stage(std::size_t average_size, std::size_t size_variation,
                 std::chrono::microseconds delay, fault_random random) noexcept
        : average_(average_size < 1 ? 1 : average_size),
          variation_(size_variation < average_ ? size_variation : average_ - 1),
          delay_(delay.count() < 0 ? std::chrono::microseconds(0) : delay), random_(random) {}

    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;
    void on_wake(stage_context& out) override { release(out); }
    void on_remove(stage_context& out) override;
    std::size_t held() const noexcept override { return bytes_.size(); }

private:
    /// The size of the next slice, cutting the front chunk as far as that slice needs.
    std::size_t next_slice();
    /// average + variation, the largest piece left uncut (saturating: a huge average cuts none).
    std::size_t largest_slice() const noexcept {
        const std::size_t room = static_cast<std::size_t>(-1) - average_;
        return variation_ < room ? average_ + variation_ : static_cast<std::size_t>(-1);
    }
    /// Passes the slices due by now, each `delay` after the one before, and the end after the
    /// last; asks for the next.
    void release(stage_context& out);

    std::size_t average_;
    std::size_t variation_; // below average_, so that both halves of a cut are never empty
    std::chrono::microseconds delay_;
    fault_random random_;
    detail::held_bytes bytes_;
    std::deque<std::size_t> chunks_;          // sizes of the held chunks not cut yet, in order
    std::vector<std::size_t> pieces_;         // the front chunk's uncut pieces, the next on top
    time_point next_due_ = time_point::min(); // when the next slice is due
    bool end_came_ = false;
    bool end_passed_ = false;
};

// ---------------------------------------------------------------------------------------------

inline std::size_t slicer_stage::next_slice() {
    if (pieces_.empty()) {
        pieces_.push_back(chunks_.front());
        chunks_.pop_front();
    }
    // Toxiproxy's recursion, depth first with the left half first, on an explicit stack: the
    // draws come in the same order, and only the pieces on the way to the next slice exist.
    while (pieces_.back() > largest_slice()) {
        const std::size_t piece = pieces_.back();
        pieces_.pop_back();
        std::size_t left = piece / 2;
        if (variation_ > 0) {
            const auto v = static_cast<std::int64_t>(variation_);
            const std::int64_t move = random_.between(-v, v - 1);
            left = static_cast<std::size_t>(static_cast<std::int64_t>(left) + move);
        }
        pieces_.push_back(piece - left);
        pieces_.push_back(left);
    }
    const std::size_t slice = pieces_.back();
    pieces_.pop_back();
    return slice;
}

inline void slicer_stage::on_data(stage_context& out, byte_view bytes) {
    if (bytes.empty()) {
        return;
    }
    if (bytes_.empty() && next_due_ < out.now()) {
        next_due_ = out.now(); // after a pause: the schedule goes on from this chunk, no credit
    }
    bytes_.append(bytes);
    chunks_.push_back(bytes.size());
    release(out);
}

inline void slicer_stage::on_end(stage_context& out) {
    end_came_ = true;
    release(out);
}

inline void slicer_stage::release(stage_context& out) {
    while (!bytes_.empty() && next_due_ <= out.now()) {
        const std::size_t slice = next_slice();
        out.pass(bytes_.front(slice));
        bytes_.drop_front(slice);
        next_due_ = detail::deadline_after(next_due_, delay_); // delay 0: the next one at once
    }
    if (bytes_.empty() && end_came_ && !end_passed_) {
        end_passed_ = true;
        out.end();
    }
    out.wake_at(bytes_.empty() ? time_point::max() : next_due_);
}

inline void slicer_stage::on_remove(stage_context& out) {
    chunks_.clear();
    pieces_.clear();
    bytes_.pass_all(out);
    if (end_came_ && !end_passed_) {
        end_passed_ = true;
        out.end();
    }
    out.wake_at(time_point::max());
}

} // namespace tinyproxy
// ---- end tinyproxy/fault/slicer.hpp ----
// #include "tinyproxy/fault/slow_close.hpp"
// ---- begin tinyproxy/fault/slow_close.hpp ----
// The slow_close fault: the end of stream is passed on a delay after it came.

#include <chrono>  // the delay
#include <cstddef> // std::size_t

// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// Toxiproxy's `slow_close`: bytes pass at once; the end of stream (the FIN) is passed on
/// `delay` after it came.
///
/// Holds: no bytes; only the end of stream, while it waits.
///
/// Unlike Toxiproxy: only this direction's end is delayed (the other direction goes on, and
/// the connection is not closed whole), and a removed fault passes a waiting end at once.
class slow_close_stage : public relay_stage {
public:
    explicit slow_close_stage(std::chrono::milliseconds delay) noexcept
        : delay_(delay.count() < 0 ? std::chrono::milliseconds(0) : delay) {}

    void on_end(stage_context& out) override {
        end_due_ = detail::deadline_after(out.now(), delay_);
        end_waiting_ = true;
        on_wake(out);
    }
    void on_wake(stage_context& out) override {
        if (end_waiting_ && end_due_ <= out.now()) {
            end_waiting_ = false;
            out.end();
        }
        out.wake_at(end_waiting_ ? end_due_ : time_point::max());
    }
    void on_remove(stage_context& out) override {
        if (end_waiting_) {
            end_waiting_ = false;
            out.end();
        }
        out.wake_at(time_point::max());
    }

private:
    std::chrono::milliseconds delay_;
    time_point end_due_ = time_point::max();
    bool end_waiting_ = false; // the end came and has not been passed on
};

} // namespace tinyproxy
// ---- end tinyproxy/fault/slow_close.hpp ----
// #include "tinyproxy/fault/timeout.hpp"
// ---- begin tinyproxy/fault/timeout.hpp ----
// The timeout fault: nothing passes, and the tunnel is closed after a timeout.

#include <chrono>  // the timeout
#include <cstddef> // std::size_t

// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/stage.hpp"
// #include "tinyproxy/fault/held_bytes.hpp"

namespace tinyproxy {

/// Toxiproxy's `timeout`: no byte passes, nor the end of stream; `timeout` after the stage
/// started (on_start: the tunnel's start, or the moment the fault was added to it) the tunnel
/// is closed cleanly, both ways (stage_context::close). A timeout of 0 holds the direction
/// stalled until the fault is removed.
///
/// Holds: every byte that came, in order (at most the relay's stage buffer: then the source
/// is no longer read, as a stalled peer's would not be), and the end of stream.
///
/// Unlike Toxiproxy, which drops them: a removed fault passes on every byte it held, then the
/// end of stream if it came; no byte is lost by removing a fault. When the timeout closes the
/// tunnel, what it holds is dropped with it, as Toxiproxy's close drops it.
class timeout_stage : public relay_stage {
public:
    explicit timeout_stage(std::chrono::milliseconds timeout) noexcept
        : timeout_(timeout.count() < 0 ? std::chrono::milliseconds(0) : timeout) {}

    void on_start(stage_context& out) override {
        if (timeout_.count() > 0) {
            out.wake_at(detail::deadline_after(out.now(), timeout_));
        }
    }
    void on_data(stage_context& out, byte_view bytes) override {
        (void)out;
        if (!closed_) {
            bytes_.append(bytes);
        }
    }
    void on_end(stage_context& out) override {
        (void)out;
        end_came_ = true;
    }
    void on_wake(stage_context& out) override {
        if (!closed_) {
            closed_ = true;
            bytes_.clear(); // the close drops what the stages hold
            out.close();
        }
    }
    void on_remove(stage_context& out) override {
        if (closed_) {
            return;
        }
        bytes_.pass_all(out);
        if (end_came_) {
            out.end();
        }
        out.wake_at(time_point::max());
    }
    std::size_t held() const noexcept override { return bytes_.size(); }

private:
    std::chrono::milliseconds timeout_;
    detail::held_bytes bytes_;
    bool end_came_ = false;
    bool closed_ = false; // the timeout has closed the tunnel
};

} // namespace tinyproxy
// ---- end tinyproxy/fault/timeout.hpp ----
// #include "tinyproxy/fault/reset_peer.hpp"
// ---- begin tinyproxy/fault/reset_peer.hpp ----
// The reset_peer fault: a timeout after the first byte, both sides get a reset.

#include <chrono>  // the timeout
#include <cstddef> // std::size_t

// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/stage.hpp"
// #include "tinyproxy/fault/held_bytes.hpp"

namespace tinyproxy {

/// Toxiproxy's `reset_peer`: once the first byte (or the end of stream, if it comes first)
/// has come, nothing passes, and `timeout` later the tunnel is reset (both sides get an RST);
/// a timeout of 0 resets it at once, on that first byte. A direction that never sends is
/// never reset (as Toxiproxy).
///
/// Holds: what came after the first byte (that included), until the reset; at most the
/// relay's stage buffer.
///
/// Unlike Toxiproxy: a fault removed before its reset passes on what it held, then the end of
/// stream if it came; no byte is lost by removing a fault.
class reset_peer_stage : public relay_stage {
public:
    explicit reset_peer_stage(std::chrono::milliseconds timeout) noexcept
        : timeout_(timeout.count() < 0 ? std::chrono::milliseconds(0) : timeout) {}

    void on_data(stage_context& out, byte_view bytes) override {
        if (bytes.empty() || reset_) {
            return;
        }
        bytes_.append(bytes);
        arm(out);
    }
    void on_end(stage_context& out) override {
        end_came_ = true;
        arm(out);
    }
    void on_wake(stage_context& out) override { reset(out); }
    void on_remove(stage_context& out) override {
        if (reset_) {
            return;
        }
        bytes_.pass_all(out);
        if (end_came_) {
            out.end();
        }
        out.wake_at(time_point::max());
    }
    std::size_t held() const noexcept override { return bytes_.size(); }

private:
    /// The first byte or end has come: the timer starts (once).
    void arm(stage_context& out) {
        if (armed_ || reset_) {
            return;
        }
        armed_ = true;
        if (timeout_.count() == 0) {
            reset(out);
        } else {
            out.wake_at(detail::deadline_after(out.now(), timeout_));
        }
    }
    void reset(stage_context& out) {
        if (!reset_) {
            reset_ = true;
            bytes_.clear(); // the reset drops what the stages hold
            out.reset();
        }
    }

    std::chrono::milliseconds timeout_;
    detail::held_bytes bytes_;
    bool armed_ = false; // the first byte or end has come
    bool end_came_ = false;
    bool reset_ = false; // the tunnel has been reset
};

} // namespace tinyproxy
// ---- end tinyproxy/fault/reset_peer.hpp ----
// #include "tinyproxy/fault/limit_data.hpp"
// ---- begin tinyproxy/fault/limit_data.hpp ----
// The limit_data fault: the tunnel is closed once a number of bytes have passed.

#include <cstddef> // std::size_t
#include <cstdint> // the byte counts

// #include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// Toxiproxy's `limit_data`: bytes pass until `bytes` have passed in all (the chunk that
/// crosses the limit is cut there); then the tunnel is closed cleanly, both ways
/// (stage_context::close), at once. With the limit already reached (0 included), the first
/// byte to come closes it and nothing passes. `already_passed` carries the count over when the
/// fault is changed on a live connection. An end of stream before the limit passes on.
///
/// Holds: nothing. Like Toxiproxy (the close is what the fault is).
class limit_data_stage : public relay_stage {
public:
    explicit limit_data_stage(std::uint64_t bytes, std::uint64_t already_passed = 0) noexcept
        : limit_(bytes), passed_(already_passed) {}

    void on_data(stage_context& out, byte_view bytes) override {
        if (closed_ || bytes.empty()) {
            return;
        }
        const std::uint64_t room = passed_ < limit_ ? limit_ - passed_ : 0;
        const byte_view allowed =
            room < bytes.size() ? bytes.first(static_cast<std::size_t>(room)) : bytes;
        if (!allowed.empty()) {
            out.pass(allowed);
            passed_ += allowed.size();
        }
        if (passed_ >= limit_) {
            closed_ = true;
            out.close();
        }
    }

    /// Bytes passed so far, `already_passed` included.
    std::uint64_t passed() const noexcept { return passed_; }

private:
    std::uint64_t limit_;
    std::uint64_t passed_;
    bool closed_ = false; // the limit has closed the tunnel
};

} // namespace tinyproxy
// ---- end tinyproxy/fault/limit_data.hpp ----
// #include "tinyproxy/faults.hpp"
// ---- begin tinyproxy/faults.hpp ----
// Fault injection as Toxiproxy does it, in-process: a live, shared set of toxics, and the stage
// factory that gives each tunnel its faults (rolled once per connection, from a seed) and keeps
// them in step with the set while the tunnel lives, without losing or reordering a byte.

#include <algorithm>   // std::min
#include <atomic>      // the set's version, read by every tunnel
#include <chrono>      // how soon a change reaches a live tunnel
#include <cstddef>     // std::size_t
#include <cstdint>     // ids, seeds
#include <memory>      // the set is shared; stages are owned
#include <mutex>       // the set is changed from any thread
#include <stdexcept>   // std::invalid_argument
#include <string>      // names
#include <string_view> // names looked up
#include <utility>     // std::move
#include <vector>      // the toxics in order

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/stage.hpp"
// #include "tinyproxy/fault/random.hpp"
// #include "tinyproxy/fault/toxic.hpp"
// #include "tinyproxy/fault/latency.hpp"
// #include "tinyproxy/fault/bandwidth.hpp"
// #include "tinyproxy/fault/slicer.hpp"
// #include "tinyproxy/fault/slow_close.hpp"
// #include "tinyproxy/fault/timeout.hpp"
// #include "tinyproxy/fault/reset_peer.hpp"
// #include "tinyproxy/fault/limit_data.hpp"

namespace tinyproxy {

namespace detail {
class toxic_runner;
}

/// The toxics of a proxy, in the order added (Toxiproxy's order: a toxic added later acts on
/// what the earlier ones of its stream pass on). Shared by the proxy's tunnels and whoever
/// changes it (a test, an API server), from any thread: each change reaches the tunnels
/// opened afterwards, and the live ones (thread and poll policies; a fork child has its own
/// copy, taken when it was forked) at their next byte, or within `change_reach` when they
/// have none to send.
class toxic_set {
public:
    /// How soon a change reaches a live tunnel that moves no byte: it looks this often.
    static constexpr std::chrono::milliseconds change_reach{100};

    /// Appends a toxic to its stream's chain. Throws std::invalid_argument when it is bad
    /// (check_toxic) or its name (name_of) is taken.
    void add(toxic fault);
    /// Replaces the toxic called `name`, in its place; false when there is none. Throws as
    /// add() does. A limit_data toxic keeps its count of bytes passed on a live tunnel.
    bool update(std::string_view name, toxic fault);
    /// Takes the toxic called `name` out; false when there is none. What it holds on a live
    /// tunnel goes on at once, in order.
    bool remove(std::string_view name);
    /// Takes every toxic out.
    void clear();
    /// The toxics, in order.
    std::vector<toxic> list() const;
    /// Whether a toxic is called `name`; fills in `out` when it is.
    bool find(std::string_view name, toxic& out) const;

    /// No change will come: live tunnels no longer look for one (a command line's set). A
    /// change after it throws std::logic_error.
    void freeze() noexcept { frozen_.store(true, std::memory_order_release); }
    bool frozen() const noexcept { return frozen_.load(std::memory_order_acquire); }
    /// Changes so far; a tunnel compares it with the last it saw.
    std::uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }
    /// How many times a toxic of this type has applied to a connection (its toxicity roll
    /// said so, and the connection's direction took its stage), since the set was made:
    /// clear() does not reset it.
    std::uint64_t applied(toxic_type type) const noexcept {
        return applied_[static_cast<std::size_t>(type)].load(std::memory_order_relaxed);
    }

private:
    friend class detail::toxic_runner;
    /// A toxic with what tells it apart over time: a stable id, and a revision per update.
    struct entry {
        std::uint64_t id;
        std::uint64_t revision;
        toxic fault;
    };

    /// The entries of one stream, in order, as of `version` (both read under the lock).
    std::vector<entry> entries_of(direction stream, std::uint64_t& version) const;
    std::vector<entry>::iterator named(std::string_view name);
    void changed() noexcept { version_.fetch_add(1, std::memory_order_acq_rel); }
    void check(const toxic& fault, std::string_view replacing) const;
    void check_not_frozen() const;

    mutable std::mutex mutex_;
    std::vector<entry> entries_;
    std::uint64_t next_id_ = 1;
    std::atomic<std::uint64_t> version_{0};
    std::atomic<bool> frozen_{false};
    std::atomic<std::uint64_t> applied_[toxic_type_count]{}; // by toxic_type
    void count_applied(toxic_type type) noexcept {
        applied_[static_cast<std::size_t>(type)].fetch_add(1, std::memory_order_relaxed);
    }
};

/// The stage factory for options::stages that gives each tunnel the toxics of `toxics`. Each
/// toxic applies to a connection or not once, by its toxicity, and its draws (jitter, slice
/// sizes) come from a generator derived from `seed`, the connection's serial number and the
/// toxic: a seed and the same traffic give the same decisions. The label it gives each tunnel
/// names the toxics that applied ("latency_downstream,slicer_downstream"), or says "none".
/// A direction none of whose toxics applied gets no stage at all: the plain path, splice
/// included. With a live set it takes one as soon as a change brings a toxic that applies
/// (tunnel_stages::later), within toxic_set::change_reach even when it moves nothing.
stage_factory fault_stages(std::shared_ptr<toxic_set> toxics, std::uint64_t seed);

/// The built-in stage for one toxic, drawing from `random`; `passed` carries a limit_data
/// count over from the stage it replaces.
std::unique_ptr<relay_stage> make_fault_stage(const toxic& fault, fault_random random,
                                              std::uint64_t passed = 0);

// ---------------------------------------------------------------------------------------------

namespace detail {

/// One direction's faults on one tunnel: a stage that holds a chain of the built-in stages
/// and keeps it in step with the toxic set. A toxic taken out of the set is taken out of the
/// chain (passing on what it held), a changed one replaced in its place, a new one appended.
class toxic_runner final : public relay_stage {
public:
    toxic_runner(std::shared_ptr<toxic_set> toxics, direction stream, fault_random connection)
        : toxics_(std::move(toxics)), stream_(stream), connection_(connection) {
        bring_in_step(nullptr, time_point{});
    }

    void on_start(stage_context& out) override {
        forwarding sink(out);
        bring_in_step(&sink, out.now());
        chain_.start(out.now(), sink);
        ask_wake(out);
    }
    void on_data(stage_context& out, byte_view bytes) override {
        forwarding sink(out);
        bring_in_step(&sink, out.now());
        chain_.feed(bytes, out.now(), sink);
        ask_wake(out);
    }
    void on_end(stage_context& out) override {
        forwarding sink(out);
        bring_in_step(&sink, out.now());
        chain_.feed_end(out.now(), sink);
        ask_wake(out);
    }
    void on_wake(stage_context& out) override {
        forwarding sink(out);
        bring_in_step(&sink, out.now());
        chain_.wake(out.now(), sink);
        ask_wake(out);
    }
    void on_remove(stage_context& out) override {
        forwarding sink(out);
        while (!chain_.empty()) { // first to last: each passes what it held to the next
            chain_.erase(0, out.now(), sink);
        }
        applied_.clear();
    }
    std::size_t held() const noexcept override { return chain_.held(); }

    /// The names of the toxics that apply to this direction now, joined by ','.
    std::string applied_names() const;
    bool any_applied() const noexcept { return !chain_.empty(); }

private:
    /// A toxic of the set, as this tunnel took it.
    struct taken {
        std::uint64_t id;
        std::uint64_t revision;
        bool applies; // its toxicity roll said so (and so it has a stage in the chain)
        std::string name;
        limit_data_stage* limit; // its stage, when it is a limit_data one: its count carries over
    };

    /// Where the inner chain's last stage delivers: on, through this stage's own context.
    class forwarding final : public stage_sink {
    public:
        explicit forwarding(stage_context& out) noexcept : out_(out) {}
        void deliver(byte_view bytes) noexcept override { pass(bytes); }
        void deliver_end() noexcept override { out_.end(); }
        void reset(std::error_code why) noexcept override { out_.reset(why); }
        void close() noexcept override { out_.close(); }

    private:
        void pass(byte_view bytes) noexcept {
            try {
                out_.pass(bytes);
            } catch (...) { // the relay's own delivery does not throw; another stage may
                out_.reset(make_error_code(errc::stage_failed));
            }
        }
        stage_context& out_;
    };

    /// Takes in the set's changes since the last look. `sink` is null only before the tunnel
    /// starts, when there is nothing held to pass on.
    void bring_in_step(stage_sink* sink, time_point now);
    void take_out(std::size_t position, stage_sink* sink, time_point now);
    /// Whether a toxic applies to this connection: one roll per connection and toxic, kept,
    /// so a change of toxicity alone moves the bar, not the roll.
    bool rolls_in(const toxic_set::entry& e) const noexcept {
        return connection_.derive(2 * e.id).unit() < e.fault.toxicity;
    }
    fault_random stage_random(const toxic_set::entry& e) const noexcept {
        return connection_.derive(2 * e.id + 1).derive(e.revision);
    }
    /// The stage for a toxic this tunnel takes; a limit_data one is remembered in `mine`.
    std::unique_ptr<relay_stage> make_stage(const toxic& fault, const toxic_set::entry& e,
                                            taken& mine, std::uint64_t passed) const {
        std::unique_ptr<relay_stage> stage = make_fault_stage(fault, stage_random(e), passed);
        toxics_->count_applied(fault.type);
        if (fault.type == toxic_type::limit_data) { // make_fault_stage made one of that type
            mine.limit = static_cast<limit_data_stage*>(stage.get());
        }
        return stage;
    }
    /// The chain's position of the i-th toxic taken (those that do not apply have none).
    std::size_t position_of(std::size_t index) const noexcept;
    void ask_wake(stage_context& out) const noexcept;

    std::shared_ptr<toxic_set> toxics_;
    direction stream_;
    fault_random connection_;
    stage_chain chain_;
    std::vector<taken> applied_; // the set's toxics of this stream, in its order
    std::uint64_t seen_version_ = ~std::uint64_t{0};
    bool frozen_seen_ = false; // the set was frozen at the last look: no need to look again
};

/// A live set's watch over the directions of one tunnel that started with no fault: when the
/// set changes, a direction one of whose toxics now applies takes a runner (late_stages), and
/// keeps the plain path, splice included, until then.
class toxic_watch final : public late_stages {
public:
    toxic_watch(std::shared_ptr<toxic_set> toxics, fault_random connection,
                std::uint64_t seen) noexcept
        : toxics_(std::move(toxics)), connection_(connection), seen_(seen), latest_(seen) {}

    bool changed() noexcept override {
        latest_ = toxics_->version();
        return latest_ != seen_;
    }
    stage_chain make(direction which) override {
        auto runner = std::make_unique<toxic_runner>(toxics_, which, connection_);
        stage_chain chain;
        if (runner->any_applied()) {
            chain.push_back(std::move(runner));
        }
        return chain;
    }
    void looked() noexcept override { seen_ = latest_; }
    std::chrono::milliseconds look_every() const noexcept override {
        return toxic_set::change_reach;
    }

private:
    std::shared_ptr<toxic_set> toxics_;
    fault_random connection_;
    std::uint64_t seen_;   // the set's version at the last look
    std::uint64_t latest_; // read by the last changed()
};

} // namespace detail

// ---------------------------------------------------------------------------------------------

inline void toxic_set::check(const toxic& fault, std::string_view replacing) const {
    const std::string problem = check_toxic(fault);
    if (!problem.empty()) {
        throw std::invalid_argument(std::string(type_name(fault.type)) + ": " + problem);
    }
    const std::string name = name_of(fault);
    for (const entry& e : entries_) {
        if (name_of(e.fault) == name && name != replacing) {
            throw std::invalid_argument("a toxic called '" + name + "' exists already");
        }
    }
}

inline void toxic_set::check_not_frozen() const {
    if (frozen()) {
        throw std::logic_error("the toxic set is frozen: no change may follow freeze()");
    }
}

inline void toxic_set::add(toxic fault) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_not_frozen();
    check(fault, {});
    entries_.push_back(entry{next_id_++, 0, std::move(fault)});
    changed();
}

inline std::vector<toxic_set::entry>::iterator toxic_set::named(std::string_view name) {
    auto it = entries_.begin();
    while (it != entries_.end() && name_of(it->fault) != name) {
        ++it;
    }
    return it;
}

inline bool toxic_set::update(std::string_view name, toxic fault) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_not_frozen();
    auto it = named(name);
    if (it == entries_.end()) {
        return false;
    }
    check(fault, name);
    if (fault.stream != it->fault.stream || fault.type != it->fault.type) {
        // Another stream or type is another toxic: at the end of its chain, as if added.
        entries_.erase(it);
        entries_.push_back(entry{next_id_++, 0, std::move(fault)});
    } else {
        it->fault = std::move(fault);
        ++it->revision;
    }
    changed();
    return true;
}

inline bool toxic_set::remove(std::string_view name) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_not_frozen();
    auto it = named(name);
    if (it == entries_.end()) {
        return false;
    }
    entries_.erase(it);
    changed();
    return true;
}

inline void toxic_set::clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    check_not_frozen();
    entries_.clear();
    changed();
}

inline std::vector<toxic> toxic_set::list() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<toxic> out;
    out.reserve(entries_.size());
    for (const entry& e : entries_) {
        out.push_back(e.fault);
    }
    return out;
}

inline bool toxic_set::find(std::string_view name, toxic& out) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const entry& e : entries_) {
        if (name_of(e.fault) == name) {
            out = e.fault;
            return true;
        }
    }
    return false;
}

inline std::vector<toxic_set::entry> toxic_set::entries_of(direction stream,
                                                           std::uint64_t& version) const {
    std::lock_guard<std::mutex> lock(mutex_);
    version = version_.load(std::memory_order_acquire);
    std::vector<entry> out;
    for (const entry& e : entries_) {
        if (e.fault.stream == stream) {
            out.push_back(e);
        }
    }
    return out;
}

inline std::unique_ptr<relay_stage> make_fault_stage(const toxic& fault, fault_random random,
                                                     std::uint64_t passed) {
    using std::chrono::microseconds;
    using std::chrono::milliseconds;
    switch (fault.type) {
    case toxic_type::latency:
        return std::make_unique<latency_stage>(milliseconds(fault.latency),
                                               milliseconds(fault.jitter), random);
    case toxic_type::bandwidth:
        return std::make_unique<bandwidth_stage>(fault.rate);
    case toxic_type::slicer:
        return std::make_unique<slicer_stage>(static_cast<std::size_t>(fault.average_size),
                                              static_cast<std::size_t>(fault.size_variation),
                                              microseconds(fault.delay), random);
    case toxic_type::slow_close:
        return std::make_unique<slow_close_stage>(milliseconds(fault.delay));
    case toxic_type::timeout:
        return std::make_unique<timeout_stage>(milliseconds(fault.timeout));
    case toxic_type::reset_peer:
        return std::make_unique<reset_peer_stage>(milliseconds(fault.timeout));
    case toxic_type::limit_data:
        return std::make_unique<limit_data_stage>(static_cast<std::uint64_t>(fault.bytes), passed);
    case toxic_type::noop:
        break;
    }
    return std::make_unique<relay_stage>(); // noop: the base stage passes everything as it comes
}

namespace detail {

inline std::size_t toxic_runner::position_of(std::size_t index) const noexcept {
    std::size_t position = 0;
    for (std::size_t i = 0; i < index; ++i) {
        position += applied_[i].applies ? 1 : 0;
    }
    return position;
}

inline void toxic_runner::take_out(std::size_t position, stage_sink* sink, time_point now) {
    if (sink != nullptr) {
        chain_.erase(position, now, *sink);
    }
}

inline void toxic_runner::bring_in_step(stage_sink* sink, time_point now) {
    if (frozen_seen_) {
        return;
    }
    const bool frozen = toxics_->frozen();     // read before the version: a change before a
    if (toxics_->version() == seen_version_) { // freeze is then still seen
        frozen_seen_ = frozen;
        return;
    }
    std::uint64_t version = 0;
    const std::vector<toxic_set::entry> entries = toxics_->entries_of(stream_, version);
    // Those taken out of the set, or changed: out of the chain (or replaced, in place).
    std::size_t next = 0; // entries before it are matched
    for (std::size_t i = 0; i < applied_.size();) {
        taken& mine = applied_[i];
        auto it = entries.begin();
        while (it != entries.end() && it->id != mine.id) {
            ++it;
        }
        const std::size_t position = position_of(i);
        if (it == entries.end()) {
            if (mine.applies) {
                take_out(position, sink, now);
            }
            applied_.erase(applied_.begin() + static_cast<std::ptrdiff_t>(i));
            continue;
        }
        if (it->revision != mine.revision) {
            const std::uint64_t passed = mine.limit != nullptr ? mine.limit->passed() : 0;
            if (mine.applies) {
                take_out(position, sink, now);
            }
            mine.revision = it->revision;
            mine.applies = rolls_in(*it);
            mine.name = name_of(it->fault);
            mine.limit = nullptr;
            if (mine.applies) {
                chain_.insert(position, make_stage(it->fault, *it, mine, passed));
            }
        }
        next = static_cast<std::size_t>(it - entries.begin()) + 1;
        ++i;
    }
    // Those new to this tunnel: at the end, in the set's order (ids only grow, so every entry
    // after the last one matched is new).
    for (std::size_t e = next; e < entries.size(); ++e) {
        taken mine{entries[e].id, entries[e].revision, rolls_in(entries[e]),
                   name_of(entries[e].fault), nullptr};
        if (mine.applies) {
            chain_.push_back(make_stage(entries[e].fault, entries[e], mine, 0));
        }
        applied_.push_back(std::move(mine));
    }
    seen_version_ = version;
    frozen_seen_ = frozen && toxics_->version() == version;
}

inline void toxic_runner::ask_wake(stage_context& out) const noexcept {
    time_point wake = chain_.next_wake();
    if (!frozen_seen_) { // a change must reach a tunnel that sends nothing, too
        const time_point look = out.now() + toxic_set::change_reach;
        wake = look < wake ? look : wake;
    }
    out.wake_at(wake);
}

inline std::string toxic_runner::applied_names() const {
    std::string names;
    for (const taken& t : applied_) {
        if (t.applies) {
            names += (names.empty() ? "" : ",") + t.name;
        }
    }
    return names;
}

} // namespace detail

inline stage_factory fault_stages(std::shared_ptr<toxic_set> toxics, std::uint64_t seed) {
    return [toxics = std::move(toxics), seed](const tunnel_info& tunnel, tunnel_stages& stages) {
        const fault_random connection = fault_random(seed).derive(tunnel.serial);
        const std::uint64_t version = toxics->version(); // before the runners read the set
        auto up =
            std::make_unique<detail::toxic_runner>(toxics, direction::to_upstream, connection);
        auto down =
            std::make_unique<detail::toxic_runner>(toxics, direction::to_client, connection);
        const std::string up_names = up->applied_names();
        const std::string down_names = down->applied_names();
        stages.label = up_names + (up_names.empty() || down_names.empty() ? "" : ",") + down_names;
        if (stages.label.empty()) {
            stages.label = "none";
        }
        const bool live = !toxics->frozen();
        if (live && !(up->any_applied() && down->any_applied())) {
            stages.later = std::make_unique<detail::toxic_watch>(toxics, connection, version);
        }
        if (up->any_applied()) {
            stages.to_upstream.push_back(std::move(up));
        }
        if (down->any_applied()) {
            stages.to_client.push_back(std::move(down));
        }
    };
}

} // namespace tinyproxy
// ---- end tinyproxy/faults.hpp ----
// #include "tinyproxy/relay.hpp"
// ---- begin tinyproxy/relay.hpp ----
// The one relay engine: moves bytes both ways between two non-blocking sockets, with bounded
// buffers, half-close and reset propagation, byte counts and a chain of stages per direction;
// on Linux, bulk data moves with splice(2).

#include <algorithm>    // std::min
#include <cstddef>      // std::size_t
#include <cstdint>      // byte counters
#include <memory>       // a direction's stage chain, only when it has one
#include <optional>     // a SIGPIPE guard, only while splicing
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // pending bytes

#include <poll.h>       // POLLIN, POLLOUT
#include <sys/socket.h> // SHUT_WR

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// A relay between a client and an upstream socket, as a state machine with no waiting and no
/// clock of its own: `pump(now, ...)` moves whatever can move now, `client_events()` /
/// `upstream_events()` say what to wait for next (POLLIN / POLLOUT), `next_wake()` by when to
/// pump again even if nothing is ready, and the caller waits however it likes: a poll(2) over
/// two descriptors on a thread, or an event loop over thousands. Every policy drives this one
/// class.
///
/// Rules it keeps:
/// - bytes read from one side are written to the other in order, and none is dropped: at most
///   one read's worth waits per direction, and reading stops until it has been written;
/// - end of stream from one side becomes shutdown(SHUT_WR) on the other once everything read
///   before it has been written; the other direction carries on (half-close). A caller that
///   closes both sockets at finish may say so (`closes_at_finish()`), and the last direction
///   to end then leaves its FIN to that close();
/// - a reset or error on either side ends the relay (`failed()`), and the caller closes both
///   sockets, the still-open one with a reset (`SO_LINGER` 0) so the peer learns of it.
///
/// Buffers are lazy: bytes are read into the caller's scratch buffer and written straight on;
/// only what the destination would not take is copied into a per-direction buffer, which is
/// freed again once drained. An idle tunnel holds no buffer at all.
///
/// Stages (stage.hpp): a direction may be given a chain of stages (`set_stages()`) that see
/// its bytes between the read and the write. A direction without one takes the path described
/// here, splice included; a direction with one copies (its stages must see every byte) while
/// the other direction keeps splicing. Its bytes go source -> scratch -> first stage -> ... ->
/// last stage -> destination (written straight on, the rest kept as above). Its source is read
/// only while the stages hold less than a scratch buffer's worth, and a read takes no more than
/// fits below that; what the destination would not take waits as above, and the stages are
/// not woken meanwhile. The end of stream goes through the chain too, and the destination is
/// shut down for writing once the last stage has passed it on and every byte before it has
/// gone. A stage's reset (stage_context::reset) ends the relay as a peer's reset does: the
/// relay closes the source of that direction with a reset when the caller closes it, and
/// `error_on_client()` names that source, so the caller resets the other side as ever.
///
/// Zero copy (Linux, TINYPROXY_HAS_SPLICE): once a read in one direction fills the whole
/// scratch buffer, that direction is carrying bulk data, and from then on it moves socket ->
/// pipe -> socket with splice(2), never through user space. The pipe (two descriptors) is made
/// once per direction, only then, so idle and request/response tunnels never hold one; it is
/// closed when its direction ends or the relay is destroyed. If it cannot be made (EMFILE, ...)
/// the direction stays on the copy path. The pipe is grown to `splice_pipe_size` (256 KiB)
/// where the kernel allows, and each splice moves up to a pipe's worth: fewer system calls per
/// byte than a default 64 KiB pipe, and less CPU per byte (bench/README.md, "Why the relay does
/// what it does"). A tunnel that shares its event loop with other bulk tunnels reads one pipe's
/// worth per turn (`shared_rounds`): once `shared_reads_to_grow` such reads in a row have filled
/// the pipe, it grows to `shared_pipe_size` (1 MiB), so each turn moves four times as much for
/// the same calls and wake-ups. A tunnel alone on its loop, shared only for a moment (iperf3's
/// control connection beside its one stream), keeps its pipe: it did not pay there. At most
/// `shared_pipe_budget` pipes of a process are grown at a time, since each takes 256 pages of the
/// user's pipe quota. A pipe the kernel keeps below 64 KiB (the user's pipe quota is spent, and new
/// pipes get two pages) is given back, and the direction copies instead. Bytes in the pipe are
/// pending bytes like any other: the pipe is filled only when empty, with at most its capacity.
/// They are kernel pages taken off the source socket's receive queue, not the process's memory; the
/// scratch buffer bounds what the copy path holds. splice(2) cannot say MSG_NOSIGNAL, so each pump
/// that splices into a socket blocks SIGPIPE in the calling thread meanwhile
/// (detail::sigpipe_guard) and takes back a SIGPIPE its failed write raised: the relay never kills
/// the process, whoever drives it, and installs no handler.
class relay {
public:
    /// `use_splice`: let bulk data move with splice(2) (see above); ignored where unavailable.
    relay(int client_fd, int upstream_fd, bool use_splice = true) noexcept
        : halves_{half(client_fd, upstream_fd), half(upstream_fd, client_fd)},
          use_splice_(TINYPROXY_HAS_SPLICE != 0 && use_splice) {}

    /// The caller's promise to close both sockets as soon as finished() says true, as every
    /// policy's session does. The direction that ends last then leaves its end of stream to
    /// that close(), which sends the same FIN behind the same bytes (both sockets have been
    /// read to their end by then, so close() has nothing unread to answer with a reset), and
    /// its shutdown(SHUT_WR) is saved: a short connection's costliest part is its system
    /// calls (bench/README.md). Without the promise, finished() means both ends have had their
    /// FIN, whether or not the caller closes.
    void closes_at_finish() noexcept { closes_at_finish_ = true; }

    /// Bytes to send upstream before anything read from the client: what a client pipelined
    /// behind its handshake, or a PROXY protocol header. They do not pass through the stages.
    void prime_upstream(byte_view bytes) { (void)keep(halves_[0], bytes); }
    /// Bytes to send to the client before anything read from upstream.
    void prime_client(byte_view bytes) { (void)keep(halves_[1], bytes); }
    /// Bytes of the client's that reached upstream before the relay began (the connect's
    /// probe, detail::connector): counted as relayed, as if the relay had sent them.
    void count_sent_upstream(std::uint64_t bytes) noexcept { halves_[0].bytes_written += bytes; }

    /// Gives direction `which` its chain of stages, which the relay owns from then on; an empty
    /// chain gives the direction back today's path. Set it before the first pump; stages may
    /// be added to a live chain through stages() (a stage taken out of a live chain takes with
    /// it what it holds: drain it first).
    void set_stages(direction which, stage_chain chain);
    /// Whether direction `which` can be given stages while it relays: it has none yet, its
    /// source has not ended, nothing failed, and nothing waits in its splice pipe (those bytes
    /// would pass the stages by; the pipe empties as the destination takes them).
    bool can_take_stages(direction which) const noexcept {
        const half& h = halves_[index(which)];
        return !h.stages && !h.eof && !h.done && h.in_pipe == 0 && !failed() && !closed_by_stage_;
    }
    /// Whether direction `which` still carries bytes: its source has not ended.
    bool direction_open(direction which) const noexcept {
        const half& h = halves_[index(which)];
        return !h.eof && !h.done && !failed() && !closed_by_stage_;
    }
    /// Gives a live direction its chain (can_take_stages() must say so) and starts it now:
    /// what the direction reads from then on goes through it. Bytes it read before and the
    /// destination has not taken yet go first.
    void attach_stages(direction which, stage_chain chain, time_point now);
    /// The chain of direction `which`; null when it has none.
    stage_chain* stages(direction which) noexcept { return halves_[index(which)].stages.get(); }
    /// The most the stages of one direction hold before its source is no longer read
    /// (back-pressure); 0, the default, means the scratch buffer's size. A stage that delays
    /// bytes needs the delay's worth of the stream here (100 ms at 100 MB/s: 10 MB), and holds
    /// it only while the stream is that fast: memory is taken as bytes are held.
    void stage_buffer_size(std::size_t bytes) noexcept { stage_buffer_ = bytes; }

    /// The capacity a splicing direction asks for its pipe (F_SETPIPE_SZ): the most one splice
    /// moves, and the most the pipe holds.
    static constexpr std::size_t splice_pipe_size = 256 * 1024;
    /// What a pipe grows to when its tunnel shares an event loop and `shared_reads_to_grow`
    /// reads in a row filled it, and how many pipes of a process may have grown at once: 16 of
    /// them take 4,096 pages, a quarter of the default per-user quota (pipe-user-pages-soft),
    /// beyond which new pipes get a page and their directions copy instead.
    static constexpr std::size_t shared_pipe_size = 1024 * 1024;
    static constexpr int shared_pipe_budget = 16;
    static constexpr int shared_reads_to_grow = 8;

    /// What pump() assumes of a socket when the caller does not say: it may be readable, and
    /// may hold an error.
    static constexpr short unknown_events = POLLIN | POLLOUT | POLLERR;

    /// Moves the bytes that can move now without blocking, up to `rounds` reads per direction
    /// (saturated() says when that bound stopped it), using `scratch` for reads (its size
    /// bounds one read, and so the bytes buffered per direction). Returns true when anything
    /// happened (bytes moved, end of stream seen): the caller's idle clock restarts. `now` is
    /// the driver's clock, handed to the stages: stages whose wake-up time (next_wake()) has
    /// come by `now` run first.
    ///
    /// `client_revents` / `upstream_revents` are what the wait reported for each socket. A
    /// socket is read only when reported readable (POLLIN, POLLERR or POLLHUP), or when its
    /// direction had bytes waiting and their destination was reported writable (the socket
    /// was not watched for reading meanwhile), and asked for a pending error only when reported
    /// POLLERR or POLLHUP: a request/response tunnel makes no read that can only say EAGAIN.
    /// A socket left unread is watched for reading afterwards (client_events() and
    /// upstream_events() say so), so nothing waits for long. Leave both out to have both
    /// sides tried. With both 0, nothing is read (primed, waiting or held bytes whose time has
    /// come are only sent), and `scratch` may be null: how a driver pumps at next_wake().
    ///
    /// Where the platform has POLLRDHUP (Linux), the relay asks for it with POLLIN. A socket
    /// reported with it (and without POLLERR) has had its peer's FIN: after a short read, one
    /// more read hears the end of stream at once, and the last bytes go on held back (MSG_MORE)
    /// for the FIN that follows them, in one segment. A reply-then-close upstream then costs
    /// one wait, not two, and its client one wake-up.
    bool pump(time_point now, std::uint8_t* scratch, std::size_t scratch_size,
              short client_revents = unknown_events, short upstream_revents = unknown_events,
              int rounds = max_rounds) noexcept;

    /// When the relay next needs a pump though no socket is ready: the earliest time a stage
    /// asked to be woken at, in a direction whose destination has taken everything so far
    /// (otherwise writability brings the pump). time_point::max() when nothing is scheduled.
    time_point next_wake() const noexcept;

    /// What to wait for on the client socket next: POLLIN (with POLLRDHUP where the platform
    /// has it), POLLOUT, both, or 0.
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
        return upstream_events() != 0 || (!finished() && !halves_[0].done && !handing_back_);
    }

    /// The last pump stopped at its bound in a direction (`rounds` reads, each of a whole
    /// scratch buffer or pipe), and that source may hold more: a bulk transfer. A driver of
    /// many tunnels serves the others first; readiness brings this one back.
    bool saturated() const noexcept { return saturated_; }
    /// The most reads (or splices into a pipe) one pump makes per direction unless told
    /// otherwise: a tunnel that has its thread, or its event loop, to itself, where fewer
    /// waits per byte cost less CPU. An event loop serving other tunnels too asks for one
    /// (`shared_rounds`): a bulk tunnel then holds it for one read and its write (at most a
    /// pipe's worth, 256 KiB), so a small exchange on the same loop waits for little
    /// (bench/README.md, "Why the relay does what it does").
    static constexpr int max_rounds = 4;
    static constexpr int shared_rounds = 1;

    /// Both directions have ended cleanly, or one side failed, or a stage handed the client
    /// back and everything it was owed has been written.
    bool finished() const noexcept {
        return failed() || (halves_[0].done && halves_[1].done) || handed_back();
    }
    /// A stage handed the client back (stage_context::hand_back) and the client has been sent
    /// everything passed to it: the relay has finished, the client's connection is open, and
    /// nothing has been shut down. The upstream is the caller's to close.
    bool handed_back() const noexcept {
        const half& to_client = halves_[1];
        return handing_back_ && !failed() && !has_pending(to_client) && in_stages(to_client) == 0;
    }
    bool failed() const noexcept { return static_cast<bool>(error_); }
    /// The reset or error that ended the relay; empty for a clean finish.
    std::error_code error() const noexcept { return error_; }
    /// True when the error came from the client's socket, false when from the upstream's.
    bool error_on_client() const noexcept { return error_on_client_; }

    std::uint64_t bytes_to_upstream() const noexcept { return halves_[0].bytes_written; }
    std::uint64_t bytes_to_client() const noexcept { return halves_[1].bytes_written; }
    /// Of bytes_to_upstream(), those that went through a pipe with splice(2).
    std::uint64_t bytes_spliced_to_upstream() const noexcept { return halves_[0].bytes_spliced; }
    /// Of bytes_to_client(), those that went through a pipe with splice(2).
    std::uint64_t bytes_spliced_to_client() const noexcept { return halves_[1].bytes_spliced; }
    /// Bytes waiting for a slow destination, in a buffer or a pipe (per direction at most one
    /// scratch buffer's worth, or a pipe's worth once splicing, or what the stages released in
    /// one pump, besides what prime_upstream and prime_client gave).
    std::size_t bytes_buffered() const noexcept {
        return buffered(halves_[0]) + buffered(halves_[1]);
    }
    /// Bytes the stages of both directions hold (stage_chain::held()).
    std::size_t bytes_in_stages() const noexcept {
        return in_stages(halves_[0]) + in_stages(halves_[1]);
    }

private:
    /// One direction: bytes read from `from`, written to `to`.
    struct half {
        half(int from_fd, int to_fd) noexcept : from(from_fd), to(to_fd) {}

        int from;
        int to;
        std::vector<std::uint8_t> pending;   // read but not yet written; empty when idle
        std::size_t pending_offset = 0;      // how much of `pending` has been written
        unique_fd pipe_read;                 // splicing: the pipe `from` is spliced into ...
        unique_fd pipe_write;                // ... through this end
        std::size_t in_pipe = 0;             // spliced in, not yet out (after `pending`)
        std::size_t pipe_capacity = 0;       // the most one splice into the pipe moves
        detail::pipe_growth grown;           // the pipe has grown to shared_pipe_size
        int shared_full_reads = 0;           // in a row, each filling the pipe, loop shared
        std::unique_ptr<stage_chain> stages; // null: no stage, the plain path
        bool pipe_tried = false;             // a pipe was asked for (once per direction)
        bool eof = false;                    // `from` said end of stream
        bool end_passed = false; // with stages: the last stage has passed the end of stream on
        bool done = false;       // the end has been passed on and `to` shut down for writing
        std::uint64_t bytes_written = 0;
        std::uint64_t bytes_spliced = 0; // of bytes_written, through the pipe
    };
    /// A SIGPIPE guard made by the first splice into a socket in a pump, held to its end.
    using sigpipe_scope = std::optional<detail::sigpipe_guard>;
    /// What one splice round leaves the copy loop to do.
    enum class splice_outcome { read_on, stop, copy_instead };
    /// Where a direction's last stage delivers: its destination, as the copy path writes.
    class stage_output;

    static constexpr int index(direction which) noexcept { return static_cast<int>(which); }
    static void append(half& h, byte_view bytes) {
        h.pending.insert(h.pending.end(), bytes.begin(), bytes.end());
    }
    static std::size_t buffered(const half& h) noexcept {
        return h.pending.size() - h.pending_offset + h.in_pipe;
    }
    static std::size_t in_stages(const half& h) noexcept { return h.stages ? h.stages->held() : 0; }
    bool has_pending(const half& h) const noexcept { return buffered(h) != 0; }
    /// A direction with stages reads its source only while they hold less than one read, and
    /// not once they have ended it.
    bool stages_take_more(const half& h) const noexcept {
        return !h.stages || (!h.end_passed && h.stages->held() < stage_hold_limit_);
    }
    static bool peer_sent_fin(short revents) noexcept {
        return (revents & detail::peer_closed_event) != 0 && (revents & POLLERR) == 0;
    }
    short events_on(int side) const noexcept;
    /// A direction without stages: flush, then read and write on (splice or copy) for up to
    /// `rounds` reads, then pass the end of stream on when it has come.
    bool pump_half(half& h, bool source_ready, bool destination_ready, bool source_closing,
                   std::uint8_t* scratch, std::size_t scratch_size, int rounds,
                   sigpipe_scope& sigpipe) noexcept;
    /// One splice from the source into the (empty) pipe, and on into the destination.
    splice_outcome splice_round(half& h, bool shared, bool& progressed,
                                sigpipe_scope& sigpipe) noexcept;
    /// One read into scratch, written straight on; true when another read may find more.
    bool copy_round(half& h, bool source_closing, std::uint8_t* scratch, std::size_t scratch_size,
                    bool& progressed) noexcept;
    /// A direction with stages: flush, wake the stages whose time has come, then read through
    /// the chain while it takes more, then pass the end of stream on when it has come.
    bool pump_staged(half& h, time_point now, bool may_read, bool source_closing,
                     std::uint8_t* scratch, std::size_t scratch_size, int rounds,
                     sigpipe_scope& sigpipe) noexcept;
    /// Reads from the source into the first stage for up to `rounds` reads.
    void read_into_stages(half& h, stage_output& out, time_point now, bool source_closing,
                          std::uint8_t* scratch, std::size_t scratch_size, int rounds);
    /// After a short read from a source whose FIN had come: one more read, for the end.
    void read_end_into_stages(half& h, stage_output& out, time_point now, std::uint8_t* scratch,
                              std::size_t want);
    /// Once `ended` and every byte before it has gone: shut `to` down for writing (or leave
    /// the FIN to the caller's close) and give the pipe back. True when it did.
    bool pass_end_of_stream(half& h, bool ended) noexcept;
    /// After a short read of `n` bytes from a socket whose FIN had come: reads on into the
    /// rest of scratch. True when that read said end of stream; bytes it found are added to
    /// `n`; an error other than "would block" is left in `ec`.
    static bool read_on_to_end(int fd, std::uint8_t* scratch, std::size_t& n,
                               std::size_t scratch_size, std::error_code& ec) noexcept;
    /// Writes what is pending in the buffer; false when the destination is full or failed.
    bool flush(half& h, bool& progressed) noexcept;
    /// Splices what the pipe holds into the destination; false when it is full or failed.
    bool drain_pipe(half& h, bool& progressed, sigpipe_scope& sigpipe) noexcept;
    /// A read filled the scratch buffer: from now on this direction splices, if it can.
    void start_splicing(half& h) noexcept;
    /// Reads that filled the pipe of a tunnel sharing its loop, enough of them in a row: the
    /// pipe grows, once, if the process's budget allows.
    static void grow_shared_pipe(half& h) noexcept;
    void probe_half_closed(int side, short revents) noexcept;
    /// Copies bytes the destination has not taken yet into the direction's own buffer.
    bool keep(half& h, byte_view rest) noexcept;
    void fail(const std::error_code& ec, int fd) noexcept {
        if (!error_) {
            error_ = ec;
            error_on_client_ = fd == halves_[0].from;
        }
    }
    /// A stage's reset: `from` is closed with a reset too, not only the other side.
    void fail_by_stage(const std::error_code& why, int from) noexcept;
    /// A stage's close: both sources stop, both destinations get their FIN once drained.
    void close_by_stage() noexcept;
    /// A stage's hand-back: both sources stop; what goes to the client is still written.
    void hand_back_by_stage() noexcept { handing_back_ = true; }

    half halves_[2]; // [0] client -> upstream, [1] upstream -> client
    bool use_splice_;
    bool saturated_ = false;        // the last pump stopped at its rounds in a direction
    bool closes_at_finish_ = false; // see closes_at_finish()
    bool closed_by_stage_ = false;  // a stage closed the tunnel: both directions end
    bool handing_back_ = false;     // a stage handed the client back: nothing more is read
    std::size_t stage_buffer_ = 0;  // see stage_buffer_size(); 0: the scratch size
    std::size_t stage_hold_limit_ = static_cast<std::size_t>(-1); // what the stages may hold
    std::error_code error_;
    bool error_on_client_ = false;
};

// ---------------------------------------------------------------------------------------------

/// Delivers what a direction's last stage passes on: written straight to the destination when
/// nothing waits before it, the rest kept, as the copy path does.
class relay::stage_output final : public stage_sink {
public:
    stage_output(relay& owner, half& h) noexcept : relay_(owner), half_(h) {}

    void deliver(byte_view bytes) noexcept override {
        if (relay_.failed() || half_.end_passed || bytes.empty()) {
            return;
        }
        std::size_t written = 0;
        if (!relay_.has_pending(half_)) {
            std::error_code ec;
            written = detail::send_some(half_.to, bytes.data(), bytes.size(), ec);
            if (ec && !detail::would_block(ec)) {
                relay_.fail(ec, half_.to);
                return;
            }
            written = ec ? 0 : written;
            half_.bytes_written += written;
        }
        if (written < bytes.size()) {
            (void)relay_.keep(half_, byte_view{bytes.data() + written, bytes.size() - written});
        }
        progressed = true;
    }
    void deliver_end() noexcept override {
        half_.end_passed = true;
        progressed = true;
    }
    void reset(std::error_code why) noexcept override { relay_.fail_by_stage(why, half_.from); }
    void close() noexcept override {
        relay_.close_by_stage();
        progressed = true;
    }
    void hand_back() noexcept override {
        relay_.hand_back_by_stage();
        progressed = true;
    }

    bool progressed = false;

private:
    relay& relay_;
    half& half_;
};

inline void relay::set_stages(direction which, stage_chain chain) {
    half& h = halves_[index(which)];
    h.stages = chain.empty() ? nullptr : std::make_unique<stage_chain>(std::move(chain));
}

inline void relay::attach_stages(direction which, stage_chain chain, time_point now) {
    half& h = halves_[index(which)];
    if (chain.empty() || !can_take_stages(which)) {
        return;
    }
    h.stages = std::make_unique<stage_chain>(std::move(chain));
    stage_output out(*this, h);
    try {
        h.stages->start(now, out); // a stage with a timer of its own sets it now
    } catch (...) {                // as a stage that throws in a pump: both sides reset
        fail_by_stage(make_error_code(errc::stage_failed), h.from);
    }
}

inline time_point relay::next_wake() const noexcept {
    time_point earliest = time_point::max();
    if (failed()) {
        return earliest;
    }
    for (const half& h : halves_) {
        // Bytes waiting for the destination come first: writability brings the pump back.
        if (h.stages && !h.done && !has_pending(h)) {
            time_point wake = h.stages->next_wake();
            earliest = wake < earliest ? wake : earliest;
        }
    }
    return earliest;
}

inline short relay::events_on(int side) const noexcept {
    if (finished() || (handing_back_ && side == 1)) { // the upstream is done with, then
        return 0;
    }
    // Side 0 is the client: it is the source of halves_[0] and the destination of halves_[1].
    const half& outgoing = halves_[side];     // reads from this side
    const half& incoming = halves_[1 - side]; // writes to this side
    short events = 0;
    if (!outgoing.eof && !handing_back_ && !has_pending(outgoing) && stages_take_more(outgoing)) {
        events |= POLLIN | detail::peer_closed_event;
    }
    if (has_pending(incoming)) {
        events |= POLLOUT;
    }
    return events;
}

inline bool relay::flush(half& h, bool& progressed) noexcept {
    while (h.pending_offset < h.pending.size()) {
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

inline void relay::fail_by_stage(const std::error_code& why, int from) noexcept {
    if (failed()) {
        return;
    }
    // The caller resets the side not blamed; this one is reset here, as a peer's reset would
    // have left it. Should that fail, the peer gets a FIN instead: the tunnel still ends.
    std::error_code ignored;
    detail::set_linger_reset(from, ignored);
    fail(why, from);
}

inline void relay::close_by_stage() noexcept {
    closed_by_stage_ = true;
    for (half& h : halves_) {
        h.eof = true; // neither source is read again
        if (h.stages) {
            h.end_passed = true; // what the stages pass from now on goes nowhere
        }
    }
}

inline bool relay::drain_pipe(half& h, bool& progressed, sigpipe_scope& sigpipe) noexcept {
    while (h.in_pipe > 0) {
        if (!sigpipe) {
            sigpipe.emplace();
        }
        std::error_code ec;
        std::size_t n = detail::splice_some(h.pipe_read.get(), h.to, h.in_pipe, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                sigpipe->take_raised(); // the write into a socket whose peer is gone raised it
                fail(ec, h.to);
            }
            return false;
        }
        if (n == 0) {
            return false; // not with bytes in the pipe; wait for writability rather than spin
        }
        h.in_pipe -= n;
        h.bytes_written += n;
        h.bytes_spliced += n;
        progressed = true;
    }
    return true;
}

inline void relay::start_splicing(half& h) noexcept {
    if (!use_splice_ || h.pipe_tried) {
        return;
    }
    h.pipe_tried = true; // once: a direction that could not have a pipe copies to its end
    int fds[2] = {-1, -1};
    std::error_code ec;
    if (!detail::make_pipe(fds, ec, true)) {
        return;
    }
    unique_fd read_end(fds[0]);
    unique_fd write_end(fds[1]);
    std::size_t capacity = detail::grow_pipe(write_end.get(), splice_pipe_size);
    if (capacity < 64 * 1024) {
        return; // a quota-starved pipe of a page or two: copying moves more per system call
    }
    h.pipe_read = std::move(read_end);
    h.pipe_write = std::move(write_end);
    h.pipe_capacity = capacity;
}

inline void relay::grow_shared_pipe(half& h) noexcept {
    if (!h.grown.take(shared_pipe_budget)) {
        return;
    }
    std::size_t capacity = detail::grow_pipe(h.pipe_write.get(), shared_pipe_size);
    if (capacity <= h.pipe_capacity) {
        return; // the quota said no: keep the budget's share, so as not to ask at every read
    }
    h.pipe_capacity = capacity;
}

inline bool relay::pump_half(half& h, bool source_ready, bool destination_ready,
                             bool source_closing, std::uint8_t* scratch, std::size_t scratch_size,
                             int rounds, sigpipe_scope& sigpipe) noexcept {
    bool progressed = false;
    // A source with bytes waiting behind it was not watched for reading, so once they can go,
    // nobody knows whether it has more.
    const bool may_read = !handing_back_ && (source_ready || (has_pending(h) && destination_ready));
    // A bounded number of rounds, so that in an event loop one fast tunnel cannot starve the
    // others; level-triggered readiness brings us straight back if there is more.
    rounds = rounds < 1 ? 1 : rounds;
    int round = 0;
    for (; round < rounds; ++round) {
        // Older bytes first: what the copy path kept, then what the pipe holds.
        if (!flush(h, progressed) || !drain_pipe(h, progressed, sigpipe) || h.eof || !may_read) {
            break;
        }
        const splice_outcome spliced =
            h.pipe_read ? splice_round(h, rounds < max_rounds, progressed, sigpipe)
                        : splice_outcome::copy_instead;
        if (spliced == splice_outcome::read_on) {
            continue;
        }
        if (spliced == splice_outcome::stop ||
            !copy_round(h, source_closing, scratch, scratch_size, progressed)) {
            break;
        }
    }
    saturated_ = saturated_ || round == rounds;
    return pass_end_of_stream(h, h.eof) || progressed;
}

inline relay::splice_outcome relay::splice_round(half& h, bool shared, bool& progressed,
                                                 sigpipe_scope& sigpipe) noexcept {
    // At most a pipe's worth into the (empty) pipe, then on.
    std::error_code ec;
    std::size_t n = detail::splice_some(h.from, h.pipe_write.get(), h.pipe_capacity, ec);
    if (ec) {
        if (!detail::would_block(ec)) {
            fail(ec, h.from);
            return splice_outcome::stop;
        }
        // splice(2) also says "would block" when the next byte is TCP urgent data (MSG_OOB):
        // it stops there for good, while poll(2) goes on saying readable. A recv(2) reads past
        // it, as the copy path always has, or finds nothing either.
        return splice_outcome::copy_instead;
    }
    progressed = true;
    if (n == 0) {
        h.eof = true;
        return splice_outcome::stop;
    }
    h.in_pipe = n;
    const bool filled_shared = shared && n == h.pipe_capacity;
    h.shared_full_reads =
        filled_shared ? std::min(h.shared_full_reads + 1, shared_reads_to_grow) : 0;
    if (h.shared_full_reads >= shared_reads_to_grow && !h.grown) {
        grow_shared_pipe(h);
    }
    if (!drain_pipe(h, progressed, sigpipe) || n < h.pipe_capacity) {
        return splice_outcome::stop; // a short read emptied the socket: see copy_round
    }
    return splice_outcome::read_on;
}

inline bool relay::copy_round(half& h, bool source_closing, std::uint8_t* scratch,
                              std::size_t scratch_size, bool& progressed) noexcept {
    std::error_code ec;
    std::size_t n = detail::recv_some(h.from, scratch, scratch_size, ec);
    if (ec) {
        if (!detail::would_block(ec)) {
            fail(ec, h.from);
        }
        return false;
    }
    progressed = true;
    if (n == 0) {
        h.eof = true;
        return false;
    }
    if (n == scratch_size) {
        start_splicing(h); // bulk data: the next read goes through a pipe
    }
    // A short read took everything the socket had. If the wait said its FIN had come too, one
    // more read hears the end of stream now rather than after another wait, and the bytes go
    // out held back for our FIN, in one segment with it.
    std::error_code read_error;
    const bool ends = n < scratch_size && source_closing &&
                      read_on_to_end(h.from, scratch, n, scratch_size, read_error);
    // Write straight from scratch; keep only what the destination would not take.
    std::size_t written =
        detail::send_some(h.to, scratch, n, ec, ends ? detail::more_follows_flag : 0);
    if (ec && !detail::would_block(ec)) {
        fail(ec, h.to);
        return false;
    }
    written = ec ? 0 : written;
    h.bytes_written += written;
    if (written < n) {
        keep(h, byte_view{scratch + written, n - written});
    }
    h.eof = ends;
    if (read_error) {
        fail(read_error, h.from); // after passing on what came before it, as ever
    }
    // After a short read, another would only say EAGAIN (two wasted system calls per
    // request/response round trip). Readiness is level triggered, so bytes that arrive
    // meanwhile bring the caller straight back.
    return written == n && n == scratch_size && !failed();
}

inline bool relay::pump_staged(half& h, time_point now, bool may_read, bool source_closing,
                               std::uint8_t* scratch, std::size_t scratch_size, int rounds,
                               sigpipe_scope& sigpipe) noexcept {
    stage_output out(*this, h);
    // Older bytes first: what the destination has not taken (and a pipe left from before the
    // stages came) goes before anything the stages release.
    if (flush(h, out.progressed) && drain_pipe(h, out.progressed, sigpipe)) {
        try {
            if (!h.end_passed) {
                h.stages->wake(now, out);
            }
            if (may_read) {
                read_into_stages(h, out, now, source_closing, scratch, scratch_size, rounds);
            }
        } catch (...) { // a stage that cannot go on ends this tunnel, not the proxy
            fail_by_stage(make_error_code(errc::stage_failed), h.from); // both sides reset
        }
    }
    return pass_end_of_stream(h, h.end_passed) || out.progressed;
}

inline void relay::read_into_stages(half& h, stage_output& out, time_point now, bool source_closing,
                                    std::uint8_t* scratch, std::size_t scratch_size, int rounds) {
    rounds = rounds < 1 ? 1 : rounds;
    int round = 0;
    for (; round < rounds; ++round) {
        if (!flush(h, out.progressed) || failed() || h.eof || handing_back_ ||
            !stages_take_more(h)) {
            break;
        }
        // No more than keeps what the stages hold within one scratch buffer's worth.
        const std::size_t room = stage_hold_limit_ - h.stages->held();
        const std::size_t want = room < scratch_size ? room : scratch_size;
        if (want == 0) {
            break; // no scratch buffer (a pump told nothing is ready): nothing is read
        }
        std::error_code ec;
        std::size_t n = detail::recv_some(h.from, scratch, want, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                fail(ec, h.from);
            }
            break;
        }
        out.progressed = true;
        if (n == 0) {
            h.eof = true;
            h.stages->feed_end(now, out);
            break;
        }
        h.stages->feed(byte_view{scratch, n}, now, out);
        if (n < want) {
            // The socket is empty (see copy_round). If the wait said its FIN had come too, one
            // more read hears the end of stream now, not after another wait: the stages have
            // taken what they hold out of scratch, so it is free again.
            if (source_closing && !failed()) {
                read_end_into_stages(h, out, now, scratch, want);
            }
            break;
        }
    }
    saturated_ = saturated_ || round == rounds;
}

inline void relay::read_end_into_stages(half& h, stage_output& out, time_point now,
                                        std::uint8_t* scratch, std::size_t want) {
    std::error_code ec;
    const std::size_t n = detail::recv_some(h.from, scratch, want, ec);
    if (ec) {
        if (!detail::would_block(ec)) {
            fail(ec, h.from);
        }
    } else if (n == 0) {
        h.eof = true;
        h.stages->feed_end(now, out);
    } else {
        h.stages->feed(byte_view{scratch, n}, now, out); // bytes past an urgent mark: on
    }
}

inline bool relay::pass_end_of_stream(half& h, bool ended) noexcept {
    if (!ended || h.done || has_pending(h) || failed()) {
        return false;
    }
    const half& other = &h == &halves_[0] ? halves_[1] : halves_[0];
    if (!(closes_at_finish_ && other.done)) { // else the caller's close() sends the FIN
        std::error_code ignored; // the peer may be gone already; its reset shows on a read
        detail::shutdown_socket(h.to, SHUT_WR, ignored);
    }
    h.done = true;
    // Nothing more goes this way: the pipe's descriptors go back now.
    h.pipe_read.reset();
    h.pipe_write.reset();
    h.grown.release();
    return true;
}

inline bool relay::read_on_to_end(int fd, std::uint8_t* scratch, std::size_t& n,
                                  std::size_t scratch_size, std::error_code& ec) noexcept {
    std::size_t more = detail::recv_some(fd, scratch + n, scratch_size - n, ec);
    if (ec) {
        if (detail::would_block(ec)) {
            ec.clear();
        }
        return false;
    }
    // More bytes means the first read stopped short of the end (at an urgent mark): they
    // join the rest, and the next round reads on.
    n += more;
    return more == 0;
}

inline void relay::probe_half_closed(int side, short revents) noexcept {
    // The side has said end of stream and has nothing to receive: no read or write will show
    // its reset, so ask the socket for a pending error, once the wait has hinted at one.
    const half& outgoing = halves_[side];
    if ((revents & (POLLERR | POLLHUP)) != 0 && outgoing.eof && events_on(side) == 0 &&
        !halves_[1 - side].done) {
        std::error_code ec = detail::connect_result(outgoing.from);
        if (ec) {
            fail(ec, outgoing.from);
        }
    }
}

inline bool relay::pump(time_point now, std::uint8_t* scratch, std::size_t scratch_size,
                        short client_revents, short upstream_revents, int rounds) noexcept {
    bool progressed = false;
    saturated_ = false;
    if (stage_buffer_ != 0) {
        stage_hold_limit_ = stage_buffer_;
    } else if (scratch_size != 0) {
        stage_hold_limit_ = scratch_size; // what the stages of a direction may hold
    }
    probe_half_closed(0, client_revents);
    probe_half_closed(1, upstream_revents);
    // Blocks SIGPIPE from the first splice into a socket to the end of this pump; a pump that
    // does not splice out makes no system call for it.
    sigpipe_scope sigpipe;
    const bool readable[2] = {(client_revents & (POLLIN | POLLERR | POLLHUP)) != 0,
                              (upstream_revents & (POLLIN | POLLERR | POLLHUP)) != 0};
    const bool writable[2] = {(client_revents & (POLLOUT | POLLERR | POLLHUP)) != 0,
                              (upstream_revents & (POLLOUT | POLLERR | POLLHUP)) != 0};
    // The peer's FIN has come (and no error with it, which a reset would bring).
    const bool closing[2] = {peer_sent_fin(client_revents), peer_sent_fin(upstream_revents)};
    for (int side = 0; side < 2; ++side) {
        half& h = halves_[side]; // reads from `side`, writes to the other
        if (h.done || failed()) {
            continue;
        }
        if (!h.stages) {
            progressed = pump_half(h, readable[side], writable[1 - side], closing[side], scratch,
                                   scratch_size, rounds, sigpipe) ||
                         progressed;
        } else {
            // As pump_half: a source not watched because bytes waited may have more.
            const bool may_read =
                !handing_back_ && (readable[side] || (has_pending(h) && writable[1 - side]));
            progressed = pump_staged(h, now, may_read, closing[side], scratch, scratch_size, rounds,
                                     sigpipe) ||
                         progressed;
        }
    }
    if (closed_by_stage_) {
        // The direction pumped first did not know of a close the second one's stage made.
        for (half& h : halves_) {
            progressed = pass_end_of_stream(h, true) || progressed;
        }
    }
    return progressed || failed();
}

} // namespace tinyproxy
// ---- end tinyproxy/relay.hpp ----
// #include "tinyproxy/server.hpp"
// ---- begin tinyproxy/server.hpp ----
// The contract between a concurrency policy and the proxy it runs: the Server and Session calls
// a policy makes, stated once here, and the types they pass (clients, limits, results).

#include <atomic>       // live byte counters
#include <chrono>       // timeouts
#include <cstddef>      // std::size_t
#include <cstdint>      // byte counters
#include <memory>       // live byte counters, shared
#include <string>       // a session's stages, named
#include <system_error> // std::error_code
#include <type_traits>  // detecting optional Session members
#include <utility>      // std::declval

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// A policy says how sessions are scheduled (thread_policy, fork_policy, poll_policy, or one of
/// yours, as examples/custom_policy.cpp). It is a class with
///     template <class Server> void run(Server& server);
/// that serves clients until `server` says it is stopping (stopping(), or stop_fd() readable),
/// and before returning joins, reaps and closes everything it started. It may throw
/// std::system_error when it cannot start (basic_proxy::run passes it on).
///
/// The Server (proxy_server in proxy.hpp) offers, for every kind of policy:
///     bool stopping() const noexcept;
///     int stop_fd() const noexcept;   // turns readable once stop is requested, in this process
///                                     // and in forked children alike: include it in every wait
///     const session_options& limits() const noexcept;  // e.g. limits().buffer_size
///     void request_stop() noexcept;   // ends every policy loop (when one of several fails)
///     void session_ended(const session_result& result) noexcept; // counts and reports a
///                                     // session that ended (or a client it could not serve)
/// for a blocking policy, which runs each session to its end on a thread or process of its own:
///     accept_status accept_next(accepted_client& out, time_point until) noexcept;
///                                     // waits for a client, the stop signal or `until`
///     session_result serve(accepted_client client) noexcept;  // one session, to its end, here
///     session_result serve(accepted_client client, std::uint8_t* scratch,
///                          std::size_t size) noexcept;        // reading into `scratch`
///     void enter_child() noexcept;    // in a new fork child: drop what belongs to the parent
///     void count_ended(const session_result& result) noexcept; // counts a session that ended
///                                     // elsewhere (a fork child, which reported it itself)
/// and for an event loop, which drives many sessions itself:
///     using session_type = ...;       // basic_session<Mode::session>
///     int listener_fd() const noexcept;  // non-blocking: wait for it readable, then
///     accept_status try_accept(accepted_client& out, std::error_code& ec) noexcept;
///     session_type make_session(accepted_client client);  // not yet started; may throw
///
/// A Session (basic_session in session.hpp) is driven by readiness, and never blocks nor reads
/// the clock: the driver passes `now` to each call.
///     void start(time_point now) noexcept;
///     int client_fd() const noexcept;     short client_events() const noexcept;
///     int upstream_fd() const noexcept;   short upstream_events() const noexcept;  // -1, 0
///                                         // while there is no upstream socket
///     std::uint32_t upstream_serial() const noexcept;  // changes with each upstream socket
///     bool watch_client() const noexcept;  // poll even with events 0 (to hear of a reset)
///     bool watch_upstream() const noexcept;
///     time_point deadline() const noexcept;   // call on_deadline() once it has passed
///     bool wants_resolve() const noexcept;    // resolve resolve_target() as suits the driver
///     const host_port& resolve_target() const noexcept;
///     void on_resolved(std::vector<endpoint> candidates, std::error_code ec,
///                      time_point now) noexcept;
///     void on_ready(short client_revents, short upstream_revents, time_point now,
///                   std::uint8_t* scratch, std::size_t scratch_size,
///                   int rounds = relay::max_rounds) noexcept;  // revents 0: not ready
///     void on_deadline(time_point now) noexcept;
///     void abort(std::error_code why) noexcept;  // ends it at once (stop, driver failure)
///     bool connecting() const noexcept;   // resolving or connecting upstream
///     bool saturated() const noexcept;    // the last on_ready() moved all one call may: serve
///                                         // the other sessions before calling it again
///     bool done() const noexcept;
///     const session_result& result() const noexcept;
/// and, optionally (detail::tells_client_read_dry):
///     bool client_read_dry() const noexcept;  // start() read the client until it had no more
/// run_session (session/blocking.hpp) is the driver for one session on the calling thread.

namespace detail {
/// Whether a Session says client_read_dry() (see above); one that does not never has.
template <class Session, class = void>
struct tells_client_read_dry : std::false_type {};
template <class Session>
struct tells_client_read_dry<
    Session, std::void_t<decltype(std::declval<const Session&>().client_read_dry())>>
    : std::true_type {};

template <class Session>
bool client_read_dry(const Session& session) noexcept {
    if constexpr (tells_client_read_dry<Session>::value) {
        return session.client_read_dry();
    } else {
        (void)session;
        return false;
    }
}
} // namespace detail

/// Bytes relayed so far, each way, by every tunnel that shares it (session_options::traffic).
struct traffic_counters {
    std::atomic<std::uint64_t> to_upstream{0}; ///< client to upstream
    std::atomic<std::uint64_t> to_client{0};   ///< upstream to client
};

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
    /// Zero-copy relay with splice(2) on Linux, for tunnels that carry bulk data; ignored where
    /// unavailable.
    bool splice = true;
    /// Gives each tunnel its relay stages as it starts (stage.hpp): what sees, changes, delays
    /// or cuts its bytes. Unset, every tunnel takes the plain path, splice included, and the
    /// cost is one branch per tunnel. Copied into each session: capture by (shared) pointer.
    stage_factory stages;
    /// The most the stages of one direction hold before its source is no longer read
    /// (relay::stage_buffer_size): a delay's worth of the stream (100 ms at 100 MB/s is 10 MB).
    /// A bound, not an allocation: a tunnel holds what its stages hold at the time.
    std::size_t stage_buffer_size = 16 * 1024 * 1024;
    /// When set, every tunnel adds the bytes it relays here as they move, not only as it ends
    /// (session_result has those): live counters for a metrics endpoint, shared by the
    /// sessions of a proxy. Unset, it costs one branch per pump.
    std::shared_ptr<traffic_counters> traffic;
};

/// A client just accepted, before its session starts.
struct accepted_client {
    socket connection;
    endpoint peer;
    std::uint64_t serial = 0; ///< counted from 1 in the order accepted (tunnel_info::serial)
};

/// What the accepting side has already set on a client socket, so that the session does not
/// set it again: a system call less per client for each.
struct client_socket_setup {
    bool nonblocking = false; ///< O_NONBLOCK is on (accept4 with SOCK_NONBLOCK)
    bool nodelay = false;     ///< TCP_NODELAY is on (inherited from a listener that had it)
};

/// What waiting for the next client ended with.
enum class accept_status {
    client,  ///< a client was accepted
    timeout, ///< the wait's deadline passed first
    stopped, ///< the proxy is stopping: the policy should wind down
};

/// What a UDP association (SOCKS5 UDP ASSOCIATE) relayed and dropped: datagrams each way and
/// their data's bytes (headers not counted), and the drops by reason.
struct datagram_counts {
    std::uint64_t to_upstream = 0;       ///< datagrams from the client sent on to a remote
    std::uint64_t to_client = 0;         ///< datagrams from a remote sent back to the client
    std::uint64_t bytes_to_upstream = 0; ///< their data, client to remotes
    std::uint64_t bytes_to_client = 0;   ///< their data, remotes to client
    std::uint64_t dropped_fragment = 0;  ///< FRAG != 0: fragments are not reassembled
    std::uint64_t dropped_malformed = 0; ///< a header that does not parse
    std::uint64_t dropped_source = 0;    ///< from neither the client nor a remote it sent to
    std::uint64_t dropped_other = 0;     ///< unresolved, other family, cut short, send failed

    std::uint64_t dropped() const noexcept {
        return dropped_fragment + dropped_malformed + dropped_source + dropped_other;
    }
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
    std::string stages; ///< what stages the tunnel had (tunnel_stages::label)
    /// A UDP association's datagrams (its bytes are also in bytes_to_upstream/_client).
    datagram_counts datagrams;
    bool udp = false;   ///< the session was a UDP association (SOCKS5 UDP ASSOCIATE)
    time_point started; ///< when the session started
    time_point ended;   ///< when it ended
};

} // namespace tinyproxy
// ---- end tinyproxy/server.hpp ----
// #include "tinyproxy/session/handshake.hpp"
// ---- begin tinyproxy/session/handshake.hpp ----
// The first part of a session: the handshake driver, which feeds the Mode's session what the
// client sends, sends the client what the Mode answers, and keeps the handshake deadline.

#include <chrono>       // the handshake timeout
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // a step, when the Mode took bytes
#include <system_error> // std::error_code
#include <type_traits>  // std::is_nothrow_move_constructible
#include <utility>      // std::move
#include <vector>       // byte buffers

#include <poll.h> // POLLIN, POLLOUT

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {
namespace detail {

/// Holds a Mode's session and the bytes it owes the client until a tunnel starts (or the client
/// is closed). It reads and sends on the socket it is given; what a step means (wait, connect,
/// fail) is for the caller to act on.
template <class ModeSession>
class handshake_driver {
public:
    explicit handshake_driver(ModeSession mode) noexcept(
        std::is_nothrow_move_constructible<ModeSession>::value)
        : mode_(std::move(mode)) {}

    ModeSession& mode() noexcept { return mode_; }
    const ModeSession& mode() const noexcept { return mode_; }

    /// The Mode's first step; the handshake deadline begins at `now`.
    mode_step start(time_point now, std::chrono::milliseconds timeout) {
        deadline_ = deadline_after(now, timeout);
        return mode_.start();
    }
    /// The client is back from a tunnel that handed it back (stage_context::hand_back): the
    /// Mode's next step, from the Mode's on_handed_back(), under a new handshake deadline.
    mode_step resume(time_point now, std::chrono::milliseconds timeout) {
        release();
        heard_client_ = true; // it has spoken through the tunnel
        deadline_ = deadline_after(now, timeout);
        return mode_.on_handed_back();
    }
    /// The handshake deadline, or, once closing, the end of the client's time to take the reply.
    time_point deadline() const noexcept { return deadline_; }

    /// Takes a step's bytes: `to_client` is owed to the client, `to_upstream` kept for the
    /// tunnel. A step comes only once the bytes of the last one are out.
    void take(mode_step& step) {
        to_client_ = std::move(step.to_client);
        to_client_offset_ = 0;
        to_upstream_ = std::move(step.to_upstream);
    }

    /// What to wait for on the client: its next bytes, or room for the ones owed to it. The
    /// same as a relay asks (POLLRDHUP too, where there is one), so a client kept registered
    /// while its upstream connects needs no change when its tunnel starts.
    short client_events() const noexcept {
        return owes_client() ? POLLOUT : POLLIN | peer_closed_event;
    }
    bool owes_client() const noexcept { return to_client_offset_ < to_client_.size(); }

    /// Sends what is owed, as far as the socket takes it; an error other than would-block.
    std::error_code send(socket& client);

    /// The client's readiness: sends what is owed, or reads and feeds the Mode. A step when the
    /// Mode took bytes; `ec` when the client failed or closed before the Mode decided.
    std::optional<mode_step> on_ready(socket& client, short revents, std::uint8_t* scratch,
                                      std::size_t scratch_size, std::error_code& ec);

    /// The client is to be closed once it has `reply`, after the bytes still owed; it gets a
    /// second from `now` to take them. Afterwards owes_client() says whether any are left.
    void close_with(std::vector<std::uint8_t> reply, time_point now);

    /// `reply` is owed to the client after what is owed already (a BIND's or UDP ASSOCIATE's
    /// reply, while the session waits on something other than the client); the deadline stays.
    void owe(const std::vector<std::uint8_t>& reply) {
        to_client_.erase(to_client_.begin(),
                         to_client_.begin() + static_cast<std::ptrdiff_t>(to_client_offset_));
        to_client_offset_ = 0;
        to_client_.insert(to_client_.end(), reply.begin(), reply.end());
    }

    /// The bytes owed to the client and those kept for upstream, for the tunnel to send first.
    byte_view unsent_to_client() const noexcept {
        return byte_view{to_client_.data() + to_client_offset_,
                         to_client_.size() - to_client_offset_};
    }
    const std::vector<std::uint8_t>& to_upstream() const noexcept { return to_upstream_; }
    /// The bytes kept for upstream, taken out (the connect's probe, detail::connector).
    std::vector<std::uint8_t> take_to_upstream() noexcept { return std::move(to_upstream_); }
    /// Whether the client has been read: false while the Mode decided without a byte from it
    /// (forwarding), so that whatever the client sends belongs to the tunnel.
    bool heard_client() const noexcept { return heard_client_; }
    /// Frees both once the tunnel has them.
    void release() noexcept {
        std::vector<std::uint8_t>().swap(to_client_);
        std::vector<std::uint8_t>().swap(to_upstream_);
        to_client_offset_ = 0;
    }

private:
    ModeSession mode_;
    time_point deadline_ = time_point::max();
    std::vector<std::uint8_t> to_client_;
    std::size_t to_client_offset_ = 0;
    std::vector<std::uint8_t> to_upstream_;
    bool heard_client_ = false;
};

// ---------------------------------------------------------------------------------------------

template <class ModeSession>
std::error_code handshake_driver<ModeSession>::send(socket& client) {
    std::error_code ec;
    while (!ec && owes_client()) {
        std::size_t n = client.send(to_client_.data() + to_client_offset_,
                                    to_client_.size() - to_client_offset_, ec);
        if (!ec) {
            to_client_offset_ += n;
        }
    }
    return ec && !would_block(ec) ? ec : std::error_code{};
}

template <class ModeSession>
std::optional<mode_step>
handshake_driver<ModeSession>::on_ready(socket& client, short revents, std::uint8_t* scratch,
                                        std::size_t scratch_size, std::error_code& ec) {
    ec.clear();
    if (owes_client()) {
        if ((revents & (POLLOUT | POLLERR | POLLHUP)) != 0) {
            ec = send(client);
        }
        return std::nullopt;
    }
    if ((revents & (POLLIN | POLLERR | POLLHUP)) == 0) {
        return std::nullopt;
    }
    std::size_t n = client.receive(scratch, scratch_size, ec);
    if (ec) {
        if (would_block(ec)) {
            ec.clear();
        }
        return std::nullopt;
    }
    if (n == 0) {
        ec = make_error_code(errc::handshake_incomplete);
        return std::nullopt;
    }
    heard_client_ = true;
    return mode_.on_client_data(byte_view{scratch, n});
}

template <class ModeSession>
void handshake_driver<ModeSession>::close_with(std::vector<std::uint8_t> reply, time_point now) {
    // Bytes the Mode asked for earlier and not yet sent go out first, then the reply.
    to_client_.erase(to_client_.begin(),
                     to_client_.begin() + static_cast<std::ptrdiff_t>(to_client_offset_));
    to_client_offset_ = 0;
    to_client_.insert(to_client_.end(), reply.begin(), reply.end());
    // A client that will not take a few reply bytes in a second is not worth waiting for.
    deadline_ = now + std::chrono::seconds(1);
}

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/session/handshake.hpp ----
// #include "tinyproxy/session/connector.hpp"
// ---- begin tinyproxy/session/connector.hpp ----
// The second part of a session: the connector, which turns the Mode's target into a connected
// upstream socket: the numeric shortcut or a resolve, each address in turn, one deadline. The
// client's first bytes, when it has sent some, probe each attempt: sent, they prove it.

#include <chrono>       // the connect timeout
#include <cstddef>      // std::size_t
#include <cstdint>      // the socket serial, the probe's bytes
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // the addresses to try

#include <poll.h> // POLLOUT, POLLERR, POLLHUP

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"

namespace tinyproxy {
namespace detail {

/// Where a connector stands after each call.
enum class connect_status {
    resolving,         ///< the driver is to resolve target() and call on_resolved()
    connecting,        ///< wait for the upstream socket's writability, or the deadline
    connected,         ///< the socket the driver's readiness reported on is connected
    connected_at_once, ///< an address connected without waiting (on loopback, often the first)
    failed,            ///< no address connected: error() says why
};

/// Connects to one target with one deadline shared by all its addresses; never waits. The
/// caller passes the upstream socket's readiness and the time, and takes the socket once
/// connected.
///
/// The probe: a connect that is not over when connect() returns (EINPROGRESS, as on loopback
/// even when the handshake is already done) is asked for its outcome at once. With bytes for
/// upstream in hand (`probe`: what the client sent first), that question is their send(): sent
/// means connected, "would block" means still connecting, and an error (a refusal) means this
/// address failed and the next is tried, with the same bytes. Without them it is a poll(2)
/// with no wait. Either way one system call, but the send is one the tunnel would make anyway.
class connector {
public:
    /// Starts with `target`: its deadline is `timeout` from `now`. A numeric address needs no
    /// resolving, and is tried at once. `probe`: bytes for upstream to send first (see above);
    /// what the connected socket took of them is probe_sent(), the rest probe_unsent().
    connect_status begin(host_port target, time_point now, std::chrono::milliseconds timeout,
                         std::vector<std::uint8_t> probe = {});
    /// The addresses `target()` resolved to; `ec` when it did not resolve.
    connect_status on_resolved(std::vector<endpoint> candidates, std::error_code ec);
    /// The upstream socket's readiness (revents, not 0) while connecting.
    connect_status on_ready(short revents);
    /// The deadline passed: the connect has failed with errc::connect_timeout.
    connect_status on_deadline() noexcept;

    const host_port& target() const noexcept { return target_; }
    time_point deadline() const noexcept { return deadline_; }
    /// -1 unless an attempt is in progress (or connected and not yet taken).
    int upstream_fd() const noexcept { return upstream_ ? upstream_.native_handle() : -1; }
    /// Changes each time a new socket replaces the last (the next address is tried), so an
    /// event loop can tell it from the old one even when it got the same number.
    std::uint32_t upstream_serial() const noexcept {
        // One socket per address tried, counted on across targets (a session handed back to
        // its Mode connects again).
        return serial_base_ + static_cast<std::uint32_t>(next_candidate_);
    }
    /// Why the connect failed, once it did.
    std::error_code error() const noexcept { return last_error_; }

    /// Once connected: the socket, and the address it is connected to.
    socket take_upstream() noexcept { return std::move(upstream_); }
    const endpoint& connected_to() const noexcept { return candidates_[next_candidate_ - 1]; }
    /// Of the probe, the bytes the connected socket has taken, and those still to send.
    std::size_t probe_sent() const noexcept { return probe_sent_; }
    byte_view probe_unsent() const noexcept {
        return byte_view{probe_.data() + probe_sent_, probe_.size() - probe_sent_};
    }
    /// Frees the probe's bytes once the tunnel has taken what it still owes upstream.
    void release_probe() noexcept {
        std::vector<std::uint8_t>().swap(probe_);
        probe_sent_ = 0;
    }
    void close() noexcept { upstream_.close(); }

private:
    void try_next_candidate();
    connect_status connect_onward();
    /// The outcome of the attempt in progress, asked without waiting (see the class comment):
    /// connecting, connected_at_once, or failed when this address failed (last_error_ says why).
    connect_status ask_at_once();
    connect_status fail(std::error_code why) noexcept {
        upstream_.close();
        last_error_ = why;
        return connect_status::failed;
    }
    /// The connect's outcome once the upstream socket reported `revents`: writable without an
    /// error or hang-up is connected, with no need to ask the socket (SO_ERROR).
    std::error_code connect_outcome(short revents) const noexcept {
        return (revents & (POLLERR | POLLHUP)) != 0 ? connect_result(upstream_.native_handle())
                                                    : std::error_code{};
    }

    host_port target_;
    time_point deadline_ = time_point::max();
    std::vector<endpoint> candidates_;
    std::size_t next_candidate_ = 0;
    std::uint32_t serial_base_ = 0; // the sockets of the targets before this one
    std::error_code last_error_;
    socket upstream_;
    std::vector<std::uint8_t> probe_;
    std::size_t probe_sent_ = 0;
};

// ---------------------------------------------------------------------------------------------

inline connect_status connector::begin(host_port target, time_point now,
                                       std::chrono::milliseconds timeout,
                                       std::vector<std::uint8_t> probe) {
    target_ = std::move(target);
    probe_ = std::move(probe);
    probe_sent_ = 0;
    deadline_ = deadline_after(now, timeout);
    serial_base_ += static_cast<std::uint32_t>(next_candidate_) + 1;
    next_candidate_ = 0;
    if (auto numeric = target_.numeric_address()) {
        return on_resolved({endpoint{*numeric, target_.port}}, {});
    }
    return connect_status::resolving;
}

inline connect_status connector::on_resolved(std::vector<endpoint> candidates, std::error_code ec) {
    candidates_ = std::move(candidates);
    next_candidate_ = 0;
    last_error_ = ec ? ec : make_error_code(errc::name_not_resolved);
    return connect_onward();
}

inline void connector::try_next_candidate() {
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
        last_error_ = ec;
    }
}

inline connect_status connector::connect_onward() {
    // Each address in turn until one connects, one is still connecting, or none is left. On
    // loopback (and often nearby) the handshake is over by the time connect() returns: asking
    // at once, without waiting, starts the tunnel now and spares an event loop the writability
    // watch (two epoll_ctl calls) and one more wait per connection.
    for (;;) {
        try_next_candidate();
        if (!upstream_) {
            return fail(last_error_);
        }
        connect_status status = ask_at_once();
        if (status != connect_status::failed) {
            return status;
        }
    }
}

inline connect_status connector::ask_at_once() {
    std::error_code ec;
    if (!probe_.empty()) {
        std::size_t n = upstream_.send(probe_.data(), probe_.size(), ec);
        if (!ec) {
            probe_sent_ = n;
            return connect_status::connected_at_once;
        }
        if (would_block(ec)) {
            return connect_status::connecting; // not yet: the bytes wait with the rest
        }
    } else {
        short revents = ready_now(upstream_.native_handle(), POLLOUT);
        if (revents == 0) {
            return connect_status::connecting; // the driver waits for writability
        }
        ec = connect_outcome(revents);
        if (!ec) {
            return connect_status::connected_at_once;
        }
    }
    last_error_ = ec;
    return connect_status::failed;
}

inline connect_status connector::on_ready(short revents) {
    std::error_code ec = connect_outcome(revents);
    if (!ec) {
        return connect_status::connected;
    }
    if (ec == errc::connect_timeout) {
        return fail(ec); // a timed-out attempt ends the connect, as the deadline does
    }
    last_error_ = ec;
    return connect_onward();
}

inline connect_status connector::on_deadline() noexcept {
    return fail(make_error_code(errc::connect_timeout));
}

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/session/connector.hpp ----
// #include "tinyproxy/session/tunnel.hpp"
// ---- begin tinyproxy/session/tunnel.hpp ----
// The third part of a session: the tunnel, which owns the upstream socket once connected and
// the relay between it and the client, keeps the idle deadline, and passes a reset on.

#include <chrono>       // the idle timeout
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <memory>       // late stages
#include <optional>     // the relay, once started
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // the Mode's reply

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/relay.hpp"
// #include "tinyproxy/server.hpp"

namespace tinyproxy {
namespace detail {

/// A relay between the client (whose socket the caller keeps, and passes in) and the upstream
/// socket this holds. Idle while not started.
class tunnel {
public:
    /// Starts relaying: the client first gets `unsent` (what the handshake still owed it), then
    /// `reply`; upstream first gets `to_upstream`. `client_nodelay`: Nagle is already off there.
    /// `sent_upstream`: the client's bytes the connect already sent (its probe), counted here.
    void start(socket& client, bool client_nodelay, socket upstream, byte_view unsent,
               const std::vector<std::uint8_t>& reply, byte_view to_upstream,
               std::size_t sent_upstream, const session_options& limits, time_point now);

    /// Gives the relay its stages, before its first pump, and keeps the late ones to look for.
    void set_stages(tunnel_stages stages) {
        relay_->set_stages(direction::to_upstream, std::move(stages.to_upstream));
        relay_->set_stages(direction::to_client, std::move(stages.to_client));
        later_ = std::move(stages.later);
    }

    /// Moves what can move now (relay::pump) and restarts the idle clock if anything did. True
    /// once the relay has finished (error() says how), after a reset on one side has been
    /// passed to the other.
    bool pump(socket& client, short client_revents, short upstream_revents, time_point now,
              std::uint8_t* scratch, std::size_t scratch_size, int rounds = relay::max_rounds);
    /// The readiness to pump with first, right after a connect the driver waited for: the reply
    /// and any pipelined bytes go now. A client told nothing (forwarding) may have sent while we
    /// connected, and its upstream may answer at once: both are read now, not one wait later. A
    /// client still waiting for our reply (SOCKS, CONNECT) has sent nothing since, and its
    /// upstream has been sent nothing: reading either would only say EAGAIN.
    short first_events() const noexcept { return client_awaits_reply_ ? 0 : relay::unknown_events; }

    short client_events() const noexcept { return relay_->client_events(); }
    short upstream_events() const noexcept { return relay_->upstream_events(); }
    bool watch_client() const noexcept { return relay_->watch_client(); }
    bool watch_upstream() const noexcept { return relay_->watch_upstream(); }
    bool saturated() const noexcept { return relay_->saturated(); }
    int upstream_fd() const noexcept { return upstream_.native_handle(); }
    /// The earlier of the idle deadline and the relay's next wake-up (a stage holding bytes).
    time_point deadline() const noexcept { return deadline_; }
    /// At the deadline: true when it is the relay's wake-up (pump with no readiness), false
    /// when the tunnel has been idle for its whole timeout.
    bool relay_due(time_point now) const noexcept {
        return relay_->next_wake() <= now || (later_ && next_look_ <= now);
    }
    std::error_code error() const noexcept { return relay_->error(); }
    /// The relay finished with the client handed back (relay::handed_back): the client's
    /// connection stays open for what its Mode decides next.
    bool handed_back() const noexcept { return relay_ && relay_->handed_back(); }

    /// Ends the tunnel (if it started): its byte counts are added to `result`, the upstream
    /// closes, and it is idle again (it may start anew).
    void close(session_result& result) noexcept;

private:
    /// Late stages (tunnel_stages::later): a direction without stages takes them once they
    /// have come and it can (relay::can_take_stages).
    void look_for_stages(time_point now);
    /// The bytes moved since the last count, to the shared live counters.
    void count_traffic() noexcept;

    socket upstream_;
    std::optional<relay> relay_;
    std::unique_ptr<late_stages> later_;
    time_point next_look_ = time_point::max(); // with later_: an idle tunnel looks then
    traffic_counters* traffic_ = nullptr;      // session_options::traffic, which outlives us
    std::uint64_t counted_to_upstream_ = 0;    // of the relay's bytes, those in traffic_
    std::uint64_t counted_to_client_ = 0;
    std::chrono::milliseconds idle_timeout_{0};
    time_point idle_deadline_ = time_point::max(); // no byte has moved since
    time_point deadline_ = time_point::max();      // the earlier of that and the relay's wake-up
    bool client_awaits_reply_ = false; // the relay began with a reply and nothing for upstream
};

// ---------------------------------------------------------------------------------------------

inline void tunnel::start(socket& client, bool client_nodelay, socket upstream, byte_view unsent,
                          const std::vector<std::uint8_t>& reply, byte_view to_upstream,
                          std::size_t sent_upstream, const session_options& limits,
                          time_point now) {
    upstream_ = std::move(upstream);
    std::error_code ignored; // Nagle off is an optimisation; a failure changes nothing else
    if (!client_nodelay) {
        client.set_nodelay(true, ignored);
    }
    upstream_.set_nodelay(true, ignored);
    relay_.emplace(client.native_handle(), upstream_.native_handle(), limits.splice);
    relay_->closes_at_finish(); // the session closes both sockets once it has finished
    relay_->stage_buffer_size(limits.stage_buffer_size);
    client_awaits_reply_ =
        (!reply.empty() || !unsent.empty()) && to_upstream.empty() && sent_upstream == 0;
    // Anything the Mode had not yet sent (nothing, for every mode that waits for its replies to
    // go out) precedes the connect reply.
    relay_->prime_client(unsent);
    relay_->prime_client(reply);
    relay_->prime_upstream(to_upstream);
    relay_->count_sent_upstream(sent_upstream);
    traffic_ = limits.traffic.get();
    idle_timeout_ = limits.idle_timeout;
    idle_deadline_ = deadline_after(now, idle_timeout_);
    deadline_ = idle_deadline_;
}

inline bool tunnel::pump(socket& client, short client_revents, short upstream_revents,
                         time_point now, std::uint8_t* scratch, std::size_t scratch_size,
                         int rounds) {
    if (later_) {
        look_for_stages(now);
    }
    if (relay_->pump(now, scratch, scratch_size, client_revents, upstream_revents, rounds)) {
        idle_deadline_ = deadline_after(now, idle_timeout_);
    }
    if (traffic_ != nullptr) {
        count_traffic();
    }
    // The relay's stages may need a pump before the idle timeout: whichever comes first.
    time_point wake = relay_->next_wake();
    wake = later_ && next_look_ < wake ? next_look_ : wake;
    deadline_ = wake < idle_deadline_ ? wake : idle_deadline_;
    if (!relay_->finished()) {
        return false;
    }
    if (relay_->error()) {
        // Pass the reset on: the side that did not fail is closed with RST, not FIN.
        std::error_code ignored;
        (relay_->error_on_client() ? upstream_ : client).set_linger_reset(ignored);
    }
    return true;
}

inline void tunnel::look_for_stages(time_point now) {
    if (next_look_ <= now || next_look_ == time_point::max()) { // the first pump, or due
        next_look_ = deadline_after(now, later_->look_every());
    }
    if (!later_->changed()) {
        return;
    }
    bool every_one_asked = true;
    bool any_without = false;
    for (direction which : {direction::to_upstream, direction::to_client}) {
        if (relay_->stages(which) != nullptr) {
            continue;
        }
        if (!relay_->can_take_stages(which)) {
            // Its pipe still holds bytes (ask again at the next pump), or it has ended.
            every_one_asked = every_one_asked && !relay_->direction_open(which);
            any_without = any_without || relay_->direction_open(which);
            continue;
        }
        stage_chain chain = later_->make(which);
        if (chain.empty()) {
            any_without = true;
        } else {
            relay_->attach_stages(which, std::move(chain), now);
        }
    }
    if (every_one_asked) {
        later_->looked();
    }
    if (!any_without) { // both directions have stages (or have ended): nothing more to look for
        later_.reset();
        next_look_ = time_point::max();
    }
}

inline void tunnel::count_traffic() noexcept {
    const std::uint64_t up = relay_->bytes_to_upstream();
    const std::uint64_t down = relay_->bytes_to_client();
    if (up != counted_to_upstream_) {
        traffic_->to_upstream.fetch_add(up - counted_to_upstream_, std::memory_order_relaxed);
        counted_to_upstream_ = up;
    }
    if (down != counted_to_client_) {
        traffic_->to_client.fetch_add(down - counted_to_client_, std::memory_order_relaxed);
        counted_to_client_ = down;
    }
}

inline void tunnel::close(session_result& result) noexcept {
    if (relay_ && traffic_ != nullptr) {
        count_traffic();
    }
    if (relay_) {
        // Added: a client handed back to its Mode may have several tunnels, one after another.
        result.bytes_to_upstream += relay_->bytes_to_upstream();
        result.bytes_to_client += relay_->bytes_to_client();
        relay_.reset(); // its pipes, if it spliced, close with the sockets
    }
    later_.reset();
    next_look_ = time_point::max();
    counted_to_upstream_ = 0;
    counted_to_client_ = 0;
    idle_deadline_ = time_point::max();
    deadline_ = time_point::max();
    upstream_.close();
}

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/session/tunnel.hpp ----
// #include "tinyproxy/session/udp_association.hpp"
// ---- begin tinyproxy/session/udp_association.hpp ----
// The tunnel of a session whose client asked for a SOCKS5 UDP ASSOCIATE: the association, which
// owns the UDP relay socket, takes datagrams from the client only, sends their data on, frames
// what the remotes answer, and keeps the idle deadline.

#include <chrono>       // the idle timeout
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes, counters
#include <deque>        // datagrams waiting for a name
#include <string>       // names resolved
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // remotes, candidates

#include <poll.h> // POLLIN

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/protocol/socks_udp.hpp"
// #include "tinyproxy/server.hpp"

namespace tinyproxy {
namespace detail {

/// One UDP association (RFC 1928 section 7). Datagrams from the client (its TCP address, and
/// the port its request named, or else the port its first datagram came from) carry the SOCKS
/// UDP header: their data goes to the destination the header names. Datagrams from a remote the
/// client has sent to go back to the client, framed with a header naming that remote. Anything
/// else is dropped and counted: another source, a fragment (FRAG != 0), a malformed header, a
/// name that does not resolve, a full socket buffer. One socket serves both families: an IPv4
/// client may send to IPv6 remotes and the other way round.
///
/// Names are resolved by the session's driver (wants_resolve(), one at a time), never here; the
/// datagrams for a name wait meanwhile (a bounded few), and the answers are kept for the
/// association's life (a bounded few), so a client that sends to one name pays one lookup.
class udp_association {
public:
    /// The most datagrams one on_ready() reads: an association busy both ways leaves the rest
    /// for the next call, so that other sessions of an event loop get their turn.
    static constexpr int max_datagrams_per_call = 64;
    /// The most datagrams waiting for a name, and the most names and remotes remembered.
    static constexpr std::size_t max_waiting = 32;
    static constexpr std::size_t max_names = 16;
    static constexpr std::size_t max_remotes = 64;

    /// Opens the relay socket: every address, both families, a free port (so that it can
    /// send wherever the client asks, from whichever address routes there); the reply names it
    /// on `local` (the address the client's TCP connection reached us on). `client`: the client's
    /// address on that connection. `source`: where the request says the datagrams will come from
    /// (0.0.0.0, :: or a name: the client's address; port 0: any port, the first datagram's).
    std::error_code open(const endpoint& local, const ip_address& client, const host_port& source,
                         const session_options& limits, time_point now);

    /// The relay's address, for the reply (never 0.0.0.0: `local` is an accepted socket's).
    endpoint relay_address() const noexcept { return relay_address_; }
    int fd() const noexcept { return socket_.native_handle(); }
    bool active() const noexcept { return static_cast<bool>(socket_); }
    static constexpr short events() noexcept { return POLLIN; }
    time_point deadline() const noexcept { return idle_deadline_; }
    /// The last on_ready() read all it may read in one call: call again before waiting.
    bool saturated() const noexcept { return saturated_; }

    /// Reads and relays the datagrams there are (at most max_datagrams_per_call), framing them
    /// in `scratch` (which must hold more than socks_udp_header_v6 bytes).
    void on_ready(std::uint8_t* scratch, std::size_t scratch_size, time_point now);

    /// A name is waiting to be resolved: resolve resolve_target() and call on_resolved().
    bool wants_resolve() const noexcept { return !waiting_.empty(); }
    const host_port& resolve_target() const noexcept { return waiting_.front().destination; }
    void on_resolved(const std::vector<endpoint>& candidates, std::error_code ec, time_point now);

    const datagram_counts& counts() const noexcept { return counts_; }
    /// Ends the association: its counts (and bytes) are added to `result`, the socket closes.
    void close(session_result& result) noexcept;

private:
    struct waiting_datagram {
        host_port destination;
        std::vector<std::uint8_t> data;
    };
    struct resolved_name {
        std::string name;
        ip_address address;
    };

    bool from_client(const endpoint& from) noexcept;
    bool known_remote(const endpoint& from) const noexcept;
    void remember_remote(const endpoint& to);
    void from_client_datagram(byte_view datagram, time_point now);
    void to_remote(const endpoint& to, byte_view data, time_point now);
    void to_client(const endpoint& from, std::uint8_t* framed, std::size_t size, time_point now);
    const ip_address* resolved(const std::string& name) const noexcept;
    void touch(time_point now) noexcept { idle_deadline_ = deadline_after(now, idle_timeout_); }

    datagram_socket socket_;
    endpoint relay_address_;
    ip_address client_address_;
    bool client_v6_ = false;        // the family the client reached us in: a name's first choice
    std::uint16_t client_port_ = 0; // 0 until the request or the first datagram says
    std::vector<endpoint> remotes_; // where the client has sent: who may answer
    std::size_t next_remote_ = 0;   // the one to replace once remotes_ is full
    std::deque<waiting_datagram> waiting_;
    std::vector<resolved_name> names_;
    datagram_counts counts_;
    traffic_counters* traffic_ = nullptr; // session_options::traffic, which outlives us
    std::chrono::milliseconds idle_timeout_{0};
    time_point idle_deadline_ = time_point::max();
    bool saturated_ = false;
};

// ---------------------------------------------------------------------------------------------

inline std::error_code udp_association::open(const endpoint& local, const ip_address& client,
                                             const host_port& source, const session_options& limits,
                                             time_point now) {
    std::error_code ec;
    socket_ = datagram_socket::open_any(ec);
    if (ec) {
        return ec;
    }
    relay_address_ = endpoint{local.address, socket_.local_endpoint().port};
    client_v6_ = local.address.is_v6();
    client_address_ = client;
    // The request narrows the source: its port when it names one. An address other than the
    // client's own cannot widen it (a client cannot open our relay to a third party).
    client_port_ = source.port;
    traffic_ = limits.traffic.get();
    idle_timeout_ = limits.idle_timeout;
    touch(now);
    return {};
}

inline void udp_association::on_ready(std::uint8_t* scratch, std::size_t scratch_size,
                                      time_point now) {
    saturated_ = false;
    if (scratch == nullptr || scratch_size <= socks_udp_header_v6 || !socket_) {
        return;
    }
    // Read after room for the largest header, so a remote's datagram is framed where it lies.
    std::uint8_t* room = scratch + socks_udp_header_v6;
    const std::size_t room_size = scratch_size - socks_udp_header_v6;
    for (int n = 0; n < max_datagrams_per_call; ++n) {
        endpoint from;
        std::error_code ec;
        std::size_t length = socket_.receive_from(room, room_size, from, ec);
        if (ec) {
            if (!would_block(ec)) {
                ++counts_.dropped_other; // an ICMP error for an earlier send: nothing to relay
                continue;
            }
            return;
        }
        if (length > room_size) {
            ++counts_.dropped_other; // cut short: larger than a read, never relayed in part
        } else if (from_client(from)) {
            from_client_datagram(byte_view{room, length}, now);
        } else if (known_remote(from)) {
            to_client(from, room, length, now);
        } else {
            ++counts_.dropped_source;
        }
    }
    saturated_ = true;
}

inline bool udp_association::from_client(const endpoint& from) noexcept {
    if (from.address != client_address_) {
        return false;
    }
    if (client_port_ == 0) {
        if (known_remote(from)) {
            return false; // a remote on the client's own host, answering
        }
        client_port_ = from.port; // the first datagram says where the client sends from
    }
    return from.port == client_port_;
}

inline bool udp_association::known_remote(const endpoint& from) const noexcept {
    for (const endpoint& remote : remotes_) {
        if (remote == from) {
            return true;
        }
    }
    return false;
}

inline void udp_association::remember_remote(const endpoint& to) {
    if (known_remote(to)) {
        return;
    }
    if (remotes_.size() < max_remotes) {
        remotes_.push_back(to);
        return;
    }
    remotes_[next_remote_] = to;
    next_remote_ = (next_remote_ + 1) % max_remotes;
}

inline void udp_association::from_client_datagram(byte_view datagram, time_point now) {
    socks_udp_datagram parsed;
    if (parse_socks_udp(datagram, parsed)) {
        ++counts_.dropped_malformed;
        return;
    }
    if (parsed.fragment != 0) {
        ++counts_.dropped_fragment; // reassembly is optional (RFC 1928 section 7): not served
        return;
    }
    if (auto numeric = parsed.address.numeric_address()) {
        to_remote(endpoint{*numeric, parsed.address.port}, parsed.data, now);
        return;
    }
    if (const ip_address* address = resolved(parsed.address.host)) {
        to_remote(endpoint{*address, parsed.address.port}, parsed.data, now);
        return;
    }
    if (waiting_.size() >= max_waiting) {
        ++counts_.dropped_other;
        return;
    }
    waiting_.push_back(
        waiting_datagram{std::move(parsed.address),
                         std::vector<std::uint8_t>(parsed.data.begin(), parsed.data.end())});
}

inline void udp_association::to_remote(const endpoint& to, byte_view data, time_point now) {
    if (to.address.is_v6() && !socket_.local_endpoint().address.is_v6()) {
        ++counts_.dropped_other; // a host without IPv6
        return;
    }
    std::error_code ec;
    socket_.send_to(data.data(), data.size(), to, ec);
    if (ec) {
        ++counts_.dropped_other; // a full buffer, or unreachable: UDP's own way of losing one
        return;
    }
    remember_remote(to);
    ++counts_.to_upstream;
    counts_.bytes_to_upstream += data.size();
    if (traffic_ != nullptr) {
        traffic_->to_upstream.fetch_add(data.size(), std::memory_order_relaxed);
    }
    touch(now);
}

inline void udp_association::to_client(const endpoint& from, std::uint8_t* data, std::size_t size,
                                       time_point now) {
    if (client_port_ == 0) {
        ++counts_.dropped_other; // cannot happen: a remote is known once the client has sent
        return;
    }
    const std::size_t header = socks_udp_header_size(from);
    std::uint8_t* framed = data - header; // the room on_ready() left before the data
    write_socks_udp_header(from, framed);
    std::error_code ec;
    socket_.send_to(framed, header + size, endpoint{client_address_, client_port_}, ec);
    if (ec) {
        ++counts_.dropped_other;
        return;
    }
    ++counts_.to_client;
    counts_.bytes_to_client += size;
    if (traffic_ != nullptr) {
        traffic_->to_client.fetch_add(size, std::memory_order_relaxed);
    }
    touch(now);
}

inline const ip_address* udp_association::resolved(const std::string& name) const noexcept {
    for (const resolved_name& known : names_) {
        if (known.name == name) {
            return &known.address;
        }
    }
    return nullptr;
}

inline void udp_association::on_resolved(const std::vector<endpoint>& candidates,
                                         std::error_code ec, time_point now) {
    if (waiting_.empty()) {
        return;
    }
    const std::string name = waiting_.front().destination.host;
    // The first address in the family the client reached us in ("localhost" is 127.0.0.1
    // for an IPv4 client, ::1 for an IPv6 one), else the first of any.
    const ip_address* chosen = nullptr;
    for (const endpoint& candidate : candidates) {
        if (!ec && chosen == nullptr && candidate.address.is_v6() == client_v6_) {
            chosen = &candidate.address;
        }
    }
    if (!ec && chosen == nullptr && !candidates.empty()) {
        chosen = &candidates.front().address;
    }
    if (chosen != nullptr) {
        if (names_.size() >= max_names) {
            names_.erase(names_.begin());
        }
        names_.push_back(resolved_name{name, *chosen});
    }
    // Every datagram waiting for this name goes now (or is dropped with it); the others wait.
    std::deque<waiting_datagram> others;
    for (waiting_datagram& d : waiting_) {
        if (d.destination.host != name) {
            others.push_back(std::move(d));
        } else if (chosen != nullptr) {
            to_remote(endpoint{*chosen, d.destination.port}, d.data, now);
        } else {
            ++counts_.dropped_other;
        }
    }
    waiting_ = std::move(others);
}

inline void udp_association::close(session_result& result) noexcept {
    if (!socket_) {
        return;
    }
    counts_.dropped_other += waiting_.size();
    waiting_.clear();
    result.bytes_to_upstream += counts_.bytes_to_upstream;
    result.bytes_to_client += counts_.bytes_to_client;
    result.datagrams = counts_;
    socket_.close();
}

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/session/udp_association.hpp ----
// #include "tinyproxy/session/bind_wait.hpp"
// ---- begin tinyproxy/session/bind_wait.hpp ----
// The connect part of a session whose client asked for a SOCKS BIND: a listener on the address
// the client reached us on, waiting under one deadline for one connection from the peer the
// client named.

#include <chrono>       // the connect timeout
#include <cstdint>      // counts
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // the expected addresses

#include <poll.h> // POLLIN

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"

namespace tinyproxy {
namespace detail {

/// Listens for the one connection a BIND asks for. A connection from any address other than
/// the expected ones is closed at once and the wait goes on; the first from an expected one
/// is the peer. No expected address (the client named 0.0.0.0 or ::): any peer.
class bind_wait {
public:
    /// Listens on `local`'s address, port 0; the deadline is `timeout` from `now`.
    std::error_code open(const endpoint& local, std::vector<ip_address> expected, time_point now,
                         std::chrono::milliseconds timeout);

    endpoint listening() const noexcept { return listener_.local_endpoint(); }
    int fd() const noexcept { return listener_ ? listener_.native_handle() : -1; }
    static constexpr short events() noexcept { return POLLIN; }
    time_point deadline() const noexcept { return deadline_; }

    /// Takes what is pending. True once the expected peer has connected (take_peer()); `ec`
    /// when the listener failed.
    bool on_ready(std::error_code& ec) noexcept;
    /// Once on_ready() said so: the peer's socket (the listener is closed) and its address.
    socket take_peer() noexcept {
        listener_.close();
        return std::move(peer_);
    }
    const endpoint& peer() const noexcept { return peer_address_; }
    /// Connections closed because they came from elsewhere.
    std::uint64_t refused() const noexcept { return refused_; }
    void close() noexcept {
        listener_.close();
        peer_.close();
    }

private:
    bool expected(const ip_address& address) const noexcept;

    listener listener_;
    std::vector<ip_address> expected_;
    time_point deadline_ = time_point::max();
    socket peer_;
    endpoint peer_address_;
    std::uint64_t refused_ = 0;
};

// ---------------------------------------------------------------------------------------------

inline std::error_code bind_wait::open(const endpoint& local, std::vector<ip_address> expected,
                                       time_point now, std::chrono::milliseconds timeout) {
    std::error_code ec;
    listener_ = listener::open(endpoint{local.address, 0}, 1, ec);
    if (ec) {
        return ec;
    }
    listener_.set_nonblocking(true, ec);
    if (ec) {
        listener_.close();
        return ec;
    }
    expected_ = std::move(expected);
    deadline_ = deadline_after(now, timeout);
    return {};
}

inline bool bind_wait::on_ready(std::error_code& ec) noexcept {
    ec.clear();
    // Bounded: a flood of strangers is closed a few at a time, between other sessions' turns.
    for (int n = 0; n < 16; ++n) {
        endpoint from;
        socket s = listener_.accept(from, true, ec);
        if (ec) {
            if (would_block(ec)) {
                ec.clear();
            }
            return false;
        }
        if (expected(from.address)) {
            peer_ = std::move(s);
            peer_address_ = from;
            return true;
        }
        ++refused_; // closed as `s` goes: not the peer the client named
    }
    return false;
}

inline bool bind_wait::expected(const ip_address& address) const noexcept {
    if (expected_.empty()) {
        return true;
    }
    for (const ip_address& a : expected_) {
        if (a == address) {
            return true;
        }
    }
    return false;
}

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/session/bind_wait.hpp ----
// #include "tinyproxy/session.hpp"
// ---- begin tinyproxy/session.hpp ----
// basic_session<ModeSession>: one proxied connection, composed of its three parts in turn: the
// handshake driver (the Mode decides where to go), the connector, and the tunnel.

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <memory>       // the parts of a BIND or UDP ASSOCIATE, made when one comes
#include <system_error> // std::error_code
#include <type_traits>  // std::is_nothrow_move_constructible
#include <utility>      // std::move
#include <vector>       // address lists, replies

#include <poll.h> // POLLOUT

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/mode/mode.hpp"
// #include "tinyproxy/relay.hpp"
// #include "tinyproxy/server.hpp"
// #include "tinyproxy/session/handshake.hpp"
// #include "tinyproxy/session/connector.hpp"
// #include "tinyproxy/session/tunnel.hpp"
// #include "tinyproxy/session/udp_association.hpp"
// #include "tinyproxy/session/bind_wait.hpp"

namespace tinyproxy {

/// One client's session, driven by readiness: the Session calls a policy makes (server.hpp),
/// for any Mode session (mode/mode.hpp). It keeps the client socket and the result, and hands
/// the client to each part in turn: the handshake driver until the Mode decides, the connector
/// until an upstream connects (or the Mode's failure reply is sent), then the tunnel. A step
/// of kind `request::bind` waits for a connection from the peer instead of connecting
/// (detail::bind_wait: the Mode is asked for two replies, the listening address and the peer),
/// and one of kind `request::udp_associate` relays datagrams (detail::udp_association) until
/// the client closes its connection or the association is idle for the idle timeout.
///
/// The entry points never throw: an exception from the Mode (out of memory, or a bug) ends
/// the session with `std::errc::not_enough_memory`, so one client cannot stop an event loop.
template <class ModeSession>
class basic_session {
public:
    /// `client_setup`: what is already set on `client`; the session sets the rest (it makes
    /// the socket non-blocking in start(), and turns Nagle off once it relays).
    /// `serial`: the client's number, for the stages (tunnel_info::serial).
    basic_session(
        socket client, ModeSession mode, const session_options& limits,
        const endpoint& client_address = {}, client_socket_setup client_setup = {},
        std::uint64_t serial = 0) noexcept(std::is_nothrow_move_constructible<ModeSession>::value)
        : client_(std::move(client)), handshake_(std::move(mode)), limits_(limits),
          client_setup_(client_setup), serial_(serial) {
        result_.client = client_address;
    }

    /// Starts the handshake; `now` begins the handshake deadline.
    void start(time_point now) noexcept;

    int client_fd() const noexcept { return client_.native_handle(); }
    /// -1 until an upstream connection is being made.
    int upstream_fd() const noexcept;
    std::uint32_t upstream_serial() const noexcept { return connector_.upstream_serial(); }
    short client_events() const noexcept;
    short upstream_events() const noexcept;
    /// Whether to poll a socket even when its events are 0 (to hear of a reset).
    bool watch_client() const noexcept {
        return state_ == state::relaying                                  ? tunnel_.watch_client()
               : state_ == state::associating || state_ == state::binding ? true
                                                                          : client_events() != 0;
    }
    bool watch_upstream() const noexcept {
        return state_ == state::relaying ? tunnel_.watch_upstream() : upstream_events() != 0;
    }
    time_point deadline() const noexcept;

    bool wants_resolve() const noexcept {
        return state_ == state::resolving ||
               (state_ == state::associating && rare_->association.wants_resolve());
    }
    /// Where the Mode sent the client (empty before it decided), or the name a datagram of a
    /// UDP association is for.
    const host_port& resolve_target() const noexcept {
        return state_ == state::associating ? rare_->association.resolve_target()
               : resolving_bind()           ? rare_->bind_target
                                            : connector_.target();
    }
    void on_resolved(std::vector<endpoint> candidates, std::error_code ec, time_point now) noexcept;

    /// Readiness (revents) for each socket; 0 for one that is not ready. `rounds`: the most
    /// reads per direction a relaying session makes in this call (relay::pump).
    void on_ready(short client_revents, short upstream_revents, time_point now,
                  std::uint8_t* scratch, std::size_t scratch_size,
                  int rounds = relay::max_rounds) noexcept;
    /// Call when `now` has reached `deadline()`.
    void on_deadline(time_point now) noexcept;
    /// Ends the session at once (the proxy is stopping, or the driver failed).
    void abort(std::error_code why) noexcept { finish(why); }

    /// Resolving or connecting upstream: the client is not read meanwhile.
    bool connecting() const noexcept {
        return state_ == state::resolving || state_ == state::connecting;
    }
    bool done() const noexcept { return state_ == state::done; }
    /// start() read the client until it had nothing more (the connect's probe): a driver that
    /// would read the client at once, before its first wait, would find nothing.
    bool client_read_dry() const noexcept { return client_read_dry_; }
    /// The last on_ready() moved as much as one call may (relay::saturated()): a bulk transfer
    /// that has more to move. An event loop serves the other tunnels first.
    bool saturated() const noexcept {
        return (state_ == state::relaying && tunnel_.saturated()) ||
               (state_ == state::associating && rare_->association.saturated());
    }
    const session_result& result() const noexcept { return result_; }

private:
    enum class state {
        handshaking, // reading the client until the Mode decides
        resolving,   // waiting for the driver to resolve the target
        connecting,  // a non-blocking connect in progress
        relaying,    // tunnel up
        binding,     // a BIND: waiting for the peer to connect
        associating, // a UDP ASSOCIATE: relaying datagrams
        failing,     // sending the Mode's failure reply, then closing
        done,
    };

    void apply(mode_step step, time_point now);
    /// The bytes to probe the connect with (detail::connector): those the Mode kept for
    /// upstream, or, when it decided without reading the client (forwarding), what the client
    /// has sent by now, in one read that does not wait. None when the tunnel will have stages:
    /// they see every byte first. False when that read found the client reset (finished).
    bool take_probe(std::vector<std::uint8_t>& probe);
    /// Acts on where the connector stands: wait, start the tunnel, or send the failure reply.
    void follow(detail::connect_status status, time_point now);
    void start_tunnel(time_point now);
    /// A UDP ASSOCIATE: the relay socket opens on the address the client reached us on.
    void start_association(const host_port& source, time_point now);
    /// A BIND: the listener opens there too, once the expected peer's addresses are known.
    void start_bind(std::vector<endpoint> expected, time_point now);
    /// The expected peer has connected: the Mode's second reply, then a tunnel to it.
    void bound(time_point now);
    /// The client's readiness while binding or associating: the replies owed go out, and a
    /// close (or, for an association, any bytes) is read.
    void control_ready(short client_revents, std::uint8_t* scratch, std::size_t scratch_size);
    /// The tunnel handed the client back (stage_context::hand_back): the upstream closes, and
    /// the Mode decides again, under a new handshake deadline.
    void take_back(time_point now);
    /// The tunnel has started: limits_.stages gives it its stages (or ends it, by throwing).
    void give_stages();
    void fail_with_reply(std::error_code why, std::vector<std::uint8_t> reply, time_point now);
    void relay_ready(short client_revents, short upstream_revents, time_point now,
                     std::uint8_t* scratch, std::size_t scratch_size,
                     int rounds = relay::max_rounds);
    void finish(std::error_code why) noexcept;
    /// A Mode (or a buffer) threw in start(), on_resolved(), on_ready() or on_deadline():
    /// this session ends, and whoever drives it (an event loop of thousands) goes on.
    void ended_by_exception() noexcept {
        finish(std::make_error_code(std::errc::not_enough_memory));
    }

    socket client_;
    detail::handshake_driver<ModeSession> handshake_;
    detail::connector connector_;
    detail::tunnel tunnel_;
    /// The parts only a BIND or a UDP ASSOCIATE needs, made when one comes: most sessions are
    /// tunnels, and each of thousands held idle would otherwise carry them (two fifths of the
    /// session's size; bench/README.md, "KB per held connection").
    struct rare_parts {
        detail::udp_association association;
        detail::bind_wait bind_wait;
        host_port bind_target; // a BIND's peer, while its name is resolved
    };
    rare_parts& parts() {
        if (!rare_) {
            rare_ = std::make_unique<rare_parts>();
        }
        return *rare_;
    }
    /// A BIND's peer is being resolved (state::resolving for it, not for a connect).
    bool resolving_bind() const noexcept { return rare_ && !rare_->bind_target.host.empty(); }
    std::unique_ptr<rare_parts> rare_; // null until a BIND or a UDP ASSOCIATE
    session_options limits_;
    client_socket_setup client_setup_;
    std::uint64_t serial_;
    state state_ = state::handshaking;
    session_result result_;
    time_point now_{};             // the latest time a driver passed in
    bool client_read_dry_ = false; // see client_read_dry()
};

// ---------------------------------------------------------------------------------------------

template <class ModeSession>
void basic_session<ModeSession>::start(time_point now) noexcept try {
    now_ = now;
    if (!client_setup_.nonblocking) {
        std::error_code ec;
        client_.set_nonblocking(true, ec);
        if (ec) {
            finish(ec);
            return;
        }
    }
    result_.started = now;
    apply(handshake_.start(now, limits_.handshake_timeout), now);
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
int basic_session<ModeSession>::upstream_fd() const noexcept {
    switch (state_) {
    case state::connecting:
        return connector_.upstream_fd();
    case state::relaying:
        return tunnel_.upstream_fd();
    case state::binding:
        return rare_->bind_wait.fd();
    case state::associating:
        return rare_->association.fd();
    default:
        return -1;
    }
}

template <class ModeSession>
short basic_session<ModeSession>::client_events() const noexcept {
    switch (state_) {
    case state::handshaking:
        return handshake_.client_events();
    case state::failing:
        return POLLOUT;
    case state::relaying:
        return tunnel_.client_events();
    case state::binding: // not read until the tunnel: only its close is heard, where it can be
        return handshake_.owes_client() ? POLLOUT : detail::peer_closed_event;
    case state::associating:
        return handshake_.owes_client() ? POLLOUT : POLLIN | detail::peer_closed_event;
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
        return tunnel_.upstream_events();
    case state::binding:
        return detail::bind_wait::events();
    case state::associating:
        return detail::udp_association::events();
    default:
        return 0;
    }
}

template <class ModeSession>
time_point basic_session<ModeSession>::deadline() const noexcept {
    switch (state_) {
    case state::handshaking:
    case state::failing:
        return handshake_.deadline();
    case state::resolving: // a BIND's peer is resolved under the handshake's deadline
        return resolving_bind() ? handshake_.deadline() : connector_.deadline();
    case state::connecting:
        return connector_.deadline();
    case state::relaying:
        return tunnel_.deadline();
    case state::binding:
        return rare_->bind_wait.deadline();
    case state::associating:
        return rare_->association.deadline();
    default:
        return time_point::max();
    }
}

template <class ModeSession>
void basic_session<ModeSession>::apply(mode_step step, time_point now) {
    if constexpr (detail::reports_client<ModeSession>::value) {
        if (const endpoint* client = handshake_.mode().client_address()) {
            result_.client = *client;
        }
    }
    handshake_.take(step);
    switch (step.what) {
    case mode_step::action::need_more:
        if (std::error_code ec = handshake_.send(client_)) {
            finish(ec);
        }
        return;
    case mode_step::action::connect:
        result_.stage = session_result::stage_type::connect;
        result_.target = step.target;
        if (step.kind == mode_step::request::udp_associate) {
            start_association(step.target, now);
            return;
        }
        if (step.kind == mode_step::request::bind) {
            // The peer to wait for, not one to connect to: only a name needs the driver.
            if (auto numeric = step.target.numeric_address()) {
                start_bind({endpoint{*numeric, step.target.port}}, now);
            } else {
                parts().bind_target = std::move(step.target);
                state_ = state::resolving;
            }
            return;
        }
        if (std::vector<std::uint8_t> probe; take_probe(probe)) {
            follow(connector_.begin(std::move(step.target), now, limits_.connect_timeout,
                                    std::move(probe)),
                   now);
        }
        return;
    case mode_step::action::fail:
        fail_with_reply(step.error ? step.error : make_error_code(errc::protocol_error), {}, now);
        return;
    }
}

template <class ModeSession>
bool basic_session<ModeSession>::take_probe(std::vector<std::uint8_t>& probe) {
    if (limits_.stages || detail::gives_stages<ModeSession>::value) {
        return true;
    }
    probe = handshake_.take_to_upstream();
    if (!probe.empty() || handshake_.heard_client()) {
        return true; // a client told nothing yet (SOCKS, CONNECT) waits: nothing to read
    }
    // Enough for a first request or a TLS ClientHello; the relay reads whatever follows. Read
    // straight into the probe, on the heap: a stack buffer would push every call below it a
    // page deeper, and a thread keeps each stack page it has touched (thread_policy). The
    // connector frees it once the tunnel has it.
    constexpr std::size_t probe_size = 2048;
    probe.resize(probe_size);
    std::error_code ec;
    std::size_t n = client_.receive(probe.data(), probe.size(), ec);
    if (ec && !detail::would_block(ec)) {
        finish(ec); // reset before its upstream was even tried: nothing to pass it on to
        return false;
    }
    client_read_dry_ = ec || (n != 0 && n < probe_size);
    if (ec || n == 0) {
        // Nothing to send (at end of stream the relay reads the end again and passes it on),
        // and nothing to hold while the connect is in progress.
        std::vector<std::uint8_t>().swap(probe);
    } else {
        probe.resize(n);
    }
    return true;
}

template <class ModeSession>
void basic_session<ModeSession>::follow(detail::connect_status status, time_point now) {
    switch (status) {
    case detail::connect_status::resolving:
        state_ = state::resolving;
        return;
    case detail::connect_status::connecting:
        state_ = state::connecting;
        return;
    case detail::connect_status::connected:
        start_tunnel(now);
        return;
    case detail::connect_status::connected_at_once:
        start_tunnel(now);
        // The Mode's reply (and any pipelined bytes) go now. Told nothing is ready, the pump
        // reads nothing, so it needs no scratch buffer: it only sends.
        if (state_ == state::relaying) { // not ended by its stage factory
            relay_ready(0, 0, now, nullptr, 0);
        }
        return;
    case detail::connect_status::failed: {
        // The one place a connect that failed (refused, unresolvable, timed out) is answered.
        std::error_code why = connector_.error();
        fail_with_reply(why, handshake_.mode().on_connected(why, endpoint{}, endpoint{}), now);
        return;
    }
    }
}

template <class ModeSession>
void basic_session<ModeSession>::on_resolved(std::vector<endpoint> candidates, std::error_code ec,
                                             time_point now) noexcept try {
    now_ = now;
    // Before the Mode decided, too: a driver (a test, say) may hand it addresses of its own.
    if (state_ == state::associating) {
        rare_->association.on_resolved(candidates, ec, now);
        return;
    }
    if (state_ != state::resolving && state_ != state::handshaking) {
        return; // ended meanwhile
    }
    if (resolving_bind()) {
        rare_->bind_target = host_port{};
        if (ec || candidates.empty()) {
            std::error_code why = make_error_code(errc::name_not_resolved);
            fail_with_reply(why, handshake_.mode().on_connected(why, endpoint{}, endpoint{}), now);
            return;
        }
        start_bind(std::move(candidates), now);
        return;
    }
    follow(connector_.on_resolved(std::move(candidates), ec), now);
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
void basic_session<ModeSession>::start_tunnel(time_point now) {
    endpoint local;
    socket upstream = connector_.take_upstream();
    if constexpr (detail::uses_local_endpoint<ModeSession>::value) {
        std::error_code ignored;
        local = upstream.local_endpoint(ignored);
    }
    const endpoint& remote = connector_.connected_to();
    result_.upstream = remote;
    std::vector<std::uint8_t> reply = handshake_.mode().on_connected({}, local, remote);
    result_.connected = true;
    result_.stage = session_result::stage_type::relay;
    // What the Mode kept for upstream, unless it went to the connector as the probe.
    byte_view to_upstream = handshake_.to_upstream().empty() ? connector_.probe_unsent()
                                                             : byte_view{handshake_.to_upstream()};
    tunnel_.start(client_, client_setup_.nodelay, std::move(upstream),
                  handshake_.unsent_to_client(), reply, to_upstream, connector_.probe_sent(),
                  limits_, now);
    connector_.release_probe(); // the relay has what it still owes upstream
    handshake_.release();
    state_ = state::relaying;
    if (limits_.stages || detail::gives_stages<ModeSession>::value) {
        give_stages();
    }
}

template <class ModeSession>
void basic_session<ModeSession>::start_association(const host_port& source, time_point now) {
    result_.udp = true;
    std::error_code ec;
    // The relay listens where the client reached us, and takes datagrams from where it is.
    endpoint local = client_.local_endpoint(ec);
    // The client as its result names it: a PROXY header's source, whose datagrams come straight
    // to us, not through the balancer that carried its TCP connection.
    endpoint client = result_.client;
    if (!ec && client == endpoint{}) {
        client = client_.remote_endpoint(ec);
    }
    if (!ec) {
        ec = parts().association.open(local, client.address, source, limits_, now);
    }
    if (ec) {
        fail_with_reply(ec, handshake_.mode().on_connected(ec, endpoint{}, endpoint{}), now);
        return;
    }
    result_.upstream = rare_->association.relay_address();
    result_.connected = true;
    result_.stage = session_result::stage_type::relay;
    handshake_.owe(
        handshake_.mode().on_connected({}, rare_->association.relay_address(), endpoint{}));
    state_ = state::associating;
    if (std::error_code send_error = handshake_.send(client_)) {
        finish(send_error);
    }
}

template <class ModeSession>
void basic_session<ModeSession>::start_bind(std::vector<endpoint> expected, time_point now) {
    std::vector<ip_address> addresses;
    for (const endpoint& e : expected) {
        if (!e.address.is_unspecified()) { // 0.0.0.0 or ::: the client does not know; any peer
            addresses.push_back(e.address);
        }
    }
    std::error_code ec;
    endpoint local = client_.local_endpoint(ec);
    if (!ec) {
        ec = parts().bind_wait.open(local, std::move(addresses), now, limits_.connect_timeout);
    }
    if (ec) {
        fail_with_reply(ec, handshake_.mode().on_connected(ec, endpoint{}, endpoint{}), now);
        return;
    }
    handshake_.owe(handshake_.mode().on_connected({}, rare_->bind_wait.listening(), endpoint{}));
    state_ = state::binding;
    if (std::error_code send_error = handshake_.send(client_)) {
        finish(send_error);
    }
}

template <class ModeSession>
void basic_session<ModeSession>::bound(time_point now) {
    socket peer = rare_->bind_wait.take_peer();
    const endpoint remote = rare_->bind_wait.peer();
    result_.upstream = remote;
    result_.connected = true;
    result_.stage = session_result::stage_type::relay;
    std::error_code ignored;
    endpoint local = peer.local_endpoint(ignored);
    std::vector<std::uint8_t> reply = handshake_.mode().on_connected({}, local, remote);
    tunnel_.start(client_, client_setup_.nodelay, std::move(peer), handshake_.unsent_to_client(),
                  reply, handshake_.to_upstream(), 0, limits_, now);
    handshake_.release();
    state_ = state::relaying;
    if (limits_.stages || detail::gives_stages<ModeSession>::value) {
        give_stages();
    }
    if (state_ == state::relaying) {
        relay_ready(0, 0, now, nullptr, 0); // the second reply goes now
    }
}

template <class ModeSession>
void basic_session<ModeSession>::control_ready(short client_revents, std::uint8_t* scratch,
                                               std::size_t scratch_size) {
    if (handshake_.owes_client()) {
        if (std::error_code ec = handshake_.send(client_)) {
            finish(ec);
        }
        return;
    }
    if (state_ == state::binding) {
        // Not read (its bytes are for the peer, later): only a hang-up ends the wait.
        if ((client_revents & (POLLHUP | POLLERR | detail::peer_closed_event)) != 0) {
            finish(make_error_code(errc::handshake_incomplete));
        }
        return;
    }
    // An association's control connection carries nothing more; its close ends the association
    // (RFC 1928 section 7), and whatever it sends is read and let go.
    for (int n = 0; n < 4; ++n) {
        std::error_code ec;
        std::size_t got = client_.receive(scratch, scratch_size, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                finish(ec);
            }
            return;
        }
        if (got == 0) {
            finish({});
            return;
        }
    }
}

template <class ModeSession>
void basic_session<ModeSession>::give_stages() {
    tunnel_info info{serial_, result_.client, result_.target, result_.upstream};
    tunnel_stages stages;
    try {
        // The Mode's own stages see the bytes first each way; the factory's come after them.
        if constexpr (detail::gives_stages<ModeSession>::value) {
            handshake_.mode().stages(info, stages);
        }
        if (limits_.stages) {
            limits_.stages(info, stages);
        }
    } catch (...) { // the factory could not: this tunnel ends, before a byte went through
        finish(make_error_code(errc::stage_failed));
        return;
    }
    result_.stages = std::move(stages.label);
    tunnel_.set_stages(std::move(stages));
}

template <class ModeSession>
void basic_session<ModeSession>::fail_with_reply(std::error_code why,
                                                 std::vector<std::uint8_t> reply, time_point now) {
    result_.error = why;
    handshake_.close_with(std::move(reply), now);
    if (!handshake_.owes_client()) {
        finish(why);
        return;
    }
    state_ = state::failing;
    std::error_code ec = handshake_.send(client_);
    if (ec || !handshake_.owes_client()) {
        finish(why);
    }
}

template <class ModeSession>
void basic_session<ModeSession>::relay_ready(short client_revents, short upstream_revents,
                                             time_point now, std::uint8_t* scratch,
                                             std::size_t scratch_size, int rounds) {
    if (!tunnel_.pump(client_, client_revents, upstream_revents, now, scratch, scratch_size,
                      rounds)) {
        return;
    }
    if (tunnel_.handed_back()) {
        take_back(now);
    } else {
        finish(tunnel_.error());
    }
}

template <class ModeSession>
void basic_session<ModeSession>::take_back(time_point now) {
    tunnel_.close(result_); // its byte counts are added to the session's
    if constexpr (detail::takes_back<ModeSession>::value) {
        state_ = state::handshaking;
        result_.stage = session_result::stage_type::handshake;
        apply(handshake_.resume(now, limits_.handshake_timeout), now);
    } else { // a stage of the user's handed back a client its Mode cannot take: as a close
        finish({});
    }
}

template <class ModeSession>
void basic_session<ModeSession>::on_ready(short client_revents, short upstream_revents,
                                          time_point now, std::uint8_t* scratch,
                                          std::size_t scratch_size, int rounds) noexcept try {
    now_ = now;
    switch (state_) {
    case state::handshaking: {
        std::error_code ec;
        auto step = handshake_.on_ready(client_, client_revents, scratch, scratch_size, ec);
        if (ec) {
            finish(ec);
        } else if (step) {
            apply(std::move(*step), now);
        }
        return;
    }
    case state::connecting:
        if (upstream_revents != 0) {
            follow(connector_.on_ready(upstream_revents), now);
            if (state_ == state::relaying) {
                short first = tunnel_.first_events();
                relay_ready(first, first, now, scratch, scratch_size, rounds);
            }
        }
        return;
    case state::relaying:
        if (client_revents != 0 || upstream_revents != 0) {
            relay_ready(client_revents, upstream_revents, now, scratch, scratch_size, rounds);
        }
        return;
    case state::binding: {
        if (client_revents != 0) {
            control_ready(client_revents, scratch, scratch_size);
        }
        if (state_ != state::binding || upstream_revents == 0) {
            return;
        }
        std::error_code ec;
        if (rare_->bind_wait.on_ready(ec)) {
            bound(now);
        } else if (ec) {
            fail_with_reply(ec, handshake_.mode().on_connected(ec, endpoint{}, endpoint{}), now);
        }
        return;
    }
    case state::associating:
        if (client_revents != 0) {
            control_ready(client_revents, scratch, scratch_size);
        }
        if (state_ == state::associating && upstream_revents != 0) {
            rare_->association.on_ready(scratch, scratch_size, now);
        }
        return;
    case state::failing:
        if (client_revents != 0) {
            std::error_code ec = handshake_.send(client_);
            if (ec || !handshake_.owes_client()) {
                finish(result_.error);
            }
        }
        return;
    default:
        return;
    }
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
void basic_session<ModeSession>::on_deadline(time_point now) noexcept try {
    now_ = now;
    if (now < deadline()) {
        return;
    }
    switch (state_) {
    case state::handshaking:
        finish(make_error_code(errc::handshake_timeout));
        return;
    case state::resolving:
        if (resolving_bind()) { // a BIND's peer did not resolve in time
            rare_->bind_target = host_port{};
            std::error_code why = make_error_code(errc::connect_timeout);
            fail_with_reply(why, handshake_.mode().on_connected(why, endpoint{}, endpoint{}), now);
            return;
        }
        follow(connector_.on_deadline(), now);
        return;
    case state::connecting:
        follow(connector_.on_deadline(), now);
        return;
    case state::binding: { // no peer came in time
        rare_->bind_wait.close();
        std::error_code why = make_error_code(errc::connect_timeout);
        fail_with_reply(why, handshake_.mode().on_connected(why, endpoint{}, endpoint{}), now);
        return;
    }
    case state::associating:
        finish(make_error_code(errc::idle_timeout));
        return;
    case state::relaying:
        if (tunnel_.relay_due(now)) {
            relay_ready(0, 0, now, nullptr, 0); // a stage's time has come: no socket is ready
            return;
        }
        finish(make_error_code(errc::idle_timeout));
        return;
    default:
        finish(result_.error ? result_.error : make_error_code(errc::handshake_timeout));
        return;
    }
} catch (...) {
    ended_by_exception();
}

template <class ModeSession>
void basic_session<ModeSession>::finish(std::error_code why) noexcept {
    if (state_ == state::done) {
        return;
    }
    tunnel_.close(result_); // its relay's pipes, if it spliced, close with the sockets
    if (rare_) {
        rare_->association.close(result_); // the UDP socket closes with the control connection
        rare_->bind_wait.close();
    }
    connector_.close();
    if (!result_.error) {
        result_.error = why;
    }
    state_ = state::done;
    result_.ended = now_;
    client_.close();
}

} // namespace tinyproxy
// ---- end tinyproxy/session.hpp ----
// #include "tinyproxy/session/blocking.hpp"
// ---- begin tinyproxy/session/blocking.hpp ----
// run_session: the blocking driver of one session on the calling thread (thread and fork
// policies, and basic_proxy's serve()), waiting with poll(2) and resolving names itself.

#include <cstddef>      // std::size_t
#include <cstdint>      // the scratch buffer
#include <memory>       // the scratch buffer
#include <system_error> // std::error_code
#include <utility>      // std::move

#include <poll.h> // pollfd

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/server.hpp"
// #include "tinyproxy/session.hpp"

namespace tinyproxy {

/// Runs one session to its end on the calling thread, waiting with poll(2). It ends early when
/// `stop_fd` becomes readable (the proxy's stop signal; -1 for none). Names are resolved here,
/// blocking this thread only.
template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd,
                           std::size_t scratch_size);
/// The same, reading into the caller's `scratch` (`scratch_size` bytes, at least 1) instead of
/// a buffer of its own: a fork child passes one from a fresh mapping (see fork_policy).
template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd, std::uint8_t* scratch,
                           std::size_t scratch_size);

// ---------------------------------------------------------------------------------------------

template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd,
                           std::size_t scratch_size) {
    // Not zero-filled: a std::vector would write every byte, and so make a thread or process
    // that serves an idle client pay for the whole buffer in memory. Pages nobody reads into
    // are never touched.
    const std::size_t size = scratch_size == 0 ? 1 : scratch_size;
    std::unique_ptr<std::uint8_t[]> scratch(new std::uint8_t[size]);
    return run_session(session, stop_fd, scratch.get(), size);
}

template <class ModeSession>
session_result run_session(basic_session<ModeSession>& session, int stop_fd, std::uint8_t* scratch,
                           std::size_t size) {
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
        session.on_ready(fds[1].revents, fds[2].revents, now, scratch, size);
        if (!session.done() && now >= session.deadline()) {
            session.on_deadline(now);
        }
    }
    return session.result();
}

} // namespace tinyproxy
// ---- end tinyproxy/session/blocking.hpp ----
// #include "tinyproxy/policy/thread.hpp"
// ---- begin tinyproxy/policy/thread.hpp ----
// thread_policy: one thread per client.

#include <algorithm>          // std::max
#include <chrono>             // the joining tick, idle threads' wait
#include <condition_variable> // idle threads wait for a client
#include <cstddef>            // std::size_t
#include <cstdint>            // std::uint8_t, std::uintptr_t
#include <deque>              // clients handed to idle threads
#include <list>               // threads, stable iterators
#include <mutex>              // the hand-over
#include <utility>            // std::move
#include <vector>             // threads that ended

#include <limits.h>   // PTHREAD_STACK_MIN
#include <pthread.h>  // threads on a stack we map
#include <sys/mman.h> // mprotect: the guard page
#include <unistd.h>   // sysconf(_SC_PAGESIZE)

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/server.hpp"

namespace tinyproxy {

/// A thread per client: simple, and every session may block (a Mode that resolves names or
/// calls a slow service costs only its own thread). Pick it for tens to a few thousand
/// concurrent clients; each costs a thread stack. A thread that finished its session serves
/// the next client if one comes within `keep_idle_thread`, instead of a new thread.
///
/// Memory: a thread costs the stack pages its sessions touch (with glibc the top one holds the
/// thread's control block and TLS) and the pages its scratch buffer is read into. The policy
/// maps each thread's stack itself, with the scratch buffer (session_options::buffer_size)
/// right above the stack's top, its first 128 bytes in the stack's top page: a small read, as
/// an idle tunnel's keepalives are, costs no page of its own; nor does the buffer take 64 KiB
/// from a malloc arena per thread.
///
/// Of the Server (the policy interface: server.hpp) it calls accept_next(), serve(client,
/// scratch, size), each thread reading into a buffer of `limits().buffer_size` bytes that it
/// maps itself, and session_ended() for a client it could not serve.
class thread_policy {
public:
    /// How long a thread that has finished a session waits for the next client before it
    /// ends. Reusing a waiting thread saves creating one per client (tens of microseconds,
    /// far more on some VMs); 0 ends each thread with its session.
    std::chrono::milliseconds keep_idle_thread{2000};
    /// Each thread's stack, in bytes; 0 takes the size new threads get by default (pthread's
    /// default attributes: on Linux the stack rlimit, usually 8 MiB). At least
    /// PTHREAD_STACK_MIN, and 4 MiB under ThreadSanitizer, which wants room of its own there.
    /// Only touched pages cost memory, but each thread reserves this much address space, and
    /// page tables to match. A session of the library's own Modes goes about 8 KiB deep (4 KiB
    /// of it glibc's thread control block and TLS); resolving a host name with getaddrinfo
    /// takes tens of KiB more, and a Mode or an event hook of yours whatever it takes: leave
    /// room for all of it.
    std::size_t stack_size = 0;

    template <class Server>
    void run(Server& server);
};

namespace detail {

/// The memory of one session thread: a guard page, its stack, and above the stack's top the
/// scratch buffer its sessions read into. The scratch buffer's first `shared_bytes` lie in the
/// stack's top page (with glibc, the thread control block's), which every thread touches
/// anyway: a read that small, what an idle tunnel's keepalives mostly are, costs no page of its
/// own. Few enough that the stack's own pages stay as they were for almost every depth.
class thread_memory {
public:
    static constexpr std::size_t shared_bytes = 128;

    thread_memory() noexcept = default;
    thread_memory(std::size_t stack_size, std::size_t scratch_size) noexcept {
        const std::size_t page = page_size();
        mapped_buffer mapping(round_up(page + stack_size + scratch_size + 2 * page, page));
        if (mapping.data() == nullptr || ::mprotect(mapping.data(), page, PROT_NONE) != 0) {
            return; // no memory, or no guard page below the stack
        }
        auto end = reinterpret_cast<std::uintptr_t>(mapping.data()) + mapping.size();
        std::uintptr_t scratch = (end - scratch_size) / page * page - shared_bytes;
        scratch_ = reinterpret_cast<std::uint8_t*>(scratch);
        scratch_size_ = scratch_size;
        stack_ = mapping.data() + page;
        mapping_ = std::move(mapping);
    }

    explicit operator bool() const noexcept { return mapping_.data() != nullptr; }
    void* stack() const noexcept { return stack_; }
    std::size_t stack_size() const noexcept { return static_cast<std::size_t>(scratch_ - stack_); }
    std::uint8_t* scratch() const noexcept { return scratch_; }
    std::size_t scratch_size() const noexcept { return scratch_size_; }

    /// The stack size new threads get by default.
    static std::size_t default_stack_size() noexcept {
        std::size_t size = 0;
        pthread_attr_t attr;
        if (pthread_attr_init(&attr) == 0) {
            pthread_attr_getstacksize(&attr, &size);
            pthread_attr_destroy(&attr);
        }
        return size != 0 ? size : std::size_t{8} << 20;
    }

private:
    static std::size_t page_size() noexcept {
        long page = ::sysconf(_SC_PAGESIZE);
        return page > 0 ? static_cast<std::size_t>(page) : 4096;
    }
    static std::size_t round_up(std::size_t n, std::size_t to) noexcept {
        return (n + to - 1) / to * to;
    }

    mapped_buffer mapping_; // guard page, stack, scratch buffer
    std::uint8_t* stack_ = nullptr;
    std::uint8_t* scratch_ = nullptr;
    std::size_t scratch_size_ = 0;
};

/// The threads of one thread_policy run: a thread per session in flight, plus threads that
/// finished one and wait a while for the next client (handed over through `waiting_`).
template <class Server>
class thread_crew {
public:
    thread_crew(Server& server, std::chrono::milliseconds keep_idle, std::size_t stack_size)
        : server_(server), keep_idle_(keep_idle),
          stack_size_(std::max<std::size_t>(
              stack_size != 0 ? stack_size : thread_memory::default_stack_size(),
              std::max<std::size_t>(static_cast<std::size_t>(PTHREAD_STACK_MIN),
                                    TINYPROXY_SANITIZER_MIN_STACK))),
          scratch_size_(std::max<std::size_t>(server.limits().buffer_size, 1)) {}
    thread_crew(const thread_crew&) = delete;
    thread_crew& operator=(const thread_crew&) = delete;

    /// Serves `client` on an idle thread if one waits, else on a new one.
    void dispatch(accepted_client client);
    /// Joins threads that have ended (from the accepting thread only).
    void join_ended();
    /// Wakes every idle thread to end, and joins them all; sessions end by the stop signal.
    void stop_and_join();

private:
    struct worker;
    using thread_list = std::list<worker>;
    /// One thread: its memory, and the client it serves next. The thread reads only its own
    /// worker; the accepting thread erases it once it has joined the thread.
    struct worker {
        thread_crew* crew = nullptr;
        typename thread_list::iterator self;
        thread_memory memory;
        accepted_client first;
        pthread_t id{};
    };

    static void* entry(void* w) {
        auto* self = static_cast<worker*>(w);
        self->crew->work(*self);
        return nullptr;
    }
    void work(worker& self);
    /// Waits up to keep_idle_ for a client handed over, into `self.first`; false (and the
    /// thread's end recorded) if none came.
    [[gnu::noinline]] bool next_client(worker& self);

    Server& server_;
    const std::chrono::milliseconds keep_idle_;
    const std::size_t stack_size_;
    const std::size_t scratch_size_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<accepted_client> waiting_; // clients handed to idle threads, not yet taken
    std::size_t idle_ = 0;                // threads waiting for a client
    bool stopping_ = false;
    thread_list threads_; // the accepting thread's: every thread started
    std::vector<typename thread_list::iterator> ended_; // threads done, to join (under mutex_)
};

template <class Server>
void thread_crew<Server>::dispatch(accepted_client client) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (idle_ > waiting_.size()) {
            try {
                waiting_.push_back(std::move(client));
                wake_.notify_one();
                return;
            } catch (...) { // no memory to queue it: try a thread of its own below
            }
        }
    }
    auto self = threads_.end();
    bool started = false;
    try {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            ended_.reserve(threads_.size() + 1); // so that a thread can always report its end
        }
        self = threads_.emplace(threads_.end());
        self->crew = this;
        self->self = self;
        self->memory = thread_memory(stack_size_, scratch_size_);
        self->first = std::move(client);
        pthread_attr_t attr;
        if (self->memory && pthread_attr_init(&attr) == 0) {
            started = pthread_attr_setstack(&attr, self->memory.stack(),
                                            self->memory.stack_size()) == 0 &&
                      pthread_create(&self->id, &attr, &thread_crew::entry, &*self) == 0;
            pthread_attr_destroy(&attr);
        }
    } catch (...) {
    }
    if (!started) {
        // No thread to be had (resource limits): the client is closed.
        if (self != threads_.end()) {
            threads_.erase(self);
        }
        session_result refused;
        refused.error = std::make_error_code(std::errc::resource_unavailable_try_again);
        server_.session_ended(refused);
    }
}

template <class Server>
void thread_crew<Server>::work(worker& self) {
    // Lean on purpose: this frame sits under every session the thread serves; the waiting
    // between sessions has a frame of its own.
    do {
        server_.serve(std::move(self.first), self.memory.scratch(), self.memory.scratch_size());
    } while (next_client(self)); // after a stop, serve() closes the client at once
}

template <class Server>
bool thread_crew<Server>::next_client(worker& self) {
    std::unique_lock<std::mutex> lock(mutex_);
    ++idle_;
    bool handed =
        wake_.wait_for(lock, keep_idle_, [this] { return stopping_ || !waiting_.empty(); });
    --idle_;
    if (!handed || waiting_.empty()) {
        // Waited long enough, or stopping with nothing left to serve: this thread ends.
        ended_.push_back(self.self); // capacity reserved when the thread was made
        return false;
    }
    self.first = std::move(waiting_.front());
    waiting_.pop_front();
    return true;
}

template <class Server>
void thread_crew<Server>::join_ended() {
    std::vector<typename thread_list::iterator> ended;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        ended.swap(ended_);
        ended_.reserve(threads_.size());
    }
    for (auto it : ended) {
        pthread_join(it->id, nullptr);
        threads_.erase(it); // and with it the thread's stack
    }
}

template <class Server>
void thread_crew<Server>::stop_and_join() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    for (worker& w : threads_) {
        pthread_join(w.id, nullptr);
    }
    threads_.clear();
    ended_.clear();
}

} // namespace detail

template <class Server>
void thread_policy::run(Server& server) {
    detail::thread_crew<Server> crew(server, keep_idle_thread, stack_size);
    for (;;) {
        accepted_client client;
        // Wake once a second even when idle, to join threads that have ended.
        auto status = server.accept_next(client, steady_clock::now() + std::chrono::seconds(1));
        crew.join_ended();
        if (status == accept_status::stopped) {
            break;
        }
        if (status == accept_status::client) {
            crew.dispatch(std::move(client));
        }
    }
    crew.stop_and_join();
}

} // namespace tinyproxy
// ---- end tinyproxy/policy/thread.hpp ----
// #include "tinyproxy/policy/fork.hpp"
// ---- begin tinyproxy/policy/fork.hpp ----
// fork_policy: one process per client.

#include <cerrno>  // EINTR
#include <chrono>  // reaping tick, grace period
#include <cstddef> // std::size_t
#include <thread>  // sleep while waiting for children
#include <utility> // std::move, std::swap
#include <vector>  // child ids

#include <csignal>    // kill, SIGKILL
#include <sys/wait.h> // waitpid
#include <unistd.h>   // fork, _exit

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/server.hpp"

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
/// Of the Server (the policy interface: server.hpp) it calls accept_next(); in a child
/// enter_child(), then serve(client, scratch, size) reading into `scratch` (see below), sized
/// by limits(), keeping stop_fd() open; session_ended() when fork() fails, and count_ended() as
/// each child is reaped.
///
/// Memory: a child costs the pages it writes (each is copied from the parent's on the first
/// write) plus the pages the parent writes while the child lives. A child therefore reads into
/// a buffer in a mapping of its own rather than one from the heap it shares with the parent: a
/// 64 KiB allocation there would grow that heap, and so copy the allocator's bookkeeping pages
/// too. A program linked with `-Wl,-z,now` also spares each child the copy of the pages that
/// lazy symbol binding would write on the first call of a function the parent never called.
class fork_policy {
public:
    /// How long stop waits for children to end by themselves before killing them.
    std::chrono::milliseconds stop_grace{1000};

    template <class Server>
    void run(Server& server) {
        // Made here, once, rather than in every child that reports an error: the first call
        // writes the guard of a function-local static, and with it a page the child would copy.
        (void)error_category();
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
            detail::mapped_buffer scratch(server.limits().buffer_size); // empty if no mapping
            session_result result = server.serve(std::move(client), scratch.data(), scratch.size());
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
// poll_policy: one thread, one event loop over non-blocking sockets (epoll or poll(2)).

#include <chrono> // the accept back-off
#include <memory> // the main loop
#include <thread> // more loops
#include <vector> // more loops, their pollers

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/poller.hpp"
// #include "tinyproxy/policy/detail/event_loop.hpp"
// ---- begin tinyproxy/policy/detail/event_loop.hpp ----
// One run of poll_policy's event loop: who is served, in what order, and with how many reads.

#include <algorithm>    // std::max, std::min
#include <chrono>       // the accept back-off
#include <cstddef>      // std::size_t, std::ptrdiff_t
#include <cstdint>      // tokens, turns
#include <memory>       // std::unique_ptr
#include <system_error> // std::error_code, std::system_error
#include <utility>      // std::move
#include <vector>       // the ready list, the queues, the scratch buffer

#include <poll.h> // POLLIN

// #include "tinyproxy/error.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/poller.hpp"
// #include "tinyproxy/relay.hpp"
// #include "tinyproxy/session.hpp"
// #include "tinyproxy/policy/detail/resolver.hpp"
// ---- begin tinyproxy/policy/detail/resolver.hpp ----
// The event loop's name lookups, on a helper thread so that DNS never stalls the loop.

#include <condition_variable> // the request queue
#include <cstdint>            // request ids
#include <deque>              // requests
#include <mutex>              // the request queue
#include <system_error>       // std::error_code
#include <thread>             // the helper thread
#include <utility>            // std::move
#include <vector>             // answers, candidates

#include <unistd.h> // read, write

// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"

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
    ~background_resolver();

    /// Queues a lookup; false when the helper thread or its pipe cannot be made.
    bool submit(std::uint64_t id, host_port target);
    /// -1 until the first request.
    int notify_fd() const noexcept { return notify_read_.get(); }
    /// The answers so far, each once.
    std::vector<answer> take();

private:
    struct request {
        std::uint64_t id;
        host_port target;
    };

    bool start_worker();
    void work();

    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<request> requests_;
    std::vector<answer> answers_;
    bool stopping_ = false;
    unique_fd notify_read_;
    unique_fd notify_write_;
    std::thread worker_;
};

inline background_resolver::~background_resolver() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (worker_.joinable()) {
        worker_.join();
    }
}

inline bool background_resolver::submit(std::uint64_t id, host_port target) {
    if (!worker_.joinable() && !start_worker()) {
        return false;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    requests_.push_back({id, std::move(target)});
    wake_.notify_one();
    return true;
}

inline std::vector<background_resolver::answer> background_resolver::take() {
    char drain[64];
    while (::read(notify_read_.get(), drain, sizeof drain) > 0) {
    }
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<answer> out;
    out.swap(answers_);
    return out;
}

inline bool background_resolver::start_worker() {
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
    return true;
}

inline void background_resolver::work() {
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

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/policy/detail/resolver.hpp ----
// #include "tinyproxy/policy/detail/slots.hpp"
// ---- begin tinyproxy/policy/detail/slots.hpp ----
// The event loop's sessions in numbered slots, and the tokens that name a slot's sockets.

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
// ---- end tinyproxy/policy/detail/slots.hpp ----
// #include "tinyproxy/policy/detail/timers.hpp"
// ---- begin tinyproxy/policy/detail/timers.hpp ----
// The event loop's deadlines: one timer per session slot, in a min-heap, earliest first.

#include <algorithm> // heap operations, std::remove_if
#include <cstddef>   // std::size_t
#include <cstdint>   // slots, generations
#include <vector>    // the heap, the armed timers

// #include "tinyproxy/detail/sys.hpp"

namespace tinyproxy {
namespace detail {

/// At most one live timer per slot (a slot and its generation, as in slot_table), earliest
/// first. Arming a slot for a later time than its live timer does nothing: that timer fires
/// first, and its owner arms again for the time it has then, so a deadline that only moves on
/// (an idle timeout) costs nothing per call. Arming for an earlier time pushes a new timer and
/// leaves the old one in the heap, stale: pop_due() skips it. When the heap is mostly stale it is
/// rebuilt from the live timers, so it stays proportional to them, not to the timers ever armed.
class timer_heap {
public:
    struct timer {
        time_point when;
        std::uint32_t slot;
        std::uint32_t generation;
    };

    /// The earliest timer's time (stale or not: waking for one costs a turn, not a miss); max
    /// when none.
    time_point next() const noexcept { return heap_.empty() ? time_point::max() : heap_[0].when; }
    /// Arms the slot's timer for `deadline` (max: none), unless its live timer fires no later.
    /// Throws only for want of memory, and then every timer stands as it did.
    void arm(std::uint32_t slot, std::uint32_t generation, time_point deadline);
    /// The slot's live timer, if any, is stale from now on (its session ended).
    void disarm(std::uint32_t slot) noexcept;
    /// Takes the earliest live timer due by `now` into `due`; false when none is due.
    bool pop_due(time_point now, timer& due) noexcept;

    /// Timers in the heap, stale ones included.
    std::size_t size() const noexcept { return heap_.size(); }
    /// Live timers.
    std::size_t live() const noexcept { return live_; }

private:
    struct armed_timer {
        time_point when = time_point::max(); // max for none
        std::uint32_t generation = 0;
    };
    // The heap's order: std::push_heap keeps the greatest first, so greater is earlier.
    static bool later(const timer& a, const timer& b) noexcept { return a.when > b.when; }

    bool is_live(const timer& t) const noexcept {
        const armed_timer& armed = armed_[t.slot];
        return armed.when == t.when && armed.generation == t.generation;
    }
    bool mostly_stale() const noexcept { return heap_.size() > 2 * live_ + 1024; }
    void drop_stale() noexcept;

    std::vector<timer> heap_;        // a min-heap by `when`, with stale entries
    std::vector<armed_timer> armed_; // by slot: its live timer
    std::size_t live_ = 0;
};

inline void timer_heap::arm(std::uint32_t slot, std::uint32_t generation, time_point deadline) {
    if (slot >= armed_.size()) {
        armed_.resize(slot + std::size_t{1});
    }
    armed_timer& armed = armed_[slot];
    if (armed.when != time_point::max() && armed.generation == generation &&
        deadline >= armed.when) {
        return; // the live timer fires first, and its owner arms again then
    }
    if (deadline == time_point::max()) {
        return; // no deadline, no timer
    }
    if (mostly_stale()) {
        drop_stale();
    }
    heap_.push_back({deadline, slot, generation});
    std::push_heap(heap_.begin(), heap_.end(), later);
    if (armed.when == time_point::max()) {
        ++live_;
    }
    armed = {deadline, generation};
}

inline void timer_heap::disarm(std::uint32_t slot) noexcept {
    if (slot < armed_.size() && armed_[slot].when != time_point::max()) {
        armed_[slot].when = time_point::max();
        --live_;
    }
}

inline bool timer_heap::pop_due(time_point now, timer& due) noexcept {
    while (!heap_.empty() && heap_[0].when <= now) {
        std::pop_heap(heap_.begin(), heap_.end(), later);
        due = heap_.back();
        heap_.pop_back();
        if (is_live(due)) {
            armed_[due.slot].when = time_point::max();
            --live_;
            return true;
        }
    }
    return false;
}

inline void timer_heap::drop_stale() noexcept {
    heap_.erase(
        std::remove_if(heap_.begin(), heap_.end(), [this](const timer& t) { return !is_live(t); }),
        heap_.end());
    std::make_heap(heap_.begin(), heap_.end(), later);
}

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/policy/detail/timers.hpp ----

namespace tinyproxy {
namespace detail {

/// The state of one run of the event loop, and its scheduling. Each turn waits for readiness,
/// files every session heard in a queue, serves the queues, then takes name lookups, deadlines
/// and new clients. Sessions live in a slot_table; the poller's tokens are its tokens, so an
/// event for a session that has ended is recognised and dropped.
template <class Server, class Poller>
class event_loop {
public:
    event_loop(Server& server, Poller& poller, std::chrono::milliseconds accept_backoff,
               int accepts_per_turn)
        : server_(server), poller_(poller), accept_backoff_(accept_backoff),
          accepts_per_turn_(accepts_per_turn < 1 ? 1 : accepts_per_turn),
          scratch_(std::max<std::size_t>(server.limits().buffer_size, 1)) {}
    event_loop(const event_loop&) = delete;
    event_loop& operator=(const event_loop&) = delete;

    /// Watches the stop signal and the listener; throws std::system_error if it cannot.
    void start();
    /// Serves until the stop signal, then ends every session still open.
    void run();

private:
    using session_type = typename Server::session_type;

    struct entry {
        session_type session;
        bool resolving = false;
        poller_slot client{};
        poller_slot upstream{};
        short client_revents = 0; // gathered over one wait
        short upstream_revents = 0;
        bool touched = false;          // in touched_ or saturated_, not yet served
        std::uint32_t served_in = ~0u; // the last turn that served it
    };

    // Above every session's token (slot_table never uses the last slot).
    static constexpr std::uint64_t stop_token = ~std::uint64_t{0};
    static constexpr std::uint64_t listener_token = stop_token - 1;
    static constexpr std::uint64_t resolver_token = stop_token - 2;

    bool wait_and_dispatch();
    /// Files one reported event; false for the stop signal.
    bool note(const ready_event& event);
    /// Between two bulk tunnels: who else is ready now (a wait that does not block).
    void peek_between(time_point now);
    void serve_touched(time_point now);
    void serve(std::uint32_t slot, time_point now, int rounds);
    void take_resolved(time_point now);
    void expire_timers(time_point now);
    void accept_clients(time_point now);
    /// A client just accepted: its session, in a slot, started.
    void admit(accepted_client client, time_point now);
    /// After the session acted: its new interest to the poller, or its end. `client_heard`:
    /// this turn reported something on a client whose upstream was connecting.
    void settle(std::uint32_t slot, time_point now, bool client_heard = false);
    void request_resolve(std::uint32_t slot, entry& e, time_point now);
    void update_interest(std::uint32_t slot, entry& e, bool client_heard);
    void end(std::uint32_t slot) noexcept;
    void end_all();
    void watch_listener(bool on) noexcept;
    time_point next_wake() const noexcept;

    Server& server_;
    Poller& poller_;
    const std::chrono::milliseconds accept_backoff_;
    const int accepts_per_turn_;
    std::vector<std::uint8_t> scratch_;
    background_resolver resolver_;
    poller_slot stop_slot_{};
    poller_slot listener_slot_{};
    poller_slot resolver_slot_{};
    time_point listener_resting_until_ = time_point::min();

    slot_table<entry> slots_;
    timer_heap timers_; // one per session slot, at the session's deadline
    std::vector<ready_event> ready_;
    std::vector<std::uint32_t> touched_;   // sessions to serve this turn, in the order heard
    std::vector<std::uint32_t> saturated_; // ... of those, bulk ones: served after the rest
    std::uint32_t turn_ = 0;
    std::size_t served_this_turn_ = 0;
    std::size_t served_last_turn_ = 0;
    bool accept_ready_ = false;
    bool resolver_ready_ = false;
};

template <class Server, class Poller>
void event_loop<Server, Poller>::start() {
    std::error_code ec;
    if (!poller_.update(stop_slot_, server_.stop_fd(), POLLIN, 0, stop_token, ec)) {
        // No epoll descriptor (descriptors ran out when the policy was made), or no memory.
        throw std::system_error(ec, "tinyproxy: the event loop cannot start");
    }
    watch_listener(true);
}

template <class Server, class Poller>
void event_loop<Server, Poller>::run() {
    while (wait_and_dispatch()) {
        time_point now = steady_clock::now();
        // Sessions first, then name lookups, deadlines and new clients.
        serve_touched(now);
        if (resolver_ready_) {
            take_resolved(now);
        }
        expire_timers(now);
        if (listener_slot_.fd < 0 && now >= listener_resting_until_) {
            watch_listener(true);
        }
        if (accept_ready_) {
            accept_clients(now);
        }
    }
    end_all();
}

template <class Server, class Poller>
void event_loop<Server, Poller>::end_all() {
    for (std::uint32_t slot = 0; slot < slots_.size(); ++slot) {
        if (entry* e = slots_.at(slot)) {
            e->session.abort(make_error_code(errc::stopped));
            end(slot);
        }
    }
    // The poller outlives this loop: leave nothing in it that points here.
    std::error_code ignored;
    for (poller_slot* slot : {&stop_slot_, &listener_slot_, &resolver_slot_}) {
        poller_.update(*slot, -1, 0, 0, 0, ignored);
    }
}

template <class Server, class Poller>
bool event_loop<Server, Poller>::wait_and_dispatch() {
    ready_.clear();
    accept_ready_ = false;
    resolver_ready_ = false;
    std::error_code ec;
    poller_.wait(next_wake(), ready_, ec);
    if (ec) {
        return false; // only a programming error (or no memory for the ready list) gets here
    }
    for (const ready_event& event : ready_) {
        if (!note(event)) {
            return false;
        }
    }
    return true;
}

template <class Server, class Poller>
bool event_loop<Server, Poller>::note(const ready_event& event) {
    if (event.token == stop_token) {
        return false;
    }
    if (event.token == listener_token) {
        accept_ready_ = true;
    } else if (event.token == resolver_token) {
        resolver_ready_ = true;
    } else if (entry* e = slots_.find(event.token)) {
        std::uint32_t slot = slots_.slot_of(event.token);
        bool bulk = e->session.saturated();
        if (!e->touched && bulk && e->served_in == turn_) {
            return true; // it had its share of this turn; readiness is level-triggered
        }
        bool client = slots_.side_of(event.token) == client_side;
        (client ? e->client_revents : e->upstream_revents) |= event.revents;
        if (!e->touched) {
            e->touched = true;
            // Cannot throw: each holds a session at most once, and has room for all of them.
            (bulk ? saturated_ : touched_).push_back(slot);
        }
    }
    return true;
}

template <class Server, class Poller>
void event_loop<Server, Poller>::peek_between(time_point now) {
    ready_.clear();
    std::error_code ec;
    poller_.wait(now, ready_, ec); // a time already here: it does not block
    for (const ready_event& event : ready_) {
        // The stop signal stays readable: the next wait reports it again, and stops the loop.
        (void)note(event);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::serve_touched(time_point now) {
    // Request/response and handshaking sessions first, then bulk transfers (those whose last
    // call moved all a call may). After each bulk one, a wait that does not block hears who
    // else is ready: a small exchange waits behind one bulk pump, not behind a turn of them.
    std::size_t next = 0;
    std::size_t next_bulk = 0;
    while (next < touched_.size() || next_bulk < saturated_.size()) {
        bool bulk = next == touched_.size();
        std::uint32_t slot = bulk ? saturated_[next_bulk++] : touched_[next++];
        // A tunnel that has the loop to itself (nothing else served this turn or the last,
        // nobody else waiting) reads as much as it would on a thread of its own; one that
        // shares it, one read's worth per call.
        bool alone = served_this_turn_ == 0 && served_last_turn_ <= 1 && next == touched_.size() &&
                     next_bulk == saturated_.size();
        serve(slot, now, alone ? relay::max_rounds : relay::shared_rounds);
        if (bulk && next_bulk < saturated_.size()) {
            // Those served leave the queues, so a session heard again joins them once more.
            touched_.clear();
            next = 0;
            saturated_.erase(saturated_.begin(),
                             saturated_.begin() + static_cast<std::ptrdiff_t>(next_bulk));
            next_bulk = 0;
            now = steady_clock::now();
            peek_between(now);
        }
    }
    touched_.clear();
    saturated_.clear();
    ++turn_; // the sessions served in this turn are heard again in the next
    served_last_turn_ = served_this_turn_;
    served_this_turn_ = 0;
}

template <class Server, class Poller>
void event_loop<Server, Poller>::serve(std::uint32_t slot, time_point now, int rounds) {
    entry& e = *slots_.at(slot); // nothing ends a session between dispatch and here
    short client_revents = e.client_revents;
    short upstream_revents = e.upstream_revents;
    e.client_revents = 0;
    e.upstream_revents = 0;
    e.touched = false;
    e.served_in = turn_;
    ++served_this_turn_;
    // Heard from a client whose upstream was connecting: it may have to leave the set.
    bool client_heard = client_revents != 0 && e.session.connecting();
    e.session.on_ready(client_revents, upstream_revents, now, scratch_.data(), scratch_.size(),
                       rounds);
    settle(slot, now, client_heard);
}

template <class Server, class Poller>
void event_loop<Server, Poller>::take_resolved(time_point now) {
    for (auto& answer : resolver_.take()) {
        entry* e = slots_.find(answer.id);
        if (e != nullptr && e->resolving) {
            e->resolving = false;
            e->session.on_resolved(std::move(answer.candidates), answer.error, now);
            settle(slots_.slot_of(answer.id), now);
        }
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::expire_timers(time_point now) {
    timer_heap::timer due{};
    while (timers_.pop_due(now, due)) {
        entry* e = slots_.find(due.slot, due.generation);
        if (e == nullptr) {
            continue; // cannot happen (a session's end disarms its timer), but costs nothing
        }
        if (now >= e->session.deadline()) {
            e->session.on_deadline(now);
        }
        settle(due.slot, now); // re-arms for the deadline as it is now
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::accept_clients(time_point now) {
    for (int n = 0; n < accepts_per_turn_; ++n) {
        accepted_client client;
        std::error_code ec;
        if (server_.try_accept(client, ec) != accept_status::client) {
            if (ec == std::errc::too_many_files_open ||
                ec == std::errc::too_many_files_open_in_system ||
                ec == std::errc::no_buffer_space || ec == std::errc::not_enough_memory) {
                // Out of descriptors: the pending client stays queued, and a watched listener
                // would report it again at once. Rest instead of spinning.
                listener_resting_until_ = now + accept_backoff_;
                watch_listener(false);
            }
            return;
        }
        admit(std::move(client), now);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::admit(accepted_client client, time_point now) {
    std::uint32_t slot = 0;
    try {
        auto e = std::make_unique<entry>(entry{server_.make_session(std::move(client))});
        // Room first, so that nothing below (nor end(), nor a dispatch) can throw.
        touched_.reserve(slots_.size_after_add());
        saturated_.reserve(slots_.size_after_add());
        slot = slots_.add(std::move(e));
    } catch (...) {
        return; // no memory for this client: it is closed, the loop goes on
    }
    session_type& session = slots_.at(slot)->session;
    session.start(now);
    if (!session.done() && (session.client_events() & POLLIN) != 0 &&
        !detail::client_read_dry(session)) {
        // A client that speaks first (SOCKS, HTTP CONNECT, a PROXY header) has usually
        // sent by the time it is accepted: read now rather than after one more wait. One that
        // start() read already (a forwarded client's first bytes, sent as the connect's
        // probe) has nothing more yet.
        session.on_ready(POLLIN, 0, now, scratch_.data(), scratch_.size(), relay::shared_rounds);
    }
    settle(slot, now);
}

template <class Server, class Poller>
void event_loop<Server, Poller>::settle(std::uint32_t slot, time_point now, bool client_heard) {
    entry& e = *slots_.at(slot);
    session_type& s = e.session;
    if (s.wants_resolve() && !e.resolving) {
        request_resolve(slot, e, now);
    }
    if (!s.done()) {
        update_interest(slot, e, client_heard);
    }
    if (s.done()) {
        end(slot);
        return;
    }
    try {
        timers_.arm(slot, slots_.generation(slot), s.deadline());
    } catch (...) { // no memory for a timer: a session without a deadline is not allowed
        s.abort(std::make_error_code(std::errc::not_enough_memory));
        end(slot);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::request_resolve(std::uint32_t slot, entry& e, time_point now) {
    session_type& s = e.session;
    e.resolving = true;
    bool queued = false;
    try {
        queued = resolver_.submit(slots_.token(slot, client_side), s.resolve_target());
    } catch (...) {
    }
    if (!queued) {
        s.on_resolved({}, std::make_error_code(std::errc::resource_unavailable_try_again), now);
    } else if (resolver_slot_.fd < 0) {
        std::error_code ec;
        poller_.update(resolver_slot_, resolver_.notify_fd(), POLLIN, 0, resolver_token, ec);
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::update_interest(std::uint32_t slot, entry& e, bool client_heard) {
    session_type& s = e.session;
    std::error_code ec;
    int client = s.watch_client() ? s.client_fd() : -1;
    short client_events = s.client_events();
    bool connecting = s.connecting();
    if (client < 0 && connecting && !client_heard && e.client.fd == s.client_fd()) {
        // Unwatched while its upstream connects, and watched again right after: a quiet
        // client stays in the set as it was, which saves removing and adding it back. One
        // that speaks or hangs up meanwhile is heard here, and removed then.
        client = e.client.fd;
        client_events = e.client.events;
    }
    int upstream = s.watch_upstream() ? s.upstream_fd() : -1;
    if (!poller_.update(e.client, client, client_events, 0, slots_.token(slot, client_side), ec) ||
        !poller_.update(e.upstream, upstream, s.upstream_events(), s.upstream_serial(),
                        slots_.token(slot, upstream_side), ec)) {
        s.abort(ec); // the poller could not take it (no memory): end this session only
    }
}

template <class Server, class Poller>
void event_loop<Server, Poller>::end(std::uint32_t slot) noexcept {
    entry& e = *slots_.at(slot);
    // A session ends with its sockets closed; the poller only forgets them.
    poller_.forget(e.client);
    poller_.forget(e.upstream);
    server_.session_ended(e.session.result());
    timers_.disarm(slot);
    slots_.remove(slot);
}

template <class Server, class Poller>
void event_loop<Server, Poller>::watch_listener(bool on) noexcept {
    std::error_code ec;
    // Shared: with several loops, a new client wakes one of them, not all (and the rest would
    // only find nothing to accept).
    if (!(on ? poller_.watch_shared(listener_slot_, server_.listener_fd(), listener_token, ec)
             : poller_.update(listener_slot_, -1, 0, 0, listener_token, ec))) {
        listener_resting_until_ = steady_clock::now() + accept_backoff_; // try again later
    }
}

template <class Server, class Poller>
time_point event_loop<Server, Poller>::next_wake() const noexcept {
    time_point wake = timers_.next();
    if (listener_slot_.fd < 0) {
        wake = std::min(wake, listener_resting_until_);
    }
    return wake;
}

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/policy/detail/event_loop.hpp ----

namespace tinyproxy {

/// One thread serves every client with an event loop over non-blocking sockets: the cheapest
/// per connection (no thread, no process, no buffer while a tunnel is idle), and nothing one
/// client does (sending nothing, reading nothing, an upstream that never answers) holds up the
/// others. A bulk transfer that shares the loop is served one read's worth at a time, after the
/// other tunnels, and between two bulk ones the loop looks (without blocking) for who else is
/// ready: a small exchange waits for one read and its write, not for a turn of bulk transfers.
/// A tunnel that has the loop to itself reads as much per call as on a thread of its own.
/// Pick it for many concurrent clients, or whenever in doubt; it is the default.
///
/// `Poller` waits for readiness: `epoll_poller` (Linux) or `poll_poller` (everywhere); see
/// poller.hpp. `poll_policy` picks the best one the platform has.
///
/// Of the Server it makes the event loop's calls (the policy interface: server.hpp), and
/// request_stop() when one of several loops fails, to end the others.
/// run() throws std::system_error when the loop cannot start (no descriptor for epoll).
template <class Poller>
class basic_poll_policy {
public:
    /// How long the listener rests after accept fails for lack of descriptors or memory.
    std::chrono::milliseconds accept_backoff{100};
    /// The most clients accepted in one turn of the loop, so a connection storm cannot starve
    /// established tunnels.
    int accepts_per_turn = 64;
    /// Event loops, each on its own thread, all accepting from the one listener: a session
    /// stays on the loop that accepted it. 1 (the default) is the single-threaded loop the
    /// rest of this comment describes; more use more cores, for many streams at once.
    unsigned loops = 1;

    template <class Server>
    void run(Server& server);

private:
    // Made with the policy, so a proxy's descriptors are all open before it runs.
    Poller poller_;
};

#if TINYPROXY_HAS_EPOLL
using poll_policy = basic_poll_policy<epoll_poller>;
#else
using poll_policy = basic_poll_policy<poll_poller>;
#endif
/// The event loop on poll(2), on every platform: the portable path, kept built and tested.
using portable_poll_policy = basic_poll_policy<poll_poller>;

template <class Poller>
template <class Server>
void basic_poll_policy<Poller>::run(Server& server) {
    using loop_type = detail::event_loop<Server, Poller>;
    // This thread's loop is made and started first: if it cannot be, nothing else was begun.
    auto main_loop = std::make_unique<loop_type>(server, poller_, accept_backoff, accepts_per_turn);
    main_loop->start();
    std::vector<Poller> more_pollers;
    std::vector<std::thread> more_loops;
    try {
        for (unsigned n = 1; n < loops; ++n) {
            more_pollers.emplace_back();
        }
        more_loops.reserve(more_pollers.size());
        for (Poller& poller : more_pollers) {
            more_loops.emplace_back([this, &server, &poller] {
                try {
                    loop_type loop(server, poller, accept_backoff, accepts_per_turn);
                    loop.start();
                    loop.run();
                } catch (...) { // this loop could not start: the others serve on
                }
            });
        }
    } catch (...) {
        // No memory or no thread for another loop: serve with the loops there are.
    }
    try {
        main_loop->run();
    } catch (...) {
        server.request_stop(); // (only no memory gets here) end the other loops too
        for (std::thread& loop : more_loops) {
            loop.join();
        }
        throw;
    }
    for (std::thread& loop : more_loops) {
        loop.join(); // every loop sees the same stop signal
    }
    for (Poller& poller : more_pollers) {
        poller.close();
    }
    poller_.close(); // a proxy runs once, and leaves no descriptor open when run() returns
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
// #include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {

/// The simplest Mode: no handshake, every client is connected to `upstream` at once, and the
/// client's bytes (even those it sent before the upstream answered) go there untouched. A name
/// is resolved for every client, and each of its addresses is tried in turn. (What makes a
/// Mode: mode/mode.hpp.)
class forward_mode {
public:
    explicit forward_mode(host_port upstream) : upstream_(std::move(upstream)) {}

    class session {
    public:
        explicit session(host_port upstream) : upstream_(std::move(upstream)) {}

        mode_step start() { return mode_step::connect_to(upstream_); }
        /// Never called: start() already decided.
        mode_step on_client_data(byte_view) { return mode_step::fail(errc::protocol_error); }
        static constexpr bool uses_local_endpoint = false;

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
// #include "tinyproxy/mode/socks.hpp"
// ---- begin tinyproxy/mode/socks.hpp ----
// socks_mode: SOCKS4, SOCKS4a and SOCKS5 on one port, told apart by the first byte.

#include <cstdint>      // bytes
#include <memory>       // the chosen parser, on the heap
#include <optional>     // configured credentials
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"
// #include "tinyproxy/protocol/socks4.hpp"
// #include "tinyproxy/protocol/socks5.hpp"
// #include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {

/// Where a SOCKS client asks to go. Version 4 and 4a requests begin with the byte 4, version 5
/// with 5; the first byte picks the parser and anything else is closed at once. The parser lives
/// until on_connected() has built the reply, or until the handshake fails; any feed after that
/// answers fail(protocol_error), as the parsers do.
///
/// With credentials configured, SOCKS5 clients must authenticate (RFC 1929) and SOCKS4 clients,
/// which cannot, are refused with a 0x5B reply; so with `--user`, only a client that logged in
/// gets a BIND or a UDP association.
///
/// BIND (SOCKS4 and SOCKS5) and UDP ASSOCIATE (SOCKS5) are served when `config` says so, and
/// refused as unsupported commands (0x5B, REP 0x07) otherwise. A BIND is answered twice: the
/// session calls on_connected() first with the listening address as `local` (the first reply),
/// then with the peer that connected as `upstream` (the second reply, naming it). A UDP
/// ASSOCIATE is answered once, with the relay's address as `local`.
class socks_mode {
public:
    struct config {
        std::optional<credentials> required; ///< user name and password every client must give
        bool allow_socks4 = true;            ///< also serve SOCKS4 and 4a (when no credentials)
        bool bind = false;                   ///< serve BIND (a listener per request)
        bool udp_associate = false;          ///< serve UDP ASSOCIATE (a UDP socket per request)
    };

    socks_mode() = default;
    explicit socks_mode(config cfg) : config_(std::move(cfg)) {}

    class session {
    public:
        explicit session(const config& cfg) : config_(&cfg) {}

        mode_step start() { return mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes);
        /// The reply to the client; called once, it ends the handshake.
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
                                               const endpoint& upstream);

    private:
        mode_step pick_parser(byte_view bytes);
        mode_step start_socks5(byte_view bytes);
        mode_step start_socks4(byte_view bytes);
        void end_handshake() noexcept;

        const config* config_;
        handshake_step::request request_ = handshake_step::request::connect;
        bool listening_sent_ = false; // a BIND's first reply has been built
        // Heap, handshake only: a held connection keeps a pointer, not the ~600-byte parser.
        std::unique_ptr<socks4_handshake> v4_;
        std::unique_ptr<socks5_handshake> v5_;
        bool handshake_ended_ = false;
    };

    session make_session(const session_info&) const { return session{config_}; }

private:
    config config_;
};

inline mode_step socks_mode::session::on_client_data(byte_view bytes) {
    if (handshake_ended_) {
        return mode_step::fail(make_error_code(errc::protocol_error));
    }
    mode_step step = v5_ ? v5_->feed(bytes) : v4_ ? v4_->feed(bytes) : pick_parser(bytes);
    if (step.what == mode_step::action::fail) {
        end_handshake();
    } else if (step.what == mode_step::action::connect) {
        request_ = step.kind;
    }
    return step;
}

inline mode_step socks_mode::session::pick_parser(byte_view bytes) {
    if (bytes.empty()) {
        return mode_step::need_more();
    }
    if (bytes[0] == 5) {
        return start_socks5(bytes);
    }
    if (bytes[0] == 4) {
        return start_socks4(bytes);
    }
    return mode_step::fail(make_error_code(errc::unsupported_version));
}

inline mode_step socks_mode::session::start_socks5(byte_view bytes) {
    // No memory for a parser throws, and basic_session closes this client (not the proxy).
    socks5_handshake::config cfg;
    cfg.required = config_->required;
    cfg.accept_bind = config_->bind;
    cfg.accept_udp_associate = config_->udp_associate;
    v5_ = std::make_unique<socks5_handshake>(std::move(cfg));
    return v5_->feed(bytes);
}

inline mode_step socks_mode::session::start_socks4(byte_view bytes) {
    if (config_->required || !config_->allow_socks4) {
        // SOCKS4 carries no password: with credentials required it cannot be served.
        return mode_step::fail(make_error_code(errc::auth_failed),
                               socks4_handshake().failed(make_error_code(errc::not_allowed)));
    }
    socks4_handshake::config cfg;
    cfg.accept_bind = config_->bind;
    v4_ = std::make_unique<socks4_handshake>(cfg);
    return v4_->feed(bytes);
}

inline std::vector<std::uint8_t> socks_mode::session::on_connected(std::error_code result,
                                                                   const endpoint& local,
                                                                   const endpoint& upstream) {
    // A BIND's first reply names where we listen; its second, the peer that connected.
    const bool bind = request_ == handshake_step::request::bind;
    const endpoint& named = bind && listening_sent_ ? upstream : local;
    std::vector<std::uint8_t> reply;
    if (v5_) {
        reply = result ? v5_->failed(result) : v5_->connected(named);
    } else if (v4_) {
        reply = result ? v4_->failed(result) : v4_->connected(named);
    }
    if (bind && !result && !listening_sent_) {
        listening_sent_ = true; // the parser stays for the second reply
        return reply;
    }
    end_handshake();
    return reply;
}

inline void socks_mode::session::end_handshake() noexcept {
    v4_.reset();
    v5_.reset();
    handshake_ended_ = true;
}

} // namespace tinyproxy
// ---- end tinyproxy/mode/socks.hpp ----
// #include "tinyproxy/mode/http_connect.hpp"
// ---- begin tinyproxy/mode/http_connect.hpp ----
// http_connect_mode: HTTP CONNECT tunnels (RFC 9110 section 9.3.6).

#include <cstdint>      // bytes
#include <optional>     // the parser
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"
// #include "tinyproxy/protocol/http_connect.hpp"
// #include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {

/// Where an HTTP client asks to go with `CONNECT host:port HTTP/1.1`: answered with
/// `200 Connection established` and a raw tunnel, or a 4xx/5xx response and a close (405 for
/// other methods, 407 without the configured credentials, 502 when the upstream refuses or
/// does not resolve, 504 when the connect times out).
class http_connect_mode {
public:
    using config = http_connect_handshake::config;

    http_connect_mode() = default;
    explicit http_connect_mode(config cfg) : config_(std::move(cfg)) {}

    class session {
    public:
        explicit session(const config& cfg) : parser_(cfg) {}

        static constexpr bool uses_local_endpoint = false; // "200 Connection established"

        mode_step start() { return mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes) { return parser_.feed(bytes); }
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint&,
                                               const endpoint&) {
            return result ? parser_.failed(result) : parser_.connected();
        }

    private:
        http_connect_handshake parser_;
    };

    session make_session(const session_info&) const { return session{config_}; }

private:
    config config_;
};

} // namespace tinyproxy
// ---- end tinyproxy/mode/http_connect.hpp ----
// #include "tinyproxy/mode/proxy_protocol.hpp"
// ---- begin tinyproxy/mode/proxy_protocol.hpp ----
// with_proxy_protocol<Mode>: the PROXY protocol (v1/v2) as a layer on either side of any Mode.

#include <cstdint>      // bytes
#include <optional>     // the inner session, once the client is known
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // headers

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"
// #include "tinyproxy/protocol/proxy_protocol.hpp"
// #include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {

/// Which PROXY protocol header to send upstream.
enum class proxy_protocol_version { none = 0, v1 = 1, v2 = 2 };

/// Adds the PROXY protocol to `Mode`, on either side or both:
/// - `accept`: every client must begin with a PROXY header (v1 or v2, told apart by its
///   signature), as a load balancer in front of us sends it. The address it names is the client
///   the inner Mode, and a `send` header, see. A client without a valid header is closed.
/// - `send`: each upstream connection begins with a header naming the client and the address
///   it connected to, before any of the client's bytes.
template <class Mode>
class with_proxy_protocol {
public:
    struct config {
        bool accept = false;
        proxy_protocol_version send = proxy_protocol_version::none;
        /// With `accept`: when not empty, a client whose header names an address outside every
        /// range is closed (options::allow sees only the sender of the header, such as a load
        /// balancer).
        std::vector<cidr> allow;
    };

    with_proxy_protocol(Mode inner, config cfg) : inner_(std::move(inner)), config_(cfg) {}

    class session {
    public:
        session(const Mode& inner, const config& cfg, session_info info)
            : inner_mode_(&inner), config_(&cfg), info_(info) {
            if (!cfg.accept) {
                inner_.emplace(inner.make_session(info_));
            }
        }

        static constexpr bool uses_local_endpoint =
            detail::uses_local_endpoint<typename Mode::session>::value;

        mode_step start() { return inner_ ? outgoing(inner_->start()) : mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes) {
            if (inner_) {
                return outgoing(inner_->on_client_data(bytes));
            }
            return decode(bytes);
        }
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
                                               const endpoint& upstream) {
            return inner_ ? inner_->on_connected(result, local, upstream)
                          : std::vector<std::uint8_t>{};
        }
        /// The inner session's own stages, for a Mode that has them (http_proxy_mode).
        template <class Inner = typename Mode::session,
                  class = std::enable_if_t<detail::gives_stages<Inner>::value>>
        void stages(const tunnel_info& tunnel, tunnel_stages& stages) {
            if (inner_) {
                inner_->stages(tunnel, stages);
            }
        }
        /// A client handed back by its tunnel goes to the inner session; a new upstream
        /// connection begins with its own header.
        template <class Inner = typename Mode::session,
                  class = std::enable_if_t<detail::takes_back<Inner>::value>>
        mode_step on_handed_back() {
            return inner_ ? outgoing(inner_->on_handed_back())
                          : mode_step::fail(make_error_code(errc::protocol_error));
        }
        /// The client as the PROXY header named it (or as accepted, without one).
        const session_info& info() const noexcept { return info_; }
        /// Once a header has named the client, that address (basic_session reports it).
        const endpoint* client_address() const noexcept {
            return decoded_ ? &info_.client : nullptr;
        }

    private:
        mode_step decode(byte_view bytes) {
            switch (decoder_.feed(bytes)) {
            case proxy_protocol::decoder::status::need_more:
                return mode_step::need_more();
            case proxy_protocol::decoder::status::invalid:
                return mode_step::fail(decoder_.error() ? decoder_.error()
                                                        : make_error_code(errc::protocol_error));
            case proxy_protocol::decoder::status::done:
                break;
            }
            const auto& header = decoder_.result();
            if (!header.local && header.source && header.destination) {
                info_.client = *header.source;
                info_.local = *header.destination;
                decoded_ = true;
            }
            if (!allowed(info_.client.address)) {
                return mode_step::fail(make_error_code(errc::client_not_allowed));
            }
            inner_.emplace(inner_mode_->make_session(info_));
            mode_step first = inner_->start();
            std::vector<std::uint8_t> rest = decoder_.take_rest();
            if (rest.empty()) {
                return outgoing(std::move(first));
            }
            if (first.what == mode_step::action::connect) {
                // A Mode that decides at once (forward_mode): the bytes after the header go
                // upstream after whatever the Mode put first.
                first.to_upstream.insert(first.to_upstream.end(), rest.begin(), rest.end());
                return outgoing(std::move(first));
            }
            if (first.what == mode_step::action::fail) {
                return first;
            }
            mode_step next = inner_->on_client_data(rest);
            // Whatever the first step wanted sent goes before the next step's bytes.
            first.to_client.insert(first.to_client.end(), next.to_client.begin(),
                                   next.to_client.end());
            next.to_client = std::move(first.to_client);
            return outgoing(std::move(next));
        }

        /// With `send`, a connect step's upstream bytes begin with the PROXY header.
        mode_step outgoing(mode_step step) const {
            // A BIND's peer connected to us and a UDP association has no upstream stream:
            // neither is told who the client is.
            if (step.what != mode_step::action::connect ||
                step.kind != mode_step::request::connect ||
                config_->send == proxy_protocol_version::none) {
                return step;
            }
            std::vector<std::uint8_t> header =
                config_->send == proxy_protocol_version::v1
                    ? proxy_protocol::encode_v1(info_.client, info_.local)
                    : proxy_protocol::encode_v2(info_.client, info_.local);
            header.insert(header.end(), step.to_upstream.begin(), step.to_upstream.end());
            step.to_upstream = std::move(header);
            return step;
        }

        bool allowed(const ip_address& address) const noexcept {
            if (config_->allow.empty()) {
                return true;
            }
            for (const cidr& range : config_->allow) {
                if (range.contains(address)) {
                    return true;
                }
            }
            return false;
        }

        const Mode* inner_mode_;
        const config* config_;
        session_info info_;
        bool decoded_ = false;
        proxy_protocol::decoder decoder_;
        std::optional<typename Mode::session> inner_;
    };

    session make_session(const session_info& info) const { return session{inner_, config_, info}; }
    const Mode& inner() const noexcept { return inner_; }

private:
    Mode inner_;
    config config_;
};

} // namespace tinyproxy
// ---- end tinyproxy/mode/proxy_protocol.hpp ----
// #include "tinyproxy/mode/http_exchange.hpp"
// ---- begin tinyproxy/mode/http_exchange.hpp ----
// The two stages of an HTTP forward-proxy tunnel, and the exchange they share with their Mode
// session: requests rewritten for the origin and their bodies framed, responses rewritten for
// the client, and the client handed back to the Mode when a request needs another origin.

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <deque>        // the requests awaiting their responses
#include <functional>   // the per-request log hook
#include <memory>       // the shared exchange
#include <optional>     // the next request, held
#include <string>       // heads
#include <string_view>  // via
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // held bytes

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"
// #include "tinyproxy/protocol/http_connect.hpp"
// #include "tinyproxy/protocol/http_message.hpp"
// #include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// One request a forward proxy answered, for an access log (http_proxy_mode::config::log).
struct http_exchange_record {
    endpoint client; ///< who asked
    std::string method;
    std::string target;               ///< as the client sent it (absolute-form)
    int status = 0;                   ///< the final status sent to the client
    std::uint64_t response_bytes = 0; ///< head and body, as sent to the client
};

namespace detail {

/// Whether a message with this framing has no body bytes at all (none, or a length of 0).
inline bool bodiless(const http_framing& framing) noexcept {
    return framing.what == http_framing::kind::none ||
           (framing.what == http_framing::kind::length && framing.length == 0);
}

/// The same origin: the host compared without case, and the port.
inline bool same_origin(const host_port& a, const host_port& b) noexcept {
    return a.port == b.port && http_head::iequals(a.host, b.host);
}

/// A short response a proxy answers with itself: a text/plain body naming the status,
/// `fields` (each ending in CRLF) before it, and "Connection: close" unless `keep`.
inline std::vector<std::uint8_t> http_proxy_response(int status, std::string_view fields,
                                                     bool keep = false) {
    std::string body = std::to_string(status) + " " + http_head::reason_phrase(status) + "\n";
    std::string text =
        "HTTP/1.1 " + std::to_string(status) + " " + http_head::reason_phrase(status) + "\r\n";
    text += fields;
    text += "Content-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    text += keep ? "" : "Connection: close\r\n";
    text += "\r\n" + body;
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

/// Whether `head` carries the credentials `required` asks for (always, when none are).
inline bool http_authorized(const http_request_head& head,
                            const std::optional<credentials>& required) {
    namespace h = http_head;
    if (!required) {
        return true;
    }
    const std::string* value = nullptr;
    for (const http_field& field : head.fields) {
        if (h::iequals(field.name, "proxy-authorization")) {
            if (value != nullptr) {
                return false; // two: which one would the next proxy read?
            }
            value = &field.value;
        }
    }
    if (value == nullptr) {
        return false;
    }
    return h::check_basic(*value, *required) == h::basic_check::match;
}

/// TRACE or OPTIONS with Max-Forwards 0 (RFC 9110 section 7.6.2): the answer is the proxy's.
inline std::optional<std::vector<std::uint8_t>> http_answer_here(const http_request_head& head) {
    if (head.method != "TRACE" && head.method != "OPTIONS") {
        return std::nullopt;
    }
    const std::string* hops = head.field("max-forwards");
    if (hops == nullptr || *hops != "0") {
        return std::nullopt;
    }
    std::string text;
    if (head.method == "OPTIONS") {
        text = "HTTP/1.1 200 OK\r\nAllow: GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, "
               "PATCH\r\nContent-Length: 0\r\n\r\n";
    } else {
        // The request as received is the body (RFC 9110 section 9.3.8); its credentials are not.
        std::string echo = head.method + " " + head.target + " HTTP/1." +
                           std::to_string(head.minor_version) + "\r\n";
        for (const http_field& field : head.fields) {
            if (!http_head::iequals(field.name, "proxy-authorization")) {
                echo += field.name + ": " + field.value + "\r\n";
            }
        }
        echo += "\r\n";
        text = "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: " +
               std::to_string(echo.size()) + "\r\n\r\n" + echo;
    }
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

/// What a Mode session and its tunnel's two stages share, for one client. The Mode sets
/// `first` (the request the tunnel starts with) and `input` (the client's bytes after its
/// head); the stages forward and answer; when a request cannot go to this tunnel's origin,
/// the request stage keeps it in `next` (and what follows in `input`) and the tunnel hands the
/// client back once every answer so far has gone.
struct http_exchange {
    /// What the stages are told, fixed for the client.
    struct settings {
        std::string via; ///< the pseudonym in Via
        http_head_limits limits;
        /// Called as each response has been passed to the client (may be empty).
        std::function<void(const http_exchange_record&)> log;
        /// Credentials every request must carry (none: no check).
        std::optional<credentials> required;
    };

    /// A request forwarded, awaiting its response.
    struct awaiting_response {
        std::string method;
        std::string target;
        int client_minor_version = 1;
        bool client_keeps = true; ///< the client keeps the connection after it
    };

    http_exchange(const settings& given, const endpoint& asking) : config(&given), client(asking) {}

    const settings* config;
    endpoint client;                        ///< for the log
    host_port origin;                       ///< the tunnel's origin
    std::optional<http_request_head> first; ///< the request the tunnel starts with (from the Mode)
    std::optional<http_request_head> next;  ///< a request for the Mode (another origin, ...)
    int next_error = 0;                     ///< or: the status a malformed request gets
    std::vector<std::uint8_t> input;        ///< client bytes after `first` / `next`, unread
    std::deque<awaiting_response> awaiting; ///< forwarded, in order, not yet answered in full
    bool origin_gone = false;               ///< the origin closed after its last complete response
    bool client_ended = false;              ///< the client sent its end of stream
    bool closing = false;          ///< a response ends the client's connection: read no more
    bool response_started = false; ///< bytes of the answer to awaiting.front() have gone

    /// Whether the tunnel is to hand the client back: a request waits for the Mode.
    bool hand_back_wanted() const noexcept { return next.has_value() || next_error != 0; }
};

/// Client -> origin: each request head rewritten to origin-form (origin_request_head), its
/// body passed on as framed. A request the Mode must answer (another origin, CONNECT, one the
/// origin's end leaves no connection for, a malformed one, missing credentials, Max-Forwards
/// 0) is kept for the Mode, with what follows.
class http_request_stage final : public relay_stage {
public:
    explicit http_request_stage(std::shared_ptr<http_exchange> exchange)
        : exchange_(std::move(exchange)), parser_(exchange_->config->limits) {}

    void on_start(stage_context& out) override;
    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;
    std::size_t held() const noexcept override { return holding_ ? exchange_->input.size() : 0; }

private:
    enum class phase { head, body, holding, discarding };

    /// A request head for this tunnel: forwarded, and its body next. Else kept for the Mode.
    void take_head(stage_context& out, http_request_head head);
    void hold(stage_context& out);
    /// A body whose framing is broken (a bad chunk size): 400 if no answer has begun.
    void body_failed(stage_context& out);
    /// Hands the client back if nothing is awaited any more.
    void hand_back_when_idle(stage_context& out);

    std::shared_ptr<http_exchange> exchange_;
    http_request_parser parser_;
    http_body_scanner body_;
    phase phase_ = phase::head;
    bool holding_ = false;
};

/// Origin -> client: each response head rewritten (client_response_head), its body passed on
/// as framed, in the order the requests went; the client's connection closed after a
/// response that ends it, and the client handed back once the last awaited response is done
/// and a request waits for another origin.
class http_response_stage final : public relay_stage {
public:
    explicit http_response_stage(std::shared_ptr<http_exchange> exchange)
        : exchange_(std::move(exchange)), parser_(exchange_->config->limits) {}

    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;

private:
    enum class phase { head, body, done };

    void start_response();
    /// One response head: passed on rewritten; true when a body follows.
    void take_head(stage_context& out, http_response_head head);
    /// The response has been passed on whole.
    void response_done(stage_context& out);
    /// The origin answered something that is not HTTP: 502 if nothing of it has gone.
    void bad_response(stage_context& out);
    void pass(stage_context& out, byte_view bytes) {
        sent_ += bytes.size();
        out.pass(bytes);
    }

    std::shared_ptr<http_exchange> exchange_;
    http_response_parser parser_;
    http_body_scanner body_;
    phase phase_ = phase::head;
    bool parser_ready_ = false; // reset for the request at the front of `awaiting`
    bool started_ = false;      // bytes of this response have been passed on
    bool head_begun_ = false;   // bytes of a response head have been read
    bool closes_ = false;       // this response ends the client's connection
    bool until_close_ = false;  // its body ends with the origin's end of stream
    int status_ = 0;
    std::uint64_t sent_ = 0; // of this response
};

// ---------------------------------------------------------------------------------------------

inline void http_request_stage::on_start(stage_context& out) {
    // The Mode read the first head; what the client sent after it comes before any new read.
    if (exchange_->first) {
        http_request_head head = std::move(*exchange_->first);
        exchange_->first.reset();
        take_head(out, std::move(head));
    }
    std::vector<std::uint8_t> rest;
    rest.swap(exchange_->input);
    if (!rest.empty()) {
        on_data(out, byte_view{rest.data(), rest.size()});
    }
}

inline void http_request_stage::on_data(stage_context& out, byte_view bytes) {
    while (!bytes.empty()) {
        switch (phase_) {
        case phase::discarding: // after a request that closes the connection: nothing counts
            return;
        case phase::holding:
            exchange_->input.insert(exchange_->input.end(), bytes.begin(), bytes.end());
            return;
        case phase::head: {
            std::size_t used = 0;
            auto status = parser_.feed(bytes, used);
            bytes = bytes.subview(used);
            if (status == http_request_parser::status::failed) {
                exchange_->next_error = parser_.error_status();
                hold(out);
                continue; // what follows is kept, though the Mode only answers and closes
            }
            if (status == http_request_parser::status::complete) {
                take_head(out, parser_.take());
            }
            continue;
        }
        case phase::body: {
            std::size_t used = 0;
            auto status = body_.feed(bytes, used);
            if (status == http_body_scanner::status::failed) {
                body_failed(out); // nothing of a broken body goes on: its origin is left
                return;
            }
            out.pass(bytes.first(used));
            bytes = bytes.subview(used);
            if (status == http_body_scanner::status::complete) {
                phase_ = exchange_->closing ? phase::discarding : phase::head;
            }
            continue;
        }
        }
    }
}

inline void http_request_stage::take_head(stage_context& out, http_request_head head) {
    http_exchange& ex = *exchange_;
    // What the Mode answers (CONNECT, another origin, a 407, Max-Forwards 0), or what the
    // origin's end leaves no connection for, waits for the Mode.
    if (head.connect || !same_origin(head.origin, ex.origin) || ex.origin_gone ||
        !http_authorized(head, ex.config->required) || http_answer_here(head)) {
        ex.next = std::move(head);
        hold(out);
        return;
    }
    std::string rewritten = origin_request_head(head, ex.config->via);
    out.pass(byte_view{reinterpret_cast<const std::uint8_t*>(rewritten.data()), rewritten.size()});
    ex.awaiting.push_back({head.method, head.target, head.minor_version, head.keep_alive});
    if (!head.keep_alive) {
        ex.closing = true; // its response ends the connection: nothing after it is read
    }
    body_ = http_body_scanner(head.body, ex.config->limits);
    if (bodiless(head.body)) {
        phase_ = ex.closing ? phase::discarding : phase::head;
    } else {
        phase_ = phase::body;
    }
}

inline void http_request_stage::body_failed(stage_context& out) {
    http_exchange& ex = *exchange_;
    if (ex.awaiting.size() == 1 && !ex.response_started) {
        // Only this request is unanswered, and nothing of an answer has gone: it is dropped
        // with its origin connection, and the Mode answers 400 (then closes).
        ex.awaiting.clear();
        ex.next_error = 400;
        hold(out);
        return;
    }
    // An answer to it (or to one before it) is on its way: no 400 can be placed now.
    out.close();
    phase_ = phase::discarding;
}

inline void http_request_stage::hold(stage_context& out) {
    phase_ = phase::holding;
    holding_ = true;
    hand_back_when_idle(out);
}

inline void http_request_stage::hand_back_when_idle(stage_context& out) {
    if (exchange_->awaiting.empty()) {
        out.hand_back();
    }
}

inline void http_request_stage::on_end(stage_context& out) {
    exchange_->client_ended = true;
    if (phase_ == phase::holding) {
        return; // the Mode reads the end again when it reads on
    }
    if (exchange_->awaiting.empty() && exchange_->origin_gone) {
        out.close(); // nothing is owed either way: both ends get their FIN now
        return;
    }
    // A client that half-closes after its requests still gets their answers.
    out.end();
}

inline void http_response_stage::start_response() {
    parser_.reset(exchange_->awaiting.front().method);
    parser_ready_ = true;
    started_ = false;
    head_begun_ = false;
    closes_ = false;
    until_close_ = false;
    sent_ = 0;
    status_ = 0;
}

inline void http_response_stage::on_data(stage_context& out, byte_view bytes) {
    while (!bytes.empty()) {
        if (phase_ == phase::done) {
            return; // after a response that closed the connection
        }
        if (exchange_->awaiting.empty()) {
            // Nothing was asked: an origin that talks out of turn is not HTTP.
            bad_response(out);
            return;
        }
        if (phase_ == phase::head) {
            if (!parser_ready_) {
                start_response();
            }
            std::size_t used = 0;
            auto status = parser_.feed(bytes, used);
            bytes = bytes.subview(used);
            head_begun_ = head_begun_ || used != 0;
            if (status == http_response_parser::status::failed) {
                bad_response(out);
                return;
            }
            if (status == http_response_parser::status::complete) {
                take_head(out, parser_.take());
            }
            continue;
        }
        std::size_t used = 0;
        auto status = body_.feed(bytes, used);
        pass(out, bytes.first(used));
        bytes = bytes.subview(used);
        if (status == http_body_scanner::status::failed) {
            out.close(); // part of the response has gone: the client sees it cut short
            phase_ = phase::done;
            return;
        }
        if (status == http_body_scanner::status::complete) {
            response_done(out);
        }
    }
}

inline void http_response_stage::take_head(stage_context& out, http_response_head head) {
    http_exchange& ex = *exchange_;
    const http_exchange::awaiting_response& request = ex.awaiting.front();
    if (head.status == 101) {
        // Upgrade is not passed on, so no origin may switch protocols: not HTTP we can follow.
        bad_response(out);
        return;
    }
    const bool interim = head.interim();
    const bool closes =
        !interim && (!request.client_keeps || head.body.what == http_framing::kind::until_close);
    std::string rewritten =
        client_response_head(head, ex.config->via, request.client_minor_version, closes);
    head_begun_ = false; // an interim head is followed by the final one
    started_ = true;
    ex.response_started = true;
    pass(out, byte_view{reinterpret_cast<const std::uint8_t*>(rewritten.data()), rewritten.size()});
    if (interim) {
        return; // the final response to the same request follows: the parser reads on
    }
    status_ = head.status;
    closes_ = closes;
    until_close_ = head.body.what == http_framing::kind::until_close;
    if (!head.keep_alive) {
        ex.origin_gone = true; // it closes after this response; the next request reconnects
    }
    body_ = http_body_scanner(head.body, ex.config->limits);
    if (bodiless(head.body)) { // its end is here: no byte will come to say so
        response_done(out);
    } else {
        phase_ = phase::body;
    }
}

inline void http_response_stage::response_done(stage_context& out) {
    http_exchange& ex = *exchange_;
    if (ex.config->log) {
        const http_exchange::awaiting_response& request = ex.awaiting.front();
        ex.config->log({ex.client, request.method, request.target, status_, sent_});
    }
    ex.awaiting.pop_front();
    ex.response_started = false;
    parser_ready_ = false;
    phase_ = phase::head;
    if (closes_) {
        // The response that ends the connection: the client asked, or its body ran to the
        // origin's end. Requests pipelined behind it go unanswered, as the client is told.
        phase_ = phase::done;
        out.end();
        return;
    }
    if (ex.awaiting.empty()) {
        if (ex.hand_back_wanted()) {
            out.hand_back();
        } else if (ex.client_ended) {
            phase_ = phase::done;
            out.end();
        }
    }
}

inline void http_response_stage::bad_response(stage_context& out) {
    if (!started_ && !exchange_->awaiting.empty()) {
        std::vector<std::uint8_t> reply = http_proxy_response(502, {});
        out.pass(byte_view{reply.data(), reply.size()});
        if (exchange_->config->log) {
            const http_exchange::awaiting_response& request = exchange_->awaiting.front();
            exchange_->config->log(
                {exchange_->client, request.method, request.target, 502, reply.size()});
        }
    }
    phase_ = phase::done;
    out.close();
}

inline void http_response_stage::on_end(stage_context& out) {
    http_exchange& ex = *exchange_;
    if (phase_ == phase::done) {
        return;
    }
    if (phase_ == phase::body && until_close_) {
        response_done(out); // the end of stream is the end of this body
        if (phase_ != phase::done) {
            phase_ = phase::done;
            out.end();
        }
        return;
    }
    if (phase_ == phase::head && !head_begun_) {
        if (ex.awaiting.empty()) {
            // Between responses: a keep-alive origin that closes. The client keeps its
            // connection; its next request connects again.
            ex.origin_gone = true;
            if (ex.hand_back_wanted()) {
                out.hand_back();
            } else if (ex.client_ended) {
                phase_ = phase::done;
                out.end();
            }
            return;
        }
    }
    // The origin ended a response early, or never answered one: 502 if nothing has gone.
    bad_response(out);
}

} // namespace detail
} // namespace tinyproxy
// ---- end tinyproxy/mode/http_exchange.hpp ----
// #include "tinyproxy/mode/http_proxy.hpp"
// ---- begin tinyproxy/mode/http_proxy.hpp ----
// http_proxy_mode: an HTTP/1.1 forward proxy: absolute-form requests forwarded to their origin
// with keep-alive both ways, and CONNECT tunnels.

#include <cstdint>      // bytes
#include <functional>   // the access log hook
#include <memory>       // the exchange, shared with the tunnel's stages
#include <optional>     // configured credentials
#include <string>       // the realm, the pseudonym
#include <string_view>  // parsing
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"
// #include "tinyproxy/protocol/http_connect.hpp"
// #include "tinyproxy/protocol/http_message.hpp"
// #include "tinyproxy/stage.hpp"
// #include "tinyproxy/mode/mode.hpp"
// #include "tinyproxy/mode/http_exchange.hpp"

namespace tinyproxy {

/// An HTTP/1.1 forward proxy (RFC 9110, RFC 9112), as `http_proxy=` clients use one:
///  - `GET http://host[:port]/path HTTP/1.1` (any method; http:// only, other schemes 501) goes
///    to the origin as `GET /path HTTP/1.1`, with the hop-by-hop fields removed, Host set to
///    the target, Via added and Max-Forwards counted down (origin_request_head); responses come
///    back with their hop-by-hop fields removed and Via added (client_response_head);
///  - bodies pass as framed (Content-Length, chunked, to the origin's close; none for HEAD,
///    1xx, 204, 304); 100-continue passes through; a message whose framing could be read two
///    ways (request smuggling) is refused with 400 before any of it is forwarded;
///  - keep-alive: a client may send request after request (pipelined too, answered in order).
///    Requests to the same origin reuse its connection; a request to another origin (or after
///    the origin closed) waits until the answers before it have gone, then the tunnel hands the
///    client back (stage_context::hand_back) and this session connects anew;
///  - `CONNECT host:port` opens a raw tunnel, as http_connect_mode does;
///  - errors as a proxy gives them, each with a short body: 400, 407 with
///    `Proxy-Authenticate: Basic` when credentials are required and missing or wrong (on every
///    request), 414, 431, 501, 505, 502 for an origin refused, unresolvable or not speaking
///    HTTP, 504 for a connect that timed out. Each closes the client's connection, after the
///    answers before it.
///  - TRACE and OPTIONS with `Max-Forwards: 0` are answered here, and the connection kept.
class http_proxy_mode {
public:
    struct config {
        /// When set, every request (CONNECT too) must carry these Basic credentials.
        std::optional<credentials> required;
        /// The realm named in a 407.
        std::string realm = "tinyproxy";
        /// This proxy's pseudonym in Via ("1.1 tinyproxy.hpp").
        std::string via = "tinyproxy.hpp";
        http_head_limits limits;
        /// Called on the thread (or in the process) serving the client, as each response has
        /// been passed on: an access log. Empty: none.
        std::function<void(const http_exchange_record&)> log;
    };

    http_proxy_mode() : http_proxy_mode(config{}) {}
    explicit http_proxy_mode(config cfg)
        : config_(std::make_shared<const config>(std::move(cfg))),
          settings_(
              std::make_shared<detail::http_exchange::settings>(detail::http_exchange::settings{
                  config_->via, config_->limits, config_->log, config_->required})) {}

    class session {
    public:
        session(std::shared_ptr<const config> cfg,
                std::shared_ptr<const detail::http_exchange::settings> settings,
                const endpoint& client)
            : config_(std::move(cfg)), settings_(std::move(settings)), client_(client) {}

        static constexpr bool uses_local_endpoint = false; // replies never name our address

        mode_step start() { return mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes);
        /// After a tunnel handed the client back: the request it kept, or more to read.
        mode_step on_handed_back();
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint&,
                                               const endpoint&);
        /// A forwarding tunnel's two stages (a CONNECT tunnel has none: it may splice).
        void stages(const tunnel_info& tunnel, tunnel_stages& stages);

    private:
        detail::http_exchange& exchange();
        /// Reads heads from the exchange's input until one needs a connect (or a failure).
        mode_step read_on(std::vector<std::uint8_t> answered);
        /// What to do with one complete head.
        std::optional<mode_step> decide(http_request_head head,
                                        std::vector<std::uint8_t>& answered);
        mode_step refuse(int status, std::error_code why, std::vector<std::uint8_t> answered);

        std::shared_ptr<const config> config_;
        std::shared_ptr<const detail::http_exchange::settings> settings_;
        endpoint client_;
        std::shared_ptr<detail::http_exchange> exchange_; // made at the first byte
        std::unique_ptr<http_request_parser> parser_;     // only between tunnels
        bool tunnel_ = false;                             // the decision was CONNECT: a raw tunnel
        bool forwarding_ = false;                         // the decision was a forwarded request
    };

    session make_session(const session_info& client) const {
        return session{config_, settings_, client.client};
    }

private:
    std::shared_ptr<const config> config_;
    std::shared_ptr<const detail::http_exchange::settings> settings_;
};

// ---------------------------------------------------------------------------------------------

inline detail::http_exchange& http_proxy_mode::session::exchange() {
    if (!exchange_) {
        exchange_ = std::make_shared<detail::http_exchange>(*settings_, client_);
    }
    return *exchange_;
}

inline mode_step http_proxy_mode::session::on_client_data(byte_view bytes) {
    detail::http_exchange& ex = exchange();
    ex.input.insert(ex.input.end(), bytes.begin(), bytes.end());
    return read_on({});
}

inline mode_step http_proxy_mode::session::on_handed_back() {
    detail::http_exchange& ex = exchange();
    ex.awaiting.clear();
    ex.response_started = false;
    ex.origin_gone = false;
    if (ex.next_error != 0) {
        int status = ex.next_error;
        ex.next_error = 0;
        return refuse(status,
                      make_error_code(status == 431 || status == 414 ? errc::message_too_large
                                                                     : errc::protocol_error),
                      {});
    }
    std::vector<std::uint8_t> answered;
    if (ex.next) {
        http_request_head head = std::move(*ex.next);
        ex.next.reset();
        if (std::optional<mode_step> step = decide(std::move(head), answered)) {
            return std::move(*step);
        }
    }
    return read_on(std::move(answered));
}

inline mode_step http_proxy_mode::session::read_on(std::vector<std::uint8_t> answered) {
    detail::http_exchange& ex = exchange();
    if (!parser_) {
        parser_ = std::make_unique<http_request_parser>(config_->limits);
    }
    while (true) {
        std::size_t used = 0;
        auto status = parser_->feed(byte_view{ex.input.data(), ex.input.size()}, used);
        ex.input.erase(ex.input.begin(), ex.input.begin() + static_cast<std::ptrdiff_t>(used));
        if (status == http_request_parser::status::need_more) {
            mode_step step = mode_step::need_more(std::move(answered));
            return step;
        }
        if (status == http_request_parser::status::failed) {
            int code = parser_->error_status();
            return refuse(code, parser_->error(), std::move(answered));
        }
        if (std::optional<mode_step> step = decide(parser_->take(), answered)) {
            return std::move(*step);
        }
    }
}

inline std::optional<mode_step>
http_proxy_mode::session::decide(http_request_head head, std::vector<std::uint8_t>& answered) {
    detail::http_exchange& ex = exchange();
    if (!detail::http_authorized(head, config_->required)) {
        return refuse(407, make_error_code(errc::auth_failed), std::move(answered));
    }
    if (std::optional<std::vector<std::uint8_t>> local = detail::http_answer_here(head)) {
        if (head.body.what != http_framing::kind::none || !head.keep_alive) {
            mode_step step = mode_step::fail(make_error_code(errc::protocol_error));
            answered.insert(answered.end(), local->begin(), local->end());
            step.to_client = std::move(answered);
            return step; // a body we would have to skip: answered, and closed
        }
        answered.insert(answered.end(), local->begin(), local->end());
        return std::nullopt; // read on: the next request may be here already
    }
    parser_.reset(); // until the tunnel hands the client back, its stages read the requests
    host_port target = head.origin;
    ex.origin = target;
    tunnel_ = head.connect;
    forwarding_ = !head.connect;
    mode_step step;
    if (head.connect) {
        // What followed the CONNECT head is the tunnel's first bytes, untouched.
        step = mode_step::connect_to(std::move(target), std::move(ex.input));
        ex.input.clear();
    } else {
        ex.first = std::move(head);
        step = mode_step::connect_to(std::move(target));
    }
    step.to_client = std::move(answered);
    return step;
}

inline mode_step http_proxy_mode::session::refuse(int status, std::error_code why,
                                                  std::vector<std::uint8_t> answered) {
    namespace h = detail::http_head;
    std::string fields;
    if (status == 407) {
        fields = "Proxy-Authenticate: Basic realm=" + h::quoted(config_->realm) + "\r\n";
    }
    std::vector<std::uint8_t> reply = detail::http_proxy_response(status, fields);
    answered.insert(answered.end(), reply.begin(), reply.end());
    exchange_.reset();
    parser_.reset();
    return mode_step::fail(why ? why : make_error_code(errc::protocol_error), std::move(answered));
}

inline std::vector<std::uint8_t>
http_proxy_mode::session::on_connected(std::error_code result, const endpoint&, const endpoint&) {
    if (result) {
        exchange_.reset();
        return detail::http_proxy_response(detail::http_head::connect_failure_status(result), {});
    }
    if (tunnel_) {
        static constexpr std::string_view text = "HTTP/1.1 200 Connection established\r\n\r\n";
        exchange_.reset(); // a raw tunnel: nothing more is read as HTTP
        return std::vector<std::uint8_t>(text.begin(), text.end());
    }
    return {};
}

inline void http_proxy_mode::session::stages(const tunnel_info&, tunnel_stages& stages) {
    if (!forwarding_ || !exchange_) {
        return;
    }
    stages.to_upstream.push_back(std::make_unique<detail::http_request_stage>(exchange_));
    stages.to_client.push_back(std::make_unique<detail::http_response_stage>(exchange_));
}

} // namespace tinyproxy
// ---- end tinyproxy/mode/http_proxy.hpp ----
// #include "tinyproxy/mode/auto.hpp"
// ---- begin tinyproxy/mode/auto.hpp ----
// auto_mode: SOCKS4, 4a, 5 and HTTP (CONNECT and forwarding) on one port, told apart by the
// client's first byte.

#include <cstdint>      // bytes
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/protocol/step.hpp"
// #include "tinyproxy/stage.hpp"
// #include "tinyproxy/mode/mode.hpp"
// #include "tinyproxy/mode/socks.hpp"
// #include "tinyproxy/mode/http_proxy.hpp"

namespace tinyproxy {

/// Every proxy protocol a client may speak, on one port: a first byte of 4 is SOCKS4 or 4a,
/// 5 is SOCKS5 (socks_mode), anything else is HTTP (http_proxy_mode: an HTTP request begins
/// with a method's letter; whatever else is sent gets the HTTP parser's 400). Each client gets
/// exactly what the single-protocol mode would give it. The wait for the first byte is the
/// handshake's, under its deadline.
class auto_mode {
public:
    struct config {
        socks_mode::config socks;
        http_proxy_mode::config http;
    };

    auto_mode() : auto_mode(config{}) {}
    explicit auto_mode(config cfg) : socks_(std::move(cfg.socks)), http_(std::move(cfg.http)) {}

    class session {
    public:
        session(socks_mode::session socks, http_proxy_mode::session http)
            : socks_(std::move(socks)), http_(std::move(http)) {}

        mode_step start() { return mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes) {
            if (speaks_ == protocol::undecided && !bytes.empty()) {
                speaks_ = bytes[0] == 4 || bytes[0] == 5 ? protocol::socks : protocol::http;
            }
            switch (speaks_) {
            case protocol::socks:
                return socks_.on_client_data(bytes);
            case protocol::http:
                return http_.on_client_data(bytes);
            default:
                return mode_step::need_more();
            }
        }
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
                                               const endpoint& upstream) {
            return speaks_ == protocol::socks ? socks_.on_connected(result, local, upstream)
                                              : http_.on_connected(result, local, upstream);
        }
        mode_step on_handed_back() {
            if (speaks_ != protocol::http) { // only HTTP's stages hand a client back
                return mode_step::fail(make_error_code(errc::protocol_error));
            }
            return http_.on_handed_back();
        }
        void stages(const tunnel_info& tunnel, tunnel_stages& stages) {
            if (speaks_ == protocol::http) {
                http_.stages(tunnel, stages);
            }
        }

    private:
        enum class protocol : std::uint8_t { undecided, socks, http };

        socks_mode::session socks_;
        http_proxy_mode::session http_;
        protocol speaks_ = protocol::undecided;
    };

    session make_session(const session_info& client) const {
        return session{socks_.make_session(client), http_.make_session(client)};
    }

private:
    socks_mode socks_;
    http_proxy_mode http_;
};

} // namespace tinyproxy
// ---- end tinyproxy/mode/auto.hpp ----
// #include "tinyproxy/proxy.hpp"
// ---- begin tinyproxy/proxy.hpp ----
// basic_proxy<Policy, Mode>: the listener, options, stop signal and counters, and the Server
// interface that a concurrency policy drives.

#include <algorithm>    // std::min
#include <atomic>       // counters
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
// #include "tinyproxy/server.hpp"
// #include "tinyproxy/session.hpp"
// #include "tinyproxy/session/blocking.hpp"
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
    /// For rejected: errc::client_not_allowed (outside every `allow` range) or
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
    std::uint64_t accepted = 0;              ///< clients accepted (including those rejected)
    std::uint64_t active = 0;                ///< sessions running now
    std::uint64_t finished = 0;              ///< sessions ended cleanly
    std::uint64_t failed = 0;                ///< sessions ended by an error, reset or timeout
    std::uint64_t rejected_limit = 0;        ///< closed at once: past max_connections
    std::uint64_t rejected_access = 0;       ///< closed at once: outside every allow range
    std::uint64_t handshake_failures = 0;    ///< failed before the Mode decided (incl. timeouts)
    std::uint64_t connect_failures = 0;      ///< the upstream refused, did not resolve or timed out
    std::uint64_t bytes_to_upstream = 0;     ///< bytes relayed client -> upstream (ended sessions)
    std::uint64_t bytes_to_client = 0;       ///< bytes relayed upstream -> client (ended sessions)
    std::uint64_t udp_associations = 0;      ///< UDP associations ended (SOCKS5 UDP ASSOCIATE)
    std::uint64_t datagrams_to_upstream = 0; ///< their datagrams, client -> remotes
    std::uint64_t datagrams_to_client = 0;   ///< their datagrams, remotes -> client
    std::uint64_t datagrams_dropped = 0;     ///< fragments, malformed, other sources, ...
};

/// What a policy sees of a proxy: a listener, a stop signal, and sessions to run. Policies are
/// templates over it; which calls each kind of policy makes is stated in server.hpp.
template <class Mode>
class proxy_server {
public:
    using mode_type = Mode;
    using session_type = basic_session<typename Mode::session>;

    proxy_server(options opts, Mode mode) : options_(std::move(opts)), mode_(std::move(mode)) {}
    proxy_server(const proxy_server&) = delete;
    proxy_server& operator=(const proxy_server&) = delete;

    // --- set-up, by basic_proxy ------------------------------------------------------------

    void listen(std::error_code& ec) noexcept;
    endpoint local_endpoint() const noexcept { return listener_.local_endpoint(); }
    bool listening() const noexcept { return static_cast<bool>(listener_); }
    /// Async-signal-safe: an atomic exchange and a close(2).
    void request_stop() noexcept { stop_.request(); }

    // --- the Server interface policies call --------------------------------------------------

    bool stopping() const noexcept { return stop_.requested(); }
    /// Turns readable (end of file) once stop is requested, in this process and in forked
    /// children alike: every wait in the library includes it.
    int stop_fd() const noexcept { return stop_.fd(); }
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
    session_result serve(accepted_client client) noexcept {
        return serve(std::move(client), nullptr, 0);
    }
    /// The same, reading into `scratch` (`scratch_size` bytes) when it is not null, instead of
    /// a buffer of options().buffer_size from the heap (fork_policy's children pass one).
    session_result serve(accepted_client client, std::uint8_t* scratch,
                         std::size_t scratch_size) noexcept;
    /// Counts a session that has ended, and reports it to the event hook.
    void session_ended(const session_result& result) noexcept;
    /// Counts a session that ended elsewhere (a fork child, which reported it itself).
    void count_ended(const session_result& result) noexcept;
    /// After run(): closes the listener and the stop signal (the proxy runs once).
    void close() noexcept {
        listener_.close();
        stop_.close();
    }
    /// Called in a freshly forked child: drops the parent's listener and stop-signal writer.
    void enter_child() noexcept {
        listener_.close();
        stop_.close_writer();
    }

    stats snapshot() const noexcept;
    const options& get_options() const noexcept { return options_; }
    const Mode& mode() const noexcept { return mode_; }

private:
    options options_;
    Mode mode_;
    listener listener_;
    /// try_accept() takes every client non-blocking; listen() adds Nagle off where it can.
    client_socket_setup client_setup_{true, false};
    detail::stop_signal stop_;
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
    std::atomic<std::uint64_t> failed_{0};
    std::atomic<std::uint64_t> rejected_limit_{0};
    std::atomic<std::uint64_t> rejected_access_{0};
    std::atomic<std::uint64_t> handshake_failures_{0};
    std::atomic<std::uint64_t> connect_failures_{0};
    std::atomic<std::uint64_t> bytes_to_upstream_{0};
    std::atomic<std::uint64_t> bytes_to_client_{0};
    std::atomic<std::uint64_t> udp_associations_{0};
    std::atomic<std::uint64_t> datagrams_to_upstream_{0};
    std::atomic<std::uint64_t> datagrams_to_client_{0};
    std::atomic<std::uint64_t> datagrams_dropped_{0};
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
    /// every thread it started is joined, every child reaped, every descriptor closed. Throws
    /// std::system_error when it cannot listen, or when the policy cannot start.
    void run() {
        if (!server_.listening()) {
            listen();
        }
        try {
            policy_.run(server_);
        } catch (...) { // the policy could not run (e.g. no descriptor for its event loop)
            server_.close();
            throw;
        }
        server_.close(); // a client arriving now is refused, not left in a dead backlog
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
    if (!stop_.open(ec)) {
        return;
    }
    listener_ = listener::open(options_.listen, options_.backlog, ec);
    if (!ec) {
        listener_.set_nonblocking(true, ec);
    }
    if (!ec && TINYPROXY_ACCEPT_INHERITS_NODELAY) {
        // Every client then comes with Nagle off. Failing here costs a setsockopt per client.
        std::error_code failed;
        listener_.set_nodelay(true, failed);
        client_setup_.nodelay = !failed;
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
        out.serial = accepted_.fetch_add(1, std::memory_order_relaxed) + 1;
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
            report({session_event::kind::rejected, client.peer,
                    make_error_code(errc::client_not_allowed), nullptr});
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
    endpoint bound = listener_.local_endpoint();
    if (bound.address.is_unspecified()) { // listening on every address: ask which one
        std::error_code ignored;
        info.local = client.connection.local_endpoint(ignored);
    } else {
        info.local = bound; // one system call less per client
    }
    report({session_event::kind::opened, client.peer, {}, nullptr});
    return session_type(std::move(client.connection), mode_.make_session(info), options_,
                        client.peer, client_setup_, client.serial);
}

template <class Mode>
session_result proxy_server<Mode>::serve(accepted_client client, std::uint8_t* scratch,
                                         std::size_t scratch_size) noexcept {
    session_result result;
    if (stopping()) { // a client that was queued when stop came: close it, connect nowhere
        result.error = make_error_code(errc::stopped);
        session_ended(result);
        return result;
    }
    try {
        session_type session = make_session(std::move(client));
        result = scratch != nullptr && scratch_size > 0
                     ? run_session(session, stop_fd(), scratch, scratch_size)
                     : run_session(session, stop_fd(), options_.buffer_size);
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
    if (result.udp) {
        udp_associations_.fetch_add(1, std::memory_order_relaxed);
        datagrams_to_upstream_.fetch_add(result.datagrams.to_upstream, std::memory_order_relaxed);
        datagrams_to_client_.fetch_add(result.datagrams.to_client, std::memory_order_relaxed);
        datagrams_dropped_.fetch_add(result.datagrams.dropped(), std::memory_order_relaxed);
    }
    if (!result.error) {
        finished_.fetch_add(1, std::memory_order_relaxed);
    } else {
        failed_.fetch_add(1, std::memory_order_relaxed);
    }
    // A child's exit status or a stop says nothing about where a session went wrong.
    bool has_stage = result.error != errc::child_failed && result.error != errc::stopped;
    if (result.error && has_stage) {
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
    // Each counter read on its own: no difference of two counters can show a session that
    // has not happened (a reader between two increments would).
    out.failed = failed_.load(std::memory_order_relaxed);
    std::uint64_t gone = ended + out.rejected_limit + out.rejected_access;
    out.active = out.accepted > gone ? out.accepted - gone : 0;
    out.handshake_failures = handshake_failures_.load(std::memory_order_relaxed);
    out.connect_failures = connect_failures_.load(std::memory_order_relaxed);
    out.bytes_to_upstream = bytes_to_upstream_.load(std::memory_order_relaxed);
    out.bytes_to_client = bytes_to_client_.load(std::memory_order_relaxed);
    out.udp_associations = udp_associations_.load(std::memory_order_relaxed);
    out.datagrams_to_upstream = datagrams_to_upstream_.load(std::memory_order_relaxed);
    out.datagrams_to_client = datagrams_to_client_.load(std::memory_order_relaxed);
    out.datagrams_dropped = datagrams_dropped_.load(std::memory_order_relaxed);
    return out;
}

} // namespace tinyproxy
// ---- end tinyproxy/proxy.hpp ----
// #include "tinyproxy/api/http.hpp"
// ---- begin tinyproxy/api/http.hpp ----
// HTTP/1.1 for a control API (RFC 9112): a sans-I/O request reader and a response writer.

#include <cstddef>     // std::size_t
#include <cstdint>     // bytes
#include <string>      // requests, responses
#include <string_view> // parsing
#include <utility>     // std::move
#include <vector>      // header fields

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/bytes.hpp"
// #include "tinyproxy/json.hpp"
// #include "tinyproxy/protocol/http_connect.hpp"

namespace tinyproxy {

/// What one request may hold. Every limit fails on the first byte past it, so a reader's memory
/// stays bounded by max_head plus max_body.
struct http_limits {
    /// The most bytes in the request line and header section (blank line and any empty lines
    /// before the request line included); the same again for each chunk-size line (extensions
    /// included) and for the trailer section of a chunked body.
    std::size_t max_head = 16 * 1024;
    /// The most header fields.
    std::size_t max_headers = 64;
    /// The most body bytes (after chunked decoding).
    std::size_t max_body = 1024 * 1024;
};

struct http_header {
    std::string name;  ///< as sent (compare with iequals: names are case-insensitive)
    std::string value; ///< without the optional whitespace around it
};

/// One complete request, body decoded.
struct http_request {
    std::string method;    ///< case-sensitive, as sent ("GET")
    std::string target;    ///< as sent: "/path?query", "*", or absolute form "http://h/path"
    int minor_version = 1; ///< HTTP/1.<minor_version>
    std::vector<http_header> headers;
    std::string body;

    /// The first field named `name` (case-insensitive), or null.
    const std::string* header(std::string_view name) const noexcept;
    /// The target's path: without "?query", and without "scheme://authority" in absolute form
    /// ("/" when that form has no path).
    std::string_view path() const noexcept;
    /// What follows the first '?', without it ("" when there is none).
    std::string_view query() const noexcept;
    /// HTTP/1.1: true unless Connection lists "close"; HTTP/1.0: only if it lists "keep-alive".
    bool keep_alive() const noexcept;
    /// Whether a Connection field lists `option` (case-insensitive).
    bool connection_has(std::string_view option) const noexcept;
};

/// Reads requests from a byte stream, one after another (keep-alive, pipelining). No I/O and
/// no clock: the caller feeds what arrived, in any split (down to a byte at a time, with the same
/// outcome), and keeps its own deadlines.
///
/// Accepted (RFC 9112): `method SP target SP HTTP/1.x`, CRLF or bare LF line ends, empty lines
/// before the request line skipped; fields `token ":" OWS value OWS`; a body framed by
/// Content-Length (repeated only with the same value) or by `Transfer-Encoding: chunked` (chunk
/// extensions skipped, trailer fields read and dropped); no body otherwise.
///
/// Refused (error_status(), error_message(); the connection cannot be read further):
///  - 400: a malformed request line, field line or chunk; a bare CR; a control character
///    (NUL, CR, ...) in a field; obs-fold; whitespace before a field's colon; a target that is
///    not origin, absolute or asterisk form; Content-Length not digits or two that differ; both
///    Content-Length and Transfer-Encoding (the request smuggling pattern); Transfer-Encoding
///    in HTTP/1.0 or chunked twice; an HTTP/1.1 request without exactly one Host field; a
///    chunk-size line past max_head.
///  - 413: a body (Content-Length or chunks so far) past max_body.
///  - 431: the head past max_head, more than max_headers fields, the trailers past max_head.
///  - 501: a transfer-coding other than chunked.
///  - 505: a version other than HTTP/1.x.
class http_request_reader {
public:
    enum class status { need_more, complete, failed };

    explicit http_request_reader(http_limits limits = {}) : limits_(limits) {}

    /// Feeds bytes, consuming what it can; `used` says how many. need_more: all were used;
    /// complete: the request ends at `used` (what follows belongs to the next one: call take(),
    /// then feed the rest); failed: stop reading. Once complete or failed, feeding again uses
    /// nothing and answers the same until take().
    [[nodiscard]] status feed(byte_view bytes, std::size_t& used);
    /// After complete: the request. The reader then starts on the next one.
    http_request take();

    /// Some byte of a request (or an empty line before one) was read: a request is under way.
    bool started() const noexcept { return phase_ != phase::idle; }
    /// The head is complete and the body not yet.
    bool reading_body() const noexcept;
    /// The head asked "Expect: 100-continue" and the body is still to come: a server sends
    /// "HTTP/1.1 100 Continue" now (once), or the client may wait for it before sending.
    bool expects_continue() const noexcept { return expect_continue_ && reading_body(); }

    /// After failed: 400, 413, 431, 501 or 505.
    int error_status() const noexcept { return error_status_; }
    /// After failed: what was wrong, in a few words.
    const std::string& error_message() const noexcept { return error_message_; }

private:
    enum class phase {
        idle,         // nothing of the next request yet
        request_line, // reading the request line (or empty lines before it)
        fields,       // header field lines
        body,         // Content-Length bytes
        chunk_size,   // a chunk-size line, extensions included
        chunk_data,   // a chunk's bytes
        chunk_end,    // the CRLF after a chunk's bytes
        trailers,     // trailer field lines after the last chunk
        complete,
        failed
    };

    bool line_byte(std::uint8_t byte);
    bool end_of_line();
    bool request_line(std::string_view line);
    bool field_line(std::string_view line);
    bool end_of_head();
    bool body_framing();
    bool content_length(std::size_t& length);
    bool transfer_coding();
    bool chunk_size_line(std::string_view line);
    bool trailer_line(std::string_view line);
    std::size_t take_body(byte_view bytes);
    bool chunk_end_byte(std::uint8_t byte);
    bool finish();
    bool fail(int code, const char* message);

    http_limits limits_;
    phase phase_ = phase::idle;
    http_request request_;
    std::string line_;                 // the line being read, without its LF (a CR before it kept)
    std::size_t line_budget_used_ = 0; // bytes against max_head in this section (head or framing)
    std::size_t body_left_ = 0;        // Content-Length or chunk bytes still to come
    bool expect_continue_ = false;
    int error_status_ = 0;
    std::string error_message_;
};

/// A response to write.
struct http_response {
    int status = 200;
    std::string content_type = "application/json"; ///< none written when empty or for 204
    std::string body;
    std::vector<http_header> headers; ///< extra fields, written after the framing ones
    bool close = false;               ///< "Connection: close": the server closes after sending it
};

/// The reason phrase for `status` ("OK", "Not Found", ...), "" for a code it does not know (the
/// status line then ends after the code, which RFC 9112 allows).
std::string_view reason_phrase(int status) noexcept;
/// The response as bytes: status line, Content-Type (unless 204 or empty), Content-Length (none
/// for 1xx and 204), "Connection: close" when `close`, the extra fields, a blank line, the body
/// (none for 1xx and 204). Control characters in field names and values are dropped, so no
/// value can split the response.
std::string format_response(const http_response& response);
/// A response with Toxiproxy's error body, `{"error":"<message>","status":<status>}`.
http_response json_error(int status, std::string_view message);

// ---------------------------------------------------------------------------------------------

namespace detail {
namespace http_api {

/// Calls `each` with every element of a comma-separated list (RFC 9110 section 5.6.1), trimmed;
/// empty elements are skipped, as the list rule allows.
template <class Each>
void for_each_list_element(std::string_view list, Each&& each) {
    while (!list.empty()) {
        std::size_t comma = list.find(',');
        std::string_view element = http_head::trim_ows(list.substr(0, comma));
        if (!element.empty()) {
            each(element);
        }
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
    }
}

/// Control characters (HTAB excepted) and DEL: never in a field, never in a response we write.
inline bool is_control(std::uint8_t c) noexcept { return (c < 0x20 && c != '\t') || c == 0x7F; }

inline int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/// `text` without control characters.
inline std::string printable(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        if (!is_control(static_cast<std::uint8_t>(c))) {
            out += c;
        }
    }
    return out;
}

} // namespace http_api
} // namespace detail

// --- http_request ----------------------------------------------------------------------------

inline const std::string* http_request::header(std::string_view name) const noexcept {
    for (const http_header& field : headers) {
        if (detail::http_head::iequals(field.name, name)) {
            return &field.value;
        }
    }
    return nullptr;
}

inline std::string_view http_request::path() const noexcept {
    std::string_view path = target;
    path = path.substr(0, path.find('?'));
    auto scheme_end = path.find("://");
    if (!path.empty() && path.front() != '/' && scheme_end != std::string_view::npos) {
        // Absolute form: the path starts at the first '/' after the authority.
        auto slash = path.find('/', scheme_end + 3);
        return slash == std::string_view::npos ? std::string_view("/") : path.substr(slash);
    }
    return path;
}

inline std::string_view http_request::query() const noexcept {
    auto mark = target.find('?');
    return mark == std::string::npos ? std::string_view{}
                                     : std::string_view(target).substr(mark + 1);
}

inline bool http_request::connection_has(std::string_view option) const noexcept {
    bool found = false;
    for (const http_header& field : headers) {
        if (detail::http_head::iequals(field.name, "connection")) {
            detail::http_api::for_each_list_element(field.value, [&](std::string_view element) {
                found = found || detail::http_head::iequals(element, option);
            });
        }
    }
    return found;
}

inline bool http_request::keep_alive() const noexcept {
    return minor_version >= 1 ? !connection_has("close") : connection_has("keep-alive");
}

// --- http_request_reader -----------------------------------------------------------------------

inline bool http_request_reader::reading_body() const noexcept {
    return phase_ == phase::body || phase_ == phase::chunk_size || phase_ == phase::chunk_data ||
           phase_ == phase::chunk_end || phase_ == phase::trailers;
}

inline http_request_reader::status http_request_reader::feed(byte_view bytes, std::size_t& used) {
    used = 0;
    while (used < bytes.size() && phase_ != phase::complete && phase_ != phase::failed) {
        if (phase_ == phase::body || phase_ == phase::chunk_data) {
            used += take_body(bytes.subview(used));
            continue;
        }
        if (phase_ == phase::idle) {
            phase_ = phase::request_line;
        }
        const std::uint8_t byte = bytes[used++];
        if (phase_ == phase::chunk_end) {
            chunk_end_byte(byte);
        } else {
            line_byte(byte);
        }
    }
    if (phase_ == phase::complete) {
        return status::complete;
    }
    return phase_ == phase::failed ? status::failed : status::need_more;
}

inline http_request http_request_reader::take() {
    http_request out = std::move(request_);
    request_ = http_request{};
    phase_ = phase::idle;
    line_.clear();
    line_budget_used_ = 0;
    body_left_ = 0;
    expect_continue_ = false;
    return out;
}

/// One byte of a line (request line, field, chunk size, trailer): checked as it comes, so a
/// control character or an overlong section fails at once, without waiting for the line end.
inline bool http_request_reader::line_byte(std::uint8_t byte) {
    if (++line_budget_used_ > limits_.max_head) {
        bool in_head = phase_ == phase::request_line || phase_ == phase::fields;
        if (in_head || phase_ == phase::trailers) {
            return fail(431,
                        in_head ? "request header section too large" : "trailer section too large");
        }
        return fail(400, "chunk framing too large");
    }
    if (!line_.empty() && line_.back() == '\r' && byte != '\n') {
        return fail(400, "bare CR");
    }
    if (byte == '\n') {
        return end_of_line();
    }
    // HTAB is fine in field values and chunk extensions, but not in a request line; nor are
    // bytes >= 0x80, which only field values may carry (obs-text).
    bool control = detail::http_api::is_control(byte) && byte != '\r';
    bool bad_in_request_line = phase_ == phase::request_line && (byte == '\t' || byte >= 0x80);
    if (control || bad_in_request_line) {
        return fail(400, "control character in request head");
    }
    line_.push_back(static_cast<char>(byte));
    return true;
}

inline bool http_request_reader::end_of_line() {
    std::string_view line = line_;
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    bool ok = true;
    switch (phase_) {
    case phase::request_line:
        // Empty lines before a request line are skipped (RFC 9112 section 2.2): some clients
        // send a CRLF after a POST body.
        ok = line.empty() || request_line(line);
        break;
    case phase::fields:
        ok = line.empty() ? end_of_head() : field_line(line);
        break;
    case phase::chunk_size:
        ok = chunk_size_line(line);
        break;
    default: // trailers
        ok = line.empty() ? finish() : trailer_line(line);
        break;
    }
    line_.clear();
    return ok;
}

inline bool http_request_reader::request_line(std::string_view line) {
    namespace h = detail::http_head;
    auto first_space = line.find(' ');
    std::string_view method = line.substr(0, first_space);
    std::string_view rest =
        first_space == std::string_view::npos ? std::string_view{} : line.substr(first_space + 1);
    auto second_space = rest.find(' ');
    if (!h::is_token(method) || second_space == std::string_view::npos) {
        return fail(400, "malformed request line");
    }
    std::string_view target = rest.substr(0, second_space);
    std::string_view version = rest.substr(second_space + 1);
    bool version_syntax = version.size() == 8 && version.substr(0, 5) == "HTTP/" &&
                          version[5] >= '0' && version[5] <= '9' && version[6] == '.' &&
                          version[7] >= '0' && version[7] <= '9';
    bool origin_form = !target.empty() && target.front() == '/';
    bool absolute_form = target.find("://") != std::string_view::npos &&
                         h::is_tchar(static_cast<std::uint8_t>(target[0]));
    if (!version_syntax || !(origin_form || absolute_form || target == "*")) {
        return fail(400, "malformed request line");
    }
    if (version[5] != '1') {
        return fail(505, "HTTP version not supported");
    }
    request_.method = std::string(method);
    request_.target = std::string(target);
    request_.minor_version = version[7] - '0';
    phase_ = phase::fields;
    return true;
}

inline bool http_request_reader::field_line(std::string_view line) {
    namespace h = detail::http_head;
    if (request_.headers.size() >= limits_.max_headers) {
        return fail(431, "too many header fields");
    }
    // A line starting with whitespace is obs-fold; whitespace before the colon is refused too
    // (RFC 9112 sections 5.1 and 5.2): both have been used to smuggle a field past a proxy.
    auto colon = line.find(':');
    if (line.front() == ' ' || line.front() == '\t' || colon == std::string_view::npos ||
        !h::is_token(line.substr(0, colon))) {
        return fail(400, "malformed header field");
    }
    request_.headers.push_back(
        {std::string(line.substr(0, colon)), std::string(h::trim_ows(line.substr(colon + 1)))});
    return true;
}

inline bool http_request_reader::end_of_head() {
    namespace h = detail::http_head;
    std::size_t hosts = 0;
    for (const http_header& field : request_.headers) {
        hosts += h::iequals(field.name, "host") ? 1 : 0;
        if (h::iequals(field.name, "expect") && h::iequals(field.value, "100-continue")) {
            expect_continue_ = true;
        }
    }
    // RFC 9112 section 3.2: a 1.1 request has exactly one Host; 1.0 at most one.
    if ((request_.minor_version >= 1 && hosts != 1) || hosts > 1) {
        return fail(400, hosts == 0 ? "missing Host header" : "more than one Host header");
    }
    line_budget_used_ = 0; // a chunked body's framing gets a budget of its own
    return body_framing();
}

/// Which body follows the head (RFC 9112 section 6.3).
inline bool http_request_reader::body_framing() {
    bool has_length = request_.header("content-length") != nullptr;
    if (request_.header("transfer-encoding") != nullptr) {
        if (has_length) {
            return fail(400, "both Content-Length and Transfer-Encoding");
        }
        return transfer_coding();
    }
    std::size_t length = 0;
    if (has_length && !content_length(length)) {
        return false;
    }
    if (length == 0) {
        return finish();
    }
    body_left_ = length;
    phase_ = phase::body;
    return true;
}

/// Every Content-Length field (and list element) must be the same run of digits.
inline bool http_request_reader::content_length(std::size_t& length) {
    bool seen = false;
    bool valid = true;
    std::string_view first;
    for (const http_header& field : request_.headers) {
        if (!detail::http_head::iequals(field.name, "content-length")) {
            continue;
        }
        valid = valid && !field.value.empty();
        detail::http_api::for_each_list_element(field.value, [&](std::string_view element) {
            valid = valid && element.find_first_not_of("0123456789") == std::string_view::npos &&
                    (!seen || element == first);
            first = seen ? first : element;
            seen = true;
        });
    }
    if (!valid || !seen) {
        return fail(400, "invalid Content-Length");
    }
    length = 0;
    for (char digit : first) {
        auto value = static_cast<std::size_t>(digit - '0');
        if (value > limits_.max_body || length > (limits_.max_body - value) / 10) {
            return fail(413, "request body too large");
        }
        length = length * 10 + value;
    }
    return true;
}

/// Only chunked, once, as the last and only coding; HTTP/1.0 has no transfer codings
/// (RFC 9112 section 6.1 says its framing is then faulty).
inline bool http_request_reader::transfer_coding() {
    std::size_t chunked = 0;
    bool other = false;
    for (const http_header& field : request_.headers) {
        if (detail::http_head::iequals(field.name, "transfer-encoding")) {
            detail::http_api::for_each_list_element(field.value, [&](std::string_view coding) {
                bool is_chunked = detail::http_head::iequals(coding, "chunked");
                chunked += is_chunked ? 1 : 0;
                other = other || !is_chunked;
            });
        }
    }
    if (request_.minor_version == 0) {
        return fail(400, "Transfer-Encoding in an HTTP/1.0 request");
    }
    if (other) {
        return fail(501, "transfer coding not implemented");
    }
    if (chunked != 1) {
        return fail(400, "invalid Transfer-Encoding");
    }
    phase_ = phase::chunk_size;
    return true;
}

/// chunk-size [ chunk-ext ]: hex digits, then anything from ';' on is an extension, skipped.
inline bool http_request_reader::chunk_size_line(std::string_view line) {
    std::size_t digits = 0;
    std::size_t size = 0;
    std::size_t room = limits_.max_body - request_.body.size();
    for (; digits < line.size(); ++digits) {
        int value = detail::http_api::hex_value(line[digits]);
        if (value < 0) {
            break;
        }
        auto digit = static_cast<std::size_t>(value);
        if (digit > room || size > (room - digit) / 16) {
            return fail(413, "request body too large");
        }
        size = size * 16 + digit;
    }
    std::string_view rest = detail::http_head::trim_ows(line.substr(digits));
    if (digits == 0 || (!rest.empty() && rest.front() != ';')) {
        return fail(400, "malformed chunk size");
    }
    if (size == 0) {
        phase_ = phase::trailers;
        line_budget_used_ = 0; // trailers get a budget of their own
        return true;
    }
    body_left_ = size;
    phase_ = phase::chunk_data;
    return true;
}

inline bool http_request_reader::trailer_line(std::string_view line) {
    auto colon = line.find(':');
    if (line.front() == ' ' || line.front() == '\t' || colon == std::string_view::npos ||
        !detail::http_head::is_token(line.substr(0, colon))) {
        return fail(400, "malformed trailer field");
    }
    return true; // dropped: nothing here needs a trailer
}

inline std::size_t http_request_reader::take_body(byte_view bytes) {
    std::size_t count = bytes.size() < body_left_ ? bytes.size() : body_left_;
    request_.body.append(reinterpret_cast<const char*>(bytes.data()), count);
    body_left_ -= count;
    if (body_left_ == 0) {
        if (phase_ == phase::body) {
            finish();
        } else {
            phase_ = phase::chunk_end;
        }
    }
    return count;
}

/// The line end after a chunk's data: CRLF, or a bare LF.
inline bool http_request_reader::chunk_end_byte(std::uint8_t byte) {
    if (byte == '\r' && line_.empty()) {
        line_.push_back('\r');
        return true;
    }
    if (byte != '\n') {
        return fail(400, "malformed chunk end");
    }
    line_.clear();
    line_budget_used_ = 0; // each chunk-size line may take up to max_head
    phase_ = phase::chunk_size;
    return true;
}

inline bool http_request_reader::finish() {
    phase_ = phase::complete;
    line_.clear();
    return true;
}

inline bool http_request_reader::fail(int code, const char* message) {
    phase_ = phase::failed;
    error_status_ = code;
    error_message_ = message;
    line_.clear();
    line_.shrink_to_fit();
    return false;
}

// --- responses ---------------------------------------------------------------------------------

inline std::string_view reason_phrase(int status) noexcept {
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "";
    }
}

inline std::string format_response(const http_response& response) {
    using detail::http_api::printable;
    // 1xx and 204 have no content (RFC 9110 sections 15.2 and 15.3.5), so no framing either.
    bool no_content = response.status == 204 || (response.status >= 100 && response.status < 200);
    std::string out = "HTTP/1.1 " + std::to_string(response.status) + " ";
    out += reason_phrase(response.status);
    out += "\r\n";
    if (!no_content && !response.content_type.empty()) {
        out += "Content-Type: " + printable(response.content_type) + "\r\n";
    }
    if (!no_content) {
        out += "Content-Length: " + std::to_string(response.body.size()) + "\r\n";
    }
    if (response.close) {
        out += "Connection: close\r\n";
    }
    for (const http_header& field : response.headers) {
        out += printable(field.name) + ": " + printable(field.value) + "\r\n";
    }
    out += "\r\n";
    if (!no_content) {
        out += response.body;
    }
    return out;
}

inline http_response json_error(int status, std::string_view message) {
    json_value body = json_value::object();
    body.set("error", json_value(std::string(message)));
    body.set("status", json_value(static_cast<std::int64_t>(status)));
    http_response response;
    response.status = status;
    response.body = body.dump();
    return response;
}

} // namespace tinyproxy
// ---- end tinyproxy/api/http.hpp ----
// #include "tinyproxy/api/http_server.hpp"
// ---- begin tinyproxy/api/http_server.hpp ----
// A small HTTP/1.1 server on one thread, for a control API: poll(2) over a listener, a stop pipe
// and the clients, each with keep-alive, pipelining, back-pressure and deadlines.

#include <algorithm>    // std::min, std::remove_if
#include <chrono>       // timeouts
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <exception>    // a handler's exception
#include <functional>   // the handler
#include <memory>       // clients at stable addresses
#include <optional>     // a request refused before the handler
#include <string>       // buffers
#include <string_view>  // Host and User-Agent checks
#include <system_error> // std::system_error
#include <utility>      // std::move
#include <vector>       // clients, poll entries

#include <poll.h> // pollfd, POLLIN, POLLOUT

// #include "tinyproxy/address.hpp"
// #include "tinyproxy/detail/sys.hpp"
// #include "tinyproxy/socket.hpp"
// #include "tinyproxy/api/http.hpp"

namespace tinyproxy {

struct http_server_options {
    /// Loopback unless told otherwise: the API controls the proxies.
    endpoint listen{ip_address::loopback_v4(), 8474};
    http_limits limits;
    /// Clients served at once; one accepted past it is closed at once.
    std::size_t max_clients = 256;
    /// A client that sends nothing (between requests, or in the middle of a body) and takes
    /// nothing of what it was sent for this long is closed.
    std::chrono::milliseconds idle_timeout{60000};
    /// From a request's first byte to the end of its head: past it the client gets 408 and is
    /// closed (a slow head holds a client slot; a slow body is bounded by idle_timeout).
    std::chrono::milliseconds head_timeout{10000};
    /// 403 to a User-Agent starting with "Mozilla/": a web page must not drive the API (the rule
    /// Toxiproxy has).
    bool refuse_browsers = true;
    /// 403 unless Host is an IP literal (v4, or v6 in brackets) or "localhost", with any port: a
    /// page that rebinds its DNS name to 127.0.0.1 still sends its own name.
    bool check_host = true;
};

/// Serves requests with `handler`, one at a time, on the thread that calls run(). Responses go
/// out in the order of the requests (pipelining); a client whose responses are not yet taken is
/// not read (back-pressure), so a client's memory stays bounded by the limits and one read.
///
/// Answered without the handler: a request the reader refuses (its status, Connection: close),
/// a browser or a foreign Host when the options say so (403), a head past head_timeout (408),
/// all with Toxiproxy's error body `{"error":"<message>","status":<code>}`; a handler that
/// throws gives 500 with that body. "Expect: 100-continue" is answered with 100 Continue
/// before the body is read; HEAD gets the response without its body.
class http_server {
public:
    using handler = std::function<http_response(const http_request&)>;

    http_server(http_server_options options, handler on_request)
        : options_(std::move(options)), on_request_(std::move(on_request)) {}
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    /// Binds and listens (port 0 picks one); throws std::system_error naming the address.
    void listen();
    void listen(std::error_code& ec) noexcept;
    /// The address listened on (the port port 0 picked), once listening.
    endpoint local_endpoint() const noexcept { return listener_.local_endpoint(); }
    /// Serves until stop() (listening first if listen() was not called); closes every client and
    /// the listener before it returns. A server runs once. Throws std::system_error when poll(2)
    /// fails.
    void run();
    /// Ends run() soon, from any thread or a signal handler (an atomic exchange and a close(2));
    /// before run(), run() then returns at once.
    void stop() noexcept { stop_.request(); }

private:
    struct client {
        socket connection;
        http_request_reader reader;
        std::string in;  // bytes read but not yet fed: requests pipelined past back-pressure
        std::string out; // responses not yet sent, in order
        std::size_t out_sent = 0;
        bool continue_sent = false; // 100 Continue went out for the request being read
        bool peer_closed = false;   // the client sent its FIN
        bool close_after_send = false;
        bool draining = false; // our FIN sent: reading and dropping until the client's
        bool dead = false;
        std::size_t drained = 0;
        time_point last_activity;
        time_point head_deadline = time_point::max();
        time_point drain_deadline = time_point::max();

        explicit client(socket s, http_limits limits, time_point now)
            : connection(std::move(s)), reader(limits), last_activity(now) {}
        std::size_t unsent() const noexcept { return out.size() - out_sent; }
    };

    /// Pipelined requests are answered until this much is unsent; the rest wait in `in`.
    static constexpr std::size_t pipeline_limit = 64 * 1024;
    /// How long, and how much, a closing client is read (and dropped) after our FIN, so that
    /// its unread bytes do not turn our close into a reset that destroys the response.
    static constexpr std::chrono::milliseconds drain_time{1000};
    static constexpr std::size_t drain_limit = 1024 * 1024;

    short events_of(const client& c) const noexcept;
    time_point next_deadline() const noexcept;
    void accept_clients(time_point now);
    void on_ready(client& c, short revents, time_point now);
    void read_from(client& c, time_point now);
    void drain(client& c);
    void settle(client& c, time_point now);
    void serve_input(client& c, time_point now);
    void flush(client& c, time_point now);
    void begin_close(client& c, time_point now);
    void check_deadlines(client& c, time_point now);
    void respond(client& c, const http_request& request);
    void refuse(client& c, http_response response);
    http_response answer(const http_request& request);
    std::optional<http_response> screen(const http_request& request) const;

    http_server_options options_;
    handler on_request_;
    listener listener_;
    detail::stop_signal stop_;
    std::vector<std::unique_ptr<client>> clients_;
    std::vector<pollfd> poll_entries_;
    time_point accept_resume_ = time_point::min(); // out of descriptors: rest until then
    char scratch_[16 * 1024];
};

// ---------------------------------------------------------------------------------------------

namespace detail {
namespace http_api {

/// "1.2.3.4", "[::1]", "localhost", each with an optional ":port"; names other than localhost
/// are what a DNS-rebinding page would send.
inline bool is_local_host_field(std::string_view host) {
    std::string_view name = host;
    std::string_view port;
    if (!host.empty() && host.front() == '[') {
        auto close = host.find(']');
        if (close == std::string_view::npos) {
            return false;
        }
        name = host.substr(1, close - 1);
        std::string_view after = host.substr(close + 1);
        if (!after.empty() && after.front() != ':') {
            return false;
        }
        port = after.empty() ? after : after.substr(1);
        auto address =
            name.find('%') == std::string_view::npos ? ip_address::parse(name) : std::nullopt;
        if (!address || !address->is_v6()) {
            return false;
        }
    } else {
        auto colon = host.find(':');
        name = host.substr(0, colon);
        port = colon == std::string_view::npos ? std::string_view{} : host.substr(colon + 1);
        if (colon != std::string_view::npos && port.empty()) {
            return false;
        }
        auto address = ip_address::parse(name);
        if (!http_head::iequals(name, "localhost") && !(address && address->is_v4())) {
            return false;
        }
    }
    std::uint16_t number = 0;
    return port.empty() || parse_port(port, number);
}

/// Whether a response to this status carries content (not 1xx, 204).
inline bool has_content(int status) noexcept {
    return status != 204 && !(status >= 100 && status < 200);
}

} // namespace http_api
} // namespace detail

inline void http_server::listen() {
    std::error_code ec;
    listen(ec);
    if (ec) {
        throw std::system_error(ec, "cannot listen on " + options_.listen.to_string());
    }
}

inline void http_server::listen(std::error_code& ec) noexcept {
    ec.clear();
    if (!stop_.open(ec)) {
        return;
    }
    listener_ = listener::open(options_.listen, 128, ec);
    if (!ec) {
        listener_.set_nonblocking(true, ec);
    }
    if (ec) {
        listener_.close();
    }
}

inline void http_server::run() {
    if (!listener_) {
        listen();
    }
    std::error_code ec;
    while (!ec) {
        time_point now = steady_clock::now();
        poll_entries_.clear();
        poll_entries_.push_back({stop_.fd(), POLLIN, 0});
        bool accepting = now >= accept_resume_;
        poll_entries_.push_back({accepting ? listener_.native_handle() : -1, POLLIN, 0});
        for (const auto& c : clients_) {
            poll_entries_.push_back({c->connection.native_handle(), events_of(*c), 0});
        }
        time_point until = accepting ? next_deadline() : std::min(next_deadline(), accept_resume_);
        detail::poll_fds(poll_entries_.data(), static_cast<nfds_t>(poll_entries_.size()), until,
                         ec);
        if (ec || poll_entries_[0].revents != 0) {
            break; // the stop pipe: readable (end of file) once stop() closed its write end
        }
        now = steady_clock::now();
        for (std::size_t i = 0; i < clients_.size(); ++i) {
            on_ready(*clients_[i], poll_entries_[i + 2].revents, now);
            check_deadlines(*clients_[i], now);
        }
        clients_.erase(
            std::remove_if(clients_.begin(), clients_.end(), [](const auto& c) { return c->dead; }),
            clients_.end());
        if (poll_entries_[1].revents != 0) {
            accept_clients(now);
        }
    }
    clients_.clear();
    listener_.close();
    stop_.close();
    if (ec) {
        throw std::system_error(ec, "http_server: poll");
    }
}

/// Read only when everything before is answered and sent: back-pressure on a client that does
/// not take its responses, and no unbounded pile of pipelined requests.
inline short http_server::events_of(const client& c) const noexcept {
    short events = 0;
    bool idle_input = c.in.empty() && c.unsent() == 0 && !c.close_after_send;
    if (c.draining || (!c.peer_closed && idle_input)) {
        events |= POLLIN;
    }
    if (c.unsent() > 0) {
        events |= POLLOUT;
    }
    return events;
}

inline time_point http_server::next_deadline() const noexcept {
    time_point next = time_point::max();
    for (const auto& c : clients_) {
        next = std::min({next, c->head_deadline, c->drain_deadline,
                         detail::deadline_after(c->last_activity, options_.idle_timeout)});
    }
    return next;
}

inline void http_server::accept_clients(time_point now) {
    // A bounded batch: a flood of connections cannot starve the clients already here.
    for (int batch = 0; batch < 64; ++batch) {
        std::error_code ec;
        endpoint peer;
        socket s = listener_.accept(peer, true, ec);
        if (ec) {
            if (ec == std::errc::too_many_files_open ||
                ec == std::errc::too_many_files_open_in_system) {
                accept_resume_ = now + std::chrono::milliseconds(100); // poll would spin
            }
            return;
        }
        if (clients_.size() >= options_.max_clients) {
            continue; // closed at once, as `s` goes
        }
        std::error_code ignored;
        s.set_nodelay(true, ignored); // small responses go out at once
        clients_.push_back(std::make_unique<client>(std::move(s), options_.limits, now));
    }
}

inline void http_server::on_ready(client& c, short revents, time_point now) {
    if (revents == 0 || c.dead) {
        return;
    }
    if ((revents & (POLLERR | POLLNVAL)) != 0) {
        c.dead = true;
        return;
    }
    if ((revents & (POLLIN | POLLHUP)) != 0 && (events_of(c) & POLLIN) != 0) {
        c.draining ? drain(c) : read_from(c, now);
    } else if ((revents & POLLHUP) != 0) {
        c.dead = true; // gone both ways: what is unsent cannot be sent
        return;
    }
    settle(c, now);
}

inline void http_server::read_from(client& c, time_point now) {
    std::error_code ec;
    std::size_t n = c.connection.receive(scratch_, sizeof scratch_, ec);
    if (ec) {
        c.dead = !detail::would_block(ec);
        return;
    }
    if (n == 0) {
        c.peer_closed = true; // answer what came before the FIN, then close
        return;
    }
    c.last_activity = now;
    c.in.append(scratch_, n);
}

inline void http_server::drain(client& c) {
    std::error_code ec;
    std::size_t n = c.connection.receive(scratch_, sizeof scratch_, ec);
    c.drained += n;
    if ((ec && !detail::would_block(ec)) || (!ec && n == 0) || c.drained > drain_limit) {
        c.dead = true;
    }
}

/// Answers what can be answered, sends what can be sent, and starts closing when the client is
/// done. Loops because sending everything may free the way for pipelined requests still in `in`.
inline void http_server::settle(client& c, time_point now) {
    while (!c.dead) {
        serve_input(c, now);
        flush(c, now);
        if (c.dead || c.unsent() > 0 || c.in.empty() || c.close_after_send) {
            break;
        }
    }
    bool done = c.close_after_send || (c.peer_closed && c.in.empty());
    if (!c.dead && !c.draining && c.unsent() == 0 && done) {
        begin_close(c, now);
    }
}

inline void http_server::serve_input(client& c, time_point now) {
    std::size_t at = 0;
    while (at < c.in.size() && !c.close_after_send && c.unsent() < pipeline_limit) {
        std::size_t used = 0;
        auto state = c.reader.feed(byte_view(std::string_view(c.in).substr(at)), used);
        at += used;
        if (state == http_request_reader::status::complete) {
            c.continue_sent = false;
            respond(c, c.reader.take());
        } else if (state == http_request_reader::status::failed) {
            http_response refusal = json_error(c.reader.error_status(), c.reader.error_message());
            refuse(c, std::move(refusal));
        } else if (c.reader.expects_continue() && !c.continue_sent) {
            // Sent after every earlier response (they are already queued), as RFC 9110
            // section 10.1.1 allows; curl waits for it before a body past 1 KiB.
            c.out += "HTTP/1.1 100 Continue\r\n\r\n";
            c.continue_sent = true;
        }
    }
    c.in.erase(0, at);
    bool in_head = c.reader.started() && !c.reader.reading_body() && !c.close_after_send;
    if (!in_head) {
        c.head_deadline = time_point::max();
    } else if (c.head_deadline == time_point::max()) {
        c.head_deadline = detail::deadline_after(now, options_.head_timeout);
    }
}

inline void http_server::flush(client& c, time_point now) {
    while (c.unsent() > 0) {
        std::error_code ec;
        std::size_t n = c.connection.send(c.out.data() + c.out_sent, c.unsent(), ec);
        if (ec) {
            c.dead = !detail::would_block(ec);
            return;
        }
        c.out_sent += n;
        c.last_activity = now;
    }
    c.out.clear();
    c.out_sent = 0;
}

/// Our FIN, then a short read of whatever the client still sends: closing with unread bytes
/// would send a reset, which can destroy the response before the client reads it.
inline void http_server::begin_close(client& c, time_point now) {
    std::error_code ec;
    c.in.clear();
    c.connection.shutdown_write(ec);
    if (ec || c.peer_closed) {
        c.dead = true;
        return;
    }
    c.draining = true;
    c.head_deadline = time_point::max();
    c.drain_deadline = detail::deadline_after(now, drain_time);
}

inline void http_server::check_deadlines(client& c, time_point now) {
    if (c.dead) {
        return;
    }
    if (now >= c.drain_deadline ||
        now >= detail::deadline_after(c.last_activity, options_.idle_timeout)) {
        c.dead = true;
        return;
    }
    if (now >= c.head_deadline) {
        c.head_deadline = time_point::max();
        refuse(c, json_error(408, "request head not received in time"));
        settle(c, now);
    }
}

inline void http_server::respond(client& c, const http_request& request) {
    http_response response = answer(request);
    response.close = response.close || !request.keep_alive();
    if (!response.close && request.minor_version == 0) {
        response.headers.push_back({"Connection", "keep-alive"}); // 1.0 closes unless told
    }
    std::string bytes = format_response(response);
    if (request.method == "HEAD" && detail::http_api::has_content(response.status)) {
        bytes.resize(bytes.size() - response.body.size()); // the head a GET would get
    }
    c.out += bytes;
    c.close_after_send = c.close_after_send || response.close;
}

/// A response that ends the connection: nothing after the refused request is read.
inline void http_server::refuse(client& c, http_response response) {
    response.close = true;
    c.out += format_response(response);
    c.close_after_send = true;
    c.in.clear();
}

inline http_response http_server::answer(const http_request& request) {
    if (std::optional<http_response> refusal = screen(request)) {
        return std::move(*refusal);
    }
    try {
        return on_request_(request);
    } catch (const std::exception& error) {
        return json_error(500, error.what());
    } catch (...) {
        return json_error(500, "internal error");
    }
}

inline std::optional<http_response> http_server::screen(const http_request& request) const {
    const std::string* agent = request.header("user-agent");
    if (options_.refuse_browsers && agent != nullptr && agent->rfind("Mozilla/", 0) == 0) {
        return json_error(403, "User agent not allowed");
    }
    // HTTP/1.0 may come without Host (the reader refuses a 1.1 request without one); a page in
    // a browser always sends one.
    const std::string* host = request.header("host");
    if (options_.check_host && host != nullptr && !detail::http_api::is_local_host_field(*host)) {
        return json_error(403, "Host not allowed");
    }
    return std::nullopt;
}

} // namespace tinyproxy
// ---- end tinyproxy/api/http_server.hpp ----
// #include "tinyproxy/api/prometheus.hpp"
// ---- begin tinyproxy/api/prometheus.hpp ----
// Prometheus's text exposition format (version 0.0.4): metric families with their HELP and
// TYPE lines, samples with labels, label values escaped. Sans-I/O: it builds a string.

#include <cstdint>     // sample values
#include <string>      // the text
#include <string_view> // names, labels
#include <utility>     // std::pair: a label
#include <vector>      // a sample's labels

namespace tinyproxy {

/// One label of a sample: name and value (the value is escaped on output).
using metric_label = std::pair<std::string_view, std::string_view>;

/// Builds an exposition: call family() once per metric, then sample() for each of its series.
class prometheus_text {
public:
    /// The content type a scraper expects for this text.
    static constexpr std::string_view content_type = "text/plain; version=0.0.4; charset=utf-8";

    /// Starts a family: `type` is "counter" or "gauge".
    void family(std::string_view name, std::string_view type, std::string_view help);
    void sample(std::string_view name, const std::vector<metric_label>& labels,
                std::uint64_t value);
    const std::string& text() const noexcept { return text_; }

private:
    std::string text_;
};

/// A label value as the format writes it: backslash, double quote and line feed escaped.
inline std::string escape_label_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

inline void prometheus_text::family(std::string_view name, std::string_view type,
                                    std::string_view help) {
    // HELP text escapes backslash and line feed (not quotes).
    std::string escaped;
    for (char c : help) {
        escaped += c == '\\'   ? std::string("\\\\")
                   : c == '\n' ? std::string("\\n")
                               : std::string(1, c);
    }
    text_.append("# HELP ").append(name).append(" ").append(escaped).append("\n");
    text_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

inline void prometheus_text::sample(std::string_view name, const std::vector<metric_label>& labels,
                                    std::uint64_t value) {
    text_.append(name);
    if (!labels.empty()) {
        text_ += '{';
        for (std::size_t i = 0; i < labels.size(); ++i) {
            text_.append(i == 0 ? "" : ",").append(labels[i].first).append("=\"");
            text_.append(escape_label_value(labels[i].second)).append("\"");
        }
        text_ += '}';
    }
    text_.append(" ").append(std::to_string(value)).append("\n");
}

} // namespace tinyproxy
// ---- end tinyproxy/api/prometheus.hpp ----
// #include "tinyproxy/api/toxiproxy_json.hpp"
// ---- begin tinyproxy/api/toxiproxy_json.hpp ----
// Toxiproxy's JSON, both ways: a toxic and a proxy as its API writes them, and the bodies its
// API reads (a new toxic, a toxic's partial update, a proxy, a populate list), checked with
// the errors and status codes Toxiproxy gives. Sans-I/O.

#include <cstdint>     // attributes
#include <optional>    // fields a body may leave out
#include <stdexcept>   // api_error
#include <string>      // messages
#include <string_view> // names
#include <vector>      // toxics, proxies

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/json.hpp"
// #include "tinyproxy/fault/toxic.hpp"

namespace tinyproxy {

/// An error as the API answers it: {"error": what(), "status": status}.
struct api_error : std::runtime_error {
    api_error(int code, const std::string& message) : std::runtime_error(message), status(code) {}
    int status;
};

/// The error body Toxiproxy writes: {"error":"...","status":N}.
json_value api_error_body(int status, std::string_view message);

/// A toxic as Toxiproxy writes it: {"attributes":{...},"name","type","stream","toxicity"},
/// every attribute of its type given.
json_value toxic_to_json(const toxic& fault);
/// A new toxic from a request body, as Toxiproxy reads one: stream "downstream" and toxicity 1
/// unless given, the name TYPE_STREAM unless given, attributes its type does not have ignored.
/// Throws api_error: 400 for a bad body, stream or type, or a toxic check_toxic() refuses.
toxic toxic_from_json(const json_value& body);
/// `current` with a partial update applied: the attributes given, and toxicity (Toxiproxy's
/// update takes nothing else). Throws api_error 400 as toxic_from_json does.
toxic toxic_updated(const toxic& current, const json_value& body);

/// A proxy as a request body gives it; a field left out stays nullopt.
struct proxy_fields {
    std::optional<std::string> name;
    std::optional<std::string> listen;
    std::optional<std::string> upstream;
    std::optional<bool> enabled;
};
/// Throws api_error 400 ("bad request body: ...") when `body` is not an object of those fields
/// with the right types (others are ignored).
proxy_fields proxy_fields_from_json(const json_value& body);

/// Parses a request body; throws api_error 400 "bad request body: <why>".
json_value parse_body(std::string_view text);

// ---------------------------------------------------------------------------------------------

namespace detail {

[[noreturn]] inline void bad_body(const std::string& why) {
    throw api_error(400, "bad request body: " + why);
}

inline const json_value* field(const json_value& body, std::string_view key, json_value::kind want,
                               std::string_view what) {
    const json_value* found = body.find(key);
    if (found == nullptr || found->is_null()) { // null is "not given", as Go reads it
        return nullptr;
    }
    if (found->type() != want) {
        bad_body(std::string(key) + " must be " + std::string(what));
    }
    return found;
}

inline std::optional<std::string> string_field(const json_value& body, std::string_view key) {
    const json_value* found = field(body, key, json_value::kind::string, "a string");
    return found ? std::optional<std::string>(found->text()) : std::nullopt;
}

/// The attributes given in `body` ("attributes": {...}) over those of `fault`.
inline void merge_attributes(toxic& fault, const json_value& body) {
    const json_value* attributes = field(body, "attributes", json_value::kind::object, "an object");
    if (attributes == nullptr) {
        return;
    }
    std::size_t count = 0;
    const toxic_attribute* known = attributes_of(fault.type, count);
    for (std::size_t i = 0; i < count; ++i) {
        const json_value* value = attributes->find(known[i].key);
        if (value == nullptr || value->is_null()) {
            continue;
        }
        std::int64_t number = 0;
        if (!value->is_number() || !value->as_int64(number)) {
            bad_body("attribute " + std::string(known[i].key) + " must be a whole number");
        }
        fault.*(known[i].field) = number;
    }
}

inline void merge_toxicity(toxic& fault, const json_value& body) {
    if (const json_value* value = field(body, "toxicity", json_value::kind::number, "a number")) {
        double toxicity = 0;
        if (!value->as_double(toxicity)) {
            bad_body("toxicity must be a number");
        }
        fault.toxicity = toxicity;
    }
}

inline void check_or_throw(const toxic& fault) {
    const std::string problem = check_toxic(fault);
    if (!problem.empty()) {
        bad_body(problem);
    }
}

} // namespace detail

inline json_value api_error_body(int status, std::string_view message) {
    json_value body = json_value::object();
    body.set("error", std::string(message));
    body.set("status", status);
    return body;
}

inline json_value toxic_to_json(const toxic& fault) {
    json_value attributes = json_value::object();
    std::size_t count = 0;
    const toxic_attribute* known = attributes_of(fault.type, count);
    for (std::size_t i = 0; i < count; ++i) {
        attributes.set(std::string(known[i].key), fault.*(known[i].field));
    }
    json_value out = json_value::object();
    out.set("attributes", std::move(attributes));
    out.set("name", name_of(fault));
    out.set("type", std::string(type_name(fault.type)));
    out.set("stream", std::string(stream_name(fault.stream)));
    out.set("toxicity", fault.toxicity);
    return out;
}

inline toxic toxic_from_json(const json_value& body) {
    if (!body.is_object()) {
        detail::bad_body("expected an object");
    }
    toxic fault;
    const std::optional<std::string> stream = detail::string_field(body, "stream");
    if (stream && !stream->empty() && !parse_stream(*stream, fault.stream)) {
        throw api_error(400, "stream was invalid, can be either upstream or downstream");
    }
    const std::optional<std::string> type = detail::string_field(body, "type");
    fault.name = detail::string_field(body, "name").value_or("");
    if (!type || !parse_toxic_type(*type, fault.type)) {
        throw api_error(400, "invalid toxic type");
    }
    detail::merge_toxicity(fault, body);
    detail::merge_attributes(fault, body);
    detail::check_or_throw(fault);
    return fault;
}

inline toxic toxic_updated(const toxic& current, const json_value& body) {
    if (!body.is_object()) {
        detail::bad_body("expected an object");
    }
    toxic fault = current;
    detail::merge_toxicity(fault, body);
    detail::merge_attributes(fault, body);
    detail::check_or_throw(fault);
    return fault;
}

inline proxy_fields proxy_fields_from_json(const json_value& body) {
    if (!body.is_object()) {
        detail::bad_body("expected an object");
    }
    proxy_fields out;
    out.name = detail::string_field(body, "name");
    out.listen = detail::string_field(body, "listen");
    out.upstream = detail::string_field(body, "upstream");
    if (const json_value* enabled =
            detail::field(body, "enabled", json_value::kind::boolean, "true or false")) {
        out.enabled = enabled->as_bool();
    }
    return out;
}

inline json_value parse_body(std::string_view text) {
    std::string error;
    std::optional<json_value> body = parse_json(text, error);
    if (!body) {
        detail::bad_body(text.empty() ? std::string("empty body") : error);
    }
    return std::move(*body);
}

} // namespace tinyproxy
// ---- end tinyproxy/api/toxiproxy_json.hpp ----
// #include "tinyproxy/api/proxies.hpp"
// ---- begin tinyproxy/api/proxies.hpp ----
// The proxies a control API manages, as Toxiproxy has them: named port forwarders (listen ->
// upstream), each with a live toxic set and counters that outlive its restarts, created,
// changed, started, stopped and deleted while the others run. Each runs its Policy on a thread
// of its own.

#include <atomic>       // counters
#include <cstdint>      // counters, seeds
#include <functional>   // the policy factory, the event hook
#include <map>          // the proxies, by name
#include <memory>       // shared counters and toxic sets
#include <mutex>        // the collection, changed from any thread
#include <stdexcept>    // std::invalid_argument: a bad address
#include <string>       // names, addresses
#include <string_view>  // names
#include <system_error> // listen failures
#include <thread>       // a proxy's own thread
#include <utility>      // std::move
#include <vector>       // a snapshot of the proxies

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/error.hpp"
// #include "tinyproxy/address.hpp"
// #include "tinyproxy/faults.hpp"
// #include "tinyproxy/server.hpp"
// #include "tinyproxy/mode/forward.hpp"
// #include "tinyproxy/proxy.hpp"

namespace tinyproxy {

/// What a Toxiproxy "proxy" is.
struct proxy_spec {
    std::string name;
    /// HOST:PORT to accept clients on; port 0 picks a free one (and the proxy then reports
    /// the real one); empty means 127.0.0.1:0.
    std::string listen;
    /// HOST:PORT every client is forwarded to; a name is resolved as each client connects.
    std::string upstream;
    bool enabled = true;
};

/// How a connection through a managed proxy ended, for the metrics.
enum class close_reason {
    clean,       ///< both directions finished
    reset,       ///< a peer reset it, or a write failed
    timeout,     ///< idle for the idle timeout
    unreachable, ///< the upstream refused, did not resolve or timed out
    fault,       ///< a toxic (reset_peer, or a stage that failed) ended it
    stopped,     ///< the proxy was disabled, changed or deleted
    error,       ///< anything else
};
inline constexpr std::size_t close_reason_count = 7;
/// "clean", "reset", "timeout", "unreachable", "fault", "stopped", "error".
std::string_view close_reason_name(close_reason reason) noexcept;
close_reason classify_close(const session_result& result) noexcept;

/// The connection counts of one proxy, read once so that they agree with each other (a scrape
/// never shows a connection as both active and closed).
struct connection_counts {
    std::uint64_t accepted = 0;
    std::uint64_t closed[close_reason_count]{};
    std::uint64_t active = 0; ///< accepted, less every closed
};

/// A managed proxy's counts since it was created, across its restarts; readable from any thread.
struct proxy_counters {
    std::shared_ptr<traffic_counters> traffic = std::make_shared<traffic_counters>();
    std::atomic<std::uint64_t> accepted{0}; ///< clients let in (a session started)
    std::atomic<std::uint64_t> rejected{0}; ///< closed at once (max_connections, allow)
    std::atomic<std::uint64_t> closed[close_reason_count]{};
    /// The closes are read before the accepts: a session is accepted before it closes, so the
    /// accepts read after cover every close read.
    connection_counts connections() const noexcept {
        connection_counts counts;
        std::uint64_t ended = 0;
        for (std::size_t r = 0; r < close_reason_count; ++r) {
            counts.closed[r] = closed[r].load();
            ended += counts.closed[r];
        }
        counts.accepted = accepted.load();
        counts.active = counts.accepted > ended ? counts.accepted - ended : 0;
        return counts;
    }
};

/// A proxy with its name, its toxics and its counters, started and stopped at will. Not
/// thread-safe by itself: proxy_collection serialises the calls.
template <class Policy>
class managed_proxy {
public:
    using proxy_type = basic_proxy<Policy, forward_mode>;

    /// `base`: the options every proxy of a collection shares (timeouts, limits, the event hook);
    /// `seed`: the seed of this proxy's faults; `make_policy` makes a Policy for each start.
    managed_proxy(proxy_spec spec, options base, std::uint64_t seed,
                  std::function<Policy()> make_policy)
        : spec_(std::move(spec)), base_(std::move(base)), seed_(seed),
          make_policy_(std::move(make_policy)) {
        spec_.enabled = false; // until start()
    }
    managed_proxy(const managed_proxy&) = delete;
    managed_proxy& operator=(const managed_proxy&) = delete;
    ~managed_proxy() { stop(); }

    /// Its spec; while it runs, `listen` is the address it is bound to, with the real port.
    const proxy_spec& spec() const noexcept { return spec_; }
    bool running() const noexcept { return static_cast<bool>(proxy_); }
    toxic_set& toxics() noexcept { return *toxics_; }
    const toxic_set& toxics() const noexcept { return *toxics_; }
    const proxy_counters& counters() const noexcept { return *counters_; }
    /// Sessions running now.
    std::uint64_t active() const noexcept { return counters_->connections().active; }

    /// Binds its listen address and serves on a thread of its own. Throws std::system_error
    /// when it cannot listen; nothing to do when it runs already.
    void start();
    /// Closes its listener and every connection through it, and joins its thread.
    void stop() noexcept;
    /// Takes a new listen and upstream (the proxy must not be running): both are checked
    /// first, std::invalid_argument saying what is wrong.
    void retarget(std::string listen, std::string upstream);

private:
    options make_options(const endpoint& listen) const;

    proxy_spec spec_;
    options base_;
    std::uint64_t seed_;
    std::function<Policy()> make_policy_;
    std::shared_ptr<toxic_set> toxics_ = std::make_shared<toxic_set>();
    std::shared_ptr<proxy_counters> counters_ = std::make_shared<proxy_counters>();
    std::unique_ptr<proxy_type> proxy_;
    std::thread thread_;
};

/// The listen address a spec means: HOST:PORT resolved (a name, as "localhost:0", too); an
/// empty one is 127.0.0.1:0. Throws std::invalid_argument naming it.
endpoint listen_address(const std::string& text);
/// The upstream a spec means: HOST:PORT with a port, not resolved. Throws
/// std::invalid_argument naming it.
host_port upstream_address(const std::string& text);

/// The named proxies of one control API: thread-safe.
template <class Policy>
class proxy_collection {
public:
    using proxy_type = managed_proxy<Policy>;

    /// `base`: the options every proxy shares; `seed`: the faults' seed, each proxy's derived
    /// from it and its name.
    explicit proxy_collection(
        options base = options(), std::uint64_t seed = 0,
        std::function<Policy()> make_policy = [] { return Policy(); })
        : base_(std::move(base)), seed_(seed), make_policy_(std::move(make_policy)) {}
    ~proxy_collection() { clear(); }

    /// Calls `fn(collection)` with the collection locked: every change and every read of a
    /// proxy goes through it, so they are seen whole.
    template <class Fn>
    auto with_lock(Fn&& fn) {
        std::lock_guard<std::mutex> lock(mutex_);
        return fn(*this);
    }

    // --- under with_lock ---------------------------------------------------------------
    /// The proxy called `name`, or null.
    proxy_type* find(std::string_view name) noexcept;
    /// Makes a proxy (checking its addresses, std::invalid_argument) and starts it when
    /// `spec.enabled` (std::system_error when it cannot listen: then it is not added).
    /// The name must be free.
    proxy_type& add(const proxy_spec& spec);
    /// Replaces the proxy of the same name, stopping it first, or adds it.
    proxy_type& replace(const proxy_spec& spec);
    bool remove(std::string_view name) noexcept;
    void clear() noexcept;
    /// Every proxy, by name.
    const std::map<std::string, std::unique_ptr<proxy_type>, std::less<>>& all() const noexcept {
        return proxies_;
    }

private:
    std::unique_ptr<proxy_type> make(const proxy_spec& spec) const;

    options base_;
    std::uint64_t seed_;
    std::function<Policy()> make_policy_;
    std::mutex mutex_;
    std::map<std::string, std::unique_ptr<proxy_type>, std::less<>> proxies_;
};

// ---------------------------------------------------------------------------------------------

inline std::string_view close_reason_name(close_reason reason) noexcept {
    static constexpr std::string_view names[close_reason_count] = {
        "clean", "reset", "timeout", "unreachable", "fault", "stopped", "error"};
    return names[static_cast<std::size_t>(reason)];
}

inline close_reason classify_close(const session_result& result) noexcept {
    const std::error_code& why = result.error;
    if (!why) {
        return close_reason::clean;
    }
    if (why == errc::stopped) {
        return close_reason::stopped;
    }
    if (why == errc::reset_by_stage || why == errc::stage_failed) {
        return close_reason::fault;
    }
    if (result.stage == session_result::stage_type::connect) {
        return close_reason::unreachable;
    }
    if (why == errc::idle_timeout) {
        return close_reason::timeout;
    }
    if (why == std::errc::connection_reset || why == std::errc::broken_pipe ||
        why == std::errc::connection_aborted) {
        return close_reason::reset;
    }
    return close_reason::error;
}

inline endpoint listen_address(const std::string& text) {
    if (text.empty()) {
        return endpoint{ip_address::loopback_v4(), 0};
    }
    std::error_code ec;
    const host_port where = parse_host_port(text, ec);
    if (!ec) {
        const std::vector<endpoint> found = resolve(where, ec);
        if (!ec && !found.empty()) {
            return found.front();
        }
    }
    throw std::invalid_argument("listen: cannot use address '" + text + "'");
}

inline host_port upstream_address(const std::string& text) {
    std::error_code ec;
    host_port where = parse_host_port(text, ec);
    if (ec || where.port == 0) {
        throw std::invalid_argument("upstream: cannot use address '" + text + "'");
    }
    return where;
}

namespace detail {

/// FNV-1a of a name: each proxy's faults get a seed of their own, the same every run.
inline std::uint64_t name_hash(std::string_view name) noexcept {
    std::uint64_t hash = 0xcbf29ce484222325ULL;
    for (char c : name) {
        hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    }
    return hash;
}

} // namespace detail

template <class Policy>
options managed_proxy<Policy>::make_options(const endpoint& listen) const {
    options opts = base_;
    opts.listen = listen;
    opts.stages = fault_stages(toxics_, seed_);
    opts.traffic = counters_->traffic;
    // Counted here, in the counters that outlive this run; then the shared hook, if any.
    opts.on_event = [counters = counters_, hook = base_.on_event](const session_event& event) {
        switch (event.what) {
        case session_event::kind::opened:
            counters->accepted.fetch_add(1, std::memory_order_relaxed);
            break;
        case session_event::kind::rejected:
            counters->rejected.fetch_add(1, std::memory_order_relaxed);
            break;
        case session_event::kind::closed: {
            const auto reason = static_cast<std::size_t>(classify_close(*event.result));
            counters->closed[reason].fetch_add(1, std::memory_order_relaxed);
            break;
        }
        }
        if (hook) {
            hook(event);
        }
    };
    return opts;
}

template <class Policy>
void managed_proxy<Policy>::start() {
    if (proxy_) {
        return;
    }
    auto proxy = std::make_unique<proxy_type>(make_options(listen_address(spec_.listen)),
                                              forward_mode(upstream_address(spec_.upstream)),
                                              make_policy_());
    std::error_code ec;
    proxy->listen(ec);
    if (ec) {
        throw std::system_error(ec, "listen tcp " + spec_.listen);
    }
    proxy_type* serving = proxy.get();
    thread_ = std::thread([serving] {
        try {
            serving->run();
        } catch (...) { // the policy could not start (no descriptor): the proxy stays down
        }
    });
    spec_.listen = proxy->local_endpoint().to_string();
    spec_.enabled = true;
    proxy_ = std::move(proxy);
}

template <class Policy>
void managed_proxy<Policy>::stop() noexcept {
    if (proxy_) {
        proxy_->stop();
        if (thread_.joinable()) {
            thread_.join();
        }
        proxy_.reset();
    }
    spec_.enabled = false;
}

template <class Policy>
void managed_proxy<Policy>::retarget(std::string listen, std::string upstream) {
    (void)listen_address(listen);
    (void)upstream_address(upstream);
    spec_.listen = std::move(listen);
    spec_.upstream = std::move(upstream);
}

template <class Policy>
std::unique_ptr<managed_proxy<Policy>>
proxy_collection<Policy>::make(const proxy_spec& spec) const {
    (void)listen_address(spec.listen); // checked before anything starts
    (void)upstream_address(spec.upstream);
    auto made = std::make_unique<proxy_type>(spec, base_, seed_ ^ detail::name_hash(spec.name),
                                             make_policy_);
    if (spec.enabled) {
        made->start();
    }
    return made;
}

template <class Policy>
managed_proxy<Policy>* proxy_collection<Policy>::find(std::string_view name) noexcept {
    auto it = proxies_.find(name);
    return it == proxies_.end() ? nullptr : it->second.get();
}

template <class Policy>
managed_proxy<Policy>& proxy_collection<Policy>::add(const proxy_spec& spec) {
    auto made = make(spec);
    proxy_type& added = *made;
    proxies_.emplace(spec.name, std::move(made));
    return added;
}

template <class Policy>
managed_proxy<Policy>& proxy_collection<Policy>::replace(const proxy_spec& spec) {
    if (proxy_type* existing = find(spec.name)) {
        existing->stop(); // its port is free for the new one
        proxies_.erase(proxies_.find(spec.name));
    }
    return add(spec);
}

template <class Policy>
bool proxy_collection<Policy>::remove(std::string_view name) noexcept {
    auto it = proxies_.find(name);
    if (it == proxies_.end()) {
        return false;
    }
    proxies_.erase(it); // stops it
    return true;
}

template <class Policy>
void proxy_collection<Policy>::clear() noexcept {
    proxies_.clear();
}

} // namespace tinyproxy
// ---- end tinyproxy/api/proxies.hpp ----
// #include "tinyproxy/api/toxiproxy.hpp"
// ---- begin tinyproxy/api/toxiproxy.hpp ----
// A Toxiproxy-compatible control server: Toxiproxy 2.12's HTTP API (its routes, bodies and
// status codes) over a proxy_collection, so Toxiproxy's own clients drive it, and a /metrics
// endpoint in Prometheus's text format. toxiproxy_api answers one request (sans-I/O);
// toxiproxy_server serves it over HTTP.

#include <atomic>       // the request count
#include <cstdint>      // counters
#include <exception>    // std::exception: an error not the API's own
#include <functional>   // the policy factory
#include <map>          // each proxy's connection counts, read once per scrape
#include <string>       // bodies, names
#include <string_view>  // paths
#include <system_error> // a listener that cannot be opened
#include <utility>      // std::move
#include <vector>       // path segments, toxics

// #include "tinyproxy/config.hpp"
// #include "tinyproxy/json.hpp"
// #include "tinyproxy/faults.hpp"
// #include "tinyproxy/proxy.hpp"
// #include "tinyproxy/api/http.hpp"
// #include "tinyproxy/api/http_server.hpp"
// #include "tinyproxy/api/prometheus.hpp"
// #include "tinyproxy/api/toxiproxy_json.hpp"
// #include "tinyproxy/api/proxies.hpp"

namespace tinyproxy {

/// The Toxiproxy version /version reports: the API this server speaks (clients choose what to
/// send by it: Ruby's picks PATCH from 2.6 on).
inline constexpr std::string_view toxiproxy_api_version = "2.12.0";

/// Answers Toxiproxy API requests over a collection of proxies. Thread-safe (the collection
/// is); one request at a time is the usual use.
template <class Policy>
class toxiproxy_api {
public:
    explicit toxiproxy_api(proxy_collection<Policy>& proxies) : proxies_(proxies) {}

    /// The response to one request: never throws an api_error (it becomes its response).
    /// Each carries an X-Toxiproxy-Request-Id, as Toxiproxy's do, unique in this process.
    http_response handle(const http_request& request);

    /// POST /populate's work: makes or replaces the proxies of a JSON array, all checked
    /// before any is made, keeping those that are already as given. Returns the proxies
    /// as JSON; throws api_error (with what was made so far in `made`).
    json_value populate(const json_value& list, json_value& made);

    /// The metrics of every proxy, in Prometheus's text format.
    std::string metrics();

private:
    using proxy_type = managed_proxy<Policy>;

    http_response answer(const http_request& request);
    http_response route(const http_request& request, const std::vector<std::string>& path);
    http_response proxy_index();
    http_response proxy_create(const http_request& request);
    http_response proxy_show(const std::string& name);
    http_response proxy_update(const std::string& name, const http_request& request);
    http_response proxy_delete(const std::string& name);
    http_response toxic_index(const std::string& proxy);
    http_response toxic_create(const std::string& proxy, const http_request& request);
    http_response toxic_show(const std::string& proxy, const std::string& name);
    http_response toxic_update(const std::string& proxy, const std::string& name,
                               const http_request& request);
    http_response toxic_delete(const std::string& proxy, const std::string& name);
    http_response populate_request(const http_request& request);
    http_response reset();

    /// The proxy called `name` (the collection must be locked); api_error 404 if none.
    proxy_type& existing(proxy_collection<Policy>& all, const std::string& name);
    static json_value proxy_json(const proxy_type& proxy);
    static json_value toxics_json(const toxic_set& toxics);
    /// Starts `proxy`, an api_error 500 with the reason when it cannot listen.
    static void start_or_throw(proxy_type& proxy);

    proxy_collection<Policy>& proxies_;
    std::atomic<std::uint64_t> requests_{0}; ///< answered so far: the next request id
};

/// What a toxiproxy_server is told: where its API listens (loopback, Toxiproxy's port, by
/// default), the HTTP limits and checks, and what every proxy it makes shares.
struct toxiproxy_options {
    http_server_options http;
    /// Timeouts, limits and the event hook every proxy shares (`listen` is ignored). No idle
    /// timeout by default: Toxiproxy has none, and a test suite's pooled connections sit idle.
    options proxies = [] {
        options base;
        base.idle_timeout = std::chrono::milliseconds::max();
        return base;
    }();
    /// The seed of every proxy's faults (each proxy's derived from it and its name).
    std::uint64_t seed = 0;
};

/// A Toxiproxy-compatible server: the control API on HTTP, and the proxies it makes, each on
/// a thread of its own with `Policy` (poll_policy: one event loop a proxy).
///
///     tinyproxy::toxiproxy_server<> server(options); // API on 127.0.0.1:8474
///     server.listen();
///     server.run(); // until server.stop() from another thread or a signal handler
template <class Policy = poll_policy>
class toxiproxy_server {
public:
    explicit toxiproxy_server(
        toxiproxy_options opts = toxiproxy_options(),
        std::function<Policy()> make_policy = [] { return Policy(); })
        : proxies_(opts.proxies, opts.seed, std::move(make_policy)), api_(proxies_),
          http_(opts.http, [this](const http_request& request) { return api_.handle(request); }) {}

    /// Binds the API's address (port 0 picks one). Throws std::system_error naming it.
    void listen() { http_.listen(); }
    endpoint local_endpoint() const noexcept { return http_.local_endpoint(); }
    /// Serves the API until stop(); then deletes every proxy (closing their connections).
    void run() {
        http_.run();
        proxies_.with_lock([](proxy_collection<Policy>& all) { all.clear(); });
    }
    /// Thread-safe and async-signal-safe.
    void stop() noexcept { http_.stop(); }

    /// Loads a Toxiproxy config file's text (a JSON array, as POST /populate takes). Throws
    /// api_error saying what is wrong.
    void populate(std::string_view json_text) {
        json_value made;
        (void)api_.populate(parse_body(json_text), made);
    }
    proxy_collection<Policy>& proxies() noexcept { return proxies_; }
    toxiproxy_api<Policy>& api() noexcept { return api_; }

private:
    proxy_collection<Policy> proxies_;
    toxiproxy_api<Policy> api_;
    http_server http_;
};

// ---------------------------------------------------------------------------------------------

namespace detail {

inline http_response json_response(int status, const json_value& body) {
    http_response response;
    response.status = status;
    response.body = body.dump();
    return response;
}

inline http_response no_content() {
    http_response response;
    response.status = 204;
    return response;
}

inline int hex_digit(char c) noexcept {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/// A path's segments, each percent-decoded ("/proxies/my%20db" -> {"proxies", "my db"}); an
/// empty segment (a trailing slash) is kept, so "/proxies/" matches no route.
inline std::vector<std::string> path_segments(std::string_view path) {
    std::vector<std::string> segments;
    if (path.empty() || path.front() != '/') {
        return segments;
    }
    path.remove_prefix(1);
    for (;;) {
        const std::size_t slash = path.find('/');
        const std::string_view raw = path.substr(0, slash);
        std::string segment;
        for (std::size_t i = 0; i < raw.size(); ++i) {
            const int high = raw[i] == '%' && i + 2 < raw.size() ? hex_digit(raw[i + 1]) : -1;
            const int low = high >= 0 ? hex_digit(raw[i + 2]) : -1;
            if (low >= 0) {
                segment += static_cast<char>(high * 16 + low);
                i += 2;
            } else {
                segment += raw[i];
            }
        }
        segments.push_back(std::move(segment));
        if (slash == std::string_view::npos) {
            return segments;
        }
        path.remove_prefix(slash + 1);
    }
}

/// The proxy the body of a create names: name and upstream required, as Toxiproxy says.
inline proxy_spec new_proxy_spec(const proxy_fields& fields, const std::string& where) {
    if (!fields.name || fields.name->empty()) {
        throw api_error(400, "missing required field: name" + where);
    }
    if (!fields.upstream || fields.upstream->empty()) {
        throw api_error(400, "missing required field: upstream" + where);
    }
    proxy_spec spec{*fields.name, fields.listen.value_or(""), *fields.upstream,
                    fields.enabled.value_or(true)};
    try {
        (void)listen_address(spec.listen);
        (void)upstream_address(spec.upstream);
    } catch (const std::invalid_argument& e) {
        throw api_error(400, std::string("bad request body: ") + e.what() + where);
    }
    return spec;
}

/// A request id: `number` as 16 hex digits (Toxiproxy's are xids; clients only pass them on).
inline std::string request_id(std::uint64_t number) {
    std::string id(16, '0');
    for (std::size_t i = id.size(); i-- > 0; number >>= 4) {
        id[i] = "0123456789abcdef"[number & 0xF];
    }
    return id;
}

} // namespace detail

template <class Policy>
http_response toxiproxy_api<Policy>::handle(const http_request& request) {
    http_response response = answer(request);
    const std::uint64_t number = requests_.fetch_add(1, std::memory_order_relaxed) + 1;
    response.headers.push_back({"X-Toxiproxy-Request-Id", detail::request_id(number)});
    return response;
}

template <class Policy>
http_response toxiproxy_api<Policy>::answer(const http_request& request) {
    try {
        return route(request, detail::path_segments(request.path()));
    } catch (const api_error& e) {
        return detail::json_response(e.status, api_error_body(e.status, e.what()));
    } catch (const std::system_error& e) { // a listener that could not be opened
        return detail::json_response(500, api_error_body(500, e.what()));
    } catch (const std::invalid_argument& e) {
        return detail::json_response(400, api_error_body(400, e.what()));
    }
}

template <class Policy>
http_response toxiproxy_api<Policy>::route(const http_request& request,
                                           const std::vector<std::string>& path) {
    const std::string& method = request.method;
    const bool get = method == "GET";
    const bool post = method == "POST";
    const bool change = post || method == "PATCH"; // updates take both, as Toxiproxy's do
    const bool del = method == "DELETE";
    const std::size_t n = path.size();
    bool known = true; // the path is one of the API's, whatever the method
    if (n == 1 && path[0] == "version") {
        if (get) {
            json_value body = json_value::object();
            body.set("version", std::string(toxiproxy_api_version));
            return detail::json_response(200, body);
        }
    } else if (n == 1 && path[0] == "metrics") {
        if (get) {
            http_response response;
            response.content_type = std::string(prometheus_text::content_type);
            response.body = metrics();
            return response;
        }
    } else if (n == 1 && path[0] == "reset") {
        if (post) {
            return reset();
        }
    } else if (n == 1 && path[0] == "populate") {
        if (post) {
            return populate_request(request);
        }
    } else if (n == 1 && path[0] == "proxies") {
        if (get) {
            return proxy_index();
        }
        if (post) {
            return proxy_create(request);
        }
    } else if (n == 2 && path[0] == "proxies") {
        if (get) {
            return proxy_show(path[1]);
        }
        if (change) {
            return proxy_update(path[1], request);
        }
        if (del) {
            return proxy_delete(path[1]);
        }
    } else if (n == 3 && path[0] == "proxies" && path[2] == "toxics") {
        if (get) {
            return toxic_index(path[1]);
        }
        if (post) {
            return toxic_create(path[1], request);
        }
    } else if (n == 4 && path[0] == "proxies" && path[2] == "toxics") {
        if (get) {
            return toxic_show(path[1], path[3]);
        }
        if (change) {
            return toxic_update(path[1], path[3], request);
        }
        if (del) {
            return toxic_delete(path[1], path[3]);
        }
    } else {
        known = false;
    }
    if (known) {
        throw api_error(405, "method not allowed");
    }
    throw api_error(404, "not found");
}

template <class Policy>
managed_proxy<Policy>& toxiproxy_api<Policy>::existing(proxy_collection<Policy>& all,
                                                       const std::string& name) {
    proxy_type* proxy = all.find(name);
    if (proxy == nullptr) {
        throw api_error(404, "proxy not found");
    }
    return *proxy;
}

template <class Policy>
json_value toxiproxy_api<Policy>::toxics_json(const toxic_set& toxics) {
    // Toxiproxy lists the upstream chain first, then the downstream one, each in its order.
    json_value list = json_value::array();
    const std::vector<toxic> all = toxics.list();
    for (direction stream : {direction::to_upstream, direction::to_client}) {
        for (const toxic& fault : all) {
            if (fault.stream == stream) {
                list.push_back(toxic_to_json(fault));
            }
        }
    }
    return list;
}

template <class Policy>
json_value toxiproxy_api<Policy>::proxy_json(const proxy_type& proxy) {
    const proxy_spec& spec = proxy.spec();
    json_value out = json_value::object();
    out.set("name", spec.name);
    out.set("listen", spec.listen);
    out.set("upstream", spec.upstream);
    out.set("enabled", spec.enabled);
    out.set("toxics", toxics_json(proxy.toxics()));
    return out;
}

template <class Policy>
void toxiproxy_api<Policy>::start_or_throw(proxy_type& proxy) {
    try {
        proxy.start();
    } catch (const std::system_error& e) {
        throw api_error(500, e.what());
    }
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_index() {
    return proxies_.with_lock([](proxy_collection<Policy>& all) {
        json_value out = json_value::object();
        for (const auto& named : all.all()) {
            out.set(named.first, proxy_json(*named.second));
        }
        return detail::json_response(200, out);
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_create(const http_request& request) {
    const proxy_spec spec =
        detail::new_proxy_spec(proxy_fields_from_json(parse_body(request.body)), "");
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        if (all.find(spec.name) != nullptr) {
            throw api_error(409, "proxy already exists");
        }
        try {
            return detail::json_response(201, proxy_json(all.add(spec)));
        } catch (const std::system_error& e) {
            throw api_error(500, e.what());
        }
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_show(const std::string& name) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        return detail::json_response(200, proxy_json(existing(all, name)));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_update(const std::string& name,
                                                  const http_request& request) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        proxy_type& proxy = existing(all, name);
        const proxy_fields fields = proxy_fields_from_json(parse_body(request.body));
        const proxy_spec current = proxy.spec();
        const std::string listen = fields.listen.value_or(current.listen);
        const std::string upstream = fields.upstream.value_or(current.upstream);
        const bool enabled = fields.enabled.value_or(current.enabled);
        std::string resolved;
        try {
            resolved = listen_address(listen).to_string();
            (void)upstream_address(upstream);
        } catch (const std::invalid_argument& e) {
            throw api_error(400, std::string("bad request body: ") + e.what());
        }
        // A new address restarts the proxy (its connections end), as Toxiproxy's does.
        if (resolved != current.listen || upstream != current.upstream) {
            proxy.stop();
            proxy.retarget(listen, upstream);
        }
        if (enabled && !proxy.running()) {
            start_or_throw(proxy);
        } else if (!enabled) {
            proxy.stop();
        }
        return detail::json_response(200, proxy_json(proxy));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_delete(const std::string& name) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        if (!all.remove(name)) {
            throw api_error(404, "proxy not found");
        }
        return detail::no_content();
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_index(const std::string& proxy) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        return detail::json_response(200, toxics_json(existing(all, proxy).toxics()));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_create(const std::string& proxy,
                                                  const http_request& request) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        toxic_set& toxics = existing(all, proxy).toxics();
        const toxic fault = toxic_from_json(parse_body(request.body));
        toxic same;
        if (toxics.find(name_of(fault), same)) {
            throw api_error(409, "toxic already exists");
        }
        toxics.add(fault);
        return detail::json_response(200, toxic_to_json(fault));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_show(const std::string& proxy, const std::string& name) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        toxic fault;
        if (!existing(all, proxy).toxics().find(name, fault)) {
            throw api_error(404, "toxic not found");
        }
        return detail::json_response(200, toxic_to_json(fault));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_update(const std::string& proxy, const std::string& name,
                                                  const http_request& request) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        toxic_set& toxics = existing(all, proxy).toxics();
        toxic current;
        if (!toxics.find(name, current)) {
            throw api_error(404, "toxic not found");
        }
        const toxic updated = toxic_updated(current, parse_body(request.body));
        toxics.update(name, updated);
        return detail::json_response(200, toxic_to_json(updated));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_delete(const std::string& proxy,
                                                  const std::string& name) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        if (!existing(all, proxy).toxics().remove(name)) {
            throw api_error(404, "toxic not found");
        }
        return detail::no_content();
    });
}

template <class Policy>
json_value toxiproxy_api<Policy>::populate(const json_value& list, json_value& made) {
    made = json_value::array();
    if (!list.is_array()) {
        detail::bad_body("expected an array of proxies");
    }
    // Every entry is checked before any proxy is made or changed.
    std::vector<proxy_spec> specs;
    for (std::size_t i = 0; i < list.items().size(); ++i) {
        const std::string where = " at proxy " + std::to_string(i + 1);
        specs.push_back(detail::new_proxy_spec(proxy_fields_from_json(list.items()[i]), where));
    }
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        for (const proxy_spec& spec : specs) {
            proxy_type* now = all.find(spec.name);
            const bool same = now != nullptr &&
                              listen_address(spec.listen).to_string() == now->spec().listen &&
                              spec.upstream == now->spec().upstream;
            if (!same) { // an identical one is kept as it is, toxics, connections and all
                try {
                    now = &all.replace(spec);
                } catch (const std::system_error& e) {
                    throw api_error(500, e.what());
                }
            }
            made.push_back(proxy_json(*now));
        }
        return made;
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::populate_request(const http_request& request) {
    json_value made = json_value::array();
    json_value body = json_value::object();
    try {
        populate(parse_body(request.body), made);
    } catch (const api_error& e) {
        body.set("error", std::string(e.what()));
        body.set("status", e.status);
        body.set("proxies", std::move(made));
        return detail::json_response(e.status, body);
    }
    body.set("proxies", std::move(made));
    return detail::json_response(201, body);
}

template <class Policy>
http_response toxiproxy_api<Policy>::reset() {
    return proxies_.with_lock([](proxy_collection<Policy>& all) {
        for (const auto& named : all.all()) {
            start_or_throw(*named.second);
            named.second->toxics().clear();
        }
        return detail::no_content();
    });
}

template <class Policy>
std::string toxiproxy_api<Policy>::metrics() {
    return proxies_.with_lock([](proxy_collection<Policy>& all) {
        prometheus_text out;
        const auto each = [&](auto&& sample) {
            for (const auto& named : all.all()) {
                sample(named.first, *named.second);
            }
        };
        out.family("tinyproxy_proxy_enabled", "gauge",
                   "1 while the proxy listens, 0 when disabled.");
        each([&](const std::string& name, const proxy_type& p) {
            out.sample("tinyproxy_proxy_enabled", {{"proxy", name}}, p.running() ? 1 : 0);
        });
        out.family("tinyproxy_proxy_bytes_total", "counter",
                   "Bytes relayed, counted as they move; upstream: client to server.");
        each([&](const std::string& name, const proxy_type& p) {
            const traffic_counters& t = *p.counters().traffic;
            out.sample("tinyproxy_proxy_bytes_total", {{"proxy", name}, {"direction", "upstream"}},
                       t.to_upstream.load(std::memory_order_relaxed));
            out.sample("tinyproxy_proxy_bytes_total",
                       {{"proxy", name}, {"direction", "downstream"}},
                       t.to_client.load(std::memory_order_relaxed));
        });
        // Read once per proxy, so that accepted, active and closed agree within the scrape.
        std::map<std::string_view, connection_counts> connections;
        each([&](const std::string& name, const proxy_type& p) {
            connections[name] = p.counters().connections();
        });
        out.family("tinyproxy_proxy_connections_accepted_total", "counter",
                   "Client connections accepted and served.");
        each([&](const std::string& name, const proxy_type&) {
            out.sample("tinyproxy_proxy_connections_accepted_total", {{"proxy", name}},
                       connections[name].accepted);
        });
        out.family("tinyproxy_proxy_connections_active", "gauge", "Connections open now.");
        each([&](const std::string& name, const proxy_type&) {
            out.sample("tinyproxy_proxy_connections_active", {{"proxy", name}},
                       connections[name].active);
        });
        out.family("tinyproxy_proxy_connections_closed_total", "counter",
                   "Connections ended, by how they ended.");
        each([&](const std::string& name, const proxy_type&) {
            for (std::size_t r = 0; r < close_reason_count; ++r) {
                const std::string_view reason = close_reason_name(static_cast<close_reason>(r));
                out.sample("tinyproxy_proxy_connections_closed_total",
                           {{"proxy", name}, {"reason", reason}}, connections[name].closed[r]);
            }
        });
        out.family("tinyproxy_proxy_connections_rejected_total", "counter",
                   "Clients closed at once: past --max-connections or outside --allow.");
        each([&](const std::string& name, const proxy_type& p) {
            out.sample("tinyproxy_proxy_connections_rejected_total", {{"proxy", name}},
                       p.counters().rejected.load(std::memory_order_relaxed));
        });
        out.family("tinyproxy_proxy_toxics_applied_total", "counter",
                   "Times a toxic applied to a connection (its toxicity roll said so), by type.");
        each([&](const std::string& name, const proxy_type& p) {
            for (std::size_t t = 0; t < toxic_type_count; ++t) {
                const auto type = static_cast<toxic_type>(t);
                out.sample("tinyproxy_proxy_toxics_applied_total",
                           {{"proxy", name}, {"type", type_name(type)}}, p.toxics().applied(type));
            }
        });
        out.family("tinyproxy_proxy_toxics", "gauge", "Toxics the proxy has now.");
        each([&](const std::string& name, const proxy_type& p) {
            out.sample("tinyproxy_proxy_toxics", {{"proxy", name}}, p.toxics().list().size());
        });
        return out.text();
    });
}

} // namespace tinyproxy
// ---- end tinyproxy/api/toxiproxy.hpp ----
// ---- end tinyproxy/tinyproxy.hpp ----
