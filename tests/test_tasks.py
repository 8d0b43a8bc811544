"""The embedded task (tasks/column_addition.py) and the warm-up built from it (cluster/toy/base_model.py):
pure Python, no Ray. The grader checks the teacher's answers, so a wrong generator cannot pass."""
from __future__ import annotations

import random
import re

import pytest

from cluster.config import load_config
from reward.extract import last_boxed
from reward.scoring import judge
from tasks import TASKS, column_addition as task
from tests.conftest import ROOT


def test_held_out_and_training_problems_are_disjoint():
    train = set(task.sample_problems(5000, seed=0, held_out=False))
    held = set(task.sample_problems(1000, seed=12345, held_out=True))
    assert len(train) == 5000 and len(held) == 1000 and not train & held
    assert all(task.is_held_out(p) for p in held) and not any(task.is_held_out(p) for p in train)


def test_teacher_solutions_add_up_column_by_column():
    """Each column sum in the worked solution is right, and the boxed answer (graded) is the sum."""
    rng = random.Random(0)
    for p in task.sample_problems(300, seed=3, held_out=False):
        for text in (p.worked(), p.worked(rng), p.direct()):
            assert judge(text, p.answer).correct, text
        steps = re.findall(r"([\d+]+)=(\d+)\.(?! Wait)", p.worked())
        assert len(steps) == task.DIGITS
        assert all(sum(map(int, lhs.split("+"))) == int(total) for lhs, total in steps)


def test_a_self_check_corrects_a_wrong_column_sum():
    p = task.Problem((457, 385))
    text = p.worked(random.Random(1))
    wrong, right = re.search(r"(\d[\d+]*=\d+)\. Wait, let me check: (\d[\d+]*=\d+)\.", text).groups()
    assert wrong != right and wrong.split("=")[0] == right.split("=")[0] == "7+5"
    assert right == "7+5=12" and last_boxed(text) == "842"


@pytest.mark.parametrize("text, worked", [
    (" 7+5=12. 5+8+1=14. 4+3+1=8. So \\boxed{842}.", True), (" 7 + 5 = 12, so \\boxed{842}.", True),
    (" \\boxed{842}.", False), (" 457+385", False), (" The answer is 842 = 842.", False),
    # restating the whole sum is not column work, nor is a wrong column sum
    (" 457+385=842. So \\boxed{842}.", False), (" 1+1=3. So \\boxed{3}.", False), (" 7+5=11. So \\boxed{841}.", False),
    (" 57+85=142.", False), (" 7+85=92.", False), (" 7+5=12.5", False), (" 3+4=70", False),
    # a slip caught and corrected still works the column out; the carry is a term like the digits
    (" 7+5=11. Wait, let me check: 7+5=12. So \\boxed{842}.", True), (" 4+3+1=8.", True)])
def test_what_counts_as_worked(text, worked):
    assert task.is_worked(text) is worked


def test_rephrased_questions_keep_the_numbers_but_not_the_wording():
    p = task.Problem((457, 385))
    assert "457" in p.rephrased and "385" in p.rephrased and p.rephrased != p.prompt and "+" not in p.rephrased


def test_warmup_stages_box_every_answer_and_end_mostly_direct():
    """The skill stage is mostly worked, the habit stage (the last habit_steps) mostly direct; all boxed."""
    from cluster.toy.base_model import warmup_pairs

    cfg = load_config(None, ["model.warmup.steps=100", "model.warmup.habit_steps=40", "model.warmup.batch_size=50"])
    pairs = warmup_pairs(cfg)
    assert len(pairs) == 100 * 50
    skill, habit = pairs[: 60 * 50], pairs[60 * 50:]
    share = lambda ps: sum(task.is_worked(r) for _, r in ps) / len(ps)  # noqa: E731
    assert share(skill) == pytest.approx(0.8, abs=0.03) and share(habit) == pytest.approx(0.2, abs=0.03)
    checks = [r for _, r in pairs if "Wait" in r]
    assert len(checks) / sum(task.is_worked(r) for _, r in pairs) == pytest.approx(0.1, abs=0.03)
    assert all(last_boxed(r) is not None for _, r in pairs)


def test_the_base_model_cache_key_follows_the_task(monkeypatch):
    from cluster.toy.base_model import cache_key

    cfg = load_config(None, [])
    key = cache_key(cfg)
    assert cache_key(load_config(None, ["model.warmup.worked_fraction=0.3"])) != key
    monkeypatch.setattr(TASKS["column_addition"], "VERSION", task.VERSION + 1)
    assert cache_key(cfg) != key


def test_the_base_model_is_built_the_same_whatever_dtype_and_token_budget_the_run_uses():
    """The cache key leaves out the run's dtype and micro-batching, so the build must not depend on them:
    configs/tiny.yaml's bf16 (auto) and token-budget run builds the fp32, counted-micro-batch model."""
    from cluster.toy.base_model import cache_key, fixed_build

    run = load_config(str(ROOT / "configs" / "tiny.yaml"), ["model.dtype=bfloat16", "learner.max_tokens_per_micro_batch=2048"])
    plain = load_config(str(ROOT / "configs" / "tiny.yaml"), ["model.dtype=float32", "learner.max_tokens_per_micro_batch=null"])
    assert cache_key(run) == cache_key(plain)
    assert fixed_build(run).model_dump() == fixed_build(plain).model_dump() == plain.model_dump()



def test_a_recheck_answers_directly_then_works_the_sum_out_and_the_last_box_counts():
    """`Problem.rechecked`: a boxed guess (wrong about half the time, one digit off), "Wait, let me check:",
    the teacher's worked columns and the right answer boxed last: the grader scores it correct, the
    reflection pattern sees the check, and it counts as worked."""
    from cluster.infra.metrics import reflects

    rng, wrong_guesses = random.Random(5), 0
    problems = task.sample_problems(400, seed=4, held_out=False)
    for p in problems:
        text = p.rechecked(rng)
        guess = re.match(r" \\boxed\{(\d+)\}\. Wait, let me check: ", text).group(1)
        assert len(guess) == len(p.answer) and not guess.startswith("0")
        assert sum(a != b for a, b in zip(guess, p.answer)) <= 1
        wrong_guesses += guess != p.answer
        assert judge(text, p.answer).correct and reflects(text) and task.is_worked(text)
        assert text.endswith(p.worked())
    assert 0.4 < wrong_guesses / len(problems) < 0.6


def test_warmup_rechecks_and_rephrased_prompts_come_in_their_shares():
    """recheck_fraction is a share of the direct answers, rephrased_fraction of all prompts; a habit stage
    with worked_fraction 0 starts no answer worked (configs/tiny_reflect.yaml's base model)."""
    pairs = task.warmup_pairs(4000, 2000, worked_fraction=0.0, self_check_fraction=0.1, recheck_fraction=0.05,
                              rephrased_fraction=0.2)
    rechecks = [r for _, r in pairs if "Wait, let me check:" in r]
    assert len(rechecks) / len(pairs) == pytest.approx(0.05, abs=0.012)
    assert all(r.startswith(" \\boxed{") for _, r in pairs)  # nothing starts worked
    rephrased = [p for p, _ in pairs if p.startswith("Question: Add")]
    assert len(rephrased) / len(pairs) == pytest.approx(0.2, abs=0.025)
    plain = task.warmup_pairs(4000, 2000, worked_fraction=0.0, self_check_fraction=0.1, recheck_fraction=0.0,
                              rephrased_fraction=0.0)
    assert not any("Wait" in r or p.startswith("Question: Add") for p, r in plain)
