"""Build a tiny Qwen2-architecture model and its BPE tokenizer locally (no hub access needed).

The tokenizer is trained with the same normalizer and pre-tokenizer that transformers 5 rebuilds
in code for Qwen2Tokenizer (NFC; Qwen2 split regex, then byte-level), so the raw tokenizer,
AutoTokenizer and vLLM all produce identical ids.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from cluster.config import TinyModelConfig

QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|im_start|>", "<|im_end|>"]


def train_tokenizer(corpus: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, max_length: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": EOS, "pad_token": EOS, "unk_token": None,
        "bos_token": None, "model_max_length": max_length, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }))


def build_random_model(cfg: TinyModelConfig, corpus: list[str], out: Path, seed: int) -> Path:
    """Write an untrained tiny model (config, weights, tokenizer) to `out` and return it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(corpus, cfg.vocab_size)
    save_tokenizer(tok, out, cfg.max_position_embeddings)
    eos_id = tok.token_to_id(EOS)
    config = Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, bos_token_id=eos_id, eos_token_id=eos_id,
        pad_token_id=eos_id, rope_theta=10000.0, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # A random tiny model with default init can put all mass on one token; a smaller embedding
    # scale keeps next-token entropy reasonable from the start.
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 0.02)
    model.save_pretrained(out)
    return out
