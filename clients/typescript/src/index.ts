// imserver-client: a typed client of an imserver node's HTTP API (docs/API.md) and the
// verification of its presence webhooks.

export { ImServerClient } from './client.js';
export type { ImServerClientOptions } from './client.js';
export { ImServerError, WebhookVerificationError } from './errors.js';
export type { ImServerErrorInit, WebhookVerificationFailure } from './errors.js';
export { newMessageId } from './message_id.js';
export { verifyWebhook } from './webhook.js';
export type { VerifyWebhookOptions, WebhookHeaders } from './webhook.js';
export type * from './types.js';
