// SPDX-License-Identifier: MIT
// The Toxiproxy API's answers, asked directly (toxiproxy_api::handle, no HTTP in between):
// routes, bodies and codes as Toxiproxy 2.12 gives them, populate's all-or-nothing check, a
// proxy restarted by a new address, and the metrics' names. The HTTP side and Toxiproxy's own
// clients are tested from outside (tests/api/).
#include <doctest/doctest.h>

#include <ostream>      // doctest prints a std::error_code with it
#include <string>       // bodies
#include <system_error> // std::error_code

#include <tinyproxy/tinyproxy.hpp>

#include "support/loopback.hpp"

using namespace tptest;

namespace {

using api_type = tinyproxy::toxiproxy_api<tinyproxy::poll_policy>;

struct api_rig {
    tinyproxy::proxy_collection<tinyproxy::poll_policy> proxies;
    api_type api{proxies};

    tinyproxy::http_response call(const std::string& method, const std::string& target,
                                  const std::string& body = "") {
        tinyproxy::http_request request;
        request.method = method;
        request.target = target;
        request.body = body;
        return api.handle(request);
    }
    /// The JSON of a response's body (it must be JSON).
    tinyproxy::json_value json(const tinyproxy::http_response& response) {
        std::string error;
        auto parsed = tinyproxy::parse_json(response.body, error);
        REQUIRE_MESSAGE(parsed.has_value(), error << " in " << response.body);
        return *parsed;
    }
    std::string text(const tinyproxy::http_response& response, const char* key) {
        const tinyproxy::json_value value = json(response); // find() points into it
        const tinyproxy::json_value* found = value.find(key);
        return found != nullptr ? found->text() : std::string("<none>");
    }
};

} // namespace

TEST_SUITE_BEGIN("toxiproxy api");

TEST_CASE("toxiproxy api: a proxy is created (201, the real port), shown, listed, and "
          "refused twice (409); a missing name or upstream is a 400 naming it") {
    upstream echo_server(echo);
    api_rig rig;
    const std::string body = R"({"name":"db","listen":"127.0.0.1:0","upstream":")" +
                             echo_server.where().to_string() + R"("})";
    auto created = rig.call("POST", "/proxies", body);
    REQUIRE(created.status == 201);
    const std::string listen = rig.text(created, "listen");
    CHECK(listen.rfind("127.0.0.1:", 0) == 0);
    CHECK(listen != "127.0.0.1:0");
    CHECK(rig.json(created).find("enabled")->as_bool());
    CHECK(rig.json(created).find("toxics")->is_array());

    // It forwards.
    auto client = connect_to(tinyproxy::parse_endpoint(listen));
    REQUIRE(client);
    REQUIRE(send_all(client, as_vector("hello")));
    bytes five(5);
    REQUIRE(::recv(client.native_handle(), five.data(), 5, MSG_WAITALL) == 5);
    CHECK(five == as_vector("hello"));

    CHECK(rig.call("GET", "/proxies/db").status == 200);
    CHECK(rig.json(rig.call("GET", "/proxies")).find("db") != nullptr);
    auto again = rig.call("POST", "/proxies", body);
    CHECK(again.status == 409);
    CHECK(rig.text(again, "error") == "proxy already exists");
    CHECK(rig.json(again).find("status")->text() == "409");
    auto no_name = rig.call("POST", "/proxies", R"({"upstream":"localhost:1"})");
    CHECK(no_name.status == 400);
    CHECK(rig.text(no_name, "error") == "missing required field: name");
    auto no_upstream = rig.call("POST", "/proxies", R"({"name":"x"})");
    CHECK(no_upstream.status == 400);
    CHECK(rig.text(no_upstream, "error") == "missing required field: upstream");
    CHECK(rig.call("POST", "/proxies", "{not json").status == 400);
    CHECK(rig.call("POST", "/proxies", R"({"name":7,"upstream":"a:1"})").status == 400);
    CHECK(rig.call("GET", "/proxies/nope").status == 404);
    CHECK(rig.text(rig.call("GET", "/proxies/nope"), "error") == "proxy not found");
    CHECK(rig.call("DELETE", "/proxies/db").status == 204);
    CHECK(rig.call("DELETE", "/proxies/db").status == 404);
    // Deleted: its port is closed.
    std::error_code ec;
    auto refused = connect_to(tinyproxy::parse_endpoint(listen), ec);
    CHECK(ec);
}

TEST_CASE("toxiproxy api: toxics are created with Toxiproxy's defaults, echoed with every "
          "attribute, merged on update, listed upstream first, and deleted (204)") {
    api_rig rig;
    REQUIRE(rig.call("POST", "/proxies",
                     R"({"name":"p","listen":"127.0.0.1:0","upstream":"localhost:9"})")
                .status == 201);
    auto made =
        rig.call("POST", "/proxies/p/toxics", R"({"type":"latency","attributes":{"latency":100}})");
    REQUIRE(made.status == 200);
    CHECK(made.body == R"({"attributes":{"latency":100,"jitter":0},"name":"latency_downstream",)"
                       R"("type":"latency","stream":"downstream","toxicity":1})");
    CHECK(rig.call("POST", "/proxies/p/toxics", R"({"type":"latency"})").status == 409);
    auto up = rig.call("POST", "/proxies/p/toxics",
                       R"({"name":"cut","type":"limit_data","stream":"upstream",)"
                       R"("toxicity":0.5,"attributes":{"bytes":10}})");
    REQUIRE(up.status == 200);
    auto list = rig.json(rig.call("GET", "/proxies/p/toxics"));
    REQUIRE(list.items().size() == 2);
    CHECK(list.items()[0].find("name")->text() == "cut"); // the upstream chain comes first
    CHECK(list.items()[1].find("name")->text() == "latency_downstream");

    auto updated = rig.call("PATCH", "/proxies/p/toxics/latency_downstream",
                            R"({"attributes":{"jitter":7},"toxicity":0.25,"type":"timeout"})");
    REQUIRE(updated.status == 200);
    CHECK(updated.body == R"({"attributes":{"latency":100,"jitter":7},"name":"latency_downstream",)"
                          R"("type":"latency","stream":"downstream","toxicity":0.25})");
    CHECK(rig.call("POST", "/proxies/p/toxics/nope", "{}").status == 404);
    CHECK(rig.call("GET", "/proxies/p/toxics/nope").status == 404);
    CHECK(rig.text(rig.call("GET", "/proxies/p/toxics/nope"), "error") == "toxic not found");

    auto bad_type = rig.call("POST", "/proxies/p/toxics", R"({"type":"bogus"})");
    CHECK(bad_type.status == 400);
    CHECK(rig.text(bad_type, "error") == "invalid toxic type");
    auto bad_stream = rig.call("POST", "/proxies/p/toxics", R"({"type":"latency","stream":"x"})");
    CHECK(bad_stream.status == 400);
    CHECK(rig.text(bad_stream, "error") ==
          "stream was invalid, can be either upstream or downstream");
    CHECK(rig.call("POST", "/proxies/p/toxics",
                   R"({"type":"bandwidth","name":"b","attributes":{"rate":"fast"}})")
              .status == 400);
    CHECK(rig.call("POST", "/proxies/nope/toxics", R"({"type":"latency"})").status == 404);

    CHECK(rig.call("DELETE", "/proxies/p/toxics/cut").status == 204);
    CHECK(rig.call("DELETE", "/proxies/p/toxics/cut").status == 404);
    CHECK(rig.json(rig.call("GET", "/proxies/p/toxics")).items().size() == 1);
}

TEST_CASE("toxiproxy api: populate checks every entry before it makes any, keeps an identical "
          "proxy as it is (toxics too), and answers [] rather than null") {
    api_rig rig;
    auto empty = rig.call("POST", "/populate", "[]");
    CHECK(empty.status == 201);
    CHECK(empty.body == R"({"proxies":[]})");
    auto half_bad = rig.call("POST", "/populate",
                             R"([{"name":"a","listen":"127.0.0.1:0","upstream":"localhost:9"},)"
                             R"({"name":"b","listen":"127.0.0.1:0"}])");
    CHECK(half_bad.status == 400);
    CHECK(rig.text(half_bad, "error") == "missing required field: upstream at proxy 2");
    CHECK(rig.json(rig.call("GET", "/proxies")).members().empty()); // "a" was not made

    auto made = rig.call("POST", "/populate",
                         R"([{"name":"a","listen":"127.0.0.1:0","upstream":"localhost:9"}])");
    REQUIRE(made.status == 201);
    const std::string listen = rig.json(made).find("proxies")->items()[0].find("listen")->text();
    REQUIRE(rig.call("POST", "/proxies/a/toxics", R"({"type":"timeout"})").status == 200);
    auto same = rig.call("POST", "/populate",
                         R"([{"name":"a","listen":")" + listen + R"(","upstream":"localhost:9"}])");
    REQUIRE(same.status == 201);
    CHECK(rig.json(rig.call("GET", "/proxies/a/toxics")).items().size() == 1); // kept
    auto changed =
        rig.call("POST", "/populate",
                 R"([{"name":"a","listen":")" + listen + R"(","upstream":"localhost:8"}])");
    REQUIRE(changed.status == 201);
    CHECK(rig.json(rig.call("GET", "/proxies/a/toxics")).items().empty()); // a new proxy
    CHECK(rig.call("POST", "/populate", R"({"name":"a"})").status == 400);
}

TEST_CASE("toxiproxy api: enabled:false closes the listener and its live connections; a new "
          "upstream restarts it; reset re-enables every proxy and removes every toxic") {
    upstream echo_server(echo);
    api_rig rig;
    auto created = rig.call("POST", "/proxies",
                            R"({"name":"p","listen":"127.0.0.1:0","upstream":")" +
                                echo_server.where().to_string() + R"("})");
    REQUIRE(created.status == 201);
    const auto where = tinyproxy::parse_endpoint(rig.text(created, "listen"));
    auto client = connect_to(where);
    REQUIRE(client);
    REQUIRE(send_all(client, as_vector("x")));
    bytes one(1);
    REQUIRE(::recv(client.native_handle(), one.data(), 1, MSG_WAITALL) == 1);
    REQUIRE(rig.call("POST", "/proxies/p/toxics", R"({"type":"latency"})").status == 200);

    auto disabled = rig.call("PATCH", "/proxies/p", R"({"enabled":false})");
    REQUIRE(disabled.status == 200);
    CHECK_FALSE(rig.json(disabled).find("enabled")->as_bool());
    bool clean = false;
    (void)read_to_end(client, &clean); // the live connection was closed
    std::error_code ec;
    (void)connect_to(where, ec);
    CHECK(ec); // and the listener

    CHECK(rig.call("POST", "/reset").status == 204);
    auto shown = rig.json(rig.call("GET", "/proxies/p"));
    CHECK(shown.find("enabled")->as_bool());
    CHECK(shown.find("toxics")->items().empty());
    CHECK(shown.find("listen")->text() == where.to_string()); // the same port again
    auto back = connect_to(where);
    CHECK(back);

    auto moved = rig.call("POST", "/proxies/p", R"({"listen":"127.0.0.1:0"})");
    REQUIRE(moved.status == 200);
    CHECK(rig.text(moved, "listen") != where.to_string());
    CHECK(rig.call("PATCH", "/proxies/p", R"({"upstream":"no port"})").status == 400);
}

TEST_CASE("toxiproxy api: /version, /metrics and the routes that are not there") {
    upstream echo_server(echo);
    api_rig rig;
    auto version = rig.call("GET", "/version");
    CHECK(version.status == 200);
    CHECK(rig.text(version, "version") == "2.12.0");
    CHECK(rig.call("GET", "/nowhere").status == 404);
    CHECK(rig.call("DELETE", "/version").status == 405);
    CHECK(rig.call("PUT", "/proxies").status == 405);
    CHECK(rig.call("GET", "/proxies/").status == 404);

    auto created = rig.call("POST", "/proxies",
                            R"({"name":"m\"x","listen":"127.0.0.1:0","upstream":")" +
                                echo_server.where().to_string() + R"("})");
    REQUIRE(created.status == 201);
    REQUIRE(rig.call("POST", "/proxies/m%22x/toxics",
                     R"({"type":"slicer","attributes":{"average_size":2}})")
                .status == 200);
    {
        auto client = connect_to(tinyproxy::parse_endpoint(rig.text(created, "listen")));
        REQUIRE(client);
        REQUIRE(send_all(client, as_vector("12345")));
        shutdown_write(client);
        bool clean = false;
        CHECK(read_to_end(client, &clean) == as_vector("12345"));
    }
    // The session's end is counted as its thread gets there: wait a bounded while.
    std::string text;
    const auto give_up = steady_clock::now() + 5s;
    do {
        text = rig.api.metrics();
    } while (text.find(R"(reason="clean"} 1)") == std::string::npos &&
             steady_clock::now() < give_up);
    auto metrics = rig.call("GET", "/metrics");
    CHECK(metrics.content_type.find("text/plain; version=0.0.4") == 0);
    CHECK(text.find("# TYPE tinyproxy_proxy_bytes_total counter") != std::string::npos);
    CHECK(text.find(R"(tinyproxy_proxy_bytes_total{proxy="m\"x",direction="upstream"} 5)") !=
          std::string::npos);
    CHECK(text.find(R"(tinyproxy_proxy_bytes_total{proxy="m\"x",direction="downstream"} 5)") !=
          std::string::npos);
    CHECK(text.find(R"(tinyproxy_proxy_connections_accepted_total{proxy="m\"x"} 1)") !=
          std::string::npos);
    CHECK(text.find(R"(tinyproxy_proxy_connections_closed_total{proxy="m\"x",reason="clean"} 1)") !=
          std::string::npos);
    CHECK(text.find(R"(tinyproxy_proxy_toxics_applied_total{proxy="m\"x",type="slicer"} 1)") !=
          std::string::npos);
    CHECK(text.find(R"(tinyproxy_proxy_connections_active{proxy="m\"x"} 0)") != std::string::npos);
}

TEST_CASE("toxiproxy api: a noop toxic is taken and passes every byte, and every answer carries "
          "its own X-Toxiproxy-Request-Id, errors too") {
    upstream echo_server(echo);
    api_rig rig;
    auto created = rig.call("POST", "/proxies",
                            R"({"name":"n","listen":"127.0.0.1:0","upstream":")" +
                                echo_server.where().to_string() + R"("})");
    REQUIRE(created.status == 201);
    auto noop = rig.call("POST", "/proxies/n/toxics", R"({"type":"noop"})");
    REQUIRE(noop.status == 200);
    CHECK(rig.text(noop, "name") == "noop_downstream");
    CHECK(rig.json(noop).find("attributes")->members().empty());

    auto client = connect_to(tinyproxy::parse_endpoint(rig.text(created, "listen")));
    REQUIRE(client);
    REQUIRE(send_all(client, as_vector("through noop")));
    shutdown_write(client);
    CHECK(read_to_end(client) == as_vector("through noop"));

    auto id_of = [](const tinyproxy::http_response& response) {
        for (const auto& field : response.headers) {
            if (field.name == "X-Toxiproxy-Request-Id") {
                return field.value;
            }
        }
        return std::string();
    };
    auto missing = rig.call("GET", "/proxies/absent");
    CHECK(missing.status == 404);
    CHECK_FALSE(id_of(created).empty());
    CHECK_FALSE(id_of(missing).empty());
    CHECK(id_of(created) != id_of(noop));
    CHECK(id_of(noop) != id_of(missing));
}

TEST_SUITE_END();
