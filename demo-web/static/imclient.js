/*
 * imclient.js: the browser side of imserver. No dependencies; include it with a script tag
 * and use `new ImConnection({ getUrl })`.
 *
 * - Connection state machine: disconnected -> connecting -> connected -> reconnecting ... ->
 *   connected again, or failed; closed when stopped by the page or told not to reconnect
 *   (close codes 1008, 1009, 4002). Every change fires a "state" event with
 *   { state, previous, reason }.
 * - Reconnect with exponential backoff and jitter (`backoffBaseMs` doubling up to
 *   `backoffMaxMs`). Each attempt asks `getUrl()` for a fresh connect URL, because connect
 *   tokens are single use. Close code 4003 (moved) reconnects at once, without backoff (at
 *   most once a second; more often falls back to the backoff).
 * - "failed" is not a dead end. After `maxAttempts` failures in a row the state becomes
 *   "failed" so the page can say so, but the client keeps trying in the background every
 *   `failedRetryMs` (with jitter), and comes back to "connected" by itself when an attempt
 *   works: a tab left open through a long outage recovers without a click. `retry()` starts
 *   over at once (fresh backoff); it is also called by itself when the page becomes visible
 *   again (`visibilitychange`) or the browser comes back `online`, in "failed" and while
 *   waiting out a backoff in "reconnecting" (pass `watchPage: false` to opt out).
 * - Connect timeout: a socket that is not welcomed within `timeoutMs` is dropped and retried.
 * - Heartbeat: sends {"type":"ping"} every `heartbeatMs`; if nothing at all arrives within
 *   `timeoutMs` of the first ping left unanswered, the connection is presumed dead (the browser
 *   may not notice for minutes) and replaced. Counting from the ping, not from the last frame,
 *   keeps a background tab (whose timers the browser slows to once a minute) from dropping a
 *   healthy connection.
 * - Resume (docs/PROTOCOL.md, `since`). The client keeps the `epoch` of the last welcome and
 *   `lastSeq`, the seq of the last envelope it handed to the page, across reconnects. Every
 *   reconnect appends `&since=<epoch>:<lastSeq>` to the URL from getUrl(). The welcome that
 *   answers it says `recovered`:
 *     - true: the node replays the envelopes after lastSeq (original ids and seq), then live
 *       ones; the page missed nothing.
 *     - false (`reason`: "epoch_changed", "too_old" or "unknown"): nothing is replayed; the
 *       client starts over from the welcome's `seq` in its new `epoch`, and the page must
 *       reload what it derives from pushes (history, online list...).
 *   After such a welcome the client fires "recovery" with { recovered, reason } (before the
 *   "connected" state event). A first connection (no `since` sent) fires no "recovery" and
 *   takes lastSeq = welcome.seq. A welcome without `recovered` (an older node) counts as
 *   { recovered: false, reason: "unknown" }.
 * - Exactly once, in order. Within an epoch, an envelope with seq <= lastSeq is dropped (seen
 *   already); one with seq > lastSeq + 1 reveals a gap: it is not handed over; the client
 *   closes the socket and reconnects at once with since=<epoch>:<lastSeq> so the node replays
 *   the missing ones (if the node cannot, "recovery" says recovered: false). On top of that,
 *   envelopes are de-duplicated by message id (the last `dedupSize` ids, kept across
 *   reconnects and epochs).
 * - "missed" ({ reason }): the node says pushes meant for this client may never have reached
 *   it (it lost its Redis subscription for a while); the page reloads, as after
 *   recovered: false. The connection stays up.
 * - Events for the page: "message", "channel", "broadcast", "receipt", "presence" (a broadcast
 *   whose payload.kind is "presence"), "event", "welcome", "recovery", "missed", "state". For envelope
 *   events `event.detail` is the envelope (see docs/PROTOCOL.md); for "welcome" the welcome
 *   payload.
 */
(function (global) {
  'use strict';

  // Close codes after which reconnecting cannot help (docs/PROTOCOL.md).
  const NO_RECONNECT = { 1008: 'protocol violation', 1009: 'frame too large', 4002: 'disconnected by the application' };
  // Close code telling the client to reconnect at once (to its new home node).
  const MOVED = 4003;

  class ImConnection extends EventTarget {
    constructor(options) {
      super();
      if (!options || typeof options.getUrl !== 'function') throw new Error('ImConnection needs { getUrl: async () => url }');
      this.options = Object.assign({
        heartbeatMs: 10000,
        timeoutMs: 25000,
        maxAttempts: 12,
        backoffBaseMs: 300,
        backoffMaxMs: 10000,
        failedRetryMs: 30000,
        dedupSize: 2000,
        watchPage: true,
      }, options);
      this.state = 'disconnected';
      this.ws = null;
      this.inFlight = false; // an attempt (getUrl or an unwelcomed socket) is under way
      this.gen = 0; // attempt generation: a stale getUrl() answer is ignored
      this.attempt = 0;
      this.timer = null;
      this.heartbeat = null;
      this.lastHeard = 0;
      this.lastFast = 0;
      this.probeAt = null; // when the first ping not answered yet went out
      this.epoch = null;
      this.lastSeq = 0;
      this.since = null; // the `since` the current socket was opened with
      this.welcomed = false;
      this.seen = new Set();
      this.seenOrder = [];
      this._wake = () => {
        if (typeof document !== 'undefined' && document.visibilityState === 'hidden') return;
        if (this.state === 'failed' || (this.state === 'reconnecting' && !this.inFlight)) this.retry();
      };
      if (this.options.watchPage && typeof window !== 'undefined' && window.addEventListener) {
        window.addEventListener('online', this._wake);
        if (typeof document !== 'undefined') document.addEventListener('visibilitychange', this._wake);
      }
    }

    /** Connects, unless already connected or connecting. */
    start() {
      if (this.state === 'connected' || this.state === 'connecting' || this.state === 'reconnecting') return;
      if (this.state === 'failed') { this.retry(); return; }
      this.attempt = 0;
      this._connect();
    }

    /**
     * Tries again now with a fresh backoff: from "failed", or to cut short a backoff wait in
     * "reconnecting", or after "closed". Does nothing while connected or while an attempt is
     * under way.
     */
    retry() {
      if (this.state === 'connected' || this.state === 'connecting') return;
      this.attempt = 0;
      this._setState('reconnecting', 'retry');
      if (this.inFlight) return; // the attempt under way goes on; a failure backs off afresh
      this._connect();
    }

    /** Closes for good; no reconnect. */
    close(reason) {
      this._stopTimers();
      this.gen += 1;
      this.inFlight = false;
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.close(1000, 'closed by the page');
      this._setState('closed', reason || 'closed by the page');
    }

    _setState(state, reason) {
      if (state === this.state) return;
      const previous = this.state;
      this.state = state;
      this.dispatchEvent(new CustomEvent('state', { detail: { state, previous, reason: reason || '' } }));
    }

    _stopTimers() {
      clearTimeout(this.timer);
      clearInterval(this.heartbeat);
      this.timer = null;
      this.heartbeat = null;
    }

    async _connect() {
      this._stopTimers();
      const gen = ++this.gen;
      this.inFlight = true;
      // In "failed" the attempts go on in the background; the state says so until one works.
      if (this.state !== 'failed') {
        this._setState(this.attempt === 0 && this.epoch === null && this.state !== 'reconnecting' ? 'connecting' : 'reconnecting');
      }
      let url;
      try {
        url = await this.options.getUrl();
      } catch (e) {
        if (gen === this.gen) this._retry('cannot get a connect URL: ' + e);
        return;
      }
      if (gen !== this.gen || this.state === 'closed') return;
      const since = this.epoch !== null ? this.epoch + ':' + this.lastSeq : null;
      if (since !== null) url += (url.includes('?') ? '&' : '?') + 'since=' + encodeURIComponent(since);
      let ws;
      try {
        ws = new WebSocket(url);
      } catch (e) {
        this._retry('cannot open the socket: ' + e);
        return;
      }
      this.ws = ws;
      this.since = since;
      this.welcomed = false;
      this.lastHeard = Date.now();
      ws.onmessage = (ev) => { if (this.ws === ws) this._receive(ev.data); };
      ws.onclose = (ev) => { if (this.ws === ws) this._closed(ev.code, ev.reason); };
      ws.onerror = () => {};
      // A socket that neither opens nor fails (a black-holed connection) is given up on.
      this.timer = setTimeout(() => {
        if (this.ws !== ws || this.welcomed) return;
        this._drop('no welcome within ' + this.options.timeoutMs + ' ms');
        this._retry('connect timeout');
      }, this.options.timeoutMs);
    }

    /** Forgets the current socket (its late events are ignored) and closes it. */
    _drop(reason) {
      const ws = this.ws;
      this.ws = null;
      this.welcomed = false;
      if (ws) { try { ws.close(1000, reason.slice(0, 120)); } catch (e) { /* already closing */ } }
    }

    _closed(code, reason) {
      this.ws = null;
      this.welcomed = false;
      this._stopTimers();
      if (NO_RECONNECT[code]) {
        this.inFlight = false;
        this._setState('closed', NO_RECONNECT[code]);
        return;
      }
      this._retry('connection closed (' + code + (reason ? ': ' + reason : '') + ')', code === MOVED);
    }

    /** Schedules the next attempt. `fast`: at once (moved, sequence gap), at most once a second. */
    _retry(reason, fast) {
      this._stopTimers();
      this.inFlight = false;
      if (this.state === 'closed') return;
      if (this.state === 'failed') {
        this._later(this.options.failedRetryMs);
        return;
      }
      if (fast && Date.now() - this.lastFast > 1000) {
        this.lastFast = Date.now();
        this._setState('reconnecting', reason);
        this.timer = setTimeout(() => this._connect(), 0);
        return;
      }
      this.attempt += 1;
      if (this.attempt > this.options.maxAttempts) {
        this._setState('failed', reason);
        this._later(this.options.failedRetryMs);
        return;
      }
      this._setState('reconnecting', reason);
      this._later(Math.min(this.options.backoffMaxMs, this.options.backoffBaseMs * Math.pow(2, this.attempt - 1)));
    }

    /** Next attempt after between half of `ms` and `ms` (jitter spreads a crowd of clients). */
    _later(ms) {
      this.timer = setTimeout(() => this._connect(), ms / 2 + Math.random() * ms / 2);
    }

    _beat() {
      if (!this.ws) return;
      const now = Date.now();
      // Judged from the first ping that got no answer, not from the last thing heard: a hidden
      // tab's timers may fire only once a minute, and a quiet but healthy connection must not
      // look dead then.
      if (this.probeAt !== null && this.lastHeard < this.probeAt) {
        if (now - this.probeAt > this.options.timeoutMs) {
          // The node went silent: presume the connection dead and replace it.
          this._drop('heartbeat timeout');
          this._retry('heartbeat timeout');
          return;
        }
      } else {
        this.probeAt = now;
      }
      try { this.ws.send('{"type":"ping"}'); } catch (e) { /* onclose follows */ }
    }

    _welcome(p) {
      const since = this.since;
      this.since = null;
      this._stopTimers();
      this.welcomed = true;
      this.inFlight = false;
      let recovery = null;
      if (since !== null) {
        const recovered = p.recovered === true;
        recovery = { recovered, reason: recovered ? '' : String(p.reason || 'unknown') };
      }
      if (recovery && recovery.recovered) {
        // The node replays what came after lastSeq: carry on from there.
        if (typeof p.epoch === 'string') this.epoch = p.epoch;
      } else {
        // A new sequence stream (first connection, or the node could not resume).
        this.epoch = typeof p.epoch === 'string' ? p.epoch : null;
        this.lastSeq = typeof p.seq === 'number' ? p.seq : 0;
      }
      this.attempt = 0;
      this.probeAt = null;
      this.heartbeat = setInterval(() => this._beat(), this.options.heartbeatMs);
      this.dispatchEvent(new CustomEvent('welcome', { detail: p }));
      if (recovery) this.dispatchEvent(new CustomEvent('recovery', { detail: recovery }));
      this._setState('connected');
    }

    _receive(text) {
      this.lastHeard = Date.now();
      let env;
      try { env = JSON.parse(text); } catch (e) { return; }
      if (env.type === 'system') {
        const p = env.payload || {};
        if (p.event === 'welcome') this._welcome(p);
        // The node lost its Redis subscription for a while: pushes may have gone to no one.
        if (p.event === 'missed') this.dispatchEvent(new CustomEvent('missed', { detail: { reason: String(p.reason || 'unknown') } }));
        return;
      }
      if (!this.welcomed) return;
      if (typeof env.seq === 'number') {
        if (env.seq <= this.lastSeq) return; // handed over already (a replay overlapping)
        if (env.seq > this.lastSeq + 1) {
          // Something in between never reached us: resume from lastSeq on a new socket.
          const reason = 'sequence gap: expected ' + (this.lastSeq + 1) + ', got ' + env.seq;
          this._drop(reason);
          this._retry(reason, true);
          return;
        }
        this.lastSeq = env.seq;
      }
      if (env.id) {
        if (this.seen.has(env.id)) return;
        this.seen.add(env.id);
        this.seenOrder.push(env.id);
        if (this.seenOrder.length > this.options.dedupSize) this.seen.delete(this.seenOrder.shift());
      }
      let kind = env.type;
      if (kind === 'broadcast' && env.payload && env.payload.kind === 'presence') kind = 'presence';
      this.dispatchEvent(new CustomEvent(kind, { detail: env }));
    }
  }

  global.ImConnection = ImConnection;
})(typeof window !== 'undefined' ? window : globalThis);
