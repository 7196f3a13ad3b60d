// SPDX-License-Identifier: MIT
// The tunnel of a session whose client asked for a SOCKS5 UDP ASSOCIATE: the association, which
// owns the UDP relay socket, takes datagrams from the client only, sends their data on, frames
// what the remotes answer, and keeps the idle deadline.
#pragma once

#include <chrono>       // the idle timeout
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes, counters
#include <deque>        // datagrams waiting for a name
#include <string>       // names resolved
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // remotes, candidates

#include <poll.h> // POLLIN

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/protocol/socks_udp.hpp"
#include "tinyproxy/server.hpp"

namespace tinyproxy {
namespace detail {

/// One UDP association (RFC 1928 section 7). Datagrams from the client (its TCP address, and
/// the port its request named, or else the port its first datagram came from) carry the SOCKS
/// UDP header: their data goes to the destination the header names. Datagrams from a remote the
/// client has sent to go back to the client, framed with a header naming that remote. Anything
/// else is dropped and counted: another source, a fragment (FRAG != 0), a malformed header, a
/// name that does not resolve, a full socket buffer. One socket serves both families: an IPv4
/// client may send to IPv6 remotes and the other way round.
///
/// Names are resolved by the session's driver (wants_resolve(), one at a time), never here; the
/// datagrams for a name wait meanwhile (a bounded few), and the answers are kept for the
/// association's life (a bounded few), so a client that sends to one name pays one lookup.
class udp_association {
public:
    /// The most datagrams one on_ready() reads: an association busy both ways leaves the rest
    /// for the next call, so that other sessions of an event loop get their turn.
    static constexpr int max_datagrams_per_call = 64;
    /// The most datagrams waiting for a name, and the most names and remotes remembered.
    static constexpr std::size_t max_waiting = 32;
    static constexpr std::size_t max_names = 16;
    static constexpr std::size_t max_remotes = 64;

    /// Opens the relay socket: every address, both families, a free port (so that it can
    /// send wherever the client asks, from whichever address routes there); the reply names it
    /// on `local` (the address the client's TCP connection reached us on). `client`: the client's
    /// address on that connection. `source`: where the request says the datagrams will come from
    /// (0.0.0.0, :: or a name: the client's address; port 0: any port, the first datagram's).
    std::error_code open(const endpoint& local, const ip_address& client, const host_port& source,
                         const session_options& limits, time_point now);

    /// The relay's address, for the reply (never 0.0.0.0: `local` is an accepted socket's).
    endpoint relay_address() const noexcept { return relay_address_; }
    int fd() const noexcept { return socket_.native_handle(); }
    bool active() const noexcept { return static_cast<bool>(socket_); }
    static constexpr short events() noexcept { return POLLIN; }
    time_point deadline() const noexcept { return idle_deadline_; }
    /// The last on_ready() read all it may read in one call: call again before waiting.
    bool saturated() const noexcept { return saturated_; }

    /// Reads and relays the datagrams there are (at most max_datagrams_per_call), framing them
    /// in `scratch` (which must hold more than socks_udp_header_v6 bytes).
    void on_ready(std::uint8_t* scratch, std::size_t scratch_size, time_point now);

    /// A name is waiting to be resolved: resolve resolve_target() and call on_resolved().
    bool wants_resolve() const noexcept { return !waiting_.empty(); }
    const host_port& resolve_target() const noexcept { return waiting_.front().destination; }
    void on_resolved(const std::vector<endpoint>& candidates, std::error_code ec, time_point now);

    const datagram_counts& counts() const noexcept { return counts_; }
    /// Ends the association: its counts (and bytes) are added to `result`, the socket closes.
    void close(session_result& result) noexcept;

private:
    struct waiting_datagram {
        host_port destination;
        std::vector<std::uint8_t> data;
    };
    struct resolved_name {
        std::string name;
        ip_address address;
    };

    bool from_client(const endpoint& from) noexcept;
    bool known_remote(const endpoint& from) const noexcept;
    void remember_remote(const endpoint& to);
    void from_client_datagram(byte_view datagram, time_point now);
    void to_remote(const endpoint& to, byte_view data, time_point now);
    void to_client(const endpoint& from, std::uint8_t* framed, std::size_t size, time_point now);
    const ip_address* resolved(const std::string& name) const noexcept;
    void touch(time_point now) noexcept { idle_deadline_ = deadline_after(now, idle_timeout_); }

    datagram_socket socket_;
    endpoint relay_address_;
    ip_address client_address_;
    bool client_v6_ = false;        // the family the client reached us in: a name's first choice
    std::uint16_t client_port_ = 0; // 0 until the request or the first datagram says
    std::vector<endpoint> remotes_; // where the client has sent: who may answer
    std::size_t next_remote_ = 0;   // the one to replace once remotes_ is full
    std::deque<waiting_datagram> waiting_;
    std::vector<resolved_name> names_;
    datagram_counts counts_;
    traffic_counters* traffic_ = nullptr; // session_options::traffic, which outlives us
    std::chrono::milliseconds idle_timeout_{0};
    time_point idle_deadline_ = time_point::max();
    bool saturated_ = false;
};

// ---------------------------------------------------------------------------------------------

inline std::error_code udp_association::open(const endpoint& local, const ip_address& client,
                                             const host_port& source, const session_options& limits,
                                             time_point now) {
    std::error_code ec;
    socket_ = datagram_socket::open_any(ec);
    if (ec) {
        return ec;
    }
    relay_address_ = endpoint{local.address, socket_.local_endpoint().port};
    client_v6_ = local.address.is_v6();
    client_address_ = client;
    // The request narrows the source: its port when it names one. An address other than the
    // client's own cannot widen it (a client cannot open our relay to a third party).
    client_port_ = source.port;
    traffic_ = limits.traffic.get();
    idle_timeout_ = limits.idle_timeout;
    touch(now);
    return {};
}

inline void udp_association::on_ready(std::uint8_t* scratch, std::size_t scratch_size,
                                      time_point now) {
    saturated_ = false;
    if (scratch == nullptr || scratch_size <= socks_udp_header_v6 || !socket_) {
        return;
    }
    // Read after room for the largest header, so a remote's datagram is framed where it lies.
    std::uint8_t* room = scratch + socks_udp_header_v6;
    const std::size_t room_size = scratch_size - socks_udp_header_v6;
    for (int n = 0; n < max_datagrams_per_call; ++n) {
        endpoint from;
        std::error_code ec;
        std::size_t length = socket_.receive_from(room, room_size, from, ec);
        if (ec) {
            if (!would_block(ec)) {
                ++counts_.dropped_other; // an ICMP error for an earlier send: nothing to relay
                continue;
            }
            return;
        }
        if (length > room_size) {
            ++counts_.dropped_other; // cut short: larger than a read, never relayed in part
        } else if (from_client(from)) {
            from_client_datagram(byte_view{room, length}, now);
        } else if (known_remote(from)) {
            to_client(from, room, length, now);
        } else {
            ++counts_.dropped_source;
        }
    }
    saturated_ = true;
}

inline bool udp_association::from_client(const endpoint& from) noexcept {
    if (from.address != client_address_) {
        return false;
    }
    if (client_port_ == 0) {
        if (known_remote(from)) {
            return false; // a remote on the client's own host, answering
        }
        client_port_ = from.port; // the first datagram says where the client sends from
    }
    return from.port == client_port_;
}

inline bool udp_association::known_remote(const endpoint& from) const noexcept {
    for (const endpoint& remote : remotes_) {
        if (remote == from) {
            return true;
        }
    }
    return false;
}

inline void udp_association::remember_remote(const endpoint& to) {
    if (known_remote(to)) {
        return;
    }
    if (remotes_.size() < max_remotes) {
        remotes_.push_back(to);
        return;
    }
    remotes_[next_remote_] = to;
    next_remote_ = (next_remote_ + 1) % max_remotes;
}

inline void udp_association::from_client_datagram(byte_view datagram, time_point now) {
    socks_udp_datagram parsed;
    if (parse_socks_udp(datagram, parsed)) {
        ++counts_.dropped_malformed;
        return;
    }
    if (parsed.fragment != 0) {
        ++counts_.dropped_fragment; // reassembly is optional (RFC 1928 section 7): not served
        return;
    }
    if (auto numeric = parsed.address.numeric_address()) {
        to_remote(endpoint{*numeric, parsed.address.port}, parsed.data, now);
        return;
    }
    if (const ip_address* address = resolved(parsed.address.host)) {
        to_remote(endpoint{*address, parsed.address.port}, parsed.data, now);
        return;
    }
    if (waiting_.size() >= max_waiting) {
        ++counts_.dropped_other;
        return;
    }
    waiting_.push_back(
        waiting_datagram{std::move(parsed.address),
                         std::vector<std::uint8_t>(parsed.data.begin(), parsed.data.end())});
}

inline void udp_association::to_remote(const endpoint& to, byte_view data, time_point now) {
    if (to.address.is_v6() && !socket_.local_endpoint().address.is_v6()) {
        ++counts_.dropped_other; // a host without IPv6
        return;
    }
    std::error_code ec;
    socket_.send_to(data.data(), data.size(), to, ec);
    if (ec) {
        ++counts_.dropped_other; // a full buffer, or unreachable: UDP's own way of losing one
        return;
    }
    remember_remote(to);
    ++counts_.to_upstream;
    counts_.bytes_to_upstream += data.size();
    if (traffic_ != nullptr) {
        traffic_->to_upstream.fetch_add(data.size(), std::memory_order_relaxed);
    }
    touch(now);
}

inline void udp_association::to_client(const endpoint& from, std::uint8_t* data, std::size_t size,
                                       time_point now) {
    if (client_port_ == 0) {
        ++counts_.dropped_other; // cannot happen: a remote is known once the client has sent
        return;
    }
    const std::size_t header = socks_udp_header_size(from);
    std::uint8_t* framed = data - header; // the room on_ready() left before the data
    write_socks_udp_header(from, framed);
    std::error_code ec;
    socket_.send_to(framed, header + size, endpoint{client_address_, client_port_}, ec);
    if (ec) {
        ++counts_.dropped_other;
        return;
    }
    ++counts_.to_client;
    counts_.bytes_to_client += size;
    if (traffic_ != nullptr) {
        traffic_->to_client.fetch_add(size, std::memory_order_relaxed);
    }
    touch(now);
}

inline const ip_address* udp_association::resolved(const std::string& name) const noexcept {
    for (const resolved_name& known : names_) {
        if (known.name == name) {
            return &known.address;
        }
    }
    return nullptr;
}

inline void udp_association::on_resolved(const std::vector<endpoint>& candidates,
                                         std::error_code ec, time_point now) {
    if (waiting_.empty()) {
        return;
    }
    const std::string name = waiting_.front().destination.host;
    // The first address in the family the client reached us in ("localhost" is 127.0.0.1
    // for an IPv4 client, ::1 for an IPv6 one), else the first of any.
    const ip_address* chosen = nullptr;
    for (const endpoint& candidate : candidates) {
        if (!ec && chosen == nullptr && candidate.address.is_v6() == client_v6_) {
            chosen = &candidate.address;
        }
    }
    if (!ec && chosen == nullptr && !candidates.empty()) {
        chosen = &candidates.front().address;
    }
    if (chosen != nullptr) {
        if (names_.size() >= max_names) {
            names_.erase(names_.begin());
        }
        names_.push_back(resolved_name{name, *chosen});
    }
    // Every datagram waiting for this name goes now (or is dropped with it); the others wait.
    std::deque<waiting_datagram> others;
    for (waiting_datagram& d : waiting_) {
        if (d.destination.host != name) {
            others.push_back(std::move(d));
        } else if (chosen != nullptr) {
            to_remote(endpoint{*chosen, d.destination.port}, d.data, now);
        } else {
            ++counts_.dropped_other;
        }
    }
    waiting_ = std::move(others);
}

inline void udp_association::close(session_result& result) noexcept {
    if (!socket_) {
        return;
    }
    counts_.dropped_other += waiting_.size();
    waiting_.clear();
    result.bytes_to_upstream += counts_.bytes_to_upstream;
    result.bytes_to_client += counts_.bytes_to_client;
    result.datagrams = counts_;
    socket_.close();
}

} // namespace detail
} // namespace tinyproxy
