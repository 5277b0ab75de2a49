/**
 * maxPayloadBytes is the size of a message's arguments as JSON. The server
 * bounds it from the frames that carried the message and stringifies only when
 * that bound could exceed the limit: these are the cases where the frame alone
 * would mislead, and each must still be refused.
 */
import type { Socket } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MESSAGE, toPushRows } from '../src/shared/protocol/index.js';
import { pull, push, rawEvent, rawSocket, startServer, type TestServer } from './helpers.js';

const maxPayloadBytes = 32 * 1024;
let server: TestServer;

beforeAll(async () => {
  server = await startServer({ collections: ['todos'], maxPayloadBytes });
});
afterAll(async () => {
  await server?.stop();
});

interface Engine {
  send(data: string): void;
  on(event: 'packet', listener: (packet: { type: string; data?: unknown }) => void): void;
}

/** Sends raw socket.io text frames in one go and resolves with the acknowledgement of each (ids from 9000). */
function sendFrames(socket: Socket, messages: { type: string; json: string }[]): Promise<any[]> {
  const engine = socket.io.engine as unknown as Engine;
  const replies = messages.map(() => {
    let resolve!: (reply: any) => void;
    return { promise: new Promise<any>((r) => (resolve = r)), resolve: (reply: any) => resolve(reply) };
  });
  engine.on('packet', (packet) => {
    // Engine message packets carry socket.io packets: "2<id>[...]" an event, "3<id>[...]" its acknowledgement.
    const match = typeof packet.data === 'string' ? /^3(90\d\d)(\[.*)$/s.exec(packet.data) : null;
    if (match) replies[Number(match[1]) - 9000]?.resolve((JSON.parse(match[2]!) as unknown[])[0]);
  });
  messages.forEach(({ type, json }, i) => engine.send(`2${9000 + i}[${JSON.stringify(type)},${json}]`));
  return Promise.all(replies.map((reply) => reply.promise));
}

describe('maxPayloadBytes measures the message, not its frame', () => {
  let socket: Socket;
  beforeAll(async () => {
    socket = await rawSocket(server.url);
  });
  afterAll(() => {
    socket?.close();
  });

  it('refuses a message that is small on the wire but large as JSON (numbers written with exponents)', async () => {
    // Each "1e20," is 5 characters on the wire and 22 as JSON.stringify writes it.
    const count = Math.ceil(maxPayloadBytes / 15);
    const json = `{"checkpoint":0,"collections":["todos"],"pad":[${Array.from({ length: count }, () => '1e20').join(',')}]}`;
    expect(json.length).toBeLessThan(maxPayloadBytes);
    expect(Buffer.byteLength(JSON.stringify([JSON.parse(json)]))).toBeGreaterThan(maxPayloadBytes);

    const [reply] = await sendFrames(socket, [{ type: MESSAGE.pull, json }]);
    expect(reply).toMatchObject({ ok: false, error: { code: 'PAYLOAD_TOO_LARGE', details: { limit: maxPayloadBytes } } });
    expect(reply.error.details.bytes).toBeGreaterThan(maxPayloadBytes);
    expect(socket.connected).toBe(true);
  });

  it('answers each of several frames that arrive together by its own size', async () => {
    const small = JSON.stringify(toPushRows([rawEvent({ documentId: 'together' })], ''));
    const big = JSON.stringify({ checkpoint: 0, collections: ['todos'], pad: 'y'.repeat(maxPayloadBytes) });
    const [first, second, third] = await sendFrames(socket, [
      { type: MESSAGE.push, json: small },
      { type: MESSAGE.pull, json: big },
      { type: MESSAGE.pull, json: JSON.stringify({ checkpoint: 0, collections: ['todos'] }) },
    ]);
    expect(first).toMatchObject({ ok: true, results: [expect.any(Number)] });
    expect(second).toMatchObject({ ok: false, error: { code: 'PAYLOAD_TOO_LARGE' } });
    expect(third).toMatchObject({ ok: true });
  });

  it('measures binary attachments, which arrive as frames of their own', async () => {
    // Counted as its bytes (not as the JSON of a Buffer), over the limit though its frames are under the transport's.
    const blob = Buffer.alloc(Math.ceil(maxPayloadBytes * 1.2), 7);
    const reply = await pull(socket, { checkpoint: 0, collections: ['todos'], blob });
    expect(reply).toMatchObject({ ok: false, error: { code: 'PAYLOAD_TOO_LARGE' } });
    // The connection keeps working, and text messages after it are still answered.
    const after = await push(socket, [rawEvent({ documentId: 'after-binary' })]);
    expect(after.results[0]).toBeTypeOf('number');
  });
});
