import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Progress tokens are derived, not stored: HMAC-SHA256 of the job's namespace, name and uid
 * under the operator's key. The operator writes each job's token into a Secret for its pod
 * and checks a presented token by recomputing it, so it never needs to read a Secret, and a
 * token for one job (or an earlier job of the same name) is refused for any other.
 */
export function progressToken(key: Buffer, job: { namespace: string; name: string; uid: string }): string {
  return createHmac("sha256", key).update(`${job.namespace}/${job.name}/${job.uid}`).digest("base64url");
}

export function tokenMatches(key: Buffer, job: { namespace: string; name: string; uid: string }, presented: string): boolean {
  const expected = Buffer.from(progressToken(key, job));
  const actual = Buffer.from(presented);
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}
