// The package's errors: `ImServerError` for a call the node refused or never answered, and
// `WebhookVerificationError` for a webhook that cannot be trusted.

/** What an `ImServerError` is made from. */
export interface ImServerErrorInit {
  status: number;
  code: string;
  message: string;
  field?: string | undefined;
  retryAfter?: number | undefined;
  cause?: unknown;
}

/**
 * A call the node refused (its error body: `status`, `code`, `message`, `field`), or one that
 * got no answer at all (`status` 0, `code` `unreachable` or `timeout`).
 *
 * `code` is stable and meant for programs (docs/API.md lists them); `message` is for people.
 * `retryAfter` is the node's `Retry-After` in seconds, on 429 and 503.
 *
 * @example
 * ```ts
 * try {
 *   await im.send({ sender: 'system', receivers: [''], payload: 'hi' });
 * } catch (e) {
 *   if (e instanceof ImServerError && e.code === 'invalid_client_id') console.log(e.field); // "receivers[0]"
 * }
 * ```
 */
export class ImServerError extends Error {
  /** HTTP status; 0 when the node did not answer. */
  readonly status: number;
  /** Stable error code, e.g. `invalid_client_id`, `rate_limited`, `unreachable`. */
  readonly code: string;
  /** The request field at fault, e.g. `receivers[2]`, when one is. */
  readonly field: string | undefined;
  /** Seconds to wait before retrying, from `Retry-After`. */
  readonly retryAfter: number | undefined;

  constructor(init: ImServerErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'ImServerError';
    this.status = init.status;
    this.code = init.code;
    this.field = init.field;
    this.retryAfter = init.retryAfter;
  }

  /**
   * Whether the same call may succeed later: no answer, 429 or 503. A send retried after one
   * of these must carry the same `message_id`, since it may have gone out already.
   *
   * @example
   * ```ts
   * if (e instanceof ImServerError && e.retryable) setTimeout(retry, (e.retryAfter ?? 1) * 1000);
   * ```
   */
  get retryable(): boolean {
    return this.status === 0 || this.status === 429 || this.status === 503;
  }
}

/** Why a webhook was refused. */
export type WebhookVerificationFailure =
  | 'missing_header'
  | 'invalid_timestamp'
  | 'timestamp_too_old'
  | 'timestamp_too_new'
  | 'invalid_signature'
  | 'invalid_body';

/**
 * A webhook that does not verify: answer it 400 (or 401) and do not act on it. The node
 * retries deliveries that are not acknowledged, so a genuine one comes again.
 *
 * @example
 * ```ts
 * try {
 *   await verifyWebhook(secret, req.headers, body);
 * } catch (e) {
 *   if (e instanceof WebhookVerificationError) return res.writeHead(400).end(e.code);
 *   throw e;
 * }
 * ```
 */
export class WebhookVerificationError extends Error {
  /** Which check failed. */
  readonly code: WebhookVerificationFailure;

  constructor(code: WebhookVerificationFailure, message: string) {
    super(message);
    this.name = 'WebhookVerificationError';
    this.code = code;
  }
}
