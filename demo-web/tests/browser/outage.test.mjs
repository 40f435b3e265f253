// What a user notices when Redis goes away for a moment under an open page: the socket stays
// up, the page is told that pushes sent meanwhile may have gone nowhere, and reloads the open
// conversation from demo-web's history (kept in that Redis, which keeps its data on disk).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { apiUser, launchBrowser, messageText, shownTexts, signIn, startRedis, startStack, stop, stopAll, until, WAIT } from './stack.mjs';

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

test('a Redis restart: the page stays connected, hears it may have missed pushes and reloads the conversation', async () => {
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
  // The reload found the conversation whole: nothing to warn about, nothing shown twice.
  await sam.call('/api/messages', { to: eve.me.id, text: 'after the outage' });
  await messageText(eve.page, 'after the outage').waitFor({ timeout: WAIT });
  assert.deepEqual(await shownTexts(eve.page), ['before the outage', 'after the outage']);
  const notices = await eve.page.evaluate((k) => state.convos.get(k).items.filter((m) => m.notice).map((m) => m.text), key);
  assert.deepEqual(notices, []);
});
