/**
 * The conversation: the protocol version, the handshake and the server's
 * welcome, the name of every message, the small requests (subscribe, renew),
 * and the typed event maps of both directions.
 */
import { z } from 'zod';
import type { WireError } from '../errors.js';
import { clientIdSchema, collectionNameSchema, scopesSchema } from './fields.js';
import type { LiveMessage } from './live.js';
import type { PullMessage, PullPage } from './pull.js';
import type { PushReply, PushRowsMessage } from './push.js';
import type { BlobDownloadMessage, BlobDownloadReply, BlobStateMessage, BlobStateReply, BlobUploadMessage, BlobUploadReply } from './blobs.js';
import type { Ack } from './wire.js';

/**
 * The version of the protocol, carried in the handshake: a server refuses a
 * client that speaks another one, naming the version it speaks.
 */
export const PROTOCOL_VERSION = 5;
export type ProtocolVersion = typeof PROTOCOL_VERSION;

export const MESSAGE = {
  subscribe: 'sync:subscribe',
  push: 'sync:push',
  pull: 'sync:pull',
  live: 'sync:events',
  error: 'sync:error',
  welcome: 'sync:welcome',
  renew: 'sync:renew',
  blobState: 'sync:blob-state',
  blobUpload: 'sync:blob-upload',
  blobDownload: 'sync:blob-download',
} as const;

export const CLIENT_MESSAGES: ReadonlySet<string> = new Set([MESSAGE.subscribe, MESSAGE.push, MESSAGE.pull, MESSAGE.renew, MESSAGE.blobState, MESSAGE.blobUpload, MESSAGE.blobDownload]);

export const handshakeSchema = z.object({
  protocolVersion: z.literal(PROTOCOL_VERSION),
  clientId: clientIdSchema,
  token: z.string().max(16_384).optional(),
});
export type Handshake = z.infer<typeof handshakeSchema>;

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
    /** The largest attachment the server takes, in bytes; null: it keeps no attachments. */
    maxAttachmentBytes: z.number().int().nonnegative().nullable(),
  }),
  /** How often the server pings, in ms: a client that hears nothing for much longer takes the link for dead. */
  heartbeatInterval: z.number().int().positive(),
  /** When this connection's session ends (ms since the epoch, server time), unless renewed with sync:renew; null: never. */
  expiresAt: z.number().nullable(),
});
export type WelcomeMessage = z.infer<typeof welcomeMessageSchema>;

export const subscribeMessageSchema = z.strictObject({
  collections: z.array(collectionNameSchema).max(256),
  /** The scope this client asks for in each collection; a collection left out asks for everything. */
  scopes: scopesSchema.optional(),
});
export type SubscribeMessage = z.infer<typeof subscribeMessageSchema>;

/** The scope each scoped collection has (the client's within the server's rule); collections left out have none. */
export const subscribeReplySchema = z.object({ collections: z.array(collectionNameSchema), scopes: scopesSchema.optional() });
export type SubscribeReply = z.infer<typeof subscribeReplySchema>;

/** A fresh token for the open connection's session, sent before the session expires. */
export const renewMessageSchema = z.strictObject({ token: z.string().min(1).max(16_384) });
export type RenewMessage = z.infer<typeof renewMessageSchema>;
/** When the renewed session ends (ms since the epoch, server time); null: never. */
export const renewReplySchema = z.object({ expiresAt: z.number().nullable() });
export type RenewReply = z.infer<typeof renewReplySchema>;

export interface ClientToServerEvents {
  'sync:subscribe': (message: SubscribeMessage, ack: (reply: Ack<SubscribeReply>) => void) => void;
  'sync:push': (message: PushRowsMessage, ack: (reply: Ack<PushReply>) => void) => void;
  'sync:pull': (message: PullMessage, ack: (reply: Ack<PullPage>) => void) => void;
  'sync:renew': (message: RenewMessage, ack: (reply: Ack<RenewReply>) => void) => void;
  'sync:blob-state': (message: BlobStateMessage, ack: (reply: Ack<BlobStateReply>) => void) => void;
  'sync:blob-upload': (message: BlobUploadMessage, ack: (reply: Ack<BlobUploadReply>) => void) => void;
  'sync:blob-download': (message: BlobDownloadMessage, ack: (reply: Ack<BlobDownloadReply>) => void) => void;
}

export interface ServerToClientEvents {
  'sync:events': (message: LiveMessage) => void;
  'sync:error': (error: WireError) => void;
  'sync:welcome': (message: WelcomeMessage) => void;
}
