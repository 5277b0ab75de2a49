/** Scoped reads, judged against a model built on matchesScope (src/testing/scoped-model.ts). */
import fc from 'fast-check';
import { beforeEach, describe, expect, it } from 'vitest';
import { matchesScope, parseScope, type ScopeSelector } from '../../shared/scope.js';
import { documentBytes } from '../../server/storage/size.js';
import type { ScopedPage, ScopedQuery, SyncStorage } from '../../server/storage/types.js';
import { readerScenario, scopedScenario, SCOPE_FIELDS, playSteps } from '../arbitraries.js';
import { FC_SEED, asChange, changesOf, ids, type Conformance, type Data } from '../harness.js';
import { ScopedHistory, ScopedReader, scopedQuery, summary } from '../scoped-model.js';

export function scopedReadTests(t: Conformance): void {
  let storage: SyncStorage;
  beforeEach(() => {
    storage = t.storage;
  });

  describe('scoped reads', () => {
    /** Reads one page and holds it to the model; returns it. */
    async function expectPage(history: ScopedHistory, checkpoint: number, query: ScopedQuery): Promise<ScopedPage> {
      const page = await storage.getScopedChanges(checkpoint, query);
      expect(summary(page), `from ${checkpoint}: ${JSON.stringify(query)}`).toEqual(history.page(checkpoint, query));
      return page;
    }
    const heldAt = (scope: ScopeSelector | null, through: number) => ({ scope: parseScope(scope), through });

    it('reads only the heads in scope, in order, in pages bounded by count and by bytes, with the checkpoint moving on', async () => {
      const h = new ScopedHistory(storage);
      await h.write('a1', { crewId: 'a', text: 'x'.repeat(100) });
      await h.write('b1', { crewId: 'b' });
      await h.write('n1', { crewId: 'a' }, 'notes');
      await h.write('a2', { crewId: 'a', text: 'y'.repeat(300) });
      await h.write('m1', { region: 'a' });
      await h.write('a3', { crewId: 'a' });
      await h.write('b2', { crewId: 'b', text: 'z'.repeat(1000) });
      const inScope = ['a1', 'a2', 'a3'].map((id) => h.head(id)!);

      const all = await expectPage(h, 0, scopedQuery(0, { crewId: 'a' }));
      expect(changesOf(all)).toEqual(inScope.map((w) => asChange(w.event, w.seq)));
      expect(all.some((change) => 'leave' in change)).toBe(false);
      expect(all.through).toBe(h.latest());
      expect(all.cutByBytes ?? false).toBe(false);

      // By count: a full page moves the checkpoint to its last change; the last page to the latest sequence.
      const first = await expectPage(h, 0, scopedQuery(0, { crewId: 'a' }, { limit: 2 }));
      expect(ids(first)).toEqual([inScope[0]!.event.id, inScope[1]!.event.id]);
      expect(first.through).toBe(inScope[1]!.seq);
      const second = await expectPage(h, first.through, scopedQuery(0, { crewId: 'a' }, { limit: 2 }));
      expect(ids(second)).toEqual([inScope[2]!.event.id]);
      expect(second.through).toBe(h.latest());

      // By bytes: what fits, a document larger than the bound alone, marked as cut while more follows.
      const maxBytes = documentBytes(inScope[0]!.event.data) + 10;
      const seen: string[] = [];
      let checkpoint = 0;
      const cuts: boolean[] = [];
      for (;;) {
        const page = await expectPage(h, checkpoint, scopedQuery(0, { crewId: 'a' }, { maxBytes }));
        seen.push(...ids(page));
        cuts.push(page.cutByBytes ?? false);
        expect(page.through).toBeGreaterThanOrEqual(checkpoint);
        checkpoint = page.through;
        if (!page.cutByBytes) break;
      }
      expect(seen).toEqual(inScope.map((w) => w.event.id));
      expect(cuts).toEqual([true, true, false]);
      expect(checkpoint).toBe(h.latest());

      // Nothing in scope: an empty page that still moves the checkpoint past what it looked at.
      const none = await expectPage(h, 0, scopedQuery(0, { crewId: 'nobody' }));
      expect([...none]).toEqual([]);
      expect(none.through).toBe(h.latest());
      expect((await storage.getScopedChanges(0, scopedQuery(0, { crewId: 'a' }, { limit: 0 }))).through).toBe(0);
      // No scope at all: every head of the collection.
      expect(ids(await expectPage(h, 0, scopedQuery(0, null)))).toEqual(['a1', 'b1', 'a2', 'm1', 'a3', 'b2'].map((id) => h.idOf(id)));
    });

    it('catches an unchanged scope up: changes and deletes in scope, leaves for documents that moved out, nothing for documents never in it', async () => {
      const h = new ScopedHistory(storage);
      await h.write('a1', { crewId: 'a' });
      await h.write('a2', { crewId: 'a' });
      await h.write('b1', { crewId: 'b' });
      await h.write('gone', { crewId: 'a' });
      await h.write('was', { crewId: 'b' });
      await h.remove('was');
      const synced = (await expectPage(h, 0, scopedQuery(0, { crewId: 'a' }))).through;

      await h.write('a1', { crewId: 'b' }); // moved out
      await h.write('b1', { crewId: 'c' }); // never in scope, changed
      await h.write('a2', { crewId: 'a', v: 2 }); // changed in scope
      await h.write('a4', { crewId: 'a' }); // new in scope
      await h.remove('gone'); // deleted in scope
      await h.write('x1', { crewId: 'x' }); // new, never in scope
      await h.write('was', { crewId: 'x' }, 'todos', 'insert'); // deleted before, back out of scope

      const page = await expectPage(h, synced, scopedQuery(synced, { crewId: 'a' }));
      expect(page.map((change) => [change.documentId, change.op, change.leave === true])).toEqual([
        ['a1', 'update', true],
        ['a2', 'update', false],
        ['a4', 'insert', false],
        ['gone', 'delete', false],
      ]);
      // A leave is the head event itself, marked.
      expect(changesOf([page[0]!])).toEqual([asChange(h.head('a1')!.event, h.head('a1')!.seq, true)]);
      expect(page.through).toBe(h.latest());
      // Caught up: nothing more, and the checkpoint stays.
      const after = await expectPage(h, page.through, scopedQuery(page.through, { crewId: 'a' }));
      expect([...after]).toEqual([]);
      expect(after.through).toBe(page.through);
    });

    it('on a scope change sends only the difference: documents new to the reader and changes since, not those it held in both scopes', async () => {
      const h = new ScopedHistory(storage);
      await h.write('an', { crew: 'a', region: 'n' }); // held in both
      await h.write('as', { crew: 'a', region: 's' }); // new scope only: sent
      await h.write('bn', { crew: 'b', region: 'n' }); // old scope only: the reader drops it itself
      await h.write('bs', { crew: 'b', region: 's' }); // neither
      await h.write('cn', { crew: 'a', region: 'n' }); // held in both, then moves out of the new scope
      await h.write('ds', { crew: 'a', region: 's' }); // new scope only, moves out before it was sent: a leave all the same
      const old = (await expectPage(h, 0, scopedQuery(0, { region: 'n' }))).through;

      await h.write('an2', { crew: 'a', region: 'n' }); // new in both
      await h.write('cn', { crew: 'c', region: 'n' });
      await h.write('ds', { crew: 'c', region: 's' });
      await h.write('bn', { crew: 'b', region: 'n', v: 2 });

      const query = scopedQuery(0, { crew: 'a' }, { held: heldAt({ region: 'n' }, old) });
      const page = await expectPage(h, 0, query);
      expect(page.map((change) => [change.documentId, change.leave === true])).toEqual([
        ['as', false],
        ['an2', false],
        ['cn', true],
        // A version of it before its head was in the new scope: the reader might hold it (from a live message, or as
        // its own write), so it is told to drop it; a leave for a document it does not hold costs it nothing.
        ['ds', true],
      ]);
      // In pages of one, the same rows.
      const rows: string[] = [];
      for (let checkpoint = 0; ; ) {
        const one = await expectPage(h, checkpoint, { ...query, limit: 1 });
        rows.push(...one.map((change) => change.documentId));
        checkpoint = one.through;
        if (one.length < 1) break;
      }
      // Paged, the same rows, and a leave for `ds` too: once the checkpoint passed the version it had at the
      // old checkpoint, the reader may have been sent it (it would have, had it not moved before it was read).
      expect(rows).toEqual(['as', 'an2', 'cn', 'ds']);
    });

    it('sends the leave of a document that moved out while a catch-up was cut into pages', async () => {
      // The reader holds the scope through `synced`, and keeps holding it there until a page ends its catch-up.
      const h = new ScopedHistory(storage);
      await h.write('d1', { crewId: 'a' });
      await h.write('d2', { crewId: 'a' });
      const reader = new ScopedReader(storage, parseScope({ crewId: 'a' }));
      await reader.finish();
      await h.write('d1', { crewId: 'b' }); // out of scope: the version after the checkpoint the next page starts from...
      await h.write('d2', { crewId: 'a', n: 1 });
      await h.write('d1', { crewId: 'c' }); // ...and out again
      expect(await reader.page(1)).toBe(false);
      expect([...reader.documents.keys()]).toEqual(['d1', 'd2']);
      expect(await reader.page(1)).toBe(false);
      expect([...reader.documents.keys()]).toEqual(['d2']);
      await reader.finish();

      // The same on a scope change: a document sent in the first pages, then moved out, is left.
      await h.write('e1', { crewId: 'x', region: 's' });
      await h.write('e2', { crewId: 'x', region: 's' });
      await reader.finish();
      reader.changeScope(parseScope({ region: 's' }));
      await h.write('f1', { crewId: 'x', region: 's' });
      expect(await reader.page(1)).toBe(false); // e1, sent: the old scope did not hold it
      await h.write('e1', { crewId: 'x', region: 'n' });
      await reader.finish();
      expect([...reader.documents.keys()].sort()).toEqual(['e2', 'f1']);
    });

    it('in a catch-up from nothing, sends no leave for a head from before it began, and one for a head after', async () => {
      const h = new ScopedHistory(storage);
      await h.write('d1', { crewId: 'a' });
      await h.write('d2', { crewId: 'a' });
      await h.write('d3', { crewId: 'a' });
      await h.write('d1', { crewId: 'b' }); // moved out before the catch-up began: no page sent the reader d1
      const start = h.latest();
      const first = await expectPage(h, 0, scopedQuery(0, { crewId: 'a' }, { start, limit: 1 }));
      expect(first.map((change) => change.documentId)).toEqual(['d2']);
      await h.write('d2', { crewId: 'b' }); // moved out after the reader was sent it
      const second = await expectPage(h, first.through, scopedQuery(0, { crewId: 'a' }, { start, limit: 10 }));
      expect(second.map((change) => [change.documentId, change.leave === true])).toEqual([['d3', false], ['d2', true]]);
      // Without its start the catch-up judges d1 too, and leaves it (a leave of what is not held does no harm, at a cost).
      const judged = await expectPage(h, first.through, scopedQuery(0, { crewId: 'a' }, { limit: 10 }));
      expect(judged.filter((change) => change.leave).map((change) => change.documentId)).toEqual(['d1', 'd2']);
    });

    it('still sends a leave when compaction removed the version the reader held', async () => {
      const h = new ScopedHistory(storage);
      await h.write('a1', { crewId: 'a' });
      await h.write('a2', { crewId: 'a' });
      await h.write('b1', { crewId: 'b' });
      const synced = (await expectPage(h, 0, scopedQuery(0, { crewId: 'a' }))).through;
      await h.write('a1', { crewId: 'b' });
      await h.write('a1', { crewId: 'c' });
      await h.write('x1', { crewId: 'x' });
      await h.compact(h.latest() + 1);
      expect(await storage.getEventsAfter(0)).toHaveLength(4);

      const page = await expectPage(h, synced, scopedQuery(synced, { crewId: 'a' }));
      expect(page.map((change) => [change.documentId, change.leave === true])).toEqual([['a1', true]]);
      // A document whose version at the checkpoint is gone may or may not have been held: it gets a leave too.
      await h.write('b1', { crewId: 'b', v: 2 });
      await h.compact(h.latest() + 1);
      const more = await expectPage(h, synced, scopedQuery(synced, { crewId: 'a' }));
      expect(more.map((change) => [change.documentId, change.leave === true])).toEqual([['a1', true], ['b1', true]]);
      // A reader that held nothing yet gets no leaves, compacted or not.
      expect(ids(await expectPage(h, 0, scopedQuery(0, { crewId: 'a' })))).toEqual([h.idOf('a2')]);
    });

    it('compares as matchesScope does: JSON types strictly, missing fields match nothing, strings by code point, numbers by value', async () => {
      const h = new ScopedHistory(storage);
      const values: Record<string, unknown> = {
        str1: '1', num1: 1, bool: true, strTrue: 'true', missing: undefined, nul: null, list: [1], object: { x: 1 },
        half: 1.5, negative: -0.5, huge: 2 ** 60, exp: 1e21, tiny: 1e-7, empty: '', a: 'a', ab: 'ab', highBmp: '\uffff',
        privateUse: '\ue000', emoji: '😀', clef: '𝄞', accent: 'é', no: false,
      };
      for (const [id, v] of Object.entries(values)) await h.write(id, v === undefined ? { other: 1 } : { v });
      const cases: [ScopeSelector, string[] | undefined][] = [
        [{ v: '1' }, ['str1']],
        [{ v: 1 }, ['num1']],
        [{ v: true }, ['bool']],
        [{ v: false }, ['no']],
        [{ v: 'true' }, ['strTrue']],
        [{ v: { $in: ['1', true, 1.5] } }, ['str1', 'bool', 'half']],
        [{ v: { $gt: '\uffff' } }, ['emoji', 'clef']], // above every BMP character, as UTF-8 and code points order them
        [{ v: { $lt: '😀' } }, ['str1', 'strTrue', 'empty', 'a', 'ab', 'highBmp', 'privateUse', 'clef', 'accent']],
        [{ v: { $gte: 'a', $lt: 'b' } }, ['a', 'ab']],
        [{ v: { $gt: '' } }, undefined],
        [{ v: { $gte: 1 } }, ['num1', 'half', 'huge', 'exp']],
        [{ v: { $lt: 1 } }, ['negative', 'tiny']],
        [{ v: { $gt: 2 ** 60 - 1e5, $lte: 1e21 } }, ['huge', 'exp']],
        [{ v: { $eq: 1e-7 } }, ['tiny']],
        [{ other: 1, v: 1 }, []],
      ];
      for (const [selector, expected] of cases) {
        const scope = parseScope(selector);
        const model = h.written.filter((w) => matchesScope(scope, w.event.data)).map((w) => w.event.documentId);
        if (expected) expect(model, JSON.stringify(selector)).toEqual(expected); // the model is matchesScope
        const page = await expectPage(h, 0, scopedQuery(0, selector));
        expect(page.map((change) => change.documentId), JSON.stringify(selector)).toEqual(model);
      }
    });

    it('indexes scope fields idempotently, and reads the same with the indexes as without', async () => {
      const h = new ScopedHistory(storage);
      for (let i = 0; i < 30; i++) await h.write(`d${i % 12}`, { crewId: `c${i % 3}`, region: i % 2 ? 'n' : 's', n: i });
      const queries = [
        scopedQuery(0, { crewId: 'c1' }),
        scopedQuery(0, { crewId: { $in: ['c0', 'c2'] }, region: 'n' }, { limit: 3 }),
        scopedQuery(10, { crewId: 'c1' }),
        scopedQuery(10, { crewId: 'c2', n: { $gt: 5 } }, { maxBytes: 40 }),
        scopedQuery(0, { region: 's' }, { held: heldAt({ crewId: 'c0' }, 12) }),
      ];
      const before = await Promise.all(queries.map((query) => storage.getScopedChanges(query.held.through, query)));
      await storage.indexScopeFields({ todos: ['crewId', 'region'], notes: ['crewId'], 'odd-name$1': ['x'] });
      await storage.indexScopeFields({ todos: ['crewId', 'region'], notes: ['crewId'] });
      await Promise.all([storage.indexScopeFields({ todos: ['crewId', 'n'] }), storage.indexScopeFields({ todos: ['crewId'] })]);
      await storage.indexScopeFields({});
      for (const [i, query] of queries.entries()) {
        const page = await expectPage(h, query.held.through, query);
        expect(summary(page)).toEqual(summary(before[i]!));
      }
      await expect(storage.indexScopeFields({ todos: ["x') ; DROP TABLE heads; --"] })).rejects.toThrow();
      expect(await storage.countEvents()).toBe(30);
    });

    it('answers as the model built on matchesScope does, for random documents, scopes, checkpoints, compaction and pages (randomized)', async () => {
      await fc.assert(
        fc.asyncProperty(scopedScenario, async ({ steps, queries, index }) => {
          const under = await t.open();
          try {
            await under.storage.init();
            if (index) await under.storage.indexScopeFields({ todos: [...SCOPE_FIELDS] });
            const h = new ScopedHistory(under.storage);
            await playSteps(h, steps);
            const seqs = [0, ...h.written.map((w) => w.seq)];
            for (const { checkpointPick, heldPick, startPick, scope, heldScope, limit, maxBytes } of queries) {
              const checkpoint = seqs[checkpointPick % seqs.length]!;
              const query: ScopedQuery = {
                collection: 'todos',
                scope: parseScope(scope),
                held: heldPick === null ? { scope: parseScope(scope), through: checkpoint } : { scope: parseScope(heldScope), through: seqs[heldPick % seqs.length]! },
                ...(startPick === null ? {} : { start: seqs[startPick % seqs.length]! }),
                limit,
                maxBytes,
              };
              // Every page from the checkpoint to the end, each as the model answers it.
              for (let cursor = checkpoint, pages = 0; ; pages++) {
                const page = await under.storage.getScopedChanges(cursor, query);
                expect(summary(page), `page ${pages} from ${cursor}: ${JSON.stringify(query)}`).toEqual(h.page(cursor, query));
                if (page.through === cursor && page.length === 0) break;
                cursor = page.through;
                if (!page.cutByBytes && (limit === undefined || page.length < limit)) break;
              }
            }
          } finally {
            await under.cleanup();
          }
        }),
        { seed: FC_SEED, numRuns: 30, endOnFailure: true },
      );
    }, 180_000);

    it('brings a paging reader to exactly the documents in its scope, with writes, compaction and scope changes between its pages (randomized)', async () => {
      await fc.assert(
        fc.asyncProperty(readerScenario, async ({ rounds, index }) => {
          const under = await t.open();
          try {
            await under.storage.init();
            if (index) await under.storage.indexScopeFields({ todos: [...SCOPE_FIELDS] });
            const h = new ScopedHistory(under.storage);
            const reader = new ScopedReader(under.storage, parseScope(rounds[0]!.scope));
            for (const round of rounds) {
              await playSteps(h, round.steps);
              if (round.read) await reader.page(round.read.limit, round.read.maxBytes);
              if (round.changeScope) {
                await reader.finish();
                reader.changeScope(parseScope(round.scope));
              }
            }
            await reader.finish();
            const expected = new Map<string, Data>();
            for (const w of h.written) {
              if (w.event.collection !== 'todos' || h.head(w.event.documentId) !== w) continue;
              if (w.event.op !== 'delete' && matchesScope(reader.scope, w.event.data)) expected.set(w.event.documentId, w.event.data);
            }
            const json = (documents: Map<string, Data>) =>
              JSON.parse(JSON.stringify(Object.fromEntries([...documents].sort(([a], [b]) => (a < b ? -1 : 1))))) as unknown;
            expect(json(reader.documents)).toEqual(json(expected));
          } finally {
            await under.cleanup();
          }
        }),
        { seed: FC_SEED, numRuns: 60, endOnFailure: true },
      );
    }, 180_000);
  });
}
