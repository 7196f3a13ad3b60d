# consumer_find_package: install this build into a fresh prefix, then build a project that does
# find_package(tinyproxy 0.1 REQUIRED) against it.
include("${CMAKE_CURRENT_LIST_DIR}/consumer_common.cmake")

run_step("install into ${WORK_DIR}/prefix"
    "${CMAKE_COMMAND}" --install "${TINYPROXY_BINARY_DIR}" --prefix "${WORK_DIR}/prefix"
    --config Debug)
configure_build_run("${CONSUMERS_DIR}/find_package" "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
