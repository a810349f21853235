import {
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { Readable } from "node:stream";
import { joinKey, StorageError, type ObjectInfo, type ObjectStore } from "./object-store.ts";

/** How to reach an S3-compatible service. Credentials come from the AWS default chain. */
export interface S3Options {
  /** A custom endpoint such as http://127.0.0.1:9000 for MinIO; unset for AWS. */
  endpoint?: string;
  region?: string;
  /** Path-style addressing (bucket in the path), needed by MinIO and most non-AWS servers. */
  forcePathStyle?: boolean;
  /** Explicit credentials; when unset the AWS default credential chain applies (env, IRSA, instance role). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Attempts per request, with the SDK's exponential backoff between them. */
  maxAttempts?: number;
  /**
   * Part size of multipart uploads, in bytes (default 16 MiB; S3's minimum is 5 MiB). Streams
   * and objects larger than one part go up in parts; an upload holds about
   * MULTIPART_QUEUE_SIZE parts in memory, and S3 allows 10,000 parts, so 16 MiB parts carry
   * objects up to about 156 GiB.
   */
  partSize?: number;
}

export const DEFAULT_PART_SIZE = 16 * 2 ** 20;
/** S3's smallest part (all but the last); lib-storage refuses smaller ones. */
export const MIN_PART_SIZE = 5 * 2 ** 20;
/** Parts uploaded at once. */
export const MULTIPART_QUEUE_SIZE = 4;

/** An object store over one s3://bucket/prefix. */
export class S3ObjectStore implements ObjectStore {
  readonly uri: string;
  private readonly client: S3Client;
  private readonly partSize: number;

  constructor(
    readonly bucket: string,
    readonly prefix: string,
    options: S3Options = {},
  ) {
    this.prefix = joinKey(prefix);
    this.uri = `s3://${bucket}${this.prefix ? `/${this.prefix}` : ""}`;
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    if (!(Number.isSafeInteger(this.partSize) && this.partSize >= MIN_PART_SIZE)) {
      throw new StorageError("InvalidUri", this.uri, `multipart part size must be a whole number of bytes, at least ${MIN_PART_SIZE} (5 MiB), got ${options.partSize}`);
    }
    this.client = new S3Client({
      endpoint: options.endpoint,
      region: options.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1",
      forcePathStyle: options.forcePathStyle,
      credentials: options.credentials,
      maxAttempts: options.maxAttempts ?? 5,
    });
  }

  async get(key: string): Promise<Buffer> {
    const stream = await this.getStream(key);
    const chunks: Buffer[] = [];
    try {
      for await (const chunk of stream) chunks.push(chunk as Buffer);
    } catch (error) {
      throw this.translate(error, key);
    }
    return Buffer.concat(chunks);
  }

  async getStream(key: string): Promise<Readable> {
    try {
      const response = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.keyOf(key) }));
      return response.Body as Readable;
    } catch (error) {
      throw this.translate(error, key);
    }
  }

  async put(key: string, body: Buffer | string | Readable): Promise<void> {
    try {
      if (body instanceof Readable || Buffer.byteLength(body) > this.partSize) {
        // Streams (model shards, of any length) and large objects go up as a multipart upload,
        // past the 5 GB limit of one PutObject and without holding more than a few parts; S3
        // makes the object visible only when the upload completes, so readers never see part
        // of it, and lib-storage aborts the upload on failure so no parts are left behind.
        await new Upload({
          client: this.client,
          params: { Bucket: this.bucket, Key: this.keyOf(key), Body: body },
          partSize: this.partSize,
          queueSize: MULTIPART_QUEUE_SIZE,
          leavePartsOnError: false,
        }).done();
      } else {
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.keyOf(key), Body: body }));
      }
    } catch (error) {
      throw this.translate(error, key);
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const response = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.keyOf(key) }));
      return { key, size: response.ContentLength ?? 0, lastModified: response.LastModified, etag: response.ETag };
    } catch (error) {
      const translated = this.translate(error, key);
      if (translated.code === "NotFound") return undefined;
      throw translated;
    }
  }

  async *list(prefix = ""): AsyncIterable<ObjectInfo> {
    const fullPrefix = this.prefix ? `${this.prefix}/${prefix}` : prefix;
    let continuationToken: string | undefined;
    do {
      let response;
      try {
        response = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: fullPrefix, ContinuationToken: continuationToken }),
        );
      } catch (error) {
        throw this.translate(error, prefix);
      }
      for (const object of response.Contents ?? []) {
        if (!object.Key) continue;
        const key = this.prefix ? object.Key.slice(this.prefix.length + 1) : object.Key;
        yield { key, size: object.Size ?? 0, lastModified: object.LastModified, etag: object.ETag };
      }
      continuationToken = response.IsTruncated ? response.NextContinuationToken : undefined;
    } while (continuationToken);
  }

  async delete(keys: string[]): Promise<void> {
    for (let start = 0; start < keys.length; start += 1000) {
      const batch = keys.slice(start, start + 1000);
      try {
        const response = await this.client.send(
          new DeleteObjectsCommand({
            Bucket: this.bucket,
            Delete: { Objects: batch.map((key) => ({ Key: this.keyOf(key) })), Quiet: true },
          }),
        );
        const failed = response.Errors?.[0];
        if (failed) throw new StorageError("Other", `s3://${this.bucket}/${failed.Key}`, `delete failed: ${failed.Message}`);
      } catch (error) {
        throw this.translate(error, batch[0] ?? "");
      }
    }
  }

  /** Closes the client's connection pool. */
  close(): void {
    this.client.destroy();
  }

  private keyOf(key: string): string {
    return this.prefix ? `${this.prefix}/${joinKey(key)}` : joinKey(key);
  }

  private translate(error: unknown, key: string): StorageError {
    if (error instanceof StorageError) return error;
    const uri = `s3://${this.bucket}/${this.keyOf(key)}`;
    const name = (error as { name?: string }).name ?? "";
    const status = error instanceof S3ServiceException ? error.$metadata.httpStatusCode : undefined;
    if (name === "NoSuchKey" || name === "NotFound" || status === 404) {
      return new StorageError("NotFound", uri, name === "NoSuchBucket" ? "no such bucket" : "no such object", { cause: error });
    }
    if (name === "NoSuchBucket") return new StorageError("NotFound", uri, "no such bucket", { cause: error });
    if (["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "CredentialsProviderError"].includes(name) || status === 403) {
      return new StorageError(
        "AccessDenied",
        uri,
        `access denied (${name || status}); check the credentials in spec.storage.secretRef or the pod's service account`,
        { cause: error },
      );
    }
    const code = (error as NodeJS.ErrnoException).code;
    if ((status !== undefined && status >= 500) || ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENOTFOUND", "EAI_AGAIN"].includes(code ?? "") || name === "TimeoutError") {
      return new StorageError("Unavailable", uri, `storage unavailable (${code ?? name ?? status}); retry later or check spec.storage.endpoint`, { cause: error });
    }
    return new StorageError("Other", uri, `${name || "error"}: ${(error as Error).message}`, { cause: error });
  }
}
