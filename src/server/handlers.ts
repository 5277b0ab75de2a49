/** What the server does with each client message; the socket wiring lives in connection.ts. */
export { roomOf, type ServerContext, type ServerEvents, type ServerStats, type SocketData, type SyncIo, type SyncSocket } from './handlers/context.js';
export { handleSubscribe } from './handlers/subscribe.js';
export { handlePush } from './handlers/push.js';
export { handlePull } from './handlers/pull.js';
export { handleBlobDownload, handleBlobState, handleBlobUpload } from './handlers/blobs.js';
export { broadcast, type LivePush } from './handlers/fanout.js';
