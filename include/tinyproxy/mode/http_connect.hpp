// SPDX-License-Identifier: MIT
// http_connect_mode: HTTP CONNECT tunnels (RFC 9110 section 9.3.6).
#pragma once

#include <cstdint>      // bytes
#include <optional>     // the parser
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"
#include "tinyproxy/protocol/http_connect.hpp"
#include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {

/// Where an HTTP client asks to go with `CONNECT host:port HTTP/1.1`: answered with
/// `200 Connection established` and a raw tunnel, or a 4xx/5xx response and a close (405 for
/// other methods, 407 without the configured credentials, 502 when the upstream refuses or
/// does not resolve, 504 when the connect times out).
class http_connect_mode {
public:
    using config = http_connect_handshake::config;

    http_connect_mode() = default;
    explicit http_connect_mode(config cfg) : config_(std::move(cfg)) {}

    class session {
    public:
        explicit session(const config& cfg) : parser_(cfg) {}

        static constexpr bool uses_local_endpoint = false; // "200 Connection established"

        mode_step start() { return mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes) { return parser_.feed(bytes); }
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint&,
                                               const endpoint&) {
            return result ? parser_.failed(result) : parser_.connected();
        }

    private:
        http_connect_handshake parser_;
    };

    session make_session(const session_info&) const { return session{config_}; }

private:
    config config_;
};

} // namespace tinyproxy
