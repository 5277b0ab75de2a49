/**
 * What a scenario needs from a sync system, so that every scenario runs this
 * project and RxDB's replication-websocket through the same steps.
 */
import type { RxCollection } from 'rxdb';
import type { SyncStorage } from 'rxdb-offline-sync/server';
import type { Todo } from '../lib/documents.js';

export type SystemId = 'offline-sync' | 'rxdb-ws';

export interface BenchSystem {
  readonly id: SystemId;
  /** Shown in tables and the chart. */
  readonly label: string;
  /**
   * A server on a random loopback port; `storage` only for systems with
   * pluggable server storage; `compress`: WebSocket permessage-deflate for
   * messages of 1 KB and more (the clients of both systems accept it).
   */
  startServer(options?: { storage?: SyncStorage; compress?: boolean }): Promise<BenchServer>;
}

export interface BenchServer {
  /** Puts documents on the server directly, untimed, as if clients had pushed them long ago. */
  seed(todos: readonly Todo[]): Promise<void>;
  /** Documents written to the server by clients since it started. */
  readonly written: number;
  /** Resolves once clients have written at least `count` documents to the server. */
  waitForWritten(count: number): Promise<void>;
  /** The loopback port the server listens on. */
  readonly port: number;
  /** A fresh client database on memory storage, not yet syncing; `port` to reach the server another way (a slow link). */
  openClient(options?: { port?: number }): Promise<BenchClient>;
  /** A bare protocol connection that pushes prepared documents, with no local database: loads the server alone. */
  openPusher(): Promise<BenchPusher>;
  /**
   * A bare protocol connection that pulls every event in pages, as a fresh
   * client's first sync asks for them, and neither checks nor stores any:
   * what the server and the wire cost alone. Only for this project.
   */
  openPuller?(): Promise<BenchPuller>;
  stop(): Promise<void>;
}

export interface BenchClient {
  readonly todos: RxCollection<Todo>;
  /** Starts live sync; resolves when the first full sync with the server has finished. */
  startSync(): Promise<void>;
  /**
   * Resolves once the client has finished its own work on what it pushed
   * (acknowledgements processed; for this project also folded into per-document
   * shadows, which it defers until it is idle).
   */
  settled(): Promise<void>;
  close(): Promise<void>;
}

export interface BenchPuller {
  /** Pulls from sequence 0 in pages of `limit` until the server has no more; resolves with the number of events received. */
  pullAll(limit: number): Promise<number>;
  close(): void;
}

export interface BenchPusher {
  /** Sends one push request with these documents as inserts; resolves when the server has acknowledged all of them. */
  push(todos: readonly Todo[]): Promise<void>;
  close(): void;
}
