import type { ChatMessage, Tokenizer } from "../tokenizer/tokenizer.ts";
import type { SourceLine } from "./lines.ts";
import { fieldName, type DatasetFormat, type FieldMapping, type InstructionTemplate } from "./options.ts";

/** A piece of an example's text and whether the model is trained to produce it. */
export interface TextSegment {
  text: string;
  loss: boolean;
}

/**
 * One dataset line made ready for tokenization, still as text. Language-model examples are
 * segments with their loss flags: the whole text for `text`, prompt (no loss) then output
 * for `instruction`, the rendered conversation with loss on the assistant turns for `chat`.
 * `special` asks for the tokenizer's BOS before and EOS after; a chat template writes its own.
 */
export type Example =
  | { kind: "lm"; segments: TextSegment[]; special: boolean }
  /**
   * A preference pair: the prompt and the two completions as text. `chat` pairs were rendered
   * with the chat template, which writes its own BOS and end-of-turn tokens; the others get the
   * tokenizer's BOS and EOS as `lm` examples with `special` do.
   */
  | { kind: "preference"; prompt: string; chosen: string; rejected: string; chat?: boolean }
  | { kind: "classification"; text: string; label: number };

/** What turning a line into an example needs besides the line. */
export interface ExampleContext {
  format: DatasetFormat;
  fields: FieldMapping;
  instructionTemplate: InstructionTemplate;
  classLabels: string[] | undefined;
  /** Renders chat examples; without it (preflight with a broken tokenizer) chat lines are only checked. */
  tokenizer: Pick<Tokenizer, "applyChatTemplate"> | undefined;
}

/** A line's example, or what is wrong with the line (the text after "file:line: "). */
export type LineResult = { example: Example; problem?: undefined } | { example?: undefined; problem: string };

/** A line as readLines gives it, parsed; a line over the byte limit is a problem. */
export function parseSourceLine(source: SourceLine, context: ExampleContext, maxLineBytes: number): LineResult {
  if (source.text === undefined) {
    return { problem: `line is longer than maxLineBytes (${maxLineBytes} bytes); is the file JSONL, one object per line?` };
  }
  return parseLine(source.text, context);
}

/** Parses one JSONL line against the format. Never throws for bad data: a bad line is a `problem`. */
export function parseLine(text: string, context: ExampleContext): LineResult {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { problem: `invalid JSON (${(error as Error).message})` };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { problem: `expected a JSON object, got ${typeName(value)}` };
  }
  try {
    return { example: toExample(new Fields(value as Record<string, unknown>, context.fields), context) };
  } catch (error) {
    if (error instanceof LineProblem) return { problem: error.message };
    throw error;
  }
}

/** A problem with the line being parsed; caught in parseLine and never seen outside this file. */
class LineProblem extends Error {}

function toExample(fields: Fields, context: ExampleContext): Example {
  switch (context.format) {
    case "text":
      return { kind: "lm", segments: [{ text: fields.string("text"), loss: true }], special: true };
    case "instruction": {
      const instruction = fields.string("instruction");
      const input = fields.optionalString("input");
      const template = context.instructionTemplate;
      const prompt =
        input === undefined || input === ""
          ? template.withoutInput.replaceAll("{instruction}", instruction)
          : template.withInput.replaceAll("{instruction}", instruction).replaceAll("{input}", input);
      return {
        kind: "lm",
        segments: [
          { text: prompt, loss: false },
          { text: fields.string("output"), loss: true },
        ],
        special: true,
      };
    }
    case "chat":
      return chatExample(fields, context);
    case "preference":
      return preferenceExample(fields, context);
    case "classification":
      return { kind: "classification", text: fields.string("text"), label: classLabel(fields, context.classLabels) };
  }
}

function classLabel(fields: Fields, classLabels: string[] | undefined): number {
  const name = fields.name("label");
  const label = fields.required("label");
  if (typeof label === "string") {
    if (classLabels === undefined) {
      throw new LineProblem(
        `field "${name}" is the string ${JSON.stringify(label)}; give classLabels to map label names to classes, or use integer labels`,
      );
    }
    const index = classLabels.indexOf(label);
    if (index === -1) {
      throw new LineProblem(`field "${name}" is ${JSON.stringify(label)}, which is not one of classLabels (${classLabels.join(", ")})`);
    }
    return index;
  }
  if (typeof label === "number" && Number.isInteger(label) && label >= 0) {
    if (classLabels !== undefined && label >= classLabels.length) {
      throw new LineProblem(`field "${name}" is ${label}, but there are ${classLabels.length} classLabels (0 to ${classLabels.length - 1})`);
    }
    return label;
  }
  throw new LineProblem(`field "${name}" must be a string or a non-negative integer, got ${describe(label)}`);
}

/**
 * A preference record, in TRL's two layouts: standard (prompt, chosen and rejected strings) or
 * conversational (lists of messages). A conversational record's prompt is its `prompt` messages,
 * with chosen and rejected the assistant turn(s) that follow; without a prompt field, chosen and
 * rejected are whole conversations and their shared leading messages are the prompt (TRL's
 * implicit prompt). Each completion is what the chat template renders after the prompt with the
 * generation prompt: the reply and the template's end-of-turn token.
 */
function preferenceExample(fields: Fields, context: ExampleContext): Example {
  const chosenRaw = fields.required("chosen");
  const rejectedRaw = fields.required("rejected");
  const promptName = fields.name("prompt");
  const promptRaw = fields.optional("prompt");
  const conversational = [chosenRaw, rejectedRaw, promptRaw].some(Array.isArray);
  if (!conversational) {
    return { kind: "preference", prompt: fields.string("prompt"), chosen: fields.string("chosen"), rejected: fields.string("rejected") };
  }
  for (const field of ["chosen", "rejected"]) {
    if (!Array.isArray(fields.required(field))) {
      throw new LineProblem(`field "${fields.name(field)}" must be a list of messages like the other fields of this record, got ${describe(fields.required(field))}`);
    }
  }
  if (promptRaw !== undefined && !Array.isArray(promptRaw)) {
    throw new LineProblem(`field "${promptName}" must be a list of messages when chosen and rejected are, got ${describe(promptRaw)}`);
  }
  let chosen = parseMessages(chosenRaw, fields.name("chosen"), context);
  let rejected = parseMessages(rejectedRaw, fields.name("rejected"), context);
  let prompt: ChatMessage[];
  if (promptRaw !== undefined) {
    prompt = parseMessages(promptRaw, promptName, context);
  } else {
    let shared = 0;
    while (shared < chosen.length - 1 && shared < rejected.length - 1 && sameMessage(chosen[shared]!, rejected[shared]!)) shared++;
    if (shared === 0) {
      throw new LineProblem(
        `fields "${fields.name("chosen")}" and "${fields.name("rejected")}" share no leading messages, and there is no "${promptName}" field: give the prompt, or start both conversations with it`,
      );
    }
    prompt = chosen.slice(0, shared);
    chosen = chosen.slice(shared);
    rejected = rejected.slice(shared);
  }
  for (const [field, messages] of [
    ["chosen", chosen],
    ["rejected", rejected],
  ] as const) {
    if (messages.length === 0 || messages.at(-1)!.role !== "assistant") {
      throw new LineProblem(`field "${fields.name(field)}" must end with a message with role "assistant" after the prompt: that reply is what the pair compares`);
    }
  }
  const tokenizer = context.tokenizer;
  if (!tokenizer) return { kind: "preference", prompt: "", chosen: "", rejected: "", chat: true };
  const render = (messages: ChatMessage[], addGenerationPrompt: boolean): string => {
    try {
      return tokenizer.applyChatTemplate(messages, { addGenerationPrompt });
    } catch (error) {
      throw new LineProblem(`the chat template failed on this conversation: ${(error as Error).message}`);
    }
  };
  const promptText = render(prompt, true);
  const completion = (field: string, reply: ChatMessage[]): string => {
    const whole = render([...prompt, ...reply], false);
    if (!whole.startsWith(promptText)) {
      throw new LineProblem(`the chat template does not render the prompt as a prefix of the conversation with "${fields.name(field)}", so the reply cannot be located`);
    }
    return whole.slice(promptText.length);
  };
  return { kind: "preference", prompt: promptText, chosen: completion("chosen", chosen), rejected: completion("rejected", rejected), chat: true };
}

function sameMessage(a: ChatMessage, b: ChatMessage): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** A non-empty list of {role, content} messages (the names mapped by fields.role and fields.content). */
function parseMessages(raw: unknown, name: string, context: ExampleContext): ChatMessage[] {
  if (!Array.isArray(raw) || raw.length === 0) {
    throw new LineProblem(`field "${name}" must be a non-empty array of messages, got ${describe(raw)}`);
  }
  const roleName = fieldName(context.fields, "role");
  const contentName = fieldName(context.fields, "content");
  return raw.map((entry: unknown, index) => {
    const where = `${name}[${index}]`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
      throw new LineProblem(`field "${where}" must be an object with "${roleName}" and "${contentName}", got ${describe(entry)}`);
    }
    const { [roleName]: role, [contentName]: content, ...rest } = entry as Record<string, unknown>;
    if (typeof role !== "string" || role === "") {
      throw new LineProblem(`field "${where}.${roleName}" must be a non-empty string, got ${describe(role)}`);
    }
    if (typeof content !== "string") throw new LineProblem(`field "${where}.${contentName}" must be a string, got ${describe(content)}`);
    return { ...rest, role, content };
  });
}

/**
 * A conversation rendered with the chat template, split so that loss falls on assistant turns
 * only. For each assistant message i the template renders the conversation before it with the
 * generation prompt (P) and through it (Q); the turn is Q minus P: the reply and whatever the
 * template closes it with (an end-of-turn token), which the model must learn to produce, up to
 * its last non-blank character: the newline ChatML writes after <|im_end|> separates turns and
 * carries no loss, as in TRL's assistant-only loss, whose templates end the {% generation %}
 * block at the end-of-turn token (tests/fixtures/hf/tokenizers). This
 * needs a template that renders a conversation's prefix as a prefix of its rendering, as
 * chat templates do; one that does not is reported.
 */
function chatExample(fields: Fields, context: ExampleContext): Example {
  const messagesName = fields.name("messages");
  const raw = fields.required("messages");
  if (!Array.isArray(raw) || raw.length === 0) {
    throw new LineProblem(`field "${messagesName}" must be a non-empty array of messages, got ${describe(raw)}`);
  }
  const roleName = fieldName(context.fields, "role");
  const contentName = fieldName(context.fields, "content");
  const messages: ChatMessage[] = raw.map((entry: unknown, index) => {
    const where = `${messagesName}[${index}]`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
      throw new LineProblem(`field "${where}" must be an object with "${roleName}" and "${contentName}", got ${describe(entry)}`);
    }
    const { [roleName]: role, [contentName]: content, ...rest } = entry as Record<string, unknown>;
    if (typeof role !== "string" || role === "") {
      throw new LineProblem(`field "${where}.${roleName}" must be a non-empty string, got ${describe(role)}`);
    }
    if (typeof content !== "string") throw new LineProblem(`field "${where}.${contentName}" must be a string, got ${describe(content)}`);
    return { ...rest, role, content };
  });
  if (!messages.some((message) => message.role === "assistant")) {
    throw new LineProblem(`field "${messagesName}" has no message with ${roleName} "assistant", so there is nothing to train on`);
  }
  const tokenizer = context.tokenizer;
  if (!tokenizer) return { kind: "lm", segments: [], special: false };

  const render = (count: number, addGenerationPrompt: boolean): string => {
    try {
      return tokenizer.applyChatTemplate(messages.slice(0, count), { addGenerationPrompt });
    } catch (error) {
      throw new LineProblem(`the chat template failed on this conversation: ${(error as Error).message}`);
    }
  };
  const full = render(messages.length, false);
  const segments: TextSegment[] = [];
  let done = 0;
  messages.forEach((message, index) => {
    if (message.role !== "assistant") return;
    const before = render(index, true);
    const through = index + 1 === messages.length ? full : render(index + 1, false);
    if (!through.startsWith(before) || !full.startsWith(through) || before.length < done) {
      throw new LineProblem(
        `the chat template does not render the conversation up to message ${index} as a prefix of the whole, ` +
          "so the assistant turns cannot be located for the loss mask",
      );
    }
    const end = before.length + turnLossLength(full.slice(before.length, through.length), message.content);
    segments.push({ text: full.slice(done, before.length), loss: false }, { text: full.slice(before.length, end), loss: true });
    done = end;
  });
  segments.push({ text: full.slice(done), loss: false });
  return { kind: "lm", segments: segments.filter((segment) => segment.text !== ""), special: false };
}

/**
 * How much of an assistant turn (the reply and what the template closes it with) carries the
 * loss: all but the whitespace the template writes after the end-of-turn token, and never less
 * than the reply itself, whose own trailing whitespace the model must produce when a template
 * writes nothing after it.
 */
function turnLossLength(turn: string, content: string): number {
  const trimmed = turn.trimEnd().length;
  const at = content === "" ? -1 : turn.lastIndexOf(content);
  return Math.max(trimmed, at === -1 ? 0 : at + content.length);
}

/** The fields of one line's object, read by their names in the format through the field mapping. */
class Fields {
  constructor(
    private readonly object: Record<string, unknown>,
    private readonly mapping: FieldMapping,
  ) {}

  name(field: string): string {
    return fieldName(this.mapping, field);
  }

  required(field: string): unknown {
    const name = this.name(field);
    if (!Object.hasOwn(this.object, name) || this.object[name] === undefined) {
      throw new LineProblem(name === field ? `missing field "${name}"` : `missing field "${name}" (the ${field} field)`);
    }
    return this.object[name];
  }

  /** A required non-empty string. */
  string(field: string): string {
    const value = this.required(field);
    const name = this.name(field);
    if (typeof value !== "string") throw new LineProblem(`field "${name}" must be a string, got ${describe(value)}`);
    if (value.trim() === "") throw new LineProblem(`field "${name}" is empty`);
    return value;
  }

  /** A value that may be absent or null (undefined then). */
  optional(field: string): unknown {
    const value = this.object[this.name(field)];
    return value === null ? undefined : value;
  }

  /** A string that may be absent or null. */
  optionalString(field: string): string | undefined {
    const name = this.name(field);
    const value = this.object[name];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== "string") throw new LineProblem(`field "${name}" must be a string, got ${describe(value)}`);
    return value;
  }
}

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

/** A value as an error message shows it: its type, and short values themselves. */
function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "number" || typeof value === "boolean") return `${typeName(value)} (${value})`;
  return typeName(value);
}
