/**
 * A photo on a todo: taken with the camera or picked from the device,
 * scaled down (field networks are slow), stored as the todo's "photo"
 * attachment, and synced by the plugin beside the document. Each row shows
 * the photo once its content is here, and the progress of its upload or
 * download from `transfers$`.
 */
import type { RxDocument } from 'rxdb';
import type { Observable } from 'rxjs';
import type { Todo } from './database.js';

export const PHOTO_ID = 'photo';
const MAX_SIDE = 1600;

interface Transfer {
  direction: 'upload' | 'download';
  documentId: string;
  attachmentId: string;
  done: number;
  total: number;
}

/** A smaller JPEG of `file`; the file itself when the browser cannot decode it. */
async function scaledDown(file: File): Promise<Blob> {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
    if (scale === 1 && file.size < 1024 * 1024) return file;
    const canvas = document.createElement('canvas');
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    canvas.getContext('2d')!.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise<Blob | null>((resolve) => canvas.toBlob(resolve, 'image/jpeg', 0.85));
    return blob ?? file;
  } catch {
    return file;
  }
}

export class Photos {
  private readonly shown = new Map<string, string>();
  private transfers = new Map<string, Transfer>();

  constructor(
    private readonly options: {
      transfers$: Observable<Transfer[]>;
      panel: HTMLElement;
      titleOf: (documentId: string) => string;
      log: (text: string) => void;
    },
  ) {
    options.transfers$.subscribe((list) => this.showTransfers(list.filter((transfer) => transfer.attachmentId === PHOTO_ID)));
  }

  /** Adds the photo controls to a row (once) and shows the todo's photo as it is now. */
  decorate(doc: RxDocument<Todo>, row: HTMLLIElement): void {
    let box = row.querySelector<HTMLDivElement>('.photo');
    if (!box) {
      box = this.createBox(row);
      row.append(box);
    }
    const image = box.querySelector('img')!;
    const state = box.querySelector<HTMLSpanElement>('.photo-state')!;
    const attachment = doc.getAttachment(PHOTO_ID);
    if (!attachment) {
      image.hidden = true;
      state.textContent = '';
      this.shown.delete(doc.id);
      return;
    }
    if (this.shown.get(doc.id) === attachment.digest) return;
    this.shown.set(doc.id, attachment.digest);
    state.textContent = 'Photo on its way…';
    attachment.getData().then(
      (blob) => {
        if (this.shown.get(doc.id) !== attachment.digest) return;
        if (image.src) URL.revokeObjectURL(image.src);
        image.src = URL.createObjectURL(blob);
        image.hidden = false;
        state.textContent = '';
      },
      () => {
        // Not here yet and no link to fetch it: the next change of the todo (its content arriving) tries again.
        this.shown.delete(doc.id);
        state.textContent = 'Photo arrives when this device is online.';
      },
    );
  }

  private createBox(row: HTMLLIElement): HTMLDivElement {
    const box = document.createElement('div');
    box.className = 'photo';
    const image = document.createElement('img');
    image.alt = 'photo';
    image.hidden = true;
    image.dataset.testid = 'photo';
    const state = document.createElement('span');
    state.className = 'photo-state';
    const progress = document.createElement('progress');
    progress.hidden = true;
    progress.dataset.testid = 'photo-progress';
    const pick = (label: string, capture: boolean, testid: string) => {
      const wrapper = document.createElement('label');
      wrapper.className = 'photo-pick';
      const input = document.createElement('input');
      input.type = 'file';
      input.accept = 'image/*';
      if (capture) input.setAttribute('capture', 'environment');
      input.hidden = true;
      input.dataset.testid = testid;
      input.addEventListener('change', () => void this.put(row.dataset.id!, input));
      wrapper.append(input, label);
      return wrapper;
    };
    box.append(image, state, progress, pick('Take photo', true, 'photo-camera'), pick('Choose photo', false, 'photo-input'));
    return box;
  }

  private async put(documentId: string, input: HTMLInputElement): Promise<void> {
    const file = input.files?.[0];
    input.value = '';
    if (!file) return;
    const doc = this.docs?.(documentId);
    if (!doc) return;
    const data = await scaledDown(file);
    await doc.putAttachment({ id: PHOTO_ID, data, type: data.type || 'image/jpeg' });
  }

  /** How a row finds its todo; set by the app. */
  docs?: (documentId: string) => RxDocument<Todo> | undefined;

  private showTransfers(list: Transfer[]): void {
    const next = new Map(list.map((transfer) => [`${transfer.direction}|${transfer.documentId}`, transfer]));
    for (const [key, transfer] of this.transfers) {
      if (!next.has(key)) {
        this.progressOf(transfer.documentId, null);
        if (transfer.direction === 'upload') this.options.log(`Photo for "${this.options.titleOf(transfer.documentId)}" is on the server.`);
      }
    }
    this.transfers = next;
    const lines = [...next.values()].map((transfer) => {
      this.progressOf(transfer.documentId, transfer);
      const line = document.createElement('div');
      const bar = document.createElement('progress');
      bar.max = transfer.total;
      bar.value = transfer.done;
      const percent = transfer.total ? Math.floor((transfer.done / transfer.total) * 100) : 0;
      line.append(`${transfer.direction === 'upload' ? 'Sending' : 'Receiving'} the photo of "${this.options.titleOf(transfer.documentId)}": ${percent} %`, bar);
      return line;
    });
    this.options.panel.replaceChildren(...lines);
    this.options.panel.hidden = lines.length === 0;
  }

  private progressOf(documentId: string, transfer: Transfer | null): void {
    const bar = document.querySelector<HTMLProgressElement>(`[data-testid="todo"][data-id="${CSS.escape(documentId)}"] progress`);
    if (!bar) return;
    bar.hidden = !transfer;
    if (transfer) {
      bar.max = transfer.total;
      bar.value = transfer.done;
      bar.title = `${transfer.direction === 'upload' ? 'sending' : 'receiving'} the photo`;
    }
  }
}
