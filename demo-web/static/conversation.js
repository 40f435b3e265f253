// A conversation (a room or a person) as a sorted list of items, and how it is drawn: marks,
// groups, days, following new messages, unread counts.
'use strict';

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
