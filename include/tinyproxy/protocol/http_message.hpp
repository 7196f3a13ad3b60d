// SPDX-License-Identifier: MIT
// HTTP/1.1 messages as a forward proxy reads them (RFC 9110, RFC 9112), sans-I/O: request and
// response heads parsed incrementally, each message's body framing decided (smuggling refused),
// bodies scanned to their end, and the heads rewritten for the next hop.
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes, body lengths
#include <string>       // fields, heads
#include <string_view>  // parsing
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // fields

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/http_connect.hpp"

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
