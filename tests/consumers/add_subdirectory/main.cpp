// Consumer smoke test: the library is found, includes cleanly and links.
#include <tinyproxy/tinyproxy.hpp>

#include <cstring> // std::strcmp

int main() {
    static_assert(TINYPROXY_VERSION_MAJOR >= 0, "version macros come from config.hpp");
    return std::strcmp(TINYPROXY_VERSION_STRING, "") != 0 ? 0 : 1;
}
