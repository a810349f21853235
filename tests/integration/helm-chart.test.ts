import { spawnSync } from "node:child_process";
import { readFile, writeFile, mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parse, parseAllDocuments } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resourcePath } from "../../kube/client.ts";
import { resolveBinaries } from "../../localcluster/binaries.ts";
import { kubeconfigYaml } from "../../localcluster/controlplane.ts";
import { startOperator, type RunningOperator } from "../../operator/operator.ts";
import { cluster, createNamespace, eventually, kubeClient, kubectl } from "./harness.ts";
import { jobsPath, scriptedJobManifest, startOperatorHarness, waitForPhase, type OperatorHarness } from "./operator-harness.ts";

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
