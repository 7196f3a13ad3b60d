// SPDX-License-Identifier: MIT
// A Toxiproxy-compatible control server: Toxiproxy 2.12's HTTP API (its routes, bodies and
// status codes) over a proxy_collection, so Toxiproxy's own clients drive it, and a /metrics
// endpoint in Prometheus's text format. toxiproxy_api answers one request (sans-I/O);
// toxiproxy_server serves it over HTTP.
#pragma once

#include <atomic>       // the request count
#include <cstdint>      // counters
#include <exception>    // std::exception: an error not the API's own
#include <functional>   // the policy factory
#include <map>          // each proxy's connection counts, read once per scrape
#include <string>       // bodies, names
#include <string_view>  // paths
#include <system_error> // a listener that cannot be opened
#include <utility>      // std::move
#include <vector>       // path segments, toxics

#include "tinyproxy/config.hpp"
#include "tinyproxy/json.hpp"
#include "tinyproxy/faults.hpp"
#include "tinyproxy/proxy.hpp"
#include "tinyproxy/api/http.hpp"
#include "tinyproxy/api/http_server.hpp"
#include "tinyproxy/api/prometheus.hpp"
#include "tinyproxy/api/toxiproxy_json.hpp"
#include "tinyproxy/api/proxies.hpp"

namespace tinyproxy {

/// The Toxiproxy version /version reports: the API this server speaks (clients choose what to
/// send by it: Ruby's picks PATCH from 2.6 on).
inline constexpr std::string_view toxiproxy_api_version = "2.12.0";

/// Answers Toxiproxy API requests over a collection of proxies. Thread-safe (the collection
/// is); one request at a time is the usual use.
template <class Policy>
class toxiproxy_api {
public:
    explicit toxiproxy_api(proxy_collection<Policy>& proxies) : proxies_(proxies) {}

    /// The response to one request: never throws an api_error (it becomes its response).
    /// Each carries an X-Toxiproxy-Request-Id, as Toxiproxy's do, unique in this process.
    http_response handle(const http_request& request);

    /// POST /populate's work: makes or replaces the proxies of a JSON array, all checked
    /// before any is made, keeping those that are already as given. Returns the proxies
    /// as JSON; throws api_error (with what was made so far in `made`).
    json_value populate(const json_value& list, json_value& made);

    /// The metrics of every proxy, in Prometheus's text format.
    std::string metrics();

private:
    using proxy_type = managed_proxy<Policy>;

    http_response answer(const http_request& request);
    http_response route(const http_request& request, const std::vector<std::string>& path);
    http_response proxy_index();
    http_response proxy_create(const http_request& request);
    http_response proxy_show(const std::string& name);
    http_response proxy_update(const std::string& name, const http_request& request);
    http_response proxy_delete(const std::string& name);
    http_response toxic_index(const std::string& proxy);
    http_response toxic_create(const std::string& proxy, const http_request& request);
    http_response toxic_show(const std::string& proxy, const std::string& name);
    http_response toxic_update(const std::string& proxy, const std::string& name,
                               const http_request& request);
    http_response toxic_delete(const std::string& proxy, const std::string& name);
    http_response populate_request(const http_request& request);
    http_response reset();

    /// The proxy called `name` (the collection must be locked); api_error 404 if none.
    proxy_type& existing(proxy_collection<Policy>& all, const std::string& name);
    static json_value proxy_json(const proxy_type& proxy);
    static json_value toxics_json(const toxic_set& toxics);
    /// Starts `proxy`, an api_error 500 with the reason when it cannot listen.
    static void start_or_throw(proxy_type& proxy);

    proxy_collection<Policy>& proxies_;
    std::atomic<std::uint64_t> requests_{0}; ///< answered so far: the next request id
};

/// What a toxiproxy_server is told: where its API listens (loopback, Toxiproxy's port, by
/// default), the HTTP limits and checks, and what every proxy it makes shares.
struct toxiproxy_options {
    http_server_options http;
    /// Timeouts, limits and the event hook every proxy shares (`listen` is ignored). No idle
    /// timeout by default: Toxiproxy has none, and a test suite's pooled connections sit idle.
    options proxies = [] {
        options base;
        base.idle_timeout = std::chrono::milliseconds::max();
        return base;
    }();
    /// The seed of every proxy's faults (each proxy's derived from it and its name).
    std::uint64_t seed = 0;
};

/// A Toxiproxy-compatible server: the control API on HTTP, and the proxies it makes, each on
/// a thread of its own with `Policy` (poll_policy: one event loop a proxy).
///
///     tinyproxy::toxiproxy_server<> server(options); // API on 127.0.0.1:8474
///     server.listen();
///     server.run(); // until server.stop() from another thread or a signal handler
template <class Policy = poll_policy>
class toxiproxy_server {
public:
    explicit toxiproxy_server(
        toxiproxy_options opts = toxiproxy_options(),
        std::function<Policy()> make_policy = [] { return Policy(); })
        : proxies_(opts.proxies, opts.seed, std::move(make_policy)), api_(proxies_),
          http_(opts.http, [this](const http_request& request) { return api_.handle(request); }) {}

    /// Binds the API's address (port 0 picks one). Throws std::system_error naming it.
    void listen() { http_.listen(); }
    endpoint local_endpoint() const noexcept { return http_.local_endpoint(); }
    /// Serves the API until stop(); then deletes every proxy (closing their connections).
    void run() {
        http_.run();
        proxies_.with_lock([](proxy_collection<Policy>& all) { all.clear(); });
    }
    /// Thread-safe and async-signal-safe.
    void stop() noexcept { http_.stop(); }

    /// Loads a Toxiproxy config file's text (a JSON array, as POST /populate takes). Throws
    /// api_error saying what is wrong.
    void populate(std::string_view json_text) {
        json_value made;
        (void)api_.populate(parse_body(json_text), made);
    }
    proxy_collection<Policy>& proxies() noexcept { return proxies_; }
    toxiproxy_api<Policy>& api() noexcept { return api_; }

private:
    proxy_collection<Policy> proxies_;
    toxiproxy_api<Policy> api_;
    http_server http_;
};

// ---------------------------------------------------------------------------------------------

namespace detail {

inline http_response json_response(int status, const json_value& body) {
    http_response response;
    response.status = status;
    response.body = body.dump();
    return response;
}

inline http_response no_content() {
    http_response response;
    response.status = 204;
    return response;
}

inline int hex_digit(char c) noexcept {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/// A path's segments, each percent-decoded ("/proxies/my%20db" -> {"proxies", "my db"}); an
/// empty segment (a trailing slash) is kept, so "/proxies/" matches no route.
inline std::vector<std::string> path_segments(std::string_view path) {
    std::vector<std::string> segments;
    if (path.empty() || path.front() != '/') {
        return segments;
    }
    path.remove_prefix(1);
    for (;;) {
        const std::size_t slash = path.find('/');
        const std::string_view raw = path.substr(0, slash);
        std::string segment;
        for (std::size_t i = 0; i < raw.size(); ++i) {
            const int high = raw[i] == '%' && i + 2 < raw.size() ? hex_digit(raw[i + 1]) : -1;
            const int low = high >= 0 ? hex_digit(raw[i + 2]) : -1;
            if (low >= 0) {
                segment += static_cast<char>(high * 16 + low);
                i += 2;
            } else {
                segment += raw[i];
            }
        }
        segments.push_back(std::move(segment));
        if (slash == std::string_view::npos) {
            return segments;
        }
        path.remove_prefix(slash + 1);
    }
}

/// The proxy the body of a create names: name and upstream required, as Toxiproxy says.
inline proxy_spec new_proxy_spec(const proxy_fields& fields, const std::string& where) {
    if (!fields.name || fields.name->empty()) {
        throw api_error(400, "missing required field: name" + where);
    }
    if (!fields.upstream || fields.upstream->empty()) {
        throw api_error(400, "missing required field: upstream" + where);
    }
    proxy_spec spec{*fields.name, fields.listen.value_or(""), *fields.upstream,
                    fields.enabled.value_or(true)};
    try {
        (void)listen_address(spec.listen);
        (void)upstream_address(spec.upstream);
    } catch (const std::invalid_argument& e) {
        throw api_error(400, std::string("bad request body: ") + e.what() + where);
    }
    return spec;
}

/// A request id: `number` as 16 hex digits (Toxiproxy's are xids; clients only pass them on).
inline std::string request_id(std::uint64_t number) {
    std::string id(16, '0');
    for (std::size_t i = id.size(); i-- > 0; number >>= 4) {
        id[i] = "0123456789abcdef"[number & 0xF];
    }
    return id;
}

} // namespace detail

template <class Policy>
http_response toxiproxy_api<Policy>::handle(const http_request& request) {
    http_response response = answer(request);
    const std::uint64_t number = requests_.fetch_add(1, std::memory_order_relaxed) + 1;
    response.headers.push_back({"X-Toxiproxy-Request-Id", detail::request_id(number)});
    return response;
}

template <class Policy>
http_response toxiproxy_api<Policy>::answer(const http_request& request) {
    try {
        return route(request, detail::path_segments(request.path()));
    } catch (const api_error& e) {
        return detail::json_response(e.status, api_error_body(e.status, e.what()));
    } catch (const std::system_error& e) { // a listener that could not be opened
        return detail::json_response(500, api_error_body(500, e.what()));
    } catch (const std::invalid_argument& e) {
        return detail::json_response(400, api_error_body(400, e.what()));
    }
}

template <class Policy>
http_response toxiproxy_api<Policy>::route(const http_request& request,
                                           const std::vector<std::string>& path) {
    const std::string& method = request.method;
    const bool get = method == "GET";
    const bool post = method == "POST";
    const bool change = post || method == "PATCH"; // updates take both, as Toxiproxy's do
    const bool del = method == "DELETE";
    const std::size_t n = path.size();
    bool known = true; // the path is one of the API's, whatever the method
    if (n == 1 && path[0] == "version") {
        if (get) {
            json_value body = json_value::object();
            body.set("version", std::string(toxiproxy_api_version));
            return detail::json_response(200, body);
        }
    } else if (n == 1 && path[0] == "metrics") {
        if (get) {
            http_response response;
            response.content_type = std::string(prometheus_text::content_type);
            response.body = metrics();
            return response;
        }
    } else if (n == 1 && path[0] == "reset") {
        if (post) {
            return reset();
        }
    } else if (n == 1 && path[0] == "populate") {
        if (post) {
            return populate_request(request);
        }
    } else if (n == 1 && path[0] == "proxies") {
        if (get) {
            return proxy_index();
        }
        if (post) {
            return proxy_create(request);
        }
    } else if (n == 2 && path[0] == "proxies") {
        if (get) {
            return proxy_show(path[1]);
        }
        if (change) {
            return proxy_update(path[1], request);
        }
        if (del) {
            return proxy_delete(path[1]);
        }
    } else if (n == 3 && path[0] == "proxies" && path[2] == "toxics") {
        if (get) {
            return toxic_index(path[1]);
        }
        if (post) {
            return toxic_create(path[1], request);
        }
    } else if (n == 4 && path[0] == "proxies" && path[2] == "toxics") {
        if (get) {
            return toxic_show(path[1], path[3]);
        }
        if (change) {
            return toxic_update(path[1], path[3], request);
        }
        if (del) {
            return toxic_delete(path[1], path[3]);
        }
    } else {
        known = false;
    }
    if (known) {
        throw api_error(405, "method not allowed");
    }
    throw api_error(404, "not found");
}

template <class Policy>
managed_proxy<Policy>& toxiproxy_api<Policy>::existing(proxy_collection<Policy>& all,
                                                       const std::string& name) {
    proxy_type* proxy = all.find(name);
    if (proxy == nullptr) {
        throw api_error(404, "proxy not found");
    }
    return *proxy;
}

template <class Policy>
json_value toxiproxy_api<Policy>::toxics_json(const toxic_set& toxics) {
    // Toxiproxy lists the upstream chain first, then the downstream one, each in its order.
    json_value list = json_value::array();
    const std::vector<toxic> all = toxics.list();
    for (direction stream : {direction::to_upstream, direction::to_client}) {
        for (const toxic& fault : all) {
            if (fault.stream == stream) {
                list.push_back(toxic_to_json(fault));
            }
        }
    }
    return list;
}

template <class Policy>
json_value toxiproxy_api<Policy>::proxy_json(const proxy_type& proxy) {
    const proxy_spec& spec = proxy.spec();
    json_value out = json_value::object();
    out.set("name", spec.name);
    out.set("listen", spec.listen);
    out.set("upstream", spec.upstream);
    out.set("enabled", spec.enabled);
    out.set("toxics", toxics_json(proxy.toxics()));
    return out;
}

template <class Policy>
void toxiproxy_api<Policy>::start_or_throw(proxy_type& proxy) {
    try {
        proxy.start();
    } catch (const std::system_error& e) {
        throw api_error(500, e.what());
    }
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_index() {
    return proxies_.with_lock([](proxy_collection<Policy>& all) {
        json_value out = json_value::object();
        for (const auto& named : all.all()) {
            out.set(named.first, proxy_json(*named.second));
        }
        return detail::json_response(200, out);
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_create(const http_request& request) {
    const proxy_spec spec =
        detail::new_proxy_spec(proxy_fields_from_json(parse_body(request.body)), "");
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        if (all.find(spec.name) != nullptr) {
            throw api_error(409, "proxy already exists");
        }
        try {
            return detail::json_response(201, proxy_json(all.add(spec)));
        } catch (const std::system_error& e) {
            throw api_error(500, e.what());
        }
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_show(const std::string& name) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        return detail::json_response(200, proxy_json(existing(all, name)));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_update(const std::string& name,
                                                  const http_request& request) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        proxy_type& proxy = existing(all, name);
        const proxy_fields fields = proxy_fields_from_json(parse_body(request.body));
        const proxy_spec current = proxy.spec();
        const std::string listen = fields.listen.value_or(current.listen);
        const std::string upstream = fields.upstream.value_or(current.upstream);
        const bool enabled = fields.enabled.value_or(current.enabled);
        std::string resolved;
        try {
            resolved = listen_address(listen).to_string();
            (void)upstream_address(upstream);
        } catch (const std::invalid_argument& e) {
            throw api_error(400, std::string("bad request body: ") + e.what());
        }
        // A new address restarts the proxy (its connections end), as Toxiproxy's does.
        if (resolved != current.listen || upstream != current.upstream) {
            proxy.stop();
            proxy.retarget(listen, upstream);
        }
        if (enabled && !proxy.running()) {
            start_or_throw(proxy);
        } else if (!enabled) {
            proxy.stop();
        }
        return detail::json_response(200, proxy_json(proxy));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::proxy_delete(const std::string& name) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        if (!all.remove(name)) {
            throw api_error(404, "proxy not found");
        }
        return detail::no_content();
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_index(const std::string& proxy) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        return detail::json_response(200, toxics_json(existing(all, proxy).toxics()));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_create(const std::string& proxy,
                                                  const http_request& request) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        toxic_set& toxics = existing(all, proxy).toxics();
        const toxic fault = toxic_from_json(parse_body(request.body));
        toxic same;
        if (toxics.find(name_of(fault), same)) {
            throw api_error(409, "toxic already exists");
        }
        toxics.add(fault);
        return detail::json_response(200, toxic_to_json(fault));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_show(const std::string& proxy, const std::string& name) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        toxic fault;
        if (!existing(all, proxy).toxics().find(name, fault)) {
            throw api_error(404, "toxic not found");
        }
        return detail::json_response(200, toxic_to_json(fault));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_update(const std::string& proxy, const std::string& name,
                                                  const http_request& request) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        toxic_set& toxics = existing(all, proxy).toxics();
        toxic current;
        if (!toxics.find(name, current)) {
            throw api_error(404, "toxic not found");
        }
        const toxic updated = toxic_updated(current, parse_body(request.body));
        toxics.update(name, updated);
        return detail::json_response(200, toxic_to_json(updated));
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::toxic_delete(const std::string& proxy,
                                                  const std::string& name) {
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        if (!existing(all, proxy).toxics().remove(name)) {
            throw api_error(404, "toxic not found");
        }
        return detail::no_content();
    });
}

template <class Policy>
json_value toxiproxy_api<Policy>::populate(const json_value& list, json_value& made) {
    made = json_value::array();
    if (!list.is_array()) {
        detail::bad_body("expected an array of proxies");
    }
    // Every entry is checked before any proxy is made or changed.
    std::vector<proxy_spec> specs;
    for (std::size_t i = 0; i < list.items().size(); ++i) {
        const std::string where = " at proxy " + std::to_string(i + 1);
        specs.push_back(detail::new_proxy_spec(proxy_fields_from_json(list.items()[i]), where));
    }
    return proxies_.with_lock([&](proxy_collection<Policy>& all) {
        for (const proxy_spec& spec : specs) {
            proxy_type* now = all.find(spec.name);
            const bool same = now != nullptr &&
                              listen_address(spec.listen).to_string() == now->spec().listen &&
                              spec.upstream == now->spec().upstream;
            if (!same) { // an identical one is kept as it is, toxics, connections and all
                try {
                    now = &all.replace(spec);
                } catch (const std::system_error& e) {
                    throw api_error(500, e.what());
                }
            }
            made.push_back(proxy_json(*now));
        }
        return made;
    });
}

template <class Policy>
http_response toxiproxy_api<Policy>::populate_request(const http_request& request) {
    json_value made = json_value::array();
    json_value body = json_value::object();
    try {
        populate(parse_body(request.body), made);
    } catch (const api_error& e) {
        body.set("error", std::string(e.what()));
        body.set("status", e.status);
        body.set("proxies", std::move(made));
        return detail::json_response(e.status, body);
    }
    body.set("proxies", std::move(made));
    return detail::json_response(201, body);
}

template <class Policy>
http_response toxiproxy_api<Policy>::reset() {
    return proxies_.with_lock([](proxy_collection<Policy>& all) {
        for (const auto& named : all.all()) {
            start_or_throw(*named.second);
            named.second->toxics().clear();
        }
        return detail::no_content();
    });
}

template <class Policy>
std::string toxiproxy_api<Policy>::metrics() {
    return proxies_.with_lock([](proxy_collection<Policy>& all) {
        prometheus_text out;
        const auto each = [&](auto&& sample) {
            for (const auto& named : all.all()) {
                sample(named.first, *named.second);
            }
        };
        out.family("tinyproxy_proxy_enabled", "gauge",
                   "1 while the proxy listens, 0 when disabled.");
        each([&](const std::string& name, const proxy_type& p) {
            out.sample("tinyproxy_proxy_enabled", {{"proxy", name}}, p.running() ? 1 : 0);
        });
        out.family("tinyproxy_proxy_bytes_total", "counter",
                   "Bytes relayed, counted as they move; upstream: client to server.");
        each([&](const std::string& name, const proxy_type& p) {
            const traffic_counters& t = *p.counters().traffic;
            out.sample("tinyproxy_proxy_bytes_total", {{"proxy", name}, {"direction", "upstream"}},
                       t.to_upstream.load(std::memory_order_relaxed));
            out.sample("tinyproxy_proxy_bytes_total",
                       {{"proxy", name}, {"direction", "downstream"}},
                       t.to_client.load(std::memory_order_relaxed));
        });
        // Read once per proxy, so that accepted, active and closed agree within the scrape.
        std::map<std::string_view, connection_counts> connections;
        each([&](const std::string& name, const proxy_type& p) {
            connections[name] = p.counters().connections();
        });
        out.family("tinyproxy_proxy_connections_accepted_total", "counter",
                   "Client connections accepted and served.");
        each([&](const std::string& name, const proxy_type&) {
            out.sample("tinyproxy_proxy_connections_accepted_total", {{"proxy", name}},
                       connections[name].accepted);
        });
        out.family("tinyproxy_proxy_connections_active", "gauge", "Connections open now.");
        each([&](const std::string& name, const proxy_type&) {
            out.sample("tinyproxy_proxy_connections_active", {{"proxy", name}},
                       connections[name].active);
        });
        out.family("tinyproxy_proxy_connections_closed_total", "counter",
                   "Connections ended, by how they ended.");
        each([&](const std::string& name, const proxy_type&) {
            for (std::size_t r = 0; r < close_reason_count; ++r) {
                const std::string_view reason = close_reason_name(static_cast<close_reason>(r));
                out.sample("tinyproxy_proxy_connections_closed_total",
                           {{"proxy", name}, {"reason", reason}}, connections[name].closed[r]);
            }
        });
        out.family("tinyproxy_proxy_connections_rejected_total", "counter",
                   "Clients closed at once: past --max-connections or outside --allow.");
        each([&](const std::string& name, const proxy_type& p) {
            out.sample("tinyproxy_proxy_connections_rejected_total", {{"proxy", name}},
                       p.counters().rejected.load(std::memory_order_relaxed));
        });
        out.family("tinyproxy_proxy_toxics_applied_total", "counter",
                   "Times a toxic applied to a connection (its toxicity roll said so), by type.");
        each([&](const std::string& name, const proxy_type& p) {
            for (std::size_t t = 0; t < toxic_type_count; ++t) {
                const auto type = static_cast<toxic_type>(t);
                out.sample("tinyproxy_proxy_toxics_applied_total",
                           {{"proxy", name}, {"type", type_name(type)}}, p.toxics().applied(type));
            }
        });
        out.family("tinyproxy_proxy_toxics", "gauge", "Toxics the proxy has now.");
        each([&](const std::string& name, const proxy_type& p) {
            out.sample("tinyproxy_proxy_toxics", {{"proxy", name}}, p.toxics().list().size());
        });
        return out.text();
    });
}

} // namespace tinyproxy
