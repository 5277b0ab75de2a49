/**
 * The sync panel's activity list: newest first, each line in plain words,
 * with the technical detail (an error's code and message) folded away.
 */
export type ActivityKind = 'sent' | 'received' | 'conflict' | 'error' | 'link' | 'info';

const MAX_LINES = 200;

export interface ActivityLine {
  kind: ActivityKind;
  text: string;
  /** Shown in a <details>: codes and messages for whoever needs them. */
  detail?: string;
}

export function createActivityLog(list: HTMLOListElement): (line: ActivityLine) => void {
  let last: { text: string; item: HTMLLIElement; times: number } | undefined;
  return ({ kind, text, detail }) => {
    // The same line again (a retry failing the same way) counts up instead of filling the panel.
    if (last && last.text === text && list.firstElementChild === last.item) {
      last.times++;
      last.item.querySelector('.times')!.textContent = ` ×${last.times}`;
      last.item.querySelector('time')!.textContent = new Date().toLocaleTimeString();
      return;
    }
    const item = document.createElement('li');
    item.dataset.kind = kind;
    const time = document.createElement('time');
    time.textContent = new Date().toLocaleTimeString();
    const words = document.createElement('span');
    words.className = 'words';
    words.textContent = text;
    const times = document.createElement('span');
    times.className = 'times';
    item.append(time, words, times);
    if (detail) {
      const details = document.createElement('details');
      const summary = document.createElement('summary');
      summary.textContent = 'details';
      const code = document.createElement('code');
      code.textContent = detail;
      details.append(summary, code);
      item.append(details);
    }
    list.prepend(item);
    last = { text, item, times: 1 };
    while (list.children.length > MAX_LINES) list.lastElementChild!.remove();
  };
}
