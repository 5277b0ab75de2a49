/**
 * Outage: the link between a client and its server dies without closing,
 * as a radio link does (a van in a tunnel, Wi-Fi gone), and comes back.
 * Client A reaches the server through a proxy that stops carrying bytes
 * both ways while the sockets stay open (lib/slow-link.ts, `cut`); client B
 * is connected directly. Per trial, for each system with its defaults:
 *
 * - `detect`: from the cut until A's client says it is disconnected: this
 *   project's `status$` with `connected: false`; RxDB's replication state
 *   exposes no connection state, so the first close or error event of the
 *   WebSocket its client opened to the proxy (what flips the plugin's
 *   private `connected$` and feeds `error$`). A client that has not noticed
 *   within the cap is counted at the cap, as a lower bound.
 * - `resync`: right after the cut, A and B each write a document. The link
 *   stays cut until A noticed (or the cap passed) and then a random 0–2.5 s
 *   more, so that the restore lands anywhere in the reconnection backoff.
 *   Timed from the restore until the server has stored A's document, A
 *   holds B's, and (this project) A's status shows it connected with
 *   nothing pending.
 *
 * The cut falls at a random point of the server's 2 s heartbeat. What was
 * sent while the link was cut is held and delivered at the restore, as TCP
 * retransmission would deliver it (without TCP's retransmission wait);
 * BENCH_OUTAGE_RESTORE=reset instead destroys every connection that lived
 * through the outage, as when a peer gave up or the device came back with
 * another address. BENCH_OUTAGE_CAP_MS (default 7000) and
 * BENCH_OUTAGE_TRIALS (default 10; 2 with --quick) change the rest.
 */
import type { SyncStatus } from 'rxdb-offline-sync';
import { filter, firstValueFrom } from 'rxjs';
import { WebSocket } from 'ws';
import { makeTodos } from '../lib/documents.js';
import { arrival } from '../lib/observe.js';
import { sleep, withTimeout } from '../lib/runtime.js';
import { alternating, type Scenario } from '../lib/scenario.js';
import { startSlowLink } from '../lib/slow-link.js';
import { percentile } from '../lib/stats.js';
import type { BenchClient, BenchSystem, SystemId } from '../systems/types.js';

const CAP_MS = positiveEnv('BENCH_OUTAGE_CAP_MS') ?? 7000;
const RESET = process.env.BENCH_OUTAGE_RESTORE === 'reset';
/** The server's heartbeat interval (this project's default): the cut falls anywhere within one. */
const PHASE_MS = 2000;
/** The link stays cut this much longer (random, up to) after the client noticed: past retryDelay's first wait, 0.5–1 s, and into the next. */
const AFTER_NOTICE_MS = 2500;
/** A client not in sync this long after the restore is counted at this value, as a lower bound. */
const RESYNC_CAP_MS = 10_000;
const TARGET_DETECT_MS = 5000;
const TARGET_RESYNC_MS = 1000;

function positiveEnv(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer, got "${raw}"`);
  return value;
}

/** How a system's client tells that its link is down, and that it has nothing left to send. */
interface Probe {
  /** Resolves when the client first says the link is down; call before the cut. */
  noticed(): Promise<void>;
  /** Resolves once the client counts the write made during the outage as pending. */
  pendingSeen(): Promise<void>;
  /** Resolves once the client is connected with nothing pending. */
  idle(): Promise<void>;
  /** Resolves once the client is connected again. */
  reconnected(): Promise<void>;
  dispose(): void;
}

function probeFor(systemId: SystemId, client: BenchClient, linkPort: number): Probe {
  if (systemId === 'offline-sync') {
    const api = client.todos.database.plugin('sync');
    if (!api) throw new Error('the sync plugin is not attached to the outage client');
    const when = (test: (status: SyncStatus) => boolean) => firstValueFrom(api.status$.pipe(filter(test))).then(() => undefined);
    return {
      noticed: () => when((status) => !status.connected),
      pendingSeen: () => when((status) => status.pendingEvents > 0),
      idle: () => when((status) => status.connected && status.pendingEvents === 0),
      reconnected: () => when((status) => status.connected),
      dispose() {},
    };
  }
  const sockets = watchWebSockets(linkPort);
  // RxDB's upstream queue exposes no pending count: the server's count of A's write stands for it.
  return {
    noticed: () => sockets.lost,
    pendingSeen: () => Promise.resolve(),
    idle: () => Promise.resolve(),
    reconnected: () => sockets.opened,
    dispose: () => sockets.dispose(),
  };
}

/**
 * The first close or error, and the first open after that, of a WebSocket
 * (the `ws` package's, which RxDB's client uses in Node) to `port`. RxDB
 * keeps its socket to itself, so the events are seen where every `ws`
 * socket emits them; the sockets of this project's client (engine.io also
 * uses `ws`) never go to the port watched here.
 */
function watchWebSockets(port: number): { lost: Promise<void>; opened: Promise<void>; dispose(): void } {
  const prototype = WebSocket.prototype as unknown as { emit(event: string | symbol, ...args: unknown[]): boolean };
  const emit = prototype.emit;
  let lose!: () => void;
  let open!: () => void;
  const lost = new Promise<void>((resolve) => (lose = resolve));
  const opened = new Promise<void>((resolve) => (open = resolve));
  let down = false;
  prototype.emit = function (this: WebSocket, event, ...args) {
    if (this.url && new URL(this.url).port === String(port)) {
      if (event === 'close' || event === 'error') {
        down = true;
        lose();
      } else if (event === 'open' && down) open();
    }
    return emit.call(this, event, ...args);
  };
  return { lost, opened, dispose: () => void (prototype.emit = emit) };
}

interface Trial {
  /** From the cut until the client said it was down; the cap if it did not. */
  detectMs: number;
  noticed: boolean;
  /** From the restore until everything written during the outage was where it belongs; the cap if it was not. */
  resyncMs: number;
  synced: boolean;
  /** From the restore until the client was connected again, when it had noticed the cut. */
  reconnectMs?: number;
  outageMs: number;
}

const timed = async (promise: Promise<unknown>, from: number, capMs: number): Promise<number | undefined> => {
  const elapsed = await Promise.race([promise.then(() => performance.now() - from), sleep(capMs - (performance.now() - from)).then(() => undefined)]);
  return elapsed;
};

async function runTrial(system: BenchSystem, trial: number, timeoutMs: number): Promise<Trial> {
  const server = await system.startServer();
  const link = await startSlowLink(server.port);
  const a = await server.openClient({ port: link.port });
  const b = await server.openClient();
  await withTimeout(Promise.all([a.startSync(), b.startSync()]), timeoutMs, `${system.label}: the outage clients' first sync`);
  const probe = probeFor(system.id, a, link.port);
  try {
    await sleep(Math.random() * PHASE_MS);
    const [fromA, fromB] = makeTodos(2, `outage-${trial}`) as [ReturnType<typeof makeTodos>[number], ReturnType<typeof makeTodos>[number]];
    const bArrived = arrival(a.todos, fromB.id);
    const writtenBefore = server.written;
    const noticed = probe.noticed();

    link.cut();
    const cutAt = performance.now();
    await a.todos.insert({ ...fromA, tags: [...fromA.tags] });
    await b.todos.insert({ ...fromB, tags: [...fromB.tags] });
    await withTimeout(probe.pendingSeen(), timeoutMs, `${system.label}: the outage write to count as pending`);
    const detectMs = await timed(noticed, cutAt, CAP_MS);
    await sleep(Math.random() * AFTER_NOTICE_MS);

    const reconnected = detectMs === undefined ? undefined : probe.reconnected();
    link.restore({ reset: RESET });
    const restoredAt = performance.now();
    const outageMs = restoredAt - cutAt;
    const synced = Promise.all([bArrived, server.waitForWritten(writtenBefore + 2), probe.idle()]);
    const resyncMs = await timed(synced, restoredAt, RESYNC_CAP_MS);
    const reconnectMs = reconnected ? await timed(reconnected, restoredAt, RESYNC_CAP_MS) : undefined;
    return {
      detectMs: detectMs ?? CAP_MS,
      noticed: detectMs !== undefined,
      resyncMs: resyncMs ?? RESYNC_CAP_MS,
      synced: resyncMs !== undefined,
      ...(reconnectMs !== undefined ? { reconnectMs } : {}),
      outageMs,
    };
  } finally {
    probe.dispose();
    await withTimeout(Promise.all([a.close(), b.close()]), timeoutMs, `${system.label}: closing the outage clients`);
    await link.close();
    await server.stop();
  }
}

export const outage: Scenario = {
  name: 'outage',
  async run({ config, systems, record, log }) {
    const trials = positiveEnv('BENCH_OUTAGE_TRIALS') ?? (config.runs === 1 ? 2 : 10);
    const results = new Map<SystemId, Trial[]>(systems.map((system) => [system.id, []]));
    for (const { system, run } of alternating(systems, trials)) {
      const result = await runTrial(system, run, config.timeoutMs);
      results.get(system.id)!.push(result);
      const detect = result.noticed ? `noticed after ${result.detectMs.toFixed(0)} ms` : `not noticed within ${CAP_MS} ms`;
      const resync = result.synced ? `${result.resyncMs.toFixed(0)} ms` : `not within ${RESYNC_CAP_MS} ms`;
      const reconnect = result.reconnectMs !== undefined ? `, connected again after ${result.reconnectMs.toFixed(0)} ms` : '';
      log(`outage ${system.id} trial ${run + 1}: ${detect}; link back after ${(result.outageMs / 1000).toFixed(1)} s, in sync ${resync} later${reconnect}`);
    }
    const restore = RESET ? 'connections that lived through it reset' : 'held bytes delivered';
    for (const system of systems) {
      const done = results.get(system.id)!;
      const figures = [
        { metric: 'detect', values: done.map((t) => t.detectMs), censored: done.filter((t) => !t.noticed).length, cap: CAP_MS, what: 'noticed' },
        { metric: 'resync', values: done.map((t) => t.resyncMs), censored: done.filter((t) => !t.synced).length, cap: RESYNC_CAP_MS, what: 'in sync' },
      ];
      for (const { metric, values, censored, cap, what } of figures) {
        const note = `${done.length} trials, cap ${cap} ms${censored > 0 ? ` (${censored} not ${what} within it)` : ''}; on restore, ${restore}`;
        for (const p of [50, 95]) {
          record({ scenario: 'outage', system: system.id, metric: `${metric}-p${p}`, unit: 'ms', value: percentile(values, p), runs: values, note, ...(censored > 0 ? { censored, cap } : {}) });
        }
      }
    }
    log(`outage targets (this project): detect ≤ ${TARGET_DETECT_MS} ms, in sync ≤ ${TARGET_RESYNC_MS} ms after the link returns, both p95`);
  },
};
