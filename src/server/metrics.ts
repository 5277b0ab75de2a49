/**
 * Prometheus metrics for one sync server, in a registry of their own (never
 * prom-client's global one, so that two servers in one process do not clash
 * and an app's own metrics stay its own). Fed from `syncServer.events`.
 */
import type * as PromClient from 'prom-client';
import type { Registry } from 'prom-client';
import { requireOptional } from './optional.js';
import type { DropReason, SyncServer } from './server.js';

export interface SyncMetricsOptions {
  /** Prefix of every metric name. Default `rxdb_offline_sync_`. */
  prefix?: string;
  /** Also collect Node process metrics (CPU, memory, event loop lag) into the registry. Default true. */
  defaultMetrics?: boolean;
  /** Labels added to every metric, e.g. `{ instance: 'a' }`. */
  labels?: Record<string, string>;
}

export interface SyncMetrics {
  readonly registry: Registry;
  /** The metrics in Prometheus text format. */
  render(): Promise<string>;
  readonly contentType: string;
  /** Stops listening to the server's events. */
  close(): void;
}

/** Histogram buckets in seconds, from 1 ms (a memory-storage push) to 10 s (a stalled database). */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const PUSH_RESULTS = ['accepted', 'duplicate', 'conflict', 'rejected'] as const;
const DROP_REASONS: readonly DropReason[] = ['TOO_MANY_REQUESTS', 'SLOW_CONSUMER', 'REPLACED'];

export function createSyncMetrics(server: SyncServer<any>, options: SyncMetricsOptions = {}): SyncMetrics {
  // prom-client is an optional peer dependency: only a server that serves metrics needs it.
  const { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } = requireOptional<typeof PromClient>('prom-client', 'createSyncMetrics');
  const prefix = options.prefix ?? 'rxdb_offline_sync_';
  const registry = new Registry();
  if (options.labels) registry.setDefaultLabels(options.labels);
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix });

  new Gauge({
    name: `${prefix}connected_clients`,
    help: 'Sockets connected to this server instance.',
    registers: [registry],
    collect() {
      this.set(server.getClientsCount());
    },
  });
  new Counter({
    name: `${prefix}admission_total`,
    help: 'WebSocket upgrades and socket.io handshakes under load, by stage and outcome: deferred (waited for a later turn of the event loop), refused (waited too long and was told to come back: a 503, or SERVER_BUSY).',
    labelNames: ['stage', 'outcome'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [stage, counts] of Object.entries(server.getAdmissionStats())) {
        for (const [outcome, value] of Object.entries(counts)) this.inc({ stage, outcome }, value);
      }
    },
  });
  const connections = new Counter({
    name: `${prefix}client_connections_total`,
    help: 'Sockets that passed authentication and connected, by the protocol version they spoke.',
    labelNames: ['protocol'],
    registers: [registry],
  });
  const events = new Counter({
    name: `${prefix}push_events_total`,
    help: 'Events received in pushes, by what the server answered: accepted, duplicate (a retry), conflict, rejected (unauthorized or unknown collection).',
    labelNames: ['result'],
    registers: [registry],
  });
  for (const result of PUSH_RESULTS) events.inc({ result }, 0);
  const pushDuration = new Histogram({
    name: `${prefix}push_duration_seconds`,
    help: 'Time to handle one push message, from parsing to broadcast.',
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  const pullDuration = new Histogram({
    name: `${prefix}pull_duration_seconds`,
    help: 'Time to answer one pull message.',
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  const pulledEvents = new Counter({
    name: `${prefix}pull_events_total`,
    help: 'Events sent to clients in pull replies.',
    registers: [registry],
  });
  const storageErrors = new Counter({
    name: `${prefix}storage_errors_total`,
    help: 'Storage calls that failed, by operation (save or read).',
    labelNames: ['operation'],
    registers: [registry],
  });
  for (const operation of ['save', 'read']) storageErrors.inc({ operation }, 0);
  let invalidSeen = 0;
  new Counter({
    name: `${prefix}invalid_messages_total`,
    help: 'Malformed or unknown messages answered with an error.',
    registers: [registry],
    collect() {
      const now = server.getStats().invalidMessages;
      if (now > invalidSeen) this.inc(now - invalidSeen);
      invalidSeen = now;
    },
  });

  const dropped = new Counter({
    name: `${prefix}dropped_connections_total`,
    help: 'Connections the server closed to protect the others, by reason: TOO_MANY_REQUESTS (a queue or rate flood), SLOW_CONSUMER (replies left unread), REPLACED (a newer connection with its client id).',
    labelNames: ['reason'],
    registers: [registry],
  });
  for (const reason of DROP_REASONS) dropped.inc({ reason }, 0);
  const failedLogins = new Counter({
    name: `${prefix}failed_logins_total`,
    help: 'Handshakes refused by authentication, and (limited="true") those refused unheard because the connection or its address used up its tries.',
    labelNames: ['limited'],
    registers: [registry],
  });
  for (const limited of ['true', 'false']) failedLogins.inc({ limited }, 0);

  const onPush = (push: { durationMs: number; accepted: number; duplicates: number; conflicts: number; rejected: number }) => {
    pushDuration.observe(push.durationMs / 1000);
    events.inc({ result: 'accepted' }, push.accepted);
    events.inc({ result: 'duplicate' }, push.duplicates);
    events.inc({ result: 'conflict' }, push.conflicts);
    events.inc({ result: 'rejected' }, push.rejected);
  };
  const onPull = (pull: { durationMs: number; events: number }) => {
    pullDuration.observe(pull.durationMs / 1000);
    pulledEvents.inc(pull.events);
  };
  const onStorageError = (failure: { operation: 'save' | 'read' }) => storageErrors.inc({ operation: failure.operation });
  const onConnect = (client: { protocol: number }) => connections.inc({ protocol: String(client.protocol) });
  const onDropped = (drop: { reason: DropReason }) => dropped.inc({ reason: drop.reason });
  const onLoginFailed = (failure: { limited: boolean }) => failedLogins.inc({ limited: String(failure.limited) });
  server.events.on('push', onPush);
  server.events.on('pull', onPull);
  server.events.on('storage-error', onStorageError);
  server.events.on('client-connect', onConnect);
  server.events.on('client-dropped', onDropped);
  server.events.on('login-failed', onLoginFailed);

  return {
    registry,
    contentType: registry.contentType,
    render: () => registry.metrics(),
    close() {
      server.events.off('push', onPush);
      server.events.off('pull', onPull);
      server.events.off('storage-error', onStorageError);
      server.events.off('client-connect', onConnect);
      server.events.off('client-dropped', onDropped);
      server.events.off('login-failed', onLoginFailed);
    },
  };
}
