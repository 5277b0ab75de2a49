/**
 * PostgreSQL group commit: saveEvents calls that arrive together are decided
 * and committed in one transaction, and every caller still gets exactly what
 * it would have got had the calls run one after the other in arrival order.
 * The MemorySyncStorage, fed the same calls sequentially, is the oracle.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { formatHlc } from '../src/shared/hlc.js';
import type { DocumentHead } from '../src/shared/protocol/index.js';
import { MemorySyncStorage, PostgresSyncStorage, type IncomingEvent, type SaveResult } from '../src/server/storage/index.js';
import { serviceReady, useTestDatabase } from './services.js';

let made = 0;
function event(documentId: string, base: string | null, fields: Partial<IncomingEvent> = {}): IncomingEvent {
  const n = ++made;
  const clientId = fields.clientId ?? `client-${n % 3}`;
  return {
    id: `evt-group-${n}-${Math.random().toString(36).slice(2, 8)}`,
    collection: 'todos',
    documentId,
    op: base ? 'update' : 'insert',
    data: { id: documentId, n },
    baseEventId: base,
    hlc: formatHlc({ millis: 1_700_000_000_000 + n, counter: 0, node: clientId }),
    clientId,
    ...fields,
  };
}

/** A pool that counts its checkouts (one per write transaction) and can make COMMIT fail. */
function instrumentedPool(connectionString: string) {
  const pool = new pg.Pool({ connectionString, max: 4 });
  // As an app that hands the storage its own pool does: an idle connection's error (the test database
  // dropped at the end, a connection killed) is the pool's to report, and would otherwise end the process.
  pool.on('error', () => undefined);
  const counters = { connects: 0, failCommits: 0 };
  const connect = pool.connect.bind(pool) as (callback?: unknown) => Promise<pg.PoolClient>;
  // pool.query() checks out with a callback: those reads are left alone; the storage's transactions use the promise.
  (pool as { connect: unknown }).connect = async (callback?: unknown) => {
    if (callback) return connect(callback);
    counters.connects++;
    const client = await connect();
    const query = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
    (client as { query: unknown }).query = (...args: unknown[]) => {
      if (args[0] === 'COMMIT' && counters.failCommits > 0) {
        counters.failCommits--;
        return Promise.reject(new Error('injected COMMIT failure'));
      }
      return query(...args);
    };
    return client;
  };
  return { pool, counters };
}

const postgresReady = await serviceReady('postgres');

describe.skipIf(!postgresReady)('postgres: group commit', () => {
  const database = useTestDatabase();
  async function open() {
    const { pool, counters } = instrumentedPool(database.connectionString);
    const storage = new PostgresSyncStorage({ pool, schema: database.freshSchema('group') });
    await storage.init();
    counters.connects = 0;
    return {
      storage,
      counters,
      close: async () => {
        await storage.close();
        await pool.end();
      },
    };
  }

  it('decides concurrent calls as if they ran one after the other, in fewer transactions', async () => {
    const { storage, counters, close } = await open();
    try {
      const seeded = event('seeded', null);
      expect(await storage.saveEvents([seeded])).toMatchObject([{ status: 'accepted' }]);
      counters.connects = 0;

      // Calls fired together; each is a list of events, most touching shared documents.
      const a1 = event('a', null);
      const a2 = event('a', a1.id);
      const a3 = event('a', a2.id, { op: 'delete' });
      const b1 = event('b', null);
      const seededNext = event('seeded', seeded.id);
      const calls: IncomingEvent[][] = [
        [a1],
        [a1], // the same event again, in flight with the first
        [a2, a2], // builds on a1 from another call; a retry of itself in the same call
        [event('a', a1.id)], // stale: a2 got there first
        [b1, event('b', null)], // the second insert of b conflicts with the first, in one call
        [a3, event('a', a3.id), a1], // a chain on a, then a1 once more
        [seeded, seededNext], // a retry of a committed event, then an update on it
        [event('seeded', seeded.id)], // stale against seededNext
        [event('ghost', 'evt-never-stored')],
        [a2], // a retry after its document moved on
      ];
      for (let i = 0; i < 40; i++) {
        const doc = `solo-${i % 13}`;
        calls.push([event(doc, null), event(`many-${i}`, null)]);
      }

      const results = await Promise.all(calls.map((call) => storage.saveEvents(call)));

      // The oracle: the same calls, one at a time, in the order they were made.
      const oracle = new MemorySyncStorage();
      await oracle.saveEvents([seeded]);
      const expected: SaveResult[][] = [];
      for (const call of calls) expected.push(await oracle.saveEvents(call));

      const shape = (result: SaveResult) =>
        result.status === 'conflict' ? { id: result.id, status: result.status, head: result.head?.eventId ?? null } : { id: result.id, status: result.status };
      expect(results.map((call) => call.map(shape))).toEqual(expected.map((call) => call.map(shape)));
      expect(counters.connects).toBeLessThanOrEqual(3); // one group, perhaps two: not one transaction per call

      // Every accepted event has its own sequence, increasing in the order the calls were made.
      const seqOf = new Map<string, number>();
      const acceptedInOrder: number[] = [];
      for (const result of results.flat()) {
        if (result.status === 'accepted') {
          expect(seqOf.has(result.id)).toBe(false);
          seqOf.set(result.id, result.seq);
          acceptedInOrder.push(result.seq);
        }
      }
      for (let i = 1; i < acceptedInOrder.length; i++) expect(acceptedInOrder[i]).toBeGreaterThan(acceptedInOrder[i - 1]!);
      // A duplicate gets the first sequence of its event, whether that was committed earlier or in this group.
      const firstSeq = new Map(seqOf);
      firstSeq.set(seeded.id, (await storage.getEventsAfter(0))[0]!.seq);
      for (const result of results.flat()) {
        if (result.status === 'duplicate') expect(result.seq).toBe(firstSeq.get(result.id));
      }

      // A conflict carries the head as it was at that moment, even one produced by an earlier call of the group.
      const all = await storage.getEventsAfter(0);
      const stored = new Map(all.map((e) => [e.id, e]));
      for (const result of results.flat()) {
        if (result.status !== 'conflict' || !result.head) continue;
        const producer = stored.get(result.head.eventId)!;
        expect(result.head).toEqual({
          collection: producer.collection,
          documentId: producer.documentId,
          seq: producer.seq,
          eventId: producer.id,
          data: producer.data,
          deleted: producer.op === 'delete',
          hlc: producer.hlc,
          clientId: producer.clientId,
        } satisfies DocumentHead);
      }
      const conflictOnB = results[4]![1]!;
      expect(conflictOnB).toMatchObject({ status: 'conflict', head: { eventId: b1.id, seq: seqOf.get(b1.id) } });

      // Stored state: exactly the accepted events, once each, in sequence order, and the oracle's heads.
      expect(all.map((e) => e.id)).toEqual([seeded.id, ...[...seqOf.entries()].sort((x, y) => x[1] - y[1]).map(([id]) => id)]);
      expect(await storage.countEvents()).toBe(1 + seqOf.size);
      expect(await storage.getLatestSequence()).toBe(all.at(-1)!.seq);
      const documents = [...new Set(calls.flat().map((e) => e.documentId))];
      const heads = await storage.getHeads('todos', documents);
      const oracleHeads = await oracle.getHeads('todos', documents);
      const headShape = (h: DocumentHead) => ({ documentId: h.documentId, eventId: h.eventId, deleted: h.deleted, data: h.data });
      expect(heads.map(headShape)).toEqual(oracleHeads.map(headShape));
      for (const head of heads) expect(head.seq).toBe(stored.get(head.eventId)!.seq);
      expect(heads.find((h) => h.documentId === 'a')).toMatchObject({ deleted: false, seq: Math.max(...all.filter((e) => e.documentId === 'a').map((e) => e.seq)) });
    } finally {
      await close();
    }
  });

  it('stores one copy of an event pushed many times at once, and answers every copy with its sequence', async () => {
    const { storage, counters, close } = await open();
    try {
      const event1 = event('same', null);
      const next = event('same', event1.id);
      const results = (await Promise.all([
        ...Array.from({ length: 30 }, () => storage.saveEvents([event1])),
        ...Array.from({ length: 10 }, () => storage.saveEvents([next, event1])),
      ])).flat();
      const first = results.find((r) => r.id === event1.id && r.status === 'accepted') as { seq: number };
      const nextSeq = (results.find((r) => r.id === next.id && r.status === 'accepted') as { seq: number }).seq;
      expect(results.filter((r) => r.status === 'accepted')).toHaveLength(2);
      expect(results.filter((r) => r.status === 'duplicate' && r.id === event1.id && r.seq === first.seq)).toHaveLength(39);
      expect(results.filter((r) => r.status === 'duplicate' && r.id === next.id && r.seq === nextSeq)).toHaveLength(9);
      expect(await storage.countEvents()).toBe(2);
      expect(counters.connects).toBeLessThanOrEqual(3);
    } finally {
      await close();
    }
  });

  it('fails only the call PostgreSQL refuses; its neighbours in the group are stored', async () => {
    const { storage, close } = await open();
    try {
      // jsonb cannot hold the NUL character: this event passes JSON.stringify but fails inside PostgreSQL.
      const refused = event('nul', null, { data: { id: 'nul', text: 'a\u0000b' } });
      const goods = Array.from({ length: 12 }, (_, i) => event(`good-${i}`, null));
      const calls = [
        ...goods.slice(0, 6).map((e) => storage.saveEvents([e])),
        storage.saveEvents([event('with-refused', null), refused]),
        ...goods.slice(6).map((e) => storage.saveEvents([e])),
      ];
      const badCall = expect(calls[6]).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
      const cannotEncode = expect(storage.saveEvents([event('bigint', null, { data: { n: 1n } as never })])).rejects.toMatchObject({
        code: 'STORAGE_ERROR',
      });
      const results = await Promise.all([...calls.slice(0, 6), ...calls.slice(7)]);
      await badCall;
      await cannotEncode;
      expect(results.flat().map((r) => r.status)).toEqual(goods.map(() => 'accepted'));
      expect((await storage.getEventsAfter(0)).map((e) => e.id).sort()).toEqual(goods.map((e) => e.id).sort());
      expect(await storage.getHeads('todos', ['with-refused', 'nul'])).toEqual([]); // the refused call stored nothing at all
    } finally {
      await close();
    }
  });

  it('never answers accepted for a group whose transaction did not commit', async () => {
    const { storage, counters, close } = await open();
    try {
      // Every COMMIT fails: the group's, then each call's own attempt.
      counters.failCommits = 1000;
      const events = Array.from({ length: 8 }, (_, i) => event(`lost-${i}`, null));
      const outcomes = await Promise.allSettled(events.map((e) => storage.saveEvents([e])));
      expect(outcomes.every((o) => o.status === 'rejected' && (o.reason as { code: string }).code === 'STORAGE_ERROR')).toBe(true);
      expect(await storage.countEvents()).toBe(0);

      // The group's COMMIT fails once: each call is tried again alone and gets its own answer.
      counters.failCommits = 1;
      const retried = await Promise.all(events.map((e) => storage.saveEvents([e])));
      expect(retried.flat().map((r) => r.status)).toEqual(events.map(() => 'accepted'));
      expect(await storage.countEvents()).toBe(8);
      const seqs = retried.flat().map((r) => (r as { seq: number }).seq);
      expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    } finally {
      await close();
    }
  });

  it('a connection killed while a group holds it fails that group, not the process, and the next call is stored', async () => {
    const { storage, close } = await open();
    const admin = new pg.Client({ connectionString: database.connectionString });
    await admin.connect();
    const pool = (storage as unknown as { pool: pg.Pool }).pool;
    const connect = pool.connect.bind(pool) as (callback?: unknown) => Promise<pg.PoolClient>;
    let kill = true;
    (pool as { connect: unknown }).connect = async (callback?: unknown) => {
      if (callback) return connect(callback);
      const client = await connect();
      const query = client.query.bind(client) as (...args: unknown[]) => Promise<pg.QueryResult>;
      (client as { query: unknown }).query = async (...args: unknown[]) => {
        if (kill && typeof args[0] === 'string' && args[0].includes('UNION ALL')) {
          kill = false;
          // The server ends this connection while no query runs on it: pg reports it as an 'error' event.
          const { rows } = await query('SELECT pg_backend_pid() AS pid');
          const ended = new Promise((resolve) => client.once('end', resolve));
          await admin.query('SELECT pg_terminate_backend($1)', [rows[0]!.pid]);
          await ended;
        }
        return query(...args);
      };
      return client;
    };
    try {
      await expect(storage.saveEvents([event('killed', null)])).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
      expect(await storage.saveEvents([event('after', null)])).toMatchObject([{ status: 'accepted' }]);
      expect((await storage.getEventsAfter(0)).map((e) => e.documentId)).toEqual(['after']);
    } finally {
      await admin.end();
      await close();
    }
  });

  it('close() right after a call settles the call (stored, or refused as closed), and answers reads under way', async () => {
    const { storage, close } = await open();
    try {
      const saving = storage.saveEvents([event('last', null)]);
      const reading = storage.getEventsAfter(0);
      await storage.close();
      const outcome = await Promise.race([
        saving.then((results) => results[0]!.status, (error: { code: string }) => error.code),
        new Promise((resolve) => setTimeout(() => resolve('never settled'), 3000)),
      ]);
      expect(['accepted', 'STORAGE_ERROR']).toContain(outcome);
      await expect(Promise.race([reading.then(() => 'answered', () => 'refused'), new Promise((resolve) => setTimeout(() => resolve('never settled'), 3000))])).resolves.not.toBe('never settled');
    } finally {
      await close();
    }
  });
});
