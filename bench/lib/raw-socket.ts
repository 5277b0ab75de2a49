/**
 * A socket.io client written by hand over a bare WebSocket (engine.io 4,
 * websocket transport only), for the abuse scenario's flooders: frames are
 * encoded once and sent as they are, so that flooding costs the bench
 * process little beside the bystander it measures, and the TCP socket can be
 * paused to play a peer that never reads what the server sends.
 */
import type { Socket as NetSocket } from 'node:net';
import WebSocket from 'ws';

/** socket.io packet types over engine.io's MESSAGE (4): CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR. */
const CONNECT = '40';
const DISCONNECT = '41';
const EVENT = '42';
const ACK = '43';
const CONNECT_ERROR = '44';

export class RawSocketIo {
  /** How many errors of each code the server answered with, in `sync:error` messages and in acknowledgements. */
  readonly errors = new Map<string, number>();
  /** When the connection closed (Date.now()), as this side saw it; undefined while open. */
  closedAt?: number;
  private nextAck = 0;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => this.onFrame(String(data)));
    ws.on('close', () => (this.closedAt ??= Date.now()));
    ws.on('error', () => (this.closedAt ??= Date.now()));
  }

  /** Opens a connection and completes socket.io's CONNECT with `auth` (the sync handshake). */
  static connect(url: string, auth: Record<string, unknown>): Promise<RawSocketIo> {
    // An all-zero mask, which ws then skips applying: the frames the server gets are the same, masking
    // megabytes of flood would cost the bench process (and so the bystander) for nothing.
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`, { generateMask: (mask) => void mask.fill(0) });
    return new Promise((resolve, reject) => {
      const onFrame = (data: WebSocket.RawData) => {
        const frame = String(data);
        if (frame.startsWith('0')) ws.send(`${CONNECT}${JSON.stringify(auth)}`);
        else if (frame.startsWith(CONNECT)) {
          ws.off('message', onFrame);
          resolve(new RawSocketIo(ws));
        } else if (frame.startsWith(CONNECT_ERROR)) reject(new Error(`connection refused: ${frame.slice(2)}`));
      };
      ws.on('message', onFrame);
      ws.once('error', reject);
      ws.once('close', () => reject(new Error('closed during the handshake')));
    });
  }

  /** An EVENT frame for `event` with `payload` (JSON text); with an acknowledgement id when `ack`. */
  frame(event: string, payloadJson: string, ack = true): string {
    return `${EVENT}${ack ? this.nextAck++ : ''}[${JSON.stringify(event)},${payloadJson}]`;
  }

  /** Sends one frame as text; a Buffer is sent as it is (for a large frame sent again and again). */
  send(frame: string | Buffer): void {
    if (this.open) this.ws.send(frame, { binary: false });
  }

  get open(): boolean {
    return this.closedAt === undefined && this.ws.readyState === WebSocket.OPEN;
  }

  /** Bytes handed to the WebSocket and not yet taken by the kernel. */
  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  /** Stops reading the TCP socket: the server's replies pile up in the kernel's buffers, then in the server. */
  pause(): void {
    (this.ws as unknown as { _socket: NetSocket })._socket.pause();
  }

  /** Leaves at once, without a closing handshake (a paused peer could not complete one). */
  close(): void {
    this.closedAt ??= Date.now();
    this.ws.terminate();
  }

  private count(code = 'unknown'): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  private onFrame(frame: string): void {
    // engine.io PING: answered, as a live client does (only while reading).
    if (frame === '2') this.ws.send('3');
    else if (frame.startsWith(DISCONNECT)) this.closedAt ??= Date.now();
    else if (frame.startsWith(`${EVENT}["sync:error"`)) {
      const [, error] = JSON.parse(frame.slice(2)) as [string, { code?: string }];
      this.count(error.code);
    } else if (frame.startsWith(ACK)) {
      // Only refusals are parsed: a successful answer may be a page of megabytes.
      const body = frame.indexOf('[');
      if (frame.startsWith('[{"ok":false', body)) this.count((JSON.parse(frame.slice(body)) as [{ error?: { code?: string } }])[0].error?.code);
    }
  }
}
