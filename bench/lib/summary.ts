/**
 * Turns the measurements into the summary: one row per figure with both
 * systems side by side, the ratio, and the targets of issue 8 checked.
 */
import type { Measurement } from './scenario.js';

export interface SummaryRow {
  label: string;
  /** A shorter label for the chart, when `label` is too long for it, and a detail line under it. */
  short?: { title: string; detail?: string };
  unit: Measurement['unit'] | 'x';
  ours?: number;
  rxdb?: number;
  /** How many times better this project is than RxDB (>1: better), for rows with both. */
  advantage?: number;
  target?: string;
  met?: boolean;
}

/** Higher is better for rates; lower for times and memory. */
const higherIsBetter = (unit: string) => unit === 'docs/s';

const find = (all: readonly Measurement[], query: Partial<Measurement>) =>
  all.find((m) => Object.entries(query).every(([key, value]) => m[key as keyof Measurement] === value));

export function formatValue(value: number | undefined, unit: string): string {
  if (value === undefined || Number.isNaN(value)) return '—';
  if (unit === 'docs/s') return Math.round(value).toLocaleString('en-US');
  if (unit === 'x') return `${value.toFixed(2)}×`;
  const digits = Math.abs(value) < 10 ? 2 : Math.abs(value) < 100 ? 1 : 0;
  return value.toFixed(digits);
}

export const kilo = (n: number) => (n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n));

export function summarize(all: readonly Measurement[]): SummaryRow[] {
  const rows: SummaryRow[] = [];
  const pair = (label: string, query: Partial<Measurement>, target?: { text: string; check(advantage: number, ours: number): boolean }, short?: SummaryRow['short']) => {
    const ours = find(all, { ...query, system: 'offline-sync' });
    const rxdb = find(all, { ...query, system: 'rxdb-ws' });
    if (!ours && !rxdb) return;
    const unit = (ours ?? rxdb)!.unit;
    const row: SummaryRow = { label, unit, ours: ours?.value, rxdb: rxdb?.value, ...(short ? { short } : {}) };
    if (ours && rxdb && ours.value > 0 && rxdb.value > 0) row.advantage = higherIsBetter(unit) ? ours.value / rxdb.value : rxdb.value / ours.value;
    if (target && ours && (row.advantage !== undefined || !rxdb)) {
      row.target = target.text;
      row.met = target.check(row.advantage ?? Number.NaN, ours.value);
    }
    rows.push(row);
  };

  const sizes = [...new Set(all.filter((m) => m.scenario === 'initial-sync').map((m) => m.n!))].sort((a, b) => a - b);
  // The targets are stated for 50k and 100k; a smaller run checks its two largest sizes the same way.
  const targetN = sizes.includes(50_000) ? 50_000 : sizes.at(-2) ?? sizes.at(-1);
  for (const n of sizes) {
    pair(`initial sync, ${kilo(n)} docs`, { scenario: 'initial-sync', n, metric: 'time' }, n === targetN ? { text: '≥ 10× faster', check: (a) => a >= 10 } : undefined);
  }
  for (const n of sizes) {
    const floor = find(all, { scenario: 'floor', n, metric: 'time' });
    if (floor) rows.push({ label: `floor: local bulkInsert of ${kilo(n)}, no sync`, unit: 'ms', ours: floor.value });
  }
  const floor = find(all, { scenario: 'floor', n: targetN, metric: 'time' });
  const oursAtTarget = find(all, { scenario: 'initial-sync', n: targetN, metric: 'time', system: 'offline-sync' });
  const rxdbAtTarget = find(all, { scenario: 'initial-sync', n: targetN, metric: 'time', system: 'rxdb-ws' });
  if (floor && oursAtTarget && targetN !== undefined) {
    const ratio = oursAtTarget.value / floor.value;
    rows.push({
      label: `initial sync ÷ floor, ${kilo(targetN)} docs`,
      unit: 'x',
      ours: ratio,
      ...(rxdbAtTarget ? { rxdb: rxdbAtTarget.value / floor.value } : {}),
      target: '≤ 4× (ours)',
      met: ratio <= 4,
    });
  }
  const pulls = find(all, { scenario: 'wire', n: targetN, metric: 'pull-pages' });
  const alone = find(all, { scenario: 'wire', n: targetN, metric: 'documents' });
  if (targetN !== undefined && (pulls || alone)) {
    if (pulls) rows.push({ label: `wire: bare pulls of ${kilo(targetN)}, nothing checked or stored`, unit: 'ms', ours: pulls.value });
    if (alone) rows.push({ label: `wire: the ${kilo(targetN)} documents alone over socket.io`, unit: 'ms', ours: alone.value });
    // No initial sync over this protocol can take less than storing the documents plus receiving them.
    if (pulls && floor && rxdbAtTarget) {
      rows.push({ label: `best possible vs RxDB, ${kilo(targetN)}: RxDB ÷ (floor + bare pulls)`, unit: 'x', ours: rxdbAtTarget.value / (floor.value + pulls.value) });
    }
  }
  if (sizes.length >= 2) {
    const [small, big] = sizes.slice(-2) as [number, number];
    const limit = 1.25 * (big / small);
    const growth = (system: string) => {
      const a = find(all, { scenario: 'initial-sync', n: small, metric: 'time', system: system as never });
      const b = find(all, { scenario: 'initial-sync', n: big, metric: 'time', system: system as never });
      return a && b ? b.value / a.value : undefined;
    };
    const ours = growth('offline-sync');
    rows.push({
      label: `initial sync ${kilo(big)} ÷ ${kilo(small)}`,
      unit: 'x',
      ours,
      rxdb: growth('rxdb-ws'),
      target: `≤ ${limit.toFixed(2)}× (ours)`,
      ...(ours !== undefined ? { met: ours <= limit } : {}),
    });
  }
  const biggest = sizes.at(-1);
  if (biggest !== undefined) {
    pair(`peak heap growth, initial sync ${kilo(biggest)}`, { scenario: 'initial-sync', n: biggest, metric: 'peak-heap' });
  }
  const slow = find(all, { scenario: 'slow-link' });
  if (slow) {
    const detail = `${kilo(slow.n!)} docs, ${slow.note!.replace(' round trip', ' RTT')}`;
    pair(`initial sync, ${detail}`, { scenario: 'slow-link', metric: 'time' }, undefined, { title: 'initial sync, slow link', detail });
    pair(`initial sync, ${detail}, compressed`, { scenario: 'slow-link', metric: 'compressed' }, undefined, { title: 'initial sync, slow link, compressed', detail });
  }
  const pushed = find(all, { scenario: 'push' });
  if (pushed) {
    pair(`push, ${kilo(pushed.n!)} docs`, { scenario: 'push', metric: 'time' }, { text: 'no slower', check: (a) => a >= 1 });
    pair(`push, ${kilo(pushed.n!)} docs, until the client has settled`, { scenario: 'push', metric: 'settled' });
  }
  pair('live latency p50', { scenario: 'latency', metric: 'p50' });
  pair('live latency p95', { scenario: 'latency', metric: 'p95' });
  pair('live latency p99', { scenario: 'latency', metric: 'p99' }, { text: '≤ 10 ms (ours)', check: (_, ours) => ours <= 10 });
  const fan = find(all, { scenario: 'fanout', metric: 'p50' });
  const readers = fan?.note ?? '';
  pair(`fan-out latency p50, ${readers}`, { scenario: 'fanout', metric: 'p50' }, { text: 'no slower', check: (a) => a >= 1 });
  pair(`fan-out latency p99, ${readers}`, { scenario: 'fanout', metric: 'p99' }, { text: 'no slower', check: (a) => a >= 1 });
  const burst = find(all, { scenario: 'fanout', metric: 'burst' });
  if (burst) pair(`fan-out burst of ${kilo(burst.n!)}, ${readers}`, { scenario: 'fanout', metric: 'burst' }, { text: 'no slower', check: (a) => a >= 1 });
  for (const storage of ['memory', 'sqlite', 'postgres']) {
    const m = find(all, { scenario: 'throughput', storage, metric: 'server' });
    if (m) pair(`server throughput, ${m.note}, bare pushers, ${storage}`, { scenario: 'throughput', storage, metric: 'server' }, undefined, { title: `server throughput, ${storage}`, detail: `${m.note!.replace(' clients', '')}, bare pushers` });
  }
  const e2e = find(all, { scenario: 'throughput', metric: 'end-to-end' });
  if (e2e) pair(`end-to-end push throughput, ${e2e.note}`, { scenario: 'throughput', metric: 'end-to-end' }, undefined, { title: 'push throughput, end to end', detail: e2e.note });
  const converged = find(all, { scenario: 'throughput', metric: 'converged' });
  if (converged) {
    pair(`end-to-end, until every client holds all, ${converged.note}`, { scenario: 'throughput', metric: 'converged' }, undefined, { title: 'throughput until all clients converged', detail: converged.note });
  }
  // A percentile that falls on runs counted at the cap is only a lower bound: named in the label, not compared.
  const outage = (metric: string, label: string, target?: number) => {
    const ours = find(all, { scenario: 'outage', metric, system: 'offline-sync' });
    const rxdb = find(all, { scenario: 'outage', metric, system: 'rxdb-ws' });
    if (!ours && !rxdb) return;
    const bounded = (m: Measurement | undefined) => m?.censored !== undefined && m.cap !== undefined && m.value >= m.cap;
    const bounds = [ours, rxdb].flatMap((m) => (m && bounded(m) ? [`${m.system === 'offline-sync' ? 'ours' : 'RxDB'} > ${m.cap} ms`] : []));
    const row: SummaryRow = { label: bounds.length > 0 ? `${label} (${bounds.join(', ')})` : label, unit: 'ms' };
    if (ours && !bounded(ours)) row.ours = ours.value;
    if (rxdb && !bounded(rxdb)) row.rxdb = rxdb.value;
    if (row.ours !== undefined && row.rxdb !== undefined && row.ours > 0) row.advantage = row.rxdb / row.ours;
    if (target !== undefined && ours) {
      row.target = `≤ ${target} ms (ours)`;
      row.met = row.ours !== undefined && row.ours <= target;
    }
    rows.push(row);
  };
  outage('detect-p50', 'outage: dead link noticed, p50');
  outage('detect-p95', 'outage: dead link noticed, p95', 5000);
  outage('resync-p50', 'outage: in sync after the link returns, p50');
  outage('resync-p95', 'outage: in sync after the link returns, p95', 1000);
  return rows;
}

/** The summary as a Markdown table (readable in a terminal too). */
export function summaryTable(rows: readonly SummaryRow[], labels: { ours: string; rxdb: string }): string {
  const header = ['figure', 'unit', labels.ours, labels.rxdb, 'ours vs RxDB', 'target', 'met'];
  const body = rows.map((row) => [
    row.label,
    row.unit === 'x' ? 'ratio' : row.unit,
    formatValue(row.ours, row.unit),
    formatValue(row.rxdb, row.unit),
    row.advantage === undefined ? '' : `${row.advantage.toFixed(2)}× ${row.advantage >= 1 ? 'better' : 'worse'}`,
    row.target ?? '',
    row.met === undefined ? '' : row.met ? 'yes' : 'NO',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((cells) => cells[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((cell, i) => cell.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n');
}
