// The doctest main, and nothing else: every test lives in a tests/test_*.cpp. It turns a run whose
// test was skipped into exit status 77, which ctest reports as Skipped (tests/support/skip.hpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "support/skip.hpp"

int main(int argc, char** argv) {
    doctest::Context context(argc, argv);
    int result = context.run();
    if (context.shouldExit()) {
        return result; // --help, --list-test-cases and the like
    }
    return tptest::exit_status(result);
}
