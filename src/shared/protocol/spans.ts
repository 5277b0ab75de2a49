/** Sets of sequences as spans: how a pull's `have` names the events a client already holds. */
import { z } from 'zod';
import { sequenceSchema } from './fields.js';

/** A sequence, or an inclusive range of them as `[first, last]`. */
export const sequenceSpanSchema = z.union([sequenceSchema, z.tuple([sequenceSchema, sequenceSchema])]);
export type SequenceSpan = z.infer<typeof sequenceSpanSchema>;

/** Sequences as the fewest spans: runs of consecutive ones become ranges. */
export function toSpans(sequences: Iterable<number>): SequenceSpan[] {
  const sorted = [...new Set(sequences)].sort((a, b) => a - b);
  const spans: SequenceSpan[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    spans.push(j === i ? sorted[i]! : [sorted[i]!, sorted[j]!]);
    i = j + 1;
  }
  return spans;
}

/** A membership test over spans, by binary search (a range is never expanded, however wide). */
export function spanSet(spans: readonly SequenceSpan[]): (seq: number) => boolean {
  const sorted = spans
    .map((span): [number, number] => (typeof span === 'number' ? [span, span] : [span[0], span[1]]))
    .filter(([first, last]) => first <= last)
    .sort((a, b) => a[0] - b[0]);
  // Overlapping or touching ranges merged: the search below needs them disjoint.
  const ranges: [number, number][] = [];
  for (const range of sorted) {
    const previous = ranges[ranges.length - 1];
    if (previous && range[0] <= previous[1] + 1) previous[1] = Math.max(previous[1], range[1]);
    else ranges.push(range);
  }
  return (seq) => {
    let low = 0;
    let high = ranges.length - 1;
    while (low <= high) {
      const middle = (low + high) >> 1;
      const [first, last] = ranges[middle]!;
      if (seq < first) high = middle - 1;
      else if (seq > last) low = middle + 1;
      else return true;
    }
    return false;
  };
}
