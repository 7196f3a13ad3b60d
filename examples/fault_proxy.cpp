// fault_proxy: a port forwarder whose Toxiproxy faults a script changes while it runs, on live
// connections too: what a test harness embeds to see how its program survives a slow, sliced,
// stalled or reset database connection.
//
//   fault_proxy LISTEN_PORT HOST PORT [SEED]
//
// Listens on 127.0.0.1:LISTEN_PORT (0 picks a free port), prints "listening on IP:PORT" and
// connects every client to HOST:PORT, on the event loop. Each line on standard input is a
// command, answered with one line on standard output ("ok", or "error: " and why):
//
//   add SPEC       a fault, as the command line's --toxic takes it: latency,latency=100
//   update SPEC    the fault of that name (name=, or TYPE_STREAM) changes, in its place
//   remove NAME    the fault goes; what it held goes on at once, in order
//   list           the faults, one line each in --toxic's form, then "ok"
//
// The end of standard input stops the proxy (exit 0).
#include <tinyproxy/tinyproxy.hpp>

#include <charconv>     // std::from_chars
#include <cstdint>      // ports, the seed
#include <iostream>     // commands in, answers out
#include <memory>       // the shared toxic set
#include <stdexcept>    // a bad command
#include <string>       // command lines
#include <string_view>  // arguments
#include <system_error> // std::error_code
#include <thread>       // the proxy runs beside the command reader

namespace {

template <class Number>
bool parse_number(std::string_view text, Number& value) {
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    return error == std::errc() && end == text.data() + text.size();
}

/// Carries out one command line; throws std::invalid_argument for a bad one.
void carry_out(tinyproxy::toxic_set& toxics, const std::string& line) {
    const std::size_t space = line.find(' ');
    const std::string verb = line.substr(0, space);
    const std::string rest = space == std::string::npos ? std::string() : line.substr(space + 1);
    if (verb == "add") {
        toxics.add(tinyproxy::parse_toxic(rest));
    } else if (verb == "update") {
        tinyproxy::toxic fault = tinyproxy::parse_toxic(rest);
        if (!toxics.update(tinyproxy::name_of(fault), fault)) {
            throw std::invalid_argument("no fault is called '" + tinyproxy::name_of(fault) + "'");
        }
    } else if (verb == "remove") {
        if (!toxics.remove(rest)) {
            throw std::invalid_argument("no fault is called '" + rest + "'");
        }
    } else if (verb == "list") {
        for (const tinyproxy::toxic& fault : toxics.list()) {
            std::cout << tinyproxy::to_spec(fault) << "\n";
        }
    } else {
        throw std::invalid_argument("expected add, update, remove or list, not '" + verb + "'");
    }
}

} // namespace

int main(int argc, char** argv) {
    std::uint16_t listen_port = 0;
    std::uint16_t upstream_port = 0;
    std::uint64_t seed = 1;
    if ((argc != 4 && argc != 5) || !parse_number(argv[1], listen_port) ||
        !parse_number(argv[3], upstream_port) || upstream_port == 0 ||
        (argc == 5 && !parse_number(argv[4], seed))) {
        std::cerr << "usage: fault_proxy LISTEN_PORT HOST PORT [SEED]\n";
        return 2;
    }

    // [readme: fault-proxy]
    auto toxics = std::make_shared<tinyproxy::toxic_set>(); // shared: changed while it runs
    tinyproxy::options opts;
    opts.listen = {tinyproxy::ip_address::loopback_v4(), listen_port};
    opts.stages = tinyproxy::fault_stages(toxics, seed); // each tunnel's faults, from the set
    tinyproxy::forward_proxy proxy(opts, tinyproxy::forward_mode({argv[2], upstream_port}));
    // [readme: end]
    std::error_code ec;
    proxy.listen(ec);
    if (ec) {
        std::cerr << "fault_proxy: cannot listen on " << opts.listen.to_string() << ": "
                  << ec.message() << "\n";
        return 1;
    }
    std::cout << "listening on " << proxy.local_endpoint().to_string() << std::endl;
    std::thread serving([&proxy] { proxy.run(); });
    for (std::string line; std::getline(std::cin, line);) {
        try {
            carry_out(*toxics, line); // reaches live connections, on the loop's thread
            std::cout << "ok" << std::endl;
        } catch (const std::exception& e) {
            std::cout << "error: " << e.what() << std::endl;
        }
    }
    proxy.stop();
    serving.join();
}
