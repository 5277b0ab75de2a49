/**
 * Who may connect: the socket.io handshake middleware. A handshake waits for
 * a turn with budget left (admission.ts), passes admission control
 * (maxConnections, maxHandshakesPerSecond), the protocol check and the app's
 * `authenticate` within the login limit, claims its client id for its user,
 * and takes a place under the user's connection limit.
 */
import type { EventEmitter } from 'node:events';
import { SyncError } from '../shared/errors.js';
import { TurnQueue } from './admission.js';
import { admit } from './auth.js';
import type { SyncServerEvents } from './events.js';
import type { TurnBudget } from './guard.js';
import type { SyncIo, SyncSocket } from './handlers.js';
import { LoginLimiter, UserConnections, defaultUserKey } from './limits.js';
import type { Logger } from './logger.js';
import type { ResolvedServerOptions } from './options.js';
import type { SyncStorage } from './storage/types.js';

/** Client id owners kept in memory; past it the memory starts again (a reconnection then asks storage once). */
const MAX_REMEMBERED_CLAIMS = 10_000;

/** A socket.io handshake waiting for its turn: the socket and the middleware's continuation. */
interface Handshaking<User> {
  socket: SyncSocket<User>;
  next: (error?: Error) => void;
}

export interface HandshakeDeps<User> {
  options: ResolvedServerOptions<User>;
  storage: SyncStorage;
  logger: Logger;
  io: SyncIo<User>;
  events: EventEmitter<SyncServerEvents<User>>;
  /** The server's start: undefined before start() was called. */
  ready: () => Promise<void> | undefined;
  /** The turn budget that messages share, and how handshakes wait for it (see TurnQueue). */
  budget: TurnBudget;
  maxWaitMs: number;
  perTurn: number;
}

export class Handshakes<User = unknown> {
  private readonly logins?: LoginLimiter;
  /** Handshakes begun and refused in the current second (admission control). */
  private thisSecond = { second: 0, begun: 0, refused: 0 };
  private warnedNoUserKey = false;
  /** Client ids whose owner this instance checked: id → user key. */
  private readonly claims = new Map<string, string>();
  private readonly connections = new UserConnections();
  /**
   * socket.io handshakes, each started in a turn with budget left (see
   * UpgradeGate for the upgrades before them); one that waited
   * maxWaitMs is refused with SERVER_BUSY and when to come back.
   */
  private readonly queue: TurnQueue<Handshaking<User>>;

  constructor(private readonly deps: HandshakeDeps<User>) {
    if (deps.options.loginLimit) this.logins = new LoginLimiter(deps.options.loginLimit);
    this.queue = new TurnQueue<Handshaking<User>>(
      deps.budget,
      deps.maxWaitMs,
      deps.perTurn,
      ({ socket, next }) => {
        this.admit(socket).then(
          () => next(),
          (error: unknown) => this.refuse(next, SyncError.from(error, 'UNAUTHENTICATED'), error),
        );
      },
      ({ next }, retryAfterMs) => {
        this.refuse(next, new SyncError('SERVER_BUSY', 'the server has more handshakes waiting than it can start in time: try again later', { reason: 'handshakes', retryAfterMs }));
      },
      ({ socket }) => socket.conn.readyState === 'closed',
    );
  }

  /** The middleware: socket.io's `next` is called once the handshake is admitted or refused. */
  offer(socket: SyncSocket<User>, next: (error?: Error) => void): void {
    this.queue.offer({ socket, next });
  }

  /** Handshakes that waited for a later turn (deferred), and those told to come back (expired). */
  get stats(): { deferred: number; expired: number } {
    return this.queue.stats;
  }

  /** Refuses every handshake still waiting. */
  close(): void {
    this.queue.close('expire');
  }

  /**
   * Runs a login (a handshake, or a renewal of a session) within the login
   * limit: refused unheard when the connection or its address used up its
   * tries, and a refusal by `authenticate` counted against both.
   */
  async withinLoginLimit<T>(socket: SyncSocket<User>, login: () => Promise<T>): Promise<T> {
    const address = socket.handshake.address;
    try {
      this.logins?.assertMayTry(socket.conn, address);
    } catch (error) {
      this.deps.events.emit('login-failed', { address, limited: true });
      throw error;
    }
    try {
      return await login();
    } catch (error) {
      if (SyncError.from(error).code === 'UNAUTHENTICATED' && this.deps.options.authenticate) {
        this.deps.events.emit('login-failed', { address, limited: false });
        // The refusal is sent first; the connection, which may try again, goes once it has used up its tries.
        if (this.logins?.failed(socket.conn, address)) setImmediate(() => socket.conn.close());
      }
      throw error;
    }
  }

  /** The user's key by the `userKey` option (undefined where it names none). */
  ownerKeyOf(user: User): string | undefined {
    try {
      return (this.deps.options.userKey ?? defaultUserKey)(user);
    } catch (error) {
      throw new SyncError('INTERNAL', `userKey threw: ${SyncError.from(error).message}`);
    }
  }

  private refuse(next: (error?: Error) => void, syncError: SyncError, cause: unknown = syncError): void {
    if (syncError.code === 'INTERNAL') this.deps.logger.error({ err: cause }, 'connection refused');
    else this.deps.logger.info({ code: syncError.code, reason: syncError.message }, 'connection refused');
    next(Object.assign(new Error(syncError.message), { data: syncError.toWire() }));
  }

  /** Protocol, authentication, the per-user connection limit. */
  private async admit(socket: SyncSocket<User>): Promise<void> {
    const { options, io } = this.deps;
    const ready = this.deps.ready();
    if (!ready) throw new SyncError('INTERNAL', 'sync server is not started: call start()');
    await ready;
    const { handshake, user, expiresAt } = await this.authenticate(socket);
    const userKey = this.userKeyOf(user);
    if (options.authenticate) await this.claimClient(handshake.clientId, user);
    const max = options.maxConnectionsPerUser;
    // Counted and reserved in one synchronous step, so that parallel handshakes cannot both slip under the limit.
    if (max !== undefined && userKey !== undefined) {
      // A connection of this device that is about to be replaced (a link that died, not yet noticed
      // by the server) does not keep the device out.
      const replaced = this.connections.sockets(userKey).filter((id) => io.of('/').sockets.get(id)?.data.clientId === handshake.clientId).length;
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
      owner = await this.deps.storage.claimClient(clientId, key);
    } catch (error) {
      const syncError = SyncError.from(error, 'STORAGE_ERROR');
      if (syncError.code === 'STORAGE_ERROR') this.deps.events.emit('storage-error', { operation: 'save', error });
      throw syncError;
    }
    if (owner !== key) throw new SyncError('CLIENT_ID_TAKEN', `client id "${clientId}" belongs to another user: a client id names one device of one user`);
    if (this.claims.size >= MAX_REMEMBERED_CLAIMS) this.claims.clear();
    this.claims.set(clientId, key);
  }

  /**
   * Admission control, before any work is spent on a handshake: at most
   * maxConnections held, and at most maxHandshakesPerSecond begun. A refusal
   * names when to come back: the rest of this second, plus a random share
   * of as many seconds as the refusals so far would fill, so that 10,000
   * clients refused together come back spread out, not in one wave again.
   */
  private admitNow(now = Date.now()): void {
    const { maxConnections, maxHandshakesPerSecond } = this.deps.options;
    const second = Math.floor(now / 1000);
    if (second !== this.thisSecond.second) this.thisSecond = { second, begun: 0, refused: 0 };
    const busy = (reason: 'connections' | 'handshakes', message: string): never => {
      const backlog = Math.ceil(++this.thisSecond.refused / (typeof maxHandshakesPerSecond === 'number' ? maxHandshakesPerSecond : 1000));
      const retryAfterMs = (second + 1) * 1000 - now + Math.floor(Math.random() * backlog * 1000);
      throw new SyncError('SERVER_BUSY', message, { reason, retryAfterMs });
    };
    if (maxConnections !== undefined && this.deps.io.of('/').sockets.size >= maxConnections) {
      busy('connections', `this server instance holds its maximum of ${maxConnections} connections (maxConnections): try again later`);
    }
    if (maxHandshakesPerSecond !== false && this.thisSecond.begun >= maxHandshakesPerSecond) {
      busy('handshakes', `this server instance takes ${maxHandshakesPerSecond} handshakes a second (maxHandshakesPerSecond): try again later`);
    }
    this.thisSecond.begun++;
  }

  /** The handshake and `authenticate`, within the login limit. */
  private authenticate(socket: SyncSocket<User>) {
    return this.withinLoginLimit(socket, () => {
      // After the login limit: an address refused for guessing does not use up everyone's handshakes.
      this.admitNow();
      return admit(socket, this.deps.options.authenticate);
    });
  }

  /** The user's key where per-user limits apply (undefined where none does). */
  private userKeyOf(user: User): string | undefined {
    const { options, logger } = this.deps;
    const perUser = options.maxConnectionsPerUser !== undefined || options.rateLimit !== false;
    if (!perUser) return undefined;
    const key = this.ownerKeyOf(user);
    if (key === undefined && options.authenticate && !this.warnedNoUserKey) {
      this.warnedNoUserKey = true;
      logger.warn('per-user limits do not apply to users without a key: give the userKey option');
    }
    return key;
  }
}
