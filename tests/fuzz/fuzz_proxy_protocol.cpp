// libFuzzer target for protocol/proxy_protocol.hpp. The first input byte picks the length cap,
// how the rest is cut into feeds (tests/support/split_feed.hpp), and the families of a round trip;
// the rest is what a sender sends. Checked: the outcome does not depend on the cuts, take_rest() is
// exactly the input after the header, a decoded header is consistent, and encode -> decode gives
// back endpoints built from the input.
#include <array>        // address bytes
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint8_t
#include <system_error> // error codes
#include <vector>       // byte buffers

#include <tinyproxy/tinyproxy.hpp>

#include "support/split_feed.hpp"

namespace {

namespace pp = tinyproxy::proxy_protocol;
using status = pp::decoder::status;

const tptest::trap_on_failure check;

struct outcome {
    status what = status::need_more;
    pp::header result;
    std::vector<std::uint8_t> rest; // take_rest() plus what was never fed
    std::error_code error;
};

/// Feeds the input cut as `plan` says (or whole, in one feed, with `whole`); after done, feeds
/// the rest too when `feed_all`.
outcome drive(const std::uint8_t* data, std::size_t size, std::size_t cap, std::uint8_t plan,
              bool whole, bool feed_all) {
    pp::decoder decoder(cap);
    outcome out;
    std::size_t fed = tptest::feed_in_pieces(
        tinyproxy::byte_view(data, size), whole ? tptest::cuts{} : tptest::seeded_cuts(plan, size),
        [&](tinyproxy::byte_view piece) {
            status s = decoder.feed(piece);
            check(decoder.state() == s);
            if (s == status::need_more) {
                check(!decoder.error() && decoder.take_rest().empty());
                return false;
            }
            out = outcome{s, decoder.result(), {}, decoder.error()};
            if (s == status::done) {
                out.rest = decoder.take_rest();
                check(out.rest.size() <= piece.size());
            }
            return true;
        });
    if (out.what == status::invalid) {
        check(static_cast<bool>(out.error) && out.result.version == 0);
        check(decoder.feed(tinyproxy::byte_view(data, size)) == status::invalid);
        check(decoder.take_rest().empty());
    } else if (out.what == status::done) {
        check(!out.error);
        if (feed_all) {
            check(decoder.feed(tinyproxy::byte_view(data + fed, size - fed)) == status::done);
            std::vector<std::uint8_t> more = decoder.take_rest();
            out.rest.insert(out.rest.end(), more.begin(), more.end());
        } else {
            out.rest.insert(out.rest.end(), data + fed, data + size);
        }
        check(decoder.take_rest().empty());
    }
    return out;
}

bool same_family(const tinyproxy::endpoint& a, const tinyproxy::endpoint& b) {
    return a.address.is_v4() == b.address.is_v4();
}

/// A decoded header agrees with the bytes it came from.
void check_header(const outcome& out, const std::uint8_t* data, std::size_t size, std::size_t cap) {
    const pp::header& h = out.result;
    check(out.rest.size() <= size);
    std::size_t header_size = size - out.rest.size();
    for (std::size_t i = 0; i < out.rest.size(); ++i) {
        check(out.rest[i] == data[header_size + i]);
    }
    if (h.local) {
        check(!h.source && !h.destination);
    } else {
        check(h.source && h.destination && same_family(*h.source, *h.destination));
    }
    if (h.version == 1) {
        check(header_size >= 15 && header_size <= pp::v1_max_line);
        check(data[0] == 'P' && data[header_size - 2] == '\r' && data[header_size - 1] == '\n');
    } else {
        check(h.version == 2);
        check(header_size >= pp::v2_fixed_size);
        std::size_t length = tinyproxy::load_be<std::uint16_t>(data + 14);
        check(header_size == pp::v2_fixed_size + length && length <= cap);
        check((data[12] >> 4) == 2);
    }
}

tinyproxy::endpoint endpoint_from(const std::uint8_t* bytes, bool v6) {
    tinyproxy::endpoint out;
    if (v6) {
        std::array<std::uint8_t, 16> address{};
        for (std::size_t i = 0; i < 16; ++i) {
            address[i] = bytes[i];
        }
        out.address = tinyproxy::ip_address::v6(address);
    } else {
        out.address = tinyproxy::ip_address::v4({bytes[0], bytes[1], bytes[2], bytes[3]});
    }
    out.port = tinyproxy::load_be<std::uint16_t>(bytes + 16);
    return out;
}

/// What a decoder gives back for `original` sent beside an endpoint of `other_v4` family.
tinyproxy::endpoint as_sent(const tinyproxy::endpoint& original, bool mixed) {
    if (!mixed || original.address.is_v6()) {
        return original;
    }
    return tinyproxy::endpoint{
        tinyproxy::ip_address::v6(tinyproxy::detail::proxy_header::as_v6_bytes(original.address)),
        original.port};
}

void round_trip(const std::vector<std::uint8_t>& encoded, const std::uint8_t* tail,
                std::size_t tail_size, std::uint8_t plan, const pp::header& expected) {
    std::vector<std::uint8_t> input = encoded;
    input.insert(input.end(), tail, tail + tail_size);
    for (bool whole : {true, false}) {
        outcome out =
            drive(input.data(), input.size(), pp::default_max_v2_length, plan, whole, !whole);
        check(out.what == status::done);
        check(out.result.local == expected.local && out.result.version == expected.version);
        check(out.result.source == expected.source);
        check(out.result.destination == expected.destination);
        check(out.rest.size() == tail_size);
        for (std::size_t i = 0; i < tail_size; ++i) {
            check(out.rest[i] == tail[i]);
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    const std::uint8_t plan = data[0];
    ++data;
    --size;
    const std::size_t cap = (plan & 0x80) != 0 ? 40 : pp::default_max_v2_length;

    // Decoding: the same outcome whatever the cuts.
    outcome split = drive(data, size, cap, plan, false, (plan & 0x40) != 0);
    outcome whole = drive(data, size, cap, plan, true, false);
    check(split.what == whole.what);
    check(split.error == whole.error);
    check(split.result.local == whole.result.local);
    check(split.result.version == whole.result.version);
    check(split.result.source == whole.result.source);
    check(split.result.destination == whole.result.destination);
    check(split.rest == whole.rest);
    if (whole.what == status::done) {
        check_header(whole, data, size, cap);
    }

    // Encoding: endpoints built from the input come back, and the input after them stays intact.
    std::uint8_t raw[36] = {};
    for (std::size_t i = 0; i < sizeof raw && i < size; ++i) {
        raw[i] = data[i];
    }
    bool source_v6 = (plan & 0x40) != 0;
    bool destination_v6 = (plan & 0x20) != 0 ? !source_v6 : source_v6;
    tinyproxy::endpoint source = endpoint_from(raw, source_v6);
    tinyproxy::endpoint destination = endpoint_from(raw + 18, destination_v6);
    bool mixed = source_v6 != destination_v6;
    pp::header expected;
    expected.source = as_sent(source, mixed);
    expected.destination = as_sent(destination, mixed);
    expected.version = 1;
    round_trip(pp::encode_v1(source, destination), data, size, plan, expected);
    expected.version = 2;
    round_trip(pp::encode_v2(source, destination), data, size, plan, expected);
    pp::header local;
    local.local = true;
    local.version = 2;
    round_trip(pp::encode_v2_local(), data, size, plan, local);
    return 0;
}
