/**
 * Requests to the sync server and their acknowledgements: the schema each
 * acknowledgement is checked against, the size check before a push, and
 * the reading of a reply.
 */
import type { z } from 'zod';
import { SyncError } from '../../shared/errors.js';
import { utf8Length } from '../../shared/json.js';
import {
  ackSchema,
  blobDownloadReplySchema,
  blobStateReplySchema,
  fromPullPage,
  uploadStateSchema,
  type BlobDownloadReply,
  type BlobStateReply,
  type BlobUploadReply,
  parseMessage,
  pullPageSchema,
  pushReplySchema,
  renewReplySchema,
  subscribeReplySchema,
  type Ack,
  type PullPage,
  type PullReply,
  type PushReply,
  type RenewReply,
  type SubscribeReply,
} from '../../shared/protocol/index.js';

// ackSchema(reply) checks `{ ok: true, ...reply } | { ok: false, error }`, but its type keeps no
// shape of the reply: each is typed here as what it checks.
export const pushAck = ackSchema(pushReplySchema) as z.ZodType<Ack<PushReply>>;
export const pullPageAck = ackSchema(pullPageSchema) as z.ZodType<Ack<PullPage>>;
export const subscribeAck = ackSchema(subscribeReplySchema) as z.ZodType<Ack<SubscribeReply>>;
export const renewAck = ackSchema(renewReplySchema) as z.ZodType<Ack<RenewReply>>;
export const blobStateAck = ackSchema(blobStateReplySchema) as z.ZodType<Ack<BlobStateReply>>;
export const blobUploadAck = ackSchema(uploadStateSchema) as z.ZodType<Ack<BlobUploadReply>>;
export const blobDownloadAck = ackSchema(blobDownloadReplySchema) as z.ZodType<Ack<BlobDownloadReply>>;

/** Room left in a push for socket.io's framing around the message (`42["sync:push",…,id]`). */
const FRAMING_BYTES = 64;

/**
 * Refuses, before sending, a push the server would not read: its size in
 * UTF-8 bytes, as the server measures it, against the limit its welcome
 * named (`limit`; none known, nothing is refused). Over it, socket.io on
 * the server may drop the whole connection, and the push would go out
 * again on every reconnection. Measured exactly only when a cheap bound
 * (3 bytes per UTF-16 unit) does not settle it.
 */
export function assertFits(message: unknown, limit: number | undefined): void {
  if (limit === undefined) return;
  const json = JSON.stringify([message]);
  if (json.length * 3 + FRAMING_BYTES <= limit) return;
  const bytes = utf8Length(json);
  if (bytes + FRAMING_BYTES > limit) {
    throw new SyncError('PAYLOAD_TOO_LARGE', `a push of ${bytes} bytes exceeds the server's maxPayloadBytes (${limit})`, { bytes, limit });
  }
}

/** The reply to a request of `type`, checked against its acknowledgement's schema: the server's answer, or its refusal thrown. */
export function readReply<R>(schema: z.ZodType<Ack<R>>, raw: unknown, type: string, quick?: (value: unknown) => boolean): R {
  const reply = parseMessage(schema, raw, `reply to ${type}`, quick);
  if (!reply.ok) throw SyncError.fromWire(reply.error);
  return reply;
}

/** A pull page as the engine reads it: its rows as remote events. */
export function toPullReply(page: PullPage): PullReply {
  return {
    events: fromPullPage(page),
    checkpoint: page.checkpoint,
    hasMore: page.hasMore,
    ...(page.scopes ? { scopes: page.scopes } : {}),
    ...(page.leaves ? { leaves: page.leaves } : {}),
    ...(page.start !== undefined ? { start: page.start } : {}),
  };
}
