// bench/floor.cpp: the floor a loopback forwarder can reach with the socket API on this machine.
// Not a proxy: a measuring stick for `bench/run.sh --floor`. It forwards 127.0.0.1 to one
// upstream with the fewest system calls a short connection or a round trip can take, and none
// of a proxy's duties: no timeouts, no limits, no error reporting, no partial writes (a send
// that cannot take everything drops the connection), and it trusts that a loopback connect()
// has finished when it returns. Two shapes:
//
//   floor --listen 127.0.0.1:0 (--forward 127.0.0.1:UP [--threads | --splice N] | --socks)
//         [anything else is ignored]
//
//   default     one thread, edge-triggered epoll: never an EPOLL_CTL_MOD, a client read as soon
//               as it is accepted (it usually speaks first), one read per event
//               (two when the peer's FIN has come, to hear it), the reply and our FIN in one
//               segment, close() without shutdown() once both directions are done.
//   --threads   two blocking threads per connection, each recv() then send(): no wait call at
//               all, 4 system calls per round trip instead of 6.
//   --splice N  the default shape, but every byte goes through a pipe of N bytes per direction
//               with splice(2), as much as the source has and the destination takes: bulk
//               transfer with nothing held back for fairness.
//   --socks     the default shape behind a SOCKS5 handshake cut to its messages: the greeting
//               is answered "no authentication" unread, the request is taken to be an IPv4
//               CONNECT and answered with a zero address (no getsockname). Two round trips.
//
// It prints "listening on 127.0.0.1:PORT" like tinyproxy, so run.sh can start it as a target.
// It exits on SIGTERM, or after 30 minutes.
#include <cerrno>  // errno
#include <cstdint> // uint16_t
#include <cstdio>  // printf
#include <cstdlib> // atoi
#include <cstring> // strrchr, memcpy
#include <string>  // std::string
#include <thread>  // --threads
#include <vector>  // connections

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

sockaddr_in loopback(int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

int port_of(const char* host_port) {
    const char* colon = std::strrchr(host_port, ':');
    return colon ? std::atoi(colon + 1) : 0;
}

void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int upstream_socket(int flags, int up_port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
    nodelay(fd);
    sockaddr_in a = loopback(up_port);
    connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a); // EINPROGRESS: done on loopback
    return fd;
}

// --threads: one direction of one connection; the connection's thread closes both sockets
// once both directions are done.
void copy_until_eof(int from, int to) {
    char buf[65536];
    for (;;) {
        ssize_t n = recv(from, buf, sizeof buf, 0);
        if (n <= 0 || send(to, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n)
            break;
    }
    shutdown(to, SHUT_WR);
}

void serve_threads(int listener, int up_port) {
    for (;;) {
        int client = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0)
            continue;
        std::thread([client, up_port] {
            int up = upstream_socket(0, up_port);
            std::thread back(copy_until_eof, up, client);
            copy_until_eof(client, up);
            back.join();
            close(up);
            close(client);
        }).detach();
    }
}

struct side {
    int fd = -1;
    bool eof = false;       // the source said end of stream
    int pipe[2] = {-1, -1}; // --splice: this side's bytes on their way to the other
    size_t queued = 0;      // bytes in that pipe
    bool shut = false;      // the end of stream is passed on
};
size_t pipe_size = 0; // --splice N (0: copies)
struct connection {
    side s[2];     // 0: client, 1: upstream
    int stage = 2; // SOCKS5: 0 greeting expected, 1 request expected, 2 relaying
};

int watch(int ep, int fd, uint64_t slot, uint64_t k) {
    epoll_event add{};
    add.events =
        EPOLLIN | EPOLLRDHUP | EPOLLET | (pipe_size ? static_cast<uint32_t>(EPOLLOUT) : 0u);
    add.data.u64 = slot << 1 | k;
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &add);
}

// One SOCKS5 message from the client at stage 0 or 1; false drops the connection.
bool handshake(connection& c, int ep, uint64_t slot, char* buf, size_t size) {
    ssize_t got = recv(c.s[0].fd, buf, size, 0);
    if (got <= 0)
        return got < 0 && errno == EAGAIN;
    if (c.stage == 0) {
        c.stage = 1;
        return send(c.s[0].fd, "\5\0", 2, MSG_NOSIGNAL) == 2;
    }
    if (got < 10)
        return false;
    sockaddr_in to{};
    to.sin_family = AF_INET;
    std::memcpy(&to.sin_addr, buf + 4, 4);
    std::memcpy(&to.sin_port, buf + 8, 2);
    c.s[1].fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    nodelay(c.s[1].fd);
    connect(c.s[1].fd, reinterpret_cast<sockaddr*>(&to), sizeof to);
    watch(ep, c.s[1].fd, slot, 1);
    c.stage = 2;
    static const char reply[10] = {5, 0, 0, 1};
    return send(c.s[0].fd, reply, sizeof reply, MSG_NOSIGNAL) == sizeof reply &&
           (got == 10 ||
            send(c.s[1].fd, buf + 10, static_cast<size_t>(got - 10), MSG_NOSIGNAL) == got - 10);
}

// Closes a connection's sockets and pipes, and leaves it as new (relaying, stage 2).
void close_all(connection& c) {
    for (side& one : c.s)
        for (int fd : {one.fd, one.pipe[0], one.pipe[1]})
            if (fd >= 0)
                close(fd);
    c = connection{};
}

// --splice: moves from's bytes through its pipe to `to` until the source or the destination
// would block. Edge-triggered: every event pumps both directions that far, so no edge is lost.
bool pump(side& from, side& to) {
    constexpr unsigned flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
    if (from.pipe[0] < 0) {
        if (pipe2(from.pipe, O_NONBLOCK | O_CLOEXEC) != 0)
            return false;
        fcntl(from.pipe[1], F_SETPIPE_SZ, static_cast<int>(pipe_size));
    }
    for (bool moved = true; moved;) {
        moved = false;
        if (!from.eof && from.queued < pipe_size) {
            ssize_t n =
                splice(from.fd, nullptr, from.pipe[1], nullptr, pipe_size - from.queued, flags);
            if (n > 0)
                from.queued += static_cast<size_t>(n), moved = true;
            else if (n == 0)
                from.eof = true;
            else if (errno != EAGAIN)
                return false;
        }
        if (from.queued > 0) {
            ssize_t n = splice(from.pipe[0], nullptr, to.fd, nullptr, from.queued, flags);
            if (n > 0)
                from.queued -= static_cast<size_t>(n), moved = true;
            else if (n < 0 && errno != EAGAIN)
                return false;
        }
    }
    if (from.eof && from.queued == 0 && !from.shut) {
        shutdown(to.fd, SHUT_WR);
        from.shut = true;
    }
    return true;
}

void serve_epoll(int listener, int up_port, bool socks) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = ~0ull;
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    std::vector<connection> conns(70000);
    std::vector<size_t> free_slots;
    for (size_t i = conns.size(); i-- > 0;)
        free_slots.push_back(i);
    static char buf[65536];
    epoll_event events[256];
    auto end = [&](size_t slot) {
        close_all(conns[slot]);
        free_slots.push_back(slot);
    };
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int e = 0; e < n; ++e) {
            if (events[e].data.u64 == ~0ull) {
                int client;
                while (!free_slots.empty() &&
                       (client = accept4(listener, nullptr, nullptr,
                                         SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    size_t slot = free_slots.back();
                    free_slots.pop_back();
                    connection& c = conns[slot];
                    c = connection{};
                    c.s[0].fd = client;
                    bool ok = true;
                    if (socks) {
                        c.stage = 0;
                        ok = handshake(c, ep, slot, buf, sizeof buf);
                    } else {
                        c.s[1].fd = upstream_socket(SOCK_NONBLOCK, up_port);
                        ssize_t got = pipe_size ? 0 : recv(client, buf, sizeof buf, 0);
                        if (got > 0)
                            ok =
                                send(c.s[1].fd, buf, static_cast<size_t>(got), MSG_NOSIGNAL) == got;
                        watch(ep, c.s[1].fd, slot, 1);
                    }
                    if (ok)
                        watch(ep, client, slot, 0);
                    else
                        end(slot);
                }
                continue;
            }
            size_t slot = events[e].data.u64 >> 1;
            int k = static_cast<int>(events[e].data.u64 & 1);
            connection& c = conns[slot];
            if (c.stage < 2) {
                if (!handshake(c, ep, slot, buf, sizeof buf))
                    end(slot);
                continue;
            }
            if (pipe_size) {
                if (c.s[0].fd < 0)
                    continue;
                bool ok = pump(c.s[0], c.s[1]) && pump(c.s[1], c.s[0]);
                if (!ok || (c.s[0].shut && c.s[1].shut))
                    end(slot);
                continue;
            }
            side& from = c.s[k];
            side& to = c.s[1 - k];
            if (from.fd < 0 || from.eof)
                continue;
            ssize_t got;
            while ((got = recv(from.fd, buf, sizeof buf, 0)) == static_cast<ssize_t>(sizeof buf))
                if (send(to.fd, buf, sizeof buf, MSG_NOSIGNAL) != got)
                    break; // bulk: not the floor's job
            bool fin = (events[e].events & EPOLLRDHUP) != 0;
            if (got > 0 && fin) { // the FIN is behind these bytes: hear it now
                ssize_t more = recv(from.fd, buf + got, sizeof buf - static_cast<size_t>(got), 0);
                if (more > 0)
                    got += more;
                else if (more == 0)
                    from.eof = true;
            }
            if (got == 0)
                from.eof = true;
            if (got > 0 && send(to.fd, buf, static_cast<size_t>(got),
                                MSG_NOSIGNAL | (from.eof ? MSG_MORE : 0)) != got)
                from.eof = to.eof = true; // the floor does not queue: drop the connection
            if (got < 0 && errno != EAGAIN)
                from.eof = to.eof = true;
            if (from.eof && !to.eof)
                shutdown(to.fd, SHUT_WR);
            if (from.eof && to.eof)
                end(slot);
        }
    }
}

} // namespace

int main(int argc, char** argv) {
    int listen_port = 0, up_port = 0;
    bool threads = false, socks = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--listen" && i + 1 < argc)
            listen_port = port_of(argv[++i]);
        else if (a == "--forward" && i + 1 < argc)
            up_port = port_of(argv[++i]);
        else if (a == "--threads")
            threads = true;
        else if (a == "--socks")
            socks = true;
        else if (a == "--splice" && i + 1 < argc)
            pipe_size = std::strtoul(argv[++i], nullptr, 10);
    }
    if (up_port == 0 && !socks) {
        std::fprintf(stderr, "floor: --forward 127.0.0.1:PORT or --socks is required\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    alarm(1800);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (threads ? 0 : SOCK_NONBLOCK), 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    nodelay(listener); // accepted clients inherit it
    sockaddr_in a = loopback(listen_port);
    socklen_t len = sizeof a;
    if (bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        listen(listener, 4096) != 0 ||
        getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        std::perror("floor: listen");
        return 1;
    }
    std::printf("listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
    std::fflush(stdout);
    if (threads)
        serve_threads(listener, up_port);
    else
        serve_epoll(listener, up_port, socks);
}
