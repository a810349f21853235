import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, readdir, readFile, writeFile } from "node:fs/promises";
import https from "node:https";
import net, { type AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import type { TLSSocket } from "node:tls";
import type { V1Pod } from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { API_VERSION, KIND, type FineTuneJob } from "../../api/index.ts";
import { isNotFound, KubeClient, resourcePath, type KubeObject } from "../../kube/client.ts";
import { resolveBinaries } from "../../localcluster/binaries.ts";
import { applyObjects, installChart, renderChart, waitUntilLeading, type InstalledChart } from "../../localcluster/chart.ts";
import { startLocalKueue, type KueueManager } from "../../localcluster/kueue.ts";
import { kubeletTls } from "../../localcluster/pki.ts";
import { PodRunner } from "../../localcluster/pod-runner.ts";
import { freePort } from "../../localcluster/process.ts";
import { unknownMetrics } from "../promql.ts";
import { allows, describe as describePermission, grantsOf, requestsOf, type AuditedRequest, type Permission } from "../rbac.ts";
import { kubeconfigYaml } from "../../localcluster/controlplane.ts";
import { queueModes } from "../../cli/commands/operator.ts";
import { startOperator, type RunningOperator } from "../../operator/operator.ts";
import { KUEUE_GROUP, KUEUE_VERSION } from "../../operator/queue/kueue.ts";
import { cluster, createNamespace, eventually, kubeClient, kubectl } from "./harness.ts";
import { getJob, jobsPath, KUBETUNE_IMAGE, SCRIPTED_IMAGE, scriptedJobManifest, startOperatorHarness, waitForPhase, type OperatorHarness } from "./operator-harness.ts";

const CHART = "helm/kubetune";

function helm(args: string[], helmPath: string) {
  return spawnSync(helmPath, args, { encoding: "utf8", timeout: 60_000 });
}

describe("the Helm chart", () => {
  let helmPath: string;

  beforeAll(async () => {
    helmPath = (await resolveBinaries(["helm"])).helm;
  });

  it("lints, and renders objects the real API server accepts", async () => {
    const lint = helm(["lint", CHART], helmPath);
    expect(lint.status, lint.stdout + lint.stderr).toBe(0);
    const namespace = await createNamespace("kubetune-system");
    const rendered = helm(["template", "kt", CHART, "-n", namespace, "--kube-version", cluster().kubeApiserverVersion, "--include-crds"], helmPath);
    expect(rendered.status, rendered.stderr).toBe(0);
    const kinds = parseAllDocuments(rendered.stdout).map((document) => (document.toJS() as { kind: string } | null)?.kind).filter(Boolean).sort();
    expect(kinds.filter((kind) => kind !== "CustomResourceDefinition")).toEqual(["ClusterRole", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Deployment", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"]);
    expect(kinds.filter((kind) => kind === "CustomResourceDefinition").length).toBe((await readdir(path.join(CHART, "crds"))).length);
    const applied = kubectl(["apply", "--server-side", "--force-conflicts", "--field-manager=helm-test", "--dry-run=server", "-n", namespace, "-f", "-"], rendered.stdout);
    expect(applied.stderr).toBe("");
    expect(applied.status).toBe(0);
    // Namespaced mode: a Role and RoleBinding per watched namespace; the operator's only ClusterRole lets it create TokenReviews.
    const team = await createNamespace("team");
    const namespaced = helm(["template", "kt", CHART, "-n", namespace, "--kube-version", cluster().kubeApiserverVersion, "--set", `watchNamespaces={${team}}`], helmPath);
    expect(namespaced.status, namespaced.stderr).toBe(0);
    const objects = parseAllDocuments(namespaced.stdout).map((document) => document.toJS() as { kind: string; metadata: { name: string; namespace?: string } } | null).filter((object) => object?.kind);
    expect(objects.filter((object) => object!.kind.startsWith("Cluster")).map((object) => object!.metadata.name).sort()).toEqual(["kt-operator-edit", "kt-operator-token-review", "kt-operator-token-review", "kt-operator-view"]);
    const appliedNamespaced = kubectl(["apply", "--server-side", "--force-conflicts", "--field-manager=helm-test", "--dry-run=server", "-f", "-"], namespaced.stdout);
    expect(appliedNamespaced.stderr).toBe("");
    expect(appliedNamespaced.status).toBe(0);
    // Secure metrics (tests/chart-metrics.test.ts checks what renders): its ClusterRoles, with a non-resource URL, are accepted too.
    const secure = helm(["template", "kt", CHART, "-n", namespace, "--kube-version", cluster().kubeApiserverVersion, "--set", `watchNamespaces={${team}}`, "--set", "metrics.secure.enabled=true"], helmPath);
    expect(secure.status, secure.stderr).toBe(0);
    const appliedSecure = kubectl(["apply", "--server-side", "--force-conflicts", "--field-manager=helm-test", "--dry-run=server", "-f", "-"], secure.stdout);
    expect(appliedSecure.stderr).toBe("");
    expect(appliedSecure.status).toBe(0);
    expect(appliedSecure.stdout).toContain("clusterrole.rbac.authorization.k8s.io/kt-operator-metrics-auth serverside-applied (server dry run)");
    expect(appliedSecure.stdout).toContain("clusterrole.rbac.authorization.k8s.io/kt-operator-metrics-reader serverside-applied (server dry run)");
  });

  it("runs preflight pods on the operator's image and trainers on the CPU or GPU build, each overridable", () => {
    const operatorArgs = (values: string[]) => {
      const rendered = helm(["template", "kt", CHART, "-n", "kubetune-system", "--kube-version", cluster().kubeApiserverVersion, ...values.flatMap((value) => ["--set", value])], helmPath);
      expect(rendered.status, rendered.stderr).toBe(0);
      const deployment = parseAllDocuments(rendered.stdout).map((document) => document.toJS() as { kind: string; spec: { template: { spec: { containers: { image: string; args: string[] }[] } } } }).find((object) => object?.kind === "Deployment")!;
      const container = deployment.spec.template.spec.containers[0]!;
      return { image: container.image, imageArgs: container.args.filter((arg) => /^--(preflight|trainer)-image/.test(arg)) };
    };
    expect(operatorArgs([])).toEqual({
      image: "ghcr.io/kubetune/kubetune-operator:0.1.0",
      imageArgs: [
        "--preflight-image=ghcr.io/kubetune/kubetune-operator:0.1.0",
        "--trainer-image-cpu=ghcr.io/kubetune/kubetune-trainer-cpu:0.1.0",
        "--trainer-image-gpu=ghcr.io/kubetune/kubetune-trainer-gpu:0.1.0",
      ],
    });
    expect(operatorArgs(["image.tag=dev", "trainerImage.gpu.repository=registry.invalid/kubetune-gpu", "trainerImage.gpu.tag=cuda12"]).imageArgs).toEqual([
      "--preflight-image=ghcr.io/kubetune/kubetune-operator:dev",
      "--trainer-image-cpu=ghcr.io/kubetune/kubetune-trainer-cpu:0.1.0",
      "--trainer-image-gpu=registry.invalid/kubetune-gpu:cuda12",
    ]);
  });
});

describe("the operator as the chart's ServiceAccount, watching listed namespaces, audited by the API server", () => {
  const admin = kubeClient();
  const release = `ktr-${randomBytes(2).toString("hex")}`;
  const fullname = `${release}-operator`;
  let system: string;
  let jobs: string;
  let username: string;
  let grants: Permission[];
  let harness: OperatorHarness;
  let operatorClient: KubeClient;

  beforeAll(async () => {
    const helmBinary = (await resolveBinaries(["helm"])).helm;
    system = await createNamespace("rbac-system");
    jobs = await createNamespace("rbac-jobs");
    const objects = await renderChart({ helm: helmBinary, chart: CHART, release, namespace: system, kubeVersion: cluster().kubeApiserverVersion, values: { watchNamespaces: [jobs] } });
    // The ServiceAccount and its RBAC exactly as the chart renders them; the operator then runs here, as that account.
    await applyObjects(admin, objects.filter((object) => ["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"].includes(object.kind ?? "")), system, `helm-${release}`);
    grants = grantsOf(objects, { namespace: system, name: fullname });
    username = `system:serviceaccount:${system}:${fullname}`;
    const kubeconfig = await serviceAccountKubeconfig(system, fullname);
    operatorClient = KubeClient.load(kubeconfig);
    const keysDir = await mkdtemp(path.join(os.tmpdir(), "kubetune-keys-"));
    harness = await startOperatorHarness([jobs], {}, {
      kubeconfig,
      leaderElection: { enabled: true, namespace: system, name: fullname, identity: "rbac-test" },
      // As the chart runs it: its own CA, in a Secret it creates and never reads (an empty mount: a first start).
      progressTls: undefined,
      keySecret: { namespace: system, name: `${fullname}-keys`, dir: keysDir },
    });
    await eventually("the operator to lead", async () => (harness.operator.isLeader() ? true : undefined), 60_000);
  });

  afterAll(async () => {
    await harness?.stop();
  });

  it("may not read Secrets, nor write them where the jobs are, nor touch other namespaces or other Leases", () => {
    const canI = (verb: string, resource: string, namespace: string) => kubectl(["auth", "can-i", verb, resource, "-n", namespace, "--as", username]).stdout.trim();
    for (const verb of ["get", "list", "watch"]) for (const namespace of [jobs, system]) expect(canI(verb, "secrets", namespace)).toBe("no");
    for (const verb of ["create", "patch", "delete"]) expect(canI(verb, "secrets", jobs)).toBe("no");
    expect(canI("create", "tokenreviews.authentication.k8s.io", jobs)).toBe("yes");
    expect(canI("create", "pods", jobs)).toBe("yes");
    expect(canI("list", "pods", "default")).toBe("no");
    expect(canI("list", "finetunejobs.kubetune.io", "default")).toBe("no");
    expect(canI("update", "leases/kube-scheduler", "kube-system")).toBe("no");
    expect(canI("update", `leases/${fullname}`, system)).toBe("yes");
    expect(canI("update", "leases/another", system)).toBe("no");
  });

  it("runs jobs through success, retries, a vanished pod, suspension, deletion and an earlier version's finalizer, and uses exactly the permissions the chart grants", async () => {
    // Success, then deletion by ttlSecondsAfterFinished; the trainer reports over TLS that it verifies against the operator's own CA.
    await admin.create(jobsPath(jobs), scriptedJobManifest("ok-rbac", jobs, { runPolicy: { ttlSecondsAfterFinished: 3 } }));
    const done = await waitForPhase(jobs, "ok-rbac", ["Succeeded", "Failed"], 90_000);
    expect(done.status?.phase).toBe("Succeeded");
    expect(done.status?.progress?.percentText).toBe("100%");
    await eventually("the finished job to be deleted", async () => ((await admin.get(jobsPath(jobs, "ok-rbac")).catch((error: unknown) => (isNotFound(error) ? "gone" : undefined))) === "gone" ? true : undefined), 60_000);
    // A failed attempt and a retry.
    await admin.create(jobsPath(jobs, undefined), scriptedJobManifest("flaky-rbac", jobs));
    expect((await waitForPhase(jobs, "flaky-rbac", ["Succeeded", "Failed"], 90_000)).status?.phase).toBe("Succeeded");
    // A pod deleted under a running job, then suspended and resumed twice, then the job deleted.
    await admin.create(jobsPath(jobs), scriptedJobManifest("long-rbac", jobs));
    const pods = resourcePath({ group: "", version: "v1", plural: "pods", namespace: jobs });
    const running = async (attempt: number) =>
      eventually(`attempt ${attempt} to train`, async () => {
        const job = await getJob(jobs, "long-rbac");
        const pod = await admin.get<V1Pod>(`${pods}/long-rbac-train-${attempt}`).catch(() => undefined);
        return job.status?.attempts === attempt && pod?.status?.phase === "Running" && (job.status?.progress?.step ?? 0) > 0 ? true : undefined;
      }, 90_000);
    await running(1);
    await admin.delete(`${pods}/long-rbac-train-1`);
    await running(2);
    const suspend = (value: boolean) => admin.patch(jobsPath(jobs, "long-rbac"), { spec: { runPolicy: { suspend: value } } });
    for (const attempt of [3, 4]) {
      await suspend(true);
      await waitForPhase(jobs, "long-rbac", ["Suspended"], 60_000);
      await eventually("the trainer to stop", async () => ((await admin.list<V1Pod>(pods, { labelSelector: "kubetune.io/job-name=long-rbac" })).items.every((pod) => ["Succeeded", "Failed"].includes(pod.status?.phase ?? "")) ? true : undefined), 60_000);
      await suspend(false);
      await running(attempt);
    }
    await admin.delete(jobsPath(jobs, "long-rbac"));
    await eventually("the deleted job to go", async () => ((await admin.get(jobsPath(jobs, "long-rbac")).catch((error: unknown) => (isNotFound(error) ? "gone" : undefined))) === "gone" ? true : undefined), 90_000);
    // A job as an earlier operator version left it, with its kubetune.io/finalizer: taken off (the patch rule), so the
    // job never waits on an operator to be deleted.
    const legacy = scriptedJobManifest("ok-legacy-rbac", jobs);
    legacy.metadata.finalizers = ["kubetune.io/finalizer"];
    await admin.create(jobsPath(jobs), legacy);
    await eventually("the legacy finalizer to go", async () => ((await getJob(jobs, "ok-legacy-rbac")).metadata.finalizers?.length ? undefined : true), 60_000);
    expect((await waitForPhase(jobs, "ok-legacy-rbac", ["Succeeded", "Failed"], 90_000)).status?.phase).toBe("Succeeded");
    await harness.stop();

    const requests = await eventually("the lease's release in the audit log", async () => {
      const all = requestsOf(path.join(cluster().dir, "logs", "audit.log"), username);
      return all.filter((request) => request.resource === "leases").length > 2 ? all : undefined;
    });
    expect(requests.filter((request) => request.code === 403 || request.decision === "forbid").map((request) => `${request.verb} ${request.uri}`)).toEqual([]);
    expect(requests.filter((request) => !grants.some((grant) => allows(grant, request))).map((request) => `${request.verb} ${request.uri}`)).toEqual([]);
    // A grant this lifecycle need not show: the one the OwnerReferencesPermissionEnforcement admission plugin checks (next test).
    const notRequired = (grant: Permission) => grant.resource === "finetunejobs/finalizers" && grant.verb === "update";
    const unused = grants.filter((grant) => !notRequired(grant) && !requests.some((request) => allows(grant, request)));
    expect(unused.map(describePermission)).toEqual([]);
  });

  it("needs update on finetunejobs/finalizers where OwnerReferencesPermissionEnforcement runs (as this API server does)", async () => {
    const job = await admin.create<FineTuneJob>(jobsPath(jobs), scriptedJobManifest("owner-rbac", jobs, { runPolicy: { suspend: true } }));
    // A pod owned by the job, as the operator makes them (on no node: nothing runs it).
    const owned = (name: string) => ({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name, ownerReferences: [{ apiVersion: API_VERSION, kind: KIND, name: "owner-rbac", uid: job.metadata.uid!, controller: true, blockOwnerDeletion: true }] },
      spec: { nodeName: "no-such-node", containers: [{ name: "main", image: "registry.invalid/none:1" }] },
    });
    const pods = resourcePath({ group: "", version: "v1", plural: "pods", namespace: jobs });
    await operatorClient.create(pods, owned("owned-by-job"));
    // The same rules without that one: the API server refuses to set blockOwnerDeletion.
    const rules = (await admin.get<{ rules: { resources: string[] }[] }>(resourcePath({ group: "rbac.authorization.k8s.io", version: "v1", plural: "roles", namespace: jobs, name: fullname }))).rules;
    await admin.create(resourcePath({ group: "rbac.authorization.k8s.io", version: "v1", plural: "roles", namespace: jobs }), { metadata: { name: "no-finalizers" }, rules: rules.filter((rule) => !rule.resources.includes("finetunejobs/finalizers")) });
    await admin.create(resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace: jobs }), { metadata: { name: "no-finalizers" } });
    await admin.create(resourcePath({ group: "rbac.authorization.k8s.io", version: "v1", plural: "rolebindings", namespace: jobs }), {
      metadata: { name: "no-finalizers" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "no-finalizers" },
      subjects: [{ kind: "ServiceAccount", name: "no-finalizers", namespace: jobs }],
    });
    const without = KubeClient.load(await serviceAccountKubeconfig(jobs, "no-finalizers"));
    await eventually("the new binding to apply", async () => (await without.list(resourcePath({ group: "", version: "v1", plural: "pods", namespace: jobs })).then(() => true, () => undefined)));
    await expect(without.create(pods, owned("refused"))).rejects.toThrow(/cannot set blockOwnerDeletion/);
  });
});

/** A kubeconfig with a token of the ServiceAccount. */
async function serviceAccountKubeconfig(namespace: string, name: string): Promise<string> {
  const tokenRequest = await kubeClient().create<{ status: { token: string } }>(`${resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace, name })}/token`, {
    apiVersion: "authentication.k8s.io/v1",
    kind: "TokenRequest",
    spec: { expirationSeconds: 3600 },
  });
  const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-sa-"));
  const kubeconfig = path.join(dir, "kubeconfig");
  await writeFile(kubeconfig, kubeconfigYaml(cluster().server, await readFile(path.join(path.dirname(cluster().kubeconfig), "pki", "ca.crt")), tokenRequest.status.token, name));
  return kubeconfig;
}

describe("two operator replicas", () => {
  const admin = kubeClient();
  let namespace: string;
  let harness: OperatorHarness;
  let second: RunningOperator | undefined;
  let service: net.Server;

  beforeAll(async () => {
    namespace = await createNamespace("ha");
    // Trainers reach the replicas as through the chart's Service: one address, routed to the leader (the ready one).
    service = net.createServer((socket) => {
      const leader = [harness.operator, second].find((replica) => replica?.isLeader());
      if (!leader) return void socket.destroy();
      const upstream = net.connect(leader.progressPort, "127.0.0.1");
      socket.pipe(upstream).pipe(socket);
      for (const end of [socket, upstream]) end.once("error", () => (socket.destroy(), upstream.destroy()));
    });
    const servicePort = await new Promise<number>((resolve) => service.listen(0, "127.0.0.1", () => resolve((service.address() as AddressInfo).port)));
    harness = await startOperatorHarness([namespace], { progressUrl: `https://127.0.0.1:${servicePort}` }, { progressAddress: "127.0.0.1:0", leaderElection: { enabled: true, namespace, name: "kubetune-operator", identity: "replica-a" } });
  });

  afterAll(async () => {
    await second?.stop();
    await harness?.stop();
    service?.close();
  });

  it("act only through the leader, and the other takes over when it stops", async () => {
    const options = harness.options;
    second = await startOperator({ ...options, probeAddress: "127.0.0.1:0", progressAddress: "127.0.0.1:0", leaderElection: { ...options.leaderElection, identity: "replica-b" } });
    const replicaB = second;
    await eventually("a leader", async () => (harness.operator.isLeader() || replicaB.isLeader() ? true : undefined));
    const [leader, follower] = harness.operator.isLeader() ? [harness.operator, replicaB] : [replicaB, harness.operator];
    expect(follower.isLeader()).toBe(false);

    await admin.create(jobsPath(namespace), scriptedJobManifest("ok-first", namespace));
    expect((await waitForPhase(namespace, "ok-first", ["Succeeded", "Failed"])).status?.phase).toBe("Succeeded");
    expect(leader.controller.reconciles).toBeGreaterThan(0);
    expect(follower.controller.reconciles).toBe(0);

    await leader.stop();
    await eventually("the follower to lead", async () => (follower.isLeader() ? true : undefined), 30_000);
    const before = follower.controller.reconciles;
    await admin.create(jobsPath(namespace), scriptedJobManifest("ok-second", namespace));
    expect((await waitForPhase(namespace, "ok-second", ["Succeeded", "Failed"])).status?.phase).toBe("Succeeded");
    expect(follower.controller.reconciles).toBeGreaterThan(before);
  });
});

describe("the chart installed as helm install would, its Deployment run as a pod", () => {
  const admin = kubeClient();
  const release = `kt-${randomBytes(2).toString("hex")}`;
  let namespace: string;
  let jobs: string;
  let runner: PodRunner;
  let chart: InstalledChart;
  let probeUrl: string;
  let progressPort: number;
  let helmBinary: string;

  beforeAll(async () => {
    helmBinary = (await resolveBinaries(["helm"])).helm;
    namespace = await createNamespace("chart");
    jobs = await createNamespace("chart-jobs");
    const { s3 } = cluster();
    await admin.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace: jobs }), {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "s3-creds" },
      stringData: { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
    });
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-chart-test-"));
    await chmod(dir, 0o755);
    const repo = process.cwd();
    runner = new PodRunner({
      client: admin,
      workDir: path.join(dir, "pods"),
      nodeName: `node-${namespace}`,
      namespaces: [namespace, jobs],
      kubeletTls: kubeletTls(path.join(cluster().dir, "pki")),
      images: {
        [KUBETUNE_IMAGE]: { entrypoint: [process.execPath, path.join(repo, "bin/kubetune.mjs")] },
        [SCRIPTED_IMAGE]: { entrypoint: [process.execPath, "--import", path.join(repo, "node_modules/tsx/dist/esm/index.mjs"), path.join(repo, "tests/fixtures/scripted-trainer.ts")] },
      },
    });
    await runner.start();
    const probePort = await freePort();
    progressPort = await freePort();
    probeUrl = `http://127.0.0.1:${probePort}`;
    const [operatorImage, trainerImage] = [KUBETUNE_IMAGE, SCRIPTED_IMAGE].map((image) => ({ repository: image.split(":")[0], tag: image.split(":")[1] }));
    chart = await installChart(admin, {
      helm: helmBinary,
      chart: CHART,
      release,
      namespace,
      kubeVersion: cluster().kubeApiserverVersion,
      values: {
        image: operatorImage,
        trainerImage: { cpu: trainerImage, gpu: trainerImage },
        replicas: 1,
        watchNamespaces: [jobs],
        operator: { preflight: false, probePort, progressPort, progressUrl: `https://127.0.0.1:${progressPort}`, progressCertificateIPs: ["127.0.0.1"], retryBackoffSeconds: 1 },
      },
    });
    await waitUntilLeading(probeUrl);
  });

  afterAll(async () => {
    await chart?.stop();
    await runner?.stop();
  });

  it("runs the operator under the chart's ServiceAccount and flags, and it completes a job", async () => {
    const [operator] = chart.deployments.activePods(namespace, `${release}-operator`);
    expect(operator?.spec?.serviceAccountName).toBe(`${release}-operator`);
    expect(operator?.spec?.containers[0]?.args).toContain("--leader-elect");
    const lease = await admin.get<{ spec: { holderIdentity: string } }>(resourcePath({ group: "coordination.k8s.io", version: "v1", plural: "leases", namespace, name: `${release}-operator` }));
    expect(lease.spec.holderIdentity).toContain(operator?.metadata?.name);

    await admin.create(jobsPath(jobs), scriptedJobManifest("ok-chart", jobs));
    const done = await waitForPhase(jobs, "ok-chart", ["Succeeded", "Failed"], 90_000);
    expect(done.status?.phase).toBe("Succeeded");
    expect(done.status?.progress?.percentText).toBe("100%");
    const metrics = await (await fetch(`${probeUrl}/metrics`)).text();
    expect(metrics).toContain(`kubetune_job_phase{namespace="${jobs}",job="ok-chart",phase="Succeeded"} 1`);
    expect(metrics).toMatch(/^kubetune_leader 1$/m);
  });

  it("serves progress with a certificate of its own CA, kept in a Secret it created (the chart renders none)", async () => {
    expect(chart.objects.filter((object) => object.kind === "Secret")).toEqual([]);
    const keys = await admin.get<{ data: Record<string, string>; metadata: { labels: Record<string, string> } }>(resourcePath({ group: "", version: "v1", plural: "secrets", namespace, name: `${release}-operator-keys` }));
    // The CA alone: trainers' progress tokens are projected service account tokens, derived from no key of the operator's.
    expect(Object.keys(keys.data).sort()).toEqual(["ca.crt", "ca.key"]);
    expect(keys.metadata.labels["app.kubernetes.io/managed-by"]).toBe("kubetune-operator");
    const ca = Buffer.from(keys.data["ca.crt"]!, "base64").toString();
    // A client that trusts only that CA (as trainers do, from KUBETUNE_PROGRESS_CA) accepts the endpoint's certificate.
    const served = await new Promise<{ status: number; subjectAltName?: string }>((resolve, reject) => {
      const request = https.request({ host: "127.0.0.1", port: progressPort, path: "/", method: "GET", ca }, (response) => {
        resolve({ status: response.statusCode ?? 0, subjectAltName: (response.socket as TLSSocket).getPeerX509Certificate()?.subjectAltName });
        response.resume();
      });
      request.once("error", reject);
      request.end();
    });
    expect(served.subjectAltName).toContain("IP Address:127.0.0.1");
    expect(served.subjectAltName).toContain(`DNS:${release}-operator.${namespace}.svc`);
    const [operator] = chart.deployments.activePods(namespace, `${release}-operator`);
    const env = operator?.spec?.containers[0]?.args ?? [];
    expect(env).toContain(`--key-secret=${namespace}/${release}-operator-keys`);
  });

  it("renders a dashboard ConfigMap and a PrometheusRule that query only metrics the operator exports", () => {
    const rendered = helm(["template", "kt", CHART, "-n", "monitoring", "--kube-version", cluster().kubeApiserverVersion, "--set", "grafana.dashboard.enabled=true", "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.noProgressMinutes=20"], helmBinary);
    expect(rendered.status, rendered.stderr).toBe(0);
    const objects = parseAllDocuments(rendered.stdout).map((document) => document.toJS() as { kind: string; metadata: { labels?: Record<string, string> }; data?: Record<string, string>; spec?: { groups: { rules: { alert: string; expr: string }[] }[] } });
    const dashboard = objects.find((object) => object?.kind === "ConfigMap")!;
    expect(dashboard.metadata.labels?.grafana_dashboard).toBe("1");
    const panels = (JSON.parse(dashboard.data!["kubetune.json"]!) as { panels: { title: string; targets: { expr: string }[] }[] }).panels;
    const rules = objects.find((object) => object?.kind === "PrometheusRule")!.spec!.groups.flatMap((group) => group.rules);
    expect(rules.find((rule) => rule.alert === "KubetuneJobNoProgress")?.expr).toBe("time() - kubetune_job_last_progress_timestamp_seconds > 1200");
    const queries = [...panels.flatMap((panel) => panel.targets.map((target) => ({ where: panel.title, expr: target.expr }))), ...rules.map((rule) => ({ where: rule.alert, expr: rule.expr }))];
    expect(queries.length).toBeGreaterThan(10);
    expect(unknownMetrics(queries)).toEqual([]);
  });
});

describe("the operator with queues on (queues.builtIn and queues.kueue), as the chart's ServiceAccount, audited by the API server", () => {
  const admin = kubeClient();
  const release = `ktq-${randomBytes(2).toString("hex")}`;
  const fullname = `${release}-operator`;
  const suffix = randomBytes(3).toString("hex");
  const kueuePath = (plural: string, name?: string, namespace?: string) => resourcePath({ group: KUEUE_GROUP, version: KUEUE_VERSION, plural, name, namespace });
  const queuePath = (name?: string) => resourcePath({ group: "kubetune.io", version: "v1alpha1", plural: "finetunequeues", name });
  const fineTuneQueue = `rbac-gpus-${suffix}`;
  const flavor = `rbac-flavor-${suffix}`;
  const clusterQueue = `rbac-cq-${suffix}`;
  const localQueue = "team-gpus";
  const workloadClass = `rbac-low-${suffix}`;
  const podClass = `rbac-high-${suffix}`;
  let system: string;
  let jobs: string;
  let username: string;
  let queueGrants: Permission[];
  let allGrants: Permission[];
  let renderedArgs: string[];
  let kueue: KueueManager | undefined;
  let harness: OperatorHarness | undefined;

  beforeAll(async () => {
    const helmBinary = (await resolveBinaries(["helm"])).helm;
    system = await createNamespace("rbacq-system");
    jobs = await createNamespace("rbacq-jobs", { "kubetune.io/rbac-test": suffix });
    const objects = await renderChart({
      helm: helmBinary,
      chart: CHART,
      release,
      namespace: system,
      kubeVersion: cluster().kubeApiserverVersion,
      values: { watchNamespaces: [jobs], queues: { builtIn: { enabled: true }, kueue: { enabled: true } } },
    });
    // The chart installs both CRDs; the queue rules come from files/queue-rules.yaml through templates/queue-rbac.yaml.
    expect(objects.filter((object) => object.kind === "CustomResourceDefinition").map((object) => object.metadata?.name).sort()).toEqual(["finetunejobs.kubetune.io", "finetunequeues.kubetune.io"]);
    await applyObjects(admin, objects.filter((object) => ["CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"].includes(object.kind ?? "")), system, `helm-${release}`);
    const queueObjects = objects.filter((object) => object.metadata?.name === `${fullname}-queues` || object.metadata?.name === `${fullname}-kueue`);
    expect(queueObjects.map((object) => `${object.kind} ${object.metadata?.namespace ?? ""}`).sort()).toEqual(["ClusterRole ", "ClusterRoleBinding ", `Role ${jobs}`, `RoleBinding ${jobs}`]);
    // For people: `kubectl get ftq` needs a cluster-wide read grant, which the namespaces' view roles cannot give.
    const viewer = objects.find((object) => object.kind === "ClusterRole" && object.metadata?.name === `${fullname}-queue-viewer`) as unknown as { rules: unknown[] } | undefined;
    expect(viewer?.rules).toEqual([{ apiGroups: ["kubetune.io"], resources: ["finetunequeues", "finetunequeues/status"], verbs: ["get", "list", "watch"] }]);
    queueGrants = grantsOf(queueObjects, { namespace: system, name: fullname });
    allGrants = grantsOf(objects, { namespace: system, name: fullname });
    const deployment = objects.find((object) => object.kind === "Deployment") as unknown as { spec: { template: { spec: { containers: { args: string[] }[] } } } };
    renderedArgs = deployment.spec.template.spec.containers[0]!.args;
    username = `system:serviceaccount:${system}:${fullname}`;

    // Kueue with one flavor, a 1-GPU ClusterQueue and its LocalQueue in the jobs' namespace; a WorkloadPriorityClass and a PriorityClass.
    kueue = await startLocalKueue({ dir: path.join(cluster().dir, `kueue-rbac-${suffix}`), kubeconfig: cluster().kubeconfig, client: admin, log: () => {} });
    await admin.create(kueuePath("resourceflavors"), { apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`, kind: "ResourceFlavor", metadata: { name: flavor }, spec: {} });
    await admin.create(kueuePath("clusterqueues"), {
      apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`,
      kind: "ClusterQueue",
      metadata: { name: clusterQueue },
      spec: {
        namespaceSelector: {},
        resourceGroups: [{ coveredResources: ["cpu", "memory", "nvidia.com/gpu"], flavors: [{ name: flavor, resources: [{ name: "cpu", nominalQuota: "8" }, { name: "memory", nominalQuota: "32Gi" }, { name: "nvidia.com/gpu", nominalQuota: "1" }] }] }],
      },
    });
    await admin.create(kueuePath("localqueues", undefined, jobs), { apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`, kind: "LocalQueue", metadata: { name: localQueue, namespace: jobs }, spec: { clusterQueue } });
    await admin.create(kueuePath("workloadpriorityclasses"), { apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`, kind: "WorkloadPriorityClass", metadata: { name: workloadClass }, value: 100 });
    await admin.create(resourcePath({ group: "scheduling.k8s.io", version: "v1", plural: "priorityclasses" }), { apiVersion: "scheduling.k8s.io/v1", kind: "PriorityClass", metadata: { name: podClass }, value: 1000 });
    await eventually("the ClusterQueue to become active", async () => {
      const queue = await admin.get<{ status?: { conditions?: { type: string; status: string }[] } }>(kueuePath("clusterqueues", clusterQueue));
      return queue.status?.conditions?.some((condition) => condition.type === "Active" && condition.status === "True") ? true : undefined;
    }, 60_000);
    // A FineTuneQueue that serves the jobs' namespace by its label: the controller reads the namespace.
    await admin.create(queuePath(), { apiVersion: "kubetune.io/v1alpha1", kind: "FineTuneQueue", metadata: { name: fineTuneQueue }, spec: { gpus: 1, namespaceSelector: { matchLabels: { "kubetune.io/rbac-test": suffix } } } });

    const kubeconfig = await serviceAccountKubeconfig(system, fullname);
    const keysDir = await mkdtemp(path.join(os.tmpdir(), "kubetune-keys-"));
    harness = await startOperatorHarness(
      [jobs],
      {},
      {
        kubeconfig,
        leaderElection: { enabled: true, namespace: system, name: fullname, identity: "rbac-queues-test" },
        progressTls: undefined,
          keySecret: { namespace: system, name: `${fullname}-keys`, dir: keysDir },
        // What the chart's --queues flag asks for, parsed as the CLI parses it.
        queues: queueModes(renderedArgs.find((arg) => arg.startsWith("--queues="))?.slice("--queues=".length)),
      },
      { gpus: 2 },
    );
    await eventually("the operator to lead", async () => (harness!.operator.isLeader() ? true : undefined), 60_000);
  }, 30 * 60_000);

  afterAll(async () => {
    await harness?.stop();
    for (const job of jobs ? (await admin.list<FineTuneJob>(jobsPath(jobs))).items : []) {
      await admin.patch(jobsPath(jobs, job.metadata.name), { metadata: { finalizers: null } }).catch(() => undefined);
      await admin.delete(jobsPath(jobs, job.metadata.name)).catch(() => undefined);
    }
    await admin.delete(queuePath(fineTuneQueue)).catch(() => undefined);
    await admin.delete(resourcePath({ group: "scheduling.k8s.io", version: "v1", plural: "priorityclasses", name: podClass })).catch(() => undefined);
    if (!kueue) return;
    // Kueue's finalizers on its own objects are removed by the running manager: delete them before it stops.
    for (const workload of jobs ? (await admin.list<KubeObject>(kueuePath("workloads", undefined, jobs))).items : []) {
      await admin.patch(kueuePath("workloads", workload.metadata!.name, jobs), { metadata: { finalizers: null } }).catch(() => undefined);
    }
    await admin.delete(kueuePath("localqueues", localQueue, jobs)).catch(() => undefined);
    await admin.delete(kueuePath("workloadpriorityclasses", workloadClass)).catch(() => undefined);
    for (const objectPath of [kueuePath("clusterqueues", clusterQueue), kueuePath("resourceflavors", flavor)]) {
      await admin.delete(objectPath).catch(() => undefined);
      await eventually(`${objectPath} to be deleted`, async () => admin.get(objectPath).then(() => undefined, (error: unknown) => (isNotFound(error) ? true : undefined)), 60_000).catch(() => undefined);
    }
    await kueue.stop();
  }, 180_000);

  it("renders --queues=builtin,kueue and grants the queue rules cluster-wide, Workloads only in the watched namespace", () => {
    expect(renderedArgs).toContain("--queues=builtin,kueue");
    const canI = (verb: string, resource: string, namespace?: string) => kubectl(["auth", "can-i", verb, resource, ...(namespace ? ["-n", namespace] : []), "--as", username]).stdout.trim();
    expect(canI("watch", "finetunequeues.kubetune.io")).toBe("yes");
    expect(kubectl(["auth", "can-i", "patch", "finetunequeues.kubetune.io", "--subresource=status", "--as", username]).stdout.trim()).toBe("yes");
    // The operator reports on queues; platform admins define them.
    expect(canI("create", "finetunequeues.kubetune.io")).toBe("no");
    expect(canI("patch", "finetunequeues.kubetune.io")).toBe("no");
    expect(canI("create", "workloads.kueue.x-k8s.io", jobs)).toBe("yes");
    expect(canI("list", "workloads.kueue.x-k8s.io", "default")).toBe("no");
    expect(canI("list", "priorityclasses.scheduling.k8s.io")).toBe("no");
    expect(canI("list", "namespaces")).toBe("no");
  });

  it("admits jobs through a FineTuneQueue and through Kueue, and uses exactly the queue permissions the chart grants", async () => {
    // The built-in queue: one GPU, so the second job waits, first in line, until the first succeeds.
    // The first takes its priority from its PriorityClass.
    await admin.create(jobsPath(jobs), scriptedJobManifest("slow-ftq", jobs, { queueName: fineTuneQueue, resources: { gpus: 1, priorityClassName: podClass } }));
    await waitForPhase(jobs, "slow-ftq", ["Running"], 90_000);
    await admin.create(jobsPath(jobs), scriptedJobManifest("ok-ftq", jobs, { queueName: fineTuneQueue, resources: { gpus: 1 } }));
    const waiting = await eventually("ok-ftq to wait first in line", async () => {
      const job = await getJob(jobs, "ok-ftq");
      return job.status?.phase === "Queued" && job.status.queue?.position === 1 ? job : undefined;
    }, 60_000);
    expect(waiting.status?.queue?.waitReason).toBe(`waiting for 1 GPU; 1 of 1 GPUs in use by ${jobs}/slow-ftq`);

    // Kueue: a Workload per job, admitted into the ClusterQueue's one GPU; the second Workload waits for quota.
    const kueueJob = (name: string) => {
      const manifest = scriptedJobManifest(name, jobs, { queueName: localQueue, resources: { gpus: 1, cpu: "1", memory: "1Gi" } });
      manifest.metadata.labels = { "kueue.x-k8s.io/priority-class": workloadClass };
      return manifest;
    };
    // long-kueue holds the ClusterQueue's one GPU until it is deleted.
    await admin.create(jobsPath(jobs), kueueJob("long-kueue"));
    await waitForPhase(jobs, "long-kueue", ["Running"], 90_000);
    for (const name of ["ok-switch", "ok-kueue"]) await admin.create(jobsPath(jobs), kueueJob(name));
    for (const name of ["ok-switch", "ok-kueue"]) {
      await eventually(`${name} to wait for Kueue`, async () => ((await getJob(jobs, name)).status?.queue?.waitReason?.startsWith("Kueue: ") ? true : undefined), 60_000);
    }
    // Moved to the FineTuneQueue before it started: its Workload is released and deleted.
    await admin.patch(jobsPath(jobs, "ok-switch"), { spec: { queueName: fineTuneQueue } });
    await eventually("ok-switch's Workload to go", async () => {
      const listed = (await admin.list<KubeObject>(kueuePath("workloads", undefined, jobs))).items;
      return listed.some((workload) => workload.metadata?.ownerReferences?.[0]?.name === "ok-switch") ? undefined : true;
    }, 60_000);
    // Deleting the job that holds the quota releases its Workload (the operator removes Kueue's finalizer), and the
    // garbage collector deletes it with its owner; Kueue admits ok-kueue.
    await admin.delete(jobsPath(jobs, "long-kueue"));
    await eventually("long-kueue and its Workload gone", async () => {
      const gone = await admin.get(jobsPath(jobs, "long-kueue")).then(() => false, (error: unknown) => isNotFound(error));
      const workload = (await admin.list<KubeObject>(kueuePath("workloads", undefined, jobs))).items.find((each) => each.metadata?.ownerReferences?.[0]?.name === "long-kueue");
      return gone && !workload ? true : undefined;
    }, 90_000);
    for (const name of ["slow-ftq", "ok-ftq", "ok-switch", "ok-kueue"]) {
      const done = await waitForPhase(jobs, name, ["Succeeded", "Failed"], 120_000);
      expect(done.status?.phase, `${name}: ${JSON.stringify(done.status?.conditions)}`).toBe("Succeeded");
    }
    await eventually("ok-kueue's Workload finished and released", async () => {
      const listed = (await admin.list<KubeObject & { status?: { conditions?: { type: string; status: string }[] } }>(kueuePath("workloads", undefined, jobs))).items;
      const workload = listed.find((each) => each.metadata?.ownerReferences?.[0]?.name === "ok-kueue");
      return workload?.status?.conditions?.some((condition) => condition.type === "Finished" && condition.status === "True") && !workload.metadata?.finalizers?.length ? true : undefined;
    }, 60_000);
    const table = kubectl(["get", "ftq", fineTuneQueue]).stdout;
    expect(table).toMatch(/NAME\s+GPUS\s+IN USE\s+ADMITTED\s+QUEUED\s+AGE/);
    expect(table).toMatch(new RegExp(`${fineTuneQueue}\\s+1\\s+0\\s+0\\s+0\\s`));
    await harness!.stop();
    harness = undefined;

    // The audit log may trail the requests: wait until every queue grant shows, then compare.
    const used = (requests: AuditedRequest[]) => queueGrants.filter((grant) => requests.some((request) => allows(grant, request)));
    const requests = await eventually("the queue requests in the audit log", async () => {
      const all = requestsOf(path.join(cluster().dir, "logs", "audit.log"), username);
      return used(all).length === queueGrants.length ? all : undefined;
    }, 30_000).catch(() => requestsOf(path.join(cluster().dir, "logs", "audit.log"), username));
    expect(requests.filter((request) => request.code === 403 || request.decision === "forbid").map((request) => `${request.verb} ${request.uri}`)).toEqual([]);
    expect(requests.filter((request) => !allGrants.some((grant) => allows(grant, request))).map((request) => `${request.verb} ${request.uri}`)).toEqual([]);
    expect(queueGrants.filter((grant) => !used(requests).includes(grant)).map(describePermission)).toEqual([]);
  });
});
