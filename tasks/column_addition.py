"""The embedded default task: sums of multi-digit numbers, where working column by column is reliable
for the tiny model and answering directly is not.

Why this task: the gain RL should show is in *how* the model answers. A 3.3M-parameter model cannot
add two 3-digit numbers in its head (the leading digits depend on carries it never wrote down), but
one column at a time it only adds two digits and a carry it has just written. The supervised warm-up
(`warmup_pairs`, staged by cluster/toy/base_model.py) leaves the base model answering mostly directly,
sometimes column by column, and rarely with a self-check that catches a slip; every warm-up answer is
boxed, so format is not what RL teaches. Rewarded on the answer alone, RL has to find out that working
the columns pays.

A response is **worked** (`is_worked`, the one definition every metric uses) when it writes at least
one correct column sum: single digits (a column's digits and its carry) joined by `+`, then `=` and
their sum, e.g. `7+5+1=13`. Restating the whole sum (`457+385=842`) or a wrong column (`1+1=3`) is not
working it out. Self-checks ("Wait, let
me check: ...") are counted by `cluster.infra.metrics.REFLECTION`. Train and held-out problems are disjoint:
the split is a fixed function of the operands.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

VERSION = 1  # bump when problems, wording or warm-up text change: part of the base-model cache key
TERMS = 2  # numbers per problem
DIGITS = 3  # digits per number (leading digit non-zero)
PROMPT = "Question: What is {terms}?\nAnswer:"
# The same questions worded differently: accuracy on these measures what a tuned model keeps outside the
# wording it was trained on (cluster/compare.py). No warm-up or training text uses this wording.
REPHRASED = "Question: Add {listed}. What is the total?\nAnswer:"
# Single-digit terms, not part of a longer number on either side, then "=" and the written sum.
COLUMN_SUM = re.compile(r"(?<![\d.])(\d(?:\s*\+\s*\d)+)\s*=\s*(\d+)(?!\d|\.\d)")


def is_worked(text: str) -> bool:
    """Whether a response works the sum out: at least one correct column sum such as `7+5+1=13`."""
    for terms, written in COLUMN_SUM.findall(text):
        if sum(int(d) for d in terms.split("+")) == int(written):
            return True
    return False


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return PROMPT.format(terms=" + ".join(map(str, self.terms)))

    @property
    def rephrased(self) -> str:
        *head, last = map(str, self.terms)
        return REPHRASED.format(listed=", ".join(head) + " and " + last)

    @property
    def answer(self) -> str:
        return str(sum(self.terms))

    def columns(self) -> list[tuple[list[int], int, int]]:
        """Per column, ones first: (the column's digits, the carry in, the column sum)."""
        out, carry = [], 0
        for c in range(max(len(str(t)) for t in self.terms)):
            digits = [t // 10**c % 10 for t in self.terms if t >= 10**c]
            total = sum(digits) + carry
            out.append((digits, carry, total))
            carry = total // 10
        return out

    def worked(self, slip_rng: random.Random | None = None) -> str:
        """The teacher's solution: column by column, ones first, each column's sum written out (a carry
        is the last term), then the boxed answer. With `slip_rng`, one column is first summed wrongly,
        and the response catches and corrects it."""
        cols = self.columns()
        slip = slip_rng.randrange(len(cols)) if slip_rng is not None else -1
        steps = []
        for i, (digits, carry, total) in enumerate(cols):
            lhs = "+".join(map(str, digits + ([carry] if carry else [])))
            if i == slip and slip_rng is not None:
                wrong = total + slip_rng.choice([d for d in (-2, -1, 1, 2) if total + d >= 0])
                steps.append(f"{lhs}={wrong}. Wait, let me check: {lhs}={total}.")
            else:
                steps.append(f"{lhs}={total}.")
        return " " + " ".join(steps) + f" So \\boxed{{{self.answer}}}."

    def direct(self) -> str:
        return f" \\boxed{{{self.answer}}}."

    def rechecked(self, rng: random.Random) -> str:
        """A direct answer that then checks itself: the boxed guess (wrong half the time, one digit off),
        "Wait, let me check:", the columns worked out, and the answer boxed again (the last box counts)."""
        guess = self.answer
        if rng.random() < 0.5:
            i = rng.randrange(len(guess))
            digit = rng.choice([d for d in "0123456789" if d != guess[i] and (i or d != "0" or len(guess) == 1)])
            guess = guess[:i] + digit + guess[i + 1:]
        return f" \\boxed{{{guess}}}. Wait, let me check: {' + '.join(map(str, self.terms))}." + self.worked()


def is_held_out(p: Problem) -> bool:
    return sum(t * m for t, m in zip(p.terms, (31, 17, 13, 7))) % 5 == 0


def sample_problems(n: int, seed: int, held_out: bool) -> list[Problem]:
    """`n` distinct problems of one split, in a fixed order for a given seed."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        p = Problem(tuple(rng.randrange(10 ** (DIGITS - 1), 10**DIGITS) for _ in range(TERMS)))
        if is_held_out(p) == held_out and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def warmup_pairs(n: int, seed: int, *, worked_fraction: float, self_check_fraction: float, recheck_fraction: float,
                 rephrased_fraction: float) -> list[tuple[str, str]]:
    """`n` (prompt, response) pairs for the supervised warm-up, from the training split: a direct boxed
    answer, or (with probability `worked_fraction`) a worked one, of which `self_check_fraction` contain
    a slip that the response catches ("Wait, let me check: ...") and corrects; of the direct answers,
    `recheck_fraction` go on to check themselves by working the columns (`Problem.rechecked`). With
    probability `rephrased_fraction` a pair's prompt uses the rephrased wording. A fraction of 0 draws
    nothing from the random stream, so adding a kind leaves the other pairs as they were."""
    rng = random.Random(seed)
    out = []
    for p in sample_problems(n, seed, held_out=False):
        if rng.random() < worked_fraction:
            response = p.worked(rng if rng.random() < self_check_fraction else None)
        elif recheck_fraction and rng.random() < recheck_fraction:
            response = p.rechecked(rng)
        else:
            response = p.direct()
        out.append((p.rephrased if rephrased_fraction and rng.random() < rephrased_fraction else p.prompt, response))
    return out


def tokenizer_corpus() -> list[str]:
    """Text that covers every token the task uses (both wordings), for training the tiny BPE tokenizer."""
    rng = random.Random(7)
    return [p.prompt + p.worked(rng if i % 3 == 0 else None) + "\n" + p.rephrased + p.direct()
            for i, p in enumerate(sample_problems(400, seed=7, held_out=False))]
