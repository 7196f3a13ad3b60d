// bench/load.cpp: the benchmark's load client, its upstream servers and its /proc probe, in one
// loopback-only program. Every mode is bounded in time; every blocking call has a timeout.
//
//   load ports N                      N free TCP ports on 127.0.0.1, one a line
//   load waitport PORT [SECONDS]      exit 0 once 127.0.0.1:PORT (or *:PORT) is listening
//   load server|echo|hold|sink|mixed PORT [--time S]
//                                     upstreams on 127.0.0.1:PORT (0: any; prints "port N";
//                                     "hold" without --port is this, with --port the client):
//                                     server: read 64 B, reply 64 B, close (closes first)
//                                     echo:   send back what arrives
//                                     hold:   send 1 byte on accept, then keep the connection
//                                     sink:   read and discard until EOF, then close
//                                     mixed:  a sink for connections whose first byte is
//                                             'b' (load bulk's), an echo for the rest
//   load rate --port P [--socks5 SP] [--threads 8] [--time 2]
//                                     connect, 64 B request, 64 B reply, read to EOF, close
//   load rr   --port P [--socks5 SP] [--count 20000] [--time 60]
//                                     one connection, 64 B ping-pong; p50/p99 in microseconds,
//                                     max, then p1 ... p99.9 (for latency CDFs)
//   load bulk --port P [--socks5 SP] [--streams 1] [--time 2]
//                                     write 128 KiB chunks to a sink for S seconds per stream
//   load bulk --port P --listen-port L [--streams 1] [--time 2]
//                                     the same, but this process is the upstream too: it
//                                     listens on L (the proxy forwards there) and reports the
//                                     bytes received from the first byte to the last read in
//                                     S seconds, as bytes/s; nothing drained after
//   load delay N --port P [--socks5 SP] [--time 10] [--interval-ms 200] [--subtract-us 0]
//                                     N connections to an echo, opened 16 at a time; each sends
//                                     16 B (its send time) every interval, spread evenly; the
//                                     round trips (first of each connection left out) less
//                                     --subtract-us: count, p50/p99/max in microseconds
//   load hold N --port P [--socks5 SP] [--time 120] [--open-time 60]
//                                     open N connections, wait for the upstream's byte on each,
//                                     print "held K ...", keep them until SIGTERM or --time
//   load costs                        this machine's cost of fork+exit+wait and of a thread
//                                     create+join, in microseconds (context for the results)
//   load tree PID                     PID and its descendants, one a line
//   load proc PID                     CPU seconds (utime+stime, plus reaped children), RSS and
//                                     PSS (KB) summed over PID and all its descendants
//
// With --socks5 SP the client connects to 127.0.0.1:SP, does the SOCKS5 no-auth handshake and
// asks for 127.0.0.1:P; without it, it connects to 127.0.0.1:P.
#include <algorithm> // sort, max
#include <atomic>    // stop flag, counters
#include <chrono>    // steady_clock
#include <cinttypes> // PRIu64
#include <cstdint>   // uint64_t
#include <cstdio>    // printf
#include <cstdlib>   // strtol
#include <cstring>   // strerror
#include <fstream>   // /proc files
#include <map>       // process tree
#include <sstream>   // /proc parsing
#include <string>    // std::string
#include <thread>    // workers
#include <vector>    // buffers

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using clock_type = std::chrono::steady_clock;

std::atomic<bool> stop_requested{false};

extern "C" void on_stop(int) { stop_requested = true; }

void install_stop_handlers() {
    struct sigaction action {};
    action.sa_handler = on_stop;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    signal(SIGPIPE, SIG_IGN);
}

void raise_fd_limit() {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "load: %s\n", what.c_str());
    std::exit(2);
}

double seconds_since(clock_type::time_point start) {
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

sockaddr_in loopback(int port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
}

void set_timeouts(int fd, int seconds) {
    timeval tv{};
    tv.tv_sec = seconds;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); // Linux: bounds connect() too
}

void set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool write_all(int fd, const void* data, std::size_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
        ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        p += n;
        size -= static_cast<std::size_t>(n);
    }
    return true;
}

bool read_exact(int fd, void* data, std::size_t size) {
    char* p = static_cast<char*>(data);
    while (size > 0) {
        ssize_t n = ::recv(fd, p, size, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        p += n;
        size -= static_cast<std::size_t>(n);
    }
    return true;
}

/// SOCKS5, no authentication, CONNECT to 127.0.0.1:port; the reply's bound address is read
/// whole, so the next byte is the upstream's.
bool socks5_connect(int fd, int port) {
    const unsigned char greeting[] = {5, 1, 0};
    unsigned char choice[2];
    if (!write_all(fd, greeting, sizeof greeting) || !read_exact(fd, choice, 2) || choice[0] != 5 ||
        choice[1] != 0) {
        return false;
    }
    const unsigned char request[] = {5,
                                     1,
                                     0,
                                     1,
                                     127,
                                     0,
                                     0,
                                     1,
                                     static_cast<unsigned char>(port >> 8),
                                     static_cast<unsigned char>(port & 0xff)};
    unsigned char head[4];
    if (!write_all(fd, request, sizeof request) || !read_exact(fd, head, 4) || head[0] != 5 ||
        head[1] != 0) {
        return false;
    }
    std::size_t rest = 0;
    if (head[3] == 1) {
        rest = 4 + 2;
    } else if (head[3] == 4) {
        rest = 16 + 2;
    } else if (head[3] == 3) {
        unsigned char len = 0;
        if (!read_exact(fd, &len, 1)) {
            return false;
        }
        rest = std::size_t{len} + 2;
    } else {
        return false;
    }
    unsigned char skip[256 + 2];
    return read_exact(fd, skip, rest);
}

struct target {
    int port = 0;       // upstream (direct or forwarder) port
    int socks_port = 0; // 0: no SOCKS5
};

/// Connects to the target (through SOCKS5 when asked); -1 on failure.
int open_client(const target& t, int timeout_seconds, bool nodelay) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    set_timeouts(fd, timeout_seconds);
    if (nodelay) {
        set_nodelay(fd);
    }
    sockaddr_in addr = loopback(t.socks_port != 0 ? t.socks_port : t.port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        (t.socks_port != 0 && !socks5_connect(fd, t.port))) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// ---- options ----

struct args {
    std::vector<std::string> positional;
    std::map<std::string, std::string> named;

    long number(const std::string& name, long fallback) const {
        auto it = named.find(name);
        if (it == named.end()) {
            return fallback;
        }
        char* end = nullptr;
        long value = std::strtol(it->second.c_str(), &end, 10);
        if (it->second.empty() || *end != '\0' || value < 0) {
            die("bad value for " + name + ": " + it->second);
        }
        return value;
    }
    double real(const std::string& name, double fallback) const {
        auto it = named.find(name);
        if (it == named.end()) {
            return fallback;
        }
        char* end = nullptr;
        double value = std::strtod(it->second.c_str(), &end);
        if (it->second.empty() || *end != '\0' || !(value > 0) || value > 86400) {
            die("bad value for " + name + ": " + it->second);
        }
        return value;
    }
    target where() const {
        target t;
        t.port = static_cast<int>(number("--port", 0));
        t.socks_port = static_cast<int>(number("--socks5", 0));
        if (t.port <= 0 || t.port > 65535 || t.socks_port > 65535) {
            die("--port 1..65535 required");
        }
        return t;
    }
};

args parse(int argc, char** argv, int from) {
    args a;
    for (int i = from; i < argc; ++i) {
        std::string s = argv[i];
        if (s.rfind("--", 0) == 0) {
            if (i + 1 >= argc) {
                die(s + ": missing value");
            }
            a.named[s] = argv[++i];
        } else {
            a.positional.push_back(s);
        }
    }
    return a;
}

// ---- ports, waitport ----

int cmd_ports(const args& a) {
    long n = a.positional.empty() ? 1 : std::strtol(a.positional[0].c_str(), nullptr, 10);
    if (n < 1 || n > 100) {
        die("ports: N from 1 to 100");
    }
    std::vector<int> fds;
    for (long i = 0; i < n; ++i) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr = loopback(0);
        socklen_t len = sizeof addr;
        if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            die("ports: cannot bind");
        }
        std::printf("%d\n", ntohs(addr.sin_port));
        fds.push_back(fd); // held until all are chosen, so the N ports differ
    }
    for (int fd : fds) {
        ::close(fd);
    }
    return 0;
}

bool port_listening(int port) {
    char want[8];
    std::snprintf(want, sizeof want, ":%04X", port);
    for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
        std::ifstream in(file);
        std::string line;
        std::getline(in, line); // header
        while (std::getline(in, line)) {
            std::istringstream fields(line);
            std::string slot, local, remote, state;
            fields >> slot >> local >> remote >> state;
            if (state == "0A" && local.size() > 5 &&
                local.compare(local.size() - 5, 5, want) == 0) {
                return true;
            }
        }
    }
    return false;
}

int cmd_waitport(const args& a) {
    if (a.positional.empty()) {
        die("waitport PORT [SECONDS]");
    }
    int port = static_cast<int>(std::strtol(a.positional[0].c_str(), nullptr, 10));
    double limit = a.positional.size() > 1 ? std::strtod(a.positional[1].c_str(), nullptr) : 10;
    auto start = clock_type::now();
    while (seconds_since(start) < limit) {
        if (port_listening(port)) {
            return 0;
        }
        usleep(20'000);
    }
    return 1;
}

// ---- upstream servers (one epoll thread) ----

enum class server_kind { server, echo, hold, sink, mixed };

/// Sends back `size` bytes just read from `fd`; false when the connection is lost. Small
/// messages: a short send is rare, and is finished blocking (bounded by a timeout).
bool echo_back(int fd, const char* data, std::size_t size) {
    ssize_t w = ::send(fd, data, size, MSG_NOSIGNAL);
    if (w >= 0 && static_cast<std::size_t>(w) == size) {
        return true;
    }
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    set_timeouts(fd, 5);
    std::size_t done = w > 0 ? static_cast<std::size_t>(w) : 0;
    bool ok = write_all(fd, data + done, size - done);
    fcntl(fd, F_SETFL, flags);
    return ok;
}

/// mixed: the echo connections, on a thread of their own, so that a ping never waits behind a
/// sink's reads: the latency measured beside bulk streams is the proxy's, not this server's.
void echo_loop(int ep, const std::atomic<bool>& done) {
    std::vector<char> buffer(64 * 1024);
    std::vector<epoll_event> events(64);
    while (!done && !stop_requested) {
        int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 200);
        for (int i = 0; i < n; ++i) {
            int fd = events[static_cast<std::size_t>(i)].data.fd;
            ssize_t r = ::recv(fd, buffer.data(), buffer.size(), 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            }
            if (r <= 0 || !echo_back(fd, buffer.data(), static_cast<std::size_t>(r))) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
                ::close(fd);
            }
        }
    }
}

int cmd_serve(server_kind kind, const args& a) {
    if (a.positional.empty()) {
        die("server|echo|hold|sink|mixed PORT [--time S]");
    }
    int port = static_cast<int>(std::strtol(a.positional[0].c_str(), nullptr, 10));
    double lifetime = a.real("--time", 3600);
    int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr = loopback(port);
    socklen_t len = sizeof addr;
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(lfd, 4096) != 0 ||
        ::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        die(std::string("cannot listen: ") + std::strerror(errno));
    }
    std::printf("port %d\n", ntohs(addr.sin_port));
    std::fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    std::vector<int> got(1024, 0); // server: request bytes seen; mixed: 2 once a sink; by fd
    std::atomic<bool> echo_done{false};
    int echo_ep = kind == server_kind::mixed ? epoll_create1(EPOLL_CLOEXEC) : -1;
    std::thread echo_thread;
    if (echo_ep >= 0) {
        echo_thread = std::thread([&] { echo_loop(echo_ep, echo_done); });
    }
    bool sinks = kind == server_kind::sink || kind == server_kind::mixed;
    std::vector<char> buffer(sinks ? 256 * 1024 : 64 * 1024);
    const char reply[64] = {'r'};
    std::vector<epoll_event> events(256);
    auto start = clock_type::now();
    auto drop = [&](int fd) {
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
        ::close(fd);
    };

    while (!stop_requested && seconds_since(start) < lifetime) {
        int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 200);
        for (int i = 0; i < n; ++i) {
            int fd = events[static_cast<std::size_t>(i)].data.fd;
            if (fd == lfd) {
                for (int k = 0; k < 256; ++k) {
                    int c = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) {
                        break;
                    }
                    if (kind != server_kind::sink) {
                        set_nodelay(c);
                    }
                    if (static_cast<std::size_t>(c) >= got.size()) {
                        got.resize(static_cast<std::size_t>(c) * 2, 0);
                    }
                    got[static_cast<std::size_t>(c)] = 0;
                    if (kind == server_kind::hold) {
                        (void)!::send(c, "h", 1, MSG_NOSIGNAL);
                    }
                    epoll_event cev{};
                    cev.events = EPOLLIN;
                    cev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = ::recv(fd, buffer.data(), buffer.size(), 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            }
            if (r <= 0) {
                drop(fd);
                continue;
            }
            server_kind act = kind;
            if (kind == server_kind::mixed) {
                int& role = got[static_cast<std::size_t>(fd)];
                role = role != 0 ? role : buffer[0] == 'b' ? 2 : 1;
                act = role == 2 ? server_kind::sink : server_kind::echo;
                if (act == server_kind::echo) { // to the echo thread, from now on
                    epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
                    if (!echo_back(fd, buffer.data(), static_cast<std::size_t>(r))) {
                        ::close(fd);
                        continue;
                    }
                    epoll_event eev{};
                    eev.events = EPOLLIN;
                    eev.data.fd = fd;
                    epoll_ctl(echo_ep, EPOLL_CTL_ADD, fd, &eev);
                    continue;
                }
            }
            switch (act) {
            case server_kind::server:
                got[static_cast<std::size_t>(fd)] += static_cast<int>(r);
                if (got[static_cast<std::size_t>(fd)] >= 64) {
                    (void)!::send(fd, reply, sizeof reply, MSG_NOSIGNAL);
                    drop(fd); // the upstream closes first
                }
                break;
            case server_kind::echo:
                if (!echo_back(fd, buffer.data(), static_cast<std::size_t>(r))) {
                    drop(fd);
                }
                break;
            case server_kind::hold:
            case server_kind::sink:
            case server_kind::mixed:
                break;
            }
        }
    }
    if (echo_thread.joinable()) {
        echo_done = true;
        echo_thread.join();
        ::close(echo_ep);
    }
    return 0;
}

// ---- rate ----

int cmd_rate(const args& a) {
    target t = a.where();
    int threads = static_cast<int>(a.number("--threads", 8));
    double duration = a.real("--time", 2);
    std::atomic<std::uint64_t> done{0}, failed{0};
    auto start = clock_type::now();
    auto deadline = start + std::chrono::duration_cast<clock_type::duration>(
                                std::chrono::duration<double>(duration));
    std::vector<std::thread> workers;
    for (int w = 0; w < threads; ++w) {
        workers.emplace_back([&] {
            char request[64] = {'q'};
            char reply[128];
            std::uint64_t ok = 0, bad = 0;
            while (clock_type::now() < deadline && !stop_requested) {
                int fd = open_client(t, 2, true);
                if (fd < 0) {
                    ++bad;
                    usleep(1000);
                    continue;
                }
                bool good = write_all(fd, request, sizeof request) && read_exact(fd, reply, 64);
                if (good) { // then EOF: the upstream closes first
                    ssize_t n = 0;
                    while ((n = ::recv(fd, reply, sizeof reply, 0)) < 0 && errno == EINTR) {
                    }
                    good = n == 0;
                }
                ::close(fd);
                good ? ++ok : ++bad;
            }
            done += ok;
            failed += bad;
        });
    }
    for (auto& w : workers) {
        w.join();
    }
    double elapsed = seconds_since(start);
    std::printf("conns %" PRIu64 " errors %" PRIu64 " seconds %.3f rate %.1f\n", done.load(),
                failed.load(), elapsed, static_cast<double>(done.load()) / elapsed);
    return 0;
}

// ---- rr ----

int cmd_rr(const args& a) {
    target t = a.where();
    long count = a.number("--count", 20000);
    double limit = a.real("--time", 60);
    int fd = open_client(t, 5, true);
    if (fd < 0) {
        die("rr: cannot connect");
    }
    char message[64] = {'p'};
    char answer[64];
    for (int i = 0; i < 200; ++i) { // warm-up
        if (!write_all(fd, message, 64) || !read_exact(fd, answer, 64)) {
            die("rr: connection lost in warm-up");
        }
    }
    std::vector<double> us;
    us.reserve(static_cast<std::size_t>(count));
    auto start = clock_type::now();
    for (long i = 0; i < count && seconds_since(start) < limit; ++i) {
        auto before = clock_type::now();
        if (!write_all(fd, message, 64) || !read_exact(fd, answer, 64)) {
            die("rr: connection lost");
        }
        us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - before).count());
    }
    ::close(fd);
    std::sort(us.begin(), us.end());
    auto at = [&](double q) {
        return us[static_cast<std::size_t>(q * static_cast<double>(us.size() - 1))];
    };
    std::printf("count %zu p50_us %.2f p99_us %.2f max_us %.1f", us.size(), at(0.50), at(0.99),
                us.back());
    // More points of the distribution, for report.py's latency CDFs.
    for (double q : {0.01, 0.05, 0.10, 0.25, 0.75, 0.90, 0.95, 0.999}) {
        std::printf(" p%g_us %.2f", q * 100, at(q));
    }
    std::printf("\n");
    return 0;
}

// ---- bulk, measured where the bytes arrive ----

/// 127.0.0.1:port, listening (blocking; accept() gives up after `timeout_seconds`).
int listen_loopback(int port, int timeout_seconds) {
    int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr = loopback(port);
    if (lfd < 0 || ::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(lfd, 64) != 0) {
        die(std::string("cannot listen: ") + std::strerror(errno));
    }
    set_timeouts(lfd, timeout_seconds); // SO_RCVTIMEO bounds accept() on Linux
    return lfd;
}

/// Milliseconds from now to `deadline`, at least 0, rounded up (for poll and epoll_wait).
int ms_until(clock_type::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - clock_type::now());
    return left.count() <= 0 ? 0 : static_cast<int>((left.count() + 999) / 1000);
}

/// Waits until `fd` has `events` or `deadline` passes; false at the deadline.
bool wait_for(int fd, short events, clock_type::time_point deadline) {
    pollfd p{fd, events, 0};
    int n = 0;
    while ((n = ::poll(&p, 1, ms_until(deadline))) < 0 && errno == EINTR) {
    }
    return n > 0;
}

struct arrivals {
    std::uint64_t bytes = 0;
    clock_type::time_point first{}, last{}; // of the first and the last byte read
};

/// Reads what arrives on `fd` until `deadline`.
arrivals receive_until(int fd, clock_type::time_point deadline) {
    arrivals got;
    std::vector<char> buffer(256 * 1024);
    while (!stop_requested && wait_for(fd, POLLIN, deadline)) {
        ssize_t n = ::recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        got.last = clock_type::now();
        if (got.bytes == 0) {
            got.first = got.last;
        }
        got.bytes += static_cast<std::uint64_t>(n);
    }
    return got;
}

/// Writes 128 KiB chunks to `fd` until `deadline`; false when the connection broke.
bool send_until(int fd, clock_type::time_point deadline, std::uint64_t& sent) {
    std::vector<char> chunk(128 * 1024, 'b');
    while (!stop_requested && wait_for(fd, POLLOUT, deadline)) {
        ssize_t n = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        sent += static_cast<std::uint64_t>(n);
    }
    return true;
}

/// bulk --listen-port L: this process is the receiving end too (the proxy forwards to L), and
/// the rate is taken where the bytes arrive, from the first byte to the last read within
/// --time. Nothing is drained afterwards: what a rate-limited path still holds would take
/// minutes to arrive.
int bulk_received(const args& a, const target& t, int streams, double duration) {
    int listen_port = static_cast<int>(a.number("--listen-port", 0));
    if (listen_port <= 0 || listen_port > 65535) {
        die("bulk: --listen-port 1..65535");
    }
    int lfd = listen_loopback(listen_port, 10);
    std::vector<int> senders, receivers;
    for (int i = 0; i < streams; ++i) {
        int fd = open_client(t, 10, false);
        int peer = fd >= 0 ? ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC) : -1;
        if (peer < 0) {
            die("bulk: cannot connect through to --listen-port");
        }
        senders.push_back(fd);
        receivers.push_back(peer);
    }
    ::close(lfd);
    auto deadline = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                            std::chrono::duration<double>(duration));
    std::vector<arrivals> got(receivers.size());
    std::vector<std::uint64_t> sent(senders.size(), 0);
    std::atomic<int> broken{0};
    std::vector<std::thread> workers;
    for (std::size_t i = 0; i < senders.size(); ++i) {
        workers.emplace_back([&, i] {
            if (!send_until(senders[i], deadline, sent[i])) {
                ++broken;
            }
        });
        workers.emplace_back([&, i] { got[i] = receive_until(receivers[i], deadline); });
    }
    for (auto& w : workers) {
        w.join();
    }
    arrivals total;
    std::uint64_t total_sent = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        total_sent += sent[i];
        if (got[i].bytes == 0) {
            continue;
        }
        total.first = total.bytes == 0 ? got[i].first : std::min(total.first, got[i].first);
        total.last = std::max(total.last, got[i].last);
        total.bytes += got[i].bytes;
    }
    for (std::size_t i = 0; i < senders.size(); ++i) {
        ::close(senders[i]);
        ::close(receivers[i]);
    }
    double span = std::chrono::duration<double>(total.last - total.first).count();
    std::printf("received %" PRIu64 " span_s %.3f bytes_per_s %.1f sent %" PRIu64 " broken %d\n",
                total.bytes, span, span > 0 ? static_cast<double>(total.bytes) / span : 0.0,
                total_sent, broken.load());
    return total.bytes > 0 && broken.load() == 0 ? 0 : 1;
}

// ---- bulk ----

int cmd_bulk(const args& a) {
    target t = a.where();
    int streams = static_cast<int>(a.number("--streams", 1));
    double duration = a.real("--time", 2);
    if (a.named.count("--listen-port") != 0) {
        return bulk_received(a, t, streams, duration);
    }
    std::vector<int> fds;
    for (int i = 0; i < streams; ++i) {
        int fd = open_client(t, 10, false);
        if (fd < 0) {
            die("bulk: cannot connect");
        }
        fds.push_back(fd);
    }
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<int> broken{0};
    auto start = clock_type::now();
    auto deadline = start + std::chrono::duration_cast<clock_type::duration>(
                                std::chrono::duration<double>(duration));
    std::vector<std::thread> workers;
    for (int fd : fds) {
        workers.emplace_back([&, fd] {
            std::vector<char> chunk(128 * 1024, 'b');
            std::uint64_t sent = 0;
            while (clock_type::now() < deadline && !stop_requested) {
                ssize_t n = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR) {
                    continue;
                }
                if (n <= 0) {
                    ++broken;
                    break;
                }
                sent += static_cast<std::uint64_t>(n);
            }
            // Everything sent has arrived once the sink, having read our EOF, closes.
            ::shutdown(fd, SHUT_WR);
            char tail[512];
            while (::recv(fd, tail, sizeof tail, 0) > 0) {
            }
            bytes += sent;
        });
    }
    for (auto& w : workers) {
        w.join();
    }
    double elapsed = seconds_since(start);
    for (int fd : fds) {
        ::close(fd);
    }
    double gbps = static_cast<double>(bytes.load()) * 8 / elapsed / 1e9;
    std::printf("bytes %" PRIu64 " seconds %.3f gbps %.3f broken %d\n", bytes.load(), elapsed, gbps,
                broken.load());
    return broken.load() == 0 ? 0 : 1;
}

// ---- delay ----

/// One connection of `load delay`: the echo's bytes not yet whole, and what is outstanding.
struct delayed_connection {
    int fd = -1;
    unsigned char partial[16] = {};
    std::size_t have = 0;     // bytes of `partial` filled
    std::uint64_t sent = 0;   // messages sent
    std::uint64_t echoed = 0; // messages back
};

std::uint64_t steady_ns() {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch())
            .count());
}

/// Opens `wanted` connections, 16 at a time, within `open_limit` seconds.
std::vector<int> open_many(const target& t, long wanted, double open_limit, long& failed) {
    const long openers = std::min<long>(16, wanted);
    std::atomic<long> claimed{0}, failures{0};
    std::vector<std::vector<int>> opened(static_cast<std::size_t>(openers));
    auto start = clock_type::now();
    std::vector<std::thread> threads;
    for (long w = 0; w < openers; ++w) {
        threads.emplace_back([&, w] {
            long failed_in_a_row = 0;
            while (!stop_requested && seconds_since(start) < open_limit && failed_in_a_row < 5 &&
                   claimed.fetch_add(1) < wanted) {
                int fd = open_client(t, 2, true);
                if (fd >= 0) {
                    opened[static_cast<std::size_t>(w)].push_back(fd);
                    failed_in_a_row = 0;
                } else {
                    ++failures;
                    ++failed_in_a_row;
                }
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    std::vector<int> all;
    for (auto& fds : opened) {
        all.insert(all.end(), fds.begin(), fds.end());
    }
    failed = failures.load();
    return all;
}

/// Reads the echoes waiting on `c`; each whole 16 B message gives a round trip (µs) from the
/// send time it carries. The first of each connection is its warm-up and is not kept: it also
/// waited for the proxy's connect upstream.
bool read_echoes(delayed_connection& c, std::vector<double>& rtt_us) {
    for (;;) {
        unsigned char buffer[4096];
        ssize_t n = ::recv(c.fd, buffer, sizeof buffer, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return true;
        }
        if (n <= 0) {
            return false;
        }
        std::uint64_t now = steady_ns();
        for (ssize_t i = 0; i < n; ++i) {
            c.partial[c.have++] = buffer[i];
            if (c.have < sizeof c.partial) {
                continue;
            }
            c.have = 0;
            std::uint64_t sent_ns = 0;
            std::memcpy(&sent_ns, c.partial, sizeof sent_ns);
            if (c.echoed++ != 0) {
                rtt_us.push_back(static_cast<double>(now - sent_ns) / 1e3);
            }
        }
    }
}

/// delay N: N connections to an echo (through the proxy), each sending a 16 B message holding
/// its send time every --interval-ms, the N spread evenly over the interval; for --time seconds,
/// then up to 5 s more for the echoes still out. Prints the round trips (µs) less
/// --subtract-us: through a latency fault of 100 ms, --subtract-us 100000 leaves what was
/// added on top of it.
int cmd_delay(const args& a) {
    if (a.positional.empty()) {
        die("delay N --port P [--socks5 SP] [--time S] [--interval-ms MS] [--subtract-us US]");
    }
    long wanted = std::strtol(a.positional[0].c_str(), nullptr, 10);
    if (wanted < 1 || wanted > 60000) {
        die("delay: N from 1 to 60000");
    }
    target t = a.where();
    double duration = a.real("--time", 10);
    double open_limit = a.real("--open-time", 60);
    auto interval = std::chrono::microseconds(a.number("--interval-ms", 200) * 1000);
    double subtract_us = static_cast<double>(a.number("--subtract-us", 0));
    auto open_start = clock_type::now();
    long failed = 0;
    std::vector<int> fds = open_many(t, wanted, open_limit, failed);
    std::printf("open %zu failed %ld seconds %.3f\n", fds.size(), failed,
                seconds_since(open_start));
    std::fflush(stdout);
    if (fds.empty()) {
        die("delay: no connection opened");
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    std::vector<delayed_connection> conns(fds.size());
    for (std::size_t i = 0; i < fds.size(); ++i) {
        conns[i].fd = fds[i];
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = i;
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    std::vector<double> rtt_us;
    auto step = interval / static_cast<long>(conns.size());
    auto start = clock_type::now();
    auto sending_ends = start + std::chrono::duration_cast<clock_type::duration>(
                                    std::chrono::duration<double>(duration));
    auto waiting_ends = sending_ends + std::chrono::seconds(5);
    std::uint64_t next = 0; // the next message, in the order connection next % N sends
    std::uint64_t outstanding = 0;
    long lost = 0;
    std::vector<epoll_event> events(256);
    while (!stop_requested) {
        auto now = clock_type::now();
        if (now >= waiting_ends || (now >= sending_ends && outstanding == 0)) {
            break;
        }
        auto due = start + step * static_cast<long>(next);
        for (; due <= now && due < sending_ends; due = start + step * static_cast<long>(++next)) {
            delayed_connection& c = conns[next % conns.size()];
            if (c.fd < 0) {
                continue;
            }
            unsigned char message[16] = {};
            std::uint64_t stamp = steady_ns();
            std::memcpy(message, &stamp, sizeof stamp);
            std::memcpy(message + 8, &next, sizeof next);
            if (::send(c.fd, message, sizeof message, MSG_NOSIGNAL | MSG_DONTWAIT) != 16) {
                ++lost; // a full socket buffer on a 16 B message: the connection is stuck
                continue;
            }
            ++c.sent;
            ++outstanding;
        }
        // Past the last send, wake at the end of sending even if nothing arrives: the last
        // echo may be back already, and then only the clock says the run is over.
        int timeout = ms_until(due < sending_ends   ? due
                               : now < sending_ends ? sending_ends
                                                    : waiting_ends);
        int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), timeout);
        for (int i = 0; i < n; ++i) {
            delayed_connection& c = conns[events[static_cast<std::size_t>(i)].data.u64];
            std::uint64_t before = c.echoed;
            bool alive = read_echoes(c, rtt_us);
            outstanding -= c.echoed - before;
            if (!alive) {
                outstanding -= c.sent - c.echoed;
                lost += static_cast<long>(c.sent - c.echoed) + 1;
                epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
                ::close(c.fd);
                c.fd = -1;
            }
        }
    }
    for (auto& c : conns) {
        if (c.fd >= 0) {
            ::close(c.fd);
        }
    }
    ::close(ep);
    if (rtt_us.empty()) {
        die("delay: no round trip measured");
    }
    std::sort(rtt_us.begin(), rtt_us.end());
    auto at = [&](double q) {
        return rtt_us[static_cast<std::size_t>(q * static_cast<double>(rtt_us.size() - 1))] -
               subtract_us;
    };
    std::printf(
        "count %zu p50_us %.1f p99_us %.1f max_us %.1f min_us %.1f open %zu missing %" PRIu64
        " lost %ld\n",
        rtt_us.size(), at(0.50), at(0.99), rtt_us.back() - subtract_us,
        rtt_us.front() - subtract_us, conns.size(), outstanding, lost);
    return 0;
}

// ---- hold ----

int cmd_hold(const args& a) {
    if (a.positional.empty()) {
        die("hold N --port P [--socks5 SP] [--time S] [--open-time S]");
    }
    long wanted = std::strtol(a.positional[0].c_str(), nullptr, 10);
    if (wanted < 1 || wanted > 60000) {
        die("hold: N from 1 to 60000");
    }
    target t = a.where();
    double lifetime = a.real("--time", 120);
    double open_limit = a.real("--open-time", 60);
    // 16 openers: a proxy that delays the upstream's first byte (Nagle against the client's
    // delayed ACK: 40 ms) or forks per client still fills up in seconds.
    const long openers = std::min<long>(16, wanted);
    std::atomic<long> claimed{0}, failed{0};
    std::vector<std::vector<int>> held(static_cast<std::size_t>(openers));
    auto start = clock_type::now();
    std::vector<std::thread> threads;
    for (long w = 0; w < openers; ++w) {
        threads.emplace_back([&, w] {
            long failed_in_a_row = 0;
            while (!stop_requested && seconds_since(start) < open_limit && failed_in_a_row < 5 &&
                   claimed.fetch_add(1) < wanted) {
                int fd = open_client(t, 2, false);
                char greeting = 0;
                if (fd >= 0 && read_exact(fd, &greeting, 1) && greeting == 'h') {
                    held[static_cast<std::size_t>(w)].push_back(fd);
                    failed_in_a_row = 0;
                } else {
                    if (fd >= 0) {
                        ::close(fd);
                    }
                    ++failed;
                    ++failed_in_a_row;
                }
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    std::size_t total = 0;
    for (auto& fds : held) {
        total += fds.size();
    }
    std::printf("held %zu failed %ld seconds %.3f\n", total, failed.load(), seconds_since(start));
    std::fflush(stdout);
    while (!stop_requested && seconds_since(start) < lifetime) {
        usleep(50'000);
    }
    for (auto& fds : held) {
        for (int fd : fds) {
            ::close(fd);
        }
    }
    return 0;
}

// ---- proc ----

struct proc_stat {
    int ppid = 0;
    double ticks = 0; // utime + stime + cutime + cstime
};

bool read_stat(int pid, proc_stat& out) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto close_paren = text.rfind(')');
    if (close_paren == std::string::npos) {
        return false;
    }
    std::istringstream fields(text.substr(close_paren + 2));
    std::vector<std::string> f;
    std::string s;
    while (fields >> s) {
        f.push_back(s);
    }
    if (f.size() < 15) {
        return false;
    }
    // f[0] is field 3 (state): field k is f[k - 3].
    out.ppid = std::atoi(f[1].c_str());
    out.ticks = std::atof(f[11].c_str()) + std::atof(f[12].c_str()) + std::atof(f[13].c_str()) +
                std::atof(f[14].c_str());
    return true;
}

long smaps_field(int pid, const std::string& name) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
    std::string line;
    while (std::getline(in, line)) {
        if (line.compare(0, name.size() + 1, name + ":") == 0) {
            return std::atol(line.c_str() + name.size() + 1);
        }
    }
    return 0;
}

int cmd_proc(const args& a, bool list_only) {
    if (a.positional.empty()) {
        die("proc|tree PID");
    }
    int root = std::atoi(a.positional[0].c_str());
    std::map<int, proc_stat> all;
    if (DIR* d = opendir("/proc")) {
        while (dirent* e = readdir(d)) {
            int pid = std::atoi(e->d_name);
            proc_stat st;
            if (pid > 0 && read_stat(pid, st)) {
                all[pid] = st;
            }
        }
        closedir(d);
    }
    if (all.find(root) == all.end()) {
        die("proc: no process " + std::to_string(root));
    }
    std::multimap<int, int> children;
    for (auto& [pid, st] : all) {
        children.emplace(st.ppid, pid);
    }
    std::vector<int> tree{root};
    for (std::size_t i = 0; i < tree.size(); ++i) {
        auto range = children.equal_range(tree[i]);
        for (auto it = range.first; it != range.second; ++it) {
            tree.push_back(it->second);
        }
    }
    if (list_only) {
        for (int pid : tree) {
            std::printf("%d\n", pid);
        }
        return 0;
    }
    double ticks = 0;
    long rss = 0, pss = 0;
    for (int pid : tree) {
        ticks += all[pid].ticks;
        rss += smaps_field(pid, "Rss");
        pss += smaps_field(pid, "Pss");
    }
    std::printf("cpu_s %.2f rss_kb %ld pss_kb %ld procs %zu\n",
                ticks / static_cast<double>(sysconf(_SC_CLK_TCK)), rss, pss, tree.size());
    return 0;
}

// ---- costs ----

int cmd_costs() {
    std::vector<char> touched(4 << 20, 1); // a process of a few MB, like a small proxy
    auto start = clock_type::now();
    const int forks = 50;
    for (int i = 0; i < forks; ++i) {
        pid_t pid = ::fork();
        if (pid == 0) {
            ::_exit(touched[static_cast<std::size_t>(i)] == 1 ? 0 : 1);
        }
        if (pid < 0) {
            die("costs: fork failed");
        }
        ::waitpid(pid, nullptr, 0);
    }
    double fork_us = seconds_since(start) / forks * 1e6;
    start = clock_type::now();
    const int threads = 500;
    for (int i = 0; i < threads; ++i) {
        std::thread([] {}).join();
    }
    double thread_us = seconds_since(start) / threads * 1e6;
    std::printf("fork_us %.1f thread_us %.1f\n", fork_us, thread_us);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: load ports|waitport|costs|server|echo|hold|sink|rate|rr|bulk|"
                             "delay|tree|proc ... (see the comment atop bench/load.cpp)\n");
        return 2;
    }
    install_stop_handlers();
    raise_fd_limit();
    std::string mode = argv[1];
    args a = parse(argc, argv, 2);
    if (mode == "ports") {
        return cmd_ports(a);
    }
    if (mode == "waitport") {
        return cmd_waitport(a);
    }
    if (mode == "costs") {
        return cmd_costs();
    }
    if (mode == "proc" || mode == "tree") {
        return cmd_proc(a, mode == "tree");
    }
    if (mode == "rate") {
        return cmd_rate(a);
    }
    if (mode == "rr") {
        return cmd_rr(a);
    }
    if (mode == "bulk") {
        return cmd_bulk(a);
    }
    if (mode == "delay") {
        return cmd_delay(a);
    }
    if (mode == "server" || mode == "echo" || mode == "sink" || mode == "mixed") {
        return cmd_serve(mode == "server"  ? server_kind::server
                         : mode == "echo"  ? server_kind::echo
                         : mode == "mixed" ? server_kind::mixed
                                           : server_kind::sink,
                         a);
    }
    if (mode == "hold") {
        // "hold PORT" (one positional) is the upstream; "hold N --port P" the client.
        if (a.named.count("--port") != 0) {
            return cmd_hold(a);
        }
        return cmd_serve(server_kind::hold, a);
    }
    die("unknown mode " + mode);
}
