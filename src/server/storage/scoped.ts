/**
 * What the storages share for scoped reads (getScopedChanges): the page they
 * answer, the SQL both SQL storages run, and the names of the indexes
 * indexScopeFields makes.
 *
 * The leave rule, as every storage applies it (memory.ts in JS, the SQL
 * below): with K the checkpoint, E the scope, H and C the held scope and
 * sequence, L = max(K, C), a head h of the collection with h.seq > L that
 * does not match E is sent as a leave when the reader may hold the
 * document, that is when some version x of it before h, from w on (w the
 * document's version at C, or its first version when it had none at C), is
 * no delete and matches E: the reader may hold x from a page, a live
 * message or its own push (acknowledged after its checkpoint), and holds
 * no version outside E. When compaction removed
 * the document's versions up to C (its oldest kept event has a base and
 * comes after C), and L > 0, the leave is sent anyway. A catch-up from
 * nothing names S, the latest sequence when it began: no head at or before
 * S replaced a version the reader was sent, so leaves start after max(L, S).
 */
import { createHash } from 'node:crypto';
import { SyncError } from '../../shared/errors.js';
import { isCollectionName } from '../../shared/protocol/index.js';
import { scopeImplies, scopeToSql, type Scope, type ScopeAtom, type SqlDialect } from '../../shared/scope.js';
import type { ScopedChange, ScopedPage, ScopedQuery } from './types.js';

/** The fields a scope may name (as parseScope checks them): they are written into SQL as JSON paths. */
const SCOPE_FIELD = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

export function assertScopeField(field: string): string {
  if (!SCOPE_FIELD.test(field)) throw new SyncError('INVALID_SCOPE', `${JSON.stringify(field)} is not a scope field: a top-level field named as a plain identifier`);
  return field;
}

export function assertScopeCollection(collection: string): string {
  if (!isCollectionName(collection)) throw new SyncError('INVALID_SCOPE', `${JSON.stringify(collection)} is not a collection name`);
  return collection;
}

/** A page of scoped changes. */
export function scopedPage(changes: ScopedChange[], cutByBytes: boolean, through: number): ScopedPage {
  return Object.assign(changes, cutByBytes ? { cutByBytes: true, through } : { through });
}

/**
 * Where the reader's checkpoint moves: the last change of a page cut by
 * `limit` or `maxBytes`, else the last head the storage may show (never back).
 */
export function scopedThrough(changes: readonly ScopedChange[], cut: boolean, limit: number | undefined, checkpoint: number, latest: number): number {
  const last = changes.at(-1);
  if (last && (cut || (limit !== undefined && changes.length >= limit))) return last.seq;
  return Math.max(checkpoint, latest);
}

/** `limit` as every storage reads it: rounded up; undefined for none. */
export function scopedLimit(limit: number | undefined): number | undefined {
  return limit === undefined ? undefined : Math.ceil(limit);
}

/** A SQL string literal. */
export function sqlString(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

/** A short stable name part for an index over (collection, field): names stay plain identifiers whatever the collection is called. */
export function indexHash(...parts: string[]): string {
  return createHash('sha256').update(parts.join('\u0000')).digest('hex').slice(0, 16);
}

/** How one SQL storage names its tables and reads its JSON. */
export interface ScopedSql {
  heads: string;
  events: string;
  /** The scope dialect over the JSON column `column` (`h.data`). */
  dialect(column: string): SqlDialect;
  /** The expression, kept from being matched to an index (SQLite's unary +); as is where the planner needs no hint. */
  unindexed(expression: string): string;
  /**
   * The size of the head `h`'s document as pages count it, where the heads
   * table tells it; by default the size kept beside its event (one more
   * lookup per candidate).
   */
  headBytes?: string;
  /**
   * The head's columns that make its change (`id, collection, document_id,
   * op, data, hlc, client_id`), where the heads table holds them all: each
   * row is then the change itself, and no event is looked up for it.
   */
  change?: string;
}

/**
 * The candidate rows of a scoped read, as `seq, leave, bytes` (bytes 0 for a
 * leave) and, where the storage names them, the columns of the change, in two arms:
 * - sends: heads after K in the scope (the scope's index and the sequence
 *   bound it), less those the reader held at C;
 * - leaves: heads after L out of the scope (the sequence index: heads
 *   changed after L) that the reader may hold, judged from the document's
 *   kept events (its per-collection index on document and sequence).
 * A compound SELECT: the caller orders it by seq and limits it; the values go into `params`.
 * `latest`, when the caller read it in the same snapshot, leaves the leaves arm out when no head
 * can be one (none after where leaves start): a first sync then reads its sends once, not twice.
 * The collection is written as a literal, so that the planner can use the
 * partial indexes indexScopeFields made for it.
 */
export function scopedRowsSql(sql: ScopedSql, checkpoint: number, query: ScopedQuery, params: unknown[], latest?: number): string {
  const collection = sqlString(assertScopeCollection(query.collection));
  const held = query.held.through;
  const last = Math.max(checkpoint, held);
  // Bound when first written into the text: a parameter the statement does not use has no type in PostgreSQL.
  const bound = (value: unknown) => {
    let placeholder: string | undefined;
    return () => {
      if (placeholder === undefined) {
        params.push(value);
        placeholder = sql.dialect('').param(params.length);
      }
      return placeholder;
    };
  };
  const [k, c, l] = [bound(checkpoint), bound(held), bound(last)];
  const leavesAfter = bound(leaveFloor(checkpoint, query));
  const matches = (scope: Scope, column: string) => scopeToSql(checkedScope(scope), sql.dialect(column), params);
  // Where a NOT or an OR applies, an unknown (a missing field) must count as false.
  const surely = (scope: Scope, column: string) => `COALESCE(${matches(scope, column)}, FALSE)`;
  const { heads, events } = sql;
  const change = sql.change ? `, ${sql.change}` : '';

  // Each arm reads one table (the size is looked up, not joined): SQLite then merges the arms in sequence order.
  // A scope with $in is read as one arm per value: each an equality the scope's index answers in sequence order
  // (an OR of equalities made SQLite read the collection's every head, about 1 s for 1,000,000 documents).
  // An arm whose documents were all held at C starts after C, by the index: reading the held ones only to leave
  // them out would cost in proportion to what is held, not to what moves in.
  const sendArm = (scope: Scope) => {
    const allHeld = checkpoint < held && scopeImplies(scope, query.held.scope);
    let arm = `SELECT h.seq AS seq, FALSE AS leave, ${sql.headBytes ?? `(SELECT e.data_bytes FROM ${events} e WHERE e.seq = h.seq)`} AS bytes${change} FROM ${heads} h
    WHERE h.collection = ${collection} AND h.seq > ${allHeld ? l() : k()} AND ${matches(scope, 'h.data')}`;
    if (checkpoint < held && !allHeld) arm += ` AND NOT (h.seq <= ${c()} AND ${surely(query.held.scope, 'h.data')})`;
    return arm;
  };
  const sends = byInValue(query.scope).map(sendArm).join(' UNION ALL ');
  // Everything in scope, or nothing held yet and nothing sent: no document can leave.
  if (query.scope === null || last === 0 || (latest !== undefined && latest <= leaveFloor(checkpoint, query))) return sends;

  const sameDocument = (alias: string) => `${alias}.collection = ${collection} AND ${alias}.document_id = h.document_id`;
  // A page ends at or before the limit-th send: leaves after it cannot be on it. Without this bound, each page of
  // a first sync judged every out-of-scope head after the checkpoint (950,000 for a 5 % scope of 1,000,000) to
  // find the page's first leave or know there was none.
  const limit = scopedLimit(query.limit);
  const nth = bound(limit === undefined ? 0 : Math.max(0, limit - 1));
  const lastSend = limit === undefined ? '' : ` AND h.seq <= COALESCE((SELECT s.seq FROM (${sends}) s ORDER BY s.seq LIMIT 1 OFFSET ${nth()}), ${Number.MAX_SAFE_INTEGER})`;
  const leaves = `SELECT h.seq AS seq, TRUE AS leave, 0 AS bytes${change} FROM ${heads} h
    WHERE ${sql.unindexed('h.collection')} = ${collection} AND h.seq > ${leavesAfter()}${lastSend} AND NOT ${surely(query.scope, 'h.data')}
      AND (EXISTS (SELECT 1 FROM ${events} x WHERE ${sameDocument('x')} AND x.seq < h.seq
            AND x.seq >= COALESCE((SELECT w.seq FROM ${events} w WHERE ${sameDocument('w')} AND w.seq <= ${c()} ORDER BY w.seq DESC LIMIT 1), 0)
            AND x.op <> 'delete' AND ${matches(query.scope, 'x.data')})
        OR (SELECT f.base_event_id IS NOT NULL AND f.seq > ${c()} FROM ${events} f WHERE ${sameDocument('f')} ORDER BY f.seq LIMIT 1))`;
  return `${sends} UNION ALL ${leaves}`;
}

/** The sequence a leave must come after: max(L, S) in the rule above. */
export function leaveFloor(checkpoint: number, query: ScopedQuery): number {
  const last = Math.max(checkpoint, query.held.through);
  return query.held.through === 0 && query.start !== undefined ? Math.max(last, query.start) : last;
}

/** Arms of an $in at most: a longer list is read as the OR it is. */
const MAX_IN_ARMS = 64;

/**
 * The scope as scopes that together match what it matches, each document
 * once: one per value of its first $in (with MAX_IN_ARMS values at most),
 * else the scope itself.
 */
function byInValue(scope: Scope): Scope[] {
  const at = scope?.findIndex((atom) => atom.op === 'in') ?? -1;
  if (scope === null || at < 0) return [scope];
  const atom = scope[at] as Extract<ScopeAtom, { op: 'in' }>;
  const values = [...new Map(atom.value.map((value) => [`${typeof value}:${String(value)}`, value])).values()];
  if (values.length === 0 || values.length > MAX_IN_ARMS) return [scope];
  return values.map((value) => scope.map((other, i) => (i === at ? { field: atom.field, op: 'eq' as const, value } : other)));
}

/** A scope's fields are written into SQL: each must be a plain identifier (parseScope makes sure; this is for hand-made scopes). */
function checkedScope(scope: Scope): Scope {
  if (scope !== null) for (const atom of scope) assertScopeField(atom.field);
  return scope;
}
