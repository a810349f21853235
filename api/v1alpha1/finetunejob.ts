// FineTuneJob, kubetune.io/v1alpha1: the one definition of the API. Every field, its doc line,
// default, bounds and cross-field rules are here; the TypeScript types below, the CRD in crds/,
// docs/api.md, applyDefaults and validate are all derived from this file.

import { isDeepStrictEqual } from "node:util";
import * as s from "../schema/schema.ts";
import type { Infer, InferDefaulted } from "../schema/schema.ts";

export const GROUP = "kubetune.io";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}` as const;
export const KIND = "FineTuneJob";
export const LIST_KIND = "FineTuneJobList";
export const PLURAL = "finetunejobs";
export const SINGULAR = "finetunejob";
export const SHORT_NAMES = ["ftj"] as const;
export const CATEGORIES = ["kubetune"] as const;
/** metadata.name of the CustomResourceDefinition. */
export const CRD_NAME = `${PLURAL}.${GROUP}`;

export const METHOD_TYPES = ["lora", "dora", "ia3", "prefix", "prompt", "skTuning", "adapter", "full"] as const;
export const OBJECTIVE_TYPES = ["sft", "dpo", "reward", "classification", "rlaif"] as const;
export const DATASET_FORMATS = ["text", "instruction", "chat", "preference", "classification"] as const;
export const PHASES = ["Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended"] as const;
/** Methods whose adapter can be merged into the base weights. */
export const MERGEABLE_METHODS = ["lora", "dora", "ia3"] as const;

// Patterns are written in the common subset of ECMAScript and RE2, the API server's dialect.
export const URI_PATTERN = "^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\\S*)?|file:///\\S*|[^:\\s][^:\\n]*)$";
const DNS_SUBDOMAIN_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const SECRET_KEY_PATTERN = "^[-._a-zA-Z0-9]+$";
const LABEL_VALUE_PATTERN = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
const MODULE_NAME_PATTERN = "^[A-Za-z0-9_][A-Za-z0-9_.-]*$";
const ENDPOINT_PATTERN = "^https?://[^\\s/]+(/\\S*)?$";
const CONDITION_TYPE_PATTERN =
  "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";
const REASON_PATTERN = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";

const uri = (doc: string) =>
  s.string(doc, {
    minLength: 1,
    maxLength: 1024,
    pattern: URI_PATTERN,
    patternHint: "an s3://bucket/prefix URI, a file:// URI or a local path (local paths serve kubetune run)",
  });
const resourceName = (doc: string) =>
  s.string(doc, { minLength: 1, maxLength: 253, pattern: DNS_SUBDOMAIN_PATTERN, patternHint: "a lowercase DNS subdomain name" });
const secretKey = (doc: string) =>
  s.string(doc, { minLength: 1, maxLength: 253, pattern: SECRET_KEY_PATTERN, patternHint: "a Secret key: letters, digits, '-', '_' and '.'" });
const fieldName = (doc: string) => s.string(doc, { minLength: 1, maxLength: 256 });
const moduleNames = (doc: string) =>
  s.array(
    doc,
    s.string("A module name such as q_proj, or all-linear.", {
      minLength: 1,
      maxLength: 128,
      pattern: MODULE_NAME_PATTERN,
      patternHint: "a module name: letters, digits, '_', '.' and '-'",
    }),
    { minItems: 1, maxItems: 64, listType: "set" },
  );
const steps = (doc: string) => s.integer(doc, { minimum: 1, maximum: 10_000_000 });

// ---------------------------------------------------------------------------------------------
// spec.method

const loraParameters = (doc: string) =>
  s
    .object(doc, {
      r: s.integer("Rank of the update matrices A [r, in] and B [out, r]; vLLM serves ranks up to its --max-lora-rank (16 by default).", {
        minimum: 1,
        maximum: 1024,
      }).default(8),
      alpha: s.number("Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rsLora).", {
        minimum: 0,
        exclusiveMinimum: true,
        maximum: 65536,
      }).default(8),
      dropout: s.number("Dropout probability on the adapter's input while training.", { minimum: 0, maximum: 1, exclusiveMaximum: true }).default(0),
      targetModules: moduleNames(
        "Linear modules to adapt, matched against the end of each module path (Llama, Mistral, Qwen2, Qwen3, Gemma 3: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj; GPT-2: c_attn, c_proj, c_fc); all-linear adapts every linear layer but the output head. Unset: the trainer picks PEFT's default for the model's architecture (Llama, Mistral, Qwen2, Qwen3, Gemma 3: q_proj, v_proj; GPT-2: c_attn; Phi-3, which PEFT has no default for: qkv_proj).",
      ),
      rsLora: s.boolean("Rank-stabilised scaling: alpha / sqrt(r) instead of alpha / r.").default(false),
    })
    .rule({
      cel: "!has(self.targetModules) || !('all-linear' in self.targetModules) || size(self.targetModules) == 1",
      check: (self) => !self.targetModules?.includes("all-linear") || self.targetModules.length === 1,
      message: "all-linear already names every linear layer; list it alone",
      fieldPath: ".targetModules",
    });

const ia3Parameters = s
  .object("IA3: learned vectors, initialised to ones, that rescale the outputs of attention modules and the inputs of feed-forward modules.", {
    targetModules: moduleNames(
      "Modules to rescale, matched against the end of each module path. Unset: the trainer picks PEFT's default for the model's architecture (Llama, Mistral: k_proj, v_proj, down_proj; Qwen2, Qwen3, Gemma 3: q_proj, v_proj, down_proj; GPT-2: c_attn, mlp.c_proj).",
    ),
    feedforwardModules: moduleNames(
      "Those of targetModules that are feed-forward layers, whose input rather than output is rescaled. Unset: PEFT's feed-forward modules for the architecture (down_proj; GPT-2: mlp.c_proj), where targeted.",
    ),
  })
  .rule({
    cel: "!has(self.feedforwardModules) || (has(self.targetModules) && self.feedforwardModules.all(m, m in self.targetModules))",
    check: (self) => !self.feedforwardModules || (self.targetModules !== undefined && self.feedforwardModules.every((name) => self.targetModules!.includes(name))),
    message: "must be a subset of targetModules (set targetModules too)",
    fieldPath: ".feedforwardModules",
  });

const virtualTokens = (doc: string) => s.integer(doc, { minimum: 1, maximum: 512 }).default(20);

const prefixParameters = s
  .object("Prefix tuning: trainable key and value prefixes prepended to the attention of every layer.", {
    numVirtualTokens: virtualTokens("Prefix positions per layer."),
    projection: s.boolean("Reparameterise the prefix through a two-layer MLP while training (prefix_projection); only its output is saved.").default(false),
    projectionHiddenSize: s.integer("Hidden size of that MLP (PEFT's encoder_hidden_size); when unset, PEFT's default token_dim: the key/value width, head_dim x num_key_value_heads.", { minimum: 1, maximum: 65536 }),
  })
  .rule({
    cel: "!has(self.projectionHiddenSize) || self.projection",
    check: (self) => self.projectionHiddenSize === undefined || self.projection,
    message: "is only used with projection: true",
    fieldPath: ".projectionHiddenSize",
    reason: "FieldValueForbidden",
  });

const promptParameters = s
  .object("Prompt tuning: trainable embeddings prepended to the input embeddings.", {
    numVirtualTokens: virtualTokens("Trainable embeddings prepended to every input."),
    init: s.enumeration("How the embeddings start: RANDOM, or TEXT (the frozen embeddings of initText's tokens).", ["RANDOM", "TEXT"]).default("RANDOM"),
    initText: s.string("Text whose token embeddings initialise the prompt, repeated or cut to numVirtualTokens; required when init is TEXT.", {
      minLength: 1,
      maxLength: 4096,
    }),
  })
  .rule({
    cel: "self.init != 'TEXT' || has(self.initText)",
    check: (self) => self.init !== "TEXT" || self.initText !== undefined,
    message: "is required when init is TEXT",
    fieldPath: ".initText",
    reason: "FieldValueRequired",
  })
  .rule({
    cel: "!has(self.initText) || self.init == 'TEXT'",
    check: (self) => self.initText === undefined || self.init === "TEXT",
    message: "is only used when init is TEXT",
    fieldPath: ".initText",
    reason: "FieldValueForbidden",
  });

const skTuningParameters = s.object(
  "SK-tuning: a prefix initialised from a natural-language description of the task, so that training starts from its meaning.",
  {
    description: s.string(
      "The task in words, e.g. \"Classify the sentiment of this review as positive or negative\". Its meaningful words (function words such as the, of, this dropped) are tokenized, after BOS where the tokenizer adds one; their token count is the number of virtual tokens.",
      { minLength: 1, maxLength: 4096 },
    ).required(),
    variant: s.enumeration(
      "prefix: the keys and values every layer of the frozen model computes for the meaningful words form the prefix; prompt: their frozen word embeddings are prepended to the input embeddings. Either way the first step computes what the base model computes with those words written before the input.",
      ["prefix", "prompt"],
    ).default("prompt"),
    projection: s.boolean("Keep the semantic tokens frozen and train a small linear map on them instead, starting at the identity: per layer on keys and on values over head_dim (prefix), or over the hidden size (prompt). The export holds the mapped tokens either way.").default(false),
  },
);

const adapterParameters = s.object(
  "Bottleneck adapters: h + W_up(act(W_down h)) on the output of sublayers of every layer, W_up starting at zero so that training starts from the base model.",
  {
    variant: s.enumeration(
      "houlsby: an adapter after the attention and another after the MLP (Houlsby et al. 2019); pfeiffer: one after the MLP only (Pfeiffer et al. 2020).",
      ["houlsby", "pfeiffer"],
    ).default("houlsby"),
    bottleneckSize: s.integer("Width k of the bottleneck: W_down is [k, hidden], W_up is [hidden, k].", { minimum: 1, maximum: 65536 }).default(64),
    activation: s.enumeration("Non-linearity between the two projections.", ["relu", "gelu", "silu", "tanh"]).default("relu"),
  },
);

const fullParameters = s.object("Full fine-tuning: every weight trains and the output is a whole model folder; there are no parameters to set.", {});

const methodBlocks = {
  lora: loraParameters("LoRA: a low-rank update s * B A beside each target module; at step 0 the model equals the base model."),
  dora: loraParameters("DoRA: LoRA plus a trained magnitude vector per output row (weight-decomposed low-rank adaptation)."),
  ia3: ia3Parameters,
  prefix: prefixParameters,
  prompt: promptParameters,
  skTuning: skTuningParameters,
  adapter: adapterParameters,
  full: fullParameters,
} satisfies Record<(typeof METHOD_TYPES)[number], s.AnySchema>;

const methodSchema = METHOD_TYPES.reduce(
  (schema, block) =>
    schema.rule({
      cel: `!has(self.${block}) || self.type == '${block}'`,
      check: (self) => self[block] === undefined || self.type === block,
      message: `must not be set unless method.type is ${block}; set only the block named by method.type`,
      messageExpression: {
        cel: `'must not be set when method.type is ' + self.type + '; set only spec.method.' + self.type`,
        render: (self) => `must not be set when method.type is ${self.type}; set only spec.method.${self.type}`,
      },
      fieldPath: `.${block}`,
      reason: "FieldValueForbidden",
    }),
  s.object(
    "How to fine-tune: the method and its parameters. Only the block named by type may be set; when it is absent, its defaults (PEFT's) apply.",
    {
      type: s.enumeration("The method: lora, dora, ia3, prefix, prompt, skTuning, adapter or full.", METHOD_TYPES).required(),
      ...methodBlocks,
    },
  ),
).rule({
  cel: "self.type != 'skTuning' || has(self.skTuning)",
  check: (self) => self.type !== "skTuning" || self.skTuning !== undefined,
  message: "is required when method.type is skTuning: it holds the task description",
  fieldPath: ".skTuning",
  reason: "FieldValueRequired",
});

// ---------------------------------------------------------------------------------------------
// spec

const toleration = s
  .object("A core/v1 Toleration.", {
    key: s.string("Taint key to match; empty with operator Exists matches every taint.", { maxLength: 316 }),
    operator: s.enumeration("Exists, or Equal (the default when unset) to match value too.", ["Exists", "Equal"]),
    value: s.string("Taint value to match with operator Equal.", { maxLength: 63 }),
    effect: s.enumeration("Taint effect to match; every effect when unset.", ["NoSchedule", "PreferNoSchedule", "NoExecute"]),
    tolerationSeconds: s.integer("With effect NoExecute: seconds the pod stays on the node after the taint appears.", { minimum: 0 }),
  })
  .rule({
    cel: "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
    check: (self) => self.operator !== "Exists" || !self.value,
    message: "must be empty when operator is Exists",
    fieldPath: ".value",
  });

const specSchema = s
  .object("What to fine-tune, on what data, how, and where the result goes.", {
    baseModel: s
      .object("The model to start from.", {
        uri: uri("Prefix holding a Hugging Face model folder: config.json, *.safetensors and tokenizer.json.").required(),
        name: s.string(
          "The model's name where PEFT can load it, such as HuggingFaceTB/SmolLM2-135M: written as base_model_name_or_path in adapter_config.json. When unset, config.json's _name_or_path; else uri (a local path loads; an s3:// URI does not).",
          { minLength: 1, maxLength: 1024 },
        ),
        architecture: s.enumeration("Overrides the architecture read from config.json (model_type).", ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "gpt2"]),
      })
      .required(),
    dataset: s
      .object("The training data: JSON Lines records and how to read them.", {
        train: uri(
          "JSON Lines file with the training records, or a prefix whose *.jsonl files are all read: each epoch in a shuffled order of files, their records mixed through the shuffle buffer.",
        ).required(),
        eval: uri("JSON Lines file with held-out records for evaluation, or a prefix whose *.jsonl files are all read; exclusive with evalFraction."),
        evalFraction: s.number("Share of the training records held out for evaluation when eval is unset; 0 means none.", { minimum: 0, maximum: 0.5 }),
        format: s.enumeration(
          "Record shape: text {text}, instruction {prompt, completion, optional input}, chat {messages}, preference {prompt, chosen, rejected}, classification {text, label}.",
          DATASET_FORMATS,
        ).default("text"),
        fields: s.object("Record field names, where they differ from the format's (each defaults to its own name).", {
          text: fieldName("Field holding the text (formats text and classification)."),
          prompt: fieldName("Field holding the prompt (formats instruction and preference)."),
          completion: fieldName("Field holding the target completion (format instruction)."),
          input: fieldName(
            "Field holding an optional input to the prompt (format instruction), as in Alpaca's {instruction, input, output} records: when present and not empty, the prompt trained on is the prompt field, a blank line (\\n\\n) and the input; otherwise the prompt field alone. No template such as Alpaca's ### headers is added: write it into the prompt field.",
          ),
          messages: fieldName("Field holding the list of {role, content} messages (format chat)."),
          chosen: fieldName("Field holding the preferred completion (format preference)."),
          rejected: fieldName("Field holding the dispreferred completion (format preference)."),
          label: fieldName("Field holding the class name or index (format classification)."),
        }),
        labels: s.array(
          "Class names of the classification format, in the order of the classifier's outputs; read from the training data when unset.",
          s.string("A class name.", { minLength: 1, maxLength: 256 }),
          { minItems: 2, maxItems: 1000, listType: "set" },
        ),
        maxSeqLength: s.integer("Tokens per example; longer examples are truncated.", { minimum: 8, maximum: 131072 }).default(512),
        packing: s.boolean("Concatenate short examples into sequences of maxSeqLength tokens (formats text, instruction and chat).").default(false),
        shuffleBuffer: s.integer(
          "Records held to shuffle the training data each epoch: a dataset of at most this many records is shuffled uniformly, a larger one within a window of this size (split it into several files, whose order is shuffled too).",
          { minimum: 1, maximum: 10_000_000 },
        ).default(10_000),
        badLines: s.enumeration(
          "A line that is not JSON or lacks a mapped field: fail the job (reason InvalidDataset), or skip and count it against maxBadLineFraction. Blank lines are always skipped.",
          ["fail", "skip"],
        ).default("fail"),
        maxBadLineFraction: s.number(
          "With badLines skip: the job fails (InvalidDataset) once more than this share of the lines read is bad, checked from 1,000 lines on and at the end of each pass.",
          { minimum: 0, maximum: 1 },
        ).default(0.1),
      })
      .rule({
        cel: "!has(self.eval) || !has(self.evalFraction)",
        check: (self) => self.eval === undefined || self.evalFraction === undefined,
        message: "must not be set together with eval: use an eval file or a held-out fraction, not both",
        fieldPath: ".evalFraction",
        reason: "FieldValueForbidden",
      })
      .rule({
        cel: "!has(self.labels) || self.format == 'classification'",
        check: (self) => self.labels === undefined || self.format === "classification",
        message: "is only used with format classification",
        fieldPath: ".labels",
        reason: "FieldValueForbidden",
      })
      .rule({
        cel: "!self.packing || self.format in ['text', 'instruction', 'chat']",
        check: (self) => !self.packing || ["text", "instruction", "chat"].includes(self.format),
        message: "is only for formats text, instruction and chat: preference pairs and classified examples are not packed",
        fieldPath: ".packing",
      })
      .required(),
    method: methodSchema.required(),
    objective: s
      .object("What training minimises: next-token loss (sft), the DPO preference loss (dpo), a reward model's pairwise loss (reward), a classifier's cross-entropy (classification), or DPO on pairs that a judge picks from the model's own samples, round after round (rlaif).", {
        type: s.enumeration(
          "sft: supervised fine-tuning on the target text; dpo: direct preference optimisation on chosen/rejected pairs; reward: a reward model, the adapter and a one-output score head on the last token (PEFT task_type SEQ_CLS, score in modules_to_save) trained with the Bradley-Terry loss -log σ(r_chosen - r_rejected) on chosen/rejected pairs; classification: the adapter and a score head with one output per class on the last token, trained with cross-entropy on the classification format (eval reports accuracy); rlaif: RLAIF with DPO, see objective.rlaif.",
          OBJECTIVE_TYPES,
        ).default("sft"),
        dpo: s.object(
          "DPO parameters (for objective dpo, and for the DPO steps of objective rlaif). The reference model is, for adapter methods, the base model (the model with the adapter disabled); for method full, whose training changes the base weights, the reference log-probabilities are precomputed before the first step from the model as it is then (TRL's precompute_ref_log_probs) and kept beside the checkpoints, so that a resumed job uses the same ones.",
          {
          beta: s.number("β in the loss -log σ(β Δ); higher keeps the tuned model closer to the reference.", {
            minimum: 0,
            exclusiveMinimum: true,
            maximum: 100,
          }).default(0.1),
          labelSmoothing: s.number(
            "ε, the assumed share of pairs whose preference is wrong (conservative DPO, TRL's label_smoothing): the loss becomes -(1-ε) log σ(β Δ) - ε log σ(-β Δ); 0 is plain DPO.",
            // Inclusive, as TRL documents it ("between 0.0 and 0.5"). An exclusive bound cannot
            // be used: the API server compares the whole-number default 0 with a fractional
            // exclusiveMaximum as integers (0 < 0) and refuses the CRD.
            { minimum: 0, maximum: 0.5 },
          ).default(0),
          },
        ),
        rlaif: s
          .object(
            "RLAIF: each round samples responses to every prompt of dataset.train (format text; each record's prompt field, see dataset.fields.text) from the current policy, scores them with the judge, and trains DPO (objective.dpo's beta and labelSmoothing) on best-versus-worst pairs. The pairs and scores are written to <output.uri>/rlaif/round-<k>.jsonl. The learning rate follows one schedule (hyperparameters.scheduler and warmup) over all rounds' steps. With method full, each round's DPO reference is the policy as it was at the start of that round (iterative DPO); with adapter methods it is the base model in every round.",
            {
              rounds: s.integer("Rounds of sampling, judging and training.", { minimum: 1, maximum: 100 }).default(2),
              samplesPerPrompt: s.integer("Responses sampled per prompt and round; the best and the worst make a pair.", { minimum: 2, maximum: 64 }).default(4),
              temperature: s.number("Sampling temperature (the logits are divided by it); above 0, since pairs need different samples.", {
                minimum: 0,
                exclusiveMinimum: true,
                maximum: 10,
              }).default(1),
              topP: s.number("Nucleus sampling: only the most likely tokens whose probabilities sum to topP are drawn from; 1 keeps all.", {
                minimum: 0,
                exclusiveMinimum: true,
                maximum: 1,
              }).default(1),
              maxNewTokens: s.integer("Tokens generated at most per response (generation stops earlier at EOS).", { minimum: 1, maximum: 4096 }).default(32),
              minResponseTokens: s
                .integer(
                  "Responses of fewer tokens rank below every longer one whatever their score: never chosen, and rejected first. A guard against a judge that rates a bare '.' or one word well (reward hacking); 1 leaves out only empty responses.",
                  { minimum: 1, maximum: 4096 },
                )
                .default(1),
              stepsPerRound: s.integer("DPO optimizer steps per round, over that round's pairs (batchSize pairs a micro-batch).", { minimum: 1, maximum: 100000 }).default(10),
              judge: s
                .object("What scores the responses: a reward model folder (rewardModel), or the base model reading a judging template (template and verdictTokens).", {
                  rewardModel: s.object("A reward model trained by a job with objective.type reward: the score of prompt + response at its last token.", {
                    uri: uri("The reward job's output.uri: a PEFT LoRA or DoRA adapter with task_type SEQ_CLS and its score head.").required(),
                  }),
                  template: s.string(
                    "A judging prompt for the base model (adapters disabled), with {prompt} and {response} placeholders; the score is log p(yes) - log p(no) of the verdict tokens as the next token.",
                    { minLength: 1, maxLength: 8192 },
                  ),
                  verdictTokens: s.array("The yes and the no verdict, in that order; each must be one token for the model's tokenizer (mind a leading space, e.g. ' Yes').", s.string("A verdict.", { minLength: 1, maxLength: 64 }), {
                    minItems: 2,
                    maxItems: 2,
                  }),
                })
                .rule({
                  cel: "has(self.rewardModel) != has(self.template)",
                  check: (self) => (self.rewardModel === undefined) !== (self.template === undefined),
                  message: "must set exactly one of rewardModel and template",
                })
                .rule({
                  cel: "has(self.template) == has(self.verdictTokens)",
                  check: (self) => (self.template === undefined) === (self.verdictTokens === undefined),
                  message: "is required with template, and only used with it",
                  fieldPath: ".verdictTokens",
                })
                .rule({
                  cel: "!has(self.template) || self.template.contains('{response}')",
                  check: (self) => self.template === undefined || self.template.includes("{response}"),
                  message: "must contain the {response} placeholder",
                  fieldPath: ".template",
                })
                .required(),
            },
          )
          .rule({
            cel: "!has(self.minResponseTokens) || !has(self.maxNewTokens) || self.minResponseTokens <= self.maxNewTokens",
            check: (self) => self.minResponseTokens === undefined || self.maxNewTokens === undefined || self.minResponseTokens <= self.maxNewTokens,
            message: "must be at most maxNewTokens: no response could be chosen",
            fieldPath: ".minResponseTokens",
          }),
      })
      .rule({
        cel: "!has(self.dpo) || self.type in ['dpo', 'rlaif']",
        check: (self) => self.dpo === undefined || self.type === "dpo" || self.type === "rlaif",
        message: "is only used when objective.type is dpo or rlaif",
        fieldPath: ".dpo",
        reason: "FieldValueForbidden",
      })
      .rule({
        // has(self.type) first: the block's default ({}) is checked against its rules too, before type has its default.
        cel: "has(self.rlaif) ? (has(self.type) && self.type == 'rlaif') : !(has(self.type) && self.type == 'rlaif')",
        check: (self) => (self.rlaif !== undefined) === (self.type === "rlaif"),
        message: "is required when objective.type is rlaif, and only used then",
        fieldPath: ".rlaif",
      })
      .default({}),
    hyperparameters: s
      .object("Optimisation settings (AdamW).", {
        epochs: s.integer("Passes over the training data; exclusive with maxSteps; 1 when neither is set.", { minimum: 1, maximum: 1000 }),
        maxSteps: steps("Optimizer steps to train for, instead of epochs; exclusive with epochs."),
        batchSize: s.integer("Examples per micro-batch (one forward pass).", { minimum: 1, maximum: 4096 }).default(8),
        gradientAccumulation: s.integer("Micro-batches per optimizer step; the effective batch is batchSize × gradientAccumulation.", {
          minimum: 1,
          maximum: 1024,
        }).default(1),
        learningRate: s.number("Peak learning rate; 2e-4 suits LoRA, full fine-tuning wants about 2e-5.", {
          minimum: 0,
          exclusiveMinimum: true,
          maximum: 1,
        }).default(0.0002),
        scheduler: s.enumeration("Learning-rate schedule after warmup: linear or cosine decay to 0, or constant.", ["cosine", "linear", "constant"]).default("linear"),
        warmupSteps: s.integer("Steps of linear warmup from 0 to learningRate; exclusive with warmupRatio; 0 when neither is set.", {
          minimum: 0,
          maximum: 10_000_000,
        }),
        warmupRatio: s.number("Warmup as a share of the total steps; exclusive with warmupSteps.", { minimum: 0, maximum: 1 }),
        weightDecay: s.number("AdamW's decoupled weight decay.", { minimum: 0, maximum: 1 }).default(0),
        adamBeta1: s.number("AdamW's decay rate of the gradient's moving average (Hugging Face's adam_beta1).", { minimum: 0, maximum: 1, exclusiveMaximum: true }).default(0.9),
        adamBeta2: s.number("AdamW's decay rate of the squared gradient's moving average (adam_beta2).", { minimum: 0, maximum: 1, exclusiveMaximum: true }).default(0.999),
        adamEpsilon: s.number("Added to AdamW's denominator for numerical stability (adam_epsilon).", { minimum: 0, exclusiveMinimum: true, maximum: 1 }).default(1e-8),
        maxGradNorm: s.number("Clip the global gradient norm to this; 0 turns clipping off.", { minimum: 0, maximum: 1_000_000 }).default(1),
        seed: s.integer("Seed of initialisation, dropout and data order: the same seed trains the same way.", { minimum: 0, maximum: 2147483647 }).default(42),
        evalEverySteps: steps("Optimizer steps between evaluations; at the end of each epoch when unset. Needs dataset.eval or dataset.evalFraction."),
      })
      .rule({
        cel: "!has(self.epochs) || !has(self.maxSteps)",
        check: (self) => self.epochs === undefined || self.maxSteps === undefined,
        message: "must not be set together with epochs: train for a number of epochs or of steps, not both",
        fieldPath: ".maxSteps",
        reason: "FieldValueForbidden",
      })
      .rule({
        cel: "!has(self.warmupSteps) || !has(self.warmupRatio)",
        check: (self) => self.warmupSteps === undefined || self.warmupRatio === undefined,
        message: "must not be set together with warmupSteps",
        fieldPath: ".warmupRatio",
        reason: "FieldValueForbidden",
      })
      .default({}),
    output: s
      .object("Where the result is written: the adapter in the Hugging Face PEFT format, or a whole model for full fine-tuning.", {
        uri: uri("Prefix that receives adapter_config.json, adapter_model.safetensors, training_metrics.json and a loss plot.").required(),
        mergeIntoBase: s.boolean("Also write a whole model with the adapter merged into the base weights (lora, dora and ia3), for servers that load no adapters.").default(false),
      })
      .required(),
    checkpoint: s
      .object("When training state is saved, so that a retried, preempted or resumed job continues where it stopped.", {
        everySteps: steps("Optimizer steps between checkpoints; one is also saved when the trainer is stopped.").default(500),
        keep: s.integer("Checkpoints kept; the oldest is deleted once a newer one is complete.", { minimum: 1, maximum: 100 }).default(2),
        uri: uri("Where checkpoints go; <output.uri>/checkpoints when unset."),
      })
      .default({}),
    storage: s
      .object("How the trainer reaches S3. Without secretRef, the AWS default credential chain applies (IRSA, EKS Pod Identity, instance role).", {
        endpoint: s.string("Endpoint of an S3-compatible server such as MinIO; AWS S3 when unset.", {
          maxLength: 2048,
          pattern: ENDPOINT_PATTERN,
          patternHint: "an http:// or https:// URL",
        }),
        region: s.string("Region of the buckets; the default chain's region (else us-east-1) when unset.", {
          minLength: 1,
          maxLength: 64,
          pattern: "^[a-z0-9-]+$",
          patternHint: "a region name such as eu-west-1",
        }),
        forcePathStyle: s.boolean("Address buckets as <endpoint>/<bucket> instead of <bucket>.<endpoint>, as most S3-compatible servers need.").default(false),
        secretRef: s.object("A Secret in the job's namespace with S3 credentials; the trainer pod gets them as environment variables and the operator never reads them.", {
          name: resourceName("Name of the Secret.").required(),
          accessKeyIdKey: secretKey("Key of the access key ID in the Secret.").default("AWS_ACCESS_KEY_ID"),
          secretAccessKeyKey: secretKey("Key of the secret access key in the Secret.").default("AWS_SECRET_ACCESS_KEY"),
          sessionTokenKey: secretKey("Key of a session token in the Secret, for temporary credentials."),
        }),
        serviceAccountName: resourceName("ServiceAccount of the trainer pod; with IRSA or EKS Pod Identity it brings the credentials."),
      })
      .rule({
        cel: "!has(self.endpoint) || has(self.secretRef) || has(self.serviceAccountName)",
        check: (self) => self.endpoint === undefined || self.secretRef !== undefined || self.serviceAccountName !== undefined,
        message:
          "is required with a custom endpoint: the AWS default credential chain has no credentials for a non-AWS server (or set serviceAccountName if it accepts web identity tokens)",
        fieldPath: ".secretRef",
        reason: "FieldValueRequired",
      })
      .default({}),
    resources: s
      .object("What the trainer pod asks the scheduler for, and where it may run.", {
        gpus: s.integer("GPUs (nvidia.com/gpu) for the trainer; 0 trains on CPU.", { minimum: 0, maximum: 16 }).default(0),
        cpu: s.quantity("CPU requested by the trainer container, e.g. 4 or 500m (no limit, so it never throttles); the namespace default when unset."),
        memory: s.quantity("Memory requested and limited for the trainer container, e.g. 16Gi; the namespace default when unset."),
        nodeSelector: s.map(
          "Node labels the trainer pod requires.",
          s.string("A label value.", { maxLength: 63, pattern: LABEL_VALUE_PATTERN, patternHint: "a label value" }),
          { maxProperties: 64 },
        ),
        tolerations: s.array("Taints the trainer pod tolerates, such as those of GPU nodes.", toleration, { maxItems: 32, listType: "atomic" }),
        affinity: s.freeform("Node and pod affinity of the trainer pod, in the core/v1 Affinity shape."),
        priorityClassName: resourceName("PriorityClass of the trainer pod, which decides who preempts whom."),
      })
      .default({}),
    runPolicy: s
      .object("Retries, deadlines, clean-up and suspension.", {
        backoffLimit: s.integer("Retries after a failed attempt before the job fails with BackoffLimitExceeded; each resumes from the last checkpoint.", {
          minimum: 0,
          maximum: 100,
        }).default(3),
        activeDeadlineSeconds: s.integer("Seconds the job may run from its start, retries included, before it fails with DeadlineExceeded.", {
          minimum: 1,
          maximum: 31_536_000,
        }),
        ttlSecondsAfterFinished: s.integer("Seconds after success or failure before the job is deleted; kept when unset.", { minimum: 0, maximum: 31_536_000 }),
        suspend: s.boolean("True saves a checkpoint, stops the trainer and holds the job; false resumes it. The one field that may change after the start.").default(false),
      })
      .default({}),
    queueName: s.string("Queue that admits the job: a FineTuneQueue (the operator's built-in queue), or a Kueue LocalQueue in the job's namespace. The trainer pod starts only once the queue admits the job (condition Admitted); see docs/queues.md.", {
      minLength: 1,
      maxLength: 253,
      pattern: DNS_SUBDOMAIN_PATTERN,
      patternHint: "a lowercase DNS subdomain name",
    }),
    priority: s.integer(
      "Priority in the job's queue: higher is admitted first and, with the queue's preemption LowerPriority, may stop admitted jobs of lower priority. When unset, the value of resources.priorityClassName's PriorityClass, else 0.",
      { minimum: -2147483648, maximum: 1000000000 },
    ),
    trainer: s
      .object("The trainer container.", {
        image: s.string("Trainer image; the operator's default, of its own version, when unset.", {
          minLength: 1,
          maxLength: 512,
          pattern: "^\\S+$",
          patternHint: "an image reference without spaces",
        }),
        backend: s.enumeration("Compute backend: gpu (native TensorFlow on a GPU, or the job fails with BackendUnavailable), cpu (native TensorFlow on the CPU when the image has it, else wasm), or auto (the GPU when the image has the GPU build and the node a GPU, else the fastest CPU backend; see docs/backends.md).", [
          "auto",
          "gpu",
          "cpu",
        ]).default("auto"),
        gradientCheckpointing: s
          .boolean("Recompute each transformer block in the backward pass instead of keeping its activations: less memory for one more forward pass, the same gradients.")
          .default(false),
      })
      .default({}),
  })
  .rule({
    cel: "!(self.objective.type in ['dpo', 'reward']) || self.dataset.format == 'preference'",
    check: (self) => !["dpo", "reward"].includes(self.objective.type) || self.dataset.format === "preference",
    message: "must be preference when objective.type is dpo or reward: both train on prompt, chosen and rejected",
    fieldPath: ".dataset.format",
  })
  .rule({
    cel: "self.dataset.format != 'preference' || self.objective.type in ['dpo', 'reward']",
    check: (self) => self.dataset.format !== "preference" || ["dpo", "reward"].includes(self.objective.type),
    message: "must be dpo or reward for the preference dataset format",
    fieldPath: ".objective.type",
  })
  .rule({
    cel: "self.objective.type != 'rlaif' || self.dataset.format == 'text'",
    check: (self) => self.objective.type !== "rlaif" || self.dataset.format === "text",
    message: "must be text when objective.type is rlaif: the prompts file's records hold a prompt each (field prompt, or dataset.fields.text)",
    fieldPath: ".dataset.format",
  })
  .rule({
    cel: "self.objective.type != 'rlaif' || (!has(self.hyperparameters.maxSteps) && !has(self.hyperparameters.epochs))",
    check: (self) => self.objective.type !== "rlaif" || (self.hyperparameters.maxSteps === undefined && self.hyperparameters.epochs === undefined),
    message: "must not set maxSteps or epochs with objective.type rlaif: it trains rlaif.rounds × rlaif.stepsPerRound steps",
    fieldPath: ".hyperparameters",
  })
  .rule({
    cel: "(self.objective.type == 'classification') == (self.dataset.format == 'classification')",
    check: (self) => (self.objective.type === "classification") === (self.dataset.format === "classification"),
    message: "must be classification exactly when dataset.format is classification",
    fieldPath: ".objective.type",
  })
  .rule({
    cel: `!self.output.mergeIntoBase || self.method.type in [${MERGEABLE_METHODS.map((method) => `'${method}'`).join(", ")}]`,
    check: (self) => !self.output.mergeIntoBase || (MERGEABLE_METHODS as readonly string[]).includes(self.method.type),
    message: "is only for lora, dora and ia3 adapters: the other methods cannot be merged, and full fine-tuning already writes a whole model",
    messageExpression: {
      cel: "'cannot merge a ' + self.method.type + ' result into the base model: only lora, dora and ia3 adapters merge'",
      render: (self) => `cannot merge a ${self.method.type} result into the base model: only lora, dora and ia3 adapters merge`,
    },
    fieldPath: ".output.mergeIntoBase",
    reason: "FieldValueForbidden",
  })
  .rule({
    cel: "self.output.uri != self.baseModel.uri",
    check: (self) => self.output.uri !== self.baseModel.uri,
    message: "must differ from baseModel.uri, so that the base model is never overwritten",
    fieldPath: ".output.uri",
  })
  .rule({
    cel: "self.trainer.backend != 'gpu' || self.resources.gpus >= 1",
    check: (self) => self.trainer.backend !== "gpu" || self.resources.gpus >= 1,
    message: "gpu needs resources.gpus >= 1",
    fieldPath: ".trainer.backend",
  })
  .rule({
    cel: "!has(self.hyperparameters.evalEverySteps) || has(self.dataset.eval) || (has(self.dataset.evalFraction) && self.dataset.evalFraction > 0.0)",
    check: (self) =>
      self.hyperparameters.evalEverySteps === undefined || self.dataset.eval !== undefined || (self.dataset.evalFraction ?? 0) > 0,
    message: "needs an eval set: set dataset.eval or dataset.evalFraction",
    fieldPath: ".hyperparameters.evalEverySteps",
  });

// ---------------------------------------------------------------------------------------------
// status

const conditionSchema = s.object("An observation of one aspect of the job, in the metav1.Condition shape.", {
  type: s.string("Condition type: PreflightChecked, Admitted, Running, Succeeded, Failed or Suspended, and the summaries Ready, Reconciling and Stalled.", {
    minLength: 1,
    maxLength: 316,
    pattern: CONDITION_TYPE_PATTERN,
    patternHint: "a condition type such as Running",
  }).required(),
  status: s.enumeration("True, False or Unknown.", ["True", "False", "Unknown"]).required(),
  observedGeneration: s.integer("The metadata.generation the condition was set for.", { minimum: 0 }),
  lastTransitionTime: s.dateTime("When status last changed.").required(),
  reason: s.string("Why, in one CamelCase word such as OOMKilled.", {
    minLength: 1,
    maxLength: 1024,
    pattern: REASON_PATTERN,
    patternHint: "a CamelCase reason",
  }).required(),
  message: s.string("What happened and what to do, for a human.", { maxLength: 32768 }).required(),
});

const statusSchema = s.object("What the operator observed; written by the operator only.", {
  phase: s.enumeration("Pending, Queued, Running, Succeeded, Failed or Suspended.", PHASES),
  conditions: s.array("The latest observation of each condition type.", conditionSchema, { maxItems: 16, listType: "map", listMapKeys: ["type"] }),
  progress: s.object("Training progress as the trainer last reported it.", {
    step: s.integer("Optimizer steps completed.", { minimum: 0 }),
    totalSteps: s.integer("Optimizer steps the job runs in all.", { minimum: 0 }),
    epoch: s.number("Epochs completed, with a fractional part.", { minimum: 0 }),
    percent: s.number("step / totalSteps, in percent.", { minimum: 0, maximum: 100 }),
    percentText: s.string("percent as kubectl get shows it, such as 50%.", { maxLength: 8 }),
    loss: s.number("Training loss, averaged since the previous report."),
    lossText: s.string("loss to 4 significant digits, such as 0.4225, for kubectl get.", { maxLength: 16 }),
    lossHistory: s.array(
      "Training loss over the run so far: the newest report in each 1/32 of the steps, so at most 32 points; the sparkline of kubetune status.",
      s.object("The loss at one step.", {
        step: s.integer("Optimizer step.", { minimum: 0 }).required(),
        loss: s.number("Training loss at that step.").required(),
      }),
      { maxItems: 32, listType: "atomic" },
    ),
    evalLoss: s.number("Loss on the eval set at the latest evaluation."),
    evalAccuracy: s.number("Classification: the share of eval examples classified right at the latest evaluation.", { minimum: 0, maximum: 1 }),
    preference: s.object(
      "Objective dpo: the latest step's means over its pairs of what TRL's DPOTrainer logs; a reward is β (log π(y|x) - log π_ref(y|x)).",
      {
        rewardsChosen: s.number("rewards/chosen: the chosen completions' implicit reward."),
        rewardsRejected: s.number("rewards/rejected: the rejected completions' implicit reward."),
        rewardsAccuracies: s.number("rewards/accuracies: share of pairs whose chosen reward is above the rejected one.", { minimum: 0, maximum: 1 }),
        rewardsMargins: s.number("rewards/margins: chosen minus rejected reward."),
        logpsChosen: s.number("logps/chosen: the chosen completions' summed token log-probabilities under the trained model."),
        logpsRejected: s.number("logps/rejected: the rejected completions' summed token log-probabilities."),
      },
    ),
    learningRate: s.number("Learning rate at the latest step.", { minimum: 0 }),
    tokensPerSecond: s.number("Training throughput in tokens per second.", { minimum: 0 }),
    etaSeconds: s.integer("Estimated seconds until the last step.", { minimum: 0 }),
    eta: s.string("etaSeconds as a duration such as 1h12m, for kubectl get.", { maxLength: 32 }),
    updatedAt: s.dateTime("When the trainer last reported."),
  }),
  lastCheckpoint: s.object("The newest complete checkpoint, which a retry resumes from.", {
    step: s.integer("Optimizer step of the checkpoint.", { minimum: 0 }).required(),
    uri: uri("Prefix holding the checkpoint.").required(),
    time: s.dateTime("When the checkpoint was completed.").required(),
  }),
  backend: s.object("What the current attempt's trainer computes on, and why, as it reported at start.", {
    name: s.enumeration("The tfjs backend: tensorflow (native TensorFlow), wasm, or cpu (plain JavaScript).", ["tensorflow", "wasm", "cpu"]).required(),
    device: s.enumeration("gpu or cpu.", ["gpu", "cpu"]).required(),
    description: s.string("The GPU's name and memory, or the CPU threads, such as 2 CPU threads.", { maxLength: 256 }),
    reason: s.string("Why this backend: what trainer.backend asked for and what the image and node offer.", { maxLength: 1024 }),
  }),
  queue: s.object("Where the job stands in its FineTuneQueue while it waits; absent once admitted.", {
    position: s.integer("1 for the next job to be admitted, counting the queue's waiting jobs in admission order.", { minimum: 1 }),
    waitReason: s.string("Why the job waits, e.g. waiting for 1 GPU; 2 of 2 in use by team-a/x, team-b/y.", { maxLength: 4096 }),
  }),
  admission: s.object("What the queue's admission adds to the trainer pod: with Kueue, the node labels and tolerations of the ResourceFlavors it assigned.", {
    nodeSelector: s.map("Node labels merged into the trainer pod's nodeSelector.", s.string("A label value.", { maxLength: 63 }), { maxProperties: 64 }),
    tolerations: s.array("Tolerations appended to the trainer pod's.", toleration, { maxItems: 32, listType: "atomic" }),
  }),
  attempts: s.integer("Trainer pods started so far, retries included.", { minimum: 0 }),
  failedAttempts: s.integer("Attempts that failed and count against runPolicy.backoffLimit (suspensions do not).", { minimum: 0 }),
  startTime: s.dateTime("When the first trainer pod started; from then on only spec.runPolicy.suspend may change."),
  completionTime: s.dateTime("When the job succeeded or failed."),
  outputs: s.object("What the job wrote, once it has succeeded.", {
    uri: uri("Prefix holding the adapter (or, for full fine-tuning, the model)."),
    mergedUri: uri("Prefix holding the merged model, with output.mergeIntoBase."),
    files: s.array(
      "The files written, with their digests.",
      s.object("One output file.", {
        name: s.string("Path relative to uri.", { minLength: 1, maxLength: 1024 }).required(),
        sha256: s.string("SHA-256 of the content, in hex.", { pattern: "^[a-f0-9]{64}$", patternHint: "64 lowercase hex digits" }).required(),
        size: s.integer("Size in bytes.", { minimum: 0 }),
      }),
      { maxItems: 256, listType: "atomic" },
    ),
    trainableParameters: s.integer("Parameters trained.", { minimum: 0 }),
    totalParameters: s.integer("Parameters of the base model plus the trained ones.", { minimum: 0 }),
    trainableShare: s.number("trainableParameters / totalParameters.", { minimum: 0, maximum: 1 }),
    loadableBy: s.array(
      "Servers that load the result as it is: PEFT for PEFT-format adapters (LoRA, DoRA, IA3, prefix, prompt, SK-tuning), vLLM for plain LoRA within its rank limit and for whole models, Transformers for whole models (merged or fully fine-tuned), kubetune alone for bottleneck adapters.",
      s.enumeration("A server.", ["PEFT", "vLLM", "Transformers", "kubetune"]),
      { maxItems: 8, listType: "set" },
    ),
  }),
  observedGeneration: s.integer("The metadata.generation this status describes.", { minimum: 0 }),
});

// ---------------------------------------------------------------------------------------------
// the kind

/** Spec fields that may still change after the job has started; every other field is immutable then. */
export const MUTABLE_AFTER_START = ["runPolicy.suspend"] as const;

const STARTED_CEL = "has(oldSelf.status) && has(oldSelf.status.startTime)";
const IMMUTABLE_MESSAGE =
  "is immutable once the job has started (status.startTime is set): only spec.runPolicy.suspend may change; delete and re-create the job to change it";

/** CEL that is true when the optional field at path (below self/oldSelf) has the same presence and value in both. */
function celUnchanged(required: string, optional: readonly string[]): string {
  const [head, ...rest] = optional;
  if (head === undefined) return `self.${required} == oldSelf.${required}`;
  const path = `${required}.${head}`;
  return `(has(self.${path}) == has(oldSelf.${path}) && (!has(self.${path}) || ${celUnchanged(path, rest)}))`;
}

function valueAt(root: unknown, path: readonly string[]): unknown {
  return path.reduce<unknown>((value, key) => (value !== null && typeof value === "object" ? (value as Record<string, unknown>)[key] : undefined), root);
}

/**
 * The paths below spec that the immutability rules guard: each spec field, except that a field
 * holding a mutable field (runPolicy) is guarded field by field, less the mutable one (suspend).
 */
function immutableSpecPaths(): string[][] {
  return Object.entries(s.propertiesOf(specSchema)).flatMap(([key, field]) => {
    const mutable: string[] = MUTABLE_AFTER_START.filter((path) => path.startsWith(`${key}.`)).map((path) => path.slice(key.length + 1));
    if (mutable.length === 0) return [[key]];
    return Object.keys(s.propertiesOf(field))
      .filter((nested) => !mutable.includes(nested))
      .map((nested) => [key, nested]);
  });
}

export const fineTuneJobSchema = immutableSpecPaths().reduce(
  (schema, path) =>
    schema.transitionRule({
      cel: `!(${STARTED_CEL}) || ${celUnchanged("spec", path)}`,
      check: (self, oldSelf) => oldSelf.status?.startTime === undefined || isDeepStrictEqual(valueAt(self.spec, path), valueAt(oldSelf.spec, path)),
      message: IMMUTABLE_MESSAGE,
      fieldPath: `.spec.${path.join(".")}`,
      reason: "FieldValueForbidden",
    }),
  s.object("FineTuneJob fine-tunes a language model with a parameter-efficient method and writes the result to S3.", {
    apiVersion: s.string("kubetune.io/v1alpha1.").required(),
    kind: s.string("FineTuneJob.").required(),
    metadata: s.objectMeta("Standard object metadata.").required(),
    spec: specSchema.required(),
    status: statusSchema,
  }),
);

export { specSchema as fineTuneJobSpecSchema, statusSchema as fineTuneJobStatusSchema };

/** A FineTuneJob as written by a user or read from the API server. */
export type FineTuneJob = Infer<typeof fineTuneJobSchema>;
/** The spec as written: fields with defaults may be absent. */
export type FineTuneJobSpec = Infer<typeof specSchema>;
/** The spec after applyDefaults: every field with a default is present. */
export type DefaultedFineTuneJobSpec = InferDefaulted<typeof specSchema>;
export type FineTuneJobStatus = Infer<typeof statusSchema>;
export type Condition = Infer<typeof conditionSchema>;
export type MethodType = (typeof METHOD_TYPES)[number];
export type ObjectiveType = (typeof OBJECTIVE_TYPES)[number];
export type DatasetFormat = (typeof DATASET_FORMATS)[number];
export type Phase = (typeof PHASES)[number];
export type LoraParameters = InferDefaulted<typeof methodBlocks.lora>;
export type Ia3Parameters = InferDefaulted<typeof methodBlocks.ia3>;
export type PrefixParameters = InferDefaulted<typeof methodBlocks.prefix>;
export type PromptParameters = InferDefaulted<typeof methodBlocks.prompt>;
export type SkTuningParameters = InferDefaulted<typeof methodBlocks.skTuning>;
export type AdapterParameters = InferDefaulted<typeof methodBlocks.adapter>;
