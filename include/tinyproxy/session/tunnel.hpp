// SPDX-License-Identifier: MIT
// The third part of a session: the tunnel, which owns the upstream socket once connected and
// the relay between it and the client, keeps the idle deadline, and passes a reset on.
#pragma once

#include <chrono>       // the idle timeout
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <memory>       // late stages
#include <optional>     // the relay, once started
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // the Mode's reply

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/relay.hpp"
#include "tinyproxy/server.hpp"

namespace tinyproxy {
namespace detail {

/// A relay between the client (whose socket the caller keeps, and passes in) and the upstream
/// socket this holds. Idle while not started.
class tunnel {
public:
    /// Starts relaying: the client first gets `unsent` (what the handshake still owed it), then
    /// `reply`; upstream first gets `to_upstream`. `client_nodelay`: Nagle is already off there.
    /// `sent_upstream`: the client's bytes the connect already sent (its probe), counted here.
    void start(socket& client, bool client_nodelay, socket upstream, byte_view unsent,
               const std::vector<std::uint8_t>& reply, byte_view to_upstream,
               std::size_t sent_upstream, const session_options& limits, time_point now);

    /// Gives the relay its stages, before its first pump, and keeps the late ones to look for.
    void set_stages(tunnel_stages stages) {
        relay_->set_stages(direction::to_upstream, std::move(stages.to_upstream));
        relay_->set_stages(direction::to_client, std::move(stages.to_client));
        later_ = std::move(stages.later);
    }

    /// Moves what can move now (relay::pump) and restarts the idle clock if anything did. True
    /// once the relay has finished (error() says how), after a reset on one side has been
    /// passed to the other.
    bool pump(socket& client, short client_revents, short upstream_revents, time_point now,
              std::uint8_t* scratch, std::size_t scratch_size, int rounds = relay::max_rounds);
    /// The readiness to pump with first, right after a connect the driver waited for: the reply
    /// and any pipelined bytes go now. A client told nothing (forwarding) may have sent while we
    /// connected, and its upstream may answer at once: both are read now, not one wait later. A
    /// client still waiting for our reply (SOCKS, CONNECT) has sent nothing since, and its
    /// upstream has been sent nothing: reading either would only say EAGAIN.
    short first_events() const noexcept { return client_awaits_reply_ ? 0 : relay::unknown_events; }

    short client_events() const noexcept { return relay_->client_events(); }
    short upstream_events() const noexcept { return relay_->upstream_events(); }
    bool watch_client() const noexcept { return relay_->watch_client(); }
    bool watch_upstream() const noexcept { return relay_->watch_upstream(); }
    bool saturated() const noexcept { return relay_->saturated(); }
    int upstream_fd() const noexcept { return upstream_.native_handle(); }
    /// The earlier of the idle deadline and the relay's next wake-up (a stage holding bytes).
    time_point deadline() const noexcept { return deadline_; }
    /// At the deadline: true when it is the relay's wake-up (pump with no readiness), false
    /// when the tunnel has been idle for its whole timeout.
    bool relay_due(time_point now) const noexcept {
        return relay_->next_wake() <= now || (later_ && next_look_ <= now);
    }
    std::error_code error() const noexcept { return relay_->error(); }
    /// The relay finished with the client handed back (relay::handed_back): the client's
    /// connection stays open for what its Mode decides next.
    bool handed_back() const noexcept { return relay_ && relay_->handed_back(); }

    /// Ends the tunnel (if it started): its byte counts are added to `result`, the upstream
    /// closes, and it is idle again (it may start anew).
    void close(session_result& result) noexcept;

private:
    /// Late stages (tunnel_stages::later): a direction without stages takes them once they
    /// have come and it can (relay::can_take_stages).
    void look_for_stages(time_point now);
    /// The bytes moved since the last count, to the shared live counters.
    void count_traffic() noexcept;

    socket upstream_;
    std::optional<relay> relay_;
    std::unique_ptr<late_stages> later_;
    time_point next_look_ = time_point::max(); // with later_: an idle tunnel looks then
    traffic_counters* traffic_ = nullptr;      // session_options::traffic, which outlives us
    std::uint64_t counted_to_upstream_ = 0;    // of the relay's bytes, those in traffic_
    std::uint64_t counted_to_client_ = 0;
    std::chrono::milliseconds idle_timeout_{0};
    time_point idle_deadline_ = time_point::max(); // no byte has moved since
    time_point deadline_ = time_point::max();      // the earlier of that and the relay's wake-up
    bool client_awaits_reply_ = false; // the relay began with a reply and nothing for upstream
};

// ---------------------------------------------------------------------------------------------

inline void tunnel::start(socket& client, bool client_nodelay, socket upstream, byte_view unsent,
                          const std::vector<std::uint8_t>& reply, byte_view to_upstream,
                          std::size_t sent_upstream, const session_options& limits,
                          time_point now) {
    upstream_ = std::move(upstream);
    std::error_code ignored; // Nagle off is an optimisation; a failure changes nothing else
    if (!client_nodelay) {
        client.set_nodelay(true, ignored);
    }
    upstream_.set_nodelay(true, ignored);
    relay_.emplace(client.native_handle(), upstream_.native_handle(), limits.splice);
    relay_->closes_at_finish(); // the session closes both sockets once it has finished
    relay_->stage_buffer_size(limits.stage_buffer_size);
    client_awaits_reply_ =
        (!reply.empty() || !unsent.empty()) && to_upstream.empty() && sent_upstream == 0;
    // Anything the Mode had not yet sent (nothing, for every mode that waits for its replies to
    // go out) precedes the connect reply.
    relay_->prime_client(unsent);
    relay_->prime_client(reply);
    relay_->prime_upstream(to_upstream);
    relay_->count_sent_upstream(sent_upstream);
    traffic_ = limits.traffic.get();
    idle_timeout_ = limits.idle_timeout;
    idle_deadline_ = deadline_after(now, idle_timeout_);
    deadline_ = idle_deadline_;
}

inline bool tunnel::pump(socket& client, short client_revents, short upstream_revents,
                         time_point now, std::uint8_t* scratch, std::size_t scratch_size,
                         int rounds) {
    if (later_) {
        look_for_stages(now);
    }
    if (relay_->pump(now, scratch, scratch_size, client_revents, upstream_revents, rounds)) {
        idle_deadline_ = deadline_after(now, idle_timeout_);
    }
    if (traffic_ != nullptr) {
        count_traffic();
    }
    // The relay's stages may need a pump before the idle timeout: whichever comes first.
    time_point wake = relay_->next_wake();
    wake = later_ && next_look_ < wake ? next_look_ : wake;
    deadline_ = wake < idle_deadline_ ? wake : idle_deadline_;
    if (!relay_->finished()) {
        return false;
    }
    if (relay_->error()) {
        // Pass the reset on: the side that did not fail is closed with RST, not FIN.
        std::error_code ignored;
        (relay_->error_on_client() ? upstream_ : client).set_linger_reset(ignored);
    }
    return true;
}

inline void tunnel::look_for_stages(time_point now) {
    if (next_look_ <= now || next_look_ == time_point::max()) { // the first pump, or due
        next_look_ = deadline_after(now, later_->look_every());
    }
    if (!later_->changed()) {
        return;
    }
    bool every_one_asked = true;
    bool any_without = false;
    for (direction which : {direction::to_upstream, direction::to_client}) {
        if (relay_->stages(which) != nullptr) {
            continue;
        }
        if (!relay_->can_take_stages(which)) {
            // Its pipe still holds bytes (ask again at the next pump), or it has ended.
            every_one_asked = every_one_asked && !relay_->direction_open(which);
            any_without = any_without || relay_->direction_open(which);
            continue;
        }
        stage_chain chain = later_->make(which);
        if (chain.empty()) {
            any_without = true;
        } else {
            relay_->attach_stages(which, std::move(chain), now);
        }
    }
    if (every_one_asked) {
        later_->looked();
    }
    if (!any_without) { // both directions have stages (or have ended): nothing more to look for
        later_.reset();
        next_look_ = time_point::max();
    }
}

inline void tunnel::count_traffic() noexcept {
    const std::uint64_t up = relay_->bytes_to_upstream();
    const std::uint64_t down = relay_->bytes_to_client();
    if (up != counted_to_upstream_) {
        traffic_->to_upstream.fetch_add(up - counted_to_upstream_, std::memory_order_relaxed);
        counted_to_upstream_ = up;
    }
    if (down != counted_to_client_) {
        traffic_->to_client.fetch_add(down - counted_to_client_, std::memory_order_relaxed);
        counted_to_client_ = down;
    }
}

inline void tunnel::close(session_result& result) noexcept {
    if (relay_ && traffic_ != nullptr) {
        count_traffic();
    }
    if (relay_) {
        // Added: a client handed back to its Mode may have several tunnels, one after another.
        result.bytes_to_upstream += relay_->bytes_to_upstream();
        result.bytes_to_client += relay_->bytes_to_client();
        relay_.reset(); // its pipes, if it spliced, close with the sockets
    }
    later_.reset();
    next_look_ = time_point::max();
    counted_to_upstream_ = 0;
    counted_to_client_ = 0;
    idle_deadline_ = time_point::max();
    deadline_ = time_point::max();
    upstream_.close();
}

} // namespace detail
} // namespace tinyproxy
