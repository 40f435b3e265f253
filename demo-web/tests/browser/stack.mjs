// Shared by the browser tests: starts redis-server, imserver nodes (optionally each behind a TCP
// proxy the test can cut), demo-web and headless Chromium on free ports, and signs pages in.
//
// IM_STATIC_OVERRIDE=<dir>: serve the page's scripts present in <dir> (app.js, outbox.js, …,
// imclient.js) from <dir> instead of demo-web's compiled-in copies, to check that a test fails
// on another version of the page or the client, e.g. with
// `git show HEAD:demo-web/static/outbox.js > <dir>/outbox.js`.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const binDir = process.env.IM_BIN_DIR || path.join(root, 'target/debug');
export const artifacts = process.env.IM_ARTIFACTS || path.join(root, 'target/browser-artifacts');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const staticOverride = process.env.IM_STATIC_OVERRIDE || '';
export const SECRET = 'browser-test-secret-0123456789abcdef';
export const WAIT = 15000;

mkdirSync(artifacts, { recursive: true });
const children = new Set();

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const handedOut = new Set();

/**
 * A free TCP port on 127.0.0.1, not handed out before by this process. It comes from below the
 * kernel's ephemeral range: a port from inside it can become an outgoing connection's local
 * port (a node's Redis connection, the browser's socket) before the server picked for it binds it.
 */
export async function freePort() {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: the usual range
  }
  for (;;) {
    const port = low > 11000 ? 10000 + Math.floor(Math.random() * (low - 10000)) : 0;
    const got = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(null));
      srv.listen(port, '127.0.0.1', () => {
        const bound = srv.address().port;
        srv.close(() => resolve(bound));
      });
    });
    if (got !== null && !handedOut.has(got)) {
      handedOut.add(got);
      return got;
    }
  }
}

export async function waitPort(port, deadline = WAIT) {
  const end = Date.now() + deadline;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on ${port}`);
    await sleep(50);
  }
}

/** Polls `check` until it returns a truthy value (returned) or `deadline` ms pass (throws). */
export async function until(what, check, deadline = WAIT) {
  const end = Date.now() + deadline;
  let last;
  for (;;) {
    last = await check();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

export function run(name, cmd, args, env = {}) {
  const log = openSync(path.join(artifacts, `${name}.log`), 'a');
  const child = spawn(cmd, args, { env: { ...process.env, RUST_LOG: 'info', ...env }, stdio: ['ignore', log, log] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

export function stop(child, signal = 'SIGTERM') {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill(signal);
  });
}

/**
 * A TCP proxy in front of a node. `cut()` resets every proxied connection; while `down`, new
 * connections are reset as soon as they are accepted (the browser sees a failed connect).
 */
export class TcpProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.down = false;
    this.pairs = new Set();
    this.server = net.createServer((client) => this._accept(client));
  }

  listen(port) {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => { this.port = this.server.address().port; resolve(this.port); });
    });
  }

  _accept(client) {
    if (this.down) { client.resetAndDestroy(); return; }
    client.setNoDelay(true);
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    upstream.setNoDelay(true);
    const pair = { client, upstream };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      if (!client.destroyed) client.destroy();
      if (!upstream.destroyed) upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Resets every connection going through. */
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    }
    this.pairs.clear();
  }

  /** A network drop: cuts everything and refuses connections for `ms`. */
  async drop(ms) {
    this.down = true;
    this.cut();
    await sleep(ms);
    this.down = false;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

let helpText;
/** Whether this build of imserver knows `--flag`. */
export function nodeHasFlag(flag) {
  if (helpText === undefined) {
    try { helpText = execFileSync(path.join(binDir, 'imserver'), ['--help'], { encoding: 'utf8' }); } catch (e) { helpText = ''; }
  }
  return helpText.includes(flag);
}

/**
 * Starts everything: redis, `nodes` imserver nodes (each behind a TcpProxy when `proxy`; the
 * node's id is then the proxy's address) and demo-web. Returns the stack; `stack.nodes[i]`
 * has { port, id, child, proxy }.
 */
export async function startStack({ nodes = 2, proxy = false, nodeArgs = [] } = {}) {
  const stack = { nodes: [], nodeArgs };
  // Before the nodes: they admit the demo page's origin by name.
  stack.webPort = await freePort();
  stack.web = `http://127.0.0.1:${stack.webPort}`;
  stack.redisPort = await freePort();
  await startRedis(stack);
  stack.redisUrl = `redis://127.0.0.1:${stack.redisPort}`;
  // Every address first: each node follows the live set of the whole list, as deployed (a
  // node without it never moves a client whose home came back, while the backends already
  // send that client's messages there).
  for (let i = 0; i < nodes; i++) {
    const port = await freePort();
    let p = null;
    if (proxy) {
      p = new TcpProxy(port);
      await p.listen(0);
    }
    stack.nodes.push({ port, proxy: p, id: `ws://127.0.0.1:${p ? p.port : port}` });
  }
  for (const node of stack.nodes) await startNode(stack, node);
  await startWeb(stack);
  return stack;
}

/** Starts (or starts again, on the same port) the stack's demo-web. */
export async function startWeb(stack) {
  stack.webChild = run('demo-web', path.join(binDir, 'demo-web'), ['--listen', `127.0.0.1:${stack.webPort}`], {
    IM_REDIS_URL: stack.redisUrl, IM_NODES: stack.nodes.map((n) => n.id).join(','), IM_TOKEN_SECRET: SECRET,
  });
  await waitPort(stack.webPort);
}

/**
 * Starts (or starts again, on the same port) the stack's redis-server. It keeps its data in an
 * append-only file, as the deployment's Redis does, so a restart loses neither the IM's state
 * nor demo-web's sessions and history. Written before each answer but never fsynced: a killed
 * process loses nothing (the kernel has the writes), and an fsync per command made Redis time
 * out on a busy disk.
 */
export async function startRedis(stack) {
  const dir = path.join(artifacts, `redis-${stack.redisPort}`);
  mkdirSync(dir, { recursive: true });
  stack.redis = run('redis', 'redis-server', ['--port', String(stack.redisPort), '--bind', '127.0.0.1', '--save', '',
    '--appendonly', 'yes', '--appendfsync', 'no', '--dir', dir]);
  await waitPort(stack.redisPort);
}

/** Starts (or starts again, on the same port and id) the node `node` of `stack`. */
export async function startNode(stack, node) {
  node.child = run(`imserver-${node.port}`, path.join(binDir, 'imserver'), [
    '--listen', `127.0.0.1:${node.port}`, '--node', node.id, '--nodes', stack.nodes.map((n) => n.id).join(','), '--redis-url', stack.redisUrl,
    '--heartbeat-interval-ms', '5000', '--heartbeat-timeout-ms', '15000', ...stack.nodeArgs,
  ], { IM_TOKEN_SECRET: SECRET, IM_ALLOWED_ORIGINS: stack.web });
  await waitPort(node.port);
  return node;
}

/** Undoes what a failed test may have left behind: nodes stopped, proxies down. */
export async function healStack(stack) {
  for (const node of stack.nodes) {
    if (node.proxy) node.proxy.down = false;
    if (node.child.exitCode !== null || node.child.signalCode !== null) await startNode(stack, node);
  }
}

export function nodeOf(stack, user) {
  const node = stack.nodes.find((n) => n.id === user.me.node);
  if (!node) throw new Error(`${user.me.name}'s node ${user.me.node} is not one of ours`);
  return node;
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
}

export async function stopAll() {
  await Promise.all([...children].map((c) => stop(c, 'SIGKILL')));
}

/** A new browser context and page on the demo, not signed in yet. */
export async function newPage(browser, stack, name, viewport = { width: 1000, height: 700 }, query = '') {
  const context = await browser.newContext({ viewport });
  if (staticOverride) {
    for (const file of readdirSync(staticOverride).filter((f) => f.endsWith('.js'))) {
      const body = readFileSync(path.join(staticOverride, file), 'utf8');
      await context.route(`**/${file}`, (route) => route.fulfill({ contentType: 'text/javascript; charset=utf-8', body }));
    }
  }
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(stack.web + '/' + query);
  return { context, page };
}

/** Signs `name` in on a new page and waits for its socket. Returns { context, page, me }. */
export async function signIn(browser, stack, name, viewport, query = '', { waitConnected = true } = {}) {
  const { context, page } = await newPage(browser, stack, name, viewport, query);
  await page.fill('#signin-name', name);
  await page.click('#signin-btn');
  if (waitConnected) await page.locator('#state[data-state="connected"]').waitFor({ timeout: WAIT });
  const me = await page.evaluate(() => fetch('/api/me').then((r) => r.json()));
  return { context, page, me };
}

/** Signs the page's user out (the business kicks its sockets) and closes its context. */
export async function signOut(user) {
  await user.page.evaluate(() => fetch('/api/signout', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).catch(() => {});
  await user.context.close();
}

/** A user of demo-web without a page: signs in over HTTP and calls the API with its cookie. */
export async function apiUser(stack, name) {
  const r = await fetch(`${stack.web}/api/signin`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }) });
  if (!r.ok) throw new Error(`sign in ${name}: ${r.status}`);
  const cookie = r.headers.get('set-cookie').split(';')[0];
  const me = await r.json();
  const call = async (p, body) => {
    const res = await fetch(stack.web + p, body === undefined ? { headers: { cookie } }
      : { method: 'POST', headers: { cookie, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(`${p}: ${res.status} ${data.error}: ${data.message}`);
    return data;
  };
  return { me, call, cookie };
}

export const messageText = (page, text) => page.locator('#messages li .text', { hasText: text });

/** The texts shown in the open conversation, in order. */
export const shownTexts = (page) => page.$$eval('#messages li .text', (els) => els.map((e) => e.textContent));
