import { afterEach, describe, expect, it, vi } from 'vitest';
import type { PendingEntry } from '../src/client/documents.js';
import type { MetaWrite } from '../src/client/meta-store.js';
import { PAGE_BYTES, PAGE_SIZE, PendingLog, type StoredPage } from '../src/client/pending-log.js';

const entry = (key: string, documentId: string): PendingEntry => ({
  key,
  sent: false,
  event: { id: `event-${documentId}-0000`, collection: 'todos', documentId, op: 'insert', data: { id: documentId }, baseEventId: null, hlc: '000000000000001-000000-c' },
});

/** Entries as one stored page holds them. */
const pageOf = (entries: readonly PendingEntry[]): StoredPage => ({ key: entries[0]!.key, entries: entries.map(({ key, event }) => ({ key, event })) });

afterEach(() => vi.restoreAllMocks());

describe('pending log keys', () => {
  it('never reuse a key after a restart, even when the clock reads the same or an earlier millisecond', () => {
    vi.spyOn(Date, 'now').mockReturnValue(1_700_000_000_000);
    const first = new PendingLog();
    const keys = [first.nextKey(), first.nextKey(), first.nextKey()];
    const restarted = new PendingLog([pageOf(keys.map((key, i) => entry(key, `d${i}`)))]);
    const next = restarted.nextKey();
    expect(keys).not.toContain(next);
    expect(next > keys[2]!).toBe(true);
    vi.spyOn(Date, 'now').mockReturnValue(1_699_999_999_000); // the clock stepped back
    expect(restarted.nextKey() > next).toBe(true);
  });

  it('count entries up to the persisted sent watermark as sent', () => {
    const log = new PendingLog([pageOf([entry('000000000000001-000000000', 'a'), entry('000000000000002-000000000', 'b')])], '000000000000001-000000000');
    expect(log.all().map((e) => e.sent)).toEqual([true, false]);
    expect(log.nextKey() > '000000000000002-000000000').toBe(true);
  });
});

/** What MetaStore.write would store for these writes: the last write of each id, its value evaluated once. */
function stored(writes: readonly MetaWrite[]): Map<string, unknown> {
  const last = new Map(writes.map((write) => [write.id, write]));
  return new Map([...last].map(([id, write]) => [id, typeof write.value === 'function' ? (write.value as () => unknown)() : write.value]));
}

describe('pending log pages', () => {
  const keyOf = (i: number) => `${String(i).padStart(15, '0')}-000000000`;

  it('store the entries added before one write in pages of PAGE_SIZE, and start a new page after it', () => {
    const log = new PendingLog();
    const count = PAGE_SIZE * 2 + 5;
    const first = stored(Array.from({ length: count }, (_, i) => log.add(entry(keyOf(i + 1), `d${i}`))));
    expect(first.size).toBe(3);
    expect([...first.values()].map((page) => (page as StoredPage).entries.length)).toEqual([PAGE_SIZE, PAGE_SIZE, 5]);
    // The last page was written: the next entry does not rewrite it.
    const second = stored([log.add(entry(keyOf(count + 1), 'late'))]);
    expect([...second.values()].map((page) => (page as StoredPage).entries.map((e) => e.key))).toEqual([[keyOf(count + 1)]]);
  });

  it('close a page at PAGE_BYTES of JSON, so that a page of large documents is not rewritten whole by every smaller batch', () => {
    const log = new PendingLog();
    // Each entry's JSON bound is about three tenths of PAGE_BYTES (a character counts as six at most).
    const large = (i: number) => {
      const e = entry(keyOf(i + 1), `d${i}`);
      return { ...e, event: { ...e.event, data: { id: `d${i}`, text: 'x'.repeat(Math.floor(PAGE_BYTES / 20)) } } };
    };
    const pages = stored(Array.from({ length: 7 }, (_, i) => log.add(large(i))));
    expect([...pages.values()].map((page) => (page as StoredPage).entries.length)).toEqual([3, 3, 1]);
    // One entry larger than a page has a page of its own.
    const huge = entry(keyOf(100), 'huge');
    const alone = stored([log.add({ ...huge, event: { ...huge.event, data: { text: 'x'.repeat(PAGE_BYTES) } } }), log.add(entry(keyOf(101), 'small'))]);
    expect([...alone.values()].map((page) => (page as StoredPage).entries.length)).toEqual([1, 1]);
  });

  it('let go of removed entries also behind an entry that stays (one held back by a manual conflict), and push past it in key order', () => {
    const log = new PendingLog();
    log.add(entry(keyOf(1), 'held'));
    const held = log.all()[0]!;
    let next = 2;
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 500; i++, next++) log.add(entry(keyOf(next), `d${next}`));
      const batch = log.head(500, (e) => e === held);
      expect(batch[0]!.key > held.key && batch.every((e) => e !== held)).toBe(true);
      log.markSent(batch);
      for (const e of batch) log.remove(e);
    }
    expect(log.size).toBe(1);
    expect(log.all()).toEqual([held]);
    // What the log keeps in memory besides its entries (peeked at: nothing else shows it).
    expect((log as unknown as { order: unknown[] }).order.length).toBeLessThan(2 * 1024 + 500);
    log.add(entry(keyOf(next), 'after'));
    expect(log.all().map((e) => e.event.documentId)).toEqual(['held', 'after']);
    expect(log.head(10).map((e) => e.event.documentId)).toEqual(['held', 'after']);
  });

  it('rewrite a page without the entries removed from it, and delete it once it is empty', () => {
    const log = new PendingLog();
    const entries = Array.from({ length: 3 }, (_, i) => entry(keyOf(i + 1), `d${i}`));
    const [pageId] = stored(entries.map((e) => log.add(e))).keys();
    const all = log.all();
    const afterOne = stored([log.remove(all[0]!)]);
    expect((afterOne.get(pageId!) as StoredPage).entries.map((e) => e.event.documentId)).toEqual(['d1', 'd2']);
    const afterAll = stored([log.remove(all[1]!), log.remove(all[2]!)]);
    expect(afterAll.get(pageId!)).toBeUndefined();
    expect(afterAll.has(pageId!)).toBe(true);
    expect(log.size).toBe(0);
  });

  it('update an entry in place while its page is not written yet', () => {
    const log = new PendingLog();
    const writes = [1, 2].map((i) => log.add(entry(keyOf(i), `d${i}`)));
    const target = log.forDocument('todos', 'd2')[0]!;
    writes.push(...log.update(target, { ...target.event, op: 'update', data: { id: 'd2', title: 'new' }, patch: [] }));
    const pages = stored(writes);
    expect(pages.size).toBe(1);
    expect(([...pages.values()][0] as StoredPage).entries.map((e) => e.event.data)).toEqual([{ id: 'd1' }, { id: 'd2', title: 'new' }]);
  });

  it('move an updated entry out of a written page it shares, so that later updates rewrite it alone', () => {
    const log = new PendingLog();
    const first = stored([1, 2, 3].map((i) => log.add(entry(keyOf(i), `d${i}`))));
    const target = log.forDocument('todos', 'd2')[0]!;
    const moved = stored(log.update(target, { ...target.event, op: 'update', data: { id: 'd2', title: 'new' }, patch: [] }));
    expect([...moved.values()].map((page) => (page as StoredPage).entries.map((e) => e.event.documentId))).toEqual([['d2'], ['d1', 'd3']]);
    const again = stored(log.update(target, { ...target.event, data: { id: 'd2', title: 'newer' } }));
    expect([...again.values()].map((page) => (page as StoredPage).entries.map((e) => e.event.data))).toEqual([[{ id: 'd2', title: 'newer' }]]);

    // Read back in key order, once, with the later content; also if only the new page was written (a crash
    // between the two writes), the entry's old copy in the shared page giving way to it.
    const all = new Map([...first, ...moved, ...again]);
    const crashed = new Map([...first, ...[...again].filter(([id]) => !first.has(id))]);
    for (const storedPages of [all, crashed]) {
      const reread = new PendingLog(storedPages.values() as Iterable<StoredPage>);
      expect(reread.all().map((e) => [e.event.documentId, e.event.data.title])).toEqual([
        ['d1', undefined],
        ['d2', 'newer'],
        ['d3', undefined],
      ]);
      expect(reread.forDocument('todos', 'd2').map((e) => e.event.data.title)).toEqual(['newer']);
    }
  });

  it('read back what they stored, the entries up to the watermark as sent', () => {
    const log = new PendingLog();
    const pages = stored([1, 2, 3].map((i) => log.add(entry(keyOf(i), `d${i}`))));
    const reloaded = new PendingLog(pages.values() as Iterable<StoredPage>, keyOf(1));
    expect(reloaded.all().map((e) => [e.event.documentId, e.sent])).toEqual([
      ['d1', true],
      ['d2', false],
      ['d3', false],
    ]);
    // An entry of a loaded page is removed from that page.
    const rewritten = stored([reloaded.remove(reloaded.forDocument('todos', 'd2')[0]!)]);
    expect([...rewritten.values()].map((page) => (page as StoredPage).entries.map((e) => e.event.documentId))).toEqual([['d1', 'd3']]);
  });

  it('leave alone an entry of a log that was read again since (a tab took the lead meanwhile)', () => {
    const before = new PendingLog();
    const old = entry(keyOf(1), 'd1');
    const pages = stored([before.add(old)]);
    const reread = new PendingLog(pages.values() as Iterable<StoredPage>);
    const writes = stored([reread.remove(old), ...reread.update(old, { ...old.event, op: 'delete' })]);
    expect([...writes.values()].every((value) => value === undefined)).toBe(true);
    expect(reread.all().map((e) => e.event)).toEqual([old.event]);
  });

  it('after a move cut short by a crash, have the leader rewrite the page with the stale copy, so it never comes back', () => {
    const storage = new Map<string, unknown>();
    /** What MetaStore.write leaves in storage; `reached` says which rows got there before a crash. */
    const apply = (writes: readonly MetaWrite[], reached: (id: string) => boolean = () => true) => {
      for (const [id, value] of stored(writes)) {
        if (!reached(id)) continue;
        if (value === undefined) storage.delete(id);
        else storage.set(id, value);
      }
    };
    const log = new PendingLog();
    apply([1, 2].map((i) => log.add(entry(keyOf(i), `d${i}`))));
    const target = log.forDocument('todos', 'd1')[0]!;
    apply(log.update(target, { ...target.event, op: 'update', data: { id: 'd1', title: 'new' } }), (id) => id.endsWith('+'));

    const afterCrash = new PendingLog(storage.values() as Iterable<StoredPage>);
    expect(afterCrash.forDocument('todos', 'd1').map((e) => e.event.data.title)).toEqual(['new']);
    apply(afterCrash.repairs());
    expect(afterCrash.repairs()).toEqual([]);
    // The moved entry is sent, acknowledged and leaves the log; a restart must not bring the old copy back.
    const moved = afterCrash.forDocument('todos', 'd1')[0]!;
    afterCrash.markSent([moved]);
    apply([afterCrash.remove(moved)]);
    const reread = new PendingLog(storage.values() as Iterable<StoredPage>, afterCrash.sentThrough);
    expect(reread.all().map((e) => e.event.documentId)).toEqual(['d2']);
  });
});
