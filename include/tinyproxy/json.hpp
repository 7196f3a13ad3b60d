// SPDX-License-Identifier: MIT
// JSON (RFC 8259) as a control API speaks it: a value type, a strict sans-I/O reader with a
// depth limit and messages that say where the text went wrong, and a compact writer.
#pragma once

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

#include "tinyproxy/config.hpp"

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
