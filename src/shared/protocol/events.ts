/**
 * Events and documents as both sides see them: a change as a client makes
 * it, as the server stores it, and the server's current version of a
 * document.
 */
import { z } from 'zod';
import { PUSHED_HLC_SHAPE, clockProblem } from '../hlc.js';
import { clientIdSchema, collectionNameSchema, documentIdSchema, eventIdSchema, hlcSchema, isDocumentId, isHlc, jsonObjectSchema, sequenceSchema } from './fields.js';

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
 * A clock as a push carries it: without its node when that is the pushing
 * client's own id (the server has it from the handshake), to spare bytes on
 * every event of every push.
 */
export const pushedHlcSchema = z.string().regex(PUSHED_HLC_SHAPE, 'a hybrid logical clock value: 15 digits of milliseconds, -, 6 base-36 digits of counter, then - and the node unless it is the pusher');

/**
 * What keeps a pushed event, made whole, from being one syncEventSchema
 * takes, as `path: reason`; undefined when nothing does. A push is read by
 * its shape (see pushRowSchema), so that an event with a bad document id or
 * clock is refused alone and the rest of its push is stored: only those two
 * fields, which a push's shape leaves open, are looked at.
 */
export function pushedEventProblem(event: SyncEvent): { path: string; message: string } | undefined {
  if (!isDocumentId(event.documentId)) return { path: 'documentId', message: documentIdSchema.safeParse(event.documentId).error?.issues[0]?.message ?? 'not a document id' };
  if (!isHlc(event.hlc)) return { path: 'hlc', message: clockProblem(event.hlc) ?? 'not a clock' };
  return undefined;
}

/** An event as the server stored it: stamped with its sequence and author. */
export const storedEventSchema = syncEventSchema.extend({
  seq: sequenceSchema,
  clientId: clientIdSchema,
  serverTime: z.number(),
});
export type StoredEvent = z.infer<typeof storedEventSchema>;

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
