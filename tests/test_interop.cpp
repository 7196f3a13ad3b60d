// Interoperability with clients and servers we did not write, on loopback, for every policy:
// curl as a SOCKS4/4a/5 and HTTP CONNECT client (with and without credentials), haproxy and
// nginx as PROXY protocol peers on either side of the CLI, and the CLI's no-argument default.
// A test whose peer is not installed is skipped (tools/install-peers.sh installs them).
#include <doctest/doctest.h>

#include "support/interop_helpers.hpp"

#include <csignal>  // SIGTERM
#include <memory>   // an IPv6 server, when ::1 can be bound
#include <optional> // a line, or none
#include <string>   // arguments, output
#include <vector>   // arguments

namespace {

using namespace tptest;

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

/// An HTTP server on ::1, when IPv6 loopback can be bound; null otherwise.
std::unique_ptr<http_server> http_server_v6() {
    if (!tptest::ipv6_loopback_available()) {
        MESSAGE("::1 cannot be bound: the IPv6 targets are left out");
        return nullptr;
    }
    return std::make_unique<http_server>(
        tinyproxy::endpoint{tinyproxy::ip_address::loopback_v6(), 0}, "hello over IPv6\n");
}

/// curl's SOCKS5 (name resolved by the proxy, and by curl: IPv4 and IPv6 targets), SOCKS4a and
/// SOCKS4 through `--socks`; every body exact, every request seen by the server.
void check_socks_clients(const std::string& policy) {
    std::string cli = tptest::cli_program();
    if (cli.empty()) {
        return;
    }
    std::string curl = peer_program("curl");
    if (curl.empty()) {
        return;
    }
    http_server web(tptest::loopback(), "hello over IPv4\n");
    std::unique_ptr<http_server> web6 = http_server_v6();
    cli_proxy proxy(cli, {"--listen", "127.0.0.1:0", "--socks", "--policy", policy, "--verbose"});

    struct client_case {
        std::string option;
        std::string target;
        const http_server* server;
    };
    std::vector<client_case> cases = {
        {"--socks5-hostname", url("localhost", web.port()), &web},
        {"--socks5", url(web.local_endpoint()), &web},
        {"--socks4a", url("localhost", web.port()), &web},
        {"--socks4", url(web.local_endpoint()), &web},
    };
    if (web6) {
        cases.push_back({"--socks5", url(web6->local_endpoint()), web6.get()});
        cases.push_back({"--socks5-hostname", url(web6->local_endpoint()), web6.get()});
    }
    for (const client_case& c : cases) {
        CAPTURE(c.option);
        CAPTURE(c.target);
        std::size_t before = c.server->requests();
        curl_result r = run_curl(curl, {c.option, proxy.address(), c.target});
        CHECK_MESSAGE(r.exit_code == 0, "curl: " << r.err);
        CHECK(r.body == c.server->body());
        CHECK(r.http_code == "200");
        CHECK(c.server->requests() == before + 1);
    }
    std::string log = proxy.stop();
    // The host name went to the proxy, which resolved it (SOCKS5 domain and SOCKS4a).
    CHECK_MESSAGE(contains(log, " -> localhost:" + std::to_string(web.port()) + " ("), log);
}

/// `--user u:p`: curl's SOCKS5 username/password and HTTP Basic get through with the right
/// credentials; wrong ones (or none) fail in the handshake and the server sees no request.
void check_user(const std::string& policy) {
    std::string cli = tptest::cli_program();
    if (cli.empty()) {
        return;
    }
    std::string curl = peer_program("curl");
    if (curl.empty()) {
        return;
    }
    http_server web(tptest::loopback(), "hello over IPv4\n");
    const std::string target = url(web.local_endpoint());
    {
        cli_proxy socks(cli, {"--listen", "127.0.0.1:0", "--policy", policy, "--user", "u:p"});
        curl_result good = run_curl(curl, {"--socks5-hostname", socks.address(), "--proxy-user",
                                           "u:p", url("localhost", web.port())});
        CHECK_MESSAGE(good.exit_code == 0, "curl: " << good.err);
        CHECK(good.body == web.body());
        CHECK(web.requests() == 1);

        for (const char* credentials : {"u:wrong", "someone:p", ""}) {
            CAPTURE(credentials);
            std::vector<std::string> args{"--socks5-hostname", socks.address(), target};
            if (*credentials != '\0') {
                args.insert(args.begin(), {"--proxy-user", credentials});
            }
            curl_result bad = run_curl(curl, args);
            CHECK(bad.finished);
            CHECK_MESSAGE(bad.exit_code != 0, "curl got through: " << bad.body);
            CHECK(bad.body.empty());
        }
        CHECK(web.requests() == 1);
        CHECK(web.connections() == 1); // no connection upstream for a refused client
        socks.stop();
    }
    {
        cli_proxy http(cli, {"--listen", "127.0.0.1:0", "--http-connect", "--policy", policy,
                             "--user", "u:p"});
        curl_result good = run_curl(curl, {"-p", "-x", "http://u:p@" + http.address(), target});
        CHECK_MESSAGE(good.exit_code == 0, "curl: " << good.err);
        CHECK(good.http_connect == "200");
        CHECK(good.body == web.body());
        CHECK(web.requests() == 2);

        // The same credentials given with --proxy-user instead of in the URL.
        curl_result again =
            run_curl(curl, {"-p", "-x", "http://" + http.address(), "--proxy-user", "u:p", target});
        CHECK_MESSAGE(again.exit_code == 0, "curl: " << again.err);
        CHECK(again.http_connect == "200");
        CHECK(again.body == web.body());
        CHECK(web.requests() == 3);

        for (const std::string& proxy_url :
             {"http://u:wrong@" + http.address(), "http://nobody:p@" + http.address(),
              "http://" + http.address()}) {
            CAPTURE(proxy_url);
            curl_result bad = run_curl(curl, {"-p", "-x", proxy_url, target});
            CHECK(bad.finished);
            CHECK(bad.exit_code != 0);
            CHECK(bad.http_connect == "407");
            CHECK(bad.body.empty());
        }
        CHECK(web.requests() == 3);
        CHECK(web.connections() == 3);
        http.stop();
    }
}

/// `--http-connect` without `--user` (the README's command with port 0): curl -p -x to an IPv4
/// address, a name the proxy resolves, and an IPv6 address.
void check_http_connect(const std::string& policy) {
    std::string cli = tptest::cli_program();
    if (cli.empty()) {
        return;
    }
    std::string curl = peer_program("curl");
    if (curl.empty()) {
        return;
    }
    http_server web(tptest::loopback(), "hello over IPv4\n");
    std::unique_ptr<http_server> web6 = http_server_v6();
    cli_proxy proxy(cli, {"--http-connect", "--listen", "127.0.0.1:0", "--policy", policy});

    std::vector<std::pair<std::string, const http_server*>> cases = {
        {url(web.local_endpoint()), &web},
        {url("localhost", web.port()), &web},
    };
    if (web6) {
        cases.emplace_back(url(web6->local_endpoint()), web6.get());
    }
    for (const auto& each : cases) {
        const std::string& target = each.first;
        const http_server* server = each.second;
        CAPTURE(target);
        std::size_t before = server->requests();
        curl_result r = run_curl(curl, {"-p", "-x", "http://" + proxy.address(), target});
        CHECK_MESSAGE(r.exit_code == 0, "curl: " << r.err);
        CHECK(r.http_connect == "200");
        CHECK(r.http_code == "200");
        CHECK(r.body == server->body());
        CHECK(server->requests() == before + 1);
    }
    proxy.stop();
}

/// The haproxy config for a TCP frontend on `port` that sends every client on to `backend`
/// with a PROXY v2 header, connecting from `source`.
std::string haproxy_in_front(std::uint16_t port, const std::string& backend,
                             const std::string& source) {
    return "defaults\n"
           "    mode tcp\n"
           "    timeout connect 5s\n"
           "    timeout client 10s\n"
           "    timeout server 10s\n"
           "frontend in\n"
           "    bind 127.0.0.1:" +
           std::to_string(port) +
           "\n"
           "    default_backend ours\n"
           "backend ours\n"
           "    server s1 " +
           backend + " send-proxy-v2 source " + source + "\n";
}

/// haproxy (TCP mode, `send-proxy-v2`, connecting from 127.0.0.2) in front of our
/// `--forward --accept-proxy`: curl (from 127.0.0.3) gets the body through both. With
/// `check_log`, our --verbose line must name curl's address from the header, not haproxy's.
void check_haproxy_in_front(const std::string& policy, bool check_log) {
    std::string cli = tptest::cli_program();
    if (cli.empty()) {
        return;
    }
    std::string curl = peer_program("curl");
    std::string haproxy = curl.empty() ? std::string() : peer_program("haproxy");
    if (haproxy.empty()) {
        return;
    }
    // Three addresses tell the connections apart: curl -> haproxy from client_ip, haproxy -> us
    // from haproxy_ip. Without 127.0.0.2/3 the ports still do.
    const std::string client_ip = can_bind("127.0.0.3") ? "127.0.0.3" : "127.0.0.1";
    const std::string haproxy_ip = can_bind("127.0.0.2") ? "127.0.0.2" : "127.0.0.1";

    http_server web(tptest::loopback(), "hello over IPv4\n");
    cli_proxy proxy(cli, {"--listen", "127.0.0.1:0", "--forward", web.local_endpoint().to_string(),
                          "--accept-proxy", "--verbose", "--policy", policy});
    temp_dir dir;
    started_peer front = start_peer(haproxy, [&](std::uint16_t port) {
        std::string config =
            dir.write("haproxy.cfg", haproxy_in_front(port, proxy.address(), haproxy_ip));
        return std::vector<std::string>{"-f", config, "-db"};
    });

    std::size_t before = web.requests();
    curl_result r =
        run_curl(curl, {"--noproxy", "*", "--interface", client_ip, url(front.endpoint())});
    CHECK_MESSAGE(r.exit_code == 0, "curl: " << r.err);
    CHECK(r.body == web.body());
    CHECK(web.requests() == before + 1);
    CHECK(r.local_ip == client_ip);

    std::string log = proxy.stop();
    if (check_log) {
        CAPTURE(log);
        // "tinyproxy: CLIENT -> ...": the client the PROXY header named (curl's own address).
        CHECK(contains(log, "tinyproxy: " + r.local_endpoint() + " "));
        if (haproxy_ip != client_ip) {
            CHECK_FALSE(contains(log, "tinyproxy: " + haproxy_ip + ":"));
        }
    }
}

/// haproxy in HTTP mode with `accept-proxy`, answering every request with the client address
/// it took from the PROXY header.
std::string haproxy_accepting(std::uint16_t port) {
    return "defaults\n"
           "    mode http\n"
           "    timeout connect 5s\n"
           "    timeout client 10s\n"
           "    timeout server 10s\n"
           "frontend in\n"
           "    bind 127.0.0.1:" +
           std::to_string(port) +
           " accept-proxy\n"
           "    http-request return status 200 content-type text/plain lf-string "
           "\"%[src]:%[src_port]\"\n";
}

/// nginx, in the foreground as one process, with `listen ... proxy_protocol`, answering every
/// request with the client address from the PROXY header. Every path it writes is in `dir`.
std::string nginx_accepting(std::uint16_t port, const std::string& dir) {
    return "daemon off;\n"
           "master_process off;\n"
           "pid " +
           dir + "/nginx.pid;\n" +
           "error_log stderr warn;\n"
           "events { worker_connections 64; }\n"
           "http {\n"
           "    access_log off;\n"
           "    client_body_temp_path " +
           dir + "/body;\n    proxy_temp_path " + dir + "/proxy;\n    fastcgi_temp_path " + dir +
           "/fastcgi;\n    uwsgi_temp_path " + dir + "/uwsgi;\n    scgi_temp_path " + dir +
           "/scgi;\n"
           "    server {\n"
           "        listen 127.0.0.1:" +
           std::to_string(port) +
           " proxy_protocol;\n"
           "        default_type text/plain;\n"
           "        return 200 \"$proxy_protocol_addr:$proxy_protocol_port\";\n"
           "    }\n"
           "}\n";
}

/// Our `--forward --send-proxy v1|v2` in front of `peer`, which answers with the client address
/// its PROXY header parser found: curl, connecting from 127.0.0.3 (and from ::1 to a proxy
/// listening on IPv6), must get back its own address and port.
void check_send_proxy(const std::string& policy, const std::string& cli, const std::string& curl,
                      const started_peer& peer) {
    const std::string client_ip = can_bind("127.0.0.3") ? "127.0.0.3" : "127.0.0.1";
    std::vector<std::pair<std::string, std::string>> listens = {{"127.0.0.1:0", client_ip}};
    if (tptest::ipv6_loopback_available()) {
        listens.emplace_back("[::1]:0", "::1");
    }
    for (const char* version : {"v1", "v2"}) {
        for (const auto& each : listens) {
            const std::string& listen = each.first;  // where the proxy listens
            const std::string& source = each.second; // where curl connects from
            CAPTURE(version);
            CAPTURE(listen);
            cli_proxy proxy(cli, {"--listen", listen, "--forward", peer.endpoint().to_string(),
                                  "--send-proxy", version, "--policy", policy});
            curl_result r =
                run_curl(curl, {"--noproxy", "*", "--interface", source, url(proxy.where)});
            CHECK_MESSAGE(r.exit_code == 0, "curl: " << r.err);
            CHECK(r.http_code == "200");
            CHECK(r.local_ip == source);
            CHECK(r.body == r.local_ip + ":" + r.local_port);
            proxy.stop();
        }
    }
}

void check_send_proxy_to_haproxy(const std::string& policy) {
    std::string cli = tptest::cli_program();
    if (cli.empty()) {
        return;
    }
    std::string curl = peer_program("curl");
    std::string haproxy = curl.empty() ? std::string() : peer_program("haproxy");
    if (haproxy.empty()) {
        return;
    }
    temp_dir dir;
    started_peer peer = start_peer(haproxy, [&](std::uint16_t port) {
        std::string config = dir.write("haproxy.cfg", haproxy_accepting(port));
        return std::vector<std::string>{"-f", config, "-db"};
    });
    check_send_proxy(policy, cli, curl, peer);
}

void check_send_proxy_to_nginx(const std::string& policy) {
    std::string cli = tptest::cli_program();
    if (cli.empty()) {
        return;
    }
    std::string curl = peer_program("curl");
    std::string nginx = curl.empty() ? std::string() : peer_program("nginx");
    if (nginx.empty()) {
        return;
    }
    temp_dir dir;
    started_peer peer = start_peer(nginx, [&](std::uint16_t port) {
        std::string config = dir.write("nginx.conf", nginx_accepting(port, dir.path()));
        // -e: the log for start-up, before the config is read (its default may be unwritable).
        return std::vector<std::string>{"-e", "stderr", "-p", dir.path() + "/", "-c", config};
    });
    check_send_proxy(policy, cli, curl, peer);
}

} // namespace

TEST_SUITE_BEGIN("interop");

TEST_CASE("interop curl SOCKS5, SOCKS4a and SOCKS4 through --socks, thread policy") {
    check_socks_clients("thread");
}
TEST_CASE("interop curl SOCKS5, SOCKS4a and SOCKS4 through --socks, fork policy") {
    check_socks_clients("fork");
}
TEST_CASE("interop curl SOCKS5, SOCKS4a and SOCKS4 through --socks, poll policy") {
    check_socks_clients("poll");
}

TEST_CASE("interop curl --proxy-user against --user, SOCKS5 and HTTP CONNECT, thread policy") {
    check_user("thread");
}
TEST_CASE("interop curl --proxy-user against --user, SOCKS5 and HTTP CONNECT, fork policy") {
    check_user("fork");
}
TEST_CASE("interop curl --proxy-user against --user, SOCKS5 and HTTP CONNECT, poll policy") {
    check_user("poll");
}

TEST_CASE("interop curl -p -x through --http-connect, thread policy") {
    check_http_connect("thread");
}
TEST_CASE("interop curl -p -x through --http-connect, fork policy") { check_http_connect("fork"); }
TEST_CASE("interop curl -p -x through --http-connect, poll policy") { check_http_connect("poll"); }

TEST_CASE("interop haproxy send-proxy-v2 in front of --accept-proxy, thread policy") {
    check_haproxy_in_front("thread", false);
}
TEST_CASE("interop haproxy send-proxy-v2 in front of --accept-proxy, fork policy") {
    check_haproxy_in_front("fork", false);
}
TEST_CASE("interop haproxy send-proxy-v2 in front of --accept-proxy, poll policy") {
    check_haproxy_in_front("poll", false);
}

TEST_CASE("interop --accept-proxy behind haproxy logs the client the header names, thread policy") {
    check_haproxy_in_front("thread", true);
}
TEST_CASE("interop --accept-proxy behind haproxy logs the client the header names, fork policy") {
    check_haproxy_in_front("fork", true);
}
TEST_CASE("interop --accept-proxy behind haproxy logs the client the header names, poll policy") {
    check_haproxy_in_front("poll", true);
}

TEST_CASE("interop --send-proxy v1 and v2 in front of haproxy accept-proxy, thread policy") {
    check_send_proxy_to_haproxy("thread");
}
TEST_CASE("interop --send-proxy v1 and v2 in front of haproxy accept-proxy, fork policy") {
    check_send_proxy_to_haproxy("fork");
}
TEST_CASE("interop --send-proxy v1 and v2 in front of haproxy accept-proxy, poll policy") {
    check_send_proxy_to_haproxy("poll");
}

TEST_CASE("interop --send-proxy v1 and v2 in front of nginx proxy_protocol, thread policy") {
    check_send_proxy_to_nginx("thread");
}
TEST_CASE("interop --send-proxy v1 and v2 in front of nginx proxy_protocol, fork policy") {
    check_send_proxy_to_nginx("fork");
}
TEST_CASE("interop --send-proxy v1 and v2 in front of nginx proxy_protocol, poll policy") {
    check_send_proxy_to_nginx("poll");
}

// With no arguments the CLI is a SOCKS proxy on 127.0.0.1:1080. That port may be someone
// else's: then the CLI must exit 1 naming it (and whatever holds it is left alone).
TEST_CASE("interop no arguments: a SOCKS proxy on 127.0.0.1:1080, or exit 1 naming it if taken") {
    std::string cli = tptest::cli_program();
    if (cli.empty()) {
        return;
    }
    std::string curl = peer_program("curl");
    if (curl.empty()) {
        return;
    }
    http_server web(tptest::loopback(), "hello over IPv4\n");
    process proxy(cli, {});
    std::optional<std::string> line = proxy.read_line(after(tptest::startup_time));
    if (!line) {
        // It could not listen: the port is taken.
        REQUIRE_MESSAGE(proxy.wait(after(ms(5000))), "no listening line, and still running");
        proxy.read_to_end(after(ms(2000)));
        MESSAGE("127.0.0.1:1080 is taken: checked the exit instead");
        CHECK(proxy.exit_code() == 1);
        CHECK_MESSAGE(contains(proxy.stderr_text(), "127.0.0.1:1080"), proxy.stderr_text());
        CHECK(proxy.stdout_text().empty());
        return;
    }
    CHECK(*line == "listening on 127.0.0.1:1080");
    curl_result r =
        run_curl(curl, {"--socks5-hostname", "127.0.0.1:1080", url("localhost", web.port())});
    CHECK_MESSAGE(r.exit_code == 0, "curl: " << r.err);
    CHECK(r.body == web.body());
    CHECK(web.requests() == 1);
    tptest::expect_clean_exit(proxy, SIGTERM, ms(3000));
}

TEST_SUITE_END();
