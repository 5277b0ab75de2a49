/**
 * syncNow() made the moment a sync run ends (here from a status$ subscriber
 * reacting to `syncing: false`, the natural place to ask for another sync)
 * starts a run of its own: it does not join the run that has ended and
 * resolve with that run's result before anything it asked for was pushed.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { SyncResult } from '../src/client/engine.js';
import { sleep, startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await server?.stop();
  server = undefined;
});

describe('syncNow as a run ends', () => {
  it('resolves only after a run that pushed what was pending when it was called', async () => {
    // Reads are slow, so that the app writes while the first run pulls.
    server = await startServer({
      authorize: async (_user: unknown, _collection: string, operation: string) => {
        if (operation === 'read') await sleep(1000);
        return true;
      },
    });
    // Another client's document, so that the first run's pull has something to read (slowly).
    const other = await startClient(server.url, { autoSync: false });
    clients.push(other);
    await other.todos.insert({ id: 'theirs', title: 'theirs', done: false });
    await other.sync.syncNow();
    const a = await startClient(server.url, { autoSync: false });
    clients.push(a);

    await a.todos.insert({ id: 'first', title: 'first', done: false });
    let second: Promise<SyncResult> | undefined;
    let armed = false;
    let wasSyncing = false;
    let pendingWhenCalled = -1;
    const subscription = a.sync.status$.subscribe((status) => {
      const ended = wasSyncing && !status.syncing;
      wasSyncing = status.syncing;
      if (armed && ended && !second) {
        // Pending work exists and the app asks for a sync right as the run ends.
        pendingWhenCalled = status.pendingEvents;
        second = a.sync.syncNow();
      }
    });
    const first = a.sync.syncNow();
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 2, 'first pushed');
    await waitFor(() => a.sync.getStatus().pendingEvents === 0, 'first acknowledged');
    await sleep(100); // the push phase has ended; the first run is pulling
    await a.todos.insert({ id: 'second', title: 'second', done: false });
    await waitFor(() => a.sync.getStatus().pendingEvents === 1, 'second logged');
    // The first run is still pulling (slow reads): arm for the moment it ends.
    expect(a.sync.getStatus().syncing).toBe(true);
    armed = true;
    await first;
    await waitFor(() => second !== undefined, 'the second syncNow call');
    const result = await second!;
    subscription.unsubscribe();
    expect(pendingWhenCalled).toBe(1);
    expect(result.success).toBe(true);
    const onServer = (await server.server.getStorage().getEventsAfter(0)).map((event) => event.documentId);
    expect(onServer).toContain('second');
  });
});
