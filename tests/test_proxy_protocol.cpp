// Unit tests for protocol/proxy_protocol.hpp: PROXY protocol v1/v2 encoding and the sans-I/O
// decoder, with no sockets. Every vector is fed whole, byte by byte and split at every position.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <array>        // address bytes
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // endpoints
#include <random>       // round trips
#include <string>       // inputs
#include <string_view>  // inputs
#include <system_error> // error codes
#include <utility>      // std::make_pair
#include <vector>       // byte buffers

#include <tinyproxy/tinyproxy.hpp>

#include "support/split_feed.hpp"

namespace {

using tinyproxy::endpoint;
using tinyproxy::errc;
using tinyproxy::ip_address;
using tinyproxy::proxy_protocol::decoder;
using status = tinyproxy::proxy_protocol::decoder::status;
using bytes = std::vector<std::uint8_t>;

std::string status_name(status s) {
    switch (s) {
    case status::need_more:
        return "need_more";
    case status::done:
        return "done";
    case status::invalid:
        return "invalid";
    }
    return "?";
}

bytes as_bytes(std::string_view text) { return bytes(text.begin(), text.end()); }

std::string as_string(const bytes& b) { return std::string(b.begin(), b.end()); }

endpoint ep(std::string_view text) { return tinyproxy::parse_endpoint(text); }

/// What a caller sees once the decoder stops needing more: the header, and every byte after it
/// (what take_rest() returned plus what was never fed).
struct outcome {
    std::string what;
    tinyproxy::proxy_protocol::header result;
    std::string rest;
    std::error_code error;
    std::size_t header_size = 0; // bytes the header took, once done
};

/// Feeds `input` cut at `cuts`, stopping at the first step that is not need_more. With
/// `feed_rest_after_done`, the bytes after that step are fed too (they become rest).
outcome drive(std::string_view input, const tptest::cuts& cuts, std::size_t max_length,
              bool feed_rest_after_done) {
    decoder d(max_length);
    status last = status::need_more;
    tinyproxy::byte_view stream{reinterpret_cast<const std::uint8_t*>(input.data()), input.size()};
    std::size_t end = tptest::feed_in_pieces(stream, cuts, [&](tinyproxy::byte_view piece) {
        last = d.feed(piece);
        CHECK(d.state() == last);
        if (last == status::need_more) {
            CHECK(!d.error());
            return false;
        }
        return true;
    });
    if (last == status::need_more) {
        return outcome{"need_more", {}, "", {}};
    }
    outcome out{status_name(last), d.result(), "", d.error()};
    if (last == status::done) {
        CHECK(!d.error());
        out.rest = as_string(d.take_rest());
        out.header_size = end - out.rest.size();
        if (feed_rest_after_done && end < input.size()) {
            CHECK(d.feed(input.substr(end, 1)) == status::done);
            CHECK(d.feed(input.substr(end + 1)) == status::done);
            out.rest += as_string(d.take_rest());
        } else {
            out.rest += std::string(input.substr(end));
        }
        CHECK(d.take_rest().empty());
        CHECK((d.result().version == 1 || d.result().version == 2));
    } else {
        CHECK(d.error());
        CHECK(d.result().version == 0);
        CHECK(d.feed(std::string_view("PROXY ")) == status::invalid);
        CHECK(d.take_rest().empty());
    }
    return out;
}

void check_same(const outcome& a, const outcome& b) {
    CHECK(a.what == b.what);
    CHECK(a.result.local == b.result.local);
    CHECK(a.result.version == b.result.version);
    CHECK(a.result.source == b.result.source);
    CHECK(a.result.destination == b.result.destination);
    CHECK(a.rest == b.rest);
    CHECK(a.error == b.error);
    CHECK(a.header_size == b.header_size);
}

/// Feeds `input` whole, byte by byte, split once at every position and twice around each, with
/// and without feeding what follows the header; all give the same outcome, which is returned.
outcome run(std::string_view input,
            std::size_t max_length = tinyproxy::proxy_protocol::default_max_v2_length) {
    outcome whole = drive(input, {}, max_length, false);
    std::size_t stride = input.size() > 2048 ? input.size() / 509 + 1 : 1;
    const std::vector<tptest::cuts> plans = tptest::split_plans(input.size(), stride, 5);
    for (std::size_t i = 0; i < plans.size(); ++i) {
        check_same(whole, drive(input, plans[i], max_length, true));
        if (i == 0 || plans[i].size() == 1) { // byte by byte, or cut once: the rest never fed too
            check_same(whole, drive(input, plans[i], max_length, false));
        }
    }
    return whole;
}

outcome run(const bytes& input,
            std::size_t max_length = tinyproxy::proxy_protocol::default_max_v2_length) {
    return run(std::string_view(reinterpret_cast<const char*>(input.data()), input.size()),
               max_length);
}

/// The v2 fixed part: signature, version/command, family, length.
bytes v2_head(std::uint8_t version_command, std::uint8_t family, std::uint16_t length) {
    bytes out(tinyproxy::proxy_protocol::v2_signature.begin(),
              tinyproxy::proxy_protocol::v2_signature.end());
    out.push_back(version_command);
    out.push_back(family);
    out.push_back(static_cast<std::uint8_t>(length >> 8));
    out.push_back(static_cast<std::uint8_t>(length & 0xFF));
    return out;
}

bytes concat(bytes a, const bytes& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

/// The spec's v1 example connection as a v2 TCP4 address block:
/// 192.168.0.1:56324 -> 192.168.0.11:443.
const bytes tcp4_block = {0xC0, 0xA8, 0x00, 0x01, 0xC0, 0xA8, 0x00, 0x0B, 0xDC, 0x04, 0x01, 0xBB};

/// [2001:db8::1]:49152 -> [2001:db8::2]:8443
const bytes tcp6_block = {0x20, 0x01, 0x0D, 0xB8, 0,    0,    0,    0,    0,    0,    0,    0,
                          0,    0,    0,    0x01, 0x20, 0x01, 0x0D, 0xB8, 0,    0,    0,    0,
                          0,    0,    0,    0,    0,    0,    0,    0x02, 0xC0, 0x00, 0x20, 0xFB};

void check_invalid(const outcome& out, errc why) {
    CHECK(out.what == "invalid");
    CHECK(out.error == why);
}

} // namespace

TEST_SUITE_BEGIN("proxy_protocol");

TEST_CASE("v1: the spec's example before an HTTP request") {
    const std::string request = "GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
    outcome out = run("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + request);
    CHECK(out.what == "done");
    CHECK(out.result.version == 1);
    CHECK(!out.result.local);
    CHECK(out.result.source == ep("192.168.0.1:56324"));
    CHECK(out.result.destination == ep("192.168.0.11:443"));
    CHECK(out.rest == request);
    CHECK(out.header_size == 47);
}

TEST_CASE("v1: the spec's longest lines") {
    outcome v4 = run("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n");
    CHECK(v4.what == "done");
    CHECK(v4.header_size == 56);
    CHECK(v4.result.source == ep("255.255.255.255:65535"));

    const std::string all_ones = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    std::string tcp6 = "PROXY TCP6 " + all_ones + " " + all_ones + " 65535 65535\r\n";
    REQUIRE(tcp6.size() == 104);
    outcome v6 = run(tcp6 + "x");
    CHECK(v6.what == "done");
    CHECK(v6.result.source == ep("[" + all_ones + "]:65535"));
    CHECK(v6.result.destination == ep("[" + all_ones + "]:65535"));
    CHECK(v6.rest == "x");

    outcome unknown = run("PROXY UNKNOWN\r\nrest");
    CHECK(unknown.what == "done");
    CHECK(unknown.result.local);
    CHECK(unknown.result.version == 1);
    CHECK(!unknown.result.source);
    CHECK(!unknown.result.destination);
    CHECK(unknown.header_size == 15);
    CHECK(unknown.rest == "rest");

    // The worst case: UNKNOWN with both optional addresses, 107 bytes; the rest is ignored.
    std::string worst = "PROXY UNKNOWN " + all_ones + " " + all_ones + " 65535 65535\r\n";
    REQUIRE(worst.size() == 107);
    outcome longest = run(worst + "after");
    CHECK(longest.what == "done");
    CHECK(longest.result.local);
    CHECK(longest.rest == "after");
    CHECK(run("PROXY UNKNOWN whatever the sender wants\r\n").result.local);
}

TEST_CASE("v1: addresses and ports") {
    outcome zeros = run("PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n");
    CHECK(zeros.what == "done");
    CHECK(zeros.result.source == ep("0.0.0.0:0"));
    outcome v6 = run("PROXY TCP6 2001:db8::1 ::1 49152 8443\r\n");
    CHECK(v6.result.source == ep("[2001:db8::1]:49152"));
    CHECK(v6.result.destination == ep("[::1]:8443"));
    outcome mapped = run("PROXY TCP6 ::ffff:192.0.2.1 ::FFFF:C000:0202 1 2\r\n");
    CHECK(mapped.what == "done");
    CHECK(mapped.result.source == ep("[::ffff:192.0.2.1]:1"));
    CHECK(mapped.result.destination == ep("[::ffff:192.0.2.2]:2"));
}

TEST_CASE("v1: malformed lines are invalid") {
    const std::string bad[] = {
        "PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n", // leading zero
        "PROXY TCP4 192.168.0.1 192.168.00.11 56324 443\r\n", // leading zero
        "PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n", // leading zero in a port
        "PROXY TCP4 192.168.0.1 192.168.0.11 56324 0443\r\n", // leading zero in a port
        "PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",  // port out of range
        "PROXY TCP4 192.168.0.1 192.168.0.11 99999 443\r\n",  // port out of range
        "PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",     // not a number
        "PROXY TCP4 192.168.0.1 192.168.0.11 +1 443\r\n",     // not a number
        "PROXY TCP4 256.168.0.1 192.168.0.11 56324 443\r\n",  // octet out of range
        "PROXY TCP4 192.168.0 192.168.0.11 56324 443\r\n",    // three octets
        "PROXY TCP4 1.2.3.4.5 192.168.0.11 56324 443\r\n",    // five octets
        "PROXY TCP4 1..3.4 192.168.0.11 56324 443\r\n",       // empty octet
        "PROXY TCP4 .1.2.3 192.168.0.11 56324 443\r\n",       // empty octet
        "PROXY TCP4 1.2.3.4. 192.168.0.11 56324 443\r\n",     // trailing dot
        "PROXY TCP4 0x7f.0.0.1 192.168.0.11 56324 443\r\n",   // hex
        "PROXY TCP4 ::1 ::1 1 2\r\n",                         // IPv6 with TCP4
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",                 // IPv4 with TCP6
        "PROXY TCP6 fe80::1%2 ::1 1 2\r\n",                   // zone id
        "PROXY TCP6 [::1] ::1 1 2\r\n",                       // brackets
        "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",           // too many groups
        "PROXY TCP6 ::1::2 ::1 1 2\r\n",                      // two "::"
        "PROXY TCP6 12345::1 ::1 1 2\r\n",                    // group of five digits
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",                 // unknown protocol
        "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",                 // case matters
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",                 // not in version 1
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",                // two spaces
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",                // trailing space
        " PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",                // leading space
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",                   // missing port
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",               // extra field
        "PROXY TCP4 1.2.3.4 5.6.7.8\r\n",                     // no ports
        "PROXY TCP4\r\n",                                     // nothing
        "PROXY \r\n",                                         // nothing at all
        "PROXY\r\n",                                          // no space
        "PROXY UNKNOWNX\r\n",                                 // not UNKNOWN
        "PROXY UNKNOWN\t1\r\n",                               // a control character
        "PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n",                // a tab
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",                   // a lone LF
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",               // a lone CR
        "PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",                // a lone CR
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xc3\xa9\r\n",         // non-ASCII
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",                 // case matters
    };
    for (const std::string& line : bad) {
        CAPTURE(line);
        check_invalid(run(line + "GET / HTTP/1.1\r\n\r\n"), errc::protocol_error);
    }
    std::string with_nul("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n", 33);
    check_invalid(run(with_nul), errc::protocol_error);
}

TEST_CASE("v1: a line past 107 bytes is invalid") {
    const std::string all_ones = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    // 108 bytes: one too many, refused on byte 107 (no room left for the LF).
    std::string too_long = "PROXY UNKNOWN " + all_ones + " " + all_ones + " 65535 655350\r\n";
    REQUIRE(too_long.size() == 108);
    check_invalid(run(too_long), errc::message_too_large);
    decoder d;
    CHECK(d.feed(std::string_view(too_long).substr(0, 106)) == status::need_more);
    CHECK(d.feed(std::string_view(too_long).substr(106, 1)) == status::invalid);
    CHECK(d.error() == errc::message_too_large);

    // 64 KiB without a CRLF: refused long before the end.
    std::string flood = "PROXY " + std::string(64 * 1024, 'a');
    check_invalid(run(flood), errc::message_too_large);
    decoder flooded;
    CHECK(flooded.feed(std::string_view(flood).substr(0, 100)) == status::need_more);
    CHECK(flooded.feed(std::string_view(flood).substr(100, 100)) == status::invalid);
}

TEST_CASE("v2: TCP over IPv4 and IPv6, built from the spec") {
    bytes tcp4 = concat(v2_head(0x21, 0x11, 12), tcp4_block);
    outcome v4 = run(concat(tcp4, as_bytes("GET / HTTP/1.1\r\n\r\n")));
    CHECK(v4.what == "done");
    CHECK(v4.result.version == 2);
    CHECK(!v4.result.local);
    CHECK(v4.result.source == ep("192.168.0.1:56324"));
    CHECK(v4.result.destination == ep("192.168.0.11:443"));
    CHECK(v4.rest == "GET / HTTP/1.1\r\n\r\n");
    CHECK(v4.header_size == 28);

    outcome v6 = run(concat(concat(v2_head(0x21, 0x21, 36), tcp6_block), {0x00, 0xFF}));
    CHECK(v6.what == "done");
    CHECK(v6.result.source == ep("[2001:db8::1]:49152"));
    CHECK(v6.result.destination == ep("[2001:db8::2]:8443"));
    CHECK(v6.rest == std::string("\0\xff", 2));
    CHECK(v6.header_size == 52);
}

TEST_CASE("v2: LOCAL, UNSPEC, UDP and UNIX are local") {
    // LOCAL: no addresses...
    outcome local = run(concat(v2_head(0x20, 0x00, 0), as_bytes("hi")));
    CHECK(local.what == "done");
    CHECK(local.result.local);
    CHECK(local.result.version == 2);
    CHECK(!local.result.source);
    CHECK(local.rest == "hi");
    // ... or a block, skipped whatever the family says (the receiver must not assume zero).
    outcome local_block = run(concat(concat(v2_head(0x20, 0x11, 12), tcp4_block), as_bytes("x")));
    CHECK(local_block.result.local);
    CHECK(!local_block.result.source);
    CHECK(local_block.rest == "x");
    CHECK(run(concat(v2_head(0x20, 0xFF, 3), {1, 2, 3})).result.local);
    // PROXY with an UNSPEC family or transport: use the connection's own addresses.
    CHECK(run(v2_head(0x21, 0x00, 0)).result.local);
    CHECK(run(concat(v2_head(0x21, 0x00, 5), {1, 2, 3, 4, 5})).result.local);
    CHECK(run(concat(v2_head(0x21, 0x10, 12), tcp4_block)).result.local);
    CHECK(run(concat(v2_head(0x21, 0x01, 2), {1, 2})).result.local);
    // UDP over IPv4/IPv6, UNIX stream/datagram: not for a TCP proxy, so local.
    outcome udp4 = run(concat(concat(v2_head(0x21, 0x12, 12), tcp4_block), as_bytes("dgram")));
    CHECK(udp4.what == "done");
    CHECK(udp4.result.local);
    CHECK(!udp4.result.source);
    CHECK(udp4.rest == "dgram");
    CHECK(run(concat(v2_head(0x21, 0x22, 36), tcp6_block)).result.local);
    bytes unix_block(216, 0);
    unix_block[0] = '/';
    outcome unix_stream = run(concat(concat(v2_head(0x21, 0x31, 216), unix_block), {'z'}));
    CHECK(unix_stream.result.local);
    CHECK(unix_stream.rest == "z");
    CHECK(run(concat(v2_head(0x21, 0x32, 216), unix_block)).result.local);
}

TEST_CASE("v2: TLVs are skipped") {
    bytes tlvs = {
        0x01, 0x00, 0x02, 'h',  '2',                                                  // ALPN
        0x02, 0x00, 0x0B, 'e',  'x',  'a',  'm',  'p',  'l', 'e', '.', 'c', 'o', 'm', // AUTHORITY
        0x04, 0x00, 0x00,                                                             // NOOP, empty
        0x05, 0x00, 0x04, 0xDE, 0xAD, 0xBE, 0xEF,                                     // UNIQUE_ID
        0x20, 0x00, 0x0F, 0x01, 0x00, 0x00, 0x00, 0x00,           // SSL: client, verify
        0x21, 0x00, 0x07, 'T',  'L',  'S',  'v',  '1',  '.', '3', //   VERSION sub-TLV
        0xE0, 0x00, 0x01, 0x2A,                                   // custom
    };
    auto length = static_cast<std::uint16_t>(12 + tlvs.size());
    bytes header = concat(concat(v2_head(0x21, 0x11, length), tcp4_block), tlvs);
    outcome out = run(concat(header, as_bytes("payload")));
    CHECK(out.what == "done");
    CHECK(out.result.source == ep("192.168.0.1:56324"));
    CHECK(out.result.destination == ep("192.168.0.11:443"));
    CHECK(out.rest == "payload");
    CHECK(out.header_size == header.size());

    // A TLV whose value is empty at the very end, and IPv6 with TLVs.
    bytes v6 = concat(concat(v2_head(0x21, 0x21, 36 + 3), tcp6_block), {0x04, 0x00, 0x00});
    CHECK(run(v6).result.source == ep("[2001:db8::1]:49152"));
}

TEST_CASE("v2: a CRC32C TLV is verified") {
    using tinyproxy::detail::proxy_header::crc32c;
    CHECK(crc32c(std::string_view("123456789")) == 0xE3069283u); // the standard check value
    CHECK(crc32c(bytes(32, 0)) == 0x8A9136AAu);                  // RFC 3720 B.4: 32 zeros

    bytes header = concat(concat(v2_head(0x21, 0x11, 12 + 7), tcp4_block), {0x03, 0x00, 0x04});
    header.insert(header.end(), {0, 0, 0, 0});
    std::uint32_t crc = crc32c(header);
    for (std::size_t i = 0; i < 4; ++i) {
        header[header.size() - 4 + i] = static_cast<std::uint8_t>(crc >> (24 - 8 * i));
    }
    outcome good = run(concat(header, {'!'}));
    CHECK(good.what == "done");
    CHECK(good.result.source == ep("192.168.0.1:56324"));
    CHECK(good.rest == "!");

    bytes wrong = header;
    wrong.back() ^= 1;
    check_invalid(run(wrong), errc::protocol_error);
    bytes wrong_address = header;
    wrong_address[16] ^= 0x80;
    check_invalid(run(wrong_address), errc::protocol_error);
    // A checksum of the wrong size, or two of them.
    check_invalid(
        run(concat(concat(v2_head(0x21, 0x11, 12 + 6), tcp4_block), {0x03, 0x00, 0x03, 0, 0, 0})),
        errc::protocol_error);
    bytes twice = concat(header, {0x03, 0x00, 0x04, 0, 0, 0, 0});
    twice[15] = static_cast<std::uint8_t>(12 + 14);
    check_invalid(run(twice), errc::protocol_error);
}

TEST_CASE("v2: bad signatures are invalid at the first wrong byte") {
    bytes good = concat(v2_head(0x21, 0x11, 12), tcp4_block);
    for (std::size_t position = 0; position < 12; ++position) {
        CAPTURE(position);
        bytes bad = good;
        bad[position] ^= 0x20;
        check_invalid(run(bad), errc::protocol_error);
        decoder d;
        CHECK(d.feed(tinyproxy::byte_view(bad.data(), position)) == status::need_more);
        CHECK(d.feed(tinyproxy::byte_view(bad.data() + position, 1)) == status::invalid);
    }
    // Other protocols are refused on their first byte.
    for (const char* other : {"GET / HTTP/1.1\r\n", "\x16\x03\x01", "SSH-2.0-x\r\n", "\x05\x01\x00",
                              "\x04\x01\x00\x50", "CONNECT a:1 HTTP/1.1\r\n"}) {
        CAPTURE(other);
        decoder d;
        CHECK(d.feed(std::string_view(other, 1)) == status::invalid);
        CHECK(d.error() == errc::protocol_error);
    }
    check_invalid(run(std::string("\0", 1)), errc::protocol_error);
    check_invalid(run("\r\n\r\n\r\n"), errc::protocol_error); // CRLFs, not the signature
    check_invalid(run("PROXZ TCP4"), errc::protocol_error);   // v1 prefix broken
}

TEST_CASE("v2: versions, commands and families") {
    for (int version_command : {0x01, 0x11, 0x31, 0xF1, 0x00, 0x10}) {
        CAPTURE(version_command);
        check_invalid(
            run(concat(v2_head(static_cast<std::uint8_t>(version_command), 0x11, 12), tcp4_block)),
            errc::unsupported_version);
    }
    for (int version_command : {0x22, 0x23, 0x2F}) {
        CAPTURE(version_command);
        check_invalid(
            run(concat(v2_head(static_cast<std::uint8_t>(version_command), 0x11, 12), tcp4_block)),
            errc::protocol_error);
    }
    for (int family : {0x41, 0x13, 0x03, 0xF1, 0x1F, 0xFF}) {
        CAPTURE(family);
        check_invalid(run(concat(v2_head(0x21, static_cast<std::uint8_t>(family), 12), tcp4_block)),
                      errc::protocol_error);
        // LOCAL ignores the family.
        CHECK(run(concat(v2_head(0x20, static_cast<std::uint8_t>(family), 12), tcp4_block))
                  .result.local);
    }
    // Refused as soon as the byte is seen.
    decoder d;
    bytes head = v2_head(0x21, 0x41, 12);
    CHECK(d.feed(tinyproxy::byte_view(head.data(), 13)) == status::need_more);
    CHECK(d.feed(tinyproxy::byte_view(head.data() + 13, 1)) == status::invalid);
}

TEST_CASE("v2: lengths that overrun are invalid") {
    // The length cannot hold the family's addresses: refused once the length is read.
    struct short_block {
        std::uint8_t family;
        std::uint16_t length;
    };
    for (short_block c : {short_block{0x21, 12}, short_block{0x21, 35}, short_block{0x11, 11},
                          short_block{0x11, 0}, short_block{0x12, 8}, short_block{0x22, 12},
                          short_block{0x31, 215}, short_block{0x32, 12}}) {
        CAPTURE(static_cast<int>(c.family));
        CAPTURE(c.length);
        bytes input = concat(v2_head(0x21, c.family, c.length), bytes(c.length, 0xAB));
        check_invalid(run(input), errc::protocol_error);
        decoder d;
        CHECK(d.feed(tinyproxy::byte_view(input.data(), 15)) == status::need_more);
        CHECK(d.feed(tinyproxy::byte_view(input.data() + 15, 1)) == status::invalid);
    }
    // A TLV running past the header's end, or a fragment too short to be a TLV.
    check_invalid(run(concat(concat(v2_head(0x21, 0x11, 12 + 5), tcp4_block),
                             {0x01, 0x00, 0x0A, 'h', '2', 0, 0, 0, 0, 0, 0, 0, 0})),
                  errc::protocol_error);
    check_invalid(run(concat(concat(v2_head(0x21, 0x11, 12 + 3), tcp4_block), {0x01, 0x00, 0x01})),
                  errc::protocol_error);
    check_invalid(run(concat(concat(v2_head(0x21, 0x11, 12 + 1), tcp4_block), {0x04})),
                  errc::protocol_error);
    check_invalid(run(concat(concat(v2_head(0x21, 0x11, 12 + 2), tcp4_block), {0x04, 0x00})),
                  errc::protocol_error);
    check_invalid(
        run(concat(concat(v2_head(0x21, 0x11, 12 + 4), tcp4_block), {0x04, 0x00, 0x00, 0x04})),
        errc::protocol_error);
}

TEST_CASE("v2: the length cap") {
    const std::size_t cap = tinyproxy::proxy_protocol::default_max_v2_length;
    auto length = static_cast<std::uint16_t>(cap);
    // Exactly the cap: a LOCAL block of that size is read and skipped.
    outcome at_cap = run(concat(concat(v2_head(0x20, 0x00, length), bytes(cap, 0x55)), {'r'}));
    CHECK(at_cap.what == "done");
    CHECK(at_cap.rest == "r");
    // One more, or the format's maximum: refused once the length is read, nothing buffered.
    check_invalid(run(concat(v2_head(0x20, 0x00, static_cast<std::uint16_t>(cap + 1)), {1, 2})),
                  errc::message_too_large);
    check_invalid(run(v2_head(0x21, 0x11, 0xFFFF)), errc::message_too_large);
    // A caller may allow the whole 64 KiB, or less.
    bytes biggest = concat(v2_head(0x21, 0x11, 0xFFFF), tcp4_block);
    // One NOOP TLV filling the rest: 0xFFFF - 12 - 3 bytes of value.
    std::uint16_t noop = 0xFFFF - 12 - 3;
    biggest.push_back(0x04);
    biggest.push_back(static_cast<std::uint8_t>(noop >> 8));
    biggest.push_back(static_cast<std::uint8_t>(noop & 0xFF));
    biggest.resize(16 + 0xFFFF, 0);
    outcome large = run(concat(biggest, {'e', 'n', 'd'}), 0xFFFF);
    CHECK(large.what == "done");
    CHECK(large.result.source == ep("192.168.0.1:56324"));
    CHECK(large.rest == "end");
    check_invalid(run(concat(v2_head(0x21, 0x11, 13), tcp4_block), 12), errc::message_too_large);
    CHECK(run(concat(v2_head(0x21, 0x11, 12), tcp4_block), 12).what == "done");
}

TEST_CASE("every truncation of a valid header needs more") {
    const std::string all_ones = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    std::vector<bytes> headers = {
        as_bytes("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"),
        as_bytes("PROXY TCP6 " + all_ones + " " + all_ones + " 65535 65535\r\n"),
        as_bytes("PROXY UNKNOWN\r\n"),
        concat(v2_head(0x21, 0x11, 12), tcp4_block),
        concat(v2_head(0x21, 0x21, 36), tcp6_block),
        v2_head(0x20, 0x00, 0),
        concat(concat(v2_head(0x21, 0x11, 12 + 5), tcp4_block), {0x01, 0x00, 0x02, 'h', '2'}),
        tinyproxy::proxy_protocol::encode_v2(ep("[::1]:1"), ep("10.0.0.1:2")),
    };
    for (const bytes& header : headers) {
        CAPTURE(as_string(header));
        for (std::size_t length = 0; length < header.size(); ++length) {
            CAPTURE(length);
            CHECK(run(bytes(header.begin(), header.begin() + static_cast<std::ptrdiff_t>(length)))
                      .what == "need_more");
        }
        outcome whole = run(header);
        CHECK(whole.what == "done");
        CHECK(whole.header_size == header.size());
        CHECK(whole.rest.empty());
    }
}

TEST_CASE("encoding: exact bytes") {
    using namespace tinyproxy::proxy_protocol;
    CHECK(as_string(encode_v1(ep("192.168.0.1:56324"), ep("192.168.0.11:443"))) ==
          "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    CHECK(as_string(encode_v1(ep("[2001:db8::1]:49152"), ep("[2001:db8::2]:8443"))) ==
          "PROXY TCP6 2001:db8::1 2001:db8::2 49152 8443\r\n");
    // Mixed families: the IPv4 side mapped into IPv6.
    CHECK(as_string(encode_v1(ep("192.0.2.1:1"), ep("[::1]:2"))) ==
          "PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n");
    // No zone id on the wire.
    CHECK(as_string(encode_v1(ep("[fe80::1%3]:1"), ep("[fe80::2%3]:2"))) ==
          "PROXY TCP6 fe80::1 fe80::2 1 2\r\n");

    CHECK(encode_v2(ep("192.168.0.1:56324"), ep("192.168.0.11:443")) ==
          concat(v2_head(0x21, 0x11, 12), tcp4_block));
    CHECK(encode_v2(ep("[2001:db8::1]:49152"), ep("[2001:db8::2]:8443")) ==
          concat(v2_head(0x21, 0x21, 36), tcp6_block));
    bytes mapped =
        concat(v2_head(0x21, 0x21, 36),
               {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 0, 0,    1,    0,    0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    0,    0,  1, 0x00, 0x50, 0x01, 0xBB});
    CHECK(encode_v2(ep("10.0.0.1:80"), ep("[::1]:443")) == mapped);
    CHECK(encode_v2_local() == v2_head(0x20, 0x00, 0));
}

TEST_CASE("encoding then decoding gives the endpoints back") {
    using namespace tinyproxy::proxy_protocol;
    std::mt19937 random(20240607);
    auto random_endpoint = [&](bool v6) {
        endpoint out;
        if (v6) {
            std::array<std::uint8_t, 16> b{};
            for (auto& x : b) {
                x = static_cast<std::uint8_t>(random() % 4 == 0 ? 0 : random());
            }
            out.address = ip_address::v6(b);
        } else {
            std::array<std::uint8_t, 4> b{};
            for (auto& x : b) {
                x = static_cast<std::uint8_t>(random());
            }
            out.address = ip_address::v4(b);
        }
        out.port = static_cast<std::uint16_t>(random());
        return out;
    };
    for (int i = 0; i < 500; ++i) {
        bool v6 = i % 2 == 1;
        endpoint source = random_endpoint(v6);
        endpoint destination = random_endpoint(v6);
        for (const bytes& encoded :
             {encode_v1(source, destination), encode_v2(source, destination)}) {
            decoder d;
            REQUIRE(d.feed(concat(encoded, as_bytes("tail"))) == status::done);
            CHECK(!d.result().local);
            CHECK(d.result().source == source);
            CHECK(d.result().destination == destination);
            CHECK(as_string(d.take_rest()) == "tail");
        }
    }
    // Fixed cases through every split.
    for (auto pair : {std::make_pair(ep("127.0.0.1:1"), ep("127.0.0.1:65535")),
                      std::make_pair(ep("[::]:0"), ep("[::1]:443")),
                      std::make_pair(ep("0.0.0.0:0"), ep("255.255.255.255:65535"))}) {
        outcome v1 = run(encode_v1(pair.first, pair.second));
        CHECK(v1.result.source == pair.first);
        CHECK(v1.result.destination == pair.second);
        CHECK(v1.result.version == 1);
        outcome v2 = run(encode_v2(pair.first, pair.second));
        CHECK(v2.result.source == pair.first);
        CHECK(v2.result.destination == pair.second);
        CHECK(v2.result.version == 2);
    }
    // Mixed families come back IPv4-mapped.
    outcome mixed = run(encode_v2(ep("10.0.0.1:80"), ep("[::1]:443")));
    CHECK(mixed.result.source == ep("[::ffff:10.0.0.1]:80"));
    CHECK(mixed.result.destination == ep("[::1]:443"));
    CHECK(run(encode_v1(ep("10.0.0.1:80"), ep("[::1]:443"))).result.source ==
          ep("[::ffff:10.0.0.1]:80"));
    // LOCAL.
    outcome local = run(concat(encode_v2_local(), as_bytes("health check")));
    CHECK(local.result.local);
    CHECK(local.rest == "health check");
}

TEST_CASE("rest bytes are intact and collected from every feed") {
    std::string tail("\x16\x03\x01\0\0PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 37);
    decoder d;
    bytes header = concat(v2_head(0x21, 0x11, 12), tcp4_block);
    CHECK(d.feed(tinyproxy::byte_view(header.data(), 10)) == status::need_more);
    CHECK(d.take_rest().empty());
    bytes rest_of_header_and_some(header.begin() + 10, header.end());
    rest_of_header_and_some.insert(rest_of_header_and_some.end(), tail.begin(), tail.begin() + 5);
    CHECK(d.feed(rest_of_header_and_some) == status::done);
    CHECK(d.feed(std::string_view(tail).substr(5)) == status::done);
    CHECK(d.feed(tinyproxy::byte_view{}) == status::done);
    CHECK(as_string(d.take_rest()) == tail);
    CHECK(d.take_rest().empty());
    CHECK(d.feed(std::string_view("more")) == status::done);
    CHECK(as_string(d.take_rest()) == "more");
    CHECK(d.result().source == ep("192.168.0.1:56324"));

    // Before done, nothing is rest and the result is empty.
    decoder fresh;
    CHECK(fresh.feed(std::string_view("PROXY TCP4 1.2")) == status::need_more);
    CHECK(fresh.take_rest().empty());
    CHECK(fresh.result().version == 0);
    CHECK(!fresh.error());
}

TEST_SUITE_END();
