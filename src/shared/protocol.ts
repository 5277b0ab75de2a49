/**
 * The wire protocol. Every message either side receives is checked against
 * these schemas at runtime; the TypeScript types are inferred from the same
 * schemas, so the types and the checks cannot drift apart.
 */
import { z } from 'zod';
import { ERROR_CODES, SyncError, type WireError } from './errors.js';
import { isJsonObject, utf8Length } from './json.js';
import { CLOCK_TIME_PATTERN, HLC_PATTERN, MAX_HLC_LENGTH, MAX_NODE_LENGTH, NODE_RULE, PUSHED_HLC_SHAPE, clockProblem, hasNode, isClockNode, nodeOf, nodeProblem, timeOf, withNode, withoutNode } from './hlc.js';

/**
 * Carried in the handshake; a server refuses versions it does not speak and
 * names those it does, and a client then tries the newest of those it also
 * speaks. Version 2 pushes slimmer events, gets slimmer answers and pulls
 * slimmer events (see pushedEventSchema, pushReplySchema and
 * toSlimRemoteEvent); everything else is as in 1. Version 3 pulls pages in
 * rows, with each collection name and clock node of a page listed once (see
 * toPullPage); everything else is as in 2. Version 4 pushes events in rows
 * too, each collection of a push named once (see toPushRows); everything
 * else is as in 3.
 */
export const PROTOCOL_VERSION = 4;
/** Every version this release speaks, as a server and as a client. */
export const PROTOCOL_VERSIONS = [1, 2, 3, 4] as const;
export type ProtocolVersion = (typeof PROTOCOL_VERSIONS)[number];

export const MESSAGE = {
  subscribe: 'sync:subscribe',
  push: 'sync:push',
  pull: 'sync:pull',
  live: 'sync:events',
  error: 'sync:error',
  welcome: 'sync:welcome',
  renew: 'sync:renew',
} as const;

export const CLIENT_MESSAGES: ReadonlySet<string> = new Set([MESSAGE.subscribe, MESSAGE.push, MESSAGE.pull, MESSAGE.renew]);

// ---- Identifiers: the one definition of each, for the server on input and the client on replies.
// Each predicate below is what its schema checks (the schemas are built on them), and the quick checks
// of wire-checks.ts use the same predicates.

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
const jsonObjectSchema = z.custom<Record<string, unknown>>(isJsonObject, 'expected a JSON object');

export const PATCH_OPERATIONS = ['add', 'remove', 'replace', 'move', 'copy', 'test'] as const;
export const patchOperationSchema = z.object({
  op: z.enum(PATCH_OPERATIONS),
  path: z.string(),
  value: z.unknown().optional(),
  from: z.string().optional(),
});

export const OPERATIONS = ['insert', 'update', 'delete'] as const;
export type Operation = (typeof OPERATIONS)[number];

/**
 * One local change as the client pushes it. `data` is the whole document after
 * the change (for a delete, the last state), `patch` the JSON patch from the
 * base version, `baseEventId` the id of the server event the change was made
 * on (null when the client believes the document is new to the server).
 */
export const syncEventSchema = z.strictObject({
  id: eventIdSchema,
  collection: collectionNameSchema,
  documentId: documentIdSchema,
  op: z.enum(OPERATIONS),
  data: jsonObjectSchema,
  patch: z.array(patchOperationSchema).optional(),
  baseEventId: eventIdSchema.nullable(),
  hlc: hlcSchema,
});
export type SyncEvent = z.infer<typeof syncEventSchema>;

/**
 * A local change as it is pushed. Two fields may be shortened, to spare bytes
 * on every event of every push: `hlc` may leave out its node when that is
 * the pushing client's own id (the server has it from the handshake), and a
 * null `baseEventId` may be left out. The server makes both whole again
 * (completePushedEvent) before anything else reads the event.
 *
 * A push is read by its shape: the document id and the clock's node, which
 * differ from event to event, are only strings here, and each event made
 * whole is then held to syncEventSchema on its own (pushedEventProblem), so
 * that an event with a bad one is refused alone and the rest of its push is
 * stored.
 */
const pushedHlcSchema = z.string().regex(PUSHED_HLC_SHAPE, 'a hybrid logical clock value: 15 digits of milliseconds, -, 6 base-36 digits of counter, then - and the node unless it is the pusher');
export const pushedEventSchema = syncEventSchema.extend({
  documentId: z.string(),
  hlc: pushedHlcSchema,
  baseEventId: eventIdSchema.nullable().optional(),
});
export type PushedEvent = z.infer<typeof pushedEventSchema>;

/**
 * What keeps a pushed event, made whole, from being one syncEventSchema
 * takes, as `path: reason`; undefined when nothing does. Only the fields a
 * push's shape leaves open are looked at: the document id and the clock.
 */
export function pushedEventProblem(event: SyncEvent): { path: string; message: string } | undefined {
  if (!isDocumentId(event.documentId)) return { path: 'documentId', message: documentIdSchema.safeParse(event.documentId).error?.issues[0]?.message ?? 'not a document id' };
  if (!isHlc(event.hlc)) return { path: 'hlc', message: clockProblem(event.hlc) ?? 'not a clock' };
  return undefined;
}

/** A pushed event made whole, in place (it is the server's own parsed copy): its clock with the pusher's node, a missing base as null. */
export function completePushedEvent(event: PushedEvent, clientId: string): SyncEvent {
  event.hlc = withNode(event.hlc, clientId);
  event.baseEventId ??= null;
  return event as SyncEvent;
}

/** An event as the server stored it: stamped with its sequence and author. */
export const storedEventSchema = syncEventSchema.extend({
  seq: sequenceSchema,
  clientId: clientIdSchema,
  serverTime: z.number(),
});
export type StoredEvent = z.infer<typeof storedEventSchema>;

/**
 * An event as other clients receive it (pulls and live messages): what a
 * reader needs to apply it. The base it was written on, its patch and the
 * server's receive time stay on the server: a pulled insert is a tenth
 * smaller for it, an update about a third, which counts on the slow links
 * this is for. (And a patch can never leak a sensitive field.)
 */
export const remoteEventSchema = z.object({
  // Not strict: fields a later server adds are dropped, not refused.
  ...syncEventSchema.omit({ baseEventId: true, patch: true }).shape,
  seq: sequenceSchema,
  // Left out of protocol 2 pull replies when it is the clock's node, as it nearly always is (see toSlimRemoteEvent; protocol 3 pulls rows, see toPullPage).
  clientId: clientIdSchema.optional(),
});
export type WireRemoteEvent = z.infer<typeof remoteEventSchema>;
/** A remote event as the client works with it: its author always known (see completeRemoteEvent). */
export type RemoteEvent = WireRemoteEvent & { clientId: string };

/** The part of a stored event that leaves the server in pulls and live messages. */
export function toRemoteEvent(event: StoredEvent): RemoteEvent {
  return { id: event.id, collection: event.collection, documentId: event.documentId, op: event.op, data: event.data, hlc: event.hlc, seq: event.seq, clientId: event.clientId };
}

/**
 * The same for a protocol 2 pull reply: without the author when it is the
 * clock's node, as it nearly always is; 50 bytes of about 370 for a todo
 * written by a client with a UUID for its id. Live messages stay whole: one
 * is encoded once for every reader in a room, whatever version each speaks.
 */
export function toSlimRemoteEvent(event: StoredEvent): WireRemoteEvent {
  if (!hasNode(event.hlc, event.clientId)) return toRemoteEvent(event);
  return { id: event.id, collection: event.collection, documentId: event.documentId, op: event.op, data: event.data, hlc: event.hlc, seq: event.seq };
}

/** A received remote event with its author filled in from its clock's node where the server left it out. */
export function completeRemoteEvent(event: WireRemoteEvent): RemoteEvent {
  if (event.clientId === undefined) {
    const node = nodeOf(event.hlc);
    // Held to what a client id may be, as if it had been sent.
    const checked = clientIdSchema.safeParse(node);
    if (!checked.success) throw new SyncError('INVALID_MESSAGE', `event ${event.id} has no author, and its clock's node is no client id: ${checked.error.issues[0]!.message}`);
    event.clientId = node;
  }
  return event as RemoteEvent;
}

/**
 * One event of a protocol 3 pull page, as a row: id, index of its collection
 * in the page's `collections`, document id, operation, data, its clock's
 * time and counter, index of its clock's node in the page's `nodes`,
 * sequence, and (only when it is not that node) its author.
 */
export const pageEventSchema = z.tuple(
  [eventIdSchema, z.number().int().nonnegative(), documentIdSchema, z.enum(OPERATIONS), jsonObjectSchema, z.string().regex(CLOCK_TIME_PATTERN, 'the time and counter of a clock'), z.number().int().nonnegative(), sequenceSchema],
  clientIdSchema,
);
export type PageEvent = z.infer<typeof pageEventSchema>;

/**
 * A protocol 3 pull reply. Most of an event's bytes besides its data were
 * its field names, its collection and its clock's node (a UUID, one of a
 * few writers'): as rows with every name and node of the page listed once,
 * a pulled todo takes about 230 bytes instead of 325, and pulling 50k
 * todos costs the server and the wire about a fifth less time.
 */
/** Per collection, a sync scope as a selector (shared/scope.ts checks it), or null for everything the user may read. */
const scopesSchema = z.record(collectionNameSchema, z.unknown());

export const pullPageSchema = z.object({
  /** The scope each scoped collection of the pull has now (see subscribeReplySchema). */
  scopes: scopesSchema.optional(),
  /** In a scoped pull: documents that left the scope, as [document id, sequence]; the client removes them. */
  leaves: z.array(z.tuple([documentIdSchema, sequenceSchema])).optional(),
  collections: z.array(collectionNameSchema),
  // The rest of a clock after its time, held to what a node may be in a whole clock.
  nodes: z.array(clockNodeSchema),
  events: z.array(pageEventSchema),
  checkpoint: sequenceSchema,
  hasMore: z.boolean(),
});
export type PullPage = z.infer<typeof pullPageSchema>;

/** Events as a protocol 3 pull page lists them (see pullPageSchema). */
export function toPullPage(events: readonly StoredEvent[]): Pick<PullPage, 'collections' | 'nodes' | 'events'> {
  const collections: string[] = [];
  const nodes: string[] = [];
  const collectionIndex = new Map<string, number>();
  const nodeIndex = new Map<string, number>();
  const indexOf = (index: Map<string, number>, list: string[], value: string) => {
    let at = index.get(value);
    if (at === undefined) {
      at = list.push(value) - 1;
      index.set(value, at);
    }
    return at;
  };
  const rows = new Array<PageEvent>(events.length);
  for (let i = 0; i < events.length; i++) {
    const event = events[i]!;
    // Nearly always the author: then its id, a string met before (and hashed once), stands for the node.
    const byAuthor = hasNode(event.hlc, event.clientId);
    const node = byAuthor ? event.clientId : nodeOf(event.hlc);
    const row: PageEvent = [event.id, indexOf(collectionIndex, collections, event.collection), event.documentId, event.op, event.data, timeOf(event.hlc), indexOf(nodeIndex, nodes, node), event.seq];
    if (!byAuthor) row.push(event.clientId);
    rows[i] = row;
  }
  return { collections, nodes, events: rows };
}

/** The events of a received protocol 3 pull page, whole again; a row that names no listed collection or node is refused. */
export function fromPullPage(page: PullPage): RemoteEvent[] {
  // A node stands for the author of the events that leave theirs out: held once to what a client id may be.
  const authors = page.nodes.map((node) => (isClientId(node) ? node : undefined));
  const events = new Array<RemoteEvent>(page.events.length);
  for (let i = 0; i < page.events.length; i++) {
    const row = page.events[i]!;
    const [id, collectionAt, documentId, op, data, time, nodeAt, seq, author] = row;
    const collection = page.collections[collectionAt];
    const node = page.nodes[nodeAt];
    if (row.length > 9) throw new SyncError('INVALID_MESSAGE', `event ${id} of the pull page has ${row.length} fields, at most 9`);
    if (collection === undefined || node === undefined) {
      throw new SyncError('INVALID_MESSAGE', `event ${id} names collection ${collectionAt} and clock node ${nodeAt}, but the pull page lists ${page.collections.length} collections and ${page.nodes.length} nodes`);
    }
    const clientId = author ?? authors[nodeAt];
    if (clientId === undefined) throw new SyncError('INVALID_MESSAGE', `event ${id} has no author, and its clock's node is no client id`);
    events[i] = { id, collection, documentId, op, data, hlc: `${time}-${node}`, seq, clientId };
  }
  return events;
}

/**
 * One event of a protocol 4 push, as a row: id, index of its collection in
 * the push's `collections`, document id, operation, data, clock (as
 * protocol 2 pushes it: without the node when that is the pusher), then only
 * when there is one the id of the event it was based on (null when there is
 * none but a patch follows) and its patch.
 */
export const pushRowSchema = z.tuple([
  eventIdSchema,
  z.number().int().nonnegative(),
  // Only the shape, as in pushedEventSchema: each event is held to syncEventSchema on its own.
  z.string(),
  z.enum(OPERATIONS),
  jsonObjectSchema,
  pushedHlcSchema,
  eventIdSchema.nullable().optional(),
  z.array(patchOperationSchema).optional(),
]);
export type PushRow = z.infer<typeof pushRowSchema>;

/**
 * A protocol 4 push. Without the field names of every event and with its
 * collection named once, a pushed todo takes about 220 bytes instead of 280:
 * a fifth less to send on a slow link, and to encode, mask, decode and parse.
 */
export const pushRowsMessageSchema = z.strictObject({
  collections: z.array(collectionNameSchema).min(1).max(256),
  events: z.array(pushRowSchema).min(1),
});
export type PushRowsMessage = z.infer<typeof pushRowsMessageSchema>;

/** Events as a protocol 4 push sends them (see pushRowSchema). */
export function toPushRows(events: readonly SyncEvent[], clientId: string): PushRowsMessage {
  const collections: string[] = [];
  const rows = new Array<PushRow>(events.length);
  for (let i = 0; i < events.length; i++) {
    const event = events[i]!;
    let at = collections.indexOf(event.collection);
    if (at < 0) at = collections.push(event.collection) - 1;
    const row: PushRow = [event.id, at, event.documentId, event.op, event.data, withoutNode(event.hlc, clientId)];
    if (event.patch) row.push(event.baseEventId, event.patch);
    else if (event.baseEventId !== null) row.push(event.baseEventId);
    rows[i] = row;
  }
  return { collections, events: rows };
}

/** The events of a received protocol 4 push, whole again (as completePushedEvent makes them); a row that names no listed collection is refused. */
export function fromPushRows(message: PushRowsMessage, clientId: string): SyncEvent[] {
  const events = new Array<SyncEvent>(message.events.length);
  for (let i = 0; i < message.events.length; i++) {
    const [id, collectionAt, documentId, op, data, hlc, baseEventId, patch] = message.events[i]!;
    const collection = message.collections[collectionAt];
    if (collection === undefined) {
      throw new SyncError('INVALID_MESSAGE', `invalid push message: events.${i}.1: event ${id} names collection ${collectionAt}, but the push lists ${message.collections.length}`, {
        issues: [{ path: `events.${i}.1`, message: `no collection ${collectionAt} in collections` }],
      });
    }
    const event: SyncEvent = { id, collection, documentId, op, data, baseEventId: baseEventId ?? null, hlc: withNode(hlc, clientId) };
    if (patch) event.patch = patch;
    events[i] = event;
  }
  return events;
}

/** The server's current version of one document. */
export const documentHeadSchema = z.strictObject({
  collection: collectionNameSchema,
  documentId: documentIdSchema,
  seq: sequenceSchema,
  eventId: eventIdSchema,
  data: jsonObjectSchema,
  deleted: z.boolean(),
  hlc: hlcSchema,
  clientId: clientIdSchema,
});
export type DocumentHead = z.infer<typeof documentHeadSchema>;

const wireErrorSchema = z.object({
  code: z.enum(ERROR_CODES),
  message: z.string(),
  details: z.unknown().optional(),
});

/** How a protocol 1 server answers each pushed event (see pushReplySchema for protocol 2). */
export const pushResultSchema = z.discriminatedUnion('status', [
  z.object({ id: eventIdSchema, status: z.literal('accepted'), seq: sequenceSchema }),
  z.object({ id: eventIdSchema, status: z.literal('duplicate'), seq: sequenceSchema }),
  z.object({ id: eventIdSchema, status: z.literal('conflict'), head: documentHeadSchema.nullable() }),
  z.object({ id: eventIdSchema, status: z.literal('rejected'), error: wireErrorSchema }),
]);
export type PushResult = z.infer<typeof pushResultSchema>;

/**
 * How the server answers each pushed event in protocol 2, in the order the
 * events were pushed: the sequence it is stored at (just accepted, or a retry
 * of an event stored before: the same for the pusher), or what stopped it.
 * Without the event ids and status words of protocol 1, an answer to a push
 * of 500 events shrinks from about 38 KB to about 3.
 */
export const pushOutcomeSchema = z.union([
  sequenceSchema,
  z.object({ status: z.literal('conflict'), head: documentHeadSchema.nullable() }),
  z.object({ status: z.literal('rejected'), error: wireErrorSchema }),
]);
export type PushOutcome = z.infer<typeof pushOutcomeSchema>;

/** A protocol 1 result as the protocol 2 outcome it stands for. */
export function toPushOutcome(result: PushResult): PushOutcome {
  if (result.status === 'accepted' || result.status === 'duplicate') return result.seq;
  if (result.status === 'conflict') return { status: 'conflict', head: result.head };
  return { status: 'rejected', error: result.error };
}

export const handshakeSchema = z.object({
  protocolVersion: z.literal(PROTOCOL_VERSIONS),
  clientId: clientIdSchema,
  token: z.string().max(16_384).optional(),
});
export type Handshake = z.infer<typeof handshakeSchema>;

export const subscribeMessageSchema = z.strictObject({
  collections: z.array(collectionNameSchema).max(256),
  /** The scope this client asks for in each collection; a collection left out asks for everything. */
  scopes: scopesSchema.optional(),
});
export type SubscribeMessage = z.infer<typeof subscribeMessageSchema>;

export const pushMessageSchema = z.strictObject({
  events: z.array(pushedEventSchema).min(1),
});
export type PushMessage = z.infer<typeof pushMessageSchema>;

/** At most this many entries (sequences or ranges) in a pull's `have`. */
export const MAX_PULL_HAVE = 5000;

/** A sequence, or an inclusive range of them as `[first, last]`. */
export const sequenceSpanSchema = z.union([sequenceSchema, z.tuple([sequenceSchema, sequenceSchema])]);
export type SequenceSpan = z.infer<typeof sequenceSpanSchema>;

/** Sequences as the fewest spans: runs of consecutive ones become ranges. */
export function toSpans(sequences: Iterable<number>): SequenceSpan[] {
  const sorted = [...new Set(sequences)].sort((a, b) => a - b);
  const spans: SequenceSpan[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    spans.push(j === i ? sorted[i]! : [sorted[i]!, sorted[j]!]);
    i = j + 1;
  }
  return spans;
}

/** A membership test over spans, by binary search (a range is never expanded, however wide). */
export function spanSet(spans: readonly SequenceSpan[]): (seq: number) => boolean {
  const sorted = spans
    .map((span): [number, number] => (typeof span === 'number' ? [span, span] : [span[0], span[1]]))
    .filter(([first, last]) => first <= last)
    .sort((a, b) => a[0] - b[0]);
  // Overlapping or touching ranges merged: the search below needs them disjoint.
  const ranges: [number, number][] = [];
  for (const range of sorted) {
    const previous = ranges[ranges.length - 1];
    if (previous && range[0] <= previous[1] + 1) previous[1] = Math.max(previous[1], range[1]);
    else ranges.push(range);
  }
  return (seq) => {
    let low = 0;
    let high = ranges.length - 1;
    while (low <= high) {
      const middle = (low + high) >> 1;
      const [first, last] = ranges[middle]!;
      if (seq < first) high = middle - 1;
      else if (seq > last) low = middle + 1;
      else return true;
    }
    return false;
  };
}

export const pullMessageSchema = z.strictObject({
  checkpoint: sequenceSchema,
  collections: z.array(collectionNameSchema).min(1).max(256),
  limit: z.number().int().positive().optional(),
  /**
   * Sequences after the checkpoint whose events this client already holds:
   * applied from live messages, or its own pushes acknowledged. The server
   * leaves them out of the reply (the checkpoint still moves past them), so
   * a pull after a burst of live events, or after a large push, does not
   * send those documents back again.
   */
  have: z.array(sequenceSpanSchema).max(MAX_PULL_HAVE).optional(),
  /**
   * A scoped pull, of one collection: the scope this client asks for, and
   * what it holds, the documents of the scope `held` as of sequence
   * `through` (0: nothing yet). See SyncStorage.getScopedChanges.
   */
  scope: z.strictObject({ want: z.unknown(), held: z.unknown(), through: sequenceSchema }).optional(),
});
export type PullMessage = z.infer<typeof pullMessageSchema>;

/** The scope each scoped collection has (the client's within the server's rule); collections left out have none. */
export const subscribeReplySchema = z.object({ collections: z.array(collectionNameSchema), scopes: scopesSchema.optional() });
export type SubscribeReply = z.infer<typeof subscribeReplySchema>;

/** A fresh token for the open connection's session, sent before the session expires. */
export const renewMessageSchema = z.strictObject({ token: z.string().min(1).max(16_384) });
export type RenewMessage = z.infer<typeof renewMessageSchema>;
/** When the renewed session ends (ms since the epoch, server time); null: never. */
export const renewReplySchema = z.object({ expiresAt: z.number().nullable() });
export type RenewReply = z.infer<typeof renewReplySchema>;
/** The answer to a push in protocol 2: one outcome per event, in order. */
export const pushReplySchema = z.object({ results: z.array(pushOutcomeSchema) });
export type PushReply = z.infer<typeof pushReplySchema>;
/** The answer to a push in protocol 1: one result per event, in order, each naming its event. */
export const pushReplyV1Schema = z.object({ results: z.array(pushResultSchema) });
export type PushReplyV1 = z.infer<typeof pushReplyV1Schema>;
export const pullReplySchema = z.object({
  events: z.array(remoteEventSchema),
  checkpoint: sequenceSchema,
  hasMore: z.boolean(),
});
/** A pull reply as it crosses the wire (in protocol 2, events may leave out their author). */
export type WirePullReply = z.infer<typeof pullReplySchema>;
/** A pull reply as the client works with it: every event's author filled in. */
export type PullReply = Omit<WirePullReply, 'events'> & { events: RemoteEvent[]; scopes?: Record<string, unknown>; leaves?: [string, number][] };
/** A document that left the reader's scope (live): the reader removes it. */
export const leaveSchema = z.object({ collection: collectionNameSchema, documentId: documentIdSchema, seq: sequenceSchema });
export type Leave = z.infer<typeof leaveSchema>;
export const liveMessageSchema = z
  .object({ events: z.array(remoteEventSchema), leaves: z.array(leaveSchema).optional() })
  .refine((message) => message.events.length > 0 || (message.leaves?.length ?? 0) > 0, 'a live message holds events or leaves');
export type LiveMessage = { events: RemoteEvent[]; leaves?: Leave[] };

/** Every acknowledgement is either `{ ok: true, ...reply }` or `{ ok: false, error }`. */
export type Ack<T> = ({ ok: true } & T) | { ok: false; error: WireError };
export function ackSchema<T extends z.ZodObject>(reply: T) {
  return z.union([reply.extend({ ok: z.literal(true) }), z.object({ ok: z.literal(false), error: wireErrorSchema })]);
}

/**
 * The server's first message on every connection, before any reply: the
 * limits it holds each message to, so that a client never sends one the
 * server would drop, and its clock, so that a device whose own clock is wrong
 * stamps its changes with a time the server accepts.
 */
export const welcomeMessageSchema = z.object({
  serverTime: z.number(),
  limits: z.object({
    /** Largest message the server reads, in bytes of JSON; a larger one is refused or drops the connection. */
    maxPayloadBytes: z.number().int().positive(),
    maxEventsPerPush: z.number().int().positive(),
    maxPullLimit: z.number().int().positive(),
    /** How far ahead of serverTime, in ms, an event's clock may run (null: any). */
    maxClockDrift: z.number().int().positive().nullable(),
  }),
  /** How often the server pings, in ms: a client that hears nothing for much longer takes the link for dead. */
  heartbeatInterval: z.number().int().positive(),
  /** When this connection's session ends (ms since the epoch, server time), unless renewed with sync:renew; null: never. */
  expiresAt: z.number().nullable(),
});
export type WelcomeMessage = z.infer<typeof welcomeMessageSchema>;

export interface ClientToServerEvents {
  'sync:subscribe': (message: SubscribeMessage, ack: (reply: Ack<SubscribeReply>) => void) => void;
  'sync:push': (message: PushMessage | PushRowsMessage, ack: (reply: Ack<PushReply | PushReplyV1>) => void) => void;
  'sync:pull': (message: PullMessage, ack: (reply: Ack<WirePullReply | PullPage>) => void) => void;
  'sync:renew': (message: RenewMessage, ack: (reply: Ack<RenewReply>) => void) => void;
}

export interface ServerToClientEvents {
  'sync:events': (message: LiveMessage) => void;
  'sync:error': (error: WireError) => void;
  'sync:welcome': (message: WelcomeMessage) => void;
}

/**
 * Checks a message against its schema; a failure becomes an INVALID_MESSAGE
 * error that names the first offending field. `quick`, one of the checks in
 * wire-checks.ts, takes the common case without the schema: a value it
 * passes is one the schema would return unchanged.
 */
export function parseMessage<T extends z.ZodType>(schema: T, value: unknown, what: string, quick?: (value: unknown) => boolean): z.infer<T> {
  if (quick?.(value)) return value as z.infer<T>;
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const path = issue.path.length > 0 ? issue.path.join('.') : '(message)';
  throw new SyncError('INVALID_MESSAGE', `invalid ${what}: ${path}: ${issue.message}`, {
    issues: result.error.issues.slice(0, 5).map((i) => ({ path: i.path.join('.'), message: i.message })),
  });
}
