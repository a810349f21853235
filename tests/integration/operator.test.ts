import type { V1Pod } from "@kubernetes/client-node";
import https from "node:https";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyDefaults } from "../../api/index.ts";
import { preflightPod } from "../../operator/finetunejob/pods.ts";
import { isNotFound, resourcePath } from "../../kube/client.ts";
import { ProgressReporter } from "../../trainer/progress/reporter.ts";
import { putTestModel } from "../../trainer/tokenizer/test-tokenizer.ts";
import { cluster, createNamespace, eventually, kubeClient, s3Store } from "./harness.ts";
import {
  eventsOf as eventsIn,
  getJob as getJobIn,
  jobsPath,
  KUBETUNE_IMAGE,
  podToken,
  scriptedJobManifest,
  startOperatorHarness,
  waitForPhase as waitForPhaseIn,
  type OperatorHarness,
} from "./operator-harness.ts";

describe("the operator, with the local pod runner playing the kubelet", () => {
  const client = kubeClient();
  let namespace: string;
  let restricted: string;
  let harness: OperatorHarness;
  const podsPath = (ns: string, name?: string) => resourcePath({ group: "", version: "v1", plural: "pods", namespace: ns, name });

  beforeAll(async () => {
    namespace = await createNamespace("op");
    restricted = await createNamespace("op-restricted", { "pod-security.kubernetes.io/enforce": "restricted" });
    harness = await startOperatorHarness([namespace, restricted], {}, { secureMetrics: "kubernetes" });
  });

  afterAll(async () => {
    await harness?.stop();
  });

  const jobManifest = (name: string, ns = namespace, spec: Record<string, unknown> = {}) => scriptedJobManifest(name, ns, spec);

  const getJob = (name: string, ns = namespace) => getJobIn(ns, name);
  const podsOf = async (name: string, ns = namespace) =>
    (await client.list<V1Pod>(podsPath(ns), { labelSelector: `kubetune.io/job-name=${name}` })).items;
  const waitForPhase = (name: string, phases: string[], ns = namespace, timeoutMs = 60_000) => waitForPhaseIn(ns, name, phases, timeoutMs);
  const eventsOf = (name: string, ns = namespace) => eventsIn(ns, name);

  it("takes a job from apply to Succeeded, with progress in status while it runs", async () => {
    await client.create(jobsPath(namespace), jobManifest("ok-basic"));
    const running = await eventually("progress in status", async () => {
      const job = await getJob("ok-basic");
      return (job.status?.progress?.step ?? 0) > 0 && job.status?.phase === "Running" ? job : undefined;
    });
    expect(running.status?.progress).toMatchObject({ totalSteps: 6 });
    const done = await waitForPhase("ok-basic", ["Succeeded", "Failed"]);
    expect(done.status?.phase).toBe("Succeeded");
    expect(done.status).toMatchObject({ attempts: 1, failedAttempts: 0, lastCheckpoint: { step: 3 }, outputs: { trainableParameters: 100 } });
    expect(done.status?.progress?.percent).toBe(100);
    expect(done.status?.conditions?.find((condition) => condition.type === "Succeeded")).toMatchObject({ status: "True", reason: "Completed" });
    // No finalizer: the garbage collector deletes the pods with the job, as for a Job's pods.
    expect(done.metadata.finalizers ?? []).toEqual([]);
    const reasons = (await eventsOf("ok-basic")).map((event) => event.reason);
    expect(reasons).toEqual(expect.arrayContaining(["PodCreated", "Completed"]));
    const [pod] = await podsOf("ok-basic");
    expect(pod?.spec?.containers[0]?.env?.find((variable) => variable.name === "AWS_SECRET_ACCESS_KEY")?.value).toBeUndefined();
    // The trainer reported with the token projected into its pod: the operator wrote no Secret for the job.
    expect((await client.list(resourcePath({ group: "", version: "v1", plural: "secrets", namespace }), { labelSelector: "kubetune.io/job-name=ok-basic" })).items).toEqual([]);
    expect(JSON.stringify(done)).not.toContain(cluster().s3.secretAccessKey);
  });

  it("retries a trainer that crashed, counting the attempt and saying so in an Event", async () => {
    await client.create(jobsPath(namespace), jobManifest("flaky-one"));
    const done = await waitForPhase("flaky-one", ["Succeeded", "Failed"]);
    expect(done.status).toMatchObject({ phase: "Succeeded", attempts: 2, failedAttempts: 1 });
    const retrying = (await eventsOf("flaky-one")).find((event) => event.reason === "Retrying");
    expect(retrying?.message).toContain("CUDA error");
    expect((await podsOf("flaky-one")).map((pod) => pod.metadata?.name).sort()).toEqual(["flaky-one-train-1", "flaky-one-train-2"]);
  });

  it("fails for good on a trainer's InvalidDataset, naming the file and line", async () => {
    await client.create(jobsPath(namespace), jobManifest("bad-data"));
    const done = await waitForPhase("bad-data", ["Succeeded", "Failed"]);
    expect(done.status?.conditions?.find((condition) => condition.type === "Failed")).toMatchObject({ reason: "InvalidDataset", message: expect.stringContaining("train.jsonl:3: invalid JSON") });
    expect(done.status?.attempts).toBe(1);
  });

  it("suspends a running job (the trainer checkpoints on SIGTERM) and resumes it as a new attempt", async () => {
    await client.create(jobsPath(namespace), jobManifest("long-suspend"));
    await eventually("training", async () => ((await getJob("long-suspend")).status?.progress?.step ?? 0) >= 2 || undefined);
    await client.patch(jobsPath(namespace, "long-suspend"), { spec: { runPolicy: { suspend: true } } });
    const suspended = await waitForPhase("long-suspend", ["Suspended"]);
    await eventually("the trainer pod to stop", async () => ((await podsOf("long-suspend")).length === 0 ? true : undefined));
    const afterStop = await getJob("long-suspend");
    expect(afterStop.status?.lastCheckpoint?.step).toBeGreaterThanOrEqual(2);
    expect(suspended.status?.conditions?.find((condition) => condition.type === "Suspended")?.status).toBe("True");
    await client.patch(jobsPath(namespace, "long-suspend"), { spec: { runPolicy: { suspend: false } } });
    await eventually("attempt 2", async () => ((await podsOf("long-suspend")).some((pod) => pod.metadata?.name === "long-suspend-train-2") ? true : undefined));
    const resumed = await waitForPhase("long-suspend", ["Running"]);
    expect(resumed.status).toMatchObject({ attempts: 2, failedAttempts: 0 });
    await eventually("the Suspended and Resumed events", async () => {
      const reasons = (await eventsOf("long-suspend")).map((event) => event.reason);
      return reasons.includes("Suspended") && reasons.includes("Resumed") ? true : undefined;
    });
    await client.delete(jobsPath(namespace, "long-suspend"));
  });

  it("stops the pod when a running job is deleted: the garbage collector deletes it through its ownerReference", async () => {
    await client.create(jobsPath(namespace), jobManifest("long-delete"));
    await eventually("the trainer to run", async () => ((await podsOf("long-delete"))[0]?.status?.phase === "Running" ? true : undefined));
    await client.delete(jobsPath(namespace, "long-delete"));
    await eventually("the job to be gone", async () => getJob("long-delete").then(() => undefined, (error: unknown) => (isNotFound(error) ? true : undefined)));
    await eventually("the trainer pod to be gone", async () => ((await podsOf("long-delete")).length === 0 ? true : undefined), 60_000);
  });

  it("starts a job created again under a deleted job's name once the earlier job's pod is gone: no NameConflict, no two trainers", async () => {
    await client.create(jobsPath(namespace), jobManifest("long-again"));
    await eventually("the first job's trainer to run", async () => ((await podsOf("long-again"))[0]?.status?.phase === "Running" ? true : undefined));
    const first = await getJob("long-again");
    // Deleted and at once created again (a GitOps tool replacing it, `kubectl replace --force`): the earlier trainer
    // pod is still there, owned by the earlier job, when the new job wants the same pod name. A finalizer holds it
    // there, terminating, as a kubelet does for the grace period of a trainer that takes long to save.
    await client.patch(podsPath(namespace, "long-again-train-1"), { metadata: { finalizers: ["test.kubetune.io/hold"] } });
    await client.delete(jobsPath(namespace, "long-again"));
    await eventually("the first job to be gone", async () => getJob("long-again").then(() => undefined, (error: unknown) => (isNotFound(error) ? true : undefined)));
    await client.create(jobsPath(namespace), jobManifest("long-again"));
    const waited = await eventually("the new job to wait for the earlier pod", async () => {
      const job = await getJob("long-again");
      return job.metadata.uid !== first.metadata.uid && job.status?.conditions?.some((condition) => condition.reason === "EarlierJobPodTerminating") ? job : undefined;
    });
    const pods = await podsOf("long-again");
    expect(pods.map((pod) => [pod.metadata?.name, pod.metadata?.ownerReferences?.[0]?.uid, pod.metadata?.deletionTimestamp !== undefined])).toEqual([
      ["long-again-train-1", first.metadata.uid, true],
    ]);
    // Still waiting a while later: nothing else is created under the name, and the job has not failed.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    expect((await podsOf("long-again")).map((pod) => pod.metadata?.ownerReferences?.[0]?.uid)).toEqual([first.metadata.uid]);
    expect((await getJob("long-again")).status?.phase).not.toBe("Failed");
    // The earlier pod goes: the new job's attempt starts.
    await client.patch(podsPath(namespace, "long-again-train-1"), { metadata: { finalizers: null } });
    const started = await eventually(
      "the new job's own trainer",
      async () => ((await podsOf("long-again")).find((pod) => pod.metadata?.ownerReferences?.[0]?.uid === waited.metadata.uid && pod.status?.phase === "Running") ? true : undefined),
      90_000,
    );
    expect(started).toBe(true);
    // One trainer at a time under the name: the earlier one is gone.
    expect((await podsOf("long-again")).map((pod) => pod.metadata?.ownerReferences?.[0]?.uid)).toEqual([waited.metadata.uid]);
    const job = await getJob("long-again");
    expect(job.status?.phase).toBe("Running");
    expect(job.status?.conditions?.find((condition) => condition.type === "Failed")?.status ?? "False").toBe("False");
    await client.delete(jobsPath(namespace, "long-again"));
  });

  it("takes reports only with the token projected into the job's current trainer pod: not another job's, another attempt's, another audience's, nor a deleted pod's", async () => {
    await client.create(jobsPath(namespace), jobManifest("long-token"));
    await eventually("attempt 1 to run", async () => ((await podsOf("long-token")).find((pod) => pod.metadata?.name === "long-token-train-1")?.status?.phase === "Running" ? true : undefined));
    const reporter = (token: string, attempt = 1) => new ProgressReporter({ url: harness.options.settings.progressUrl, namespace, name: "long-token", token, attempt, ca: harness.ca });
    const first = await podToken(namespace, "long-token-train-1");
    expect(await reporter(await podToken(namespace, "ok-basic-train-1")).post({ step: 1 })).toBe(403);
    expect(await reporter("not-a-token").post({ step: 1 })).toBe(403);
    // The pod's own token, but for the API server's audience rather than the progress endpoint's.
    expect(await reporter(await podToken(namespace, "long-token-train-1", ["https://kubernetes.default.svc"])).post({ step: 1 })).toBe(403);
    // Attempt 1's token is not valid for attempt 2.
    expect(await reporter(first, 2).post({ step: 1 })).toBe(403);
    expect(await reporter(first).post({ step: 1, totalSteps: 10 })).toBe(202);

    // The pod is deleted: attempt 2 replaces it, and the API server no longer vouches for the old pod's token.
    await client.delete(podsPath(namespace, "long-token-train-1"));
    await eventually("attempt 1's pod to be gone", async () => client.get(podsPath(namespace, "long-token-train-1")).then(() => undefined, (error: unknown) => (isNotFound(error) ? true : undefined)), 60_000);
    await eventually("attempt 2 to run", async () => ((await podsOf("long-token")).find((pod) => pod.metadata?.name === "long-token-train-2")?.status?.phase === "Running" ? true : undefined), 60_000);
    expect(await reporter(first).post({ step: 1 })).toBe(403);
    expect(await reporter(first, 2).post({ step: 1 })).toBe(403);
    const second = await podToken(namespace, "long-token-train-2");
    expect(await reporter(second).post({ step: 1 })).toBe(403);
    expect(await reporter(second, 2).post({ step: 2, totalSteps: 10 })).toBe(202);
    // The API server itself stops vouching for the deleted pod's token (once its 10 s cache of good tokens lets go).
    const review = () => client.create<{ status: { authenticated?: boolean } }>("/apis/authentication.k8s.io/v1/tokenreviews", { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token: first, audiences: ["kubetune-progress"] } });
    await eventually("the deleted pod's token to be refused by the API server", async () => ((await review()).status.authenticated ? undefined : true), 30_000);
    expect(await reporter(first).post({ step: 1 })).toBe(403);
    await client.delete(jobsPath(namespace, "long-token"));
  });

  it("refuses reports for a finished job: its outputs are not rewritten", async () => {
    const done = await waitForPhase("ok-basic", ["Succeeded"]);
    // The finished pod is still there, and its token still valid: the job's phase refuses the report.
    const token = await podToken(namespace, "ok-basic-train-1");
    const reporter = new ProgressReporter({ url: harness.options.settings.progressUrl, namespace, name: "ok-basic", token, attempt: 1, ca: harness.ca });
    expect(await reporter.post({ step: 6, outputs: { uri: "s3://elsewhere/forged", files: [] } })).toBe(409);
    expect((await getJob("ok-basic")).status?.outputs).toEqual(done.status?.outputs);
  });

  it("shows per-job gauges on /metrics while a job runs and drops them when it is deleted", async () => {
    await client.create(jobsPath(namespace), jobManifest("long-metrics"));
    const metrics = () => fetch(`http://127.0.0.1:${harness.operator.probePort}/metrics`).then((response) => response.text());
    const series = `kubetune_job_progress_ratio{namespace="${namespace}",job="long-metrics"}`;
    await eventually("the job's progress gauge", async () => ((await metrics()).includes(series) ? true : undefined));
    expect(await metrics()).toMatch(new RegExp(`kubetune_jobs\\{namespace="${namespace}",phase="Running"\\} [1-9]`));
    await client.delete(jobsPath(namespace, "long-metrics"));
    await eventually("the gauge to go", async () => ((await metrics()).includes(series) ? undefined : true));
    expect(await fetch(`http://127.0.0.1:${harness.operator.probePort}/readyz`).then((response) => response.status)).toBe(200);
  });

  it("serves /metrics behind the progress port's TLS to service accounts that RBAC allows, as kube-rbac-proxy does", async () => {
    const scrape = (token?: string) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const request = https.request(
          { host: "127.0.0.1", port: harness.operator.progressPort, path: "/metrics", ca: harness.ca, agent: false, headers: token ? { authorization: `Bearer ${token}` } : {} },
          (response) => {
            let text = "";
            response.on("data", (chunk: Buffer) => (text += chunk.toString()));
            response.on("end", () => resolve({ status: response.statusCode ?? 0, text }));
          },
        );
        request.once("error", reject);
        request.end();
      });
    // A fresh token each time: the operator caches each token's decision for a minute.
    const tokenOf = async (name: string) => {
      const request = await client.create<{ status: { token: string } }>(`${resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace, name })}/token`, {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenRequest",
        spec: { expirationSeconds: 600 },
      });
      return request.status.token;
    };
    for (const name of ["tenant", "prometheus"]) {
      await client.create(resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace }), { apiVersion: "v1", kind: "ServiceAccount", metadata: { name } });
    }
    expect((await scrape()).status).toBe(401);
    expect((await scrape("not-a-token")).status).toBe(401);
    const tenant = await scrape(await tokenOf("tenant"));
    expect(tenant).toMatchObject({ status: 403, text: expect.stringContaining(`system:serviceaccount:${namespace}:tenant may not get /metrics`) });
    const rbac = "rbac.authorization.k8s.io";
    const role = `kubetune-metrics-reader-${namespace}`;
    await client.create(resourcePath({ group: rbac, version: "v1", plural: "clusterroles" }), { apiVersion: `${rbac}/v1`, kind: "ClusterRole", metadata: { name: role }, rules: [{ nonResourceURLs: ["/metrics"], verbs: ["get"] }] });
    await client.create(resourcePath({ group: rbac, version: "v1", plural: "clusterrolebindings" }), {
      apiVersion: `${rbac}/v1`,
      kind: "ClusterRoleBinding",
      metadata: { name: role },
      roleRef: { apiGroup: rbac, kind: "ClusterRole", name: role },
      subjects: [{ kind: "ServiceAccount", name: "prometheus", namespace }],
    });
    const allowed = await eventually("RBAC to allow the scraper", async () => {
      const answer = await scrape(await tokenOf("prometheus"));
      return answer.status === 200 ? answer : undefined;
    });
    expect(allowed.text).toContain("kubetune_jobs{");
  });

  it("adopts a running pod after an operator restart and makes no duplicate", async () => {
    await client.create(jobsPath(namespace), jobManifest("long-restart"));
    await eventually("the trainer to run", async () => ((await podsOf("long-restart"))[0]?.status?.phase === "Running" ? true : undefined));
    await harness.restart();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const pods = await podsOf("long-restart");
    expect(pods.map((pod) => pod.metadata?.name)).toEqual(["long-restart-train-1"]);
    expect((await getJob("long-restart")).status?.attempts).toBe(1);
    await eventually("progress reaching the new operator", async () => {
      const before = (await getJob("long-restart")).status?.progress?.step ?? 0;
      await new Promise((resolve) => setTimeout(resolve, 600));
      return ((await getJob("long-restart")).status?.progress?.step ?? 0) > before ? true : undefined;
    });
    await client.delete(jobsPath(namespace, "long-restart"));
  });

  it("runs a job beside a Secret named as earlier versions named the job's token Secret, and leaves that Secret alone", async () => {
    const secretPath = resourcePath({ group: "", version: "v1", plural: "secrets", namespace, name: "ok-oldsecret-progress" });
    await client.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace }), { apiVersion: "v1", kind: "Secret", metadata: { name: "ok-oldsecret-progress" }, stringData: { token: "someone else's" } });
    await client.create(jobsPath(namespace), jobManifest("ok-oldsecret"));
    const done = await waitForPhase("ok-oldsecret", ["Failed", "Succeeded"]);
    expect(done.status?.phase).toBe("Succeeded");
    expect(done.status?.progress?.percent).toBe(100);
    await client.delete(jobsPath(namespace, "ok-oldsecret"));
    await eventually("the job to be gone", async () => getJob("ok-oldsecret").then(() => undefined, (error: unknown) => (isNotFound(error) ? true : undefined)));
    const secret = await client.get<{ data: Record<string, string>; metadata: { ownerReferences?: unknown[] } }>(secretPath);
    expect(Buffer.from(secret.data.token!, "base64").toString()).toBe("someone else's");
    expect(secret.metadata.ownerReferences).toBeUndefined();
  });

  it("fails with NameConflict when a pod of the job's trainer pod name belongs to something else", async () => {
    await client.create(podsPath(namespace), {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "ok-ncpod-train-1" },
      spec: { containers: [{ name: "main", image: "registry.invalid/other:1" }] },
    });
    await client.create(jobsPath(namespace), jobManifest("ok-ncpod"));
    const done = await waitForPhase("ok-ncpod", ["Failed", "Succeeded"]);
    expect(done.status?.conditions?.find((condition) => condition.type === "Failed")).toMatchObject({ reason: "NameConflict", message: expect.stringContaining(`Pod ${namespace}/ok-ncpod-train-1 already exists`) });
    expect((await client.get<V1Pod>(podsPath(namespace, "ok-ncpod-train-1"))).metadata?.ownerReferences).toBeUndefined();
  });

  it("fails a job whose image never pulls, with ImagePullFailed after the timeout", async () => {
    await client.create(jobsPath(namespace), jobManifest("ok-nopull", namespace, { trainer: { image: "registry.invalid/kubetune:none" } }));
    const done = await waitForPhase("ok-nopull", ["Failed"]);
    expect(done.status?.conditions?.find((condition) => condition.type === "Failed")).toMatchObject({ reason: "ImagePullFailed", message: expect.stringContaining("registry.invalid/kubetune:none") });
  });

  it("fails a job whose pod never schedules, with Unschedulable after the timeout", async () => {
    await client.create(jobsPath(namespace), jobManifest("ok-nogpu", namespace, { resources: { gpus: 2 } }));
    const done = await waitForPhase("ok-nogpu", ["Failed"]);
    expect(done.status?.conditions?.find((condition) => condition.type === "Failed")).toMatchObject({ reason: "Unschedulable", message: expect.stringContaining("Insufficient nvidia.com/gpu") });
  });

  it("fails a job that the API server accepted but a cluster cannot run, with InvalidSpec", async () => {
    await client.create(jobsPath(namespace), jobManifest("ok-local", namespace, { dataset: { train: "data/local.jsonl" } }));
    const done = await waitForPhase("ok-local", ["Failed"]);
    expect(done.status?.conditions?.find((condition) => condition.type === "Failed")).toMatchObject({ reason: "InvalidSpec", message: expect.stringContaining("spec.dataset.train") });
    expect(await podsOf("ok-local")).toEqual([]);
  });

  it("runs trainer pods in a namespace that enforces the restricted Pod Security Standard", async () => {
    await client.create(jobsPath(restricted), jobManifest("ok-restricted", restricted));
    const done = await waitForPhase("ok-restricted", ["Succeeded", "Failed"], restricted);
    expect(done.status?.phase).toBe("Succeeded");
    // The preflight pod meets the same standard: Pod Security admission accepts it (dry run).
    const pod = preflightPod(done, applyDefaults(done.spec), harness.options.settings);
    await expect(client.create(podsPath(restricted), pod, { dryRun: "All" })).resolves.toMatchObject({ metadata: { name: "ok-restricted-preflight" } });
  });

  it("fails in preflight, before any trainer pod exists, on a dataset with a bad line", async () => {
    const store = s3Store("preflight");
    const { s3 } = cluster();
    const model = `${store.uri}/model`;
    await putTestModel(store, "model");
    await store.put("model/model.safetensors", Buffer.alloc(16));
    await store.put("data/train.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{"prompt": "e"\n');
    const manifest = jobManifest("preflight-bad", namespace, {
      baseModel: { uri: model },
      dataset: { train: `${store.uri}/data/train.jsonl`, format: "instruction" },
      trainer: { image: KUBETUNE_IMAGE },
    });
    await harness.restart({ preflight: true });
    try {
      await client.create(jobsPath(namespace), manifest);
      const done = await waitForPhase("preflight-bad", ["Failed", "Succeeded"], namespace, 90_000);
      const failed = done.status?.conditions?.find((condition) => condition.type === "Failed");
      expect(failed?.reason).toBe("InvalidDataset");
      expect(failed?.message).toContain(`s3://${s3.bucket}/`);
      expect(failed?.message).toContain("train.jsonl:3:");
      expect((await podsOf("preflight-bad")).filter((pod) => pod.metadata?.labels?.["app.kubernetes.io/component"] === "trainer")).toEqual([]);
    } finally {
      await harness.restart();
    }
  });
});
