// SPDX-License-Identifier: MIT
// The relay's stage seam: a stage sees, changes, holds, paces, splits or cuts the bytes of one
// direction of a tunnel, and a stage_chain runs an ordered list of them for the relay.
#pragma once

#include <cstddef>      // std::size_t
#include <memory>       // std::unique_ptr: a chain owns its stages
#include <system_error> // the reason for a reset
#include <utility>      // std::move
#include <vector>       // the stages in order

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
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
/// - it may throw (out of memory): the relay then ends the tunnel (errc::stage_failed).
class relay_stage {
public:
    virtual ~relay_stage() = default;

    /// Bytes read from the direction's source (or passed on by the stage before).
    virtual void on_data(stage_context& out, byte_view bytes) { out.pass(bytes); }
    /// The end of stream from the source (or the stage before); no on_data() follows.
    virtual void on_end(stage_context& out) { out.end(); }
    /// The time this stage asked for with wake_at() has come.
    virtual void on_wake(stage_context& out) { (void)out; }
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

    /// Appends a stage after the others: it sees what they pass on.
    void push_back(std::unique_ptr<relay_stage> stage) { slots_.push_back(slot{std::move(stage)}); }
    bool empty() const noexcept { return slots_.empty(); }
    std::size_t size() const noexcept { return slots_.size(); }
    relay_stage& operator[](std::size_t index) noexcept { return *slots_[index].stage; }

    /// What the stages hold together.
    std::size_t held() const noexcept;
    /// The earliest wake-up a stage asked for; time_point::max() when none did.
    time_point next_wake() const noexcept;

    /// Gives bytes read from the source to the first stage.
    void feed(byte_view bytes, time_point now, stage_sink& sink) { deliver(0, bytes, now, sink); }
    /// Gives the source's end of stream to the first stage.
    void feed_end(time_point now, stage_sink& sink) { deliver_end(0, now, sink); }
    /// Wakes, first to last, each stage whose time has come by `now` (a stage woken by what
    /// the one before passed on in this sweep included).
    void wake(time_point now, stage_sink& sink);

private:
    friend class stage_context;
    struct slot {
        std::unique_ptr<relay_stage> stage;
        time_point wake = time_point::max(); // asked for with wake_at()
        bool ended = false;                  // the end of stream has reached this stage
    };

    /// To the stage at `index`, or past the last one to the sink.
    void deliver(std::size_t index, byte_view bytes, time_point now, stage_sink& sink);
    void deliver_end(std::size_t index, time_point now, stage_sink& sink);

    std::vector<slot> slots_;
};

// ---------------------------------------------------------------------------------------------

inline void stage_context::pass(byte_view bytes) { chain_.deliver(index_ + 1, bytes, now_, sink_); }

inline void stage_context::end() { chain_.deliver_end(index_ + 1, now_, sink_); }

inline void stage_context::wake_at(time_point when) noexcept { chain_.slots_[index_].wake = when; }

inline void stage_context::reset(std::error_code why) noexcept { sink_.reset(why); }

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
        sink.deliver_end();
    } else if (!slots_[index].ended) {
        slots_[index].ended = true;
        stage_context context(*this, index, now, sink);
        slots_[index].stage->on_end(context);
    }
}

} // namespace tinyproxy
