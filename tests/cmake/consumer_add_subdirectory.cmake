# consumer_add_subdirectory: build a project that add_subdirectory()s the repository root.
include("${CMAKE_CURRENT_LIST_DIR}/consumer_common.cmake")

configure_build_run("${CONSUMERS_DIR}/add_subdirectory"
    "-DTINYPROXY_ROOT=${TINYPROXY_SOURCE_DIR}"
    "-DTINYPROXY_SINGLE_INCLUDE=${SINGLE_INCLUDE}")
