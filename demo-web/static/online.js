// Who is online (a snapshot from the API with the presence events that overtook it), and the
// private conversations with their history.
'use strict';

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
