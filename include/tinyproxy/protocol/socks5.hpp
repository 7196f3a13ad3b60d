// SPDX-License-Identifier: MIT
// socks5_handshake: the server side of a SOCKS5 handshake (RFC 1928, RFC 1929) as a sans-I/O
// parser.
#pragma once

#include <algorithm>    // std::min
#include <array>        // the message buffer
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <optional>     // configured credentials
#include <string>       // host names
#include <string_view>  // credential comparison
#include <system_error> // std::error_code, std::errc
#include <utility>      // std::move
#include <vector>       // replies

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"

namespace tinyproxy {

/// The server side of a SOCKS5 handshake: method negotiation, username/password
/// authentication (RFC 1929) when credentials are configured, then one CONNECT request.
///
/// Feed it whatever bytes arrived, in any split (one byte at a time is fine); each feed answers
/// a handshake_step. It buffers at most one message (513 bytes, the largest RFC 1929 request),
/// never reads past the bytes it was given, and hands back the bytes that follow the request in
/// the connect step's `to_upstream`. Any truncation of a valid exchange is need_more.
///
/// What each outcome sends (to_client):
///  - need_more: the method selection {5, M} and the auth status {1, 0} once each is due;
///  - connect: those replies if they are still due (when the client pipelined its messages);
///    after connecting, the caller sends connected(local) or failed(why);
///  - fail: the replies due, then the one that says why, and the caller closes:
///     * not SOCKS5 (first byte not 5): nothing (unsupported_version);
///     * NMETHODS = 0, or no method we accept: {5, 0xFF} (no_acceptable_method);
///     * RFC 1929 version not 1: {1, 1} (unsupported_version); bad credentials: {1, 1}
///       (auth_failed);
///     * request version not 5: REP 0x01 (unsupported_version);
///     * a command other than CONNECT, BIND and UDP ASSOCIATE, or BIND or UDP ASSOCIATE when
///       `config` does not accept it: REP 0x07 (unsupported_command);
///     * ATYP other than 1, 3, 4: REP 0x08 (unsupported_address_type), as soon as ATYP arrives,
///       since the request's length is then unknown;
///     * a domain name that is empty or holds a control character (NUL included): REP 0x04
///       (name_not_resolved: no such name can resolve);
///     * port 0 in a CONNECT: REP 0x01 (invalid_address).
///
/// A BIND (when accepted) answers a connect step of kind `request::bind` naming the peer the
/// client expects (port 0 allowed: a client seldom knows it); the caller then sends
/// connected(listening), and connected(peer) once the peer has connected. A UDP ASSOCIATE
/// answers kind `request::udp_associate` naming where the client's datagrams will come from
/// (0.0.0.0 and port 0 allowed: the client may not know); the caller sends
/// connected(relay address) and relays until the client closes this connection.
///
/// Domain names are otherwise passed through as given (up to 255 bytes, as the protocol allows);
/// an IPv4 or IPv6 target comes out as its numeric text. Any feed after a connect or fail step
/// answers fail(protocol_error) with nothing to send.
class socks5_handshake {
public:
    struct config {
        /// Set: only USERNAME/PASSWORD (method 0x02) is accepted, with exactly these
        /// credentials. Unset: only NO AUTHENTICATION REQUIRED (0x00).
        std::optional<credentials> required;
        bool accept_bind = false;          ///< BIND is a request; unset, it gets REP 0x07
        bool accept_udp_associate = false; ///< UDP ASSOCIATE likewise
    };

    static constexpr std::uint8_t version = 5;
    static constexpr std::uint8_t method_no_auth = 0x00;
    static constexpr std::uint8_t method_username_password = 0x02;
    static constexpr std::uint8_t method_none_acceptable = 0xFF;
    static constexpr std::uint8_t auth_version = 1;
    static constexpr std::uint8_t command_connect = 1;
    static constexpr std::uint8_t command_bind = 2;
    static constexpr std::uint8_t command_udp_associate = 3;
    static constexpr std::uint8_t atyp_ipv4 = 1;
    static constexpr std::uint8_t atyp_domain = 3;
    static constexpr std::uint8_t atyp_ipv6 = 4;
    /// The largest message a client sends: an RFC 1929 request with a 255-byte user name and
    /// password (1 + 1 + 255 + 1 + 255).
    static constexpr std::size_t max_message_size = 513;

    socks5_handshake() = default;
    explicit socks5_handshake(config cfg) noexcept : config_(std::move(cfg)) {}

    /// The client's next bytes. See the class comment for what each outcome sends.
    [[nodiscard]] handshake_step feed(byte_view bytes);

    /// The success reply (REP 0x00) with BND.ADDR/BND.PORT = `bound`, the proxy's own address on
    /// the upstream connection (ATYP 1 for IPv4, 4 for IPv6).
    std::vector<std::uint8_t> connected(const endpoint& bound) const;
    /// The failure reply for `why` (REP from reply_code(), BND.ADDR 0.0.0.0, BND.PORT 0).
    std::vector<std::uint8_t> failed(std::error_code why) const;
    /// The REP code that says why a request failed: not_allowed 0x02; network unreachable or
    /// down 0x03; host unreachable or name_not_resolved 0x04; connection refused 0x05;
    /// connect_timeout or timed out 0x06 ("TTL expired"); unsupported_command 0x07;
    /// unsupported_address_type 0x08; anything else, an empty code included, 0x01. Never 0x00.
    static std::uint8_t reply_code(std::error_code why) noexcept;

    /// True once feed() has answered connect or fail.
    bool finished() const noexcept { return stage_ == stage::finished; }

private:
    enum class stage { greeting, auth, request, finished };

    /// How many bytes the message being read needs, judged from the bytes buffered so far: its
    /// full length once every length field is in, else more than is buffered. Sets `why` (and
    /// returns 0) as soon as the buffered bytes cannot start a valid message.
    std::size_t wanted(std::error_code& why) const noexcept;
    /// Acts on the complete message in the buffer; answers whether the handshake goes on.
    bool on_greeting(std::vector<std::uint8_t>& to_client, std::error_code& why);
    bool on_auth(std::vector<std::uint8_t>& to_client, std::error_code& why) const;
    bool on_request(host_port& target, handshake_step::request& kind, std::error_code& why) const;
    handshake_step fail_with(std::error_code why, std::vector<std::uint8_t> to_client);

    static bool same_secret(std::string_view given, std::string_view expected) noexcept;

    config config_;
    stage stage_ = stage::greeting;
    std::array<std::uint8_t, max_message_size> buffer_{};
    std::size_t buffered_ = 0;
};

// ---------------------------------------------------------------------------------------------

inline handshake_step socks5_handshake::feed(byte_view bytes) {
    if (stage_ == stage::finished) {
        return handshake_step::fail(errc::protocol_error);
    }
    std::vector<std::uint8_t> to_client; // replies due, in order
    byte_reader input(bytes);
    for (;;) {
        std::error_code why;
        std::size_t want = wanted(why);
        if (why) {
            return fail_with(why, std::move(to_client));
        }
        if (buffered_ < want) {
            if (input.remaining() == 0) {
                return handshake_step::need_more(std::move(to_client));
            }
            // Copy only what this message still needs: the rest may belong to the next one.
            // Then ask again: a field that decides the length (or fails) may just have arrived.
            byte_view more = input.bytes(std::min(want - buffered_, input.remaining()));
            std::copy(more.begin(), more.end(), buffer_.data() + buffered_);
            buffered_ += more.size();
            continue;
        }
        // buffered_ == want: one complete message.
        switch (stage_) {
        case stage::greeting:
            if (!on_greeting(to_client, why)) {
                return fail_with(why, std::move(to_client));
            }
            break;
        case stage::auth:
            if (!on_auth(to_client, why)) {
                return fail_with(why, std::move(to_client));
            }
            stage_ = stage::request;
            break;
        case stage::request: {
            host_port target;
            handshake_step::request kind = handshake_step::request::connect;
            if (!on_request(target, kind, why)) {
                return fail_with(why, std::move(to_client));
            }
            stage_ = stage::finished;
            byte_view rest = input.rest();
            handshake_step step = handshake_step::request_for(
                kind, std::move(target), std::vector<std::uint8_t>(rest.begin(), rest.end()));
            step.to_client = std::move(to_client);
            return step;
        }
        case stage::finished:
            break; // not reached: the loop returns when the stage becomes finished
        }
        buffered_ = 0;
    }
}

inline std::size_t socks5_handshake::wanted(std::error_code& why) const noexcept {
    const std::size_t n = buffered_;
    const auto& b = buffer_;
    switch (stage_) {
    case stage::greeting: // VER NMETHODS METHODS[NMETHODS]
        if (n >= 1 && b[0] != version) {
            why = errc::unsupported_version;
            return 0;
        }
        if (n < 2) {
            return 2;
        }
        if (b[1] == 0) {
            why = errc::no_acceptable_method;
            return 0;
        }
        return 2 + std::size_t{b[1]};
    case stage::auth: // VER ULEN UNAME[ULEN] PLEN PASSWD[PLEN]
        if (n >= 1 && b[0] != auth_version) {
            why = errc::unsupported_version;
            return 0;
        }
        if (n < 2) {
            return 2;
        }
        if (n < 3 + std::size_t{b[1]}) {
            return 3 + std::size_t{b[1]};
        }
        return 3 + std::size_t{b[1]} + std::size_t{b[2 + std::size_t{b[1]}]};
    case stage::request: // VER CMD RSV ATYP DST.ADDR DST.PORT
        if (n >= 1 && b[0] != version) {
            why = errc::unsupported_version;
            return 0;
        }
        if (n < 4) {
            return 4;
        }
        switch (b[3]) {
        case atyp_ipv4:
            return 4 + 4 + 2;
        case atyp_ipv6:
            return 4 + 16 + 2;
        case atyp_domain:
            return n < 5 ? 5 : 5 + std::size_t{b[4]} + 2;
        default:
            why = errc::unsupported_address_type;
            return 0;
        }
    case stage::finished:
        break;
    }
    why = errc::protocol_error;
    return 0;
}

inline bool socks5_handshake::on_greeting(std::vector<std::uint8_t>& to_client,
                                          std::error_code& why) {
    byte_reader message(byte_view{buffer_.data(), buffered_});
    message.skip(1); // VER, checked by wanted()
    byte_view methods = message.bytes(message.u8());
    const std::uint8_t ours = config_.required ? method_username_password : method_no_auth;
    bool offered = false;
    for (std::uint8_t method : methods) {
        offered = offered || method == ours;
    }
    if (!offered) {
        why = errc::no_acceptable_method;
        return false;
    }
    byte_writer(to_client).u8(version).u8(ours);
    stage_ = config_.required ? stage::auth : stage::request;
    return true;
}

inline bool socks5_handshake::on_auth(std::vector<std::uint8_t>& to_client,
                                      std::error_code& why) const {
    byte_reader message(byte_view{buffer_.data(), buffered_});
    message.skip(1); // VER, checked by wanted()
    byte_view username = message.bytes(message.u8());
    byte_view password = message.bytes(message.u8());
    // RFC 1929 says 1 to 255 bytes each; an empty field is read the same way and simply does not
    // match (unless the configured value is empty too). Both fields are always compared.
    bool user_ok = same_secret(username.as_chars(), config_.required->username);
    bool password_ok = same_secret(password.as_chars(), config_.required->password);
    if (!(user_ok && password_ok)) {
        why = errc::auth_failed;
        return false;
    }
    byte_writer(to_client).u8(auth_version).u8(0x00);
    return true;
}

inline bool socks5_handshake::on_request(host_port& target, handshake_step::request& kind,
                                         std::error_code& why) const {
    byte_reader message(byte_view{buffer_.data(), buffered_});
    message.skip(1); // VER, checked by wanted()
    std::uint8_t command = message.u8();
    message.skip(1); // RSV: ignored
    std::uint8_t atyp = message.u8();
    if (command == command_bind && config_.accept_bind) {
        kind = handshake_step::request::bind;
    } else if (command == command_udp_associate && config_.accept_udp_associate) {
        kind = handshake_step::request::udp_associate;
    } else if (command != command_connect) {
        why = errc::unsupported_command; // not accepted, or unknown
        return false;
    }
    if (atyp == atyp_ipv4) {
        byte_view a = message.bytes(4);
        target.host = ip_address::v4({a[0], a[1], a[2], a[3]}).to_string();
    } else if (atyp == atyp_ipv6) {
        std::array<std::uint8_t, 16> a{};
        byte_view raw = message.bytes(16);
        std::copy(raw.begin(), raw.end(), a.begin());
        target.host = ip_address::v6(a).to_string();
    } else {
        target.host = message.string_u8();
        if (!detail::usable_host_name(target.host)) {
            why = errc::name_not_resolved;
            return false;
        }
    }
    target.port = message.u16();
    if (!message || message.remaining() != 0) {
        why = errc::protocol_error; // wanted() and this reading disagree: a bug, not a client
        return false;
    }
    // BIND and UDP ASSOCIATE may leave the port to us: the client seldom knows it.
    if (target.port == 0 && kind == handshake_step::request::connect) {
        why = errc::invalid_address;
        return false;
    }
    return true;
}

inline handshake_step socks5_handshake::fail_with(std::error_code why,
                                                  std::vector<std::uint8_t> to_client) {
    const stage failed_at = stage_;
    stage_ = stage::finished;
    buffered_ = 0;
    if (failed_at == stage::greeting && why == errc::no_acceptable_method) {
        byte_writer(to_client).u8(version).u8(method_none_acceptable);
    } else if (failed_at == stage::auth) {
        byte_writer(to_client).u8(auth_version).u8(0x01); // any status but 0 is a failure
    } else if (failed_at == stage::request) {
        byte_writer(to_client).bytes(failed(why));
    }
    // A greeting in another version gets no answer: the client does not speak SOCKS5.
    return handshake_step::fail(why, std::move(to_client));
}

inline std::vector<std::uint8_t> socks5_handshake::connected(const endpoint& bound) const {
    std::vector<std::uint8_t> reply;
    reply.reserve(22);
    byte_writer(reply)
        .u8(version)
        .u8(0x00)
        .u8(0x00)
        .u8(bound.address.is_v6() ? atyp_ipv6 : atyp_ipv4)
        .bytes(bound.address.bytes())
        .u16(bound.port);
    return reply;
}

inline std::vector<std::uint8_t> socks5_handshake::failed(std::error_code why) const {
    std::vector<std::uint8_t> reply;
    reply.reserve(10);
    byte_writer(reply).u8(version).u8(reply_code(why)).u8(0x00).u8(atyp_ipv4).u32(0).u16(0);
    return reply;
}

inline std::uint8_t socks5_handshake::reply_code(std::error_code why) noexcept {
    if (why == errc::not_allowed) {
        return 0x02;
    }
    if (why == std::errc::network_unreachable || why == std::errc::network_down) {
        return 0x03;
    }
    if (why == std::errc::host_unreachable || why == errc::name_not_resolved) {
        return 0x04;
    }
    if (why == std::errc::connection_refused) {
        return 0x05;
    }
    if (why == errc::connect_timeout || why == std::errc::timed_out) {
        return 0x06;
    }
    if (why == errc::unsupported_command) {
        return 0x07;
    }
    if (why == errc::unsupported_address_type) {
        return 0x08;
    }
    return 0x01;
}

inline bool socks5_handshake::same_secret(std::string_view given,
                                          std::string_view expected) noexcept {
    // The time taken depends on the expected length only, not on where the first difference is.
    unsigned difference = given.size() == expected.size() ? 0u : 1u;
    for (std::size_t i = 0; i < expected.size(); ++i) {
        unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0u;
        difference |= static_cast<unsigned>(g ^ static_cast<unsigned char>(expected[i]));
    }
    return difference == 0;
}

} // namespace tinyproxy
