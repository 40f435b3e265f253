// Shared by the tests: a private redis-server and imserver nodes on free ports with the HTTP API
// on, a WebSocket client as an app would hold one (the `ws` package), processes such as the
// example backend, and waiting on conditions with deadlines instead of sleeps.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

export const packageDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const root = path.resolve(packageDir, '../..');
export const imserverBin = process.env.IMSERVER_BIN || path.join(root, 'target/debug/imserver');
export const SECRET = 'ts-client-test-secret-0123456789';
export const API_KEY = 'ts-client-api-key-0123456789abcdef';
/** Default deadline for a condition, in milliseconds. */
export const WAIT = 10_000;

const logs = mkdtempSync(path.join(os.tmpdir(), 'imserver-client-test-'));
const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a truthy value (returned), or throws after `deadline` ms. */
export async function until(what, check, deadline = WAIT) {
  const end = Date.now() + deadline;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${deadline} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * `n` free TCP ports on 127.0.0.1, held open together while picked so that they differ. They
 * come from below the kernel's ephemeral range: a port from inside it can become an outgoing
 * connection's local port before the server picked for it binds it.
 */
export async function freePorts(n) {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: the usual range
  }
  const servers = [];
  while (servers.length < n) {
    const port = low > 11000 ? 10000 + Math.floor(Math.random() * (low - 10000)) : 0;
    const srv = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(null));
      s.listen(port, '127.0.0.1', () => resolve(s));
    });
    if (srv) servers.push(srv);
  }
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** Starts `cmd`, its stderr (and stdout unless `stdout: 'pipe'`) in a log file of its own. */
export function run(name, cmd, args, { env = {}, stdout = 'log' } = {}) {
  const logPath = path.join(logs, `${name}.log`);
  const log = openSync(logPath, 'a');
  const child = spawn(cmd, args, {
    env: { ...process.env, RUST_LOG: 'warn', ...env },
    stdio: ['ignore', stdout === 'pipe' ? 'pipe' : log, log],
  });
  child.logPath = logPath;
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

/** The last lines of a child's log, for error messages. */
export function logTail(child, lines = 20) {
  try {
    return readFileSync(child.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** Reads the first line of a child's stdout as JSON (a ready line), or fails if it exits. */
export function readyLine(child, name) {
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`${name} printed no ready line within ${WAIT} ms:\n${logTail(child)}`)), WAIT);
    const exited = (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code}) before its ready line:\n${logTail(child)}`));
    };
    child.once('exit', exited);
    lines.once('line', (line) => {
      clearTimeout(timer);
      child.off('exit', exited);
      lines.close();
      // Keep reading so that the child never blocks on a full pipe.
      child.stdout.resume();
      try {
        resolve(JSON.parse(line));
      } catch {
        reject(new Error(`${name}'s ready line is not JSON: ${line}`));
      }
    });
  });
}

export function stop(child, signal = 'SIGTERM') {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill(signal);
  });
}

export async function stopAll() {
  await Promise.all([...children].map((c) => stop(c, 'SIGKILL')));
}

/** A private redis-server on a free port; returns its URL. */
export async function startRedis() {
  const [port] = await freePorts(1);
  const dir = mkdtempSync(path.join(logs, 'redis-'));
  const child = run(`redis-${port}`, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir]);
  await until(`redis-server on ${port}`, async () => {
    if (child.exitCode !== null) throw new Error(`redis-server exited:\n${logTail(child)}`);
    return ping(port);
  });
  return `redis://127.0.0.1:${port}`;
}

function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
    s.setTimeout(500, () => { s.destroy(); resolve(false); });
    s.on('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')); });
    s.on('error', () => resolve(false));
  });
}

let helpText;
/** Whether this imserver binary knows `--flag` (for features landing in parallel). */
export function nodeHasFlag(flag) {
  if (helpText === undefined) {
    try {
      helpText = execFileSync(imserverBin, ['--help'], { encoding: 'utf8' });
    } catch {
      helpText = '';
    }
  }
  return helpText.includes(flag);
}

/**
 * Starts an imserver node with its API on a free port and waits until it is healthy.
 * `port`: where it listens (0: any); `nodes`: the node list (`--nodes`); `args`: more flags.
 * Returns { id, listen, api (base URL), child }.
 */
export async function startNode(redisUrl, { port = 0, nodes, prefix = 'tsclient', args = [] } = {}) {
  const listArgs = nodes ? ['--nodes', nodes.join(',')] : [];
  const child = run(`imserver-${port || Date.now()}`, imserverBin, [
    '--listen', `127.0.0.1:${port}`, '--redis-url', redisUrl, '--key-prefix', prefix,
    '--lease-ms', '1500', '--workers', '1', '--session-threads', '1',
    '--api-listen', '127.0.0.1:0', '--api-key', API_KEY, ...listArgs, ...args,
  ], { env: { IM_TOKEN_SECRET: SECRET }, stdout: 'pipe' });
  const ready = await readyLine(child, 'imserver');
  const node = { id: ready.node, listen: ready.listen, api: `http://${ready.api}`, child };
  await until(`node ${node.id} healthy`, async () => {
    const r = await fetch(`http://${node.listen}/healthz`).catch(() => null);
    return r?.status === 200;
  });
  return node;
}

/** `n` nodes listed together (`--nodes`), as a cluster is run: clients spread over them. */
export async function startCluster(redisUrl, n, opts = {}) {
  const ports = await freePorts(n);
  const ids = ports.map((p) => `ws://127.0.0.1:${p}`);
  const nodes = [];
  for (const port of ports) nodes.push(await startNode(redisUrl, { ...opts, port, nodes: ids }));
  return nodes;
}

/** A WebSocket client as an app holds one: the welcome first, then envelopes in order. */
export class Socket {
  /** Connects and waits for the welcome frame. */
  static async open(url) {
    const socket = new Socket(url);
    socket.welcome = await socket.next((e) => e.type === 'system' && e.payload?.event === 'welcome');
    return socket;
  }

  constructor(url) {
    this.ws = new WebSocket(url);
    this.frames = [];
    this.waiters = new Set();
    this.closeCode = undefined;
    this.lastSeq = 0;
    this.ws.on('message', (data) => {
      const frame = JSON.parse(data.toString());
      if (typeof frame.seq === 'number') this.lastSeq = Math.max(this.lastSeq, frame.seq);
      this.frames.push(frame);
      this.#wake();
    });
    this.ws.on('close', (code) => {
      this.closeCode = code;
      this.#wake();
    });
    this.ws.on('error', (e) => {
      this.error = e;
      this.#wake();
    });
  }

  #wake() {
    for (const waiter of this.waiters) waiter();
  }

  /** The welcome's `epoch` and the last `seq` received: what a resume sends as `since`. */
  get since() {
    return `${this.welcome.payload.epoch}:${Math.max(this.welcome.payload.seq, this.lastSeq)}`;
  }

  /** Takes the first frame received that matches `pred`, waiting up to `deadline` ms. */
  next(pred = () => true, deadline = WAIT) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const i = this.frames.findIndex(pred);
        if (i >= 0) {
          done();
          resolve(this.frames.splice(i, 1)[0]);
        } else if (this.closeCode !== undefined || this.error) {
          done();
          reject(new Error(`socket ended (${this.closeCode ?? this.error}) before the frame; got ${JSON.stringify(this.frames)}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no matching frame within ${deadline} ms; got ${JSON.stringify(this.frames)}`));
      }, deadline);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** Waits for the close and returns its code. */
  closed(deadline = WAIT) {
    return until('the socket to close', () => this.closeCode, deadline);
  }

  /** Drops the connection without a close handshake, as a lost network does. */
  drop() {
    this.ws.terminate();
  }

  close() {
    this.ws.close();
  }
}
