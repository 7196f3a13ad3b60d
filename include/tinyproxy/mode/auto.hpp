// SPDX-License-Identifier: MIT
// auto_mode: SOCKS4, 4a, 5 and HTTP (CONNECT and forwarding) on one port, told apart by the
// client's first byte.
#pragma once

#include <cstdint>      // bytes
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"
#include "tinyproxy/stage.hpp"
#include "tinyproxy/mode/mode.hpp"
#include "tinyproxy/mode/socks.hpp"
#include "tinyproxy/mode/http_proxy.hpp"

namespace tinyproxy {

/// Every proxy protocol a client may speak, on one port: a first byte of 4 is SOCKS4 or 4a,
/// 5 is SOCKS5 (socks_mode), anything else is HTTP (http_proxy_mode: an HTTP request begins
/// with a method's letter; whatever else is sent gets the HTTP parser's 400). Each client gets
/// exactly what the single-protocol mode would give it. The wait for the first byte is the
/// handshake's, under its deadline.
class auto_mode {
public:
    struct config {
        socks_mode::config socks;
        http_proxy_mode::config http;
    };

    auto_mode() : auto_mode(config{}) {}
    explicit auto_mode(config cfg) : socks_(std::move(cfg.socks)), http_(std::move(cfg.http)) {}

    class session {
    public:
        session(socks_mode::session socks, http_proxy_mode::session http)
            : socks_(std::move(socks)), http_(std::move(http)) {}

        mode_step start() { return mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes) {
            if (speaks_ == protocol::undecided && !bytes.empty()) {
                speaks_ = bytes[0] == 4 || bytes[0] == 5 ? protocol::socks : protocol::http;
            }
            switch (speaks_) {
            case protocol::socks:
                return socks_.on_client_data(bytes);
            case protocol::http:
                return http_.on_client_data(bytes);
            default:
                return mode_step::need_more();
            }
        }
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
                                               const endpoint& upstream) {
            return speaks_ == protocol::socks ? socks_.on_connected(result, local, upstream)
                                              : http_.on_connected(result, local, upstream);
        }
        mode_step on_handed_back() {
            if (speaks_ != protocol::http) { // only HTTP's stages hand a client back
                return mode_step::fail(make_error_code(errc::protocol_error));
            }
            return http_.on_handed_back();
        }
        void stages(const tunnel_info& tunnel, tunnel_stages& stages) {
            if (speaks_ == protocol::http) {
                http_.stages(tunnel, stages);
            }
        }

    private:
        enum class protocol : std::uint8_t { undecided, socks, http };

        socks_mode::session socks_;
        http_proxy_mode::session http_;
        protocol speaks_ = protocol::undecided;
    };

    session make_session(const session_info& client) const {
        return session{socks_.make_session(client), http_.make_session(client)};
    }

private:
    socks_mode socks_;
    http_proxy_mode http_;
};

} // namespace tinyproxy
