import { EventEmitter } from 'node:events';
import { Server } from 'socket.io';
import { createLogger, type Logger } from './logger.js';
import { UpgradeGate } from './admission.js';
import { Connections } from './connection.js';
import type { ClientInfo, SyncServerEvents } from './events.js';
import { TurnBudget } from './guard.js';
import type { ServerContext, ServerEvents, ServerStats, SyncIo, SyncSocket } from './handlers.js';
import { Handshakes } from './handshake.js';
import { RateLimiter } from './limits.js';
import { LiveFanOut } from './live.js';
import { resolveServerOptions, type ResolvedServerOptions, type SyncServerOptions } from './options.js';
import { Redactor } from './redact.js';
import { SessionRenewals } from './session.js';
import { MemoryBlobStore } from './blobs/memory.js';
import { sweepBlobs, type SweepGrace } from './blobs/sweep.js';
import type { BlobStore } from './blobs/types.js';
import { MemorySyncStorage } from './storage/memory.js';
import { Retention, retentionOptionsSchema } from './retention.js';
import type { SyncStorage } from './storage/types.js';

export type { ClientInfo, DropReason, SyncServerEvents } from './events.js';

/** Headroom above maxPayloadBytes so an oversized push reaches our check and gets a reply, not a dropped socket. */
const TRANSPORT_HEADROOM = 2;
/** How often every connection's unsent bytes are looked at (replies are also checked as they are sent). */
const UNSENT_SWEEP_MS = 1000;
/** What one turn of the event loop may spend starting messages of all connections (see TurnBudget). */
const TURN_BUDGET_MS = 10;
/** How long an upgrade or handshake may wait for a turn before it is told to come back (see admission.ts). */
const CONNECTION_WAIT_MS = 3000;
/**
 * WebSocket upgrades, and socket.io handshakes, one turn of the event loop
 * starts at most. Part of a handshake's cost comes after the turn started it
 * (authentication and the client-id claim), where the turn budget cannot
 * see it; a busy loop turns less often, so fewer start.
 */
const CONNECTIONS_PER_TURN = 32;

/**
 * The sync server: socket.io on the app's HTTP server, in front of a
 * SyncStorage. Who may connect is handshake.ts; what a connection may do,
 * connection.ts and the message handlers (handlers.ts); live delivery, live.ts.
 */
export class SyncServer<User = unknown> {
  /** Reports pushes, pulls, storage errors and client connections (for metrics and hooks). */
  readonly events = new EventEmitter<SyncServerEvents<User>>();
  private readonly options: ResolvedServerOptions<User>;
  private readonly storage: SyncStorage;
  private readonly ownsStorage: boolean;
  private readonly blobs?: BlobStore;
  private readonly ownsBlobs: boolean;
  private readonly logger: Logger;
  private readonly io: SyncIo<User>;
  private readonly stats: ServerStats = { accepted: 0, duplicates: 0, conflicts: 0, rejected: 0, invalidMessages: 0 };
  private readonly budget = new TurnBudget(TURN_BUDGET_MS);
  private readonly gate = new UpgradeGate(this.budget, CONNECTION_WAIT_MS, CONNECTIONS_PER_TURN);
  private readonly handshakes: Handshakes<User>;
  private readonly connections: Connections<User>;
  private readonly live: LiveFanOut<User>;
  private sweepTimer?: ReturnType<typeof setInterval>;
  private ready?: Promise<void>;
  private stopped = false;
  private retention?: Retention;

  constructor(options: SyncServerOptions<User>) {
    this.options = resolveServerOptions(options);
    this.ownsStorage = !this.options.storage;
    this.storage = this.options.storage ?? new MemorySyncStorage();
    // Memory for content only beside memory for documents: see the `blobs` option.
    this.ownsBlobs = !this.options.blobs && this.ownsStorage;
    this.blobs = this.options.blobs ?? (this.ownsBlobs ? new MemoryBlobStore() : undefined);
    this.logger = createLogger(this.options.logging, 'rxdb-offline-sync:server');
    const { heartbeatInterval, clientTimeout } = this.options;
    this.io = new Server({
      maxHttpBufferSize: this.options.maxPayloadBytes * TRANSPORT_HEADROOM,
      ...this.options.socketOptions,
      pingInterval: heartbeatInterval,
      ...(clientTimeout !== undefined ? { pingTimeout: clientTimeout } : {}),
      ...(this.options.adapter ? { adapter: this.options.adapter } : {}),
    });
    this.live = new LiveFanOut(this.options.maxEventsPerPush, this.logger);
    this.handshakes = new Handshakes({
      options: this.options,
      storage: this.storage,
      logger: this.logger,
      io: this.io,
      events: this.events,
      ready: () => this.ready,
      budget: this.budget,
      maxWaitMs: CONNECTION_WAIT_MS,
      perTurn: CONNECTIONS_PER_TURN,
    });
    const context: ServerContext<User> = {
      options: this.options,
      storage: this.storage,
      ...(this.blobs ? { blobs: this.blobs } : {}),
      logger: this.logger,
      io: this.io,
      stats: this.stats,
      redactor: new Redactor(this.options.sensitiveFields),
      ...(this.options.authorize ? { authorize: this.options.authorize } : {}),
      ...(this.options.authorizeRead ? { authorizeRead: this.options.authorizeRead } : {}),
      // Typed by the names of ServerEvents: Node's typings cannot tie a generic event name to its arguments.
      emit: (event, ...args) => this.events.emit<keyof ServerEvents>(event, ...args),
      fanOut: (push) => this.live.add(push),
    };
    this.connections = new Connections({
      context,
      events: this.events,
      budget: this.budget,
      ...(this.options.rateLimit ? { limiter: new RateLimiter(this.options.rateLimit) } : {}),
      sessions: new SessionRenewals(this.options.authenticate, this.handshakes),
    });
    this.io.use((socket, next) => this.handshakes.offer(socket as SyncSocket<User>, next));
    this.io.on('connection', (socket) => this.connections.open(socket));
    const { onClientConnect, onClientDisconnect } = this.options as { onClientConnect?: (client: ClientInfo<User>) => void; onClientDisconnect?: (client: ClientInfo<User> & { reason: string }) => void };
    if (onClientConnect) this.events.on('client-connect', onClientConnect);
    if (onClientDisconnect) this.events.on('client-disconnect', onClientDisconnect);
  }

  /** Attaches to the HTTP server and prepares storage. Connections wait until storage is ready. */
  start(): Promise<void> {
    if (this.ready) return this.ready;
    this.gate.wrap(this.options.httpServer, () => this.io.attach(this.options.httpServer));
    this.sweepTimer = setInterval(() => this.connections.checkUnsent(), UNSENT_SWEEP_MS);
    this.sweepTimer.unref?.();
    this.ready = Promise.all([this.storage.init(), this.blobs?.init()]).then(async () => {
      if (Object.keys(this.options.scopeFields).length > 0) await this.storage.indexScopeFields(this.options.scopeFields);
      if (this.options.retention) {
        this.retention = new Retention(this.storage, retentionOptionsSchema.parse(this.options.retention), this.logger, this.blobs);
        this.retention.start();
      }
      this.logger.info('sync server started');
    });
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
    this.retention?.stop();
    clearInterval(this.sweepTimer);
    this.gate.close();
    this.handshakes.close();
    this.io.disconnectSockets(true);
    this.io.engine?.close();
    await this.live.stop();
    await Promise.allSettled([...this.io._nsps.values()].map((nsp) => nsp.adapter.close()));
    if (this.ownsStorage) await this.storage.close();
    if (this.ownsBlobs) await this.blobs?.close();
    this.logger.info('sync server stopped');
  }

  /**
   * Removes superseded events below `before` (default: all of them); each
   * document's current version and every delete stay, so no client is left a
   * gap. Returns how many events were removed.
   */
  async compact(before?: number): Promise<number> {
    await this.ready;
    return this.storage.clearEventsBefore(before ?? (await this.storage.getLatestSequence()) + 1);
  }

  /**
   * Removes attachment content that no kept event names and that is older
   * than `grace` (see sweep.ts), and uploads abandoned for longer. Runs
   * after each scheduled compaction; call it after compact() yourself.
   */
  async sweepAttachments(grace?: SweepGrace, now?: number): Promise<{ blobs: number; uploads: number }> {
    await this.ready;
    if (!this.blobs) return { blobs: 0, uploads: 0 };
    return sweepBlobs(this.storage, this.blobs, grace, now);
  }

  /**
   * Admission under load: WebSocket upgrades and socket.io handshakes that
   * waited for a later turn of the event loop (deferred), and those told to
   * come back after waiting too long (refused: a 503, or SERVER_BUSY).
   */
  getAdmissionStats(): Record<'upgrades' | 'handshakes', { deferred: number; refused: number }> {
    const stats = ({ deferred, expired }: { deferred: number; expired: number }) => ({ deferred, refused: expired });
    return { upgrades: stats(this.gate.stats), handshakes: stats(this.handshakes.stats) };
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

  /** Where attachment content is kept; undefined when this server keeps none. */
  getBlobStore(): BlobStore | undefined {
    return this.blobs;
  }

  getIo(): SyncIo<User> {
    return this.io;
  }

  getStats(): Readonly<ServerStats> {
    return { ...this.stats };
  }
}

export function createSyncServer<User = unknown>(options: SyncServerOptions<User>): SyncServer<User> {
  return new SyncServer(options);
}
