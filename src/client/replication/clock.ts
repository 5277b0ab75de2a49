/** This device's clock, set by the server's. */
import { HybridLogicalClock, millisOf } from '../../shared/hlc.js';
import type { MetaWrite } from '../meta-store.js';
import type { ReplicationState } from './state.js';

/** A clock this close to the server's is left alone: the welcome's own travel time is about as much. */
const CLOCK_TOLERANCE_MS = 2000;

/**
 * Sets this device's clock by the server's, as its welcome gave it: a
 * device whose own clock is wrong (a dead RTC battery, a user who set the
 * year by hand) stamps its changes with a time the server accepts and
 * that orders them fairly against everyone else's. Pending changes
 * already stamped further ahead than the server takes (`maxAhead`, its
 * maxClockDrift; null when it takes any) are stamped again, in log order,
 * rather than refused: edited offline under the wrong clock, they are
 * still the user's latest edits. Returns how many were stamped again.
 */
export async function correctClock(state: ReplicationState, offset: number, maxAhead: number | null): Promise<number> {
  state.clockOffset = Math.abs(offset) > CLOCK_TOLERANCE_MS ? offset : 0;
  if (maxAhead === null) return 0;
  // Some room for the time between this welcome and the push.
  const limit = state.now() + maxAhead - CLOCK_TOLERANCE_MS;
  // Runs at every connection, over the whole log: no parsing unless something is ahead.
  const all = state.pending.all();
  const ahead = new Set(all.filter((entry) => millisOf(entry.event.hlc) > limit));
  if (ahead.size === 0) return 0;
  // The clock forgets what it issued under the wrong time: it starts again from the entries that stay.
  state.clock = new HybridLogicalClock(state.persisted.clientId, state.now);
  for (const entry of all) if (!ahead.has(entry)) state.clock.receive(entry.event.hlc);
  const writes: MetaWrite[] = [];
  // Each at its own time as the server's clock would have read it (the device's error now, taken as
  // its error then), never later than now: an edit made days ago offline does not pass for a new one.
  for (const entry of ahead) {
    const when = Math.min(millisOf(entry.event.hlc) + state.clockOffset, state.now());
    writes.push(...state.pending.update(entry, { ...entry.event, hlc: state.clock.tickAt(when) }));
  }
  await state.meta.write(writes);
  state.logger.warn({ count: ahead.size, offsetMs: offset }, "pending changes were stamped by a clock far ahead of the server's; stamped again by the server's time");
  return ahead.size;
}
