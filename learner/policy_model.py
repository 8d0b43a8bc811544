"""The policy network as the learner trains it: a Hugging Face causal LM whose forward computes what
the losses need at the response positions only, never the full-vocabulary logits of whole sequences.

The body runs over the padded micro-batch; then only the hidden states of the positions whose next
token is a response token go through the language-model head, `chunk_tokens` positions at a time, each
chunk's head + log-softmax (+ entropy) wrapped in activation checkpointing: autograd keeps only the
chunk's hidden states, and the backward recomputes one chunk's logits at a time. Peak logits memory is
one chunk (chunk_tokens x vocabulary in fp32, a few copies) instead of every position of the batch.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint


def logprob_temperature(sampling_temperature: float) -> float:
    """The temperature the learner's log-probs use for samples drawn at `sampling_temperature`: the same,
    except greedy decoding (0), whose log-probs vLLM reports from the raw logits (temperature 1).

    Top-p / top-k are not reproduced: the learner's log-probs are of the tempered distribution over the
    whole vocabulary (as OpenRLHF, verl and TRL compute them), while vLLM's `processed_logprobs` are
    renormalised over the kept tokens, so with top_p < 1 a sampled token's engine log-prob exceeds the
    learner's by log(1 / kept probability mass) (docs/cluster.md, "Sampling distribution")."""
    return sampling_temperature if sampling_temperature > 0 else 1.0


class PolicyModel(torch.nn.Module):
    """A transformers causal LM with a `model` body and an `lm_head` (Qwen2, Llama, Mistral, ...).

    Its children are the LM's own two, under the LM's own names: the parameter names, the state dict
    (DeepSpeed checkpoints, cluster/export.py) and the weights streamed to vLLM are the LM's. The LM
    itself stays reachable as `.lm` (not a child) for `save_pretrained` and its config.

    `same_chunk_count`: under ZeRO-3 every call of the head gathers its weight collectively, so all ranks
    must run the same number of chunks; the rank's DeepSpeed worker sets it to a max over the ranks.
    """

    def __init__(self, lm: Any, chunk_tokens: int) -> None:
        super().__init__()
        if not (hasattr(lm, "model") and hasattr(lm, "lm_head")):
            raise TypeError(f"{type(lm).__name__}: the learner needs a causal LM with `model` and `lm_head` "
                            "(the layout of Qwen2, Llama, Mistral)")
        self.model, self.lm_head = lm.model, lm.lm_head
        self.__dict__["lm"] = lm  # not registered: its parameters are the two children's
        self.chunk_tokens = chunk_tokens
        self.same_chunk_count: Callable[[int], int] | None = None

    @property
    def config(self) -> Any:
        return self.lm.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                cols: torch.Tensor, targets: torch.Tensor, entropy: str | None = None, temperature: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs (fp32) of `targets` [N] predicted at positions (`rows`, `cols`) of the batch, and the
        next-token entropy there when asked ("grad": differentiable, for the entropy bonus; "detached";
        None: not computed), both of the distribution softmax(logits / `temperature`): the one the rollout
        engine samples from at that temperature (and reports log-probs of: rollout/vllm_compat/engine.py)."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        picked = hidden[rows, cols]  # [N, H]: only these positions reach the head
        count = max(1, -(-len(picked) // self.chunk_tokens))
        if self.same_chunk_count is not None:
            count = self.same_chunk_count(count)
        bounds = [len(picked) * k // count for k in range(count + 1)]
        logprobs, entropies = [], []
        for lo, hi in zip(bounds, bounds[1:]):
            args = (picked[lo:hi], targets[lo:hi], entropy, temperature)
            out = checkpoint(self._head, *args, use_reentrant=False) if torch.is_grad_enabled() else self._head(*args)
            logprobs.append(out[0])
            entropies.append(out[1])
        return torch.cat(logprobs), (torch.cat(entropies) if entropy else None)

    def _head(self, hidden: torch.Tensor, targets: torch.Tensor, entropy: str | None, temperature: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.lm_head(hidden).float()
        if temperature != 1.0:
            logits = logits / temperature
        logp = torch.log_softmax(logits, dim=-1)
        token = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        if entropy is None:
            return token, token.new_zeros(0)
        with torch.set_grad_enabled(torch.is_grad_enabled() and entropy == "grad"):
            ent = -(logp.exp() * logp).sum(-1)
        return token, ent
