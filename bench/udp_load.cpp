// bench/udp_load.cpp: the SOCKS5 UDP benchmark's echo server and load client (issue 18), on
// loopback only. Every loop is bounded in count and time; every blocking call has a timeout.
//
//   udp_load echo [--time 600]        a UDP echo on 127.0.0.1 (port 0); prints its port, one
//                                     line; echoes every datagram until SIGTERM or --time
//   udp_load rate --target H:P [--socks H:SP] [--size 64] [--time 5] [--window 32]
//                                     W datagrams in flight, one more per echo received; a
//                                     100 ms silence counts those in flight as lost and sends
//                                     W fresh ones; prints "datagrams_per_s=X lost=Y"
//   udp_load rr --target H:P [--socks H:SP] [--size 64] [--count 2000] [--time 60]
//                                     one datagram in flight; prints "p50_us=X p99_us=Y lost=Z"
//   udp_load hold --target H:P --socks H:SP [--count 200] [--time 30]
//                                     N associations, each proven by one round trip; prints
//                                     "held=K" (K of N up), keeps them until SIGTERM or --time
//
// With --socks the client does the SOCKS5 no-auth handshake on a TCP control connection, asks
// UDP ASSOCIATE for 0.0.0.0:0 and sends each datagram to the relay the reply names, behind the
// SOCKS UDP header for --target (IPv4 only); without it, datagrams go straight to --target.
#include <algorithm> // sort, min
#include <chrono>    // steady_clock
#include <cinttypes> // PRIu64
#include <csignal>   // SIGTERM
#include <cstdint>   // uint8_t, uint64_t
#include <cstdio>    // printf
#include <cstdlib>   // strtol
#include <cstring>   // memcpy, strerror
#include <map>       // options
#include <string>    // std::string
#include <vector>    // buffers, samples

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

using clock_type = std::chrono::steady_clock;

volatile std::sig_atomic_t stop_requested = 0;

void on_sigterm(int) { stop_requested = 1; }

constexpr std::size_t udp_header_size = 10; // RSV RSV FRAG ATYP=1 ADDR4 PORT
constexpr std::size_t seq_size = 8;         // each payload begins with its sequence number
constexpr int socket_timeout_ms = 2000;     // TCP handshake steps, hold's round trip
constexpr int lost_after_ms = 100;          // rate: silence that counts the window lost
constexpr int rr_lost_after_ms = 1000;      // rr: one datagram's wait before it is lost

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "udp_load: %s\n", what.c_str());
    std::exit(1);
}

[[noreturn]] void fail_errno(const std::string& what) { fail(what + ": " + std::strerror(errno)); }

struct options {
    std::string mode;
    std::map<std::string, std::string> values;

    bool has(const std::string& key) const { return values.count(key) != 0; }
    long number(const std::string& key, long fallback) const {
        auto found = values.find(key);
        if (found == values.end()) {
            return fallback;
        }
        char* end = nullptr;
        long value = std::strtol(found->second.c_str(), &end, 10);
        if (end == found->second.c_str() || *end != '\0' || value < 0) {
            fail("--" + key + " wants a number, not " + found->second);
        }
        return value;
    }
};

options parse(int argc, char** argv) {
    if (argc < 2) {
        fail("usage: udp_load echo|rate|rr|hold [--target H:P] [--socks H:P] [--size N] "
             "[--time S] [--window W] [--count N]");
    }
    options out;
    out.mode = argv[1];
    for (int i = 2; i < argc; i += 2) {
        std::string key = argv[i];
        if (key.rfind("--", 0) != 0 || i + 1 >= argc) {
            fail("bad argument " + key);
        }
        out.values[key.substr(2)] = argv[i + 1];
    }
    return out;
}

sockaddr_in endpoint(const std::string& text) {
    auto colon = text.rfind(':');
    sockaddr_in out{};
    out.sin_family = AF_INET;
    long port =
        colon == std::string::npos ? -1 : std::strtol(text.c_str() + colon + 1, nullptr, 10);
    if (port <= 0 || port > 65535 ||
        inet_pton(AF_INET, text.substr(0, colon).c_str(), &out.sin_addr) != 1) {
        fail("not an IPv4 HOST:PORT: " + text);
    }
    out.sin_port = htons(static_cast<std::uint16_t>(port));
    return out;
}

void set_timeouts(int fd, int ms) {
    timeval tv{};
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
        fail_errno("setsockopt");
    }
}

// Sends all of DATA or fails (the control connection carries a few bytes only).
void send_all(int fd, const std::uint8_t* data, std::size_t size) {
    while (size > 0) {
        ssize_t sent = send(fd, data, size, MSG_NOSIGNAL);
        if (sent <= 0) {
            fail_errno("send on the SOCKS control connection");
        }
        data += sent;
        size -= static_cast<std::size_t>(sent);
    }
}

void recv_exact(int fd, std::uint8_t* data, std::size_t size) {
    while (size > 0) {
        ssize_t got = recv(fd, data, size, 0);
        if (got == 0) {
            fail("the SOCKS server closed the control connection");
        }
        if (got < 0) {
            fail_errno("recv on the SOCKS control connection");
        }
        data += got;
        size -= static_cast<std::size_t>(got);
    }
}

// One SOCKS5 UDP association: the control connection that keeps it alive and the relay.
struct association {
    int control = -1;
    sockaddr_in relay{};
};

association associate(const sockaddr_in& proxy) {
    association out;
    out.control = socket(AF_INET, SOCK_STREAM, 0);
    if (out.control < 0) {
        fail_errno("socket");
    }
    set_timeouts(out.control, socket_timeout_ms); // SO_SNDTIMEO bounds connect() too
    if (connect(out.control, reinterpret_cast<const sockaddr*>(&proxy), sizeof proxy) != 0) {
        fail_errno("connect to the SOCKS server");
    }
    const std::uint8_t greeting[] = {5, 1, 0};
    send_all(out.control, greeting, sizeof greeting);
    std::uint8_t choice[2];
    recv_exact(out.control, choice, sizeof choice);
    if (choice[0] != 5 || choice[1] != 0) {
        fail("the SOCKS server refused no-auth");
    }
    const std::uint8_t request[] = {5, 3, 0, 1, 0, 0, 0, 0, 0, 0}; // UDP ASSOCIATE 0.0.0.0:0
    send_all(out.control, request, sizeof request);
    std::uint8_t reply[10];
    recv_exact(out.control, reply, 4);
    if (reply[0] != 5 || reply[1] != 0) {
        fail("UDP ASSOCIATE refused, reply code " + std::to_string(reply[1]));
    }
    if (reply[3] != 1) {
        fail("the relay is not an IPv4 address (ATYP " + std::to_string(reply[3]) + ")");
    }
    recv_exact(out.control, reply + 4, 6);
    out.relay.sin_family = AF_INET;
    std::memcpy(&out.relay.sin_addr, reply + 4, 4);
    std::memcpy(&out.relay.sin_port, reply + 8, 2);
    if (out.relay.sin_addr.s_addr == htonl(INADDR_ANY)) {
        out.relay.sin_addr = proxy.sin_addr; // "the address you reached me on"
    }
    return out;
}

// A UDP socket connected to where datagrams go (the relay or the target), with the prefix
// every datagram carries (the SOCKS UDP header, or nothing).
struct channel {
    int fd = -1;
    std::vector<std::uint8_t> prefix;
    association via;
};

channel open_channel(const options& opts) {
    channel out;
    sockaddr_in target = endpoint(opts.values.at("target"));
    sockaddr_in peer = target;
    if (opts.has("socks")) {
        out.via = associate(endpoint(opts.values.at("socks")));
        peer = out.via.relay;
        out.prefix = {0, 0, 0, 1};
        const auto* addr = reinterpret_cast<const std::uint8_t*>(&target.sin_addr);
        const auto* port = reinterpret_cast<const std::uint8_t*>(&target.sin_port);
        out.prefix.insert(out.prefix.end(), addr, addr + 4);
        out.prefix.insert(out.prefix.end(), port, port + 2);
    }
    out.fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (out.fd < 0) {
        fail_errno("socket");
    }
    int buffer = 1 << 20; // a window of 1,200 B datagrams fits many times over
    setsockopt(out.fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    if (connect(out.fd, reinterpret_cast<const sockaddr*>(&peer), sizeof peer) != 0) {
        fail_errno("connect the UDP socket");
    }
    return out;
}

void close_channel(channel& ch) {
    if (ch.fd >= 0) {
        close(ch.fd);
    }
    if (ch.via.control >= 0) {
        close(ch.via.control);
    }
    ch.fd = ch.via.control = -1;
}

std::size_t payload_size(const options& opts) {
    long size = opts.number("size", 64);
    if (size < static_cast<long>(seq_size) || size > 65000) {
        fail("--size must be 8 to 65000");
    }
    return static_cast<std::size_t>(size);
}

// Sends datagram number SEQ (prefix, then SEQ, then filler up to SIZE payload bytes).
bool send_seq(const channel& ch, std::vector<std::uint8_t>& buffer, std::uint64_t seq) {
    std::memcpy(buffer.data() + ch.prefix.size(), &seq, seq_size);
    return send(ch.fd, buffer.data(), buffer.size(), 0) == static_cast<ssize_t>(buffer.size());
}

// Waits up to TIMEOUT_MS for one datagram; returns its sequence number, or -1 on silence.
// Datagrams too short to carry one are skipped (they count as silence). It polls only when
// nothing is queued, so a busy client spends two system calls per round trip, not three.
long long recv_seq(const channel& ch, std::vector<std::uint8_t>& buffer, int timeout_ms) {
    ssize_t got = recv(ch.fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        pollfd p{ch.fd, POLLIN, 0};
        int ready = poll(&p, 1, timeout_ms);
        if (ready < 0 && errno != EINTR) {
            fail_errno("poll");
        }
        if (ready <= 0) {
            return -1;
        }
        got = recv(ch.fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
    }
    std::size_t skip = ch.prefix.empty() ? 0 : udp_header_size;
    if (got < static_cast<ssize_t>(skip + seq_size)) {
        return -1;
    }
    std::uint64_t seq = 0;
    std::memcpy(&seq, buffer.data() + skip, seq_size);
    return static_cast<long long>(seq);
}

double seconds_since(clock_type::time_point start) {
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

int run_echo(const options& opts) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof local;
    int buffer_bytes = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) != 0) {
        fail_errno("echo socket");
    }
    std::printf("%u\n", static_cast<unsigned>(ntohs(local.sin_port)));
    std::fflush(stdout);
    auto limit = static_cast<double>(opts.number("time", 600));
    auto start = clock_type::now();
    std::vector<std::uint8_t> buffer(65536);
    while (!stop_requested && seconds_since(start) < limit) {
        sockaddr_in from{};
        socklen_t from_length = sizeof from;
        ssize_t got = recvfrom(fd, buffer.data(), buffer.size(), MSG_DONTWAIT,
                               reinterpret_cast<sockaddr*>(&from), &from_length);
        if (got < 0) { // nothing queued: wait, a while at most, so SIGTERM and --time are seen
            pollfd p{fd, POLLIN, 0};
            poll(&p, 1, 500);
        } else {
            sendto(fd, buffer.data(), static_cast<std::size_t>(got), 0,
                   reinterpret_cast<sockaddr*>(&from), from_length);
        }
    }
    close(fd);
    return 0;
}

int run_rate(const options& opts) {
    channel ch = open_channel(opts);
    std::vector<std::uint8_t> out(ch.prefix.size() + payload_size(opts), 0x5a);
    std::copy(ch.prefix.begin(), ch.prefix.end(), out.begin());
    std::vector<std::uint8_t> in(65536);
    auto window = static_cast<std::uint64_t>(std::max(1L, opts.number("window", 32)));
    auto limit = static_cast<double>(opts.number("time", 5));
    std::uint64_t next_seq = 0, fresh_from = 0; // echoes below fresh_from were counted lost
    std::uint64_t in_flight = 0, done = 0, lost = 0, late = 0, send_errors = 0;
    auto start = clock_type::now();
    while (!stop_requested && seconds_since(start) < limit) {
        while (in_flight < window) {
            if (!send_seq(ch, out, next_seq++)) {
                ++send_errors; // ECONNREFUSED and the like: it will show as lost
            }
            ++in_flight;
        }
        long long seq = recv_seq(ch, in, lost_after_ms);
        if (seq < 0) {
            lost += in_flight;
            in_flight = 0;
            fresh_from = next_seq;
        } else if (static_cast<std::uint64_t>(seq) < fresh_from) {
            ++late;
        } else {
            ++done;
            in_flight -= in_flight > 0 ? 1 : 0; // a duplicate never drains the window
        }
    }
    double elapsed = seconds_since(start);
    std::printf("datagrams_per_s=%.0f lost=%" PRIu64 " late=%" PRIu64 " send_errors=%" PRIu64
                " sent=%" PRIu64 "\n",
                static_cast<double>(done) / elapsed, lost, late, send_errors, next_seq);
    close_channel(ch);
    return 0;
}

double percentile(std::vector<double>& sorted, double p) {
    if (sorted.empty()) {
        return 0;
    }
    auto index = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
    return sorted[std::min(index, sorted.size() - 1)];
}

int run_rr(const options& opts) {
    channel ch = open_channel(opts);
    std::vector<std::uint8_t> out(ch.prefix.size() + payload_size(opts), 0x5a);
    std::copy(ch.prefix.begin(), ch.prefix.end(), out.begin());
    std::vector<std::uint8_t> in(65536);
    auto count = static_cast<std::uint64_t>(opts.number("count", 2000));
    auto limit = static_cast<double>(opts.number("time", 60));
    std::vector<double> samples_us;
    samples_us.reserve(count);
    std::uint64_t lost = 0;
    auto start = clock_type::now();
    for (std::uint64_t seq = 0; seq < count && !stop_requested && seconds_since(start) < limit;
         ++seq) {
        auto sent_at = clock_type::now();
        send_seq(ch, out, seq);
        bool answered = false;
        for (int tries = 0; tries < 16 && !answered; ++tries) { // stale echoes are skipped
            long long got = recv_seq(ch, in, rr_lost_after_ms);
            if (got < 0) {
                break;
            }
            answered = static_cast<std::uint64_t>(got) == seq;
        }
        if (!answered) {
            ++lost;
            continue;
        }
        samples_us.push_back(
            std::chrono::duration<double, std::micro>(clock_type::now() - sent_at).count());
    }
    std::sort(samples_us.begin(), samples_us.end());
    std::printf("p50_us=%.1f p99_us=%.1f lost=%" PRIu64 " count=%zu\n",
                percentile(samples_us, 0.50), percentile(samples_us, 0.99), lost,
                samples_us.size());
    close_channel(ch);
    return 0;
}

int run_hold(const options& opts) {
    if (!opts.has("socks")) {
        fail("hold needs --socks");
    }
    auto count = static_cast<std::size_t>(opts.number("count", 200));
    auto limit = static_cast<double>(opts.number("time", 30));
    std::vector<channel> held;
    std::vector<std::uint8_t> in(65536);
    auto start = clock_type::now();
    for (std::size_t i = 0; i < count && !stop_requested && seconds_since(start) < limit; ++i) {
        channel ch = open_channel(opts);
        std::vector<std::uint8_t> out(ch.prefix.size() + 64, 0x5a);
        std::copy(ch.prefix.begin(), ch.prefix.end(), out.begin());
        send_seq(ch, out, i);
        if (recv_seq(ch, in, socket_timeout_ms) != static_cast<long long>(i)) {
            std::fprintf(stderr, "udp_load: association %zu got no echo\n", i);
            close_channel(ch);
            continue;
        }
        held.push_back(ch);
    }
    std::printf("held=%zu\n", held.size());
    std::fflush(stdout);
    while (!stop_requested && seconds_since(start) < limit) {
        poll(nullptr, 0, 100);
    }
    for (auto& ch : held) {
        close_channel(ch);
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    options opts = parse(argc, argv);
    struct sigaction action {};
    action.sa_handler = on_sigterm;
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    if (opts.mode == "echo") {
        return run_echo(opts);
    }
    if (!opts.has("target")) {
        fail(opts.mode + " needs --target HOST:PORT");
    }
    if (opts.mode == "rate") {
        return run_rate(opts);
    }
    if (opts.mode == "rr") {
        return run_rr(opts);
    }
    if (opts.mode == "hold") {
        return run_hold(opts);
    }
    fail("unknown mode " + opts.mode);
}
