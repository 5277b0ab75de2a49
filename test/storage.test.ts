import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { formatHlc } from '../src/shared/hlc.js';
import { MemorySyncStorage, PostgresSyncStorage, SqliteSyncStorage, type IncomingEvent, type SyncStorage } from '../src/server/storage/index.js';
import { scopedReadSql } from '../src/server/storage/sqlite.js';
import { parseScope } from '../src/shared/scope.js';
import { runStorageConformance } from '../src/testing/index.js';
import { serviceReady, useTestDatabase } from './services.js';

/** Every instance opened over the same data, so cleanup closes the reopened ones too. */
function durable(open: () => SyncStorage, removeData: () => Promise<void>) {
  const instances = [open()];
  return {
    storage: instances[0]!,
    reopen: async () => {
      const storage = open();
      instances.push(storage);
      return storage;
    },
    cleanup: async () => {
      await Promise.all(instances.map((storage) => storage.close()));
      await removeData();
    },
  };
}

let nextId = 0;
const newEvent = (documentId: string, clientId = 'writer'): IncomingEvent => ({
  id: `evt-test-${++nextId}-${Math.random().toString(36).slice(2, 10)}`,
  collection: 'todos',
  documentId,
  op: 'insert',
  data: { id: documentId, n: nextId },
  baseEventId: null,
  hlc: formatHlc({ millis: Date.now(), counter: 0, node: clientId }),
  clientId,
});

runStorageConformance('memory', async () => ({ storage: new MemorySyncStorage(), cleanup: async () => {} }));

describe('memory', () => {
  it('keeps its own frozen copy of each event: what the caller does with its objects afterwards changes nothing stored', async () => {
    const storage = new MemorySyncStorage();
    const insert = { ...newEvent('d1'), data: { id: 'd1', tags: ['a'], nested: { n: 1 } } };
    const update = { ...newEvent('d1'), op: 'update' as const, baseEventId: insert.id, data: { id: 'd1', tags: ['b'], nested: { n: 2 } }, patch: [{ op: 'replace' as const, path: '/tags/0', value: 'b' }] };
    await storage.saveEvents([insert, update]);
    insert.data.tags.push('changed');
    insert.data.nested.n = 99;
    update.patch[0]!.value = 'changed';
    const [first, second] = await storage.getEventsAfter(0);
    expect(first).toMatchObject({ id: insert.id, data: { id: 'd1', tags: ['a'], nested: { n: 1 } }, seq: 1, clientId: 'writer' });
    expect(second).toMatchObject({ id: update.id, baseEventId: insert.id, patch: [{ op: 'replace', path: '/tags/0', value: 'b' }], seq: 2 });
    expect(Object.isFrozen(first) && Object.isFrozen(first!.data) && Object.isFrozen(second!.patch![0])).toBe(true);
    expect(Object.keys(first!).sort()).toEqual(['baseEventId', 'clientId', 'collection', 'data', 'documentId', 'hlc', 'id', 'op', 'seq', 'serverTime']);
  });
});

function tempSqlitePath(): { dir: string; path: string } {
  const dir = mkdtempSync(join(tmpdir(), 'rxos-sqlite-'));
  return { dir, path: join(dir, 'not-yet-created', 'sync.db') }; // the storage creates missing directories
}

runStorageConformance('sqlite', async () => {
  const { dir, path } = tempSqlitePath();
  return durable(
    () => new SqliteSyncStorage({ path }),
    async () => rmSync(dir, { recursive: true, force: true }),
  );
});

describe('sqlite: group commit', () => {
  it('writes pushes that arrive together in one transaction, and fails only the call that cannot be stored', async () => {
    const { dir, path } = tempSqlitePath();
    const storage = new SqliteSyncStorage({ path });
    try {
      await storage.init();
      await storage.saveEvents([newEvent('warm-up')]);
      const walBytes = () => statSync(`${path}-wal`).size;
      const before = walBytes();

      const bad = { ...newEvent('bad'), data: { n: 1n } as unknown as IncomingEvent['data'] };
      const calls = Array.from({ length: 100 }, (_, i) => storage.saveEvents([newEvent(`doc-${i}`)]));
      const badCall = expect(storage.saveEvents([bad])).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
      const results = (await Promise.all(calls)).flat();
      await badCall;
      expect(results.every((r) => r.status === 'accepted')).toBe(true);

      // One commit writes each touched page once; a commit per call would append hundreds of WAL frames.
      const pageSize = 4096 + 24;
      expect((walBytes() - before) / pageSize).toBeLessThan(30);
      expect(await storage.countEvents()).toBe(101);
    } finally {
      await storage.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('sqlite: memory map', () => {
  it('reads the file through a map of mmapBytes (256 MiB by default; 0 turns it off) and refuses a size below 0', async () => {
    const { dir, path } = tempSqlitePath();
    try {
      for (const [options, expected] of [[{}, 256 * 1024 * 1024], [{ mmapBytes: 0 }, 0]] as const) {
        const storage = new SqliteSyncStorage({ path, ...options });
        await storage.init();
        // The pragma is per connection: read through the storage's own.
        const db = (storage as unknown as { db: InstanceType<typeof Database> }).db;
        expect(db.pragma('mmap_size', { simple: true })).toBe(expected);
        await storage.close();
      }
      expect(() => new SqliteSyncStorage({ path, mmapBytes: -1 })).toThrow(/mmapBytes/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('sqlite: scoped reads', () => {
  it('use the scope index for an equality scope, the sequence index for leaves, and the document index for what the reader held', async () => {
    const { dir, path } = tempSqlitePath();
    const storage = new SqliteSyncStorage({ path });
    const inspector = () => new Database(path, { readonly: true });
    try {
      await storage.init();
      await storage.saveEvents(Array.from({ length: 20 }, (_, i) => ({ ...newEvent(`doc-${i}`), data: { crewId: `c${i % 4}` } })));
      const plan = (checkpoint: number, scope: object, held: { scope: object | null; through: number }) => {
        const { sql, params } = scopedReadSql(checkpoint, { collection: 'todos', scope: parseScope(scope), held: { scope: parseScope(held.scope), through: held.through }, limit: 50 });
        const db = inspector();
        try {
          return db.prepare<Record<string, unknown>, { detail: string }>(`EXPLAIN QUERY PLAN ${sql}`).all(params).map((row) => row.detail).join('\n');
        } finally {
          db.close();
        }
      };
      // Before indexScopeFields there is no scope index to use.
      expect(plan(0, { crewId: 'c1' }, { scope: { crewId: 'c1' }, through: 0 })).not.toMatch(/heads_scope_/);

      await storage.indexScopeFields({ todos: ['crewId', 'region'] });
      await storage.indexScopeFields({ todos: ['crewId', 'region'] });
      const db = inspector();
      const indexes = db.prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'index' AND (name LIKE 'heads_scope_%' OR name LIKE 'events_document_%') ORDER BY name").all();
      db.close();
      expect(indexes).toHaveLength(3); // two fields, and the documents of the collection: once, however often asked

      // The first read: the documents in scope only, through the scope index, already in sequence order.
      const initial = plan(0, { crewId: 'c1' }, { scope: { crewId: 'c1' }, through: 0 });
      expect(initial).toMatch(/SEARCH h USING (COVERING )?INDEX heads_scope_\w+ \(<expr>=\? AND seq>\?\)/);
      expect(initial).not.toMatch(/TEMP B-TREE|SCAN/);
      // A catch-up: in scope through the scope index, leaves among the heads changed after the checkpoint, the arms merged.
      for (const held of [{ scope: { crewId: 'c1' }, through: 10 }, { scope: { region: 'n' }, through: 15 }]) {
        const catchUp = plan(held.through === 10 ? 10 : 0, { crewId: 'c1' }, held);
        expect(catchUp).toMatch(/MERGE \(UNION ALL\)/);
        expect(catchUp).toMatch(/SEARCH h USING (COVERING )?INDEX heads_scope_\w+ \(<expr>=\? AND seq>\?\)/);
        // Leaves only up to the page's last send (the limit-th head in scope): a page never judges every head after it.
        expect(catchUp).toMatch(/SEARCH h USING INDEX heads_seq \(seq>\? AND seq<\?\)/);
        expect(catchUp).toMatch(/SEARCH \w USING (COVERING )?INDEX events_document_\w+ \(document_id=\?/);
        expect(catchUp).not.toMatch(/TEMP B-TREE|SCAN h|SCAN e/);
      }
    } finally {
      await storage.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

const postgresReady = await serviceReady('postgres');

describe.skipIf(!postgresReady)('postgres', () => {
  const database = useTestDatabase();
  runStorageConformance('postgres', async () => {
    const schema = database.freshSchema('conformance'); // a fresh schema per test: same server, no shared state
    return durable(
      () => new PostgresSyncStorage({ connectionString: database.connectionString, schema, poolSize: 4 }),
      async () => {},
    );
  });

  it('never lets a reader skip an event, with two servers writing concurrently', async () => {
    const schema = 'readers';
    const { connectionString } = database;
    const servers = [
      new PostgresSyncStorage({ connectionString, schema, poolSize: 6 }),
      new PostgresSyncStorage({ connectionString, schema, poolSize: 6 }),
    ];
    const readerPool = new pg.Pool({ connectionString, max: 2 });
    const reader = new PostgresSyncStorage({ pool: readerPool, schema });
    try {
      // Three instances creating the same tables at once: the init lock must keep them from racing.
      await Promise.all([...servers, reader].map((storage) => storage.init()));

      const accepted = new Set<string>();
      const writer = async (storage: PostgresSyncStorage, name: string) => {
        for (let batch = 0; batch < 40; batch++) {
          const events = Array.from({ length: 1 + (batch % 3) }, (_, i) => newEvent(`${name}-${batch}-${i}`, name));
          for (const result of await storage.saveEvents(events)) {
            expect(result.status).toBe('accepted');
            accepted.add(result.id);
          }
        }
      };

      let writing = true;
      const seen: string[] = [];
      const readLoop = async () => {
        let checkpoint = 0;
        for (;;) {
          const finalPass = !writing; // a read that starts after every write returned
          const page = await reader.getEventsAfter(checkpoint, { limit: 50 });
          for (const event of page) {
            expect(event.seq).toBeGreaterThan(checkpoint);
            checkpoint = event.seq;
            seen.push(event.id);
          }
          if (finalPass && page.length === 0) return;
        }
      };
      const reading = readLoop();
      await Promise.all(servers.flatMap((storage, s) => [0, 1, 2, 3].map((w) => writer(storage, `server${s}-w${w}`))));
      writing = false;
      await reading;

      expect(seen).toHaveLength(accepted.size);
      expect(new Set(seen)).toEqual(accepted);
      expect(await reader.countEvents()).toBe(accepted.size);
    } finally {
      await Promise.all([...servers, reader].map((storage) => storage.close()));
      await readerPool.end(); // the reader was given this pool, so closing the reader left it open
    }
  });

  it('accepts a 500-event push in one call', async () => {
    const storage = new PostgresSyncStorage({ connectionString: database.connectionString, schema: 'bulk' });
    try {
      await storage.init();
      const events = Array.from({ length: 500 }, (_, i) => newEvent(`bulk-${i}`));
      const started = performance.now();
      const results = await storage.saveEvents(events);
      expect(results.every((r) => r.status === 'accepted')).toBe(true);
      expect(performance.now() - started).toBeLessThan(2_000);
      expect(await storage.countEvents()).toBe(500);
    } finally {
      await storage.close();
    }
  });

  it('refuses unsafe schema and prefix names', () => {
    expect(() => new PostgresSyncStorage({ connectionString: database.connectionString, schema: 'x"; DROP' })).toThrow(
      /schema/,
    );
    expect(() => new PostgresSyncStorage({ connectionString: database.connectionString, tablePrefix: 'a-b' })).toThrow(
      /tablePrefix/,
    );
    expect(() => new PostgresSyncStorage({} as never)).toThrow(/connectionString and pool/);
  });
});
