/**
 * Gaps in live delivery that fill late (another server instance relays its
 * writers' events late under load): the reader first pulls such a gap after
 * 500 ms and then gets the same event again live; from then on it waits
 * longer, and the late live messages close the gaps alone, with no pull and
 * nothing delivered twice.
 */
import { expect, it } from 'vitest';
import type { LivePush } from '../src/server/handlers.js';
import { closeAfterEach, startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

const clients: TestClient[] = [];
let server: TestServer | undefined;
closeAfterEach(clients, () => server);

/** Live messages of the slow writer's pushes leave this late, as from a busy instance behind Redis. */
const RELAY_LAG_MS = 800;

it('waits out gaps that live messages fill late, instead of pulling each twice', async () => {
  server = await startServer();
  let slowClientId: string | undefined;
  server.server.events.once('client-connect', (client: { clientId: string }) => (slowClientId = client.clientId));
  const live = (server.server as unknown as { live: { add(push: LivePush): void } }).live;
  const fanOut = live.add.bind(live);
  live.add = (push) => {
    if (push.sender.data.clientId === slowClientId) setTimeout(() => fanOut(push), RELAY_LAG_MS);
    else fanOut(push);
  };
  const slow = await startClient(server.url);
  clients.push(slow);
  await waitFor(() => slow.sync.getStatus().connected && slowClientId !== undefined, 'the slow writer to connect');
  const fast = await startClient(server.url);
  const reader = await startClient(server.url, { syncInterval: 600_000 });
  clients.push(fast, reader);
  for (const c of clients) await waitFor(() => c.sync.getStatus().connected, 'every client to connect');
  await reader.sync.syncNow();
  const readerPulls: number[] = [];
  let pulls = 0;
  server.server.events.on('pull', () => pulls++);

  for (let n = 0; n < 6; n++) {
    const pullsBefore = pulls;
    // The slow writer's event first; the fast one's, written after it was acknowledged, arrives live before it.
    await slow.todos.insert({ id: `s${n}`, title: 'slow', done: false });
    await waitFor(() => slow.sync.getStatus().pendingEvents === 0, 'the slow write to be acknowledged');
    await fast.todos.insert({ id: `f${n}`, title: 'fast', done: false });
    await waitFor(async () => (await reader.todos.count().exec()) === 2 * (n + 1), `round ${n} to reach the reader`, 10_000);
    // And the late live message too, before the next round.
    await new Promise((resolve) => setTimeout(resolve, RELAY_LAG_MS + 200));
    readerPulls.push(pulls - pullsBefore);
  }
  // The first gap is pulled; once its event came live again, later gaps wait for theirs.
  expect(readerPulls[0]).toBeGreaterThan(0);
  expect(readerPulls.slice(3)).toEqual([0, 0, 0]);
}, 60_000);
