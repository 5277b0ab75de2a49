import type Database from 'better-sqlite3';
import type { Operation } from '../../../shared/protocol/index.js';
import type { SqlDialect } from '../../../shared/scope.js';
import { EVENT_COLUMNS, HEAD_COLUMNS, rowDecoders, type EventRow as EventColumns, type HeadRow as HeadColumns } from '../rows.js';
import type { HeadReader } from '../save.js';
import { assertScopeField, scopedLimit, scopedRowsSql, sqlString, type ScopedSql } from '../scoped.js';
import { jsonTextBytes } from '../size.js';
import type { IncomingEvent, ScopedChange, ScopedQuery } from '../types.js';

/** Rows as better-sqlite3 gives them: JSON as text, integers as numbers, booleans as 0 or 1. */
export type EventRow = EventColumns<string, number>;
export type HeadRow = HeadColumns<string, number, number>;
export const { event: decodeEvent, head: decodeHead } = rowDecoders<string, number, number>({
  json: (text) => JSON.parse(text),
  int: (value) => value,
  flag: (value) => value !== 0,
});
export const headRows: HeadReader<HeadRow> = { eventId: (row) => row.event_id, conflictHead: decodeHead };

/** A head's sequence and the size of its document, as pull pages count it. */
export interface SizeRow {
  seq: number;
  bytes: number;
}
/** A row of a scoped read (see scopedReadSql): the head's change, whether it is a leave, and its size. */
export interface CandidateRow {
  seq: number;
  leave: number;
  bytes: number;
  id: string;
  collection: string;
  document_id: string;
  op: Operation;
  data: string;
  hlc: string;
  client_id: string;
}

/** The change of a scoped read's row. */
export function decodeChange(row: CandidateRow): ScopedChange {
  const change: ScopedChange = { id: row.id, collection: row.collection, documentId: row.document_id, op: row.op, data: JSON.parse(row.data) as ScopedChange['data'], hlc: row.hlc, seq: row.seq, clientId: row.client_id };
  if (row.leave) change.leave = true;
  return change;
}
/** An incoming event with its JSON already encoded, so a bad event fails only its own call. */
export type EncodedEvent = Omit<EventRow, 'seq' | 'server_time'> & { data_bytes: number };

export function encodeEvent(event: IncomingEvent): EncodedEvent {
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

/** The statements that read and write the sync tables, compiled once per database. */
/**
 * The statements of prepareStatements, named: an inferred type would name
 * better-sqlite3's inner namespace, which a declaration file cannot.
 */
export interface Statements {
  seqById: Database.Statement<{ id: string }, { seq: number }>;
  head: Database.Statement<[string, string], HeadRow>;
  heads: Database.Statement<[string, string], HeadRow>;
  insertEvent: Database.Statement<EncodedEvent & { server_time: number }, unknown>;
  upsertHead: Database.Statement<HeadRow & { op: Operation }, unknown>;
  eventsAfter: Database.Statement<{ after: number; limit: number }, EventRow>;
  eventsAfterIn: Database.Statement<{ after: number; limit: number; collections: string }, EventRow>;
  changesAfter: Database.Statement<{ after: number; through: number; limit: number }, EventRow>;
  changesAfterIn: Database.Statement<{ after: number; through: number; limit: number; collections: string }, EventRow>;
  changeSizes: Database.Statement<{ after: number; limit: number }, SizeRow>;
  changeSizesIn: Database.Statement<{ after: number; limit: number; collections: string }, SizeRow>;
  claim: Database.Statement<[string, string], unknown>;
  owner: Database.Statement<[string], { user_key: string }>;
  rememberCleared: Database.Statement<[number], unknown>;
  clearBefore: Database.Statement<[number], unknown>;
  latest: Database.Statement<[], { seq: number }>;
  count: Database.Statement<[], { n: number }>;
}

export function prepareStatements(db: Database.Database): Statements {
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
    upsertHead: db.prepare<HeadRow & { op: Operation }>(
      `INSERT INTO heads (${HEAD_COLUMNS}, op) VALUES (@collection, @document_id, @seq, @event_id, @data, @deleted, @hlc, @client_id, @op)
       ON CONFLICT (collection, document_id) DO UPDATE SET seq = excluded.seq, event_id = excluded.event_id,
         data = excluded.data, deleted = excluded.deleted, hlc = excluded.hlc, client_id = excluded.client_id, op = excluded.op`,
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
  // A head keeps its event's JSON text: its UTF-8 length is the size kept beside the event, without reading the event.
  headBytes: 'length(CAST(h.data AS BLOB))',
  // A page of a 5 % scope of 1,000,000 documents read its heads, then their events, each on a page of the file
  // of its own: reading the heads alone took 370 ms for the 50,000, against 580.
  change: 'h.event_id AS id, h.collection AS collection, h.document_id AS document_id, h.op AS op, h.data AS data, h.hlc AS hlc, h.client_id AS client_id',
};
/**
 * The statement of a scoped read's candidate rows (seq, leave, bytes) and
 * its named parameters: what getScopedChanges runs, for EXPLAIN QUERY PLAN.
 * `latest`: the latest sequence, read in the same transaction (see scopedRowsSql).
 */
export function scopedReadSql(checkpoint: number, query: ScopedQuery, latest?: number): { sql: string; params: Record<string, unknown> } {
  const params: unknown[] = [];
  const rows = scopedRowsSql(SCOPED_SQL, checkpoint, query, params, latest);
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

/** Compiled scoped reads by their SQL, least recently used first. */
export class ScopedStatements {
  private readonly statements = new Map<string, Database.Statement<Record<string, unknown>, CandidateRow>>();

  /** The compiled statement of `sql` (see scopedReadSql), compiled now if it is not kept. */
  get(db: Database.Database, sql: string): Database.Statement<Record<string, unknown>, CandidateRow> {
    let statement = this.statements.get(sql);
    if (statement) this.statements.delete(sql);
    else {
      statement = db.prepare<Record<string, unknown>, CandidateRow>(sql);
      if (this.statements.size >= SCOPED_STATEMENTS) this.statements.delete(this.statements.keys().next().value!);
    }
    this.statements.set(sql, statement);
    return statement;
  }

  clear(): void {
    this.statements.clear();
  }
}
