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

const $ = (id) => document.getElementById(id);
const state = {
  me: null, conn: null, online: new Map(), rooms: [], current: null, convos: new Map(), marks: new Map(),
  recovery: null, everConnected: false, unread: new Map(), timers: [],
};
// Limits of the API (api.rs, users.rs), checked here too so that nothing is cut: a longer
// text or name is refused with a counter, never truncated.
const MAX_TEXT = 1000;
const MAX_NAME = 32;
const WIDE = window.matchMedia('(min-width: 760px)');
// Messages from the same sender closer than this show as one group (one name, joined bubbles).
const GROUP_MS = 5 * 60 * 1000;

class ApiError extends Error {
  constructor(message, status, code) { super(message); this.status = status; this.code = code; }
}

async function api(path, body) {
  const init = body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
  const r = await fetch(path, init);
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({}));
  if (r.status === 401 && state.me) signedOut();
  if (!r.ok) throw new ApiError(data.message || data.error || r.statusText, r.status, data.error);
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => (k === 'class' ? (e.className = v) : e.setAttribute(k, v)));
  children.forEach((c) => c !== null && c !== undefined && e.append(c));
  return e;
}

// ---- people: names, tags, colours ---------------------------------------------------------------

/** The short tag shown beside a name: the end of the user's id, distinct among same-named users. */
const tagOf = (id) => '#' + String(id || '').slice(-4);

function hueOf(id) {
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return `hsl(${h} 52% 46%)`;
}

/** A name (isolated, so right-to-left text cannot reorder what is around it) and its tag. */
function nameEl(name, id) {
  return el('span', { class: 'line' }, el('bdi', { class: 'name' }, name), el('span', { class: 'tag' }, tagOf(id)));
}

function avatar(name, id) {
  const a = el('span', { class: 'avatar', 'aria-hidden': 'true' }, [...(name || '?')][0].toUpperCase());
  a.style.setProperty('--hue', hueOf(id));
  return a;
}

const nameOf = (id) => state.online.get(id) || (state.convos.get('user:' + id) || {}).name || id;

// ---- conversations: sorted lists of items ---------------------------------------------------
// An item: { key, id, from, fromName, text, ts, mine, private, status, error, notice, li }. `key`
// orders it: the message id once there is one; pending messages (no id yet) sort last, in the
// order they were typed ("~" sorts after hex digits).

let localCounter = 0;
const pendingKey = () => '~' + String(++localCounter).padStart(10, '0');

function convo(key) {
  if (!state.convos.has(key)) state.convos.set(key, { items: [], byId: new Map(), name: null });
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

// Whether the open conversation follows new messages (its view was at the end), as last seen
// by a scroll event. Measuring the view on each message instead (scrollHeight right after an
// insertion) forces a layout of the whole list every time: its cost grows with the
// conversation, and at 50 messages a second a page holding a few thousand messages fell
// behind its socket by tens of seconds on a busy machine, until a network drop cost it more
// than the node's recovery buffer holds. `top`: where the last scroll to the end left the view.
const follow = { on: true, top: 0, pending: false };

/** Scrolls the open conversation to its end in the next frame: once a frame, however many arrived. */
function scrollToEnd() {
  if (follow.pending) return;
  follow.pending = true;
  requestAnimationFrame(() => {
    follow.pending = false;
    const ul = $('messages');
    ul.scrollTop = ul.scrollHeight;
    follow.top = ul.scrollTop;
    follow.on = true;
  });
}

/** Someone else's message arrived in the open conversation: say so if the view is scrolled up. */
function noteArrival() {
  if (follow.on) return;
  $('new-marker').hidden = false;
}

function hideNewMarker() {
  $('new-marker').hidden = true;
}

/**
 * Adds an item in order; an item whose id is there already is ignored. Returns the item kept.
 * `live`: it just arrived (not from a history load), so it counts as unread when its
 * conversation is not open.
 */
function add(key, item, live = false) {
  const c = convo(key);
  if (item.id) {
    if (c.byId.has(item.id)) return c.byId.get(item.id);
    c.byId.set(item.id, item);
  }
  const i = indexFor(c.items, item.key);
  c.items.splice(i, 0, item);
  if (state.current === key) {
    const ul = $('messages');
    item.li = renderItem(item);
    ul.insertBefore(item.li, ul.children[i] || null);
    decorateAround(c, i);
    if (follow.on || item.mine) scrollToEnd();
  } else if (live && !item.mine && !item.notice) {
    state.unread.set(key, (state.unread.get(key) || 0) + 1);
    renderUnread();
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
  if (i >= 0) decorateAround(c, i);
}

/** Redraws one item in place (its status changed). */
function refresh(item, key) {
  if (!item.li || !item.li.isConnected) return;
  const li = renderItem(item);
  item.li.replaceWith(li);
  item.li = li;
  const c = convo(key);
  decorate(c, c.items.indexOf(item));
}

const LABELS = {
  pending: 'sending…', waiting: 'not sent yet · retrying', failed: 'not sent', sent: 'sent',
  buffered: 'will be delivered', delivered: 'delivered', stored: 'kept for later',
};
// What each mark means, in full (the mark's tooltip).
const TITLES = {
  sent: 'The server has it and the receiver is online; ✓✓ once their page has it.',
  buffered: 'The receiver is reconnecting; their page gets it when it is back.',
  delivered: 'The receiver\'s page has it.',
  stored: 'The receiver is not connected: the message is kept and shown to them when they come back.',
};

// Ranks of marks: a receipt never takes a message back from "delivered", and a "buffered"
// receipt (the receiver's node keeps a resume window for a page that went away) does not undo
// "kept for later" (the API found the receiver offline), whichever of the two arrives first.
const RANK = { sent: 1, buffered: 2, stored: 3, delivered: 4 };

function setMark(id, status) {
  const known = state.marks.get(id);
  if (!known || RANK[status] >= RANK[known]) state.marks.set(id, status);
}

function statusOf(m) {
  if (!m.mine) return null;
  if (m.status === 'pending') return m.waiting ? 'waiting' : 'pending';
  if (m.status === 'failed') return 'failed';
  if (m.private) return state.marks.get(m.id) || 'sent';
  return null;
}

const clock = (ts) => new Date(ts).toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });

function dayLabel(ts) {
  const d = new Date(ts);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'short', day: 'numeric', month: 'short', year: 'numeric' });
}

function renderItem(m) {
  if (m.notice) return el('li', { class: 'notice', 'data-key': m.key }, el('span', {}, m.text));
  const li = el('li', { class: m.mine ? 'mine' : 'theirs', 'data-id': m.id || '', 'data-key': m.key });
  const bubble = el('div', { class: 'bubble' });
  if (!m.mine && !m.private) {
    const who = el('div', { class: 'who' }, nameEl(m.fromName, m.from));
    who.style.setProperty('--hue', hueOf(m.from));
    bubble.append(who);
  }
  const meta = el('span', { class: 'meta' }, el('time', { datetime: new Date(m.ts).toISOString() }, clock(m.ts)));
  const status = statusOf(m);
  if (status) {
    const mark = el('span', { class: 'mark', 'data-status': status }, LABELS[status] || status);
    mark.title = m.error || TITLES[status] || '';
    meta.append(mark);
  }
  bubble.append(el('span', { class: 'text', dir: 'auto' }, m.text), meta);
  li.append(bubble);
  // Why it did not go out, in words, and a way to send it again.
  if (status === 'failed' || status === 'waiting') {
    const why = el('div', { class: 'why' }, el('span', {}, m.error || ''));
    if (status === 'failed') {
      const retry = el('button', { class: 'retry-send', type: 'button' }, 'Retry');
      retry.onclick = () => retrySend(m);
      why.append(retry);
    }
    li.append(why);
  }
  if (status === 'pending' || status === 'waiting' || status === 'failed') li.classList.add(status === 'failed' ? 'failed' : 'pending');
  return li;
}

function sameGroup(a, b) {
  return !!a && !!b && !a.notice && !b.notice && a.from === b.from && Math.abs(b.ts - a.ts) < GROUP_MS
    && new Date(a.ts).toDateString() === new Date(b.ts).toDateString();
}

/** Marks item i as the first or last of its group and the first of its day, from its neighbours. */
function decorate(c, i) {
  const m = c.items[i];
  if (!m || !m.li) return;
  const prev = c.items[i - 1];
  const next = c.items[i + 1];
  m.li.classList.toggle('first', !sameGroup(prev, m));
  m.li.classList.toggle('last', !sameGroup(m, next));
  const newDay = !m.notice && !(prev && new Date(prev.ts).toDateString() === new Date(m.ts).toDateString());
  if (newDay) m.li.dataset.day = dayLabel(m.ts); else delete m.li.dataset.day;
}

function decorateAround(c, i) {
  for (let j = i - 1; j <= i + 1; j++) decorate(c, j);
}

function renderMessages() {
  const ul = $('messages');
  const c = state.current ? convo(state.current) : null;
  const items = c ? c.items : [];
  ul.replaceChildren(...items.map((m) => (m.li = renderItem(m))));
  items.forEach((_, i) => decorate(c, i));
  ul.scrollTop = ul.scrollHeight;
  follow.top = ul.scrollTop;
  follow.on = true;
}

/** A notice after the last message that is not pending. */
function notice(key, text) {
  const items = convo(key).items;
  let last = '';
  for (const m of items) if (!m.key.startsWith('~')) last = m.key;
  add(key, { key: last + '~' + String(++localCounter).padStart(10, '0'), notice: true, text, ts: Date.now() });
}

// ---- unread ---------------------------------------------------------------------------------

function badge(n) {
  return n ? el('span', { class: 'badge', 'aria-label': `${n} unread` }, n > 99 ? '99+' : String(n)) : null;
}

function renderUnread() {
  renderOnline();
  renderRooms();
  let total = 0;
  for (const n of state.unread.values()) total += n;
  document.title = (total ? `(${total}) ` : '') + 'imserver chat';
  const back = $('back-badge');
  back.hidden = !total;
  back.textContent = total > 99 ? '99+' : String(total);
}

// ---- online list ------------------------------------------------------------------------------

// gen: fetches started; applied: the newest fetch applied; log: presence events that arrived
// while a fetch was in flight (null when none is).
const presence = { gen: 0, applied: 0, inFlight: 0, log: null, retry: null };

function applyPresence(p) {
  if (p.online) state.online.set(p.user, p.name); else state.online.delete(p.user);
}

function personRow(id, name, sub) {
  const you = id === state.me.id;
  const key = 'user:' + id;
  const li = el('li', { 'data-user': id, class: (state.current === key ? 'active' : '') + (you ? ' self' : '') },
    avatar(name, id),
    el('span', { class: 'label' }, nameEl(name, id), sub ? el('span', { class: 'sub' }, sub) : null),
    badge(state.unread.get(key) || 0));
  if (!you) {
    li.tabIndex = 0;
    li.setAttribute('role', 'button');
    li.onclick = () => open(key);
    li.onkeydown = (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); open(key); } };
  }
  return li;
}

/** Private conversations this user has (demo-web keeps them): listed even with people offline. */
async function loadChats() {
  const chats = await api('/api/chats').catch(() => null);
  if (!chats) return;
  for (const chat of chats) {
    const key = 'user:' + chat.peer;
    const c = convo(key);
    c.name = chat.name;
    c.known = true;
    if (state.current === key) continue;
    if (chat.unread) state.unread.set(key, chat.unread); else state.unread.delete(key);
  }
  renderUnread();
}

/** Loads a private conversation's kept messages (and, for one's own, their marks). */
async function loadChat(peer) {
  const key = 'user:' + peer;
  const history = await api(`/api/chats/${encodeURIComponent(peer)}/messages`).catch(() => null);
  if (!history) return false;
  for (const m of history) {
    if (m.status) setMark(m.id, m.status);
    const item = add(key, { key: m.id, id: m.id, from: m.from, fromName: m.from_name, text: m.text, ts: m.ts, mine: m.from === state.me.id, private: true });
    refresh(item, key);
  }
  if (history.length) convo(key).known = true;
  renderOnline();
  return true;
}

function renderOnline() {
  if (!state.me) return;
  const ul = $('online-list');
  const people = [...state.online].sort((a, b) => (a[0] === state.me.id ? -1 : b[0] === state.me.id ? 1 : a[1].localeCompare(b[1])));
  ul.replaceChildren(...people.map(([id, name]) => personRow(id, name, id === state.me.id ? 'you' : null)));
  $('online-count').textContent = people.length ? '· ' + people.length : '';
  // Conversations with people who are not online (gone, or writing from elsewhere) stay
  // reachable, so their messages and unread counts have somewhere to show.
  const others = [...state.convos].filter(([key, c]) => key.startsWith('user:') && (c.items.length || c.known) && !state.online.has(key.slice(5)));
  $('dm-list').replaceChildren(...others.map(([key, c]) => personRow(key.slice(5), c.name || key.slice(5), 'offline')));
  $('dm-section').hidden = !others.length;
  if (state.current && state.current.startsWith('user:')) renderTitle();
}

async function loadOnline(attempt = 0) {
  clearTimeout(presence.retry);
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
    // The events alone know only who came after this page: try again unless a newer fetch
    // is under way or done, and stop when signed out.
    if (!(e instanceof ApiError && e.status === 401) && gen === presence.gen) {
      presence.retry = setTimeout(() => loadOnline(attempt + 1), Math.min(8000, 300 * 2 ** attempt));
    }
  } finally {
    presence.inFlight -= 1;
    if (presence.inFlight === 0) presence.log = null;
  }
}

// ---- rooms ------------------------------------------------------------------------------------

function roomOf(key) {
  return key && key.startsWith('room:') ? state.rooms.find((r) => r.name === key.slice(5)) : null;
}

function updateCompose() {
  const key = state.current;
  const room = roomOf(key);
  const canWrite = !!key && (key.startsWith('user:') || (!!room && room.joined));
  // A room you are not in offers to join it instead of an input you cannot use.
  const mustJoin = !!key && key.startsWith('room:') && !!room && !room.joined;
  $('compose').hidden = mustJoin;
  $('joinbar').hidden = !mustJoin;
  if (mustJoin) {
    $('joinbar-text').textContent = `You are not in #${room.name}. Join to write here.`;
    $('joinbar-btn').textContent = `Join #${room.name}`;
  }
  $('compose-text').disabled = !canWrite;
  $('compose-send').disabled = !canWrite;
  $('compose-text').placeholder = !key ? 'Pick a room or a person' : key.startsWith('user:') ? 'Write a message' : `Message #${key.slice(5)}`;
  countText();
}

async function joinOrLeave(room, join) {
  $('compose-error').textContent = '';
  try {
    await api(`/api/rooms/${room}/${join ? 'join' : 'leave'}`, {});
    await loadRooms();
    if (join) open('room:' + room);
  } catch (e) { $('compose-error').textContent = e.message; }
}

function renderRooms() {
  const ul = $('rooms');
  ul.replaceChildren();
  for (const room of state.rooms) {
    const key = 'room:' + room.name;
    const btn = el('button', { class: room.joined ? 'leave' : 'join' }, room.joined ? 'Leave' : 'Join');
    btn.onclick = (ev) => {
      ev.stopPropagation();
      joinOrLeave(room.name, !room.joined);
    };
    const li = el('li', { 'data-room': room.name, class: state.current === key ? 'active' : '', tabindex: '0', role: 'button' },
      el('span', { class: 'hash', 'aria-hidden': 'true' }, '#'),
      el('span', { class: 'label' }, el('span', { class: 'line' }, el('span', { class: 'name' }, room.name)),
        el('span', { class: 'sub count' }, room.online + ' online')),
      badge(state.unread.get(key) || 0), btn);
    li.onclick = () => open(key);
    li.onkeydown = (ev) => { if (ev.target === li && (ev.key === 'Enter' || ev.key === ' ')) { ev.preventDefault(); open(key); } };
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
  if (roomOf(state.current)) renderTitle();
}

async function loadHistory(room) {
  const history = await api(`/api/rooms/${room}/messages`).catch(() => []);
  for (const m of history) {
    add('room:' + room, { key: m.id, id: m.id, from: m.from, fromName: m.from_name, text: m.text, ts: m.ts, mine: m.from === state.me.id });
  }
}

function renderTitle() {
  const key = state.current;
  const title = $('chat-title');
  const sub = $('chat-sub');
  if (!key) {
    title.textContent = 'Pick a room or a person';
    sub.textContent = '';
  } else if (key.startsWith('room:')) {
    const room = roomOf(key);
    title.textContent = '#' + key.slice(5);
    sub.textContent = room ? `${room.online} online${room.joined ? '' : ' · not joined'}` : '';
  } else {
    const id = key.slice(5);
    title.replaceChildren(nameEl(nameOf(id), id));
    sub.textContent = state.online.has(id) ? 'online' : 'offline';
  }
}

function emptyText(key) {
  if (!key) return 'Pick a room or a person on the left to start chatting.';
  if (key.startsWith('room:')) return `No messages in #${key.slice(5)} yet. Say hello!`;
  return `No messages with ${nameOf(key.slice(5))} yet. Write the first one below.`;
}

/**
 * Opens a conversation (or the list, with null). `nav`: 'push' makes it a browser history
 * entry (what a click does), 'replace' takes the place of the current one, 'none' is for
 * Back/Forward themselves.
 */
async function open(key, nav = 'push') {
  const url = key ? '#' + key : location.pathname + location.search;
  if (nav === 'push' && key !== state.current) {
    // From a conversation to another, Back goes to the list rather than through each.
    if (state.current && key) history.replaceState({ key }, '', url); else history.pushState({ key }, '', url);
  } else if (nav === 'replace') history.replaceState({ key }, '', url);
  if (key !== state.current) restoreDraft(key);
  state.current = key;
  if (key && key.startsWith('user:')) convo(key).name = nameOf(key.slice(5));
  $('app').dataset.view = key ? 'chat' : 'list';
  $('messages').dataset.empty = emptyText(key);
  state.unread.delete(key);
  $('compose-error').textContent = '';
  renderTitle();
  updateCompose();
  renderMessages();
  renderUnread();
  if (key && WIDE.matches) $('compose-text').focus({ preventScroll: true });
  hideNewMarker();
  if (key && key.startsWith('room:')) await loadHistory(key.slice(5));
  if (key && key.startsWith('user:')) await loadChat(key.slice(5));
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
        const { id, status } = await api(entry.path, entry.body);
        outbox.queue.shift();
        if (status) setMark(id, status);
        confirmSent(entry, id);
        delay = 500;
      } catch (e) {
        if (entry.item.id) { // confirmed by its push; this answer was lost on the way
          outbox.queue.shift();
          delay = 500;
          continue;
        }
        if (!transient(e) || e.status === 401) {
          outbox.queue.shift();
          entry.item.status = 'failed';
          entry.item.error = e.message;
          entry.item.waiting = false;
          refresh(entry.item, entry.convo);
          $('compose-error').textContent = `Your message was not sent. ${e.message}`;
          continue;
        }
        entry.item.waiting = true;
        entry.item.error = e instanceof ApiError ? e.message : 'The chat server cannot be reached; the page keeps trying.';
        refresh(entry.item, entry.convo);
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
  if (item.id === id) return; // its push said so already (confirmByPush)
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

/**
 * A room push of our own message can overtake the API's answer to its send: matched by its
 * retry_key, it confirms the pending item instead of showing the message a second time.
 */
function confirmByPush(key, env) {
  const retryKey = env.payload && env.payload.retry_key;
  const entry = retryKey && outbox.queue.find((e) => e.convo === key && e.retryKey === retryKey);
  if (!entry || entry.item.id) return false;
  const c = convo(key);
  const item = entry.item;
  remove(key, item);
  item.status = undefined;
  item.waiting = false;
  item.error = undefined;
  if (c.byId.has(env.id)) return true;
  item.id = env.id;
  item.key = env.id;
  add(key, item);
  return true;
}

/** Sends a message that was refused again, under its first retry key. */
function retrySend(item) {
  const entry = item.entry;
  if (!entry || item.status !== 'failed') return;
  const key = entry.convo;
  remove(key, item);
  Object.assign(item, { status: 'pending', error: undefined, waiting: false, key: pendingKey() });
  add(key, item);
  outbox.queue.push(entry);
  pump();
}

/** Characters as the API counts them (code points of the trimmed text). */
const charCount = (text) => [...text.trim()].length;

// Drafts: what is typed and not sent yet, per conversation, kept in the tab's session storage
// (under the signed-in user) so that switching conversations or reloading the page keeps it.
const draftKey = (key) => `draft:${state.me ? state.me.id : ''}:${key}`;
function saveDraft() {
  if (!state.current) return;
  const text = $('compose-text').value;
  try {
    if (text) sessionStorage.setItem(draftKey(state.current), text); else sessionStorage.removeItem(draftKey(state.current));
  } catch (e) { /* storage full or disabled: the draft lives as long as the box */ }
}
function restoreDraft(key) {
  let text = '';
  try { text = (key && sessionStorage.getItem(draftKey(key))) || ''; } catch (e) { /* as above */ }
  $('compose-text').value = text;
  fitInput();
  countText();
}

function send(ev) {
  ev.preventDefault();
  const input = $('compose-text');
  const text = input.value.trim();
  $('compose-error').textContent = '';
  // Focus stays in the box for the next message (a tap on Send took it).
  input.focus({ preventScroll: true });
  if (!state.current) return;
  if (!text) { $('compose-error').textContent = 'Type a message first.'; return; }
  if (charCount(text) > MAX_TEXT) {
    $('compose-error').textContent = `Messages can be at most ${MAX_TEXT} characters; this one has ${charCount(text)}. Shorten it or send it in parts.`;
    return;
  }
  const key = state.current;
  const isPrivate = key.startsWith('user:');
  const item = add(key, { key: pendingKey(), from: state.me.id, fromName: state.me.name, text, ts: Date.now(), mine: true, private: isPrivate, status: 'pending' });
  // The same retry_key on every attempt: a retry of a send whose answer was lost gets the
  // first send's id back from the API instead of sending the message twice.
  const retryKey = [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
  const entry = {
    item,
    convo: key,
    retryKey,
    path: isPrivate ? '/api/messages' : `/api/rooms/${key.slice(5)}/messages`,
    body: isPrivate ? { to: key.slice(5), text, retry_key: retryKey } : { text, retry_key: retryKey },
  };
  item.entry = entry;
  outbox.queue.push(entry);
  input.value = '';
  saveDraft();
  fitInput();
  countText();
  pump();
}

/** The character counter under the message box: shown near the limit, red past it. */
function countText() {
  const n = charCount($('compose-text').value);
  const counter = $('compose-count');
  counter.hidden = n < MAX_TEXT * 0.8;
  counter.textContent = `${n} / ${MAX_TEXT}`;
  counter.classList.toggle('over', n > MAX_TEXT);
  $('compose-send').disabled = $('compose-text').disabled || n > MAX_TEXT;
}

/** The same for the name. Spaces are counted as the API does: runs of them count once. */
const nameCount = (name) => [...name.trim().split(/\s+/).join(' ')].length;
function countName() {
  const n = nameCount($('signin-name').value);
  const counter = $('signin-count');
  counter.hidden = n < MAX_NAME - 8;
  counter.textContent = `${n} / ${MAX_NAME}`;
  counter.classList.toggle('over', n > MAX_NAME);
}

/** Grows the message box with what is typed, up to its CSS max-height. */
function fitInput() {
  const t = $('compose-text');
  t.style.height = 'auto';
  t.style.height = t.scrollHeight + 2 + 'px';
}

// ---- connection --------------------------------------------------------------------------------

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
