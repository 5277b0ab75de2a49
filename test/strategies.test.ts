import { describe, expect, it } from 'vitest';
import { clientWins, customStrategy, lastWriteWins, manual, merge, serverWins, type Conflict, type DocumentVersion } from '../src/client/strategies/index.js';
import { formatHlc } from '../src/shared/hlc.js';

const at = (millis: number, node: string) => formatHlc({ millis, counter: 0, node });
const version = (data: Record<string, unknown>, millis: number, node: string, deleted = false): DocumentVersion => ({ data, deleted, hlc: at(millis, node), clientId: node });

const base = version({ id: 'd', title: 'base', done: false, tags: ['a'], meta: { color: 'red', size: 1 } }, 100, 'server');
function conflict(local: DocumentVersion, remote: DocumentVersion | null, b: DocumentVersion | null = base): Conflict {
  return { collection: 'todos', documentId: 'd', local, remote, base: b };
}

describe('last-write-wins', () => {
  it('takes the later clock', () => {
    expect(lastWriteWins(conflict(version({ title: 'l' }, 300, 'a'), version({ title: 'r' }, 200, 'b')))).toEqual({ action: 'keep-local' });
    expect(lastWriteWins(conflict(version({ title: 'l' }, 200, 'a'), version({ title: 'r' }, 300, 'b')))).toEqual({ action: 'keep-remote' });
  });
  it('breaks a tie by client id the same way on both sides', () => {
    const fromA = version({ title: 'a' }, 500, 'client-a');
    const fromB = version({ title: 'b' }, 500, 'client-b');
    // On client a, b's write is remote; on client b, a's write is remote: both must keep b's.
    expect(lastWriteWins(conflict(fromA, fromB))).toEqual({ action: 'keep-remote' });
    expect(lastWriteWins(conflict(fromB, fromA))).toEqual({ action: 'keep-local' });
  });
  it('treats deletes like any write, and a missing server version as nothing to lose to', () => {
    expect(lastWriteWins(conflict(version({ title: 'l' }, 300, 'a', true), version({ title: 'r' }, 200, 'b')))).toEqual({ action: 'keep-local' });
    expect(lastWriteWins(conflict(version({ title: 'l' }, 100, 'a'), version({ title: 'r' }, 200, 'b', true)))).toEqual({ action: 'keep-remote' });
    expect(lastWriteWins(conflict(version({ title: 'l' }, 100, 'a'), null))).toEqual({ action: 'keep-local' });
  });
});

describe('server-wins and client-wins', () => {
  it('server-wins keeps the server version whatever the clocks', () => {
    expect(serverWins(conflict(version({ t: 1 }, 900, 'a'), version({ t: 2 }, 100, 'b')))).toEqual({ action: 'keep-remote' });
    expect(serverWins(conflict(version({ t: 1 }, 900, 'a'), null))).toEqual({ action: 'keep-local' });
  });
  it('client-wins keeps the local version whatever the clocks', () => {
    expect(clientWins()).toEqual({ action: 'keep-local' });
  });
  it('manual decides nothing', () => {
    expect(manual()).toEqual({ action: 'manual' });
  });
});

describe('merge', () => {
  it('keeps both sides where they changed different fields', () => {
    const local = version({ ...base.data, title: 'local title' }, 300, 'a');
    const remote = version({ ...base.data, done: true }, 200, 'b');
    expect(merge(conflict(local, remote))).toEqual({ action: 'write', data: { ...base.data, title: 'local title', done: true } });
  });
  it('gives a field changed on both sides to the later clock', () => {
    const local = version({ ...base.data, title: 'local' }, 300, 'a');
    const remote = version({ ...base.data, title: 'remote', done: true }, 400, 'b');
    expect(merge(conflict(local, remote))).toEqual({ action: 'keep-remote' });
    const laterLocal = version({ ...base.data, title: 'local' }, 500, 'a');
    expect(merge(conflict(laterLocal, remote))).toEqual({ action: 'write', data: { ...base.data, title: 'local', done: true } });
  });
  it('merges nested objects field by field', () => {
    const local = version({ ...base.data, meta: { color: 'blue', size: 1 } }, 300, 'a');
    const remote = version({ ...base.data, meta: { color: 'red', size: 2 } }, 200, 'b');
    expect(merge(conflict(local, remote))).toEqual({ action: 'write', data: { ...base.data, meta: { color: 'blue', size: 2 } } });
  });
  it('treats an array as one value: the later clock takes it whole', () => {
    const local = version({ ...base.data, tags: ['a', 'l'] }, 300, 'a');
    const remote = version({ ...base.data, tags: ['r', 'a'] }, 200, 'b');
    expect(merge(conflict(local, remote))).toEqual({ action: 'keep-local' });
    const onlyLocalChangedTags = version({ ...base.data, tags: ['a', 'l'] }, 100, 'a');
    const remoteChangedTitle = version({ ...base.data, title: 'r' }, 200, 'b');
    expect(merge(conflict(onlyLocalChangedTags, remoteChangedTitle))).toEqual({ action: 'write', data: { ...base.data, title: 'r', tags: ['a', 'l'] } });
  });
  it('two inserts of the same key merge as if from an empty base', () => {
    const local = version({ id: 'd', title: 'mine', done: false }, 300, 'a');
    const remote = version({ id: 'd', title: 'theirs', done: true, priority: 2 }, 200, 'b');
    expect(merge(conflict(local, remote, null))).toEqual({ action: 'write', data: { id: 'd', title: 'mine', done: false, priority: 2 } });
  });
  it('falls back to last-write-wins for delete against update', () => {
    const deleted = version(base.data, 300, 'a', true);
    const updated = version({ ...base.data, title: 'u' }, 200, 'b');
    expect(merge(conflict(deleted, updated))).toEqual({ action: 'keep-local' });
    expect(merge(conflict(version({ ...base.data, title: 'u' }, 100, 'a'), version(base.data, 200, 'b', true)))).toEqual({ action: 'keep-remote' });
  });
});

describe('custom function', () => {
  it('writes what it returns, deletes on null', async () => {
    const c = conflict(version({ id: 'd', n: 1 }, 1, 'a'), version({ id: 'd', n: 2 }, 2, 'b'));
    expect(await customStrategy(({ local, remote }) => ({ id: 'd', n: (local.data.n as number) + (remote!.data.n as number) }))(c)).toEqual({ action: 'write', data: { id: 'd', n: 3 } });
    expect(await customStrategy(() => null)(c)).toEqual({ action: 'delete' });
    expect(await customStrategy(() => 'manual')(c)).toEqual({ action: 'manual' });
  });
  it('a throw turns the conflict manual and says why', async () => {
    const c = conflict(version({ id: 'd' }, 1, 'a'), version({ id: 'd' }, 2, 'b'));
    expect(await customStrategy(() => { throw new Error('boom'); })(c)).toEqual({ action: 'manual', reason: 'conflict resolver failed: boom' });
    expect(await customStrategy(() => 42 as never)(c)).toMatchObject({ action: 'manual' });
  });
});

describe('merge of attachments', () => {
  const photo = (digest: string, length: number, type = 'image/jpeg') => ({ digest: digest.repeat(64), length, type });
  const withPhotos = (attachments: Record<string, unknown> | undefined, title = 'base') => ({ id: 'd', title, ...(attachments ? { _attachments: attachments } : {}) });

  it('takes an attachment whole from one side, never digest from one and length from the other', () => {
    const start = version(withPhotos({ p: photo('a', 10) }), 100, 'server');
    // Both replace the photo; the remote content happens to have the old length, so its patch names only the digest.
    const local = version(withPhotos({ p: photo('b', 20) }), 200, 'a');
    const remote = version(withPhotos({ p: photo('c', 10) }), 300, 'b');
    const result = merge(conflict(local, remote, start));
    expect(result).toEqual({ action: 'keep-remote' });
  });

  it('keeps both when each side adds a different attachment to a document that had none', () => {
    const start = version(withPhotos(undefined), 100, 'server');
    const local = version(withPhotos({ front: photo('a', 10) }), 200, 'a');
    const remote = version(withPhotos({ back: photo('b', 20) }, 'renamed'), 300, 'b');
    expect(merge(conflict(local, remote, start))).toEqual({ action: 'write', data: withPhotos({ back: photo('b', 20), front: photo('a', 10) }, 'renamed') });
  });

  it('keeps an attachment added on one side when the other removed all of theirs', () => {
    const start = version(withPhotos({ old: photo('a', 10) }), 100, 'server');
    const local = version(withPhotos({ old: photo('a', 10), added: photo('b', 20) }), 200, 'a');
    const remote = version(withPhotos(undefined), 300, 'b');
    expect(merge(conflict(local, remote, start))).toEqual({ action: 'write', data: withPhotos({ added: photo('b', 20) }) });
  });
});
