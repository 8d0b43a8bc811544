"""A Hugging Face model directory (weights, config, tokenizer) from a training checkpoint, loadable by
transformers and vLLM: the library of `python -m cluster.export`, and the tokenizer copy the trainer puts
beside its final model. It runs offline, without Ray or a process group: DeepSpeed's zero_to_fp32 merges
the ZeRO partitions of every rank into one fp32 state dict, which is then cast to the run's model.dtype
(for bf16 runs this equals the bf16 weights the learner trains with).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from cluster.infra.checkpoint import Checkpoints, read_state
from cluster.config import load_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "special_tokens_map.json", "added_tokens.json", "generation_config.json")


def copy_tokenizer(base: Path, out: Path) -> None:
    """Copy the tokenizer (and generation defaults) of the base model next to exported weights."""
    for name in TOKENIZER_FILES:
        if (base / name).exists() and not (out / name).exists():
            shutil.copy(base / name, out / name)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory as given, or the newest checkpoint of a run directory."""
    if (path / "trainer_state.json").is_file():
        return path
    latest = Checkpoints(path, 1).latest()
    if latest is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint nor a run directory with checkpoints")
    return latest


def full_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Consolidated fp32 weights of every rank's partition (ZeRO 1-3), or the module of ZeRO-0."""
    ds_dir = checkpoint / "deepspeed"
    if any(ds_dir.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="deepspeed")
    return torch.load(ds_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


def export(checkpoint: Path, out: Path) -> Path:
    """Write the Hugging Face directory for `checkpoint` (a checkpoint or run directory) to `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    checkpoint = resolve_checkpoint(checkpoint)
    base = Path(read_state(checkpoint).model_path)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[load_config(str(checkpoint / "config.yaml")).model.dtype]
    with torch.device("meta"):  # no memory for a second copy of the weights
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=dtype)
    state = {name: tensor.to(dtype) for name, tensor in full_state_dict(checkpoint).items()}
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if missing := set(model.state_dict()) - set(state) - tied:
        raise ValueError(f"{checkpoint}: weights missing from the checkpoint: {sorted(missing)[:5]}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=state)
    copy_tokenizer(base, out)
    return out
