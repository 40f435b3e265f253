// What a user notices when Redis goes away for a moment under an open page: the socket stays
// up, and the page is told that pushes sent meanwhile may have gone nowhere, and says so.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { apiUser, launchBrowser, signIn, startRedis, startStack, stop, stopAll, until } from './stack.mjs';

let stack;
let browser;

before(async () => {
  stack = await startStack({ nodes: 1 });
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  await stopAll();
});

test('a Redis restart: the page stays connected, hears it may have missed pushes and says so', async () => {
  const eve = await signIn(browser, stack, 'Eve');
  const sam = await apiUser(stack, 'Sam');
  await sam.call('/api/messages', { to: eve.me.id, text: 'before the outage' });
  const key = `user:${sam.me.id}`;
  await until('Eve to have a conversation with Sam', () => eve.page.evaluate((k) => state.convos.has(k), key));
  await eve.page.evaluate(() => {
    window.missed = [];
    window.states = [];
    state.conn.addEventListener('missed', (e) => window.missed.push(e.detail));
    state.conn.addEventListener('state', (e) => window.states.push(e.detail.state));
  });

  await stop(stack.redis, 'SIGKILL');
  await startRedis(stack);
  await until('Eve\'s page to hear that pushes may be missing', async () => (await eve.page.evaluate(() => window.missed.length)) > 0, 30000);

  assert.deepEqual(await eve.page.evaluate(() => window.missed), [{ reason: 'redis_outage' }]);
  assert.deepEqual(await eve.page.evaluate(() => window.states), [], 'the socket never dropped');
  const notices = await eve.page.evaluate((k) => state.convos.get(k).items.filter((m) => m.notice).map((m) => m.text), key);
  assert.equal(notices.length, 1, JSON.stringify(notices));
  assert.match(notices[0], /may be missing/);
});
