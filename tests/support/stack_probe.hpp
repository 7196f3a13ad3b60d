// SPDX-License-Identifier: MIT
// How much stack a call takes: it runs on a thread whose stack we map and fill with a pattern,
// and the deepest byte that no longer holds the pattern says how far down the call wrote.
#pragma once

#include <cstddef>    // std::size_t
#include <cstdint>    // std::uint8_t
#include <cstring>    // memset
#include <functional> // the call
#include <stdexcept>  // setup failures

#include <pthread.h>  // pthread_create with our own stack
#include <sys/mman.h> // mmap

namespace tptest {

/// Bytes of stack `call` wrote below what an empty call writes (the thread's start-up and, on
/// glibc, its thread control block and TLS, which live at the top of the stack we hand it).
/// `call` runs twice: first on this thread, so that the symbols it needs are bound before we
/// measure (a lazy binding takes kilobytes of stack, once per process), then on the probe.
inline std::size_t stack_bytes_used(const std::function<void()>& call) {
    call();
    constexpr std::size_t size = 1024 * 1024;
    constexpr std::uint8_t pattern = 0xA5;
    struct run {
        const std::function<void()>* call;
        static void* entry(void* self) {
            (*static_cast<run*>(self)->call)();
            return nullptr;
        }
    };
    auto deepest = [&](const std::function<void()>& what) -> std::size_t {
        void* memory =
            ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (memory == MAP_FAILED) {
            throw std::runtime_error("stack_bytes_used: mmap");
        }
        auto* bytes = static_cast<std::uint8_t*>(memory);
        std::memset(bytes, pattern, size);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstack(&attr, memory, size);
        run r{&what};
        pthread_t thread;
        int failed = pthread_create(&thread, &attr, &run::entry, &r);
        pthread_attr_destroy(&attr);
        if (failed == 0) {
            pthread_join(thread, nullptr);
        }
        std::size_t lowest = 0;
        while (lowest < size && bytes[lowest] == pattern) {
            ++lowest;
        }
        ::munmap(memory, size);
        if (failed != 0) {
            throw std::runtime_error("stack_bytes_used: pthread_create");
        }
        return size - lowest;
    };
    std::size_t baseline = deepest([] {});
    std::size_t used = deepest(call);
    return used > baseline ? used - baseline : 0;
}

} // namespace tptest
