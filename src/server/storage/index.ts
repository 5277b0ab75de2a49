export type { SyncStorage, SaveResult, IncomingEvent, EventQuery } from './types.js';
export { MemorySyncStorage } from './memory.js';
export { SqliteSyncStorage, type SqliteSyncStorageOptions } from './sqlite.js';
export { PostgresSyncStorage, type PostgresSyncStorageOptions } from './postgres.js';
