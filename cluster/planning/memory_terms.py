"""The per-token formulas of cluster/planning/memory_model.py that a GPU check measures, in plain Python (no imports):
scripts/gpu_smoke_torch.py compares them with what one 7B-shaped layer and the chunked log-prob head
really allocate, on machines with nothing but torch installed."""
from __future__ import annotations


def layer_activation_values(hidden: int, kv_width: int, intermediate: int) -> int:
    """Values autograd keeps per token for one decoder layer of HF Qwen2 with SDPA (hidden h, K/V width kv,
    MLP width i), as cluster/planning/memory_model.py counts them; the torch-only smoke test measures the real figure
    with saved-tensor hooks on a layer built the same way."""
    return 11 * hidden + 4 * kv_width + 4 * intermediate


def logits_chunk_bytes(chunk_tokens: int, vocab: int, dtype_bytes: int, entropy: bool) -> int:
    """One chunk of the log-prob head (learner/policy_model.py): the logits in the model dtype and their
    fp32 log-softmax copies (5 with an entropy bonus, 3 without)."""
    return chunk_tokens * vocab * (dtype_bytes + 4 * (5 if entropy else 3))
