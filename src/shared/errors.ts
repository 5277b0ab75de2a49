import { z } from 'zod';

/** Stable error codes: clients and servers branch on these, never on messages. */
export const ERROR_CODES = [
  'INVALID_OPTION',
  'INVALID_MESSAGE',
  'UNSUPPORTED_PROTOCOL',
  'UNAUTHENTICATED',
  'UNAUTHORIZED',
  'AUTHORIZATION_FAILED',
  'UNKNOWN_COLLECTION',
  /** A sync scope uses something scopes do not support, or a field the server did not declare for scopes. */
  'INVALID_SCOPE',
  /** A pushed document does not match its collection's schema (the server's `schemas` option). */
  'SCHEMA_VIOLATION',
  /** A pushed event's clock runs further ahead of the server's than `maxClockDrift` allows. */
  'CLOCK_DRIFT',
  'PAYLOAD_TOO_LARGE',
  'TOO_MANY_EVENTS',
  'RATE_LIMITED',
  'TOO_MANY_CONNECTIONS',
  /** This server instance takes no more connections now (maxConnections, or too many handshakes this second): come back after `retryAfterMs`, perhaps to another instance. */
  'SERVER_BUSY',
  /** The connection sent more than the server serves (a flood): it is disconnected. */
  'TOO_MANY_REQUESTS',
  /** The connection did not read its replies and they passed the server's bound: it is disconnected. */
  'SLOW_CONSUMER',
  /** Another connection with the same client id replaced this one. */
  'REPLACED',
  /** The client id belongs to another user. */
  'CLIENT_ID_TAKEN',
  'TOKEN_EXPIRED',
  'STORAGE_ERROR',
  /** A pushed document names an attachment whose content the server does not hold: upload it, then push again. */
  'ATTACHMENT_MISSING',
  /** An attachment is larger than the server's maxAttachmentBytes, or its upload would pass the user's quota. */
  'ATTACHMENT_TOO_LARGE',
  /** The attachment asked for is not one of the current version of a document the reader may read, or its content is gone. */
  'ATTACHMENT_NOT_FOUND',
  'CONFLICT_RESOLVER_FAILED',
  'NOT_CONNECTED',
  'TIMEOUT',
  'DISABLED',
  'CLOSED',
  'INTERNAL',
] as const;

export type SyncErrorCode = (typeof ERROR_CODES)[number];

/** Plain shape of an error as it travels over the wire: `details` is whatever the peer sent, checked by fromWire. */
export interface WireError {
  code: SyncErrorCode;
  message: string;
  details?: unknown;
}

const problem = z.object({ path: z.string(), message: z.string() });

/**
 * What `details` holds, per code: the schema that fromWire checks a peer's
 * details against (a peer's extra fields are kept), and the type an app
 * reads after `error.is(code)`. A code not listed carries no details.
 */
export const SYNC_ERROR_DETAILS = {
  /** `option` is the path of the refused option, `value` what was given. */
  INVALID_OPTION: z.looseObject({ option: z.string(), value: z.unknown() }),
  /** `issues`: the first problems found, each with the path in the message; or the one field that was wrong. */
  INVALID_MESSAGE: z.looseObject({
    issues: z.array(problem).optional(),
    path: z.string().optional(),
    type: z.string().optional(),
    collections: z.array(z.string()).optional(),
    limit: z.number().optional(),
  }),
  /** The protocol versions the server speaks. */
  UNSUPPORTED_PROTOCOL: z.looseObject({ supported: z.array(z.number()) }),
  UNAUTHORIZED: z.looseObject({ collection: z.string(), documentId: z.string(), operation: z.string() }),
  UNKNOWN_COLLECTION: z.looseObject({ collection: z.string() }),
  INVALID_SCOPE: z.looseObject({ collection: z.string().optional(), fields: z.array(z.string()).optional() }),
  /** `path` is the JSON pointer of the first field that does not match, `keyword` the schema rule it broke. */
  SCHEMA_VIOLATION: z.looseObject({ collection: z.string(), documentId: z.string(), path: z.string(), keyword: z.string() }),
  /** Times in ms since the epoch; `maxClockDrift` in ms. */
  CLOCK_DRIFT: z.looseObject({ eventTime: z.number(), serverTime: z.number(), maxClockDrift: z.number() }),
  /** `type`: the message that was too large, when it was a whole message. */
  PAYLOAD_TOO_LARGE: z.looseObject({ bytes: z.number(), limit: z.number(), type: z.string().optional() }),
  TOO_MANY_EVENTS: z.looseObject({ count: z.number(), limit: z.number() }),
  /** Whose budget ran out (`scope`), how large it is per `windowMs`, and when to try again. */
  RATE_LIMITED: z.looseObject({
    scope: z.enum(['connection', 'user', 'login', 'renewal']),
    limit: z.number().optional(),
    windowMs: z.number().optional(),
    retryAfterMs: z.number().optional(),
  }),
  TOO_MANY_CONNECTIONS: z.looseObject({ limit: z.number() }),
  /** Why the instance is busy, and when to come back (perhaps to another instance). */
  SERVER_BUSY: z.looseObject({ reason: z.enum(['connections', 'handshakes']), retryAfterMs: z.number() }),
  /** The bound that was passed: messages waiting for an answer, or the rate limit the connection went on sending past. */
  TOO_MANY_REQUESTS: z.looseObject({
    limit: z.number().optional(),
    scope: z.enum(['connection', 'user', 'login', 'renewal']).optional(),
    windowMs: z.number().optional(),
    retryAfterMs: z.number().optional(),
  }),
  SLOW_CONSUMER: z.looseObject({ bytes: z.number(), limit: z.number() }),
  /** When the session ended, in ms since the epoch. */
  TOKEN_EXPIRED: z.looseObject({ expiresAt: z.number() }),
  /** What the local database said (RxDB's validation errors, say). */
  STORAGE_ERROR: z.looseObject({ error: z.unknown() }),
  /** The digests the server lacks. */
  ATTACHMENT_MISSING: z.looseObject({ digests: z.array(z.string()) }),
  /** `limit` is maxAttachmentBytes, or with `quota` what the user may still store. */
  ATTACHMENT_TOO_LARGE: z.looseObject({ bytes: z.number(), limit: z.number(), quota: z.boolean().optional() }),
  ATTACHMENT_NOT_FOUND: z.looseObject({ collection: z.string(), documentId: z.string(), attachmentId: z.string() }),
  /** How long the link was silent before it was taken for dead. */
  NOT_CONNECTED: z.looseObject({ timeoutMs: z.number() }),
} satisfies Partial<Record<SyncErrorCode, z.ZodType>>;

type DetailedCode = keyof typeof SYNC_ERROR_DETAILS;

/** The details of an error with code `C` (never for a code that carries none). */
export type SyncErrorDetails<C extends SyncErrorCode = SyncErrorCode> = C extends DetailedCode ? z.output<(typeof SYNC_ERROR_DETAILS)[C]> : never;

function hasDetails(code: SyncErrorCode): code is DetailedCode {
  return Object.hasOwn(SYNC_ERROR_DETAILS, code);
}

/**
 * An error of this package: a stable `code` to branch on, a message for
 * people, and `details` typed per code. Narrow with `is`:
 * `if (error.is('SERVER_BUSY')) wait(error.details?.retryAfterMs)`.
 */
export class SyncError<C extends SyncErrorCode = SyncErrorCode> extends Error {
  readonly code: C;
  readonly details?: SyncErrorDetails<C>;
  /** True for an error the other side sent (fromWire), false for one raised here. */
  fromPeer = false;

  constructor(code: C, message: string, details?: SyncErrorDetails<C>) {
    super(message);
    this.name = 'SyncError';
    this.code = code;
    if (details !== undefined) this.details = details;
  }

  /** Whether this error has `code`; if so, its details are typed for that code. */
  is<K extends SyncErrorCode>(code: K): this is SyncError<K> {
    return (this.code as SyncErrorCode) === code;
  }

  /** When the peer said to try again, in ms: a busy server, a rate limit. */
  retryAfterMs(): number | undefined {
    if (this.is('SERVER_BUSY') || this.is('RATE_LIMITED') || this.is('TOO_MANY_REQUESTS')) return this.details?.retryAfterMs;
    return undefined;
  }

  toWire(): WireError {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }

  /**
   * An error a peer sent. Its details are checked against its code's schema
   * and dropped when they do not match: a peer's word is not a type.
   */
  static fromWire(wire: WireError): SyncError {
    const checked = wire.details !== undefined && hasDetails(wire.code) ? SYNC_ERROR_DETAILS[wire.code].safeParse(wire.details) : undefined;
    const error = new SyncError<SyncErrorCode>(wire.code, wire.message, checked?.success ? (checked.data as SyncErrorDetails) : undefined);
    error.fromPeer = true;
    return error;
  }

  /** Wraps anything thrown into a SyncError, keeping SyncErrors as they are. */
  static from(error: unknown, code: SyncErrorCode = 'INTERNAL'): SyncError {
    if (error instanceof SyncError) return error;
    const message = error instanceof Error ? error.message : String(error);
    return new SyncError(code, message);
  }
}
