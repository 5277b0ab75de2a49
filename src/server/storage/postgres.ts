import type pg from 'pg';
import { z } from 'zod';
import { SyncError } from '../../shared/errors.js';
import { parseOptions } from '../../shared/json.js';
import type { DocumentHead, Operation, StoredEvent } from '../../shared/protocol/index.js';
import type { SqlDialect } from '../../shared/scope.js';
import { assertClaimable } from './claims.js';
import { assertScopeCollection, assertScopeField, indexHash, scopedLimit, scopedPage, scopedRowsSql, scopedThrough, sqlString, type ScopedSql } from './scoped.js';
import { changesPage, jsonTextBytes } from './size.js';
import type { ChangesPage, EventQuery, IncomingEvent, SaveResult, ScopedChange, ScopedPage, ScopedQuery, SyncStorage } from './types.js';
import { requireOptional } from '../optional.js';

/** How long a new pool connection may take before the call that needed it fails. */
const CONNECT_TIMEOUT_MS = 10_000;

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
/** An incoming event as encodeIncoming() writes it: the event columns but the sequence and server time. */
const INCOMING_RECORD =
  'id text, collection text, document_id text, op text, data jsonb, patch jsonb, base_event_id text, hlc text, client_id text, data_bytes integer';
const INCOMING_NAMES = INCOMING_RECORD.split(', ').map((column) => column.split(' ')[0]).join(', ');
const HEAD_COLUMNS = 'collection, document_id, seq, event_id, data, deleted, hlc, client_id';
/** Calls joining one group commit stop being added once it holds this many events (a bigger call goes alone). */
const MAX_GROUP_EVENTS = 5000;
/** ... and no more JSON than this (jsonb arrays stop at 256 MB, and the text is built in memory). */
const MAX_GROUP_CHARS = 32 * 1024 * 1024;

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
/** A row of a scoped read: an event of the page (null columns when the page is empty), and the latest sequence. */
type ScopedRow = { latest: string; leave: boolean | null; cut: boolean | null } & ({ seq: null } | EventRow);
/** A row of readState: a head, or (collection null) only an event id that is stored and its sequence. */
type StateRow = HeadRow | { collection: null; event_id: string; seq: string };

/** One saveEvents call waiting for its group commit, its events already encoded as JSON. */
interface PendingSave {
  events: readonly IncomingEvent[];
  encoded: string[];
  resolve(results: SaveResult[]): void;
  reject(error: unknown): void;
}

/**
 * Scopes over a jsonb column: strings as text in the "C" collation (code
 * point order, and the collation of the scope indexes), numbers as numeric
 * (exact: jsonb keeps them as numeric), read only where jsonb_typeof says
 * the field holds one; booleans compared as jsonb. A missing field has no
 * type, so it matches nothing.
 */
function postgresDialect(column: string): SqlDialect {
  const at = (field: string) => `${column}->${sqlString(assertScopeField(field))}`;
  const text = (field: string) => `(${column}->>${sqlString(assertScopeField(field))})`;
  return {
    value: (field, type) => (type === 'string' ? text(field) : `(CASE WHEN jsonb_typeof(${at(field)}) = 'number' THEN ${text(field)}::numeric END)`),
    isType: (field, type) => `jsonb_typeof(${at(field)}) = '${type}'`,
    isBoolean: (field, value) => `${at(field)} = '${value ? 'true' : 'false'}'::jsonb`,
    param: (index) => `$${index}`,
    text: (expression) => `(${expression}) COLLATE "C"`,
  };
}

function buildSql(schema: string, prefix: string) {
  const q = (name: string) => `"${schema}"."${prefix}${name}"`;
  const [events, heads, seq, compacted, clients] = [q('events'), q('heads'), q('seq'), q('compacted'), q('clients')];
  const eventColumns = EVENT_COLUMNS.split(', ').map((c) => `e.${c}`).join(', ');
  const scoped: ScopedSql = { heads, events, dialect: postgresDialect, unindexed: (expression) => expression };
  // Where a page bounded in bytes ends ($3): from the sizes kept beside the events, without reading a document;
  // the first change is taken whatever its size. `cut` says a change was left out for its bytes.
  const changesWithin = (inCollections: string) => `WITH sized AS (
      SELECT h.seq, sum(e.data_bytes) OVER (ORDER BY h.seq ROWS UNBOUNDED PRECEDING) AS total, row_number() OVER (ORDER BY h.seq) AS n
      FROM ${heads} h JOIN ${events} e ON e.seq = h.seq
      WHERE h.seq > $1 ${inCollections} ORDER BY h.seq LIMIT $2
    )
    SELECT ${eventColumns}, EXISTS (SELECT 1 FROM sized WHERE n > 1 AND total > $3) AS cut
    FROM sized s JOIN ${events} e ON e.seq = s.seq WHERE s.n = 1 OR s.total <= $3 ORDER BY s.seq`;
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
        data_bytes integer NOT NULL, -- the size of data as pull pages count it (size.ts)
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
      -- Ids of events removed by clearEventsBefore: a late retry of one is still a duplicate.
      CREATE TABLE IF NOT EXISTS ${compacted} (
        id text PRIMARY KEY,
        seq bigint NOT NULL
      );
      -- heads are never deleted, so max(heads.seq) is the last committed sequence, even after clearEventsBefore.
      CREATE INDEX IF NOT EXISTS "${prefix}heads_seq" ON ${heads} (seq);
      -- The first user of each client id (claimClient).
      CREATE TABLE IF NOT EXISTS ${clients} (
        client_id text PRIMARY KEY,
        user_key text NOT NULL
      );`,
    schemaExists: 'SELECT 1 FROM pg_namespace WHERE nspname = $1',
    createSchema: `CREATE SCHEMA IF NOT EXISTS "${schema}"`,
    // One statement, two kinds of rows: known event ids (collection IS NULL) and the current heads of the documents.
    readState: `SELECT NULL::text AS collection, NULL::text AS document_id, seq, id AS event_id,
        NULL::jsonb AS data, NULL::boolean AS deleted, NULL::text AS hlc, NULL::text AS client_id
      FROM ${events} WHERE id = ANY($1::text[])
      UNION ALL
      SELECT NULL::text, NULL::text, seq, id, NULL::jsonb, NULL::boolean, NULL::text, NULL::text
      FROM ${compacted} WHERE id = ANY($1::text[])
      UNION ALL
      SELECT ${HEAD_COLUMNS} FROM ${heads}
      WHERE (collection, document_id) IN (SELECT * FROM unnest($2::text[], $3::text[]))`,
    // One statement appends a group: reserves $2 consecutive sequences (the write lock is held, so nobody
    // else draws in between) and stores the events under them in array order. An event marked "head" is the
    // last one of its document in the group: it moves the document's head ("move") or creates it ("new";
    // the caller read under the lock that there is none, so a plain INSERT needs no conflict check).
    append: `WITH block AS (SELECT setval('${seq}', nextval('${seq}') + $2::bigint - 1) AS last),
      input AS (
        SELECT b.last - $2::bigint + x.ord AS seq, x.*
        FROM block b, ROWS FROM (jsonb_to_recordset($1::jsonb) AS (head text, ${INCOMING_RECORD})) WITH ORDINALITY AS x(head, ${INCOMING_NAMES}, ord)
      ),
      appended AS (
        INSERT INTO ${events} (${EVENT_COLUMNS}, data_bytes)
        SELECT seq, id, collection, document_id, op, data, patch, base_event_id, hlc, client_id, $3::bigint, data_bytes FROM input
      ),
      moved AS (
        UPDATE ${heads} h SET seq = i.seq, event_id = i.id, data = i.data, deleted = i.op = 'delete', hlc = i.hlc, client_id = i.client_id
        FROM input i WHERE i.head = 'move' AND h.collection = i.collection AND h.document_id = i.document_id
      ),
      created AS (
        INSERT INTO ${heads} (${HEAD_COLUMNS})
        SELECT collection, document_id, seq, id, data, op = 'delete', hlc, client_id FROM input WHERE head = 'new'
      )
      SELECT last FROM block`,
    eventsAfter: `${selectEvents} ORDER BY seq LIMIT $3`,
    eventsAfterIn: `${selectEvents} AND collection = ANY($4::text[]) ORDER BY seq LIMIT $3`,
    heads: `SELECT ${HEAD_COLUMNS} FROM ${heads} WHERE collection = $1 AND document_id = ANY($2::text[])`,
    changesAfter: `SELECT ${eventColumns} FROM ${heads} h JOIN ${events} e ON e.seq = h.seq
      WHERE h.seq > $1 ORDER BY h.seq LIMIT $2`,
    changesAfterIn: `SELECT ${eventColumns} FROM ${heads} h JOIN ${events} e ON e.seq = h.seq
      WHERE h.seq > $1 AND h.collection = ANY($3::text[]) ORDER BY h.seq LIMIT $2`,
    changesWithin: changesWithin(''),
    changesWithinIn: changesWithin('AND h.collection = ANY($4::text[])'),
    // Inserted, or else the claim before it. A claim committed while this statement ran is not in its snapshot:
    // then it answers nothing, and `owner` (a statement of its own) reads it.
    claim: `WITH claimed AS (
        INSERT INTO ${clients} (client_id, user_key) VALUES ($1, $2) ON CONFLICT (client_id) DO NOTHING RETURNING user_key
      )
      SELECT user_key FROM claimed UNION ALL SELECT user_key FROM ${clients} WHERE client_id = $1`,
    owner: `SELECT user_key FROM ${clients} WHERE client_id = $1`,
    // Superseded events only: a head event is the document's current version (or its tombstone).
    clearBefore: `WITH cleared AS (
        DELETE FROM ${events} e WHERE e.seq < $1 AND NOT EXISTS (SELECT 1 FROM ${heads} h WHERE h.seq = e.seq) RETURNING id, seq
      ), remembered AS (
        INSERT INTO ${compacted} (id, seq) SELECT id, seq FROM cleared ON CONFLICT (id) DO NOTHING
      )
      SELECT count(*)::int AS n FROM cleared`,
    latest: `SELECT coalesce(max(seq), 0) AS seq FROM ${heads}`,
    /**
     * A scoped page in one statement, so one snapshot: the candidate rows
     * (scoped.ts) up to the limit, cut where their bytes pass maxBytes
     * (leaves count none, the first row is always taken) as changesWithin
     * does, their events, and the latest committed sequence.
     */
    scopedChanges: (checkpoint: number, query: ScopedQuery, limit: number | undefined, maxBytes: number | undefined) => {
      const params: unknown[] = [];
      const rows = scopedRowsSql(scoped, checkpoint, query, params);
      params.push(limit ?? null, maxBytes === undefined ? null : Math.floor(maxBytes));
      const [limitParam, bytesParam] = [`$${params.length - 1}`, `$${params.length}::bigint`];
      const fits = (total: string) => `(${bytesParam} IS NULL OR ${total} <= ${bytesParam})`;
      const text = `WITH candidates AS (
          SELECT seq, leave, bytes FROM (${rows}) c ORDER BY seq LIMIT ${limitParam}
        ), sized AS (
          SELECT seq, leave, sum(bytes) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS total, row_number() OVER (ORDER BY seq) AS n FROM candidates
        ), page AS (
          SELECT ${eventColumns}, s.leave, EXISTS (SELECT 1 FROM sized WHERE n > 1 AND NOT ${fits('total')}) AS cut
          FROM sized s JOIN ${events} e ON e.seq = s.seq WHERE s.n = 1 OR ${fits('s.total')}
        )
        SELECT l.latest, p.* FROM (SELECT coalesce(max(seq), 0) AS latest FROM ${heads}) l LEFT JOIN page p ON TRUE ORDER BY p.seq`;
      return { text, params };
    },
    /** Indexes for scoped reads of one collection (see indexScopeFields); names are the prefix and a hash, within 63 bytes. */
    scopeIndexes: (collection: string, fields: readonly string[]) => {
      const literal = sqlString(assertScopeCollection(collection));
      return [
        ...fields.map(
          (field) => `CREATE INDEX IF NOT EXISTS "${prefix}hs_${indexHash(collection, assertScopeField(field))}"
            ON ${heads} ((data->>${sqlString(field)}) COLLATE "C", seq) WHERE collection = ${literal}`,
        ),
        `CREATE INDEX IF NOT EXISTS "${prefix}ed_${indexHash(collection)}" ON ${events} (document_id, seq) WHERE collection = ${literal}`,
      ];
    },
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
 *
 * Group commit: an instance writes through one transaction at a time. Calls
 * that arrive meanwhile queue up and are decided together, in arrival order,
 * by the next transaction (four round trips: BEGIN with the lock, one read,
 * one append, COMMIT), as if each call had run alone one after the other.
 */
export class PostgresSyncStorage implements SyncStorage {
  private readonly pool: pg.Pool;
  private readonly ownsPool: boolean;
  private readonly sql: ReturnType<typeof buildSql>;
  private readonly schema: string;
  private readonly lockId: number;
  private initialized: Promise<void> | undefined;
  private closed = false;
  private queue: PendingSave[] = [];
  /** The loop writing queued calls, while there are any. */
  private draining: Promise<void> | undefined;
  /** Reads under way, which close() waits for before it ends the pool. */
  private readonly reads = new Set<Promise<unknown>>();

  constructor(options: PostgresSyncStorageOptions) {
    const parsed = parseOptions(optionsSchema, options, 'PostgresSyncStorage');
    this.ownsPool = !parsed.pool;
    // pg is an optional peer dependency, needed only when this storage creates its own pool.
    this.pool = parsed.pool ?? new (requireOptional<typeof pg>('pg', 'PostgresSyncStorage').Pool)({
      connectionString: parsed.connectionString,
      max: parsed.poolSize,
      application_name: 'rxdb-offline-sync',
      // A server that accepts the connection but never answers fails the call instead of hanging it (and start()).
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    });
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
    this.assertOpen(); // close() may have begun while the tables were being checked
    if (events.length === 0) return [];
    let encoded: string[];
    try {
      encoded = events.map(encodeIncoming); // here, so an event that cannot be encoded fails only its own call
    } catch (error) {
      throw storageError('cannot save events', error);
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ events, encoded, resolve, reject });
      this.draining ??= this.drain();
    });
  }

  async getEventsAfter(checkpoint: number, options: EventQuery = {}): Promise<StoredEvent[]> {
    return this.readEvents(checkpoint, options.collections, options.limit, null);
  }

  async getEventsForClient(clientId: string, collections: readonly string[], checkpoint = 0): Promise<StoredEvent[]> {
    return this.readEvents(checkpoint, collections, undefined, clientId);
  }

  async getChangesAfter(checkpoint: number, options: EventQuery = {}): Promise<ChangesPage> {
    const { collections, limit, maxBytes } = options;
    if (collections?.length === 0 || (limit !== undefined && limit <= 0)) {
      await this.ready();
      return [];
    }
    const pgLimit = limit === undefined ? null : Math.ceil(limit);
    if (maxBytes !== undefined) {
      const params = [checkpoint, pgLimit, Math.floor(maxBytes)];
      const page = collections
        ? await this.query<EventRow & { cut: boolean }>('read changes', this.sql.changesWithinIn, [...params, [...collections]])
        : await this.query<EventRow & { cut: boolean }>('read changes', this.sql.changesWithin, params);
      return changesPage(page.rows.map(decodeEvent), page.rows[0]?.cut ?? false);
    }
    const result = collections
      ? await this.query<EventRow>('read changes', this.sql.changesAfterIn, [checkpoint, pgLimit, [...collections]])
      : await this.query<EventRow>('read changes', this.sql.changesAfter, [checkpoint, pgLimit]);
    return result.rows.map(decodeEvent);
  }

  async getScopedChanges(checkpoint: number, query: ScopedQuery): Promise<ScopedPage> {
    const limit = scopedLimit(query.limit);
    if (limit !== undefined && limit <= 0) {
      await this.ready();
      return scopedPage([], false, checkpoint);
    }
    const { text, params } = this.sql.scopedChanges(checkpoint, query, limit, query.maxBytes);
    const result = await this.query<ScopedRow>('read scoped changes', text, params);
    const changes: ScopedChange[] = [];
    for (const row of result.rows) {
      if (row.seq === null) continue;
      changes.push(row.leave ? { ...decodeEvent(row), leave: true } : decodeEvent(row));
    }
    const cut = result.rows[0]?.cut ?? false;
    // Writers commit in sequence order (the write lock), so the latest head this statement saw has nothing uncommitted below it.
    return scopedPage(changes, cut, scopedThrough(changes, cut, limit, checkpoint, Number(result.rows[0]!.latest)));
  }

  /**
   * Per collection: an index on each scope field's text (in the "C"
   * collation scopes compare strings in) and the sequence over its heads,
   * and one on its events' document and sequence. Made under the init lock,
   * so servers starting together do not race. Idempotent.
   */
  async indexScopeFields(fields: Readonly<Record<string, readonly string[]>>): Promise<void> {
    const statements = Object.entries(fields).flatMap(([collection, names]) => (names.length > 0 ? this.sql.scopeIndexes(collection, names) : []));
    await this.ready();
    if (statements.length === 0) return;
    await this.transaction('index scope fields', async (client) => {
      await client.query('SELECT pg_advisory_xact_lock($1, $2)', [INIT_LOCK, this.lockId]);
      for (const statement of statements) await client.query(statement);
    });
  }

  async clearEventsBefore(checkpoint: number): Promise<number> {
    const result = await this.query<{ n: number }>('clear events', this.sql.clearBefore, [checkpoint]);
    return result.rows[0]?.n ?? 0;
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

  async claimClient(clientId: string, userKey: string): Promise<string> {
    assertClaimable(clientId, userKey);
    const claimed = await this.query<{ user_key: string }>('claim client id', this.sql.claim, [clientId, userKey]);
    const owner = claimed.rows[0] ?? (await this.query<{ user_key: string }>('claim client id', this.sql.owner, [clientId])).rows[0];
    if (!owner) throw new SyncError('STORAGE_ERROR', `cannot claim client id ${clientId}: the claim was neither recorded nor found`);
    return owner.user_key;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.draining; // calls already queued are still written
    await Promise.allSettled([...this.reads]); // and reads under way are answered
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

  /** Writes queued calls, one group commit after the other, until the queue is empty. Never rejects. */
  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const group = await this.saveGroup();
        // A group that failed as a whole is tried again call by call, so one call that cannot be
        // stored (say, a string PostgreSQL refuses) fails alone instead of taking its neighbours along.
        if (group) for (const call of group) await this.saveGroup([call]);
      }
    } finally {
      this.draining = undefined;
    }
  }

  /**
   * One transaction for `retry` or, without it, for the calls queued when the
   * write lock is granted: calls that arrive while it is awaited join. Settles
   * every call it took: each gets its results after COMMIT, or the error.
   * Returns the calls to try again one by one when a group of several failed
   * after it had its connection; nothing of it was committed then.
   */
  private async saveGroup(retry?: PendingSave[]): Promise<PendingSave[] | undefined> {
    let group: PendingSave[] = retry ?? [];
    const take = () => (retry ? retry : (group = this.takeGroup()));
    let checkedOut: CheckedOut;
    try {
      checkedOut = await this.checkout();
    } catch (error) {
      const failure = storageError('cannot save events', error);
      for (const call of take()) call.reject(failure);
      return undefined;
    }
    const { client } = checkedOut;
    let broken: Error | undefined;
    let results: SaveResult[][];
    try {
      // The lock is the transaction's: it is held until COMMIT or ROLLBACK. Both are our own integers.
      await client.query(`BEGIN; SELECT pg_advisory_xact_lock(${WRITE_LOCK}, ${this.lockId})`);
      results = await this.decideAndAppend(client, take());
      await client.query('COMMIT');
    } catch (error) {
      // A connection that cannot even roll back is discarded rather than returned to the pool.
      await client.query('ROLLBACK').catch((rollbackError: Error) => (broken = rollbackError));
      checkedOut.release(broken);
      if (group.length === 0) group = take(); // BEGIN failed: the queued calls are this group
      if (!retry && group.length > 1) return group;
      const failure = storageError('cannot save events', error);
      for (const call of group) call.reject(failure);
      return undefined;
    }
    checkedOut.release();
    group.forEach((call, i) => call.resolve(results[i]!));
    return undefined;
  }

  /** The next calls from the queue, in order: at least one, and within MAX_GROUP_EVENTS and MAX_GROUP_CHARS unless one call alone is over. */
  private takeGroup(): PendingSave[] {
    let count = 0;
    let chars = 0;
    let taken = 0;
    while (taken < this.queue.length) {
      const call = this.queue[taken]!;
      const size = call.events.length;
      const length = call.encoded.reduce((sum, text) => sum + text.length, 0);
      if (taken > 0 && (count + size > MAX_GROUP_EVENTS || chars + length > MAX_GROUP_CHARS)) break;
      count += size;
      chars += length;
      taken++;
    }
    return this.queue.splice(0, taken);
  }

  /** Inside the locked transaction: decides every event of the group and appends the accepted ones. */
  private async decideAndAppend(client: pg.PoolClient, group: readonly PendingSave[]): Promise<SaveResult[][]> {
    const events = group.flatMap((call) => call.events);
    // READ COMMITTED: this statement sees every writer that held the lock before us.
    const keys = new Map(events.map((e) => [headKey(e.collection, e.documentId), e]));
    const rows = await client.query<StateRow>(this.sql.readState, [
      [...new Set(events.map((e) => e.id))],
      [...keys.values()].map((e) => e.collection),
      [...keys.values()].map((e) => e.documentId),
    ]);
    const state: StoredState = { seqById: new Map(), heads: new Map() };
    for (const row of rows.rows) {
      state.seqById.set(row.event_id, Number(row.seq));
      if (row.collection !== null) state.heads.set(headKey(row.collection, row.document_id), decodeHead(row));
    }
    // Plan once to learn which events are appended, then again with their real sequences (planSave is pure).
    const dryRun = planSave(events, state, () => 0);
    let plan = dryRun;
    if (dryRun.appended.length > 0) {
      const encoded = group.flatMap((call) => call.encoded);
      const head = new Map<number, string>();
      for (const [key, index] of dryRun.lastOfDocument) head.set(index, state.heads.has(key) ? 'move' : 'new');
      const appended = `[${dryRun.appended
        .map((i) => (head.has(i) ? `{"head":"${head.get(i)}",${encoded[i]!.slice(1)}` : encoded[i]))
        .join(',')}]`;
      const block = await client.query<{ last: string }>(this.sql.append, [appended, dryRun.appended.length, Date.now()]);
      let next = Number(block.rows[0]!.last) - dryRun.appended.length + 1;
      plan = planSave(events, state, () => next++);
    }
    let offset = 0;
    return group.map((call) => plan.results.slice(offset, (offset += call.events.length)));
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
    this.assertOpen();
    const reading = this.pool.query<R>(sql, params);
    this.reads.add(reading);
    try {
      return await reading;
    } catch (error) {
      throw storageError(`cannot ${what}`, error);
    } finally {
      this.reads.delete(reading);
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new SyncError('STORAGE_ERROR', 'PostgreSQL storage is closed');
  }

  private async transaction<T>(what: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    let checkedOut: CheckedOut;
    try {
      checkedOut = await this.checkout();
    } catch (error) {
      throw storageError(`cannot ${what}`, error);
    }
    const { client } = checkedOut;
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
      checkedOut.release(broken);
    }
  }

  /**
   * A pooled connection for a transaction. The pool stops listening for its
   * errors while it is checked out, so one the server sends then (the
   * connection killed, say) would be an uncaught exception that ends the
   * process: it is recorded instead, and the connection discarded on release.
   */
  private async checkout(): Promise<CheckedOut> {
    const client = await this.pool.connect();
    let lost: Error | undefined;
    const onError = (error: Error) => {
      lost ??= error;
    };
    client.on('error', onError);
    return {
      client,
      release: (error?: Error) => {
        client.off('error', onError);
        client.release(error ?? lost);
      },
    };
  }
}

interface CheckedOut {
  client: pg.PoolClient;
  release(error?: Error): void;
}

interface StoredState {
  seqById: Map<string, number>;
  heads: Map<string, DocumentHead>;
}
interface SavePlan {
  results: SaveResult[];
  /** The indexes of the events to append, in the order of their sequences. */
  appended: number[];
  /** For every document changed, the index of its last appended event: its new head. */
  lastOfDocument: Map<string, number>;
}

/**
 * Decides every event in order, as if each were applied before the next: a
 * later event may build on, or retry, an earlier one (of its own call or of
 * an earlier call in the same group). Leaves `stored` as it was.
 */
export function planSave(events: readonly IncomingEvent[], stored: StoredState, nextSeq: () => number): SavePlan {
  const seqById = new Map(stored.seqById);
  const heads = new Map(stored.heads);
  const plan: SavePlan = { results: [], appended: [], lastOfDocument: new Map() };
  events.forEach((event, index) => {
    const previous = seqById.get(event.id);
    if (previous !== undefined) {
      plan.results.push({ id: event.id, status: 'duplicate', seq: previous });
      return;
    }
    const key = headKey(event.collection, event.documentId);
    const head = heads.get(key);
    if ((head?.eventId ?? null) !== event.baseEventId) {
      plan.results.push({ id: event.id, status: 'conflict', head: head ? structuredClone(head) : null });
      return;
    }
    const seq = nextSeq();
    seqById.set(event.id, seq);
    heads.set(key, {
      collection: event.collection,
      documentId: event.documentId,
      seq,
      eventId: event.id,
      data: event.data,
      deleted: event.op === 'delete',
      hlc: event.hlc,
      clientId: event.clientId,
    });
    plan.appended.push(index);
    plan.lastOfDocument.set(key, index);
    plan.results.push({ id: event.id, status: 'accepted', seq });
  });
  return plan;
}

const headKey = (collection: string, documentId: string) => `${collection}\u0000${documentId}`;

/** An incoming event as one element of the append statement's JSON array (INCOMING_RECORD). */
function encodeIncoming(event: IncomingEvent): string {
  // The document encoded once, for the array and for its size.
  const data = JSON.stringify(event.data);
  const rest = JSON.stringify({
    id: event.id,
    collection: event.collection,
    document_id: event.documentId,
    op: event.op,
    patch: event.patch ?? null,
    base_event_id: event.baseEventId,
    hlc: event.hlc,
    client_id: event.clientId,
    data_bytes: jsonTextBytes(data),
  });
  return `${rest.slice(0, -1)},"data":${data}}`;
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
