/**
 * A pull and its answer, a page: the changes after a checkpoint, as rows
 * with each collection name and clock node of the page listed once.
 */
import { z } from 'zod';
import { SyncError } from '../errors.js';
import { CLOCK_TIME_PATTERN, hasNode, nodeOf, timeOf } from '../hlc.js';
import { OPERATIONS, type StoredEvent } from './events.js';
import { clientIdSchema, clockNodeSchema, collectionNameSchema, documentIdSchema, eventIdSchema, isClientId, jsonObjectSchema, scopesSchema, sequenceSchema } from './fields.js';
import type { RemoteEvent } from './live.js';
import { sequenceSpanSchema } from './spans.js';

/** At most this many entries (sequences or ranges) in a pull's `have`. */
export const MAX_PULL_HAVE = 5000;

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
   * `through` (0: nothing yet). A catch-up from nothing sends, from its
   * second page on, the `start` its first page's answer named. See
   * SyncStorage.getScopedChanges.
   */
  scope: z.strictObject({ want: z.unknown(), held: z.unknown(), through: sequenceSchema, start: sequenceSchema.optional() }).optional(),
});
export type PullMessage = z.infer<typeof pullMessageSchema>;

/**
 * One event of a pull page, as a row: id, index of its collection in the
 * page's `collections`, document id, operation, data, its clock's time and
 * counter, index of its clock's node in the page's `nodes`, sequence, and
 * (only when it is not that node) its author.
 */
export const pageEventSchema = z.tuple(
  [eventIdSchema, z.number().int().nonnegative(), documentIdSchema, z.enum(OPERATIONS), jsonObjectSchema, z.string().regex(CLOCK_TIME_PATTERN, 'the time and counter of a clock'), z.number().int().nonnegative(), sequenceSchema],
  clientIdSchema,
);
export type PageEvent = z.infer<typeof pageEventSchema>;

/**
 * The answer to a pull. Most of an event's bytes besides its data are its
 * field names, its collection and its clock's node (a UUID, one of a few
 * writers'): as rows with every name and node of the page listed once, a
 * pulled todo takes about 230 bytes instead of 325, and pulling 50k todos
 * costs the server and the wire about a fifth less time.
 */
export const pullPageSchema = z.object({
  /** The scope each scoped collection of the pull has now (see subscribeReplySchema). */
  scopes: scopesSchema.optional(),
  /** In a scoped pull: documents that left the scope, as [document id, sequence]; the client removes them. */
  leaves: z.array(z.tuple([documentIdSchema, sequenceSchema])).optional(),
  /** On the first page of a scoped catch-up from nothing: the latest sequence as it began, for the client to send back as `scope.start`. */
  start: sequenceSchema.optional(),
  collections: z.array(collectionNameSchema),
  // The rest of a clock after its time, held to what a node may be in a whole clock.
  nodes: z.array(clockNodeSchema),
  events: z.array(pageEventSchema),
  checkpoint: sequenceSchema,
  hasMore: z.boolean(),
});
export type PullPage = z.infer<typeof pullPageSchema>;

/** A pull page as the client works with it: whole events, every author filled in. */
export type PullReply = Pick<PullPage, 'checkpoint' | 'hasMore' | 'scopes' | 'leaves' | 'start'> & { events: RemoteEvent[] };

/** Events as a pull page lists them (see pullPageSchema). */
export function toPullPage(events: readonly RemoteEvent[]): Pick<PullPage, 'collections' | 'nodes' | 'events'> {
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

/** The events of a received pull page, whole again; a row that names no listed collection or node is refused. */
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
