import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { HLC_PATTERN, HybridLogicalClock, PUSHED_HLC_PATTERN, compareHlc, formatHlc, parseHlc, withNode, withoutNode } from '../src/shared/hlc.js';
import { randomId } from '../src/shared/ids.js';
import { DocumentMap } from '../src/shared/document-map.js';
import { frozenJsonCopy, jsonLengthBound, withFields } from '../src/shared/json.js';
import { fromPullPage, fromPushRows, pullPageSchema, pushRowsMessageSchema, spanSet, toPullPage, toPushRows, toSpans, type StoredEvent, type SyncEvent } from '../src/shared/protocol/index.js';

describe('hybrid logical clock', () => {
  it('formats and parses back, and sorts as strings in clock order', () => {
    fc.assert(
      fc.property(
        fc.record({ millis: fc.integer({ min: 0, max: 2 ** 45 }), counter: fc.integer({ min: 0, max: 36 ** 6 - 1 }), node: fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !s.includes('-')) }),
        fc.record({ millis: fc.integer({ min: 0, max: 2 ** 45 }), counter: fc.integer({ min: 0, max: 36 ** 6 - 1 }), node: fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !s.includes('-')) }),
        (a, b) => {
          expect(parseHlc(formatHlc(a))).toEqual(a);
          const byParts = a.millis - b.millis || a.counter - b.counter || (a.node < b.node ? -1 : a.node > b.node ? 1 : 0);
          expect(Math.sign(compareHlc(formatHlc(a), formatHlc(b)))).toBe(Math.sign(byParts));
        },
      ),
      { seed: 42 },
    );
  });

  it('never goes backwards, even when the wall clock does', () => {
    let wall = 1000;
    const clock = new HybridLogicalClock('a', () => wall);
    const seen = [clock.tick()];
    wall = 900;
    seen.push(clock.tick(), clock.tick());
    wall = 1000;
    seen.push(clock.tick());
    expect([...seen].sort()).toEqual(seen);
    expect(new Set(seen).size).toBe(seen.length);
  });

  it('moves past a received remote clock, but not past one implausibly far ahead', () => {
    const clock = new HybridLogicalClock('a', () => 1000);
    clock.receive(formatHlc({ millis: 5000, counter: 3, node: 'b' }));
    expect(compareHlc(clock.tick(), formatHlc({ millis: 5000, counter: 3, node: 'b' }))).toBeGreaterThan(0);
    clock.receive(formatHlc({ millis: 1000 + 48 * 3600 * 1000, counter: 0, node: 'liar' }));
    expect(parseHlc(clock.tick()).millis).toBe(5000);
  });

  it('stamps an event with the time it happened, still after everything seen', () => {
    const clock = new HybridLogicalClock('a', () => 2000);
    expect(parseHlc(clock.tickAt(1500.7))).toMatchObject({ millis: 1500, counter: 0 });
    expect(parseHlc(clock.tickAt(1400))).toMatchObject({ millis: 1500, counter: 1 });
  });
});

describe('clocks pushed without their node', () => {
  it('leave out exactly the given node, and get exactly it back', () => {
    fc.assert(
      fc.property(fc.nat({ max: 2 ** 40 }), fc.nat({ max: 36 ** 6 - 1 }), fc.string({ minLength: 1, maxLength: 40 }), fc.string({ minLength: 1, maxLength: 40 }), (millis, counter, node, other) => {
        const hlc = formatHlc({ millis, counter, node });
        const short = withoutNode(hlc, node);
        expect(short).toMatch(PUSHED_HLC_PATTERN);
        expect(short).not.toMatch(HLC_PATTERN);
        expect(withNode(short, node)).toBe(hlc);
        // Another node is never taken for this one, not even one that ends the same way.
        if (other !== node) expect(withoutNode(hlc, other)).toBe(hlc);
        expect(withNode(hlc, other)).toBe(hlc);
      }),
    );
  });

  it('keep a clock whose node only ends like the given one', () => {
    const hlc = formatHlc({ millis: 1, counter: 2, node: 'client-abc' });
    expect(withoutNode(hlc, 'abc')).toBe(hlc);
    expect(withoutNode(hlc, 'c-abc')).toBe(hlc);
  });
});

describe('pull pages', () => {
  const stored = (i: number, node: string, clientId = node, collection = 'todos'): StoredEvent => ({
    id: `event-${i}-0000`, collection, documentId: `d${i}`, op: 'insert', data: { id: `d${i}` }, baseEventId: null,
    hlc: formatHlc({ millis: 1_700_000_000_000 + i, counter: i, node }), seq: i, clientId, serverTime: 0,
  });

  it('read back as the events they were made of, whatever the mix of collections, nodes and authors', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.constantFrom('a', 'node-b', 'c'), fc.boolean(), fc.constantFrom('todos', 'notes')), { maxLength: 30 }),
        (specs) => {
          const events = specs.map(([node, own, collection], i) => stored(i + 1, node, own ? node : 'author-x', collection));
          const page = pullPageSchema.parse({ ...structuredClone(toPullPage(events)), checkpoint: events.length, hasMore: false });
          expect(fromPullPage(page)).toEqual(events.map(({ baseEventId: _b, serverTime: _t, ...rest }) => rest));
          expect(page.nodes.length).toBe(new Set(specs.map(([node]) => node)).size);
        },
      ),
    );
  });

  it('refuse a row that names a collection or node the page does not list, saying which', () => {
    const page = { ...toPullPage([stored(1, 'a')]), checkpoint: 1, hasMore: false };
    expect(() => fromPullPage({ ...page, events: [page.events[0]!.with(1, 1) as never] })).toThrow(/names collection 1 and clock node 0, but the pull page lists 1 collections and 1 nodes/);
    expect(() => fromPullPage({ ...page, events: [page.events[0]!.with(6, 2) as never] })).toThrow(/names collection 0 and clock node 2/);
  });
});

describe('push rows', () => {
  it('read back as the events they were made of, whatever the mix of collections, clocks, bases and patches', () => {
    const pusher = 'client-1';
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.constantFrom('todos', 'notes'), fc.constantFrom(pusher, 'other'), fc.boolean(), fc.boolean(), fc.constantFrom('insert', 'update', 'delete') as fc.Arbitrary<SyncEvent['op']>), { minLength: 1, maxLength: 30 }),
        (specs) => {
          const events: SyncEvent[] = specs.map(([collection, node, based, patched, op], i) => ({
            id: `event-${i}-0000`, collection, documentId: `d${i}`, op, data: { id: `d${i}`, n: i },
            baseEventId: based ? `event-base-${i}` : null,
            hlc: formatHlc({ millis: 1_700_000_000_000 + i, counter: i, node }),
            ...(patched ? { patch: [{ op: 'replace' as const, path: '/n', value: i }] } : {}),
          }));
          const message = pushRowsMessageSchema.parse(structuredClone(toPushRows(events, pusher)));
          expect(fromPushRows(message, pusher)).toEqual(events);
          expect(message.collections).toEqual([...new Set(specs.map(([collection]) => collection))]);
        },
      ),
    );
  });

  it('refuse a row that names a collection the push does not list, saying which', () => {
    const message = toPushRows([{ id: 'event-1-0000', collection: 'todos', documentId: 'd1', op: 'insert', data: {}, baseEventId: null, hlc: formatHlc({ millis: 1, counter: 0, node: 'c' }) }], 'c');
    expect(() => fromPushRows({ ...message, events: [message.events[0]!.with(1, 1) as never] }, 'c')).toThrow(/events\.0\.1: event event-1-0000 names collection 1, but the push lists 1/);
  });
});

describe('randomId', () => {
  const original = Object.getOwnPropertyDescriptor(globalThis.crypto, 'randomUUID') ?? Object.getOwnPropertyDescriptor(Object.getPrototypeOf(globalThis.crypto), 'randomUUID');
  afterEach(() => {
    if (original) Object.defineProperty(globalThis.crypto, 'randomUUID', original);
  });
  it('makes version 4 ids, also where crypto.randomUUID is missing (plain http pages)', () => {
    const pattern = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
    expect(randomId()).toMatch(pattern);
    Object.defineProperty(globalThis.crypto, 'randomUUID', { value: undefined, configurable: true });
    const ids = Array.from({ length: 1000 }, randomId);
    for (const id of ids) expect(id).toMatch(pattern);
    expect(new Set(ids).size).toBe(1000);
  });
});

describe('document copies', () => {
  // A parsed document may hold a "__proto__" key: it is data, and must stay data in copies.
  const parsed = () => JSON.parse('{"id":"a","__proto__":{"polluted":true},"tags":["x"]}') as Record<string, unknown>;

  it('withFields copies every key as data and adds the fields', () => {
    const copy = withFields(parsed(), { _rev: '1-x' });
    expect(Object.getPrototypeOf(copy)).toBe(Object.prototype);
    expect((copy as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.keys(copy)).toEqual(['id', '__proto__', 'tags', '_rev']);
    expect(JSON.parse(JSON.stringify(copy))).toEqual(JSON.parse('{"id":"a","__proto__":{"polluted":true},"tags":["x"],"_rev":"1-x"}'));
  });

  it('frozenJsonCopy copies deeply, freezes every level and keeps "__proto__" as data', () => {
    const source = parsed();
    const copy = frozenJsonCopy(source);
    expect(copy).not.toBe(source);
    expect(Object.isFrozen(copy) && Object.isFrozen(copy.tags) && Object.isFrozen(copy.__proto__)).toBe(true);
    expect(Object.getPrototypeOf(copy)).toBe(Object.prototype);
    (source.tags as string[]).push('y');
    expect(copy.tags).toEqual(['x']);
    expect(JSON.stringify(copy)).toBe(JSON.stringify(parsed()));
  });
});

describe('sequence spans', () => {
  it('toSpans makes runs into ranges, and spanSet answers membership for exactly those sequences', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(60), { maxLength: 40 }), (sequences) => {
        const spans = toSpans(sequences);
        expect(spans.length).toBeLessThanOrEqual(new Set(sequences).size);
        const has = spanSet(spans);
        for (let seq = 0; seq <= 61; seq++) expect(has(seq)).toBe(sequences.includes(seq));
      }),
    );
    expect(toSpans([5, 1, 2, 3, 9, 3])).toEqual([[1, 3], 5, 9]);
    // Spans from elsewhere may overlap: a wide range is still found around narrower ones inside it.
    expect([10, 55, 100, 101].map(spanSet([[1, 100], [2, 3], [50, 60]]))).toEqual([true, true, true, false]);
  });
});

describe('jsonLengthBound', () => {
  it('is never below the length of the JSON text, whatever the value (escapes, unicode, numbers)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        expect(jsonLengthBound(value)).toBeGreaterThanOrEqual(JSON.stringify(value).length);
      }),
      { numRuns: 500 },
    );
    for (const value of ['"\\\u0000\n', -1.2345678901234567e-308, { '"k"': [null, true, 'é😀'] }]) {
      expect(jsonLengthBound(value)).toBeGreaterThanOrEqual(JSON.stringify(value).length);
    }
  });
});

describe('DocumentMap', () => {
  it('behaves as a map keyed by (collection, document id), whatever characters the two hold', () => {
    // Pairs a joined key would confuse: a separator inside a name must not make two keys one.
    const key = fc.tuple(fc.constantFrom('a', 'a|b', 'b', ''), fc.constantFrom('b', 'c', '|b', 'a|b', ''));
    const operation = fc.oneof(
      fc.record({ kind: fc.constant('set' as const), key, value: fc.integer() }),
      fc.record({ kind: fc.constant('delete' as const), key }),
    );
    fc.assert(
      fc.property(fc.array(operation, { maxLength: 60 }), (operations) => {
        const map = new DocumentMap<number>();
        const model = new Map<string, number>();
        for (const op of operations) {
          const [collection, documentId] = op.key;
          const modelKey = JSON.stringify(op.key);
          if (op.kind === 'set') {
            map.set(collection, documentId, op.value);
            model.set(modelKey, op.value);
          } else {
            expect(map.delete(collection, documentId)).toBe(model.delete(modelKey));
          }
          expect(map.size).toBe(model.size);
          expect(map.get(collection, documentId)).toBe(model.get(modelKey));
          expect(map.has(collection, documentId)).toBe(model.has(modelKey));
        }
        expect([...map.values()].sort()).toEqual([...model.values()].sort());
        map.clear();
        expect(map.size).toBe(0);
        expect([...map.values()]).toEqual([]);
      }),
      { numRuns: 300 },
    );
  });
});
