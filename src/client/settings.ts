/**
 * What the plugin keeps of a database's sync besides the log: the switch
 * (enable() / disable()) of a multi-instance database, which every tab, a
 * reload and a tab elected later obey, and the time of the last successful
 * sync, which a reload shows.
 */
import type { MetaStore } from './meta-store.js';

export const SWITCH_ID = 'setting|switch';
export const LAST_SYNC_ID = 'setting|lastSync';
/**
 * The last sync time is written at most this often, and when the database
 * closes: a sync run of one small push would otherwise cost one more write.
 */
const LAST_SYNC_WRITE_INTERVAL = 1000;

/** The sync switch as a tab set it: the latest one (by `at`, then `by`) is the one every tab obeys. */
export interface SyncSwitch {
  enabled: boolean;
  /** When it was set, in ms. */
  at: number;
  /** The database instance (tab) that set it. */
  by: string;
}

/** Whether `next` was set after `current`. */
export function isNewerSwitch(current: SyncSwitch | undefined, next: SyncSwitch): boolean {
  return !current || next.at > current.at || (next.at === current.at && next.by > current.by);
}

export function isSyncSwitch(value: unknown): value is SyncSwitch {
  const candidate = value as Partial<SyncSwitch> | null;
  return typeof candidate === 'object' && candidate !== null && typeof candidate.enabled === 'boolean' && typeof candidate.at === 'number' && typeof candidate.by === 'string';
}

export class StoredSettings {
  /** This tab's writes, one after another: two writes of one document at once would refuse each other. */
  private writing: Promise<void> = Promise.resolve();
  private lastSyncTime: number | null = null;
  private lastSyncWrittenAt = 0;
  private lastSyncTimer?: ReturnType<typeof setTimeout>;

  constructor(
    private readonly meta: MetaStore,
    private readonly onError: (error: unknown) => void,
  ) {}

  async read(): Promise<{ syncSwitch?: SyncSwitch; lastSyncTime: number | null }> {
    const stored = await this.meta.get<unknown>([SWITCH_ID, LAST_SYNC_ID]);
    const syncSwitch = stored.get(SWITCH_ID);
    const at = (stored.get(LAST_SYNC_ID) as { at?: unknown } | undefined)?.at;
    return { syncSwitch: isSyncSwitch(syncSwitch) ? syncSwitch : undefined, lastSyncTime: typeof at === 'number' ? at : null };
  }

  saveSwitch(value: SyncSwitch): Promise<void> {
    return this.enqueue(() => this.meta.write([{ id: SWITCH_ID, kind: 'setting', value }]));
  }

  /** Keeps `at` as the last sync time: now, or with the next write LAST_SYNC_WRITE_INTERVAL after the last one. */
  noteSynced(at: number): void {
    this.lastSyncTime = at;
    if (this.lastSyncTimer !== undefined) return;
    const wait = this.lastSyncWrittenAt + LAST_SYNC_WRITE_INTERVAL - Date.now();
    if (wait <= 0) {
      this.writeLastSync();
      return;
    }
    this.lastSyncTimer = setTimeout(() => {
      this.lastSyncTimer = undefined;
      this.writeLastSync();
    }, wait);
    (this.lastSyncTimer as { unref?: () => void }).unref?.();
  }

  /** Writes what is still to be written; before the plugin's storage closes. */
  async flush(): Promise<void> {
    if (this.lastSyncTimer !== undefined) {
      clearTimeout(this.lastSyncTimer);
      this.lastSyncTimer = undefined;
      this.writeLastSync();
    }
    await this.writing;
  }

  private writeLastSync(): void {
    this.lastSyncWrittenAt = Date.now();
    // The value when the write is made: a sync that ends while an earlier write runs is kept by this one.
    void this.enqueue(() => this.meta.write([{ id: LAST_SYNC_ID, kind: 'setting', value: () => ({ at: this.lastSyncTime }) }])).catch(this.onError);
  }

  private enqueue(work: () => Promise<void>): Promise<void> {
    const next = this.writing.then(work);
    this.writing = next.catch(() => undefined);
    return next;
  }
}
