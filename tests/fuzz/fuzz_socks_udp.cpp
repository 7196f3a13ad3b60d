// libFuzzer target for protocol/socks_udp.hpp. Input: one datagram of a SOCKS5 UDP association,
// as a client sends it. Whatever parses has its data inside the input, right after the header,
// a port, a usable host, and encodes back to the same bytes (a name that reads as a numeric
// address excepted: it is written back as that address); the header written for the parsed
// address of a numeric datagram is the input's header.
#include <cstddef> // std::size_t
#include <cstdint> // bytes
#include <cstring> // std::memcmp
#include <vector>  // encoded datagrams

#include <tinyproxy/protocol/socks_udp.hpp>

#include "support/split_feed.hpp"

namespace {
const tptest::trap_on_failure require;
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const tinyproxy::byte_view datagram{data, size};
    tinyproxy::socks_udp_datagram parsed;
    if (tinyproxy::parse_socks_udp(datagram, parsed)) {
        return 0;
    }
    require(size >= 7); // the shortest header: a one-byte name
    require(parsed.address.port != 0);
    require(tinyproxy::detail::usable_host_name(parsed.address.host));
    require(parsed.data.size() <= size - 7);
    require(parsed.data.empty() || parsed.data.end() == data + size); // the datagram's tail
    const std::size_t header = size - parsed.data.size();
    require(tinyproxy::load_be<std::uint16_t>(data + header - 2) == parsed.address.port);

    std::vector<std::uint8_t> again;
    require(!tinyproxy::encode_socks_udp(parsed.address, parsed.data, again, parsed.fragment));
    auto numeric = parsed.address.numeric_address();
    if (data[3] != 3 || !numeric) {
        require(again.size() == size && std::memcmp(again.data(), data, size) == 0);
    }
    if (data[3] != 3 && numeric) {
        tinyproxy::endpoint from{*numeric, parsed.address.port};
        require(tinyproxy::socks_udp_header_size(from) == header);
        std::vector<std::uint8_t> written(header);
        tinyproxy::write_socks_udp_header(from, written.data());
        written[2] = parsed.fragment; // the writer frames whole datagrams: FRAG 0
        require(std::memcmp(written.data(), data, header) == 0);
    }
    return 0;
}
