import type { SqlDialect } from '../../../shared/scope.js';
import { EVENT_COLUMNS, HEAD_COLUMNS, rowDecoders, type EventRow as EventColumns, type HeadRow as HeadColumns } from '../rows.js';
import { assertScopeField, scopedRowsSql, sqlString, type ScopedSql } from '../scoped.js';
import { jsonTextBytes } from '../size.js';
import type { IncomingEvent, ScopedQuery } from '../types.js';
import { tableNames } from './schema.js';

/** Rows as pg gives them: jsonb parsed, bigint as text, booleans as booleans. */
export type EventRow = EventColumns<unknown, string>;
export type HeadRow = HeadColumns<unknown, string, boolean>;
/** A row of a scoped read: an event of the page (null columns when the page is empty), and the latest sequence. */
export type ScopedRow = { latest: string; leave: boolean | null; cut: boolean | null } & ({ seq: null } | EventRow);
/** A row of readState: a head, or (collection null) only an event id that is stored and its sequence. */
export type StateRow = HeadRow | { collection: null; event_id: string; seq: string };

export const { event: decodeEvent, head: decodeHead } = rowDecoders<unknown, string, boolean>({
  json: (value) => value,
  int: Number,
  flag: (value) => value,
});

/** An incoming event as encodeIncoming() writes it: the event columns but the sequence and server time. */
const INCOMING_RECORD =
  'id text, collection text, document_id text, op text, data jsonb, patch jsonb, base_event_id text, hlc text, client_id text, data_bytes integer';
const INCOMING_NAMES = INCOMING_RECORD.split(', ').map((column) => column.split(' ')[0]).join(', ');

/** An incoming event as one element of the append statement's JSON array (INCOMING_RECORD). */
export function encodeIncoming(event: IncomingEvent): string {
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

/** The statements that read and write the sync tables. */
export function statementSql(schema: string, prefix: string) {
  const { events, heads, seq, compacted, clients } = tableNames(schema, prefix);
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
  const selectEvents = `SELECT ${EVENT_COLUMNS} FROM ${events} WHERE seq > $1`;
  return {
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
    eventsAfter: `${selectEvents} ORDER BY seq LIMIT $2`,
    eventsAfterIn: `${selectEvents} AND collection = ANY($3::text[]) ORDER BY seq LIMIT $2`,
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
    count: `SELECT count(*) AS n FROM ${events}`,
  };
}
