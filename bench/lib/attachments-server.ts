/**
 * The attachments scenario's sync server, run as a child process of its own
 * (scenarios/attachments.ts forks it) so that its RSS is the server's alone:
 * the built package (dist/) as `serve --storage sqlite:<path>` sets it up,
 * SQLite for the documents and a FileBlobStore in `<path>.attachments` for
 * the content. One option differs from the CLI's: maxAttachmentBytes, which
 * the CLI leaves at its default (100 MiB) and the 200 MB transfer passes.
 *
 * Over IPC it reports `ready` (port), every push that stored events (with
 * the time on the machine's monotonic clock, the same in every process),
 * and on request the bytes its blob store was given to append: what reached
 * it of every upload, a chunk resent after a dropped link included.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { FileBlobStore, SqliteSyncStorage, createSyncServer } from 'rxdb-offline-sync/server';
import { clock, type AttachmentServerConfig, type AttachmentServerReport, type AttachmentServerRequest } from './attachments-ipc.js';

async function main(): Promise<void> {
  const config = JSON.parse(process.argv[2]!) as AttachmentServerConfig;
  const send = (report: AttachmentServerReport) => process.send?.(report);
  // The parent is gone: so is this server.
  process.on('disconnect', () => process.exit(0));

  const storage = new SqliteSyncStorage({ path: config.path });
  const blobs = new FileBlobStore({ directory: `${config.path}.attachments` });
  let appendedBytes = 0;
  let appends = 0;
  let refused = 0;
  const append = blobs.append.bind(blobs);
  blobs.append = async (digest, owner, length, offset, bytes) => {
    appendedBytes += bytes.byteLength;
    appends++;
    try {
      return await append(digest, owner, length, offset, bytes);
    } catch (error) {
      refused++;
      throw error;
    }
  };

  const httpServer = createServer();
  const server = createSyncServer({ httpServer, storage, blobs, logging: { enabled: false }, maxAttachmentBytes: config.maxAttachmentBytes });
  await server.start();
  server.events.on('push', ({ accepted }) => {
    if (accepted > 0) send({ type: 'push', accepted, at: clock() });
  });

  process.on('message', (request: AttachmentServerRequest) => {
    if (request.type === 'appended') {
      send({ type: 'appended', id: request.id, bytes: appendedBytes, appends, refused });
      return;
    }
    void server
      .stop()
      .then(() => storage.close())
      .then(() => blobs.close())
      .finally(() => process.exit(0));
  });

  httpServer.listen(0, '127.0.0.1', () => send({ type: 'ready', port: (httpServer.address() as AddressInfo).port }));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
