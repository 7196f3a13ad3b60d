// SPDX-License-Identifier: MIT
// Drives `tinyproxy --api` with Toxiproxy's Node client (toxiproxy-node-client, from npm): every
// toxic type added, updated and removed, each checked on a live TCP connection through the
// proxy to an echo server; populate, reset, delete, enable/disable and GET /version.
//
//   node client_test.js --cli PATH/TO/tinyproxy [--timing-scale N]
//   (or TINYPROXY_CLI=PATH node client_test.js)
//
// Exits 0 on pass, 1 on failure, 77 (ctest's Skipped) when the client is not installed and
// TINYPROXY_ALLOW_SKIP=1. Loopback only; every port is picked by the kernel ("127.0.0.1:0")
// and read back from the API's answer; every wait has a deadline, and the whole run one too.
// A change to the toxics must show on the next byte a live connection moves after the API's
// answer, as with Toxiproxy (whose clients rely on it): no check waits for it to settle.
// Timing checks are lower bounds (a toxic delays at least this much); the few upper bounds tell
// "the toxic is gone" from "it is still there", each far above what the plain path takes and
// below what the toxic would. Deadlines scale with TINYPROXY_TIMING_SCALE, as the C++ tests' do.
"use strict";

const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const net = require("node:net");
const path = require("node:path");

const skip_code = 77;
const allow_skip = process.env.TINYPROXY_ALLOW_SKIP === "1";
/// The value after `flag` on the command line, or "".
function argument(flag) {
    const at = process.argv.indexOf(flag);
    return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : "";
}
/// TINYPROXY_TIMING_SCALE, else --timing-scale (CMake gives a sanitizer build's), else 1.
const timing_scale = (() => {
    for (const text of [process.env.TINYPROXY_TIMING_SCALE, argument("--timing-scale")]) {
        const value = Number.parseInt(text || "", 10);
        if (value > 0 && value <= 1000) {
            return value;
        }
    }
    return 1;
})();
/// The whole run's deadline: under ctest's TIMEOUT (120 s), so a hang is reported by us.
const overall_timeout_ms = 100000;
/// What one wait for something that should come at once (a reply, a close) may take.
const wait_ms = 5000 * timing_scale;

function fail_setup(message) {
    if (allow_skip) {
        console.log(`SKIP: ${message}`);
        process.exit(skip_code);
    }
    console.error(`FAIL: ${message} (TINYPROXY_ALLOW_SKIP=1 makes this a skip)`);
    process.exit(1);
}

let client;
try {
    client = require("toxiproxy-node-client");
} catch (e) {
    fail_setup(`toxiproxy-node-client is not installed in ${path.join(__dirname, "node_modules")}` +
               ` (run \`npm ci\` in ${__dirname}; tools/test.sh does): ` +
               e.message.split("\n")[0]);
}
const { Toxiproxy } = client;

function cli_path() { return argument("--cli") || process.env.TINYPROXY_CLI || ""; }

// --- small helpers ---------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => Number(process.hrtime.bigint() / 1000000n);

/// Resolves once `ready()` is true (checked every few ms); rejects after `ms` naming `what`.
async function until(ready, ms, what) {
    const deadline = now() + ms;
    for (;;) {
        if (ready()) {
            return;
        }
        if (now() >= deadline) {
            throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        }
        await sleep(2);
    }
}

/// `size` bytes that differ from message to message, so a byte out of order or from another
/// message shows.
let payload_serial = 0;
function payload(size) {
    const serial = ++payload_serial;
    const bytes = Buffer.alloc(size);
    for (let i = 0; i < size; ++i) {
        bytes[i] = (i * 31 + serial * 7 + (i >> 8)) & 0xff;
    }
    return bytes;
}

/// An echo server on 127.0.0.1 (a port the kernel picks): every byte back, and its end of
/// stream after them (half-close kept).
async function start_echo_server() {
    const sockets = new Set();
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
        sockets.add(socket);
        socket.on("error", () => {}); // a reset_peer toxic resets the proxy's side too
        socket.on("close", () => sockets.delete(socket));
        socket.pipe(socket);
    });
    await new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", resolve);
    });
    return {
        address: `127.0.0.1:${server.address().port}`,
        close() {
            for (const socket of sockets) {
                socket.destroy();
            }
            server.close();
        },
    };
}

/// A client connection through a proxy, recording what it receives and how it ends.
class connection {
    /// Connects to 127.0.0.1:port; rejects with the socket's error (ECONNREFUSED...).
    static open(port) {
        return new Promise((resolve, reject) => {
            const socket = net.connect({ host: "127.0.0.1", port });
            const timer = setTimeout(() => {
                socket.destroy();
                reject(new Error(`connect to 127.0.0.1:${port} timed out`));
            }, wait_ms);
            socket.once("error", (e) => {
                clearTimeout(timer);
                reject(e);
            });
            socket.once("connect", () => {
                clearTimeout(timer);
                socket.removeAllListeners("error");
                resolve(new connection(socket));
            });
        });
    }

    constructor(socket) {
        this.socket = socket;
        this.buffer = Buffer.alloc(0);
        this.chunks = 0; // 'data' events: how many reads the bytes came in
        this.received = 0; // bytes in all
        this.ended = null; // how it ended: "end", "close" or an error code
        socket.setNoDelay(true);
        socket.on("data", (bytes) => {
            this.buffer = Buffer.concat([this.buffer, bytes]);
            this.chunks += 1;
            this.received += bytes.length;
        });
        socket.on("end", () => this.ended = this.ended || "end");
        socket.on("close", () => this.ended = this.ended || "close");
        socket.on("error", (e) => this.ended = this.ended || e.code || String(e));
    }

    send(bytes) { this.socket.write(bytes); }

    /// The next `size` bytes, waiting at most `ms` for them.
    async take(size, ms = wait_ms) {
        await until(() => this.buffer.length >= size || this.ended, ms, `${size} bytes`);
        assert.ok(this.buffer.length >= size,
                  `${size} bytes expected, ${this.buffer.length} came, then ${this.ended}`);
        const bytes = this.buffer.subarray(0, size);
        this.buffer = this.buffer.subarray(size);
        return bytes;
    }

    /// Sends `bytes` and checks that they all come back, in order; returns the milliseconds
    /// the round trip took.
    async echo(bytes, ms = wait_ms) {
        const start = now();
        this.send(bytes);
        const back = await this.take(bytes.length, ms);
        assert.ok(back.equals(bytes), "the bytes echoed differ from those sent");
        return now() - start;
    }

    /// Waits for the end (at most `ms`); returns how it ended.
    async ended_within(ms = wait_ms) {
        await until(() => this.ended, ms, "the connection to end");
        return this.ended;
    }

    /// Checks that nothing comes, nor the end, for `ms`.
    async quiet_for(ms) {
        const before = this.received;
        await sleep(ms);
        assert.equal(this.received, before, `bytes came within ${ms} ms`);
        assert.equal(this.ended, null, `the connection ended (${this.ended}) within ${ms} ms`);
    }

    close() { this.socket.destroy(); }
}

/// Checks that connecting to `port` is refused.
async function assert_refused(port) {
    await assert.rejects(connection.open(port), (e) => e.code === "ECONNREFUSED",
                         `127.0.0.1:${port} should refuse connections`);
}

function port_of(listen) {
    const match = /:(\d+)$/.exec(listen);
    assert.ok(match, `listen address '${listen}' has no port`);
    const port = Number(match[1]);
    assert.ok(port > 0 && port < 65536, `listen address '${listen}' has port 0`);
    return port;
}

// --- the server ------------------------------------------------------------------------------

/// Starts `cli --api 127.0.0.1:0`; resolves with the process and its API's URL once it printed
/// "listening on HOST:PORT".
function start_server(cli) {
    return new Promise((resolve, reject) => {
        const child = spawn(cli, ["--api", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        let err = "";
        const timer = setTimeout(() => {
            child.kill("SIGKILL");
            reject(new Error(`${cli} printed no listening line in ${wait_ms} ms; stderr: ${err}`));
        }, wait_ms);
        child.stderr.on("data", (bytes) => {
            err += bytes;
            process.stderr.write(bytes);
        });
        child.stdout.on("data", (bytes) => {
            out += bytes;
            const match = /^listening on (\S+):(\d+)\s*$/m.exec(out);
            if (match) {
                clearTimeout(timer);
                resolve({ child, url: `http://${match[1]}:${match[2]}` });
            }
        });
        child.once("error", (e) => {
            clearTimeout(timer);
            reject(new Error(`cannot start ${cli}: ${e.message}`));
        });
        child.once("exit", (code, signal) => {
            clearTimeout(timer);
            reject(new Error(`${cli} exited (${code ?? signal}) before listening; stderr: ${err}`));
        });
    });
}

/// SIGTERM, then the exit status (SIGKILL if it does not come within the wait).
function stop_server(child) {
    if (child.exitCode !== null || child.signalCode !== null) {
        return Promise.resolve(child.exitCode ?? child.signalCode);
    }
    return new Promise((resolve) => {
        const timer = setTimeout(() => child.kill("SIGKILL"), wait_ms);
        child.once("exit", (code, signal) => {
            clearTimeout(timer);
            resolve(code ?? signal);
        });
        child.kill("SIGTERM");
    });
}

// --- the checks ------------------------------------------------------------------------------

let echo;
let toxiproxy;
let proxy_serial = 0;
/// The proxies the running check made: those it left (it failed) are deleted after it, so the
/// checks after it start clean.
let made_by_check = [];

/// A new proxy to the echo server, on a port the kernel picks; checks the answer.
async function new_proxy(prefix) {
    const name = `${prefix}_${++proxy_serial}`;
    const proxy =
        await toxiproxy.createProxy({ name, listen: "127.0.0.1:0", upstream: echo.address });
    assert.equal(proxy.name, name);
    assert.equal(proxy.upstream, echo.address);
    assert.equal(proxy.enabled, true);
    proxy.port = port_of(proxy.listen);
    made_by_check.push(name);
    return proxy;
}

/// Adds a toxic and checks the answer says what was asked (every attribute given back).
async function add_toxic(proxy, type, attributes, stream = "downstream") {
    const name = `${type}_${stream}`;
    const toxic = await proxy.addToxic({ name, type, stream, toxicity: 1, attributes });
    assert.equal(toxic.name, name);
    assert.equal(toxic.type, type);
    assert.equal(toxic.stream, stream);
    assert.equal(toxic.toxicity, 1);
    for (const key of Object.keys(attributes)) {
        assert.equal(toxic.attributes[key], attributes[key], `attribute ${key}`);
    }
    const shown = await proxy.getToxic(name);
    assert.deepEqual(shown.toJson(), toxic.toJson());
    return toxic;
}

/// Updates a toxic's attributes (the client posts the whole toxic) and checks the answer.
async function update_toxic(toxic, attributes) {
    const body = { ...toxic.toJson(), attributes: { ...toxic.attributes, ...attributes } };
    const updated = await toxic.update(body);
    assert.equal(updated.name, toxic.name);
    assert.equal(updated.type, toxic.type);
    assert.equal(updated.stream, toxic.stream);
    for (const key of Object.keys(attributes)) {
        assert.equal(updated.attributes[key], attributes[key], `updated attribute ${key}`);
    }
    return updated;
}

/// Removes a toxic and checks the proxy no longer has it.
async function remove_toxic(proxy, toxic) {
    await toxic.remove();
    await assert.rejects(proxy.getToxic(toxic.name), /status code 404/);
}

const checks = [];
function check(name, body) { checks.push({ name, body }); }

check("GET /version", async () => {
    const text = await toxiproxy.getVersion();
    const body = JSON.parse(text);
    assert.match(body.version, /^\d+\.\d+\.\d+/, `version in ${text}`);
});

check("latency delays the echo; an update changes the delay live; removal passes what it held",
      async () => {
    const proxy = await new_proxy("latency");
    const conn = await connection.open(proxy.port);
    await conn.echo(payload(100));
    const toxic = await add_toxic(proxy, "latency", { latency: 300, jitter: 0 });
    const slow = await conn.echo(payload(100));
    assert.ok(slow >= 280, `latency 300 ms: echo took ${slow} ms`);
    const updated = await update_toxic(toxic, { latency: 900 });
    const slower = await conn.echo(payload(100));
    assert.ok(slower >= 850, `latency 900 ms: echo took ${slower} ms`);
    // Removed while a message is held: it still comes, whole and in order.
    const held = payload(5000);
    conn.send(held);
    await sleep(100);
    await remove_toxic(proxy, updated);
    assert.ok((await conn.take(held.length)).equals(held), "the held message changed");
    const fast = await conn.echo(payload(100));
    assert.ok(fast < 900, `latency removed: echo still took ${fast} ms`);
    conn.close();
    await proxy.remove();
});

check("bandwidth slows a transfer; an update changes the rate live; removal restores it",
      async () => {
    const proxy = await new_proxy("bandwidth");
    const conn = await connection.open(proxy.port);
    await conn.echo(payload(1000));
    const toxic = await add_toxic(proxy, "bandwidth", { rate: 100 }); // KB/s
    const at_100 = await conn.echo(payload(50000));
    assert.ok(at_100 >= 350, `50 KB at 100 KB/s took ${at_100} ms`);
    const updated = await update_toxic(toxic, { rate: 20 });
    const at_20 = await conn.echo(payload(20000));
    assert.ok(at_20 >= 700, `20 KB at 20 KB/s took ${at_20} ms`);
    const held = payload(20000);
    conn.send(held);
    await sleep(200);
    await remove_toxic(proxy, updated);
    assert.ok((await conn.take(held.length)).equals(held), "the held transfer changed");
    // 1 MB would take 50 s at 20 KB/s.
    await conn.echo(payload(1000000), 5000 * timing_scale);
    conn.close();
    await proxy.remove();
});

check("slow_close delays the close; an update changes the delay live; removal closes at once",
      async () => {
    const proxy = await new_proxy("slow_close");
    const first = await connection.open(proxy.port);
    await first.echo(payload(100));
    const toxic = await add_toxic(proxy, "slow_close", { delay: 300 });
    const updated = await update_toxic(toxic, { delay: 1200 });
    await first.echo(payload(100)); // bytes still pass at once
    let start = now();
    first.socket.end(); // the echo server ends its side: that end is delayed
    await first.ended_within();
    const delayed = now() - start;
    assert.ok(delayed >= 1100, `slow_close 1200 ms: the close came after ${delayed} ms`);

    const longer = await update_toxic(updated, { delay: 5000 });
    const second = await connection.open(proxy.port);
    await second.echo(payload(100));
    start = now();
    second.socket.end();
    await second.quiet_for(300);
    await remove_toxic(proxy, longer);
    await second.ended_within();
    const released = now() - start;
    assert.ok(released < 4000, `slow_close removed: the close still came after ${released} ms`);
    await proxy.remove();
});

check("timeout stops data; an update to a timeout closes the live connection; removal passes " +
      "what it held", async () => {
    const proxy = await new_proxy("timeout");
    const first = await connection.open(proxy.port);
    await first.echo(payload(100));
    const toxic = await add_toxic(proxy, "timeout", { timeout: 0 });
    first.send(payload(100));
    await first.quiet_for(400);
    const closing = await update_toxic(toxic, { timeout: 300 });
    const how = await first.ended_within();
    assert.ok(how === "end" || how === "close", `timeout closes the connection; it ended: ${how}`);

    const stalled = await update_toxic(closing, { timeout: 0 });
    const second = await connection.open(proxy.port);
    const held = payload(3000);
    second.send(held);
    await second.quiet_for(400);
    await remove_toxic(proxy, stalled);
    assert.ok((await second.take(held.length)).equals(held), "the held message changed");
    await second.echo(payload(100));
    second.close();
    await proxy.remove();
});

check("reset_peer resets the connection; an update shortens its timeout live; removal passes " +
      "what it held", async () => {
    const proxy = await new_proxy("reset_peer");
    const first = await connection.open(proxy.port);
    await first.echo(payload(100));
    const toxic = await add_toxic(proxy, "reset_peer", { timeout: 60000 });
    first.send(payload(100));
    await first.quiet_for(300);
    // An update starts the toxic afresh (as Toxiproxy's does): the next byte arms it.
    const soon = await update_toxic(toxic, { timeout: 200 });
    first.send(payload(10));
    assert.equal(await first.ended_within(), "ECONNRESET");

    const later = await update_toxic(soon, { timeout: 60000 });
    const second = await connection.open(proxy.port);
    const held = payload(2000);
    second.send(held);
    await second.quiet_for(300);
    await remove_toxic(proxy, later);
    assert.ok((await second.take(held.length)).equals(held), "the held message changed");
    await second.echo(payload(100));
    second.close();

    await add_toxic(proxy, "reset_peer", { timeout: 0 });
    const third = await connection.open(proxy.port);
    third.send(payload(10));
    assert.equal(await third.ended_within(), "ECONNRESET");
    await proxy.remove();
});

check("slicer delivers every byte in slices; an update changes the slicing live; removal " +
      "passes what it held", async () => {
    const proxy = await new_proxy("slicer");
    const conn = await connection.open(proxy.port);
    await conn.echo(payload(100));
    const toxic =
        await add_toxic(proxy, "slicer", { average_size: 500, size_variation: 100, delay: 20000 });
    const chunks_before = conn.chunks;
    await conn.echo(payload(2000));
    assert.ok(conn.chunks - chunks_before >= 2,
              `2000 bytes in slices of about 500 came in ${conn.chunks - chunks_before} read(s)`);
    // 3000 bytes in slices of at most 1000, 300 ms apart: at least two gaps.
    const updated =
        await update_toxic(toxic, { average_size: 1000, size_variation: 0, delay: 300000 });
    const sliced = await conn.echo(payload(3000));
    assert.ok(sliced >= 500, `slices 300 ms apart: 3000 bytes took ${sliced} ms`);
    const held = payload(6000);
    conn.send(held);
    await sleep(100);
    await remove_toxic(proxy, updated);
    assert.ok((await conn.take(held.length)).equals(held), "the held message changed");
    await conn.echo(payload(100000));
    conn.close();
    await proxy.remove();
});

check("limit_data closes after N bytes; an update moves the limit live (the count carries " +
      "over); removal lifts it", async () => {
    const proxy = await new_proxy("limit_data");
    const first = await connection.open(proxy.port);
    await first.echo(payload(100));
    const toxic = await add_toxic(proxy, "limit_data", { bytes: 1000 });
    await first.echo(payload(600));
    const lowered = await update_toxic(toxic, { bytes: 800 });
    const more = payload(600);
    first.send(more);
    const how = await first.ended_within();
    assert.ok(how === "end" || how === "close", `limit_data closes cleanly; it ended: ${how}`);
    assert.equal(first.buffer.length, 200, "bytes past the limit of 800");
    assert.ok(first.buffer.equals(more.subarray(0, 200)), "the bytes up to the limit changed");

    const second = await connection.open(proxy.port);
    await second.echo(payload(500));
    await remove_toxic(proxy, lowered);
    await second.echo(payload(5000));
    second.close();
    await proxy.remove();
});

check("noop passes every byte (a Toxiproxy type the client's typings lack); an update and " +
      "removal keep the connection as it was", async () => {
    const proxy = await new_proxy("noop");
    const conn = await connection.open(proxy.port);
    await conn.echo(payload(1000));
    const toxic = await add_toxic(proxy, "noop", {});
    await conn.echo(payload(100000));
    const updated = await toxic.update({ ...toxic.toJson(), toxicity: 0.5 });
    assert.equal(updated.toxicity, 0.5);
    await conn.echo(payload(100000));
    await remove_toxic(proxy, updated);
    await conn.echo(payload(100000));
    conn.close();
    await proxy.remove();
});

check("a toxic of an unknown type, or with a bad attribute, is refused with 400", async () => {
    const proxy = await new_proxy("refused");
    await assert.rejects(proxy.addToxic({ name: "x", type: "no_such_type", stream: "downstream",
                                          toxicity: 1, attributes: {} }),
                         /status code 400/);
    await assert.rejects(proxy.addToxic({ name: "x", type: "latency", stream: "sideways",
                                          toxicity: 1, attributes: { latency: 1 } }),
                         /status code 400/);
    await assert.rejects(proxy.addToxic({ name: "x", type: "bandwidth", stream: "downstream",
                                          toxicity: 1, attributes: { rate: "fast" } }),
                         /status code 400/);
    await assert.rejects(proxy.getToxic("x"), /status code 404/);
    await proxy.remove();
});

check("a toxic takes Toxiproxy's defaults (the README's body); a second one of the same name, or " +
      "a second proxy of the same name, is refused with 409", async () => {
    const proxy = await new_proxy("defaults");
    const toxic = await proxy.addToxic({ attributes: { rate: 1000 }, type: "bandwidth" });
    assert.equal(toxic.name, "bandwidth_downstream");
    assert.equal(toxic.stream, "downstream");
    assert.equal(toxic.toxicity, 1);
    assert.deepEqual(toxic.attributes, { rate: 1000 });
    await assert.rejects(proxy.addToxic({ attributes: { rate: 10 }, type: "bandwidth" }),
                         /status code 409/);
    await assert.rejects(
        toxiproxy.createProxy({ name: proxy.name, listen: "127.0.0.1:0", upstream: echo.address }),
        /status code 409/);
    const conn = await connection.open(proxy.port);
    await conn.echo(payload(1000));
    conn.close();
    await proxy.remove();
});

check("an upstream toxic delays what the client sends", async () => {
    const proxy = await new_proxy("upstream");
    const conn = await connection.open(proxy.port);
    await conn.echo(payload(100));
    const toxic = await add_toxic(proxy, "latency", { latency: 400, jitter: 0 }, "upstream");
    const slow = await conn.echo(payload(100));
    assert.ok(slow >= 380, `upstream latency 400 ms: echo took ${slow} ms`);
    await remove_toxic(proxy, toxic);
    conn.close();
    await proxy.remove();
});

check("an update to a new listen address moves the proxy there", async () => {
    const proxy = await new_proxy("moved");
    const moved = await proxy.update({ listen: "127.0.0.1:0", upstream: proxy.upstream,
                                       enabled: true });
    const port = port_of(moved.listen);
    assert.notEqual(port, proxy.port);
    assert.equal((await toxiproxy.get(proxy.name)).listen, moved.listen);
    await assert_refused(proxy.port);
    const conn = await connection.open(port);
    await conn.echo(payload(100));
    conn.close();
    await moved.remove();
});

check("a disabled proxy refuses connections and ends its own; enabled again, it serves",
      async () => {
    const proxy = await new_proxy("enable");
    const conn = await connection.open(proxy.port);
    await conn.echo(payload(100));
    const body = { listen: proxy.listen, upstream: proxy.upstream };
    const disabled = await proxy.update({ ...body, enabled: false });
    assert.equal(disabled.enabled, false);
    assert.equal((await toxiproxy.get(proxy.name)).enabled, false);
    await assert_refused(proxy.port);
    await conn.ended_within();
    const enabled = await disabled.update({ ...body, enabled: true });
    assert.equal(enabled.enabled, true);
    assert.equal(enabled.listen, proxy.listen);
    const again = await connection.open(proxy.port);
    await again.echo(payload(100));
    again.close();
    await proxy.remove();
});

check("populate makes proxies, keeps an identical one (and its connections), answers the real " +
      "ports", async () => {
    const list = [
        { name: "populated_a", listen: "127.0.0.1:0", upstream: echo.address, enabled: true },
        { name: "populated_b", listen: "127.0.0.1:0", upstream: echo.address, enabled: true },
    ];
    const made = await toxiproxy.populate(list);
    assert.deepEqual(Object.keys(made).sort(), ["populated_a", "populated_b"]);
    const ports = {};
    for (const name of Object.keys(made)) {
        assert.equal(made[name].upstream, echo.address);
        assert.equal(made[name].enabled, true);
        ports[name] = port_of(made[name].listen);
    }
    assert.notEqual(ports.populated_a, ports.populated_b);
    const conn = await connection.open(ports.populated_a);
    await conn.echo(payload(100));
    const same = await toxiproxy.populate(
        [{ name: "populated_a", listen: made.populated_a.listen, upstream: echo.address }]);
    assert.equal(same.populated_a.listen, made.populated_a.listen);
    await conn.echo(payload(100)); // the same live connection
    conn.close();
    const all = await toxiproxy.getAll();
    assert.ok("populated_a" in all && "populated_b" in all, "getAll lists the populated proxies");
    await assert.rejects(toxiproxy.populate([{ name: "bad", listen: "127.0.0.1:0" }]),
                         /status code 400/);
});

check("reset enables every proxy and removes every toxic", async () => {
    const proxy = await toxiproxy.get("populated_a");
    const port = port_of(proxy.listen);
    await proxy.addToxic({ name: "slow", type: "latency", stream: "downstream", toxicity: 1,
                           attributes: { latency: 2000, jitter: 0 } });
    const other = await toxiproxy.get("populated_b");
    await other.update({ listen: other.listen, upstream: other.upstream, enabled: false });
    await assert_refused(port_of(other.listen));
    await toxiproxy.reset();
    await assert.rejects(proxy.getToxic("slow"), /status code 404/);
    assert.equal((await toxiproxy.get("populated_b")).enabled, true);
    const conn = await connection.open(port);
    const rtt = await conn.echo(payload(100));
    assert.ok(rtt < 2000, `reset: the latency toxic still delays (${rtt} ms)`);
    conn.close();
    const back = await connection.open(port_of(other.listen));
    await back.echo(payload(100));
    back.close();
});

check("delete removes the proxy and its listener", async () => {
    for (const name of ["populated_a", "populated_b"]) {
        const proxy = await toxiproxy.get(name);
        await proxy.remove();
        await assert.rejects(toxiproxy.get(name), /status code 404/);
        await assert_refused(port_of(proxy.listen));
    }
    await assert.rejects(toxiproxy.createProxy({ name: "x", listen: "127.0.0.1:0" }),
                         /status code 400/);
    assert.deepEqual(Object.keys(await toxiproxy.getAll()), []);
});

// --- main ------------------------------------------------------------------------------------

async function main() {
    const cli = cli_path();
    if (!cli) {
        console.error("FAIL: usage: node client_test.js --cli PATH/TO/tinyproxy" +
                      " (or TINYPROXY_CLI=PATH)");
        return 1;
    }
    echo = await start_echo_server();
    const server = await start_server(cli);
    process.on("exit", () => server.child.kill("SIGKILL")); // a no-op once it has exited
    toxiproxy = new Toxiproxy(server.url);
    let failed = 0;
    try {
        for (const { name, body } of checks) {
            const start = now();
            try {
                await body();
                console.log(`ok - ${name} (${now() - start} ms)`);
            } catch (e) {
                failed += 1;
                console.log(`not ok - ${name}\n${e.stack || e}`);
            }
            for (const left of made_by_check) {
                await toxiproxy.get(left).then((proxy) => proxy.remove(), () => {});
            }
            made_by_check = [];
        }
    } finally {
        const status = await stop_server(server.child);
        echo.close();
        if (status !== 0) {
            failed += 1;
            console.log(`not ok - the server exits 0 on SIGTERM (it exited: ${status})`);
        }
    }
    console.log(failed ? `FAIL: ${failed} of ${checks.length} check(s) failed`
                       : `PASS: ${checks.length} checks`);
    return failed ? 1 : 0;
}

const watchdog = setTimeout(() => {
    console.error(`FAIL: the whole run took over ${overall_timeout_ms} ms`);
    process.exit(1);
}, overall_timeout_ms);

main().then((code) => {
    clearTimeout(watchdog);
    process.exit(code);
}, (e) => {
    console.error(`FAIL: ${e.stack || e}`);
    process.exit(1);
});
