/**
 * Live messages: the events other clients push, sent to every reader of a
 * collection as they are stored, and the documents that left a reader's
 * scope.
 */
import { z } from 'zod';
import { SyncError } from '../errors.js';
import { nodeOf } from '../hlc.js';
import { syncEventSchema, type StoredEvent } from './events.js';
import { clientIdSchema, collectionNameSchema, documentIdSchema, sequenceSchema } from './fields.js';

/**
 * An event as other clients receive it: what a reader needs to apply it.
 * The base it was written on, its patch and the server's receive time stay
 * on the server: a received insert is a tenth smaller for it, an update
 * about a third, which counts on the slow links this is for. (And a patch
 * can never leak a sensitive field.)
 */
export const remoteEventSchema = z.object({
  // Not strict: fields a later server adds are dropped, not refused.
  ...syncEventSchema.omit({ baseEventId: true, patch: true }).shape,
  seq: sequenceSchema,
  // May be left out when it is the clock's node (see completeRemoteEvent).
  clientId: clientIdSchema.optional(),
});
export type WireRemoteEvent = z.infer<typeof remoteEventSchema>;
/** A remote event as the client works with it: its author always known (see completeRemoteEvent). */
export type RemoteEvent = WireRemoteEvent & { clientId: string };

/** The part of a stored event that leaves the server in live messages. */
export function toRemoteEvent(event: StoredEvent): RemoteEvent {
  return { id: event.id, collection: event.collection, documentId: event.documentId, op: event.op, data: event.data, hlc: event.hlc, seq: event.seq, clientId: event.clientId };
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

/** A document that left the reader's scope (live): the reader removes it. */
export const leaveSchema = z.object({ collection: collectionNameSchema, documentId: documentIdSchema, seq: sequenceSchema });
export type Leave = z.infer<typeof leaveSchema>;

export const liveMessageSchema = z
  .object({ events: z.array(remoteEventSchema), leaves: z.array(leaveSchema).optional() })
  .refine((message) => message.events.length > 0 || (message.leaves?.length ?? 0) > 0, 'a live message holds events or leaves');
export type LiveMessage = { events: RemoteEvent[]; leaves?: Leave[] };
