/**
 * Live fan-out with authorization (issue 20): one push of 1000 events to
 * 2,000 subscribed sockets, on a server with `authorize` or `authorizeRead`.
 * Not part of `npm run bench` (it measures this project alone, with no RxDB
 * counterpart); run it from the sources:
 *
 *   npx tsx bench/fanout-authorize.ts [--sockets 2000] [--users 20] [--events 1000] [--variants authorize,authorize-grouped,authorizeRead]
 *
 * The server runs in a child process, so that the 2,000 client sockets
 * decoding their messages in this process do not slow it down; a bystander
 * socket inside the server's process pulls in a loop during the push, so its
 * round trips show how long the server's event loop was held. Half of the
 * documents belong to each of two tenants; a user reads its tenant's only.
 *
 * `authorizeCalls` counts the calls of `authorize` and `authorizeRead` the
 * push and its fan-out made (one per pushed event for the write itself),
 * not the bystander's. `serverPushMs` is the push as the server timed it,
 * fan-out included; `pushAckMs` and `allReceivedMs` are seen from this
 * process, where 2,000 sockets decoding their messages delay the writer's ack.
 *
 * Variants (one JSON line each):
 * - `authorize, 1 socket per user`: every socket a user of its own;
 * - `authorize, N sockets of K users`: the same sockets, K users (userKey names them);
 * - `authorizeRead, 1 socket per user`: the batch read authorizer.
 */
import { fork } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { io, type Socket } from 'socket.io-client';
import { createSyncServer, type SyncServerOptions } from '../src/server/index.js';
import { MESSAGE, PROTOCOL_VERSION, toPushRows, type SyncEvent } from '../src/shared/protocol/index.js';
import { formatHlc } from '../src/shared/hlc.js';

interface User {
  id: string;
  tenant: string;
}
type Variant = 'authorize' | 'authorize-grouped' | 'authorizeRead';

interface ServerReport {
  authorizeCalls: number;
  serverPushMs: number;
  bystander: { pulls: number; p50: number; max: number };
  eventLoopMaxMs: number;
}

const { values } = parseArgs({
  options: {
    sockets: { type: 'string', default: '2000' },
    users: { type: 'string', default: '20' },
    events: { type: 'string', default: '1000' },
    variants: { type: 'string', default: 'authorize,authorize-grouped,authorizeRead' },
    server: { type: 'string' },
  },
});
const SOCKETS = Number(values.sockets);
const USERS = Number(values.users);
const EVENTS = Number(values.events);

const tenantOf = (id: string) => `t${Number(id.slice(1)) % 2}`;
/** The bystander's user: its own pulls' checks are not counted. */
const BYSTANDER = 'b0';

if (values.server) await serve(values.server as Variant);
else await main();

// ---- the server process ---------------------------------------------------------

async function serve(variant: Variant): Promise<void> {
  let authorizeCalls = 0;
  let serverPushMs = 0;
  const options: Partial<SyncServerOptions<User>> = {
    authenticate: (_socket, token) => (token ? { id: token, tenant: tenantOf(token) } : undefined),
  };
  if (variant === 'authorizeRead') {
    // Writes by anyone; reads through the batch authorizer.
    options.authorize = (user, _collection, operation) => {
      if (user.id !== BYSTANDER) authorizeCalls++;
      return operation !== 'read';
    };
    options.authorizeRead = (user, _collection, documents) => {
      if (user.id !== BYSTANDER) authorizeCalls++;
      return documents.map((document) => document.owner === user.tenant);
    };
  } else {
    options.authorize = (user, _collection, operation, document) => {
      if (user.id !== BYSTANDER) authorizeCalls++;
      return operation !== 'read' || document.owner === user.tenant;
    };
    if (variant === 'authorize-grouped') options.userKey = (user) => user.id;
  }
  const httpServer = createServer();
  // No rate limit: the bystander pulls back to back, far above it, whenever the server lets it.
  const server = createSyncServer<User>({ httpServer, logging: { enabled: false }, maxPayloadBytes: 16 * 1024 * 1024, rateLimit: false, ...options });
  await server.start();
  await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  server.events.on('push', ({ durationMs, accepted }) => {
    if (accepted > 1) serverPushMs = durationMs;
  });
  const port = (httpServer.address() as AddressInfo).port;
  const bystander = await connect(`http://127.0.0.1:${port}`, BYSTANDER, 'bystander');

  let running = false;
  const roundTrips: number[] = [];
  const loop = monitorEventLoopDelay({ resolution: 1 });
  const pullLoop = async () => {
    while (running) {
      const started = performance.now();
      await bystander.timeout(60_000).emitWithAck(MESSAGE.pull, { checkpoint: 0, collections: ['todos'], limit: 1 });
      roundTrips.push(performance.now() - started);
    }
  };
  let pulling: Promise<void> = Promise.resolve();
  process.on('message', (message: { type: string }) => {
    if (message.type === 'start') {
      authorizeCalls = 0;
      roundTrips.length = 0;
      running = true;
      loop.reset();
      loop.enable();
      pulling = pullLoop();
      process.send!({ type: 'started' });
    } else if (message.type === 'stop') {
      running = false;
      loop.disable();
      void pulling.then(() => {
        const sorted = [...roundTrips].sort((a, b) => a - b);
        const report: ServerReport = {
          authorizeCalls,
          serverPushMs: round(serverPushMs),
          bystander: { pulls: sorted.length, p50: round(sorted[Math.floor(sorted.length / 2)] ?? 0), max: round(sorted.at(-1) ?? 0) },
          eventLoopMaxMs: round(loop.max / 1e6),
        };
        process.send!({ type: 'report', report });
      });
    } else if (message.type === 'exit') {
      bystander.close();
      void server.stop().then(() => process.exit(0));
    }
  });
  process.send!({ type: 'ready', port });
}

// ---- the client process -----------------------------------------------------------

async function main(): Promise<void> {
  const variants = values.variants.split(',') as Variant[];
  console.error(`${EVENTS}-event push to ${SOCKETS} subscribed sockets (${USERS} users in the grouped variant)`);
  for (const variant of variants) {
    const result = await measure(variant);
    console.log(JSON.stringify(result));
  }
}

async function measure(variant: Variant) {
  const child = fork(process.argv[1]!, ['--server', variant, '--sockets', String(SOCKETS), '--users', String(USERS), '--events', String(EVENTS)], {
    execArgv: process.execArgv,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const next = (type: string) =>
    new Promise<any>((resolve) => {
      const listener = (message: { type: string }) => {
        if (message.type !== type) return;
        child.off('message', listener);
        resolve(message);
      };
      child.on('message', listener);
    });
  const { port } = await next('ready');
  const url = `http://127.0.0.1:${port}`;
  const grouped = variant === 'authorize-grouped';
  const userOf = (i: number) => `u${grouped ? i % USERS : i}`;

  const sockets: Socket[] = [];
  for (let from = 0; from < SOCKETS; from += 200) {
    const batch = await Promise.all(Array.from({ length: Math.min(200, SOCKETS - from) }, (_, k) => connect(url, userOf(from + k), `reader-${from + k}`)));
    sockets.push(...batch);
  }
  await Promise.all(sockets.map((socket) => socket.timeout(60_000).emitWithAck(MESSAGE.subscribe, { collections: ['todos'] })));

  // Every reader sees the documents of its tenant: half of them.
  let received = 0;
  const expected = sockets.reduce((sum, _socket, i) => sum + EVENTS / 2 + (tenantOf(userOf(i)) === 't0' ? EVENTS % 2 : 0), 0);
  let done!: () => void;
  const allReceived = new Promise<void>((resolve) => (done = resolve));
  for (const socket of sockets) {
    socket.on(MESSAGE.live, (message: { events: unknown[] }) => {
      received += message.events.length;
      if (received >= expected) done();
    });
  }

  const writerId = 'writer';
  const writer = await connect(url, 'u0', writerId);
  const now = Date.now();
  const events: SyncEvent[] = Array.from({ length: EVENTS }, (_, i) => ({
    id: `evt-${variant}-${i.toString().padStart(6, '0')}`,
    collection: 'todos',
    documentId: `doc-${i}`,
    op: 'insert',
    data: { id: `doc-${i}`, title: `todo number ${i} with a forty character t`, done: false, owner: `t${i % 2}` },
    baseEventId: null,
    hlc: formatHlc({ millis: now, counter: i, node: writerId }),
  }));

  child.send({ type: 'start' });
  await next('started');
  const started = performance.now();
  const reply = await writer.timeout(600_000).emitWithAck(MESSAGE.push, toPushRows(events, writerId));
  const pushAckMs = performance.now() - started;
  if (!reply.ok) throw new Error(`push refused: ${JSON.stringify(reply.error)}`);
  await allReceived;
  const fanoutMs = performance.now() - started;
  child.send({ type: 'stop' });
  const { report } = (await next('report')) as { report: ServerReport };
  child.send({ type: 'exit' });
  for (const socket of [...sockets, writer]) socket.close();
  await new Promise((resolve) => child.once('exit', resolve));

  return {
    variant:
      variant === 'authorize'
        ? `authorize, 1 socket per user`
        : variant === 'authorize-grouped'
          ? `authorize, ${SOCKETS} sockets of ${USERS} users`
          : 'authorizeRead, 1 socket per user',
    sockets: SOCKETS,
    events: EVENTS,
    authorizeCalls: report.authorizeCalls,
    pushAckMs: round(pushAckMs),
    allReceivedMs: round(fanoutMs),
    serverPushMs: report.serverPushMs,
    bystanderPullP50Ms: report.bystander.p50,
    bystanderPullMaxMs: report.bystander.max,
    serverEventLoopMaxMs: report.eventLoopMaxMs,
  };
}

function connect(url: string, token: string, clientId: string): Promise<Socket> {
  const socket = io(url, { transports: ['websocket'], reconnection: false, auth: { protocolVersion: PROTOCOL_VERSION, clientId, token } });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  });
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}
