// verifyWebhook against signatures made by the Standard Webhooks reference package
// (`standardwebhooks`): genuine ones pass, with any of several secrets; tampered, stale,
// future-dated and unsigned ones are refused with the reason.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Webhook } from 'standardwebhooks';
import { WebhookVerificationError, verifyWebhook } from '../dist/index.js';

const SECRET = `whsec_${Buffer.from('ts-client webhook secret, 32 b.').toString('base64')}`;
const OTHER = `whsec_${Buffer.from('another secret, for the rotation').toString('base64')}`;
const BODY = JSON.stringify({
  type: 'presence',
  events: [{ id: '1733350000000-0', kind: 'online', client: 'alice', node: 'ws://127.0.0.1:6001', meta: { name: 'Alïce' }, at: 1733350000000, conns: 1 }],
});

/** Headers as the node sends them, signed by the reference package with each secret. */
function signed(secrets, { id = 'msg_2KWPBgLlAfxdpx2AI54pPJ85f4W', at = new Date(), body = BODY } = {}) {
  const signatures = secrets.map((s) => new Webhook(s).sign(id, at, body));
  return {
    'webhook-id': id,
    'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
    'webhook-signature': signatures.join(' '),
  };
}

async function refusal(promise) {
  const e = await promise.then(() => null, (err) => err);
  assert.ok(e instanceof WebhookVerificationError, `refused, got ${e}`);
  return e.code;
}

test('a webhook signed by the reference package verifies and its events come back parsed', async () => {
  const hook = await verifyWebhook(SECRET, signed([SECRET]), BODY);
  assert.deepEqual(hook, JSON.parse(BODY));
  // The raw bytes, as node:http gives them, and a fetch Headers object work the same.
  const bytes = new TextEncoder().encode(BODY);
  assert.equal((await verifyWebhook([SECRET], new Headers(signed([SECRET])), bytes)).events[0].meta.name, 'Alïce');
});

test('rotation: any of the receiver\'s secrets matching any of the node\'s signatures passes', async () => {
  await verifyWebhook([OTHER, SECRET], signed([SECRET]), BODY);
  await verifyWebhook(SECRET, signed([OTHER, SECRET]), BODY);
  assert.equal(await refusal(verifyWebhook(SECRET, signed([OTHER]), BODY)), 'invalid_signature');
});

test('a tampered body, id, timestamp or signature is refused', async () => {
  const headers = signed([SECRET]);
  assert.equal(await refusal(verifyWebhook(SECRET, headers, BODY.replace('online', 'offline'))), 'invalid_signature');
  assert.equal(await refusal(verifyWebhook(SECRET, { ...headers, 'webhook-id': 'msg_other' }, BODY)), 'invalid_signature');
  const ts = Number(headers['webhook-timestamp']) - 1;
  assert.equal(await refusal(verifyWebhook(SECRET, { ...headers, 'webhook-timestamp': String(ts) }, BODY)), 'invalid_signature');
  const sig = headers['webhook-signature'];
  const flipped = sig.slice(0, 5) + (sig[5] === 'A' ? 'B' : 'A') + sig.slice(6);
  assert.equal(await refusal(verifyWebhook(SECRET, { ...headers, 'webhook-signature': flipped }, BODY)), 'invalid_signature');
  assert.equal(await refusal(verifyWebhook(SECRET, { ...headers, 'webhook-signature': sig.replace('v1,', 'v2,') }, BODY)), 'invalid_signature');
});

test('a timestamp outside the tolerance is refused even when the signature is good', async () => {
  const now = Date.now();
  const old = signed([SECRET], { at: new Date(now - 6 * 60_000) });
  assert.equal(await refusal(verifyWebhook(SECRET, old, BODY)), 'timestamp_too_old');
  const ahead = signed([SECRET], { at: new Date(now + 6 * 60_000) });
  assert.equal(await refusal(verifyWebhook(SECRET, ahead, BODY)), 'timestamp_too_new');
  // A wider tolerance, or the time it was received at, lets the old one through.
  await verifyWebhook(SECRET, old, BODY, { toleranceSecs: 600 });
  await verifyWebhook(SECRET, old, BODY, { now: now - 6 * 60_000 });
  assert.equal(await refusal(verifyWebhook(SECRET, { ...old, 'webhook-timestamp': 'soon' }, BODY)), 'invalid_timestamp');
});

test('missing headers are refused, and a secret that is not whsec_<base64> is a TypeError', async () => {
  const { 'webhook-signature': _, ...unsigned } = signed([SECRET]);
  assert.equal(await refusal(verifyWebhook(SECRET, unsigned, BODY)), 'missing_header');
  await assert.rejects(verifyWebhook('whsec_!!!', signed([SECRET]), BODY), TypeError);
});
