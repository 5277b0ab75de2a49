export * from './errors.js';
export * from './hlc.js';
export * from './protocol.js';
export * from './json.js';
export * from './logger.js';
