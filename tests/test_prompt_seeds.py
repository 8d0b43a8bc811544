"""Each completion of each prompt draws its own random stream.

Uses the real RolloutWorker._params (with the real vLLM SamplingParams) and vLLM's own rule for the
seeds of a request's n completions (vllm/v1/engine/parallel_sampling.py: child j gets `seed + j`),
read from vLLM's ParentRequest, not restated here. No engine is started.
"""
from __future__ import annotations

from types import SimpleNamespace

from protocol.batch import Prompt
from protocol.rng import prompt_seed
from rollout import vllm_compat
from rollout.worker import RolloutWorker


def _child_seeds(params) -> list[int]:
    from vllm.v1.engine.parallel_sampling import ParentRequest

    seeds = []
    for j in range(params.n):
        parent = SimpleNamespace(sampling_params=params, cached_child_sampling_params=None)
        seeds.append(ParentRequest._get_child_sampling_params(parent, j).seed)
    return seeds


def test_no_two_completions_of_a_batch_share_a_seed() -> None:
    fake_worker = SimpleNamespace(vc=vllm_compat)
    n, prompts = 8, [Prompt(i, f"q{i}", "0") for i in range(256)]
    seen: dict[int, tuple[int, int, int]] = {}
    for batch_seed in (0, 1, 7):
        for prompt, params in zip(prompts, RolloutWorker._params(fake_worker, prompts, n, 1.0, 1.0, 16, batch_seed)):
            for j, seed in enumerate(_child_seeds(params)):
                assert seed not in seen, f"completion {j} of prompt {prompt.index} shares seed {seed} with {seen[seed]}"
                seen[seed] = (batch_seed, prompt.index, j)
    assert len(seen) == 3 * 256 * n


def test_prompt_seeds_are_a_pure_function_of_batch_seed_and_index() -> None:
    assert prompt_seed(3, 10) == prompt_seed(3, 10)
    assert prompt_seed(3, 10) != prompt_seed(3, 11) != prompt_seed(4, 10)
    assert all(0 <= prompt_seed(s, i) < 2**31 for s in range(5) for i in range(100))
