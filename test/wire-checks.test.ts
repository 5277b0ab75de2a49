/**
 * The quick checks of wire-checks.ts against the schemas they stand in for:
 * a value a check passes must be one its schema accepts and returns
 * unchanged (the message is then used as received), on valid messages and on
 * every kind of broken one; and a check must pass the common valid messages,
 * or it saves nothing.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_NODE_LENGTH, formatHlc, isClockNode } from '../src/shared/hlc.js';
import {
  MAX_DOCUMENT_ID_BYTES,
  ackSchema,
  clientIdSchema,
  clockNodeSchema,
  documentIdSchema,
  eventIdSchema,
  hlcSchema,
  isClientId,
  isDocumentId,
  isEventId,
  isHlc,
  liveMessageSchema,
  parseMessage,
  pullPageSchema,
  pushedEventProblem,
  pushReplySchema,
  pushRowsMessageSchema,
  syncEventSchema,
  type SyncEvent,
} from '../src/shared/protocol/index.js';
import { isLiveMessage, isPullPageAck, isPushRowsMessage, isStoredPushAck } from '../src/shared/wire-checks.js';
import type { z } from 'zod';

/** Characters ids are made of in the wild and at the edges: ASCII, accents, CJK (3 bytes), emoji (a surrogate pair, 4 bytes), RTL text and marks. */
const textUnit = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 1 }) },
  { weight: 1, arbitrary: fc.constantFrom('é', '日', '本', '😀', '👩‍💻', 'ש', 'ل', '\u200f', '\u202e', '\ufeff', '\u00a0', ' ', '-') },
);
const text = (minLength: number, maxLength: number) => fc.array(textUnit, { minLength, maxLength }).map((units) => units.join(''));
const eventId = fc.oneof(fc.uuid(), text(8, 40).filter((id) => id.length <= 128));
/** Document ids, the longest among them: 1024 bytes of ASCII, of CJK (341 characters), of emoji (256 pairs), and of newlines. */
const documentId = fc.oneof(
  text(1, 40),
  fc.constantFrom('x'.repeat(MAX_DOCUMENT_ID_BYTES), '日'.repeat(341) + 'x', '😀'.repeat(256), '\n'.repeat(MAX_DOCUMENT_ID_BYTES), 'line\nbreak\ttab'),
);
const collection = fc.stringMatching(/^[a-zA-Z][a-zA-Z0-9_$-]{0,20}$/);
const node = fc.oneof(fc.uuid(), text(1, 30).filter((s) => s.length <= MAX_NODE_LENGTH));
const time = fc.record({ millis: fc.nat({ max: 2 ** 45 }), counter: fc.nat({ max: 36 ** 6 - 1 }) }).map((t) => formatHlc({ ...t, node: 'n' }).slice(0, -2));
const data = fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 5 });
const operation = fc.constantFrom('insert', 'update', 'delete');
const patch = fc.array(
  fc.oneof(
    fc.record({ op: fc.constantFrom('add', 'replace', 'test'), path: fc.string({ maxLength: 10 }), value: fc.jsonValue({ maxDepth: 1 }) }),
    fc.record({ op: fc.constant('remove'), path: fc.string({ maxLength: 10 }) }),
    fc.record({ op: fc.constantFrom('move', 'copy'), path: fc.string({ maxLength: 10 }), from: fc.string({ maxLength: 10 }) }),
  ),
  { maxLength: 3 },
);

const pushRows = fc.array(collection, { minLength: 1, maxLength: 3 }).chain((collections) =>
  fc.record({
    collections: fc.constant(collections),
    events: fc.array(
      fc.tuple(eventId, fc.nat({ max: collections.length - 1 }), documentId, operation, data, fc.tuple(time, fc.option(node)), fc.nat({ max: 2 }), fc.option(eventId), patch).map(
        ([id, at, doc, op, body, [t, n], tail, base, ops]) => {
          const row: unknown[] = [id, at, doc, op, body, n === null ? t : `${t}-${n}`];
          if (tail >= 1) row.push(base);
          if (tail === 2) row.push(ops);
          return row;
        },
      ),
      { minLength: 1, maxLength: 6 },
    ),
  }),
);

const pushAck = fc.record({ ok: fc.constant(true), results: fc.array(fc.nat({ max: Number.MAX_SAFE_INTEGER }), { maxLength: 6 }) });

const pullPageAck = fc
  .tuple(fc.array(collection, { maxLength: 3 }), fc.array(node, { maxLength: 3 }))
  .chain(([collections, nodes]) =>
    fc.record({
      ok: fc.constant(true),
      collections: fc.constant(collections),
      nodes: fc.constant(nodes),
      events: fc.array(
        fc.tuple(eventId, fc.nat({ max: 4 }), documentId, operation, data, time, fc.nat({ max: 4 }), fc.nat({ max: 2 ** 40 }), fc.option(fc.string({ minLength: 1, maxLength: 128 }))).map((row) =>
          row[8] === null ? row.slice(0, 8) : row,
        ),
        { maxLength: 6 },
      ),
      checkpoint: fc.nat({ max: 2 ** 40 }),
      hasMore: fc.boolean(),
      // A scoped pull's page: its scopes, the documents that left, where its catch-up began.
      scopes: fc.dictionary(collection, fc.jsonValue({ maxDepth: 2 }), { maxKeys: 2 }),
      leaves: fc.array(fc.tuple(documentId, fc.nat({ max: 2 ** 40 })), { maxLength: 3 }),
      start: fc.nat({ max: 2 ** 40 }),
    }, { requiredKeys: ['ok', 'collections', 'nodes', 'events', 'checkpoint', 'hasMore'] }),
  );

const liveMessage = fc.record({
  events: fc.array(
    fc.tuple(eventId, collection, documentId, operation, data, fc.tuple(time, node), fc.nat({ max: 2 ** 40 }), fc.option(fc.string({ minLength: 1, maxLength: 128 }))).map(([id, name, doc, op, body, [t, n], seq, author]) => {
      const event: Record<string, unknown> = { id, collection: name, documentId: doc, op, data: body, hlc: `${t}-${n}`, seq };
      if (author !== null) event.clientId = author;
      return event;
    }),
    { minLength: 1, maxLength: 4 },
  ),
});

/** Every place in a value where a mutation can happen: the value itself and each nested object or array. */
function containers(value: unknown, found: (Record<string, unknown> | unknown[])[] = []): (Record<string, unknown> | unknown[])[] {
  if (typeof value === 'object' && value !== null) {
    found.push(value as Record<string, unknown>);
    for (const inner of Object.values(value)) containers(inner, found);
  }
  return found;
}

/** Strings no id may be, and strings at the edges of what one may be. */
const oddStrings = [
  'a\nb', 'x\u0000y', 'lone \ud800', '\udc00 lone', '\u2028', 'tab\t', '\u007f', '\u0085',
  '日'.repeat(342), '日'.repeat(341) + 'xy', '😀'.repeat(257), '\n'.repeat(1025), 'é'.repeat(512), 'é'.repeat(513),
  '000000000000001-000000-a\nb', '000000000000001-000000-\ud800', '000000000000001-000000-', '000000000000001-000000-😀',
];
const replacement = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(-1, 1.5, 2 ** 53, Number.NaN, Infinity, null, undefined, '', 'x'.repeat(7), 'x'.repeat(129), 'x'.repeat(1025), 'bad name', 'insert', '000000000000001-000000', [], {}),
  fc.constantFrom(...oddStrings),
);

/** A valid message broken in one random place (a field replaced, removed or added, an element appended or dropped), as received. */
function mutated<T>(valid: fc.Arbitrary<T>): fc.Arbitrary<unknown> {
  return fc.tuple(valid, fc.nat(), fc.nat(), fc.constantFrom('replace', 'remove', 'add', 'append', 'drop'), replacement, fc.string({ maxLength: 5 })).map(([message, where, which, how, value, key]) => {
    const copy = structuredClone(message) as unknown;
    const places = containers(copy);
    const place = places[where % places.length]!;
    const keys = Object.keys(place);
    const at = keys.length > 0 ? keys[which % keys.length]! : key;
    if (Array.isArray(place)) {
      if (how === 'append' || how === 'add') place.push(value);
      else if (how === 'drop' || how === 'remove') place.pop();
      else place[which % (place.length + 1)] = value;
    } else if (how === 'remove' || how === 'drop') delete place[at];
    else if (how === 'add' || how === 'append') place[key] = value;
    else place[at] = value;
    // As the wire carries it: through JSON (undefined and NaN turn null or go, an array holds elements only).
    return JSON.parse(JSON.stringify(copy)) as unknown;
  });
}

function holdsToSchema(quick: (value: unknown) => boolean, schema: z.ZodType, value: unknown): void {
  if (!quick(value)) return;
  const result = schema.safeParse(value);
  expect(result.success, `passed by the quick check, refused by the schema: ${JSON.stringify(value)}`).toBe(true);
  expect(result.data).toEqual(value);
}

const cases = [
  { name: 'push', quick: isPushRowsMessage, schema: pushRowsMessageSchema as z.ZodType, valid: pushRows as fc.Arbitrary<unknown> },
  { name: 'answer to a push with every event stored', quick: isStoredPushAck, schema: ackSchema(pushReplySchema), valid: pushAck as fc.Arbitrary<unknown> },
  { name: 'pull page', quick: isPullPageAck, schema: ackSchema(pullPageSchema), valid: pullPageAck as fc.Arbitrary<unknown> },
  { name: 'live message', quick: isLiveMessage, schema: liveMessageSchema as z.ZodType, valid: liveMessage as fc.Arbitrary<unknown> },
];

describe('quick check of a scoped pull page', () => {
  it('leaves to the schema a page whose scopes are binary or a date, which have no keys to refuse', () => {
    const page = { ok: true, collections: [], nodes: [], events: [], checkpoint: 0, hasMore: false };
    expect(isPullPageAck({ ...page, scopes: { todos: { crewId: 'c7' } } })).toBe(true);
    for (const scopes of [Buffer.alloc(0), new ArrayBuffer(0), new Uint8Array(0), new Date(0)]) {
      expect(isPullPageAck({ ...page, scopes })).toBe(false);
      expect(ackSchema(pullPageSchema).safeParse({ ...page, scopes }).success).toBe(false);
    }
  });
});

describe('quick checks of the bulk messages', () => {
  for (const { name, quick, schema, valid } of cases) {
    describe(name, () => {
      it('passes valid messages, which the schema returns unchanged', () => {
        fc.assert(
          fc.property(valid, (value) => {
            expect(quick(value)).toBe(true);
            holdsToSchema(quick, schema, value);
          }),
          { seed: 7, numRuns: 300 },
        );
      });

      it('passes no broken message that the schema would refuse or change', () => {
        let refused = 0;
        fc.assert(
          fc.property(mutated(valid), (value) => {
            if (!quick(value)) refused++;
            holdsToSchema(quick, schema, value);
          }),
          { seed: 11, numRuns: 3000 },
        );
        // The mutations are not all harmless (a value replaced by one of its kind can stay valid), but most are not.
        expect(refused).toBeGreaterThan(1000);
      });

      it('leaves what it refuses to the schema, whose error names the field', () => {
        fc.assert(
          fc.property(mutated(valid), (value) => {
            if (quick(value) || schema.safeParse(value).success) return;
            expect(() => parseMessage(schema, value, name, quick)).toThrow(/^invalid /);
          }),
          { seed: 13, numRuns: 300 },
        );
      });
    });
  }

  it('answers a push with a conflict through the schema', () => {
    const reply = { ok: true, results: [3, { status: 'conflict', head: null }] };
    expect(isStoredPushAck(reply)).toBe(false);
    expect(parseMessage(ackSchema(pushReplySchema), reply, 'reply', isStoredPushAck)).toEqual(reply);
  });

  it('keeps a field a later server adds out of the fast path (the schema drops it)', () => {
    const page = { ok: true, collections: [], nodes: [], events: [], checkpoint: 0, hasMore: false, later: 1 };
    expect(isPullPageAck(page)).toBe(false);
    expect(parseMessage(ackSchema(pullPageSchema), page, 'reply', isPullPageAck)).not.toHaveProperty('later');
  });
});

/** Any string: of any code units (lone surrogates and controls included), of id characters, and the odd ones. */
const anyString = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((code) => String.fromCharCode(code)), maxLength: 20 }),
  text(0, 60),
  fc.constantFrom(...oddStrings, 'x'.repeat(MAX_DOCUMENT_ID_BYTES), '日'.repeat(341), '😀'.repeat(256), 'x'.repeat(128), 'x'.repeat(233), 'x'.repeat(234)),
);

describe('the identifier predicates and their schemas', () => {
  const pairs: [string, (value: unknown) => boolean, z.ZodType][] = [
    ['document id', isDocumentId, documentIdSchema],
    ['event id', isEventId, eventIdSchema],
    ['client id', isClientId, clientIdSchema],
    ['clock node', isClockNode, clockNodeSchema],
    ['clock', isHlc, hlcSchema],
  ];
  for (const [name, predicate, schema] of pairs) {
    it(`${name}: the predicate and the schema give the same verdict on any string`, () => {
      fc.assert(
        fc.property(fc.oneof(anyString, fc.tuple(time, anyString).map(([t, n]) => `${t}-${n}`)), (value) => {
          expect(predicate(value), JSON.stringify(value)).toBe(schema.safeParse(value).success);
        }),
        { seed: 17, numRuns: 3000 },
      );
    });
  }

  it('holds document ids to their bytes of UTF-8, not their characters', () => {
    expect(isDocumentId('x'.repeat(1024))).toBe(true);
    expect(isDocumentId('x'.repeat(1025))).toBe(false);
    expect(isDocumentId('日'.repeat(341))).toBe(true); // 1023 bytes
    expect(isDocumentId('日'.repeat(342))).toBe(false); // 1026 bytes, 342 characters
    expect(isDocumentId('😀'.repeat(256))).toBe(true); // 1024 bytes, 512 UTF-16 units
    expect(documentIdSchema.safeParse('日'.repeat(342)).error?.issues[0]?.message).toBe('a document id is at most 1024 bytes of UTF-8; this one has 1026');
    fc.assert(
      fc.property(anyString, (value) => {
        if (isDocumentId(value)) expect(Buffer.byteLength(value, 'utf8')).toBeLessThanOrEqual(MAX_DOCUMENT_ID_BYTES);
      }),
      { seed: 19, numRuns: 2000 },
    );
  });

  it('keeps NUL and unpaired surrogates out of every id, and control characters out of client ids and clocks', () => {
    for (const bad of ['x\u0000yzzzzzzz', 'lone \ud800zzzzz', '\udc00 lonezzzzz']) {
      expect(isDocumentId(bad) || isEventId(bad) || isClientId(bad) || isClockNode(bad), JSON.stringify(bad)).toBe(false);
    }
    for (const fine of ['line\nbreak', 'tab\tbed', '日本語', 'emoji 😀', 'עברית', '\u202eevil']) expect(isDocumentId(fine), fine).toBe(true);
    for (const bad of ['a\nb', 'a\rb', 'tab\t', '\u007f', '\u0085', '\u2028', '\u2029']) expect(isClientId(bad), JSON.stringify(bad)).toBe(false);
    for (const fine of ['日本語', 'emoji 😀', 'עברית', 'client with spaces', '6f1c-uuid']) expect(isClientId(fine), fine).toBe(true);
    const refusal = clientIdSchema.safeParse('phone\nof-ana').error!.issues[0]!.message;
    expect(refusal).toContain('a client id is the node of a clock');
    expect(refusal).toContain('U+000A at index 5, a line break');
  });

  it('holds each pushed event, made whole, to syncEventSchema: what the shape of a push leaves open, pushedEventProblem checks', () => {
    const event = fc
      .record({ id: eventId, collection, documentId: fc.oneof(documentId, anyString), op: operation, data, hlc: fc.tuple(time, fc.oneof(node, anyString)).map(([t, n]) => `${t}-${n}`), baseEventId: fc.option(eventId) })
      .map((fields) => fields as SyncEvent);
    let refused = 0;
    fc.assert(
      fc.property(event, (value) => {
        const problem = pushedEventProblem(value);
        if (problem) refused++;
        expect(problem === undefined, JSON.stringify(value)).toBe(syncEventSchema.safeParse(value).success);
      }),
      { seed: 23, numRuns: 2000 },
    );
    expect(refused).toBeGreaterThan(200);
  });
});
