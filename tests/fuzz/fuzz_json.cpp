// libFuzzer target for json.hpp. Checked: any input is read or refused with a message, never a
// crash or a hang; what is read writes back as JSON that reads again into the same text (the
// writer's output is a fixed point), and refused input names an offset inside the input.
#include <cstddef> // std::size_t
#include <cstdint> // std::uint8_t
#include <string>  // texts

#include <tinyproxy/tinyproxy.hpp>

#include "support/split_feed.hpp"

namespace {
const tptest::trap_on_failure check;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    std::string error;
    auto value = tinyproxy::parse_json(text, error);
    if (!value) {
        check(!error.empty(), "refused without a message");
        check(error.find(" at offset ") != std::string::npos, "refused without an offset");
        return 0;
    }
    const std::string written = value->dump();
    std::string again_error;
    auto again = tinyproxy::parse_json(written, again_error);
    check(again.has_value(), "what the writer wrote does not read back");
    check(again->dump() == written, "writing is not a fixed point");
    return 0;
}
