// SPDX-License-Identifier: MIT
// forward_mode: every client goes to one fixed upstream (a port forwarder).
#pragma once

#include <cstdint>      // bytes
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {

/// The simplest Mode: no handshake, every client is connected to `upstream` at once, and the
/// client's bytes (even those it sent before the upstream answered) go there untouched. A name
/// is resolved for every client, and each of its addresses is tried in turn. (What makes a
/// Mode: mode/mode.hpp.)
class forward_mode {
public:
    explicit forward_mode(host_port upstream) : upstream_(std::move(upstream)) {}

    class session {
    public:
        explicit session(host_port upstream) : upstream_(std::move(upstream)) {}

        mode_step start() { return mode_step::connect_to(upstream_); }
        /// Never called: start() already decided.
        mode_step on_client_data(byte_view) { return mode_step::fail(errc::protocol_error); }
        static constexpr bool uses_local_endpoint = false;

        /// A forwarder has nothing to tell the client: on failure it just closes.
        std::vector<std::uint8_t> on_connected(std::error_code, const endpoint&, const endpoint&) {
            return {};
        }

    private:
        host_port upstream_;
    };

    session make_session(const session_info&) const { return session{upstream_}; }
    const host_port& upstream() const noexcept { return upstream_; }

private:
    host_port upstream_;
};

} // namespace tinyproxy
