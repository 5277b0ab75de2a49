import { EventEmitter } from 'node:events';
import { Server } from 'socket.io';
import { SyncError, type WireError } from '../shared/errors.js';
import { createLogger, type Logger } from '../shared/logger.js';
import { CLIENT_MESSAGES, MESSAGE, handshakeSchema, parseMessage, type Ack } from '../shared/protocol.js';
import {
  handlePull,
  handlePush,
  handleSubscribe,
  type ServerContext,
  type ServerEvents,
  type ServerStats,
  type SocketData,
  type SyncIo,
  type SyncSocket,
} from './handlers.js';
import { resolveServerOptions, type ResolvedServerOptions, type SyncServerOptions } from './options.js';
import { MemorySyncStorage } from './storage/memory.js';
import type { SyncStorage } from './storage/types.js';

export interface ClientInfo<User = unknown> {
  socketId: string;
  clientId: string;
  user: User;
  collections: string[];
  checkpoint: number;
  connectedAt: number;
  lastSeen: number;
}

/** Headroom above maxPayloadBytes so an oversized push reaches our check and gets a reply, not a dropped socket. */
const TRANSPORT_HEADROOM = 2;

export interface SyncServerEvents<User = unknown> extends ServerEvents {
  'client-connect': [ClientInfo<User>];
  'client-disconnect': [ClientInfo<User> & { reason: string }];
}

export class SyncServer<User = unknown> {
  /** Reports pushes, pulls, storage errors and client connections (for metrics and hooks). */
  readonly events = new EventEmitter<SyncServerEvents<User>>();
  private readonly options: ResolvedServerOptions<User>;
  private readonly storage: SyncStorage;
  private readonly ownsStorage: boolean;
  private readonly logger: Logger;
  private readonly io: SyncIo<User>;
  private readonly stats: ServerStats = { accepted: 0, duplicates: 0, conflicts: 0, rejected: 0, invalidMessages: 0 };
  private ready?: Promise<void>;
  private stopped = false;

  constructor(options: SyncServerOptions<User>) {
    this.options = resolveServerOptions(options);
    this.ownsStorage = !this.options.storage;
    this.storage = this.options.storage ?? new MemorySyncStorage();
    this.logger = createLogger(this.options.logging, 'rxdb-offline-sync:server');
    this.io = new Server({
      maxHttpBufferSize: this.options.maxPayloadBytes * TRANSPORT_HEADROOM,
      ...this.options.socketOptions,
      ...(this.options.adapter ? { adapter: this.options.adapter } : {}),
    });
    this.io.use((socket, next) => {
      this.authenticate(socket as SyncSocket<User>).then(
        () => next(),
        (error: unknown) => {
          const syncError = SyncError.from(error, 'UNAUTHENTICATED');
          this.logger.info({ code: syncError.code, reason: syncError.message }, 'connection refused');
          next(Object.assign(new Error(syncError.message), { data: syncError.toWire() }));
        },
      );
    });
    this.io.on('connection', (socket) => this.onConnection(socket));
    const { onClientConnect, onClientDisconnect } = this.options as { onClientConnect?: (client: ClientInfo<User>) => void; onClientDisconnect?: (client: ClientInfo<User> & { reason: string }) => void };
    if (onClientConnect) this.events.on('client-connect', onClientConnect);
    if (onClientDisconnect) this.events.on('client-disconnect', onClientDisconnect);
  }

  /** Attaches to the HTTP server and prepares storage. Connections wait until storage is ready. */
  start(): Promise<void> {
    if (this.ready) return this.ready;
    this.io.attach(this.options.httpServer);
    this.ready = this.storage.init().then(() => this.logger.info('sync server started'));
    this.ready.catch((error: unknown) => this.logger.error({ err: error }, 'storage failed to start'));
    return this.ready;
  }

  /**
   * Disconnects every client and stops answering. The HTTP server stays up
   * (it is the caller's); storage is closed only if this server created it.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.io.disconnectSockets(true);
    this.io.engine?.close();
    await Promise.allSettled([...this.io._nsps.values()].map((nsp) => nsp.adapter.close()));
    if (this.ownsStorage) await this.storage.close();
    this.logger.info('sync server stopped');
  }

  getClientsCount(): number {
    return this.io.of('/').sockets.size;
  }

  getClients(): ClientInfo<User>[] {
    return [...this.io.of('/').sockets.values()].map((socket) => ({ socketId: socket.id, ...socket.data }));
  }

  getStorage(): SyncStorage {
    return this.storage;
  }

  getIo(): SyncIo<User> {
    return this.io;
  }

  getStats(): Readonly<ServerStats> {
    return { ...this.stats };
  }

  private async authenticate(socket: SyncSocket<User>): Promise<void> {
    if (!this.ready) throw new SyncError('INTERNAL', 'sync server is not started: call start()');
    await this.ready;
    const auth = socket.handshake.auth as Record<string, unknown> | undefined;
    if (auth && typeof auth.protocolVersion === 'number' && auth.protocolVersion !== handshakeSchema.shape.protocolVersion.value) {
      throw new SyncError('UNSUPPORTED_PROTOCOL', `protocol version ${auth.protocolVersion} is not supported; this server speaks ${handshakeSchema.shape.protocolVersion.value}`);
    }
    const handshake = parseMessage(handshakeSchema, auth, 'handshake');
    let user: unknown = {};
    if (this.options.authenticate) {
      try {
        user = await this.options.authenticate(socket, handshake.token);
      } catch (error) {
        throw new SyncError('UNAUTHENTICATED', `authentication failed: ${SyncError.from(error).message}`);
      }
      if (!user) throw new SyncError('UNAUTHENTICATED', 'authentication failed: the token was not accepted');
    }
    const now = Date.now();
    const data: SocketData<User> = { user: user as User, clientId: handshake.clientId, collections: [], checkpoint: 0, connectedAt: now, lastSeen: now };
    socket.data = data;
  }

  private onConnection(socket: SyncSocket<User>): void {
    const ctx: ServerContext<User> = {
      options: this.options,
      storage: this.storage,
      logger: this.logger,
      io: this.io,
      stats: this.stats,
      emit: (event, ...args) => this.events.emit(event, ...(args as never)),
    };
    const log = this.logger.child({ socket: socket.id, clientId: socket.data.clientId });
    log.debug('client connected');
    const info = () => ({ socketId: socket.id, ...socket.data });
    this.events.emit('client-connect', info());
    const handlers = {
      [MESSAGE.subscribe]: handleSubscribe,
      [MESSAGE.push]: handlePush,
      [MESSAGE.pull]: handlePull,
    } as Record<string, (ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown) => Promise<object>>;

    // One listener for every message, so that unknown types and missing acks are answered too.
    socket.onAny((event: string, ...args: unknown[]) => {
      socket.data.lastSeen = Date.now();
      const ack = typeof args[args.length - 1] === 'function' ? (args.pop() as (reply: Ack<object>) => void) : undefined;
      const reply = (error: SyncError) => {
        this.stats.invalidMessages += error.code === 'INVALID_MESSAGE' ? 1 : 0;
        const wire: WireError = error.toWire();
        if (ack) ack({ ok: false, error: wire });
        else socket.emit(MESSAGE.error, wire);
      };
      if (!CLIENT_MESSAGES.has(event)) {
        reply(new SyncError('INVALID_MESSAGE', `unknown message type "${event}"`, { type: event }));
        return;
      }
      if (!ack) {
        reply(new SyncError('INVALID_MESSAGE', `message "${event}" needs an acknowledgement callback`, { type: event }));
        return;
      }
      handlers[event]!(ctx, socket, args[0]).then(
        (result) => ack({ ok: true, ...result }),
        (error: unknown) => {
          const syncError = SyncError.from(error);
          if (syncError.code === 'INTERNAL') log.error({ err: error, type: event }, 'message failed');
          else log.info({ code: syncError.code, reason: syncError.message, type: event }, 'message refused');
          reply(syncError);
        },
      );
    });
    socket.on('disconnect', (reason) => {
      log.debug({ reason }, 'client disconnected');
      this.events.emit('client-disconnect', { ...info(), reason });
    });
  }
}

export function createSyncServer<User = unknown>(options: SyncServerOptions<User>): SyncServer<User> {
  return new SyncServer(options);
}
