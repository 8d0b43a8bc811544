"""Per-token estimators of KL(policy || reference) from the log-probabilities of sampled tokens.

With d = log pi_ref(y_t) - log pi(y_t) and y_t sampled from pi (John Schulman's k1/k2/k3 notes):

| name | value             | expectation under pi        | gradient, used as a loss term (on-policy) |
| ---- | ----------------- | --------------------------- | ----------------------------------------- |
| k1   | -d                | KL(pi||ref), high variance  | zero in expectation: useless as a loss    |
| k2   | d^2 / 2           | ~KL for close policies      | the gradient of KL(pi||ref)               |
| k3   | exp(d) - d - 1    | KL(pi||ref), >= 0, low var. | the gradient of KL(ref||pi) (forward KL)  |

k3 as a loss term is GRPO's default; k1 is the usual choice "in the reward" (its sum over a
response is an unbiased estimate of the sequence KL). The gradient column follows from
grad k = (dk/dlog pi) * grad log pi and E_pi[f * grad log pi] = sum_y pi(y) f(y) grad log pi(y).
"""
from __future__ import annotations

from typing import Callable

import torch

KlFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref. Unbiased, can be negative per token."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2. Always >= 0; biased, but little when the policies are close."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(d) - d - 1 with d = log pi_ref - log pi. Unbiased and always >= 0."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


KL_ESTIMATORS: dict[str, KlFn] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimator(name: str) -> KlFn:
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown KL estimator {name!r}; known: {sorted(KL_ESTIMATORS)}") from None


def sequence_kl(logprobs: list[list[float]], ref_logprobs: list[list[float]], estimator: str = "k1") -> torch.Tensor:
    """Per-sample sum over response tokens of the per-token KL estimate, [B].

    Inputs are ragged per-sample lists (e.g. the rollout's sampling logprobs and the reference
    model's logprobs of the same tokens); feed the result to `kl_penalised_rewards`.
    """
    fn = kl_estimator(estimator)
    sums = [fn(torch.tensor(lp, dtype=torch.float32), torch.tensor(ref, dtype=torch.float32)).sum()
            for lp, ref in zip(logprobs, ref_logprobs, strict=True)]
    return torch.stack(sums) if sums else torch.zeros(0)
