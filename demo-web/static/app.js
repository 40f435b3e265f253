// The demo page: signs in, keeps one ImConnection, and shows who is online, the rooms and a
// conversation (a room or a person). Everything the page sends goes to the business API over
// HTTP; everything it receives comes through the socket.
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
//   pushes: the online list, the rooms, and the open room's history; private conversations,
//   which have no history to reload, get a notice that messages may be missing.
// - The online list: a fetch of /api/online is a snapshot that may be older than presence
//   events that arrive while it is in flight. Those events are logged and applied again on top
//   of the snapshot when it arrives; a snapshot older than one already shown is dropped.
'use strict';

const $ = (id) => document.getElementById(id);
const state = {
  me: null, conn: null, online: new Map(), rooms: [], current: null, convos: new Map(), marks: new Map(),
  recovery: null, everConnected: false,
};

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function api(path, body) {
  const init = body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(data.error || r.statusText, r.status);
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => (k === 'class' ? (e.className = v) : e.setAttribute(k, v)));
  children.forEach((c) => e.append(c));
  return e;
}

// ---- conversations: sorted lists of items ---------------------------------------------------
// An item: { key, id, fromName, text, mine, private, status, error, notice, li }. `key` orders
// it: the message id once there is one; pending messages (no id yet) sort last, in the order
// they were typed ("~" sorts after hex digits).

let localCounter = 0;
const pendingKey = () => '~' + String(++localCounter).padStart(10, '0');

function convo(key) {
  if (!state.convos.has(key)) state.convos.set(key, { items: [], byId: new Map() });
  return state.convos.get(key);
}

function indexFor(items, key) {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (items[mid].key < key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

/** Adds an item in order; an item whose id is there already is ignored. Returns the item kept. */
function add(key, item) {
  const c = convo(key);
  if (item.id) {
    if (c.byId.has(item.id)) return c.byId.get(item.id);
    c.byId.set(item.id, item);
  }
  const i = indexFor(c.items, item.key);
  c.items.splice(i, 0, item);
  if (state.current === key) {
    const ul = $('messages');
    const atBottom = ul.scrollHeight - ul.scrollTop - ul.clientHeight < 40;
    item.li = renderItem(item);
    ul.insertBefore(item.li, ul.children[i] || null);
    if (atBottom || item.mine) ul.scrollTop = ul.scrollHeight;
  }
  return item;
}

function remove(key, item) {
  const c = convo(key);
  const i = c.items.indexOf(item);
  if (i >= 0) c.items.splice(i, 1);
  if (item.id && c.byId.get(item.id) === item) c.byId.delete(item.id);
  if (item.li) item.li.remove();
  item.li = null;
}

/** Redraws one item in place (its status changed). */
function refresh(item) {
  if (!item.li || !item.li.isConnected) return;
  const li = renderItem(item);
  item.li.replaceWith(li);
  item.li = li;
}

const LABELS = {
  pending: 'sending…', waiting: 'waiting to send…', failed: 'not sent', sent: 'sent',
  buffered: 'will be delivered', delivered: 'delivered', offline: 'offline',
};

function statusOf(m) {
  if (!m.mine) return null;
  if (m.status === 'pending') return m.waiting ? 'waiting' : 'pending';
  if (m.status === 'failed') return 'failed';
  if (m.private) return state.marks.get(m.id) || 'sent';
  return null;
}

function renderItem(m) {
  const li = el('li', { class: m.notice ? 'notice' : m.mine ? 'mine' : '', 'data-id': m.id || '', 'data-key': m.key });
  if (m.notice) {
    li.append(m.text);
    return li;
  }
  li.append(el('span', { class: 'who' }, m.fromName + ':'), el('span', { class: 'text' }, m.text));
  const status = statusOf(m);
  if (status) {
    const mark = el('span', { class: 'mark', 'data-status': status }, LABELS[status] || status);
    if (m.error) mark.title = m.error;
    li.append(mark);
  }
  if (status === 'pending' || status === 'waiting' || status === 'failed') li.classList.add(status === 'failed' ? 'failed' : 'pending');
  return li;
}

function renderMessages() {
  const ul = $('messages');
  const items = state.current ? convo(state.current).items : [];
  ul.replaceChildren(...items.map((m) => (m.li = renderItem(m))));
  ul.scrollTop = ul.scrollHeight;
}

/** A notice after the last message that is not pending. */
function notice(key, text) {
  const items = convo(key).items;
  let last = '';
  for (const m of items) if (!m.key.startsWith('~')) last = m.key;
  add(key, { key: last + '~' + String(++localCounter).padStart(10, '0'), notice: true, text });
}

// ---- online list ------------------------------------------------------------------------------

// gen: fetches started; applied: the newest fetch applied; log: presence events that arrived
// while a fetch was in flight (null when none is).
const presence = { gen: 0, applied: 0, inFlight: 0, log: null };

function applyPresence(p) {
  if (p.online) state.online.set(p.user, p.name); else state.online.delete(p.user);
}

function renderOnline() {
  const ul = $('online-list');
  ul.replaceChildren();
  for (const [id, name] of [...state.online].sort((a, b) => a[1].localeCompare(b[1]))) {
    const li = el('li', { 'data-user': id, class: state.current === 'user:' + id ? 'active' : '' }, name + (id === state.me.id ? ' (you)' : ''));
    if (id !== state.me.id) li.onclick = () => open('user:' + id, 'Chat with ' + name);
    ul.append(li);
  }
}

async function loadOnline() {
  const gen = ++presence.gen;
  if (!presence.log) presence.log = [];
  const from = presence.log.length;
  presence.inFlight += 1;
  try {
    const list = await api('/api/online');
    if (gen > presence.applied) { // else a newer snapshot is shown already
      presence.applied = gen;
      state.online = new Map(list.map((u) => [u.id, u.name]));
      // Events that arrived while the snapshot was in flight may be newer than it.
      for (const p of presence.log.slice(from)) applyPresence(p);
      renderOnline();
    }
  } catch (e) {
    // Keep the list as the events made it; the next reconnect or reload corrects it.
  } finally {
    presence.inFlight -= 1;
    if (presence.inFlight === 0) presence.log = null;
  }
}

// ---- rooms ------------------------------------------------------------------------------------

function updateCompose() {
  const key = state.current;
  const canWrite = !!key && (key.startsWith('user:') || state.rooms.some((r) => 'room:' + r.name === key && r.joined));
  $('compose-text').disabled = !canWrite;
  $('compose-send').disabled = !canWrite;
  $('compose-text').placeholder = !key ? 'Pick a room or a person' : canWrite ? 'Write a message' : 'Join the room to write';
}

function renderRooms() {
  const ul = $('rooms');
  ul.replaceChildren();
  for (const room of state.rooms) {
    const btn = el('button', { class: room.joined ? 'leave' : 'join' }, room.joined ? 'Leave' : 'Join');
    btn.onclick = async (ev) => {
      ev.stopPropagation();
      try {
        await api(`/api/rooms/${room.name}/${room.joined ? 'leave' : 'join'}`, {});
        await loadRooms();
        if (!room.joined) open('room:' + room.name, '#' + room.name);
      } catch (e) { $('compose-error').textContent = e.message; }
    };
    const li = el('li', { 'data-room': room.name, class: state.current === 'room:' + room.name ? 'active' : '' },
      el('span', {}, '#' + room.name), el('span', { class: 'count' }, room.online + ' online'), btn);
    li.onclick = () => open('room:' + room.name, '#' + room.name);
    ul.append(li);
  }
}

const roomsLoad = { gen: 0, applied: 0 };
async function loadRooms() {
  const gen = ++roomsLoad.gen;
  const rooms = await api('/api/rooms').catch(() => null);
  if (!rooms || gen < roomsLoad.applied) return; // a newer answer is shown already
  roomsLoad.applied = gen;
  state.rooms = rooms;
  renderRooms();
  updateCompose();
}

async function loadHistory(room) {
  const history = await api(`/api/rooms/${room}/messages`).catch(() => []);
  for (const m of history) add('room:' + room, { key: m.id, id: m.id, fromName: m.from_name, text: m.text, mine: m.from === state.me.id });
}

async function open(key, title) {
  state.current = key;
  $('chat-title').textContent = title;
  updateCompose();
  renderMessages();
  renderOnline();
  renderRooms();
  if (key.startsWith('room:')) await loadHistory(key.slice(5));
}

// ---- sending: the outbox -----------------------------------------------------------------------

const outbox = { queue: [], busy: false, wake: null };

function transient(e) {
  // No answer at all (network), or an answer that says "try later".
  return !(e instanceof ApiError) || e.status >= 500 || e.status === 408 || e.status === 429;
}

/** Cuts short the outbox's wait before its next retry. */
function kickOutbox() {
  if (outbox.wake) outbox.wake();
}

async function pump() {
  if (outbox.busy) return;
  outbox.busy = true;
  let delay = 500;
  try {
    while (outbox.queue.length) {
      const entry = outbox.queue[0];
      try {
        const { id } = await api(entry.path, entry.body);
        outbox.queue.shift();
        confirmSent(entry, id);
        delay = 500;
      } catch (e) {
        if (!transient(e)) {
          outbox.queue.shift();
          entry.item.status = 'failed';
          entry.item.error = e.message;
          entry.item.waiting = false;
          refresh(entry.item);
          $('compose-error').textContent = `Not sent: ${e.message}`;
          continue;
        }
        entry.item.waiting = true;
        entry.item.error = e.message;
        refresh(entry.item);
        await new Promise((resolve) => {
          const t = setTimeout(resolve, delay);
          outbox.wake = () => { clearTimeout(t); resolve(); };
        });
        outbox.wake = null;
        delay = Math.min(delay * 2, 8000);
      }
    }
  } finally {
    outbox.busy = false;
  }
}

function confirmSent(entry, id) {
  const item = entry.item;
  const c = convo(entry.convo);
  remove(entry.convo, item);
  item.status = undefined;
  item.waiting = false;
  item.error = undefined;
  if (c.byId.has(id)) return; // its push (or the history) got here first
  item.id = id;
  item.key = id;
  add(entry.convo, item);
}

function send(ev) {
  ev.preventDefault();
  const input = $('compose-text');
  const text = input.value.trim();
  $('compose-error').textContent = '';
  if (!state.current) return;
  if (!text) { $('compose-error').textContent = 'text is empty'; return; }
  const key = state.current;
  const isPrivate = key.startsWith('user:');
  const item = add(key, { key: pendingKey(), fromName: state.me.name, text, mine: true, private: isPrivate, status: 'pending' });
  // The same retry_key on every attempt: a retry of a send whose answer was lost gets the
  // first send's id back from the API instead of sending the message twice.
  const retryKey = [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
  outbox.queue.push({
    item,
    convo: key,
    path: isPrivate ? '/api/messages' : `/api/rooms/${key.slice(5)}/messages`,
    body: isPrivate ? { to: key.slice(5), text, retry_key: retryKey } : { text, retry_key: retryKey },
  });
  input.value = '';
  pump();
}

// ---- connection --------------------------------------------------------------------------------

const BANNERS = {
  connecting: 'Connecting…',
  reconnecting: 'Not connected: reconnecting… You can keep writing; new messages show up once the connection is back.',
  failed: 'Cannot reach the chat server. Still trying in the background.',
  closed: 'Disconnected.',
  disconnected: 'Not connected.',
};

function showState(s, reason) {
  $('state').textContent = s;
  $('state').dataset.state = s;
  $('state').title = reason;
  const banner = $('banner');
  banner.hidden = s === 'connected';
  banner.dataset.state = s;
  $('banner-text').textContent = (BANNERS[s] || s) + (s === 'closed' && reason ? ' (' + reason + ')' : '');
  $('retry').hidden = !(s === 'failed' || s === 'closed');
  $('retry').textContent = s === 'closed' ? 'Reconnect' : 'Retry now';
}

/** Reloads what the page derives from pushes, after a reconnect that missed some. */
function reloadAll() {
  loadOnline();
  loadRooms();
  if (state.current && state.current.startsWith('room:')) loadHistory(state.current.slice(5));
  if (state.everConnected) {
    for (const key of state.convos.keys()) {
      if (key.startsWith('user:')) notice(key, 'The connection was interrupted: messages sent to you meanwhile may be missing.');
    }
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
    add('user:' + env.from, { key: env.id, id: env.id, fromName: env.payload.from_name, text: env.payload.text, mine: false, private: true });
    if (!state.current) open('user:' + env.from, 'Chat with ' + env.payload.from_name);
  });
  conn.addEventListener('channel', (ev) => {
    const env = ev.detail;
    add('room:' + env.chan, { key: env.id, id: env.id, fromName: env.payload.from_name, text: env.payload.text, mine: env.from === state.me.id });
  });
  conn.addEventListener('receipt', (ev) => {
    const { message_id: id, receiver, status } = ev.detail.payload;
    // "delivered" is final; a later "buffered" or "offline" for the same message is older news.
    if (state.marks.get(id) !== 'delivered') state.marks.set(id, status);
    const item = convo('user:' + receiver).byId.get(id);
    if (item) refresh(item);
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

function start(me) {
  state.me = me;
  $('me').textContent = me.name;
  $('signin').hidden = true;
  $('app').hidden = false;
  $('signout').hidden = false;
  connect();
  // Online counts of rooms change as members come and go; keep them fresh.
  setInterval(loadRooms, 3000);
}

$('signin-form').onsubmit = async (ev) => {
  ev.preventDefault();
  try { start(await api('/api/signin', { name: $('signin-name').value })); }
  catch (e) { $('signin-error').textContent = e.message; }
};
$('compose').onsubmit = send;
$('retry').onclick = () => { if (state.conn) state.conn.retry(); };
window.addEventListener('online', kickOutbox);
$('signout').onclick = async () => {
  if (state.conn) state.conn.close('signed out');
  await api('/api/signout', {}).catch(() => {});
  location.reload();
};

api('/api/me').then(start).catch(() => { $('signin').hidden = false; });
