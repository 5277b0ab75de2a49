/**
 * A pull names only sequences this client holds. An answer the replicator
 * does not take (for an entry after a refused one of the same document) must
 * not be named in `have`, or the pull would skip the server's head of a
 * document the client does not hold and the client would never converge.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MemorySyncStorage } from '../src/server/storage/memory.js';
import type { IncomingEvent, SaveResult } from '../src/server/storage/types.js';
import { startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

/** Saves, then (when armed) fails as if the commit's answer was lost. */
class LosingStorage extends MemorySyncStorage {
  loseNext = false;
  override async saveEvents(events: readonly IncomingEvent[]): Promise<SaveResult[]> {
    const results = await super.saveEvents(events);
    if (this.loseNext) {
      this.loseNext = false;
      throw new Error('connection lost after commit');
    }
    return results;
  }
}

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

describe('have names only what the client holds', () => {
  it('a duplicate answered for an entry skipped after a rejected one does not hide the server head', async () => {
    const storage = new LosingStorage();
    let blockDrafts = false;
    const server: TestServer = await startServer({
      storage,
      authorize: async (_user: unknown, _collection: string, operation: string, doc: Record<string, unknown>) =>
        operation === 'read' || !(blockDrafts && doc.title === 'draft'),
    });
    cleanup.push(() => server.stop());
    const client: TestClient = await startClient(server.url, { autoSync: false, retry: { maxRetries: 0, retryDelay: 50, useExponentialBackoff: false } });
    cleanup.push(() => client.close());

    // A1 (insert 'draft') is stored, its answer lost: it stays in the log, sent.
    await client.todos.insert({ id: 'a', title: 'draft', done: false });
    await waitFor(() => client.sync.getStatus().pendingEvents === 1, 'A1 logged');
    storage.loseNext = true;
    await expect(client.sync.syncNow()).rejects.toThrow();

    // A2 (update to 'final', based on A1) is stored with A1 as a duplicate, the answer lost again.
    await (await client.todos.findOne('a').exec())!.incrementalPatch({ title: 'final' });
    await waitFor(() => client.sync.getStatus().pendingEvents === 2, 'A2 logged');
    storage.loseNext = true;
    await expect(client.sync.syncNow()).rejects.toThrow();
    const head = (await storage.getHeads('todos', ['a']))[0]!;
    expect(head.data.title).toBe('final');

    // The policy changes: A1's retry is refused, A2's is answered as a duplicate of the head.
    blockDrafts = true;
    await client.sync.syncNow();
    await client.sync.syncNow();

    const local = await client.todos.findOne('a').exec();
    // The server holds 'final'; the client must converge on it.
    expect(local?.toJSON().title).toBe('final');
  });
});
