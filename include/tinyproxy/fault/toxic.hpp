// SPDX-License-Identifier: MIT
// What a fault is, as Toxiproxy says it: a toxic's type, name, stream, toxicity and attributes
// (Toxiproxy's names and units), how it is checked, and its command-line form TYPE[,KEY=VALUE]...
#pragma once

#include <charconv>    // toxicity, read and written in every locale
#include <cmath>       // std::isfinite: toxicity
#include <cstddef>     // std::size_t: the number of types
#include <cstdint>     // attributes
#include <stdexcept>   // std::invalid_argument: a bad spec
#include <string>      // names, messages
#include <string_view> // spec text

#include "tinyproxy/config.hpp"
#include "tinyproxy/stage.hpp"

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
