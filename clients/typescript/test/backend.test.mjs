// The example backend (examples/backend.mjs) run as a process against real nodes, with a real
// WebSocket client as the app: it gets private and room messages, drops, misses messages, comes
// back with a fresh URL and `since`, and gets what it missed. And, when the node has webhooks,
// the backend's /webhook records the presence events the node posts to it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { ImServerClient } from '../dist/index.js';
import { API_KEY, Socket, freePorts, nodeHasFlag, packageDir, readyLine, run, startCluster, startNode, startRedis, stopAll, until } from './stack.mjs';

const WEBHOOK_SECRET = `whsec_${Buffer.from('example backend webhook secret!!').toString('base64')}`;

let redisUrl;
let nodes;
let backend;

before(async () => {
  redisUrl = await startRedis();
  nodes = await startCluster(redisUrl, 2);
  backend = await startBackend({ IM_API_URL: nodes[0].api });
});

after(() => stopAll());

/** Runs examples/backend.mjs; returns its base URL. */
async function startBackend(env, port = 0) {
  const child = run(`backend-${port}`, process.execPath, [path.join(packageDir, 'examples/backend.mjs')], {
    env: { IM_API_KEY: API_KEY, PORT: String(port), ...env },
    stdout: 'pipe',
  });
  return (await readyLine(child, 'the example backend')).url;
}

/** A call to the backend, as the app's page would make it; fails unless it answers 200. */
async function call(base, method, route, body) {
  const r = await fetch(base + route, body === undefined ? { method } : { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const data = await r.json();
  assert.equal(r.status, 200, `${method} ${route}: ${JSON.stringify(data)}`);
  return data;
}

test('an app gets private and room messages, drops, and resumes with since without losing any', async () => {
  const { url } = await call(backend, 'GET', '/connect?user=alice');
  const alice = await Socket.open(url);
  assert.equal(alice.welcome.payload.client, 'alice');

  await call(backend, 'POST', '/send', { from: 'bob', to: 'alice', text: 'one' });
  const one = await alice.next((e) => e.type === 'message');
  assert.deepEqual([one.from, one.payload], ['bob', { text: 'one' }]);
  await call(backend, 'POST', '/room', { from: 'alice', room: 'room:lobby', text: 'alice is here' });
  await call(backend, 'POST', '/room', { from: 'bob', room: 'room:lobby', text: 'hello lobby' });
  const own = await alice.next((e) => e.type === 'channel');
  assert.deepEqual([own.from, own.chan, own.payload], ['alice', 'room:lobby', { text: 'alice is here' }]);
  const bobs = await alice.next((e) => e.type === 'channel');
  assert.deepEqual([bobs.from, bobs.payload], ['bob', { text: 'hello lobby' }]);

  // The network goes: the node notices (alice is offline) and keeps what comes meanwhile.
  const since = alice.since;
  alice.drop();
  const im = new ImServerClient({ url: nodes[0].api, apiKey: API_KEY });
  await until('alice offline', async () => !(await im.hasOnline({ client: 'alice' })).online);
  await call(backend, 'POST', '/send', { from: 'bob', to: 'alice', text: 'while away' });
  await call(backend, 'POST', '/room', { from: 'bob', room: 'room:lobby', text: 'still there?' });

  const fresh = await call(backend, 'GET', '/connect?user=alice');
  const back = await Socket.open(`${fresh.url}&since=${encodeURIComponent(since)}`);
  assert.equal(back.welcome.payload.recovered, true, JSON.stringify(back.welcome));
  const missed = [await back.next((e) => e.seq !== undefined), await back.next((e) => e.seq !== undefined)];
  assert.deepEqual(missed.map((e) => [e.type, e.from, e.payload.text]), [['message', 'bob', 'while away'], ['channel', 'bob', 'still there?']]);
  const lastSeq = Number(since.split(':').pop());
  assert.deepEqual(missed.map((e) => e.seq), [lastSeq + 1, lastSeq + 2], 'seq goes on without a gap');

  // Live messages follow the replay.
  await call(backend, 'POST', '/send', { from: 'bob', to: 'alice', text: 'welcome back' });
  const live = await back.next((e) => e.type === 'message');
  assert.deepEqual([live.seq, live.payload], [lastSeq + 3, { text: 'welcome back' }]);
  back.close();
});

test('the backend answers the node\'s refusals as 400 with its code', async () => {
  const r = await fetch(`${backend}/send`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ from: 'bob', to: '', text: 'x' }) });
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error, 'invalid_client_id');
});

const webhooks = nodeHasFlag('--webhook-url');
test('the node posts presence webhooks to the backend, which verifies and records them', {
  skip: webhooks ? false : 'this imserver has no --webhook-url yet (webhook support lands in parallel)',
}, async () => {
  const [port] = await freePorts(1);
  const node = await startNode(redisUrl, {
    prefix: 'tsclient-hooks',
    args: ['--webhook-url', `http://127.0.0.1:${port}/webhook`, '--webhook-secret', WEBHOOK_SECRET],
  });
  const hooked = await startBackend({ IM_API_URL: node.api, IM_WEBHOOK_SECRETS: WEBHOOK_SECRET }, port);
  const presence = async () => (await call(hooked, 'GET', '/presence')).events.filter((e) => e.client === 'hook-carol');

  const { url } = await call(hooked, 'GET', '/connect?user=hook-carol');
  const carol = await Socket.open(url);
  const [online] = await until('the online webhook', async () => {
    const events = await presence();
    return events.length > 0 && events;
  });
  assert.deepEqual([online.kind, online.node, online.meta, online.conns], ['online', node.id, { name: 'hook-carol' }, 1]);
  assert.equal(typeof online.id, 'string');
  carol.close();
  const offline = await until('the offline webhook', async () => (await presence()).find((e) => e.kind === 'offline'));
  assert.deepEqual([offline.node, offline.conns], [node.id, 0]);
  assert.ok(offline.at >= online.at);

  // A forged post is refused and recorded nowhere.
  const forged = await fetch(`${hooked}/webhook`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'webhook-id': 'msg_forged', 'webhook-timestamp': String(Math.floor(Date.now() / 1000)), 'webhook-signature': 'v1,AAAA' },
    body: JSON.stringify({ type: 'presence', events: [{ id: '9-9', kind: 'online', client: 'hook-carol', node: node.id, at: 1, conns: 1 }] }),
  });
  assert.equal(forged.status, 400);
  assert.equal((await presence()).length, 2);
});
