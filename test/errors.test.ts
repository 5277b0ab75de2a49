/**
 * SyncError's details are typed per code: what a peer sends is checked
 * against its code's schema before an app reads it as that type.
 */
import { describe, expect, it } from 'vitest';
import { SyncError } from '../src/client/index.js';
import { connectError } from '../src/client/transport/refusals.js';

describe('SyncError details', () => {
  it('keeps a peer\'s details that match its code, extra fields included', () => {
    const error = SyncError.fromWire({ code: 'SERVER_BUSY', message: 'busy', details: { reason: 'handshakes', retryAfterMs: 1200, instance: 'b' } });
    expect(error.fromPeer).toBe(true);
    expect(error.is('SERVER_BUSY') && error.details).toEqual({ reason: 'handshakes', retryAfterMs: 1200, instance: 'b' });
    expect(error.retryAfterMs()).toBe(1200);
  });

  it('drops details that do not match the code, and keeps the code and message', () => {
    const error = SyncError.fromWire({ code: 'SERVER_BUSY', message: 'busy', details: { retryAfterMs: 'soon' } });
    expect(error.details).toBeUndefined();
    expect(error.retryAfterMs()).toBeUndefined();
    expect([error.code, error.message]).toEqual(['SERVER_BUSY', 'busy']);
    // A code that carries none drops whatever came.
    expect(SyncError.fromWire({ code: 'CLOSED', message: 'closed', details: { anything: 1 } }).details).toBeUndefined();
  });

  it('narrows with is(), and names a wait only for the codes that say when to come back', () => {
    const limited: SyncError = new SyncError('RATE_LIMITED', 'slow down', { scope: 'user', retryAfterMs: 50 });
    expect(limited.is('RATE_LIMITED')).toBe(true);
    expect(limited.is('SERVER_BUSY')).toBe(false);
    if (limited.is('RATE_LIMITED')) expect(limited.details?.scope).toBe('user');
    expect(limited.retryAfterMs()).toBe(50);
    expect(new SyncError('TOO_MANY_EVENTS', 'fewer', { count: 9, limit: 5 }).retryAfterMs()).toBeUndefined();
    expect(SyncError.fromWire(limited.toWire()).details).toEqual({ scope: 'user', retryAfterMs: 50 });
  });
});

describe('a refused connection', () => {
  const url = 'http://sync.example';
  it('is the server\'s refusal when it can be read, an unreadable answer when not, and unreachable only without one', () => {
    const busy = connectError(Object.assign(new Error('refused'), { data: { code: 'SERVER_BUSY', message: 'busy', details: { reason: 'connections', retryAfterMs: 900 } } }), url);
    expect([busy.code, busy.retryAfterMs(), busy.fromPeer]).toEqual(['SERVER_BUSY', 900, true]);
    // A code from a later server is still that server's answer, not a network failure.
    const later = connectError(Object.assign(new Error('refused'), { data: { code: 'QUOTA_EXCEEDED', message: 'over quota' } }), url);
    expect([later.code, later.fromPeer]).toEqual(['INVALID_MESSAGE', true]);
    expect(later.message).toContain('QUOTA_EXCEEDED: over quota');
    const down = connectError(new Error('xhr poll error'), url);
    expect([down.code, down.fromPeer]).toEqual(['NOT_CONNECTED', false]);
  });
});
