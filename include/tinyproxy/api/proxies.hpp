// SPDX-License-Identifier: MIT
// The proxies a control API manages, as Toxiproxy has them: named port forwarders (listen ->
// upstream), each with a live toxic set and counters that outlive its restarts, created,
// changed, started, stopped and deleted while the others run. Each runs its Policy on a thread
// of its own.
#pragma once

#include <atomic>       // counters
#include <cstdint>      // counters, seeds
#include <functional>   // the policy factory, the event hook
#include <map>          // the proxies, by name
#include <memory>       // shared counters and toxic sets
#include <mutex>        // the collection, changed from any thread
#include <stdexcept>    // std::invalid_argument: a bad address
#include <string>       // names, addresses
#include <string_view>  // names
#include <system_error> // listen failures
#include <thread>       // a proxy's own thread
#include <utility>      // std::move
#include <vector>       // a snapshot of the proxies

#include "tinyproxy/config.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/faults.hpp"
#include "tinyproxy/server.hpp"
#include "tinyproxy/mode/forward.hpp"
#include "tinyproxy/proxy.hpp"

namespace tinyproxy {

/// What a Toxiproxy "proxy" is.
struct proxy_spec {
    std::string name;
    /// HOST:PORT to accept clients on; port 0 picks a free one (and the proxy then reports
    /// the real one); empty means 127.0.0.1:0.
    std::string listen;
    /// HOST:PORT every client is forwarded to; a name is resolved as each client connects.
    std::string upstream;
    bool enabled = true;
};

/// How a connection through a managed proxy ended, for the metrics.
enum class close_reason {
    clean,       ///< both directions finished
    reset,       ///< a peer reset it, or a write failed
    timeout,     ///< idle for the idle timeout
    unreachable, ///< the upstream refused, did not resolve or timed out
    fault,       ///< a toxic (reset_peer, or a stage that failed) ended it
    stopped,     ///< the proxy was disabled, changed or deleted
    error,       ///< anything else
};
inline constexpr std::size_t close_reason_count = 7;
/// "clean", "reset", "timeout", "unreachable", "fault", "stopped", "error".
std::string_view close_reason_name(close_reason reason) noexcept;
close_reason classify_close(const session_result& result) noexcept;

/// The connection counts of one proxy, read once so that they agree with each other (a scrape
/// never shows a connection as both active and closed).
struct connection_counts {
    std::uint64_t accepted = 0;
    std::uint64_t closed[close_reason_count]{};
    std::uint64_t active = 0; ///< accepted, less every closed
};

/// A managed proxy's counts since it was created, across its restarts; readable from any thread.
struct proxy_counters {
    std::shared_ptr<traffic_counters> traffic = std::make_shared<traffic_counters>();
    std::atomic<std::uint64_t> accepted{0}; ///< clients let in (a session started)
    std::atomic<std::uint64_t> rejected{0}; ///< closed at once (max_connections, allow)
    std::atomic<std::uint64_t> closed[close_reason_count]{};
    /// The closes are read before the accepts: a session is accepted before it closes, so the
    /// accepts read after cover every close read.
    connection_counts connections() const noexcept {
        connection_counts counts;
        std::uint64_t ended = 0;
        for (std::size_t r = 0; r < close_reason_count; ++r) {
            counts.closed[r] = closed[r].load();
            ended += counts.closed[r];
        }
        counts.accepted = accepted.load();
        counts.active = counts.accepted > ended ? counts.accepted - ended : 0;
        return counts;
    }
};

/// A proxy with its name, its toxics and its counters, started and stopped at will. Not
/// thread-safe by itself: proxy_collection serialises the calls.
template <class Policy>
class managed_proxy {
public:
    using proxy_type = basic_proxy<Policy, forward_mode>;

    /// `base`: the options every proxy of a collection shares (timeouts, limits, the event hook);
    /// `seed`: the seed of this proxy's faults; `make_policy` makes a Policy for each start.
    managed_proxy(proxy_spec spec, options base, std::uint64_t seed,
                  std::function<Policy()> make_policy)
        : spec_(std::move(spec)), base_(std::move(base)), seed_(seed),
          make_policy_(std::move(make_policy)) {
        spec_.enabled = false; // until start()
    }
    managed_proxy(const managed_proxy&) = delete;
    managed_proxy& operator=(const managed_proxy&) = delete;
    ~managed_proxy() { stop(); }

    /// Its spec; while it runs, `listen` is the address it is bound to, with the real port.
    const proxy_spec& spec() const noexcept { return spec_; }
    bool running() const noexcept { return static_cast<bool>(proxy_); }
    toxic_set& toxics() noexcept { return *toxics_; }
    const toxic_set& toxics() const noexcept { return *toxics_; }
    const proxy_counters& counters() const noexcept { return *counters_; }
    /// Sessions running now.
    std::uint64_t active() const noexcept { return counters_->connections().active; }

    /// Binds its listen address and serves on a thread of its own. Throws std::system_error
    /// when it cannot listen; nothing to do when it runs already.
    void start();
    /// Closes its listener and every connection through it, and joins its thread.
    void stop() noexcept;
    /// Takes a new listen and upstream (the proxy must not be running): both are checked
    /// first, std::invalid_argument saying what is wrong.
    void retarget(std::string listen, std::string upstream);

private:
    options make_options(const endpoint& listen) const;

    proxy_spec spec_;
    options base_;
    std::uint64_t seed_;
    std::function<Policy()> make_policy_;
    std::shared_ptr<toxic_set> toxics_ = std::make_shared<toxic_set>();
    std::shared_ptr<proxy_counters> counters_ = std::make_shared<proxy_counters>();
    std::unique_ptr<proxy_type> proxy_;
    std::thread thread_;
};

/// The listen address a spec means: HOST:PORT resolved (a name, as "localhost:0", too); an
/// empty one is 127.0.0.1:0. Throws std::invalid_argument naming it.
endpoint listen_address(const std::string& text);
/// The upstream a spec means: HOST:PORT with a port, not resolved. Throws
/// std::invalid_argument naming it.
host_port upstream_address(const std::string& text);

/// The named proxies of one control API: thread-safe.
template <class Policy>
class proxy_collection {
public:
    using proxy_type = managed_proxy<Policy>;

    /// `base`: the options every proxy shares; `seed`: the faults' seed, each proxy's derived
    /// from it and its name.
    explicit proxy_collection(
        options base = options(), std::uint64_t seed = 0,
        std::function<Policy()> make_policy = [] { return Policy(); })
        : base_(std::move(base)), seed_(seed), make_policy_(std::move(make_policy)) {}
    ~proxy_collection() { clear(); }

    /// Calls `fn(collection)` with the collection locked: every change and every read of a
    /// proxy goes through it, so they are seen whole.
    template <class Fn>
    auto with_lock(Fn&& fn) {
        std::lock_guard<std::mutex> lock(mutex_);
        return fn(*this);
    }

    // --- under with_lock ---------------------------------------------------------------
    /// The proxy called `name`, or null.
    proxy_type* find(std::string_view name) noexcept;
    /// Makes a proxy (checking its addresses, std::invalid_argument) and starts it when
    /// `spec.enabled` (std::system_error when it cannot listen: then it is not added).
    /// The name must be free.
    proxy_type& add(const proxy_spec& spec);
    /// Replaces the proxy of the same name, stopping it first, or adds it.
    proxy_type& replace(const proxy_spec& spec);
    bool remove(std::string_view name) noexcept;
    void clear() noexcept;
    /// Every proxy, by name.
    const std::map<std::string, std::unique_ptr<proxy_type>, std::less<>>& all() const noexcept {
        return proxies_;
    }

private:
    std::unique_ptr<proxy_type> make(const proxy_spec& spec) const;

    options base_;
    std::uint64_t seed_;
    std::function<Policy()> make_policy_;
    std::mutex mutex_;
    std::map<std::string, std::unique_ptr<proxy_type>, std::less<>> proxies_;
};

// ---------------------------------------------------------------------------------------------

inline std::string_view close_reason_name(close_reason reason) noexcept {
    static constexpr std::string_view names[close_reason_count] = {
        "clean", "reset", "timeout", "unreachable", "fault", "stopped", "error"};
    return names[static_cast<std::size_t>(reason)];
}

inline close_reason classify_close(const session_result& result) noexcept {
    const std::error_code& why = result.error;
    if (!why) {
        return close_reason::clean;
    }
    if (why == errc::stopped) {
        return close_reason::stopped;
    }
    if (why == errc::reset_by_stage || why == errc::stage_failed) {
        return close_reason::fault;
    }
    if (result.stage == session_result::stage_type::connect) {
        return close_reason::unreachable;
    }
    if (why == errc::idle_timeout) {
        return close_reason::timeout;
    }
    if (why == std::errc::connection_reset || why == std::errc::broken_pipe ||
        why == std::errc::connection_aborted) {
        return close_reason::reset;
    }
    return close_reason::error;
}

inline endpoint listen_address(const std::string& text) {
    if (text.empty()) {
        return endpoint{ip_address::loopback_v4(), 0};
    }
    std::error_code ec;
    const host_port where = parse_host_port(text, ec);
    if (!ec) {
        const std::vector<endpoint> found = resolve(where, ec);
        if (!ec && !found.empty()) {
            return found.front();
        }
    }
    throw std::invalid_argument("listen: cannot use address '" + text + "'");
}

inline host_port upstream_address(const std::string& text) {
    std::error_code ec;
    host_port where = parse_host_port(text, ec);
    if (ec || where.port == 0) {
        throw std::invalid_argument("upstream: cannot use address '" + text + "'");
    }
    return where;
}

namespace detail {

/// FNV-1a of a name: each proxy's faults get a seed of their own, the same every run.
inline std::uint64_t name_hash(std::string_view name) noexcept {
    std::uint64_t hash = 0xcbf29ce484222325ULL;
    for (char c : name) {
        hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    }
    return hash;
}

} // namespace detail

template <class Policy>
options managed_proxy<Policy>::make_options(const endpoint& listen) const {
    options opts = base_;
    opts.listen = listen;
    opts.stages = fault_stages(toxics_, seed_);
    opts.traffic = counters_->traffic;
    // Counted here, in the counters that outlive this run; then the shared hook, if any.
    opts.on_event = [counters = counters_, hook = base_.on_event](const session_event& event) {
        switch (event.what) {
        case session_event::kind::opened:
            counters->accepted.fetch_add(1, std::memory_order_relaxed);
            break;
        case session_event::kind::rejected:
            counters->rejected.fetch_add(1, std::memory_order_relaxed);
            break;
        case session_event::kind::closed: {
            const auto reason = static_cast<std::size_t>(classify_close(*event.result));
            counters->closed[reason].fetch_add(1, std::memory_order_relaxed);
            break;
        }
        }
        if (hook) {
            hook(event);
        }
    };
    return opts;
}

template <class Policy>
void managed_proxy<Policy>::start() {
    if (proxy_) {
        return;
    }
    auto proxy = std::make_unique<proxy_type>(make_options(listen_address(spec_.listen)),
                                              forward_mode(upstream_address(spec_.upstream)),
                                              make_policy_());
    std::error_code ec;
    proxy->listen(ec);
    if (ec) {
        throw std::system_error(ec, "listen tcp " + spec_.listen);
    }
    proxy_type* serving = proxy.get();
    thread_ = std::thread([serving] {
        try {
            serving->run();
        } catch (...) { // the policy could not start (no descriptor): the proxy stays down
        }
    });
    spec_.listen = proxy->local_endpoint().to_string();
    spec_.enabled = true;
    proxy_ = std::move(proxy);
}

template <class Policy>
void managed_proxy<Policy>::stop() noexcept {
    if (proxy_) {
        proxy_->stop();
        if (thread_.joinable()) {
            thread_.join();
        }
        proxy_.reset();
    }
    spec_.enabled = false;
}

template <class Policy>
void managed_proxy<Policy>::retarget(std::string listen, std::string upstream) {
    (void)listen_address(listen);
    (void)upstream_address(upstream);
    spec_.listen = std::move(listen);
    spec_.upstream = std::move(upstream);
}

template <class Policy>
std::unique_ptr<managed_proxy<Policy>>
proxy_collection<Policy>::make(const proxy_spec& spec) const {
    (void)listen_address(spec.listen); // checked before anything starts
    (void)upstream_address(spec.upstream);
    auto made = std::make_unique<proxy_type>(spec, base_, seed_ ^ detail::name_hash(spec.name),
                                             make_policy_);
    if (spec.enabled) {
        made->start();
    }
    return made;
}

template <class Policy>
managed_proxy<Policy>* proxy_collection<Policy>::find(std::string_view name) noexcept {
    auto it = proxies_.find(name);
    return it == proxies_.end() ? nullptr : it->second.get();
}

template <class Policy>
managed_proxy<Policy>& proxy_collection<Policy>::add(const proxy_spec& spec) {
    auto made = make(spec);
    proxy_type& added = *made;
    proxies_.emplace(spec.name, std::move(made));
    return added;
}

template <class Policy>
managed_proxy<Policy>& proxy_collection<Policy>::replace(const proxy_spec& spec) {
    if (proxy_type* existing = find(spec.name)) {
        existing->stop(); // its port is free for the new one
        proxies_.erase(proxies_.find(spec.name));
    }
    return add(spec);
}

template <class Policy>
bool proxy_collection<Policy>::remove(std::string_view name) noexcept {
    auto it = proxies_.find(name);
    if (it == proxies_.end()) {
        return false;
    }
    proxies_.erase(it); // stops it
    return true;
}

template <class Policy>
void proxy_collection<Policy>::clear() noexcept {
    proxies_.clear();
}

} // namespace tinyproxy
