"""Test helpers for the training plumbing: a tiny random causal LM and an in-process answer checker.

The model (a Llama with a byte-level ChatML tokenizer) trains and generates in milliseconds, so
fine-tuning and evaluation can be unit-tested without the real (slow) SmolLM2; it answers
nonsense, which is all those tests need.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CHATML_TEMPLATE", "InProcessChecker", "make_tiny_lm"]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_lm(folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer, 32-wide Llama with a byte-level tokenizer into ``folder`` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


class InProcessChecker:
    """The verify checker run in-process (fine for the trusted, numeric answers of the tests)."""

    def check_many(self, pairs: list[tuple[str, str]]) -> list[object]:
        """Check each (gold, response) pair with :func:`answers_equal`."""
        from sparq_stream.verify import answers_equal

        return [answers_equal(gold, response) for gold, response in pairs]
