export { RxDBOfflineSyncPlugin, createSyncPlugin, SYNC_PLUGIN_NAME, type SyncApi, type SyncPluginDefinition } from './plugin.js';
export type { SyncStatus, SyncResult } from './engine.js';
export type { SyncPluginOptions, AuthToken, ConflictResolution } from './options.js';
export type { StoredConflict, RejectedEvent, ConflictResolutionChoice } from './replicator.js';
export * from './strategies/index.js';
export { SyncError, type SyncErrorCode } from '../shared/errors.js';
export { HybridLogicalClock, compareHlc } from '../shared/hlc.js';
export { PROTOCOL_VERSION } from '../shared/protocol/index.js';
export { matchesScope, parseScope, type Scope, type ScopeSelector } from '../shared/scope.js';
