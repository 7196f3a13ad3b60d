// libFuzzer target for socks5_handshake. Input: byte 0 picks the configuration (bit 0 set:
// credentials alice/s3cret required, so RFC 1929 runs; clear: no authentication; bit 1 set: BIND
// and UDP ASSOCIATE accepted), byte 1 how the rest is cut into feeds (see
// tests/support/split_feed.hpp), and the rest is what the client sends.
#include <array>   // a bound IPv6 address
#include <cstddef> // std::size_t
#include <cstdint> // bytes
#include <vector>  // expected replies

#include <tinyproxy/protocol/socks5.hpp>

#include "support/split_feed.hpp"

using tinyproxy::byte_view;
using tinyproxy::errc;
using tinyproxy::handshake_step;
using tinyproxy::socks5_handshake;

namespace {
const tptest::trap_on_failure require;
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) {
        return 0;
    }
    const bool with_credentials = (data[0] & 1) != 0;
    const bool all_commands = (data[0] & 2) != 0;
    const std::uint8_t seed = data[1];
    const byte_view stream{data + 2, size - 2};
    auto make = [with_credentials, all_commands] {
        socks5_handshake::config cfg;
        cfg.accept_bind = all_commands;
        cfg.accept_udp_associate = all_commands;
        if (with_credentials) {
            cfg.required = tinyproxy::credentials{"alice", "s3cret"};
        }
        return socks5_handshake(cfg);
    };

    // Cut as the seed says and a byte at a time, each must end as the whole stream did.
    const tptest::handshake_run r = tptest::run_every_cut(
        make, stream, {tptest::seeded_cuts(seed, stream.size()), tptest::every_byte(stream.size())},
        require);
    const std::vector<std::uint8_t>& sent = r.to_client;
    if (r.what == handshake_step::action::connect) {
        // The request ends with DST.PORT, and the only replies so far are the method selection
        // and, with credentials, the auth success.
        require(r.request_end >= 3 + 8); // shortest: {5, 1, 0}, then a 1-byte domain name
        require(tinyproxy::load_be<std::uint16_t>(stream.data() + r.request_end - 2) ==
                r.target.port);
        require(with_credentials ? sent == std::vector<std::uint8_t>{5, 2, 1, 0}
                                 : sent == std::vector<std::uint8_t>{5, 0});
    } else if (r.what == handshake_step::action::fail) {
        if (r.error == errc::no_acceptable_method) {
            require(sent == std::vector<std::uint8_t>{5, 0xFF});
        } else if (r.error == errc::auth_failed) {
            require(with_credentials && sent == std::vector<std::uint8_t>{5, 2, 1, 1});
        } else if (sent.empty()) {
            require(r.error == errc::unsupported_version); // not a SOCKS5 greeting
        } else if (sent.size() == 4) {
            require(with_credentials && r.error == errc::unsupported_version); // RFC 1929 VER
        } else {
            // A request refused: VER 5, REP for the error, RSV, ATYP 1, 0.0.0.0:0.
            require(sent.size() >= 10);
            const std::uint8_t* reply = sent.data() + sent.size() - 10;
            require(reply[0] == 5 && reply[1] == socks5_handshake::reply_code(r.error));
            require(reply[1] != 0);
        }
    }

    // The replies after connecting, for an address taken from the input.
    if (stream.size() >= 18) {
        std::array<std::uint8_t, 16> v6{};
        for (std::size_t i = 0; i < 16; ++i) {
            v6[i] = stream[i];
        }
        socks5_handshake parser = make();
        tinyproxy::endpoint bound{tinyproxy::ip_address::v6(v6),
                                  tinyproxy::load_be<std::uint16_t>(stream.data() + 16)};
        std::vector<std::uint8_t> ok = parser.connected(bound);
        require(ok.size() == 22 && ok[0] == 5 && ok[1] == 0 && ok[3] == 4);
        bound.address = tinyproxy::ip_address::v4({v6[0], v6[1], v6[2], v6[3]});
        ok = parser.connected(bound);
        require(ok.size() == 10 && ok[3] == 1 && ok[8] == stream[16] && ok[9] == stream[17]);
        require(parser.failed(r.error).size() == 10);
    }
    return 0;
}
