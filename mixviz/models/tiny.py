"""The ``tiny`` model: a 4-block random-weight Llama, a BPE tokenizer trained on the bundled text.

Deterministic (seed 0, single-threaded tokenizer training), built in a few seconds, used by tests
so that profiling and quantization run in seconds on a CPU. Its hidden size is 64, so group-128
schemes are unavailable for every linear but ``down_proj`` (in_features 128), as on real models
whose widths are not multiples of 128.
"""

from __future__ import annotations

import os
from pathlib import Path

from mixviz.models.text import calibration_text

VOCAB = 512
SPECIAL = ["<|endoftext|>", "<|pad|>"]
_BUILDER_VERSION = 1


def build_key() -> str:
    """Everything the tiny model depends on: this builder's version and the bundled text."""
    return f"v{_BUILDER_VERSION}-{calibration_text().hash[:8]}"


def build_tiny(out: Path) -> None:
    """Write a tiny Llama (config, safetensors, tokenizer) into ``out``."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # deterministic merges
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = calibration_text().text
    bpe.train_from_iterator([text[i : i + 4096] for i in range(0, len(text), 4096)], trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_max_length=2048,
    )
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
