import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, readFile, writeFile, mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parse, parseAllDocuments } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resourcePath } from "../../kube/client.ts";
import { resolveBinaries } from "../../localcluster/binaries.ts";
import { installChart, waitUntilLeading, type InstalledChart } from "../../localcluster/chart.ts";
import { kubeletTls } from "../../localcluster/pki.ts";
import { PodRunner } from "../../localcluster/pod-runner.ts";
import { freePort } from "../../localcluster/process.ts";
import { unknownMetrics } from "../promql.ts";
import { kubeconfigYaml } from "../../localcluster/controlplane.ts";
import { startOperator, type RunningOperator } from "../../operator/operator.ts";
import { cluster, createNamespace, eventually, kubeClient, kubectl } from "./harness.ts";
import { jobsPath, KUBETUNE_IMAGE, SCRIPTED_IMAGE, scriptedJobManifest, startOperatorHarness, waitForPhase, type OperatorHarness } from "./operator-harness.ts";

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
    expect(kinds).toEqual(["ClusterRole", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "PodDisruptionBudget", "Secret", "Secret", "Service", "ServiceAccount"]);
    const applied = kubectl(["apply", "--server-side", "--force-conflicts", "--field-manager=helm-test", "--dry-run=server", "-n", namespace, "-f", "-"], rendered.stdout);
    expect(applied.stderr).toBe("");
    expect(applied.status).toBe(0);
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

describe("the operator under the chart's RBAC, as a ServiceAccount", () => {
  const admin = kubeClient();
  let namespace: string;
  let harness: OperatorHarness;

  beforeAll(async () => {
    namespace = await createNamespace("rbac");
    const rules = parse(await readFile(path.join(CHART, "files/operator-rules.yaml"), "utf8")) as object[];
    const role = `kubetune-operator-${namespace}`;
    await admin.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", { apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", metadata: { name: role }, rules });
    await admin.create(resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace }), { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "operator" } });
    await admin.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRoleBinding",
      metadata: { name: role },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: role },
      subjects: [{ kind: "ServiceAccount", name: "operator", namespace }],
    });
    const tokenRequest = await admin.create<{ status: { token: string } }>(`${resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace, name: "operator" })}/token`, {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenRequest",
      spec: { expirationSeconds: 3600 },
    });
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-rbac-"));
    const kubeconfig = path.join(dir, "kubeconfig");
    await writeFile(kubeconfig, kubeconfigYaml(cluster().server, await readFile(path.join(path.dirname(cluster().kubeconfig), "pki", "ca.crt")), tokenRequest.status.token, "operator"));
    harness = await startOperatorHarness([namespace], {}, { kubeconfig });
  });

  afterAll(async () => {
    await harness?.stop();
  });

  it("may not read Secrets", () => {
    const subject = `system:serviceaccount:${namespace}:operator`;
    for (const verb of ["get", "list", "watch"]) expect(kubectl(["auth", "can-i", verb, "secrets", "-n", namespace, "--as", subject]).stdout.trim()).toBe("no");
    expect(kubectl(["auth", "can-i", "create", "pods", "-n", namespace, "--as", subject]).stdout.trim()).toBe("yes");
  });

  it("runs a job to Succeeded with only those permissions", async () => {
    await admin.create(jobsPath(namespace), scriptedJobManifest("ok-rbac", namespace));
    const done = await waitForPhase(namespace, "ok-rbac", ["Succeeded", "Failed"]);
    expect(done.status?.phase).toBe("Succeeded");
  });
});

describe("two operator replicas", () => {
  const admin = kubeClient();
  let namespace: string;
  let harness: OperatorHarness;
  let second: RunningOperator;

  beforeAll(async () => {
    namespace = await createNamespace("ha");
    harness = await startOperatorHarness([namespace], {}, { leaderElection: { enabled: true, namespace, name: "kubetune-operator", identity: "replica-a" } });
  });

  afterAll(async () => {
    await second?.stop();
    await harness?.stop();
  });

  it("act only through the leader, and the other takes over when it stops", async () => {
    const options = harness.options;
    second = await startOperator({ ...options, probeAddress: "127.0.0.1:0", progressAddress: "127.0.0.1:0", leaderElection: { ...options.leaderElection, identity: "replica-b" } });
    await eventually("a leader", async () => (harness.operator.isLeader() || second.isLeader() ? true : undefined));
    const [leader, follower] = harness.operator.isLeader() ? [harness.operator, second] : [second, harness.operator];
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
    const [probePort, progressPort] = [await freePort(), await freePort()];
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
