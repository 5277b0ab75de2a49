/** Random histories, scopes and readers for the randomized scoped-read tests (fast-check). */
import fc from 'fast-check';
import type { ScopeSelector } from '../shared/scope.js';
import type { Data } from './harness.js';
import type { ScopedHistory } from './scoped-model.js';

/** The fields random scopes name, and what random documents hold in them. */
export const SCOPE_FIELDS = ['crewId', 'n'] as const;
const scopeValue = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom<string | number | boolean>('a', 'b', '1', 'true', '', 'é', '\uffff', '\ue000', '😀', 'a😀', 'aé', 0, 1, -1, 1.5, 0.1 + 0.2, 2 ** 53, 2 ** 60, 1e19, 1e21, -1e-7, true, false) },
  // Strings from characters where UTF-16 order and code point order part: high BMP, private use, astral.
  { weight: 2, arbitrary: fc.string({ unit: fc.constantFrom('a', 'b', '1', 'é', '\uffff', '\ue000', '😀', '𝄞'), maxLength: 3 }) },
  { weight: 1, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }) },
  { weight: 1, arbitrary: fc.integer({ min: -3, max: 3 }) },
);
const fieldValue = fc.oneof({ weight: 8, arbitrary: scopeValue }, { weight: 1, arbitrary: fc.constantFrom<unknown>(null, [1], { x: 1 }) });
const documentData = fc.record({ crewId: fieldValue, n: fieldValue, pad: fc.string({ maxLength: 30 }) }, { requiredKeys: [] });
const scopeAtom = fc.oneof(
  fc.record({ field: fc.constantFrom(...SCOPE_FIELDS), op: fc.constant('$eq'), value: scopeValue }),
  fc.record({ field: fc.constantFrom(...SCOPE_FIELDS), op: fc.constant('$in'), value: fc.array(scopeValue, { minLength: 1, maxLength: 3 }) }),
  fc.record({ field: fc.constantFrom(...SCOPE_FIELDS), op: fc.constantFrom('$gt', '$gte', '$lt', '$lte'), value: scopeValue.filter((v) => typeof v !== 'boolean') }),
);
const scopeSelector: fc.Arbitrary<ScopeSelector | null> = fc.option(
  fc.array(scopeAtom, { minLength: 1, maxLength: 3 }).map((atoms) => ({ $and: atoms.map(({ field, op, value }) => ({ [field]: { [op]: value } })) }) as ScopeSelector),
  { nil: null, freq: 6 },
);

type Step =
  | { kind: 'write'; documentId: string; collection: string; data: Data }
  | { kind: 'delete'; documentId: string; collection: string }
  | { kind: 'compact'; pick: number };
const collectionArb = fc.constantFrom('todos', 'todos', 'todos', 'notes');
const stepArb = (data: fc.Arbitrary<Data>, documents = 6): fc.Arbitrary<Step> => {
  const documentId = fc.integer({ min: 0, max: documents - 1 }).map((i) => `d${i}`);
  return fc.oneof(
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('write' as const), documentId, collection: collectionArb, data }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const), documentId, collection: collectionArb }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('compact' as const), pick: fc.nat(1000) }) },
  );
};

export async function playSteps(history: ScopedHistory, steps: readonly Step[]): Promise<void> {
  for (const step of steps) {
    if (step.kind === 'write') await history.write(step.documentId, step.data, step.collection);
    else if (step.kind === 'delete') {
      const head = history.head(step.documentId, step.collection);
      if (head && head.event.op !== 'delete') await history.remove(step.documentId, step.collection);
    } else await history.compact(step.pick % (history.latest() + 2));
  }
}

export const scopedScenario = fc.record({
  steps: fc.array(stepArb(documentData), { minLength: 1, maxLength: 25 }),
  queries: fc.array(
    fc.record({
      checkpointPick: fc.nat(1000),
      // null: the scope is unchanged (held = scope, through the checkpoint); else a held scope and sequence of their own.
      heldPick: fc.option(fc.nat(1000), { nil: null }),
      startPick: fc.option(fc.nat(1000), { nil: null }),
      scope: scopeSelector,
      heldScope: scopeSelector,
      limit: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined }),
      maxBytes: fc.option(fc.integer({ min: 1, max: 150 }), { nil: undefined }),
    }),
    { minLength: 1, maxLength: 5 },
  ),
  index: fc.boolean(),
});

const readerSelector: fc.Arbitrary<ScopeSelector | null> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom<ScopeSelector | null>({ crewId: 'a' }, { crewId: { $in: ['a', 'b'] } }, { n: { $gte: 0 } }, { crewId: 'b', n: { $lt: 2 } }, null) },
  { weight: 1, arbitrary: scopeSelector },
);
const readerData = fc.record(
  { crewId: fc.constantFrom<unknown>('a', 'a', 'b', 'c', 1, true), n: fc.integer({ min: -2, max: 2 }) },
  { requiredKeys: [] },
);
export const readerScenario = fc.record({
  rounds: fc.array(
    fc.record({
      steps: fc.array(stepArb(readerData, 3), { maxLength: 5 }),
      // Mostly small pages, so that catch-ups are cut and documents change between their pages.
      read: fc.option(
        fc.record({ limit: fc.option(fc.integer({ min: 1, max: 2 }), { nil: undefined, freq: 5 }), maxBytes: fc.option(fc.integer({ min: 1, max: 80 }), { nil: undefined }) }),
        { nil: null, freq: 5 },
      ),
      changeScope: fc.integer({ min: 0, max: 5 }).map((n) => n === 0),
      scope: readerSelector,
    }),
    { minLength: 1, maxLength: 30 },
  ),
  index: fc.boolean(),
});
