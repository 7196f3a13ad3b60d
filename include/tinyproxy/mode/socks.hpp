// SPDX-License-Identifier: MIT
// socks_mode: SOCKS4, SOCKS4a and SOCKS5 on one port, told apart by the first byte.
#pragma once

#include <cstdint>      // bytes
#include <memory>       // the chosen parser, on the heap
#include <optional>     // configured credentials
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
#include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {

/// Where a SOCKS client asks to go. Version 4 and 4a requests begin with the byte 4, version 5
/// with 5; the first byte picks the parser and anything else is closed at once. The parser lives
/// until on_connected() has built the reply, or until the handshake fails; any feed after that
/// answers fail(protocol_error), as the parsers do.
///
/// With credentials configured, SOCKS5 clients must authenticate (RFC 1929) and SOCKS4 clients,
/// which cannot, are refused with a 0x5B reply; so with `--user`, only a client that logged in
/// gets a BIND or a UDP association.
///
/// BIND (SOCKS4 and SOCKS5) and UDP ASSOCIATE (SOCKS5) are served when `config` says so, and
/// refused as unsupported commands (0x5B, REP 0x07) otherwise. A BIND is answered twice: the
/// session calls on_connected() first with the listening address as `local` (the first reply),
/// then with the peer that connected as `upstream` (the second reply, naming it). A UDP
/// ASSOCIATE is answered once, with the relay's address as `local`.
class socks_mode {
public:
    struct config {
        std::optional<credentials> required; ///< user name and password every client must give
        bool allow_socks4 = true;            ///< also serve SOCKS4 and 4a (when no credentials)
        bool bind = false;                   ///< serve BIND (a listener per request)
        bool udp_associate = false;          ///< serve UDP ASSOCIATE (a UDP socket per request)
    };

    socks_mode() = default;
    explicit socks_mode(config cfg) : config_(std::move(cfg)) {}

    class session {
    public:
        explicit session(const config& cfg) : config_(&cfg) {}

        mode_step start() { return mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes);
        /// The reply to the client; called once, it ends the handshake.
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
                                               const endpoint& upstream);

    private:
        mode_step pick_parser(byte_view bytes);
        mode_step start_socks5(byte_view bytes);
        mode_step start_socks4(byte_view bytes);
        void end_handshake() noexcept;

        const config* config_;
        handshake_step::request request_ = handshake_step::request::connect;
        bool listening_sent_ = false; // a BIND's first reply has been built
        // Heap, handshake only: a held connection keeps a pointer, not the ~600-byte parser.
        std::unique_ptr<socks4_handshake> v4_;
        std::unique_ptr<socks5_handshake> v5_;
        bool handshake_ended_ = false;
    };

    session make_session(const session_info&) const { return session{config_}; }

private:
    config config_;
};

inline mode_step socks_mode::session::on_client_data(byte_view bytes) {
    if (handshake_ended_) {
        return mode_step::fail(make_error_code(errc::protocol_error));
    }
    mode_step step = v5_ ? v5_->feed(bytes) : v4_ ? v4_->feed(bytes) : pick_parser(bytes);
    if (step.what == mode_step::action::fail) {
        end_handshake();
    } else if (step.what == mode_step::action::connect) {
        request_ = step.kind;
    }
    return step;
}

inline mode_step socks_mode::session::pick_parser(byte_view bytes) {
    if (bytes.empty()) {
        return mode_step::need_more();
    }
    if (bytes[0] == 5) {
        return start_socks5(bytes);
    }
    if (bytes[0] == 4) {
        return start_socks4(bytes);
    }
    return mode_step::fail(make_error_code(errc::unsupported_version));
}

inline mode_step socks_mode::session::start_socks5(byte_view bytes) {
    // No memory for a parser throws, and basic_session closes this client (not the proxy).
    socks5_handshake::config cfg;
    cfg.required = config_->required;
    cfg.accept_bind = config_->bind;
    cfg.accept_udp_associate = config_->udp_associate;
    v5_ = std::make_unique<socks5_handshake>(std::move(cfg));
    return v5_->feed(bytes);
}

inline mode_step socks_mode::session::start_socks4(byte_view bytes) {
    if (config_->required || !config_->allow_socks4) {
        // SOCKS4 carries no password: with credentials required it cannot be served.
        return mode_step::fail(make_error_code(errc::auth_failed),
                               socks4_handshake().failed(make_error_code(errc::not_allowed)));
    }
    socks4_handshake::config cfg;
    cfg.accept_bind = config_->bind;
    v4_ = std::make_unique<socks4_handshake>(cfg);
    return v4_->feed(bytes);
}

inline std::vector<std::uint8_t> socks_mode::session::on_connected(std::error_code result,
                                                                   const endpoint& local,
                                                                   const endpoint& upstream) {
    // A BIND's first reply names where we listen; its second, the peer that connected.
    const bool bind = request_ == handshake_step::request::bind;
    const endpoint& named = bind && listening_sent_ ? upstream : local;
    std::vector<std::uint8_t> reply;
    if (v5_) {
        reply = result ? v5_->failed(result) : v5_->connected(named);
    } else if (v4_) {
        reply = result ? v4_->failed(result) : v4_->connected(named);
    }
    if (bind && !result && !listening_sent_) {
        listening_sent_ = true; // the parser stays for the second reply
        return reply;
    }
    end_handshake();
    return reply;
}

inline void socks_mode::session::end_handshake() noexcept {
    v4_.reset();
    v5_.reset();
    handshake_ended_ = true;
}

} // namespace tinyproxy
