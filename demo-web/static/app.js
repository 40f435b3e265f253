// The demo page: signs in, keeps one ImConnection, and shows who is online, the rooms and a
// conversation (a room or a person). Everything the page sends goes to the business API over
// HTTP; everything it receives comes through the socket.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { me: null, conn: null, online: new Map(), rooms: [], current: null, convos: new Map(), marks: new Map() };

async function api(path, body) {
  const init = body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => (k === 'class' ? (e.className = v) : e.setAttribute(k, v)));
  children.forEach((c) => e.append(c));
  return e;
}

function convo(key) {
  if (!state.convos.has(key)) state.convos.set(key, []);
  return state.convos.get(key);
}

function add(key, item) {
  const list = convo(key);
  if (item.id && list.some((m) => m.id === item.id)) return;
  list.push(item);
  if (state.current === key) renderMessages();
}

function renderMessages() {
  const ul = $('messages');
  ul.replaceChildren();
  for (const m of convo(state.current)) {
    const li = el('li', { class: m.notice ? 'notice' : m.mine ? 'mine' : '', 'data-id': m.id || '' });
    if (m.notice) li.append(m.text);
    else {
      li.append(el('span', { class: 'who' }, m.fromName + ':'), el('span', { class: 'text' }, m.text));
      if (m.mine && m.private) {
        const status = state.marks.get(m.id) || 'sent';
        li.append(el('span', { class: 'mark', 'data-status': status }, status));
      }
    }
    ul.append(li);
  }
  ul.scrollTop = ul.scrollHeight;
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

async function open(key, title) {
  state.current = key;
  $('chat-title').textContent = title;
  const canWrite = key.startsWith('user:') || state.rooms.some((r) => 'room:' + r.name === key && r.joined);
  $('compose-text').disabled = !canWrite;
  $('compose-send').disabled = !canWrite;
  $('compose-text').placeholder = canWrite ? 'Write a message' : 'Join the room to write';
  if (key.startsWith('room:')) {
    const history = await api(`/api/rooms/${key.slice(5)}/messages`).catch(() => []);
    for (const m of history) add(key, { id: m.id, fromName: m.from_name, text: m.text, mine: m.from === state.me.id });
  }
  renderMessages();
  renderOnline();
  renderRooms();
}

async function loadOnline() {
  const list = await api('/api/online').catch(() => []);
  state.online = new Map(list.map((u) => [u.id, u.name]));
  renderOnline();
}

async function loadRooms() {
  state.rooms = await api('/api/rooms').catch(() => state.rooms);
  renderRooms();
  if (state.current) {
    const canWrite = state.current.startsWith('user:') || state.rooms.some((r) => 'room:' + r.name === state.current && r.joined);
    $('compose-text').disabled = !canWrite;
    $('compose-send').disabled = !canWrite;
  }
}

function connect() {
  // ?heartbeat_ms=…&timeout_ms=… tune the client's dead-connection detection (tests use it).
  const q = new URLSearchParams(location.search);
  const tuned = {};
  if (q.get('heartbeat_ms')) tuned.heartbeatMs = Number(q.get('heartbeat_ms'));
  if (q.get('timeout_ms')) tuned.timeoutMs = Number(q.get('timeout_ms'));
  const conn = new ImConnection({ getUrl: async () => (await api('/prev-connect-imserver')).url, ...tuned });
  state.conn = conn;
  conn.addEventListener('state', (ev) => {
    $('state').textContent = ev.detail.state;
    $('state').dataset.state = ev.detail.state;
    $('state').title = ev.detail.reason;
    if (ev.detail.state === 'connected') { loadOnline(); loadRooms(); }
  });
  conn.addEventListener('message', (ev) => {
    const env = ev.detail;
    add('user:' + env.from, { id: env.id, fromName: env.payload.from_name, text: env.payload.text, mine: false, private: true });
    if (!state.current) open('user:' + env.from, 'Chat with ' + env.payload.from_name);
  });
  conn.addEventListener('channel', (ev) => {
    const env = ev.detail;
    add('room:' + env.chan, { id: env.id, fromName: env.payload.from_name, text: env.payload.text, mine: env.from === state.me.id });
  });
  conn.addEventListener('receipt', (ev) => {
    state.marks.set(ev.detail.payload.message_id, ev.detail.payload.status);
    renderMessages();
  });
  conn.addEventListener('presence', (ev) => {
    const p = ev.detail.payload;
    if (p.online) state.online.set(p.user, p.name); else state.online.delete(p.user);
    renderOnline();
    loadRooms();
  });
  conn.start();
}

async function send(ev) {
  ev.preventDefault();
  const input = $('compose-text');
  const text = input.value;
  $('compose-error').textContent = '';
  try {
    if (state.current.startsWith('user:')) {
      const to = state.current.slice(5);
      const { id } = await api('/api/messages', { to, text });
      add(state.current, { id, fromName: state.me.name, text: text.trim(), mine: true, private: true });
    } else {
      await api(`/api/rooms/${state.current.slice(5)}/messages`, { text });
    }
    input.value = '';
  } catch (e) {
    $('compose-error').textContent = e.message;
  }
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
$('signout').onclick = async () => {
  if (state.conn) state.conn.close('signed out');
  await api('/api/signout', {}).catch(() => {});
  location.reload();
};

api('/api/me').then(start).catch(() => { $('signin').hidden = false; });
