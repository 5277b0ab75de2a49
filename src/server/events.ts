/** What a SyncServer reports on its `events`: its work (ServerEvents) and its clients coming and going. */
import type { ServerEvents, SocketData } from './handlers.js';

/** One connected client, as getClients() and the connect/disconnect hooks see it. */
export type ClientInfo<User = unknown> = SocketData<User> & { socketId: string };

/** Why the server dropped a connection on its own: the code it sent the client. */
export type DropReason = 'TOO_MANY_REQUESTS' | 'SLOW_CONSUMER' | 'REPLACED';

export interface SyncServerEvents<User = unknown> extends ServerEvents {
  'client-connect': [ClientInfo<User>];
  'client-disconnect': [ClientInfo<User> & { reason: string }];
  /** A connection the server closed for what it did (a flood, unread replies) or because the same client connected again. */
  'client-dropped': [{ clientId: string; reason: DropReason }];
  /** A login refused: `limited` when the login limit refused it before `authenticate` was asked. */
  'login-failed': [{ address: string; limited: boolean }];
}
