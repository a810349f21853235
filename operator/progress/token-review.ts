import type { V1Pod } from "@kubernetes/client-node";
import { createHash } from "node:crypto";
import type { FineTuneJob } from "../../api/index.ts";
import type { KubeClient } from "../../kube/client.ts";
import { LABEL_ATTEMPT, LABEL_COMPONENT, trainerPodName } from "../finetunejob/pods.ts";

/** Who the API server says a token belongs to (TokenReview status.user). */
export interface ReviewedUser {
  username: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

export type TokenReviewResult = { authenticated: true; user: ReviewedUser; audiences: string[] } | { authenticated: false; reason: string };

/** The API server could not review the token (5xx, timeout, unreachable, or the operator may not ask): answer 503, not 403. */
export class TokenReviewUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TokenReviewUnavailable";
  }
}

interface TokenReviewObject {
  status?: { authenticated?: boolean; user?: ReviewedUser; audiences?: string[]; error?: string };
}

export interface TokenReviewerOptions {
  /** spec.audiences of every review; the token must be valid for one of them. Unset: the API server's own audiences. */
  audiences?: string[];
  /** Positive reviews kept at most this long (and never past the token's own expiry). Default 5 minutes. */
  maxTtlMs?: number;
  /** Negative reviews kept this long, so that a caller repeating a bad token costs the API server little. Default 5 s. */
  failureTtlMs?: number;
  /** Tokens remembered at most; the oldest entry goes first. Default 10,000. */
  maxEntries?: number;
  /** How long one review may take before it counts as an outage. Default 10 s. */
  timeoutMs?: number;
  now?: () => number;
}

const TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews";

/**
 * Asks the API server whose a bearer token is (a TokenReview, as kube-rbac-proxy and
 * controller-runtime's authentication filter do), caching the answer by the token's SHA-256
 * (never the token itself). A positive answer is kept until the token expires (its JWT `exp`,
 * which the API server has just vouched for) or for maxTtlMs, whichever is sooner; a negative
 * one only briefly; an API failure not at all, and it throws TokenReviewUnavailable. Concurrent
 * reviews of one token share one request, so a trainer's burst of reports costs one review.
 */
export class TokenReviewer {
  private readonly cache = new Map<string, { result: TokenReviewResult; until: number }>();
  private readonly inFlight = new Map<string, Promise<TokenReviewResult>>();
  /** TokenReviews sent to the API server; tests read it. */
  requests = 0;

  constructor(
    private readonly client: Pick<KubeClient, "create">,
    private readonly options: TokenReviewerOptions = {},
  ) {}

  async review(token: string): Promise<TokenReviewResult> {
    const now = this.now();
    const key = keyOf(token);
    const cached = this.cache.get(key);
    if (cached && cached.until > now) return cached.result;
    if (cached) this.cache.delete(key);
    const pending = this.inFlight.get(key);
    if (pending) return pending;
    const request = this.ask(token)
      .then((result) => {
        this.remember(key, result, token);
        return result;
      })
      .finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, request);
    return request;
  }

  /** Drops what is cached for the token: its next review asks the API server again. */
  forget(token: string): void {
    this.cache.delete(keyOf(token));
  }

  private async ask(token: string): Promise<TokenReviewResult> {
    this.requests += 1;
    const audiences = this.options.audiences;
    let review: TokenReviewObject;
    try {
      review = await this.client.create<TokenReviewObject>(
        TOKEN_REVIEWS,
        { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token, ...(audiences ? { audiences } : {}) } },
        undefined,
        { timeoutMs: this.options.timeoutMs ?? 10_000 },
      );
    } catch (error) {
      throw new TokenReviewUnavailable(`cannot check the token with the API server (TokenReview): ${(error as Error).message}`);
    }
    const status = review.status;
    if (!status?.authenticated || !status.user?.username) return { authenticated: false, reason: status?.error || "the token is not valid" };
    // An authenticator that ignores spec.audiences (a webhook may) answers without them: that is not a match.
    const granted = status.audiences ?? [];
    if (audiences && !audiences.some((audience) => granted.includes(audience))) {
      return { authenticated: false, reason: `the token is not meant for ${audiences.join(" or ")}` };
    }
    return { authenticated: true, user: status.user, audiences: granted };
  }

  private remember(key: string, result: TokenReviewResult, token: string): void {
    const now = this.now();
    const ttl = result.authenticated
      ? Math.min(this.options.maxTtlMs ?? 5 * 60_000, (expiryOf(token) ?? Infinity) - now)
      : (this.options.failureTtlMs ?? 5000);
    if (ttl <= 0) return;
    this.cache.set(key, { result, until: now + ttl });
    const max = this.options.maxEntries ?? 10_000;
    while (this.cache.size > max) this.cache.delete(this.cache.keys().next().value as string);
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }
}

function keyOf(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** The `exp` of a JWT, in ms; read without checking the signature, so only for a token the API server has accepted. */
function expiryOf(token: string): number | undefined {
  const payload = token.split(".")[1];
  if (!payload) return undefined;
  try {
    const exp = (JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** The user.extra keys under which the API server names the pod a bound service account token belongs to. */
export const EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name";
export const EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid";

export type ProgressAdmission = { status: 200; job: FineTuneJob; pod: V1Pod } | { status: 403 | 503; message: string };

/** The one answer for every token that does not admit: it tells nothing about other jobs or pods. */
export const PROGRESS_FORBIDDEN = "token is not valid for this job and attempt";

export interface ProgressAuthenticatorOptions {
  /** Reviews tokens for the progress audience (pods.ts PROGRESS_AUDIENCE). */
  reviewer: TokenReviewer;
  /** The job as the operator's cache knows it. */
  lookup: (namespace: string, name: string) => FineTuneJob | undefined;
  /** The job's pods as the operator's cache knows them (owned by the job). */
  podsOf: (job: FineTuneJob) => V1Pod[];
}

/**
 * Who may report progress for attempt n of a job: the holder of a service account token that
 * the kubelet projected into that attempt's trainer pod (audience kubetune-progress). The API
 * server vouches for the token and names the pod it is bound to (it refuses tokens of deleted
 * pods); the operator's cache then says whether that pod is this job's trainer of attempt n.
 * So a pod of an earlier attempt (a partitioned node, an eviction it survived), another job's
 * pod, or a pod of the same name owned by something else cannot write this attempt's status,
 * and the operator stores no token anywhere.
 */
export class ProgressAuthenticator {
  constructor(private readonly options: ProgressAuthenticatorOptions) {}

  async admit(token: string, namespace: string, name: string, attempt: number): Promise<ProgressAdmission> {
    const forbidden = { status: 403, message: PROGRESS_FORBIDDEN } as const;
    // A service account token is a JWT: anything else is refused without asking the API server.
    if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token)) return forbidden;
    try {
      let review = await this.options.reviewer.review(token);
      // Looked up after the review, so that an unknown job and a bad token take the same path.
      const job = this.options.lookup(namespace, name);
      if (!review.authenticated || !job?.metadata.uid) return forbidden;
      let pod = trainerPodOf(review.user, job, attempt, this.options.podsOf(job));
      if (pod === "not yet cached") {
        // The pod may be gone rather than not cached yet: a review cached before its deletion must not vouch for it.
        this.options.reviewer.forget(token);
        review = await this.options.reviewer.review(token);
        if (!review.authenticated) return forbidden;
        pod = trainerPodOf(review.user, job, attempt, this.options.podsOf(job));
      }
      if (pod === "not yet cached") return { status: 503, message: `the operator's cache does not show pod ${trainerPodName(name, attempt)} yet; retry` };
      return pod ? { status: 200, job, pod } : forbidden;
    } catch (error) {
      if (error instanceof TokenReviewUnavailable) return { status: 503, message: `${error.message}; retry` };
      throw error;
    }
  }
}

/**
 * The trainer pod of this job and attempt that the reviewed token is bound to, if it is one.
 * "not yet cached": the token names the pod this attempt's pod must be, of the newest attempt
 * the operator knows, but its pod cache does not show that pod yet (a watch event on its way).
 */
export function trainerPodOf(user: ReviewedUser, job: FineTuneJob, attempt: number, pods: V1Pod[]): V1Pod | "not yet cached" | undefined {
  const namespace = job.metadata.namespace;
  if (!user.username.startsWith(`system:serviceaccount:${namespace}:`)) return undefined;
  const podName = user.extra?.[EXTRA_POD_NAME]?.[0];
  const podUid = user.extra?.[EXTRA_POD_UID]?.[0];
  if (!podName || !podUid) return undefined;
  const expected = trainerPodName(job.metadata.name!, attempt);
  const pod = pods.find((candidate) => candidate.metadata?.uid === podUid);
  if (pod) {
    const owner = pod.metadata?.ownerReferences?.find((reference) => reference.controller)?.uid;
    const own =
      pod.metadata?.name === podName &&
      podName === expected &&
      owner === job.metadata.uid &&
      pod.metadata?.labels?.[LABEL_COMPONENT] === "trainer" &&
      pod.metadata?.labels?.[LABEL_ATTEMPT] === String(attempt);
    return own ? pod : undefined;
  }
  // A pod of that name is cached with another uid (another owner's, or an earlier one deleted): not this one.
  if (podName !== expected || pods.some((candidate) => candidate.metadata?.name === podName)) return undefined;
  const phase = job.status?.phase;
  if (phase === "Succeeded" || phase === "Failed") return undefined;
  const newest = Math.max(job.status?.attempts ?? 0, ...pods.filter((candidate) => candidate.metadata?.labels?.[LABEL_COMPONENT] === "trainer").map((candidate) => Number(candidate.metadata?.labels?.[LABEL_ATTEMPT] ?? 0)));
  return attempt >= newest && attempt <= newest + 1 ? "not yet cached" : undefined;
}
