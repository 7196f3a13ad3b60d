// SPDX-License-Identifier: MIT
// json.hpp: RFC 8259 read strictly (with a message saying where it went wrong), numbers kept
// exact, objects in order, and written back compactly.
#include <doctest/doctest.h>

#include <cstdint> // exact integers
#include <string>  // texts

#include <tinyproxy/tinyproxy.hpp>

namespace {

/// The text `text` reads back as, or "error: " and the reader's message.
std::string reread(const std::string& text) {
    std::string error;
    auto value = tinyproxy::parse_json(text, error);
    return value ? value->dump() : "error: " + error;
}

} // namespace

TEST_SUITE_BEGIN("json");

TEST_CASE("json: values are read and written back compactly, objects in the order written") {
    CHECK(reread(" { \"name\" : \"db\", \"enabled\": true, \"toxics\": [ ], \"x\": null } ") ==
          R"({"name":"db","enabled":true,"toxics":[],"x":null})");
    CHECK(reread("[1, -2, 3.5, 1e3, -0.25E-2, 0]") == "[1,-2,3.5,1e3,-0.25E-2,0]");
    CHECK(reread(R"("tab\there, quote\" slash\/ back\\ \u00e9 \ud83d\ude00")") ==
          "\"tab\\there, quote\\\" slash/ back\\\\ \xc3\xa9 \xf0\x9f\x98\x80\"");
    CHECK(reread(R"("\u0001")") == R"("\u0001")");
    CHECK(reread("\"\xe2\x82\xac\"") == "\"\xe2\x82\xac\""); // UTF-8 passes as it is
}

TEST_CASE("json: a key given twice keeps its last value, in its first place") {
    CHECK(reread(R"({"a":1,"b":2,"a":3})") == R"({"a":3,"b":2})");
    std::string many = "{";
    for (int i = 0; i < 20000; ++i) { // one pass, not a search per key
        many += "\"k" + std::to_string(i % 100) + "\":" + std::to_string(i) + ",";
    }
    many += "\"end\":0}";
    std::string error;
    auto value = tinyproxy::parse_json(many, error);
    REQUIRE(value);
    CHECK(value->members().size() == 101);
    std::int64_t last = 0;
    REQUIRE(value->find("k7") != nullptr);
    CHECK(value->find("k7")->as_int64(last));
    CHECK(last == 19907);
}

TEST_CASE("json: integers are exact past 2^53; only whole numbers read as int64") {
    std::string error;
    auto value =
        tinyproxy::parse_json(R"({"bytes":4611686018427387905,"rate":1.5,"e":1e3})", error);
    REQUIRE(value);
    std::int64_t bytes = 0;
    CHECK(value->find("bytes")->as_int64(bytes));
    CHECK(bytes == 4611686018427387905);
    std::int64_t ignored = 0;
    CHECK_FALSE(value->find("rate")->as_int64(ignored));
    CHECK_FALSE(value->find("e")->as_int64(ignored)); // as Go's encoding/json reads an int64
    double rate = 0;
    CHECK(value->find("rate")->as_double(rate));
    CHECK(rate == 1.5);
    CHECK_FALSE(tinyproxy::parse_json("99999999999999999999", error)->as_int64(ignored));
    CHECK(value->find("missing") == nullptr);
}

TEST_CASE("json: bad texts are refused with what and where") {
    struct bad_text {
        std::string text;
        std::string says;
    };
    for (const bad_text& bad : {
             bad_text{"", "unexpected end of the JSON text at offset 0"},
             bad_text{"[1,", "unexpected end of the JSON text at offset 3"},
             bad_text{R"({"a" 1})", "expected ':' at offset 5"},
             bad_text{R"({"a":1,})", "expected a string for an object key at offset 7"},
             bad_text{"[1 2]", "expected ',' or ']' at offset 3"},
             bad_text{"{1:2}", "expected a string for an object key at offset 1"},
             bad_text{"01", "a number with a leading zero at offset 1"},
             bad_text{"1.", "expected digits after '.' in a number at offset 2"},
             bad_text{"-", "expected digits in a number at offset 1"},
             bad_text{"1e", "expected digits in a number's exponent at offset 2"},
             bad_text{"tru", "expected a JSON value at offset 0"},
             bad_text{"[] x", "unexpected text after the JSON value at offset 3"},
             bad_text{"\"abc", "unterminated string"},
             bad_text{"\"a\nb\"", "a control character in a string"},
             bad_text{R"("\q")", "an unknown escape in a string"},
             bad_text{R"("\u12g4")", "expected four hex digits after \\u"},
             bad_text{R"("\ud800x")", "a high surrogate without a low one"},
             bad_text{R"("\udc00")", "a low surrogate without a high one"},
             bad_text{"\"\xc0\xaf\"", "invalid UTF-8 in a string"},         // overlong '/'
             bad_text{"\"\xed\xa0\x80\"", "invalid UTF-8 in a string"},     // a surrogate
             bad_text{"\"\xf4\x90\x80\x80\"", "invalid UTF-8 in a string"}, // past U+10FFFF
             bad_text{"\"\xe2\x82\"", "invalid UTF-8 in a string"},         // cut short
             bad_text{"NaN", "expected a JSON value"},
         }) {
        CAPTURE(bad.text);
        std::string error;
        CHECK_FALSE(tinyproxy::parse_json(bad.text, error));
        CHECK(error.find(bad.says) != std::string::npos);
    }
}

TEST_CASE("json: nesting deeper than the limit is refused, not followed down the stack") {
    std::string error;
    CHECK(tinyproxy::parse_json(std::string(64, '[') + std::string(64, ']'), error));
    CHECK_FALSE(tinyproxy::parse_json(std::string(65, '[') + std::string(65, ']'), error));
    CHECK(error == "nested deeper than 64 at offset 64");
    CHECK_FALSE(tinyproxy::parse_json(std::string(1000000, '['), error));
}

TEST_CASE("json: values built in code are written as JSON, strings escaped") {
    tinyproxy::json_value toxic;
    toxic.set("name", "latency_downstream");
    toxic.set("type", "latency");
    toxic.set("toxicity", 0.25);
    tinyproxy::json_value attributes;
    attributes.set("latency", std::int64_t{100});
    attributes.set("jitter", 0);
    toxic.set("attributes", attributes);
    toxic.set("note", "a \"quoted\"\nline\x01");
    toxic.set("type", "slicer"); // replaced in its place
    CHECK(toxic.dump() ==
          R"({"name":"latency_downstream","type":"slicer","toxicity":0.25,)"
          R"("attributes":{"latency":100,"jitter":0},"note":"a \"quoted\"\nline\u0001"})");
    tinyproxy::json_value list;
    list.push_back(nullptr);
    list.push_back(true);
    list.push_back(1e300 * 1e300); // no inf in JSON
    CHECK(list.dump() == "[null,true,0]");
    CHECK(tinyproxy::json_value::object().dump() == "{}");
    CHECK(tinyproxy::json_value::array().dump() == "[]"); // never null, as Toxiproxy's []
}

TEST_SUITE_END();
