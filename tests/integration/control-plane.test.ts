import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ApiError, resourcePath } from "../../kube/client.ts";
import { cluster, createNamespace, eventually, kubeClient, kubectl } from "./harness.ts";

describe("the test control plane", () => {
  it("is a real kube-apiserver of a current minor version", async () => {
    const version = await kubeClient().get<{ gitVersion: string; minor: string }>("/version");
    console.log(`integration tests run against kube-apiserver ${version.gitVersion}`);
    expect(version.gitVersion).toBe(cluster().kubeApiserverVersion);
    expect(Number.parseInt(version.minor, 10)).toBeGreaterThanOrEqual(30);
  });

  it("enforces a CRD's schema: an invalid custom resource is refused with 422", async () => {
    const applied = kubectl(["apply", "-f", "-"], readFileSync("tests/fixtures/sample-crd.yaml", "utf8"));
    expect(applied.stderr).toBe("");
    expect(applied.status).toBe(0);
    const client = kubeClient();
    const namespace = await createNamespace("crd");
    const widgets = resourcePath({ group: "sample.kubetune.io", version: "v1", plural: "widgets", namespace });
    const widget = (size: unknown) => ({ apiVersion: "sample.kubetune.io/v1", kind: "Widget", metadata: { name: `w${String(size)}` }, spec: { size } });

    // The CRD is served a moment after it is created.
    await eventually("the Widget CRD to be served", async () => (await client.create(widgets, widget(3))) ?? undefined);

    const refused = await client.create(widgets, widget(0)).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(ApiError);
    expect((refused as ApiError).status).toBe(422);
    expect((refused as ApiError).message).toContain("spec.size");

    const byKubectl = kubectl(["create", "-n", namespace, "-f", "-"], JSON.stringify(widget("big")));
    expect(byKubectl.status).not.toBe(0);
    expect(byKubectl.stderr).toMatch(/spec\.size.*integer/);
  });
});
