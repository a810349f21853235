import { createHash } from "node:crypto";
import type { KubeClient } from "../kube/client.ts";
import { TokenReviewer, TokenReviewUnavailable } from "./progress/token-review.ts";

/** Who may read /metrics on the HTTPS port. */
export type MetricsAuthorization = "kubernetes" | "none";

export interface MetricsDecision {
  /** 200 allowed, 401 no or unknown token, 403 not allowed, 503 the API server could not say. */
  status: 200 | 401 | 403 | 503;
  message: string;
}

interface SubjectAccessReview {
  status?: { allowed?: boolean; denied?: boolean; reason?: string };
}

/**
 * Decides who may scrape /metrics the way kube-rbac-proxy and controller-runtime's
 * WithAuthenticationAndAuthorization filter do: the scraper presents a bearer token (its
 * service account's), a TokenReview says whose it is, and a SubjectAccessReview asks whether
 * that user may `get` the non-resource URL /metrics. A Prometheus needs a ClusterRole with
 * `nonResourceURLs: ["/metrics"], verbs: ["get"]`; the operator needs `create` on tokenreviews
 * and subjectaccessreviews. Decisions are cached for a minute per token (by its SHA-256, never
 * the token itself), so a scrape every 15 s costs the API server two requests a minute. The
 * TokenReview is the progress endpoint's (progress/token-review.ts), for the API server's own
 * audience.
 */
export class MetricsAuthorizer {
  private readonly cache = new Map<string, { decision: MetricsDecision; until: number }>();
  private readonly reviewer: TokenReviewer;

  constructor(
    private readonly client: KubeClient,
    private readonly options: { ttlMs?: number; path?: string; now?: () => number } = {},
  ) {
    this.reviewer = new TokenReviewer(client, { maxTtlMs: options.ttlMs ?? 60_000, failureTtlMs: 0, ...(options.now ? { now: options.now } : {}) });
  }

  async authorize(authorization: string | undefined): Promise<MetricsDecision> {
    const token = /^Bearer (\S+)$/i.exec(authorization ?? "")?.[1];
    if (!token) return { status: 401, message: "a bearer token is required (a service account's, allowed to get the non-resource URL /metrics)" };
    const now = (this.options.now ?? Date.now)();
    const key = createHash("sha256").update(token).digest("hex");
    const cached = this.cache.get(key);
    if (cached && cached.until > now) return cached.decision;
    let decision: MetricsDecision;
    try {
      decision = await this.review(token);
    } catch (error) {
      // Not cached: the next scrape asks again.
      const message = (error as Error).message;
      return { status: 503, message: error instanceof TokenReviewUnavailable ? message : `cannot check the token with the API server: ${message}` };
    }
    this.cache.set(key, { decision, until: now + (this.options.ttlMs ?? 60_000) });
    if (this.cache.size > 1024) this.cache.delete(this.cache.keys().next().value as string);
    return decision;
  }

  private async review(token: string): Promise<MetricsDecision> {
    const review = await this.reviewer.review(token);
    if (!review.authenticated) return { status: 401, message: "the token is not valid" };
    const user = review.user;
    const path = this.options.path ?? "/metrics";
    const access = await this.client.create<SubjectAccessReview>("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
      apiVersion: "authorization.k8s.io/v1",
      kind: "SubjectAccessReview",
      spec: { user: user.username, uid: user.uid, groups: user.groups, extra: user.extra, nonResourceAttributes: { path, verb: "get" } },
    });
    if (access.status?.allowed) return { status: 200, message: "ok" };
    return { status: 403, message: `${user.username} may not get ${path}${access.status?.reason ? ` (${access.status.reason})` : ""}` };
  }
}
