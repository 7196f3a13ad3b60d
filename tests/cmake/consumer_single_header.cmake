# consumer_single_header: copy only single_include/tinyproxy/tinyproxy.hpp, compile a program
# with the bare compiler (no CMake target, no include/), run it.
include("${CMAKE_CURRENT_LIST_DIR}/consumer_common.cmake")

set(header "${TINYPROXY_SOURCE_DIR}/single_include/tinyproxy/tinyproxy.hpp")
if(NOT EXISTS "${header}")
    message(FATAL_ERROR "consumer test: ${header} does not exist: "
                        "generate it with `python3 tools/amalgamate.py`")
endif()
file(COPY "${header}" DESTINATION "${WORK_DIR}/include/tinyproxy")

set(exe "${WORK_DIR}/consumer${CMAKE_EXECUTABLE_SUFFIX}")
run_step("compile with ${CXX_COMPILER}"
    "${CXX_COMPILER}" -std=c++17 -Wall -Wextra -Wpedantic -Werror "-I${WORK_DIR}/include"
    "${CONSUMERS_DIR}/single_header/main.cpp" -pthread -o "${exe}")
run_step("run ${exe}" "${exe}")
