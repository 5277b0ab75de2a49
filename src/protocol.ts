/**
 * `rxdb-offline-sync/protocol`: the wire protocol between the client plugin
 * and the sync server (message names, validation schemas, the codecs of
 * pushed rows and pulled pages), for code that speaks it directly.
 */
export * from './shared/protocol/index.js';
export { ERROR_CODES, SYNC_ERROR_DETAILS, SyncError, type SyncErrorCode, type SyncErrorDetails, type WireError } from './shared/errors.js';
export { HybridLogicalClock, compareHlc, formatHlc, parseHlc, type HlcParts } from './shared/hlc.js';
