// The whole chain in a real browser: two headless Chromium pages signed in as different
// users, against redis-server, two imserver nodes and demo-web, all started here on free ports.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { WAIT, artifacts, launchBrowser, messageText, signIn as signInPage, startNode, startStack, stop, stopAll, until } from './stack.mjs';

let stack;
let browser;

before(async () => {
  stack = await startStack({ nodes: 2 });
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  await stopAll();
});

const signIn = (name, viewport, query = '') => signInPage(browser, stack, name, viewport, query);

/** On a phone the conversation takes the screen: back to the rooms and people. */
async function showList(page) {
  if (await page.locator('#back').isVisible()) await page.click('#back');
  await page.locator('#rooms').waitFor({ timeout: WAIT });
}

test('two people chat through the whole stack', async (t) => {
  const ann = await signIn('Ann', { width: 1100, height: 760 });
  // Ben is on a phone-width screen.
  const ben = await signIn('Ben', { width: 390, height: 844 });

  await t.test('bad input gets a JSON error with a proper status', async () => {
    const results = await ann.page.evaluate(async (ben) => {
      const call = async (path, body) => {
        const r = await fetch(path, body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
        const data = await r.json();
        return [r.status, data.error, data.message];
      };
      return {
        unknownRoom: await call('/api/rooms/nope/join', {}),
        empty: await call('/api/messages', { to: ben, text: '   ' }),
        tooLong: await call('/api/messages', { to: ben, text: 'x'.repeat(1001) }),
        unknownUser: await call('/api/messages', { to: 'u-nobody', text: 'hi' }),
        notMember: await call('/api/rooms/rust/messages', { text: 'hi' }),
        badName: await call('/api/signin', { name: '' }),
      };
    }, ben.me.id);
    assert.deepEqual(results.unknownRoom.slice(0, 2), [404, 'unknown_room']);
    assert.match(results.unknownRoom[2], /no room called "nope"/);
    assert.deepEqual(results.empty, [400, 'text_empty', 'Type a message first.']);
    assert.deepEqual(results.tooLong.slice(0, 2), [413, 'text_too_long']);
    assert.deepEqual(results.unknownUser.slice(0, 2), [404, 'unknown_user']);
    assert.deepEqual(results.notMember, [403, 'not_a_member', 'Join #rust before writing in it.']);
    assert.deepEqual(results.badName, [400, 'name_empty', 'Please type a name.']);
    const anon = await fetch(`${stack.web}/prev-connect-imserver`);
    assert.equal(anon.status, 401);
  });

  await t.test('A sees B come online', async () => {
    await ann.page.locator(`#online-list li[data-user="${ben.me.id}"]`).waitFor({ timeout: WAIT });
  });

  await t.test('A sends B a private message; B sees it and A sees "delivered"', async () => {
    await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
    await ann.page.fill('#compose-text', 'hello Ben');
    await ann.page.click('#compose-send');
    // On Ben's phone the message waits behind an unread badge on Ann's name.
    await ben.page.locator(`#online-list li[data-user="${ann.me.id}"] .badge`, { hasText: '1' }).waitFor({ timeout: WAIT });
    await ben.page.click(`#online-list li[data-user="${ann.me.id}"]`);
    await messageText(ben.page, 'hello Ben').waitFor({ timeout: WAIT });
    await ann.page.locator('#messages li .mark[data-status="delivered"]').waitFor({ timeout: WAIT });
  });

  await t.test('both join a room and see each other\'s messages', async () => {
    await showList(ben.page);
    for (const p of [ann.page, ben.page]) {
      await p.click('#rooms li[data-room="lobby"] button.join');
      await p.locator('#chat-title', { hasText: '#lobby' }).waitFor({ timeout: WAIT });
    }
    // Both memberships are live once the room counts two online members.
    await ann.page.locator('#rooms li[data-room="lobby"] .count', { hasText: '2 online' }).waitFor({ timeout: WAIT });
    await ann.page.fill('#compose-text', 'hi lobby, Ann here');
    await ann.page.click('#compose-send');
    await ben.page.fill('#compose-text', 'and Ben here');
    await ben.page.click('#compose-send');
    for (const p of [ann.page, ben.page]) {
      await messageText(p, 'hi lobby, Ann here').waitFor({ timeout: WAIT });
      await messageText(p, 'and Ben here').waitFor({ timeout: WAIT });
    }
  });

  await t.test('B\'s node restarts; B\'s page reconnects by itself and gets the next message', async () => {
    const i = stack.nodes.findIndex((n) => n.id === ben.me.node);
    assert.ok(i >= 0, `Ben's node ${ben.me.node} is one of ours`);
    const states = [];
    await ben.page.exposeFunction('recordState', (s) => states.push(s));
    await ben.page.evaluate(() => {
      document.getElementById('state').dataset.watch = '1';
      new MutationObserver(() => window.recordState(document.getElementById('state').dataset.state))
        .observe(document.getElementById('state'), { attributes: true });
    });
    await stop(stack.nodes[i].child, 'SIGTERM');
    // The stopping node hands Ben to the other node, and his page reconnects there at once:
    // too quick a change to watch the banner for, so the recorded states say it.
    await until('Ben\'s page to reconnect', () => states.includes('reconnecting'));
    await startNode(stack, stack.nodes[i]);
    await ben.page.locator('#state[data-state="connected"]').waitFor({ timeout: WAIT });

    await ann.page.locator(`#online-list li[data-user="${ben.me.id}"]`).waitFor({ timeout: WAIT });
    await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
    await ann.page.fill('#compose-text', 'welcome back Ben');
    await ann.page.click('#compose-send');
    await showList(ben.page);
    await ben.page.click(`#online-list li[data-user="${ann.me.id}"]`);
    await messageText(ben.page, 'welcome back Ben').waitFor({ timeout: WAIT });
  });

  await ann.page.screenshot({ path: path.join(artifacts, 'ann.png') });
  await ben.page.screenshot({ path: path.join(artifacts, 'ben-phone.png') });

  await t.test('B signs out and A sees B go offline', async () => {
    await ben.page.click('#signout');
    await ben.page.locator('#signin:not([hidden])').waitFor({ timeout: WAIT });
    await ann.page.locator(`#online-list li[data-user="${ben.me.id}"]`).waitFor({ state: 'detached', timeout: WAIT });
  });

  await ann.page.screenshot({ path: path.join(artifacts, 'ann-after-ben-left.png') });
});

test('the page notices a node that went silent and comes back when it answers again', async () => {
  // Fast heartbeat: ping every 300 ms, give up on a connection silent for 1.2 s.
  const cat = await signIn('Cat', { width: 800, height: 600 }, '?heartbeat_ms=300&timeout_ms=1200');
  const i = stack.nodes.findIndex((n) => n.id === cat.me.node);
  const node = stack.nodes[i];
  // SIGSTOP freezes the node: the TCP connection stays open, so the browser sees nothing wrong.
  node.child.kill('SIGSTOP');
  try {
    await cat.page.locator('#state[data-state="reconnecting"]').waitFor({ timeout: WAIT });
  } finally {
    node.child.kill('SIGCONT');
  }
  await cat.page.locator('#state[data-state="connected"]').waitFor({ timeout: WAIT });
});
