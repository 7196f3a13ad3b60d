# Every header under include/tinyproxy/ compiles alone: one generated translation unit per
# header, holding only that #include, built with the warning flags into one OBJECT library.
# The parts are checked even when TINYPROXY_SINGLE_INCLUDE is on.
file(GLOB_RECURSE tinyproxy_headers CONFIGURE_DEPENDS
    RELATIVE "${PROJECT_SOURCE_DIR}/include"
    "${PROJECT_SOURCE_DIR}/include/tinyproxy/*.hpp")

set(tinyproxy_header_check_sources "")
foreach(header IN LISTS tinyproxy_headers)
    # tinyproxy/detail/sys.hpp -> detail_sys
    string(REGEX REPLACE "^tinyproxy/" "" name "${header}")
    string(REGEX REPLACE "\\.hpp$" "" name "${name}")
    string(MAKE_C_IDENTIFIER "${name}" name)
    set(source "${CMAKE_CURRENT_BINARY_DIR}/header_checks/header_${name}_compiles_alone.cpp")
    file(CONFIGURE OUTPUT "${source}"
        CONTENT "// Generated: ${header} must compile on its own.\n#include <${header}>\n"
        @ONLY)
    list(APPEND tinyproxy_header_check_sources "${source}")
endforeach()

# The portable paths, as a platform without epoll(7) and splice(2) builds them: the whole
# library with both switched off, a poll_policy proxy instantiated.
set(source "${CMAKE_CURRENT_BINARY_DIR}/header_checks/portable_paths_compile.cpp")
file(CONFIGURE OUTPUT "${source}" CONTENT [=[
// Generated: the library compiles with TINYPROXY_NO_EPOLL and TINYPROXY_NO_SPLICE.
#define TINYPROXY_NO_EPOLL 1
#define TINYPROXY_NO_SPLICE 1
#include <tinyproxy/tinyproxy.hpp>
#include <type_traits>
static_assert(std::is_same<tinyproxy::poll_policy, tinyproxy::portable_poll_policy>::value,
              "without epoll, poll_policy is the poll(2) loop");
void portable_paths_instantiate(tinyproxy::options opts, tinyproxy::forward_mode mode) {
    tinyproxy::basic_proxy<tinyproxy::poll_policy, tinyproxy::forward_mode> proxy(opts, mode);
    proxy.run();
}
]=] @ONLY)
list(APPEND tinyproxy_header_check_sources "${source}")

if(tinyproxy_header_check_sources)
    add_library(tinyproxy_header_checks OBJECT ${tinyproxy_header_check_sources})
    target_include_directories(tinyproxy_header_checks PRIVATE "${PROJECT_SOURCE_DIR}/include")
    target_compile_features(tinyproxy_header_checks PRIVATE cxx_std_17)
    target_link_libraries(tinyproxy_header_checks PRIVATE Threads::Threads tinyproxy_warnings)
endif()
