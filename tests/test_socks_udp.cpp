// Unit tests for protocol/socks_udp.hpp: the SOCKS5 UDP request header, parsed and encoded byte
// by byte; every truncation and every malformed field refused; no sockets.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <random>       // garbage
#include <string>       // names
#include <system_error> // error codes
#include <vector>       // datagrams

#include <tinyproxy/tinyproxy.hpp>

using tinyproxy::byte_view;
using tinyproxy::endpoint;
using tinyproxy::errc;
using tinyproxy::host_port;
using tinyproxy::ip_address;
using tinyproxy::socks_udp_datagram;

namespace {

using bytes = std::vector<std::uint8_t>;

bytes cat(const bytes& a, const bytes& b) {
    bytes out = a;
    out.insert(out.end(), b.begin(), b.end());
    return out;
}

std::error_code parse(const bytes& datagram, socks_udp_datagram& out) {
    return tinyproxy::parse_socks_udp(byte_view{datagram.data(), datagram.size()}, out);
}

bytes data_of(const socks_udp_datagram& d) { return bytes(d.data.begin(), d.data.end()); }

const bytes payload = {'p', 'i', 'n', 'g', 0x00, 0xFF};
const bytes header_v4 = {0, 0, 0, 1, 192, 0, 2, 1, 0x00, 0x35};
const bytes header_v6 = {0, 0, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0,    0,
                         0, 0, 0, 0, 0,    0,    0,    0,    1, 0x1F, 0x90};
const bytes header_name = {0, 0, 0, 3, 9, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0x30, 0x39};

/// Every proper prefix of a header (and the header with data cut off at each point) is short.
void check_every_truncation(const bytes& header) {
    for (std::size_t length = 0; length < header.size(); ++length) {
        INFO("prefix of " << length << " bytes");
        socks_udp_datagram d;
        bytes prefix(header.begin(), header.begin() + static_cast<long>(length));
        CHECK(parse(prefix, d) == errc::protocol_error);
    }
}

} // namespace

TEST_SUITE_BEGIN("socks_udp");

TEST_CASE("socks udp header: IPv4, IPv6 and a name parse, with the data after them intact") {
    socks_udp_datagram d; // its data is a view: each datagram outlives the checks
    const bytes v4 = cat(header_v4, payload);
    const bytes v6 = cat(header_v6, payload);
    const bytes name = cat(header_name, payload);
    REQUIRE(!parse(v4, d));
    CHECK(d.fragment == 0);
    CHECK(d.address.host == "192.0.2.1");
    CHECK(d.address.port == 53);
    CHECK(data_of(d) == payload);

    REQUIRE(!parse(v6, d));
    CHECK(d.address.host == "2001:db8::1");
    CHECK(d.address.port == 8080);
    CHECK(data_of(d) == payload);

    REQUIRE(!parse(name, d));
    CHECK(d.address.host == "localhost");
    CHECK(d.address.port == 12345);
    CHECK(data_of(d) == payload);

    SUBCASE("empty data is a datagram too") {
        REQUIRE(!parse(header_v4, d));
        CHECK(d.data.empty());
    }
    SUBCASE("FRAG is read, not judged") {
        bytes fragment = cat(header_v4, payload);
        fragment[2] = 0x81;
        REQUIRE(!parse(fragment, d));
        CHECK(d.fragment == 0x81);
    }
}

TEST_CASE("socks udp header: every truncation of a header is refused") {
    check_every_truncation(header_v4);
    check_every_truncation(header_v6);
    check_every_truncation(header_name);
}

TEST_CASE("socks udp header: malformed fields are refused") {
    socks_udp_datagram d;
    SUBCASE("RSV not 0, either byte") {
        for (std::size_t at : {std::size_t{0}, std::size_t{1}}) {
            bytes bad = cat(header_v4, payload);
            bad[at] = 1;
            CHECK(parse(bad, d) == errc::protocol_error);
        }
    }
    SUBCASE("an unknown ATYP") {
        for (std::uint8_t atyp : bytes{0, 2, 5, 0xFF}) {
            INFO("ATYP " << int(atyp));
            bytes bad = cat(header_v4, payload);
            bad[3] = atyp;
            CHECK(parse(bad, d) == errc::unsupported_address_type);
        }
    }
    SUBCASE("port 0") {
        bytes bad = header_v4;
        bad[8] = 0;
        bad[9] = 0;
        CHECK(parse(bad, d) == errc::invalid_address);
    }
    SUBCASE("a name that is empty, or holds a NUL or a control character") {
        CHECK(parse({0, 0, 0, 3, 0, 0x00, 0x35}, d) == errc::name_not_resolved);
        CHECK(parse({0, 0, 0, 3, 2, 'a', 0, 0x00, 0x35}, d) == errc::name_not_resolved);
        CHECK(parse({0, 0, 0, 3, 2, 'a', '\n', 0x00, 0x35}, d) == errc::name_not_resolved);
        CHECK(parse({0, 0, 0, 3, 2, 'a', 0x7F, 0x00, 0x35}, d) == errc::name_not_resolved);
    }
    SUBCASE("a name longer than the datagram") {
        CHECK(parse({0, 0, 0, 3, 200, 'a', 'b', 0x00, 0x35}, d) == errc::protocol_error);
    }
}

TEST_CASE("socks udp header: written and encoded byte for byte, and read back") {
    SUBCASE("write_socks_udp_header names the remote in the room before its data") {
        endpoint from{ip_address::v4({192, 0, 2, 1}), 53};
        REQUIRE(tinyproxy::socks_udp_header_size(from) == 10);
        bytes out(10, 0xEE);
        tinyproxy::write_socks_udp_header(from, out.data());
        CHECK(out == header_v4);
        endpoint from6{*ip_address::parse("2001:db8::1"), 8080};
        REQUIRE(tinyproxy::socks_udp_header_size(from6) == 22);
        bytes out6(22, 0xEE);
        tinyproxy::write_socks_udp_header(from6, out6.data());
        CHECK(out6 == header_v6);
    }
    SUBCASE("encode_socks_udp: numeric hosts and names") {
        bytes out;
        CHECK(!tinyproxy::encode_socks_udp(host_port{"192.0.2.1", 53}, payload, out));
        CHECK(out == cat(header_v4, payload));
        out.clear();
        CHECK(!tinyproxy::encode_socks_udp(host_port{"2001:db8::1", 8080}, payload, out));
        CHECK(out == cat(header_v6, payload));
        out.clear();
        CHECK(!tinyproxy::encode_socks_udp(host_port{"localhost", 12345}, payload, out));
        CHECK(out == cat(header_name, payload));
        out.clear();
        CHECK(!tinyproxy::encode_socks_udp(host_port{"192.0.2.1", 53}, {}, out, 3));
        CHECK(out[2] == 3);
    }
    SUBCASE("a name past 255 bytes cannot be encoded") {
        bytes out;
        CHECK(tinyproxy::encode_socks_udp(host_port{std::string(256, 'a'), 53}, payload, out) ==
              errc::message_too_large);
        CHECK(!tinyproxy::encode_socks_udp(host_port{std::string(255, 'a'), 53}, payload, out));
        socks_udp_datagram d;
        REQUIRE(!parse(out, d));
        CHECK(d.address.host == std::string(255, 'a'));
        CHECK(data_of(d) == payload);
    }
}

TEST_CASE("socks udp header: random bytes never crash, and what parses encodes back the same") {
    std::mt19937 random(18);
    for (int round = 0; round < 20000; ++round) {
        bytes input(random() % 40);
        for (auto& b : input) {
            auto r = static_cast<std::uint32_t>(random());
            b = static_cast<std::uint8_t>(r % 3 == 0 ? r >> 8 : (r >> 8) % 6);
        }
        socks_udp_datagram d;
        if (parse(input, d)) {
            continue;
        }
        REQUIRE(d.data.size() <= input.size());
        REQUIRE(d.address.port != 0);
        bytes again;
        REQUIRE(!tinyproxy::encode_socks_udp(d.address, d.data, again, d.fragment));
        // A name that reads as a numeric address is written back as that address.
        if (input[3] != 3 || !d.address.numeric_address()) {
            CHECK(again == input);
        }
    }
}

TEST_SUITE_END();
