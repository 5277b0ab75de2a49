export type { SyncStorage, SaveResult, IncomingEvent, EventQuery, ChangesPage } from './types.js';
export { documentBytes } from './size.js';
export { MemorySyncStorage } from './memory.js';
export { SqliteSyncStorage, type SqliteSyncStorageOptions } from './sqlite.js';
export { PostgresSyncStorage, type PostgresSyncStorageOptions } from './postgres.js';
