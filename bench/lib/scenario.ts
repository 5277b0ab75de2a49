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
  /**
   * The attachments scenario (scenarios/attachments.ts): the bytes of the
   * attachment sent over the slow link (slowLink's round trip and
   * bandwidth), and of the one the server's memory is watched through.
   */
  attachments: { bytes: number; rssBytes: number };
  /**
   * The scale scenario (scenarios/scale.ts): subscriber counts of each part,
   * broadcasts per size, how long writers write, events written before the
   * storm, and the processes the devices are spread over.
   */
  scale: {
    broadcastSizes: number[];
    broadcasts: number;
    sustainedSizes: number[];
    sustainedMs: number;
    stormSizes: number[];
    stormWrites: number;
    instanceSubscribers: number;
    instanceMs: number;
    clientProcesses: number;
  };
  /** Repetitions of every timing; the median is reported. */
  runs: number;
  /**
   * Repetitions of the short alternating scenarios (push, fan-out): a run
   * takes a second or so, and single runs move by a fifth or more, so more
   * of them steady the median at little cost.
   */
  shortRuns: number;
  /** Longest wait for one measured step. */
  timeoutMs: number;
}

/** One reported figure: the median over `runs`. */
export interface Measurement {
  scenario: string;
  system: SystemId | 'local-bulkInsert' | 'bare-socket.io';
  metric: string;
  unit: 'ms' | 'MB' | 'docs/s';
  value: number;
  runs: number[];
  n?: number;
  storage?: string;
  note?: string;
  /** Runs that hit the scenario's cap (`cap`, in `unit`): counted at the cap, so the figure is a lower bound. */
  censored?: number;
  cap?: number;
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

/** For a scenario of this project only: true, and said in the log, when --systems leaves this project out. */
export function withoutThisProject({ systems, log }: Pick<ScenarioContext, 'systems' | 'log'>, name: string): boolean {
  if (systems.some((system) => system.id === 'offline-sync')) return false;
  log(`${name}: only for this project, which is not among --systems; skipped`);
  return true;
}

/**
 * The runs of every system, interleaved: run 1 of each system, then run 2 of
 * each in the reverse order, and so on (A B, B A, A B). This machine's speed
 * drifts by tens of percent over minutes; measured one system after the
 * other, that drift lands on one side of a ratio. Interleaved, both sides
 * meet it alike, and neither always runs first after the other's garbage.
 */
export function* alternating<S>(systems: readonly S[], runs: number): Generator<{ system: S; run: number }> {
  for (let run = 0; run < runs; run++) {
    const order = run % 2 === 0 ? systems : [...systems].reverse();
    for (const system of order) yield { system, run };
  }
}
