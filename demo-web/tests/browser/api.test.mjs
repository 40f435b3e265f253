// demo-web's API answers every refusal as JSON {"error": code, "message": text} with a fitting
// status, including requests that never reach a handler (broken JSON, a missing field, an
// over-large body, an unknown path), and refuses names and messages a person would be fooled by.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { apiUser, startStack, stopAll } from './stack.mjs';

let stack;
let ann;

before(async () => {
  stack = await startStack({ nodes: 1 });
  ann = await apiUser(stack, 'Ann');
});

after(() => stopAll());

/** A raw request; returns [status, content-type, body as JSON or text]. */
async function call(path, { method = 'POST', body, type = 'application/json', cookie = true } = {}) {
  const headers = {};
  if (type) headers['content-type'] = type;
  if (cookie) headers.cookie = ann.cookie;
  const r = await fetch(stack.web + path, { method, headers, body });
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch (e) { /* shown as text in the failure */ }
  return [r.status, r.headers.get('content-type'), data];
}

/** Asserts a JSON error with this status and code; returns its message. */
function refused([status, type, data], wantStatus, wantCode) {
  assert.equal(status, wantStatus, `status of ${JSON.stringify(data)}`);
  assert.match(type || '', /^application\/json/, `JSON, not ${type}: ${JSON.stringify(data)}`);
  assert.equal(data.error, wantCode);
  assert.equal(typeof data.message, 'string');
  assert.ok(data.message.length > 0);
  return data.message;
}

test('broken JSON, a missing field, a body that is not JSON and an over-large body get JSON errors', async () => {
  refused(await call('/api/signin', { body: '{"name": "Ann"' }), 400, 'invalid_json');
  refused(await call('/api/messages', { body: 'not json at all' }), 400, 'invalid_json');
  assert.match(refused(await call('/api/signin', { body: '{}' }), 400, 'missing_field'), /name/);
  assert.match(refused(await call('/api/messages', { body: JSON.stringify({ to: ann.me.id }) }), 400, 'missing_field'), /text/);
  assert.match(refused(await call('/api/signin', { body: '{"name": 5}' }), 400, 'invalid_field'), /string/);
  refused(await call('/api/signin', { body: 'name=Ann', type: 'application/x-www-form-urlencoded' }), 415, 'not_json');
  refused(await call('/api/rooms/lobby/messages', { body: JSON.stringify({ text: 'x'.repeat(100_000) }) }), 413, 'body_too_large');
  refused(await call('/api/nothing-here', { method: 'GET', type: null }), 404, 'not_found');
  refused(await call('/api/online', { method: 'GET', type: null, cookie: false }), 401, 'signed_out');
});

test('names that hide or reorder characters, or show nothing, are refused; others are tidied', async () => {
  const signIn = (name) => call('/api/signin', { body: JSON.stringify({ name }), cookie: false });
  assert.match(refused(await signIn('\u200B'), 400, 'name_bad_characters'), /U\+200B/);
  assert.match(refused(await signIn('Bob\u202Egnp.exe'), 400, 'name_bad_characters'), /U\+202E/);
  refused(await signIn('Ann\u2067'), 400, 'name_bad_characters');
  refused(await signIn('   '), 400, 'name_empty');
  refused(await signIn('\u3164'), 400, 'name_empty');
  refused(await signIn('a\nb'), 400, 'name_bad_characters');
  refused(await signIn('x'.repeat(33)), 400, 'name_too_long');
  const [status, , user] = await signIn('  Zoë   van  Dijk ');
  assert.equal(status, 200);
  assert.equal(user.name, 'Zoë van Dijk');
});

test('two users with the same name get different tags (the ends of their ids)', async () => {
  const users = await Promise.all(Array.from({ length: 20 }, () => apiUser(stack, 'Sam')));
  const tags = new Set(users.map((u) => u.me.id.slice(-4)));
  assert.equal(tags.size, users.length);
});

test('a private message to oneself is refused', async () => {
  const message = refused(await call('/api/messages', { body: JSON.stringify({ to: ann.me.id, text: 'note to self' }) }), 400, 'self_message');
  assert.match(message, /yourself/);
});

test('a signed-out page load gets answers, not errors: /api/me is 204 and the icon is there', async () => {
  const me = await fetch(stack.web + '/api/me');
  assert.equal(me.status, 204);
  const signedIn = await fetch(stack.web + '/api/me', { headers: { cookie: ann.cookie } });
  assert.equal((await signedIn.json()).id, ann.me.id);
  for (const icon of ['/favicon.svg', '/favicon.ico']) {
    const r = await fetch(stack.web + icon);
    assert.equal(r.status, 200, icon);
    assert.equal(r.headers.get('content-type'), 'image/svg+xml');
  }
});
