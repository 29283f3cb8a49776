// Helpers shared by the browser tests: the server and simulator as child processes, a
// headless Chromium, polling with deadlines, and a minimal MQTT client to publish readings.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.IOTMON_BIN
  ? path.resolve(process.env.IOTMON_BIN)
  : path.resolve(here, '../../target/debug/iotmon');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** Where screenshots go: the workspace's target directory. */
export const TARGET_DIR = path.resolve(here, '../../target');

const children = [];

// --- Child processes ------------------------------------------------------------------------

export function assertBinary() {
  assert.ok(existsSync(BIN), `no server binary at ${BIN}: run \`cargo build\` or set IOTMON_BIN`);
}

// Starts `iotmon ARGS`, keeping its recent output for error messages. Both pipes are read
// continuously so a chatty child never blocks on a full pipe.
export function startChild(name, args) {
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.label = name;
  child.recent = [];
  child.stdoutLines = readline.createInterface({ input: child.stdout });
  const keep = (stream) => (line) => {
    child.recent.push(`[${name} ${stream}] ${line}`);
    if (child.recent.length > 200) child.recent.shift();
  };
  child.stdoutLines.on('line', keep('out'));
  readline.createInterface({ input: child.stderr }).on('line', keep('err'));
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.once('error', (err) => child.recent.push(`[${name}] failed to start: ${err.message}`));
  children.push(child);
  return child;
}

export function recentOutput() {
  return children.map((c) => c.recent.slice(-40).join('\n')).join('\n');
}

// Resolves with the MQTT and HTTP addresses the server prints once it is listening.
export function serverAddresses(server, timeoutMs) {
  return new Promise((resolve, reject) => {
    let mqtt, http;
    const fail = (why) => { clearTimeout(timer); reject(new Error(`${why}\n--- output ---\n${recentOutput()}`)); };
    const timer = setTimeout(() => fail(`server did not print both addresses within ${timeoutMs / 1000} s`), timeoutMs);
    server.stdoutLines.on('line', (raw) => {
      const line = raw.replace(/\x1b\[[0-9;]*m/g, ''); // in case the output is coloured
      mqtt ??= line.match(/mqtt listening on (127\.0\.0\.1:\d+)/)?.[1];
      http ??= line.match(/http listening on (http:\/\/127\.0\.0\.1:\d+)/)?.[1];
      if (mqtt && http) { clearTimeout(timer); resolve({ mqtt, http }); }
    });
    server.exited.then(({ code, signal }) => fail(`server exited early (code ${code}, signal ${signal})`));
    server.once('error', (err) => fail(`could not start ${BIN}: ${err.message}`));
  });
}

export async function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const killed = setTimeout(() => child.kill('SIGKILL'), 5000);
  await child.exited;
  clearTimeout(killed);
}

export const stopAll = () => Promise.all(children.map(stopChild));

// Last resort if the run is torn down without the `after` hook (e.g. an uncaught exception).
process.on('exit', () => { for (const c of children) if (c.exitCode === null) c.kill('SIGKILL'); });

// --- Browser --------------------------------------------------------------------------------

export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

// Records the page's WebSocket messages (parsed), each with the time it was seen here.
export function recordFrames(page) {
  const frames = { received: [], sent: [] };
  page.on('websocket', (ws) => {
    const record = (list) => (frame) => {
      try { list.push(Object.assign(JSON.parse(frame.payload), { seenAt: Date.now() })); } catch { /* binary */ }
    };
    ws.on('framereceived', record(frames.received));
    ws.on('framesent', record(frames.sent));
  });
  return frames;
}

// Polls a predicate in the page until it holds; on timeout, says what was awaited and shows
// the page's header and the children's output, which is what one needs to debug it.
export async function waitInPage(page, what, fn, arg, timeout) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (err) {
    const header = await page.locator('header').innerText().catch(() => '?');
    throw new Error(`timed out waiting for ${what} (${err.message.split('\n')[0]})\n` +
      `page header: ${header.replace(/\s+/g, ' ')}\n--- output ---\n${recentOutput()}`);
  }
}

// Polls a predicate in this process (for the recorded WebSocket frames, or the REST API).
export async function waitHere(what, fn, timeout) {
  const deadline = Date.now() + timeout;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n--- output ---\n${recentOutput()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// --- A minimal MQTT 3.1.1 client: connect, publish at QoS 1, disconnect ----------------------
// Enough to play a device without a dependency; `publish` resolves when the broker acknowledges.

const mqttString = (s) => { const b = Buffer.from(s); return Buffer.concat([Buffer.from([b.length >> 8, b.length & 255]), b]); };

function mqttPacket(type, body) {
  const length = [];
  let n = body.length;
  do { let byte = n % 128; n = Math.floor(n / 128); if (n > 0) byte |= 128; length.push(byte); } while (n > 0);
  return Buffer.concat([Buffer.from([type, ...length]), body]);
}

export function mqttConnect(address, clientId) {
  const [host, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), host);
    const acks = new Map();
    let buffer = Buffer.alloc(0), nextId = 1, connected = false;
    socket.on('error', reject);
    socket.on('connect', () => {
      const header = Buffer.concat([mqttString('MQTT'), Buffer.from([4, 0x02, 0, 60])]); // clean session, 60 s keep-alive
      socket.write(mqttPacket(0x10, Buffer.concat([header, mqttString(clientId)])));
    });
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        let length = 0, mult = 1, i = 1;
        for (; i < buffer.length && i < 5; i++) { length += (buffer[i] & 127) * mult; mult *= 128; if (!(buffer[i] & 128)) break; }
        if (i >= buffer.length || buffer.length < i + 1 + length) return;
        const type = buffer[0] >> 4, body = buffer.subarray(i + 1, i + 1 + length);
        buffer = buffer.subarray(i + 1 + length);
        if (type === 2 && !connected) {
          connected = true;
          if (body[1] !== 0) { reject(new Error(`MQTT connection refused (code ${body[1]})`)); return; }
          resolve(client);
        } else if (type === 4) {
          const id = body.readUInt16BE(0);
          acks.get(id)?.();
          acks.delete(id);
        }
      }
    });
    const client = {
      publish(topic, payload) {
        const id = nextId++;
        const body = Buffer.concat([mqttString(topic), Buffer.from([id >> 8, id & 255]), Buffer.from(payload)]);
        return new Promise((done) => { acks.set(id, done); socket.write(mqttPacket(0x32, body)); });
      },
      close() { socket.end(mqttPacket(0xe0, Buffer.alloc(0))); },
    };
  });
}

// --- The dashboard's own figures ------------------------------------------------------------

/** A gauge or counter from /metrics (without labels), or NaN when absent. */
export async function metric(httpUrl, name) {
  const text = await (await fetch(`${httpUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

/** The device ids of the grid's items in the page, in list order (loaded ones only). */
export const gridIds = (page) => page.$$eval('#rows [data-device]', (items) => items
  .map((n) => [Number(n.getAttribute('aria-rowindex')), n.dataset.device])
  .sort((a, b) => a[0] - b[0]).map(([, id]) => id));

/** The last `view` the page sent, or undefined. */
export const lastView = (frames) => frames.sent.findLast((m) => m.type === 'view');
