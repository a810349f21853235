"""Writes the tokenizer golden fixtures under tests/fixtures/hf/tokenizers/ (issue 9).

    PY=$(bash scripts/python-env.sh --check scripts/python-requirements.txt scripts/python-requirements-hf.txt)
    "$PY" scripts/hf/make-tokenizer-fixtures.py

Nothing is downloaded: each tokenizer is trained here with the `tokenizers` library on a small
corpus, in the layout of a real model family's tokenizer.json, so the fixtures hold the same
kinds of normalizer, pre-tokenizer, model and decoder as the real files:

  qwen2-chatml   byte-level BPE, NFC normalizer and Qwen2's split regex; ChatML template
  llama3         byte-level BPE with Llama-3's split regex; Llama-3 template, <|begin_of_text|>
  mistral        SentencePiece-style BPE as transformers converts Llama-2/Mistral: normalizer
                 Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, byte fallback <0x00>..<0xFF>,
                 decoder Replace/ByteFallback/Fuse/Strip; Mistral's [INST] template
  mistral-metaspace  the same model with a Metaspace pre-tokenizer (prepend_scheme "first"),
                 as newer conversions write it, and no normalizer

For each, expected.json records what the Hugging Face libraries do, which the trainer's tests
(trainer/tokenizer/hf-fixtures.test.ts) compare against without Python:
  strings  `tokenizers`' ids (no special tokens added) and decode for a set of hard strings,
           transformers' ids with special tokens and its decode (which cleans up spaces when
           tokenizer_config.json says so)
  completions  prompt + completion tokenized whole, with the completion mask from character
           offsets (a token carries loss when it holds a character of the completion)
  chats    transformers' apply_chat_template: the rendered text, the ids, the text with the
           generation prompt, and the assistant mask TRL's assistant_only_loss trains on
           (return_assistant_tokens_mask: the {% generation %} blocks, which the templates put
           around each assistant reply and its end-of-turn token)
The output is deterministic: running the script again rewrites identical files.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata

import tokenizers
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "hf", "tokenizers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "What is the capital of France? The capital of France is Paris.",
    "Question: What is the opposite of cold?\nAnswer: The opposite of cold is hot.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5",
    "Hello, world! How are you today? I'm fine, thanks; and you?",
    "Numbers: 1234567890, 3.14159, 2026-12-01, 100%.",
    "She said: \"don't go\" and he'll say 'we've been there'.",
    "Café, naïve, résumé, Zürich, São Paulo, coöperate.",
    "日本語のテキストです。東京は日本の首都です。",
    "中文文本：北京是中国的首都。",
    "Emoji: 🎉 🚀 👍🏽 ❤️ 👨‍👩‍👧",
    "Tabs\tand\ttabs, new\nlines\r\nand    runs   of     spaces.",
    "The assistant answers questions briefly and truthfully.",
    "Translate to French: good morning. Bonjour.",
]

# Strings that tokenizers get wrong most easily.
HARD_STRINGS = [
    "Hello world",
    " Hello world",
    "   leading spaces",
    "trailing spaces   ",
    "a  b   c    d",
    "\tTabbed\tline\t",
    "line one\nline two\n\nline four\r\nend",
    "\n\n\n",
    "    indented code():\n        return 1",
    "Ünïcödé naïve café",
    "e\u0301 combining acute, a\u0308 umlaut",
    "日本語のテキスト",
    "中文和English混合",
    "한국어 텍스트",
    "Emoji 🎉🚀 and skin tone 👍🏽 and family 👨‍👩‍👧",
    "zero\u200bwidth space",
    "numbers 1234567 and 3.14159",
    "don't won't I'm we've they'll",
    "CAPITALS AND MiXeD CaSe",
    "x",
    " ",
    "snake_case and camelCase and kebab-case",
    "http://example.com/path?query=1&b=2",
    "a\u00a0non-breaking space",
    "Spaces before punctuation , . ! ? and do n't 's 've",
]

COMPLETIONS = [
    ("Question: What is the opposite of cold?\nAnswer:", " The opposite of cold is hot."),
    ("Translate to French: good morning.\n", "Bonjour."),
    ("def add(a, b):\n", "    return a + b"),
    ("日本の首都は", "東京です。"),
    ("Say hi with an emoji:", " hi 🎉"),
]

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hello, how are you today?"},
        {"role": "user", "content": "Fine, thanks. What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 is 5."},
    ],
    [
        {"role": "user", "content": "Write code:\n\tadd two numbers"},
        {"role": "assistant", "content": "def add(a, b):\n    return a + b\n"},
    ],
    [
        {"role": "user", "content": "日本の首都は？ 🎉"},
        {"role": "assistant", "content": "  東京です。 🚀  "},
    ],
]

SYSTEM_CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Opposite of cold?"},
    {"role": "assistant", "content": "Hot."},
]

# Chat templates written after the models' own, with {% generation %} around each assistant reply
# and its end-of-turn token, as TRL's training templates mark what assistant_only_loss trains on.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + eos_token }}{% endgeneration %}"
    "{%- else %}"
    "{{- raise_exception('Only user and assistant roles are supported!') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def byte_level(split: str, specials: list[str], nfc: bool, vocab_size: int) -> Tokenizer:
    """A byte-level BPE as Qwen2 and Llama-3 ship it: split regex, then ByteLevel without its own regex."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 3, trainer=trainer)
    tokenizer.add_special_tokens(specials)
    return tokenizer


def sentencepiece_bpe(vocab_size: int, metaspace_pre_tokenizer: bool) -> Tokenizer:
    """
    A SentencePiece-style BPE as transformers converts Llama-2 and Mistral: <unk>, <s>, </s>, then
    the 256 byte tokens, then the learned pieces; characters outside the vocabulary fall back to
    bytes. Trained with a Metaspace pre-tokenizer so that no merge crosses a word boundary, as
    SentencePiece trains.
    """
    trainer_tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[], show_progress=False)
    trainer_tokenizer.train_from_iterator(CORPUS * 3, trainer=trainer)
    learned = json.loads(trainer_tokenizer.to_str())["model"]

    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{value:02X}>" for value in range(256)]
    vocab: dict[str, int] = {}
    for token in specials + byte_tokens:
        vocab[token] = len(vocab)
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    model = models.BPE(
        vocab=vocab,
        merges=[tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in learned["merges"]],
        unk_token="<unk>",
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(model)
    if metaspace_pre_tokenizer:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Both conversions decode byte tokens back to UTF-8 and drop the prepended space.
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)]
    )
    tokenizer.add_special_tokens(specials)
    return tokenizer


def bos_post_processor(tokenizer: Tokenizer, bos: str) -> None:
    """BOS before every text, as Llama's post-processor adds it."""
    from tokenizers.processors import TemplateProcessing

    bos_id = tokenizer.token_to_id(bos)
    tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])


def offsets_mask(tokenizer: Tokenizer, text: str, start: int, end: int) -> tuple[list[int], list[int]]:
    """The ids of `text` and which tokens hold a character of text[start:end] (by the tokenizer's offsets)."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    mask = [1 if token_start < end and token_end > start else 0 for token_start, token_end in encoding.offsets]
    return encoding.ids, mask


def write_fixture(name: str, tokenizer: Tokenizer, config: dict, description: str, conversations: list) -> None:
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    tokenizer_json = json.loads(tokenizer.to_str())
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as file:
        json.dump(tokenizer_json, file, ensure_ascii=False, separators=(",", ":"))
        file.write("\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as file:
        json.dump(config, file, ensure_ascii=False, indent=2)
        file.write("\n")

    # What transformers makes of the folder, as a user's AutoTokenizer.from_pretrained would.
    fast = PreTrainedTokenizerFast.from_pretrained(folder)
    strings = []
    for text in HARD_STRINGS + special_strings(config):
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        strings.append(
            {
                "text": text,
                "ids": ids,
                "tokens": [tokenizer.id_to_token(i) for i in ids],
                "decoded": tokenizer.decode(ids, skip_special_tokens=False),
                "decodedSkippingSpecial": tokenizer.decode(ids, skip_special_tokens=True),
                # transformers' decode also applies clean_up_tokenization_spaces from the config.
                "transformersDecoded": fast.decode(ids, skip_special_tokens=False),
                "idsWithSpecialTokens": fast(text, add_special_tokens=True)["input_ids"],
            }
        )
    completions = []
    for prompt, completion in COMPLETIONS:
        ids, mask = offsets_mask(tokenizer, prompt + completion, len(prompt), len(prompt + completion))
        completions.append({"prompt": prompt, "completion": completion, "ids": ids, "completionMask": mask})
    chats = []
    for messages in conversations:
        rendered = fast.apply_chat_template(messages, tokenize=False)
        encoded = fast.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        prompt = fast.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        assert encoded["input_ids"] == tokenizer.encode(rendered, add_special_tokens=False).ids, (name, messages)
        assert any(encoded["assistant_masks"]), (name, messages)
        chats.append(
            {
                "messages": messages,
                "rendered": rendered,
                "promptWithGenerationPrompt": prompt,
                "ids": encoded["input_ids"],
                "assistantMask": encoded["assistant_masks"],
            }
        )
    expected = {
        "description": description,
        "generatedBy": "scripts/hf/make-tokenizer-fixtures.py",
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__},
        "addBos": config.get("add_bos_token", False),
        "strings": strings,
        "completions": completions,
        "chats": chats,
    }
    with open(os.path.join(folder, "expected.json"), "w", encoding="utf-8") as file:
        json.dump(expected, file, ensure_ascii=False, indent=1)
        file.write("\n")
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"{name}: vocab {tokenizer.get_vocab_size()}, {len(strings)} strings, {len(chats)} chats, {size // 1024} KiB", file=sys.stderr)


def special_strings(config: dict) -> list[str]:
    """Special tokens inside text: alone, glued to words, after spaces and newlines."""
    tokens = [config["eos_token"]] + ([config["bos_token"]] if config.get("bos_token") else [])
    out = []
    for token in tokens:
        out += [token, f"Hello{token}world", f"Hello {token} world", f"line\n{token}\nnext", f"{token}{token}", f" {token}"]
    return out


def main() -> None:
    assert unicodedata.normalize("NFC", "e\u0301") == "\u00e9"

    qwen = byte_level(QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], nfc=True, vocab_size=700)
    write_fixture(
        "qwen2-chatml",
        qwen,
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 4096,
            "chat_template": CHATML_TEMPLATE,
        },
        "Qwen2-style byte-level BPE (NFC, split regex, ByteLevel), ChatML chat template",
        CONVERSATIONS + [SYSTEM_CONVERSATION],
    )

    llama3 = byte_level(LLAMA3_SPLIT, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], nfc=False, vocab_size=700)
    bos_post_processor(llama3, "<|begin_of_text|>")
    write_fixture(
        "llama3",
        llama3,
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "add_bos_token": True,
            "clean_up_tokenization_spaces": True,
            "model_max_length": 4096,
            "chat_template": LLAMA3_TEMPLATE,
        },
        "Llama-3-style byte-level BPE (split regex, ByteLevel), BOS from the post-processor, Llama-3 chat template",
        CONVERSATIONS + [SYSTEM_CONVERSATION],
    )

    for name, metaspace in (("mistral", False), ("mistral-metaspace", True)):
        mistral = sentencepiece_bpe(vocab_size=600, metaspace_pre_tokenizer=metaspace)
        bos_post_processor(mistral, "<s>")
        write_fixture(
            name,
            mistral,
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
                "legacy": False,
                "model_max_length": 4096,
                "chat_template": MISTRAL_TEMPLATE,
            },
            "SentencePiece-style BPE with byte fallback as Llama-2/Mistral convert "
            + ("(Metaspace pre-tokenizer, prepend_scheme first)" if metaspace else "(Prepend/Replace normalizer)")
            + ", Mistral [INST] chat template",
            CONVERSATIONS,
        )


if __name__ == "__main__":
    main()
