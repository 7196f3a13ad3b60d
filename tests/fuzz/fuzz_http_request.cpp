// libFuzzer target for api/http.hpp's request reader. The first input byte picks the limits (the
// defaults, or small ones that the input can reach) and how the rest is cut into feeds
// (tests/support/split_feed.hpp); the rest is what a client sends. Checked: the outcome does not
// depend on the cuts (whole, the seed's cuts, a byte at a time for short inputs); need_more uses
// every byte; requests keep the limits; what a request holds is what the syntax allows (token
// method and field names, no control character in a field value, a body only within
// max_body); a refusal has one of the documented statuses and writes a JSON error response.
#include <cstddef>     // std::size_t
#include <cstdint>     // std::uint8_t
#include <string>      // responses
#include <string_view> // field text

#include <tinyproxy/tinyproxy.hpp>

#include "support/http_feed.hpp"
#include "support/split_feed.hpp"

namespace {

const tptest::trap_on_failure check;

tinyproxy::http_limits limits_for(std::uint8_t selector) {
    tinyproxy::http_limits limits;
    if ((selector & 0x04) != 0) {
        limits.max_head = 96;
        limits.max_headers = 4;
        limits.max_body = 32;
    }
    return limits;
}

bool printable_value(std::string_view value) {
    for (char c : value) {
        auto byte = static_cast<unsigned char>(c);
        if ((byte < 0x20 && c != '\t') || byte == 0x7F) {
            return false;
        }
    }
    return value.empty() || (value.front() != ' ' && value.back() != ' ');
}

void check_request(const tinyproxy::http_request& request) {
    namespace h = tinyproxy::detail::http_head;
    check(h::is_token(request.method), "a method that is not a token");
    check(request.minor_version >= 0 && request.minor_version <= 9, "a minor version past 9");
    check(request.minor_version == 0 || request.header("host") != nullptr, "1.1 without Host");
    for (const tinyproxy::http_header& field : request.headers) {
        check(h::is_token(field.name), "a field name that is not a token");
        check(printable_value(field.value), "a control character or OWS in a field value");
    }
    check(request.path().size() <= request.target.size(), "a path longer than its target");
    (void)request.keep_alive();
}

void check_refusal(const tptest::http_run& run) {
    int status = run.error_status;
    check(status == 400 || status == 413 || status == 431 || status == 501 || status == 505,
          "an undocumented status");
    tinyproxy::http_response response = tinyproxy::json_error(status, run.error_message);
    std::string error;
    check(tinyproxy::parse_json(response.body, error).has_value(), "an error body not JSON");
    std::string text = tinyproxy::format_response(response);
    check(text.compare(0, 9, "HTTP/1.1 ") == 0, "a response without a status line");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    const std::uint8_t selector = data[0];
    const tinyproxy::byte_view stream(data + 1, size - 1);
    const tinyproxy::http_limits limits = limits_for(selector);
    tptest::http_run whole = tptest::drive_http(stream, {}, limits, check);
    for (const tinyproxy::http_request& request : whole.requests) {
        check_request(request);
    }
    if (whole.failed) {
        check_refusal(whole);
    }
    tptest::http_run cut =
        tptest::drive_http(stream, tptest::seeded_cuts(selector, stream.size()), limits, check);
    tptest::check_same_http_run(cut, whole, check);
    if (stream.size() <= 4096) {
        tptest::http_run bytewise =
            tptest::drive_http(stream, tptest::every_byte(stream.size()), limits, check);
        tptest::check_same_http_run(bytewise, whole, check);
    }
    return 0;
}
