export { BlobWriteError, DIGEST_PATTERN, type BlobStore, type SweepOptions, type UploadState } from './types.js';
export { BlobNotFoundError } from './rules.js';
export { MemoryBlobStore } from './memory.js';
export { FileBlobStore, type FileBlobStoreOptions } from './fs.js';
export { PostgresBlobStore, type PostgresBlobStoreOptions } from './postgres.js';
