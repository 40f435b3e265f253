// An example business backend on node:http with imserver-client: it hands browsers connect
// URLs, sends private and room messages through a node's HTTP API, and keeps the presence
// events its webhooks report. Run it next to a node started with --api-listen (and
// --webhook-url http://127.0.0.1:3000/webhook --webhook-secret "$IM_WEBHOOK_SECRETS"):
//
//   IM_API_URL=http://127.0.0.1:7001 IM_API_KEY=… IM_WEBHOOK_SECRETS=whsec_… node examples/backend.mjs
import http from 'node:http';
import { ImServerClient, ImServerError, WebhookVerificationError, verifyWebhook } from 'imserver-client';

const im = new ImServerClient({ url: process.env.IM_API_URL ?? 'http://127.0.0.1:7001', apiKey: process.env.IM_API_KEY });
const webhookSecrets = (process.env.IM_WEBHOOK_SECRETS ?? '').split(',').map((s) => s.trim()).filter(Boolean);
// Keyed by event id: webhooks arrive at least once, so a retried batch must not count twice.
const presence = new Map();

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

const routes = {
  // A real backend takes the user from its session, never from the query.
  'GET /connect': (req, url) => im.connectUrl({ client: url.searchParams.get('user'), meta: { name: url.searchParams.get('user') } }),
  'POST /send': async (req) => {
    const { from, to, text } = JSON.parse(await readBody(req));
    return im.send({ sender: from, receivers: [to], payload: { text } });
  },
  'POST /room': async (req) => {
    const { from, room, text } = JSON.parse(await readBody(req));
    await im.join({ chan: room, client: from });
    return im.sendChan({ sender: from, chan: room, payload: { text } });
  },
  'POST /webhook': async (req) => {
    const hook = await verifyWebhook(webhookSecrets, req.headers, await readBody(req));
    for (const event of hook.events) presence.set(event.id, event);
    return { received: hook.events.length };
  },
  'GET /presence': () => ({ events: [...presence.values()] }),
};

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://backend');
  let status = 200;
  let answer;
  try {
    const route = routes[`${req.method} ${url.pathname}`];
    answer = route ? await route(req, url) : ((status = 404), { error: 'not_found' });
  } catch (e) {
    // The node's 400s are the caller's mistakes; anything else is ours (or the node's) to fix.
    if (e instanceof ImServerError) status = e.status === 400 ? 400 : 502;
    else if (e instanceof WebhookVerificationError || e instanceof SyntaxError) status = 400;
    else status = 500;
    answer = { error: e.code ?? e.name, message: e.message };
  }
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
});

server.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => {
  console.log(JSON.stringify({ event: 'ready', url: `http://127.0.0.1:${server.address().port}` }));
});
