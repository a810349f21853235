export * from "./bpe-trainer.ts";
export * from "./tokenizer.ts";
