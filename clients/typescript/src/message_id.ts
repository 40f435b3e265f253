// Message ids chosen by the backend: a UUIDv7 in hex, as imclient's `new_message_id`, so a
// retried send carries the same id and clients show the message once.

/**
 * A fresh message id (UUIDv7, 32 lowercase hex digits): take one per logical message and pass
 * it as `message_id` on every attempt. Ids sort by creation time.
 *
 * @example
 * ```ts
 * const message_id = newMessageId();
 * await im.send({ sender: 'bob', receivers: ['alice'], payload: 'hi', message_id });
 * ```
 */
export function newMessageId(): string {
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues !== undefined) {
    globalThis.crypto.getRandomValues(bytes);
  } else {
    // Node 18 has no global Web Crypto; ids need to be unique, not secret.
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[6] = 0x70 | (bytes[6]! & 0x0f);
  bytes[8] = 0x80 | (bytes[8]! & 0x3f);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
