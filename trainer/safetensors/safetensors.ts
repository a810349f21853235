import {
  bfloat16BitsToFloat32,
  float32ToBfloat16Bits,
  float32ToHalfBits,
  halfBitsToFloat32,
} from "./float16.ts";

/**
 * The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
 * header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [start, end]}, "__metadata__": {string: string}}`,
 * then the tensors' raw little-endian row-major bytes; offsets count from the end of the header.
 * Every check follows the reference implementation, so a file this reader accepts loads in
 * Hugging Face's and the other way round.
 */

/** A float32 tensor in memory, by name in a TensorMap. */
export interface NamedTensor {
  shape: number[];
  data: Float32Array;
}

/** Tensors by name, in a stable order. */
export type TensorMap = Map<string, NamedTensor>;

/** The dtypes this project decodes to float32 and writes. */
export type FloatDtype = "F32" | "F16" | "BF16";

/** Bytes per element of every dtype the format defines; others make a file invalid. */
const DTYPE_SIZES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

const DECODABLE: readonly string[] = ["F32", "F16", "BF16", "F64"];

/** The reference implementation refuses headers above 100 MB; so do we. */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor's entry in a file: its dtype, shape and raw bytes (a view, not a copy). */
export interface SafetensorsEntry {
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

/** A decoded file: metadata and entries in data order. */
export interface SafetensorsFile {
  /** The file's name, used in every error about it. */
  file: string;
  metadata: Record<string, string>;
  entries: Map<string, SafetensorsEntry>;
}

/** A safetensors file is malformed or holds something this project cannot use. */
export class SafetensorsError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "SafetensorsError";
  }
}

/**
 * Parses and validates a whole file. `file` names it in errors (a key or path).
 * Entries are views into `bytes`; decode them with `entryToFloat32`.
 */
export function parseSafetensors(bytes: Uint8Array, file: string): SafetensorsFile {
  const fail = (message: string): never => {
    throw new SafetensorsError(file, message);
  };
  if (bytes.length < 8) {
    fail(`file is ${bytes.length} bytes, too short for the 8-byte header length; is it truncated?`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${headerLength} is above the 100 MB limit; this is not a safetensors file or it is corrupt`);
  }
  const dataStart = 8 + Number(headerLength);
  if (dataStart > bytes.length) {
    fail(`header length ${headerLength} runs past the end of the ${bytes.length}-byte file; is it truncated?`);
  }

  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, dataStart)));
  } catch (error) {
    fail(`header is not valid UTF-8 JSON (${(error as Error).message})`);
  }
  if (!isPlainObject(header)) fail("header must be a JSON object of tensors");
  const headerObject = header as Record<string, unknown>;

  const metadata: Record<string, string> = {};
  const rawMetadata = headerObject.__metadata__;
  if (rawMetadata !== undefined) {
    if (!isPlainObject(rawMetadata)) fail(`"__metadata__" must be an object of strings`);
    for (const [key, value] of Object.entries(rawMetadata as Record<string, unknown>)) {
      if (typeof value !== "string") fail(`"__metadata__.${key}" must be a string, got ${JSON.stringify(value)}`);
      metadata[key] = value as string;
    }
  }

  const dataLength = bytes.length - dataStart;
  const located: Array<{ name: string; dtype: string; shape: number[]; start: number; end: number }> = [];
  for (const [name, raw] of Object.entries(headerObject)) {
    if (name === "__metadata__") continue;
    const where = `tensor "${name}"`;
    if (!isPlainObject(raw)) fail(`${where}: entry must be an object with dtype, shape and data_offsets`);
    const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
    if (typeof dtype !== "string") fail(`${where}: missing or non-string "dtype"`);
    const elementSize = DTYPE_SIZES[dtype as string];
    if (elementSize === undefined) {
      fail(`${where}: unknown dtype ${JSON.stringify(dtype)}; the format defines ${Object.keys(DTYPE_SIZES).join(", ")}`);
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
      fail(`${where}: "shape" must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInteger)) {
      fail(`${where}: "data_offsets" must be [start, end] with non-negative integers, got ${JSON.stringify(offsets)}`);
    }
    const [start, end] = offsets as [number, number];
    const shapeList = shape as number[];
    const expectedBytes = shapeList.reduce((product, dim) => product * dim, 1) * elementSize!;
    if (end < start) fail(`${where}: data_offsets [${start}, ${end}] end before they start`);
    if (end - start !== expectedBytes) {
      fail(`${where}: data_offsets [${start}, ${end}] hold ${end - start} bytes, but ${dtype} [${shapeList.join(", ")}] needs ${expectedBytes}`);
    }
    if (end > dataLength) {
      fail(`${where}: data_offsets [${start}, ${end}] run past the end of the data (${dataLength} bytes); is the file truncated?`);
    }
    located.push({ name, dtype: dtype as string, shape: shapeList, start, end });
  }

  // Tensors must tile the data exactly: no overlaps, no holes, nothing after the last one.
  located.sort((a, b) => a.start - b.start || a.end - b.end);
  let cursor = 0;
  let previous: string | undefined;
  for (const tensor of located) {
    if (tensor.start < cursor) {
      fail(`tensor "${tensor.name}": data_offsets [${tensor.start}, ${tensor.end}] overlap tensor "${previous}"`);
    }
    if (tensor.start > cursor) {
      fail(`tensor "${tensor.name}": data_offsets start at ${tensor.start}, leaving a gap after byte ${cursor}`);
    }
    cursor = tensor.end;
    previous = tensor.name;
  }
  if (cursor !== dataLength) {
    fail(`tensors cover ${cursor} bytes of data but the file holds ${dataLength}; the file has trailing bytes or a wrong header`);
  }

  const entries = new Map<string, SafetensorsEntry>();
  for (const tensor of located) {
    entries.set(tensor.name, {
      dtype: tensor.dtype,
      shape: tensor.shape,
      bytes: bytes.subarray(dataStart + tensor.start, dataStart + tensor.end),
    });
  }
  return { file, metadata, entries };
}

/** One entry's values as float32 (a copy). F32, F16, BF16 and F64 decode; other dtypes are an error. */
export function entryToFloat32(entry: SafetensorsEntry, name: string, file: string): Float32Array {
  if (!DECODABLE.includes(entry.dtype)) {
    throw new SafetensorsError(file, `tensor "${name}" has dtype ${entry.dtype}; only ${DECODABLE.join(", ")} can be loaded as weights`);
  }
  // Copy into a fresh, aligned buffer (a Buffer's slice() would be a view into a shared pool).
  // safetensors and every platform Node runs on are little-endian, so the bytes are the values.
  const aligned = new Uint8Array(entry.bytes).buffer;
  switch (entry.dtype) {
    case "F32":
      return new Float32Array(aligned);
    case "F64":
      return Float32Array.from(new Float64Array(aligned));
    case "F16":
      return halfBitsToFloat32(new Uint16Array(aligned));
    default:
      return bfloat16BitsToFloat32(new Uint16Array(aligned));
  }
}

/** Parses a file and decodes every tensor to float32. */
export function readSafetensors(bytes: Uint8Array, file: string): { metadata: Record<string, string>; tensors: TensorMap } {
  const parsed = parseSafetensors(bytes, file);
  const tensors: TensorMap = new Map();
  for (const [name, entry] of parsed.entries) {
    tensors.set(name, { shape: entry.shape, data: entryToFloat32(entry, name, file) });
  }
  return { metadata: parsed.metadata, tensors };
}

export interface WriteSafetensorsOptions {
  /** Storage dtype of every tensor; default F32 (the values exactly). */
  dtype?: FloatDtype;
  /** Extra `__metadata__` entries; `format: "pt"` is always written, as PyTorch loaders expect. */
  metadata?: Record<string, string>;
}

/**
 * Serialises tensors to safetensors bytes. Tensors are written in name order, so the same
 * tensors always give the same bytes.
 */
export function writeSafetensors(tensors: TensorMap, options: WriteSafetensorsOptions = {}): Buffer {
  const dtype = options.dtype ?? "F32";
  const elementSize = DTYPE_SIZES[dtype]!;
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = { __metadata__: { ...options.metadata, format: "pt" } };
  let offset = 0;
  for (const name of names) {
    const tensor = tensors.get(name)!;
    if (name === "" || name === "__metadata__") throw new Error(`safetensors: invalid tensor name ${JSON.stringify(name)}`);
    if (!tensor.shape.every(isNonNegativeInteger)) {
      throw new Error(`safetensors: tensor "${name}" has an invalid shape [${tensor.shape.join(", ")}]`);
    }
    const count = tensor.shape.reduce((product, dim) => product * dim, 1);
    if (count !== tensor.data.length) {
      throw new Error(`safetensors: tensor "${name}" has shape [${tensor.shape.join(", ")}] but ${tensor.data.length} values`);
    }
    header[name] = { dtype, shape: tensor.shape, data_offsets: [offset, offset + count * elementSize] };
    offset += count * elementSize;
  }

  let json = JSON.stringify(header);
  // Pad with spaces so the data starts 8-byte aligned; JSON ignores trailing whitespace.
  const jsonBytes = Buffer.byteLength(json, "utf8");
  json += " ".repeat((8 - ((8 + jsonBytes) % 8)) % 8);
  const headerBytes = Buffer.from(json, "utf8");

  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  let cursor = 8 + headerBytes.length;
  for (const name of names) {
    const { data } = tensors.get(name)!;
    const encoded = encode(data, dtype);
    out.set(encoded, cursor);
    cursor += encoded.length;
  }
  return out;
}

function encode(data: Float32Array, dtype: FloatDtype): Uint8Array {
  if (dtype === "F32") return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const bits = new Uint16Array(data.length);
  const convert = dtype === "F16" ? float32ToHalfBits : float32ToBfloat16Bits;
  for (let i = 0; i < data.length; i++) bits[i] = convert(data[i]!);
  return new Uint8Array(bits.buffer);
}

function isPlainObject(value: unknown): boolean {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isNonNegativeInteger(value: unknown): boolean {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}
