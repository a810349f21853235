import { describe, expect, it } from "vitest";
import { readLines, type SourceLine } from "./lines.ts";

async function collect(chunks: (string | Buffer)[], maxLineBytes = 1024): Promise<SourceLine[]> {
  const lines: SourceLine[] = [];
  async function* source(): AsyncGenerator<Buffer | string> {
    yield* chunks;
  }
  for await (const line of readLines(source(), maxLineBytes)) lines.push(line);
  return lines;
}

describe("readLines", () => {
  it("numbers lines from 1, keeps empty ones, and reads a last line without a newline", async () => {
    expect(await collect(["a\n\nb\nc"])).toEqual([
      { line: 1, text: "a" },
      { line: 2, text: "" },
      { line: 3, text: "b" },
      { line: 4, text: "c" },
    ]);
    expect(await collect(["a\n"])).toEqual([{ line: 1, text: "a" }]);
    expect(await collect([])).toEqual([]);
  });

  it("joins lines split across chunks, even inside a multi-byte character", async () => {
    const bytes = Buffer.from("héllo wörld\n日本\n", "utf8");
    const chunks = Array.from(bytes, (byte) => Buffer.from([byte]));
    expect(await collect(chunks)).toEqual([
      { line: 1, text: "héllo wörld" },
      { line: 2, text: "日本" },
    ]);
  });

  it("drops CR before LF and a byte-order mark at the start", async () => {
    expect(await collect(["\uFEFF{\"a\":1}\r\n{\"b\":2}\r\n"])).toEqual([
      { line: 1, text: '{"a":1}' },
      { line: 2, text: '{"b":2}' },
    ]);
  });

  it("reports a line over the byte limit without holding it, and goes on after it", async () => {
    const long = "x".repeat(40);
    expect(await collect(["ok\n", long.slice(0, 20), long.slice(20), "\nnext\n", long], 16)).toEqual([
      { line: 1, text: "ok" },
      { line: 2, tooLong: true },
      { line: 3, text: "next" },
      { line: 4, tooLong: true },
    ]);
  });
});
