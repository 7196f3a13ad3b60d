// SPDX-License-Identifier: MIT
// http_proxy_mode: an HTTP/1.1 forward proxy: absolute-form requests forwarded to their origin
// with keep-alive both ways, and CONNECT tunnels.
#pragma once

#include <cstdint>      // bytes
#include <functional>   // the access log hook
#include <memory>       // the exchange, shared with the tunnel's stages
#include <optional>     // configured credentials
#include <string>       // the realm, the pseudonym
#include <string_view>  // parsing
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"
#include "tinyproxy/protocol/http_connect.hpp"
#include "tinyproxy/protocol/http_message.hpp"
#include "tinyproxy/stage.hpp"
#include "tinyproxy/mode/mode.hpp"
#include "tinyproxy/mode/http_exchange.hpp"

namespace tinyproxy {

/// An HTTP/1.1 forward proxy (RFC 9110, RFC 9112), as `http_proxy=` clients use one:
///  - `GET http://host[:port]/path HTTP/1.1` (any method; http:// only, other schemes 501) goes
///    to the origin as `GET /path HTTP/1.1`, with the hop-by-hop fields removed, Host set to
///    the target, Via added and Max-Forwards counted down (origin_request_head); responses come
///    back with their hop-by-hop fields removed and Via added (client_response_head);
///  - bodies pass as framed (Content-Length, chunked, to the origin's close; none for HEAD,
///    1xx, 204, 304); 100-continue passes through; a message whose framing could be read two
///    ways (request smuggling) is refused with 400 before any of it is forwarded;
///  - keep-alive: a client may send request after request (pipelined too, answered in order).
///    Requests to the same origin reuse its connection; a request to another origin (or after
///    the origin closed) waits until the answers before it have gone, then the tunnel hands the
///    client back (stage_context::hand_back) and this session connects anew;
///  - `CONNECT host:port` opens a raw tunnel, as http_connect_mode does;
///  - errors as a proxy gives them, each with a short body: 400, 407 with
///    `Proxy-Authenticate: Basic` when credentials are required and missing or wrong (on every
///    request), 414, 431, 501, 505, 502 for an origin refused, unresolvable or not speaking
///    HTTP, 504 for a connect that timed out. Each closes the client's connection, after the
///    answers before it.
///  - TRACE and OPTIONS with `Max-Forwards: 0` are answered here, and the connection kept.
class http_proxy_mode {
public:
    struct config {
        /// When set, every request (CONNECT too) must carry these Basic credentials.
        std::optional<credentials> required;
        /// The realm named in a 407.
        std::string realm = "tinyproxy";
        /// This proxy's pseudonym in Via ("1.1 tinyproxy.hpp").
        std::string via = "tinyproxy.hpp";
        http_head_limits limits;
        /// Called on the thread (or in the process) serving the client, as each response has
        /// been passed on: an access log. Empty: none.
        std::function<void(const http_exchange_record&)> log;
    };

    http_proxy_mode() : http_proxy_mode(config{}) {}
    explicit http_proxy_mode(config cfg)
        : config_(std::make_shared<const config>(std::move(cfg))),
          settings_(
              std::make_shared<detail::http_exchange::settings>(detail::http_exchange::settings{
                  config_->via, config_->limits, config_->log, config_->required})) {}

    class session {
    public:
        session(std::shared_ptr<const config> cfg,
                std::shared_ptr<const detail::http_exchange::settings> settings,
                const endpoint& client)
            : config_(std::move(cfg)), settings_(std::move(settings)), client_(client) {}

        static constexpr bool uses_local_endpoint = false; // replies never name our address

        mode_step start() { return mode_step::need_more(); }
        mode_step on_client_data(byte_view bytes);
        /// After a tunnel handed the client back: the request it kept, or more to read.
        mode_step on_handed_back();
        std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint&,
                                               const endpoint&);
        /// A forwarding tunnel's two stages (a CONNECT tunnel has none: it may splice).
        void stages(const tunnel_info& tunnel, tunnel_stages& stages);

    private:
        detail::http_exchange& exchange();
        /// Reads heads from the exchange's input until one needs a connect (or a failure).
        mode_step read_on(std::vector<std::uint8_t> answered);
        /// What to do with one complete head.
        std::optional<mode_step> decide(http_request_head head,
                                        std::vector<std::uint8_t>& answered);
        mode_step refuse(int status, std::error_code why, std::vector<std::uint8_t> answered);

        std::shared_ptr<const config> config_;
        std::shared_ptr<const detail::http_exchange::settings> settings_;
        endpoint client_;
        std::shared_ptr<detail::http_exchange> exchange_; // made at the first byte
        std::unique_ptr<http_request_parser> parser_;     // only between tunnels
        bool tunnel_ = false;                             // the decision was CONNECT: a raw tunnel
        bool forwarding_ = false;                         // the decision was a forwarded request
    };

    session make_session(const session_info& client) const {
        return session{config_, settings_, client.client};
    }

private:
    std::shared_ptr<const config> config_;
    std::shared_ptr<const detail::http_exchange::settings> settings_;
};

// ---------------------------------------------------------------------------------------------

inline detail::http_exchange& http_proxy_mode::session::exchange() {
    if (!exchange_) {
        exchange_ = std::make_shared<detail::http_exchange>(*settings_, client_);
    }
    return *exchange_;
}

inline mode_step http_proxy_mode::session::on_client_data(byte_view bytes) {
    detail::http_exchange& ex = exchange();
    ex.input.insert(ex.input.end(), bytes.begin(), bytes.end());
    return read_on({});
}

inline mode_step http_proxy_mode::session::on_handed_back() {
    detail::http_exchange& ex = exchange();
    ex.awaiting.clear();
    ex.response_started = false;
    ex.origin_gone = false;
    if (ex.next_error != 0) {
        int status = ex.next_error;
        ex.next_error = 0;
        return refuse(status,
                      make_error_code(status == 431 || status == 414 ? errc::message_too_large
                                                                     : errc::protocol_error),
                      {});
    }
    std::vector<std::uint8_t> answered;
    if (ex.next) {
        http_request_head head = std::move(*ex.next);
        ex.next.reset();
        if (std::optional<mode_step> step = decide(std::move(head), answered)) {
            return std::move(*step);
        }
    }
    return read_on(std::move(answered));
}

inline mode_step http_proxy_mode::session::read_on(std::vector<std::uint8_t> answered) {
    detail::http_exchange& ex = exchange();
    if (!parser_) {
        parser_ = std::make_unique<http_request_parser>(config_->limits);
    }
    while (true) {
        std::size_t used = 0;
        auto status = parser_->feed(byte_view{ex.input.data(), ex.input.size()}, used);
        ex.input.erase(ex.input.begin(), ex.input.begin() + static_cast<std::ptrdiff_t>(used));
        if (status == http_request_parser::status::need_more) {
            mode_step step = mode_step::need_more(std::move(answered));
            return step;
        }
        if (status == http_request_parser::status::failed) {
            int code = parser_->error_status();
            return refuse(code, parser_->error(), std::move(answered));
        }
        if (std::optional<mode_step> step = decide(parser_->take(), answered)) {
            return std::move(*step);
        }
    }
}

inline std::optional<mode_step>
http_proxy_mode::session::decide(http_request_head head, std::vector<std::uint8_t>& answered) {
    detail::http_exchange& ex = exchange();
    if (!detail::http_authorized(head, config_->required)) {
        return refuse(407, make_error_code(errc::auth_failed), std::move(answered));
    }
    if (std::optional<std::vector<std::uint8_t>> local = detail::http_answer_here(head)) {
        if (head.body.what != http_framing::kind::none || !head.keep_alive) {
            mode_step step = mode_step::fail(make_error_code(errc::protocol_error));
            answered.insert(answered.end(), local->begin(), local->end());
            step.to_client = std::move(answered);
            return step; // a body we would have to skip: answered, and closed
        }
        answered.insert(answered.end(), local->begin(), local->end());
        return std::nullopt; // read on: the next request may be here already
    }
    parser_.reset(); // until the tunnel hands the client back, its stages read the requests
    host_port target = head.origin;
    ex.origin = target;
    tunnel_ = head.connect;
    forwarding_ = !head.connect;
    mode_step step;
    if (head.connect) {
        // What followed the CONNECT head is the tunnel's first bytes, untouched.
        step = mode_step::connect_to(std::move(target), std::move(ex.input));
        ex.input.clear();
    } else {
        ex.first = std::move(head);
        step = mode_step::connect_to(std::move(target));
    }
    step.to_client = std::move(answered);
    return step;
}

inline mode_step http_proxy_mode::session::refuse(int status, std::error_code why,
                                                  std::vector<std::uint8_t> answered) {
    namespace h = detail::http_head;
    std::string fields;
    if (status == 407) {
        fields = "Proxy-Authenticate: Basic realm=" + h::quoted(config_->realm) + "\r\n";
    }
    std::vector<std::uint8_t> reply = detail::http_proxy_response(status, fields);
    answered.insert(answered.end(), reply.begin(), reply.end());
    exchange_.reset();
    parser_.reset();
    return mode_step::fail(why ? why : make_error_code(errc::protocol_error), std::move(answered));
}

inline std::vector<std::uint8_t>
http_proxy_mode::session::on_connected(std::error_code result, const endpoint&, const endpoint&) {
    if (result) {
        exchange_.reset();
        return detail::http_proxy_response(detail::http_head::connect_failure_status(result), {});
    }
    if (tunnel_) {
        static constexpr std::string_view text = "HTTP/1.1 200 Connection established\r\n\r\n";
        exchange_.reset(); // a raw tunnel: nothing more is read as HTTP
        return std::vector<std::uint8_t>(text.begin(), text.end());
    }
    return {};
}

inline void http_proxy_mode::session::stages(const tunnel_info&, tunnel_stages& stages) {
    if (!forwarding_ || !exchange_) {
        return;
    }
    stages.to_upstream.push_back(std::make_unique<detail::http_request_stage>(exchange_));
    stages.to_client.push_back(std::make_unique<detail::http_response_stage>(exchange_));
}

} // namespace tinyproxy
