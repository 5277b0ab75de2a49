/**
 * A cheap bound on the size of a connection's messages, from the frames that
 * carried them, so that maxPayloadBytes costs no JSON.stringify of every
 * message; and the exact size, for when the bound is not enough.
 */

/**
 * How many UTF-8 bytes JSON.stringify can make of one character of the JSON
 * text a message arrived as. Strings and keys never grow (an escape in the
 * frame is at least as long as what it decodes to, and a character is at most
 * 3 bytes); literals keep their length; only a number can grow, when written
 * with an exponent: "1e20" (4 characters) comes back as 21 digits.
 */
const MAX_GROWTH = 6;

/** Numbers the turns of the event loop: the number moves on after every turn in which a packet arrived. */
export class TurnClock {
  private turn = 0;
  private ticking = false;
  private readonly next = () => {
    this.turn++;
    this.ticking = false;
  };

  /** The current turn, and the promise that the next packet, in a later turn, sees another number. */
  mark(): number {
    if (!this.ticking) {
      this.ticking = true;
      setImmediate(this.next);
    }
    return this.turn;
  }

  peek(): number {
    return this.turn;
  }
}

/**
 * A cheap upper bound on the JSON size of the messages of one connection,
 * from the text frames that carried them, so that maxPayloadBytes costs no
 * JSON.stringify of every message. socket.io hands a message to the listeners
 * in the same turn of the event loop as its frame arrived (decoded at once,
 * dispatched through process.nextTick), so the characters this connection
 * received during the current turn bound every message dispatched in it,
 * however many frames one read delivered. No count for this turn, or binary
 * traffic (attachments arrive as separate frames, perhaps in later turns):
 * no bound, and the message is measured exactly.
 */
export class FrameMeter {
  private chars = 0;
  private turn = -1;
  private binary = false;

  constructor(private readonly turns: TurnClock) {}

  readonly onPacket = (packet: { type: string; data?: unknown }): void => {
    if (packet.type !== 'message' || this.binary) return;
    const data = packet.data;
    // Text frames of socket.io's BINARY_EVENT (5) and BINARY_ACK (6) announce attachments still to come.
    if (typeof data !== 'string' || data.startsWith('5') || data.startsWith('6')) {
      this.binary = true;
      return;
    }
    const turn = this.turns.mark();
    if (turn !== this.turn) {
      this.turn = turn;
      this.chars = 0;
    }
    this.chars += data.length;
  };

  /** At least the byte size of JSON.stringify(args) of any message dispatched now; Infinity when unknown. */
  bound(): number {
    return this.binary || this.turn !== this.turns.peek() ? Number.POSITIVE_INFINITY : this.chars * MAX_GROWTH;
  }
}

/**
 * Byte size of a message's arguments as JSON, binary values (attachment
 * chunks) counted as their bytes; a value that cannot be measured counts as
 * too large.
 */
export function payloadBytes(args: unknown[]): number {
  // Binary values, at the top level of a chunk message, counted as their bytes: JSON.stringify would call
  // a Buffer's toJSON first (an array of every byte, 15 ms and megabytes for one chunk) before any replacer sees it.
  let binary = 0;
  const measured = args.map((arg) => {
    if (!holdsBinary(arg)) return arg;
    const copy: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(arg as Record<string, unknown>)) {
      const bytes = ArrayBuffer.isView(value) || value instanceof ArrayBuffer ? value.byteLength : undefined;
      if (bytes !== undefined) binary += bytes;
      copy[key] = bytes === undefined ? value : 0;
    }
    return copy;
  });
  try {
    return Buffer.byteLength(JSON.stringify(measured) ?? '') + binary;
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

/** Whether a message carries binary values at its top level, where the chunk messages carry theirs. */
function holdsBinary(arg: unknown): boolean {
  if (!arg || typeof arg !== 'object') return false;
  for (const value of Object.values(arg)) if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return true;
  return false;
}
