// custom_policy: a concurrency policy written outside the library, a fixed pool of threads,
// running a port forwarder. The policy interface is stated in tinyproxy/server.hpp.
//
//   custom_policy LISTEN_PORT HOST PORT [WORKERS]
//
// Listens on 127.0.0.1:LISTEN_PORT (0 picks a free port), prints "listening on IP:PORT" and
// connects every client to HOST:PORT, WORKERS (default 4) at a time, until SIGINT or SIGTERM.
#include <tinyproxy/tinyproxy.hpp>

#include <algorithm>          // std::max
#include <atomic>             // the proxy the signal handler stops
#include <chrono>             // the wait for room
#include <charconv>           // std::from_chars
#include <condition_variable> // the queue's signals
#include <csignal>            // std::signal
#include <cstddef>            // std::size_t
#include <cstdint>            // std::uint16_t
#include <deque>              // the queue
#include <iostream>           // std::cout, std::cerr
#include <mutex>              // the queue's lock
#include <string_view>        // arguments
#include <system_error>       // std::error_code
#include <thread>             // the workers
#include <vector>             // the workers

/// A fixed pool of `workers` threads, each serving one client at a time, fed by the accept loop
/// through a queue of at most `queue_limit` clients; while the queue is full, new clients wait
/// in the listener's backlog. On stop, queued clients are closed unserved (and counted as
/// failed), and run() returns once every worker is joined. Of the Server it calls accept_next(),
/// serve(), stopping() and session_ended() (see tinyproxy/server.hpp).
class pool_policy {
public:
    explicit pool_policy(std::size_t workers = 4, std::size_t queue_limit = 64)
        : workers_(std::max<std::size_t>(workers, 1)),
          queue_limit_(std::max<std::size_t>(queue_limit, 1)) {}

    template <class Server>
    void run(Server& server) {
        pool<Server> state(server);
        for (std::size_t i = 0; i < workers_; ++i) {
            state.threads.emplace_back([&state] { state.work(); });
        }
        for (;;) {
            state.wait_for_room(queue_limit_);
            tinyproxy::accepted_client client;
            auto status = server.accept_next(client, tinyproxy::time_point::max());
            if (status == tinyproxy::accept_status::stopped) {
                return; // ~pool closes the clients still queued and joins the workers
            }
            if (status == tinyproxy::accept_status::client) {
                std::lock_guard<std::mutex> lock(state.mutex);
                state.queue.push_back(std::move(client));
                state.ready.notify_one();
            }
        }
    }

private:
    template <class Server>
    struct pool {
        explicit pool(Server& s) : server(s) {}

        Server& server;
        std::mutex mutex;
        std::condition_variable ready; // a client was queued, or the pool is closing
        std::condition_variable room;  // a client was taken off the queue
        std::deque<tinyproxy::accepted_client> queue;
        bool closing = false;
        std::vector<std::thread> threads;

        void work() {
            for (;;) {
                std::unique_lock<std::mutex> lock(mutex);
                ready.wait(lock, [this] { return closing || !queue.empty(); });
                if (closing || server.stopping()) {
                    return; // what is still queued is closed by ~pool
                }
                tinyproxy::accepted_client client = std::move(queue.front());
                queue.pop_front();
                lock.unlock();
                room.notify_one();
                server.serve(std::move(client)); // to its end, or until stop
            }
        }
        void wait_for_room(std::size_t limit) { // or for stop, which only the Server can tell
            std::unique_lock<std::mutex> lock(mutex);
            while (queue.size() >= limit && !server.stopping()) {
                room.wait_for(lock, std::chrono::milliseconds(100));
            }
        }
        ~pool() {
            {
                std::lock_guard<std::mutex> lock(mutex);
                closing = true;
                tinyproxy::session_result unserved;
                unserved.error = tinyproxy::errc::stopped;
                for (std::size_t i = 0; i < queue.size(); ++i) {
                    server.session_ended(unserved); // so that stats() adds up
                }
                queue.clear(); // closes them
            }
            ready.notify_all();
            for (std::thread& t : threads) {
                t.join();
            }
        }
    };

    std::size_t workers_;
    std::size_t queue_limit_;
};

using proxy_type = tinyproxy::basic_proxy<pool_policy, tinyproxy::forward_mode>;

namespace {
std::atomic<proxy_type*> running{nullptr}; // what SIGINT and SIGTERM stop

extern "C" void on_signal(int) {
    if (proxy_type* proxy = running.load()) {
        proxy->stop(); // async-signal-safe
    }
}

template <class Number>
bool parse_number(std::string_view text, Number& value) {
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    return error == std::errc() && end == text.data() + text.size();
}
} // namespace

int main(int argc, char** argv) {
    std::uint16_t listen_port = 0;
    std::uint16_t upstream_port = 0;
    std::size_t workers = 4;
    if (argc < 4 || argc > 5 || !parse_number(argv[1], listen_port) ||
        !parse_number(argv[3], upstream_port) || upstream_port == 0 ||
        (argc == 5 && (!parse_number(argv[4], workers) || workers == 0 || workers > 1024))) {
        std::cerr << "usage: custom_policy LISTEN_PORT HOST PORT [WORKERS]\n";
        return 2;
    }

    tinyproxy::options opts;
    opts.listen = {tinyproxy::ip_address::loopback_v4(), listen_port};
    proxy_type proxy(opts, tinyproxy::forward_mode({argv[2], upstream_port}), pool_policy(workers));
    std::error_code ec;
    proxy.listen(ec);
    if (ec) {
        std::cerr << "custom_policy: cannot listen on " << opts.listen.to_string() << ": "
                  << ec.message() << "\n";
        return 1;
    }
    running = &proxy;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::cout << "listening on " << proxy.local_endpoint().to_string() << std::endl;
    proxy.run(); // until SIGINT or SIGTERM
    running = nullptr;
}
