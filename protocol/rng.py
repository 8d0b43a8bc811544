"""Random number generator states (Python, NumPy, torch, CUDA) and the sampling seed of each prompt.

Exact resume needs every process's RNG states: the driver's (cluster/infra/checkpoint.py) and each learner
rank's (learner/worker.py), so the helpers live here, where both may import them. The rollout worker and
benchmarks/scale.py (which replays a step on bare vLLM) must agree on each prompt's seed: `prompt_seed`.
"""
from __future__ import annotations

from typing import Any

import torch


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch (and CUDA) RNG states."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prompt_seed(batch_seed: int, index: int) -> int:
    """The sampling seed of prompt `index` in a batch seeded `batch_seed`: a mixed 31-bit hash.

    vLLM seeds the j-th of a request's n completions with `seed + j`, so seeds of neighbouring prompts
    must not be neighbours: `batch_seed + index` gave completion j of prompt i the random stream of
    completion 0 of prompt i + j. A hash (splitmix64's finaliser) puts them ~2**31 / n apart on average;
    two prompts' ranges [s, s + n) overlap with probability about 2n / 2**31.
    """
    z = (batch_seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) % 2**31
