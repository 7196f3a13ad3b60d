// libFuzzer target for mode/http_exchange.hpp with http_proxy_mode's session, without sockets
// (tests/support/http_exchange_driver.hpp). The first two bytes say where the client's stream
// ends and the origin's begins, the third how long each fed piece is, the fourth which side
// goes next and whether each side ends. Checked: no sink is given bytes after its end or the
// tunnel's close, and what each tunnel's origin is sent starts with a request line
// ("token SP / or *").
#include <cstddef>   // std::size_t
#include <algorithm> // std::min
#include <cstdint>   // std::uint8_t
#include <string>    // the streams

#include <tinyproxy/tinyproxy.hpp>

#include "support/http_exchange_driver.hpp"

namespace {

bool tchar(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           std::string("!#$%&'*+-.^_`|~").find(c) != std::string::npos;
}

/// "token SP /" or "token SP *" at the start of `sent` (or nothing sent at all).
bool starts_with_request_line(const std::string& sent) {
    std::size_t i = 0;
    while (i < sent.size() && tchar(sent[i])) {
        ++i;
    }
    if (i == sent.size()) {
        return true; // cut short by the end of the input: nothing contradicts it
    }
    return i > 0 && sent[i] == ' ' && i + 1 < sent.size() &&
           (sent[i + 1] == '/' || sent[i + 1] == '*');
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 4) {
        return 0;
    }
    std::size_t rest = size - 4;
    std::size_t split = (static_cast<std::size_t>(data[0]) << 8 | data[1]) % (rest + 1);
    std::size_t piece = 1 + data[2] % 64;
    std::uint8_t order = data[3];
    std::string client(reinterpret_cast<const char*>(data + 4), split);
    std::string origin(reinterpret_cast<const char*>(data + 4 + split), rest - split);

    tptest::http_exchange_driver d;
    std::size_t at_client = 0;
    std::size_t at_origin = 0;
    unsigned turn = 0;
    while (at_client < client.size() || at_origin < origin.size()) {
        bool client_turn = ((order >> (turn++ % 8)) & 1) == 0;
        if ((client_turn && at_client < client.size()) || at_origin >= origin.size()) {
            std::size_t n = std::min(piece, client.size() - at_client);
            d.client(client.substr(at_client, n));
            at_client += n;
        } else {
            std::size_t n = std::min(piece, origin.size() - at_origin);
            d.origin(origin.substr(at_origin, n));
            at_origin += n;
        }
    }
    if ((order & 0x40) != 0) {
        d.origin_end();
    }
    if ((order & 0x80) != 0) {
        d.client_end();
    }
    if (d.after_end != 0) {
        __builtin_trap();
    }
    for (const std::string& sent : d.to_origin) {
        if (!starts_with_request_line(sent)) {
            __builtin_trap();
        }
    }
    return 0;
}
