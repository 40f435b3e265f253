// Every ImServerClient method against two real nodes listed together (`--nodes`) on a real
// Redis, with real WebSocket clients receiving what the API sent.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { ImServerClient, ImServerError, newMessageId } from '../dist/index.js';
import { API_KEY, Socket, freePorts, startCluster, startNode, startRedis, stopAll, until } from './stack.mjs';

let redisUrl;
let nodes;
let im;

before(async () => {
  redisUrl = await startRedis();
  nodes = await startCluster(redisUrl, 2);
  im = new ImServerClient({ url: nodes[0].api, apiKey: API_KEY });
});

after(() => stopAll());

/** A client id whose home is node `i`, found by asking for connect URLs. */
async function clientOn(i, base) {
  for (let n = 0; ; n++) {
    const client = `${base}${n}`;
    if ((await im.connectUrl({ client })).node === nodes[i].id) return client;
  }
}

/** `client` connected with a fresh URL from the API. */
async function connect(client, meta) {
  const { url } = await im.connectUrl(meta === undefined ? { client } : { client, meta });
  return Socket.open(url);
}

test('connect_url signs a URL for the client\'s home node that opens one socket', async () => {
  const before = Math.floor(Date.now() / 1000);
  const answer = await im.connectUrl({ client: 'cu-alice', meta: { name: 'Alice' } });
  assert.ok(nodes.some((n) => n.id === answer.node), `${answer.node} is one of the nodes`);
  assert.ok(answer.url.startsWith(`${answer.node}/ws?token=`), answer.url);
  assert.ok(answer.expires_at >= before + 50 && answer.expires_at <= before + 70, `expires_at ${answer.expires_at}`);
  const socket = await Socket.open(answer.url);
  assert.equal(socket.welcome.payload.client, 'cu-alice');
  assert.equal(socket.welcome.payload.node, answer.node);
  socket.close();
});

test('any node\'s API reaches a client on another node: connect, send, has_online', async () => {
  const far = await clientOn(1, 'far-');
  const socket = await connect(far);
  assert.equal(socket.welcome.payload.node, nodes[1].id);
  // Presence is written by the node's presence writer, a moment after the welcome.
  await until(`${far} online`, async () => (await im.hasOnline({ client: far })).online);
  const sent = await im.send({ sender: 'system', receivers: [far], payload: { text: 'across nodes' } });
  assert.deepEqual(sent.nodes, [{ node: nodes[1].id, receivers: [far], taken: true }]);
  assert.deepEqual(sent.unreachable, []);
  const got = await socket.next((e) => e.type === 'message');
  assert.deepEqual([got.id, got.from, got.payload], [sent.message_id, 'system', { text: 'across nodes' }]);
  socket.close();
});

test('send: the receiver gets it, the sender its receipt, and a retry with the same message_id carries that id', async () => {
  const alice = await connect('send-alice');
  const bob = await connect('send-bob');
  const message_id = newMessageId();
  assert.match(message_id, /^[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}$/);
  const sent = await im.send({ sender: 'send-bob', receivers: ['send-alice'], payload: 'hi', receipt: true, message_id });
  assert.equal(sent.message_id, message_id);
  const got = await alice.next((e) => e.type === 'message');
  assert.deepEqual([got.id, got.from, got.payload], [message_id, 'send-bob', 'hi']);
  const receipt = await bob.next((e) => e.type === 'receipt');
  assert.deepEqual(receipt.payload, { message_id, receiver: 'send-alice', status: 'delivered' });
  // A retry (its outcome unknown to the backend) carries the same id: the app drops the copy.
  const again = await im.send({ sender: 'send-bob', receivers: ['send-alice'], payload: 'hi', message_id });
  assert.equal(again.message_id, message_id);
  assert.equal((await alice.next((e) => e.type === 'message')).id, message_id);
  alice.close();
  bob.close();
});

test('channels: join, send_chan, members, counts, client_chans, chans, leave, delete_chan', async () => {
  const chan = 'room:ts-lobby';
  const ann = await connect('ch-ann');
  const ben = await connect(await clientOn(1, 'ch-ben-'));
  const benId = ben.welcome.payload.client;
  assert.deepEqual(await im.join({ chan, client: 'ch-ann' }), { chan, clients: 1 });
  assert.deepEqual(await im.join({ chan, clients: [benId, 'ch-offline'] }), { chan, clients: 2 });

  const sent = await im.sendChan({ sender: 'ch-ann', chan, payload: { text: 'hi all' }, exclude_sender: true });
  assert.equal(typeof sent.nodes, 'number');
  const got = await ben.next((e) => e.type === 'channel');
  assert.deepEqual([got.id, got.chan, got.from, got.payload], [sent.message_id, chan, 'ch-ann', { text: 'hi all' }]);

  const first = await im.chanMembers({ chan });
  assert.ok(Array.isArray(first.members));
  const all = [];
  for await (const member of im.chanMembersAll(chan)) all.push(member);
  assert.deepEqual([...new Set(all)].sort(), ['ch-ann', 'ch-offline', benId].sort());
  assert.deepEqual(await im.chanMemberCount({ chan }), { members: 3 });
  // Nodes count their online members in Redis a moment after the join's acknowledgement.
  await until('both online members counted', async () => (await im.chanOnline({ chan })).online === 2);
  assert.deepEqual(await im.clientChans({ client: 'ch-ann' }), { chans: [chan] });
  const { chans } = await im.chans();
  assert.deepEqual(chans.find((c) => c.chan === chan), { chan, members: 3, online: 2 });

  assert.deepEqual(await im.leave({ chan, client: benId }), { chan, clients: 1 });
  assert.deepEqual(await im.leave({ chan, clients: [benId, 'ch-offline'] }), { chan, clients: 2 });
  await im.sendChan({ sender: 'system', chan, payload: 'after leave' });
  await ann.next((e) => e.type === 'channel' && e.payload === 'after leave');
  assert.equal(ben.frames.filter((e) => e.type === 'channel').length, 0, 'ben left and got nothing more');

  assert.deepEqual(await im.deleteChan({ chan }), { members: 1 });
  assert.deepEqual(await im.chanMemberCount({ chan }), { members: 0 });
  assert.deepEqual(await im.clientChans({ client: 'ch-ann' }), { chans: [] });
  ann.close();
  ben.close();
});

test('chanMembersAll follows the cursor through every page of a big channel', async () => {
  const chan = 'room:ts-big';
  const everyone = Array.from({ length: 1500 }, (_, i) => `big-${i}`);
  // In calls of 500: one call of thousands can outlast imclient's Redis timeout on a busy
  // machine (answered 503).
  for (let i = 0; i < everyone.length; i += 500) {
    assert.deepEqual(await im.join({ chan, clients: everyone.slice(i, i + 500) }), { chan, clients: 500 });
  }
  const first = await im.chanMembers({ chan });
  assert.notEqual(first.cursor, null, 'more than one page');
  const seen = new Set();
  for await (const member of im.chanMembersAll(chan)) seen.add(member);
  assert.equal(seen.size, 1500);
  assert.deepEqual([...seen].sort(), [...everyone].sort());
  assert.deepEqual(await im.deleteChan({ chan }), { members: 1500 });
});

test('broadcast reaches every online client of every node', async () => {
  const near = await connect(await clientOn(0, 'bc-'));
  const far = await connect(await clientOn(1, 'bc-'));
  const sent = await im.broadcast({ sender: 'system', payload: 'maintenance at 22:00' });
  assert.equal(sent.nodes, 2);
  for (const socket of [near, far]) {
    const got = await socket.next((e) => e.type === 'broadcast');
    assert.deepEqual([got.id, got.payload], [sent.message_id, 'maintenance at 22:00']);
    socket.close();
  }
});

test('presence: has_online, online pages, online_count, nodes', async () => {
  const sockets = [];
  for (const c of ['pr-a', 'pr-b', 'pr-c']) sockets.push(await connect(c));
  assert.deepEqual(await im.hasOnline({ client: 'pr-b' }), { online: true });
  assert.deepEqual(await im.hasOnline({ client: 'pr-nobody' }), { online: false });
  const page = await im.online({ limit: 1 });
  assert.equal(page.clients.length, 1);
  assert.equal(typeof page.cursor, 'string');
  // Clients of earlier tests may still be going offline: compare the list and the count once
  // they agree, reading both again until then.
  const everyone = await until('online and online_count to agree', async () => {
    const listed = [];
    for await (const client of im.onlineAll(2)) listed.push(client);
    const { count } = await im.onlineCount();
    return count === listed.length && listed;
  });
  assert.deepEqual(everyone, [...everyone].sort(), 'in id order');
  for (const c of ['pr-a', 'pr-b', 'pr-c']) assert.ok(everyone.includes(c), `${c} in ${everyone}`);
  assert.deepEqual((await im.nodes()).nodes.sort(), nodes.map((n) => n.id).sort());
  for (const s of sockets) s.close();
});

test('kick closes every connection of the client with 4002', async () => {
  const one = await connect('kick-me');
  const two = await connect('kick-me');
  assert.deepEqual(await im.kick({ client: 'kick-me' }), { taken: true });
  assert.equal(await one.closed(), 4002);
  assert.equal(await two.closed(), 4002);
  await until('kick-me offline', async () => !(await im.hasOnline({ client: 'kick-me' })).online);
});

test('batch: one typed reply per item, in order; a bad item does not stop the others', async () => {
  const carol = await connect('batch-carol');
  const { replies, retryAfter } = await im.batch([
    { method: 'join', params: { chan: 'room:batch', clients: ['batch-carol', 'batch-dan'] } },
    { method: 'send', params: { sender: 'a', receivers: [''], payload: 'two' } },
    { method: 'send_chan', params: { sender: 'a', chan: 'room:batch', payload: 'three' } },
    { method: 'chan_member_count', params: { chan: 'room:batch' } },
  ]);
  assert.equal(retryAfter, undefined);
  assert.deepEqual(replies[0], { status: 200, result: { chan: 'room:batch', clients: 2 } });
  assert.equal(replies[1].status, 400);
  assert.deepEqual([replies[1].error, replies[1].field], ['invalid_client_id', 'receivers[0]']);
  assert.equal(replies[2].status, 200);
  const got = await carol.next((e) => e.type === 'channel');
  assert.equal(got.id, replies[2].result.message_id);
  assert.deepEqual(replies[3], { status: 200, result: { members: 2 } });
  carol.close();
});

test('refusals are ImServerErrors with status, code, message and field', async () => {
  const invalid = await im.send({ sender: 'system', receivers: ['ok', ''], payload: 1 }).catch((e) => e);
  assert.ok(invalid instanceof ImServerError);
  assert.deepEqual([invalid.status, invalid.code, invalid.field, invalid.retryable], [400, 'invalid_client_id', 'receivers[1]', false]);
  assert.match(invalid.message, /empty/);

  const unknown = await im.call('join', { chan: 'room:x', client: 'a', typo: 1 }).catch((e) => e);
  assert.deepEqual([unknown.status, unknown.code, unknown.field], [400, 'unknown_field', 'typo']);

  const noKey = await new ImServerClient({ url: nodes[0].api, apiKey: 'not-a-key-of-this-node' }).onlineCount().catch((e) => e);
  assert.deepEqual([noKey.status, noKey.code], [401, 'unauthorized']);

  const noMethod = await im.call('no_such_method', {}).catch((e) => e);
  assert.deepEqual([noMethod.status, noMethod.code], [404, 'not_found']);
});

test('a spent rate answers 429 with retryAfter, and retryable is true', async () => {
  const node = await startNode(redisUrl, { prefix: 'tsclient-rate', args: ['--api-rate', '1', '--api-burst', '1'] });
  const limited = new ImServerClient({ url: node.api, apiKey: API_KEY });
  const errors = [];
  for (let i = 0; i < 3; i++) await limited.onlineCount().catch((e) => errors.push(e));
  assert.ok(errors.length > 0, 'some call was refused');
  const e = errors[0];
  assert.ok(e instanceof ImServerError);
  assert.deepEqual([e.status, e.code, e.retryable], [429, 'rate_limited', true]);
  assert.ok(typeof e.retryAfter === 'number' && e.retryAfter >= 1, `retryAfter ${e.retryAfter}`);
});

test('a node that does not answer is an ImServerError with status 0, unreachable', async () => {
  const [port] = await freePorts(1);
  const e = await new ImServerClient({ url: `http://127.0.0.1:${port}`, apiKey: API_KEY }).nodes().catch((err) => err);
  assert.ok(e instanceof ImServerError);
  assert.deepEqual([e.status, e.code, e.retryable], [0, 'unreachable', true]);
});

test('a node that takes the request and never answers is an ImServerError with status 0, timeout', async () => {
  // A listener that accepts and stays silent, as a node stuck behind a dead Redis could.
  const held = [];
  const silent = net.createServer((socket) => held.push(socket));
  await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const started = Date.now();
  const e = await new ImServerClient({ url: `http://127.0.0.1:${silent.address().port}`, apiKey: API_KEY, timeoutMs: 300 })
    .send({ sender: 'system', receivers: ['alice'], payload: 1 })
    .catch((err) => err);
  for (const socket of held) socket.destroy();
  silent.close();
  assert.ok(e instanceof ImServerError, String(e));
  assert.deepEqual([e.status, e.code, e.retryable], [0, 'timeout', true]);
  assert.match(e.message, /same message_id/);
  assert.ok(Date.now() - started < 5000, 'gave up after about timeoutMs');
});
