// Unit tests for bytes.hpp: big-endian load/store, byte_view, byte_reader, byte_writer.
#include <doctest/doctest.h>

#include <ostream> // doctest prints std::error_code with operator<<

#include <array>        // fixed buffers
#include <cstdint>      // fixed-width integers
#include <limits>       // extreme values
#include <random>       // round trips
#include <string>       // strings
#include <system_error> // the category identity check
#include <vector>       // buffers

#include <tinyproxy/tinyproxy.hpp>

#include "support/unit_helpers.hpp"

using tinyproxy::byte_reader;
using tinyproxy::byte_view;
using tinyproxy::byte_writer;
using tinyproxy::load_be;
using tinyproxy::store_be;

/// The error category as this translation unit sees it: test_address.cpp checks it is the same
/// object as the one it sees (a function-local static in an inline function is one per program).
const std::error_category* unit_bytes_tu_error_category();
const std::error_category* unit_bytes_tu_error_category() { return &tinyproxy::error_category(); }

namespace {

using bytes = std::vector<std::uint8_t>;

// --- compile-time use --------------------------------------------------------------------------

constexpr std::uint8_t constexpr_message[] = {0x05, 0x1F, 0x90, 0xDE, 0xAD, 0xBE, 0xEF, 0x01, 0x02,
                                              0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x2A, 'h',  'i'};

struct parsed_message {
    std::uint8_t version = 0;
    std::uint16_t port = 0;
    std::uint32_t magic = 0;
    std::uint64_t big = 0;
    std::size_t rest_size = 0;
    std::uint8_t rest_first = 0;
    bool ok = false;
};

constexpr parsed_message parse_at_compile_time(std::size_t length) {
    byte_reader reader(byte_view{constexpr_message, length});
    parsed_message out;
    out.version = reader.u8();
    out.port = reader.u16();
    out.magic = reader.u32();
    out.big = reader.u64();
    out.ok = static_cast<bool>(reader);
    out.rest_size = reader.rest().size();
    out.rest_first = reader.rest().empty() ? 0 : reader.rest()[0];
    return out;
}

struct four_bytes {
    std::uint8_t b[4] = {};
};

constexpr four_bytes store_at_compile_time(std::uint32_t value) {
    four_bytes out;
    store_be<std::uint32_t>(out.b, value);
    return out;
}

static_assert(load_be<std::uint8_t>(constexpr_message) == 0x05, "u8 load");
static_assert(load_be<std::uint16_t>(constexpr_message + 1) == 0x1F90, "u16 load");
static_assert(load_be<std::uint32_t>(constexpr_message + 3) == 0xDEADBEEFu, "u32 load");
static_assert(load_be<std::uint64_t>(constexpr_message + 7) == 0x0102030405060708ull, "u64 load");
static_assert(store_at_compile_time(0xCAFEBABEu).b[0] == 0xCA, "store, first byte");
static_assert(store_at_compile_time(0xCAFEBABEu).b[3] == 0xBE, "store, last byte");
static_assert(load_be<std::uint32_t>(store_at_compile_time(0x01020304u).b) == 0x01020304u,
              "store then load");

// byte_reader in a constant expression. Detected rather than static_assert'ed, so that a
// compiler that cannot evaluate it fails one named test instead of the whole build.
template <class F, int = (static_cast<void>(F::run()), 0)>
constexpr bool constant_evaluable(int) {
    return true;
}
template <class F>
constexpr bool constant_evaluable(long) {
    return false;
}

struct parse_whole {
    static constexpr parsed_message run() {
        return parse_at_compile_time(sizeof constexpr_message);
    }
};
struct parse_cut {
    static constexpr parsed_message run() { return parse_at_compile_time(10); }
};
constexpr byte_reader reader_over_message() {
    return byte_reader(byte_view{constexpr_message, sizeof constexpr_message});
}
struct reads_u8 {
    static constexpr std::uint8_t run() { return reader_over_message().u8(); }
};
struct reads_u16 {
    static constexpr std::uint16_t run() { return reader_over_message().u16(); }
};
struct reads_u32 {
    static constexpr std::uint32_t run() { return reader_over_message().u32(); }
};
struct reads_u64 {
    static constexpr std::uint64_t run() { return reader_over_message().u64(); }
};
struct reads_bytes_skip_rest {
    static constexpr std::size_t run() {
        byte_reader reader = reader_over_message();
        reader.skip(2);
        return reader.bytes(3).size() + reader.rest().size();
    }
};

/// F::run() computed by the compiler; false when it cannot be.
template <class F, class T>
bool computed_at_compile_time(T& out) {
    if constexpr (constant_evaluable<F>(0)) {
        constexpr T value = F::run();
        out = value;
        return true;
    } else {
        return false;
    }
}

constexpr byte_view constexpr_view{constexpr_message, sizeof constexpr_message};
static_assert(constexpr_view.subview(15).size() == 3, "subview");
static_assert(constexpr_view.first(2).size() == 2, "first");
static_assert(constexpr_view.subview(100).empty(), "subview past the end");

// --- helpers -------------------------------------------------------------------------------------

/// A message with every kind of field: u8, u16, u32, u64, string_u8, string_u16, raw bytes.
bytes multi_field_message() {
    bytes out;
    byte_writer(out)
        .u8(0x05)
        .u16(0x1F90)
        .u32(0xDEADBEEFu)
        .u64(0x0102030405060708ull)
        .string_u8("example.com")
        .string_u16("payload")
        .bytes(byte_view(std::string_view("xyz")));
    return out;
}

/// Reads the fields of multi_field_message() back; true when every value came out right.
bool read_multi_field_message(byte_reader& reader) {
    bool same = reader.u8() == 0x05;
    same = reader.u16() == 0x1F90 && same;
    same = reader.u32() == 0xDEADBEEFu && same;
    same = reader.u64() == 0x0102030405060708ull && same;
    same = reader.string_u8() == "example.com" && same;
    same = reader.string_u16() == "payload" && same;
    same = tptest::as_string(reader.bytes(3)) == "xyz" && same;
    return same;
}

} // namespace

TEST_SUITE_BEGIN("bytes");

TEST_CASE("store_be and load_be agree with known big-endian vectors") {
    std::uint8_t buffer[8] = {};

    store_be<std::uint8_t>(buffer, 0xAB);
    CHECK(buffer[0] == 0xAB);
    CHECK(load_be<std::uint8_t>(buffer) == 0xAB);

    store_be<std::uint16_t>(buffer, 0x1F90);
    CHECK(buffer[0] == 0x1F);
    CHECK(buffer[1] == 0x90);
    CHECK(load_be<std::uint16_t>(buffer) == 0x1F90);

    store_be<std::uint32_t>(buffer, 0x01020304u);
    CHECK(bytes(buffer, buffer + 4) == bytes{0x01, 0x02, 0x03, 0x04});
    CHECK(load_be<std::uint32_t>(buffer) == 0x01020304u);

    store_be<std::uint64_t>(buffer, 0x0102030405060708ull);
    CHECK(bytes(buffer, buffer + 8) == bytes{1, 2, 3, 4, 5, 6, 7, 8});
    CHECK(load_be<std::uint64_t>(buffer) == 0x0102030405060708ull);

    store_be<std::uint64_t>(buffer, std::numeric_limits<std::uint64_t>::max());
    CHECK(bytes(buffer, buffer + 8) == bytes(8, 0xFF));
    CHECK(load_be<std::uint64_t>(buffer) == std::numeric_limits<std::uint64_t>::max());

    const std::uint8_t high_bit[] = {0x80, 0x00, 0x00, 0x01};
    CHECK(load_be<std::uint32_t>(high_bit) == 0x80000001u);
    CHECK(load_be<std::uint16_t>(high_bit + 2) == 0x0001);
}

TEST_CASE("byte_reader works in a constant expression over a constexpr array") {
    // Each read on its own, so that a failure names the one that cannot be evaluated.
    CHECK(constant_evaluable<reads_bytes_skip_rest>(0));
    CHECK(constant_evaluable<reads_u8>(0));
    CHECK(constant_evaluable<reads_u16>(0));
    CHECK(constant_evaluable<reads_u32>(0));
    CHECK(constant_evaluable<reads_u64>(0));

    parsed_message whole;
    REQUIRE(computed_at_compile_time<parse_whole>(whole));
    CHECK(whole.ok);
    CHECK(whole.version == 0x05);
    CHECK(whole.port == 0x1F90);
    CHECK(whole.magic == 0xDEADBEEFu);
    CHECK(whole.big == 0x0102030405060708ull);
    CHECK(whole.rest_size == 3);
    CHECK(whole.rest_first == 0x2A);

    parsed_message cut;
    REQUIRE(computed_at_compile_time<parse_cut>(cut));
    CHECK_FALSE(cut.ok);
    CHECK(cut.magic == 0xDEADBEEFu); // the fields before the cut were read
    CHECK(cut.big == 0);             // the one cut short reads as zero
    CHECK(cut.rest_size == 3);       // and the cursor stays after the last full field

    std::size_t sizes = 0;
    REQUIRE(computed_at_compile_time<reads_bytes_skip_rest>(sizes));
    CHECK(sizes == 3 + 13);
}

TEST_CASE("byte_writer chains fields big-endian and appends to what the vector holds") {
    bytes out{0xEE};
    byte_writer writer(out);
    writer.u8(0x05)
        .u16(0x1F90)
        .u32(0x0A0B0C0Du)
        .u64(0x1122334455667788ull)
        .string_u8("abc")
        .string_u16("hello")
        .bytes(byte_view(bytes{0xFF, 0x00}));
    const bytes expected{0xEE, 0x05, 0x1F, 0x90, 0x0A, 0x0B, 0x0C, 0x0D, 0x11, 0x22,
                         0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x03, 'a',  'b',  'c',
                         0x00, 0x05, 'h',  'e',  'l',  'l',  'o',  0xFF, 0x00};
    CHECK(out == expected);
    CHECK(writer.size() == expected.size());
}

TEST_CASE("byte_writer string fields carry their length prefix, empty strings included") {
    bytes out;
    byte_writer(out).string_u8("").string_u16("");
    CHECK(out == bytes{0x00, 0x00, 0x00});

    out.clear();
    std::string long_text(300, 'x');
    byte_writer(out).string_u16(long_text);
    REQUIRE(out.size() == 302);
    CHECK(out[0] == 0x01);
    CHECK(out[1] == 0x2C);
    CHECK(std::string(out.begin() + 2, out.end()) == long_text);

    out.clear();
    std::string max_u8(255, 'y');
    byte_writer(out).string_u8(max_u8);
    REQUIRE(out.size() == 256);
    CHECK(out[0] == 0xFF);
}

TEST_CASE("byte_reader reads back random values written by byte_writer") {
    std::mt19937_64 generator(20240601);
    for (int round = 0; round < 500; ++round) {
        // A random sequence of fields of random kinds.
        std::vector<int> kinds;
        std::vector<std::uint64_t> values;
        std::vector<std::string> texts;
        bytes out;
        byte_writer writer(out);
        int count = static_cast<int>(generator() % 12);
        for (int i = 0; i < count; ++i) {
            int kind = static_cast<int>(generator() % 6);
            std::uint64_t value = generator();
            kinds.push_back(kind);
            switch (kind) {
            case 0:
                value &= 0xFFu;
                writer.u8(static_cast<std::uint8_t>(value));
                break;
            case 1:
                value &= 0xFFFFu;
                writer.u16(static_cast<std::uint16_t>(value));
                break;
            case 2:
                value &= 0xFFFFFFFFu;
                writer.u32(static_cast<std::uint32_t>(value));
                break;
            case 3:
                writer.u64(value);
                break;
            case 4:
                texts.push_back(tptest::random_bytes(value % 256, static_cast<unsigned>(i)));
                writer.string_u8(texts.back());
                break;
            default:
                texts.push_back(tptest::random_bytes(value % 700, static_cast<unsigned>(i)));
                writer.string_u16(texts.back());
                break;
            }
            values.push_back(value);
        }
        byte_reader reader{byte_view(out)};
        std::size_t text_index = 0;
        bool all_equal = true;
        for (std::size_t i = 0; i < kinds.size(); ++i) {
            switch (kinds[i]) {
            case 0:
                all_equal = reader.u8() == values[i] && all_equal;
                break;
            case 1:
                all_equal = reader.u16() == values[i] && all_equal;
                break;
            case 2:
                all_equal = reader.u32() == values[i] && all_equal;
                break;
            case 3:
                all_equal = reader.u64() == values[i] && all_equal;
                break;
            case 4:
                all_equal = reader.string_u8() == texts[text_index++] && all_equal;
                break;
            default:
                all_equal = reader.string_u16() == texts[text_index++] && all_equal;
                break;
            }
        }
        INFO("round " << round);
        CHECK(all_equal);
        CHECK_FALSE(reader.need_more());
        CHECK(reader.remaining() == 0);
        CHECK(reader.position() == out.size());
    }
}

TEST_CASE("every truncation of a multi-field message gives need_more and reads nothing past it") {
    const bytes full = multi_field_message();
    {
        byte_reader reader{byte_view(full)};
        CHECK(read_multi_field_message(reader));
        CHECK_FALSE(reader.need_more());
        CHECK(static_cast<bool>(reader));
        CHECK(reader.remaining() == 0);
    }
    for (std::size_t length = 0; length < full.size(); ++length) {
        INFO("truncated to " << length << " of " << full.size() << " bytes");
        // An exact-size heap copy: AddressSanitizer reports any read past its end.
        bytes cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(length));
        byte_reader reader{byte_view(cut.data(), cut.size())};
        (void)read_multi_field_message(reader);
        CHECK(reader.need_more());
        CHECK_FALSE(static_cast<bool>(reader));
        CHECK(reader.position() <= length);
        // Sticky: nothing more is read even when it would fit, and the cursor stays put.
        std::size_t stuck_at = reader.position();
        CHECK(reader.u8() == 0);
        CHECK(reader.u16() == 0);
        CHECK(reader.bytes(0).empty());
        CHECK(reader.string_u8().empty());
        reader.skip(0);
        CHECK(reader.position() == stuck_at);
        CHECK(reader.need_more());
        CHECK(reader.rest().size() == length - stuck_at);
    }
}

TEST_CASE("a short read returns zero, does not move, and stays short even for smaller reads") {
    const bytes three{0x01, 0x02, 0x03};
    byte_reader reader{byte_view(three)};
    CHECK(reader.u32() == 0);
    CHECK(reader.need_more());
    CHECK(reader.position() == 0);
    CHECK(reader.remaining() == 3);
    CHECK(reader.u8() == 0); // would fit, but the reader is short
    CHECK(reader.u16() == 0);
    CHECK(reader.u64() == 0);
    CHECK(reader.bytes(1).empty());
    CHECK(reader.string_u16().empty());
    CHECK(reader.position() == 0);
    CHECK(tptest::as_string(reader.rest()) == "\x01\x02\x03");

    // A length prefix that promises more than is there.
    const bytes promise{0x05, 'a', 'b', 'c'};
    byte_reader strings{byte_view(promise)};
    CHECK(strings.string_u8().empty());
    CHECK(strings.need_more());
    CHECK(strings.position() == 1); // the length byte was read; the text was not

    // skip past the end.
    byte_reader skipper{byte_view(three)};
    skipper.skip(2);
    CHECK(skipper.position() == 2);
    skipper.skip(2);
    CHECK(skipper.need_more());
    CHECK(skipper.position() == 2);
}

TEST_CASE("rest() hands back the bytes after a message intact, as a view into the input") {
    bytes input = multi_field_message();
    const std::string trailing = std::string("GET / HTTP/1.1\r\n\0\xFF", 18);
    input.insert(input.end(), trailing.begin(), trailing.end());
    byte_reader reader{byte_view(input)};
    REQUIRE(read_multi_field_message(reader));
    REQUIRE_FALSE(reader.need_more());
    byte_view rest = reader.rest();
    CHECK(tptest::as_string(rest) == trailing);
    CHECK(rest.data() == input.data() + (input.size() - trailing.size()));
    CHECK(reader.remaining() == trailing.size());

    byte_reader all{byte_view(input)};
    all.skip(input.size());
    CHECK_FALSE(all.need_more());
    CHECK(all.rest().empty());
}

TEST_CASE("byte_reader::bytes returns a view into the input, and zero bytes is not short") {
    const bytes input{10, 20, 30, 40};
    byte_reader reader{byte_view(input)};
    CHECK(reader.bytes(0).empty());
    CHECK_FALSE(reader.need_more());
    byte_view two = reader.bytes(2);
    REQUIRE(two.size() == 2);
    CHECK(two.data() == input.data());
    CHECK(two[1] == 20);
    byte_view last = reader.bytes(2);
    REQUIRE(last.size() == 2);
    CHECK(last.data() == input.data() + 2);
    CHECK(reader.remaining() == 0);
    CHECK(reader.bytes(0).empty());
    CHECK_FALSE(reader.need_more());
    CHECK(reader.bytes(1).empty());
    CHECK(reader.need_more());
}

TEST_CASE("byte_view subview and first at and beyond the edges") {
    const std::string text = "abcdef";
    byte_view view(text);
    CHECK(view.size() == 6);
    CHECK(view.data() == reinterpret_cast<const std::uint8_t*>(text.data()));
    CHECK(view.as_chars() == "abcdef");

    CHECK(view.subview(0).as_chars() == "abcdef");
    CHECK(view.subview(2).as_chars() == "cdef");
    CHECK(view.subview(5).as_chars() == "f");
    CHECK(view.subview(6).empty());
    CHECK(view.subview(7).empty());
    CHECK(view.subview(std::numeric_limits<std::size_t>::max()).empty());

    CHECK(view.first(0).empty());
    CHECK(view.first(3).as_chars() == "abc");
    CHECK(view.first(6).as_chars() == "abcdef");
    CHECK(view.first(7).as_chars() == "abcdef");
    CHECK(view.first(std::numeric_limits<std::size_t>::max()).size() == 6);
    CHECK(view.subview(2).first(2).as_chars() == "cd");

    byte_view empty;
    CHECK(empty.empty());
    CHECK(empty.size() == 0);
    CHECK(empty.data() == nullptr);
    CHECK(empty.begin() == empty.end());
    CHECK(empty.subview(0).empty());
    CHECK(empty.first(5).empty());
    CHECK(empty.as_chars().empty());

    const bytes vector_bytes{1, 2, 3};
    byte_view from_vector(vector_bytes);
    CHECK(from_vector.size() == 3);
    CHECK(from_vector.data() == vector_bytes.data());
    CHECK(bytes(from_vector.begin(), from_vector.end()) == vector_bytes);
}

TEST_SUITE_END();
