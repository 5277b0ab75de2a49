/**
 * Quick checks of the messages that carry events in bulk: a push, the
 * answer to a push, a pull page, and a live message (one reaches every
 * reader of a collection). The schemas in
 * protocol/ stay the one definition of each message: a check here answers
 * true only for a value its schema accepts and returns unchanged, and
 * anything else (a conflict in an answer, an unknown field, a bad row) goes
 * through the schema, which names what is wrong. They exist for speed: zod
 * builds a result for every field of every row, about a tenth of a push's
 * time and a sixth of what it allocates (test/wire-checks.test.ts holds
 * each check to its schema on valid and broken messages alike).
 */
import { CLOCK_TIME_PATTERN, PUSHED_HLC_SHAPE, isClockNode } from './hlc.js';
import { isJsonObject } from './json.js';
import { OPERATIONS, PATCH_OPERATIONS, isClientId, isCollectionName, isDocumentId, isEventId, isHlc } from './protocol/index.js';

const OPERATION_SET: ReadonlySet<unknown> = new Set(OPERATIONS);
const PATCH_OPS: ReadonlySet<unknown> = new Set(PATCH_OPERATIONS);
const PATCH_KEYS: ReadonlySet<string> = new Set(['op', 'path', 'value', 'from']);

const NONE: ReadonlySet<string> = new Set();

/** A plain object with exactly these keys, and any of `optional`: a schema would drop any other (or refuse it). */
function hasExactly(value: Record<string, unknown>, keys: readonly string[], optional: ReadonlySet<string> = NONE): boolean {
  for (const key of keys) if (!Object.hasOwn(value, key)) return false;
  const own = Object.keys(value);
  return own.length === keys.length || own.every((key) => keys.includes(key) || optional.has(key));
}

function isCount(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

const isOperation = (value: unknown) => OPERATION_SET.has(value);

function isCollectionList(value: unknown, min: number, max: number): value is string[] {
  if (!Array.isArray(value) || value.length < min || value.length > max) return false;
  for (const name of value) if (!isCollectionName(name)) return false;
  return true;
}

function isPatch(value: unknown): boolean {
  if (!Array.isArray(value)) return false;
  for (const operation of value) {
    if (!isJsonObject(operation) || !PATCH_OPS.has(operation.op) || typeof operation.path !== 'string') return false;
    for (const key of Object.keys(operation)) if (!PATCH_KEYS.has(key)) return false;
    if (Object.hasOwn(operation, 'from') && typeof operation.from !== 'string') return false;
  }
  return true;
}

/** A push in protocol 4 rows that pushRowsMessageSchema takes as it is. */
export function isPushRowsMessage(value: unknown): boolean {
  if (!isJsonObject(value) || !hasExactly(value, ['collections', 'events'])) return false;
  if (!isCollectionList(value.collections, 1, 256)) return false;
  const rows = value.events;
  if (!Array.isArray(rows) || rows.length === 0) return false;
  for (const row of rows) {
    if (!Array.isArray(row) || row.length < 6 || row.length > 8) return false;
    const [id, collectionAt, documentId, op, data, hlc] = row;
    // The document id and the clock's node only by their shape, as pushRowSchema reads them.
    if (!isEventId(id) || !isCount(collectionAt) || typeof documentId !== 'string' || !isOperation(op) || !isJsonObject(data)) return false;
    if (typeof hlc !== 'string' || !PUSHED_HLC_SHAPE.test(hlc)) return false;
    if (row.length >= 7 && row[6] !== null && !isEventId(row[6])) return false;
    if (row.length === 8 && !isPatch(row[7])) return false;
  }
  return true;
}

/** A successful answer to a push in which every event was stored (pushReplySchema with `ok: true`). */
export function isStoredPushAck(value: unknown): boolean {
  if (!isJsonObject(value) || value.ok !== true || !hasExactly(value, ['ok', 'results'])) return false;
  const results = value.results;
  if (!Array.isArray(results)) return false;
  for (const result of results) if (!isCount(result)) return false;
  return true;
}

/** An object as zod's record takes it: no Buffer, ArrayBuffer or Date (socket.io may decode binary as one), which has no keys to refuse. */
function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (!isJsonObject(value)) return false;
  const prototype = Object.getPrototypeOf(value) as unknown;
  return prototype === Object.prototype || prototype === null;
}

const PAGE_KEYS = ['ok', 'collections', 'nodes', 'events', 'checkpoint', 'hasMore'];
/** What a scoped pull's page adds (see pullPageSchema). */
const SCOPED_PAGE_KEYS = new Set(['scopes', 'leaves', 'start']);

/**
 * A successful pull page that pullPageSchema (with `ok: true`) takes as it
 * is, scoped or not. (A scoped page once went through zod whole: 110 ms of
 * a 50,000-document scope's first sync, against 4 for the same unscoped.)
 */
export function isPullPageAck(value: unknown): boolean {
  if (!isJsonObject(value) || value.ok !== true || !hasExactly(value, PAGE_KEYS, SCOPED_PAGE_KEYS)) return false;
  if (Object.hasOwn(value, 'start') && !isCount(value.start)) return false;
  if (Object.hasOwn(value, 'scopes') && !(isPlainObject(value.scopes) && Object.keys(value.scopes).every(isCollectionName))) return false;
  if (Object.hasOwn(value, 'leaves')) {
    const leaves = value.leaves;
    if (!Array.isArray(leaves)) return false;
    for (const leave of leaves) if (!Array.isArray(leave) || leave.length !== 2 || !isDocumentId(leave[0]) || !isCount(leave[1])) return false;
  }
  if (!isCount(value.checkpoint) || typeof value.hasMore !== 'boolean') return false;
  if (!isCollectionList(value.collections, 0, Infinity)) return false;
  const nodes = value.nodes;
  if (!Array.isArray(nodes)) return false;
  for (const node of nodes) if (!isClockNode(node)) return false;
  const rows = value.events;
  if (!Array.isArray(rows)) return false;
  for (const row of rows) {
    if (!Array.isArray(row) || row.length < 8) return false;
    const [id, collectionAt, documentId, op, data, time, nodeAt, seq] = row;
    if (!isEventId(id) || !isCount(collectionAt) || !isDocumentId(documentId) || !isOperation(op) || !isJsonObject(data)) return false;
    if (typeof time !== 'string' || !CLOCK_TIME_PATTERN.test(time) || !isCount(nodeAt) || !isCount(seq)) return false;
    for (let i = 8; i < row.length; i++) if (!isClientId(row[i])) return false;
  }
  return true;
}

const REMOTE_EVENT_KEYS = ['id', 'collection', 'documentId', 'op', 'data', 'hlc', 'seq'] as const;
const REMOTE_EVENT_KEYS_WITH_AUTHOR = [...REMOTE_EVENT_KEYS, 'clientId'] as const;

/** A live message that liveMessageSchema takes as it is: whole events, each with its author or without. */
export function isLiveMessage(value: unknown): boolean {
  if (!isJsonObject(value) || !hasExactly(value, ['events'])) return false;
  const events = value.events;
  if (!Array.isArray(events) || events.length === 0) return false;
  for (const event of events) {
    if (!isJsonObject(event)) return false;
    const withAuthor = Object.hasOwn(event, 'clientId');
    if (!hasExactly(event, withAuthor ? REMOTE_EVENT_KEYS_WITH_AUTHOR : REMOTE_EVENT_KEYS)) return false;
    if (withAuthor && !isClientId(event.clientId)) return false;
    const { id, collection, documentId, op, data, hlc, seq } = event;
    if (!isEventId(id) || !isCollectionName(collection) || !isDocumentId(documentId) || !isOperation(op)) return false;
    if (!isJsonObject(data) || !isCount(seq) || !isHlc(hlc)) return false;
  }
  return true;
}
