// What a person sees on the page, on a desktop (1280×800) and a phone (390×844) screen:
// nothing of the chat before signing in, no sideways scrolling with long names, the
// composer within reach, unread badges, the join offer in a room one left, and a console
// without errors through a whole session.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { WAIT, apiUser, artifacts, launchBrowser, messageText, newPage, signIn, startStack, stopAll, until } from './stack.mjs';

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

const SIZES = { desktop: { width: 1280, height: 800 }, phone: { width: 390, height: 844 } };
const LONG = 'Wolfeschlegelsteinhausenbergerdo'; // 32 characters, no space to break at

/** On a phone the conversation takes the screen: back to the rooms and people. */
async function showList(page) {
  if (await page.locator('#back').isVisible()) await page.click('#back');
  await page.locator('#rooms').waitFor({ timeout: WAIT });
}

/** Elements that stick out of the viewport on the right, and whether the page scrolls sideways. */
function overflow(page) {
  return page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const out = [];
    for (const e of document.querySelectorAll('body *')) {
      const r = e.getBoundingClientRect();
      if (r.width && r.height && r.right > width + 0.5) out.push(`${e.tagName.toLowerCase()}#${e.id}.${e.className} right=${Math.round(r.right)}`);
    }
    return { scrolls: document.scrollingElement.scrollWidth > width, out };
  });
}

/** The box of `selector` fits in the viewport. */
async function inView(page, selector) {
  const box = await page.locator(selector).boundingBox();
  const { width, height } = page.viewportSize();
  return !!box && box.x >= 0 && box.y >= 0 && box.x + box.width <= width + 0.5 && box.y + box.height <= height + 0.5;
}

for (const [size, viewport, emptyRoom] of [['desktop', SIZES.desktop, 'rust'], ['phone', SIZES.phone, 'random']]) {
  test(`${size}: before signing in only the sign-in form shows`, async () => {
    const { context, page } = await newPage(browser, stack, `anon-${size}`, viewport);
    await page.locator('#signin-name').waitFor({ timeout: WAIT });
    for (const sel of ['#app', '#rooms', '#online-list', '#messages', '#compose', '#state', '#signout', '#banner', '#me']) {
      assert.equal(await page.locator(sel).isVisible(), false, `${sel} is hidden`);
    }
    assert.ok(await inView(page, '#signin-btn'), 'the sign-in button is on screen');
    assert.deepEqual(await overflow(page), { scrolls: false, out: [] }, 'the form fits');
    await page.screenshot({ path: path.join(artifacts, `signin-${size}.png`) });
    await context.close();
  });

  test(`${size}: 32-character names and long words never make the page scroll sideways`, async () => {
    const other = await signIn(browser, stack, LONG.toUpperCase(), SIZES.desktop);
    const me = await signIn(browser, stack, LONG, viewport);
    const row = `#online-list li[data-user="${other.me.id}"]`;
    await me.page.locator(row).waitFor({ timeout: WAIT });
    let o = await overflow(me.page);
    assert.deepEqual(o, { scrolls: false, out: [] }, 'the list fits');
    const titleHeight = await me.page.$eval('.brand h1', (h) => h.getBoundingClientRect().height / parseFloat(getComputedStyle(h).lineHeight || 20));
    assert.ok(titleHeight < 1.9, `the title is one line (${titleHeight} lines)`);

    await me.page.click(row);
    await other.page.locator(`#online-list li[data-user="${me.me.id}"]`).waitFor({ timeout: WAIT });
    await other.page.click(`#online-list li[data-user="${me.me.id}"]`);
    await me.page.fill('#compose-text', 'x'.repeat(300));
    await me.page.click('#compose-send');
    await me.page.locator('#messages li.mine .mark[data-status="delivered"]').waitFor({ timeout: WAIT });
    await other.page.fill('#compose-text', `short reply for ${LONG}`);
    await other.page.click('#compose-send');
    await messageText(me.page, 'short reply').waitFor({ timeout: WAIT });
    o = await overflow(me.page);
    assert.deepEqual(o, { scrolls: false, out: [] }, 'the conversation fits');
    // "delivered" sits on one line with the time, not broken under the message.
    const markLines = await me.page.$eval('#messages li.mine .meta', (m) => m.getBoundingClientRect().height / parseFloat(getComputedStyle(m).fontSize));
    assert.ok(markLines < 2, `time and status on one line (${markLines})`);
    assert.ok(await inView(me.page, '#compose-text'), 'the message box is on screen');
    assert.ok(await inView(me.page, '#compose-send'), 'the send button is on screen');
    await me.page.screenshot({ path: path.join(artifacts, `long-names-${size}.png`) });
    await me.context.close();
    await other.context.close();
  });

  test(`${size}: a private message while in a room shows an unread badge, which opening clears`, async () => {
    const ann = await signIn(browser, stack, 'Ann', viewport);
    const ben = await signIn(browser, stack, 'Ben', SIZES.desktop);
    await ann.page.click('#rooms li[data-room="random"] button.join');
    await ann.page.locator('#chat-title', { hasText: '#random' }).waitFor({ timeout: WAIT });
    await ben.page.locator(`#online-list li[data-user="${ann.me.id}"]`).waitFor({ timeout: WAIT });
    await ben.page.click(`#online-list li[data-user="${ann.me.id}"]`);
    for (const text of ['psst', 'are you there?']) {
      await ben.page.fill('#compose-text', text);
      await ben.page.click('#compose-send');
    }
    await showList(ann.page);
    const badge = ann.page.locator(`#online-list li[data-user="${ben.me.id}"] .badge`);
    await badge.filter({ hasText: '2' }).waitFor({ timeout: WAIT });
    assert.match(await ann.page.title(), /^\(2\) /, 'the tab title counts the unread messages');
    await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
    await messageText(ann.page, 'are you there?').waitFor({ timeout: WAIT });
    await badge.waitFor({ state: 'detached', timeout: WAIT });
    assert.doesNotMatch(await ann.page.title(), /^\(/);
    await ann.context.close();
    await ben.context.close();
  });

  test(`${size}: in a room one left, the page offers to join instead of an input that cannot send`, async () => {
    const cat = await signIn(browser, stack, 'Cat', viewport);
    await cat.page.click(`#rooms li[data-room="${emptyRoom}"] button.join`);
    await cat.page.locator('#chat-title', { hasText: `#${emptyRoom}` }).waitFor({ timeout: WAIT });
    // An empty room (nobody writes in this one before) says so rather than showing a blank panel.
    const placeholder = await cat.page.$eval('#messages', (ul) => getComputedStyle(ul, '::before').content);
    assert.match(placeholder, new RegExp(`No messages in #${emptyRoom} yet`));
    assert.ok(await cat.page.locator('#compose-text').isEditable());
    await showList(cat.page);
    await cat.page.click(`#rooms li[data-room="${emptyRoom}"] button.leave`);
    await cat.page.click(`#rooms li[data-room="${emptyRoom}"]`);
    await cat.page.locator('#joinbar', { hasText: `You are not in #${emptyRoom}` }).waitFor({ timeout: WAIT });
    assert.equal(await cat.page.locator('#compose-text').isVisible(), false, 'no input to type into');
    await cat.page.click('#joinbar-btn');
    await cat.page.locator('#compose-text:not([disabled])').waitFor({ timeout: WAIT });
    assert.equal(await cat.page.locator('#joinbar').isVisible(), false);
    await cat.page.fill('#compose-text', 'back again');
    await cat.page.click('#compose-send');
    await messageText(cat.page, 'back again').waitFor({ timeout: WAIT });
    await cat.context.close();
  });
}

test('two people with the same name show with different tags', async () => {
  const one = await signIn(browser, stack, 'Kim', SIZES.desktop);
  const two = await signIn(browser, stack, 'Kim', SIZES.phone);
  const rows = one.page.locator('#online-list li', { hasText: 'Kim' });
  await until('both Kims to be listed', async () => (await rows.count()) === 2);
  const tags = await rows.locator('.tag').allTextContents();
  assert.deepEqual(tags.sort(), [`#${one.me.id.slice(-4)}`, `#${two.me.id.slice(-4)}`].sort());
  assert.notEqual(tags[0], tags[1]);
  await one.context.close();
  await two.context.close();
});

test('a whole session, from loading the page to signing out, logs no console errors', async () => {
  const errors = [];
  const watch = (page, who) => {
    page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') errors.push(`${who}: ${m.text()}`); });
    page.on('pageerror', (e) => errors.push(`${who}: ${e.message}`));
  };
  const context = await browser.newContext({ viewport: SIZES.desktop });
  const page = await context.newPage();
  watch(page, 'Dan');
  await page.goto(stack.web + '/');
  await page.fill('#signin-name', 'Dan');
  await page.click('#signin-btn');
  await page.locator('#state[data-state="connected"]').waitFor({ timeout: WAIT });
  const eve = await apiUser(stack, 'Eve');
  const dan = await page.evaluate(() => fetch('/api/me').then((r) => r.json()));
  await page.click('#rooms li[data-room="lobby"] button.join');
  await page.fill('#compose-text', 'hello lobby');
  await page.click('#compose-send');
  await messageText(page, 'hello lobby').waitFor({ timeout: WAIT });
  await eve.call('/api/messages', { to: dan.id, text: 'hi Dan' });
  // Eve has no page, so she is not online: her message waits under "Other chats".
  await page.locator(`#dm-list li[data-user="${eve.me.id}"] .badge`, { hasText: '1' }).waitFor({ timeout: WAIT });
  await page.click(`#dm-list li[data-user="${eve.me.id}"]`);
  await messageText(page, 'hi Dan').waitFor({ timeout: WAIT });
  await page.click('#rooms li[data-room="lobby"]');
  await page.click('#rooms li[data-room="lobby"] button.leave');
  await page.locator('#joinbar').waitFor({ timeout: WAIT });
  await page.click('#signout');
  await page.locator('#signin:not([hidden])').waitFor({ timeout: WAIT });
  await page.reload();
  await page.locator('#signin:not([hidden])').waitFor({ timeout: WAIT });
  assert.deepEqual(errors, []);
  await context.close();
});
