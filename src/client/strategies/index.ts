import { SyncError } from '../../shared/errors.js';
import { clientWins } from './client-wins.js';
import { lastWriteWins } from './last-write-wins.js';
import { manual } from './manual.js';
import { merge } from './merge.js';
import { serverWins } from './server-wins.js';
import type { Conflict, ConflictResolver, Resolution, Strategy, StrategyName } from './types.js';

export * from './types.js';
export { lastWriteWins, serverWins, clientWins, merge, manual };

const BUILT_IN: Record<StrategyName, Strategy> = {
  'last-write-wins': lastWriteWins,
  'server-wins': serverWins,
  'client-wins': clientWins,
  merge,
  manual,
};

/** Wraps an app's resolver: its answer becomes a write, a delete or a manual conflict; a throw a manual conflict that reports the failure. */
export function customStrategy(resolver: ConflictResolver): Strategy {
  return async (conflict: Conflict): Promise<Resolution> => {
    try {
      const result = await resolver(conflict);
      if (result === null) return { action: 'delete' };
      // Left to the user, by choice: no failure to report.
      if (result === 'manual') return { action: 'manual' };
      if (typeof result !== 'object' || Array.isArray(result)) {
        throw new SyncError('INVALID_OPTION', "a conflict resolver must return a document object, null or 'manual'");
      }
      return { action: 'write', data: result };
    } catch (error) {
      return { action: 'manual', reason: `conflict resolver failed: ${SyncError.from(error).message}` };
    }
  };
}

/** Strategies that order writes by their clocks: a write's clock must reach the server even when its state already has. */
export function ordersByClock(strategy: Strategy): boolean {
  return strategy === lastWriteWins || strategy === merge;
}

export function strategyFor(choice: StrategyName | ConflictResolver): Strategy {
  return typeof choice === 'function' ? customStrategy(choice) : BUILT_IN[choice];
}
