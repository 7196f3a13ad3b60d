# Shared by the consumer_*.cmake scripts (run with cmake -P from ctest).
# Inputs: TINYPROXY_SOURCE_DIR, TINYPROXY_BINARY_DIR, CONSUMERS_DIR, GENERATOR, MAKE_PROGRAM,
# CXX_COMPILER, SINGLE_INCLUDE, WORK_DIR.
foreach(var TINYPROXY_SOURCE_DIR TINYPROXY_BINARY_DIR CONSUMERS_DIR GENERATOR CXX_COMPILER WORK_DIR)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "consumer test: -D${var}=... is required")
    endif()
endforeach()

# Start from an empty work dir so nothing stale (an old install, an old cache) is picked up.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# run_step(<what> <command>...): runs the command, fails the test with its output if it fails.
function(run_step what)
    message(STATUS "consumer test: ${what}")
    execute_process(COMMAND ${ARGN}
        WORKING_DIRECTORY "${WORK_DIR}"
        RESULT_VARIABLE result
        OUTPUT_VARIABLE output
        ERROR_VARIABLE output)
    if(NOT result EQUAL 0)
        string(REPLACE ";" " " command "${ARGN}")
        message(FATAL_ERROR "consumer test: ${what} failed (${result})\n"
                            "command: ${command}\n${output}")
    endif()
endfunction()

# The -G/-D arguments that make a consumer build use the parent build's generator and compiler.
set(consumer_configure_args -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_RUNTIME_OUTPUT_DIRECTORY=${WORK_DIR}/bin")
if(NOT "${MAKE_PROGRAM}" STREQUAL "")
    list(APPEND consumer_configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()

# configure_build_run(<source dir> <extra -D args>...): configure, build and run `consumer`.
function(configure_build_run source)
    run_step("configure ${source}" "${CMAKE_COMMAND}" -S "${source}" -B "${WORK_DIR}/build"
             ${consumer_configure_args} ${ARGN})
    run_step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build" --config Debug)
    set(exe "${WORK_DIR}/bin/consumer${CMAKE_EXECUTABLE_SUFFIX}")
    if(NOT EXISTS "${exe}")
        set(exe "${WORK_DIR}/bin/Debug/consumer${CMAKE_EXECUTABLE_SUFFIX}") # multi-config
    endif()
    run_step("run ${exe}" "${exe}")
endfunction()
