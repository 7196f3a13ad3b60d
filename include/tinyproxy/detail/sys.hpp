// SPDX-License-Identifier: MIT
// One thin wrapper per system call: (args..., std::error_code&) noexcept, EINTR handled here.
#pragma once

#include <atomic>       // the budget of grown pipes
#include <cerrno>       // errno
#include <chrono>       // deadlines
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint8_t
#include <limits>       // the highest descriptor number
#include <system_error> // std::error_code
#include <utility>      // std::exchange

#include <fcntl.h>        // fcntl, O_NONBLOCK, FD_CLOEXEC
#include <netinet/in.h>   // IPPROTO_TCP
#include <netinet/tcp.h>  // TCP_NODELAY
#include <poll.h>         // poll
#include <signal.h>       // pthread_sigmask, sigpending, sigtimedwait: SIGPIPE without a handler
#include <sys/mman.h>     // mmap, munmap: memory of our own, not the heap's
#include <sys/resource.h> // getrlimit
#include <sys/socket.h>   // socket calls
#include <time.h>         // timespec, the zero timeout of sigtimedwait
#include <unistd.h>       // close, pipe, read, write

#include "tinyproxy/config.hpp"
#include "tinyproxy/error.hpp"

// After config.hpp, which defines the feature macros.
#if TINYPROXY_HAS_CLOSE_RANGE
#    include <sys/syscall.h> // SYS_close_range
#endif

namespace tinyproxy {

/// The one clock every deadline is measured on.
using steady_clock = std::chrono::steady_clock;
using time_point = steady_clock::time_point;

namespace detail {

/// errno as an error_code: the one place the library reads errno.
inline std::error_code last_error() noexcept { return {errno, std::system_category()}; }

inline bool would_block(const std::error_code& ec) noexcept {
    return ec == std::errc::operation_would_block ||
           ec == std::errc::resource_unavailable_try_again;
}

/// close(2), never retried: after EINTR the descriptor is already gone on Linux, and a retry
/// could close a descriptor another thread has just been given.
inline void close_fd(int fd) noexcept {
    if (fd >= 0) {
        ::close(fd);
    }
}

inline bool set_cloexec(int fd, std::error_code& ec) noexcept {
    int flags = ::fcntl(fd, F_GETFD);
    if (flags < 0 || ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

inline bool set_nonblocking(int fd, bool on, std::error_code& ec) noexcept {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0) {
        ec = last_error();
        return false;
    }
    int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    if (wanted != flags && ::fcntl(fd, F_SETFL, wanted) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

/// A socket with close-on-exec set (so a fork+exec elsewhere in the program never inherits it)
/// and, where the platform asks for it, SO_NOSIGPIPE.
inline int open_socket(int family, int type, bool nonblocking, std::error_code& ec) noexcept {
#if TINYPROXY_HAS_SOCK_FLAGS
    int fd = ::socket(family, type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) {
        ec = last_error();
    }
    return fd;
#else
    int fd = ::socket(family, type, 0);
    if (fd < 0) {
        ec = last_error();
        return -1;
    }
    if (!set_cloexec(fd, ec) || (nonblocking && !set_nonblocking(fd, true, ec))) {
        close_fd(fd);
        return -1;
    }
#    ifdef SO_NOSIGPIPE
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#    endif
    return fd;
#endif
}

/// accept4(2) with SOCK_CLOEXEC, and SOCK_NONBLOCK when asked; EINTR retried, and ECONNABORTED
/// (a client that reset before we accepted it) reported as "would block" so callers just move on.
inline int accept_socket(int listen_fd, sockaddr_storage& peer, bool nonblocking,
                         std::error_code& ec) noexcept {
    for (;;) {
        socklen_t length = sizeof peer;
#if TINYPROXY_HAS_ACCEPT4
        int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &length,
                           SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0));
#else
        int fd = ::accept(listen_fd, reinterpret_cast<sockaddr*>(&peer), &length);
        if (fd >= 0 && (!set_cloexec(fd, ec) || !set_nonblocking(fd, nonblocking, ec))) {
            close_fd(fd);
            return -1;
        }
#endif
        if (fd >= 0) {
            return fd;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == ECONNABORTED) {
            ec = std::make_error_code(std::errc::resource_unavailable_try_again);
            return -1;
        }
        ec = last_error();
        return -1;
    }
}

/// connect(2) on a non-blocking socket: true when connected at once; false with ec empty when
/// the connection is in progress; false with ec set on failure.
inline bool start_connect(int fd, const sockaddr* address, socklen_t length,
                          std::error_code& ec) noexcept {
    if (::connect(fd, address, length) == 0) {
        return true;
    }
    // EINTR on connect means the attempt goes on in the background, like EINPROGRESS.
    if (errno == EINPROGRESS || errno == EINTR) {
        return false;
    }
    ec = last_error();
    return false;
}

/// The socket's pending error (SO_ERROR, which reading clears): the outcome of a non-blocking
/// connect once the socket is writable, or a reset that no read or write has reported yet.
inline std::error_code connect_result(int fd) noexcept {
    int error = 0;
    socklen_t length = sizeof error;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) < 0) {
        return last_error();
    }
    return {error, std::system_category()};
}

/// recv(2): the count read (0 means end of stream); EINTR retried; EAGAIN comes back as an
/// error for which would_block() is true.
inline std::size_t recv_some(int fd, void* data, std::size_t size, std::error_code& ec,
                             int flags = 0) noexcept {
    for (;;) {
        ssize_t n = ::recv(fd, data, size, flags);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
}

#if TINYPROXY_HAS_RDHUP
/// What poll(2) reports (and epoll as EPOLLRDHUP) once the peer has sent its FIN.
constexpr short peer_closed_event = POLLRDHUP;
/// send(2): hold these bytes back for what follows at once (here, our FIN): one segment.
constexpr int more_follows_flag = MSG_MORE;
#else
constexpr short peer_closed_event = 0;
constexpr int more_follows_flag = 0;
#endif

/// send(2) that never raises SIGPIPE; EINTR retried.
inline std::size_t send_some(int fd, const void* data, std::size_t size, std::error_code& ec,
                             int flags = 0) noexcept {
#if TINYPROXY_HAS_MSG_NOSIGNAL
    flags |= MSG_NOSIGNAL;
#endif // elsewhere SO_NOSIGPIPE was set when the socket was made
    for (;;) {
        ssize_t n = ::send(fd, data, size, flags);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
}

/// recvfrom(2) of one datagram: its length (MSG_TRUNC where the platform has it: a datagram
/// longer than `size` reports its full length, so the caller can tell it was cut), and the
/// sender in `from`; EINTR retried; EAGAIN as for recv_some.
inline std::size_t recvfrom_some(int fd, void* data, std::size_t size, sockaddr_storage& from,
                                 socklen_t& from_length, std::error_code& ec) noexcept {
#ifdef MSG_TRUNC
    const int flags = MSG_TRUNC;
#else
    const int flags = 0;
#endif
    for (;;) {
        from_length = sizeof from;
        ssize_t n =
            ::recvfrom(fd, data, size, flags, reinterpret_cast<sockaddr*>(&from), &from_length);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
}

/// sendto(2) of one datagram; never raises SIGPIPE; EINTR retried.
inline std::size_t sendto_some(int fd, const void* data, std::size_t size, const sockaddr* to,
                               socklen_t to_length, std::error_code& ec) noexcept {
    int flags = 0;
#if TINYPROXY_HAS_MSG_NOSIGNAL
    flags |= MSG_NOSIGNAL;
#endif
    for (;;) {
        ssize_t n = ::sendto(fd, data, size, flags, to, to_length);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
}

inline bool shutdown_socket(int fd, int how, std::error_code& ec) noexcept {
    if (::shutdown(fd, how) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

inline bool set_int_option(int fd, int level, int name, int value, std::error_code& ec) noexcept {
    if (::setsockopt(fd, level, name, &value, sizeof value) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

/// SO_LINGER 0: close() then sends a reset instead of a FIN.
inline bool set_linger_reset(int fd, std::error_code& ec) noexcept {
    ::linger option{1, 0};
    if (::setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, sizeof option) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

/// TCP_NODELAY: small writes go out at once instead of being batched (Nagle off).
inline bool set_nodelay(int fd, bool on, std::error_code& ec) noexcept {
    return set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0, ec);
}

/// `now + wait`, saturating at the largest time point: a timeout of milliseconds::max()
/// means "never", not an overflow.
template <class Rep, class Period>
time_point deadline_after(time_point now, std::chrono::duration<Rep, Period> wait) noexcept {
    if (wait <= wait.zero()) {
        return now;
    }
    auto room = time_point::max() - now;
    if (std::chrono::duration_cast<std::chrono::duration<double>>(wait).count() >=
        std::chrono::duration_cast<std::chrono::duration<double>>(room).count()) {
        return time_point::max();
    }
    return now + std::chrono::duration_cast<steady_clock::duration>(wait);
}

/// Milliseconds from now until `until`, rounded up and clamped to what poll(2) takes;
/// -1 (wait forever) for the largest time point.
inline int poll_timeout_ms(time_point until) noexcept {
    if (until == time_point::max()) {
        return -1;
    }
    auto now = steady_clock::now();
    if (until <= now) {
        return 0;
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count() + 1;
    return ms > 60'000 ? 60'000 : static_cast<int>(ms);
}

/// What poll(2) reports for one descriptor right now, without waiting: 0 for nothing (or a
/// failed poll, which the caller's next real wait will meet again).
inline short ready_now(int fd, short events) noexcept {
    pollfd entry{fd, events, 0};
    return ::poll(&entry, 1, 0) == 1 ? entry.revents : 0;
}

/// poll(2) until `until`. Returns the count of ready descriptors, 0 on timeout, and 0 as well
/// when a signal interrupted it: callers loop on their own deadline, so an EINTR is simply an
/// early return, never an error.
inline int poll_fds(pollfd* fds, nfds_t count, time_point until, std::error_code& ec) noexcept {
    int n = ::poll(fds, count, poll_timeout_ms(until));
    if (n < 0) {
        if (errno == EINTR) {
            return 0;
        }
        ec = last_error();
        return 0;
    }
    return n;
}

/// A pipe with both ends close-on-exec, and non-blocking when asked.
inline bool make_pipe(int (&fds)[2], std::error_code& ec, bool nonblocking = false) noexcept {
#if TINYPROXY_HAS_SOCK_FLAGS
    if (::pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0)) < 0) {
        ec = last_error();
        return false;
    }
    return true;
#else
    if (::pipe(fds) < 0) {
        ec = last_error();
        return false;
    }
    if (!set_cloexec(fds[0], ec) || !set_cloexec(fds[1], ec) ||
        (nonblocking &&
         (!set_nonblocking(fds[0], true, ec) || !set_nonblocking(fds[1], true, ec)))) {
        close_fd(fds[0]);
        close_fd(fds[1]);
        return false;
    }
    return true;
#endif
}

/// A share of a process-wide budget (relay::shared_pipe_budget): taken once, given back when
/// released or destroyed, moved with its owner.
class pipe_growth {
public:
    pipe_growth() = default;
    pipe_growth(pipe_growth&& other) noexcept : held_(std::exchange(other.held_, false)) {}
    pipe_growth& operator=(pipe_growth&& other) noexcept {
        if (this != &other) {
            release();
            held_ = std::exchange(other.held_, false);
        }
        return *this;
    }
    pipe_growth(const pipe_growth&) = delete;
    pipe_growth& operator=(const pipe_growth&) = delete;
    ~pipe_growth() { release(); }

    /// Takes a share if fewer than `budget` are held in the process; false otherwise.
    bool take(int budget) noexcept {
        if (held_) {
            return true;
        }
        if (in_use().fetch_add(1, std::memory_order_relaxed) >= budget) {
            in_use().fetch_sub(1, std::memory_order_relaxed);
            return false;
        }
        held_ = true;
        return true;
    }
    void release() noexcept {
        if (held_) {
            in_use().fetch_sub(1, std::memory_order_relaxed);
            held_ = false;
        }
    }
    explicit operator bool() const noexcept { return held_; }
    /// The shares held in the process now (for tests).
    static int held_in_process() noexcept { return in_use().load(std::memory_order_relaxed); }

private:
    static std::atomic<int>& in_use() noexcept {
        static std::atomic<int> count{0};
        return count;
    }
    bool held_ = false;
};

/// Asks the kernel to let the pipe hold `size` bytes (F_SETPIPE_SZ, Linux) and returns what it
/// holds now: `size` or more when granted, its old capacity when refused (a user past the pipe
/// quota, or past pipe-max-size), 0 when even that is unknown.
inline std::size_t grow_pipe(int fd, std::size_t size) noexcept {
#if defined(F_SETPIPE_SZ) && defined(F_GETPIPE_SZ)
    int granted = ::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(size));
    if (granted < 0) {
        granted = ::fcntl(fd, F_GETPIPE_SZ);
    }
    return granted < 0 ? 0 : static_cast<std::size_t>(granted);
#else
    (void)fd;
    (void)size;
    return 64 * 1024; // POSIX says nothing; Linux and the BSDs make 64 KiB pipes
#endif
}

/// Memory in a private anonymous mapping of its own (empty if mmap fails), unmapped with it.
/// Not zero-filled by us: its pages are the kernel's zero page until written, so only what is
/// written costs memory, and in a fork child none of it is a copy of the parent's heap.
class mapped_buffer {
public:
    mapped_buffer() noexcept = default;
    explicit mapped_buffer(std::size_t size) noexcept {
        if (size == 0) {
            return;
        }
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            data_ = static_cast<std::uint8_t*>(p);
            size_ = size;
        }
    }
    mapped_buffer(mapped_buffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    mapped_buffer& operator=(mapped_buffer&& other) noexcept {
        if (this != &other) {
            release();
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }
    ~mapped_buffer() { release(); }

    std::uint8_t* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }

private:
    void release() noexcept {
        if (data_ != nullptr) {
            ::munmap(data_, size_);
        }
        data_ = nullptr;
        size_ = 0;
    }

    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

/// splice(2): moves up to `size` bytes from `from` to `to`, one of them a pipe, without copying
/// them through user space (SPLICE_F_MOVE) and without waiting on the pipe (SPLICE_F_NONBLOCK;
/// a socket must be non-blocking itself). Returns the count moved, 0 meaning end of stream when
/// `from` is a socket; EINTR retried; EAGAIN comes back as an error for which would_block() is
/// true. Fails with ENOSYS where the platform has no splice(2) (TINYPROXY_HAS_SPLICE is 0).
/// Unlike send_some it cannot say MSG_NOSIGNAL: into a socket whose peer is gone it raises
/// SIGPIPE, so whoever splices into a socket holds a sigpipe_guard.
inline std::size_t splice_some(int from, int to, std::size_t size, std::error_code& ec) noexcept {
#if TINYPROXY_HAS_SPLICE
    for (;;) {
        ssize_t n = ::splice(from, nullptr, to, nullptr, size, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
#else
    (void)from;
    (void)to;
    (void)size;
    ec = std::make_error_code(std::errc::function_not_supported);
    return 0;
#endif
}

/// pthread_sigmask(3): changes or reads the calling thread's signal mask. (It reports failure
/// by its return value, not errno.)
inline bool thread_signal_mask(int how, const sigset_t* set, sigset_t* old,
                               std::error_code& ec) noexcept {
    int error = ::pthread_sigmask(how, set, old);
    if (error != 0) {
        ec = std::error_code(error, std::system_category());
        return false;
    }
    return true;
}

/// sigpending(2): the signals pending for the calling thread or for the whole process.
inline bool pending_signals(sigset_t& pending, std::error_code& ec) noexcept {
    if (::sigpending(&pending) < 0) {
        ec = last_error();
        return false;
    }
    return true;
}

/// sigtimedwait(2) with a zero timeout: takes one pending signal of `set` (one directed at this
/// thread first, then one at the process) without waiting. Returns its number, or 0 when none of
/// `set` is pending. EINTR retried. Only where splice(2) exists, the one reason to call it;
/// elsewhere it takes nothing and returns 0.
inline int take_pending_signal(const sigset_t& set, std::error_code& ec) noexcept {
#if TINYPROXY_HAS_SPLICE
    const timespec no_wait{0, 0};
    for (;;) {
        int signal_number = ::sigtimedwait(&set, nullptr, &no_wait);
        if (signal_number > 0) {
            return signal_number;
        }
        if (errno == EAGAIN) {
            return 0;
        }
        if (errno != EINTR) {
            ec = last_error();
            return 0;
        }
    }
#else
    (void)set;
    (void)ec;
    return 0;
#endif
}

/// Blocks SIGPIPE in the calling thread for its lifetime, and afterwards unblocks it only if it
/// was not blocked before; it installs no handler and leaves every other signal alone. It is for
/// writes that cannot say MSG_NOSIGNAL (splice(2) into a socket): while the guard lives, the
/// SIGPIPE such a write raises stays pending instead of killing the process, and
/// take_raised() then takes it back. A SIGPIPE that was already pending when the guard began
/// (the user's own, directed at this thread or the process) is left alone.
class sigpipe_guard {
public:
    sigpipe_guard() noexcept;
    ~sigpipe_guard();
    sigpipe_guard(const sigpipe_guard&) = delete;
    sigpipe_guard& operator=(const sigpipe_guard&) = delete;

    /// Call after a write into a socket failed: takes the SIGPIPE the write raised, if any.
    void take_raised() noexcept;

private:
    static sigset_t only_sigpipe() noexcept {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        return set;
    }

    bool unblock_at_end_ = false; // SIGPIPE was not blocked before: this guard blocked it
    bool was_pending_ = false;    // a SIGPIPE was pending already when the guard began
};

inline sigpipe_guard::sigpipe_guard() noexcept {
    const sigset_t set = only_sigpipe();
    sigset_t before;
    std::error_code ec;
    if (!thread_signal_mask(SIG_BLOCK, &set, &before, ec)) {
        return;
    }
    unblock_at_end_ = sigismember(&before, SIGPIPE) != 1;
    // While SIGPIPE is not blocked nothing can be pending for us: it would have been delivered.
    sigset_t pending;
    if (!unblock_at_end_ && pending_signals(pending, ec)) {
        was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    }
}

inline sigpipe_guard::~sigpipe_guard() {
    if (unblock_at_end_) {
        const sigset_t set = only_sigpipe();
        std::error_code ignored;
        thread_signal_mask(SIG_UNBLOCK, &set, nullptr, ignored);
    }
}

inline void sigpipe_guard::take_raised() noexcept {
    if (!was_pending_) {
        // A write raises SIGPIPE at this thread, and sigtimedwait takes those first.
        std::error_code ignored;
        (void)take_pending_signal(only_sigpipe(), ignored);
    }
}

/// Closes descriptors first..last; false when the platform cannot do it in one call.
inline bool close_fd_range(int first, int last) noexcept {
#if TINYPROXY_HAS_CLOSE_RANGE && defined(SYS_close_range)
    return ::syscall(SYS_close_range, static_cast<unsigned>(first), static_cast<unsigned>(last),
                     0u) == 0;
#else
    (void)first;
    (void)last;
    return false;
#endif
}

/// Closes every descriptor from 3 on except those in `keep` (ascending). A forked child calls
/// it so that it holds nothing of its parent's: a socket the parent closes must really close.
inline void close_descriptors_except(const int* keep, std::size_t count) noexcept {
    rlimit limit{};
    int highest = 65535;
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
        limit.rlim_cur < 1048576) {
        highest = static_cast<int>(limit.rlim_cur) - 1;
    }
    int first = 3;
    for (std::size_t i = 0; i <= count; ++i) {
        int last = i < count ? keep[i] - 1 : highest;
        int range_end = i < count ? last : std::numeric_limits<int>::max();
        if (last >= first && !close_fd_range(first, range_end)) {
            for (int fd = first; fd <= last; ++fd) {
                ::close(fd);
            }
        }
        if (i < count && keep[i] + 1 > first) {
            first = keep[i] + 1;
        }
    }
}

} // namespace detail
} // namespace tinyproxy
