// Sending: the outbox worked through in order with retries under one retry key, drafts, and
// the limits counted as the API counts them.
'use strict';

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
