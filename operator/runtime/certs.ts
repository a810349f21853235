import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, X509Certificate, type KeyObject } from "node:crypto";
import { isIP } from "node:net";

/**
 * The progress endpoint's small PKI: a CA, and serving certificates it signs, both ECDSA P-256,
 * written as DER by hand (Node can parse X.509 but not make it; the few structures needed are
 * RFC 5280's and are checked in certs.test.ts with Node's and OpenSSL's verifiers). The CA is
 * what trainers trust; a serving certificate lives only in the operator's memory and is made
 * again at every start and before it expires, as client-go's self-signed serving does.
 */

export interface KeyPair {
  /** PEM certificate. */
  cert: string;
  /** PEM PKCS#8 private key. */
  key: string;
}

const OID = {
  commonName: "2.5.4.3",
  ecPublicKey: "1.2.840.10045.2.1",
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  extKeyUsage: "2.5.29.37",
  serverAuth: "1.3.6.1.5.5.7.3.1",
  subjectAltName: "2.5.29.17",
  subjectKeyIdentifier: "2.5.29.14",
  authorityKeyIdentifier: "2.5.29.35",
};

/** A CA certificate for the progress endpoint (keyCertSign, path length 0). */
export function generateCa(commonName: string, validDays: number, now = new Date()): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const name = distinguishedName(commonName);
  const cert = certificate({
    subject: name,
    issuer: name,
    publicKey,
    signingKey: privateKey,
    now,
    validDays,
    extensions: [
      extension(OID.basicConstraints, true, sequence(boolean(true), integer(Buffer.from([0])))),
      // digitalSignature, keyCertSign, cRLSign.
      extension(OID.keyUsage, true, bitString(Buffer.from([0x86]), 1)),
      extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(publicKey))),
    ],
  });
  return { cert, key: privateKey.export({ type: "pkcs8", format: "pem" }).toString() };
}

/** A serving certificate for the given DNS names and IP addresses, signed by the CA. */
export function generateServingCert(ca: KeyPair, hosts: string[], validDays: number, now = new Date()): KeyPair {
  if (hosts.length === 0) throw new Error("a serving certificate needs at least one DNS name or IP address");
  const caCert = new X509Certificate(ca.cert);
  const caKey = createPrivateKey(ca.key);
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const names = hosts.map((host) => {
    const family = isIP(host);
    if (family === 0) return der(0x82, Buffer.from(host, "ascii"));
    return der(0x87, family === 4 ? Buffer.from(host.split(".").map(Number)) : ipv6Bytes(host));
  });
  const cert = certificate({
    subject: distinguishedName(hosts[0]!),
    issuer: rawSubject(caCert),
    publicKey,
    signingKey: caKey,
    now,
    validDays,
    extensions: [
      extension(OID.basicConstraints, true, sequence()),
      // digitalSignature: what an ECDSA key does in a TLS handshake.
      extension(OID.keyUsage, true, bitString(Buffer.from([0x80]), 7)),
      extension(OID.extKeyUsage, false, sequence(oid(OID.serverAuth))),
      extension(OID.subjectAltName, false, sequence(...names)),
      extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(publicKey))),
      extension(OID.authorityKeyIdentifier, false, sequence(der(0x80, keyIdentifier(caCert.publicKey)))),
    ],
  });
  return { cert, key: privateKey.export({ type: "pkcs8", format: "pem" }).toString() };
}

/** Checks that `ca` is a CA certificate whose key is `caKey`; throws naming what is wrong. */
export function checkCa(ca: KeyPair, where: string): void {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(ca.cert);
  } catch (error) {
    throw new Error(`${where}: ca.crt is not a PEM certificate (${(error as Error).message})`);
  }
  if (!cert.ca) throw new Error(`${where}: ca.crt is not a CA certificate`);
  let key: KeyObject;
  try {
    key = createPrivateKey(ca.key);
  } catch (error) {
    throw new Error(`${where}: ca.key is not a PEM private key (${(error as Error).message})`);
  }
  if (!cert.checkPrivateKey(key)) throw new Error(`${where}: ca.key is not the key of ca.crt`);
  if (Date.parse(cert.validTo) <= Date.now()) throw new Error(`${where}: the CA expired on ${cert.validTo}; delete the Secret and restart the operator to make a new one`);
}

interface CertificateFields {
  subject: Buffer;
  issuer: Buffer;
  publicKey: KeyObject;
  signingKey: KeyObject;
  now: Date;
  validDays: number;
  extensions: Buffer[];
}

function certificate(fields: CertificateFields): string {
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01;
  // An hour back: clocks of the trainers' nodes may run behind the operator's.
  const notBefore = new Date(fields.now.getTime() - 3600_000);
  const notAfter = new Date(fields.now.getTime() + fields.validDays * 86_400_000);
  const algorithm = sequence(oid(OID.ecdsaWithSha256));
  const tbs = sequence(
    der(0xa0, integer(Buffer.from([2]))),
    integer(serial),
    algorithm,
    fields.issuer,
    sequence(time(notBefore), time(notAfter)),
    fields.subject,
    fields.publicKey.export({ type: "spki", format: "der" }),
    der(0xa3, sequence(...fields.extensions)),
  );
  const signature = sign("sha256", tbs, fields.signingKey);
  const cert = sequence(tbs, algorithm, bitString(signature, 0));
  const base64 = cert.toString("base64").replace(/(.{64})/g, "$1\n").replace(/\n$/, "");
  return `-----BEGIN CERTIFICATE-----\n${base64}\n-----END CERTIFICATE-----\n`;
}

/** The issuer's subject exactly as its certificate encodes it, so that chain building matches byte for byte. */
function rawSubject(cert: X509Certificate): Buffer {
  // Certificate > TBSCertificate > [version, serial, signature, issuer, validity, subject, ...]
  const tbs = children(children(cert.raw)[0]!);
  return tbs[5]!;
}

/** The DER elements inside a constructed element. */
function children(element: Buffer): Buffer[] {
  const { headerLength, length } = readHeader(element, 0);
  const out: Buffer[] = [];
  let offset = headerLength;
  while (offset < headerLength + length) {
    const child = readHeader(element, offset);
    out.push(element.subarray(offset, offset + child.headerLength + child.length));
    offset += child.headerLength + child.length;
  }
  return out;
}

function readHeader(buffer: Buffer, offset: number): { headerLength: number; length: number } {
  const first = buffer[offset + 1]!;
  if (first < 0x80) return { headerLength: 2, length: first };
  const count = first & 0x7f;
  let length = 0;
  for (let index = 0; index < count; index += 1) length = length * 256 + buffer[offset + 2 + index]!;
  return { headerLength: 2 + count, length };
}

function distinguishedName(commonName: string): Buffer {
  return sequence(der(0x31, sequence(oid(OID.commonName), der(0x0c, Buffer.from(commonName, "utf8")))));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return critical ? sequence(oid(id), boolean(true), octetString(value)) : sequence(oid(id), octetString(value));
}

/** RFC 5280's method 1: SHA-1 of the subjectPublicKey bits. */
function keyIdentifier(publicKey: KeyObject): Buffer {
  const spki = children(publicKey.export({ type: "spki", format: "der" }));
  const bits = spki[1]!;
  const { headerLength } = readHeader(bits, 0);
  return createHash("sha1").update(bits.subarray(headerLength + 1)).digest();
}

function der(tag: number, ...contents: Buffer[]): Buffer {
  const body = Buffer.concat(contents);
  let length: Buffer;
  if (body.length < 0x80) length = Buffer.from([body.length]);
  else {
    const bytes: number[] = [];
    for (let remaining = body.length; remaining > 0; remaining = Math.floor(remaining / 256)) bytes.unshift(remaining % 256);
    length = Buffer.from([0x80 | bytes.length, ...bytes]);
  }
  return Buffer.concat([Buffer.from([tag]), length, body]);
}

function sequence(...contents: Buffer[]): Buffer {
  return der(0x30, ...contents);
}

function boolean(value: boolean): Buffer {
  return der(0x01, Buffer.from([value ? 0xff : 0]));
}

/** A non-negative INTEGER from big-endian bytes: minimal, with a leading zero where the top bit is set. */
function integer(bytes: Buffer): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0 && bytes[start + 1]! < 0x80) start += 1;
  const trimmed = bytes.subarray(start);
  return der(0x02, trimmed[0]! >= 0x80 ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed);
}

function bitString(bytes: Buffer, unusedBits: number): Buffer {
  return der(0x03, Buffer.from([unusedBits]), bytes);
}

function octetString(bytes: Buffer): Buffer {
  return der(0x04, bytes);
}

function oid(dotted: string): Buffer {
  const [first, second, ...rest] = dotted.split(".").map(Number) as [number, number, ...number[]];
  const bytes = [first * 40 + second];
  for (const arc of rest) {
    const groups: number[] = [];
    for (let value = arc; ; value = Math.floor(value / 128)) {
      groups.unshift(value % 128);
      if (value < 128) break;
    }
    bytes.push(...groups.map((group, index) => (index < groups.length - 1 ? group | 0x80 : group)));
  }
  return der(0x06, Buffer.from(bytes));
}

/** UTCTime through 2049, GeneralizedTime after, as RFC 5280 requires. */
function time(date: Date): Buffer {
  const text = date.toISOString().replace(/[-:T]/g, "").replace(/\.\d+Z$/, "Z");
  return date.getUTCFullYear() < 2050 ? der(0x17, Buffer.from(text.slice(2), "ascii")) : der(0x18, Buffer.from(text, "ascii"));
}

function ipv6Bytes(address: string): Buffer {
  const [head, tail] = address.includes("::") ? (address.split("::") as [string, string]) : [address, undefined];
  const parse = (part: string) => (part ? part.split(":").map((group) => parseInt(group, 16)) : []);
  const front = parse(head);
  const back = tail === undefined ? [] : parse(tail);
  const groups = tail === undefined ? front : [...front, ...Array<number>(8 - front.length - back.length).fill(0), ...back];
  const bytes = Buffer.alloc(16);
  groups.forEach((group, index) => bytes.writeUInt16BE(group, index * 2));
  return bytes;
}

/** The public key of a PEM private key, for tests and checks. */
export function publicKeyOf(privateKeyPem: string): KeyObject {
  return createPublicKey(createPrivateKey(privateKeyPem));
}
