// SPDX-License-Identifier: MIT
// Readiness for many descriptors at once: poll(2) everywhere, epoll(7) on Linux. The event loop
// (policy/detail/event_loop.hpp) is their only user; each is one of its template arguments.
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // tokens
#include <system_error> // std::error_code
#include <vector>       // descriptor sets, ready lists

#include <cerrno> // EEXIST, ENOENT
#include <poll.h> // poll, POLLIN, ...

#include "tinyproxy/config.hpp"
#include "tinyproxy/detail/sys.hpp"

// After config.hpp, which defines the feature macros.
#if TINYPROXY_HAS_EPOLL
#    include <sys/epoll.h> // epoll_create1, epoll_ctl, epoll_wait
#endif

namespace tinyproxy {

/// Where one watched descriptor stands in a poller. It belongs to whoever owns the descriptor
/// and must stay at the same address while registered (the poll(2) poller points back at it).
struct poller_slot {
    static constexpr std::size_t none = static_cast<std::size_t>(-1);
    int fd = -1;              ///< the descriptor registered, -1 for none
    short events = 0;         ///< POLLIN and/or POLLOUT it waits for (and POLLRDHUP)
    std::uint32_t serial = 0; ///< which socket of that number (numbers are reused)
    std::size_t index = none; ///< poll_poller only: its place in the pollfd array
};

/// A descriptor that is ready: the token it was registered with, and poll(2)-style revents.
struct ready_event {
    std::uint64_t token;
    short revents;
};

/// The Poller interface (both below keep it):
///     bool update(poller_slot&, int fd, short events, std::uint32_t serial,
///                 std::uint64_t token, std::error_code&) noexcept;
///         Watch `fd` for `events` (0 still reports errors and hang-ups) and report `token`;
///         fd -1 stops watching. `serial` changes when the owner's socket was closed and a new
///         one took its place, which may have the same number.
///     bool watch_shared(poller_slot&, int fd, std::uint64_t token, std::error_code&) noexcept;
///         Watch `fd` for reading where other pollers watch it too (a listener several event
///         loops accept from): a new client wakes one waiting poller, not every one of them
///         (epoll: EPOLLEXCLUSIVE). update() with fd -1 stops watching it.
///     void forget(poller_slot&) noexcept;   // the descriptor is already closed
///     void close() noexcept;                // done: release what the poller holds
///     void wait(time_point until, std::vector<ready_event>& out, std::error_code&) noexcept;
///         Appends what is ready; returns early (with nothing) on a signal.

/// poll(2): portable, and cheap while the set is small. The set is kept between waits (no
/// rebuild per turn), but poll(2) itself scans every descriptor on each call.
class poll_poller {
public:
    bool update(poller_slot& slot, int fd, short events, std::uint32_t serial, std::uint64_t token,
                std::error_code& ec) noexcept;
    /// poll(2) has no way to wake only one of several waiters: every one of them is told.
    bool watch_shared(poller_slot& slot, int fd, std::uint64_t token,
                      std::error_code& ec) noexcept {
        return update(slot, fd, POLLIN, 0, token, ec);
    }
    void forget(poller_slot& slot) noexcept { remove(slot); }
    void close() noexcept {
        fds_.clear();
        tokens_.clear();
        owners_.clear();
    }
    void wait(time_point until, std::vector<ready_event>& out, std::error_code& ec) noexcept;

private:
    void remove(poller_slot& slot) noexcept;

    std::vector<pollfd> fds_;
    std::vector<std::uint64_t> tokens_;
    std::vector<poller_slot*> owners_; // to fix a slot's index when another moves into place
};

inline bool poll_poller::update(poller_slot& slot, int fd, short events, std::uint32_t serial,
                                std::uint64_t token, std::error_code& ec) noexcept {
    if (fd < 0) {
        remove(slot);
        return true;
    }
    if (slot.index == poller_slot::none) {
        try {
            fds_.push_back({fd, events, 0});
            tokens_.push_back(token);
            owners_.push_back(&slot);
        } catch (...) {
            fds_.resize(owners_.size());
            tokens_.resize(owners_.size());
            ec = std::make_error_code(std::errc::not_enough_memory);
            return false;
        }
        slot.index = fds_.size() - 1;
    }
    fds_[slot.index] = {fd, events, 0};
    tokens_[slot.index] = token;
    slot.fd = fd;
    slot.events = events;
    slot.serial = serial;
    return true;
}

inline void poll_poller::remove(poller_slot& slot) noexcept {
    // A registered slot's index is always inside the set; saying so (rather than only
    // `!= none`) also shows g++'s optimiser that the set is not empty here, where it would
    // otherwise warn (-Warray-bounds) about popping an empty vector.
    if (slot.index < fds_.size()) {
        std::size_t last = fds_.size() - 1;
        if (slot.index != last) { // the last one moves into the hole
            fds_[slot.index] = fds_[last];
            tokens_[slot.index] = tokens_[last];
            owners_[slot.index] = owners_[last];
            owners_[slot.index]->index = slot.index;
        }
        fds_.pop_back();
        tokens_.pop_back();
        owners_.pop_back();
    }
    slot = poller_slot{};
}

inline void poll_poller::wait(time_point until, std::vector<ready_event>& out,
                              std::error_code& ec) noexcept {
    try {
        out.reserve(out.size() + fds_.size());
    } catch (...) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return;
    }
    int ready = detail::poll_fds(fds_.data(), static_cast<nfds_t>(fds_.size()), until, ec);
    for (std::size_t i = 0; ready > 0 && i < fds_.size(); ++i) {
        if (fds_[i].revents != 0) {
            out.push_back({tokens_[i], fds_[i].revents});
            --ready;
        }
    }
}

#if TINYPROXY_HAS_EPOLL

/// epoll(7), level-triggered, so it reports exactly what poll(2) would: the cost of a wait
/// follows the descriptors that are ready, not the number watched, and an unchanged interest
/// costs no system call.
class epoll_poller {
public:
    epoll_poller() noexcept : epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)) {}
    epoll_poller(epoll_poller&& other) noexcept : epoll_fd_(other.epoll_fd_) {
        other.epoll_fd_ = -1;
    }
    epoll_poller& operator=(epoll_poller&& other) noexcept {
        if (this != &other) {
            detail::close_fd(epoll_fd_);
            epoll_fd_ = other.epoll_fd_;
            other.epoll_fd_ = -1;
        }
        return *this;
    }
    ~epoll_poller() { close(); }
    /// Done with: the descriptor is closed (a proxy runs once, and leaves nothing open).
    void close() noexcept {
        detail::close_fd(epoll_fd_);
        epoll_fd_ = -1;
    }

    bool update(poller_slot& slot, int fd, short events, std::uint32_t serial, std::uint64_t token,
                std::error_code& ec) noexcept;
    bool watch_shared(poller_slot& slot, int fd, std::uint64_t token, std::error_code& ec) noexcept;
    /// Closing a descriptor took it out of the epoll set already.
    void forget(poller_slot& slot) noexcept { slot = poller_slot{}; }
    void wait(time_point until, std::vector<ready_event>& out, std::error_code& ec) noexcept;

private:
    static std::uint32_t to_epoll(short events) noexcept {
        return ((events & POLLIN) != 0 ? EPOLLIN : 0u) | ((events & POLLOUT) != 0 ? EPOLLOUT : 0u) |
               ((events & POLLRDHUP) != 0 ? EPOLLRDHUP : 0u);
    }
    static short to_poll(std::uint32_t events) noexcept {
        return static_cast<short>(
            ((events & EPOLLIN) != 0 ? POLLIN : 0) | ((events & EPOLLOUT) != 0 ? POLLOUT : 0) |
            ((events & EPOLLERR) != 0 ? POLLERR : 0) | ((events & EPOLLHUP) != 0 ? POLLHUP : 0) |
            ((events & EPOLLRDHUP) != 0 ? POLLRDHUP : 0));
    }
    bool control(int op, int fd, short events, std::uint64_t token, std::error_code& ec,
                 std::uint32_t flags = 0) noexcept;

    int epoll_fd_;
    epoll_event ready_[256];
};

inline bool epoll_poller::control(int op, int fd, short events, std::uint64_t token,
                                  std::error_code& ec, std::uint32_t flags) noexcept {
    epoll_event event{};
    event.events = to_epoll(events) | flags;
    event.data.u64 = token;
    if (::epoll_ctl(epoll_fd_, op, fd, &event) == 0) {
        return true;
    }
    ec = detail::last_error();
    return false;
}

inline bool epoll_poller::update(poller_slot& slot, int fd, short events, std::uint32_t serial,
                                 std::uint64_t token, std::error_code& ec) noexcept {
    if (epoll_fd_ < 0) {
        ec = std::make_error_code(std::errc::too_many_files_open);
        return false;
    }
    if (fd < 0) {
        if (slot.fd >= 0) { // still open: unwatched, it would keep reporting its hang-up
            std::error_code ignored;
            control(EPOLL_CTL_DEL, slot.fd, 0, 0, ignored);
        }
        slot = poller_slot{};
        return true;
    }
    bool same_socket = slot.fd == fd && slot.serial == serial;
    if (same_socket && slot.events == events) {
        return true;
    }
    std::error_code first;
    // A new socket is added; one whose number we held before was closed meanwhile (closing
    // took it out of the set), so it is added too. MOD/ADD fall back to each other for the
    // rare case where that guess is wrong.
    int op = same_socket ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (!control(op, fd, events, token, first)) {
        int other = op == EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
        bool retry = first.value() == (op == EPOLL_CTL_MOD ? ENOENT : EEXIST);
        if (!retry || !control(other, fd, events, token, ec)) {
            ec = retry ? ec : first;
            return false;
        }
    }
    slot.fd = fd;
    slot.events = events;
    slot.serial = serial;
    return true;
}

inline bool epoll_poller::watch_shared(poller_slot& slot, int fd, std::uint64_t token,
                                       std::error_code& ec) noexcept {
    if (epoll_fd_ < 0) {
        ec = std::make_error_code(std::errc::too_many_files_open);
        return false;
    }
    if (slot.fd == fd) {
        return true; // an exclusive watch cannot be modified, and need not be
    }
    std::error_code first;
    // EPOLLEXCLUSIVE came with Linux 4.5; an older kernel says EINVAL, and wakes everyone.
    if (!control(EPOLL_CTL_ADD, fd, POLLIN, token, first, EPOLLEXCLUSIVE) &&
        (first != std::errc::invalid_argument || !control(EPOLL_CTL_ADD, fd, POLLIN, token, ec))) {
        ec = ec ? ec : first;
        return false;
    }
    slot.fd = fd;
    slot.events = POLLIN;
    slot.serial = 0;
    return true;
}

inline void epoll_poller::wait(time_point until, std::vector<ready_event>& out,
                               std::error_code& ec) noexcept {
    constexpr int capacity = static_cast<int>(sizeof ready_ / sizeof ready_[0]);
    try {
        out.reserve(out.size() + capacity);
    } catch (...) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return;
    }
    int n = ::epoll_wait(epoll_fd_, ready_, capacity, detail::poll_timeout_ms(until));
    if (n < 0) {
        if (errno != EINTR) {
            ec = detail::last_error();
        }
        return;
    }
    for (int i = 0; i < n; ++i) {
        out.push_back({ready_[i].data.u64, to_poll(ready_[i].events)});
    }
}

#endif // TINYPROXY_HAS_EPOLL

} // namespace tinyproxy
