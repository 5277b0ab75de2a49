/**
 * The socket.io connection to the sync server: typed requests with
 * acknowledgements, validated replies, and one backoff for every way back
 * after a drop. In `transport/`: requests (acknowledgements and their
 * checks), refusals (what the server's errors say, and the waits they
 * impose), heartbeat (dead-link detection), renewal (of the session) and
 * browser (its network events).
 */
import { io, type Socket } from 'socket.io-client';
import type { z } from 'zod';
import { SyncError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import {
  MESSAGE,
  PROTOCOL_VERSION,
  asBytes,
  liveMessageSchema,
  type BlobDownloadMessage,
  type BlobStateReply,
  type BlobUploadMessage,
  type BlobUploadReply,
  parseMessage,
  toPushRows,
  type Ack,
  type ClientToServerEvents,
  type LiveMessage,
  type PullMessage,
  type PullReply,
  completeRemoteEvent,
  type PushOutcome,
  type ServerToClientEvents,
  type SubscribeMessage,
  type SubscribeReply,
  type SyncEvent,
  type WelcomeMessage,
  welcomeMessageSchema,
} from '../shared/protocol/index.js';
import { backoffDelay } from '../shared/backoff.js';
import { isLiveMessage, isPullPageAck, isStoredPushAck } from '../shared/wire-checks.js';
import type { ResolvedClientOptions } from './options.js';
import { watchBrowser } from './transport/browser.js';
import { morePatience, silenceLimit, watchHeartbeat } from './transport/heartbeat.js';
import { connectError, REFUSED_WAIT_MS, serverError, waitAfterRefusal } from './transport/refusals.js';
import { SessionRenewal } from './transport/renewal.js';
import { assertFits, blobDownloadAck, blobStateAck, blobUploadAck, pullPageAck, pushAck, readReply, renewAck, subscribeAck, toPullReply } from './transport/requests.js';

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

/** A connection that stayed up this long was a real one: the next drop starts the backoff from its first step again. */
export const STABLE_CONNECTION_MS = 10_000;
const CONNECT_TIMEOUT_MS = 10_000;

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
  /** Stops the dead-link watch of the current connection. */
  private unwatch?: () => void;
  /** Grows heartbeatTimeout after the watchdog cut a request short (a long message on a slow link). */
  private patience = 1;
  private inFlight = 0;
  private readonly renewal: SessionRenewal;
  /** The least wait before the next reconnection, set by what ended the connection (REPLACED). */
  private nextNotBefore = 0;
  private readonly detach: (() => void)[];

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
    this.renewal = new SessionRenewal({
      logger,
      renewable: typeof options.authToken === 'function',
      clockOffset: () => this.welcome?.clockOffset,
      connected: () => this.connected,
      token: () => this.resolveToken(),
      renew: (token) => this.request(MESSAGE.renew, { token }, renewAck),
    });
    // From the link's opening: socket.io-client waits for the answer to its CONNECT with no timeout of
    // its own, and a CONNECT lost on the way (a proxy or a cluster primary that dropped the first frame)
    // left the client on an open, pinged link, unanswered, for good.
    this.socket.io.on('open', () => this.awaitWelcome('answer the connection'));
    // Not ready until the welcome: the limits it names bound the first push.
    this.socket.on('connect', () => this.awaitWelcome('send its welcome'));
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
      this.renewal.schedule(message.expiresAt);
      for (const waiter of this.waiters) waiter.resolve();
      this.waiters.clear();
      this.events.onConnect(this.welcome);
    });
    this.socket.on('disconnect', (reason) => {
      clearTimeout(this.welcomeTimer);
      this.renewal.stop();
      this.stopWatching();
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
      clearTimeout(this.welcomeTimer);
      const syncError = connectError(error, options.serverUrl);
      for (const waiter of this.waiters) waiter.reject(syncError);
      this.waiters.clear();
      this.events.onConnectError(syncError);
      if (this.wanted) this.scheduleReconnect(waitAfterRefusal(syncError));
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
      const error = serverError(raw);
      // Another connection with this client id took over (a copy of this device's storage, say, or a
      // forged one where users have no key): connecting again at once would take it back, and the two
      // would replace each other in a loop. The next attempt waits REFUSED_WAIT_MS; syncNow() goes at once.
      if (error.code === 'REPLACED') this.nextNotBefore = REFUSED_WAIT_MS;
      this.events.onServerError(error);
    });
    this.detach = watchBrowser({
      offline: () => this.drop(new SyncError('NOT_CONNECTED', 'the browser reports no network')),
      back: () => this.connectNow(),
    });
  }

  /**
   * Takes the link for dead when nothing came from the server for the
   * heartbeat timeout (see heartbeat.ts). The server pings every
   * `interval` ms, and every packet counts.
   */
  private watch(interval: number): void {
    this.stopWatching();
    const timeout = silenceLimit(this.options.heartbeatTimeout, interval, this.patience);
    this.unwatch = watchHeartbeat(this.socket.io.engine, timeout, (silent) => {
      // A request was under way: perhaps a message that takes longer than this to cross a slow link.
      if (this.inFlight > 0) this.patience = morePatience(this.patience);
      this.drop(new SyncError('NOT_CONNECTED', `nothing from the sync server for ${silent} ms: the link is taken for dead`, { timeoutMs: timeout }));
    });
  }

  private stopWatching(): void {
    this.unwatch?.();
    this.unwatch = undefined;
  }

  /** Connected, and welcomed: ready for requests. */
  get connected(): boolean {
    return this.socket.connected && this.welcome !== undefined;
  }

  /** The current connection's welcome (undefined while not connected). */
  get serverWelcome(): Welcome | undefined {
    return this.welcome;
  }

  /** Drops the link unless the welcome comes within requestTimeout; `what` the server has yet to do. */
  private awaitWelcome(what: string): void {
    const timeoutMs = this.options.requestTimeout;
    clearTimeout(this.welcomeTimer);
    this.welcomeTimer = setTimeout(() => {
      this.logger.warn({ timeoutMs }, `the sync server did not ${what}; connecting again`);
      this.drop(new SyncError('TIMEOUT', `the sync server did not ${what} within ${timeoutMs} ms`));
    }, timeoutMs);
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
    this.renewal.stop();
    this.stopWatching();
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
      // Closing the engine ends in 'disconnect', which schedules the next attempt. engine.io waits for
      // what it has not written yet to drain first, which on a long-polling link that went silent comes
      // only with its own ping timeout (about 17 s): dropped, as the requests it carried were just failed.
      const engine = this.socket.io.engine;
      engine.writeBuffer.length = 0;
      engine.close();
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
    assertFits(message, this.welcome?.limits.maxPayloadBytes);
    const { results } = await this.request(MESSAGE.push, message, pushAck, isStoredPushAck);
    if (results.length !== events.length) throw new SyncError('INVALID_MESSAGE', 'the server answered a push with results that do not match its events');
    return results;
  }

  async pull(message: PullMessage): Promise<PullReply> {
    return toPullReply(await this.request(MESSAGE.pull, message, pullPageAck, isPullPageAck));
  }

  /** Where this user's uploads of these blobs stand on the server. */
  async blobState(digests: string[]): Promise<BlobStateReply['states']> {
    return (await this.request(MESSAGE.blobState, { digests }, blobStateAck)).states;
  }

  uploadChunk(message: BlobUploadMessage): Promise<BlobUploadReply> {
    return this.request(MESSAGE.blobUpload, message, blobUploadAck);
  }

  async downloadChunk(message: BlobDownloadMessage): Promise<{ bytes: Uint8Array; total: number }> {
    const reply = await this.request(MESSAGE.blobDownload, message, blobDownloadAck);
    return { bytes: asBytes(reply.bytes), total: reply.total };
  }

  private async request<R>(type: keyof ClientToServerEvents, message: unknown, schema: z.ZodType<Ack<R>>, quick?: (value: unknown) => boolean): Promise<R> {
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
      this.patience = morePatience(this.patience);
      this.drop(timeout);
      throw timeout;
    } finally {
      this.inFlight--;
    }
    return readReply(schema, raw, type, quick);
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
