// A second translation unit including the whole library again: a non-template function defined
// in a header without `inline` becomes a duplicate symbol, and linking tinyproxy_tests fails.
#include <tinyproxy/tinyproxy.hpp>

int tinyproxy_second_tu_marker();

int tinyproxy_second_tu_marker() { return TINYPROXY_VERSION_MAJOR; }
