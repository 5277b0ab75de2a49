/**
 * The turn budget: thousands of connections that each bring a message in the
 * same turn (a reconnect storm's catch-up pulls) do not hold the event loop
 * for all of them at once. Past the budget, the rest start in later turns.
 */
import { describe, expect, it } from 'vitest';
import { ConnectionGuard, TurnBudget } from '../src/server/guard.js';

function spin(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

/** Turns of the event loop, counted by a chain of setImmediate callbacks. */
function turnCounter() {
  let turn = 0;
  let running = true;
  const next = () => {
    if (!running) return;
    turn++;
    setImmediate(next);
  };
  setImmediate(next);
  return { now: () => turn, stop: () => (running = false) };
}

async function serveAll(budget: TurnBudget | undefined, connections: number, taskMs: number): Promise<number[]> {
  const turns = turnCounter();
  const startedIn: number[] = [];
  const done: Promise<void>[] = [];
  for (let i = 0; i < connections; i++) {
    const guard = new ConnectionGuard({ maxQueued: 16, maxUnsentBytes: 1 << 20 }, {}, () => undefined, budget);
    done.push(
      new Promise<void>((resolve) =>
        guard.enqueue(async () => {
          startedIn.push(turns.now());
          spin(taskMs);
          resolve();
        }),
      ),
    );
  }
  await Promise.all(done);
  turns.stop();
  return startedIn;
}

/** The most messages started in any one turn. */
function busiest(turns: number[]): number {
  const counts = new Map<number, number>();
  for (const turn of turns) counts.set(turn, (counts.get(turn) ?? 0) + 1);
  return Math.max(...counts.values());
}

describe('turn budget', () => {
  it('spreads the messages of many connections over turns, about budget ÷ cost each', async () => {
    const startedIn = await serveAll(new TurnBudget(10), 60, 2);
    expect(startedIn).toHaveLength(60);
    // 10 ms of 2 ms messages: five or six a turn, never all sixty (a 120 ms stall).
    expect(busiest(startedIn)).toBeLessThanOrEqual(8);
    expect(new Set(startedIn).size).toBeGreaterThanOrEqual(8);
  });

  it('without one, every connection\'s message starts in the same turn', async () => {
    const startedIn = await serveAll(undefined, 60, 2);
    expect(busiest(startedIn)).toBe(60);
  });
});
