/** Live messages: applied in turn with pulls, and checkpoints moved past the gaps they close. */
import { SyncError } from '../../shared/errors.js';
import { matchesScope } from '../../shared/scope.js';
import type { LiveMessage } from '../../shared/protocol/index.js';
import type { HeldScope } from '../replicator.js';
import { growLivePullDelay, forgetHeldThrough, heldThrough, shrinkLivePullDelay } from './gaps.js';
import { requestSync } from './schedule.js';
import { caughtUpPast, heldScopeOf, holdScopeBeforeLeaving } from './scope.js';
import { confirm } from './scoped-pull.js';
import { requireReplicator, type EngineState } from './state.js';
import { changeOf, fail, updateStatus } from './status.js';
import { judgesIn } from './subscription.js';

/**
 * What of a live message this client takes: events and leaves of a
 * collection removed at run time may still be on their way, and are
 * dropped quietly; one of a collection it never synced is `unexpected`.
 */
export function sortLive(message: LiveMessage, collections: ReadonlySet<string>, removed: ReadonlySet<string>) {
  const received = message.events.filter((event) => !removed.has(event.collection));
  const leaves = (message.leaves ?? []).filter((leave) => !removed.has(leave.collection));
  const unexpected = [...received, ...leaves].find((event) => !collections.has(event.collection));
  return { received, leaves, unexpected };
}

export function onLive(state: EngineState, message: LiveMessage): void {
  const replicator = requireReplicator(state);
  const { received, leaves, unexpected } = sortLive(message, state.collections, state.removedCollections);
  if (unexpected) {
    updateStatus(state, { error: new SyncError('INVALID_MESSAGE', `server sent events for collection "${unexpected.collection}", which this client does not sync`) });
    return;
  }
  if (received.length === 0 && leaves.length === 0) return;
  // Brought already by the pull that went out when its gap was found: the next gap is waited out longer.
  if (received.some((event) => event.seq <= (replicator.state.checkpoints[event.collection] ?? 0))) growLivePullDelay(state);
  for (const event of [...received, ...leaves]) if (event.seq > state.highestLive) state.highestLive = event.seq;
  const basis = state.liveBasis;
  void state.queue
    .run(async () => {
      // Judged in turn with pulls and moves, in the scope held now: never a version outside it
      // (one sent before a scope change reached the server); such a version is a leave.
      const events: typeof received = [];
      const outside: typeof received = [];
      for (const event of received) {
        if (caughtUpPast(state, event.collection, event.seq)) continue;
        const scope = heldScopeOf(state, event.collection);
        (scope === undefined || matchesScope(scope, event.data) ? events : outside).push(event);
      }
      if (events.length > 0) {
        await replicator.applyRemote(events, 'live', undefined, state.heldSequences);
        state.received$.next(events.map(changeOf));
      }
      for (const event of events) confirm(state, event.collection, event.documentId, event.seq);
      for (const event of outside) {
        await holdScopeBeforeLeaving(state, event.collection);
        await replicator.leaveAt(event.collection, [event], heldScopeOf(state, event.collection)!);
        state.heldSequences.add(event.seq);
      }
      // Documents a change moved out of the scope the server holds this connection to.
      for (const leave of leaves) {
        if (caughtUpPast(state, leave.collection, leave.seq)) continue;
        const scope = heldScopeOf(state, leave.collection);
        // Holding everything, nothing leaves: the leave was judged in a scope this device asked for before.
        if (scope === undefined) continue;
        await holdScopeBeforeLeaving(state, leave.collection);
        await replicator.leaveAt(leave.collection, [leave], heldScopeOf(state, leave.collection)!);
        // Its sequence counts as held only when the server judged it in the scope held here; else a pull settles it.
        if (basis === state.liveBasis && judgesIn(basis, leave.collection, scope)) state.heldSequences.add(leave.seq);
      }
      return moveCheckpointsThroughHeld(state);
    })
    .then((moved) => {
      clearTimeout(state.livePullTimer);
      if (moved) shrinkLivePullDelay(state);
      else state.livePullTimer = setTimeout(() => void requestSync(state, { push: false, pull: true }), state.livePullDelay);
    }, (error: unknown) => fail(state, error));
}

/**
 * Where every checkpoint moves without asking the server: the lowest
 * checkpoint reached through held sequences, and whether any moved; or
 * undefined when one cannot move so (a scoped collection pulling as of
 * nothing or moving, a sequence missing through `highestLive`, no
 * collection).
 */
export function checkpointsThroughHeld(
  names: Iterable<string>,
  checkpoints: Readonly<Record<string, number>>,
  scopes: Readonly<Record<string, HeldScope>> | undefined,
  held: ReadonlySet<number>,
  highestLive: number,
): { lowest: number; behind: boolean } | undefined {
  let lowest = Number.POSITIVE_INFINITY;
  let behind = false;
  for (const name of names) {
    // A scoped collection pulling as of nothing, or moving to another scope, moves only with its pages.
    const scope = scopes?.[name];
    if (scope && (scope.target !== undefined || scope.through === 0)) return undefined;
    const from = checkpoints[name] ?? 0;
    const checkpoint = heldThrough(held, from);
    if (checkpoint < highestLive) return undefined;
    lowest = Math.min(lowest, checkpoint);
    behind ||= from < checkpoint;
  }
  return lowest === Number.POSITIVE_INFINITY ? undefined : { lowest, behind };
}

/**
 * When this client holds every sequence from each checkpoint through the
 * highest one received live (applied live, or its own acknowledged
 * pushes), the checkpoints move there without asking the server: a pull
 * would send nothing back and only move them the same way. Through the
 * highest ever received, not just the latest message's: live messages can
 * arrive out of sequence order, and a later one must not stand in for the
 * pull an earlier one's gap still needs. Returns false when a sequence is missing
 * (an event not sent live, one another server instance has not relayed
 * yet, or one committed out of order; or a live event left to a pull to
 * settle, for a document with a local change): then the pull that follows
 * live messages goes out as before. A burst to many readers then costs the
 * server no pull per reader, and no reader gets the end of a burst twice,
 * live and in a pull that left before its live message arrived.
 */
async function moveCheckpointsThroughHeld(state: EngineState): Promise<boolean> {
  const replicator = requireReplicator(state);
  const through = checkpointsThroughHeld(state.collections, replicator.state.checkpoints, replicator.state.scopes, state.heldSequences, state.highestLive);
  if (!through) return false;
  // Written only when a checkpoint moves: a live message whose events were all held already costs no write.
  if (through.behind) await replicator.moveCheckpoints(state.collections, through.lowest);
  forgetHeldThrough(state, through.lowest);
  return true;
}
