// Standard Webhooks 1.0 verification of the node's presence webhooks with Web Crypto: the
// signature over "{webhook-id}.{webhook-timestamp}.{body}" with any of the secrets, and the
// timestamp within a tolerance, before the body is trusted.

import { WebhookVerificationError } from './errors.js';
import type { PresenceWebhook } from './types.js';

/** How far a webhook's timestamp may be from now, by default (the standard's 5 minutes). */
const DEFAULT_TOLERANCE_SECS = 300;
const SECRET_PREFIX = 'whsec_';

/** A request's headers: a fetch `Headers`, or node:http's `req.headers`. */
export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

/** Options of `verifyWebhook`. */
export interface VerifyWebhookOptions {
  /** How far the timestamp may be from now, in seconds (300 by default). */
  toleranceSecs?: number;
  /** The time to check against, in milliseconds since the Unix epoch (now by default). */
  now?: number;
}

/**
 * Checks a webhook and returns its parsed body; throws `WebhookVerificationError` when it
 * cannot be trusted. `secrets` are the node's `--webhook-secret` values (`whsec_<base64>`):
 * give the old and the new while rotating. `body` must be the raw bytes received, not a
 * re-serialized object.
 *
 * @example
 * ```ts
 * // node:http
 * const chunks = [];
 * for await (const chunk of req) chunks.push(chunk);
 * const hook = await verifyWebhook(process.env.IM_WEBHOOK_SECRET, req.headers, Buffer.concat(chunks));
 * for (const e of hook.events) console.log(e.id, e.kind, e.client);
 * ```
 */
export async function verifyWebhook(
  secrets: string | readonly string[],
  headers: WebhookHeaders,
  body: string | Uint8Array | ArrayBuffer,
  options: VerifyWebhookOptions = {},
): Promise<PresenceWebhook> {
  const id = header(headers, 'webhook-id');
  const timestamp = header(headers, 'webhook-timestamp');
  const signatures = header(headers, 'webhook-signature');
  if (id === undefined || timestamp === undefined || signatures === undefined) {
    throw new WebhookVerificationError(
      'missing_header',
      'webhook-id, webhook-timestamp and webhook-signature are all required',
    );
  }
  const secs = /^\d{1,15}$/.test(timestamp) ? Number(timestamp) : NaN;
  if (Number.isNaN(secs)) {
    throw new WebhookVerificationError('invalid_timestamp', `webhook-timestamp ${JSON.stringify(timestamp)} is not unix seconds`);
  }
  const nowSecs = Math.floor((options.now ?? Date.now()) / 1000);
  const tolerance = options.toleranceSecs ?? DEFAULT_TOLERANCE_SECS;
  if (secs < nowSecs - tolerance) {
    throw new WebhookVerificationError('timestamp_too_old', `the webhook is ${nowSecs - secs} s old, over the ${tolerance} s tolerance: a replay, or a clock that is off`);
  }
  if (secs > nowSecs + tolerance) {
    throw new WebhookVerificationError('timestamp_too_new', `the webhook is dated ${secs - nowSecs} s ahead, over the ${tolerance} s tolerance: check the clocks`);
  }

  const bytes = toBytes(body);
  const prefix = new TextEncoder().encode(`${id}.${timestamp}.`);
  const signed = new Uint8Array(prefix.length + bytes.length);
  signed.set(prefix);
  signed.set(bytes, prefix.length);
  const candidates = signatures
    .split(' ')
    .filter((s) => s.startsWith('v1,'))
    .map((s) => fromBase64(s.slice(3)))
    .filter((s): s is Uint8Array<ArrayBuffer> => s !== undefined);
  const subtle = await webCrypto();
  for (const secret of typeof secrets === 'string' ? [secrets] : secrets) {
    const key = await subtle.importKey('raw', secretKey(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify']);
    for (const signature of candidates) {
      // verify() compares in constant time.
      if (await subtle.verify('HMAC', key, signature, signed)) return parseBody(bytes);
    }
  }
  throw new WebhookVerificationError('invalid_signature', 'no v1 signature matches any of the secrets: a forged or altered webhook, or a secret not given to this receiver');
}

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
  const record = headers as Record<string, string | string[] | undefined>;
  const value = record[name] ?? Object.entries(record).find(([k]) => k.toLowerCase() === name)?.[1];
  return Array.isArray(value) ? value.join(' ') : value;
}

function toBytes(body: string | Uint8Array | ArrayBuffer): Uint8Array {
  if (typeof body === 'string') return new TextEncoder().encode(body);
  return body instanceof Uint8Array ? body : new Uint8Array(body);
}

/** The HMAC key of a `whsec_<base64>` secret (a bare base64 one is taken too). */
function secretKey(secret: string): Uint8Array<ArrayBuffer> {
  const key = fromBase64(secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret);
  if (key === undefined || key.length === 0) {
    throw new TypeError('a webhook secret must be whsec_ followed by base64, as given to the node\'s --webhook-secret');
  }
  return key;
}

function fromBase64(text: string): Uint8Array<ArrayBuffer> | undefined {
  try {
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  } catch {
    return undefined;
  }
}

function parseBody(bytes: Uint8Array): PresenceWebhook {
  try {
    return JSON.parse(new TextDecoder().decode(bytes)) as PresenceWebhook;
  } catch {
    throw new WebhookVerificationError('invalid_body', 'the signature matches but the body is not JSON');
  }
}

/** Web Crypto: global in Node 19+, Deno and Bun; Node 18 has it in node:crypto. */
async function webCrypto(): Promise<SubtleCrypto> {
  if (globalThis.crypto?.subtle !== undefined) return globalThis.crypto.subtle;
  const nodeCrypto = (await import('node:crypto' as string)) as { webcrypto: Crypto };
  return nodeCrypto.webcrypto.subtle;
}
