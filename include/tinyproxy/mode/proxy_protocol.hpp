// SPDX-License-Identifier: MIT
// with_proxy_protocol<Mode>: the PROXY protocol (v1/v2) as a layer on either side of any Mode.
#pragma once

#include <cstdint>      // bytes
#include <optional>     // the inner session, once the client is known
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // headers

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"
#include "tinyproxy/protocol/proxy_protocol.hpp"
#include "tinyproxy/mode/mode.hpp"

namespace tinyproxy {

/// Which PROXY protocol header to send upstream.
enum class proxy_protocol_version { none = 0, v1 = 1, v2 = 2 };

/// Adds the PROXY protocol to `Mode`, on either side or both:
/// - `accept`: every client must begin with a PROXY header (v1 or v2, told apart by its
///   signature), as a load balancer in front of us sends it. The address it names is the client
///   the inner Mode, and a `send` header, see. A client without a valid header is closed.
/// - `send`: each upstream connection begins with a header naming the client and the address
///   it connected to, before any of the client's bytes.
template <class Mode>
class with_proxy_protocol {
public:
    struct config {
        bool accept = false;
        proxy_protocol_version send = proxy_protocol_version::none;
        /// With `accept`: when not empty, a client whose header names an address outside every
        /// range is closed (options::allow sees only the sender of the header, such as a load
        /// balancer).
        std::vector<cidr> allow;
    };

    with_proxy_protocol(Mode inner, config cfg) : inner_(std::move(inner)), config_(cfg) {}

    class session {
    public:
        session(const Mode& inner, const config& cfg, session_info info)
            : inner_mode_(&inner), config_(&cfg), info_(info) {
            if (!cfg.accept) {
                inner_.emplace(inner.make_session(info_));
            }
        }

        static constexpr bool uses_local_endpoint =
            detail::uses_local_endpoint<typename Mode::session>::value;

        mode_step start() { return inner_ ? outgoing(inner_->start()) : mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes) {
            if (inner_) {
                return outgoing(inner_->on_client_data(bytes));
            }
            return decode(bytes);
        }
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
                                               const endpoint& upstream) {
            return inner_ ? inner_->on_connected(result, local, upstream)
                          : std::vector<std::uint8_t>{};
        }
        /// The inner session's own stages, for a Mode that has them (http_proxy_mode).
        template <class Inner = typename Mode::session,
                  class = std::enable_if_t<detail::gives_stages<Inner>::value>>
        void stages(const tunnel_info& tunnel, tunnel_stages& stages) {
            if (inner_) {
                inner_->stages(tunnel, stages);
            }
        }
        /// A client handed back by its tunnel goes to the inner session; a new upstream
        /// connection begins with its own header.
        template <class Inner = typename Mode::session,
                  class = std::enable_if_t<detail::takes_back<Inner>::value>>
        mode_step on_handed_back() {
            return inner_ ? outgoing(inner_->on_handed_back())
                          : mode_step::fail(make_error_code(errc::protocol_error));
        }
        /// The client as the PROXY header named it (or as accepted, without one).
        const session_info& info() const noexcept { return info_; }
        /// Once a header has named the client, that address (basic_session reports it).
        const endpoint* client_address() const noexcept {
            return decoded_ ? &info_.client : nullptr;
        }

    private:
        mode_step decode(byte_view bytes) {
            switch (decoder_.feed(bytes)) {
            case proxy_protocol::decoder::status::need_more:
                return mode_step::need_more();
            case proxy_protocol::decoder::status::invalid:
                return mode_step::fail(decoder_.error() ? decoder_.error()
                                                        : make_error_code(errc::protocol_error));
            case proxy_protocol::decoder::status::done:
                break;
            }
            const auto& header = decoder_.result();
            if (!header.local && header.source && header.destination) {
                info_.client = *header.source;
                info_.local = *header.destination;
                decoded_ = true;
            }
            if (!allowed(info_.client.address)) {
                return mode_step::fail(make_error_code(errc::client_not_allowed));
            }
            inner_.emplace(inner_mode_->make_session(info_));
            mode_step first = inner_->start();
            std::vector<std::uint8_t> rest = decoder_.take_rest();
            if (rest.empty()) {
                return outgoing(std::move(first));
            }
            if (first.what == mode_step::action::connect) {
                // A Mode that decides at once (forward_mode): the bytes after the header go
                // upstream after whatever the Mode put first.
                first.to_upstream.insert(first.to_upstream.end(), rest.begin(), rest.end());
                return outgoing(std::move(first));
            }
            if (first.what == mode_step::action::fail) {
                return first;
            }
            mode_step next = inner_->on_client_data(rest);
            // Whatever the first step wanted sent goes before the next step's bytes.
            first.to_client.insert(first.to_client.end(), next.to_client.begin(),
                                   next.to_client.end());
            next.to_client = std::move(first.to_client);
            return outgoing(std::move(next));
        }

        /// With `send`, a connect step's upstream bytes begin with the PROXY header.
        mode_step outgoing(mode_step step) const {
            // A BIND's peer connected to us and a UDP association has no upstream stream:
            // neither is told who the client is.
            if (step.what != mode_step::action::connect ||
                step.kind != mode_step::request::connect ||
                config_->send == proxy_protocol_version::none) {
                return step;
            }
            std::vector<std::uint8_t> header =
                config_->send == proxy_protocol_version::v1
                    ? proxy_protocol::encode_v1(info_.client, info_.local)
                    : proxy_protocol::encode_v2(info_.client, info_.local);
            header.insert(header.end(), step.to_upstream.begin(), step.to_upstream.end());
            step.to_upstream = std::move(header);
            return step;
        }

        bool allowed(const ip_address& address) const noexcept {
            if (config_->allow.empty()) {
                return true;
            }
            for (const cidr& range : config_->allow) {
                if (range.contains(address)) {
                    return true;
                }
            }
            return false;
        }

        const Mode* inner_mode_;
        const config* config_;
        session_info info_;
        bool decoded_ = false;
        proxy_protocol::decoder decoder_;
        std::optional<typename Mode::session> inner_;
    };

    session make_session(const session_info& info) const { return session{inner_, config_, info}; }
    const Mode& inner() const noexcept { return inner_; }

private:
    Mode inner_;
    config config_;
};

} // namespace tinyproxy
