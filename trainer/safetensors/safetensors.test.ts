import { describe, expect, it } from "vitest";
import { float32ToBfloat16Bits, float32ToHalfBits, halfBitsToFloat32 } from "./float16.ts";
import { entryToFloat32, parseSafetensors, readSafetensors, writeSafetensors, type TensorMap } from "./safetensors.ts";

/** A file built by hand from a header object and raw data bytes, as another writer would make it. */
function handMade(header: Record<string, unknown>, data: Uint8Array): Buffer {
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const out = Buffer.alloc(8 + json.length + data.length);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  out.set(data, 8 + json.length);
  return out;
}

function u16(...values: number[]): Uint8Array {
  return new Uint8Array(Uint16Array.from(values).buffer);
}

function f32(...values: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

const sample: TensorMap = new Map([
  ["model.embed.weight", { shape: [2, 3], data: Float32Array.from([1, -2, 0.5, 0.1, 65504, -0]) }],
  ["bias", { shape: [3], data: Float32Array.from([0.25, 3.140625, -1e-3]) }],
  ["scalar", { shape: [], data: Float32Array.from([7]) }],
  ["empty", { shape: [0, 4], data: new Float32Array(0) }],
]);

describe("safetensors writer and reader", () => {
  it("round-trips F32 tensors bit for bit, with format pt metadata and an 8-byte aligned header", () => {
    const bytes = writeSafetensors(sample, { metadata: { step: "3" } });
    const headerLength = Number(bytes.readBigUInt64LE(0));
    expect((8 + headerLength) % 8).toBe(0);
    const { metadata, tensors } = readSafetensors(bytes, "round.safetensors");
    expect(metadata).toEqual({ step: "3", format: "pt" });
    expect([...tensors.keys()].sort()).toEqual([...sample.keys()].sort());
    for (const [name, tensor] of sample) {
      expect(tensors.get(name)?.shape).toEqual(tensor.shape);
      expect(Buffer.from(tensors.get(name)!.data.buffer)).toEqual(Buffer.from(tensor.data.buffer));
    }
  });

  it("writes the same bytes for the same tensors in any insertion order", () => {
    const reversed: TensorMap = new Map([...sample].reverse());
    expect(writeSafetensors(reversed).equals(writeSafetensors(sample))).toBe(true);
  });

  it("round-trips values exactly representable in F16 and BF16", () => {
    const values = Float32Array.from([1, -2, 0.5, 65504, 2 ** -24, -0, Infinity, -Infinity, 3.140625]);
    for (const dtype of ["F16", "BF16"] as const) {
      const representable = dtype === "BF16" ? values.map((v) => (v === 65504 ? 65536 : v === 2 ** -24 ? 2 ** -100 : v)) : values;
      const tensors: TensorMap = new Map([["x", { shape: [values.length], data: representable }]]);
      const bytes = writeSafetensors(tensors, { dtype });
      const parsed = parseSafetensors(bytes, "half.safetensors");
      expect(parsed.entries.get("x")?.dtype).toBe(dtype);
      expect(Array.from(readSafetensors(bytes, "half.safetensors").tensors.get("x")!.data)).toEqual(Array.from(representable));
    }
  });

  it("decodes known F16 and BF16 bit patterns from a hand-made file", () => {
    const data = new Uint8Array([
      ...u16(0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x2e66, 0x8000, 0x0400),
      ...u16(0x3f80, 0xc000, 0x4049, 0x3f81, 0xff80, 0x0001),
    ]);
    const bytes = handMade(
      {
        half: { dtype: "F16", shape: [8], data_offsets: [0, 16] },
        brain: { dtype: "BF16", shape: [2, 3], data_offsets: [16, 28] },
      },
      data,
    );
    const { tensors } = readSafetensors(bytes, "known.safetensors");
    expect(Array.from(tensors.get("half")!.data)).toEqual([1, -2, 65504, 2 ** -24, Infinity, 0.0999755859375, -0, 2 ** -14]);
    expect(Array.from(tensors.get("brain")!.data)).toEqual([1, -2, 3.140625, 1.0078125, -Infinity, 2 ** -133]);
    expect(tensors.get("brain")!.shape).toEqual([2, 3]);
  });

  it("decodes F16 NaN as NaN", () => {
    expect(Number.isNaN(halfBitsToFloat32(Uint16Array.from([0x7e00]))[0])).toBe(true);
  });

  it("encodes F16 with round-to-nearest-even, subnormals and overflow to infinity", () => {
    expect(float32ToHalfBits(1)).toBe(0x3c00);
    expect(float32ToHalfBits(0.1)).toBe(0x2e66);
    expect(float32ToHalfBits(1 / 3)).toBe(0x3555);
    expect(float32ToHalfBits(1 + 2 ** -11)).toBe(0x3c00);
    expect(float32ToHalfBits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(float32ToHalfBits(2 ** -24)).toBe(0x0001);
    expect(float32ToHalfBits(2 ** -25)).toBe(0x0000);
    expect(float32ToHalfBits(3 * 2 ** -26)).toBe(0x0001);
    expect(float32ToHalfBits(65519)).toBe(0x7bff);
    expect(float32ToHalfBits(65520)).toBe(0x7c00);
    expect(float32ToHalfBits(-1e10)).toBe(0xfc00);
    expect(float32ToHalfBits(NaN) & 0x7c00).toBe(0x7c00);
    expect(float32ToHalfBits(NaN) & 0x3ff).not.toBe(0);
  });

  it("encodes BF16 with round-to-nearest-even and keeps NaN a NaN", () => {
    expect(float32ToBfloat16Bits(1)).toBe(0x3f80);
    expect(float32ToBfloat16Bits(Math.PI)).toBe(0x4049);
    expect(float32ToBfloat16Bits(1 + 2 ** -8)).toBe(0x3f80);
    expect(float32ToBfloat16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(float32ToBfloat16Bits(-Infinity)).toBe(0xff80);
    const nan = float32ToBfloat16Bits(NaN);
    expect(nan & 0x7f80).toBe(0x7f80);
    expect(nan & 0x7f).not.toBe(0);
  });

  it("decodes F64 tensors and refuses to decode integer tensors as weights", () => {
    const bytes = handMade(
      {
        wide: { dtype: "F64", shape: [2], data_offsets: [0, 16] },
        ids: { dtype: "I64", shape: [1], data_offsets: [16, 24] },
      },
      new Uint8Array([...new Uint8Array(Float64Array.from([0.5, -4]).buffer), ...new Uint8Array(8)]),
    );
    const parsed = parseSafetensors(bytes, "mixed.safetensors");
    expect(Array.from(entryToFloat32(parsed.entries.get("wide")!, "wide", parsed.file))).toEqual([0.5, -4]);
    expect(() => entryToFloat32(parsed.entries.get("ids")!, "ids", parsed.file)).toThrow(
      'mixed.safetensors: tensor "ids" has dtype I64; only F32, F16, BF16, F64 can be loaded as weights',
    );
  });
});

describe("safetensors corruption", () => {
  const valid = writeSafetensors(sample);
  const headerLength = Number(valid.readBigUInt64LE(0));

  it("rejects a file shorter than the header length field", () => {
    expect(() => parseSafetensors(valid.subarray(0, 5), "model.safetensors")).toThrow(
      "model.safetensors: file is 5 bytes, too short for the 8-byte header length; is it truncated?",
    );
  });

  it("rejects a header length that runs past the end of the file", () => {
    expect(() => parseSafetensors(valid.subarray(0, 8 + headerLength - 3), "model.safetensors")).toThrow(
      `model.safetensors: header length ${headerLength} runs past the end of the ${8 + headerLength - 3}-byte file; is it truncated?`,
    );
  });

  it("rejects an absurd header length", () => {
    const bytes = Buffer.from(valid);
    bytes.writeBigUInt64LE(2n ** 62n, 0);
    expect(() => parseSafetensors(bytes, "x.safetensors")).toThrow("above the 100 MB limit");
  });

  it("rejects truncated tensor data, naming the tensor that no longer fits", () => {
    expect(() => parseSafetensors(valid.subarray(0, valid.length - 4), "model-00002-of-00002.safetensors")).toThrow(
      /^model-00002-of-00002\.safetensors: tensor "scalar": data_offsets \[\d+, \d+\] run past the end of the data \(\d+ bytes\); is the file truncated\?$/,
    );
  });

  it("rejects overlapping tensors", () => {
    const bytes = handMade(
      {
        a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
      },
      f32(1, 2, 3),
    );
    expect(() => parseSafetensors(bytes, "o.safetensors")).toThrow('o.safetensors: tensor "b": data_offsets [4, 12] overlap tensor "a"');
  });

  it("rejects a gap between tensors and trailing bytes", () => {
    const gap = handMade({ a: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, f32(1, 2));
    expect(() => parseSafetensors(gap, "g.safetensors")).toThrow('g.safetensors: tensor "a": data_offsets start at 4, leaving a gap after byte 0');
    const trailing = handMade({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, f32(1, 2));
    expect(() => parseSafetensors(trailing, "t.safetensors")).toThrow("t.safetensors: tensors cover 4 bytes of data but the file holds 8");
  });

  it("rejects offsets that disagree with the dtype and shape", () => {
    const bytes = handMade({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, f32(1, 2));
    expect(() => parseSafetensors(bytes, "s.safetensors")).toThrow(
      's.safetensors: tensor "a": data_offsets [0, 8] hold 8 bytes, but F32 [3] needs 12',
    );
    const backwards = handMade({ a: { dtype: "F32", shape: [0], data_offsets: [8, 4] } }, f32(1, 2));
    expect(() => parseSafetensors(backwards, "s.safetensors")).toThrow('tensor "a": data_offsets [8, 4] end before they start');
  });

  it("rejects an unknown dtype, listing the ones the format defines", () => {
    const bytes = handMade({ a: { dtype: "F33", shape: [1], data_offsets: [0, 4] } }, f32(1));
    expect(() => parseSafetensors(bytes, "d.safetensors")).toThrow(/^d\.safetensors: tensor "a": unknown dtype "F33"; the format defines BOOL, .*F32.*$/);
  });

  it("rejects a header that is not JSON, or entries without a shape", () => {
    const bytes = Buffer.from(valid);
    bytes.write("#", 8);
    expect(() => parseSafetensors(bytes, "j.safetensors")).toThrow(/^j\.safetensors: header is not valid UTF-8 JSON/);
    const noShape = handMade({ a: { dtype: "F32", data_offsets: [0, 4] } }, f32(1));
    expect(() => parseSafetensors(noShape, "n.safetensors")).toThrow('n.safetensors: tensor "a": "shape" must be an array of non-negative integers, got undefined');
  });

  it("refuses to write a tensor whose data disagrees with its shape", () => {
    const bad: TensorMap = new Map([["w", { shape: [2, 2], data: new Float32Array(3) }]]);
    expect(() => writeSafetensors(bad)).toThrow('safetensors: tensor "w" has shape [2, 2] but 3 values');
  });
});
