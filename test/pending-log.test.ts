import { afterEach, describe, expect, it, vi } from 'vitest';
import type { PendingEntry } from '../src/client/documents.js';
import { PendingLog } from '../src/client/pending-log.js';

const entry = (key: string, documentId: string): PendingEntry => ({
  key,
  sent: false,
  event: { id: `event-${documentId}-0000`, collection: 'todos', documentId, op: 'insert', data: { id: documentId }, baseEventId: null, hlc: '000000000000001-000000-c' },
});

afterEach(() => vi.restoreAllMocks());

describe('pending log keys', () => {
  it('never reuse a key after a restart, even when the clock reads the same or an earlier millisecond', () => {
    vi.spyOn(Date, 'now').mockReturnValue(1_700_000_000_000);
    const first = new PendingLog();
    const keys = [first.nextKey(), first.nextKey(), first.nextKey()];
    const restarted = new PendingLog(keys.map((key, i) => entry(key, `d${i}`)));
    const next = restarted.nextKey();
    expect(keys).not.toContain(next);
    expect(next > keys[2]!).toBe(true);
    vi.spyOn(Date, 'now').mockReturnValue(1_699_999_999_000); // the clock stepped back
    expect(restarted.nextKey() > next).toBe(true);
  });

  it('count entries up to the persisted sent watermark as sent', () => {
    const log = new PendingLog([entry('000000000000001-000000000', 'a'), entry('000000000000002-000000000', 'b')], '000000000000001-000000000');
    expect(log.all().map((e) => e.sent)).toEqual([true, false]);
    expect(log.nextKey() > '000000000000002-000000000').toBe(true);
  });
});
