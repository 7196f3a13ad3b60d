// libFuzzer target for socks4_handshake (SOCKS4 and SOCKS4a). Input: byte 0 picks the
// configuration (bit 0 set: small bounds, 8-byte user id and 16-byte host name; clear: the
// defaults; bit 1 set: BIND accepted), byte 1 how the rest is cut into feeds (see
// tests/support/split_feed.hpp), and the rest is what the client sends.
#include <cstddef> // std::size_t
#include <cstdint> // bytes
#include <vector>  // expected replies

#include <tinyproxy/protocol/socks4.hpp>

#include "support/split_feed.hpp"

using tinyproxy::byte_view;
using tinyproxy::errc;
using tinyproxy::handshake_step;
using tinyproxy::socks4_handshake;

namespace {
const tptest::trap_on_failure require;
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) {
        return 0;
    }
    socks4_handshake::config cfg;
    if ((data[0] & 1) != 0) {
        cfg.max_user_id = 8;
        cfg.max_host_name = 16;
    }
    cfg.accept_bind = (data[0] & 2) != 0;
    const std::uint8_t seed = data[1];
    const byte_view stream{data + 2, size - 2};
    auto make = [cfg] { return socks4_handshake(cfg); };

    // Cut as the seed says and a byte at a time, each must end as the whole stream did.
    const tptest::handshake_run r = tptest::run_every_cut(
        make, stream, {tptest::seeded_cuts(seed, stream.size()), tptest::every_byte(stream.size())},
        require);
    const std::vector<std::uint8_t> rejected = {0, 0x5B, 0, 0, 0, 0, 0, 0};
    if (r.what == handshake_step::action::connect) {
        // VN 4, CD 1 (or 2, BIND, when accepted), the port from DSTPORT, a request ending in NUL
        // and within the bounds.
        require(r.request_end >= 9 && stream[0] == 4 &&
                (stream[1] == 1 || (cfg.accept_bind && stream[1] == 2)));
        require(tinyproxy::load_be<std::uint16_t>(stream.data() + 2) == r.target.port);
        require(stream[r.request_end - 1] == 0);
        require(r.request_end <= 8 + cfg.max_user_id + 1 + cfg.max_host_name + 1);
        bool socks4a = stream[4] == 0 && stream[5] == 0 && stream[6] == 0 && stream[7] != 0;
        if (!socks4a) {
            require(r.request_end <= 8 + cfg.max_user_id + 1);
            require(r.target.host ==
                    tinyproxy::ip_address::v4({stream[4], stream[5], stream[6], stream[7]})
                        .to_string());
        }
        require(r.to_client.empty());
    } else if (r.what == handshake_step::action::fail) {
        if (r.to_client.empty()) {
            require(r.error == errc::unsupported_version && stream[0] != 4);
        } else {
            require(r.to_client == rejected);
        }
    } else {
        // Still waiting: never past the bounds without a NUL.
        require(stream.size() <= 8 + cfg.max_user_id + 1 + cfg.max_host_name + 1);
    }

    socks4_handshake parser = make();
    if (stream.size() >= 6) {
        tinyproxy::endpoint bound{
            tinyproxy::ip_address::v4({stream[0], stream[1], stream[2], stream[3]}),
            tinyproxy::load_be<std::uint16_t>(stream.data() + 4)};
        std::vector<std::uint8_t> ok = parser.connected(bound);
        require(ok.size() == 8 && ok[0] == 0 && ok[1] == 0x5A && ok[2] == stream[4] &&
                ok[3] == stream[5] && ok[4] == stream[0] && ok[7] == stream[3]);
    }
    require(parser.failed(r.error) == rejected);
    return 0;
}
