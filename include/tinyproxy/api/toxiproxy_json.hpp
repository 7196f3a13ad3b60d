// SPDX-License-Identifier: MIT
// Toxiproxy's JSON, both ways: a toxic and a proxy as its API writes them, and the bodies its
// API reads (a new toxic, a toxic's partial update, a proxy, a populate list), checked with
// the errors and status codes Toxiproxy gives. Sans-I/O.
#pragma once

#include <cstdint>     // attributes
#include <optional>    // fields a body may leave out
#include <stdexcept>   // api_error
#include <string>      // messages
#include <string_view> // names
#include <vector>      // toxics, proxies

#include "tinyproxy/config.hpp"
#include "tinyproxy/json.hpp"
#include "tinyproxy/fault/toxic.hpp"

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
