/**
 * Attachments as sync carries them. A document's attachments travel inside
 * its data, under `_attachments` (a field name RxDB reserves, so no app
 * field can collide with it), as `{ [id]: { digest, length, type } }`: part
 * of the document's version, so they follow it through pushes, pulls,
 * conflicts (merge keeps one side's new attachment beside the other's edit)
 * and authorization. The content goes separately, as a blob addressed by
 * its digest, the SHA-256 of its bytes in hex (RxDB's default digest).
 */
import { z } from 'zod';
import { isStorableText } from './protocol/fields.js';

export const ATTACHMENTS_FIELD = '_attachments';

/** A blob's address: the SHA-256 of its bytes, as 64 lowercase hex digits. */
export const DIGEST_PATTERN = /^[0-9a-f]{64}$/;
export const digestSchema = z.string().regex(DIGEST_PATTERN, 'a SHA-256 digest as 64 lowercase hex digits');

/** At most this many attachments on one document. */
export const MAX_ATTACHMENTS_PER_DOCUMENT = 256;

export const attachmentIdSchema = z
  .string()
  .min(1)
  .max(512)
  .refine(isStorableText, 'an attachment id holds a NUL character or an unpaired surrogate');

export const attachmentMetaSchema = z.strictObject({
  digest: digestSchema,
  length: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  type: z.string().max(256).refine(isStorableText, 'a content type holds a NUL character or an unpaired surrogate'),
});
export type AttachmentMeta = z.infer<typeof attachmentMetaSchema>;

export const attachmentsSchema = z
  .record(attachmentIdSchema, attachmentMetaSchema)
  .refine((value) => Object.keys(value).length <= MAX_ATTACHMENTS_PER_DOCUMENT, `at most ${MAX_ATTACHMENTS_PER_DOCUMENT} attachments per document`);
export type Attachments = Record<string, AttachmentMeta>;

/** The attachments a document's data names (none: undefined). Not checked: see attachmentsProblem. */
export function attachmentsOf(data: Record<string, unknown>): Attachments | undefined {
  const value = data[ATTACHMENTS_FIELD];
  return value && typeof value === 'object' ? (value as Attachments) : undefined;
}

/** What is wrong with the `_attachments` of a document's data, as `path: reason`; undefined when nothing (or none). */
export function attachmentsProblem(data: Record<string, unknown>): string | undefined {
  if (!Object.hasOwn(data, ATTACHMENTS_FIELD)) return undefined;
  const parsed = attachmentsSchema.safeParse(data[ATTACHMENTS_FIELD]);
  if (parsed.success) return undefined;
  const issue = parsed.error.issues[0]!;
  return `${[ATTACHMENTS_FIELD, ...issue.path.map(String)].join('.')}: ${issue.message}`;
}

/** Every digest a document's data names, once each. */
export function digestsOf(data: Record<string, unknown>): string[] {
  const attachments = attachmentsOf(data);
  if (!attachments) return [];
  return [...new Set(Object.values(attachments).map((meta) => meta.digest))];
}

/**
 * The digest the client plugin gives an attachment whose content it has not
 * downloaded yet: RxDB keeps the attachment (with no bytes) under it, the
 * app sees it on `RxAttachment.digest`, and getData() fetches the content.
 * It holds the real length, which RxDB cannot keep for an empty blob.
 */
const PLACEHOLDER_PREFIX = 'rxofflinesync-pending-';

export function placeholderDigest(meta: Pick<AttachmentMeta, 'digest' | 'length'>): string {
  return `${PLACEHOLDER_PREFIX}${meta.length}-${meta.digest}`;
}

/** The digest and length a placeholder stands for; undefined for a real digest. */
export function parsePlaceholder(digest: string): { digest: string; length: number } | undefined {
  if (!digest.startsWith(PLACEHOLDER_PREFIX)) return undefined;
  const rest = digest.slice(PLACEHOLDER_PREFIX.length);
  const dash = rest.indexOf('-');
  return { length: Number(rest.slice(0, dash)), digest: rest.slice(dash + 1) };
}
