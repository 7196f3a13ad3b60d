// SPDX-License-Identifier: MIT
// The Mode concept: what a Mode is told of a client (session_info), what its per-client session
// answers (mode_step), and the members a session drives it through.
#pragma once

#include <type_traits> // detecting optional Mode session members
#include <utility>     // std::declval

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"

namespace tinyproxy {

struct tunnel_info;   // stage.hpp: what a tunnel's stages are told
struct tunnel_stages; // stage.hpp: the stages a tunnel starts with

/// What a Mode knows about a new client.
struct session_info {
    endpoint client; ///< the client's address
    endpoint local;  ///< the address the client connected to
};

/// What a Mode's session answers at each step of its handshake (see handshake_step).
using mode_step = handshake_step;

/// A Mode says where each client goes. It is any class with
///     class session;                                           // see below
///     session make_session(const session_info& client) const;  // called once per client
/// make_session may be called from several threads at once, so it only reads the Mode.
///
/// Its `session` is the per-client handshake object a basic_session drives; it does no I/O:
///     mode_step start();                             // before any byte is read
///     mode_step on_client_data(byte_view bytes);     // after need_more: the next bytes
///     std::vector<std::uint8_t> on_connected(std::error_code result, const endpoint& local,
///                                            const endpoint& upstream); // reply to the client
/// on_connected is called once the connect step is decided (unless the session ends first, as
/// when the proxy stops): with an empty `result` and both addresses once connected, or with why
/// the connect failed (refused, unresolvable, timed out) and empty addresses. Its reply goes to
/// the client before the tunnel's bytes, or before the close. Two members are optional:
///     static constexpr bool uses_local_endpoint = false;
/// for a session whose reply never names the upstream socket's own address (`local` is then
/// left empty: one getsockname(2) less per connection), and
///     const endpoint* client_address() const;
/// for a session that learns who the client really is (a PROXY protocol header names it):
/// results and logs then name that address (nullptr: the client as accepted). And two for a
/// Mode that reads the bytes in flight (http_proxy_mode):
///     void stages(const tunnel_info& tunnel, tunnel_stages& stages);
/// gives each tunnel stages (stage.hpp) that see its bytes before any of
/// session_options::stages, and
///     mode_step on_handed_back();
/// takes the client back when a stage of its tunnel hands it back (stage_context::hand_back):
/// the upstream is closed, and the answer is a step as on_client_data's, under a new
/// handshake deadline.
///
/// A session may throw (out of memory, or a bug): that client's session ends, nothing else.

namespace detail {

/// Whether a Mode session says who the client really is (`client_address()`, see above).
template <class ModeSession, class = void>
struct reports_client : std::false_type {};
template <class ModeSession>
struct reports_client<ModeSession,
                      std::void_t<decltype(std::declval<const ModeSession&>().client_address())>>
    : std::true_type {};

/// Whether a Mode session reads the `local` argument of on_connected() (unless it says not).
template <class ModeSession, class = void>
struct uses_local_endpoint : std::true_type {};
template <class ModeSession>
struct uses_local_endpoint<ModeSession, std::void_t<decltype(ModeSession::uses_local_endpoint)>>
    : std::bool_constant<ModeSession::uses_local_endpoint> {};

/// Whether a Mode session gives each tunnel stages of its own (mode/mode.hpp, `stages()`).
template <class ModeSession, class = void>
struct gives_stages : std::false_type {};
template <class ModeSession>
struct gives_stages<ModeSession,
                    std::void_t<decltype(std::declval<ModeSession&>().stages(
                        std::declval<const tunnel_info&>(), std::declval<tunnel_stages&>()))>>
    : std::true_type {};

/// Whether a Mode session takes a client handed back by its tunnel (`on_handed_back()`).
template <class ModeSession, class = void>
struct takes_back : std::false_type {};
template <class ModeSession>
struct takes_back<ModeSession, std::void_t<decltype(std::declval<ModeSession&>().on_handed_back())>>
    : std::true_type {};

} // namespace detail

} // namespace tinyproxy
