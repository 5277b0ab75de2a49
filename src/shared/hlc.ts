/**
 * Hybrid logical clock. A timestamp is a string that sorts lexically in
 * causal order: 15-digit wall milliseconds, 6-digit base-36 counter, node id.
 * The node id (client id) breaks ties, so every replica orders the same pair
 * of writes the same way, whatever its own wall clock says.
 */
export interface HlcParts {
  millis: number;
  counter: number;
  node: string;
}

const MILLIS_WIDTH = 15;
const COUNTER_WIDTH = 6;
const MAX_COUNTER = 36 ** COUNTER_WIDTH - 1;
/** A remote clock this far ahead of ours is not trusted to drag us forward. */
const MAX_DRIFT_MS = 24 * 60 * 60 * 1000;

export function formatHlc({ millis, counter, node }: HlcParts): string {
  return `${String(millis).padStart(MILLIS_WIDTH, '0')}-${counter.toString(36).padStart(COUNTER_WIDTH, '0')}-${node}`;
}

export function parseHlc(value: string): HlcParts {
  const first = value.indexOf('-');
  const second = value.indexOf('-', first + 1);
  if (first !== MILLIS_WIDTH || second !== MILLIS_WIDTH + COUNTER_WIDTH + 1) {
    throw new Error(`not a hybrid logical clock value: ${value}`);
  }
  return {
    millis: Number(value.slice(0, first)),
    counter: parseInt(value.slice(first + 1, second), 36),
    node: value.slice(second + 1),
  };
}

/** The wall time of a timestamp, read without parsing the rest (for scans over a whole log). */
export function millisOf(value: string): number {
  return Number(value.slice(0, MILLIS_WIDTH));
}

/** Length of a timestamp without its node: time and counter only. */
const TIME_LENGTH = MILLIS_WIDTH + 1 + COUNTER_WIDTH;

/** The longest timestamp the protocol carries, and so the longest node one can hold. */
export const MAX_HLC_LENGTH = 256;
export const MAX_NODE_LENGTH = MAX_HLC_LENGTH - TIME_LENGTH - 1;

// Every clock pattern below is made of these two parts: the time and counter, and the node.
const TIME_SOURCE = `\\d{${MILLIS_WIDTH}}-[0-9a-z]{${COUNTER_WIDTH}}`;
/**
 * A character of a node: anything but a control character (C0, DEL, C1), a
 * line or paragraph separator, or half of a surrogate pair without its other
 * half. A node is a client id, which every storage keeps and every log line
 * shows as it is; PostgreSQL refuses NUL and SQLite would store a lone
 * surrogate altered. The two branches never match the same text, so the
 * pattern runs in linear time.
 */
const NODE_CHAR = '(?:[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\ud800-\\udfff]|[\\ud800-\\udbff][\\udc00-\\udfff])';
const NODE_SOURCE = `${NODE_CHAR}+`;

export const HLC_PATTERN = new RegExp(`^${TIME_SOURCE}-${NODE_SOURCE}$`);

/** A timestamp as a client may push it: without its node when the node is the pushing client. */
export const PUSHED_HLC_PATTERN = new RegExp(`^${TIME_SOURCE}(?:-${NODE_SOURCE})?$`);

/**
 * The shape of a pushed timestamp, whatever its node (if any, not empty) holds: a push is read
 * by this, and each event's whole clock is then held to HLC_PATTERN on its
 * own, so that one event with a bad node is refused alone.
 */
export const PUSHED_HLC_SHAPE = new RegExp(`^${TIME_SOURCE}(?:-[\\s\\S]+)?$`);

/** A timestamp's time and counter alone, without its node, as pull pages carry it. */
export const CLOCK_TIME_PATTERN = new RegExp(`^${TIME_SOURCE}$`);

/** A timestamp's node alone, as pull pages list it. */
export const CLOCK_NODE_PATTERN = new RegExp(`^${NODE_SOURCE}$`);

/** A node of a clock: 1 to MAX_NODE_LENGTH characters of CLOCK_NODE_PATTERN. */
export function isClockNode(value: unknown): value is string {
  return typeof value === 'string' && value.length >= 1 && value.length <= MAX_NODE_LENGTH && CLOCK_NODE_PATTERN.test(value);
}

/** What a clock node may not hold, in words for error messages. */
export const NODE_RULE = 'may not hold control characters (such as a line break), line or paragraph separators, or unpaired surrogates';

/** What keeps `value` from being a whole clock (HLC_PATTERN, at most MAX_HLC_LENGTH characters), in words; undefined when it is one. */
export function clockProblem(value: string): string | undefined {
  if (value.length > MAX_HLC_LENGTH) return `a clock has at most ${MAX_HLC_LENGTH} characters; this one has ${value.length}`;
  if (HLC_PATTERN.test(value)) return undefined;
  const node = PUSHED_HLC_SHAPE.test(value) ? nodeProblem(nodeOf(value)) : undefined;
  if (node) return `the node of a clock ${NODE_RULE}; this one ${node}`;
  return 'a hybrid logical clock value: 15 digits of milliseconds, -, 6 base-36 digits of counter, -, node';
}

/** What keeps `node` from being the node of a clock (the first character that may not be in one, and where), or undefined. */
export function nodeProblem(node: string): string | undefined {
  for (let i = 0; i < node.length; i++) {
    const code = node.charCodeAt(i);
    const at = `U+${code.toString(16).toUpperCase().padStart(4, '0')} at index ${i}`;
    if (code <= 0x1f || (code >= 0x7f && code <= 0x9f)) return `holds a control character (${at}${code === 0x0a || code === 0x0d ? ', a line break' : ''})`;
    if (code === 0x2028 || code === 0x2029) return `holds a line or paragraph separator (${at})`;
    if (code >= 0xd800 && code <= 0xdfff) {
      if (code <= 0xdbff && (node.charCodeAt(i + 1) & 0xfc00) === 0xdc00) i++;
      else return `holds half of a surrogate pair without its other half (${at})`;
    }
  }
  return undefined;
}

/** True when `node` is the node of the (whole) timestamp `hlc`. */
export function hasNode(hlc: string, node: string): boolean {
  return hlc.length === TIME_LENGTH + 1 + node.length && hlc.endsWith(node) && hlc.charCodeAt(TIME_LENGTH) === 45;
}

/** The node of a whole timestamp (one that matches HLC_PATTERN). */
export function nodeOf(hlc: string): string {
  return hlc.slice(TIME_LENGTH + 1);
}

/** The time and counter of a whole timestamp (one that matches HLC_PATTERN), without its node. */
export function timeOf(hlc: string): string {
  return hlc.slice(0, TIME_LENGTH);
}

/** The timestamp without its node when the node is `node` (the pusher's own id, which the server knows); else unchanged. */
export function withoutNode(hlc: string, node: string): string {
  return hasNode(hlc, node) ? timeOf(hlc) : hlc;
}

/** A pushed timestamp made whole again: `node` added when it was left out. */
export function withNode(hlc: string, node: string): string {
  return hlc.length === TIME_LENGTH ? `${hlc}-${node}` : hlc;
}

export function compareHlc(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export class HybridLogicalClock {
  private millis = 0;
  private counter = 0;

  constructor(
    readonly node: string,
    private readonly now: () => number = Date.now,
  ) {}

  /** A timestamp for a local event, later than every timestamp seen so far. */
  tick(): string {
    return this.tickAt(this.now());
  }

  /**
   * A timestamp for a local event that happened at `wallMillis` (for instance
   * a document's write time, when the event is logged a little later). Still
   * later than every timestamp this clock has issued or seen.
   */
  tickAt(wallMillis: number): string {
    const wall = Math.floor(wallMillis);
    if (wall > this.millis) {
      this.millis = wall;
      this.counter = 0;
    } else {
      this.bumpCounter();
    }
    return formatHlc({ millis: this.millis, counter: this.counter, node: this.node });
  }

  /** Merges a timestamp seen on a remote event, so later ticks sort after it. */
  receive(remote: string): void {
    const parsed = parseHlc(remote);
    const wall = this.now();
    if (parsed.millis > wall + MAX_DRIFT_MS) return;
    if (parsed.millis > this.millis) {
      this.millis = parsed.millis;
      this.counter = parsed.counter;
    } else if (parsed.millis === this.millis && parsed.counter > this.counter) {
      this.counter = parsed.counter;
    }
  }

  private bumpCounter(): void {
    if (this.counter >= MAX_COUNTER) {
      this.millis += 1;
      this.counter = 0;
    } else {
      this.counter += 1;
    }
  }
}
