import { Template } from "@huggingface/jinja";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { StorageError, joinKey, type ObjectStore } from "../../storage/object-store.ts";
import { objectUri } from "../data/files.ts";

/** The files of a Hugging Face model folder that describe its tokenizer. */
export const TOKENIZER_FILE = "tokenizer.json";
export const TOKENIZER_CONFIG_FILE = "tokenizer_config.json";
export const SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json";
/** Newer Transformers versions save the chat template here instead of in tokenizer_config.json. */
export const CHAT_TEMPLATE_FILE = "chat_template.jinja";
export const MODEL_CONFIG_FILE = "config.json";

/** A tokenizer file that is missing a part or cannot be read, with the file to fix. */
export class TokenizerError extends Error {
  constructor(
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${message}`, options);
    this.name = "TokenizerError";
  }
}

/** One turn of a conversation, as chat templates expect it. */
export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

/** The parsed contents of a model folder's tokenizer files; only tokenizerJson is required. */
export interface TokenizerSources {
  tokenizerJson: unknown;
  tokenizerConfig?: unknown;
  specialTokensMap?: unknown;
  /** config.json: its bos/eos/pad_token_id fill in special tokens the other files leave out. */
  modelConfig?: unknown;
  /** The contents of chat_template.jinja, which wins over tokenizer_config.json's chat_template. */
  chatTemplate?: string;
}

/** Where each source came from, for error messages. */
export interface TokenizerSourceNames {
  tokenizerJson: string;
  tokenizerConfig: string;
  chatTemplate: string;
}

const DEFAULT_NAMES: TokenizerSourceNames = {
  tokenizerJson: TOKENIZER_FILE,
  tokenizerConfig: TOKENIZER_CONFIG_FILE,
  chatTemplate: CHAT_TEMPLATE_FILE,
};

type SpecialTokenName = "bos_token" | "eos_token" | "pad_token" | "unk_token";

/**
 * A Hugging Face fast tokenizer (tokenizer.json) with the settings from tokenizer_config.json:
 * special tokens, whether a sequence starts with BOS, and the chat template.
 *
 * `encode` never adds special tokens unless asked; the data pipeline adds BOS and EOS itself
 * from `addBos` and `eosId`, so that one rule decides them whatever the post-processor says.
 */
export class Tokenizer {
  readonly vocabSize: number;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  readonly padToken: string | undefined;
  readonly unkToken: string | undefined;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly padId: number | undefined;
  /** Whether a tokenized text starts with BOS (tokenizer_config's add_bos_token, else what the post-processor does). */
  readonly addBos: boolean;
  /** Whether a tokenized text ends with EOS (add_eos_token, else what the post-processor does). */
  readonly addEos: boolean;
  /** The Jinja chat template, if the model has one. */
  readonly chatTemplate: string | undefined;
  private readonly hf: HfTokenizer;
  private readonly template: Template | undefined;
  private readonly cleanUpSpaces: boolean;

  private constructor(sources: TokenizerSources, names: TokenizerSourceNames) {
    const tokenizerJson = requireObject(sources.tokenizerJson, names.tokenizerJson, "must be a JSON object");
    if (typeof tokenizerJson.model !== "object" || tokenizerJson.model === null) {
      throw new TokenizerError(names.tokenizerJson, 'missing "model"; is this a fast-tokenizer tokenizer.json?');
    }
    const config =
      sources.tokenizerConfig === undefined ? {} : requireObject(sources.tokenizerConfig, names.tokenizerConfig, "must be a JSON object");
    const specialTokensMap = isObject(sources.specialTokensMap) ? sources.specialTokensMap : {};
    const modelConfig = isObject(sources.modelConfig) ? sources.modelConfig : {};
    // The library requires these keys to be present, even as null, and iterates added_tokens.
    const normalized = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      added_tokens: [],
      ...tokenizerJson,
    };
    try {
      // The library reads special tokens from its config as plain strings.
      const libraryConfig: Record<string, unknown> = { ...config, chat_template: undefined };
      for (const name of ["bos_token", "eos_token", "pad_token", "unk_token"] as const) {
        libraryConfig[name] = specialTokenContent(config[name]);
      }
      this.hf = new HfTokenizer(normalized, libraryConfig);
    } catch (error) {
      throw new TokenizerError(names.tokenizerJson, `cannot be loaded: ${(error as Error).message}`, { cause: error });
    }
    this.vocabSize = this.hf.get_vocab(true).size;

    const special = (name: SpecialTokenName): { token: string | undefined; id: number | undefined } => {
      const token = specialTokenContent(config[name]) ?? specialTokenContent(specialTokensMap[name]);
      if (token !== undefined) {
        const id = this.hf.token_to_id(token);
        if (id === undefined) {
          throw new TokenizerError(names.tokenizerConfig, `${name} "${token}" is not in the vocabulary of ${names.tokenizerJson}`);
        }
        return { token, id };
      }
      const configuredId = firstInteger(modelConfig[`${name}_id`]);
      return { token: configuredId === undefined ? undefined : this.hf.id_to_token(configuredId), id: configuredId };
    };
    ({ token: this.bosToken, id: this.bosId } = special("bos_token"));
    ({ token: this.eosToken, id: this.eosId } = special("eos_token"));
    ({ token: this.padToken, id: this.padId } = special("pad_token"));
    this.unkToken = special("unk_token").token;

    const plain = this.hf.encode("a", { add_special_tokens: false }).ids;
    const withSpecial = this.hf.encode("a", { add_special_tokens: true }).ids;
    this.addBos =
      typeof config.add_bos_token === "boolean"
        ? config.add_bos_token && this.bosId !== undefined
        : this.bosId !== undefined && withSpecial[0] === this.bosId && plain[0] !== this.bosId;
    this.addEos =
      typeof config.add_eos_token === "boolean"
        ? config.add_eos_token && this.eosId !== undefined
        : this.eosId !== undefined && withSpecial.at(-1) === this.eosId && plain.at(-1) !== this.eosId;
    // Transformers 5 ignores clean_up_tokenization_spaces for BPE models (it strips the spaces
    // before punctuation that BPE round-trips exactly), though Llama-3's config sets it; it
    // applies only to the WordPiece-style models it was made for.
    const modelType = (tokenizerJson.model as { type?: unknown }).type;
    this.cleanUpSpaces = config.clean_up_tokenization_spaces === true && modelType !== "BPE";

    const [templateSource, templateFile] =
      sources.chatTemplate !== undefined
        ? [sources.chatTemplate, names.chatTemplate]
        : [chatTemplateFromConfig(config.chat_template, names.tokenizerConfig), names.tokenizerConfig];
    this.chatTemplate = templateSource;
    if (templateSource !== undefined) {
      try {
        this.template = new Template(templateSource);
      } catch (error) {
        throw new TokenizerError(templateFile, `chat template does not parse: ${(error as Error).message}`, { cause: error });
      }
    }
  }

  /** A tokenizer from parsed files; `names` label them in errors (default: the bare file names). */
  static fromSources(sources: TokenizerSources, names: Partial<TokenizerSourceNames> = {}): Tokenizer {
    return new Tokenizer(sources, { ...DEFAULT_NAMES, ...names });
  }

  /** Token ids of `text`; with addSpecialTokens, BOS and EOS as `addBos` and `addEos` say. */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    const ids = text === "" ? [] : this.hf.encode(text, { add_special_tokens: false }).ids;
    if (!options.addSpecialTokens) return ids;
    return [...(this.addBos ? [this.bosId as number] : []), ...ids, ...(this.addEos ? [this.eosId as number] : [])];
  }

  /** The text of `ids`; special tokens are kept unless skipSpecialTokens. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return "";
    return this.hf.decode([...ids], {
      skip_special_tokens: options.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: this.cleanUpSpaces,
    });
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  /**
   * Renders a conversation with the chat template, as Transformers' apply_chat_template does
   * (tokenize=False): the template sees messages, add_generation_prompt and the special tokens.
   * Throws if the model has no template or the template raises (raise_exception).
   */
  applyChatTemplate(messages: readonly ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
    if (!this.template) {
      throw new Error(`the tokenizer has no chat template (set chat_template in ${TOKENIZER_CONFIG_FILE} or add ${CHAT_TEMPLATE_FILE})`);
    }
    return this.template.render({
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? false,
      bos_token: this.bosToken ?? "",
      eos_token: this.eosToken ?? "",
      pad_token: this.padToken ?? "",
      unk_token: this.unkToken ?? "",
    });
  }
}

/**
 * Loads the tokenizer of the model folder at `prefix`: tokenizer.json (required) and, when
 * present, tokenizer_config.json, special_tokens_map.json, chat_template.jinja and config.json.
 * A missing tokenizer.json or an unreadable object is a StorageError naming the object; a
 * file that does not parse or does not fit is a TokenizerError naming it.
 */
export async function loadTokenizer(store: ObjectStore, prefix: string): Promise<Tokenizer> {
  const uriOf = (file: string): string => objectUri(store, joinKey(prefix, file));
  const names: TokenizerSourceNames = {
    tokenizerJson: uriOf(TOKENIZER_FILE),
    tokenizerConfig: uriOf(TOKENIZER_CONFIG_FILE),
    chatTemplate: uriOf(CHAT_TEMPLATE_FILE),
  };
  const read = async (file: string, required: boolean): Promise<string | undefined> => {
    try {
      return (await store.get(joinKey(prefix, file))).toString("utf8");
    } catch (error) {
      if (!required && error instanceof StorageError && error.code === "NotFound") return undefined;
      throw error;
    }
  };
  const parse = (text: string | undefined, file: string): unknown => {
    if (text === undefined) return undefined;
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new TokenizerError(uriOf(file), `is not valid JSON (${(error as Error).message})`, { cause: error });
    }
  };
  const [tokenizerJson, tokenizerConfig, specialTokensMap, chatTemplate, modelConfig] = await Promise.all([
    read(TOKENIZER_FILE, true),
    read(TOKENIZER_CONFIG_FILE, false),
    read(SPECIAL_TOKENS_MAP_FILE, false),
    read(CHAT_TEMPLATE_FILE, false),
    read(MODEL_CONFIG_FILE, false),
  ]);
  return Tokenizer.fromSources(
    {
      tokenizerJson: parse(tokenizerJson, TOKENIZER_FILE),
      tokenizerConfig: parse(tokenizerConfig, TOKENIZER_CONFIG_FILE),
      specialTokensMap: parse(specialTokensMap, SPECIAL_TOKENS_MAP_FILE),
      // config.json only lends fallback token ids here; the model loader reports a broken one.
      modelConfig: parseOrUndefined(modelConfig),
      chatTemplate,
    },
    names,
  );
}

function parseOrUndefined(text: string | undefined): unknown {
  try {
    return text === undefined ? undefined : JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function requireObject(value: unknown, file: string, message: string): Record<string, unknown> {
  if (!isObject(value)) throw new TokenizerError(file, message);
  return value;
}

/** A special token as tokenizer_config.json writes it: a string, or an AddedToken object with `content`. */
function specialTokenContent(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (isObject(value) && typeof value.content === "string") return value.content;
  return undefined;
}

/** config.json's token ids are an integer or, for models with several EOS tokens, a list. */
function firstInteger(value: unknown): number | undefined {
  const first = Array.isArray(value) ? (value as unknown[])[0] : value;
  return Number.isInteger(first) ? (first as number) : undefined;
}

/** tokenizer_config.json's chat_template: a string, or a list of named templates of which "default" is used. */
function chatTemplateFromConfig(value: unknown, file: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") return value;
  if (Array.isArray(value)) {
    const named = value.find((entry): entry is { name: string; template: string } => isObject(entry) && entry.name === "default");
    if (named && typeof named.template === "string") return named.template;
    throw new TokenizerError(file, 'chat_template is a list without a template named "default"');
  }
  throw new TokenizerError(file, "chat_template must be a string or a list of {name, template}");
}
