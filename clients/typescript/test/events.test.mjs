// events(), the pull route: presence events read after a position, a long poll that answers as
// soon as an event comes, and an empty answer that keeps the position. Runs once the node has
// webhook support (the route comes with it; before that the API answers 404).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ImServerClient } from '../dist/index.js';
import { API_KEY, Socket, nodeHasFlag, startNode, startRedis, stopAll } from './stack.mjs';

const skip = nodeHasFlag('--webhook-url') ? false : 'this imserver has no pull route yet (it lands with --webhook-url)';

let node;
let im;

before(async () => {
  if (skip) return;
  node = await startNode(await startRedis(), { prefix: 'tsclient-events' });
  im = new ImServerClient({ url: node.api, apiKey: API_KEY });
});

after(() => stopAll());

test('events reads presence after a position and long-polls for the next one', { skip }, async () => {
  const { url } = await im.connectUrl({ client: 'ev-alice', meta: { name: 'Alice' } });
  const alice = await Socket.open(url);

  // This node's Redis and prefix are the test's own: from the start of the stream, alice's
  // online event is there.
  const first = await im.events({ after: '0-0', limit: 100, wait_ms: 5000 });
  const online = first.events.find((e) => e.client === 'ev-alice');
  assert.ok(online, JSON.stringify(first));
  assert.deepEqual([online.kind, online.node, online.meta, online.conns], ['online', node.id, { name: 'Alice' }, 1]);
  assert.equal(first.last_id, first.events.at(-1).id);

  // A long poll started before the event answers with it.
  const waiting = im.events({ after: first.last_id, wait_ms: 20_000 });
  alice.close();
  const next = await waiting;
  assert.deepEqual(next.events.map((e) => [e.kind, e.client, e.conns]), [['offline', 'ev-alice', 0]]);
  assert.equal(next.last_id, next.events[0].id);

  // Nothing new: an empty answer after the wait, keeping the position.
  const quiet = await im.events({ after: next.last_id, wait_ms: 200 });
  assert.deepEqual(quiet, { events: [], last_id: next.last_id });
  // "From now on" (no after: the default) has nothing yet either, and answers at once.
  assert.deepEqual((await im.events()).events, []);
  assert.deepEqual((await im.events({ after: null, wait_ms: 0 })).events, []);
});
