import type { Server as HttpServer } from 'node:http';
import type { Socket, ServerOptions } from 'socket.io';
import { z } from 'zod';
import { loggingOptionsSchema } from '../shared/logger.js';
import { parseOptions } from '../shared/json.js';
import { collectionNameSchema } from '../shared/protocol/index.js';
import type { ScopeSelector } from '../shared/scope.js';
import type { BlobStore } from './blobs/types.js';
import type { SyncStorage } from './storage/types.js';

/** Every method of SyncStorage the server calls. */
const STORAGE_METHODS = [
  'init',
  'saveEvents',
  'getEventsAfter',
  'getChangesAfter',
  'clearEventsBefore',
  'getHeads',
  'getLatestSequence',
  'countEvents',
  'claimClient',
  'getScopedChanges',
  'indexScopeFields',
  'close',
] as const satisfies readonly (keyof SyncStorage)[];
import { retentionOptionsSchema } from './retention.js';
import { DEFAULT_MAX_CLOCK_DRIFT, compileSchemas } from './validation.js';

export type WriteOperation = 'insert' | 'update' | 'delete';
export type AccessOperation = 'read' | WriteOperation;

/**
 * What `authenticate` returns to end a session at a given time: the server
 * sends `sync:error` TOKEN_EXPIRED and disconnects the socket at `expiresAt`
 * (milliseconds since the epoch), and the client reconnects with a fresh token.
 *
 * The server recognises this shape only on a plain object whose own keys are
 * exactly `user` and `expiresAt`; any other value (including a user object
 * that has more keys) is taken as the user itself. A user object that happens
 * to have exactly these two keys must therefore be wrapped: `{ user, expiresAt }`.
 */
export interface AuthSession<User> {
  user: User;
  expiresAt: number;
}

/**
 * Returns the user for a token, or an {@link AuthSession} to make the session
 * expire; a falsy answer or a throw refuses the connection (UNAUTHENTICATED).
 */
export type Authenticate<User> = (
  socket: Socket,
  token: string | undefined,
) => User | AuthSession<User> | null | undefined | false | Promise<User | AuthSession<User> | null | undefined | false>;

/**
 * Decides, per document, whether `user` may do `operation` on it. It runs for
 * every document sent out ('read': pulls, live events, conflict answers) and
 * for every pushed event: with the new document and, when the server already
 * holds a version of that document, with that version too. Both must pass, so
 * a user cannot take over someone else's document by rewriting its owner field.
 */
export type Authorize<User> = (
  user: User,
  collection: string,
  operation: AccessOperation,
  document: Record<string, unknown>,
) => boolean | Promise<boolean>;

/**
 * Decides at once which of `documents` (all of `collection`) `user` may
 * read: one answer per document, in order, `true` for those it may. When
 * given, every read asks it instead of `authorize` (pulls, live events,
 * conflict answers): once per page, or per user and push on the live path,
 * instead of once per document. A throw, or an answer of another length, is
 * undecided, as a throw of `authorize` is.
 */
export type AuthorizeRead<User> = (user: User, collection: string, documents: Record<string, unknown>[]) => boolean[] | Promise<boolean[]>;

/**
 * The widest sync scope `user` may have in `collection` (a selector over the
 * collection's `scopeFields`), or null for no limit beyond `authorize`. A
 * client's own scope applies within it: a user cannot widen their scope.
 */
export type ScopeRule<User> = (user: User, collection: string) => ScopeSelector | null | undefined | Promise<ScopeSelector | null | undefined>;

/** The bytes of attachments `user` may store (uploads in progress included); null or undefined: no quota. */
export type AttachmentQuota<User> = (user: User) => number | null | undefined | Promise<number | null | undefined>;

/** Every method of BlobStore the server calls. */
const BLOB_STORE_METHODS = ['init', 'uploadState', 'append', 'stored', 'read', 'usage', 'sweep', 'close'] as const satisfies readonly (keyof BlobStore)[];

/** Names a user for per-user limits; undefined leaves that user out of them. */
export type UserKey<User> = (user: User) => string | undefined;

const fn = (name: string) =>
  z.custom<(...args: never[]) => unknown>((value) => typeof value === 'function', `${name} must be a function`);

const fieldNameSchema = z.string().min(1).max(256);

export const rateLimitSchema = z.strictObject({
  /** Length of one counting window, in milliseconds. */
  windowMs: z.number().int().positive(),
  /** Messages one connection may send per window. */
  max: z.number().int().positive(),
  /** Messages all connections of one user together may send per window (default: `max`). */
  maxPerUser: z.number().int().positive().optional(),
  /** Text of the RATE_LIMITED error the client gets. */
  message: z.string().min(1).default('too many messages, slow down'),
  /**
   * Messages one connection may go on sending in a window after it was told
   * RATE_LIMITED (default: `max`); past them it is disconnected. A client that
   * waits for its answers never gets there.
   */
  maxRefused: z.number().int().nonnegative().optional(),
});

/**
 * On by default, far above what a client that waits for its answers sends (a
 * pull or push a round trip, one after another; an offline backlog goes in
 * pushes of hundreds of events), far below a flood.
 */
export const DEFAULT_RATE_LIMIT = { windowMs: 1000, max: 300, maxPerUser: 1500 } as const;

export const loginLimitSchema = z.strictObject({
  windowMs: z.number().int().positive().default(60_000),
  /** Failed logins on one connection before it is closed. */
  perConnection: z.number().int().positive().default(5),
  /** Failed logins from one remote address per window; past them, logins from it are refused unheard until the window ends. */
  perAddress: z.number().int().positive().default(30),
});

export const serverOptionsSchema = z.strictObject({
  httpServer: z.custom<HttpServer>(
    (value) => !!value && typeof (value as HttpServer).on === 'function' && typeof (value as HttpServer).listen === 'function',
    'httpServer must be a Node http.Server (or https.Server)',
  ),
  socketOptions: z.record(z.string(), z.unknown()).default({}),
  authenticate: fn('authenticate').optional(),
  authorize: fn('authorize').optional(),
  /** Batch read authorizer (see AuthorizeRead); reads ask it instead of `authorize`. */
  authorizeRead: fn('authorizeRead').optional(),
  storage: z
    .custom<SyncStorage>(
      (value) => !!value && STORAGE_METHODS.every((method) => typeof (value as unknown as Record<string, unknown>)[method] === 'function'),
      {
        error: (issue) =>
          `storage must implement SyncStorage; it lacks ${
            issue.input
              ? STORAGE_METHODS.filter((method) => typeof (issue.input as Record<string, unknown>)[method] !== 'function').join(', ')
              : 'every method'
          }`,
      },
    )
    .optional(),
  /**
   * Where attachment content is kept (see BlobStore): MemoryBlobStore,
   * FileBlobStore or PostgresBlobStore. Default: a MemoryBlobStore when
   * storage is the default memory storage, else none, and documents with
   * attachments are refused: content kept in memory beside durable
   * documents would be lost on a restart while the documents name it.
   */
  blobs: z
    .custom<BlobStore>((value) => !!value && BLOB_STORE_METHODS.every((method) => typeof (value as unknown as Record<string, unknown>)[method] === 'function'), {
      error: () => `blobs must implement BlobStore (${BLOB_STORE_METHODS.join(', ')})`,
    })
    .optional(),
  /** The largest attachment the server takes, in bytes: a larger one is refused (ATTACHMENT_TOO_LARGE) before any of it is stored. */
  maxAttachmentBytes: z.number().int().positive().default(100 * 1024 * 1024),
  /** The bytes of attachments each user may store (see AttachmentQuota); none by default. */
  attachmentQuota: fn('attachmentQuota').optional(),
  /**
   * Per collection, the top-level fields sync scopes may name (storage
   * indexes them). A scope over a collection or field not declared here is
   * refused with INVALID_SCOPE.
   */
  scopeFields: z.record(collectionNameSchema, z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, 'a scope field is a top-level field named as a plain identifier')).min(1)).default({}),
  /** The widest scope each user may have per collection (see ScopeRule). */
  scopes: fn('scopes').optional(),
  /** When given, pushes, pulls and subscriptions for any other collection are refused. */
  collections: z.array(collectionNameSchema).min(1).optional(),
  /** A socket.io adapter (for instance @socket.io/redis-adapter) for several server instances. */
  adapter: fn('adapter').optional(),
  logging: loggingOptionsSchema,
  onClientConnect: fn('onClientConnect').optional(),
  onClientDisconnect: fn('onClientDisconnect').optional(),
  maxEventsPerPush: z.number().int().positive().default(1000),
  maxPayloadBytes: z.number().int().positive().default(4 * 1024 * 1024),
  maxPullLimit: z.number().int().positive().default(5000),
  /**
   * Bytes of documents one pull page holds at most (each measured as the
   * UTF-8 length of its JSON); a larger document travels alone. A pushed
   * document larger than this is rejected (PAYLOAD_TOO_LARGE), so that
   * every stored document can be pulled. Far below the longest string V8
   * builds (about 512 M characters), which a page's encoding must stay under.
   */
  maxPullBytes: z.number().int().positive().max(256 * 1024 * 1024).default(4 * 1024 * 1024),
  /** Scheduled compaction of superseded events (see retention.ts); off when absent. */
  retention: retentionOptionsSchema.optional(),
  defaultPullLimit: z.number().int().positive().default(1000),
  /** Deepest nesting of objects and arrays a pushed document may have (deeper events are rejected). */
  maxDocumentDepth: z.number().int().positive().max(1000).default(64),
  /** Per collection, the app's RxDB JSON schema: a pushed insert or update whose document does not match is rejected (SCHEMA_VIOLATION). Compiled here, once. */
  schemas: z
    .record(collectionNameSchema, z.custom<Record<string, unknown>>((value) => !!value && typeof value === 'object' && !Array.isArray(value), 'a JSON schema must be an object'))
    .transform(compileSchemas)
    .optional(),
  /** How far (ms) a pushed event's clock may run ahead of the server's; a later one is rejected (CLOCK_DRIFT). `false` turns the check off. */
  maxClockDrift: z.union([z.literal(false), z.number().int().positive()]).default(DEFAULT_MAX_CLOCK_DRIFT),
  /** Messages per window, per connection and per user; over it a message is answered RATE_LIMITED. Per server instance; `false` turns it off. */
  rateLimit: z.union([z.literal(false), rateLimitSchema]).default(() => rateLimitSchema.parse(DEFAULT_RATE_LIMIT)),
  /** Failed logins per connection and per remote address; `false` turns the limit off. */
  loginLimit: z.union([z.literal(false), loginLimitSchema]).default(loginLimitSchema.parse({})),
  /** Messages of one connection that may wait behind the one being served; one more disconnects it (TOO_MANY_REQUESTS). */
  maxQueuedMessages: z.number().int().positive().default(16),
  /** Bytes of replies and live messages one connection may leave unread; more disconnects it (SLOW_CONSUMER). */
  maxUnsentBytes: z.number().int().positive().default(32 * 1024 * 1024),
  /** Connections one user may hold at once on this server instance; more are refused with TOO_MANY_CONNECTIONS. */
  maxConnectionsPerUser: z.number().int().positive().optional(),
  /** Connections this server instance holds at most; more are refused with SERVER_BUSY (a load balancer's next attempt may find another instance). */
  maxConnections: z.number().int().positive().optional(),
  /**
   * Handshakes this instance takes per second; the excess is refused with
   * SERVER_BUSY and a retryAfterMs spread over the backlog, so a reconnect
   * storm after a restart comes back in waves the server can serve instead
   * of timing out all at once. `false` turns it off.
   */
  maxHandshakesPerSecond: z.union([z.literal(false), z.number().int().positive()]).default(1000),
  /** Names a user for per-user limits (default: a string or number user itself, or an object user's `id`). */
  userKey: fn('userKey').optional(),
  /** Top-level fields stripped from every document before it leaves the server: for all collections, or per collection. */
  sensitiveFields: z.union([z.array(fieldNameSchema), z.record(collectionNameSchema, z.array(fieldNameSchema))]).optional(),
  /**
   * How often the server pings each client, in ms (socket.io's pingInterval).
   * Clients take a link for dead when nothing, not even a ping, came for
   * their heartbeatTimeout (4.5 s by default, never under twice this), so this
   * bounds how soon they notice a link that dropped without closing.
   */
  heartbeatInterval: z.number().int().positive().default(2000),
  /** How long the server waits for the answer to a ping before it drops the client, in ms (socket.io's pingTimeout). */
  clientTimeout: z.number().int().positive().optional(),
});

type FunctionOptions = 'authenticate' | 'authorize' | 'authorizeRead' | 'userKey' | 'socketOptions' | 'adapter' | 'scopes' | 'attachmentQuota';

export type SyncServerOptions<User = unknown> = Omit<z.input<typeof serverOptionsSchema>, FunctionOptions | 'storage' | 'blobs'> & {
  authenticate?: Authenticate<User>;
  authorize?: Authorize<User>;
  authorizeRead?: AuthorizeRead<User>;
  scopes?: ScopeRule<User>;
  userKey?: UserKey<User>;
  attachmentQuota?: AttachmentQuota<User>;
  socketOptions?: Partial<ServerOptions>;
  storage?: SyncStorage;
  blobs?: BlobStore;
  adapter?: ServerOptions['adapter'];
};

export type ResolvedServerOptions<User = unknown> = Omit<z.output<typeof serverOptionsSchema>, FunctionOptions> & {
  authenticate?: Authenticate<User>;
  authorize?: Authorize<User>;
  authorizeRead?: AuthorizeRead<User>;
  scopes?: ScopeRule<User>;
  userKey?: UserKey<User>;
  attachmentQuota?: AttachmentQuota<User>;
  socketOptions: Partial<ServerOptions>;
  adapter?: ServerOptions['adapter'];
};

export type RateLimitOptions = z.output<typeof rateLimitSchema>;
export type LoginLimitOptions = z.output<typeof loginLimitSchema>;
export type SensitiveFields = z.output<typeof serverOptionsSchema>['sensitiveFields'];

export function resolveServerOptions<User>(options: SyncServerOptions<User>): ResolvedServerOptions<User> {
  const parsed = parseOptions(serverOptionsSchema, options, 'sync server');
  if (parsed.defaultPullLimit > parsed.maxPullLimit) parsed.defaultPullLimit = parsed.maxPullLimit;
  return parsed as ResolvedServerOptions<User>;
}
