import { randomBytes } from "node:crypto";
import { ApiError, type KubeClient } from "../../kube/client.ts";

/** A pod-bound service account token, as a TokenRequest with boundObjectRef makes it. */
interface IssuedToken {
  namespace: string;
  serviceAccount: string;
  podName: string;
  podUid: string;
  audiences: string[];
  /** Seconds since the epoch, as the JWT's `exp`. */
  exp: number;
}

/**
 * The API server's TokenReview, for unit tests: it issues JWT-shaped pod-bound tokens and
 * reviews them the way the real one does (spec.audiences must meet the token's audiences; a
 * token of a deleted pod is no longer authenticated; user.extra names the pod). It can be
 * made slow (to see concurrent reviews share one request) or unavailable (5xx).
 */
export class FakeTokenReviews {
  private readonly tokens = new Map<string, IssuedToken>();
  private readonly deletedPods = new Set<string>();
  /** TokenReviews received. */
  calls = 0;
  /** Answer every review with this HTTP error instead. */
  failWith?: number;
  /** Milliseconds each review takes. */
  latencyMs = 0;

  issue(pod: { namespace: string; name: string; uid: string; serviceAccount?: string }, options: { audiences?: string[]; expiresInSeconds?: number; now?: number } = {}): string {
    const exp = Math.floor((options.now ?? Date.now()) / 1000) + (options.expiresInSeconds ?? 3600);
    const claims = { aud: options.audiences ?? ["kubetune-progress"], exp, sub: `system:serviceaccount:${pod.namespace}:${pod.serviceAccount ?? "default"}`, jti: randomBytes(8).toString("hex") };
    const token = [Buffer.from(JSON.stringify({ alg: "RS256" })), Buffer.from(JSON.stringify(claims)), randomBytes(32)].map((part) => part.toString("base64url")).join(".");
    this.tokens.set(token, { namespace: pod.namespace, serviceAccount: pod.serviceAccount ?? "default", podName: pod.name, podUid: pod.uid, audiences: claims.aud, exp });
    return token;
  }

  /** The pod is deleted: the API server stops authenticating the tokens bound to it. */
  deletePod(uid: string): void {
    this.deletedPods.add(uid);
  }

  asClient(): Pick<KubeClient, "create"> {
    return { create: <T>(path: string, body: unknown) => this.create(path, body) as Promise<T> };
  }

  private async create(path: string, body: unknown): Promise<unknown> {
    if (path !== "/apis/authentication.k8s.io/v1/tokenreviews") throw new Error(`FakeTokenReviews: unexpected POST ${path}`);
    this.calls += 1;
    if (this.latencyMs) await new Promise((resolve) => setTimeout(resolve, this.latencyMs));
    if (this.failWith) throw new ApiError(this.failWith, "ServiceUnavailable", "the server is currently unable to handle the request");
    const spec = (body as { spec: { token: string; audiences?: string[] } }).spec;
    const issued = this.tokens.get(spec.token);
    if (!issued || this.deletedPods.has(issued.podUid)) return { status: { authenticated: false, error: "invalid bearer token" } };
    const wanted = spec.audiences ?? ["https://kubernetes.default.svc"];
    const audiences = wanted.filter((audience) => issued.audiences.includes(audience));
    if (!audiences.length) return { status: { authenticated: false, error: "token audiences are invalid for the target audiences" } };
    return {
      status: {
        authenticated: true,
        audiences,
        user: {
          username: `system:serviceaccount:${issued.namespace}:${issued.serviceAccount}`,
          uid: "sa-uid",
          groups: ["system:serviceaccounts", `system:serviceaccounts:${issued.namespace}`, "system:authenticated"],
          extra: { "authentication.kubernetes.io/pod-name": [issued.podName], "authentication.kubernetes.io/pod-uid": [issued.podUid] },
        },
      },
    };
  }
}
