import type { V1Pod } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { API_VERSION, KIND, type FineTuneJob } from "../../api/index.ts";
import { LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB_NAME, PROGRESS_AUDIENCE } from "../finetunejob/pods.ts";
import { FakeTokenReviews } from "./fake-token-reviews.ts";
import { PROGRESS_FORBIDDEN, ProgressAuthenticator, TokenReviewer } from "./token-review.ts";

const namespace = "team-a";

function job(name: string, uid: string, status: FineTuneJob["status"] = { phase: "Running", attempts: 1 }): FineTuneJob {
  return { apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace, uid }, spec: {} as FineTuneJob["spec"], status };
}

function trainerPod(owner: FineTuneJob, attempt: number, uid = `${owner.metadata.uid}-pod-${attempt}`): V1Pod {
  return {
    metadata: {
      name: `${owner.metadata.name}-train-${attempt}`,
      namespace,
      uid,
      labels: { [LABEL_COMPONENT]: "trainer", [LABEL_JOB_NAME]: owner.metadata.name!, [LABEL_ATTEMPT]: String(attempt) },
      ownerReferences: [{ apiVersion: API_VERSION, kind: KIND, name: owner.metadata.name!, uid: owner.metadata.uid!, controller: true }],
    },
    status: { phase: "Running" },
  };
}

const tokenOf = (reviews: FakeTokenReviews, pod: V1Pod, options: Parameters<FakeTokenReviews["issue"]>[1] = {}) =>
  reviews.issue({ namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, uid: pod.metadata!.uid! }, options);

/** An authenticator over a fake API server, a job cache and a pod cache the test can change. */
function setup(jobs: FineTuneJob[], pods: V1Pod[], reviewerOptions: ConstructorParameters<typeof TokenReviewer>[1] = {}) {
  const reviews = new FakeTokenReviews();
  const reviewer = new TokenReviewer(reviews.asClient(), { audiences: [PROGRESS_AUDIENCE], ...reviewerOptions });
  const cache = { jobs, pods };
  const authenticator = new ProgressAuthenticator({
    reviewer,
    lookup: (ns, name) => cache.jobs.find((each) => each.metadata.namespace === ns && each.metadata.name === name),
    podsOf: (owner) => cache.pods.filter((pod) => pod.metadata?.ownerReferences?.some((reference) => reference.uid === owner.metadata.uid)),
  });
  return { reviews, reviewer, cache, authenticator };
}

const forbidden = { status: 403, message: PROGRESS_FORBIDDEN };

describe("ProgressAuthenticator", () => {
  it("admits the token projected into the job's trainer pod of that attempt, as the API server vouches for it", async () => {
    const tune = job("tune", "job-1");
    const pod = trainerPod(tune, 1);
    const { reviews, authenticator } = setup([tune], [pod]);
    const admission = await authenticator.admit(tokenOf(reviews, pod), namespace, "tune", 1);
    expect(admission).toEqual({ status: 200, job: tune, pod });
  });

  it("refuses the token of another attempt's pod, of another job's pod, and of an unknown job, with one answer", async () => {
    const tune = job("tune", "job-1", { phase: "Running", attempts: 2 });
    const other = job("other", "job-2");
    const [first, second, others] = [trainerPod(tune, 1), trainerPod(tune, 2), trainerPod(other, 1)];
    const { reviews, authenticator } = setup([tune, other], [first, second, others]);
    // Attempt 1's pod (still there: a partitioned node) may not report for attempt 2, nor attempt 2's for attempt 1.
    expect(await authenticator.admit(tokenOf(reviews, first), namespace, "tune", 2)).toEqual(forbidden);
    expect(await authenticator.admit(tokenOf(reviews, second), namespace, "tune", 1)).toEqual(forbidden);
    expect(await authenticator.admit(tokenOf(reviews, others), namespace, "tune", 1)).toEqual(forbidden);
    expect(await authenticator.admit(tokenOf(reviews, others), namespace, "missing", 1)).toEqual(forbidden);
    expect(await authenticator.admit("not-a-jwt", namespace, "tune", 2)).toEqual(forbidden);
    expect((await authenticator.admit(tokenOf(reviews, second), namespace, "tune", 2)).status).toBe(200);
  });

  it("refuses a pod of the same name that another owner made, and a job recreated under the same name", async () => {
    const tune = job("tune", "job-1");
    const foreign = trainerPod(job("tune", "someone-else"), 1, "foreign-pod");
    const own = trainerPod(tune, 1);
    const { reviews, cache, authenticator } = setup([tune], [foreign, own]);
    // The foreign pod is not among the job's own pods, and a pod of that name is cached with another uid.
    expect(await authenticator.admit(tokenOf(reviews, foreign), namespace, "tune", 1)).toEqual(forbidden);
    // The job deleted and made again: the old job's pod is not the new job's.
    const token = tokenOf(reviews, own);
    cache.jobs = [job("tune", "job-1-again")];
    cache.pods = [own, trainerPod(cache.jobs[0]!, 1)];
    expect(await authenticator.admit(token, namespace, "tune", 1)).toEqual(forbidden);
  });

  it("refuses a token meant for another audience (the API server's own, or anything else)", async () => {
    const tune = job("tune", "job-1");
    const pod = trainerPod(tune, 1);
    const { reviews, authenticator } = setup([tune], [pod]);
    for (const audiences of [["https://kubernetes.default.svc"], ["vault"]]) {
      expect(await authenticator.admit(tokenOf(reviews, pod, { audiences }), namespace, "tune", 1)).toEqual(forbidden);
    }
  });

  it("refuses the token of a deleted pod, even while a positive review of it is cached", async () => {
    const tune = job("tune", "job-1");
    const pod = trainerPod(tune, 1);
    const { reviews, cache, authenticator } = setup([tune], [pod]);
    const token = tokenOf(reviews, pod);
    expect((await authenticator.admit(token, namespace, "tune", 1)).status).toBe(200);
    // Deleted; its replacement not made yet: the cache no longer shows it, the API server no longer vouches for it.
    reviews.deletePod(pod.metadata!.uid!);
    cache.pods = [];
    expect(await authenticator.admit(token, namespace, "tune", 1)).toEqual(forbidden);
    // Attempt 2 runs: the old token is refused there too.
    cache.jobs = [job("tune", "job-1", { phase: "Running", attempts: 2 })];
    cache.pods = [trainerPod(cache.jobs[0]!, 2)];
    expect(await authenticator.admit(token, namespace, "tune", 2)).toEqual(forbidden);
  });

  it("asks the trainer to retry (503) while its pod is not in the operator's cache yet", async () => {
    const tune = job("tune", "job-1");
    const pod = trainerPod(tune, 1);
    const { reviews, cache, authenticator } = setup([tune], []);
    const token = tokenOf(reviews, pod);
    expect(await authenticator.admit(token, namespace, "tune", 1)).toEqual({ status: 503, message: "the operator's cache does not show pod tune-train-1 yet; retry" });
    cache.pods = [pod];
    expect((await authenticator.admit(token, namespace, "tune", 1)).status).toBe(200);
    // Not for a job that has finished, nor for an attempt the operator has not reached.
    cache.pods = [];
    expect(await authenticator.admit(tokenOf(reviews, trainerPod(tune, 3)), namespace, "tune", 3)).toEqual(forbidden);
    cache.jobs = [job("tune", "job-1", { phase: "Failed", attempts: 1 })];
    expect(await authenticator.admit(token, namespace, "tune", 1)).toEqual(forbidden);
  });

  it("answers 503 (retry), not 403, while the API server cannot review tokens, and does not remember the outage", async () => {
    const tune = job("tune", "job-1");
    const pod = trainerPod(tune, 1);
    const { reviews, authenticator } = setup([tune], [pod]);
    const token = tokenOf(reviews, pod);
    reviews.failWith = 503;
    const down = await authenticator.admit(token, namespace, "tune", 1);
    expect(down.status).toBe(503);
    expect("message" in down && down.message).toContain("cannot check the token with the API server (TokenReview)");
    reviews.failWith = undefined;
    expect((await authenticator.admit(token, namespace, "tune", 1)).status).toBe(200);
    expect(reviews.calls).toBe(2);
  });
});

describe("TokenReviewer", () => {
  it("asks the API server once per token while the answer is fresh, and again after 5 minutes", async () => {
    let now = 1_000_000;
    const { reviews, reviewer } = setup([], [], { now: () => now });
    const token = reviews.issue({ namespace, name: "p", uid: "u" }, { now });
    for (let i = 0; i < 5; i++) expect((await reviewer.review(token)).authenticated).toBe(true);
    expect(reviews.calls).toBe(1);
    now += 5 * 60_000 - 1;
    await reviewer.review(token);
    expect(reviews.calls).toBe(1);
    now += 2;
    await reviewer.review(token);
    expect(reviews.calls).toBe(2);
  });

  it("never keeps a positive answer past the token's own expiry", async () => {
    let now = 1_000_000;
    const { reviews, reviewer } = setup([], [], { now: () => now });
    const token = reviews.issue({ namespace, name: "p", uid: "u" }, { now, expiresInSeconds: 60 });
    await reviewer.review(token);
    now += 59_000;
    await reviewer.review(token);
    expect(reviews.calls).toBe(1);
    now += 2000;
    await reviewer.review(token);
    expect(reviews.calls).toBe(2);
  });

  it("keeps a refusal only briefly", async () => {
    let now = 1_000_000;
    const { reviews, reviewer } = setup([], [], { now: () => now });
    const token = reviews.issue({ namespace, name: "p", uid: "u" }, { audiences: ["elsewhere"] });
    expect(await reviewer.review(token)).toEqual({ authenticated: false, reason: "token audiences are invalid for the target audiences" });
    await reviewer.review(token);
    expect(reviews.calls).toBe(1);
    now += 5001;
    await reviewer.review(token);
    expect(reviews.calls).toBe(2);
  });

  it("sends one review for concurrent requests with the same token", async () => {
    const { reviews, reviewer } = setup([], []);
    reviews.latencyMs = 50;
    const token = reviews.issue({ namespace, name: "p", uid: "u" });
    const other = reviews.issue({ namespace, name: "q", uid: "v" });
    const results = await Promise.all([...Array.from({ length: 20 }, () => reviewer.review(token)), reviewer.review(other)]);
    expect(results.every((result) => result.authenticated)).toBe(true);
    expect(reviews.calls).toBe(2);
    expect(reviewer.requests).toBe(2);
  });

  it("keeps at most maxEntries tokens, the oldest going first", async () => {
    const { reviews, reviewer } = setup([], [], { maxEntries: 3 });
    const tokens = Array.from({ length: 4 }, (_, i) => reviews.issue({ namespace, name: `p${i}`, uid: `u${i}` }));
    for (const token of tokens) await reviewer.review(token);
    expect(reviews.calls).toBe(4);
    for (const token of tokens.slice(1)) await reviewer.review(token);
    expect(reviews.calls).toBe(4);
    await reviewer.review(tokens[0]!);
    expect(reviews.calls).toBe(5);
  });

  it("refuses an authenticated answer that does not name the requested audience (an authenticator that ignores it)", async () => {
    const client = { create: async <T,>() => ({ status: { authenticated: true, user: { username: "someone" } } }) as T };
    const reviewer = new TokenReviewer(client, { audiences: [PROGRESS_AUDIENCE] });
    expect(await reviewer.review("a.b.c")).toEqual({ authenticated: false, reason: "the token is not meant for kubetune-progress" });
  });
});
