/**
 * What the server stores, every client can apply (invariant 11), as a
 * property: a hand-written client connects with an arbitrary client id and
 * pushes arbitrary events (ids in any script and at the byte bound, nested
 * documents, clocks of its own and of other nodes, and events no storage
 * could keep, mixed in); a fresh client, the real plugin on RxDB's memory
 * storage, then pulls, and holds every document the server accepted exactly
 * as it was pushed. A client id that is no clock node is refused at the
 * handshake, naming what is wrong in it.
 */
import fc from 'fast-check';
import { createRxDatabase, type RxCollection, type RxJsonSchema } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { describe, expect, it } from 'vitest';
import { createSyncPlugin } from '../src/client/index.js';
import { formatHlc } from '../src/shared/hlc.js';
import { MAX_DOCUMENT_ID_BYTES, MESSAGE, PROTOCOL_VERSION, isClientId, toPushRows, type SyncEvent } from '../src/shared/protocol/index.js';
import { connectError, rawSocket, request, startServer, uniqueName } from './helpers.js';

const FC_SEED = Number(process.env.FC_SEED ?? 20_260_311);

/** A collection whose primary key takes every document id the protocol allows (RxDB counts maxLength in UTF-16 units). */
const schema: RxJsonSchema<{ id: string }> = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: { id: { type: 'string', maxLength: MAX_DOCUMENT_ID_BYTES } },
  required: ['id'],
};

/** Characters from every corner: ASCII, accents, CJK, emoji (pairs and sequences), right-to-left text, bidi and zero-width marks. */
const oddChar = fc.constantFrom('é', '日', '本', '😀', '👩‍💻', 'ש', 'ل', '\u200f', '\u202e', '\u200b', '\ufeff', '\u00a0', ' ', '-', '/', '"', '\\', '.', '$');
const char = fc.oneof({ weight: 3, arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 1 }) }, { weight: 2, arbitrary: oddChar });
const text = (maxLength: number, minLength = 0) => fc.array(char, { minLength, maxLength }).map((chars) => chars.join(''));

/** Document ids every storage keeps: short ones in any script, line breaks and tabs too, and ones at the byte bound. */
const goodDocumentId = fc.oneof(
  { weight: 6, arbitrary: text(24, 1) },
  { weight: 1, arbitrary: fc.constantFrom('line\nbreak', 'tab\there', 'crlf\r\n') },
  { weight: 1, arbitrary: fc.constantFrom('d'.repeat(MAX_DOCUMENT_ID_BYTES), `${'日'.repeat(341)}x`, '😀'.repeat(256), `${'é'.repeat(511)}xx`) },
);
/** Document ids no storage may be given: the server refuses each such event alone. */
const badDocumentId = fc.constantFrom('', 'nul\u0000id', 'lone\ud800', '\udc00', 'd'.repeat(MAX_DOCUMENT_ID_BYTES + 1), '日'.repeat(342));

/** Clock nodes: client ids as apps make them, and odd ones. */
const goodNode = fc.oneof(fc.uuid(), text(20, 1), fc.constantFrom('日本の端末', 'phone 😀', 'טלפון', '\u202eclient', 'x'.repeat(128)));
/** Clock nodes no clock may have (the last is too long for a clock). */
const badNode = fc.constantFrom('a\nb', 'nul\u0000', 'lone\ud800', 'tab\t', '\u2028', '\u0085', 'x'.repeat(234));
/** Client ids the handshake refuses: no clock node, or longer than a client id. */
const badClientId = fc.constantFrom('a\nb', 'phone\r\n', 'nul\u0000', 'lone\ud800', 'tab\t', '\u2028', '\u0085', '', 'x'.repeat(129));

/** Documents: nested objects and arrays, keys and strings in any script. Top-level keys are the app's: RxDB keeps those starting with `_` for itself. */
const value = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    text(12),
    fc.integer(),
    fc.double({ noNaN: true, noDefaultInfinity: true }).filter((n) => !Object.is(n, -0)),
    fc.boolean(),
    fc.constant(null),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(text(6), tie('value'), { maxKeys: 4 }),
  ),
})).value;
const goodData = fc.dictionary(text(8, 1).filter((key) => !key.startsWith('_') && key !== 'id'), value, { maxKeys: 5 });
/** Documents no storage may be given: a NUL or an unpaired surrogate in a value or a key, deep inside or at the top. */
const badData = fc.constantFrom<Record<string, unknown>>({ text: 'a\u0000b' }, { deep: [{ t: 'x\ud800' }] }, { ['k\u0000']: 1 }, { nested: { ['\udfff']: true } });

interface Planned {
  event: SyncEvent;
  /** True for an event the server must store (a good event on a good document); false for one it must refuse. */
  good: boolean;
}

const now = Date.now();

/**
 * One push: good documents changed one to three times in a chain (insert, updates, maybe a delete),
 * and events that are bad for one reason each, on documents of their own.
 */
function pushOf(pusher: string) {
  const chain = fc.record({
    documentId: goodDocumentId,
    versions: fc.array(fc.record({ data: goodData, node: fc.oneof(fc.constant(pusher), goodNode), delete: fc.boolean() }), { minLength: 1, maxLength: 3 }),
  });
  const bad = fc.oneof(
    fc.record({ documentId: badDocumentId, data: goodData, node: fc.constant(pusher) }),
    fc.record({ documentId: goodDocumentId.map((id) => `bad-data ${id}`.slice(0, 200)), data: badData, node: fc.constant(pusher) }),
    fc.record({ documentId: goodDocumentId.map((id) => `bad-node ${id}`.slice(0, 200)), data: goodData, node: badNode }),
  );
  return fc.record({ chains: fc.array(chain, { minLength: 1, maxLength: 5 }), bad: fc.array(bad, { maxLength: 3 }) });
}
type Push = ReturnType<typeof pushOf> extends fc.Arbitrary<infer T> ? T : never;

let eventCount = 0;
const newEventId = () => `prop-${uniqueName()}-${++eventCount}`;

/** The events of a push, in an order that keeps each chain's order, chains and bad events interleaved. */
function plan(push: Push, taken: Set<string>): Planned[] {
  const planned: Planned[] = [];
  let time = now - 1_000_000;
  const stamp = (node: string) => formatHlc({ millis: (time += 7), counter: time % 1000, node });
  for (const { documentId, versions } of push.chains) {
    // One chain per document and push: two chains on one document would be conflicts, which are not what this tests.
    if (taken.has(documentId)) continue;
    taken.add(documentId);
    let base: string | null = null;
    let deleted = false;
    for (const version of versions) {
      const op: SyncEvent['op'] = deleted || base === null ? 'insert' : version.delete ? 'delete' : 'update';
      const event: SyncEvent = { id: newEventId(), collection: 'todos', documentId, op, data: { ...version.data, id: documentId }, baseEventId: base, hlc: stamp(version.node) };
      planned.push({ event, good: true });
      base = event.id;
      deleted = op === 'delete';
    }
  }
  for (const { documentId, data, node } of push.bad) {
    const event: SyncEvent = { id: newEventId(), collection: 'todos', documentId, op: 'insert', data: { ...data, id: documentId }, baseEventId: null, hlc: stamp(node) };
    planned.push({ event, good: false });
  }
  // Bad events between the good ones: each is refused alone, and the rest of the push is stored.
  const good = planned.filter((p) => p.good);
  const bad = planned.filter((p) => !p.good);
  const mixed: Planned[] = [];
  for (const item of good) {
    mixed.push(item);
    if (bad.length > 0 && (item.event.id.length + mixed.length) % 2 === 0) mixed.push(bad.shift()!);
  }
  return [...mixed, ...bad];
}

/** The document a reader must hold after these events were stored, by id (absent: deleted or never stored). */
function expectedState(stored: readonly SyncEvent[]): Map<string, Record<string, unknown>> {
  const state = new Map<string, Record<string, unknown>>();
  for (const event of stored) {
    if (event.op === 'delete') state.delete(event.documentId);
    // As the wire carries it.
    else state.set(event.documentId, JSON.parse(JSON.stringify(event.data)) as Record<string, unknown>);
  }
  return state;
}

const pusher = fc.oneof({ weight: 5, arbitrary: goodNode }, { weight: 1, arbitrary: badClientId }).chain((clientId) =>
  fc.record({ clientId: fc.constant(clientId), pushes: fc.array(pushOf(clientId), { minLength: 1, maxLength: 2 }) }),
);
const RUNS = 30;

describe('whatever the server accepts, a fresh client pulls and applies', () => {
  it('holds every accepted document exactly as pushed; refuses bad events one by one and bad client ids at the handshake', async () => {
    let refusedHandshakes = 0;
    let refusedEvents = 0;
    let storedEvents = 0;
    await fc.assert(
      fc.asyncProperty(pusher, fc.context(), async ({ clientId, pushes }, ctx) => {
        // A server per run: documents of one run never meet those of another.
        const server = await startServer();
        try {
          if (!isClientId(clientId)) {
            const refused = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId });
            expect(refused.data).toMatchObject({ code: 'INVALID_MESSAGE', message: expect.stringContaining('clientId: a client id ') });
            refusedHandshakes++;
            return;
          }
          const socket = await rawSocket(server.url, { clientId });
          const stored: SyncEvent[] = [];
          let refused = 0;
          const taken = new Set<string>();
          try {
            for (const push of pushes) {
              const planned = plan(push, taken);
              if (planned.length === 0) continue;
              const events = planned.map((p) => p.event);
              const reply = await request(socket, MESSAGE.push, toPushRows(events, clientId));
              expect(reply.ok, JSON.stringify(reply.error)).toBe(true);
              planned.forEach(({ event, good }, i) => {
                const result = reply.results[i];
                const accepted = typeof result === 'number';
                ctx.log(`${JSON.stringify(event.documentId).slice(0, 60)} ${good ? 'good' : 'bad'}: ${JSON.stringify(result).slice(0, 200)}`);
                expect(accepted, `${good ? 'good' : 'bad'} event on ${JSON.stringify(event.documentId).slice(0, 80)}: ${JSON.stringify(result).slice(0, 300)}`).toBe(good);
                if (accepted) stored.push(event);
                else {
                  refused++;
                  expect((result as { error: { code: string } }).error.code).toBe('INVALID_MESSAGE');
                }
              });
            }
          } finally {
            socket.close();
          }
          storedEvents += stored.length;
          refusedEvents += refused;
          expect(await server.server.getStorage().countEvents()).toBe(stored.length);
          expect(server.server.getStats()).toMatchObject({ accepted: stored.length, rejected: refused });

          // A fresh reader: the real plugin on RxDB's memory storage.
          const db = await createRxDatabase<{ todos: RxCollection<{ id: string }> }>({ name: uniqueName('prop'), storage: getRxStorageMemory() });
          try {
            await db.addCollections({ todos: { schema } });
            const sync = await db.addPlugin(createSyncPlugin({ serverUrl: server.url, collections: ['todos'], autoSync: false, logging: { enabled: false } }));
            const result = await sync.syncNow();
            expect(result, JSON.stringify(sync.getStatus().error)).toMatchObject({ success: true });
            const want = expectedState(stored);
            const docs = await db.todos.find().exec();
            const got = new Map(docs.map((doc) => [doc.primary, doc.toJSON() as Record<string, unknown>]));
            expect(new Set(got.keys())).toEqual(new Set(want.keys()));
            for (const [id, data] of want) expect(got.get(id), JSON.stringify(id)).toEqual(data);
          } finally {
            await db.close();
          }
        } finally {
          await server.stop();
        }
      }),
      { seed: FC_SEED, numRuns: RUNS, endOnFailure: true },
    );
    // The generators reach what this is about: refused handshakes, refused events, stored ones.
    expect(refusedHandshakes).toBeGreaterThan(0);
    expect(refusedEvents).toBeGreaterThan(0);
    expect(storedEvents).toBeGreaterThan(RUNS);
  }, 60_000);
});
