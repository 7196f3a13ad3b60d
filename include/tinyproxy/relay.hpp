// SPDX-License-Identifier: MIT
// The one relay engine: moves bytes both ways between two non-blocking sockets, with bounded
// buffers, half-close and reset propagation, byte counts and a chain of stages per direction;
// on Linux, bulk data moves with splice(2).
#pragma once

#include <algorithm>    // std::min
#include <cstddef>      // std::size_t
#include <cstdint>      // byte counters
#include <memory>       // a direction's stage chain, only when it has one
#include <optional>     // a SIGPIPE guard, only while splicing
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // pending bytes

#include <poll.h>       // POLLIN, POLLOUT
#include <sys/socket.h> // SHUT_WR

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/stage.hpp"

namespace tinyproxy {

/// A relay between a client and an upstream socket, as a state machine with no waiting and no
/// clock of its own: `pump(now, ...)` moves whatever can move now, `client_events()` /
/// `upstream_events()` say what to wait for next (POLLIN / POLLOUT), `next_wake()` by when to
/// pump again even if nothing is ready, and the caller waits however it likes: a poll(2) over
/// two descriptors on a thread, or an event loop over thousands. Every policy drives this one
/// class.
///
/// Rules it keeps:
/// - bytes read from one side are written to the other in order, and none is dropped: at most
///   one read's worth waits per direction, and reading stops until it has been written;
/// - end of stream from one side becomes shutdown(SHUT_WR) on the other once everything read
///   before it has been written; the other direction carries on (half-close). A caller that
///   closes both sockets at finish may say so (`closes_at_finish()`), and the last direction
///   to end then leaves its FIN to that close();
/// - a reset or error on either side ends the relay (`failed()`), and the caller closes both
///   sockets, the still-open one with a reset (`SO_LINGER` 0) so the peer learns of it.
///
/// Buffers are lazy: bytes are read into the caller's scratch buffer and written straight on;
/// only what the destination would not take is copied into a per-direction buffer, which is
/// freed again once drained. An idle tunnel holds no buffer at all.
///
/// Stages (stage.hpp): a direction may be given a chain of stages (`set_stages()`) that see
/// its bytes between the read and the write. A direction without one takes the path described
/// here, splice included; a direction with one copies (its stages must see every byte) while
/// the other direction keeps splicing. Its bytes go source -> scratch -> first stage -> ... ->
/// last stage -> destination (written straight on, the rest kept as above). Its source is read
/// only while the stages hold less than a scratch buffer's worth, and a read takes no more than
/// fits below that; what the destination would not take waits as above, and the stages are
/// not woken meanwhile. The end of stream goes through the chain too, and the destination is
/// shut down for writing once the last stage has passed it on and every byte before it has
/// gone. A stage's reset (stage_context::reset) ends the relay as a peer's reset does: the
/// relay closes the source of that direction with a reset when the caller closes it, and
/// `error_on_client()` names that source, so the caller resets the other side as ever.
///
/// Zero copy (Linux, TINYPROXY_HAS_SPLICE): once a read in one direction fills the whole
/// scratch buffer, that direction is carrying bulk data, and from then on it moves socket ->
/// pipe -> socket with splice(2), never through user space. The pipe (two descriptors) is made
/// once per direction, only then, so idle and request/response tunnels never hold one; it is
/// closed when its direction ends or the relay is destroyed. If it cannot be made (EMFILE, ...)
/// the direction stays on the copy path. The pipe is grown to `splice_pipe_size` (256 KiB)
/// where the kernel allows, and each splice moves up to a pipe's worth: fewer system calls per
/// byte than a default 64 KiB pipe, and less CPU per byte (bench/README.md, "Why the relay does
/// what it does"). A tunnel that shares its event loop with other bulk tunnels reads one pipe's
/// worth per turn (`shared_rounds`): once `shared_reads_to_grow` such reads in a row have filled
/// the pipe, it grows to `shared_pipe_size` (1 MiB), so each turn moves four times as much for
/// the same calls and wake-ups. A tunnel alone on its loop, shared only for a moment (iperf3's
/// control connection beside its one stream), keeps its pipe: it did not pay there. At most
/// `shared_pipe_budget` pipes of a process are grown at a time, since each takes 256 pages of the
/// user's pipe quota. A pipe the kernel keeps below 64 KiB (the user's pipe quota is spent, and new
/// pipes get two pages) is given back, and the direction copies instead. Bytes in the pipe are
/// pending bytes like any other: the pipe is filled only when empty, with at most its capacity.
/// They are kernel pages taken off the source socket's receive queue, not the process's memory; the
/// scratch buffer bounds what the copy path holds. splice(2) cannot say MSG_NOSIGNAL, so each pump
/// that splices into a socket blocks SIGPIPE in the calling thread meanwhile
/// (detail::sigpipe_guard) and takes back a SIGPIPE its failed write raised: the relay never kills
/// the process, whoever drives it, and installs no handler.
class relay {
public:
    /// `use_splice`: let bulk data move with splice(2) (see above); ignored where unavailable.
    relay(int client_fd, int upstream_fd, bool use_splice = true) noexcept
        : halves_{half(client_fd, upstream_fd), half(upstream_fd, client_fd)},
          use_splice_(TINYPROXY_HAS_SPLICE != 0 && use_splice) {}

    /// The caller's promise to close both sockets as soon as finished() says true, as every
    /// policy's session does. The direction that ends last then leaves its end of stream to
    /// that close(), which sends the same FIN behind the same bytes (both sockets have been
    /// read to their end by then, so close() has nothing unread to answer with a reset), and
    /// its shutdown(SHUT_WR) is saved: a short connection's costliest part is its system
    /// calls (bench/README.md). Without the promise, finished() means both ends have had their
    /// FIN, whether or not the caller closes.
    void closes_at_finish() noexcept { closes_at_finish_ = true; }

    /// Bytes to send upstream before anything read from the client: what a client pipelined
    /// behind its handshake, or a PROXY protocol header. They do not pass through the stages.
    void prime_upstream(byte_view bytes) { (void)keep(halves_[0], bytes); }
    /// Bytes to send to the client before anything read from upstream.
    void prime_client(byte_view bytes) { (void)keep(halves_[1], bytes); }
    /// Bytes of the client's that reached upstream before the relay began (the connect's
    /// probe, detail::connector): counted as relayed, as if the relay had sent them.
    void count_sent_upstream(std::uint64_t bytes) noexcept { halves_[0].bytes_written += bytes; }

    /// Gives direction `which` its chain of stages, which the relay owns from then on; an empty
    /// chain gives the direction back today's path. Set it before the first pump; stages may
    /// be added to a live chain through stages() (a stage taken out of a live chain takes with
    /// it what it holds: drain it first).
    void set_stages(direction which, stage_chain chain);
    /// Whether direction `which` can be given stages while it relays: it has none yet, its
    /// source has not ended, nothing failed, and nothing waits in its splice pipe (those bytes
    /// would pass the stages by; the pipe empties as the destination takes them).
    bool can_take_stages(direction which) const noexcept {
        const half& h = halves_[index(which)];
        return !h.stages && !h.eof && !h.done && h.in_pipe == 0 && !failed() && !closed_by_stage_;
    }
    /// Whether direction `which` still carries bytes: its source has not ended.
    bool direction_open(direction which) const noexcept {
        const half& h = halves_[index(which)];
        return !h.eof && !h.done && !failed() && !closed_by_stage_;
    }
    /// Gives a live direction its chain (can_take_stages() must say so) and starts it now:
    /// what the direction reads from then on goes through it. Bytes it read before and the
    /// destination has not taken yet go first.
    void attach_stages(direction which, stage_chain chain, time_point now);
    /// The chain of direction `which`; null when it has none.
    stage_chain* stages(direction which) noexcept { return halves_[index(which)].stages.get(); }
    /// The most the stages of one direction hold before its source is no longer read
    /// (back-pressure); 0, the default, means the scratch buffer's size. A stage that delays
    /// bytes needs the delay's worth of the stream here (100 ms at 100 MB/s: 10 MB), and holds
    /// it only while the stream is that fast: memory is taken as bytes are held.
    void stage_buffer_size(std::size_t bytes) noexcept { stage_buffer_ = bytes; }

    /// The capacity a splicing direction asks for its pipe (F_SETPIPE_SZ): the most one splice
    /// moves, and the most the pipe holds.
    static constexpr std::size_t splice_pipe_size = 256 * 1024;
    /// What a pipe grows to when its tunnel shares an event loop and `shared_reads_to_grow`
    /// reads in a row filled it, and how many pipes of a process may have grown at once: 16 of
    /// them take 4,096 pages, a quarter of the default per-user quota (pipe-user-pages-soft),
    /// beyond which new pipes get a page and their directions copy instead.
    static constexpr std::size_t shared_pipe_size = 1024 * 1024;
    static constexpr int shared_pipe_budget = 16;
    static constexpr int shared_reads_to_grow = 8;

    /// What pump() assumes of a socket when the caller does not say: it may be readable, and
    /// may hold an error.
    static constexpr short unknown_events = POLLIN | POLLOUT | POLLERR;

    /// Moves the bytes that can move now without blocking, up to `rounds` reads per direction
    /// (saturated() says when that bound stopped it), using `scratch` for reads (its size
    /// bounds one read, and so the bytes buffered per direction). Returns true when anything
    /// happened (bytes moved, end of stream seen): the caller's idle clock restarts. `now` is
    /// the driver's clock, handed to the stages: stages whose wake-up time (next_wake()) has
    /// come by `now` run first.
    ///
    /// `client_revents` / `upstream_revents` are what the wait reported for each socket. A
    /// socket is read only when reported readable (POLLIN, POLLERR or POLLHUP), or when its
    /// direction had bytes waiting and their destination was reported writable (the socket
    /// was not watched for reading meanwhile), and asked for a pending error only when reported
    /// POLLERR or POLLHUP: a request/response tunnel makes no read that can only say EAGAIN.
    /// A socket left unread is watched for reading afterwards (client_events() and
    /// upstream_events() say so), so nothing waits for long. Leave both out to have both
    /// sides tried. With both 0, nothing is read (primed, waiting or held bytes whose time has
    /// come are only sent), and `scratch` may be null: how a driver pumps at next_wake().
    ///
    /// Where the platform has POLLRDHUP (Linux), the relay asks for it with POLLIN. A socket
    /// reported with it (and without POLLERR) has had its peer's FIN: after a short read, one
    /// more read hears the end of stream at once, and the last bytes go on held back (MSG_MORE)
    /// for the FIN that follows them, in one segment. A reply-then-close upstream then costs
    /// one wait, not two, and its client one wake-up.
    bool pump(time_point now, std::uint8_t* scratch, std::size_t scratch_size,
              short client_revents = unknown_events, short upstream_revents = unknown_events,
              int rounds = max_rounds) noexcept;

    /// When the relay next needs a pump though no socket is ready: the earliest time a stage
    /// asked to be woken at, in a direction whose destination has taken everything so far
    /// (otherwise writability brings the pump). time_point::max() when nothing is scheduled.
    time_point next_wake() const noexcept;

    /// What to wait for on the client socket next: POLLIN (with POLLRDHUP where the platform
    /// has it), POLLOUT, both, or 0.
    short client_events() const noexcept { return events_on(0); }
    /// What to wait for on the upstream socket next.
    short upstream_events() const noexcept { return events_on(1); }
    /// Whether to keep the client socket in the poll set even when client_events() is 0: a
    /// client that has half-closed can still reset, and poll reports that (POLLERR/POLLHUP)
    /// only for descriptors it watches. False once nothing more will be written to the client,
    /// which is also when POLLHUP alone could no longer mean an error.
    bool watch_client() const noexcept {
        return client_events() != 0 || (!finished() && !halves_[1].done);
    }
    bool watch_upstream() const noexcept {
        return upstream_events() != 0 || (!finished() && !halves_[0].done && !handing_back_);
    }

    /// The last pump stopped at its bound in a direction (`rounds` reads, each of a whole
    /// scratch buffer or pipe), and that source may hold more: a bulk transfer. A driver of
    /// many tunnels serves the others first; readiness brings this one back.
    bool saturated() const noexcept { return saturated_; }
    /// The most reads (or splices into a pipe) one pump makes per direction unless told
    /// otherwise: a tunnel that has its thread, or its event loop, to itself, where fewer
    /// waits per byte cost less CPU. An event loop serving other tunnels too asks for one
    /// (`shared_rounds`): a bulk tunnel then holds it for one read and its write (at most a
    /// pipe's worth, 256 KiB), so a small exchange on the same loop waits for little
    /// (bench/README.md, "Why the relay does what it does").
    static constexpr int max_rounds = 4;
    static constexpr int shared_rounds = 1;

    /// Both directions have ended cleanly, or one side failed, or a stage handed the client
    /// back and everything it was owed has been written.
    bool finished() const noexcept {
        return failed() || (halves_[0].done && halves_[1].done) || handed_back();
    }
    /// A stage handed the client back (stage_context::hand_back) and the client has been sent
    /// everything passed to it: the relay has finished, the client's connection is open, and
    /// nothing has been shut down. The upstream is the caller's to close.
    bool handed_back() const noexcept {
        const half& to_client = halves_[1];
        return handing_back_ && !failed() && !has_pending(to_client) && in_stages(to_client) == 0;
    }
    bool failed() const noexcept { return static_cast<bool>(error_); }
    /// The reset or error that ended the relay; empty for a clean finish.
    std::error_code error() const noexcept { return error_; }
    /// True when the error came from the client's socket, false when from the upstream's.
    bool error_on_client() const noexcept { return error_on_client_; }

    std::uint64_t bytes_to_upstream() const noexcept { return halves_[0].bytes_written; }
    std::uint64_t bytes_to_client() const noexcept { return halves_[1].bytes_written; }
    /// Of bytes_to_upstream(), those that went through a pipe with splice(2).
    std::uint64_t bytes_spliced_to_upstream() const noexcept { return halves_[0].bytes_spliced; }
    /// Of bytes_to_client(), those that went through a pipe with splice(2).
    std::uint64_t bytes_spliced_to_client() const noexcept { return halves_[1].bytes_spliced; }
    /// Bytes waiting for a slow destination, in a buffer or a pipe (per direction at most one
    /// scratch buffer's worth, or a pipe's worth once splicing, or what the stages released in
    /// one pump, besides what prime_upstream and prime_client gave).
    std::size_t bytes_buffered() const noexcept {
        return buffered(halves_[0]) + buffered(halves_[1]);
    }
    /// Bytes the stages of both directions hold (stage_chain::held()).
    std::size_t bytes_in_stages() const noexcept {
        return in_stages(halves_[0]) + in_stages(halves_[1]);
    }

private:
    /// One direction: bytes read from `from`, written to `to`.
    struct half {
        half(int from_fd, int to_fd) noexcept : from(from_fd), to(to_fd) {}

        int from;
        int to;
        std::vector<std::uint8_t> pending;   // read but not yet written; empty when idle
        std::size_t pending_offset = 0;      // how much of `pending` has been written
        unique_fd pipe_read;                 // splicing: the pipe `from` is spliced into ...
        unique_fd pipe_write;                // ... through this end
        std::size_t in_pipe = 0;             // spliced in, not yet out (after `pending`)
        std::size_t pipe_capacity = 0;       // the most one splice into the pipe moves
        detail::pipe_growth grown;           // the pipe has grown to shared_pipe_size
        int shared_full_reads = 0;           // in a row, each filling the pipe, loop shared
        std::unique_ptr<stage_chain> stages; // null: no stage, the plain path
        bool pipe_tried = false;             // a pipe was asked for (once per direction)
        bool eof = false;                    // `from` said end of stream
        bool end_passed = false; // with stages: the last stage has passed the end of stream on
        bool done = false;       // the end has been passed on and `to` shut down for writing
        std::uint64_t bytes_written = 0;
        std::uint64_t bytes_spliced = 0; // of bytes_written, through the pipe
    };
    /// A SIGPIPE guard made by the first splice into a socket in a pump, held to its end.
    using sigpipe_scope = std::optional<detail::sigpipe_guard>;
    /// What one splice round leaves the copy loop to do.
    enum class splice_outcome { read_on, stop, copy_instead };
    /// Where a direction's last stage delivers: its destination, as the copy path writes.
    class stage_output;

    static constexpr int index(direction which) noexcept { return static_cast<int>(which); }
    static void append(half& h, byte_view bytes) {
        h.pending.insert(h.pending.end(), bytes.begin(), bytes.end());
    }
    static std::size_t buffered(const half& h) noexcept {
        return h.pending.size() - h.pending_offset + h.in_pipe;
    }
    static std::size_t in_stages(const half& h) noexcept { return h.stages ? h.stages->held() : 0; }
    bool has_pending(const half& h) const noexcept { return buffered(h) != 0; }
    /// A direction with stages reads its source only while they hold less than one read, and
    /// not once they have ended it.
    bool stages_take_more(const half& h) const noexcept {
        return !h.stages || (!h.end_passed && h.stages->held() < stage_hold_limit_);
    }
    static bool peer_sent_fin(short revents) noexcept {
        return (revents & detail::peer_closed_event) != 0 && (revents & POLLERR) == 0;
    }
    short events_on(int side) const noexcept;
    /// A direction without stages: flush, then read and write on (splice or copy) for up to
    /// `rounds` reads, then pass the end of stream on when it has come.
    bool pump_half(half& h, bool source_ready, bool destination_ready, bool source_closing,
                   std::uint8_t* scratch, std::size_t scratch_size, int rounds,
                   sigpipe_scope& sigpipe) noexcept;
    /// One splice from the source into the (empty) pipe, and on into the destination.
    splice_outcome splice_round(half& h, bool shared, bool& progressed,
                                sigpipe_scope& sigpipe) noexcept;
    /// One read into scratch, written straight on; true when another read may find more.
    bool copy_round(half& h, bool source_closing, std::uint8_t* scratch, std::size_t scratch_size,
                    bool& progressed) noexcept;
    /// A direction with stages: flush, wake the stages whose time has come, then read through
    /// the chain while it takes more, then pass the end of stream on when it has come.
    bool pump_staged(half& h, time_point now, bool may_read, bool source_closing,
                     std::uint8_t* scratch, std::size_t scratch_size, int rounds,
                     sigpipe_scope& sigpipe) noexcept;
    /// Reads from the source into the first stage for up to `rounds` reads.
    void read_into_stages(half& h, stage_output& out, time_point now, bool source_closing,
                          std::uint8_t* scratch, std::size_t scratch_size, int rounds);
    /// After a short read from a source whose FIN had come: one more read, for the end.
    void read_end_into_stages(half& h, stage_output& out, time_point now, std::uint8_t* scratch,
                              std::size_t want);
    /// Once `ended` and every byte before it has gone: shut `to` down for writing (or leave
    /// the FIN to the caller's close) and give the pipe back. True when it did.
    bool pass_end_of_stream(half& h, bool ended) noexcept;
    /// After a short read of `n` bytes from a socket whose FIN had come: reads on into the
    /// rest of scratch. True when that read said end of stream; bytes it found are added to
    /// `n`; an error other than "would block" is left in `ec`.
    static bool read_on_to_end(int fd, std::uint8_t* scratch, std::size_t& n,
                               std::size_t scratch_size, std::error_code& ec) noexcept;
    /// Writes what is pending in the buffer; false when the destination is full or failed.
    bool flush(half& h, bool& progressed) noexcept;
    /// Splices what the pipe holds into the destination; false when it is full or failed.
    bool drain_pipe(half& h, bool& progressed, sigpipe_scope& sigpipe) noexcept;
    /// A read filled the scratch buffer: from now on this direction splices, if it can.
    void start_splicing(half& h) noexcept;
    /// Reads that filled the pipe of a tunnel sharing its loop, enough of them in a row: the
    /// pipe grows, once, if the process's budget allows.
    static void grow_shared_pipe(half& h) noexcept;
    void probe_half_closed(int side, short revents) noexcept;
    /// Copies bytes the destination has not taken yet into the direction's own buffer.
    bool keep(half& h, byte_view rest) noexcept;
    void fail(const std::error_code& ec, int fd) noexcept {
        if (!error_) {
            error_ = ec;
            error_on_client_ = fd == halves_[0].from;
        }
    }
    /// A stage's reset: `from` is closed with a reset too, not only the other side.
    void fail_by_stage(const std::error_code& why, int from) noexcept;
    /// A stage's close: both sources stop, both destinations get their FIN once drained.
    void close_by_stage() noexcept;
    /// A stage's hand-back: both sources stop; what goes to the client is still written.
    void hand_back_by_stage() noexcept { handing_back_ = true; }

    half halves_[2]; // [0] client -> upstream, [1] upstream -> client
    bool use_splice_;
    bool saturated_ = false;        // the last pump stopped at its rounds in a direction
    bool closes_at_finish_ = false; // see closes_at_finish()
    bool closed_by_stage_ = false;  // a stage closed the tunnel: both directions end
    bool handing_back_ = false;     // a stage handed the client back: nothing more is read
    std::size_t stage_buffer_ = 0;  // see stage_buffer_size(); 0: the scratch size
    std::size_t stage_hold_limit_ = static_cast<std::size_t>(-1); // what the stages may hold
    std::error_code error_;
    bool error_on_client_ = false;
};

// ---------------------------------------------------------------------------------------------

/// Delivers what a direction's last stage passes on: written straight to the destination when
/// nothing waits before it, the rest kept, as the copy path does.
class relay::stage_output final : public stage_sink {
public:
    stage_output(relay& owner, half& h) noexcept : relay_(owner), half_(h) {}

    void deliver(byte_view bytes) noexcept override {
        if (relay_.failed() || half_.end_passed || bytes.empty()) {
            return;
        }
        std::size_t written = 0;
        if (!relay_.has_pending(half_)) {
            std::error_code ec;
            written = detail::send_some(half_.to, bytes.data(), bytes.size(), ec);
            if (ec && !detail::would_block(ec)) {
                relay_.fail(ec, half_.to);
                return;
            }
            written = ec ? 0 : written;
            half_.bytes_written += written;
        }
        if (written < bytes.size()) {
            (void)relay_.keep(half_, byte_view{bytes.data() + written, bytes.size() - written});
        }
        progressed = true;
    }
    void deliver_end() noexcept override {
        half_.end_passed = true;
        progressed = true;
    }
    void reset(std::error_code why) noexcept override { relay_.fail_by_stage(why, half_.from); }
    void close() noexcept override {
        relay_.close_by_stage();
        progressed = true;
    }
    void hand_back() noexcept override {
        relay_.hand_back_by_stage();
        progressed = true;
    }

    bool progressed = false;

private:
    relay& relay_;
    half& half_;
};

inline void relay::set_stages(direction which, stage_chain chain) {
    half& h = halves_[index(which)];
    h.stages = chain.empty() ? nullptr : std::make_unique<stage_chain>(std::move(chain));
}

inline void relay::attach_stages(direction which, stage_chain chain, time_point now) {
    half& h = halves_[index(which)];
    if (chain.empty() || !can_take_stages(which)) {
        return;
    }
    h.stages = std::make_unique<stage_chain>(std::move(chain));
    stage_output out(*this, h);
    try {
        h.stages->start(now, out); // a stage with a timer of its own sets it now
    } catch (...) {                // as a stage that throws in a pump: both sides reset
        fail_by_stage(make_error_code(errc::stage_failed), h.from);
    }
}

inline time_point relay::next_wake() const noexcept {
    time_point earliest = time_point::max();
    if (failed()) {
        return earliest;
    }
    for (const half& h : halves_) {
        // Bytes waiting for the destination come first: writability brings the pump back.
        if (h.stages && !h.done && !has_pending(h)) {
            time_point wake = h.stages->next_wake();
            earliest = wake < earliest ? wake : earliest;
        }
    }
    return earliest;
}

inline short relay::events_on(int side) const noexcept {
    if (finished() || (handing_back_ && side == 1)) { // the upstream is done with, then
        return 0;
    }
    // Side 0 is the client: it is the source of halves_[0] and the destination of halves_[1].
    const half& outgoing = halves_[side];     // reads from this side
    const half& incoming = halves_[1 - side]; // writes to this side
    short events = 0;
    if (!outgoing.eof && !handing_back_ && !has_pending(outgoing) && stages_take_more(outgoing)) {
        events |= POLLIN | detail::peer_closed_event;
    }
    if (has_pending(incoming)) {
        events |= POLLOUT;
    }
    return events;
}

inline bool relay::flush(half& h, bool& progressed) noexcept {
    while (h.pending_offset < h.pending.size()) {
        std::error_code ec;
        std::size_t n = detail::send_some(h.to, h.pending.data() + h.pending_offset,
                                          h.pending.size() - h.pending_offset, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                fail(ec, h.to);
            }
            return false;
        }
        h.pending_offset += n;
        h.bytes_written += n;
        progressed = true;
    }
    if (!h.pending.empty()) {
        // Drained: give the memory back, so an idle tunnel costs no buffer.
        std::vector<std::uint8_t>().swap(h.pending);
        h.pending_offset = 0;
    }
    return true;
}

inline bool relay::keep(half& h, byte_view rest) noexcept {
    try {
        append(h, rest);
        return true;
    } catch (...) { // out of memory ends this tunnel, not the proxy
        fail(std::make_error_code(std::errc::not_enough_memory), h.from);
        return false;
    }
}

inline void relay::fail_by_stage(const std::error_code& why, int from) noexcept {
    if (failed()) {
        return;
    }
    // The caller resets the side not blamed; this one is reset here, as a peer's reset would
    // have left it. Should that fail, the peer gets a FIN instead: the tunnel still ends.
    std::error_code ignored;
    detail::set_linger_reset(from, ignored);
    fail(why, from);
}

inline void relay::close_by_stage() noexcept {
    closed_by_stage_ = true;
    for (half& h : halves_) {
        h.eof = true; // neither source is read again
        if (h.stages) {
            h.end_passed = true; // what the stages pass from now on goes nowhere
        }
    }
}

inline bool relay::drain_pipe(half& h, bool& progressed, sigpipe_scope& sigpipe) noexcept {
    while (h.in_pipe > 0) {
        if (!sigpipe) {
            sigpipe.emplace();
        }
        std::error_code ec;
        std::size_t n = detail::splice_some(h.pipe_read.get(), h.to, h.in_pipe, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                sigpipe->take_raised(); // the write into a socket whose peer is gone raised it
                fail(ec, h.to);
            }
            return false;
        }
        if (n == 0) {
            return false; // not with bytes in the pipe; wait for writability rather than spin
        }
        h.in_pipe -= n;
        h.bytes_written += n;
        h.bytes_spliced += n;
        progressed = true;
    }
    return true;
}

inline void relay::start_splicing(half& h) noexcept {
    if (!use_splice_ || h.pipe_tried) {
        return;
    }
    h.pipe_tried = true; // once: a direction that could not have a pipe copies to its end
    int fds[2] = {-1, -1};
    std::error_code ec;
    if (!detail::make_pipe(fds, ec, true)) {
        return;
    }
    unique_fd read_end(fds[0]);
    unique_fd write_end(fds[1]);
    std::size_t capacity = detail::grow_pipe(write_end.get(), splice_pipe_size);
    if (capacity < 64 * 1024) {
        return; // a quota-starved pipe of a page or two: copying moves more per system call
    }
    h.pipe_read = std::move(read_end);
    h.pipe_write = std::move(write_end);
    h.pipe_capacity = capacity;
}

inline void relay::grow_shared_pipe(half& h) noexcept {
    if (!h.grown.take(shared_pipe_budget)) {
        return;
    }
    std::size_t capacity = detail::grow_pipe(h.pipe_write.get(), shared_pipe_size);
    if (capacity <= h.pipe_capacity) {
        return; // the quota said no: keep the budget's share, so as not to ask at every read
    }
    h.pipe_capacity = capacity;
}

inline bool relay::pump_half(half& h, bool source_ready, bool destination_ready,
                             bool source_closing, std::uint8_t* scratch, std::size_t scratch_size,
                             int rounds, sigpipe_scope& sigpipe) noexcept {
    bool progressed = false;
    // A source with bytes waiting behind it was not watched for reading, so once they can go,
    // nobody knows whether it has more.
    const bool may_read = !handing_back_ && (source_ready || (has_pending(h) && destination_ready));
    // A bounded number of rounds, so that in an event loop one fast tunnel cannot starve the
    // others; level-triggered readiness brings us straight back if there is more.
    rounds = rounds < 1 ? 1 : rounds;
    int round = 0;
    for (; round < rounds; ++round) {
        // Older bytes first: what the copy path kept, then what the pipe holds.
        if (!flush(h, progressed) || !drain_pipe(h, progressed, sigpipe) || h.eof || !may_read) {
            break;
        }
        const splice_outcome spliced =
            h.pipe_read ? splice_round(h, rounds < max_rounds, progressed, sigpipe)
                        : splice_outcome::copy_instead;
        if (spliced == splice_outcome::read_on) {
            continue;
        }
        if (spliced == splice_outcome::stop ||
            !copy_round(h, source_closing, scratch, scratch_size, progressed)) {
            break;
        }
    }
    saturated_ = saturated_ || round == rounds;
    return pass_end_of_stream(h, h.eof) || progressed;
}

inline relay::splice_outcome relay::splice_round(half& h, bool shared, bool& progressed,
                                                 sigpipe_scope& sigpipe) noexcept {
    // At most a pipe's worth into the (empty) pipe, then on.
    std::error_code ec;
    std::size_t n = detail::splice_some(h.from, h.pipe_write.get(), h.pipe_capacity, ec);
    if (ec) {
        if (!detail::would_block(ec)) {
            fail(ec, h.from);
            return splice_outcome::stop;
        }
        // splice(2) also says "would block" when the next byte is TCP urgent data (MSG_OOB):
        // it stops there for good, while poll(2) goes on saying readable. A recv(2) reads past
        // it, as the copy path always has, or finds nothing either.
        return splice_outcome::copy_instead;
    }
    progressed = true;
    if (n == 0) {
        h.eof = true;
        return splice_outcome::stop;
    }
    h.in_pipe = n;
    const bool filled_shared = shared && n == h.pipe_capacity;
    h.shared_full_reads =
        filled_shared ? std::min(h.shared_full_reads + 1, shared_reads_to_grow) : 0;
    if (h.shared_full_reads >= shared_reads_to_grow && !h.grown) {
        grow_shared_pipe(h);
    }
    if (!drain_pipe(h, progressed, sigpipe) || n < h.pipe_capacity) {
        return splice_outcome::stop; // a short read emptied the socket: see copy_round
    }
    return splice_outcome::read_on;
}

inline bool relay::copy_round(half& h, bool source_closing, std::uint8_t* scratch,
                              std::size_t scratch_size, bool& progressed) noexcept {
    std::error_code ec;
    std::size_t n = detail::recv_some(h.from, scratch, scratch_size, ec);
    if (ec) {
        if (!detail::would_block(ec)) {
            fail(ec, h.from);
        }
        return false;
    }
    progressed = true;
    if (n == 0) {
        h.eof = true;
        return false;
    }
    if (n == scratch_size) {
        start_splicing(h); // bulk data: the next read goes through a pipe
    }
    // A short read took everything the socket had. If the wait said its FIN had come too, one
    // more read hears the end of stream now rather than after another wait, and the bytes go
    // out held back for our FIN, in one segment with it.
    std::error_code read_error;
    const bool ends = n < scratch_size && source_closing &&
                      read_on_to_end(h.from, scratch, n, scratch_size, read_error);
    // Write straight from scratch; keep only what the destination would not take.
    std::size_t written =
        detail::send_some(h.to, scratch, n, ec, ends ? detail::more_follows_flag : 0);
    if (ec && !detail::would_block(ec)) {
        fail(ec, h.to);
        return false;
    }
    written = ec ? 0 : written;
    h.bytes_written += written;
    if (written < n) {
        keep(h, byte_view{scratch + written, n - written});
    }
    h.eof = ends;
    if (read_error) {
        fail(read_error, h.from); // after passing on what came before it, as ever
    }
    // After a short read, another would only say EAGAIN (two wasted system calls per
    // request/response round trip). Readiness is level triggered, so bytes that arrive
    // meanwhile bring the caller straight back.
    return written == n && n == scratch_size && !failed();
}

inline bool relay::pump_staged(half& h, time_point now, bool may_read, bool source_closing,
                               std::uint8_t* scratch, std::size_t scratch_size, int rounds,
                               sigpipe_scope& sigpipe) noexcept {
    stage_output out(*this, h);
    // Older bytes first: what the destination has not taken (and a pipe left from before the
    // stages came) goes before anything the stages release.
    if (flush(h, out.progressed) && drain_pipe(h, out.progressed, sigpipe)) {
        try {
            if (!h.end_passed) {
                h.stages->wake(now, out);
            }
            if (may_read) {
                read_into_stages(h, out, now, source_closing, scratch, scratch_size, rounds);
            }
        } catch (...) { // a stage that cannot go on ends this tunnel, not the proxy
            fail_by_stage(make_error_code(errc::stage_failed), h.from); // both sides reset
        }
    }
    return pass_end_of_stream(h, h.end_passed) || out.progressed;
}

inline void relay::read_into_stages(half& h, stage_output& out, time_point now, bool source_closing,
                                    std::uint8_t* scratch, std::size_t scratch_size, int rounds) {
    rounds = rounds < 1 ? 1 : rounds;
    int round = 0;
    for (; round < rounds; ++round) {
        if (!flush(h, out.progressed) || failed() || h.eof || handing_back_ ||
            !stages_take_more(h)) {
            break;
        }
        // No more than keeps what the stages hold within one scratch buffer's worth.
        const std::size_t room = stage_hold_limit_ - h.stages->held();
        const std::size_t want = room < scratch_size ? room : scratch_size;
        if (want == 0) {
            break; // no scratch buffer (a pump told nothing is ready): nothing is read
        }
        std::error_code ec;
        std::size_t n = detail::recv_some(h.from, scratch, want, ec);
        if (ec) {
            if (!detail::would_block(ec)) {
                fail(ec, h.from);
            }
            break;
        }
        out.progressed = true;
        if (n == 0) {
            h.eof = true;
            h.stages->feed_end(now, out);
            break;
        }
        h.stages->feed(byte_view{scratch, n}, now, out);
        if (n < want) {
            // The socket is empty (see copy_round). If the wait said its FIN had come too, one
            // more read hears the end of stream now, not after another wait: the stages have
            // taken what they hold out of scratch, so it is free again.
            if (source_closing && !failed()) {
                read_end_into_stages(h, out, now, scratch, want);
            }
            break;
        }
    }
    saturated_ = saturated_ || round == rounds;
}

inline void relay::read_end_into_stages(half& h, stage_output& out, time_point now,
                                        std::uint8_t* scratch, std::size_t want) {
    std::error_code ec;
    const std::size_t n = detail::recv_some(h.from, scratch, want, ec);
    if (ec) {
        if (!detail::would_block(ec)) {
            fail(ec, h.from);
        }
    } else if (n == 0) {
        h.eof = true;
        h.stages->feed_end(now, out);
    } else {
        h.stages->feed(byte_view{scratch, n}, now, out); // bytes past an urgent mark: on
    }
}

inline bool relay::pass_end_of_stream(half& h, bool ended) noexcept {
    if (!ended || h.done || has_pending(h) || failed()) {
        return false;
    }
    const half& other = &h == &halves_[0] ? halves_[1] : halves_[0];
    if (!(closes_at_finish_ && other.done)) { // else the caller's close() sends the FIN
        std::error_code ignored; // the peer may be gone already; its reset shows on a read
        detail::shutdown_socket(h.to, SHUT_WR, ignored);
    }
    h.done = true;
    // Nothing more goes this way: the pipe's descriptors go back now.
    h.pipe_read.reset();
    h.pipe_write.reset();
    h.grown.release();
    return true;
}

inline bool relay::read_on_to_end(int fd, std::uint8_t* scratch, std::size_t& n,
                                  std::size_t scratch_size, std::error_code& ec) noexcept {
    std::size_t more = detail::recv_some(fd, scratch + n, scratch_size - n, ec);
    if (ec) {
        if (detail::would_block(ec)) {
            ec.clear();
        }
        return false;
    }
    // More bytes means the first read stopped short of the end (at an urgent mark): they
    // join the rest, and the next round reads on.
    n += more;
    return more == 0;
}

inline void relay::probe_half_closed(int side, short revents) noexcept {
    // The side has said end of stream and has nothing to receive: no read or write will show
    // its reset, so ask the socket for a pending error, once the wait has hinted at one.
    const half& outgoing = halves_[side];
    if ((revents & (POLLERR | POLLHUP)) != 0 && outgoing.eof && events_on(side) == 0 &&
        !halves_[1 - side].done) {
        std::error_code ec = detail::connect_result(outgoing.from);
        if (ec) {
            fail(ec, outgoing.from);
        }
    }
}

inline bool relay::pump(time_point now, std::uint8_t* scratch, std::size_t scratch_size,
                        short client_revents, short upstream_revents, int rounds) noexcept {
    bool progressed = false;
    saturated_ = false;
    if (stage_buffer_ != 0) {
        stage_hold_limit_ = stage_buffer_;
    } else if (scratch_size != 0) {
        stage_hold_limit_ = scratch_size; // what the stages of a direction may hold
    }
    probe_half_closed(0, client_revents);
    probe_half_closed(1, upstream_revents);
    // Blocks SIGPIPE from the first splice into a socket to the end of this pump; a pump that
    // does not splice out makes no system call for it.
    sigpipe_scope sigpipe;
    const bool readable[2] = {(client_revents & (POLLIN | POLLERR | POLLHUP)) != 0,
                              (upstream_revents & (POLLIN | POLLERR | POLLHUP)) != 0};
    const bool writable[2] = {(client_revents & (POLLOUT | POLLERR | POLLHUP)) != 0,
                              (upstream_revents & (POLLOUT | POLLERR | POLLHUP)) != 0};
    // The peer's FIN has come (and no error with it, which a reset would bring).
    const bool closing[2] = {peer_sent_fin(client_revents), peer_sent_fin(upstream_revents)};
    for (int side = 0; side < 2; ++side) {
        half& h = halves_[side]; // reads from `side`, writes to the other
        if (h.done || failed()) {
            continue;
        }
        if (!h.stages) {
            progressed = pump_half(h, readable[side], writable[1 - side], closing[side], scratch,
                                   scratch_size, rounds, sigpipe) ||
                         progressed;
        } else {
            // As pump_half: a source not watched because bytes waited may have more.
            const bool may_read =
                !handing_back_ && (readable[side] || (has_pending(h) && writable[1 - side]));
            progressed = pump_staged(h, now, may_read, closing[side], scratch, scratch_size, rounds,
                                     sigpipe) ||
                         progressed;
        }
    }
    if (closed_by_stage_) {
        // The direction pumped first did not know of a close the second one's stage made.
        for (half& h : halves_) {
            progressed = pass_end_of_stream(h, true) || progressed;
        }
    }
    return progressed || failed();
}

} // namespace tinyproxy
