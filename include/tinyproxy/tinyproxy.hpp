// The whole library: includes every part, nothing else.
#pragma once

#include "tinyproxy/config.hpp"
#include "tinyproxy/bytes.hpp"
#include "tinyproxy/error.hpp"
#include "tinyproxy/address.hpp"
#include "tinyproxy/detail/sys.hpp"
#include "tinyproxy/socket.hpp"
#include "tinyproxy/protocol/step.hpp"
#include "tinyproxy/relay.hpp"
#include "tinyproxy/session.hpp"
#include "tinyproxy/policy/thread.hpp"
#include "tinyproxy/policy/fork.hpp"
#include "tinyproxy/policy/poll.hpp"
#include "tinyproxy/mode/forward.hpp"
#include "tinyproxy/proxy.hpp"
