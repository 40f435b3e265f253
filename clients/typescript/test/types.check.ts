// Compile-time checks of the public types (`npm run check`, no output): what a caller writes
// type-checks, and the mistakes the types exist to catch do not.
import { ImServerClient, ImServerError, newMessageId, verifyWebhook } from '../src/index.js';
import type { PresenceEvent } from '../src/index.js';

export async function usage(im: ImServerClient): Promise<void> {
  const { url, expires_at }: { url: string; expires_at: number } = await im.connectUrl({ client: 'alice', meta: { name: 'Alice' } });
  void url;
  void expires_at;
  const sent = await im.send({ sender: 'bob', receivers: ['alice'], payload: { text: 'hi' }, message_id: newMessageId() });
  const taken: boolean | undefined = sent.nodes[0]?.taken;
  void taken;
  const nodes: number = (await im.sendChan({ sender: 'a', chan: 'room:1', payload: 1 })).nodes;
  void nodes;
  await im.join({ chan: 'room:1', clients: ['a', 'b'] });
  // @ts-expect-error: join names a client or clients, not neither.
  await im.join({ chan: 'room:1' });
  // @ts-expect-error: receivers is a list.
  await im.send({ sender: 'bob', receivers: 'alice', payload: 1 });

  const { replies } = await im.batch([
    { method: 'join', params: { chan: 'room:1', clients: ['bob'] } },
    { method: 'send_chan', params: { sender: 'bob', chan: 'room:1', payload: 'hi' } },
    { method: 'has_online', params: { client: 'bob' } },
  ]);
  const [joined, chanSent, online] = replies;
  if ('result' in joined) {
    const n: number = joined.result.clients;
    void n;
  }
  if ('result' in chanSent) {
    const id: string = chanSent.result.message_id;
    void id;
  } else {
    const code: string = chanSent.error;
    void code;
  }
  if ('result' in online) {
    const is: boolean = online.result.online;
    void is;
  }
  // @ts-expect-error: the params must be the method's.
  await im.batch([{ method: 'kick', params: { chan: 'room:1' } }]);

  const { events, last_id } = await im.events({ after: null, wait_ms: 25_000 });
  const kinds: ('online' | 'offline')[] = events.map((e: PresenceEvent) => e.kind);
  void kinds;
  void last_id;

  try {
    await im.kick({ client: 'mallory' });
  } catch (e) {
    if (e instanceof ImServerError && e.retryable) {
      const wait: number | undefined = e.retryAfter;
      void wait;
    }
  }
  const hook = await verifyWebhook(['whsec_a2V5'], new Headers(), new Uint8Array());
  const first: PresenceEvent | undefined = hook.events[0];
  void first;
}
