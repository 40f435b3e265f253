// The page's shared state and its smallest parts: the state every other script reads and
// changes, the business API call, building elements, and how a person shows (name, tag, colour).
// The demo page's scripts are classic scripts loaded in order (index.html): each sees what the
// earlier ones declared; app.js comes last and starts the page.
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
