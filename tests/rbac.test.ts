import { spawnSync } from "node:child_process";
import { parseAllDocuments } from "yaml";
import { beforeAll, describe as group, expect, it } from "vitest";
import { resolveBinaries } from "../localcluster/binaries.ts";
import { describe, grantsOf } from "./rbac.ts";

// The chart's RBAC as rendered, in both modes. What the operator really calls is compared with
// it in tests/integration/helm-chart.test.ts, from the API server's audit log.

const CHART = "helm/kubetune";
let helm: string;

function render(values: string[] = [], release = "kt", namespace = "kubetune-system"): { text: string; objects: { kind: string; metadata: { name: string; namespace?: string } }[] } {
  const result = spawnSync(helm, ["template", release, CHART, "-n", namespace, "--kube-version", "1.36.3", ...values.flatMap((value) => ["--set", value])], { encoding: "utf8", timeout: 60_000 });
  if (result.status !== 0) throw new Error(`helm template: ${result.stderr}`);
  const objects = parseAllDocuments(result.stdout)
    .map((document) => document.toJS() as { kind: string; metadata: { name: string; namespace?: string } } | null)
    .filter((object): object is { kind: string; metadata: { name: string; namespace?: string } } => Boolean(object?.kind));
  return { text: result.stdout, objects };
}

const operator = { namespace: "kubetune-system", name: "kt-operator" };
const kindsAndPlaces = (objects: { kind: string; metadata: { name: string; namespace?: string } }[]) =>
  objects.filter((object) => /Role/.test(object.kind)).map((object) => `${object.kind} ${object.metadata.namespace ?? "-"}/${object.metadata.name}`).sort();

group("the chart's RBAC", () => {
  beforeAll(async () => {
    helm = (await resolveBinaries(["helm"])).helm;
  }, 600_000);

  it("with watchNamespaces: a Role and RoleBinding in each listed namespace, and no cluster-wide grant to the operator but TokenReviews", () => {
    const { objects } = render(["watchNamespaces={team-a,team-b,team-a}"]);
    expect(kindsAndPlaces(objects)).toEqual([
      "ClusterRole -/kt-operator-edit",
      "ClusterRole -/kt-operator-token-review",
      "ClusterRole -/kt-operator-view",
      "ClusterRoleBinding -/kt-operator-token-review",
      "Role kubetune-system/kt-operator-self",
      "Role team-a/kt-operator",
      "Role team-b/kt-operator",
      "RoleBinding kubetune-system/kt-operator-self",
      "RoleBinding team-a/kt-operator",
      "RoleBinding team-b/kt-operator",
    ]);
    const grants = grantsOf(objects, operator);
    // Trainers' progress tokens are checked with TokenReviews, which are cluster-scoped and read nothing.
    expect(grants.filter((grant) => grant.namespace === "").map(describe)).toEqual(["* authentication.k8s.io/tokenreviews create"]);
    expect(new Set(grants.filter((grant) => grant.namespace !== "").map((grant) => grant.namespace))).toEqual(new Set(["team-a", "team-b", "kubetune-system"]));
  });

  it("without watchNamespaces: one ClusterRole for the jobs' resources, and still a namespaced Role for the Lease", () => {
    const { objects } = render();
    expect(kindsAndPlaces(objects)).toEqual([
      "ClusterRole -/kt-operator",
      "ClusterRole -/kt-operator-edit",
      "ClusterRole -/kt-operator-token-review",
      "ClusterRole -/kt-operator-view",
      "ClusterRoleBinding -/kt-operator",
      "ClusterRoleBinding -/kt-operator-token-review",
      "Role kubetune-system/kt-operator-self",
      "RoleBinding kubetune-system/kt-operator-self",
    ]);
    const clusterWide = grantsOf(objects, operator).filter((grant) => grant.namespace === "");
    expect(clusterWide.some((grant) => grant.resource === "leases")).toBe(false);
  });

  it("limits the Lease to its own name in its own namespace (create, which RBAC cannot limit by name, to the namespace), and never reads Secrets", () => {
    for (const values of [[], ["watchNamespaces={team-a}"]]) {
      const grants = grantsOf(render(values).objects, operator);
      expect(grants.filter((grant) => grant.resource === "leases").map(describe).sort()).toEqual([
        "kubetune-system coordination.k8s.io/leases create",
        "kubetune-system coordination.k8s.io/leases get [kt-operator]",
        "kubetune-system coordination.k8s.io/leases update [kt-operator]",
      ]);
      expect(grants.filter((grant) => grant.resource === "secrets" && ["get", "list", "watch", "*"].includes(grant.verb))).toEqual([]);
      // Its one Secret is its own keys Secret, in its own namespace: no Secret writes where the jobs are.
      expect(grants.filter((grant) => grant.resource === "secrets").map(describe)).toEqual(["kubetune-system core/secrets create"]);
      expect(grants.filter((grant) => grant.verb === "*" || grant.resource === "*" || grant.apiGroup === "*")).toEqual([]);
    }
  });

  it("renders the same objects every time: nothing is generated at render time (helm template, Argo CD)", () => {
    for (const values of [[], ["watchNamespaces={team-a}"], ["operator.progressTls.certManager.enabled=true", "operator.progressTls.certManager.issuerRef.name=ca"]]) {
      const first = render(values).text;
      expect(render(values).text).toBe(first);
    }
    expect(render().objects.filter((object) => object.kind === "Secret")).toEqual([]);
  });

  it("renders a cert-manager Certificate for the progress endpoint only when asked, and says which value is missing", () => {
    expect(render().objects.some((object) => object.kind === "Certificate")).toBe(false);
    const withCertManager = render(["operator.progressTls.certManager.enabled=true", "operator.progressTls.certManager.issuerRef.name=ca", "operator.progressCertificateIPs={10.0.0.9}"]).objects;
    const certificate = withCertManager.find((object) => object.kind === "Certificate") as unknown as { spec: { secretName: string; dnsNames: string[]; ipAddresses: string[]; issuerRef: { name: string } } };
    expect(certificate.spec).toMatchObject({ secretName: "kt-operator-progress-tls", dnsNames: ["kt-operator.kubetune-system.svc", "kt-operator.kubetune-system"], ipAddresses: ["10.0.0.9"], issuerRef: { name: "ca" } });
    expect(() => render(["operator.progressTls.certManager.enabled=true"])).toThrow("operator.progressTls.certManager.issuerRef.name: name the cert-manager Issuer or ClusterIssuer");
  });
});
