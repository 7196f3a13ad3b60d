// socks_mode: SOCKS4, SOCKS4a and SOCKS5 on one port, told apart by the first byte.
#pragma once

#include <cstdint>      // bytes
#include <optional>     // configured credentials, the chosen parser
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"
#include "tinyproxy/protocol/socks4.hpp"
#include "tinyproxy/protocol/socks5.hpp"
#include "tinyproxy/session.hpp"

namespace tinyproxy {

/// Where a SOCKS client asks to go. Version 4 and 4a requests begin with the byte 4, version 5
/// with 5; the first byte picks the parser and anything else is closed at once.
///
/// With credentials configured, SOCKS5 clients must authenticate (RFC 1929) and SOCKS4 clients,
/// which cannot, are refused with a 0x5B reply.
class socks_mode {
public:
    struct config {
        std::optional<credentials> required; ///< user name and password every client must give
        bool allow_socks4 = true;            ///< also serve SOCKS4 and 4a (when no credentials)
    };

    socks_mode() = default;
    explicit socks_mode(config cfg) : config_(std::move(cfg)) {}

    class session {
    public:
        explicit session(const config& cfg) : config_(&cfg) {}

        mode_step start() { return mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes);
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
                                               const endpoint& upstream);

    private:
        const config* config_;
        std::optional<socks4_handshake> v4_;
        std::optional<socks5_handshake> v5_;
    };

    session make_session(const session_info&) const { return session{config_}; }

private:
    config config_;
};

inline mode_step socks_mode::session::on_client_data(byte_view bytes) {
    if (v5_) {
        return v5_->feed(bytes);
    }
    if (v4_) {
        return v4_->feed(bytes);
    }
    if (bytes.empty()) {
        return mode_step::need_more();
    }
    if (bytes[0] == 5) {
        socks5_handshake::config cfg;
        cfg.required = config_->required;
        v5_.emplace(std::move(cfg));
        return v5_->feed(bytes);
    }
    if (bytes[0] == 4) {
        v4_.emplace();
        if (config_->required || !config_->allow_socks4) {
            // SOCKS4 carries no password: with credentials required it cannot be served.
            return mode_step::fail(make_error_code(errc::auth_failed),
                                   v4_->failed(make_error_code(errc::not_allowed)));
        }
        return v4_->feed(bytes);
    }
    return mode_step::fail(make_error_code(errc::unsupported_version));
}

inline std::vector<std::uint8_t>
socks_mode::session::on_connected(std::error_code result, const endpoint& local, const endpoint&) {
    if (v5_) {
        return result ? v5_->failed(result) : v5_->connected(local);
    }
    if (v4_) {
        return result ? v4_->failed(result) : v4_->connected(local);
    }
    return {};
}

} // namespace tinyproxy
