// SPDX-License-Identifier: MIT
// HTTP CONNECT (RFC 9110 section 9.3.6) as a sans-I/O handshake: a request head in, a target or
// a complete HTTP error response out.
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // configured credentials, the Proxy-Authorization value
#include <string>       // lines, responses
#include <string_view>  // parsing
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // byte buffers

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"

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
