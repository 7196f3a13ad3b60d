// SPDX-License-Identifier: MIT
// The two stages of an HTTP forward-proxy tunnel, and the exchange they share with their Mode
// session: requests rewritten for the origin and their bodies framed, responses rewritten for
// the client, and the client handed back to the Mode when a request needs another origin.
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <deque>        // the requests awaiting their responses
#include <functional>   // the per-request log hook
#include <memory>       // the shared exchange
#include <optional>     // the next request, held
#include <string>       // heads
#include <string_view>  // via
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // held bytes

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"
#include "tinyproxy/protocol/http_connect.hpp"
#include "tinyproxy/protocol/http_message.hpp"
#include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// One request a forward proxy answered, for an access log (http_proxy_mode::config::log).
struct http_exchange_record {
    endpoint client; ///< who asked
    std::string method;
    std::string target;               ///< as the client sent it (absolute-form)
    int status = 0;                   ///< the final status sent to the client
    std::uint64_t response_bytes = 0; ///< head and body, as sent to the client
};

namespace detail {

/// Whether a message with this framing has no body bytes at all (none, or a length of 0).
inline bool bodiless(const http_framing& framing) noexcept {
    return framing.what == http_framing::kind::none ||
           (framing.what == http_framing::kind::length && framing.length == 0);
}

/// The same origin: the host compared without case, and the port.
inline bool same_origin(const host_port& a, const host_port& b) noexcept {
    return a.port == b.port && http_head::iequals(a.host, b.host);
}

/// A short response a proxy answers with itself: a text/plain body naming the status,
/// `fields` (each ending in CRLF) before it, and "Connection: close" unless `keep`.
inline std::vector<std::uint8_t> http_proxy_response(int status, std::string_view fields,
                                                     bool keep = false) {
    std::string body = std::to_string(status) + " " + http_head::reason_phrase(status) + "\n";
    std::string text =
        "HTTP/1.1 " + std::to_string(status) + " " + http_head::reason_phrase(status) + "\r\n";
    text += fields;
    text += "Content-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    text += keep ? "" : "Connection: close\r\n";
    text += "\r\n" + body;
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

/// Whether `head` carries the credentials `required` asks for (always, when none are).
inline bool http_authorized(const http_request_head& head,
                            const std::optional<credentials>& required) {
    namespace h = http_head;
    if (!required) {
        return true;
    }
    const std::string* value = nullptr;
    for (const http_field& field : head.fields) {
        if (h::iequals(field.name, "proxy-authorization")) {
            if (value != nullptr) {
                return false; // two: which one would the next proxy read?
            }
            value = &field.value;
        }
    }
    if (value == nullptr) {
        return false;
    }
    return h::check_basic(*value, *required) == h::basic_check::match;
}

/// TRACE or OPTIONS with Max-Forwards 0 (RFC 9110 section 7.6.2): the answer is the proxy's.
inline std::optional<std::vector<std::uint8_t>> http_answer_here(const http_request_head& head) {
    if (head.method != "TRACE" && head.method != "OPTIONS") {
        return std::nullopt;
    }
    const std::string* hops = head.field("max-forwards");
    if (hops == nullptr || *hops != "0") {
        return std::nullopt;
    }
    std::string text;
    if (head.method == "OPTIONS") {
        text = "HTTP/1.1 200 OK\r\nAllow: GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, "
               "PATCH\r\nContent-Length: 0\r\n\r\n";
    } else {
        // The request as received is the body (RFC 9110 section 9.3.8); its credentials are not.
        std::string echo = head.method + " " + head.target + " HTTP/1." +
                           std::to_string(head.minor_version) + "\r\n";
        for (const http_field& field : head.fields) {
            if (!http_head::iequals(field.name, "proxy-authorization")) {
                echo += field.name + ": " + field.value + "\r\n";
            }
        }
        echo += "\r\n";
        text = "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: " +
               std::to_string(echo.size()) + "\r\n\r\n" + echo;
    }
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

/// What a Mode session and its tunnel's two stages share, for one client. The Mode sets
/// `first` (the request the tunnel starts with) and `input` (the client's bytes after its
/// head); the stages forward and answer; when a request cannot go to this tunnel's origin,
/// the request stage keeps it in `next` (and what follows in `input`) and the tunnel hands the
/// client back once every answer so far has gone.
struct http_exchange {
    /// What the stages are told, fixed for the client.
    struct settings {
        std::string via; ///< the pseudonym in Via
        http_head_limits limits;
        /// Called as each response has been passed to the client (may be empty).
        std::function<void(const http_exchange_record&)> log;
        /// Credentials every request must carry (none: no check).
        std::optional<credentials> required;
    };

    /// A request forwarded, awaiting its response.
    struct awaiting_response {
        std::string method;
        std::string target;
        int client_minor_version = 1;
        bool client_keeps = true; ///< the client keeps the connection after it
    };

    http_exchange(const settings& given, const endpoint& asking) : config(&given), client(asking) {}

    const settings* config;
    endpoint client;                        ///< for the log
    host_port origin;                       ///< the tunnel's origin
    std::optional<http_request_head> first; ///< the request the tunnel starts with (from the Mode)
    std::optional<http_request_head> next;  ///< a request for the Mode (another origin, ...)
    int next_error = 0;                     ///< or: the status a malformed request gets
    std::vector<std::uint8_t> input;        ///< client bytes after `first` / `next`, unread
    std::deque<awaiting_response> awaiting; ///< forwarded, in order, not yet answered in full
    bool origin_gone = false;               ///< the origin closed after its last complete response
    bool client_ended = false;              ///< the client sent its end of stream
    bool closing = false;          ///< a response ends the client's connection: read no more
    bool response_started = false; ///< bytes of the answer to awaiting.front() have gone

    /// Whether the tunnel is to hand the client back: a request waits for the Mode.
    bool hand_back_wanted() const noexcept { return next.has_value() || next_error != 0; }
};

/// Client -> origin: each request head rewritten to origin-form (origin_request_head), its
/// body passed on as framed. A request the Mode must answer (another origin, CONNECT, one the
/// origin's end leaves no connection for, a malformed one, missing credentials, Max-Forwards
/// 0) is kept for the Mode, with what follows.
class http_request_stage final : public relay_stage {
public:
    explicit http_request_stage(std::shared_ptr<http_exchange> exchange)
        : exchange_(std::move(exchange)), parser_(exchange_->config->limits) {}

    void on_start(stage_context& out) override;
    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;
    std::size_t held() const noexcept override { return holding_ ? exchange_->input.size() : 0; }

private:
    enum class phase { head, body, holding, discarding };

    /// A request head for this tunnel: forwarded, and its body next. Else kept for the Mode.
    void take_head(stage_context& out, http_request_head head);
    void hold(stage_context& out);
    /// A body whose framing is broken (a bad chunk size): 400 if no answer has begun.
    void body_failed(stage_context& out);
    /// Hands the client back if nothing is awaited any more.
    void hand_back_when_idle(stage_context& out);

    std::shared_ptr<http_exchange> exchange_;
    http_request_parser parser_;
    http_body_scanner body_;
    phase phase_ = phase::head;
    bool holding_ = false;
};

/// Origin -> client: each response head rewritten (client_response_head), its body passed on
/// as framed, in the order the requests went; the client's connection closed after a
/// response that ends it, and the client handed back once the last awaited response is done
/// and a request waits for another origin.
class http_response_stage final : public relay_stage {
public:
    explicit http_response_stage(std::shared_ptr<http_exchange> exchange)
        : exchange_(std::move(exchange)), parser_(exchange_->config->limits) {}

    void on_data(stage_context& out, byte_view bytes) override;
    void on_end(stage_context& out) override;

private:
    enum class phase { head, body, done };

    void start_response();
    /// One response head: passed on rewritten; true when a body follows.
    void take_head(stage_context& out, http_response_head head);
    /// The response has been passed on whole.
    void response_done(stage_context& out);
    /// The origin answered something that is not HTTP: 502 if nothing of it has gone.
    void bad_response(stage_context& out);
    void pass(stage_context& out, byte_view bytes) {
        sent_ += bytes.size();
        out.pass(bytes);
    }

    std::shared_ptr<http_exchange> exchange_;
    http_response_parser parser_;
    http_body_scanner body_;
    phase phase_ = phase::head;
    bool parser_ready_ = false; // reset for the request at the front of `awaiting`
    bool started_ = false;      // bytes of this response have been passed on
    bool head_begun_ = false;   // bytes of a response head have been read
    bool closes_ = false;       // this response ends the client's connection
    bool until_close_ = false;  // its body ends with the origin's end of stream
    int status_ = 0;
    std::uint64_t sent_ = 0; // of this response
};

// ---------------------------------------------------------------------------------------------

inline void http_request_stage::on_start(stage_context& out) {
    // The Mode read the first head; what the client sent after it comes before any new read.
    if (exchange_->first) {
        http_request_head head = std::move(*exchange_->first);
        exchange_->first.reset();
        take_head(out, std::move(head));
    }
    std::vector<std::uint8_t> rest;
    rest.swap(exchange_->input);
    if (!rest.empty()) {
        on_data(out, byte_view{rest.data(), rest.size()});
    }
}

inline void http_request_stage::on_data(stage_context& out, byte_view bytes) {
    while (!bytes.empty()) {
        switch (phase_) {
        case phase::discarding: // after a request that closes the connection: nothing counts
            return;
        case phase::holding:
            exchange_->input.insert(exchange_->input.end(), bytes.begin(), bytes.end());
            return;
        case phase::head: {
            std::size_t used = 0;
            auto status = parser_.feed(bytes, used);
            bytes = bytes.subview(used);
            if (status == http_request_parser::status::failed) {
                exchange_->next_error = parser_.error_status();
                hold(out);
                continue; // what follows is kept, though the Mode only answers and closes
            }
            if (status == http_request_parser::status::complete) {
                take_head(out, parser_.take());
            }
            continue;
        }
        case phase::body: {
            std::size_t used = 0;
            auto status = body_.feed(bytes, used);
            if (status == http_body_scanner::status::failed) {
                body_failed(out); // nothing of a broken body goes on: its origin is left
                return;
            }
            out.pass(bytes.first(used));
            bytes = bytes.subview(used);
            if (status == http_body_scanner::status::complete) {
                phase_ = exchange_->closing ? phase::discarding : phase::head;
            }
            continue;
        }
        }
    }
}

inline void http_request_stage::take_head(stage_context& out, http_request_head head) {
    http_exchange& ex = *exchange_;
    // What the Mode answers (CONNECT, another origin, a 407, Max-Forwards 0), or what the
    // origin's end leaves no connection for, waits for the Mode.
    if (head.connect || !same_origin(head.origin, ex.origin) || ex.origin_gone ||
        !http_authorized(head, ex.config->required) || http_answer_here(head)) {
        ex.next = std::move(head);
        hold(out);
        return;
    }
    std::string rewritten = origin_request_head(head, ex.config->via);
    out.pass(byte_view{reinterpret_cast<const std::uint8_t*>(rewritten.data()), rewritten.size()});
    ex.awaiting.push_back({head.method, head.target, head.minor_version, head.keep_alive});
    if (!head.keep_alive) {
        ex.closing = true; // its response ends the connection: nothing after it is read
    }
    body_ = http_body_scanner(head.body, ex.config->limits);
    if (bodiless(head.body)) {
        phase_ = ex.closing ? phase::discarding : phase::head;
    } else {
        phase_ = phase::body;
    }
}

inline void http_request_stage::body_failed(stage_context& out) {
    http_exchange& ex = *exchange_;
    if (ex.awaiting.size() == 1 && !ex.response_started) {
        // Only this request is unanswered, and nothing of an answer has gone: it is dropped
        // with its origin connection, and the Mode answers 400 (then closes).
        ex.awaiting.clear();
        ex.next_error = 400;
        hold(out);
        return;
    }
    // An answer to it (or to one before it) is on its way: no 400 can be placed now.
    out.close();
    phase_ = phase::discarding;
}

inline void http_request_stage::hold(stage_context& out) {
    phase_ = phase::holding;
    holding_ = true;
    hand_back_when_idle(out);
}

inline void http_request_stage::hand_back_when_idle(stage_context& out) {
    if (exchange_->awaiting.empty()) {
        out.hand_back();
    }
}

inline void http_request_stage::on_end(stage_context& out) {
    exchange_->client_ended = true;
    if (phase_ == phase::holding) {
        return; // the Mode reads the end again when it reads on
    }
    if (exchange_->awaiting.empty() && exchange_->origin_gone) {
        out.close(); // nothing is owed either way: both ends get their FIN now
        return;
    }
    // A client that half-closes after its requests still gets their answers.
    out.end();
}

inline void http_response_stage::start_response() {
    parser_.reset(exchange_->awaiting.front().method);
    parser_ready_ = true;
    started_ = false;
    head_begun_ = false;
    closes_ = false;
    until_close_ = false;
    sent_ = 0;
    status_ = 0;
}

inline void http_response_stage::on_data(stage_context& out, byte_view bytes) {
    while (!bytes.empty()) {
        if (phase_ == phase::done) {
            return; // after a response that closed the connection
        }
        if (exchange_->awaiting.empty()) {
            // Nothing was asked: an origin that talks out of turn is not HTTP.
            bad_response(out);
            return;
        }
        if (phase_ == phase::head) {
            if (!parser_ready_) {
                start_response();
            }
            std::size_t used = 0;
            auto status = parser_.feed(bytes, used);
            bytes = bytes.subview(used);
            head_begun_ = head_begun_ || used != 0;
            if (status == http_response_parser::status::failed) {
                bad_response(out);
                return;
            }
            if (status == http_response_parser::status::complete) {
                take_head(out, parser_.take());
            }
            continue;
        }
        std::size_t used = 0;
        auto status = body_.feed(bytes, used);
        pass(out, bytes.first(used));
        bytes = bytes.subview(used);
        if (status == http_body_scanner::status::failed) {
            out.close(); // part of the response has gone: the client sees it cut short
            phase_ = phase::done;
            return;
        }
        if (status == http_body_scanner::status::complete) {
            response_done(out);
        }
    }
}

inline void http_response_stage::take_head(stage_context& out, http_response_head head) {
    http_exchange& ex = *exchange_;
    const http_exchange::awaiting_response& request = ex.awaiting.front();
    if (head.status == 101) {
        // Upgrade is not passed on, so no origin may switch protocols: not HTTP we can follow.
        bad_response(out);
        return;
    }
    const bool interim = head.interim();
    const bool closes =
        !interim && (!request.client_keeps || head.body.what == http_framing::kind::until_close);
    std::string rewritten =
        client_response_head(head, ex.config->via, request.client_minor_version, closes);
    head_begun_ = false; // an interim head is followed by the final one
    started_ = true;
    ex.response_started = true;
    pass(out, byte_view{reinterpret_cast<const std::uint8_t*>(rewritten.data()), rewritten.size()});
    if (interim) {
        return; // the final response to the same request follows: the parser reads on
    }
    status_ = head.status;
    closes_ = closes;
    until_close_ = head.body.what == http_framing::kind::until_close;
    if (!head.keep_alive) {
        ex.origin_gone = true; // it closes after this response; the next request reconnects
    }
    body_ = http_body_scanner(head.body, ex.config->limits);
    if (bodiless(head.body)) { // its end is here: no byte will come to say so
        response_done(out);
    } else {
        phase_ = phase::body;
    }
}

inline void http_response_stage::response_done(stage_context& out) {
    http_exchange& ex = *exchange_;
    if (ex.config->log) {
        const http_exchange::awaiting_response& request = ex.awaiting.front();
        ex.config->log({ex.client, request.method, request.target, status_, sent_});
    }
    ex.awaiting.pop_front();
    ex.response_started = false;
    parser_ready_ = false;
    phase_ = phase::head;
    if (closes_) {
        // The response that ends the connection: the client asked, or its body ran to the
        // origin's end. Requests pipelined behind it go unanswered, as the client is told.
        phase_ = phase::done;
        out.end();
        return;
    }
    if (ex.awaiting.empty()) {
        if (ex.hand_back_wanted()) {
            out.hand_back();
        } else if (ex.client_ended) {
            phase_ = phase::done;
            out.end();
        }
    }
}

inline void http_response_stage::bad_response(stage_context& out) {
    if (!started_ && !exchange_->awaiting.empty()) {
        std::vector<std::uint8_t> reply = http_proxy_response(502, {});
        out.pass(byte_view{reply.data(), reply.size()});
        if (exchange_->config->log) {
            const http_exchange::awaiting_response& request = exchange_->awaiting.front();
            exchange_->config->log(
                {exchange_->client, request.method, request.target, 502, reply.size()});
        }
    }
    phase_ = phase::done;
    out.close();
}

inline void http_response_stage::on_end(stage_context& out) {
    http_exchange& ex = *exchange_;
    if (phase_ == phase::done) {
        return;
    }
    if (phase_ == phase::body && until_close_) {
        response_done(out); // the end of stream is the end of this body
        if (phase_ != phase::done) {
            phase_ = phase::done;
            out.end();
        }
        return;
    }
    if (phase_ == phase::head && !head_begun_) {
        if (ex.awaiting.empty()) {
            // Between responses: a keep-alive origin that closes. The client keeps its
            // connection; its next request connects again.
            ex.origin_gone = true;
            if (ex.hand_back_wanted()) {
                out.hand_back();
            } else if (ex.client_ended) {
                phase_ = phase::done;
                out.end();
            }
            return;
        }
    }
    // The origin ended a response early, or never answered one: 502 if nothing has gone.
    bad_response(out);
}

} // namespace detail
} // namespace tinyproxy
