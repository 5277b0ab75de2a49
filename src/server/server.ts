import { EventEmitter } from 'node:events';
import { isDeepStrictEqual } from 'node:util';
import { Server } from 'socket.io';
import { Adapter } from 'socket.io-adapter';
import { SyncError } from '../shared/errors.js';
import { createLogger, type Logger } from './logger.js';
import { CLIENT_MESSAGES, MESSAGE, parseMessage, renewMessageSchema, type Ack } from '../shared/protocol/index.js';
import { TurnQueue, UpgradeGate } from './admission.js';
import { admit, authenticateToken, runAt } from './auth.js';
import {
  broadcast,
  handlePull,
  handlePush,
  handleSubscribe,
  type LivePush,
  type ServerContext,
  type ServerEvents,
  type ServerStats,
  type SocketData,
  type SyncIo,
  type SyncSocket,
} from './handlers.js';
import { ConnectionGuard, TurnBudget, type EngineConnection } from './guard.js';
import { LoginLimiter, RateLimiter, UserConnections, defaultUserKey } from './limits.js';
import { resolveServerOptions, type ResolvedServerOptions, type SyncServerOptions } from './options.js';
import { Redactor } from './redact.js';
import { MemorySyncStorage } from './storage/memory.js';
import { Retention, retentionOptionsSchema } from './retention.js';
import type { SyncStorage } from './storage/types.js';

/** One connected client, as getClients() and the connect/disconnect hooks see it. */
export type ClientInfo<User = unknown> = SocketData<User> & { socketId: string };

/** Headroom above maxPayloadBytes so an oversized push reaches our check and gets a reply, not a dropped socket. */
const TRANSPORT_HEADROOM = 2;
/** Client id owners kept in memory; past it the memory starts again (a reconnection then asks storage once). */
const MAX_REMEMBERED_CLAIMS = 10_000;
/** The least time between two renewals of one connection's session. */
const MIN_RENEWAL_INTERVAL_MS = 1000;
/** Events one live fan-out sends at most (a push's worth); what came beyond goes in the next, so no live message outgrows a push. */

/** Why the server dropped a connection on its own: the code it sent the client. */
/** A socket.io handshake waiting for its turn: the socket and the middleware's continuation. */
interface Handshaking<User> {
  socket: SyncSocket<User>;
  next: (error?: Error) => void;
}

export type DropReason = 'TOO_MANY_REQUESTS' | 'SLOW_CONSUMER' | 'REPLACED';

export interface SyncServerEvents<User = unknown> extends ServerEvents {
  'client-connect': [ClientInfo<User>];
  'client-disconnect': [ClientInfo<User> & { reason: string }];
  /** A connection the server closed for what it did (a flood, unread replies) or because the same client connected again. */
  'client-dropped': [{ clientId: string; reason: DropReason }];
  /** A login refused: `limited` when the login limit refused it before `authenticate` was asked. */
  'login-failed': [{ address: string; limited: boolean }];
}

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

export class SyncServer<User = unknown> {
  /** Reports pushes, pulls, storage errors and client connections (for metrics and hooks). */
  readonly events = new EventEmitter<SyncServerEvents<User>>();
  private readonly options: ResolvedServerOptions<User>;
  private readonly storage: SyncStorage;
  private readonly ownsStorage: boolean;
  private readonly logger: Logger;
  private readonly io: SyncIo<User>;
  private readonly stats: ServerStats = { accepted: 0, duplicates: 0, conflicts: 0, rejected: 0, invalidMessages: 0 };
  private readonly redactor: Redactor;
  private readonly limiter?: RateLimiter;
  private readonly logins?: LoginLimiter;
  private readonly guards = new Map<string, ConnectionGuard>();
  private readonly budget = new TurnBudget(TURN_BUDGET_MS);
  private readonly gate = new UpgradeGate(this.budget, CONNECTION_WAIT_MS, CONNECTIONS_PER_TURN);
  private sweepTimer?: ReturnType<typeof setInterval>;
  /** The live fan-outs, one after another; pushes are acknowledged without waiting for theirs. */
  private fanOuts: Promise<void> = Promise.resolve();
  /** Accepted pushes waiting for the next fan-out. */
  private livePushes: LivePush<User>[] = [];
  private liveScheduled = false;
  /** When each connection last asked to renew its session. */
  private readonly renewedAt = new Map<string, number>();
  /** Handshakes begun and refused in the current second (admission control). */
  private handshakes = { second: 0, begun: 0, refused: 0 };
  private warnedNoUserKey = false;
  /** Client ids whose owner this instance checked: id → user key. */
  private readonly claims = new Map<string, string>();
  private readonly connections = new UserConnections();
  private ready?: Promise<void>;
  private stopped = false;
  private retention?: Retention;
  private readonly turns = new TurnClock();

  constructor(options: SyncServerOptions<User>) {
    this.options = resolveServerOptions(options);
    this.ownsStorage = !this.options.storage;
    this.storage = this.options.storage ?? new MemorySyncStorage();
    this.logger = createLogger(this.options.logging, 'rxdb-offline-sync:server');
    this.redactor = new Redactor(this.options.sensitiveFields);
    if (this.options.rateLimit) this.limiter = new RateLimiter(this.options.rateLimit);
    if (this.options.loginLimit) this.logins = new LoginLimiter(this.options.loginLimit);
    const { heartbeatInterval, clientTimeout } = this.options;
    this.io = new Server({
      maxHttpBufferSize: this.options.maxPayloadBytes * TRANSPORT_HEADROOM,
      ...this.options.socketOptions,
      pingInterval: heartbeatInterval,
      ...(clientTimeout !== undefined ? { pingTimeout: clientTimeout } : {}),
      ...(this.options.adapter ? { adapter: this.options.adapter } : {}),
    });
    this.io.use((socket, next) => this.handshakeQueue.offer({ socket: socket as SyncSocket<User>, next }));
    this.io.on('connection', (socket) => this.onConnection(socket));
    const { onClientConnect, onClientDisconnect } = this.options as { onClientConnect?: (client: ClientInfo<User>) => void; onClientDisconnect?: (client: ClientInfo<User> & { reason: string }) => void };
    if (onClientConnect) this.events.on('client-connect', onClientConnect);
    if (onClientDisconnect) this.events.on('client-disconnect', onClientDisconnect);
  }

  /** Attaches to the HTTP server and prepares storage. Connections wait until storage is ready. */
  start(): Promise<void> {
    if (this.ready) return this.ready;
    this.gate.wrap(this.options.httpServer, () => this.io.attach(this.options.httpServer));
    this.sweepTimer = setInterval(() => {
      for (const guard of this.guards.values()) guard.checkUnsent();
    }, UNSENT_SWEEP_MS);
    this.sweepTimer.unref?.();
    this.ready = this.storage.init().then(async () => {
      if (Object.keys(this.options.scopeFields).length > 0) await this.storage.indexScopeFields(this.options.scopeFields);
      if (this.options.retention) {
        this.retention = new Retention(this.storage, retentionOptionsSchema.parse(this.options.retention), this.logger);
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
    this.handshakeQueue.close('expire');
    this.io.disconnectSockets(true);
    this.io.engine?.close();
    // Nobody is left to receive what waits for a fan-out.
    this.livePushes = [];
    await this.fanOuts;
    await Promise.allSettled([...this.io._nsps.values()].map((nsp) => nsp.adapter.close()));
    if (this.ownsStorage) await this.storage.close();
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
   * Admission under load: WebSocket upgrades and socket.io handshakes that
   * waited for a later turn of the event loop (deferred), and those told to
   * come back after waiting too long (refused: a 503, or SERVER_BUSY).
   */
  getAdmissionStats(): Record<'upgrades' | 'handshakes', { deferred: number; refused: number }> {
    const stats = ({ deferred, expired }: { deferred: number; expired: number }) => ({ deferred, refused: expired });
    return { upgrades: stats(this.gate.stats), handshakes: stats(this.handshakeQueue.stats) };
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

  /**
   * socket.io handshakes, each started in a turn with budget left (see
   * UpgradeGate for the upgrades before them); one that waited
   * CONNECTION_WAIT_MS is refused with SERVER_BUSY and when to come back.
   */
  private readonly handshakeQueue = new TurnQueue<Handshaking<User>>(
    this.budget,
    CONNECTION_WAIT_MS,
    CONNECTIONS_PER_TURN,
    ({ socket, next }) => {
      this.admit(socket).then(
        () => next(),
        (error: unknown) => this.refuseHandshake(next, SyncError.from(error, 'UNAUTHENTICATED'), error),
      );
    },
    ({ next }, retryAfterMs) => {
      this.refuseHandshake(next, new SyncError('SERVER_BUSY', 'the server has more handshakes waiting than it can start in time: try again later', { reason: 'handshakes', retryAfterMs }));
    },
    ({ socket }) => socket.conn.readyState === 'closed',
  );

  private refuseHandshake(next: (error?: Error) => void, syncError: SyncError, cause: unknown = syncError): void {
    if (syncError.code === 'INTERNAL') this.logger.error({ err: cause }, 'connection refused');
    else this.logger.info({ code: syncError.code, reason: syncError.message }, 'connection refused');
    next(Object.assign(new Error(syncError.message), { data: syncError.toWire() }));
  }

  /** The handshake middleware: protocol, authentication, the per-user connection limit. */
  private async admit(socket: SyncSocket<User>): Promise<void> {
    if (!this.ready) throw new SyncError('INTERNAL', 'sync server is not started: call start()');
    await this.ready;
    const { handshake, user, expiresAt } = await this.authenticate(socket);
    const userKey = this.userKeyOf(user);
    if (this.options.authenticate) await this.claimClient(handshake.clientId, user);
    const max = this.options.maxConnectionsPerUser;
    // Counted and reserved in one synchronous step, so that parallel handshakes cannot both slip under the limit.
    if (max !== undefined && userKey !== undefined) {
      // A connection of this device that is about to be replaced (a link that died, not yet noticed
      // by the server) does not keep the device out.
      const replaced = this.connections.sockets(userKey).filter((id) => this.io.of('/').sockets.get(id)?.data.clientId === handshake.clientId).length;
      if (this.connections.count(userKey) - replaced >= max) {
        throw new SyncError('TOO_MANY_CONNECTIONS', `user already holds ${max} connection${max === 1 ? '' : 's'}, the most maxConnectionsPerUser allows`, {
          limit: max,
        });
      }
      this.connections.add(userKey, socket.id);
      const release = () => {
        this.connections.remove(userKey, socket.id);
        socket.conn.off('close', release);
      };
      // 'close' also covers a client that leaves between this check and its connection.
      socket.conn.once('close', release);
      socket.once('disconnect', release);
    }
    const now = Date.now();
    socket.data = {
      user,
      clientId: handshake.clientId,
      protocol: handshake.protocolVersion,
      collections: [],
      checkpoint: 0,
      connectedAt: now,
      lastSeen: now,
      ...(expiresAt !== undefined ? { expiresAt } : {}),
      ...(userKey !== undefined ? { userKey } : {}),
    };
  }

  /**
   * A client id belongs to the user who first connected with it, on every
   * instance sharing the storage: a user cannot take over another's device
   * id (its REPLACED, its pending state on the server's side). Without
   * authentication, or for a user userKey does not name, there is no one to
   * bind it to. Owners already checked are remembered, so a reconnection
   * costs no storage call.
   */
  private async claimClient(clientId: string, user: User): Promise<void> {
    const key = this.ownerKeyOf(user);
    if (key === undefined || this.claims.get(clientId) === key) return;
    let owner: string;
    try {
      owner = await this.storage.claimClient(clientId, key);
    } catch (error) {
      const syncError = SyncError.from(error, 'STORAGE_ERROR');
      if (syncError.code === 'STORAGE_ERROR') this.events.emit('storage-error', { operation: 'save', error });
      throw syncError;
    }
    if (owner !== key) throw new SyncError('CLIENT_ID_TAKEN', `client id "${clientId}" belongs to another user: a client id names one device of one user`);
    if (this.claims.size >= MAX_REMEMBERED_CLAIMS) this.claims.clear();
    this.claims.set(clientId, key);
  }

  private ownerKeyOf(user: User): string | undefined {
    try {
      return (this.options.userKey ?? defaultUserKey)(user);
    } catch (error) {
      throw new SyncError('INTERNAL', `userKey threw: ${SyncError.from(error).message}`);
    }
  }

  /**
   * Admission control, before any work is spent on a handshake: at most
   * maxConnections held, and at most maxHandshakesPerSecond begun. A refusal
   * names when to come back: the rest of this second, plus a random share
   * of as many seconds as the refusals so far would fill, so that 10,000
   * clients refused together come back spread out, not in one wave again.
   */
  private admitNow(now = Date.now()): void {
    const { maxConnections, maxHandshakesPerSecond } = this.options;
    const second = Math.floor(now / 1000);
    if (second !== this.handshakes.second) this.handshakes = { second, begun: 0, refused: 0 };
    const busy = (reason: 'connections' | 'handshakes', message: string): never => {
      const backlog = Math.ceil(++this.handshakes.refused / (typeof maxHandshakesPerSecond === 'number' ? maxHandshakesPerSecond : 1000));
      const retryAfterMs = (second + 1) * 1000 - now + Math.floor(Math.random() * backlog * 1000);
      throw new SyncError('SERVER_BUSY', message, { reason, retryAfterMs });
    };
    if (maxConnections !== undefined && this.io.of('/').sockets.size >= maxConnections) {
      busy('connections', `this server instance holds its maximum of ${maxConnections} connections (maxConnections): try again later`);
    }
    if (maxHandshakesPerSecond !== false && this.handshakes.begun >= maxHandshakesPerSecond) {
      busy('handshakes', `this server instance takes ${maxHandshakesPerSecond} handshakes a second (maxHandshakesPerSecond): try again later`);
    }
    this.handshakes.begun++;
  }

  /**
   * Queues a push's accepted events for the live fan-out. The fan-out runs
   * at the end of the turn (pushes served in the same turn go out together),
   * or after the one still running, which meanwhile gathers what comes: under
   * a stream of writes a subscriber gets a message per batch, not per write.
   */
  private fanOut(push: LivePush<User>): void {
    this.livePushes.push(push);
    if (this.liveScheduled) return;
    this.liveScheduled = true;
    setImmediate(() => this.drainLive());
  }

  private drainLive(): void {
    this.fanOuts = this.fanOuts
      .then(() => {
        this.liveScheduled = false;
        if (this.stopped) return;
        // At least one push, and pushes up to a push's worth of events: the rest goes next.
        let events = 0;
        let count = 0;
        while (count < this.livePushes.length && (count === 0 || events + this.livePushes[count]!.events.length <= this.options.maxEventsPerPush)) {
          events += this.livePushes[count]!.events.length;
          count++;
        }
        const batch = this.livePushes.splice(0, count);
        if (this.livePushes.length > 0 && !this.liveScheduled) {
          this.liveScheduled = true;
          setImmediate(() => this.drainLive());
        }
        return broadcast(batch);
      })
      .catch((error: unknown) => this.logger.error({ err: error }, 'live fan-out failed'));
  }

  /**
   * A fresh token for an open connection's session, so that it goes on
   * without a disconnect (and without the second or so offline a reconnect
   * costs). The token must name the same user; a refusal counts as a failed
   * login, and the session still ends when it was going to (TOKEN_EXPIRED).
   */
  private async renew(socket: SyncSocket<User>, raw: unknown): Promise<void> {
    const { token } = parseMessage(renewMessageSchema, raw, 'renew message');
    const authenticate = this.options.authenticate;
    if (!authenticate) throw new SyncError('INVALID_MESSAGE', 'this server has no sessions to renew: it does not authenticate');
    // authenticate is the app's (often a call to an identity provider): a connection does not get to run it in a loop.
    const now = Date.now();
    const last = this.renewedAt.get(socket.id);
    if (last !== undefined && now - last < MIN_RENEWAL_INTERVAL_MS) {
      throw new SyncError('RATE_LIMITED', `one renewal per ${MIN_RENEWAL_INTERVAL_MS} ms`, { scope: 'renewal', retryAfterMs: last + MIN_RENEWAL_INTERVAL_MS - now });
    }
    this.renewedAt.set(socket.id, now);
    const session = await this.withinLoginLimit(socket, async () => {
      const renewal = await authenticateToken(socket, token, authenticate, 'renewal refused');
      const [renewed, current] = [this.ownerKeyOf(renewal.user), this.ownerKeyOf(socket.data.user)];
      // Users without a key are compared whole: two keyless users are not the same user.
      const sameUser = renewed !== undefined && current !== undefined ? renewed === current : isDeepStrictEqual(renewal.user, socket.data.user);
      if (!sameUser) throw new SyncError('UNAUTHENTICATED', 'the renewal token names another user: a session stays with its user');
      return renewal;
    });
    socket.data.user = session.user;
    if (session.expiresAt === undefined) delete socket.data.expiresAt;
    else socket.data.expiresAt = session.expiresAt;
  }

  /** The handshake and `authenticate`, within the login limit. */
  private authenticate(socket: SyncSocket<User>) {
    return this.withinLoginLimit(socket, () => {
      // After the login limit: an address refused for guessing does not use up everyone's handshakes.
      this.admitNow();
      return admit(socket, this.options.authenticate);
    });
  }

  /**
   * Runs a login (a handshake, or a renewal of a session) within the login
   * limit: refused unheard when the connection or its address used up its
   * tries, and a refusal by `authenticate` counted against both.
   */
  private async withinLoginLimit<T>(socket: SyncSocket<User>, login: () => Promise<T>): Promise<T> {
    const address = socket.handshake.address;
    try {
      this.logins?.assertMayTry(socket.conn, address);
    } catch (error) {
      this.events.emit('login-failed', { address, limited: true });
      throw error;
    }
    try {
      return await login();
    } catch (error) {
      if (SyncError.from(error).code === 'UNAUTHENTICATED' && this.options.authenticate) {
        this.events.emit('login-failed', { address, limited: false });
        // The refusal is sent first; the connection, which may try again, goes once it has used up its tries.
        if (this.logins?.failed(socket.conn, address)) setImmediate(() => socket.conn.close());
      }
      throw error;
    }
  }

  /** The user's key where per-user limits apply (undefined where none does). */
  private userKeyOf(user: User): string | undefined {
    const perUser = this.options.maxConnectionsPerUser !== undefined || this.options.rateLimit !== false;
    if (!perUser) return undefined;
    const key = this.ownerKeyOf(user);
    if (key === undefined && this.options.authenticate && !this.warnedNoUserKey) {
      this.warnedNoUserKey = true;
      this.logger.warn('per-user limits do not apply to users without a key: give the userKey option');
    }
    return key;
  }

  private onConnection(socket: SyncSocket<User>): void {
    const ctx: ServerContext<User> = {
      options: this.options,
      storage: this.storage,
      logger: this.logger,
      io: this.io,
      stats: this.stats,
      redactor: this.redactor,
      ...(this.options.authorize ? { authorize: this.options.authorize } : {}),
      ...(this.options.authorizeRead ? { authorizeRead: this.options.authorizeRead } : {}),
      emit: (event, ...args) => this.events.emit(event, ...(args as never)),
      fanOut: (push) => this.fanOut(push),
    };
    const log = this.logger.child({ socket: socket.id, clientId: socket.data.clientId });
    log.debug('client connected');
    // Attached in the same synchronous step that makes the socket receive messages, so no message precedes it.
    const meter = new FrameMeter(this.turns);
    socket.conn.on('packet', meter.onPacket);
    const info = () => ({ socketId: socket.id, ...socket.data });
    this.events.emit('client-connect', info());
    const guard = new ConnectionGuard({ maxQueued: this.options.maxQueuedMessages, maxUnsentBytes: this.options.maxUnsentBytes }, socket.conn as unknown as EngineConnection, (reason) => {
      log.warn({ code: reason.code, reason: reason.message }, 'connection dropped');
      this.events.emit('client-dropped', { clientId: socket.data.clientId, reason: reason.code as DropReason });
      socket.emit(MESSAGE.error, reason.toWire());
      socket.disconnect(true);
    }, this.budget);
    this.guards.set(socket.id, guard);
    this.replaceEarlierConnections(socket);
    socket.emit(MESSAGE.welcome, {
      serverTime: Date.now(),
      limits: {
        maxPayloadBytes: this.options.maxPayloadBytes,
        maxEventsPerPush: this.options.maxEventsPerPush,
        maxPullLimit: this.options.maxPullLimit,
        maxClockDrift: this.options.maxClockDrift === false ? null : this.options.maxClockDrift,
      },
      heartbeatInterval: this.options.heartbeatInterval,
      expiresAt: socket.data.expiresAt ?? null,
    });
    // The session's end, moved by each renewal.
    let cancelExpiry = () => {};
    const armExpiry = () => {
      cancelExpiry();
      const expiresAt = socket.data.expiresAt;
      if (expiresAt === undefined) return;
      cancelExpiry = runAt(expiresAt, () => {
        log.info('session expired, disconnecting');
        socket.emit(MESSAGE.error, new SyncError('TOKEN_EXPIRED', 'the session has expired: reconnect with a fresh token', { expiresAt }).toWire());
        socket.disconnect(true);
      });
    };
    armExpiry();
    socket.once('disconnect', () => cancelExpiry());
    const handlers = {
      [MESSAGE.subscribe]: handleSubscribe,
      [MESSAGE.push]: handlePush,
      [MESSAGE.pull]: handlePull,
      [MESSAGE.renew]: async (_ctx: ServerContext<User>, _socket: SyncSocket<User>, raw: unknown) => {
        await this.renew(socket, raw);
        // Not for a connection that ended while authenticate ran: its timer would outlive it.
        if (socket.connected) armExpiry();
        return { expiresAt: socket.data.expiresAt ?? null };
      },
    } as Record<string, (ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown) => Promise<object>>;

    // One listener for every message, so that unknown types, missing acks and limits are answered too.
    socket.onAny((event: string, ...args: unknown[]) => {
      // Dropped: what was already read of its flood is not answered.
      if (guard.closed) return;
      socket.data.lastSeen = Date.now();
      const ack = typeof args[args.length - 1] === 'function' ? (args.pop() as (reply: Ack<object>) => void) : undefined;
      // A reply that cannot be encoded must not become an unhandled rejection that takes the process down.
      const send = (message: Ack<object>) => {
        try {
          if (ack) ack(message);
          else if (!message.ok) socket.emit(MESSAGE.error, message.error);
        } catch (error) {
          log.error({ err: error, type: event }, 'could not send a reply');
        }
        guard.checkUnsent();
      };
      const reply = (error: SyncError) => {
        this.stats.invalidMessages += error.code === 'INVALID_MESSAGE' ? 1 : 0;
        send({ ok: false, error: error.toWire() });
      };
      const type = String(event).slice(0, 128);
      const limited = this.limiter?.check(socket.id, socket.data.userKey);
      if (limited) {
        if (limited.flooding) {
          guard.fail(new SyncError('TOO_MANY_REQUESTS', 'went on sending while rate limited: the connection is closed', (limited.error.details ?? {}) as Record<string, unknown>));
        } else {
          reply(limited.error);
        }
        return;
      }
      // Stringified only when the frames that carried it do not already prove it small enough.
      const limit = this.options.maxPayloadBytes;
      if (meter.bound() > limit) {
        const bytes = payloadBytes(args);
        if (bytes > limit) {
          if (!guard.refusedOversized(limit)) reply(new SyncError('PAYLOAD_TOO_LARGE', `message "${type}" of ${bytes} bytes exceeds maxPayloadBytes (${limit})`, { type, bytes, limit }));
          return;
        }
      }
      if (!CLIENT_MESSAGES.has(event)) {
        reply(new SyncError('INVALID_MESSAGE', `unknown message type "${type}"`, { type }));
        return;
      }
      if (!ack) {
        reply(new SyncError('INVALID_MESSAGE', `message "${event}" needs an acknowledgement callback`, { type: event }));
        return;
      }
      // In turn: one message of this connection at a time, so one socket cannot queue unbounded work.
      guard.enqueue(() =>
        handlers[event]!(ctx, socket, args[0]).then(
          (result) => send({ ok: true, ...result }),
          (error: unknown) => {
            const syncError = SyncError.from(error);
            if (syncError.code === 'INTERNAL') log.error({ err: error, type: event }, 'message failed');
            else log.info({ code: syncError.code, reason: syncError.message, type: event }, 'message refused');
            reply(syncError);
          },
        ),
      );
    });
    socket.on('disconnect', (reason) => {
      guard.close();
      this.guards.delete(socket.id);
      this.renewedAt.delete(socket.id);
      socket.conn.off('packet', meter.onPacket);
      this.limiter?.forgetConnection(socket.id);
      log.debug({ reason }, 'client disconnected');
      this.events.emit('client-disconnect', { ...info(), reason });
    });
  }

  /**
   * One live connection per client id: an earlier one, on this instance or
   * (through the adapter) another, is a link that dropped without closing or
   * a copy of the device, and the new connection replaces it.
   */
  private replaceEarlierConnections(socket: SyncSocket<User>): void {
    const room = `client:${socket.data.clientId}`;
    // Made only when something is replaced: an error with its stack for each of ten thousand reconnecting devices was a few % of a storm.
    const reason = () => new SyncError('REPLACED', 'another connection with the same client id replaced this one').toWire();
    for (const earlier of this.io.of('/').adapter.rooms.get(room) ?? []) {
      const other = this.io.of('/').sockets.get(earlier);
      if (!other || other.id === socket.id) continue;
      this.events.emit('client-dropped', { clientId: socket.data.clientId, reason: 'REPLACED' });
      other.emit(MESSAGE.error, reason());
      other.disconnect(true);
    }
    void socket.join(room);
    // Other instances hear it through the adapter; with socket.io's own adapter there are none.
    if (Object.getPrototypeOf(this.io.of('/').adapter) !== Adapter.prototype) {
      this.io.in(room).except(socket.id).emit(MESSAGE.error, reason());
      this.io.in(room).except(socket.id).disconnectSockets(true);
    }
  }
}

/**
 * How many UTF-8 bytes JSON.stringify can make of one character of the JSON
 * text a message arrived as. Strings and keys never grow (an escape in the
 * frame is at least as long as what it decodes to, and a character is at most
 * 3 bytes); literals keep their length; only a number can grow, when written
 * with an exponent: "1e20" (4 characters) comes back as 21 digits.
 */
const MAX_GROWTH = 6;

/** Numbers the turns of the event loop: the number moves on after every turn in which a packet arrived. */
class TurnClock {
  private turn = 0;
  private ticking = false;
  private readonly next = () => {
    this.turn++;
    this.ticking = false;
  };

  /** The current turn, and the promise that the next packet, in a later turn, sees another number. */
  mark(): number {
    if (!this.ticking) {
      this.ticking = true;
      setImmediate(this.next);
    }
    return this.turn;
  }

  peek(): number {
    return this.turn;
  }
}

/**
 * A cheap upper bound on the JSON size of the messages of one connection,
 * from the text frames that carried them, so that maxPayloadBytes costs no
 * JSON.stringify of every message. socket.io hands a message to the listeners
 * in the same turn of the event loop as its frame arrived (decoded at once,
 * dispatched through process.nextTick), so the characters this connection
 * received during the current turn bound every message dispatched in it,
 * however many frames one read delivered. No count for this turn, or binary
 * traffic (attachments arrive as separate frames, perhaps in later turns):
 * no bound, and the message is measured exactly.
 */
class FrameMeter {
  private chars = 0;
  private turn = -1;
  private binary = false;

  constructor(private readonly turns: TurnClock) {}

  readonly onPacket = (packet: { type: string; data?: unknown }): void => {
    if (packet.type !== 'message' || this.binary) return;
    const data = packet.data;
    // Text frames of socket.io's BINARY_EVENT (5) and BINARY_ACK (6) announce attachments still to come.
    if (typeof data !== 'string' || data.startsWith('5') || data.startsWith('6')) {
      this.binary = true;
      return;
    }
    const turn = this.turns.mark();
    if (turn !== this.turn) {
      this.turn = turn;
      this.chars = 0;
    }
    this.chars += data.length;
  };

  /** At least the byte size of JSON.stringify(args) of any message dispatched now; Infinity when unknown. */
  bound(): number {
    return this.binary || this.turn !== this.turns.peek() ? Number.POSITIVE_INFINITY : this.chars * MAX_GROWTH;
  }
}

/** Byte size of a message's arguments as JSON; a value that cannot be measured counts as too large. */
function payloadBytes(args: unknown[]): number {
  try {
    return Buffer.byteLength(JSON.stringify(args) ?? '');
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

export function createSyncServer<User = unknown>(options: SyncServerOptions<User>): SyncServer<User> {
  return new SyncServer(options);
}
