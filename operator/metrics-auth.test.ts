import { describe, expect, it } from "vitest";
import { ApiError, type KubeClient } from "../kube/client.ts";
import { MetricsAuthorizer } from "./metrics-auth.ts";

/** An API server that knows two tokens: Prometheus's (allowed /metrics) and a tenant's (not). */
function apiServer(options: { failing?: boolean } = {}) {
  const calls: { path: string; body: { spec: Record<string, unknown> } }[] = [];
  const users: Record<string, { username: string; groups: string[] }> = {
    "prometheus-token": { username: "system:serviceaccount:monitoring:prometheus", groups: ["system:serviceaccounts"] },
    "tenant-token": { username: "system:serviceaccount:team-a:default", groups: ["system:serviceaccounts"] },
  };
  const client = {
    async create(path: string, body: { spec: Record<string, unknown> }) {
      calls.push({ path, body });
      if (options.failing) throw new ApiError(503, "ServiceUnavailable", "etcd is down");
      if (path.endsWith("/tokenreviews")) {
        const user = users[body.spec.token as string];
        return { status: user ? { authenticated: true, user } : { authenticated: false } };
      }
      const allowed = body.spec.user === users["prometheus-token"]!.username && (body.spec.nonResourceAttributes as { path: string; verb: string }).path === "/metrics";
      return { status: { allowed, reason: allowed ? "RBAC: allowed" : "" } };
    },
  };
  return { client: client as unknown as KubeClient, calls };
}

describe("MetricsAuthorizer", () => {
  it("allows a token whose user may get /metrics, as kube-rbac-proxy does (TokenReview, then SubjectAccessReview)", async () => {
    const { client, calls } = apiServer();
    const authorizer = new MetricsAuthorizer(client);
    expect(await authorizer.authorize("Bearer prometheus-token")).toEqual({ status: 200, message: "ok" });
    expect(calls.map((call) => call.path)).toEqual(["/apis/authentication.k8s.io/v1/tokenreviews", "/apis/authorization.k8s.io/v1/subjectaccessreviews"]);
    expect(calls[1]!.body.spec).toMatchObject({ user: "system:serviceaccount:monitoring:prometheus", groups: ["system:serviceaccounts"], nonResourceAttributes: { path: "/metrics", verb: "get" } });
  });

  it("refuses no token (401), an unknown one (401), and a user without the right (403)", async () => {
    const authorizer = new MetricsAuthorizer(apiServer().client);
    expect((await authorizer.authorize(undefined)).status).toBe(401);
    expect((await authorizer.authorize("Basic abc")).status).toBe(401);
    expect((await authorizer.authorize("Bearer stolen")).status).toBe(401);
    expect(await authorizer.authorize("Bearer tenant-token")).toEqual({ status: 403, message: "system:serviceaccount:team-a:default may not get /metrics" });
  });

  it("caches each token's decision for its TTL, and never caches an API failure", async () => {
    let now = 0;
    const { client, calls } = apiServer();
    const authorizer = new MetricsAuthorizer(client, { ttlMs: 60_000, now: () => now });
    for (let scrape = 0; scrape < 4; scrape++) await authorizer.authorize("Bearer prometheus-token");
    expect(calls).toHaveLength(2);
    now = 61_000;
    await authorizer.authorize("Bearer prometheus-token");
    expect(calls).toHaveLength(4);
    const down = apiServer({ failing: true });
    const failing = new MetricsAuthorizer(down.client);
    expect((await failing.authorize("Bearer prometheus-token")).status).toBe(503);
    expect((await failing.authorize("Bearer prometheus-token")).status).toBe(503);
    expect(down.calls).toHaveLength(2);
  });
});
