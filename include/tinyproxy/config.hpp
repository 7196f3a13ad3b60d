// SPDX-License-Identifier: MIT
// Version and feature macros; the only header that tests operating-system macros.
#pragma once

#define TINYPROXY_VERSION_MAJOR 0
#define TINYPROXY_VERSION_MINOR 1
#define TINYPROXY_VERSION_PATCH 0
#define TINYPROXY_VERSION_STRING "0.1.0"

// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK in one call (Linux, the BSDs).
#if !defined(TINYPROXY_NO_ACCEPT4) &&                                                              \
    (defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__))
#    define TINYPROXY_HAS_ACCEPT4 1
#else
#    define TINYPROXY_HAS_ACCEPT4 0
#endif

// SOCK_CLOEXEC / SOCK_NONBLOCK flags on socket(2) and pipe2(2).
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
#    define TINYPROXY_HAS_SOCK_FLAGS 1
#else
#    define TINYPROXY_HAS_SOCK_FLAGS 0
#endif

// MSG_NOSIGNAL on send(2); elsewhere (macOS) the SO_NOSIGPIPE socket option does the same job.
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
#    define TINYPROXY_HAS_MSG_NOSIGNAL 1
#else
#    define TINYPROXY_HAS_MSG_NOSIGNAL 0
#endif

// close_range(2), to close every inherited descriptor in a forked child in one call.
#if !defined(TINYPROXY_NO_CLOSE_RANGE) && defined(__linux__)
#    define TINYPROXY_HAS_CLOSE_RANGE 1
#else
#    define TINYPROXY_HAS_CLOSE_RANGE 0
#endif

// epoll(7) behind poll_policy; poll(2) (portable_poll_policy) is built and tested everywhere.
#if !defined(TINYPROXY_NO_EPOLL) && defined(__linux__)
#    define TINYPROXY_HAS_EPOLL 1
#else
#    define TINYPROXY_HAS_EPOLL 0
#endif

// accept(2) gives a socket with its listener's TCP_NODELAY (Linux clones the listener's TCP
// state), so a proxy sets it once on the listener instead of once per client.
#if defined(__linux__)
#    define TINYPROXY_ACCEPT_INHERITS_NODELAY 1
#else
#    define TINYPROXY_ACCEPT_INHERITS_NODELAY 0
#endif

// POLLRDHUP / EPOLLRDHUP: the wait says the peer has sent its FIN, so a relay whose read came
// back short knows the socket is at end of stream without another read to hear it say so.
#if !defined(TINYPROXY_NO_RDHUP) && defined(__linux__)
#    define TINYPROXY_HAS_RDHUP 1
#else
#    define TINYPROXY_HAS_RDHUP 0
#endif

// splice(2), to relay bulk data socket -> pipe -> socket without copying it through user space.
#if !defined(TINYPROXY_NO_SPLICE) && defined(__linux__)
#    define TINYPROXY_HAS_SPLICE 1
#else
#    define TINYPROXY_HAS_SPLICE 0
#endif

// Built with ThreadSanitizer: it refuses a thread whose stack we map if that stack is smaller
// than it wants for itself (about 900 KiB with clang 14), so thread_policy's stacks are at least
// TINYPROXY_SANITIZER_MIN_STACK bytes then.
#if defined(__SANITIZE_THREAD__)
#    define TINYPROXY_SANITIZER_MIN_STACK (4u << 20)
#elif defined(__has_feature)
#    if __has_feature(thread_sanitizer)
#        define TINYPROXY_SANITIZER_MIN_STACK (4u << 20)
#    endif
#endif
#if !defined(TINYPROXY_SANITIZER_MIN_STACK)
#    define TINYPROXY_SANITIZER_MIN_STACK 0u
#endif
