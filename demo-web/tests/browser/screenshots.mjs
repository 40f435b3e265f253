// Takes the README's screenshots of the demo, desktop (docs/demo.png: the #lobby room) and
// phone (docs/demo-phone.png: a private conversation), from a real stack with a short
// conversation in it, each taken after a reload of the page (what it shows comes back):
//   (cd demo-web/tests/browser && node screenshots.mjs [out-dir])
// after `cargo build -p imserver -p demo-web` (scripts/browser-test.sh sets up the rest).
import path from 'node:path';
import { WAIT, apiUser, launchBrowser, messageText, root, signIn, startStack, stopAll, until } from './stack.mjs';

const out = path.resolve(process.argv[2] || path.join(root, 'docs'));
const stack = await startStack({ nodes: 2 });
const browser = await launchBrowser();
try {
  const ann = await signIn(browser, stack, 'Ann', { width: 1280, height: 800 });
  const ben = await signIn(browser, stack, 'Ben', { width: 390, height: 844 });
  const cho = await apiUser(stack, 'Cho Min-jun');
  await cho.call('/api/rooms/lobby/join', {});
  await cho.call('/api/rooms/rust/join', {});
  for (const u of [ann, ben]) {
    await u.page.click('#rooms li[data-room="lobby"] button.join');
    await u.page.locator('#chat-title', { hasText: '#lobby' }).waitFor({ timeout: WAIT });
  }
  await ann.page.locator('#rooms li[data-room="lobby"] .count', { hasText: '2 online' }).waitFor({ timeout: WAIT });
  const say = async (user, text) => {
    await user.page.fill('#compose-text', text);
    await user.page.click('#compose-send');
    await messageText(ann.page, text).waitFor({ timeout: WAIT });
  };
  await say(ann, 'Morning all! Is the release still on for today?');
  await cho.call('/api/rooms/lobby/messages', { text: 'Yes, tagging it after lunch.' });
  await cho.call('/api/rooms/lobby/messages', { text: 'The reconnect fixes are in: pull the network cable and watch the banner.' });
  await messageText(ann.page, 'watch the banner').waitFor({ timeout: WAIT });
  await say(ben, 'Tried it on my phone on the train, came back by itself.');
  await say(ann, 'Nice. Nothing lost, nothing twice.');
  // Cho has no page (an API user), so the room counts two online.
  // A private message to Ann while she is in the room: an unread badge on Ben.
  await ben.page.click('#back');
  await ben.page.click(`#online-list li[data-user="${ann.me.id}"]`);
  await ben.page.fill('#compose-text', 'Coffee after the release?');
  await ben.page.click('#compose-send');
  await ann.page.locator(`#online-list li[data-user="${ben.me.id}"] .badge`).waitFor({ timeout: WAIT });
  await ben.page.fill('#compose-text', 'My treat!');
  await ben.page.click('#compose-send');
  await until('Ben\'s messages to be delivered', async () => (await ben.page.locator('#messages li.mine .mark[data-status="delivered"]').count()) === 2);
  await ann.page.click(`#online-list li[data-user="${ben.me.id}"]`);
  await ann.page.fill('#compose-text', 'Deal. Ten minutes after the tag?');
  await ann.page.click('#compose-send');
  await messageText(ben.page, 'Ten minutes').waitFor({ timeout: WAIT });
  await ann.page.click('#rooms li[data-room="lobby"]');
  // F5 on both: the room and the private conversation come back as they were.
  for (const [user, text] of [[ann, 'Nothing lost'], [ben, 'Ten minutes']]) {
    await user.page.reload();
    await user.page.locator('#state[data-state="connected"]').waitFor({ timeout: WAIT });
    await messageText(user.page, text).waitFor({ timeout: WAIT });
  }
  await until('the marks to come back', async () => (await ben.page.locator('#messages li.mine .mark[data-status="delivered"]').count()) === 2);
  await ann.page.mouse.move(0, 0);
  await ann.page.screenshot({ path: path.join(out, 'demo.png') });
  await ben.page.screenshot({ path: path.join(out, 'demo-phone.png') });
  console.log(`screenshots: ${out}/demo.png, ${out}/demo-phone.png`);
} finally {
  await browser.close();
  await stopAll();
}
