// libFuzzer target for protocol/http_connect.hpp. The first input byte picks the configuration
// and how the rest is cut into feeds; the rest is what a client sends. Checked: the outcome does
// not depend on the cuts, nothing follows a terminal step, to_upstream is exactly the input after
// the head, and every response is a well-formed HTTP/1.1 response.
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint8_t
#include <string>       // responses
#include <string_view>  // the input
#include <system_error> // error codes
#include <vector>       // byte buffers

#include <tinyproxy/tinyproxy.hpp>

namespace {

using tinyproxy::handshake_step;
using action = tinyproxy::handshake_step::action;

void check(bool ok) {
    if (!ok) {
        __builtin_trap();
    }
}

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

struct outcome {
    action what = action::need_more;
    std::vector<std::uint8_t> to_client;
    std::string target;
    std::vector<std::uint8_t> to_upstream; // plus what was never fed, on connect
    std::error_code error;
};

/// The size of the n-th feed under `plan`.
std::size_t chunk_size(std::uint8_t plan, std::size_t n) {
    std::size_t base = (plan & 0x0F) + 1u;
    switch ((plan >> 4) & 0x3) {
    case 0:
        return 1;
    case 1:
        return base;
    case 2:
        return base + n % 7; // uneven
    default:
        return n % 2 == 0 ? 1 : base * 37;
    }
}

outcome drive(const tinyproxy::http_connect_handshake::config& cfg, const std::uint8_t* data,
              std::size_t size, std::uint8_t plan, bool whole) {
    tinyproxy::http_connect_handshake handshake(cfg);
    std::size_t position = 0;
    std::size_t n = 0;
    do {
        std::size_t count = whole ? size : chunk_size(plan, n++);
        if (count > size - position) {
            count = size - position;
        }
        handshake_step step = handshake.feed(tinyproxy::byte_view(data + position, count));
        std::size_t end = position + count;
        position = end;
        if (step.what == action::need_more) {
            check(step.to_client.empty() && !step.error && !handshake.finished());
            continue;
        }
        check(handshake.finished());
        outcome out{step.what, step.to_client, "", step.to_upstream, step.error};
        if (step.what == action::connect) {
            // What went upstream is the tail of this feed, right after the LF ending the head.
            check(step.to_client.empty() && !step.error);
            check(step.to_upstream.size() <= count);
            std::size_t head_end = end - step.to_upstream.size();
            check(head_end > 0 && data[head_end - 1] == '\n');
            for (std::size_t i = 0; i < step.to_upstream.size(); ++i) {
                check(step.to_upstream[i] == data[head_end + i]);
            }
            out.to_upstream.insert(out.to_upstream.end(), data + end, data + size);
            check(!step.target.host.empty() && step.target.port != 0);
            out.target = step.target.to_string();
            std::error_code ec;
            tinyproxy::host_port again = tinyproxy::parse_host_port(out.target, ec);
            check(!ec && again.host == step.target.host && again.port == step.target.port);
            check(head_end <= cfg.max_head_bytes);
        } else {
            check(static_cast<bool>(step.error));
            check(well_formed(step.to_client, true));
        }
        // Nothing follows a terminal step.
        handshake_step after = handshake.feed(tinyproxy::byte_view(data, size));
        check(after.what == action::fail && after.to_client.empty() &&
              after.error == tinyproxy::errc::protocol_error);
        return out;
    } while (position < size);
    return outcome{};
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

    outcome split = drive(cfg, data, size, plan, false);
    outcome whole = drive(cfg, data, size, plan, true);
    check(split.what == whole.what);
    check(split.to_client == whole.to_client);
    check(split.target == whole.target);
    check(split.to_upstream == whole.to_upstream);
    check(split.error == whole.error);

    tinyproxy::http_connect_handshake handshake(cfg);
    check(well_formed(handshake.connected(), false));
    check(well_formed(handshake.failed(tinyproxy::errc::connect_timeout), true));
    check(well_formed(handshake.failed(tinyproxy::errc::name_not_resolved), true));
    check(well_formed(handshake.failed(tinyproxy::errc::not_allowed), true));
    return 0;
}
