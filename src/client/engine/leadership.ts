/**
 * Leadership among the tabs of a database: only the elected tab logs and
 * syncs; the others show its status and ask it to sync.
 */
import { fetchAttachment } from './attachments.js';
import { BehaviorSubject, combineLatest } from 'rxjs';
import { SyncError } from '../../shared/errors.js';
import type { PendingDocuments } from '../pending-log.js';
import { shownPending, shownStatus, TabLink } from '../tabs.js';
import { goOnline, openTransport } from './connection.js';
import { watch } from './logging.js';
import { backoffFor } from './schedule.js';
import { requireReplicator, type EngineState } from './state.js';
import { fail, samePendingDocuments, standingError, updateStatus, type SyncResult, type SyncStatus } from './status.js';
import { takeSwitch } from './switch.js';

/** How long syncNow() waits for this tab to win leadership before asking another tab, which may lead, to sync. */
const LEADERSHIP_WAIT = 3000;
const LEADERSHIP_POLL = 100;
/** Said by whenLeading() when another tab of the database leads. */
export const ANOTHER_TAB = 'another-tab';

/** A wait that does not keep Node running once the app is done. */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => (setTimeout(resolve, ms) as { unref?: () => void }).unref?.());
}

/** The tabs of a multi-instance database: the leader publishes its status, the others show it. */
export function openTabs(state: EngineState, sync: () => Promise<SyncResult>): void {
  const tabs = new TabLink(state.db, {
    leads: () => !state.closed && state.db.leaderElector().isLeader,
    onSwitch: (value) => takeSwitch(state, value),
    sync,
    fetch: ({ collection, documentId, attachmentId, meta }) => {
      fetchAttachment(state, collection, documentId, attachmentId, meta).catch((error: unknown) => state.logger.info({ err: error, collection, documentId, attachmentId }, 'could not fetch an attachment another tab asked for'));
    },
  }, state.logger);
  const shown = new BehaviorSubject<SyncStatus>(state.status$.value);
  const pending = new BehaviorSubject<PendingDocuments>(state.pending$.value);
  state.tabs = tabs;
  state.shown = shown;
  state.shownPending = pending;
  combineLatest([state.status$, state.pending$, tabs.leader$]).subscribe(([own, ownPending, leader]) => {
    tabs.publish(own, ownPending);
    const next = shownStatus(own, leader);
    if ((Object.keys(next) as (keyof SyncStatus)[]).some((key) => next[key] !== shown.value[key])) shown.next(next);
    const nextPending = shownPending(own, ownPending, leader);
    if (!samePendingDocuments(nextPending, pending.value)) pending.next(nextPending);
  });
}

/** This tab leads: it prepares the plugin's storage, logs the app's writes and syncs. */
export async function lead(state: EngineState): Promise<void> {
  if (state.closed) return;
  state.tabs?.onElected();
  if (state.db.multiInstance) await prepareUntilDone(state);
  else await prepare(state);
  if (state.closed) return;
  updateStatus(state, { leader: true });
  for (const name of state.collections) await watch(state, name);
  state.transport = openTransport(state);
  if (state.status$.value.enabled && state.options.autoSync) goOnline(state);
}

/** What the leader reads and writes of the plugin's storage before it logs and syncs. */
async function prepare(state: EngineState): Promise<void> {
  const replicator = requireReplicator(state);
  // Only the leader writes the plugin's state; another tab may have led (and written) since start.
  const stored = state.db.multiInstance ? await replicator.load() : state.stateStored;
  if (!stored) await state.meta!.write([replicator.stateWrite()]);
  const repairs = replicator.pending.repairs();
  if (repairs.length > 0) await state.meta!.write(repairs);
  if (state.db.multiInstance) {
    // As another tab set it, and as the tab that led before synced last.
    const settings = await state.settings!.read();
    if (settings.syncSwitch) takeSwitch(state, settings.syncSwitch);
    if (settings.lastSyncTime !== null && settings.lastSyncTime > (state.status$.value.lastSyncTime ?? 0)) updateStatus(state, { lastSyncTime: settings.lastSyncTime });
  }
}

/**
 * prepare() in a tab elected after start, which has no caller to fail:
 * a failure (its storage refusing a write, say) is reported in the status
 * and tried again, as a failed sync is, until it succeeds or the tab closes.
 */
async function prepareUntilDone(state: EngineState): Promise<void> {
  for (let attempt = 0; !state.closed; attempt++) {
    try {
      await prepare(state);
      if (attempt > 0) updateStatus(state, { error: standingError(state) });
      return;
    } catch (error) {
      fail(state, error);
      // close() ends the loop at its next turn.
      await sleep(backoffFor(state, attempt));
    }
  }
}

/**
 * Undefined once this tab leads and has prepared its storage; ANOTHER_TAB
 * when another tab leads; otherwise why not. A tab still being elected is
 * waited for (LEADERSHIP_WAIT at most), and so is the elected tab while it
 * prepares, unless it has reported that preparing failed.
 */
export async function whenLeading(state: EngineState): Promise<SyncError | typeof ANOTHER_TAB | undefined> {
  const elector = state.db.multiInstance ? state.db.leaderElector() : undefined;
  for (let waited = 0; !state.status$.value.leader; waited += LEADERSHIP_POLL) {
    if (state.closed) return new SyncError('CLOSED', 'the database is closed');
    if (elector?.isLeader) {
      if (state.status$.value.error) return state.status$.value.error;
    } else if (waited >= LEADERSHIP_WAIT || (elector && (await elector.hasLeader()))) {
      return ANOTHER_TAB;
    }
    await Promise.race([state.ready, sleep(LEADERSHIP_POLL)]);
  }
  return undefined;
}

/**
 * The calls that change the plugin's log run in the leading tab only: the
 * leader keeps the log in memory and writes it over, so another tab's
 * changes to it would be lost or would clobber the leader's.
 */
export async function requireLeader(state: EngineState, action: string): Promise<void> {
  const notLeading = await whenLeading(state);
  if (notLeading === ANOTHER_TAB) {
    throw new SyncError('DISABLED', `${action}() changes the sync log, which only the leading tab keeps: another tab of this database leads; call it there (getStatus().leader)`);
  }
  if (notLeading) throw notLeading;
}
