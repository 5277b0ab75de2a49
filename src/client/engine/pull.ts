/** Plain pulls: pages of changes after each checkpoint, naming what this client holds already (`have`). */
import { SyncError } from '../../shared/errors.js';
import { MAX_PULL_HAVE, toSpans, type PullMessage, type PullReply } from '../../shared/protocol/index.js';
import type { Transport } from '../transport.js';
import { growLivePullDelay } from './gaps.js';
import { requireReplicator, type EngineState } from './state.js';
import { changeOf } from './status.js';
import type { PendingSubscription } from './subscription.js';

/** One pull page, naming the sequences after the checkpoint this client holds (`have` only saves traffic). */
export async function pullPage(state: EngineState, transport: Transport, ask: PullMessage, nameHeld = true): Promise<PullReply> {
  const have = nameHeld ? haveAfter(state.heldSequences, ask.checkpoint) : [];
  return transport.pull(have.length > 0 ? { ...ask, have } : ask);
}

/** The sequences held after `checkpoint`, as spans, as many as a pull may name. */
export function haveAfter(held: Iterable<number>, checkpoint: number): NonNullable<PullMessage['have']> {
  return toSpans([...held].filter((seq) => seq > checkpoint)).slice(0, MAX_PULL_HAVE);
}

/** Refuses a page that brings collections not asked for, or moves the checkpoint back from `checkpoint`. */
export function checkPage(reply: PullReply, collections: readonly string[], checkpoint: number): void {
  const unexpected = reply.events.find((event) => !collections.includes(event.collection));
  if (unexpected) throw new SyncError('INVALID_MESSAGE', `server sent events for collection "${unexpected.collection}", which was not asked for`);
  if (reply.checkpoint < checkpoint) throw new SyncError('INVALID_MESSAGE', `server moved the checkpoint back from ${checkpoint} to ${reply.checkpoint}`);
}

/** Collections by checkpoint: those at the same checkpoint are pulled together. */
export function byCheckpoint(collections: Iterable<string>, checkpoints: Readonly<Record<string, number>>): Map<number, string[]> {
  const groups = new Map<number, string[]>();
  for (const name of collections) {
    const checkpoint = checkpoints[name] ?? 0;
    groups.set(checkpoint, [...(groups.get(checkpoint) ?? []), name]);
  }
  return groups;
}

/**
 * Pulls the collections not held to a scope, page after page from each
 * checkpoint. The first page is asked for before `subscription` is
 * answered, and written after. Returns how many events were applied.
 */
export async function pullPlain(state: EngineState, transport: Transport, names: readonly string[], subscription: PendingSubscription): Promise<number> {
  const replicator = requireReplicator(state);
  let synced = 0;
  for (let [checkpoint, collections] of byCheckpoint(names, replicator.state.checkpoints)) {
    // A page is asked for before the step that needs it (the first before the subscription's
    // answer, each next one before the page before it is written), so its promise is handled from
    // the start: it may fail meanwhile (the connection drops) or be dropped (that step failed).
    // Its error still reaches the `await next` below.
    const ask = (from: number) => {
      const page = pullPage(state, transport, { checkpoint: from, collections, limit: state.options.pullBatchSize });
      page.catch(() => undefined);
      return page;
    };
    let next = ask(checkpoint);
    if (subscription.promise) {
      await subscription.promise;
      subscription.promise = undefined;
    }
    for (;;) {
      const reply = await next;
      // A page that arrived after disable() is not written: the run ends as it would have without it.
      if (!state.status$.value.enabled) throw new SyncError('DISABLED', 'sync was disabled during the pull');
      checkPage(reply, collections, checkpoint);
      // The next page is asked for before this one is written: the round trip and the server's
      // work overlap the local write. Only the page is early; its checkpoint is kept once applied.
      if (reply.hasMore) next = ask(reply.checkpoint);
      // Events that came live while this page was on its way: the gap would have closed without it.
      if (reply.events.some((event) => state.heldSequences.has(event.seq))) growLivePullDelay(state);
      // A collection that came to hold a scope while this page was on its way (a leave arrived live)
      // pulls in it from 0 now: the page is not its, and must not move its checkpoint.
      const unscoped = await state.queue.run(async () => {
        const still = collections.filter((name) => replicator.state.scopes?.[name] === undefined);
        const events = still.length === collections.length ? reply.events : reply.events.filter((event) => still.includes(event.collection));
        synced += await replicator.applyRemote(events, 'pull', { collections: still, seq: reply.checkpoint });
        if (events.length > 0) state.received$.next(events.map(changeOf));
        return still;
      });
      checkpoint = reply.checkpoint;
      if (unscoped.length < collections.length) {
        state.want.pull = true;
        break;
      }
      // The server holds this user to a scope in these collections: they are pulled as scoped from now on.
      const ruled = Object.keys(reply.scopes ?? {}).filter((name) => collections.includes(name) && (reply.scopes![name] ?? null) !== null);
      if (ruled.length > 0) {
        for (const name of ruled) state.ruledScopes.add(name);
        state.want.pull = true;
      }
      if (!reply.hasMore) break;
    }
  }
  return synced;
}
