// The demo page: signs in, keeps one ImConnection, and shows who is online, the rooms and a
// conversation (a room or a person). Everything the page sends goes to the business API over
// HTTP; everything it receives comes through the socket. This script connects, signs in and
// out, and wires the page up; the scripts index.html loads before it hold the parts (page.js,
// conversation.js, online.js, rooms.js, outbox.js).
//
// How it stays right through outages:
// - Conversations are kept sorted by message id. Ids are UUIDv7 (time first, then a counter),
//   so sorting by id is sending order, whether a message came from a push, from the room
//   history (GET /api/rooms/{room}/messages) or from our own send; the same id never shows twice.
// - What the user sends goes into an outbox that the page works through in order, one request
//   at a time. The message shows at once, marked "sending…" (pending) until the API accepted it
//   and gave it its id; a network error or a 5xx/408/429 answer keeps it pending and is retried
//   with backoff (and at once when the browser comes back online or the socket reconnects); any
//   other refusal marks it "not sent" with the reason. Nothing typed vanishes. Every attempt
//   carries the message's `retry_key`, so a retry after an answer that was lost on the way
//   (the message did go out) returns the first id instead of sending it twice.
// - After a reconnect that the node could not resume (the "recovery" event says
//   recovered: false, or the first connection) the page reloads everything it derives from
//   pushes: the online list, the rooms, the list of private chats (with unread counts) and the
//   open conversation's history. demo-web keeps every conversation (rooms and private), so a
//   reload (F5) or a message sent while this page was away loses nothing.
// - Marks on one's own private messages follow what is known, never more: "sent" once the
//   API took it and the receiver is online, "delivered" from the receipt (or, after a reload,
//   from the history: the receiver's page got it), "kept for later" when the receiver is away
//   (the API's answer, or an "offline" receipt: the message waits in the history for their next
//   visit), "not sent yet · retrying" while the API cannot be reached, and "not sent" with the
//   reason and a Retry button when it was refused.
// - Drafts: text typed and not sent stays with its conversation (session storage), through a
//   switch to another conversation and a reload.
// - Navigation: opening a conversation is a browser history entry (#room:lobby, #user:<id>),
//   so Back returns to the list instead of leaving the app, and a reload reopens it.
// - A 401 (the session ended elsewhere) stops everything and shows the sign-in form.
// - The online list: a fetch of /api/online is a snapshot that may be older than presence
//   events that arrive while it is in flight. Those events are logged and applied again on top
//   of the snapshot when it arrives; a snapshot older than one already shown is dropped. A
//   snapshot that fails is fetched again (with backoff): without it the list would hold only
//   the people whose presence event came after this page's welcome.
//
// Layout: on a wide screen the list (rooms, people) and the conversation show side by side; on
// a narrow one (the same width as the CSS breakpoint) one at a time, `#app[data-view]` saying
// which. A message for a conversation that is not open counts as unread on its room or person.
'use strict';

const BANNERS = {
  connecting: 'Connecting to the chat…',
  reconnecting: 'Not connected: reconnecting… You can keep writing; messages go out once the connection is back.',
  failed: 'Cannot reach the chat server. Still trying in the background.',
  closed: 'Disconnected.',
  disconnected: 'Not connected.',
};
const STATE_TEXT = { connected: 'online', connecting: 'connecting…', reconnecting: 'reconnecting…', failed: 'offline', closed: 'disconnected', disconnected: 'disconnected' };
let bannerTimer = null;

function showState(s, reason) {
  const pill = $('state');
  $('state-text').textContent = STATE_TEXT[s] || s;
  pill.dataset.state = s;
  pill.title = reason ? `${s}: ${reason}` : s;
  const banner = $('banner');
  clearTimeout(bannerTimer);
  banner.dataset.state = s;
  $('banner-text').textContent = (BANNERS[s] || s) + (s === 'closed' && reason ? ' (' + reason + ')' : '');
  $('retry').hidden = !(s === 'failed' || s === 'closed');
  $('retry').textContent = s === 'closed' ? 'Reconnect' : 'Retry now';
  // A first connection usually takes a moment: a banner flashing on every page load would be
  // noise, so "connecting" shows only when it lasts.
  if (s === 'connecting') bannerTimer = setTimeout(() => { banner.hidden = false; }, 1000);
  else banner.hidden = s === 'connected';
}

/** Reloads what the page derives from pushes, after a reconnect that missed some. */
function reloadAll() {
  loadOnline();
  loadRooms();
  loadChats();
  if (state.current && state.current.startsWith('room:')) loadHistory(state.current.slice(5));
  const key = state.current;
  if (key && key.startsWith('user:')) {
    loadChat(key.slice(5)).then((ok) => { if (!ok) notice(key, 'This conversation could not be reloaded: messages sent to you meanwhile may be missing until it is opened again.'); });
  }
}

function connect() {
  // Query parameters tune the client (tests use them): heartbeat_ms, timeout_ms,
  // backoff_base_ms, backoff_max_ms, max_attempts, failed_retry_ms.
  const q = new URLSearchParams(location.search);
  const tuned = {};
  for (const [param, option] of [['heartbeat_ms', 'heartbeatMs'], ['timeout_ms', 'timeoutMs'], ['backoff_base_ms', 'backoffBaseMs'],
    ['backoff_max_ms', 'backoffMaxMs'], ['max_attempts', 'maxAttempts'], ['failed_retry_ms', 'failedRetryMs']]) {
    if (q.get(param)) tuned[option] = Number(q.get(param));
  }
  const conn = new ImConnection({ getUrl: async () => (await api('/prev-connect-imserver')).url, ...tuned });
  state.conn = conn;
  conn.addEventListener('recovery', (ev) => { state.recovery = ev.detail; });
  conn.addEventListener('missed', () => reloadAll());
  conn.addEventListener('state', (ev) => {
    showState(ev.detail.state, ev.detail.reason);
    if (ev.detail.state === 'connected') {
      // Resumed: the node replays what we missed. Otherwise reload (first connection too).
      if (!(state.recovery && state.recovery.recovered)) reloadAll();
      state.recovery = null;
      state.everConnected = true;
      kickOutbox();
    }
  });
  conn.addEventListener('message', (ev) => {
    const env = ev.detail;
    if (env.payload && env.payload.kind === 'delivered') {
      // Messages kept for someone away reached them when they came back.
      const key = 'user:' + env.payload.by;
      for (const id of env.payload.ids || []) {
        setMark(id, 'delivered');
        const item = convo(key).byId.get(id);
        if (item) refresh(item, key);
      }
      return;
    }
    const key = 'user:' + env.from;
    convo(key).name = env.payload.from_name;
    // With nothing open on a wide screen, the conversation opens by itself; on a phone the
    // unread badge says it is there, without taking the screen from what the user is doing.
    const opensItself = !state.current && WIDE.matches;
    add(key, { key: env.id, id: env.id, from: env.from, fromName: env.payload.from_name, text: env.payload.text, ts: env.ts, mine: false, private: true }, !opensItself);
    if (opensItself) open(key);
    else if (state.current === key) noteArrival();
    acknowledge(env.from, env.id, state.current === key);
  });
  conn.addEventListener('channel', (ev) => {
    const env = ev.detail;
    if (env.from === state.me.id && confirmByPush('room:' + env.chan, env)) return;
    if (state.current === 'room:' + env.chan && env.from !== state.me.id) noteArrival();
    add('room:' + env.chan, { key: env.id, id: env.id, from: env.from, fromName: env.payload.from_name, text: env.payload.text, ts: env.ts, mine: env.from === state.me.id }, true);
  });
  conn.addEventListener('receipt', (ev) => {
    const { message_id: id, receiver, status } = ev.detail.payload;
    // "delivered" is final; a later "buffered" or "offline" for the same message is older
    // news. "offline": nobody got it, and demo-web keeps it for the receiver's next visit.
    setMark(id, status === 'offline' ? 'stored' : status);
    const item = convo('user:' + receiver).byId.get(id);
    if (item) refresh(item, 'user:' + receiver);
  });
  conn.addEventListener('presence', (ev) => {
    const p = ev.detail.payload;
    if (presence.log) presence.log.push(p);
    applyPresence(p);
    renderOnline();
    loadRooms();
  });
  conn.start();
}

// Acknowledgements per sender: the newest id received (and whether shown), and whether a
// request is under way.
const acks = new Map();

/**
 * Tells demo-web this page has the message `id` from `peer` (and has shown it): the sender's
 * mark says "delivered" after a reload too, and it is not counted unread on the next load.
 * One request per sender at a time, for the newest id (the marks only move forward): a page
 * receiving fifty messages a second must not send fifty requests a second.
 */
function acknowledge(peer, id, seen) {
  const ack = acks.get(peer) || { id: '', seen: false, busy: false };
  if (id > ack.id) { ack.id = id; ack.seen = seen; ack.sent = false; } else if (id === ack.id && seen && !ack.seen) { ack.seen = true; ack.sent = false; }
  acks.set(peer, ack);
  if (ack.busy || ack.sent) return;
  ack.busy = true;
  ack.sent = true;
  api(`/api/chats/${encodeURIComponent(peer)}/received`, { id: ack.id, seen: ack.seen }).catch(() => {}).finally(() => {
    ack.busy = false;
    if (!ack.sent) acknowledge(peer, ack.id, ack.seen);
  });
}

/** The session ended (signed out elsewhere, or expired): stop, and offer to sign in again. */
function signedOut() {
  if (!state.me) return;
  state.me = null;
  if (state.conn) state.conn.close('signed out');
  state.timers.forEach(clearInterval);
  state.timers = [];
  clearTimeout(presence.retry);
  outbox.queue = [];
  for (const id of ['app', 'me', 'state', 'signout', 'banner']) $(id).hidden = true;
  showSignIn('You have been signed out. Sign in again to go on chatting.');
}

function showSignIn(why = '') {
  $('signin').hidden = false;
  $('signin-error').textContent = why;
  $('signin-name').focus();
}

function start(me) {
  state.me = me;
  $('me').replaceChildren(avatar(me.name, me.id), nameEl(me.name, me.id));
  $('me').title = `Signed in as ${me.name} ${tagOf(me.id)}`;
  $('signin').hidden = true;
  $('app').hidden = false;
  $('me').hidden = false;
  $('state').hidden = false;
  $('signout').hidden = false;
  $('messages').dataset.empty = emptyText(null);
  connect();
  loadChats();
  // Online counts of rooms change as members come and go; keep them fresh.
  state.timers.push(setInterval(loadRooms, 3000));
  // A reload reopens the conversation that was open (its address), with Back to the list.
  const key = decodeURIComponent(location.hash.slice(1));
  if (key.startsWith('room:') || key.startsWith('user:')) {
    history.replaceState({ key: null }, '', location.pathname + location.search);
    open(key);
  } else history.replaceState({ key: null }, '', location.pathname + location.search);
}

$('signin-form').onsubmit = async (ev) => {
  ev.preventDefault();
  $('signin-error').textContent = '';
  const name = $('signin-name').value;
  if (nameCount(name) > MAX_NAME) {
    $('signin-error').textContent = `Names can be at most ${MAX_NAME} characters; this one has ${nameCount(name)}.`;
    return;
  }
  try {
    const me = await api('/api/signin', { name });
    // Signed in again after the session ended: a fresh page rather than one half torn down.
    if (state.conn) location.reload(); else start(me);
  } catch (e) { $('signin-error').textContent = e.message; }
};
$('signin-name').addEventListener('input', countName);
$('compose').onsubmit = send;
$('compose-text').addEventListener('input', () => { fitInput(); countText(); saveDraft(); });
$('compose-text').addEventListener('keydown', (ev) => {
  // Enter sends, Shift+Enter starts a new line (and Enter while composing with an IME does not send).
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $('compose').requestSubmit(); }
});
$('joinbar-btn').onclick = () => { const room = roomOf(state.current); if (room) joinOrLeave(room.name, true); };
// Back in the page is Back in the browser: every conversation's entry sits on the list's
// (open() pushes from the list, replaces between conversations), so both go to the list.
$('back').onclick = () => { if (history.state && history.state.key) history.back(); else open(null, 'replace'); };
window.addEventListener('popstate', (ev) => { if (state.me) open((ev.state && ev.state.key) || null, 'none'); });
$('messages').addEventListener('scroll', () => {
  const ul = $('messages');
  // Still where the last scroll to the end left it (the list grew below), or back near the end:
  // follow. Scrolled up by the user: stay put.
  follow.on = ul.scrollTop >= follow.top - 2 || ul.scrollHeight - ul.scrollTop - ul.clientHeight < 60;
  if (ul.scrollHeight - ul.scrollTop - ul.clientHeight < 60) hideNewMarker();
}, { passive: true });
$('new-marker').onclick = () => { hideNewMarker(); scrollToEnd(); };
$('retry').onclick = () => { if (state.conn) state.conn.retry(); };
window.addEventListener('online', kickOutbox);
$('signout').onclick = async () => {
  if (state.conn) state.conn.close('signed out');
  await api('/api/signout', {}).catch(() => {});
  location.reload();
};

// 204 (nobody signed in) comes back as null.
api('/api/me').then((me) => (me ? start(me) : showSignIn()))
  .catch((e) => showSignIn(e.message));
