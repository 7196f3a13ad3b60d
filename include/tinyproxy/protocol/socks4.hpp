// SPDX-License-Identifier: MIT
// socks4_handshake: the server side of a SOCKS4 or SOCKS4a CONNECT request as a sans-I/O parser.
#pragma once

#include <algorithm>    // std::find, std::copy
#include <array>        // the fixed header
#include <cstddef>      // std::size_t
#include <cstdint>      // bytes
#include <string>       // user id, host name
#include <string_view>  // name checks
#include <system_error> // std::error_code
#include <utility>      // std::move
#include <vector>       // replies

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/protocol/step.hpp"

namespace tinyproxy {

/// The server side of a SOCKS4 request, and of its SOCKS4a form (DSTIP 0.0.0.x with x != 0,
/// then a host name after the user id):
///
///     VN=4 CD DSTPORT(2) DSTIP(4) USERID... NUL [HOST... NUL]
///
/// Feed it whatever bytes arrived, in any split; each feed answers a handshake_step. The user
/// id and host name are bounded (`config`): a field past its bound fails as soon as the bound is
/// passed, whatever the client still has to send, so a client cannot make it buffer more than
/// 8 + max_user_id + max_host_name bytes. Bytes after the request come back in the connect
/// step's `to_upstream`. Any truncation of a valid request is need_more.
///
/// Outcomes (to_client on fail is the 8-byte reply VN 0, CD 0x5B, unless said otherwise):
///  - connect: nothing to send yet; after connecting, the caller sends connected(local) or
///    failed(why);
///  - fail:
///     * not SOCKS4 (first byte not 4): nothing (unsupported_version), at the first byte;
///     * user id or host name past its bound: message_too_large;
///     * a command other than CONNECT, or BIND (2) when `config` does not accept it:
///       unsupported_command, once the whole request is in;
///     * a SOCKS4a host name that is empty or holds a control character: name_not_resolved;
///     * DSTPORT 0 in a CONNECT: invalid_address.
/// An accepted BIND answers a connect step of kind `request::bind` naming the peer the client
/// expects (DSTPORT 0 allowed); the caller sends connected(listening), then connected(peer).
/// Any feed after a connect or fail step answers fail(protocol_error) with nothing to send.
class socks4_handshake {
public:
    struct config {
        std::size_t max_user_id = 255;   ///< bytes before the user id's NUL
        std::size_t max_host_name = 255; ///< bytes before the SOCKS4a host name's NUL
        bool accept_bind = false;        ///< BIND is a request; unset, it gets 0x5B
    };

    static constexpr std::uint8_t version = 4;
    static constexpr std::uint8_t command_connect = 1;
    static constexpr std::uint8_t command_bind = 2;
    static constexpr std::uint8_t reply_granted = 0x5A;
    static constexpr std::uint8_t reply_rejected = 0x5B;

    socks4_handshake() = default;
    explicit socks4_handshake(config cfg) noexcept : config_(cfg) {}

    /// The client's next bytes. See the class comment for the outcomes.
    [[nodiscard]] handshake_step feed(byte_view bytes);

    /// VN 0, CD 0x5A, then the port and IPv4 address of `bound` (the proxy's address on the
    /// upstream connection; the address is 0.0.0.0 when that is IPv6, which SOCKS4 cannot say).
    std::vector<std::uint8_t> connected(const endpoint& bound) const;
    /// VN 0, CD 0x5B, port 0, address 0.0.0.0: SOCKS4 has one code for every failure.
    std::vector<std::uint8_t> failed(std::error_code why) const;

    /// The user id the client sent (at most max_user_id bytes; complete once finished()).
    const std::string& user_id() const noexcept { return user_id_; }
    /// True once feed() has answered connect or fail.
    bool finished() const noexcept { return stage_ == stage::finished; }

private:
    enum class stage { header, user_id, host_name, finished };
    static constexpr std::size_t header_size = 8;

    /// Appends input bytes to `field` up to and including a NUL (which is not stored); answers
    /// whether the NUL was found, and sets `too_long` once the field passes `bound`.
    static bool read_until_nul(byte_reader& input, std::string& field, std::size_t bound,
                               bool& too_long);
    handshake_step finish(byte_reader& input);
    handshake_step fail_with(std::error_code why, bool reply = true);
    bool is_socks4a() const noexcept;

    config config_;
    stage stage_ = stage::header;
    std::array<std::uint8_t, header_size> header_{};
    std::size_t header_bytes_ = 0;
    std::string user_id_;
    std::string host_name_;
};

// ---------------------------------------------------------------------------------------------

inline handshake_step socks4_handshake::feed(byte_view bytes) {
    if (stage_ == stage::finished) {
        return handshake_step::fail(errc::protocol_error);
    }
    byte_reader input(bytes);
    if (stage_ == stage::header) {
        byte_view more = input.bytes(std::min(header_size - header_bytes_, input.remaining()));
        std::copy(more.begin(), more.end(), header_.data() + header_bytes_);
        header_bytes_ += more.size();
        if (header_bytes_ >= 1 && header_[0] != version) {
            return fail_with(errc::unsupported_version, false); // not a SOCKS4 client
        }
        if (header_bytes_ < header_size) {
            return handshake_step::need_more();
        }
        stage_ = stage::user_id;
    }
    bool too_long = false;
    if (stage_ == stage::user_id) {
        if (!read_until_nul(input, user_id_, config_.max_user_id, too_long)) {
            return too_long ? fail_with(errc::message_too_large) : handshake_step::need_more();
        }
        stage_ = is_socks4a() ? stage::host_name : stage::finished;
    }
    if (stage_ == stage::host_name) {
        if (!read_until_nul(input, host_name_, config_.max_host_name, too_long)) {
            return too_long ? fail_with(errc::message_too_large) : handshake_step::need_more();
        }
        stage_ = stage::finished;
    }
    return finish(input);
}

inline bool socks4_handshake::read_until_nul(byte_reader& input, std::string& field,
                                             std::size_t bound, bool& too_long) {
    byte_view rest = input.rest();
    const std::uint8_t* nul = std::find(rest.begin(), rest.end(), std::uint8_t{0});
    auto length = static_cast<std::size_t>(nul - rest.begin());
    // Room left under the bound, checked before anything is copied: a 64 KiB user id with no
    // NUL fails here without being stored.
    if (length > bound - std::min(bound, field.size())) {
        too_long = true;
        return false;
    }
    field.append(input.bytes(length).as_chars());
    if (nul == rest.end()) {
        return false;
    }
    input.skip(1); // the NUL
    return true;
}

inline handshake_step socks4_handshake::finish(byte_reader& input) {
    byte_reader header(byte_view{header_.data(), header_.size()});
    header.skip(1); // VN, checked on arrival
    std::uint8_t command = header.u8();
    std::uint16_t port = header.u16();
    byte_view ip = header.bytes(4);
    const bool bind = command == command_bind && config_.accept_bind;
    if (command != command_connect && !bind) {
        return fail_with(errc::unsupported_command); // BIND not accepted, or no command at all
    }
    host_port target;
    if (is_socks4a()) {
        if (!detail::usable_host_name(host_name_)) {
            return fail_with(errc::name_not_resolved);
        }
        target.host = host_name_;
    } else {
        target.host = ip_address::v4({ip[0], ip[1], ip[2], ip[3]}).to_string();
    }
    if (port == 0 && !bind) { // a BIND may leave the port to us: the client seldom knows it
        return fail_with(errc::invalid_address);
    }
    target.port = port;
    byte_view rest = input.rest();
    return handshake_step::request_for(
        bind ? handshake_step::request::bind : handshake_step::request::connect, std::move(target),
        std::vector<std::uint8_t>(rest.begin(), rest.end()));
}

inline handshake_step socks4_handshake::fail_with(std::error_code why, bool reply) {
    stage_ = stage::finished;
    return handshake_step::fail(why, reply ? failed(why) : std::vector<std::uint8_t>{});
}

inline bool socks4_handshake::is_socks4a() const noexcept {
    // DSTIP 0.0.0.x with x != 0: "I could not resolve the name; here it is".
    return header_[4] == 0 && header_[5] == 0 && header_[6] == 0 && header_[7] != 0;
}

inline std::vector<std::uint8_t> socks4_handshake::connected(const endpoint& bound) const {
    std::vector<std::uint8_t> reply;
    reply.reserve(header_size);
    byte_writer out(reply);
    out.u8(0).u8(reply_granted).u16(bound.port);
    if (bound.address.is_v4()) {
        out.bytes(bound.address.bytes());
    } else {
        out.u32(0);
    }
    return reply;
}

inline std::vector<std::uint8_t> socks4_handshake::failed(std::error_code) const {
    std::vector<std::uint8_t> reply;
    reply.reserve(header_size);
    byte_writer(reply).u8(0).u8(reply_rejected).u16(0).u32(0);
    return reply;
}

} // namespace tinyproxy
