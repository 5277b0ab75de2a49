/**
 * The fields messages are built of: identifiers, clocks, sequences, JSON
 * objects and scopes. Each has one definition, for the server on input and
 * the client on replies: each predicate is what its schema checks (the
 * schemas are built on them), and the quick checks of wire-checks.ts use the
 * same predicates.
 */
import { z } from 'zod';
import { utf8Length, isJsonObject } from '../json.js';
import { HLC_PATTERN, MAX_HLC_LENGTH, MAX_NODE_LENGTH, NODE_RULE, clockProblem, isClockNode, nodeProblem } from '../hlc.js';

export const COLLECTION_NAME_PATTERN = /^[a-zA-Z][a-zA-Z0-9_$-]{0,127}$/;
/** Lengths of event and client ids, shortest and longest, in characters (UTF-16 code units). */
export const ID_LENGTHS = { event: [8, 128], client: [1, 128] } as const;
/**
 * The longest document id, in bytes of UTF-8, the form every storage keeps
 * and indexes it in: 1024 ASCII characters, 341 of CJK. PostgreSQL indexes
 * a document by its collection (at most 128 bytes) and id, and one index
 * entry holds at most 2704 bytes.
 */
export const MAX_DOCUMENT_ID_BYTES = 1024;

/**
 * True when every storage keeps `text` as it is: no NUL character
 * (PostgreSQL refuses it in text and jsonb) and no half of a surrogate pair
 * without its other half (a UTF-8 store, SQLite or PostgreSQL, cannot
 * encode one; SQLite would keep U+FFFD instead).
 */
export function isStorableText(text: string): boolean {
  return wellFormed(text) && !text.includes('\u0000');
}

/** String.prototype.isWellFormed where the runtime has it (not before Safari 16.4, which field tablets still run). */
const wellFormed: (text: string) => boolean =
  typeof ''.isWellFormed === 'function'
    ? (text) => text.isWellFormed()
    : (text) => {
        for (let i = 0; i < text.length; i++) {
          const code = text.charCodeAt(i);
          if (code < 0xd800 || code > 0xdfff) continue;
          if (code > 0xdbff || i + 1 === text.length || (text.charCodeAt(i + 1) & 0xfc00) !== 0xdc00) return false;
          i++;
        }
        return true;
      };
const NOT_STORABLE = 'holds a NUL character or an unpaired surrogate (half of a surrogate pair without its other half), which not every storage can keep';

export const isCollectionName = (value: unknown): value is string => typeof value === 'string' && COLLECTION_NAME_PATTERN.test(value);

/** At most MAX_DOCUMENT_ID_BYTES of UTF-8; counted only for an id long enough to be over (a UTF-16 unit is at most 3 bytes). */
const withinDocumentIdBytes = (id: string) => id.length * 3 <= MAX_DOCUMENT_ID_BYTES || utf8Length(id) <= MAX_DOCUMENT_ID_BYTES;

export function isDocumentId(value: unknown): value is string {
  return typeof value === 'string' && value.length >= 1 && withinDocumentIdBytes(value) && isStorableText(value);
}

export function isEventId(value: unknown): value is string {
  return typeof value === 'string' && value.length >= ID_LENGTHS.event[0] && value.length <= ID_LENGTHS.event[1] && isStorableText(value);
}

/** A client id is the node of every clock its client writes (the server stamps it into pushed clocks): a clock node of at most 128 characters. */
export function isClientId(value: unknown): value is string {
  return isClockNode(value) && value.length <= ID_LENGTHS.client[1];
}

/** A whole clock: time, counter and a node (see hlc.ts), at most MAX_HLC_LENGTH characters. */
export function isHlc(value: unknown): value is string {
  return typeof value === 'string' && value.length <= MAX_HLC_LENGTH && HLC_PATTERN.test(value);
}

/** Why `value` is not `min` to `max` characters long, or undefined. (Lengths here are in UTF-16 code units, as `length` counts them, not in zod's code points.) */
function lengthProblem(what: string, value: string, min: number, max: number): string | undefined {
  if (value.length < min) return `${what} has at least ${min} characters; this one has ${value.length}`;
  if (value.length > max) return `${what} has at most ${max} characters (UTF-16 code units); this one has ${value.length}`;
  return undefined;
}
const nodeIssue = (what: string, node: string, max: number) =>
  lengthProblem(what, node, 1, max) ?? `${what} is the node of a clock, which ${NODE_RULE}; this one ${nodeProblem(node)}`;

export const collectionNameSchema = z
  .string()
  .regex(COLLECTION_NAME_PATTERN, 'a collection name starts with a letter and holds letters, digits, _ $ -');
export const documentIdSchema = z.string().refine(isDocumentId, {
  error: (issue) => {
    const id = issue.input as string;
    if (id.length === 0) return 'a document id is not empty';
    if (!withinDocumentIdBytes(id)) return `a document id is at most ${MAX_DOCUMENT_ID_BYTES} bytes of UTF-8; this one has ${utf8Length(id)}`;
    return `a document id ${NOT_STORABLE}`;
  },
});
export const eventIdSchema = z.string().refine(isEventId, {
  error: (issue) => lengthProblem('an event id', issue.input as string, ...ID_LENGTHS.event) ?? `an event id ${NOT_STORABLE}`,
});
export const clientIdSchema = z.string().refine(isClientId, { error: (issue) => nodeIssue('a client id', issue.input as string, ID_LENGTHS.client[1]) });
export const clockNodeSchema = z.string().refine(isClockNode, { error: (issue) => nodeIssue('a node', issue.input as string, MAX_NODE_LENGTH) });
export const hlcSchema = z.string().refine(isHlc, { error: (issue) => clockProblem(issue.input as string) });
export const sequenceSchema = z.number().int().nonnegative();
/**
 * A JSON object. The keys of parsed JSON are always strings, so only the
 * shape is checked, not each key: a record schema would walk (and copy)
 * every document of every pull and push.
 */
export const jsonObjectSchema = z.custom<Record<string, unknown>>(isJsonObject, 'expected a JSON object');

/** Per collection, a sync scope as a selector (shared/scope.ts checks it), or null for everything the user may read. */
export const scopesSchema = z.record(collectionNameSchema, z.unknown());
