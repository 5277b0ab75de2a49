/** Every server option is checked at construction; a wrong one throws INVALID_OPTION naming it. */
import { createServer } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { SyncError } from '../src/shared/errors.js';
import { createSyncServer, type SyncServerOptions } from '../src/server/index.js';
import { startServer, type TestServer } from './helpers.js';

const httpServer = createServer();
const quiet = { enabled: false };

function refusal(options: Record<string, unknown>): SyncError {
  try {
    createSyncServer({ httpServer, logging: quiet, ...options } as SyncServerOptions);
  } catch (error) {
    expect(error).toBeInstanceOf(SyncError);
    return error as SyncError;
  }
  throw new Error(`options were accepted: ${JSON.stringify(Object.keys(options))}`);
}

let server: TestServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

describe('server options', () => {
  it('a missing httpServer is refused, naming it', () => {
    let error: unknown;
    try {
      createSyncServer({ logging: quiet } as unknown as SyncServerOptions);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(SyncError);
    expect((error as SyncError).code).toBe('INVALID_OPTION');
    expect((error as SyncError).message).toContain('httpServer');
    expect((error as SyncError).details).toMatchObject({ option: 'httpServer' });
  });

  it.each([
    ['maxEventsPerPush', { maxEventsPerPush: -1 }, 'maxEventsPerPush', '-1'],
    ['maxPayloadBytes', { maxPayloadBytes: 1.5 }, 'maxPayloadBytes', '1.5'],
    ['maxPullLimit', { maxPullLimit: 0 }, 'maxPullLimit', '0'],
    ['maxDocumentDepth', { maxDocumentDepth: 5000 }, 'maxDocumentDepth', '5000'],
    ['authenticate', { authenticate: 'token' }, 'authenticate', 'must be a function'],
    ['authorize', { authorize: true }, 'authorize', 'must be a function'],
    ['userKey', { userKey: 'id' }, 'userKey', 'must be a function'],
    ['storage', { storage: {} }, 'storage', 'SyncStorage'],
    ['storage missing reads', { storage: { init() {}, saveEvents() {}, getEventsAfter() {}, clearEventsBefore() {}, close() {} } }, 'storage', 'getChangesAfter, getHeads, getLatestSequence, countEvents, claimClient'],
    ['collections', { collections: ['ok', 'not ok!'] }, 'collections.1', 'not ok!'],
    ['logging.level', { logging: { level: 'loud' } }, 'logging.level', 'loud'],
    ['rateLimit.windowMs', { rateLimit: { windowMs: 0, max: 10 } }, 'rateLimit.windowMs', '0'],
    ['rateLimit.max', { rateLimit: { windowMs: 1000 } }, 'rateLimit.max', ''],
    ['rateLimit.maxPerUser', { rateLimit: { windowMs: 1000, max: 5, maxPerUser: -5 } }, 'rateLimit.maxPerUser', '-5'],
    ['rateLimit typo', { rateLimit: { windowMs: 1000, max: 5, windowMS: 2 } }, 'rateLimit', 'windowMS'],
    ['maxConnectionsPerUser', { maxConnectionsPerUser: 0 }, 'maxConnectionsPerUser', '0'],
    ['sensitiveFields', { sensitiveFields: 'password' }, 'sensitiveFields', 'password'],
    ['sensitiveFields per collection', { sensitiveFields: { todos: [''] } }, 'sensitiveFields', ''],
    ['heartbeatInterval', { heartbeatInterval: -100 }, 'heartbeatInterval', '-100'],
    ['clientTimeout', { clientTimeout: '20s' }, 'clientTimeout', '20s'],
    ['an unknown option', { maxEventPerPush: 10 }, '(options)', 'maxEventPerPush'],
  ])('%s: a wrong value is refused with INVALID_OPTION naming it', (_name, options, option, shown) => {
    const error = refusal(options);
    expect(error.code).toBe('INVALID_OPTION');
    expect(error.message).toContain(`option ${option}`);
    expect(error.message).toContain(shown);
  });

  it('accepts every documented option, and maps the heartbeat options onto socket.io', async () => {
    server = await startServer({
      collections: ['todos'],
      authenticate: () => ({ id: 'u' }),
      authorize: () => true,
      userKey: (user: { id: string }) => user.id,
      rateLimit: { windowMs: 1000, max: 100, maxPerUser: 200, message: 'slow down' },
      maxConnectionsPerUser: 3,
      sensitiveFields: { todos: ['secret'] },
      heartbeatInterval: 1234,
      clientTimeout: 567,
      maxDocumentDepth: 10,
      socketOptions: { pingInterval: 99_999, connectTimeout: 4321 },
    });
    const opts = (server.server.getIo() as unknown as { opts: { pingInterval: number; pingTimeout: number; connectTimeout: number } }).opts;
    const engine = server.server.getIo().engine as unknown as { opts: { pingInterval: number; pingTimeout: number } };
    // The named options win over the same setting given through socketOptions.
    expect(engine.opts.pingInterval).toBe(1234);
    expect(engine.opts.pingTimeout).toBe(567);
    expect(opts.connectTimeout).toBe(4321);
  });
});
