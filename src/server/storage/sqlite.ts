import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type Database from 'better-sqlite3';
import { z } from 'zod';
import { SyncError } from '../../shared/errors.js';
import { parseOptions } from '../../shared/json.js';
import type { DocumentHead, StoredEvent } from '../../shared/protocol/index.js';
import type { SqlDialect } from '../../shared/scope.js';
import { assertClaimable } from './claims.js';
import { assertScopeCollection, assertScopeField, indexHash, scopedLimit, scopedPage, scopedRowsSql, scopedThrough, sqlString, type ScopedSql } from './scoped.js';
import { EVENT_COLUMNS, HEAD_COLUMNS, rowDecoders, type EventRow as EventColumns, type HeadRow as HeadColumns } from './rows.js';
import { decideSave, type HeadReader } from './save.js';
import { changesPage, jsonTextBytes } from './size.js';
import type { ChangesPage, EventQuery, IncomingEvent, SaveResult, ScopedChange, ScopedPage, ScopedQuery, SyncStorage } from './types.js';
import { requireOptional } from '../optional.js';

const optionsSchema = z.strictObject({
  /** The database file; its directory is created when missing. `:memory:` for a throwaway database. */
  path: z.string().min(1),
});
export type SqliteSyncStorageOptions = z.input<typeof optionsSchema>;

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, -- AUTOINCREMENT: never reuse a sequence, even after clearEventsBefore
    id TEXT NOT NULL UNIQUE,
    collection TEXT NOT NULL,
    document_id TEXT NOT NULL,
    op TEXT NOT NULL,
    -- The size of data as pull pages count it (size.ts). Before data: reading it never reads a large document's overflow pages.
    data_bytes INTEGER NOT NULL,
    data TEXT NOT NULL,
    patch TEXT,
    base_event_id TEXT,
    hlc TEXT NOT NULL,
    client_id TEXT NOT NULL,
    server_time INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS events_collection_seq ON events (collection, seq);
  -- Ids of events removed by clearEventsBefore: a late retry of one is still a duplicate.
  CREATE TABLE IF NOT EXISTS compacted (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS heads (
    collection TEXT NOT NULL,
    document_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    data TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    hlc TEXT NOT NULL,
    client_id TEXT NOT NULL,
    PRIMARY KEY (collection, document_id)
  ) WITHOUT ROWID;
  CREATE INDEX IF NOT EXISTS heads_seq ON heads (seq);
  -- The first user of each client id (claimClient).
  CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    user_key TEXT NOT NULL
  ) WITHOUT ROWID;
`;

/** Rows as better-sqlite3 gives them: JSON as text, integers as numbers, booleans as 0 or 1. */
type EventRow = EventColumns<string, number>;
type HeadRow = HeadColumns<string, number, number>;
const { event: decodeEvent, head: decodeHead } = rowDecoders<string, number, number>({
  json: (text) => JSON.parse(text),
  int: (value) => value,
  flag: (value) => value !== 0,
});
const headRows: HeadReader<HeadRow> = { eventId: (row) => row.event_id, conflictHead: decodeHead };

interface SizeRow {
  seq: number;
  bytes: number;
}
interface CandidateRow {
  seq: number;
  leave: number;
  bytes: number;
}
/** An incoming event with its JSON already encoded, so a bad event fails only its own call. */
type EncodedEvent = Omit<EventRow, 'seq' | 'server_time'> & { data_bytes: number };
interface PendingSave {
  events: EncodedEvent[];
  resolve(results: SaveResult[]): void;
  reject(error: unknown): void;
}

function prepareStatements(db: Database.Database) {
  const eventsAfter = `SELECT ${EVENT_COLUMNS} FROM events WHERE seq > @after`;
  return {
    seqById: db.prepare<{ id: string }, { seq: number }>(
      'SELECT seq FROM events WHERE id = @id UNION ALL SELECT seq FROM compacted WHERE id = @id LIMIT 1',
    ),
    head: db.prepare<[string, string], HeadRow>(`SELECT ${HEAD_COLUMNS} FROM heads WHERE collection = ? AND document_id = ?`),
    heads: db.prepare<[string, string], HeadRow>(
      `SELECT ${HEAD_COLUMNS} FROM heads WHERE collection = ? AND document_id IN (SELECT value FROM json_each(?))`,
    ),
    insertEvent: db.prepare<EncodedEvent & { server_time: number }>(
      `INSERT INTO events (id, collection, document_id, op, data_bytes, data, patch, base_event_id, hlc, client_id, server_time)
       VALUES (@id, @collection, @document_id, @op, @data_bytes, @data, @patch, @base_event_id, @hlc, @client_id, @server_time)`,
    ),
    upsertHead: db.prepare<HeadRow>(
      `INSERT INTO heads (${HEAD_COLUMNS}) VALUES (@collection, @document_id, @seq, @event_id, @data, @deleted, @hlc, @client_id)
       ON CONFLICT (collection, document_id) DO UPDATE SET seq = excluded.seq, event_id = excluded.event_id,
         data = excluded.data, deleted = excluded.deleted, hlc = excluded.hlc, client_id = excluded.client_id`,
    ),
    eventsAfter: db.prepare<{ after: number; limit: number }, EventRow>(
      `${eventsAfter} ORDER BY seq LIMIT @limit`,
    ),
    eventsAfterIn: db.prepare<{ after: number; limit: number; collections: string }, EventRow>(
      `${eventsAfter} AND collection IN (SELECT value FROM json_each(@collections)) ORDER BY seq LIMIT @limit`,
    ),
    // Heads in (after, through]: `through` ends a page that maxBytes cut (see changeSizes).
    changesAfter: db.prepare<{ after: number; through: number; limit: number }, EventRow>(
      `SELECT ${EVENT_COLUMNS.split(', ').map((c) => `e.${c}`).join(', ')} FROM heads h JOIN events e ON e.seq = h.seq
       WHERE h.seq > @after AND h.seq <= @through ORDER BY h.seq LIMIT @limit`,
    ),
    changesAfterIn: db.prepare<{ after: number; through: number; limit: number; collections: string }, EventRow>(
      `SELECT ${EVENT_COLUMNS.split(', ').map((c) => `e.${c}`).join(', ')} FROM heads h JOIN events e ON e.seq = h.seq
       WHERE h.seq > @after AND h.seq <= @through AND +h.collection IN (SELECT value FROM json_each(@collections)) ORDER BY h.seq LIMIT @limit`,
    ),
    // The same heads, only their sequences and sizes: where a page bounded in bytes ends, without reading a document.
    changeSizes: db.prepare<{ after: number; limit: number }, SizeRow>(
      'SELECT h.seq AS seq, e.data_bytes AS bytes FROM heads h JOIN events e ON e.seq = h.seq WHERE h.seq > @after ORDER BY h.seq LIMIT @limit',
    ),
    changeSizesIn: db.prepare<{ after: number; limit: number; collections: string }, SizeRow>(
      `SELECT h.seq AS seq, e.data_bytes AS bytes FROM heads h JOIN events e ON e.seq = h.seq
       WHERE h.seq > @after AND +h.collection IN (SELECT value FROM json_each(@collections)) ORDER BY h.seq LIMIT @limit`,
    ),
    // The events of a scoped page, once its rows are chosen.
    eventsBySeq: db.prepare<[string], EventRow>(`SELECT ${EVENT_COLUMNS} FROM events WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY seq`),
    claim: db.prepare<[string, string]>('INSERT INTO clients (client_id, user_key) VALUES (?, ?) ON CONFLICT (client_id) DO NOTHING'),
    owner: db.prepare<[string], { user_key: string }>('SELECT user_key FROM clients WHERE client_id = ?'),
    // Superseded events only: a head event is the document's current version (or its tombstone).
    rememberCleared: db.prepare<[number]>(
      'INSERT OR IGNORE INTO compacted (id, seq) SELECT id, seq FROM events WHERE seq < ? AND NOT EXISTS (SELECT 1 FROM heads h WHERE h.seq = events.seq)',
    ),
    clearBefore: db.prepare<[number]>('DELETE FROM events WHERE seq < ? AND NOT EXISTS (SELECT 1 FROM heads h WHERE h.seq = events.seq)'),
    // sqlite_sequence is AUTOINCREMENT's high-water mark and survives deleting every event.
    latest: db.prepare<[], { seq: number }>("SELECT seq FROM sqlite_sequence WHERE name = 'events'"),
    count: db.prepare<[], { n: number }>('SELECT count(*) AS n FROM events'),
  };
}
type Statements = ReturnType<typeof prepareStatements>;

/**
 * Scopes over the JSON text of a column: json_extract gives strings as text
 * (BINARY collation compares UTF-8 bytes, which is code point order) and
 * numbers as numbers; json_type tells the JSON types apart (true and false
 * are types of their own, so 1 is no boolean). A missing field has no type,
 * so it matches nothing. The expressions are the ones indexScopeFields
 * indexes, so the planner can use those indexes.
 */
function sqliteDialect(column: string): SqlDialect {
  const path = (field: string) => sqlString(`$.${assertScopeField(field)}`);
  const TYPES = { string: "= 'text'", number: "IN ('integer', 'real')", boolean: "IN ('true', 'false')" } as const;
  return {
    value: (field) => `json_extract(${column}, ${path(field)})`,
    isType: (field, type) => `json_type(${column}, ${path(field)}) ${TYPES[type]}`,
    isBoolean: (field, value) => `json_type(${column}, ${path(field)}) = '${value ? 'true' : 'false'}'`,
    param: (index) => `@p${index}`,
    text: (expression) => expression,
  };
}

const SCOPED_SQL: ScopedSql = {
  heads: 'heads',
  events: 'events',
  dialect: sqliteDialect,
  // Leaves are found among the heads changed after L, in sequence order: the sequence index, not the primary key.
  unindexed: (expression) => `+${expression}`,
};
/**
 * The statement of a scoped read's candidate rows (seq, leave, bytes) and
 * its named parameters: what getScopedChanges runs, for EXPLAIN QUERY PLAN.
 */
export function scopedReadSql(checkpoint: number, query: ScopedQuery): { sql: string; params: Record<string, unknown> } {
  const params: unknown[] = [];
  const rows = scopedRowsSql(SCOPED_SQL, checkpoint, query, params);
  const limit = scopedLimit(query.limit);
  params.push(limit ?? -1);
  return {
    // ORDER BY on the compound itself: SQLite merges its arms, each in its index's order, and stops at the limit.
    sql: `${rows} ORDER BY seq LIMIT @p${params.length}`,
    params: Object.fromEntries(params.map((value, i) => [`p${i + 1}`, value])),
  };
}

/** How many compiled scoped reads are kept (one per shape of scope and collection, whatever the values). */
const SCOPED_STATEMENTS = 64;
/**
 * Pages of getChangesAfter kept for readers that ask the same again: after a
 * restart thousands of devices pull from the same checkpoint at once, and
 * each read would cost the event loop the same rows. Heads change only by a
 * save, which takes a new sequence, so a page read while the latest
 * sequence was S is the answer to the same query for as long as it is S.
 */
const SHARED_PAGES = 16;
/** Pages with more events than this are not kept (the memory of a few full pages is enough). */
const SHARED_PAGE_EVENTS = 5000;

/**
 * Durable storage in one SQLite file (WAL, synchronous=FULL). Pushes that
 * arrive in the same tick are written in one transaction, so many clients
 * pushing at once share one fsync instead of paying one each.
 */
export class SqliteSyncStorage implements SyncStorage {
  private readonly path: string;
  /** better-sqlite3, an optional peer dependency: loaded when this storage is created. */
  private readonly driver: typeof Database;
  private db: Database.Database | undefined;
  private statements: Statements | undefined;
  private writeBatch: Database.Transaction<(pending: PendingSave[]) => SaveResult[][]> | undefined;
  private closed = false;
  /** Compiled scoped reads by their SQL, least recently used first. */
  private readonly scopedStatements = new Map<string, Database.Statement<Record<string, unknown>, CandidateRow>>();
  private queue: PendingSave[] = [];
  private flushScheduled = false;
  /** Recent pages of getChangesAfter by query, least recently used first, each with the latest sequence it was read at. */
  private readonly sharedPages = new Map<string, { latest: number; page: ChangesPage }>();

  constructor(options: SqliteSyncStorageOptions) {
    this.path = parseOptions(optionsSchema, options, 'SqliteSyncStorage').path;
    this.driver = requireOptional<typeof Database>('better-sqlite3', 'SqliteSyncStorage');
  }

  async init(): Promise<void> {
    this.open();
  }

  async saveEvents(events: readonly IncomingEvent[]): Promise<SaveResult[]> {
    this.open();
    if (events.length === 0) return [];
    let encoded: EncodedEvent[];
    try {
      encoded = events.map(encodeEvent);
    } catch (error) {
      throw storageError('cannot encode events', error);
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ events: encoded, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  async getEventsAfter(checkpoint: number, options: EventQuery = {}): Promise<StoredEvent[]> {
    const statements = this.ready();
    const { collections, limit } = options;
    if (collections?.length === 0 || (limit !== undefined && limit <= 0)) return [];
    const params = { after: checkpoint, limit: limit === undefined ? -1 : Math.ceil(limit) };
    const rows = this.run('read events', () =>
      collections
        ? statements.eventsAfterIn.all({ ...params, collections: JSON.stringify(collections) })
        : statements.eventsAfter.all(params),
    );
    return rows.map(decodeEvent);
  }

  async getChangesAfter(checkpoint: number, options: EventQuery = {}): Promise<ChangesPage> {
    const statements = this.ready();
    const { collections, limit, maxBytes } = options;
    if (collections?.length === 0 || (limit !== undefined && limit <= 0)) return [];
    const params = { after: checkpoint, limit: limit === undefined ? -1 : Math.ceil(limit) };
    const inList = collections && JSON.stringify(collections);
    const sizes = () => (inList === undefined ? statements.changeSizes.iterate(params) : statements.changeSizesIn.iterate({ ...params, collections: inList }));
    const read = (through: number) =>
      inList === undefined ? statements.changesAfter.all({ ...params, through }) : statements.changesAfterIn.all({ ...params, through, collections: inList });
    return this.run('read changes', () => {
      const key = `${checkpoint}|${inList ?? '*'}|${params.limit}|${maxBytes ?? ''}`;
      const latest = statements.latest.get()?.seq ?? 0;
      const shared = this.sharedPages.get(key);
      if (shared) {
        this.sharedPages.delete(key);
        if (shared.latest === latest) {
          this.sharedPages.set(key, shared);
          return shared.page;
        }
      }
      const page = readPage();
      if (page.length <= SHARED_PAGE_EVENTS) {
        this.sharedPages.set(key, { latest, page });
        if (this.sharedPages.size > SHARED_PAGES) this.sharedPages.delete(this.sharedPages.keys().next().value!);
      }
      return page;
    });

    function readPage(): ChangesPage {
      // Where the page ends, from the sizes alone; then the page up to there. A write in between (by
      // another process on the same file) only moves heads to sequences above `through`, never into the page.
      let through = Number.MAX_SAFE_INTEGER;
      let cut = false;
      if (maxBytes !== undefined) {
        let bytes = 0;
        let taken = 0;
        // Stepped one row at a time, and left at the first that does not fit.
        for (const row of sizes()) {
          bytes += row.bytes;
          if (bytes > maxBytes && taken > 0) {
            cut = true;
            break;
          }
          through = row.seq;
          taken++;
        }
      }
      return changesPage(read(through).map(decodeEvent), cut);
    }
  }

  async getScopedChanges(checkpoint: number, query: ScopedQuery): Promise<ScopedPage> {
    const statements = this.ready();
    const limit = scopedLimit(query.limit);
    if (limit !== undefined && limit <= 0) return scopedPage([], false, checkpoint);
    const { maxBytes } = query;
    const { sql, params: bound } = scopedReadSql(checkpoint, query);
    const candidates = this.run('read scoped changes', () => this.scopedStatement(sql));
    return this.run('read scoped changes', () =>
      // One read transaction: the page, its events and the latest sequence are of one snapshot.
      this.db!.transaction(() => {
        // Where the page ends, from sequences and sizes alone (leaves count no bytes); then its events.
        const chosen: CandidateRow[] = [];
        let bytes = 0;
        let cut = false;
        for (const row of candidates.iterate(bound)) {
          if (maxBytes !== undefined && !row.leave) {
            bytes += row.bytes;
            if (bytes > maxBytes && chosen.length > 0) {
              cut = true;
              break;
            }
          }
          chosen.push(row);
        }
        const events = chosen.length === 0 ? [] : statements.eventsBySeq.all(JSON.stringify(chosen.map((row) => row.seq)));
        const changes = events.map((row, i): ScopedChange => (chosen[i]!.leave ? { ...decodeEvent(row), leave: true } : decodeEvent(row)));
        const latest = statements.latest.get()?.seq ?? 0;
        return scopedPage(changes, cut, scopedThrough(changes, cut, limit, checkpoint, latest));
      })(),
    );
  }

  /**
   * Per collection: an index on each scope field's value and the sequence
   * over its heads (partial: that collection's only), and one on its events'
   * document and sequence (for the version a reader may hold). Idempotent.
   */
  async indexScopeFields(fields: Readonly<Record<string, readonly string[]>>): Promise<void> {
    this.ready();
    const sql: string[] = [];
    for (const [collection, names] of Object.entries(fields)) {
      const literal = sqlString(assertScopeCollection(collection));
      for (const field of names) {
        sql.push(`CREATE INDEX IF NOT EXISTS "heads_scope_${indexHash(collection, assertScopeField(field))}"
          ON heads (json_extract(data, ${sqlString(`$.${field}`)}), seq) WHERE collection = ${literal}`);
      }
      if (names.length > 0) sql.push(`CREATE INDEX IF NOT EXISTS "events_document_${indexHash(collection)}" ON events (document_id, seq) WHERE collection = ${literal}`);
    }
    if (sql.length === 0) return;
    this.run('index scope fields', () => this.db!.transaction(() => sql.forEach((statement) => this.db!.exec(statement))).immediate());
  }

  private scopedStatement(sql: string): Database.Statement<Record<string, unknown>, CandidateRow> {
    let statement = this.scopedStatements.get(sql);
    if (statement) this.scopedStatements.delete(sql);
    else {
      statement = this.db!.prepare<Record<string, unknown>, CandidateRow>(sql);
      if (this.scopedStatements.size >= SCOPED_STATEMENTS) this.scopedStatements.delete(this.scopedStatements.keys().next().value!);
    }
    this.scopedStatements.set(sql, statement);
    return statement;
  }

  async claimClient(clientId: string, userKey: string): Promise<string> {
    assertClaimable(clientId, userKey);
    const statements = this.ready();
    // Read first: after a restart every device that reconnects is known, and a read costs no write lock or fsync.
    const known = this.run('claim client id', () => statements.owner.get(clientId));
    if (known) return known.user_key;
    return this.run('claim client id', () =>
      this.db!.transaction(() => {
        statements.claim.run(clientId, userKey);
        return statements.owner.get(clientId)!.user_key;
      }).immediate(),
    );
  }

  async clearEventsBefore(checkpoint: number): Promise<number> {
    const statements = this.ready();
    return this.run('clear events', () =>
      this.db!.transaction(() => {
        statements.rememberCleared.run(checkpoint);
        return statements.clearBefore.run(checkpoint).changes;
      }).immediate(),
    );
  }

  async getHeads(collection: string, documentIds: readonly string[]): Promise<DocumentHead[]> {
    const statements = this.ready();
    if (documentIds.length === 0) return [];
    const rows = this.run('read heads', () => statements.heads.all(collection, JSON.stringify([...new Set(documentIds)])));
    const byId = new Map(rows.map((row) => [row.document_id, decodeHead(row)]));
    return documentIds.flatMap((id) => {
      const head = byId.get(id);
      byId.delete(id); // a repeated id is answered once
      return head ? [head] : [];
    });
  }

  async getLatestSequence(): Promise<number> {
    const statements = this.ready();
    return this.run('read latest sequence', () => statements.latest.get()?.seq ?? 0);
  }

  async countEvents(): Promise<number> {
    const statements = this.ready();
    return this.run('count events', () => statements.count.get()!.n);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.db) {
      this.flush();
      this.db.close();
    }
    this.closed = true;
    this.db = undefined;
    this.statements = undefined;
    this.scopedStatements.clear();
    this.sharedPages.clear();
    this.writeBatch = undefined;
  }

  /** Opens the file on first use; init() is the usual first use. */
  private open(): Statements {
    if (this.closed) throw new SyncError('STORAGE_ERROR', `SQLite storage ${this.path} is closed`);
    if (this.statements) return this.statements;
    try {
      if (this.path !== ':memory:') mkdirSync(dirname(this.path), { recursive: true });
      const db = new this.driver(this.path);
      // First: the workers of `serve --workers` open the file at once, and each waits its turn for the lock.
      db.pragma('busy_timeout = 5000');
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL'); // an acknowledged push survives a power cut, not just a crash
      db.exec(SCHEMA);
      const statements = prepareStatements(db);
      this.writeBatch = db.transaction((pending: PendingSave[]) =>
        pending.map((call) => call.events.map((event) => saveOne(statements, event))),
      );
      this.statements = statements;
      this.db = db;
      return statements;
    } catch (error) {
      throw storageError(`cannot open SQLite database ${this.path}`, error);
    }
  }

  /** For reads: first writes any queued pushes, so a read sees every write issued before it. */
  private ready(): Statements {
    const statements = this.open();
    this.flush();
    return statements;
  }

  private flush(): void {
    this.flushScheduled = false;
    const pending = this.queue;
    if (pending.length === 0) return;
    this.queue = [];
    let results: SaveResult[][];
    try {
      // IMMEDIATE: the write lock is taken (waiting up to busy_timeout) before the heads are read. A
      // deferred transaction that read first could not upgrade once another process (serve --workers) wrote.
      results = this.writeBatch!.immediate(pending);
    } catch (error) {
      const failure = storageError('cannot save events', error);
      for (const call of pending) call.reject(failure);
      return;
    }
    pending.forEach((call, i) => call.resolve(results[i]!));
  }

  private run<T>(what: string, action: () => T): T {
    try {
      return action();
    } catch (error) {
      throw storageError(`cannot ${what}`, error);
    }
  }
}

/** The conditional append of one event; runs inside the flush transaction. */
function saveOne(statements: Statements, event: EncodedEvent): SaveResult {
  const known = statements.seqById.get({ id: event.id })?.seq;
  // The id alone decides a duplicate: its document's head is read only for a new id.
  const head = known === undefined ? statements.head.get(event.collection, event.document_id) : undefined;
  const refused = decideSave({ id: event.id, baseEventId: event.base_event_id }, known, head, headRows);
  if (refused) return refused;
  const serverTime = Date.now();
  const seq = Number(statements.insertEvent.run(Object.assign({}, event, { server_time: serverTime })).lastInsertRowid);
  statements.upsertHead.run({
    collection: event.collection,
    document_id: event.document_id,
    seq,
    event_id: event.id,
    data: event.data,
    deleted: event.op === 'delete' ? 1 : 0,
    hlc: event.hlc,
    client_id: event.client_id,
  });
  return { id: event.id, status: 'accepted', seq };
}

function encodeEvent(event: IncomingEvent): EncodedEvent {
  const data = JSON.stringify(event.data);
  return {
    id: event.id,
    collection: event.collection,
    document_id: event.documentId,
    op: event.op,
    data_bytes: jsonTextBytes(data),
    data,
    patch: event.patch === undefined ? null : JSON.stringify(event.patch),
    base_event_id: event.baseEventId,
    hlc: event.hlc,
    client_id: event.clientId,
  };
}

function storageError(what: string, error: unknown): SyncError {
  if (error instanceof SyncError) return error;
  return new SyncError('STORAGE_ERROR', `${what}: ${error instanceof Error ? error.message : String(error)}`);
}
