/** What /health, /health/ready and /health/live answer: the sync server's state, checked on demand. */
import type { SyncServer } from './server.js';

export interface HealthReport {
  /** `ok` when storage answered; `unavailable` when it did not (or the server is not started). */
  status: 'ok' | 'unavailable';
  /** Seconds since the process started. */
  uptimeSeconds: number;
  storage: {
    reachable: boolean;
    /** How long one `getLatestSequence()` took, in milliseconds. */
    latencyMs: number | null;
    latestSequence: number | null;
    eventsStored: number | null;
    error?: string;
  };
  clients: { connected: number };
}

export interface HealthCheckOptions {
  /** A storage call slower than this counts as unreachable. Default 2000 ms. */
  storageTimeoutMs?: number;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** True once start() attached the server to its HTTP server. */
export function isStarted(server: SyncServer<any>): boolean {
  return server.getIo().engine !== undefined;
}

/** Times a storage round trip and counts what is stored. */
export async function checkHealth(server: SyncServer<any>, options: HealthCheckOptions = {}): Promise<HealthReport> {
  const timeoutMs = options.storageTimeoutMs ?? 2000;
  const storage = server.getStorage();
  const report: HealthReport = {
    status: 'ok',
    uptimeSeconds: Math.round(process.uptime()),
    storage: { reachable: false, latencyMs: null, latestSequence: null, eventsStored: null },
    clients: { connected: server.getClientsCount() },
  };
  try {
    if (!isStarted(server)) throw new Error('the sync server is not started');
    const begun = performance.now();
    report.storage.latestSequence = await withTimeout(storage.getLatestSequence(), timeoutMs, 'storage');
    report.storage.latencyMs = Math.round((performance.now() - begun) * 1000) / 1000;
    report.storage.reachable = true;
    report.storage.eventsStored = await withTimeout(storage.countEvents(), timeoutMs, 'storage');
  } catch (error) {
    report.status = 'unavailable';
    report.storage.error = error instanceof Error ? error.message : String(error);
  }
  return report;
}
