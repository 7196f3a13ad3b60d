// SPDX-License-Identifier: MIT
// A small HTTP/1.1 server on one thread, for a control API: poll(2) over a listener, a stop pipe
// and the clients, each with keep-alive, pipelining, back-pressure and deadlines.
#pragma once

#include <algorithm>    // std::min, std::remove_if
#include <chrono>       // timeouts
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <exception>    // a handler's exception
#include <functional>   // the handler
#include <memory>       // clients at stable addresses
#include <optional>     // a request refused before the handler
#include <string>       // buffers
#include <string_view>  // Host and User-Agent checks
#include <system_error> // std::system_error
#include <utility>      // std::move
#include <vector>       // clients, poll entries

#include <poll.h> // pollfd, POLLIN, POLLOUT

#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/api/http.hpp"

namespace tinyproxy {

struct http_server_options {
    /// Loopback unless told otherwise: the API controls the proxies.
    endpoint listen{ip_address::loopback_v4(), 8474};
    http_limits limits;
    /// Clients served at once; one accepted past it is closed at once.
    std::size_t max_clients = 256;
    /// A client that sends nothing (between requests, or in the middle of a body) and takes
    /// nothing of what it was sent for this long is closed.
    std::chrono::milliseconds idle_timeout{60000};
    /// From a request's first byte to the end of its head: past it the client gets 408 and is
    /// closed (a slow head holds a client slot; a slow body is bounded by idle_timeout).
    std::chrono::milliseconds head_timeout{10000};
    /// 403 to a User-Agent starting with "Mozilla/": a web page must not drive the API (the rule
    /// Toxiproxy has).
    bool refuse_browsers = true;
    /// 403 unless Host is an IP literal (v4, or v6 in brackets) or "localhost", with any port: a
    /// page that rebinds its DNS name to 127.0.0.1 still sends its own name.
    bool check_host = true;
};

/// Serves requests with `handler`, one at a time, on the thread that calls run(). Responses go
/// out in the order of the requests (pipelining); a client whose responses are not yet taken is
/// not read (back-pressure), so a client's memory stays bounded by the limits and one read.
///
/// Answered without the handler: a request the reader refuses (its status, Connection: close),
/// a browser or a foreign Host when the options say so (403), a head past head_timeout (408),
/// all with Toxiproxy's error body `{"error":"<message>","status":<code>}`; a handler that
/// throws gives 500 with that body. "Expect: 100-continue" is answered with 100 Continue
/// before the body is read; HEAD gets the response without its body.
class http_server {
public:
    using handler = std::function<http_response(const http_request&)>;

    http_server(http_server_options options, handler on_request)
        : options_(std::move(options)), on_request_(std::move(on_request)) {}
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    /// Binds and listens (port 0 picks one); throws std::system_error naming the address.
    void listen();
    void listen(std::error_code& ec) noexcept;
    /// The address listened on (the port port 0 picked), once listening.
    endpoint local_endpoint() const noexcept { return listener_.local_endpoint(); }
    /// Serves until stop() (listening first if listen() was not called); closes every client and
    /// the listener before it returns. A server runs once. Throws std::system_error when poll(2)
    /// fails.
    void run();
    /// Ends run() soon, from any thread or a signal handler (an atomic exchange and a close(2));
    /// before run(), run() then returns at once.
    void stop() noexcept { stop_.request(); }

private:
    struct client {
        socket connection;
        http_request_reader reader;
        std::string in;  // bytes read but not yet fed: requests pipelined past back-pressure
        std::string out; // responses not yet sent, in order
        std::size_t out_sent = 0;
        bool continue_sent = false; // 100 Continue went out for the request being read
        bool peer_closed = false;   // the client sent its FIN
        bool close_after_send = false;
        bool draining = false; // our FIN sent: reading and dropping until the client's
        bool dead = false;
        std::size_t drained = 0;
        time_point last_activity;
        time_point head_deadline = time_point::max();
        time_point drain_deadline = time_point::max();

        explicit client(socket s, http_limits limits, time_point now)
            : connection(std::move(s)), reader(limits), last_activity(now) {}
        std::size_t unsent() const noexcept { return out.size() - out_sent; }
    };

    /// Pipelined requests are answered until this much is unsent; the rest wait in `in`.
    static constexpr std::size_t pipeline_limit = 64 * 1024;
    /// How long, and how much, a closing client is read (and dropped) after our FIN, so that
    /// its unread bytes do not turn our close into a reset that destroys the response.
    static constexpr std::chrono::milliseconds drain_time{1000};
    static constexpr std::size_t drain_limit = 1024 * 1024;

    short events_of(const client& c) const noexcept;
    time_point next_deadline() const noexcept;
    void accept_clients(time_point now);
    void on_ready(client& c, short revents, time_point now);
    void read_from(client& c, time_point now);
    void drain(client& c);
    void settle(client& c, time_point now);
    void serve_input(client& c, time_point now);
    void flush(client& c, time_point now);
    void begin_close(client& c, time_point now);
    void check_deadlines(client& c, time_point now);
    void respond(client& c, const http_request& request);
    void refuse(client& c, http_response response);
    http_response answer(const http_request& request);
    std::optional<http_response> screen(const http_request& request) const;

    http_server_options options_;
    handler on_request_;
    listener listener_;
    detail::stop_signal stop_;
    std::vector<std::unique_ptr<client>> clients_;
    std::vector<pollfd> poll_entries_;
    time_point accept_resume_ = time_point::min(); // out of descriptors: rest until then
    char scratch_[16 * 1024];
};

// ---------------------------------------------------------------------------------------------

namespace detail {
namespace http_api {

/// "1.2.3.4", "[::1]", "localhost", each with an optional ":port"; names other than localhost
/// are what a DNS-rebinding page would send.
inline bool is_local_host_field(std::string_view host) {
    std::string_view name = host;
    std::string_view port;
    if (!host.empty() && host.front() == '[') {
        auto close = host.find(']');
        if (close == std::string_view::npos) {
            return false;
        }
        name = host.substr(1, close - 1);
        std::string_view after = host.substr(close + 1);
        if (!after.empty() && after.front() != ':') {
            return false;
        }
        port = after.empty() ? after : after.substr(1);
        auto address =
            name.find('%') == std::string_view::npos ? ip_address::parse(name) : std::nullopt;
        if (!address || !address->is_v6()) {
            return false;
        }
    } else {
        auto colon = host.find(':');
        name = host.substr(0, colon);
        port = colon == std::string_view::npos ? std::string_view{} : host.substr(colon + 1);
        if (colon != std::string_view::npos && port.empty()) {
            return false;
        }
        auto address = ip_address::parse(name);
        if (!http_head::iequals(name, "localhost") && !(address && address->is_v4())) {
            return false;
        }
    }
    std::uint16_t number = 0;
    return port.empty() || parse_port(port, number);
}

/// Whether a response to this status carries content (not 1xx, 204).
inline bool has_content(int status) noexcept {
    return status != 204 && !(status >= 100 && status < 200);
}

} // namespace http_api
} // namespace detail

inline void http_server::listen() {
    std::error_code ec;
    listen(ec);
    if (ec) {
        throw std::system_error(ec, "cannot listen on " + options_.listen.to_string());
    }
}

inline void http_server::listen(std::error_code& ec) noexcept {
    ec.clear();
    if (!stop_.open(ec)) {
        return;
    }
    listener_ = listener::open(options_.listen, 128, ec);
    if (!ec) {
        listener_.set_nonblocking(true, ec);
    }
    if (ec) {
        listener_.close();
    }
}

inline void http_server::run() {
    if (!listener_) {
        listen();
    }
    std::error_code ec;
    while (!ec) {
        time_point now = steady_clock::now();
        poll_entries_.clear();
        poll_entries_.push_back({stop_.fd(), POLLIN, 0});
        bool accepting = now >= accept_resume_;
        poll_entries_.push_back({accepting ? listener_.native_handle() : -1, POLLIN, 0});
        for (const auto& c : clients_) {
            poll_entries_.push_back({c->connection.native_handle(), events_of(*c), 0});
        }
        time_point until = accepting ? next_deadline() : std::min(next_deadline(), accept_resume_);
        detail::poll_fds(poll_entries_.data(), static_cast<nfds_t>(poll_entries_.size()), until,
                         ec);
        if (ec || poll_entries_[0].revents != 0) {
            break; // the stop pipe: readable (end of file) once stop() closed its write end
        }
        now = steady_clock::now();
        for (std::size_t i = 0; i < clients_.size(); ++i) {
            on_ready(*clients_[i], poll_entries_[i + 2].revents, now);
            check_deadlines(*clients_[i], now);
        }
        clients_.erase(
            std::remove_if(clients_.begin(), clients_.end(), [](const auto& c) { return c->dead; }),
            clients_.end());
        if (poll_entries_[1].revents != 0) {
            accept_clients(now);
        }
    }
    clients_.clear();
    listener_.close();
    stop_.close();
    if (ec) {
        throw std::system_error(ec, "http_server: poll");
    }
}

/// Read only when everything before is answered and sent: back-pressure on a client that does
/// not take its responses, and no unbounded pile of pipelined requests.
inline short http_server::events_of(const client& c) const noexcept {
    short events = 0;
    bool idle_input = c.in.empty() && c.unsent() == 0 && !c.close_after_send;
    if (c.draining || (!c.peer_closed && idle_input)) {
        events |= POLLIN;
    }
    if (c.unsent() > 0) {
        events |= POLLOUT;
    }
    return events;
}

inline time_point http_server::next_deadline() const noexcept {
    time_point next = time_point::max();
    for (const auto& c : clients_) {
        next = std::min({next, c->head_deadline, c->drain_deadline,
                         detail::deadline_after(c->last_activity, options_.idle_timeout)});
    }
    return next;
}

inline void http_server::accept_clients(time_point now) {
    // A bounded batch: a flood of connections cannot starve the clients already here.
    for (int batch = 0; batch < 64; ++batch) {
        std::error_code ec;
        endpoint peer;
        socket s = listener_.accept(peer, true, ec);
        if (ec) {
            if (ec == std::errc::too_many_files_open ||
                ec == std::errc::too_many_files_open_in_system) {
                accept_resume_ = now + std::chrono::milliseconds(100); // poll would spin
            }
            return;
        }
        if (clients_.size() >= options_.max_clients) {
            continue; // closed at once, as `s` goes
        }
        std::error_code ignored;
        s.set_nodelay(true, ignored); // small responses go out at once
        clients_.push_back(std::make_unique<client>(std::move(s), options_.limits, now));
    }
}

inline void http_server::on_ready(client& c, short revents, time_point now) {
    if (revents == 0 || c.dead) {
        return;
    }
    if ((revents & (POLLERR | POLLNVAL)) != 0) {
        c.dead = true;
        return;
    }
    if ((revents & (POLLIN | POLLHUP)) != 0 && (events_of(c) & POLLIN) != 0) {
        c.draining ? drain(c) : read_from(c, now);
    } else if ((revents & POLLHUP) != 0) {
        c.dead = true; // gone both ways: what is unsent cannot be sent
        return;
    }
    settle(c, now);
}

inline void http_server::read_from(client& c, time_point now) {
    std::error_code ec;
    std::size_t n = c.connection.receive(scratch_, sizeof scratch_, ec);
    if (ec) {
        c.dead = !detail::would_block(ec);
        return;
    }
    if (n == 0) {
        c.peer_closed = true; // answer what came before the FIN, then close
        return;
    }
    c.last_activity = now;
    c.in.append(scratch_, n);
}

inline void http_server::drain(client& c) {
    std::error_code ec;
    std::size_t n = c.connection.receive(scratch_, sizeof scratch_, ec);
    c.drained += n;
    if ((ec && !detail::would_block(ec)) || (!ec && n == 0) || c.drained > drain_limit) {
        c.dead = true;
    }
}

/// Answers what can be answered, sends what can be sent, and starts closing when the client is
/// done. Loops because sending everything may free the way for pipelined requests still in `in`.
inline void http_server::settle(client& c, time_point now) {
    while (!c.dead) {
        serve_input(c, now);
        flush(c, now);
        if (c.dead || c.unsent() > 0 || c.in.empty() || c.close_after_send) {
            break;
        }
    }
    bool done = c.close_after_send || (c.peer_closed && c.in.empty());
    if (!c.dead && !c.draining && c.unsent() == 0 && done) {
        begin_close(c, now);
    }
}

inline void http_server::serve_input(client& c, time_point now) {
    std::size_t at = 0;
    while (at < c.in.size() && !c.close_after_send && c.unsent() < pipeline_limit) {
        std::size_t used = 0;
        auto state = c.reader.feed(byte_view(std::string_view(c.in).substr(at)), used);
        at += used;
        if (state == http_request_reader::status::complete) {
            c.continue_sent = false;
            respond(c, c.reader.take());
        } else if (state == http_request_reader::status::failed) {
            http_response refusal = json_error(c.reader.error_status(), c.reader.error_message());
            refuse(c, std::move(refusal));
        } else if (c.reader.expects_continue() && !c.continue_sent) {
            // Sent after every earlier response (they are already queued), as RFC 9110
            // section 10.1.1 allows; curl waits for it before a body past 1 KiB.
            c.out += "HTTP/1.1 100 Continue\r\n\r\n";
            c.continue_sent = true;
        }
    }
    c.in.erase(0, at);
    bool in_head = c.reader.started() && !c.reader.reading_body() && !c.close_after_send;
    if (!in_head) {
        c.head_deadline = time_point::max();
    } else if (c.head_deadline == time_point::max()) {
        c.head_deadline = detail::deadline_after(now, options_.head_timeout);
    }
}

inline void http_server::flush(client& c, time_point now) {
    while (c.unsent() > 0) {
        std::error_code ec;
        std::size_t n = c.connection.send(c.out.data() + c.out_sent, c.unsent(), ec);
        if (ec) {
            c.dead = !detail::would_block(ec);
            return;
        }
        c.out_sent += n;
        c.last_activity = now;
    }
    c.out.clear();
    c.out_sent = 0;
}

/// Our FIN, then a short read of whatever the client still sends: closing with unread bytes
/// would send a reset, which can destroy the response before the client reads it.
inline void http_server::begin_close(client& c, time_point now) {
    std::error_code ec;
    c.in.clear();
    c.connection.shutdown_write(ec);
    if (ec || c.peer_closed) {
        c.dead = true;
        return;
    }
    c.draining = true;
    c.head_deadline = time_point::max();
    c.drain_deadline = detail::deadline_after(now, drain_time);
}

inline void http_server::check_deadlines(client& c, time_point now) {
    if (c.dead) {
        return;
    }
    if (now >= c.drain_deadline ||
        now >= detail::deadline_after(c.last_activity, options_.idle_timeout)) {
        c.dead = true;
        return;
    }
    if (now >= c.head_deadline) {
        c.head_deadline = time_point::max();
        refuse(c, json_error(408, "request head not received in time"));
        settle(c, now);
    }
}

inline void http_server::respond(client& c, const http_request& request) {
    http_response response = answer(request);
    response.close = response.close || !request.keep_alive();
    if (!response.close && request.minor_version == 0) {
        response.headers.push_back({"Connection", "keep-alive"}); // 1.0 closes unless told
    }
    std::string bytes = format_response(response);
    if (request.method == "HEAD" && detail::http_api::has_content(response.status)) {
        bytes.resize(bytes.size() - response.body.size()); // the head a GET would get
    }
    c.out += bytes;
    c.close_after_send = c.close_after_send || response.close;
}

/// A response that ends the connection: nothing after the refused request is read.
inline void http_server::refuse(client& c, http_response response) {
    response.close = true;
    c.out += format_response(response);
    c.close_after_send = true;
    c.in.clear();
}

inline http_response http_server::answer(const http_request& request) {
    if (std::optional<http_response> refusal = screen(request)) {
        return std::move(*refusal);
    }
    try {
        return on_request_(request);
    } catch (const std::exception& error) {
        return json_error(500, error.what());
    } catch (...) {
        return json_error(500, "internal error");
    }
}

inline std::optional<http_response> http_server::screen(const http_request& request) const {
    const std::string* agent = request.header("user-agent");
    if (options_.refuse_browsers && agent != nullptr && agent->rfind("Mozilla/", 0) == 0) {
        return json_error(403, "User agent not allowed");
    }
    // HTTP/1.0 may come without Host (the reader refuses a 1.1 request without one); a page in
    // a browser always sends one.
    const std::string* host = request.header("host");
    if (options_.check_host && host != nullptr && !detail::http_api::is_local_host_field(*host)) {
        return json_error(403, "Host not allowed");
    }
    return std::nullopt;
}

} // namespace tinyproxy
