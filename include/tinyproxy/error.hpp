// SPDX-License-Identifier: MIT
// The library's own error conditions as one std::error_category.
#pragma once

#include <string>       // messages
#include <system_error> // error_code, error_category

#include "tinyproxy/config.hpp"

namespace tinyproxy {

/// Conditions the library itself detects (the operating system's errors stay in
/// std::system_category). Zero is never used: a default error_code means success.
enum class errc {
    invalid_address = 1,      ///< text that is not HOST:PORT, [V6]:PORT or a valid port
    name_not_resolved,        ///< getaddrinfo found no address for a host name
    connect_timeout,          ///< no upstream address connected before the connect deadline
    handshake_timeout,        ///< the client did not finish its handshake in time
    handshake_incomplete,     ///< the client closed before finishing its handshake
    idle_timeout,             ///< no byte moved either way for the idle timeout
    protocol_error,           ///< the client spoke something the mode does not accept
    stopped,                  ///< the proxy was stopped while the operation was waiting
    child_failed,             ///< a session in a forked child ended with an error (fork_policy)
    unsupported_version,      ///< a handshake in a protocol version we do not speak
    unsupported_command,      ///< a request other than CONNECT (SOCKS BIND, UDP ASSOCIATE)
    unsupported_address_type, ///< an address type the protocol does not define
    no_acceptable_method,     ///< no authentication method both sides accept (SOCKS5)
    auth_failed,              ///< wrong or missing credentials
    message_too_large,        ///< a handshake field or header past its hard limit
    method_not_allowed,       ///< an HTTP method other than CONNECT
    not_allowed,              ///< the destination is not allowed by the proxy's rules
    client_not_allowed,       ///< the client is outside every allowed range
    reset_by_stage,           ///< a relay stage ended the tunnel with a reset
    stage_failed,             ///< a relay stage threw (out of memory): the tunnel ends
};

namespace detail {

class error_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "tinyproxy"; }
    std::string message(int condition) const override {
        switch (static_cast<errc>(condition)) {
        case errc::invalid_address:
            return "invalid address";
        case errc::name_not_resolved:
            return "host name not resolved";
        case errc::connect_timeout:
            return "connect timed out";
        case errc::handshake_timeout:
            return "handshake timed out";
        case errc::handshake_incomplete:
            return "client closed during the handshake";
        case errc::idle_timeout:
            return "idle timeout";
        case errc::protocol_error:
            return "protocol error";
        case errc::stopped:
            return "proxy stopped";
        case errc::child_failed:
            return "session in child process failed";
        case errc::unsupported_version:
            return "unsupported protocol version";
        case errc::unsupported_command:
            return "command not supported";
        case errc::unsupported_address_type:
            return "address type not supported";
        case errc::no_acceptable_method:
            return "no acceptable authentication method";
        case errc::auth_failed:
            return "authentication failed";
        case errc::message_too_large:
            return "handshake message too large";
        case errc::method_not_allowed:
            return "method not allowed";
        case errc::not_allowed:
            return "destination not allowed";
        case errc::client_not_allowed:
            return "client not allowed";
        case errc::reset_by_stage:
            return "reset by a relay stage";
        case errc::stage_failed:
            return "a relay stage failed";
        }
        return "unknown tinyproxy error";
    }
};

} // namespace detail

/// The category of tinyproxy::errc; one object for the whole program (a function-local static
/// in an inline function is shared across translation units).
inline const std::error_category& error_category() noexcept {
    static const detail::error_category_impl category;
    return category;
}

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), error_category()};
}

} // namespace tinyproxy

namespace std {
template <>
struct is_error_code_enum<tinyproxy::errc> : true_type {};
} // namespace std
