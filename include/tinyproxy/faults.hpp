// SPDX-License-Identifier: MIT
// Fault injection as Toxiproxy does it, in-process: a live, shared set of toxics, and the stage
// factory that gives each tunnel its faults (rolled once per connection, from a seed) and keeps
// them in step with the set while the tunnel lives, without losing or reordering a byte.
#pragma once

#include <algorithm>   // std::min
#include <atomic>      // the set's version, read by every tunnel
#include <chrono>      // how soon a change reaches a live tunnel
#include <cstddef>     // std::size_t
#include <cstdint>     // ids, seeds
#include <memory>      // the set is shared; stages are owned
#include <mutex>       // the set is changed from any thread
#include <stdexcept>   // std::invalid_argument
#include <string>      // names
#include <string_view> // names looked up
#include <utility>     // std::move
#include <vector>      // the toxics in order

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/stage.hpp"
#include "tinyproxy/fault/random.hpp"
#include "tinyproxy/fault/toxic.hpp"
#include "tinyproxy/fault/latency.hpp"
#include "tinyproxy/fault/bandwidth.hpp"
#include "tinyproxy/fault/slicer.hpp"
#include "tinyproxy/fault/slow_close.hpp"
#include "tinyproxy/fault/timeout.hpp"
#include "tinyproxy/fault/reset_peer.hpp"
#include "tinyproxy/fault/limit_data.hpp"

namespace tinyproxy {

namespace detail {
class toxic_runner;
}

/// The toxics of a proxy, in the order added (Toxiproxy's order: a toxic added later acts on
/// what the earlier ones of its stream pass on). Shared by the proxy's tunnels and whoever
/// changes it (a test, an API server), from any thread: each change reaches the tunnels
/// opened afterwards, and the live ones (thread and poll policies; a fork child has its own
/// copy, taken when it was forked) at their next byte, or within `change_reach` when they
/// have none to send.
class toxic_set {
public:
    /// How soon a change reaches a live tunnel that moves no byte: it looks this often.
    static constexpr std::chrono::milliseconds change_reach{100};

    /// Appends a toxic to its stream's chain. Throws std::invalid_argument when it is bad
    /// (check_toxic) or its name (name_of) is taken.
    void add(toxic fault);
    /// Replaces the toxic called `name`, in its place; false when there is none. Throws as
    /// add() does. A limit_data toxic keeps its count of bytes passed on a live tunnel.
    bool update(std::string_view name, toxic fault);
    /// Takes the toxic called `name` out; false when there is none. What it holds on a live
    /// tunnel goes on at once, in order.
    bool remove(std::string_view name);
    /// Takes every toxic out.
    void clear();
    /// The toxics, in order.
    std::vector<toxic> list() const;
    /// Whether a toxic is called `name`; fills in `out` when it is.
    bool find(std::string_view name, toxic& out) const;

    /// No change will come: live tunnels no longer look for one (a command line's set). A
    /// change after it throws std::logic_error.
    void freeze() noexcept { frozen_.store(true, std::memory_order_release); }
    bool frozen() const noexcept { return frozen_.load(std::memory_order_acquire); }
    /// Changes so far; a tunnel compares it with the last it saw.
    std::uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }
    /// How many times a toxic of this type has applied to a connection (its toxicity roll
    /// said so, and the connection's direction took its stage), since the set was made:
    /// clear() does not reset it.
    std::uint64_t applied(toxic_type type) const noexcept {
        return applied_[static_cast<std::size_t>(type)].load(std::memory_order_relaxed);
    }

private:
    friend class detail::toxic_runner;
    /// A toxic with what tells it apart over time: a stable id, and a revision per update.
    struct entry {
        std::uint64_t id;
        std::uint64_t revision;
        toxic fault;
    };

    /// The entries of one stream, in order, as of `version` (both read under the lock).
    std::vector<entry> entries_of(direction stream, std::uint64_t& version) const;
    std::vector<entry>::iterator named(std::string_view name);
    void changed() noexcept { version_.fetch_add(1, std::memory_order_acq_rel); }
    void check(const toxic& fault, std::string_view replacing) const;
    void check_not_frozen() const;

    mutable std::mutex mutex_;
    std::vector<entry> entries_;
    std::uint64_t next_id_ = 1;
    std::atomic<std::uint64_t> version_{0};
    std::atomic<bool> frozen_{false};
    std::atomic<std::uint64_t> applied_[toxic_type_count]{}; // by toxic_type
    void count_applied(toxic_type type) noexcept {
        applied_[static_cast<std::size_t>(type)].fetch_add(1, std::memory_order_relaxed);
    }
};

/// The stage factory for options::stages that gives each tunnel the toxics of `toxics`. Each
/// toxic applies to a connection or not once, by its toxicity, and its draws (jitter, slice
/// sizes) come from a generator derived from `seed`, the connection's serial number and the
/// toxic: a seed and the same traffic give the same decisions. The label it gives each tunnel
/// names the toxics that applied ("latency_downstream,slicer_downstream"), or says "none".
/// A direction none of whose toxics applied gets no stage at all: the plain path, splice
/// included. With a live set it takes one as soon as a change brings a toxic that applies
/// (tunnel_stages::later), within toxic_set::change_reach even when it moves nothing.
stage_factory fault_stages(std::shared_ptr<toxic_set> toxics, std::uint64_t seed);

/// The built-in stage for one toxic, drawing from `random`; `passed` carries a limit_data
/// count over from the stage it replaces.
std::unique_ptr<relay_stage> make_fault_stage(const toxic& fault, fault_random random,
                                              std::uint64_t passed = 0);

// ---------------------------------------------------------------------------------------------

namespace detail {

/// One direction's faults on one tunnel: a stage that holds a chain of the built-in stages
/// and keeps it in step with the toxic set. A toxic taken out of the set is taken out of the
/// chain (passing on what it held), a changed one replaced in its place, a new one appended.
class toxic_runner final : public relay_stage {
public:
    toxic_runner(std::shared_ptr<toxic_set> toxics, direction stream, fault_random connection)
        : toxics_(std::move(toxics)), stream_(stream), connection_(connection) {
        bring_in_step(nullptr, time_point{});
    }

    void on_start(stage_context& out) override {
        forwarding sink(out);
        bring_in_step(&sink, out.now());
        chain_.start(out.now(), sink);
        ask_wake(out);
    }
    void on_data(stage_context& out, byte_view bytes) override {
        forwarding sink(out);
        bring_in_step(&sink, out.now());
        chain_.feed(bytes, out.now(), sink);
        ask_wake(out);
    }
    void on_end(stage_context& out) override {
        forwarding sink(out);
        bring_in_step(&sink, out.now());
        chain_.feed_end(out.now(), sink);
        ask_wake(out);
    }
    void on_wake(stage_context& out) override {
        forwarding sink(out);
        bring_in_step(&sink, out.now());
        chain_.wake(out.now(), sink);
        ask_wake(out);
    }
    void on_remove(stage_context& out) override {
        forwarding sink(out);
        while (!chain_.empty()) { // first to last: each passes what it held to the next
            chain_.erase(0, out.now(), sink);
        }
        applied_.clear();
    }
    std::size_t held() const noexcept override { return chain_.held(); }

    /// The names of the toxics that apply to this direction now, joined by ','.
    std::string applied_names() const;
    bool any_applied() const noexcept { return !chain_.empty(); }

private:
    /// A toxic of the set, as this tunnel took it.
    struct taken {
        std::uint64_t id;
        std::uint64_t revision;
        bool applies; // its toxicity roll said so (and so it has a stage in the chain)
        std::string name;
        limit_data_stage* limit; // its stage, when it is a limit_data one: its count carries over
    };

    /// Where the inner chain's last stage delivers: on, through this stage's own context.
    class forwarding final : public stage_sink {
    public:
        explicit forwarding(stage_context& out) noexcept : out_(out) {}
        void deliver(byte_view bytes) noexcept override { pass(bytes); }
        void deliver_end() noexcept override { out_.end(); }
        void reset(std::error_code why) noexcept override { out_.reset(why); }
        void close() noexcept override { out_.close(); }

    private:
        void pass(byte_view bytes) noexcept {
            try {
                out_.pass(bytes);
            } catch (...) { // the relay's own delivery does not throw; another stage may
                out_.reset(make_error_code(errc::stage_failed));
            }
        }
        stage_context& out_;
    };

    /// Takes in the set's changes since the last look. `sink` is null only before the tunnel
    /// starts, when there is nothing held to pass on.
    void bring_in_step(stage_sink* sink, time_point now);
    void take_out(std::size_t position, stage_sink* sink, time_point now);
    /// Whether a toxic applies to this connection: one roll per connection and toxic, kept,
    /// so a change of toxicity alone moves the bar, not the roll.
    bool rolls_in(const toxic_set::entry& e) const noexcept {
        return connection_.derive(2 * e.id).unit() < e.fault.toxicity;
    }
    fault_random stage_random(const toxic_set::entry& e) const noexcept {
        return connection_.derive(2 * e.id + 1).derive(e.revision);
    }
    /// The stage for a toxic this tunnel takes; a limit_data one is remembered in `mine`.
    std::unique_ptr<relay_stage> make_stage(const toxic& fault, const toxic_set::entry& e,
                                            taken& mine, std::uint64_t passed) const {
        std::unique_ptr<relay_stage> stage = make_fault_stage(fault, stage_random(e), passed);
        toxics_->count_applied(fault.type);
        if (fault.type == toxic_type::limit_data) { // make_fault_stage made one of that type
            mine.limit = static_cast<limit_data_stage*>(stage.get());
        }
        return stage;
    }
    /// The chain's position of the i-th toxic taken (those that do not apply have none).
    std::size_t position_of(std::size_t index) const noexcept;
    void ask_wake(stage_context& out) const noexcept;

    std::shared_ptr<toxic_set> toxics_;
    direction stream_;
    fault_random connection_;
    stage_chain chain_;
    std::vector<taken> applied_; // the set's toxics of this stream, in its order
    std::uint64_t seen_version_ = ~std::uint64_t{0};
    bool frozen_seen_ = false; // the set was frozen at the last look: no need to look again
};

/// A live set's watch over the directions of one tunnel that started with no fault: when the
/// set changes, a direction one of whose toxics now applies takes a runner (late_stages), and
/// keeps the plain path, splice included, until then.
class toxic_watch final : public late_stages {
public:
    toxic_watch(std::shared_ptr<toxic_set> toxics, fault_random connection,
                std::uint64_t seen) noexcept
        : toxics_(std::move(toxics)), connection_(connection), seen_(seen), latest_(seen) {}

    bool changed() noexcept override {
        latest_ = toxics_->version();
        return latest_ != seen_;
    }
    stage_chain make(direction which) override {
        auto runner = std::make_unique<toxic_runner>(toxics_, which, connection_);
        stage_chain chain;
        if (runner->any_applied()) {
            chain.push_back(std::move(runner));
        }
        return chain;
    }
    void looked() noexcept override { seen_ = latest_; }
    std::chrono::milliseconds look_every() const noexcept override {
        return toxic_set::change_reach;
    }

private:
    std::shared_ptr<toxic_set> toxics_;
    fault_random connection_;
    std::uint64_t seen_;   // the set's version at the last look
    std::uint64_t latest_; // read by the last changed()
};

} // namespace detail

// ---------------------------------------------------------------------------------------------

inline void toxic_set::check(const toxic& fault, std::string_view replacing) const {
    const std::string problem = check_toxic(fault);
    if (!problem.empty()) {
        throw std::invalid_argument(std::string(type_name(fault.type)) + ": " + problem);
    }
    const std::string name = name_of(fault);
    for (const entry& e : entries_) {
        if (name_of(e.fault) == name && name != replacing) {
            throw std::invalid_argument("a toxic called '" + name + "' exists already");
        }
    }
}

inline void toxic_set::check_not_frozen() const {
    if (frozen()) {
        throw std::logic_error("the toxic set is frozen: no change may follow freeze()");
    }
}

inline void toxic_set::add(toxic fault) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_not_frozen();
    check(fault, {});
    entries_.push_back(entry{next_id_++, 0, std::move(fault)});
    changed();
}

inline std::vector<toxic_set::entry>::iterator toxic_set::named(std::string_view name) {
    auto it = entries_.begin();
    while (it != entries_.end() && name_of(it->fault) != name) {
        ++it;
    }
    return it;
}

inline bool toxic_set::update(std::string_view name, toxic fault) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_not_frozen();
    auto it = named(name);
    if (it == entries_.end()) {
        return false;
    }
    check(fault, name);
    if (fault.stream != it->fault.stream || fault.type != it->fault.type) {
        // Another stream or type is another toxic: at the end of its chain, as if added.
        entries_.erase(it);
        entries_.push_back(entry{next_id_++, 0, std::move(fault)});
    } else {
        it->fault = std::move(fault);
        ++it->revision;
    }
    changed();
    return true;
}

inline bool toxic_set::remove(std::string_view name) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_not_frozen();
    auto it = named(name);
    if (it == entries_.end()) {
        return false;
    }
    entries_.erase(it);
    changed();
    return true;
}

inline void toxic_set::clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    check_not_frozen();
    entries_.clear();
    changed();
}

inline std::vector<toxic> toxic_set::list() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<toxic> out;
    out.reserve(entries_.size());
    for (const entry& e : entries_) {
        out.push_back(e.fault);
    }
    return out;
}

inline bool toxic_set::find(std::string_view name, toxic& out) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const entry& e : entries_) {
        if (name_of(e.fault) == name) {
            out = e.fault;
            return true;
        }
    }
    return false;
}

inline std::vector<toxic_set::entry> toxic_set::entries_of(direction stream,
                                                           std::uint64_t& version) const {
    std::lock_guard<std::mutex> lock(mutex_);
    version = version_.load(std::memory_order_acquire);
    std::vector<entry> out;
    for (const entry& e : entries_) {
        if (e.fault.stream == stream) {
            out.push_back(e);
        }
    }
    return out;
}

inline std::unique_ptr<relay_stage> make_fault_stage(const toxic& fault, fault_random random,
                                                     std::uint64_t passed) {
    using std::chrono::microseconds;
    using std::chrono::milliseconds;
    switch (fault.type) {
    case toxic_type::latency:
        return std::make_unique<latency_stage>(milliseconds(fault.latency),
                                               milliseconds(fault.jitter), random);
    case toxic_type::bandwidth:
        return std::make_unique<bandwidth_stage>(fault.rate);
    case toxic_type::slicer:
        return std::make_unique<slicer_stage>(static_cast<std::size_t>(fault.average_size),
                                              static_cast<std::size_t>(fault.size_variation),
                                              microseconds(fault.delay), random);
    case toxic_type::slow_close:
        return std::make_unique<slow_close_stage>(milliseconds(fault.delay));
    case toxic_type::timeout:
        return std::make_unique<timeout_stage>(milliseconds(fault.timeout));
    case toxic_type::reset_peer:
        return std::make_unique<reset_peer_stage>(milliseconds(fault.timeout));
    case toxic_type::limit_data:
        return std::make_unique<limit_data_stage>(static_cast<std::uint64_t>(fault.bytes), passed);
    case toxic_type::noop:
        break;
    }
    return std::make_unique<relay_stage>(); // noop: the base stage passes everything as it comes
}

namespace detail {

inline std::size_t toxic_runner::position_of(std::size_t index) const noexcept {
    std::size_t position = 0;
    for (std::size_t i = 0; i < index; ++i) {
        position += applied_[i].applies ? 1 : 0;
    }
    return position;
}

inline void toxic_runner::take_out(std::size_t position, stage_sink* sink, time_point now) {
    if (sink != nullptr) {
        chain_.erase(position, now, *sink);
    }
}

inline void toxic_runner::bring_in_step(stage_sink* sink, time_point now) {
    if (frozen_seen_) {
        return;
    }
    const bool frozen = toxics_->frozen();     // read before the version: a change before a
    if (toxics_->version() == seen_version_) { // freeze is then still seen
        frozen_seen_ = frozen;
        return;
    }
    std::uint64_t version = 0;
    const std::vector<toxic_set::entry> entries = toxics_->entries_of(stream_, version);
    // Those taken out of the set, or changed: out of the chain (or replaced, in place).
    std::size_t next = 0; // entries before it are matched
    for (std::size_t i = 0; i < applied_.size();) {
        taken& mine = applied_[i];
        auto it = entries.begin();
        while (it != entries.end() && it->id != mine.id) {
            ++it;
        }
        const std::size_t position = position_of(i);
        if (it == entries.end()) {
            if (mine.applies) {
                take_out(position, sink, now);
            }
            applied_.erase(applied_.begin() + static_cast<std::ptrdiff_t>(i));
            continue;
        }
        if (it->revision != mine.revision) {
            const std::uint64_t passed = mine.limit != nullptr ? mine.limit->passed() : 0;
            if (mine.applies) {
                take_out(position, sink, now);
            }
            mine.revision = it->revision;
            mine.applies = rolls_in(*it);
            mine.name = name_of(it->fault);
            mine.limit = nullptr;
            if (mine.applies) {
                chain_.insert(position, make_stage(it->fault, *it, mine, passed));
            }
        }
        next = static_cast<std::size_t>(it - entries.begin()) + 1;
        ++i;
    }
    // Those new to this tunnel: at the end, in the set's order (ids only grow, so every entry
    // after the last one matched is new).
    for (std::size_t e = next; e < entries.size(); ++e) {
        taken mine{entries[e].id, entries[e].revision, rolls_in(entries[e]),
                   name_of(entries[e].fault), nullptr};
        if (mine.applies) {
            chain_.push_back(make_stage(entries[e].fault, entries[e], mine, 0));
        }
        applied_.push_back(std::move(mine));
    }
    seen_version_ = version;
    frozen_seen_ = frozen && toxics_->version() == version;
}

inline void toxic_runner::ask_wake(stage_context& out) const noexcept {
    time_point wake = chain_.next_wake();
    if (!frozen_seen_) { // a change must reach a tunnel that sends nothing, too
        const time_point look = out.now() + toxic_set::change_reach;
        wake = look < wake ? look : wake;
    }
    out.wake_at(wake);
}

inline std::string toxic_runner::applied_names() const {
    std::string names;
    for (const taken& t : applied_) {
        if (t.applies) {
            names += (names.empty() ? "" : ",") + t.name;
        }
    }
    return names;
}

} // namespace detail

inline stage_factory fault_stages(std::shared_ptr<toxic_set> toxics, std::uint64_t seed) {
    return [toxics = std::move(toxics), seed](const tunnel_info& tunnel, tunnel_stages& stages) {
        const fault_random connection = fault_random(seed).derive(tunnel.serial);
        const std::uint64_t version = toxics->version(); // before the runners read the set
        auto up =
            std::make_unique<detail::toxic_runner>(toxics, direction::to_upstream, connection);
        auto down =
            std::make_unique<detail::toxic_runner>(toxics, direction::to_client, connection);
        const std::string up_names = up->applied_names();
        const std::string down_names = down->applied_names();
        stages.label = up_names + (up_names.empty() || down_names.empty() ? "" : ",") + down_names;
        if (stages.label.empty()) {
            stages.label = "none";
        }
        const bool live = !toxics->frozen();
        if (live && !(up->any_applied() && down->any_applied())) {
            stages.later = std::make_unique<detail::toxic_watch>(toxics, connection, version);
        }
        if (up->any_applied()) {
            stages.to_upstream.push_back(std::move(up));
        }
        if (down->any_applied()) {
            stages.to_client.push_back(std::move(down));
        }
    };
}

} // namespace tinyproxy
