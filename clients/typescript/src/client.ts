// `ImServerClient`: one method per API method of a node's HTTP API (docs/API.md), over the
// runtime's global `fetch`, each answer typed and each refusal an `ImServerError`.

import { ImServerError } from './errors.js';
import type {
  BatchItem,
  BatchResult,
  BroadcastParams,
  ChanMembersParams,
  ChanParams,
  ClientParams,
  ConnectUrlParams,
  EventsParams,
  MembershipParams,
  MethodName,
  Methods,
  OnlineParams,
  SendChanParams,
  SendParams,
} from './types.js';

/** Longest wait for one answer when the options do not say, in milliseconds. */
const DEFAULT_TIMEOUT_MS = 10_000;
/** Time an `events` call is given beyond its own `wait_ms`, in milliseconds. */
const EVENTS_GRACE_MS = 5_000;

/** How to reach a node's API. */
export interface ImServerClientOptions {
  /** The API listener's base URL (`--api-listen`), e.g. `http://10.0.0.5:7001`. */
  url: string;
  /** One of the node's `--api-key` values; only a `--dev` node takes calls without one. */
  apiKey?: string;
  /** Longest wait for one answer, in milliseconds (10,000 by default). */
  timeoutMs?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
}

/**
 * A typed client of one node's HTTP API. Any node serves the whole cluster.
 *
 * @example
 * ```ts
 * import { ImServerClient } from 'imserver-client';
 * const im = new ImServerClient({ url: 'http://10.0.0.5:7001', apiKey: process.env.IM_API_KEY });
 * const { url } = await im.connectUrl({ client: 'alice', meta: { name: 'Alice' } });
 * await im.send({ sender: 'system', receivers: ['alice'], payload: { text: 'hi' } });
 * ```
 */
export class ImServerClient {
  readonly #base: string;
  readonly #headers: Record<string, string>;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;

  constructor(options: ImServerClientOptions) {
    this.#base = options.url.replace(/\/+$/, '');
    this.#headers = { 'content-type': 'application/json' };
    if (options.apiKey !== undefined) this.#headers.authorization = `Bearer ${options.apiKey}`;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (options.fetch === undefined && typeof globalThis.fetch !== 'function') {
      throw new TypeError('this runtime has no global fetch: use Node 18 or later, or pass options.fetch');
    }
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /**
   * Calls `method` with `params` and returns its answer: what every other method does, by name.
   *
   * @example
   * ```ts
   * const { count } = await im.call('online_count', {});
   * ```
   */
  async call<M extends MethodName>(method: M, params: Methods[M][0], timeoutMs?: number): Promise<Methods[M][1]> {
    const { body } = await this.#post(method, params, timeoutMs ?? this.#timeoutMs);
    return body as Methods[M][1];
  }

  /**
   * A connect URL for the client's browser, signed by the node (`prev_connect_server`).
   *
   * @example
   * ```ts
   * const { url, expires_at } = await im.connectUrl({ client: 'alice', meta: { name: 'Alice' } });
   * ```
   */
  connectUrl(params: ConnectUrlParams) {
    return this.call('connect_url', params);
  }

  /**
   * A private message to every connection of each receiver.
   *
   * @example
   * ```ts
   * const id = newMessageId(); // reuse it if you retry
   * const r = await im.send({ sender: 'bob', receivers: ['alice'], payload: { text: 'hi' }, message_id: id });
   * ```
   */
  send(params: SendParams) {
    return this.call('send', params);
  }

  /**
   * A message to every online member of a channel.
   *
   * @example
   * ```ts
   * await im.sendChan({ sender: 'alice', chan: 'room:lobby', payload: { text: 'hi all' } });
   * ```
   */
  sendChan(params: SendChanParams) {
    return this.call('send_chan', params);
  }

  /**
   * A message to every online client of every node.
   *
   * @example
   * ```ts
   * await im.broadcast({ sender: 'system', payload: 'maintenance at 22:00' });
   * ```
   */
  broadcast(params: BroadcastParams) {
    return this.call('broadcast', params);
  }

  /**
   * Durable membership, online or not; returns once online members' nodes have the channel.
   *
   * @example
   * ```ts
   * await im.join({ chan: 'room:lobby', clients: ['alice', 'bob'] });
   * ```
   */
  join(params: MembershipParams) {
    return this.call('join', params);
  }

  /**
   * Ends membership; idempotent, so a failed call can be repeated whole.
   *
   * @example
   * ```ts
   * await im.leave({ chan: 'room:lobby', client: 'bob' });
   * ```
   */
  leave(params: MembershipParams) {
    return this.call('leave', params);
  }

  /**
   * One page of a channel's members; see `chanMembersAll` for every page.
   *
   * @example
   * ```ts
   * const { members, cursor } = await im.chanMembers({ chan: 'room:lobby' });
   * ```
   */
  chanMembers(params: ChanMembersParams) {
    return this.call('chan_members', params);
  }

  /**
   * Every member of a channel, page after page (a member may show twice while the set
   * changes).
   *
   * @example
   * ```ts
   * for await (const member of im.chanMembersAll('room:lobby')) console.log(member);
   * ```
   */
  async *chanMembersAll(chan: string): AsyncGenerator<string> {
    let cursor: string | null = null;
    do {
      const page: Methods['chan_members'][1] = await this.chanMembers({ chan, cursor });
      yield* page.members;
      cursor = page.cursor;
    } while (cursor !== null);
  }

  /**
   * How many members a channel has, online or not.
   *
   * @example
   * ```ts
   * const { members } = await im.chanMemberCount({ chan: 'room:lobby' });
   * ```
   */
  chanMemberCount(params: ChanParams) {
    return this.call('chan_member_count', params);
  }

  /**
   * How many of a channel's members are online.
   *
   * @example
   * ```ts
   * const { online } = await im.chanOnline({ chan: 'room:lobby' });
   * ```
   */
  chanOnline(params: ChanParams) {
    return this.call('chan_online', params);
  }

  /**
   * A client's channels, sorted.
   *
   * @example
   * ```ts
   * const { chans } = await im.clientChans({ client: 'alice' });
   * ```
   */
  clientChans(params: ClientParams) {
    return this.call('client_chans', params);
  }

  /**
   * Every channel with members, sorted, with its counts.
   *
   * @example
   * ```ts
   * for (const { chan, members, online } of (await im.chans()).chans) console.log(chan, members, online);
   * ```
   */
  chans() {
    return this.call('chans', {});
  }

  /**
   * Deletes a channel; answers how many members it had.
   *
   * @example
   * ```ts
   * const { members } = await im.deleteChan({ chan: 'room:old' });
   * ```
   */
  deleteChan(params: ChanParams) {
    return this.call('delete_chan', params);
  }

  /**
   * Whether a client has a connection open.
   *
   * @example
   * ```ts
   * const { online } = await im.hasOnline({ client: 'alice' });
   * ```
   */
  hasOnline(params: ClientParams) {
    return this.call('has_online', params);
  }

  /**
   * One page of online clients in id order; see `onlineAll` for every page.
   *
   * @example
   * ```ts
   * const { clients, cursor } = await im.online({ limit: 100 });
   * ```
   */
  online(params: OnlineParams = {}) {
    return this.call('online', params);
  }

  /**
   * Every online client, page after page.
   *
   * @example
   * ```ts
   * for await (const client of im.onlineAll()) console.log(client);
   * ```
   */
  async *onlineAll(limit?: number): AsyncGenerator<string> {
    let cursor: string | null = null;
    do {
      const params: OnlineParams = limit === undefined ? { cursor } : { cursor, limit };
      const page: Methods['online'][1] = await this.online(params);
      yield* page.clients;
      cursor = page.cursor;
    } while (cursor !== null);
  }

  /**
   * How many clients are online.
   *
   * @example
   * ```ts
   * const { count } = await im.onlineCount();
   * ```
   */
  onlineCount() {
    return this.call('online_count', {});
  }

  /**
   * Closes every connection of a client with 4002 (do not reconnect); `taken` says whether
   * its home node was running.
   *
   * @example
   * ```ts
   * const { taken } = await im.kick({ client: 'mallory' });
   * ```
   */
  kick(params: ClientParams) {
    return this.call('kick', params);
  }

  /**
   * The configured nodes that hold their lease.
   *
   * @example
   * ```ts
   * const { nodes } = await im.nodes();
   * ```
   */
  nodes() {
    return this.call('nodes', {});
  }

  /**
   * Presence events after `after`, waiting up to `wait_ms` for a first one (the pull route,
   * an alternative to webhooks). Pass each answer's `last_id` as the next `after`.
   *
   * @example
   * ```ts
   * let after: string | null = null;
   * for (;;) {
   *   const { events, last_id } = await im.events({ after, wait_ms: 25_000 });
   *   for (const e of events) console.log(e.kind, e.client);
   *   after = last_id;
   * }
   * ```
   */
  events(params: EventsParams = {}) {
    const waitMs = params.wait_ms ?? 0;
    return this.call('events', params, Math.max(this.#timeoutMs, waitMs + EVENTS_GRACE_MS));
  }

  /**
   * Many calls in one request, made in order; one reply per item, typed by its method. A bad
   * item does not stop the others; after one finds Redis unavailable the rest answer
   * `not_attempted`. Retry exactly the items not answered 200 (sends with their `message_id`).
   *
   * @example
   * ```ts
   * const { replies } = await im.batch([
   *   { method: 'join', params: { chan: 'room:1', clients: ['bob', 'carol'] } },
   *   { method: 'send_chan', params: { sender: 'bob', chan: 'room:1', payload: 'hi' } },
   * ]);
   * const sent = replies[1];
   * if ('result' in sent) console.log(sent.result.nodes); // else sent.error, sent.field
   * ```
   */
  async batch<const T extends readonly BatchItem[]>(requests: T): Promise<BatchResult<T>> {
    const { body, retryAfter } = await this.#post('batch', { requests }, this.#timeoutMs);
    const result = body as BatchResult<T>;
    if (retryAfter !== undefined) result.retryAfter = retryAfter;
    return result;
  }

  async #post(method: string, params: unknown, timeoutMs: number): Promise<{ body: unknown; retryAfter: number | undefined }> {
    let response: Response;
    let text: string;
    try {
      response = await this.#fetch(`${this.#base}/api/v1/${method}`, {
        method: 'POST',
        headers: this.#headers,
        body: JSON.stringify(params),
        signal: AbortSignal.timeout(timeoutMs),
      });
      text = await response.text();
    } catch (cause) {
      const timedOut = cause instanceof Error && cause.name === 'TimeoutError';
      throw new ImServerError({
        status: 0,
        code: timedOut ? 'timeout' : 'unreachable',
        message: timedOut
          ? `${method}: no answer from ${this.#base} within ${timeoutMs} ms; a send may still have gone out, so retry it with the same message_id`
          : `${method}: cannot reach ${this.#base} (${String(cause)}); check the URL is the node's --api-listen address`,
        cause,
      });
    }
    const retryAfter = parseRetryAfter(response.headers.get('retry-after'));
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (response.ok && body !== undefined) return { body, retryAfter };
    const refusal = (body ?? {}) as { error?: unknown; message?: unknown; field?: unknown };
    throw new ImServerError({
      status: response.status,
      code: typeof refusal.error === 'string' ? refusal.error : 'unexpected_answer',
      message:
        typeof refusal.message === 'string'
          ? refusal.message
          : `${method}: HTTP ${response.status} without the node's error body (is a proxy in the way?): ${text.slice(0, 200)}`,
      field: typeof refusal.field === 'string' ? refusal.field : undefined,
      retryAfter,
    });
  }
}

/** `Retry-After` in seconds: a number of seconds, or an HTTP date. */
function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  const secs = Number(value);
  if (Number.isFinite(secs) && value.trim() !== '') return Math.max(0, secs);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}
