/** The switch (enable() / disable()): this instance's, or in a multi-instance database the database's. */
import { isNewerSwitch, type SyncSwitch } from '../settings.js';
import { goOffline, goOnline } from './connection.js';
import type { EngineState } from './state.js';
import { fail, standingError, updateStatus } from './status.js';

/**
 * In a multi-instance database the switch is the database's: whichever
 * tab sets it, the leader obeys at once (it is sent to every tab), and a
 * reload or a tab elected later obeys it too (it is stored). A single
 * instance's switch lasts as long as the instance.
 */
export function setSwitch(state: EngineState, enabled: boolean): void {
  const tabs = state.tabs;
  if (tabs && state.settings && !state.closed) {
    // Later than any switch this tab has seen, also within one millisecond.
    const value: SyncSwitch = { enabled, at: Math.max(Date.now(), (state.syncSwitch?.at ?? 0) + 1), by: state.db.token };
    state.syncSwitch = value;
    tabs.sendSwitch(value);
    // Sent again once stored: a tab that opened meanwhile may have read the storage before the write.
    void state.settings.saveSwitch(value).then(() => tabs.sendSwitch(value), (error: unknown) => fail(state, error));
  }
  applySwitch(state, enabled);
}

/** A switch another tab set, or the stored one: obeyed when it is the latest this tab knows. */
export function takeSwitch(state: EngineState, value: SyncSwitch): void {
  if (!isNewerSwitch(state.syncSwitch, value)) return;
  state.syncSwitch = value;
  applySwitch(state, value.enabled);
}

function applySwitch(state: EngineState, enabled: boolean): void {
  if (enabled) {
    if (state.status$.value.enabled || state.closed) return;
    updateStatus(state, { enabled: true, error: standingError(state) });
    if (state.options.autoSync && state.transport) goOnline(state);
  } else {
    if (!state.status$.value.enabled) return;
    updateStatus(state, { enabled: false });
    goOffline(state);
  }
}
