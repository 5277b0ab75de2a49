export { createSyncServer, SyncServer, type ClientInfo } from './server.js';
export type { SyncServerOptions, Authenticate, AuthSession, Authorize, AuthorizeRead, ScopeRule, AccessOperation, WriteOperation, UserKey, AttachmentQuota, RateLimitOptions, LoginLimitOptions, SensitiveFields } from './options.js';
export type { DropReason, SyncServerEvents } from './server.js';
export type { ServerStats, SocketData } from './handlers.js';
export * from './storage/index.js';
export * from './blobs/index.js';
export { referencedDigests, sweepBlobs, DEFAULT_SWEEP_GRACE, type SweepGrace } from './blobs/sweep.js';
// What a SyncStorage takes and gives back; the rest of the wire protocol is in rxdb-offline-sync/protocol.
export type { ScopedQuery, ScopedPage, ScopedChange } from './storage/types.js';
export type { SyncEvent, StoredEvent, DocumentHead, Operation } from '../shared/protocol/index.js';
export { SyncError, type SyncErrorCode, type SyncErrorDetails } from '../shared/errors.js';
export * from './http.js';
export { matchesScope, parseScope, type Scope, type ScopeAtom, type ScopeSelector } from '../shared/scope.js';
