/** What the attachments scenario and its server process (attachments-server.ts) say to each other over IPC. */

export interface AttachmentServerConfig {
  /** The SQLite file; the content goes in `<path>.attachments`, as the CLI puts it. */
  path: string;
  maxAttachmentBytes: number;
}

export type AttachmentServerReport =
  | { type: 'ready'; port: number }
  | { type: 'push'; accepted: number; at: number }
  | { type: 'appended'; id: number; bytes: number; appends: number; refused: number };

export type AttachmentServerRequest = { type: 'appended'; id: number } | { type: 'exit' };

/** The machine's monotonic clock in ms, comparable between processes. */
export const clock = (): number => Number(process.hrtime.bigint()) / 1e6;
