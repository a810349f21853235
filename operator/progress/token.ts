import { createHmac, timingSafeEqual } from "node:crypto";

/** Whose reports a token admits: one attempt (one trainer pod) of one job. */
export interface TokenSubject {
  namespace: string;
  name: string;
  uid: string;
  /** The attempt number, as in the trainer pod's name (`<job>-train-<attempt>`) and status.attempts. */
  attempt: number;
}

/**
 * Progress tokens are derived, not stored: HMAC-SHA256 of the job's namespace, name, uid and
 * attempt under the operator's key. The operator writes the token of each new attempt into the
 * job's Secret just before it creates that attempt's pod, and checks a presented token by
 * recomputing it, so it never needs to read a Secret. A token is refused for any other job, for
 * an earlier job of the same name, and (because the attempt is in it) for any other attempt:
 * a pod of an attempt the operator has given up on (a partitioned node, an eviction the pod
 * survived) cannot write the status of the attempt that replaced it.
 */
export function progressToken(key: Buffer, subject: TokenSubject): string {
  return createHmac("sha256", key).update(`${subject.namespace}/${subject.name}/${subject.uid}/attempt-${subject.attempt}`).digest("base64url");
}

export function tokenMatches(key: Buffer, subject: TokenSubject, presented: string): boolean {
  const expected = Buffer.from(progressToken(key, subject));
  const actual = Buffer.from(presented);
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}
