/** What every scenario gets and gives back. */
import type { BenchSystem, SystemId } from '../systems/types.js';

export interface BenchConfig {
  /** Document counts for the initial sync (and the bulkInsert floor). */
  sizes: number[];
  /** Documents pushed in the push scenario. */
  pushCount: number;
  /** Sequential writes measured in the live latency scenario. */
  latencyWrites: number;
  /** Readers in the fan-out scenario, and the writes measured there. */
  fanoutReaders: number;
  fanoutWrites: number;
  fanoutBurst: number;
  /** Pushing clients and documents per client in the throughput scenario. */
  throughputClients: number;
  throughputDocs: number;
  /** The initial sync over a slow link: documents, added round-trip time, bandwidth of each direction. */
  slowLink: { n: number; rttMs: number; mbitPerSecond: number };
  /** Repetitions of every timing; the median is reported. */
  runs: number;
  /** Longest wait for one measured step. */
  timeoutMs: number;
}

/** One reported figure: the median over `runs`. */
export interface Measurement {
  scenario: string;
  system: SystemId | 'local-bulkInsert';
  metric: string;
  unit: 'ms' | 'MB' | 'docs/s';
  value: number;
  runs: number[];
  n?: number;
  storage?: string;
  note?: string;
}

export interface ScenarioContext {
  config: BenchConfig;
  systems: readonly BenchSystem[];
  record(measurement: Measurement): void;
  log(message: string): void;
}

export interface Scenario {
  name: string;
  run(ctx: ScenarioContext): Promise<void>;
}
