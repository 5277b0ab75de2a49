import pg from 'pg';
import { z } from 'zod';
import { SyncError } from '../../shared/errors.js';
import { parseOptions } from '../../shared/json.js';
import type { DocumentHead, Operation, StoredEvent } from '../../shared/protocol.js';
import type { EventQuery, IncomingEvent, SaveResult, SyncStorage } from './types.js';

const identifier = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,39}$/, 'letters, digits and _, starting with a letter or _');
const optionsSchema = z
  .strictObject({
    connectionString: z.string().min(1).optional(),
    /** A pool you own: it is used as is and left open by close(). */
    pool: z
      .custom<pg.Pool>((value) => !!value && typeof (value as pg.Pool).connect === 'function', 'pool must be a pg.Pool')
      .optional(),
    /** Size of the pool this storage creates from connectionString. */
    poolSize: z.number().int().positive().default(10),
    schema: identifier.default('public'),
    /** Prepended to the table names, so the sync tables never collide with an app's own. */
    tablePrefix: identifier.or(z.literal('')).default('sync_'),
    /** Errors of idle pooled connections (the server restarted, the network dropped); the pool replaces them. */
    onError: z.custom<(error: Error) => void>((value) => typeof value === 'function', 'onError must be a function').optional(),
  })
  .refine((o) => (o.connectionString === undefined) !== (o.pool === undefined), {
    message: 'give exactly one of connectionString and pool',
    path: ['connectionString'],
  });
export type PostgresSyncStorageOptions = z.input<typeof optionsSchema>;

// Advisory locks (class id, object id): the class ids are ours, the object id is the table namespace.
const WRITE_LOCK = 0x5258_4f53; // "RXOS"
const INIT_LOCK = 0x5258_4f49; // "RXOI"

const EVENT_COLUMNS = 'seq, id, collection, document_id, op, data, patch, base_event_id, hlc, client_id, server_time';
const EVENT_RECORD =
  'seq bigint, id text, collection text, document_id text, op text, data jsonb, patch jsonb, base_event_id text, hlc text, client_id text, server_time bigint';
const HEAD_COLUMNS = 'collection, document_id, seq, event_id, data, deleted, hlc, client_id';
const HEAD_RECORD =
  'collection text, document_id text, seq bigint, event_id text, data jsonb, deleted boolean, hlc text, client_id text';

interface EventRow {
  seq: string;
  id: string;
  collection: string;
  document_id: string;
  op: Operation;
  data: StoredEvent['data'];
  patch: StoredEvent['patch'] | null;
  base_event_id: string | null;
  hlc: string;
  client_id: string;
  server_time: string;
}
type HeadRow = Omit<DocumentHead, 'documentId' | 'eventId' | 'clientId' | 'seq'> & {
  document_id: string;
  event_id: string;
  client_id: string;
  seq: string;
};

function buildSql(schema: string, prefix: string) {
  const q = (name: string) => `"${schema}"."${prefix}${name}"`;
  const [events, heads, seq] = [q('events'), q('heads'), q('seq')];
  const selectEvents = `SELECT ${EVENT_COLUMNS} FROM ${events} WHERE seq > $1 AND client_id IS DISTINCT FROM $2`;
  return {
    createTables: `
      CREATE SEQUENCE IF NOT EXISTS ${seq};
      CREATE TABLE IF NOT EXISTS ${events} (
        seq bigint PRIMARY KEY, -- from ${seq}, taken under the write lock
        id text NOT NULL UNIQUE,
        collection text NOT NULL,
        document_id text NOT NULL,
        op text NOT NULL,
        data jsonb NOT NULL,
        patch jsonb,
        base_event_id text,
        hlc text NOT NULL,
        client_id text NOT NULL,
        server_time bigint NOT NULL
      );
      CREATE INDEX IF NOT EXISTS "${prefix}events_collection_seq" ON ${events} (collection, seq);
      CREATE TABLE IF NOT EXISTS ${heads} (
        collection text NOT NULL,
        document_id text NOT NULL,
        seq bigint NOT NULL,
        event_id text NOT NULL,
        data jsonb NOT NULL,
        deleted boolean NOT NULL,
        hlc text NOT NULL,
        client_id text NOT NULL,
        PRIMARY KEY (collection, document_id)
      );
      -- heads are never deleted, so max(heads.seq) is the last committed sequence, even after clearEventsBefore.
      CREATE INDEX IF NOT EXISTS "${prefix}heads_seq" ON ${heads} (seq);`,
    schemaExists: 'SELECT 1 FROM pg_namespace WHERE nspname = $1',
    createSchema: `CREATE SCHEMA IF NOT EXISTS "${schema}"`,
    seqByIds: `SELECT id, seq FROM ${events} WHERE id = ANY($1::text[])`,
    headsByKeys: `SELECT ${HEAD_COLUMNS} FROM ${heads}
      WHERE (collection, document_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
    nextSeqs: `SELECT nextval('${seq}') AS seq FROM generate_series(1, $1::int)`,
    insertEvents: `INSERT INTO ${events} (${EVENT_COLUMNS})
      SELECT ${EVENT_COLUMNS} FROM jsonb_to_recordset($1::jsonb) AS x(${EVENT_RECORD})`,
    upsertHeads: `INSERT INTO ${heads} (${HEAD_COLUMNS})
      SELECT ${HEAD_COLUMNS} FROM jsonb_to_recordset($1::jsonb) AS x(${HEAD_RECORD})
      ON CONFLICT (collection, document_id) DO UPDATE SET seq = EXCLUDED.seq, event_id = EXCLUDED.event_id,
        data = EXCLUDED.data, deleted = EXCLUDED.deleted, hlc = EXCLUDED.hlc, client_id = EXCLUDED.client_id`,
    eventsAfter: `${selectEvents} ORDER BY seq LIMIT $3`,
    eventsAfterIn: `${selectEvents} AND collection = ANY($4::text[]) ORDER BY seq LIMIT $3`,
    heads: `SELECT ${HEAD_COLUMNS} FROM ${heads} WHERE collection = $1 AND document_id = ANY($2::text[])`,
    changesAfter: `SELECT ${EVENT_COLUMNS.split(', ').map((c) => `e.${c}`).join(', ')} FROM ${heads} h JOIN ${events} e ON e.seq = h.seq
      WHERE h.seq > $1 ORDER BY h.seq LIMIT $2`,
    changesAfterIn: `SELECT ${EVENT_COLUMNS.split(', ').map((c) => `e.${c}`).join(', ')} FROM ${heads} h JOIN ${events} e ON e.seq = h.seq
      WHERE h.seq > $1 AND h.collection = ANY($3::text[]) ORDER BY h.seq LIMIT $2`,
    // Superseded events only: a head event is the document's current version (or its tombstone).
    clearBefore: `DELETE FROM ${events} e WHERE e.seq < $1 AND NOT EXISTS (SELECT 1 FROM ${heads} h WHERE h.seq = e.seq)`,
    latest: `SELECT coalesce(max(seq), 0) AS seq FROM ${heads}`,
    count: `SELECT count(*) AS n FROM ${events}`,
  };
}

/**
 * Storage shared by several server instances through one PostgreSQL database.
 *
 * Writers serialize on a transaction-level advisory lock taken before any
 * sequence is drawn, and the lock is released only after commit. So sequences
 * become visible in order: a reader that saw sequence n has already seen every
 * committed event below n (invariant 4), with no watermark bookkeeping.
 */
export class PostgresSyncStorage implements SyncStorage {
  private readonly pool: pg.Pool;
  private readonly ownsPool: boolean;
  private readonly sql: ReturnType<typeof buildSql>;
  private readonly schema: string;
  private readonly lockId: number;
  private initialized: Promise<void> | undefined;
  private closed = false;

  constructor(options: PostgresSyncStorageOptions) {
    const parsed = parseOptions(optionsSchema, options, 'PostgresSyncStorage');
    this.ownsPool = !parsed.pool;
    this.pool = parsed.pool ?? new pg.Pool({ connectionString: parsed.connectionString, max: parsed.poolSize, application_name: 'rxdb-offline-sync' });
    if (this.ownsPool) {
      const onError = parsed.onError ?? ((error: Error) => console.error('rxdb-offline-sync: idle PostgreSQL connection failed:', error.message));
      this.pool.on('error', onError);
    }
    this.schema = parsed.schema;
    this.sql = buildSql(parsed.schema, parsed.tablePrefix);
    this.lockId = fnv1a32(`${parsed.schema}.${parsed.tablePrefix}`);
  }

  async init(): Promise<void> {
    await this.ready();
  }

  async saveEvents(events: readonly IncomingEvent[]): Promise<SaveResult[]> {
    await this.ready();
    if (events.length === 0) return [];
    return this.transaction('save events', async (client) => {
      await client.query('SELECT pg_advisory_xact_lock($1, $2)', [WRITE_LOCK, this.lockId]);
      // READ COMMITTED: each statement from here on sees every writer that held the lock before us.
      const known = await client.query<{ id: string; seq: string }>(this.sql.seqByIds, [[...new Set(events.map((e) => e.id))]]);
      const headRows = await client.query<HeadRow>(this.sql.headsByKeys, [
        events.map((e) => e.collection),
        events.map((e) => e.documentId),
      ]);
      const state: StoredState = {
        seqById: new Map(known.rows.map((row) => [row.id, Number(row.seq)])),
        heads: new Map(headRows.rows.map((row) => [headKey(row.collection, row.document_id), decodeHead(row)])),
      };
      // Plan once to learn how many sequences to draw, then again with the real ones (planSave is pure).
      const dryRun = planSave(events, state, () => 0);
      if (dryRun.appended.length === 0) return dryRun.results;
      const drawn = await client.query<{ seq: string }>(this.sql.nextSeqs, [dryRun.appended.length]);
      const seqs = drawn.rows.map((row) => Number(row.seq)).sort((a, b) => a - b);
      let next = 0;
      const plan = planSave(events, state, () => seqs[next++]!);
      const serverTime = Date.now();
      await client.query(this.sql.insertEvents, [JSON.stringify(plan.appended.map((event) => encodeEvent(event, serverTime)))]);
      await client.query(this.sql.upsertHeads, [JSON.stringify([...plan.heads.values()].map(encodeHead))]);
      return plan.results;
    });
  }

  async getEventsAfter(checkpoint: number, options: EventQuery = {}): Promise<StoredEvent[]> {
    return this.readEvents(checkpoint, options.collections, options.limit, null);
  }

  async getEventsForClient(clientId: string, collections: readonly string[], checkpoint = 0): Promise<StoredEvent[]> {
    return this.readEvents(checkpoint, collections, undefined, clientId);
  }

  async getChangesAfter(checkpoint: number, options: EventQuery = {}): Promise<StoredEvent[]> {
    const { collections, limit } = options;
    if (collections?.length === 0 || (limit !== undefined && limit <= 0)) {
      await this.ready();
      return [];
    }
    const pgLimit = limit === undefined ? null : Math.ceil(limit);
    const result = collections
      ? await this.query<EventRow>('read changes', this.sql.changesAfterIn, [checkpoint, pgLimit, [...collections]])
      : await this.query<EventRow>('read changes', this.sql.changesAfter, [checkpoint, pgLimit]);
    return result.rows.map(decodeEvent);
  }

  async clearEventsBefore(checkpoint: number): Promise<number> {
    const result = await this.query('clear events', this.sql.clearBefore, [checkpoint]);
    return result.rowCount ?? 0;
  }

  async getHeads(collection: string, documentIds: readonly string[]): Promise<DocumentHead[]> {
    if (documentIds.length === 0) return [];
    const result = await this.query<HeadRow>('read heads', this.sql.heads, [collection, [...new Set(documentIds)]]);
    const byId = new Map(result.rows.map((row) => [row.document_id, decodeHead(row)]));
    return documentIds.flatMap((id) => {
      const head = byId.get(id);
      byId.delete(id); // a repeated id is answered once
      return head ? [head] : [];
    });
  }

  async getLatestSequence(): Promise<number> {
    const result = await this.query<{ seq: string }>('read latest sequence', this.sql.latest, []);
    return Number(result.rows[0]!.seq);
  }

  async countEvents(): Promise<number> {
    const result = await this.query<{ n: string }>('count events', this.sql.count, []);
    return Number(result.rows[0]!.n);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsPool) await this.pool.end();
  }

  /** Creates the tables once per instance; a failed attempt is retried by the next call. */
  private ready(): Promise<void> {
    if (this.closed) return Promise.reject(new SyncError('STORAGE_ERROR', 'PostgreSQL storage is closed'));
    this.initialized ??= this.createTables().catch((error: unknown) => {
      this.initialized = undefined;
      throw error;
    });
    return this.initialized;
  }

  private async createTables(): Promise<void> {
    await this.transaction('create tables', async (client) => {
      // CREATE ... IF NOT EXISTS races with itself when two servers start at once; the lock makes it one at a time.
      await client.query('SELECT pg_advisory_xact_lock($1, $2)', [INIT_LOCK, this.lockId]);
      const exists = await client.query(this.sql.schemaExists, [this.schema]);
      // Only create a missing schema: CREATE SCHEMA checks privileges even when the schema exists.
      if (exists.rowCount === 0) await client.query(this.sql.createSchema);
      await client.query(this.sql.createTables);
    });
  }

  private async readEvents(
    checkpoint: number,
    collections: readonly string[] | undefined,
    limit: number | undefined,
    exclude: string | null,
  ): Promise<StoredEvent[]> {
    if (collections?.length === 0 || (limit !== undefined && limit <= 0)) {
      await this.ready();
      return [];
    }
    const pgLimit = limit === undefined ? null : Math.ceil(limit);
    const result = collections
      ? await this.query<EventRow>('read events', this.sql.eventsAfterIn, [checkpoint, exclude, pgLimit, [...collections]])
      : await this.query<EventRow>('read events', this.sql.eventsAfter, [checkpoint, exclude, pgLimit]);
    return result.rows.map(decodeEvent);
  }

  private async query<R extends pg.QueryResultRow>(what: string, sql: string, params: unknown[]): Promise<pg.QueryResult<R>> {
    await this.ready();
    try {
      return await this.pool.query<R>(sql, params);
    } catch (error) {
      throw storageError(`cannot ${what}`, error);
    }
  }

  private async transaction<T>(what: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (error) {
      throw storageError(`cannot ${what}`, error);
    }
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      // A connection that cannot even roll back is discarded rather than returned to the pool.
      await client.query('ROLLBACK').catch((rollbackError: Error) => (broken = rollbackError));
      throw storageError(`cannot ${what}`, error);
    } finally {
      client.release(broken);
    }
  }
}

interface StoredState {
  seqById: ReadonlyMap<string, number>;
  heads: ReadonlyMap<string, DocumentHead>;
}
interface SavePlan {
  results: SaveResult[];
  appended: (IncomingEvent & { seq: number })[];
  /** The final head of every document the batch changed. */
  heads: Map<string, DocumentHead>;
}

/**
 * Decides every event of one call in order, as if each were applied before the
 * next: a later event may build on, or retry, an earlier one of the same call.
 */
export function planSave(events: readonly IncomingEvent[], stored: StoredState, nextSeq: () => number): SavePlan {
  const seqById = new Map(stored.seqById);
  const heads = new Map(stored.heads);
  const plan: SavePlan = { results: [], appended: [], heads: new Map() };
  for (const event of events) {
    const previous = seqById.get(event.id);
    if (previous !== undefined) {
      plan.results.push({ id: event.id, status: 'duplicate', seq: previous });
      continue;
    }
    const key = headKey(event.collection, event.documentId);
    const head = heads.get(key);
    if ((head?.eventId ?? null) !== event.baseEventId) {
      plan.results.push({ id: event.id, status: 'conflict', head: head ? structuredClone(head) : null });
      continue;
    }
    const seq = nextSeq();
    const newHead: DocumentHead = {
      collection: event.collection,
      documentId: event.documentId,
      seq,
      eventId: event.id,
      data: event.data,
      deleted: event.op === 'delete',
      hlc: event.hlc,
      clientId: event.clientId,
    };
    seqById.set(event.id, seq);
    heads.set(key, newHead);
    plan.heads.set(key, newHead);
    plan.appended.push({ ...event, seq });
    plan.results.push({ id: event.id, status: 'accepted', seq });
  }
  return plan;
}

const headKey = (collection: string, documentId: string) => `${collection}\u0000${documentId}`;

function encodeEvent(event: IncomingEvent & { seq: number }, serverTime: number) {
  return {
    seq: event.seq,
    id: event.id,
    collection: event.collection,
    document_id: event.documentId,
    op: event.op,
    data: event.data,
    patch: event.patch ?? null,
    base_event_id: event.baseEventId,
    hlc: event.hlc,
    client_id: event.clientId,
    server_time: serverTime,
  };
}

function encodeHead(head: DocumentHead) {
  return {
    collection: head.collection,
    document_id: head.documentId,
    seq: head.seq,
    event_id: head.eventId,
    data: head.data,
    deleted: head.deleted,
    hlc: head.hlc,
    client_id: head.clientId,
  };
}

function decodeEvent(row: EventRow): StoredEvent {
  const event: StoredEvent = {
    id: row.id,
    collection: row.collection,
    documentId: row.document_id,
    op: row.op,
    data: row.data,
    baseEventId: row.base_event_id,
    hlc: row.hlc,
    seq: Number(row.seq),
    clientId: row.client_id,
    serverTime: Number(row.server_time),
  };
  if (row.patch !== null) event.patch = row.patch;
  return event;
}

function decodeHead(row: HeadRow): DocumentHead {
  return {
    collection: row.collection,
    documentId: row.document_id,
    seq: Number(row.seq),
    eventId: row.event_id,
    data: row.data,
    deleted: row.deleted,
    hlc: row.hlc,
    clientId: row.client_id,
  };
}

/** 32-bit FNV-1a as a signed int4: a stable advisory-lock id per schema and prefix. */
function fnv1a32(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash | 0;
}

function storageError(what: string, error: unknown): SyncError {
  if (error instanceof SyncError) return error;
  return new SyncError('STORAGE_ERROR', `${what}: ${error instanceof Error ? error.message : String(error)}`);
}
