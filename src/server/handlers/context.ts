/** What every message handler works with: the server's context, the socket's data, and the checks they share. */
import type { Server, Socket } from 'socket.io';
import { SyncError } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import type { ClientToServerEvents, ProtocolVersion, ServerToClientEvents } from '../../shared/protocol/index.js';
import type { ResolvedServerOptions } from '../options.js';
import type { Redactor } from '../redact.js';
import type { SocketScopes } from '../scopes.js';
import type { BlobStore } from '../blobs/types.js';
import type { SyncStorage } from '../storage/types.js';
import type { LivePush } from './fanout.js';

export interface SocketData<User = unknown> {
  user: User;
  clientId: string;
  /** The protocol version the client spoke in its handshake. */
  protocol: ProtocolVersion;
  collections: string[];
  checkpoint: number;
  connectedAt: number;
  lastSeen: number;
  /** When the session ends (ms since the epoch), if `authenticate` returned an expiry. */
  expiresAt?: number;
  /** The user's name for per-user limits (see the `userKey` option). */
  userKey?: string;
  /** The scope of each scoped collection this socket subscribed to (for live fan-out). */
  scopes?: SocketScopes;
}

export type SyncIo<User = unknown> = Server<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData<User>>;
export type SyncSocket<User = unknown> = Socket<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData<User>>;

export interface ServerStats {
  accepted: number;
  duplicates: number;
  conflicts: number;
  rejected: number;
  invalidMessages: number;
}

/** What the server reports about its work, for metrics and logs. */
export interface ServerEvents {
  push: [{ durationMs: number; accepted: number; duplicates: number; conflicts: number; rejected: number }];
  pull: [{ durationMs: number; events: number }];
  'storage-error': [{ operation: 'save' | 'read'; error: unknown }];
}

export interface ServerContext<User = unknown> {
  options: ResolvedServerOptions<User>;
  /** The same as options.authorize; here so the context serves as an AccessContext. */
  authorize?: ResolvedServerOptions<User>['authorize'];
  /** The same as options.authorizeRead, for the same reason. */
  authorizeRead?: ResolvedServerOptions<User>['authorizeRead'];
  storage: SyncStorage;
  /** Where attachment content is kept; none: documents with attachments are refused. */
  blobs?: BlobStore;
  logger: Logger;
  io: SyncIo<User>;
  stats: ServerStats;
  redactor: Redactor;
  emit: <K extends keyof ServerEvents>(event: K, ...args: ServerEvents[K]) => void;
  /**
   * Hands accepted events to the live fan-out, which runs after the push is
   * acknowledged: server-wide, in push order, the pushes of one turn of the
   * event loop together.
   */
  fanOut: (push: LivePush<User>) => void;
}

export const roomOf = (collection: string) => `collection:${collection}`;

export function assertKnownCollection(ctx: ServerContext<any>, collection: string): void {
  if (ctx.options.collections && !ctx.options.collections.includes(collection)) {
    throw new SyncError('UNKNOWN_COLLECTION', `unknown collection "${collection}": this server syncs ${ctx.options.collections.join(', ')}`, {
      collection,
    });
  }
}

/**
 * What a failed storage or blob store call becomes: reported (the
 * storage-error event, which metrics count, and a log line saying `what`)
 * and thrown on as STORAGE_ERROR, which clients retry.
 */
export function storageFailure(ctx: ServerContext<any>, operation: 'save' | 'read', what: string, error: unknown): SyncError {
  ctx.emit('storage-error', { operation, error });
  ctx.logger.error({ err: error }, what);
  return SyncError.from(error, 'STORAGE_ERROR');
}
