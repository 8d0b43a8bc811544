"""The embedded synthetic task: two-digit addition with a short worked solution and a boxed answer.

The project makes its own data because nothing can be downloaded here. Supervised warm-up data
ends with `\\boxed{...}` only some of the time (otherwise "The answer is N."), so the warmed-up base
model is right in substance but boxes only sometimes: the reward (boxed and correct) then has
something real to teach, as in R1-Zero, where the format is learned first.
Train and held-out problems are disjoint: the split is a fixed function of the operands.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

PROMPT_TEMPLATE = "Question: What is {a} + {b}?\nAnswer:"


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(a=self.a, b=self.b)

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    def solution(self, boxed: bool) -> str:
        """A worked solution: ones column, tens column with carry, then the final answer."""
        ones = self.a % 10 + self.b % 10
        carry = ones // 10
        tens = self.a // 10 + self.b // 10 + carry
        steps = f" {self.a % 10}+{self.b % 10}={ones}."
        steps += f" {self.a // 10}+{self.b // 10}+{carry}={tens}."
        final = f" So \\boxed{{{self.answer}}}." if boxed else f" The answer is {self.answer}."
        return steps + final


def is_held_out(p: Problem) -> bool:
    return (p.a * 31 + p.b * 17) % 5 == 0


def all_problems(held_out: bool, low: int = 10, high: int = 99) -> list[Problem]:
    return [Problem(a, b) for a in range(low, high + 1) for b in range(low, high + 1)
            if is_held_out(Problem(a, b)) == held_out]


def sample_problems(n: int, seed: int, held_out: bool) -> list[Problem]:
    pool = all_problems(held_out)
    return random.Random(seed).sample(pool, min(n, len(pool)))


def sft_texts(n: int, seed: int, boxed_fraction: float) -> list[tuple[str, str]]:
    """(prompt, response) pairs for the supervised warm-up, from the training split only."""
    rng = random.Random(seed)
    pool = all_problems(held_out=False)
    return [(p.prompt, p.solution(boxed=rng.random() < boxed_fraction)) for p in (rng.choice(pool) for _ in range(n))]


def tokenizer_corpus() -> list[str]:
    """Text that covers every token the task uses, for training the tiny BPE tokenizer."""
    pool = all_problems(held_out=False)[::7]
    return [p.prompt + p.solution(boxed=i % 2 == 0) for i, p in enumerate(pool)]
