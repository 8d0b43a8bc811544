"""Save and restore a process's random number generator states (Python, NumPy, torch, CUDA).

Exact resume needs every process's RNG states: the driver's (cluster/infra/checkpoint.py) and each learner
rank's (learner/worker.py), so the helpers live here, where both may import them.
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
