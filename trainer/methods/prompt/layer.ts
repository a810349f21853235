import * as tf from "@tensorflow/tfjs-core";
import type { CausalLM, ModelInputs } from "../../model/model.ts";

/**
 * The forward pass of prompt tuning, as PEFT's PeftModelForCausalLM computes it: the virtual
 * tokens' embeddings [tokens, hidden] go before every row's input embeddings, the attention mask
 * gets ones in front (virtual tokens are always visible), and positions count from the first
 * virtual token. Unlike PEFT, the result keeps only the input's own positions: the trainer's loss,
 * evaluation and sampling index logits by input position, and virtual positions have no target.
 */
export function forwardWithVirtualTokens(model: CausalLM, inputs: ModelInputs, prompt: tf.Tensor2D): tf.Tensor3D {
  return tf.tidy(() => {
    const withVirtual = inputsWithVirtualTokens(model, inputs, prompt);
    const output = model.forward(withVirtual);
    const [batch, seq] = withVirtual.inputsEmbeds!.shape;
    const tokens = prompt.shape[0];
    return tf.slice(output, [0, tokens, 0], [batch, seq - tokens, output.shape[2]]);
  });
}

/** The inputs with the virtual tokens' embeddings [tokens, hidden] before every row's, and ones before its attention mask. */
export function inputsWithVirtualTokens(model: CausalLM, inputs: ModelInputs, prompt: tf.Tensor2D): ModelInputs {
  return tf.tidy(() => {
    if (inputs.pastKeyValuesPrefix) throw new Error("prompt tuning: the inputs already carry a prefix; inject one method at a time");
    const embeddings = inputs.inputsEmbeds ?? model.embed(requireIds(inputs));
    const batch = embeddings.shape[0];
    const tokens = prompt.shape[0];
    // reshape rather than expandDims: the trainer registers no gradient for ExpandDims (backend/gradients.ts).
    const virtual = tf.tile(tf.reshape(prompt, [1, tokens, prompt.shape[1]]), [batch, 1, 1]);
    const inputsEmbeds = tf.concat([virtual, embeddings], 1) as tf.Tensor3D;
    const attentionMask = inputs.attentionMask
      ? (tf.concat([tf.ones([batch, tokens], inputs.attentionMask.dtype), inputs.attentionMask], 1) as tf.Tensor2D)
      : undefined;
    const { inputIds: _ids, ...rest } = inputs;
    // tidy keeps the tensors of the returned object; the caller's own (rest) are not this scope's.
    return { ...rest, inputsEmbeds, ...(attentionMask ? { attentionMask } : {}) } as ModelInputs & tf.TensorContainerObject;
  });
}

function requireIds(inputs: ModelInputs): tf.Tensor2D {
  if (!inputs.inputIds) throw new Error("model forward: give exactly one of inputIds and inputsEmbeds");
  return inputs.inputIds;
}
