/** The socket.io connection to the sync server: typed requests with acknowledgements, validated replies. */
import { io, type Socket } from 'socket.io-client';
import type { z } from 'zod';
import { SyncError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import {
  MESSAGE,
  PROTOCOL_VERSION,
  ackSchema,
  liveMessageSchema,
  parseMessage,
  fromPullPage,
  toPushRows,
  pullPageSchema,
  pushReplySchema,
  subscribeReplySchema,
  type ClientToServerEvents,
  type LiveMessage,
  type PullMessage,
  type PullPage,
  type PullReply,
  completeRemoteEvent,
  type PushOutcome,
  type PushReply,
  type ServerToClientEvents,
  type SubscribeMessage,
  type SubscribeReply,
  type SyncEvent,
  type WelcomeMessage,
  type RenewReply,
  renewReplySchema,
  welcomeMessageSchema,
} from '../shared/protocol/index.js';
import { backoffDelay } from '../shared/backoff.js';
import { utf8Length } from '../shared/json.js';
import { isLiveMessage, isPullPageAck, isStoredPushAck } from '../shared/wire-checks.js';
import type { ResolvedClientOptions } from './options.js';

/** What the server said when this connection began: its limits, and how far this device's clock is from its own. */
export interface Welcome {
  limits: WelcomeMessage['limits'];
  /** The server's time minus this device's, in ms, as of the welcome (half the handshake's round trip off at most). */
  clockOffset: number;
}

export interface TransportEvents {
  onConnect(welcome: Welcome): void;
  onDisconnect(reason: string): void;
  onConnectError(error: SyncError): void;
  onLive(message: LiveMessage): void;
  onServerError(error: SyncError): void;
}

const pushAck = ackSchema(pushReplySchema);
const pullPageAck = ackSchema(pullPageSchema);
const subscribeAck = ackSchema(subscribeReplySchema);
const renewAck = ackSchema(renewReplySchema);

/** A connection that stayed up this long was a real one: the next drop starts the backoff from its first step again. */
export const STABLE_CONNECTION_MS = 10_000;
/** Room left in a push for socket.io's framing around the message (`42["sync:push",…,id]`). */
const FRAMING_BYTES = 64;
const CONNECT_TIMEOUT_MS = 10_000;
/** The longest wait a server's retryAfterMs may impose on reconnecting. */
const MAX_RETRY_AFTER_MS = 60_000;
/** The wait before connecting again after a refusal the same credentials will meet again, or after REPLACED. */
const REFUSED_WAIT_MS = 15_000;
const TERMINAL_REFUSALS: ReadonlySet<string> = new Set(['UNAUTHENTICATED', 'CLIENT_ID_TAKEN', 'UNSUPPORTED_PROTOCOL']);
/** The longest setTimeout delay. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** A session is renewed at most this long before it ends. */
const RENEW_AHEAD_MS = 60_000;
/** The most heartbeatTimeout grows, as a multiple, after it cut requests short. */
const MAX_PATIENCE = 32;

export class Transport {
  private readonly socket: Socket<ServerToClientEvents, ClientToServerEvents>;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private welcomeTimer?: ReturnType<typeof setTimeout>;
  /** Reconnections since the last connection that stayed up STABLE_CONNECTION_MS: the step of the backoff. */
  private attempts = 0;
  private connectedAt = 0;
  private wanted = false;
  /** Set once the server's welcome arrived on the current connection: only then is it ready for requests. */
  private welcome?: Welcome;
  private readonly waiters = new Set<{ resolve(): void; reject(error: SyncError): void }>();
  /** Fires when the server has been silent for the watchdog's time; refreshed by every packet. */
  private watchdog?: ReturnType<typeof setTimeout>;
  /** Grows heartbeatTimeout after the watchdog cut a request short (a long message on a slow link). */
  private patience = 1;
  private inFlight = 0;
  private renewTimer?: ReturnType<typeof setTimeout>;
  /** The least wait before the next reconnection, set by what ended the connection (REPLACED). */
  private nextNotBefore = 0;
  private readonly detach: (() => void)[] = [];

  constructor(
    private readonly options: ResolvedClientOptions,
    private readonly clientId: string,
    private readonly events: TransportEvents,
    private readonly logger: Logger,
  ) {
    this.socket = io(options.serverUrl, {
      path: options.path,
      autoConnect: false,
      // A Manager of its own: socket.io-client otherwise caches one per URL, and its auth callback
      // would keep this transport, the engine and the closed database alive.
      forceNew: true,
      transports: options.useWebSockets ? ['websocket'] : ['polling'],
      // Every reconnection, whatever ended the connection before (a dead link, a server that
      // dropped this client, a refused handshake), goes through one backoff: scheduleReconnect().
      reconnection: false,
      // One attempt's limit (socket.io's default is 20 s): an attempt made into a dead link gives way to the next.
      timeout: CONNECT_TIMEOUT_MS,
      // Asked again on every connection attempt, so an expired token is replaced.
      auth: (callback) => {
        // A token that comes after its attempt ended would go out on the next attempt's connection,
        // as a second handshake beside that attempt's own: it is dropped instead.
        const engine = this.socket.io.engine;
        const send = (auth: Record<string, unknown>) => {
          if (this.socket.io.engine === engine && engine.readyState === 'open') callback(auth);
        };
        this.resolveToken().then(
          (token) => send({ protocolVersion: PROTOCOL_VERSION, clientId, ...(token ? { token } : {}) }),
          (error: unknown) => {
            this.logger.warn({ err: error }, 'authToken function failed');
            send({ protocolVersion: PROTOCOL_VERSION, clientId });
          },
        );
      },
    });
    this.socket.on('connect', () => {
      // Not ready until the welcome: the limits it names bound the first push.
      clearTimeout(this.welcomeTimer);
      this.welcomeTimer = setTimeout(() => {
        this.logger.warn({ timeoutMs: options.requestTimeout }, 'the sync server sent no welcome; connecting again');
        this.drop(new SyncError('TIMEOUT', `the sync server sent no welcome within ${options.requestTimeout} ms`));
      }, options.requestTimeout);
    });
    this.socket.on(MESSAGE.welcome, (raw: unknown) => {
      clearTimeout(this.welcomeTimer);
      let message: WelcomeMessage;
      try {
        message = parseMessage(welcomeMessageSchema, raw, 'welcome message from server');
      } catch (error) {
        this.drop(SyncError.from(error));
        return;
      }
      this.welcome = { limits: message.limits, clockOffset: message.serverTime - Date.now() };
      this.connectedAt = Date.now();
      this.watch(message.heartbeatInterval);
      this.scheduleRenewal(message.expiresAt);
      for (const waiter of this.waiters) waiter.resolve();
      this.waiters.clear();
      this.events.onConnect(this.welcome);
    });
    this.socket.on('disconnect', (reason) => {
      clearTimeout(this.welcomeTimer);
      clearTimeout(this.renewTimer);
      this.unwatch();
      const wasReady = this.welcome !== undefined;
      this.welcome = undefined;
      if (wasReady && Date.now() - this.connectedAt >= STABLE_CONNECTION_MS) {
        this.attempts = 0;
        this.patience = 1;
      }
      if (wasReady) this.events.onDisconnect(reason);
      const notBefore = this.nextNotBefore;
      this.nextNotBefore = 0;
      if (this.wanted) this.scheduleReconnect(notBefore);
    });
    this.socket.on('connect_error', (error: Error & { data?: unknown }) => {
      const data = error.data as { code?: string; message?: string; details?: unknown } | undefined;
      const syncError =
        data && typeof data.code === 'string'
          ? SyncError.fromWire(data as never)
          : new SyncError('NOT_CONNECTED', `cannot reach sync server ${options.serverUrl}: ${error.message}`);
      for (const waiter of this.waiters) waiter.reject(syncError);
      this.waiters.clear();
      this.events.onConnectError(syncError);
      // A busy server says when to come back (spread over its backlog): not sooner.
      const retryAfterMs = (syncError.details as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
      // A refusal the same token will get again is not worth a retry every second, and each one counts
      // against the address's failed logins, shared by every device behind the same NAT.
      const notBefore = typeof retryAfterMs === 'number' && retryAfterMs > 0 ? Math.min(retryAfterMs, MAX_RETRY_AFTER_MS) : TERMINAL_REFUSALS.has(syncError.code) ? REFUSED_WAIT_MS : 0;
      if (this.wanted) this.scheduleReconnect(notBefore);
    });
    this.socket.on(MESSAGE.live, (raw: unknown) => {
      try {
        const message = parseMessage(liveMessageSchema, raw, 'live message from server', isLiveMessage);
        this.events.onLive({ events: message.events.map(completeRemoteEvent), ...(message.leaves ? { leaves: message.leaves } : {}) });
      } catch (error) {
        this.events.onServerError(SyncError.from(error));
      }
    });
    this.socket.on(MESSAGE.error, (raw: unknown) => {
      const wire = raw as { code?: unknown; message?: unknown };
      const error = typeof wire?.message === 'string' && typeof wire.code === 'string'
        ? SyncError.fromWire(wire as never)
        : new SyncError('INVALID_MESSAGE', 'malformed error message from server');
      // Another connection with this client id took over (a copy of this device's storage, say, or a
      // forged one where users have no key): connecting again at once would take it back, and the two
      // would replace each other in a loop. The next attempt waits REFUSED_WAIT_MS; syncNow() goes at once.
      if (error.code === 'REPLACED') this.nextNotBefore = REFUSED_WAIT_MS;
      this.events.onServerError(error);
    });
    this.watchBrowser();
  }

  /**
   * Takes the link for dead when nothing came from the server for the
   * heartbeat timeout: a link that drops without closing (a van in a
   * tunnel, Wi-Fi gone) sends no close, and socket.io alone would notice
   * only after its ping interval and timeout together (45 s by default).
   * The server pings every `interval` ms, and every packet counts.
   */
  private watch(interval: number): void {
    this.unwatch();
    const engine = this.socket.io.engine;
    const timeout = Math.max(this.options.heartbeatTimeout, 2 * interval + 500) * this.patience;
    let heard = Date.now();
    // Not a timer reset per packet (a browser's timers cannot be refreshed): one check per timeout.
    const check = () => {
      const silent = Date.now() - heard;
      if (silent < timeout) {
        this.watchdog = setTimeout(check, timeout - silent);
        return;
      }
      // A request was under way: perhaps a message that takes longer than this to cross a slow link.
      if (this.inFlight > 0) this.patience = Math.min(this.patience * 2, MAX_PATIENCE);
      this.drop(new SyncError('NOT_CONNECTED', `nothing from the sync server for ${silent} ms: the link is taken for dead`, { timeoutMs: timeout }));
    };
    const onHeartbeat = () => {
      heard = Date.now();
    };
    engine.on('heartbeat', onHeartbeat);
    this.watchdog = setTimeout(check, timeout);
    this.unwatchEngine = () => engine.off('heartbeat', onHeartbeat);
  }

  /**
   * Renews the session over the open connection before it ends (a quarter
   * of what is left, at most a minute, before `expiresAt`), so that an
   * expiring token costs no disconnect. Only with an authToken function: a
   * fixed token cannot be fresher. A refused renewal leaves the session to
   * end as it would have (TOKEN_EXPIRED), and the reconnection asks for a
   * token again.
   */
  private scheduleRenewal(expiresAt: number | null): void {
    clearTimeout(this.renewTimer);
    if (expiresAt === null || typeof this.options.authToken !== 'function' || !this.welcome) return;
    // The server's time, on this device's clock.
    const left = expiresAt - this.welcome.clockOffset - Date.now();
    const wait = Math.max(0, left - Math.min(left / 4, RENEW_AHEAD_MS));
    // A session of weeks: looked at again within a timer's reach (setTimeout fires at once past 2^31 ms).
    if (wait > MAX_TIMER_MS) {
      this.renewTimer = setTimeout(() => this.scheduleRenewal(expiresAt), MAX_TIMER_MS);
      return;
    }
    this.renewTimer = setTimeout(() => void this.renew(expiresAt), wait);
  }

  private async renew(ending: number): Promise<void> {
    try {
      const token = await this.resolveToken();
      if (!token || !this.connected) return;
      const { expiresAt } = await this.request<RenewReply>(MESSAGE.renew, { token }, renewAck);
      this.logger.debug({ expiresAt }, 'session renewed');
      // A renewal that did not move the end (the token source handed out the same token) is not asked again at once.
      if (expiresAt !== null && expiresAt <= ending) {
        this.logger.warn({ expiresAt }, 'the renewed session ends no later than before; it ends when it expires');
        return;
      }
      this.scheduleRenewal(expiresAt);
    } catch (error) {
      const syncError = SyncError.from(error);
      this.logger.warn({ code: syncError.code, reason: syncError.message }, 'the session could not be renewed; it ends when it expires');
    }
  }

  private unwatchEngine?: () => void;

  private unwatch(): void {
    clearTimeout(this.watchdog);
    this.watchdog = undefined;
    this.unwatchEngine?.();
    this.unwatchEngine = undefined;
  }

  /**
   * The browser knows sooner than any heartbeat: `offline` closes the
   * connection at once (the status says so, and requests fail instead of
   * waiting out their timeout), and `online` or the page becoming visible
   * again (a phone unlocked, a laptop woken) connects at once, skipping
   * whatever wait the backoff had left.
   */
  private watchBrowser(): void {
    const target = globalThis as unknown as Partial<Pick<Window, 'addEventListener' | 'removeEventListener'>> & { document?: Document };
    if (typeof target.addEventListener !== 'function' || typeof target.removeEventListener !== 'function') return;
    const listen = (on: { addEventListener: Window['addEventListener']; removeEventListener: Window['removeEventListener'] }, type: string, listener: () => void) => {
      const remove = on.removeEventListener.bind(on);
      on.addEventListener(type, listener);
      this.detach.push(() => remove(type, listener));
    };
    listen(target as Window, 'offline', () => {
      this.drop(new SyncError('NOT_CONNECTED', 'the browser reports no network'));
    });
    listen(target as Window, 'online', () => this.connectNow());
    const document = target.document;
    if (document && typeof document.addEventListener === 'function') {
      listen(document as unknown as Window, 'visibilitychange', () => {
        if (document.visibilityState === 'visible') this.connectNow();
      });
    }
  }

  /** Connected, and welcomed: ready for requests. */
  get connected(): boolean {
    return this.socket.connected && this.welcome !== undefined;
  }

  /** The current connection's welcome (undefined while not connected). */
  get serverWelcome(): Welcome | undefined {
    return this.welcome;
  }

  /** Connects, and keeps connecting after every drop, through the backoff. */
  connect(): void {
    this.wanted = true;
    if (!this.socket.connected && !this.attempting() && this.reconnectTimer === undefined) this.socket.connect();
  }

  /**
   * True while an attempt is under way (the link is opening, or open with
   * the handshake not yet answered). socket.connect() then would send a
   * second handshake on the same link: the server takes the newer for a
   * new connection of this client id and drops this one as REPLACED, and
   * the client would wait REFUSED_WAIT_MS before it came back.
   */
  private attempting(): boolean {
    return this.socket.active && this.socket.io._readyState !== 'closed';
  }

  /**
   * Connects now if not connected, skipping what is left of the backoff:
   * the app asked (syncNow), or the browser says the network is back.
   */
  connectNow(): void {
    if (!this.wanted || this.socket.connected || this.attempting()) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.socket.connect();
  }

  disconnect(): void {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.welcomeTimer);
    clearTimeout(this.renewTimer);
    this.unwatch();
    this.reconnectTimer = undefined;
    this.socket.disconnect();
    // A connection still being made (or waiting for its welcome) is closed too.
    if (this.socket.io._readyState !== 'closed') this.socket.io.engine.close();
    const error = new SyncError('DISABLED', 'disconnected on purpose');
    for (const waiter of this.waiters) waiter.reject(error);
    this.waiters.clear();
  }

  /** Disconnects for good and lets go of every listener. */
  close(): void {
    this.disconnect();
    for (const detach of this.detach.splice(0)) detach();
    this.socket.removeAllListeners();
    this.socket.io.removeAllListeners();
  }

  /**
   * Closes the connection as dead (a request or the welcome timed out, the
   * browser went offline): socket.io fails the requests in flight at once,
   * the status says disconnected, and the backoff starts connecting again.
   */
  private drop(reason: SyncError): void {
    this.logger.info({ code: reason.code, reason: reason.message }, 'closing the connection to the sync server');
    for (const waiter of this.waiters) waiter.reject(reason);
    this.waiters.clear();
    const state = this.socket.io._readyState;
    if (state === 'open') {
      // Closing the engine ends in 'disconnect', which schedules the next attempt.
      this.socket.io.engine.close();
    } else {
      // Still opening (socket.io's manager would wait out its own 20 s connect timeout) or closed:
      // given up here, and the backoff takes over.
      if (state === 'opening') this.socket.disconnect();
      if (this.wanted) this.scheduleReconnect();
    }
  }

  /** Resolves once connected and welcomed; rejects on the next failed attempt or after `timeout` ms. */
  waitForConnection(timeout: number): Promise<void> {
    if (this.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (error: SyncError) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new SyncError('NOT_CONNECTED', `not connected to ${this.options.serverUrl} within ${timeout} ms`));
      }, timeout);
      this.waiters.add(waiter);
    });
  }

  subscribe(message: SubscribeMessage): Promise<SubscribeReply> {
    return this.request(MESSAGE.subscribe, message, subscribeAck);
  }

  /** Pushes events; resolves with one outcome per event, in order. */
  async push(events: readonly SyncEvent[]): Promise<PushOutcome[]> {
    const message = toPushRows(events, this.clientId);
    this.assertFits(message);
    const { results } = await this.request<PushReply>(MESSAGE.push, message, pushAck, isStoredPushAck);
    if (results.length !== events.length) throw new SyncError('INVALID_MESSAGE', 'the server answered a push with results that do not match its events');
    return results;
  }

  async pull(message: PullMessage): Promise<PullReply> {
    const page = await this.request<PullPage>(MESSAGE.pull, message, pullPageAck, isPullPageAck);
    return {
      events: fromPullPage(page),
      checkpoint: page.checkpoint,
      hasMore: page.hasMore,
      ...(page.scopes ? { scopes: page.scopes } : {}),
      ...(page.leaves ? { leaves: page.leaves } : {}),
      ...(page.start !== undefined ? { start: page.start } : {}),
    };
  }

  /**
   * Refuses, before sending, a push the server would not read: its size in
   * UTF-8 bytes, as the server measures it, against the limit its welcome
   * named. Over it, socket.io on the server may drop the whole connection,
   * and the push would go out again on every reconnection. Measured exactly
   * only when a cheap bound (3 bytes per UTF-16 unit) does not settle it.
   */
  private assertFits(message: unknown): void {
    const limit = this.welcome?.limits.maxPayloadBytes;
    if (limit === undefined) return;
    const json = JSON.stringify([message]);
    if (json.length * 3 + FRAMING_BYTES <= limit) return;
    const bytes = utf8Length(json);
    if (bytes + FRAMING_BYTES > limit) {
      throw new SyncError('PAYLOAD_TOO_LARGE', `a push of ${bytes} bytes exceeds the server's maxPayloadBytes (${limit})`, { bytes, limit });
    }
  }

  private async request<R>(type: keyof ClientToServerEvents, message: unknown, schema: z.ZodType, quick?: (value: unknown) => boolean): Promise<R> {
    if (!this.connected) throw new SyncError('NOT_CONNECTED', 'not connected to the sync server');
    let raw: unknown;
    this.inFlight++;
    try {
      raw = await (this.socket.timeout(this.options.requestTimeout * this.patience) as unknown as Socket).emitWithAck(type, message);
    } catch (error) {
      // socket.io fails a request in flight at once when the connection drops: that is no timeout.
      if (!this.socket.connected) throw new SyncError('NOT_CONNECTED', `the connection to the sync server was lost before it answered ${type}`);
      // A link that dropped without closing looks like this: it is torn down, and connecting again starts now.
      const timeout = new SyncError('TIMEOUT', `no answer to ${type} within ${this.options.requestTimeout * this.patience} ms: ${SyncError.from(error).message}`);
      // Perhaps a link too slow for the answer in that time, not a dead one: the next connection waits longer.
      this.patience = Math.min(this.patience * 2, MAX_PATIENCE);
      this.drop(timeout);
      throw timeout;
    } finally {
      this.inFlight--;
    }
    const reply = parseMessage(schema, raw, `reply to ${type}`, quick) as { ok: true } | { ok: false; error: never };
    if (!reply.ok) throw SyncError.fromWire(reply.error);
    return reply as R;
  }

  /** The one way back after a drop or a refusal: jittered, growing with each attempt, capped at retry.maxDelay. */
  private scheduleReconnect(notBefore = 0): void {
    if (this.reconnectTimer !== undefined) return;
    const { retryDelay, maxDelay, useExponentialBackoff } = this.options.retry;
    const delay = Math.max(notBefore, backoffDelay(this.attempts, { base: retryDelay, max: maxDelay, exponential: useExponentialBackoff }));
    this.attempts++;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.wanted && !this.socket.connected && !this.attempting()) this.socket.connect();
    }, delay);
  }

  private async resolveToken(): Promise<string | undefined> {
    const { authToken } = this.options;
    if (typeof authToken === 'function') return (await authToken()) ?? undefined;
    return authToken;
  }
}
