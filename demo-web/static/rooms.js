// Rooms (joining, leaving, their history), the conversation's title and the compose box, and
// opening a conversation.
'use strict';

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
