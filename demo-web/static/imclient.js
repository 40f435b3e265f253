/*
 * imclient.js: the browser side of imserver. No dependencies; include it with a script tag
 * and use `new ImConnection({ getUrl })`.
 *
 * - Connection state machine: disconnected -> connecting -> connected -> reconnecting ... ->
 *   failed (gave up) or closed (stopped by the page, or told not to reconnect). Every change
 *   fires a "state" event with { state, previous, reason }.
 * - Reconnect with exponential backoff and jitter. Each attempt asks `getUrl()` for a fresh
 *   connect URL, because connect tokens are single use. After `maxAttempts` failures in a row
 *   the state becomes "failed".
 * - Heartbeat: sends {"type":"ping"} every `heartbeatMs`; if nothing at all arrives for
 *   `timeoutMs`, the connection is presumed dead (the browser may not notice for minutes) and
 *   replaced.
 * - De-duplication by message id (the last `dedupSize` ids) and delivery in sequence order:
 *   an envelope whose seq is not above the last one seen on this node run is dropped.
 * - Events for the page: "message", "channel", "broadcast", "receipt", "presence" (a broadcast
 *   whose payload.kind is "presence"), "event", "welcome", "state". `event.detail` is the
 *   envelope (see docs/PROTOCOL.md).
 */
(function (global) {
  'use strict';

  // Close codes after which reconnecting cannot help (docs/PROTOCOL.md).
  const NO_RECONNECT = { 1008: 'protocol violation', 1009: 'frame too large', 4002: 'disconnected by the application' };

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
        dedupSize: 2000,
      }, options);
      this.state = 'disconnected';
      this.ws = null;
      this.attempt = 0;
      this.timer = null;
      this.heartbeat = null;
      this.lastHeard = 0;
      this.epoch = null;
      this.lastSeq = 0;
      this.seen = new Set();
      this.seenOrder = [];
    }

    /** Connects, unless already connected or connecting. */
    start() {
      if (this.state === 'connected' || this.state === 'connecting' || this.state === 'reconnecting') return;
      this.attempt = 0;
      this._connect();
    }

    /** Closes for good; no reconnect. */
    close(reason) {
      this._stopTimers();
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
      this._setState(this.attempt === 0 && this.state !== 'reconnecting' ? 'connecting' : 'reconnecting');
      let url;
      try {
        url = await this.options.getUrl();
      } catch (e) {
        this._retry('cannot get a connect URL: ' + e);
        return;
      }
      if (this.state === 'closed') return;
      let ws;
      try {
        ws = new WebSocket(url);
      } catch (e) {
        this._retry('cannot open the socket: ' + e);
        return;
      }
      this.ws = ws;
      this.lastHeard = Date.now();
      ws.onmessage = (ev) => { if (this.ws === ws) this._receive(ev.data); };
      ws.onclose = (ev) => { if (this.ws === ws) this._closed(ev.code, ev.reason); };
      ws.onerror = () => {};
    }

    _closed(code, reason) {
      this.ws = null;
      this._stopTimers();
      if (NO_RECONNECT[code]) {
        this._setState('closed', NO_RECONNECT[code]);
        return;
      }
      this._retry('connection closed (' + code + (reason ? ': ' + reason : '') + ')');
    }

    _retry(reason) {
      this._stopTimers();
      if (this.state === 'closed') return;
      this.attempt += 1;
      if (this.attempt > this.options.maxAttempts) {
        this._setState('failed', reason);
        return;
      }
      this._setState('reconnecting', reason);
      const exp = Math.min(this.options.backoffMaxMs, this.options.backoffBaseMs * Math.pow(2, this.attempt - 1));
      const delay = exp / 2 + Math.random() * exp / 2;
      this.timer = setTimeout(() => this._connect(), delay);
    }

    _beat() {
      if (!this.ws) return;
      if (Date.now() - this.lastHeard > this.options.timeoutMs) {
        // The node went silent: presume the connection dead and replace it.
        const ws = this.ws;
        this.ws = null;
        try { ws.close(); } catch (e) { /* already closing */ }
        this._retry('heartbeat timeout');
        return;
      }
      try { this.ws.send('{"type":"ping"}'); } catch (e) { /* onclose follows */ }
    }

    _receive(text) {
      this.lastHeard = Date.now();
      let env;
      try { env = JSON.parse(text); } catch (e) { return; }
      if (env.type === 'system') {
        const p = env.payload || {};
        if (p.event === 'welcome') {
          // Sequence numbers restart with every node run and every fresh session on the node.
          this.epoch = p.epoch;
          this.lastSeq = 0;
          this.attempt = 0;
          this.heartbeat = setInterval(() => this._beat(), this.options.heartbeatMs);
          this._setState('connected');
          this.dispatchEvent(new CustomEvent('welcome', { detail: p }));
        }
        return;
      }
      if (env.id) {
        if (this.seen.has(env.id)) return;
        this.seen.add(env.id);
        this.seenOrder.push(env.id);
        if (this.seenOrder.length > this.options.dedupSize) this.seen.delete(this.seenOrder.shift());
      }
      if (typeof env.seq === 'number') {
        if (env.seq <= this.lastSeq) return;
        this.lastSeq = env.seq;
      }
      let kind = env.type;
      if (kind === 'broadcast' && env.payload && env.payload.kind === 'presence') kind = 'presence';
      this.dispatchEvent(new CustomEvent(kind, { detail: env }));
    }
  }

  global.ImConnection = ImConnection;
})(typeof window !== 'undefined' ? window : globalThis);
