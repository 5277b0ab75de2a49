export { createSyncServer, SyncServer, type ClientInfo } from './server.js';
export type { SyncServerOptions, Authenticate, AuthSession, Authorize, AccessOperation, WriteOperation, UserKey, RateLimitOptions, SensitiveFields } from './options.js';
export type { ServerStats, SocketData } from './handlers.js';
export * from './storage/index.js';
export { SyncError, type SyncErrorCode } from '../shared/errors.js';
export * from '../shared/protocol.js';
export * from './http.js';
