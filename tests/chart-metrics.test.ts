import { spawnSync } from "node:child_process";
import { parseAllDocuments } from "yaml";
import { beforeAll, describe as group, expect, it } from "vitest";
import { resolveBinaries } from "../localcluster/binaries.ts";
import { describe, grantsOf } from "./rbac.ts";

// The chart's secure-metrics values (metrics.secure.*), as rendered: the operator's flags, the
// ServiceMonitor's endpoint, and the cluster-wide review rules, present only when enabled.

const CHART = "helm/kubetune";
const operator = { namespace: "kubetune-system", name: "kt-operator" };
let helm: string;

interface Rendered {
  kind: string;
  metadata: { name: string; namespace?: string };
  rules?: { apiGroups?: string[]; resources?: string[]; nonResourceURLs?: string[]; verbs?: string[] }[];
  spec?: Record<string, unknown>;
}

function render(values: string[] = []): Rendered[] {
  const result = spawnSync(helm, ["template", "kt", CHART, "-n", operator.namespace, "--kube-version", "1.36.3", ...values.flatMap((value) => ["--set", value])], { encoding: "utf8", timeout: 60_000 });
  if (result.status !== 0) throw new Error(`helm template: ${result.stderr}`);
  return parseAllDocuments(result.stdout)
    .map((document) => document.toJS() as Rendered | null)
    .filter((object): object is Rendered => Boolean(object?.kind));
}

function operatorArgs(objects: Rendered[]): string[] {
  const deployment = objects.find((object) => object.kind === "Deployment") as unknown as { spec: { template: { spec: { containers: { name: string; args: string[] }[] } } } };
  return deployment.spec.template.spec.containers.find((container) => container.name === "operator")!.args;
}

function serviceMonitorEndpoints(objects: Rendered[]): Record<string, unknown>[] {
  return (objects.find((object) => object.kind === "ServiceMonitor")!.spec as { endpoints: Record<string, unknown>[] }).endpoints;
}

const reviewGrants = ["- authentication.k8s.io/tokenreviews create", "- authorization.k8s.io/subjectaccessreviews create"];
/** The operator's distinct grants (several roles may grant the same: progress auth also creates TokenReviews), as text. */
const distinct = (grants: Parameters<typeof describe>[0][]) => [...new Set(grants.map((grant) => describe({ ...grant, namespace: grant.namespace || "-" })))].sort();
const reviews = (objects: Rendered[]) => distinct(grantsOf(objects, operator).filter((grant) => grant.resource === "tokenreviews" || grant.resource === "subjectaccessreviews"));
/** The ClusterRole of the metrics reviews, which only secure metrics adds. */
const metricsAuthRole = (objects: Rendered[]) => objects.find((object) => object.kind === "ClusterRole" && object.metadata.name === "kt-operator-metrics-auth");

group("the chart's secure metrics (metrics.secure)", () => {
  beforeAll(async () => {
    helm = (await resolveBinaries(["helm"])).helm;
  }, 600_000);

  it("off by default: plain /metrics on the probe port, no SubjectAccessReviews nor metrics roles, a ServiceMonitor on the metrics port", () => {
    const objects = render(["metrics.serviceMonitor.enabled=true"]);
    expect(operatorArgs(objects).filter((arg) => /metrics/.test(arg))).toEqual([]);
    expect(reviews(objects)).not.toContain("- authorization.k8s.io/subjectaccessreviews create");
    expect(metricsAuthRole(objects)).toBeUndefined();
    expect(objects.map((object) => object.metadata.name)).not.toContain("kt-operator-metrics-reader");
    expect(serviceMonitorEndpoints(objects)).toEqual([{ port: "metrics", interval: "30s", honorLabels: true }]);
  });

  it("enabled: --secure-metrics kubernetes, and create on tokenreviews and subjectaccessreviews cluster-wide, with or without watchNamespaces", () => {
    for (const values of [[], ["watchNamespaces={team-a}"]]) {
      const objects = render(["metrics.secure.enabled=true", ...values]);
      expect(operatorArgs(objects).filter((arg) => /metrics/.test(arg))).toEqual(["--secure-metrics=kubernetes"]);
      expect(reviews(objects)).toEqual(reviewGrants);
      expect(metricsAuthRole(objects)?.rules).toEqual([
        { apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] },
        { apiGroups: ["authorization.k8s.io"], resources: ["subjectaccessreviews"], verbs: ["create"] },
      ]);
      // What Prometheus's service account is to be bound to.
      const reader = objects.find((object) => object.kind === "ClusterRole" && object.metadata.name === "kt-operator-metrics-reader");
      expect(reader?.rules).toEqual([{ nonResourceURLs: ["/metrics"], verbs: ["get"] }]);
      // With watchNamespaces these two are the operator's only cluster-wide grants.
      if (values.length) expect(distinct(grantsOf(objects, operator).filter((grant) => grant.namespace === ""))).toEqual(reviewGrants);
    }
  });

  it("metrics.secure.probePort=false turns the probe port's /metrics off (--no-probe-metrics)", () => {
    expect(operatorArgs(render(["metrics.secure.enabled=true", "metrics.secure.probePort=false"])).filter((arg) => /metrics/.test(arg))).toEqual(["--secure-metrics=kubernetes", "--no-probe-metrics"]);
    // Without secure metrics /metrics would be served nowhere: the value alone changes nothing.
    expect(operatorArgs(render(["metrics.secure.probePort=false"])).filter((arg) => /metrics/.test(arg))).toEqual([]);
  });

  it("the ServiceMonitor scrapes the HTTPS port with Prometheus's token, trusting the CA from the named ConfigMap, and says when that is missing", () => {
    const objects = render(["metrics.secure.enabled=true", "metrics.serviceMonitor.enabled=true", "metrics.secure.caConfigMap=kubetune-operator-ca"]);
    expect(serviceMonitorEndpoints(objects)).toEqual([
      {
        port: "progress",
        scheme: "https",
        path: "/metrics",
        bearerTokenFile: "/var/run/secrets/kubernetes.io/serviceaccount/token",
        tlsConfig: { ca: { configMap: { name: "kubetune-operator-ca", key: "ca.crt" } }, serverName: "kt-operator.kubetune-system.svc" },
        interval: "30s",
        honorLabels: true,
      },
    ]);
    expect(() => render(["metrics.secure.enabled=true", "metrics.serviceMonitor.enabled=true"])).toThrow("metrics.secure.caConfigMap: name the ConfigMap");
  });
});
