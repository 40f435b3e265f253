// The API's requests and answers, field for field as docs/API.md names them (snake_case, as on
// the wire), and the presence events of webhooks and the pull route.

/** Any JSON value: payloads and `meta` are passed through untouched. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** `connect_url` parameters. */
export interface ConnectUrlParams {
  client: string;
  /** Echoed in the client's online/offline events. */
  meta?: Json;
}

/** `connect_url` answer: the URL for the browser, its home node, the token's expiry. */
export interface ConnectUrlResult {
  /** `ws://…/ws?token=…`; add `&since=<epoch>:<seq>` to resume (docs/PROTOCOL.md). */
  url: string;
  node: string;
  /** Seconds since the Unix epoch; tokens live 60 seconds and open one socket. */
  expires_at: number;
}

/** `send` parameters: a private message to every connection of each receiver. */
export interface SendParams {
  sender: string;
  receivers: string[];
  payload: Json;
  /** Push the sender one receipt per receiver. */
  receipt?: boolean;
  /** Your own id (see `newMessageId`), reused on every retry of one message. */
  message_id?: string;
}

/** One home node's part of a `send`. */
export interface SendNodeReport {
  node: string;
  receivers: string[];
  /** Whether a running node took it. */
  taken: boolean;
}

/** `send` answer. */
export interface SendResult {
  message_id: string;
  nodes: SendNodeReport[];
  /** Receivers whose home node was not running. */
  unreachable: string[];
}

/** `send_chan` parameters: to every online member of the channel. */
export interface SendChanParams {
  sender: string;
  chan: string;
  payload: Json;
  exclude_sender?: boolean;
  message_id?: string;
}

/** `send_chan` and `broadcast` answer. */
export interface FanOutResult {
  message_id: string;
  /** How many nodes took it. */
  nodes: number;
}

/** `broadcast` parameters: to every online client of every node. */
export interface BroadcastParams {
  sender: string;
  payload: Json;
  message_id?: string;
}

/** `join` and `leave` parameters: one client, or many. */
export type MembershipParams = { chan: string; client: string } | { chan: string; clients: string[] };

/** `join` and `leave` answer. */
export interface MembershipResult {
  chan: string;
  /** How many clients the call covered. */
  clients: number;
}

/** `chan_members` parameters. */
export interface ChanMembersParams {
  chan: string;
  /** The previous page's `cursor`; absent for the first page. */
  cursor?: string | null;
}

/** `chan_members` answer: one page; `cursor` is null after the last. */
export interface ChanMembersResult {
  members: string[];
  cursor: string | null;
}

/** Parameters naming one channel. */
export interface ChanParams {
  chan: string;
}

/** Parameters naming one client. */
export interface ClientParams {
  client: string;
}

/** A channel with its member counts, in `chans`. */
export interface ChanSummary {
  chan: string;
  members: number;
  online: number;
}

/** `online` parameters. */
export interface OnlineParams {
  /** The last id of the previous page. */
  cursor?: string | null;
  /** 1 to 10,000; 1,000 by default. */
  limit?: number;
}

/** `online` answer: online clients in id order; `cursor` is null after the last page. */
export interface OnlineResult {
  clients: string[];
  cursor: string | null;
}

/** An online or offline event, in a webhook or from `events`. */
export interface PresenceEvent {
  /** The event's stream id: the de-duplication key (delivery is at least once). */
  id: string;
  kind: 'online' | 'offline';
  client: string;
  node: string;
  /** The `meta` of the client's token; absent when it had none. */
  meta?: Json;
  /** Milliseconds since the Unix epoch. */
  at: number;
  /** The client's connections on its node after the change. */
  conns: number;
}

/** `events` parameters (the pull route). */
export interface EventsParams {
  /**
   * The previous answer's `last_id` (or an event's `id`); `"0-0"` for every event still in
   * the stream; null or absent for events from now on.
   */
  after?: string | null;
  /** 1 to 1,000; 100 by default. */
  limit?: number;
  /** How long to wait for a first event when none is there: 0 (the default) to 30,000 ms. */
  wait_ms?: number;
}

/** `events` answer. */
export interface EventsResult {
  events: PresenceEvent[];
  /** The last event's id, or where the read started when there was none: the next `after`. */
  last_id: string | null;
}

/** A webhook's body. */
export interface PresenceWebhook {
  type: 'presence';
  events: PresenceEvent[];
}

/** Every API method: its parameters and its answer. */
export interface Methods {
  connect_url: [ConnectUrlParams, ConnectUrlResult];
  send: [SendParams, SendResult];
  send_chan: [SendChanParams, FanOutResult];
  broadcast: [BroadcastParams, FanOutResult];
  join: [MembershipParams, MembershipResult];
  leave: [MembershipParams, MembershipResult];
  chan_members: [ChanMembersParams, ChanMembersResult];
  chan_member_count: [ChanParams, { members: number }];
  chan_online: [ChanParams, { online: number }];
  client_chans: [ClientParams, { chans: string[] }];
  chans: [Record<string, never>, { chans: ChanSummary[] }];
  delete_chan: [ChanParams, { members: number }];
  has_online: [ClientParams, { online: boolean }];
  online: [OnlineParams, OnlineResult];
  online_count: [Record<string, never>, { count: number }];
  kick: [ClientParams, { taken: boolean }];
  nodes: [Record<string, never>, { nodes: string[] }];
  events: [EventsParams, EventsResult];
}

/** A method's name in `POST /api/v1/<method>`. */
export type MethodName = keyof Methods;

/** Methods a batch may hold: all but the long-polling `events`. */
export type BatchMethod = Exclude<MethodName, 'events'>;

/** One call of a batch. */
export type BatchItem = { [M in BatchMethod]: { method: M; params: Methods[M][0] } }[BatchMethod];

/** A batch item's refusal: the node's error body with the item's status. */
export interface BatchErrorReply {
  status: number;
  /** `not_attempted` after an earlier item found Redis unavailable. */
  error: string;
  message: string;
  /** Relative to the item's `params`. */
  field?: string;
}

/** One batch item's reply: `'result' in reply` tells an answer (status 200) from a refusal. */
export type BatchReply<R> = { status: 200; result: R } | BatchErrorReply;

/** The answer type of a batch item. */
export type ResultOf<I> = I extends { method: infer M extends BatchMethod } ? Methods[M][1] : never;

/** A batch's answer: one reply per item, in order, each typed by its item's method. */
export interface BatchResult<T extends readonly BatchItem[]> {
  replies: { -readonly [K in keyof T]: BatchReply<ResultOf<T[K]>> };
  /** Seconds from `Retry-After`, present when items were not attempted. */
  retryAfter?: number;
}
