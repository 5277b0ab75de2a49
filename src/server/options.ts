import type { Server as HttpServer } from 'node:http';
import type { Socket, ServerOptions } from 'socket.io';
import { z } from 'zod';
import { loggingOptionsSchema } from '../shared/logger.js';
import { parseOptions } from '../shared/json.js';
import { collectionNameSchema } from '../shared/protocol.js';
import type { SyncStorage } from './storage/types.js';

export type WriteOperation = 'insert' | 'update' | 'delete';
export type AccessOperation = 'read' | WriteOperation;

/** Returns the user for a token; a falsy answer or a throw refuses the connection. */
export type Authenticate<User> = (socket: Socket, token: string | undefined) => User | null | undefined | false | Promise<User | null | undefined | false>;
/** Decides, per document, whether `user` may do `operation` on it. */
export type Authorize<User> = (
  user: User,
  collection: string,
  operation: AccessOperation,
  document: Record<string, unknown>,
) => boolean | Promise<boolean>;

const fn = (name: string) =>
  z.custom<(...args: never[]) => unknown>((value) => typeof value === 'function', `${name} must be a function`);

export const serverOptionsSchema = z.strictObject({
  httpServer: z.custom<HttpServer>(
    (value) => !!value && typeof (value as HttpServer).on === 'function' && typeof (value as HttpServer).listen === 'function',
    'httpServer must be a Node http.Server (or https.Server)',
  ),
  socketOptions: z.record(z.string(), z.unknown()).default({}),
  authenticate: fn('authenticate').optional(),
  authorize: fn('authorize').optional(),
  storage: z
    .custom<SyncStorage>(
      (value) =>
        !!value &&
        ['init', 'saveEvents', 'getEventsAfter', 'clearEventsBefore', 'close'].every(
          (method) => typeof (value as unknown as Record<string, unknown>)[method] === 'function',
        ),
      'storage must implement SyncStorage (init, saveEvents, getEventsAfter, clearEventsBefore, close)',
    )
    .optional(),
  /** When given, pushes, pulls and subscriptions for any other collection are refused. */
  collections: z.array(collectionNameSchema).min(1).optional(),
  /** A socket.io adapter (for instance @socket.io/redis-adapter) for several server instances. */
  adapter: fn('adapter').optional(),
  logging: loggingOptionsSchema,
  onClientConnect: fn('onClientConnect').optional(),
  onClientDisconnect: fn('onClientDisconnect').optional(),
  maxEventsPerPush: z.number().int().positive().default(1000),
  maxPayloadBytes: z.number().int().positive().default(4 * 1024 * 1024),
  maxPullLimit: z.number().int().positive().default(5000),
  defaultPullLimit: z.number().int().positive().default(1000),
});

export type SyncServerOptions<User = unknown> = Omit<
  z.input<typeof serverOptionsSchema>,
  'authenticate' | 'authorize' | 'socketOptions' | 'storage' | 'adapter'
> & {
  authenticate?: Authenticate<User>;
  authorize?: Authorize<User>;
  socketOptions?: Partial<ServerOptions>;
  storage?: SyncStorage;
  adapter?: ServerOptions['adapter'];
};

export type ResolvedServerOptions<User = unknown> = Omit<
  z.output<typeof serverOptionsSchema>,
  'authenticate' | 'authorize' | 'socketOptions' | 'adapter'
> & {
  authenticate?: Authenticate<User>;
  authorize?: Authorize<User>;
  socketOptions: Partial<ServerOptions>;
  adapter?: ServerOptions['adapter'];
};

export function resolveServerOptions<User>(options: SyncServerOptions<User>): ResolvedServerOptions<User> {
  const parsed = parseOptions(serverOptionsSchema, options, 'sync server');
  if (parsed.defaultPullLimit > parsed.maxPullLimit) parsed.defaultPullLimit = parsed.maxPullLimit;
  return parsed as ResolvedServerOptions<User>;
}
