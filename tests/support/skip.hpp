// SPDX-License-Identifier: MIT
// Test support: the one way a test is skipped, and the one way a test finds a program it needs
// (a peer such as curl or haproxy, the CLI, an example), which fails when that program is missing
// unless the developer asked for skips.
//
// skip_test(reason) records the reason; the caller then returns, so destructors run (a started
// process is stopped). tests/main.cpp ends the run with exit status 77 when a test was skipped and
// none failed, and tests/CMakeLists.txt runs every test case alone under ctest with
// SKIP_RETURN_CODE 77 and TINYPROXY_UNDER_CTEST=1: ctest reports it as Skipped, never as passed.
// Run by hand (the doctest binary, without TINYPROXY_UNDER_CTEST), doctest has no skipped state:
// the skipped test counts as passed in its summary, and the binary lists every skip reason last.
#pragma once

#include <cstdlib>  // std::getenv
#include <iostream> // skip reasons
#include <mutex>    // the record of skips
#include <string>   // reasons, paths
#include <vector>   // the record of skips

#include <unistd.h> // access

#include <doctest/doctest.h>

namespace tptest {

/// The reasons of every skip_test() so far in this process, in order.
inline std::vector<std::string>& skip_reasons() {
    static std::vector<std::string> reasons;
    return reasons;
}

inline std::mutex& skip_mutex() {
    static std::mutex mutex;
    return mutex;
}

/// Marks the running test as skipped for `reason` (the machine or build cannot run it: no ::1,
/// a sanitizer that changes what is measured, ...). The caller returns right after.
inline void skip_test(const std::string& reason) {
    std::cerr << "skipped: " << reason << std::endl;
    MESSAGE("skipped: " << reason);
    std::lock_guard<std::mutex> lock(skip_mutex());
    skip_reasons().push_back(reason);
}

/// True when the developer asked for tests whose programs are missing to be skipped
/// (TINYPROXY_ALLOW_SKIP=1) instead of failing.
inline bool skips_allowed() {
    const char* value = std::getenv("TINYPROXY_ALLOW_SKIP");
    return value != nullptr && std::string(value) == "1";
}

/// `path` when it names an executable. Otherwise the test fails ("<what> is required: <remedy>,
/// or set TINYPROXY_ALLOW_SKIP=1 to skip"), or, with TINYPROXY_ALLOW_SKIP=1, is skipped and ""
/// is returned (the caller then returns).
inline std::string required_program(const std::string& what, const std::string& path,
                                    const std::string& remedy) {
    if (!path.empty() && ::access(path.c_str(), X_OK) == 0) {
        return path;
    }
    std::string missing =
        what + " is required" + (path.empty() ? std::string() : " (not found at '" + path + "')");
    if (skips_allowed()) {
        skip_test(missing + "; skipped as TINYPROXY_ALLOW_SKIP=1 asks");
        return {};
    }
    FAIL(missing << ": " << remedy << ", or set TINYPROXY_ALLOW_SKIP=1 to skip");
    return {};
}

/// What the test binary exits with, given doctest's own result: 77 under ctest when a test was
/// skipped and none failed, doctest's result otherwise (listing the skips first when run by hand).
inline int exit_status(int doctest_result) {
    std::lock_guard<std::mutex> lock(skip_mutex());
    if (skip_reasons().empty() || doctest_result != 0) {
        return doctest_result;
    }
    if (std::getenv("TINYPROXY_UNDER_CTEST") != nullptr) {
        return 77;
    }
    std::cerr << skip_reasons().size() << " skipped (counted as passed above):\n";
    for (const std::string& reason : skip_reasons()) {
        std::cerr << "  " << reason << "\n";
    }
    return doctest_result;
}

} // namespace tptest
