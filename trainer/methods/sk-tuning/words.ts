/**
 * The meaningful words of a task description: its words in order, without English function
 * words (articles, pronouns, auxiliaries, prepositions, conjunctions), so that "Classify the
 * sentiment of this review as positive or negative" keeps "Classify sentiment review positive
 * negative". Deterministic: a fixed list, no model. Negations (not, no, nor) are kept, since they
 * change what a task asks. A description made only of function words is kept whole.
 */
export function meaningfulWords(description: string): string[] {
  const words = description.match(/[\p{L}\p{N}]+(?:['’-][\p{L}\p{N}]+)*/gu) ?? [];
  const kept = words.filter((word) => !STOP_WORDS.has(word.toLowerCase().replace(/’/g, "'")));
  return kept.length > 0 ? kept : words;
}

/** The meaningful words as the text the tokenizer sees: joined by single spaces. */
export function meaningfulText(description: string): string {
  return meaningfulWords(description).join(" ");
}

const STOP_WORDS = new Set(
  (
    "a an the this that these those " +
    "i me my mine we us our ours you your yours he him his she her hers it its they them their theirs " +
    "what which who whom whose " +
    "am is are was were be been being do does did doing have has had having " +
    "will would shall should can could may might must " +
    "of in on at by for with about against between into through during before after above below to from up down out off over under " +
    "and or but if then so than as because while until although though " +
    "there here when where why how all any both each few more most other some such only own same too very just also " +
    "please"
  ).split(" "),
);
