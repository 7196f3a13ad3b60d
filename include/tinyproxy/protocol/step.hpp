// SPDX-License-Identifier: MIT
// handshake_step: what a sans-I/O handshake parser answers each time it is fed bytes.
#pragma once

#include <cstdint>      // bytes
#include <string>       // credentials
#include <string_view>  // host names
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // byte buffers

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"

namespace tinyproxy {

/// A user name and password, as SOCKS5 (RFC 1929) and HTTP Basic carry them.
struct credentials {
    std::string username;
    std::string password;
};

/// The answer of a handshake (a SOCKS or HTTP CONNECT parser, or a Mode's session) to the bytes
/// it has been fed so far. The caller does the I/O: it sends `to_client` (whatever the action),
/// then, for need_more, feeds the client's next bytes; for connect, connects to `target` and
/// sends `to_upstream` before anything else; for fail, closes once `to_client` is out.
///
/// A connect step is one of three requests (`kind`), as SOCKS has them: a TCP connection to
/// `target` (CONNECT); a listener that waits for one connection from `target` (BIND, SOCKS4 and
/// SOCKS5); a UDP relay for the client, whose datagrams come from `target` when that is not
/// empty or zero (UDP ASSOCIATE, SOCKS5).
struct handshake_step {
    enum class action {
        need_more, ///< send `to_client` (if any), then feed the client's next bytes
        connect,   ///< connect to `target`, then send `to_upstream` first
        fail,      ///< send `to_client` (if any), then close; `error` says why
    };
    /// What a connect step asks for (see above).
    enum class request {
        connect,       ///< a TCP connection to `target`
        bind,          ///< accept one TCP connection from `target`
        udp_associate, ///< relay UDP for a client whose datagrams come from `target`
    };
    action what = action::need_more;
    request kind = request::connect;
    std::vector<std::uint8_t> to_client;
    host_port target;
    /// For connect: bytes the client sent after its request (pipelined), to go upstream first
    /// and in order. A parser never drops them.
    std::vector<std::uint8_t> to_upstream;
    std::error_code error;

    static handshake_step need_more(std::vector<std::uint8_t> reply = {}) {
        handshake_step s;
        s.to_client = std::move(reply);
        return s;
    }
    static handshake_step connect_to(host_port where, std::vector<std::uint8_t> first_bytes = {}) {
        handshake_step s;
        s.what = action::connect;
        s.target = std::move(where);
        s.to_upstream = std::move(first_bytes);
        return s;
    }
    /// A connect step for a request other than CONNECT (BIND, UDP ASSOCIATE).
    static handshake_step request_for(request what, host_port where,
                                      std::vector<std::uint8_t> first_bytes = {}) {
        handshake_step s = connect_to(std::move(where), std::move(first_bytes));
        s.kind = what;
        return s;
    }
    static handshake_step fail(std::error_code why, std::vector<std::uint8_t> reply = {}) {
        handshake_step s;
        s.what = action::fail;
        s.error = why;
        s.to_client = std::move(reply);
        return s;
    }
};

namespace detail {

/// A host name a client sent (SOCKS4a, SOCKS5): not empty, no NUL or other control character.
inline bool usable_host_name(std::string_view name) noexcept {
    if (name.empty()) {
        return false;
    }
    for (char c : name) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7F) {
            return false;
        }
    }
    return true;
}

} // namespace detail

} // namespace tinyproxy
