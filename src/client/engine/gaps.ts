/**
 * Gaps after a checkpoint: the sequences this client holds past it, and how
 * long a gap waits for live messages to fill it before it is pulled.
 */
import type { EngineState } from './state.js';

/**
 * After live events arrive that leave a gap after a checkpoint, a pull
 * follows this soon to close it (see moveCheckpointsThroughHeld), unless a
 * live message fills it first. Several server instances relay each other's
 * events late under load: a live event that arrives after a pull already
 * brought it, or while the pull was on its way, doubles the wait (up to the
 * most), and each gap that live
 * messages close alone shortens it by 1 %, so that gaps are waited out
 * instead of pulled twice.
 */
export const LIVE_PULL_DELAY = { least: 500, most: 5000, grow: 2, shrink: 0.99 } as const;
/** Sequences held for `have` at most; beyond, they are dropped and a pull may send some documents again. */
export const MAX_HELD_SEQUENCES = 250_000;

/** The highest checkpoint `from` moves to through sequences held without a break. */
export function heldThrough(held: ReadonlySet<number>, from: number): number {
  let checkpoint = from;
  while (held.has(checkpoint + 1)) checkpoint++;
  return checkpoint;
}

/** Sequences up to `seq` are behind every checkpoint now: a pull need not name them any more. */
export function forgetHeldThrough(state: EngineState, seq: number): void {
  for (const held of state.heldSequences) if (held <= seq) state.heldSequences.delete(held);
}

/** A live event came that a pull brought too (or was bringing): the next gap is waited out longer. */
export function growLivePullDelay(state: EngineState): void {
  state.livePullDelay = Math.min(LIVE_PULL_DELAY.most, state.livePullDelay * LIVE_PULL_DELAY.grow);
}

/** Live messages closed a gap alone: the next is waited out a little less. */
export function shrinkLivePullDelay(state: EngineState): void {
  state.livePullDelay = Math.max(LIVE_PULL_DELAY.least, state.livePullDelay * LIVE_PULL_DELAY.shrink);
}
