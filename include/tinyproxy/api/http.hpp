// SPDX-License-Identifier: MIT
// HTTP/1.1 for a control API (RFC 9112): a sans-I/O request reader and a response writer.
#pragma once

#include <cstddef>     // std::size_t
#include <cstdint>     // bytes
#include <string>      // requests, responses
#include <string_view> // parsing
#include <utility>     // std::move
#include <vector>      // header fields

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/json.hpp"
#include "tinyproxy/protocol/http_connect.hpp"

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
