/** One line of a text file: its 1-based number and its text, or `tooLong` when it passed the byte limit. */
export type SourceLine = { line: number; text: string; tooLong?: undefined } | { line: number; text?: undefined; tooLong: true };

const NEWLINE = 0x0a;

/**
 * A line of whitespace only. The loader and preflight skip it without counting it, good or bad,
 * as Hugging Face datasets' JSON loader does: a trailing blank line is common in JSONL files.
 */
export function isBlankLine(source: SourceLine): boolean {
  return source.text !== undefined && source.text.trim() === "";
}

/**
 * The lines of a UTF-8 byte stream, read chunk by chunk: memory holds one chunk and one line,
 * never the file. Lines end at "\n" (a "\r" before it is dropped), a byte-order mark at the
 * start is dropped, and a last line without "\n" still counts. A line longer than
 * `maxLineBytes` is not kept: it comes back as `tooLong` and reading goes on after it.
 * Splitting on the byte 0x0A is safe in UTF-8, where it never occurs inside a character.
 */
export async function* readLines(chunks: AsyncIterable<Buffer | string>, maxLineBytes: number): AsyncGenerator<SourceLine> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let tooLong = false;
  let line = 0;
  const finish = (tail: Buffer): SourceLine => {
    line++;
    if (tooLong || pendingBytes + tail.length > maxLineBytes) {
      pending = [];
      pendingBytes = 0;
      tooLong = false;
      return { line, tooLong: true };
    }
    let bytes = pending.length === 0 ? tail : Buffer.concat([...pending, tail]);
    pending = [];
    pendingBytes = 0;
    if (bytes.length > 0 && bytes[bytes.length - 1] === 0x0d) bytes = bytes.subarray(0, bytes.length - 1);
    let text = bytes.toString("utf8");
    if (line === 1 && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    return { line, text };
  };
  for await (const chunk of chunks) {
    const buffer = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk;
    let start = 0;
    for (let end = buffer.indexOf(NEWLINE, start); end !== -1; end = buffer.indexOf(NEWLINE, start)) {
      yield finish(buffer.subarray(start, end));
      start = end + 1;
    }
    const rest = buffer.subarray(start);
    if (rest.length === 0) continue;
    if (tooLong || pendingBytes + rest.length > maxLineBytes) {
      tooLong = true;
      pending = [];
      pendingBytes = 0;
    } else {
      // Copy: the stream may reuse the chunk's memory once we ask for the next one.
      pending.push(Buffer.from(rest));
      pendingBytes += rest.length;
    }
  }
  if (pendingBytes > 0 || tooLong) yield finish(Buffer.alloc(0));
}
