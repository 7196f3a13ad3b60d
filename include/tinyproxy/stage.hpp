// SPDX-License-Identifier: MIT
// The relay's stage seam: a stage sees, changes, holds, paces, splits or cuts the bytes of one
// direction of a tunnel, and a stage_chain runs an ordered list of them for the relay.
#pragma once

#include <chrono>       // how often late stages are looked for
#include <cstddef>      // std::size_t
#include <cstdint>      // a tunnel's serial number
#include <functional>   // stage_factory
#include <memory>       // std::unique_ptr: a chain owns its stages
#include <string>       // what a tunnel's stages are, for its log line
#include <system_error> // the reason for a reset
#include <utility>      // std::move
#include <vector>       // the stages in order

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"

namespace tinyproxy {

/// The two directions of a tunnel, each with its own chain of stages.
enum class direction {
    to_upstream = 0, ///< bytes the client sends
    to_client = 1,   ///< bytes upstream sends
};

/// Where the last stage of a chain delivers: the relay's side of the destination socket. The
/// relay implements it; a stage never sees it.
class stage_sink {
public:
    /// Bytes for the destination, in order.
    virtual void deliver(byte_view bytes) noexcept = 0;
    /// The end of stream: nothing more will be delivered.
    virtual void deliver_end() noexcept = 0;
    /// End the whole tunnel as a peer's reset would: both sides get a reset.
    virtual void reset(std::error_code why) noexcept = 0;
    /// End the whole tunnel cleanly: neither source is read again, each destination gets its
    /// end of stream once what was delivered to it so far has gone, and what the stages of
    /// either direction still hold is dropped.
    virtual void close() noexcept = 0;
    /// End the tunnel but keep the client's connection (stage_context::hand_back). A sink that
    /// cannot hand the client back closes instead.
    virtual void hand_back() noexcept { close(); }

protected:
    ~stage_sink() = default;
};

class stage_chain;

/// What one stage may do, handed to it for the length of one call (never kept past it): pass
/// bytes or the end of stream on to the next stage (the destination after the last), ask to
/// be woken at a time, or reset the tunnel.
class stage_context {
public:
    /// The time the driver passed to relay::pump(); a stage never reads a clock of its own.
    time_point now() const noexcept { return now_; }
    /// Passes bytes on, now, after everything this stage passed before. Ignored after end().
    void pass(byte_view bytes);
    /// Passes the end of stream on. A stage calls it once, after passing every byte it held;
    /// called before the source has ended, it ends the direction (the destination gets its FIN
    /// once the bytes passed so far have gone; the source is not read again).
    void end();
    /// Asks for on_wake() at `when` or soon after: the relay reports it in next_wake(), and the
    /// driver pumps then. Replaces this stage's earlier request; time_point::max() cancels it.
    void wake_at(time_point when) noexcept;
    /// Ends the tunnel with a reset on both sides (relay::failed() says `why`).
    void reset(std::error_code why = make_error_code(errc::reset_by_stage)) noexcept;
    /// Closes the tunnel cleanly, both ways (stage_sink::close): as a server that hangs up.
    /// Bytes this stage passes after it go nowhere.
    void close() noexcept;
    /// Ends the tunnel, but not the client's connection: neither source is read again, and
    /// once everything passed to the client so far has been written (what the stages of that
    /// direction hold included), the relay finishes (relay::handed_back()) without a FIN to
    /// the client. The session then gives the client back to its Mode, which decides anew
    /// (an HTTP client's next request, to another origin). What the stages of the direction to
    /// upstream still hold is dropped: a stage that hands back keeps what it needs first.
    void hand_back() noexcept;

private:
    friend class stage_chain;
    stage_context(stage_chain& chain, std::size_t index, time_point now, stage_sink& sink) noexcept
        : chain_(chain), index_(index), now_(now), sink_(sink) {}

    stage_chain& chain_;
    std::size_t index_; // of the stage this context was made for
    time_point now_;
    stage_sink& sink_;
};

/// One stage of a direction: the concept a user's stage (a hex-dump logger, a rewriter) or a
/// fault (latency, bandwidth, slicer, reset) implements. Each member has a default that
/// passes everything on at once, so a stage overrides only what it changes.
///
/// The rules a stage keeps:
/// - everything it is given, it passes on (changed or not), holds, or drops on purpose; in
///   order, and the end of stream after every byte it passes;
/// - what it holds, held() says: the relay stops reading the direction's source while the
///   chain holds a scratch buffer's worth (back-pressure), so a stage holds at most that much
///   of what it was given (plus what it makes of it: a rewrite to a longer string);
/// - it does not block and reads no clock: the time comes in stage_context::now(), and a stage
///   that holds bytes until a time asks for a wake-up (wake_at);
/// - it may throw (out of memory): the relay then ends the tunnel (errc::stage_failed), with a
///   reset on both sides, as a stage's reset() does.
class relay_stage {
public:
    virtual ~relay_stage() = default;

    /// Bytes read from the direction's source (or passed on by the stage before).
    virtual void on_data(stage_context& out, byte_view bytes) { out.pass(bytes); }
    /// The end of stream from the source (or the stage before); no on_data() follows.
    virtual void on_end(stage_context& out) { out.end(); }
    /// The time this stage asked for with wake_at() has come.
    virtual void on_wake(stage_context& out) { (void)out; }
    /// Once, before anything else: the tunnel has started (or this stage was added to a live
    /// chain). A stage whose timer runs from its start (a timeout) asks for its wake-up here.
    virtual void on_start(stage_context& out) { (void)out; }
    /// This stage is being taken out of a live chain (stage_chain::erase): it passes on at once
    /// everything it holds, in order, and the end of stream if that has reached it; nothing is
    /// lost by removing a stage. After it, the stage is destroyed.
    virtual void on_remove(stage_context& out) { (void)out; }
    /// Bytes this stage holds now, not yet passed on.
    virtual std::size_t held() const noexcept { return 0; }
};

/// The ordered stages of one direction, owned (each stage belongs to its chain, and the chain
/// to the relay it is given to: relay::set_stages()). The relay drives it; a stage reaches the
/// next one only through its stage_context.
class stage_chain {
public:
    stage_chain() = default;
    stage_chain(stage_chain&&) noexcept = default;
    stage_chain& operator=(stage_chain&&) noexcept = default;

    /// Appends a stage after the others: it sees what they pass on. It starts (on_start) at
    /// the chain's next call.
    void push_back(std::unique_ptr<relay_stage> stage) { insert(slots_.size(), std::move(stage)); }
    /// Puts a stage before the one at `index` (at the end when `index` is size()). A stage put
    /// behind an end of stream that has passed sees nothing.
    void insert(std::size_t index, std::unique_ptr<relay_stage> stage);
    /// Takes the stage at `index` out: it first passes on what it holds (on_remove), to the
    /// stages after it, and the end of stream too if that had reached it.
    void erase(std::size_t index, time_point now, stage_sink& sink);
    bool empty() const noexcept { return slots_.empty(); }
    std::size_t size() const noexcept { return slots_.size(); }
    relay_stage& operator[](std::size_t index) noexcept { return *slots_[index].stage; }

    /// What the stages hold together.
    std::size_t held() const noexcept;
    /// The earliest wake-up a stage asked for; time_point::max() when none did.
    time_point next_wake() const noexcept;

    /// Starts (on_start), first to last, the stages that have not started yet. Every other
    /// call below does this first.
    void start(time_point now, stage_sink& sink);
    /// Gives bytes read from the source to the first stage.
    void feed(byte_view bytes, time_point now, stage_sink& sink) {
        start(now, sink);
        deliver(0, bytes, now, sink);
    }
    /// Gives the source's end of stream to the first stage.
    void feed_end(time_point now, stage_sink& sink) {
        start(now, sink);
        deliver_end(0, now, sink);
    }
    /// Wakes, first to last, each stage whose time has come by `now` (a stage woken by what
    /// the one before passed on in this sweep included).
    void wake(time_point now, stage_sink& sink);

private:
    friend class stage_context;
    struct slot {
        std::unique_ptr<relay_stage> stage;
        time_point wake = time_point::max(); // asked for with wake_at()
        bool ended = false;                  // the end of stream has reached this stage
        bool started = false;                // on_start() has been called
    };

    /// To the stage at `index`, or past the last one to the sink.
    void deliver(std::size_t index, byte_view bytes, time_point now, stage_sink& sink);
    void deliver_end(std::size_t index, time_point now, stage_sink& sink);

    std::vector<slot> slots_;
    std::size_t unstarted_ = 0; // stages whose on_start() is still to come
    bool sink_ended_ = false;   // the end of stream has gone past the last stage
};

/// What a stage_factory is told of the tunnel it gives stages to.
struct tunnel_info {
    std::uint64_t serial = 0; ///< the client's number, counted from 1 in the order accepted
    endpoint client;          ///< the client, as accepted
    host_port target;         ///< where the Mode sent it
    endpoint upstream;        ///< the address connected to
};

/// Stages that may come to a direction after its tunnel started without any: a fault set that
/// can change but has nothing for that direction yet. The direction keeps the plain path
/// (splice included) until they come; the tunnel asks changed() at every pump, and at least
/// every look_every() while nothing moves. When it says yes, the tunnel calls make() for each
/// direction still without stages, as soon as that direction has nothing in a splice pipe,
/// and then looked(). Called on the thread or in the process that serves the tunnel.
class late_stages {
public:
    virtual ~late_stages() = default;
    /// Whether make() may give something it did not at the last look: cheap (an atomic load).
    virtual bool changed() noexcept = 0;
    /// The stages `which` takes now; an empty chain: none yet.
    virtual stage_chain make(direction which) = 0;
    /// Every direction has been asked since the last changed(): the next changed() compares
    /// with that.
    virtual void looked() noexcept = 0;
    /// How long a tunnel that moves nothing goes without asking changed().
    virtual std::chrono::milliseconds look_every() const noexcept = 0;
};

/// The stages one tunnel starts with: the factory fills in what it wants, and a direction
/// left empty takes the plain path (splice included).
struct tunnel_stages {
    stage_chain to_upstream; ///< bytes the client sends
    stage_chain to_client;   ///< bytes upstream sends
    /// What these stages are, in a few words, for the session's log line
    /// (session_result::stages): the factory's to fill in, empty by default.
    std::string label;
    /// Stages that may come later to a direction left empty here (none by default).
    std::unique_ptr<late_stages> later;
};

/// Called as each tunnel starts (after the handshake and the connect, before a byte is
/// relayed), on the thread or in the process that serves it: it must be thread-safe. It may
/// throw; the session then ends with errc::stage_failed.
using stage_factory = std::function<void(const tunnel_info& tunnel, tunnel_stages& stages)>;

// ---------------------------------------------------------------------------------------------

inline void stage_context::pass(byte_view bytes) { chain_.deliver(index_ + 1, bytes, now_, sink_); }

inline void stage_context::end() { chain_.deliver_end(index_ + 1, now_, sink_); }

inline void stage_context::wake_at(time_point when) noexcept { chain_.slots_[index_].wake = when; }

inline void stage_context::reset(std::error_code why) noexcept { sink_.reset(why); }

inline void stage_context::close() noexcept { sink_.close(); }

inline void stage_context::hand_back() noexcept { sink_.hand_back(); }

inline void stage_chain::insert(std::size_t index, std::unique_ptr<relay_stage> stage) {
    index = index < slots_.size() ? index : slots_.size();
    slot fresh{std::move(stage)};
    // Behind an end of stream that has passed, nothing more will come this way.
    fresh.ended = index < slots_.size() && slots_[index].ended;
    slots_.insert(slots_.begin() + static_cast<std::ptrdiff_t>(index), std::move(fresh));
    ++unstarted_;
}

inline void stage_chain::erase(std::size_t index, time_point now, stage_sink& sink) {
    if (index >= slots_.size()) {
        return;
    }
    start(now, sink); // the stages after it start before they see what it held
    {
        stage_context context(*this, index, now, sink);
        slots_[index].stage->on_remove(context);
    }
    // The end of stream that reached this stage goes on, whether or not the stage passed it.
    if (slots_[index].ended) {
        deliver_end(index + 1, now, sink);
    }
    slots_.erase(slots_.begin() + static_cast<std::ptrdiff_t>(index));
}

inline void stage_chain::start(time_point now, stage_sink& sink) {
    for (std::size_t i = 0; unstarted_ != 0 && i < slots_.size(); ++i) {
        if (!slots_[i].started) {
            slots_[i].started = true;
            --unstarted_;
            stage_context context(*this, i, now, sink);
            slots_[i].stage->on_start(context);
        }
    }
}

inline std::size_t stage_chain::held() const noexcept {
    std::size_t total = 0;
    for (const slot& s : slots_) {
        total += s.stage->held();
    }
    return total;
}

inline time_point stage_chain::next_wake() const noexcept {
    time_point earliest = time_point::max();
    for (const slot& s : slots_) {
        earliest = s.wake < earliest ? s.wake : earliest;
    }
    return earliest;
}

inline void stage_chain::wake(time_point now, stage_sink& sink) {
    start(now, sink);
    for (std::size_t i = 0; i < slots_.size(); ++i) {
        if (slots_[i].wake <= now) {
            slots_[i].wake = time_point::max(); // the stage asks again if it needs to
            stage_context context(*this, i, now, sink);
            slots_[i].stage->on_wake(context);
        }
    }
}

inline void stage_chain::deliver(std::size_t index, byte_view bytes, time_point now,
                                 stage_sink& sink) {
    if (index == slots_.size()) {
        sink.deliver(bytes);
    } else if (!slots_[index].ended) { // bytes behind an end of stream have nowhere to go
        stage_context context(*this, index, now, sink);
        slots_[index].stage->on_data(context, bytes);
    }
}

inline void stage_chain::deliver_end(std::size_t index, time_point now, stage_sink& sink) {
    if (index == slots_.size()) {
        if (!sink_ended_) { // once: erase() passes on an end a stage may have passed already
            sink_ended_ = true;
            sink.deliver_end();
        }
    } else if (!slots_[index].ended) {
        slots_[index].ended = true;
        stage_context context(*this, index, now, sink);
        slots_[index].stage->on_end(context);
    }
}

} // namespace tinyproxy
