/**
 * The quick checks of wire-checks.ts against the schemas they stand in for:
 * a value a check passes must be one its schema accepts and returns
 * unchanged (the message is then used as received), on valid messages and on
 * every kind of broken one; and a check must pass the common valid messages,
 * or it saves nothing.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatHlc } from '../src/shared/hlc.js';
import { ackSchema, liveMessageSchema, parseMessage, pullPageSchema, pushReplySchema, pushRowsMessageSchema } from '../src/shared/protocol.js';
import { isLiveMessage, isPullPageAck, isPushRowsMessage, isStoredPushAck } from '../src/shared/wire-checks.js';
import type { z } from 'zod';

const eventId = fc.oneof(fc.uuid(), fc.string({ minLength: 8, maxLength: 128 }));
const documentId = fc.oneof(fc.string({ minLength: 1, maxLength: 40 }), fc.constant('x'.repeat(1024)));
const collection = fc.stringMatching(/^[a-zA-Z][a-zA-Z0-9_$-]{0,20}$/);
const node = fc.oneof(fc.uuid(), fc.string({ minLength: 1, maxLength: 30 }).filter((s) => !/[\n\r\u2028\u2029]/.test(s)));
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
    }),
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

const replacement = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(-1, 1.5, 2 ** 53, Number.NaN, Infinity, null, undefined, '', 'x'.repeat(7), 'x'.repeat(129), 'x'.repeat(1025), 'bad name', 'insert', '000000000000001-000000', [], {}),
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
  { name: 'protocol 4 push', quick: isPushRowsMessage, schema: pushRowsMessageSchema as z.ZodType, valid: pushRows as fc.Arbitrary<unknown> },
  { name: 'answer to a push with every event stored', quick: isStoredPushAck, schema: ackSchema(pushReplySchema), valid: pushAck as fc.Arbitrary<unknown> },
  { name: 'protocol 3 pull page', quick: isPullPageAck, schema: ackSchema(pullPageSchema), valid: pullPageAck as fc.Arbitrary<unknown> },
  { name: 'live message', quick: isLiveMessage, schema: liveMessageSchema as z.ZodType, valid: liveMessage as fc.Arbitrary<unknown> },
];

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
