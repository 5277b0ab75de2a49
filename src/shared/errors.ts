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
  'CONFLICT_RESOLVER_FAILED',
  'NOT_CONNECTED',
  'TIMEOUT',
  'DISABLED',
  'CLOSED',
  'INTERNAL',
] as const;

export type SyncErrorCode = (typeof ERROR_CODES)[number];

/** Plain shape of an error as it travels over the wire. */
export interface WireError {
  code: SyncErrorCode;
  message: string;
  details?: unknown;
}

export class SyncError extends Error {
  readonly code: SyncErrorCode;
  readonly details?: unknown;
  /** True for an error the other side sent (fromWire), false for one raised here. */
  fromPeer = false;

  constructor(code: SyncErrorCode, message: string, details?: unknown) {
    super(message);
    this.name = 'SyncError';
    this.code = code;
    this.details = details;
  }

  toWire(): WireError {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }

  static fromWire(wire: WireError): SyncError {
    const error = new SyncError(wire.code, wire.message, wire.details);
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
