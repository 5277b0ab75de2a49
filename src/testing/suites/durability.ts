/** What a storage keeps: across init and reopen, client id claims, and text of every script exactly. */
import { beforeEach, expect, it } from 'vitest';
import { MAX_DOCUMENT_ID_BYTES, isClientId, isDocumentId } from '../../shared/protocol/index.js';
import type { SyncStorage } from '../../server/storage/types.js';
import { makeEvent, stored, withoutTime, type Conformance } from '../harness.js';

export function durabilityTests(t: Conformance): void {
  let storage: SyncStorage;
  beforeEach(() => {
    storage = t.storage;
  });
  const { saveAccepted } = t;

  it('can be initialized again without losing anything', async () => {
    const event = makeEvent({ documentId: 'a' });
    const [seq] = await saveAccepted(event);
    await storage.init();
    await Promise.all([storage.init(), storage.init()]);
    expect(withoutTime(await storage.getEventsAfter(0))).toEqual([stored(event, seq!)]);
    await saveAccepted(makeEvent({ documentId: 'a', base: event.id }));
    expect(await storage.countEvents()).toBe(2);
  });

  it('keeps events, heads and sequences across close and reopen', async (context) => {
    if (!t.durable) return context.skip('this storage is not durable');
    const a1 = makeEvent({ documentId: 'a', data: { deep: { list: [1, { x: 'y' }] } } });
    const a2 = makeEvent({ documentId: 'a', base: a1.id, patch: [{ op: 'add', path: '/z', value: 1 }] });
    const b1 = makeEvent({ documentId: 'b', collection: 'notes' });
    const b2 = makeEvent({ documentId: 'b', collection: 'notes', base: b1.id, op: 'delete', data: b1.data });
    const seqs = await saveAccepted(a1, a2, b1, b2);
    const eventsBefore = await storage.getEventsAfter(0);
    const headsBefore = [...(await storage.getHeads('todos', ['a'])), ...(await storage.getHeads('notes', ['b']))];

    storage = await t.reopen();
    expect(await storage.getEventsAfter(0)).toEqual(eventsBefore);
    expect([...(await storage.getHeads('todos', ['a'])), ...(await storage.getHeads('notes', ['b']))]).toEqual(headsBefore);
    expect(await storage.getLatestSequence()).toBe(seqs[3]);
    expect(await storage.saveEvents([a2])).toEqual([{ id: a2.id, status: 'duplicate', seq: seqs[1] }]);
    const [a3] = await saveAccepted(makeEvent({ documentId: 'a', base: a2.id }));
    expect(a3).toBeGreaterThan(seqs[3]!);

    // Even with every event cleared, a restarted storage never hands out an old sequence again.
    await storage.clearEventsBefore(a3! + 1);
    storage = await t.reopen();
    expect(await storage.getLatestSequence()).toBe(a3);
    const [c1] = await saveAccepted(makeEvent({ documentId: 'c' }));
    expect(c1).toBeGreaterThan(a3!);
  });

  it('keeps the longest document ids the protocol allows, of any script, in the longest collection name, exactly', async () => {
    // At the byte bound in every width of UTF-8: 1, 3 and 4 bytes a character.
    const longest = ['x'.repeat(MAX_DOCUMENT_ID_BYTES), `${'日'.repeat(341)}x`, '😀'.repeat(MAX_DOCUMENT_ID_BYTES / 4), `${'é'.repeat(511)}xx`];
    const collection = `c${'x'.repeat(127)}`;
    for (const id of longest) {
      expect(isDocumentId(id)).toBe(true);
      expect(Buffer.byteLength(id)).toBe(MAX_DOCUMENT_ID_BYTES);
    }
    const inserts = longest.map((documentId) => makeEvent({ documentId, collection }));
    const seqs = await saveAccepted(...inserts);
    const updates = longest.map((documentId, i) => makeEvent({ documentId, collection, base: inserts[i]!.id, op: 'update' }));
    const updateSeqs = await saveAccepted(...updates);

    expect(withoutTime(await storage.getEventsAfter(0))).toEqual([...inserts, ...updates].map((event, i) => stored(event, [...seqs, ...updateSeqs][i]!)));
    expect(withoutTime(await storage.getChangesAfter(0, { collections: [collection] }))).toEqual(updates.map((event, i) => stored(event, updateSeqs[i]!)));
    const heads = await storage.getHeads(collection, longest);
    expect(heads.map((head) => [head.documentId, head.eventId])).toEqual(updates.map((event) => [event.documentId, event.id]));
    // Conflicts are found on these ids too: the index holds them whole.
    const stale = makeEvent({ documentId: longest[1]!, collection, base: inserts[1]!.id });
    expect(await storage.saveEvents([stale])).toEqual([{ id: stale.id, status: 'conflict', head: heads[1] }]);
  });

  it('gives back odd characters exactly: line breaks, emoji, CJK, right-to-left text and marks, in ids, clocks and documents', async () => {
    const documentIds = ['line\nbreak', 'tab\tand\r\nCRLF', 'emoji 😀👩‍💻', '日本語の文書', 'עברית ‏ العربية', '\u202eevil.exe', 'zero\u200bwidth', ' spaced ', '\ufeffbom', 'a/b\\c"d\'e'];
    const clientIds = ['日本の端末', 'phone 😀', 'טלפון', '\u202eclient', 'naïve-ünïcödé'];
    for (const clientId of clientIds) expect(isClientId(clientId)).toBe(true);
    const events = documentIds.map((documentId, i) =>
      makeEvent({
        documentId,
        clientId: clientIds[i % clientIds.length],
        data: { id: documentId, 'key\nwith break': 'value\r\n', '鍵': ['値', '😀', { 'עמק': 'שווה ‏' }], '\u202e': '\u2028\u2029', nested: { '': '', emoji: '👩‍👩‍👧‍👦' } },
      }),
    );
    const seqs = await saveAccepted(...events);
    const expected = events.map((event, i) => stored(event, seqs[i]!));
    expect(withoutTime(await storage.getEventsAfter(0))).toEqual(expected);
    expect(withoutTime(await storage.getChangesAfter(0))).toEqual(expected);
    const heads = await storage.getHeads('todos', documentIds);
    expect(heads.map((head) => [head.documentId, head.data, head.hlc, head.clientId])).toEqual(events.map((event) => [event.documentId, event.data, event.hlc, event.clientId]));
    // Ids that differ only in ways some comparisons ignore (case, normalization, width) are different documents.
    const lookalikes = ['Straße', 'STRASSE', 'strasse', 'e\u0301', '\u00e9', 'ｆｕｌｌ', 'full'];
    const lookalikeEvents = lookalikes.map((documentId) => makeEvent({ documentId }));
    await saveAccepted(...lookalikeEvents);
    expect((await storage.getHeads('todos', lookalikes)).map((head) => head.documentId)).toEqual(lookalikes);
  });

  it('claims a client id for the first user that uses it: later claims get that user, the same user again is fine', async () => {
    expect(await storage.claimClient('device-1', 'ana')).toBe('ana');
    expect(await storage.claimClient('device-1', 'ana')).toBe('ana');
    expect(await storage.claimClient('device-1', 'bob')).toBe('ana');
    expect(await storage.claimClient('device-2', 'bob')).toBe('bob');
    expect(await storage.claimClient('device-1', 'ana')).toBe('ana');
    expect(await storage.claimClient('日本の端末 😀', 'ユーザー')).toBe('ユーザー');
    expect(await storage.claimClient('日本の端末 😀', 'ana')).toBe('ユーザー');
    // Claims many at once, on the same id: exactly one user wins, and everyone is told the same one.
    const users = Array.from({ length: 12 }, (_, i) => `user-${i}`);
    const answers = await Promise.all(users.map((user) => storage.claimClient('contested', user)));
    expect(new Set(answers).size).toBe(1);
    expect(users).toContain(answers[0]);
    // What no storage could keep is refused by every storage alike, and records nothing.
    await expect(storage.claimClient('bad\nid', 'ana')).rejects.toThrow();
    await expect(storage.claimClient('device-3', 'nul\u0000key')).rejects.toThrow();
    await expect(storage.claimClient('device-3', 'lone \ud800')).rejects.toThrow();
    expect(await storage.claimClient('device-3', 'carl')).toBe('carl');
  });

  it('keeps client id claims across close and reopen', async (context) => {
    if (!t.durable) return context.skip('this storage is not durable');
    expect(await storage.claimClient('device-1', 'ana')).toBe('ana');
    storage = await t.reopen();
    expect(await storage.claimClient('device-1', 'bob')).toBe('ana');
  });
}
