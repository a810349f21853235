import { X509Certificate } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FakeKube } from "../../kube/fake.ts";
import { generateCa, generateServingCert } from "./certs.ts";
import { loadOrCreateKeys, SECRET_KEYS, servingHosts, ServingCertificate } from "./serving-keys.ts";

const secretsPath = "/api/v1/namespaces/kubetune-system/secrets";

/** Writes a Secret's data into a folder, as the kubelet projects a Secret volume. */
function project(dir: string, data: Record<string, string>): void {
  for (const [key, value] of Object.entries(data)) writeFileSync(path.join(dir, key), Buffer.from(value, "base64"));
}

describe("the operator's own keys", () => {
  it("makes a CA on the first start and creates the Secret, without any read", async () => {
    const kube = new FakeKube();
    const dir = mkdtempSync(path.join(os.tmpdir(), "kubetune-keys-"));
    const keys = await loadOrCreateKeys({ client: kube.asClient(), namespace: "kubetune-system", name: "kt-operator-keys", dir, log: () => {} });
    expect(keys.source).toBe("created");
    expect(kube.calls.map((call) => `${call.method} ${call.path}`)).toEqual([`POST ${secretsPath}`]);
    const stored = kube.stored<{ data: Record<string, string> }>(`${secretsPath}/kt-operator-keys`)!;
    expect(Object.keys(stored.data).sort()).toEqual(["ca.crt", "ca.key"]);
    expect(new X509Certificate(keys.ca.cert).ca).toBe(true);
  });

  it("uses what the pod mounts on later starts, so replicas and restarts share the CA", async () => {
    const kube = new FakeKube();
    const first = mkdtempSync(path.join(os.tmpdir(), "kubetune-keys-"));
    const created = await loadOrCreateKeys({ client: kube.asClient(), namespace: "kubetune-system", name: "kt-operator-keys", dir: first, log: () => {} });
    const second = mkdtempSync(path.join(os.tmpdir(), "kubetune-keys-"));
    project(second, kube.stored<{ data: Record<string, string> }>(`${secretsPath}/kt-operator-keys`)!.data);
    const calls = kube.calls.length;
    const mounted = await loadOrCreateKeys({ client: kube.asClient(), namespace: "kubetune-system", name: "kt-operator-keys", dir: second, log: () => {} });
    expect(mounted.source).toBe("mounted");
    expect(mounted.ca).toEqual(created.ca);
    expect(kube.calls.length).toBe(calls);
  });

  it("waits for the kubelet to mount a Secret another replica created first, and fails with what to check when it never does", async () => {
    const kube = new FakeKube();
    const winner = await loadOrCreateKeys({ client: kube.asClient(), namespace: "kubetune-system", name: "kt-operator-keys", dir: mkdtempSync(path.join(os.tmpdir(), "kubetune-keys-")), log: () => {} });
    const loserDir = mkdtempSync(path.join(os.tmpdir(), "kubetune-keys-"));
    const loser = loadOrCreateKeys({ client: kube.asClient(), namespace: "kubetune-system", name: "kt-operator-keys", dir: loserDir, mountWaitMs: 10_000, log: () => {} });
    setTimeout(() => project(loserDir, kube.stored<{ data: Record<string, string> }>(`${secretsPath}/kt-operator-keys`)!.data), 1500);
    const keys = await loser;
    expect(keys.source).toBe("mounted");
    expect(keys.ca).toEqual(winner.ca);

    const never = loadOrCreateKeys({ client: kube.asClient(), namespace: "kubetune-system", name: "kt-operator-keys", dir: mkdtempSync(path.join(os.tmpdir(), "kubetune-keys-")), mountWaitMs: 1200, log: () => {} });
    await expect(never).rejects.toThrow(/Secret kubetune-system\/kt-operator-keys mounted at .*: the Secret exists but its files did not appear within 1.2s/);
  });

  it("reads a Secret an earlier version made, which also holds a token key, and ignores that key", async () => {
    const kube = new FakeKube();
    const dir = mkdtempSync(path.join(os.tmpdir(), "kubetune-keys-"));
    const ca = generateCa("kubetune-progress-ca", 30);
    writeFileSync(path.join(dir, SECRET_KEYS.caCert), ca.cert);
    writeFileSync(path.join(dir, SECRET_KEYS.caKey), ca.key);
    writeFileSync(path.join(dir, "token.key"), "short");
    const keys = await loadOrCreateKeys({ client: kube.asClient(), namespace: "ns", name: "keys", dir, log: () => {} });
    expect(keys).toEqual({ ca, source: "mounted" });
    expect(kube.calls).toEqual([]);
  });

  it("signs a serving certificate for the progress URL's host and the Service's names", () => {
    const ca = generateCa("kubetune-progress-ca", 30);
    expect(servingHosts("https://kt-operator.kubetune-system.svc:8443", ["kt-operator.kubetune-system.svc", "kt-operator.kubetune-system"])).toEqual([
      "kt-operator.kubetune-system.svc",
      "kt-operator.kubetune-system",
    ]);
    expect(servingHosts("https://[::1]:8443", ["10.1.2.3"])).toEqual(["::1", "10.1.2.3"]);
    const serving = ServingCertificate.fromCa(ca, servingHosts("https://127.0.0.1:8443", ["kt-operator.ns.svc"]), () => {});
    const cert = new X509Certificate(serving.get().cert);
    expect(cert.checkIssued(new X509Certificate(ca.cert))).toBe(true);
    expect(cert.subjectAltName).toBe("IP Address:127.0.0.1, DNS:kt-operator.ns.svc");
  });

  it("rereads certificate files when they change (cert-manager renews them in place)", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "kubetune-keys-"));
    const ca = generateCa("issuer", 30);
    const write = (name: string) => {
      const pair = generateServingCert(ca, [name], 30);
      writeFileSync(path.join(dir, "tls.crt"), pair.cert);
      writeFileSync(path.join(dir, "tls.key"), pair.key);
      return pair;
    };
    write("first.example");
    const serving = ServingCertificate.fromFiles(path.join(dir, "tls.crt"), path.join(dir, "tls.key"), () => {});
    const changes: string[] = [];
    serving.start((pair) => changes.push(new X509Certificate(pair.cert).subjectAltName ?? ""), 50);
    try {
      const renewed = write("renewed.example");
      await new Promise((resolve) => setTimeout(resolve, 400));
      expect(changes).toEqual(["DNS:renewed.example"]);
      expect(serving.get()).toEqual(renewed);
    } finally {
      serving.stop();
    }
  });
});
