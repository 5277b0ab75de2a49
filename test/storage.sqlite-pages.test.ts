import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { formatHlc } from '../src/shared/hlc.js';
import { SqliteSyncStorage, type IncomingEvent } from '../src/server/storage/index.js';

let nextId = 0;
const insert = (documentId: string): IncomingEvent => ({
  id: `evt-pages-${++nextId}`,
  collection: 'todos',
  documentId,
  op: 'insert',
  data: { id: documentId, n: nextId },
  baseEventId: null,
  hlc: formatHlc({ millis: Date.now(), counter: 0, node: 'writer' }),
  clientId: 'writer',
});

describe('SQLite: pages shared by readers that ask the same', () => {
  const opened: SqliteSyncStorage[] = [];
  const directories: string[] = [];
  const open = (path: string) => {
    const storage = new SqliteSyncStorage({ path });
    opened.push(storage);
    return storage;
  };
  const newFile = () => {
    const directory = mkdtempSync(join(tmpdir(), 'rxos-pages-'));
    directories.push(directory);
    return join(directory, 'sync.db');
  };
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((storage) => storage.close()));
    for (const directory of directories.splice(0)) rmSync(directory, { recursive: true, force: true });
  });

  it('answers the same query with the same page while nothing is written', async () => {
    const storage = open(newFile());
    await storage.saveEvents([insert('a'), insert('b')]);
    const query = { collections: ['todos'], limit: 100, maxBytes: 1 << 20 };
    const first = await storage.getChangesAfter(0, query);
    expect(first.map((event) => event.documentId)).toEqual(['a', 'b']);
    expect(await storage.getChangesAfter(0, query)).toBe(first);
    // Another query is another page.
    expect(await storage.getChangesAfter(1, query)).not.toBe(first);
  });

  it('reads again after a save of its own', async () => {
    const storage = open(newFile());
    await storage.saveEvents([insert('a')]);
    const query = { collections: ['todos'], limit: 100, maxBytes: 1 << 20 };
    expect((await storage.getChangesAfter(0, query)).map((event) => event.documentId)).toEqual(['a']);
    await storage.saveEvents([insert('b')]);
    expect((await storage.getChangesAfter(0, query)).map((event) => event.documentId)).toEqual(['a', 'b']);
  });

  it('reads again after a save by another process on the same file', async () => {
    const path = newFile();
    const reader = open(path);
    const writer = open(path);
    await writer.saveEvents([insert('a')]);
    for (const query of [{ collections: ['todos'], limit: 100, maxBytes: 1 << 20 }, {}]) {
      const before = await reader.getChangesAfter(0, query);
      expect(await reader.getChangesAfter(0, query)).toBe(before);
    }
    await writer.saveEvents([insert('b')]);
    for (const query of [{ collections: ['todos'], limit: 100, maxBytes: 1 << 20 }, {}]) {
      expect((await reader.getChangesAfter(0, query)).map((event) => event.documentId)).toEqual(['a', 'b']);
    }
  });
});
