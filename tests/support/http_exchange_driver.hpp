// A socket-free driver for http_proxy_mode: one session and its tunnels' two HTTP stages, fed a
// client's and an origin's bytes, with everything each side receives recorded.
#pragma once

#include <cstddef>      // std::size_t
#include <memory>       // the tunnel in play
#include <string>       // what each side received
#include <system_error> // std::error_code
#include <vector>       // per tunnel

#include <tinyproxy/tinyproxy.hpp>

namespace tptest {

/// How the tunnel in play ended, as its stages asked (either direction's).
struct tunnel_end_flags {
    bool closed = false;
    bool handed_back = false;
    bool was_reset = false;
    bool any() const noexcept { return closed || handed_back || was_reset; }
};

/// One direction's destination: the bytes, its end, and bytes that came after that end.
class recording_sink final : public tinyproxy::stage_sink {
public:
    explicit recording_sink(tunnel_end_flags& flags) : flags_(flags) {}
    void deliver(tinyproxy::byte_view bytes) noexcept override {
        if (ended || flags_.closed || flags_.was_reset) {
            after_end += bytes.size();
            return;
        }
        got.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }
    void deliver_end() noexcept override { ended = true; }
    void reset(std::error_code) noexcept override { flags_.was_reset = true; }
    void close() noexcept override { flags_.closed = true; }
    void hand_back() noexcept override { flags_.handed_back = true; }

    std::string got;
    bool ended = false;
    std::size_t after_end = 0; // delivered after deliver_end() or the tunnel's close/reset

private:
    tunnel_end_flags& flags_;
};

/// The session, and the tunnel it has connected (if any). Client bytes go to the session while
/// it decides and to the tunnel's request stage while one runs; origin bytes to the response
/// stage. A hand-back gives the client to the session again (at most `max_rounds` connects).
class http_exchange_driver {
public:
    explicit http_exchange_driver(tinyproxy::http_proxy_mode::config cfg = {},
                                  std::size_t max_rounds = 16)
        : mode_(std::move(cfg)), session_(mode_.make_session({})), max_rounds_(max_rounds) {}
    http_exchange_driver(const http_exchange_driver&) = delete;
    http_exchange_driver& operator=(const http_exchange_driver&) = delete;

    void client(tinyproxy::byte_view bytes) {
        if (failed || client_gone()) {
            return;
        }
        if (!tunnel_) {
            handle(session_.on_client_data(bytes));
            return;
        }
        if (!tunnel_->upstream_fed_end) {
            tunnel_->stages.to_upstream.feed(bytes, now_, tunnel_->to_origin);
        }
        settle();
    }
    void client(const std::string& text) { client(view(text)); }
    void client_end() {
        if (tunnel_ && !tunnel_->upstream_fed_end && !tunnel_->flags.any()) {
            tunnel_->upstream_fed_end = true;
            tunnel_->stages.to_upstream.feed_end(now_, tunnel_->to_origin);
            settle();
        }
    }
    void origin(tinyproxy::byte_view bytes) {
        if (tunnel_ && !tunnel_->client_fed_end && !tunnel_->flags.any()) {
            tunnel_->stages.to_client.feed(bytes, now_, tunnel_->to_client);
            settle();
        }
    }
    void origin(const std::string& text) { origin(view(text)); }
    void origin_end() {
        if (tunnel_ && !tunnel_->client_fed_end && !tunnel_->flags.any()) {
            tunnel_->client_fed_end = true;
            tunnel_->stages.to_client.feed_end(now_, tunnel_->to_client);
            settle();
        }
    }

    /// Whether a tunnel runs now, and its flags and sinks.
    bool in_tunnel() const noexcept { return tunnel_ != nullptr; }
    const tunnel_end_flags* tunnel_flags() const noexcept {
        return tunnel_ ? &tunnel_->flags : nullptr;
    }
    /// The tunnel's client side has its end of stream, or the tunnel was closed or reset.
    bool client_gone() const noexcept { return client_closed; }

    std::string to_client;              ///< all the client received: Mode answers and tunnels
    std::vector<std::string> to_origin; ///< what each tunnel's origin received, in order
    std::vector<tinyproxy::host_port> connects;
    std::size_t after_end = 0;  ///< bytes either sink got after its end or the tunnel's
    std::size_t hand_backs = 0; ///< tunnels that handed the client back
    bool failed = false;        ///< the session answered fail
    bool client_closed = false; ///< the client's connection ended (FIN, close or reset)
    bool ran_out = false;       ///< max_rounds connects were made

private:
    struct tunnel {
        tunnel_end_flags flags;
        recording_sink to_origin{flags};
        recording_sink to_client{flags};
        tinyproxy::tunnel_stages stages;
        bool upstream_fed_end = false;
        bool client_fed_end = false;
    };

    static tinyproxy::byte_view view(const std::string& text) {
        return tinyproxy::byte_view{reinterpret_cast<const std::uint8_t*>(text.data()),
                                    text.size()};
    }

    void handle(tinyproxy::mode_step step) {
        using action = tinyproxy::mode_step::action;
        to_client.append(step.to_client.begin(), step.to_client.end());
        if (step.what == action::need_more) {
            return;
        }
        if (step.what == action::fail) {
            failed = true;
            client_closed = true;
            return;
        }
        if (connects.size() >= max_rounds_) {
            ran_out = true;
            client_closed = true;
            return;
        }
        connects.push_back(step.target);
        std::vector<std::uint8_t> reply = session_.on_connected({}, {}, {});
        to_client.append(reply.begin(), reply.end());
        tunnel_ = std::make_unique<tunnel>();
        to_origin.emplace_back(step.to_upstream.begin(), step.to_upstream.end());
        session_.stages(tinyproxy::tunnel_info{}, tunnel_->stages);
        tunnel_->stages.to_upstream.start(now_, tunnel_->to_origin);
        tunnel_->stages.to_client.start(now_, tunnel_->to_client);
        settle();
    }

    /// Records what the tunnel delivered; ends it as its stages asked.
    void settle() {
        tunnel& t = *tunnel_;
        to_origin.back() += t.to_origin.got;
        t.to_origin.got.clear();
        to_client += t.to_client.got;
        t.to_client.got.clear();
        after_end += t.to_origin.after_end + t.to_client.after_end;
        t.to_origin.after_end = 0;
        t.to_client.after_end = 0;
        if (t.flags.closed || t.flags.was_reset || t.to_client.ended) {
            client_closed = true;
        }
        if (t.flags.handed_back && !t.flags.closed && !t.flags.was_reset) {
            ++hand_backs;
            std::unique_ptr<tunnel> done = std::move(tunnel_);
            handle(session_.on_handed_back());
        }
    }

    tinyproxy::http_proxy_mode mode_;
    tinyproxy::http_proxy_mode::session session_;
    std::size_t max_rounds_;
    tinyproxy::time_point now_{};
    std::unique_ptr<tunnel> tunnel_;
};

} // namespace tptest
