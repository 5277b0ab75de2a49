/**
 * Review: resolveDocument collects shadowWrite(remote) — which now also calls
 * acked.forget() and so drops the acknowledged version from memory at once —
 * and then, when the app wrote the document meanwhile (writeLocal refused),
 * throws those writes away and settles again. The second round no longer
 * finds the acknowledged version: the conflict's base is lost (null here),
 * and a three-way merge against a null base takes every local field as a
 * local change, overwriting the other client's concurrent edit.
 */
import type { RxDatabase } from 'rxdb';
import { afterEach, describe, expect, it } from 'vitest';
import { MetaStore } from '../src/client/meta-store.js';
import { Replicator } from '../src/client/replicator.js';
import { merge, strategyFor, type Conflict } from '../src/client/strategies/index.js';
import { formatHlc } from '../src/shared/hlc.js';
import { createLogger } from '../src/shared/logger.js';
import { openDatabase, uniqueName } from './helpers.js';

type Db = Awaited<ReturnType<typeof openDatabase>>;
const logger = createLogger({ enabled: false, level: 'error' }, 'test');
const opened: Db[] = [];

afterEach(async () => {
  await Promise.all(opened.splice(0).map((db) => db.close()));
});

describe('review: conflict settled again after the app wrote meanwhile', () => {
  it('keeps the acknowledged version as the base of the second round', async () => {
    const db = await openDatabase(uniqueName('refused'));
    opened.push(db);
    const meta = await MetaStore.open(db as unknown as RxDatabase);
    const bases: (Conflict['base'])[] = [];
    let round = 0;
    const resolver = async (conflict: Conflict) => {
      bases.push(conflict.base);
      // The app writes the document while the first round is being settled.
      if (round++ === 0) await (await db.todos.findOne('d').exec())!.patch({ priority: 1 });
      const resolution = merge(conflict);
      if (resolution.action === 'write') return resolution.data;
      if (resolution.action === 'keep-remote') return conflict.remote!.data;
      return conflict.local.data;
    };
    const replicator = new Replicator(db as unknown as RxDatabase, meta, () => strategyFor(resolver), logger);
    await replicator.load();

    // d is created here and acknowledged as sequence 1.
    await db.todos.insert({ id: 'd', title: 'original', done: false });
    await replicator.recordLocalChanges('todos', ['d']);
    const [created] = await replicator.takeBatch(10);
    await replicator.applyPushResults([created!], [{ id: created!.event.id, status: 'accepted', seq: 1 }]);

    // This client edits the title; another client meanwhile set done (sequence 2).
    await (await db.todos.findOne('d').exec())!.patch({ title: 'mine' });
    await replicator.recordLocalChanges('todos', ['d']);
    const [edit] = await replicator.takeBatch(10);
    await replicator.applyPushResults([edit!], [{
      id: edit!.event.id,
      status: 'conflict',
      head: {
        collection: 'todos',
        documentId: 'd',
        seq: 2,
        eventId: 'other-done',
        data: { id: 'd', title: 'original', done: true },
        deleted: false,
        hlc: formatHlc({ millis: 1, counter: 0, node: 'other' }),
        clientId: 'other',
      },
    }]);

    expect(round).toBe(2);
    expect(bases[0]?.data).toEqual({ id: 'd', title: 'original', done: false });
    expect(bases[1]?.data).toEqual({ id: 'd', title: 'original', done: false });
    // Both edits survive the merge: the title from here, done from the other client.
    const doc = (await db.todos.findOne('d').exec())!.toJSON();
    expect(doc).toMatchObject({ title: 'mine', done: true, priority: 1 });
  });
});
