import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import https from "node:https";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { checkCa, generateCa, generateServingCert } from "./certs.ts";

describe("the progress endpoint's certificates", () => {
  const ca = generateCa("kubetune-progress-ca", 3650);

  it("makes a CA that Node reads as a CA, valid for the days asked", () => {
    const cert = new X509Certificate(ca.cert);
    expect(cert.ca).toBe(true);
    expect(cert.subject).toBe("CN=kubetune-progress-ca");
    const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(3649);
    expect(days).toBeLessThan(3651);
    expect(() => checkCa(ca, "test")).not.toThrow();
  });

  it("signs serving certificates for DNS names and IPv4 and IPv6 addresses that OpenSSL verifies against the CA", () => {
    const leaf = generateServingCert(ca, ["kt-operator.kubetune-system.svc", "10.0.0.7", "fd00::1"], 90);
    const cert = new X509Certificate(leaf.cert);
    expect(cert.ca).toBe(false);
    expect(cert.checkIssued(new X509Certificate(ca.cert))).toBe(true);
    expect(cert.verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
    expect(cert.subjectAltName).toBe("DNS:kt-operator.kubetune-system.svc, IP Address:10.0.0.7, IP Address:FD00:0:0:0:0:0:0:1");
    expect(cert.checkHost("kt-operator.kubetune-system.svc")).toBe("kt-operator.kubetune-system.svc");
    expect(cert.checkHost("other.kubetune-system.svc")).toBeUndefined();
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.1"]);
    const dir = mkdtempSync(path.join(os.tmpdir(), "kubetune-certs-"));
    writeFileSync(path.join(dir, "ca.crt"), ca.cert);
    writeFileSync(path.join(dir, "tls.crt"), leaf.cert);
    const verified = execFileSync("openssl", ["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", path.join(dir, "ca.crt"), path.join(dir, "tls.crt")], { encoding: "utf8" });
    expect(verified.trim()).toBe(`${path.join(dir, "tls.crt")}: OK`);
  });

  it("serves TLS that a client trusting only the CA accepts, and one trusting another CA refuses", async () => {
    const leaf = generateServingCert(ca, ["127.0.0.1"], 90);
    const server = https.createServer({ cert: leaf.cert, key: leaf.key }, (_request, response) => response.end("ok"));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    const get = (trusted: string) =>
      new Promise<string>((resolve, reject) => {
        https.get({ host: "127.0.0.1", port, ca: trusted, path: "/" }, (response) => {
          let body = "";
          response.on("data", (chunk: Buffer) => (body += chunk.toString()));
          response.on("end", () => resolve(body));
        }).once("error", reject);
      });
    try {
      expect(await get(ca.cert)).toBe("ok");
      await expect(get(generateCa("another", 30).cert)).rejects.toThrow(/unable to verify|self.signed|certificate/i);
    } finally {
      server.close();
    }
  });

  it("says which file is wrong when a CA and key do not belong together", () => {
    const other = generateCa("other", 30);
    expect(() => checkCa({ cert: ca.cert, key: other.key }, "Secret ns/keys")).toThrow("Secret ns/keys: ca.key is not the key of ca.crt");
    const leaf = generateServingCert(ca, ["a.example"], 30);
    expect(() => checkCa(leaf, "Secret ns/keys")).toThrow("Secret ns/keys: ca.crt is not a CA certificate");
    expect(() => checkCa({ cert: "junk", key: ca.key }, "Secret ns/keys")).toThrow(/Secret ns\/keys: ca.crt is not a PEM certificate/);
  });
});
