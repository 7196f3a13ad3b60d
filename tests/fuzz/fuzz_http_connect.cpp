// libFuzzer target for protocol/http_connect.hpp. The first input byte picks the configuration
// and how the rest is cut into feeds (tests/support/split_feed.hpp); the rest is what a client
// sends. Checked: the outcome does not depend on the cuts, nothing follows a terminal step,
// to_upstream is exactly the input after the head, and every response is a well-formed HTTP/1.1
// response.
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint8_t
#include <string>       // responses
#include <string_view>  // the input
#include <system_error> // error codes
#include <vector>       // byte buffers

#include <tinyproxy/tinyproxy.hpp>

#include "support/split_feed.hpp"

namespace {

using tinyproxy::handshake_step;
using action = tinyproxy::handshake_step::action;

const tptest::trap_on_failure check;

/// "HTTP/1.1 ddd Reason\r\n", header lines of printable text ending in CRLF, then an empty line
/// and nothing else; every failure response closes the connection and has no content.
bool well_formed(const std::vector<std::uint8_t>& response, bool closing) {
    std::string text(response.begin(), response.end());
    if (text.compare(0, 9, "HTTP/1.1 ") != 0 || text.size() < 16) {
        return false;
    }
    for (std::size_t i = 9; i < 12; ++i) {
        if (text[i] < '0' || text[i] > '9') {
            return false;
        }
    }
    if (text[12] != ' ' || text.compare(text.size() - 4, 4, "\r\n\r\n") != 0) {
        return false;
    }
    for (std::size_t i = 0; i < text.size(); ++i) {
        auto c = static_cast<unsigned char>(text[i]);
        bool line_end = (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ||
                        (c == '\n' && i > 0 && text[i - 1] == '\r');
        if ((c < 0x20 || c == 0x7F) && !line_end) {
            return false;
        }
    }
    if (text.find("\r\n\r\n") != text.size() - 4) {
        return false; // one head, nothing after it
    }
    if (closing) {
        return text.find("\r\nConnection: close\r\n") != std::string::npos &&
               text.find("\r\nContent-Length: 0\r\n") != std::string::npos;
    }
    return true;
}

/// What an HTTP CONNECT run must show beyond the driver's invariants: need_more sends nothing;
/// connect sends nothing, its request ends with the LF of the head within max_head_bytes, and its
/// target prints and parses back; fail sends one well-formed response that closes.
void check_http(const tptest::handshake_run& r, const std::uint8_t* data,
                const tinyproxy::http_connect_handshake::config& cfg) {
    check(r.to_client_before_end == 0);
    if (r.what == action::connect) {
        check(r.to_client.empty());
        check(r.request_end > 0 && data[r.request_end - 1] == '\n');
        check(r.request_end <= cfg.max_head_bytes);
        std::error_code ec;
        tinyproxy::host_port again = tinyproxy::parse_host_port(r.target.to_string(), ec);
        check(!ec && again.host == r.target.host && again.port == r.target.port);
    } else if (r.what == action::fail) {
        check(well_formed(r.to_client, true));
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    const std::uint8_t plan = data[0];
    ++data;
    --size;

    tinyproxy::http_connect_handshake::config cfg;
    if ((plan & 0x80) != 0) {
        cfg.required = tinyproxy::credentials{"user", "pass"};
    }
    if ((plan & 0x40) != 0) {
        cfg.max_line = 48;
        cfg.max_headers = 3;
        cfg.max_head_bytes = 160;
    }

    // Cut as the plan byte says, the stream must end as it does fed whole.
    const tinyproxy::byte_view stream{data, size};
    tinyproxy::http_connect_handshake whole_parser(cfg);
    tptest::handshake_run whole = tptest::drive_handshake(whole_parser, stream, {}, check);
    tinyproxy::http_connect_handshake split_parser(cfg);
    tptest::handshake_run split =
        tptest::drive_handshake(split_parser, stream, tptest::seeded_cuts(plan, size), check);
    tptest::check_same_run(split, whole, check);
    check_http(whole, data, cfg);
    check_http(split, data, cfg);

    tinyproxy::http_connect_handshake handshake(cfg);
    check(well_formed(handshake.connected(), false));
    check(well_formed(handshake.failed(tinyproxy::errc::connect_timeout), true));
    check(well_formed(handshake.failed(tinyproxy::errc::name_not_resolved), true));
    check(well_formed(handshake.failed(tinyproxy::errc::not_allowed), true));
    return 0;
}
