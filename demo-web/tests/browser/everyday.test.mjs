// What a person used to other chat apps expects of the demo, tried as they would: a reload
// (F5) and a restart of demo-web lose nothing, Back and Forward stay in the app, send marks say
// what is true (kept for someone away, delivered when they come back, refused with the reason
// and a Retry), nothing typed is cut short, and the small things (focus, a "new messages"
// marker, the badge beside the back arrow, errors in sentences).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT, apiUser, healStack, launchBrowser, messageText, newPage, shownTexts, signIn, signOut, startNode, startStack, startWeb,
  stop, stopAll, until,
} from './stack.mjs';

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

const DESK = { width: 1100, height: 760 };
const PHONE = { width: 390, height: 844 };

const connected = (page) => page.locator('#state[data-state="connected"]').waitFor({ timeout: WAIT });

async function say(page, text) {
  await page.fill('#compose-text', text);
  await page.click('#compose-send');
}

/** The mark on one's own message `text`. */
const markOf = (page, text) => page.locator('#messages li.mine', { hasText: text }).locator('.mark');
/** Waits until the mark of one's own message `text` says `status`; a timeout says what it said. */
async function markBecomes(page, text, status, timeout = WAIT) {
  const mark = markOf(page, text);
  try {
    await mark.and(page.locator(`[data-status="${status}"]`)).waitFor({ timeout });
  } catch (e) {
    const seen = await mark.evaluate((m) => `${m.dataset.status} "${m.textContent}"`).catch(() => 'no mark');
    const conn = await page.locator('#state').getAttribute('data-state').catch(() => '?');
    throw new Error(`the mark of "${text}" did not become ${status} within ${timeout} ms: it says ${seen}, the page is ${conn}`, { cause: e });
  }
}

async function sameTexts(page, want) {
  let shown;
  await until(`the conversation to show ${JSON.stringify(want)}`, async () => {
    shown = await shownTexts(page);
    return JSON.stringify(shown) === JSON.stringify(want);
  }).catch((e) => { throw new Error(`${e.message}; it shows ${JSON.stringify(shown)}`); });
}

/** The same browser (its cookie) opening the demo again, in a new window. */
async function comeBack(saved, viewport = DESK) {
  const context = await browser.newContext({ viewport, storageState: saved });
  const page = await context.newPage();
  await page.goto(stack.web + '/');
  await connected(page);
  return { context, page };
}

test('1: a reload keeps private conversations, with people now offline too, and reopens the one that was open', async () => {
  const ann = await signIn(browser, stack, 'Ann', DESK);
  const ben = await signIn(browser, stack, 'Ben', DESK);
  const sam = await apiUser(stack, 'Sam');
  await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
  await say(ann.page, 'hello Ben');
  await markOf(ann.page, 'hello Ben').and(ann.page.locator('[data-status="delivered"]')).waitFor({ timeout: WAIT });
  await messageText(ben.page, 'hello Ben').waitFor({ timeout: WAIT });
  await say(ben.page, 'hi Ann');
  await messageText(ann.page, 'hi Ann').waitFor({ timeout: WAIT });
  await sam.call('/api/messages', { to: ann.me.id, text: 'from Sam' });
  const samBadge = ann.page.locator(`#dm-list li[data-user="${sam.me.id}"] .badge`, { hasText: '1' });
  await samBadge.waitFor({ timeout: WAIT });

  await ann.page.reload();
  await connected(ann.page);
  await ann.page.locator('#chat-title', { hasText: 'Ben' }).waitFor({ timeout: WAIT });
  await sameTexts(ann.page, ['hello Ben', 'hi Ann']);
  await markOf(ann.page, 'hello Ben').and(ann.page.locator('[data-status="delivered"]')).waitFor({ timeout: WAIT });
  await samBadge.waitFor({ timeout: WAIT });

  // Ben leaves: the conversation stays, under "Other chats", after a reload too.
  await signOut(ben);
  await ann.page.locator(`#online-list li[data-user="${ben.me.id}"]`).waitFor({ state: 'detached', timeout: WAIT });
  await ann.page.reload();
  await connected(ann.page);
  await ann.page.locator(`#dm-list li[data-user="${ben.me.id}"]`).waitFor({ timeout: WAIT });
  await sameTexts(ann.page, ['hello Ben', 'hi Ann']);
  await ann.page.click(`#dm-list li[data-user="${sam.me.id}"]`);
  await sameTexts(ann.page, ['from Sam']);
  await ann.context.close();
});

test('1: a message typed and not sent stays with its conversation, through a switch and a reload', async () => {
  const ann = await signIn(browser, stack, 'Ann', DESK);
  const ben = await signIn(browser, stack, 'Ben', DESK);
  await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
  await ann.page.fill('#compose-text', 'half a thought for Ben');
  await ann.page.click('#rooms li[data-room="lobby"]');
  await ann.page.locator('#chat-title', { hasText: '#lobby' }).waitFor({ timeout: WAIT });
  assert.equal(await ann.page.inputValue('#compose-text'), '', 'the room has a box of its own');
  await ann.page.reload();
  await connected(ann.page);
  await ann.page.locator('#chat-title', { hasText: '#lobby' }).waitFor({ timeout: WAIT });
  await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
  await ann.page.locator('#chat-title', { hasText: 'Ben' }).waitFor({ timeout: WAIT });
  assert.equal(await ann.page.inputValue('#compose-text'), 'half a thought for Ben');
  // Sent, it is gone from the box, after a reload too.
  await ann.page.press('#compose-text', 'Enter');
  await messageText(ben.page, 'half a thought for Ben').waitFor({ timeout: WAIT });
  await ann.page.reload();
  await connected(ann.page);
  await ann.page.locator('#chat-title', { hasText: 'Ben' }).waitFor({ timeout: WAIT });
  assert.equal(await ann.page.inputValue('#compose-text'), '');
  await ann.context.close();
  await ben.context.close();
});

test('2: Back and Forward stay in the app, signed in as the same person; on a phone Back returns to the list', async () => {
  const kim = await signIn(browser, stack, 'Kim', PHONE);
  await kim.page.click('#rooms li[data-room="lobby"] button.join');
  await kim.page.locator('#app[data-view="chat"]').waitFor({ timeout: WAIT });
  await kim.page.goBack();
  await kim.page.locator('#app[data-view="list"]').waitFor({ timeout: WAIT });
  assert.equal(new URL(kim.page.url()).origin, stack.web, 'Back from a conversation stays in the app');
  await kim.page.goForward();
  await kim.page.locator('#app[data-view="chat"] #chat-title', { hasText: '#lobby' }).waitFor({ timeout: WAIT });

  // Away to another site and Back: the chat, signed in, not the sign-in form.
  await kim.page.goto('about:blank');
  await kim.page.goBack();
  await connected(kim.page);
  assert.equal(await kim.page.locator('#signin').isVisible(), false, 'no sign-in form while signed in');
  const answer = await kim.page.evaluate(async () => {
    const r = await fetch('/api/me');
    return { cache: r.headers.get('cache-control'), me: await r.json() };
  });
  assert.equal(answer.cache, 'no-store');
  assert.equal(answer.me.id, kim.me.id);
  // Signing in again from this browser under the same name is still the same person.
  const again = await kim.page.evaluate(() => fetch('/api/signin', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"kim"}' }).then((r) => r.json()));
  assert.equal(again.id, kim.me.id, 'no second Kim');
  await kim.context.close();
});

test('3: a message to someone offline is marked "kept for later", shown when they come back, then marked delivered', async () => {
  const ann = await signIn(browser, stack, 'Ann', DESK);
  const cid = await signIn(browser, stack, 'Cid', DESK);
  await ann.page.click(`#online-list li[data-user="${cid.me.id}"]`);
  const saved = await cid.context.storageState();
  await cid.context.close();
  await ann.page.locator('#chat-sub', { hasText: 'offline' }).waitFor({ timeout: WAIT });
  // Cid's node keeps a resume window for his closed page, so it answers the send with a
  // "buffered" receipt, which may reach Ann's page before the API's "stored" answer or after
  // it (a busy machine). Here the receipt is held until the answer shows, the order that once
  // left the mark at "will be delivered" for someone who was gone. Frames keep their order.
  let answered;
  const shown = new Promise((resolve) => { answered = resolve; });
  let held = false;
  let relayed = Promise.resolve();
  await ann.page.routeWebSocket(/.*/, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((frame) => {
      relayed = relayed.then(async () => {
        if (String(frame).includes('"buffered"')) { held = true; await shown; }
        ws.send(frame);
      });
    });
  });
  await ann.page.reload();
  await connected(ann.page);
  await say(ann.page, 'are you there?');
  await markBecomes(ann.page, 'are you there?', 'stored');
  answered();
  // A message from Dan comes after the receipt on the same socket: once it shows, the
  // receipt has been handled too.
  const dan = await signIn(browser, stack, 'Dan', DESK);
  await dan.page.evaluate((to) => fetch('/api/messages', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ to, text: 'after the receipt' }) }), ann.me.id);
  await ann.page.locator(`#online-list li[data-user="${dan.me.id}"] .badge`, { hasText: '1' }).waitFor({ timeout: WAIT });
  assert.ok(held, 'the receipt went through the route');
  await dan.context.close();
  const mark = markOf(ann.page, 'are you there?');
  assert.equal(await mark.getAttribute('data-status'), 'stored', 'a later "buffered" receipt does not undo "kept for later"');
  assert.equal(await mark.textContent(), 'kept for later');
  assert.match(await mark.getAttribute('title'), /kept and shown to them when they come back/);

  const back = await comeBack(saved);
  const row = back.page.locator(`#online-list li[data-user="${ann.me.id}"]`);
  await row.locator('.badge', { hasText: '1' }).waitFor({ timeout: WAIT });
  await row.click();
  await messageText(back.page, 'are you there?').waitFor({ timeout: WAIT });
  await markBecomes(ann.page, 'are you there?', 'delivered');
  await back.context.close();
  await ann.context.close();
});

test('3: with both nodes down a message is "kept for later", not "sent", and reaches the receiver once they are back', async () => {
  const ann = await signIn(browser, stack, 'Ann', DESK);
  const ben = await signIn(browser, stack, 'Ben', DESK);
  try {
    await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
    await Promise.all(stack.nodes.map((n) => stop(n.child)));
    await ann.page.locator('#state:not([data-state="connected"])').waitFor({ timeout: WAIT });
    await say(ann.page, 'while everything is down');
    await markBecomes(ann.page, 'while everything is down', 'stored');
    for (const node of stack.nodes) await startNode(stack, node);
    await connected(ben.page);
    await ben.page.locator(`#sidebar li[data-user="${ann.me.id}"] .badge`, { hasText: '1' }).waitFor({ timeout: WAIT });
    await ben.page.click(`#sidebar li[data-user="${ann.me.id}"]`);
    await messageText(ben.page, 'while everything is down').waitFor({ timeout: WAIT });
    // Ann's page learns of it once it is connected again: it may still be waiting out a
    // backoff step (up to 10 s) that began while both nodes were down.
    await ann.page.locator('#state[data-state="connected"]').waitFor({ timeout: 2 * WAIT });
    await markBecomes(ann.page, 'while everything is down', 'delivered');
  } finally {
    await healStack(stack);
    await ann.context.close();
    await ben.context.close();
  }
});

test('3: a message the server refuses says why and offers Retry, which sends it', async () => {
  const ann = await signIn(browser, stack, 'Ann', DESK);
  const ben = await signIn(browser, stack, 'Ben', DESK);
  await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
  // A refusal the API could give (a rule of the business); injected at the network.
  const refusal = { error: 'blocked', message: 'Ben is not taking messages right now.' };
  await ann.page.route('**/api/messages', (route) => route.fulfill({ status: 403, contentType: 'application/json', body: JSON.stringify(refusal) }));
  await say(ann.page, 'one more try');
  const failed = ann.page.locator('#messages li.failed', { hasText: 'one more try' });
  await failed.waitFor({ timeout: WAIT });
  assert.equal(await failed.locator('.mark').textContent(), 'not sent');
  assert.equal(await failed.locator('.why span').textContent(), refusal.message);
  await ann.page.unroute('**/api/messages');
  await failed.locator('button.retry-send').click();
  await markOf(ann.page, 'one more try').and(ann.page.locator('[data-status="delivered"]')).waitFor({ timeout: WAIT });
  await messageText(ben.page, 'one more try').waitFor({ timeout: WAIT });
  assert.deepEqual(await shownTexts(ben.page), ['one more try'], 'sent once');
  await ann.context.close();
  await ben.context.close();
});

test('4: a restart of demo-web signs nobody out; a session ended elsewhere leads to the sign-in form and the polling stops', async () => {
  const ann = await signIn(browser, stack, 'Ann', DESK);
  const ben = await signIn(browser, stack, 'Ben', DESK);
  await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
  await say(ann.page, 'before the restart');
  await markOf(ann.page, 'before the restart').and(ann.page.locator('[data-status="delivered"]')).waitFor({ timeout: WAIT });

  await stop(stack.webChild);
  await startWeb(stack);
  await say(ann.page, 'after the restart');
  await markOf(ann.page, 'after the restart').and(ann.page.locator('[data-status="delivered"]')).waitFor({ timeout: WAIT });
  await messageText(ben.page, 'after the restart').waitFor({ timeout: WAIT });
  await ann.page.reload();
  await connected(ann.page);
  await sameTexts(ann.page, ['before the restart', 'after the restart']);

  // Signed out elsewhere (here: the cookie is gone): the next call answers 401.
  const asked = [];
  ann.page.on('request', (r) => { if (new URL(r.url()).pathname.startsWith('/api/')) asked.push(r.url()); });
  await ann.context.clearCookies();
  await say(ann.page, 'no session');
  await ann.page.locator('#signin-error', { hasText: 'You have been signed out' }).waitFor({ timeout: WAIT });
  assert.equal(await ann.page.locator('#app').isVisible(), false);
  const seen = asked.length;
  // Absence can only be watched for: longer than two rounds of the rooms' 3-second refresh.
  await new Promise((r) => setTimeout(r, 7000));
  assert.deepEqual(asked.slice(seen), [], 'nothing keeps asking once signed out');
  await ann.page.fill('#signin-name', 'Ann');
  await ann.page.click('#signin-btn');
  await connected(ann.page);
  await ann.context.close();
  await ben.context.close();
});

test('5: a long paste and a long name are refused with a counter, never cut', async () => {
  const { context, page } = await newPage(browser, stack, 'Pat', DESK);
  const longName = 'Bartholomew '.repeat(17).slice(0, 200);
  await page.fill('#signin-name', longName);
  assert.equal(await page.inputValue('#signin-name'), longName, 'the name is all there');
  await page.locator('#signin-count.over', { hasText: '200 / 32' }).waitFor({ timeout: WAIT });
  await page.click('#signin-btn');
  await page.locator('#signin-error', { hasText: 'Names can be at most 32 characters; this one has 200.' }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator('#app').isVisible(), false, 'not signed in');

  await page.fill('#signin-name', 'Pat');
  await page.click('#signin-btn');
  await connected(page);
  await page.click('#rooms li[data-room="random"] button.join');
  await page.locator('#compose-text:not([disabled])').waitFor({ timeout: WAIT });
  const words = 'the quick brown fox jumps over the lazy dog and runs ';
  const paste = words.repeat(40).slice(0, 2000);
  await page.fill('#compose-text', paste);
  await page.locator('#compose-count.over', { hasText: `${[...paste.trim()].length} / 1000` }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator('#compose-send').isDisabled(), true);
  await page.press('#compose-text', 'Enter');
  await page.locator('#compose-error', { hasText: 'Messages can be at most 1000 characters' }).waitFor({ timeout: WAIT });
  assert.equal(await page.inputValue('#compose-text'), paste, 'nothing typed is lost');
  assert.deepEqual(await shownTexts(page), [], 'nothing was sent');

  const fits = paste.slice(0, 1000).trim();
  await page.fill('#compose-text', fits);
  await page.click('#compose-send');
  await until('the whole message to show', async () => (await shownTexts(page))[0] === fits);
  await context.close();
});

test('6: the name box has focus on load, Send leaves it in the message box, and errors read as sentences', async () => {
  const { context, page } = await newPage(browser, stack, 'Lou', DESK);
  await page.locator('#signin:not([hidden])').waitFor({ timeout: WAIT });
  await until('the name box to have focus', () => page.evaluate(() => document.activeElement && document.activeElement.id === 'signin-name'));
  await page.fill('#signin-name', '   ');
  await page.click('#signin-btn');
  const error = page.locator('#signin-error');
  await error.filter({ hasText: /\S/ }).waitFor({ timeout: WAIT });
  assert.equal(await error.textContent(), 'Please type a name.');
  await page.fill('#signin-name', 'Lou');
  await page.click('#signin-btn');
  await connected(page);
  await page.click('#rooms li[data-room="lobby"] button.join');
  await say(page, 'focus stays');
  await messageText(page, 'focus stays').waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'compose-text', 'ready for the next message');
  await context.close();
});

test('6: scrolled up, a person is told that new messages arrived, and one click brings them', async () => {
  const sam = await apiUser(stack, 'Sam');
  await sam.call('/api/rooms/rust/join', {});
  for (let i = 0; i < 40; i++) await sam.call('/api/rooms/rust/messages', { text: `line ${i}` });
  const ann = await signIn(browser, stack, 'Ann', DESK);
  await ann.page.click('#rooms li[data-room="rust"] button.join');
  await messageText(ann.page, 'line 39').waitFor({ timeout: WAIT });
  await ann.page.$eval('#messages', (ul) => { ul.scrollTop = 0; });
  await until('the page to know it was scrolled up', () => ann.page.evaluate(() => !follow.on));
  await sam.call('/api/rooms/rust/messages', { text: 'something new' });
  await messageText(ann.page, 'something new').waitFor({ state: 'attached', timeout: WAIT });
  await ann.page.locator('#new-marker').waitFor({ timeout: WAIT });
  assert.equal(await ann.page.$eval('#messages', (ul) => ul.scrollTop), 0, 'the view stayed where the reader is');
  await ann.page.click('#new-marker');
  await ann.page.locator('#new-marker').waitFor({ state: 'hidden', timeout: WAIT });
  await until('the new message to be in view', async () => {
    const box = await messageText(ann.page, 'something new').boundingBox();
    const list = await ann.page.locator('#messages').boundingBox();
    return box && list && box.y + box.height <= list.y + list.height + 1;
  });
  await ann.context.close();
});

test('6: on a phone the unread badge sits beside the back arrow, not over it', async () => {
  const pho = await signIn(browser, stack, 'Pho', PHONE);
  const sam = await apiUser(stack, 'Sam');
  await pho.page.click('#rooms li[data-room="lobby"] button.join');
  await pho.page.locator('#app[data-view="chat"]').waitFor({ timeout: WAIT });
  await sam.call('/api/messages', { to: pho.me.id, text: 'psst' });
  await pho.page.locator('#back-badge', { hasText: '1' }).waitFor({ timeout: WAIT });
  const arrow = await pho.page.locator('#back svg').boundingBox();
  const badge = await pho.page.locator('#back-badge').boundingBox();
  const overlap = arrow.x < badge.x + badge.width && badge.x < arrow.x + arrow.width
    && arrow.y < badge.y + badge.height && badge.y < arrow.y + arrow.height;
  assert.equal(overlap, false, `arrow ${JSON.stringify(arrow)}, badge ${JSON.stringify(badge)}`);
  await pho.context.close();
});
