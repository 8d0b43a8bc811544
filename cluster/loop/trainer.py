"""The RL loop: sample -> generate -> score -> the step's TrainBatch (old log-probs, advantages) -> update
-> weight sync, synchronous or with asynchronous rollouts (train.max_staleness > 0: cluster/loop/pipeline.py
generates ahead while the learner trains)."""
from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from cluster.infra import checkpoint, faults, paths
from cluster.toy.base_model import resolve_model
from cluster.config import Config, dump_config
from cluster.loop.data import PromptSource, load_problems, worked_predicate
from cluster.infra.hf_export import copy_tokenizer
from cluster.loop.heldout import EVAL_SEED, held_out_metrics
from cluster.loop.generation import GenerationError, ScoredBatch
from cluster.handles.actor_group import ActorFailure
from cluster.handles.groups import CriticGroup, LearnerGroup, RewardPool
from cluster.infra.metrics import (MetricsLog, PhaseTimer, boxed_rate, mean, plot_emergence, plot_run, read_metrics,
                             reflects)
from cluster.loop.dynamic import overlong_metrics
from cluster.loop.parity import ParityCheck
from cluster.handles.rollout_group import RolloutGroup
from cluster.loop.pipeline import RolloutPipeline, check_staleness, split_stale, staleness_metrics, step_seed
from cluster.infra.placement_group import connect, place
from cluster.planning.token_budget import resolve_token_budget
from cluster.loop.sync import WeightSync
from cluster.infra.wandb_log import WandbSink
from cluster.loop.update import PolicyUpdate
from protocol.batch import ScoredSample


Guard = AbstractContextManager[None]  # a context a failure of the step passes through
# summary.json's emergence figures, as eval_<name>_start / eval_<name>_end (None where a run lacks them)
EMERGENCE_SUMMARY = (("boxed_rate", "boxed_rate"), ("response_tokens", "response_len"), ("worked_frac", "worked_frac"),
                     ("reflection_frac", "reflection_frac"), ("accuracy_self_checked", "accuracy_self_checked"),
                     ("accuracy_not_self_checked", "accuracy_not_self_checked"))


@dataclass(frozen=True)
class RunPlan:
    """What varies between runs of the one loop, `Trainer.run`; the defaults are the main command's
    (`python -m cluster.train`). `cluster.compare` runs each method as a plan: its own step source, the
    rephrased held-out evaluation beside the held-out one, its figures as the result, no checkpoints."""

    label: str = "RL"  # the progress bar's
    prepare: Callable[[Trainer], None] | None = None  # after Trainer.setup: what the step and evaluations need
    step: Callable[[int], dict[str, float]] | None = None  # one step's update and its metrics; None: Trainer.step
    evaluations: tuple[Callable[[int], dict[str, float]], ...] = ()  # at step 0 and after the last step, after eval/*
    # the run's result from the first and the last held-out evaluation; None: Trainer.finish
    finish: Callable[[dict[str, float], dict[str, float]], dict[str, Any]] | None = None
    # checkpoints (train.save_every, the last step, a generation failure at an evaluation), the step numbers a
    # failure names with its checkpoint, benchmarks and the progress line; False: train and evaluate only
    checkpointed: bool = True


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False) -> None:
        """`resume`: continue from the newest checkpoint in `run_dir` (ResumeError if there is none,
        or if the config differs from the checkpoint's in a field that changes training). An `auto` token
        budget still in `cfg` (a config that did not come through cluster.train) is planned here."""
        cfg, chosen = resolve_token_budget(cfg)
        if chosen:
            print(chosen, flush=True)
        self.cfg, self.run_dir = cfg, run_dir
        self.checkpoints = checkpoint.Checkpoints(run_dir, cfg.train.keep_checkpoints, cfg.train.max_checkpoint_failures)
        self.resume_from, self.resume_state = None, None
        if resume:
            self.resume_from = self.checkpoints.latest()
            if self.resume_from is None:
                raise checkpoint.ResumeError(f"--resume: no finished checkpoint in {self.checkpoints.root}")
            self.resume_state = checkpoint.check_resume(self.resume_from, cfg)
            self.checkpoints.clean_partial()
            checkpoint.truncate_to(run_dir / "metrics.jsonl", self.resume_state.metrics_bytes)
            checkpoint.truncate_to(run_dir / "samples.jsonl", self.resume_state.samples_bytes)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.token_file, self.token = paths.write_token(run_dir)  # nodes and ranks prove they see run_dir
        dump_config(cfg, run_dir / "config.yaml")
        first_step = self.resume_state.step + 1 if self.resume_state else None
        sinks = [WandbSink(cfg, run_dir, first_step or 0)] if cfg.logging.wandb else []
        self.log = MetricsLog(run_dir, purge_step=first_step, sinks=sinks)
        self.started = time.perf_counter()
        self.grader: RewardPool | None = None  # grader-only reward pool for benchmarks, made on first use
        self.worked = worked_predicate(cfg)  # the embedded task's "worked out" test (None for file data)
        self.dropped_stale = 0  # samples left out as too stale, this driver's total (async/dropped_stale_total)
        self.lost_in_flight = 0  # samples in flight at the checkpoint a resume starts from (generated again)

    def setup(self) -> None:
        from transformers import AutoTokenizer

        cfg = self.cfg
        if (where := connect(cfg)) != "existing":
            print(f"ray: {where}")
        self.placement = place(cfg)
        print(self.placement.describe())
        paths.check_nodes(cfg, self.placement, self.token_file, self.token)  # other nodes see the run's files
        self.model_path = resolve_model(cfg, self.placement)
        self.tokenizer = tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        train, held_out = load_problems(cfg)
        max_prompt = cfg.rollout.max_model_len - cfg.rollout.max_new_tokens
        drop = cfg.data.drop_long_prompts
        self.train_data = PromptSource(train, tokenizer, max_prompt, cfg.train.seed, drop)
        self.eval_prompts = PromptSource(held_out, tokenizer, max_prompt, cfg.train.seed, drop, "held-out").all()
        self.rollouts = RolloutGroup(cfg, self.model_path, self.placement)
        self.learners = LearnerGroup(cfg, self.model_path, self.placement)
        paths.check_learners(self.learners, self.token_file, self.token)
        self.critic = CriticGroup(cfg, self.model_path, self.placement) if cfg.algorithm.advantage == "gae" else None
        self.update = PolicyUpdate(cfg, self.learners, self.critic)
        self.rewards = RewardPool(cfg, self.placement)
        self.sync = WeightSync(cfg, self.learners, self.rollouts)
        self.pipeline = RolloutPipeline(cfg, self.rollouts, self.rewards, self.train_data, self.sync.resync)
        self.parity = ParityCheck(cfg, self.learners, self.rollouts, self.eval_prompts, self.sync.resync)
        self.parity.prepare()  # the fixed batch, from the base weights (the same for a resumed run)
        print(f"model: {self.model_path} ({self.learners.num_params / 1e6:.1f}M parameters), "
              f"{len(train)} train / {len(self.eval_prompts)} held-out problems, weight sync: {self.sync.transport}")

    def step(self, step: int) -> dict[str, float]:
        """One policy step: take the step's scored batch (generated ahead when train.max_staleness > 0),
        build its TrainBatch (old log-probs, values, advantages), update, and sync the new weights."""
        cfg, timer, k = self.cfg, PhaseTimer(), self.cfg.train.max_staleness
        with timer("wait_rollout"), self.checkpoint_if_generation_fails(step):
            prompts, rollout = self.pipeline.take(step)  # first submits steps step..step+k, before this step's sync
            self.rollouts.sleep()  # cluster.colocate: free the GPUs for the learner; the sync wakes the engines
        samples, dropped = split_stale(rollout.samples, self.sync.version, k, cfg.rollout.samples_per_prompt)
        check_staleness(samples, self.sync.version, k)
        self.dropped_stale += dropped
        async_metrics = {**staleness_metrics(samples, self.sync.version, k), "async/dropped_stale": float(dropped),
                         "async/dropped_stale_total": float(self.dropped_stale), **self._regenerated_after_resume()}
        seed = step_seed(cfg.train.seed, step)  # the mini-batch shuffle: a pure function of the step
        batch, batch_metrics = self.update.build(samples, seed, timer)
        with timer("train"):
            train_metrics = self.update.train(batch, seed, step)
        with timer("sync"):
            sync_metrics = self.sync.sync()
        with timer("parity"):  # time/parity_s: the check after the sync (cluster/loop/parity.py)
            sync_metrics.update(self.parity.check(self.sync.version))
        self.log.samples(step, samples, {p.index: p.answer for p in prompts}, cfg.train.samples_to_save, self.worked)
        return {**self._sample_metrics(samples, rollout), **batch_metrics, **train_metrics, **sync_metrics,
                **async_metrics, **rollout.metrics, **overlong_metrics(samples, cfg), **timer.seconds,
                **self._role_times(rollout, timer, sync_metrics)}

    def _regenerated_after_resume(self) -> dict[str, float]:
        """Once, at the first step after a resume with train.max_staleness > 0: the samples of the batches
        that were in flight at the checkpoint, lost with the old driver and generated again."""
        lost, self.lost_in_flight = self.lost_in_flight, 0
        return {"async/regenerated_after_resume": float(lost)} if lost else {}

    def _role_times(self, rollout: ScoredBatch, timer: PhaseTimer, sync: dict[str, float]) -> dict[str, float]:
        """Busy and idle seconds of each role in this step. Rollout: its engines' generation of the batch
        consumed in this step (whenever it ran) + the weight load, as timed in the engine; learner: its
        forward passes for the batch, the update + its weight export, as timed in the learner."""
        t = timer.seconds
        step_s = sum(t.values())
        engine_s = sum(rollout.engine_s) / max(len(rollout.engine_s), 1)
        rollout_busy = engine_s + sync["sync/load_s"]
        learner_busy = t["time/logprobs_s"] + t["time/train_s"] + sync["sync/export_s"]
        return {"time/step_s": step_s, "time/generate_s": engine_s, "time/rollout_wall_s": rollout.wall_s,
                "time/rollout_busy_s": rollout_busy, "time/learner_busy_s": learner_busy,
                "time/rollout_idle_s": max(0.0, step_s - rollout_busy),
                "time/learner_idle_s": max(0.0, step_s - learner_busy),
                "perf/gen_tokens_per_s": self._generated_tokens(rollout) / max(engine_s, 1e-9),
                "perf/samples_per_s": len(rollout.samples) / max(step_s, 1e-9)}

    @staticmethod
    def _generated_tokens(rollout: ScoredBatch) -> float:
        """Every token the engines generated for the batch: with dynamic sampling, its dropped groups too."""
        return rollout.metrics.get("dynamic/generated_tokens", sum(len(s.response_ids) for s in rollout.samples))

    def _sample_metrics(self, samples: list[ScoredSample], rollout: ScoredBatch) -> dict[str, float]:
        counts = rollout.counts
        groups = [samples[i: i + self.cfg.rollout.samples_per_prompt]
                  for i in range(0, len(samples), self.cfg.rollout.samples_per_prompt)]
        worked = {"train/worked_frac": mean([self.worked(s.text) for s in samples])} if self.worked else {}
        return {
            **worked,
            "reward/mean": mean([s.reward for s in samples]),
            "train/accuracy": mean([s.correct for s in samples]),
            "train/boxed_rate": boxed_rate(counts, len(samples)),
            "train/response_len": mean([len(s.response_ids) for s in samples]),
            "train/reflection_frac": mean([reflects(s.text) for s in samples]),
            "train/truncated_frac": mean([s.truncated for s in samples]),
            "train/solved_none_frac": mean([all(s.reward == 0 for s in g) for g in groups]),
            "train/solved_all_frac": mean([all(s.reward > 0 for s in g) for g in groups]),
            "reward/timeouts": counts["timeouts"],
            "reward/errors": counts["errors"],
            "reward/restarts": counts["restarts"],
            "rollout/restarts": float(rollout.restarts),
            "rollout/reissued_prompts": float(rollout.reissued),
            "rollout/regenerated_samples": float(rollout.reissued * self.cfg.rollout.samples_per_prompt),
            **({"rollout/restart_causes": rollout.restart_causes} if rollout.restart_causes else {}),
        }

    def evaluate(self, step: int) -> dict[str, float]:
        t = time.perf_counter()
        metrics = held_out_metrics(self.rollouts, self.rewards, self.eval_prompts, self.cfg.train.eval_samples,
                                   self.cfg.rollout.temperature, seed=EVAL_SEED, resync=self.sync.resync, worked=self.worked)
        metrics["time/eval_s"] = time.perf_counter() - t
        self.log.log(step, metrics)
        return metrics

    def benchmark(self, step: int) -> dict[str, float]:
        """train.benchmarks (cluster/loop/benchmark_suite.py) on the live engines, scored by the grader alone."""
        from cluster.loop import benchmark_suite as bench

        t, r = self.cfg.train, self.cfg.rollout
        if self.grader is None:
            self.grader = RewardPool(self.cfg.model_copy(update={"reward": self.cfg.reward.model_copy(
                update={"custom_fn": None})}))
        results = bench.run_benchmarks(t.benchmarks, self.rollouts, self.grader, self.tokenizer, self.cfg.data.template,
                                       r.max_model_len - r.max_new_tokens, Path(t.benchmark_dir) if t.benchmark_dir else None,
                                       t.eval_samples, r.temperature, [1, t.eval_samples], t.benchmark_limit, seed=EVAL_SEED)
        metrics = bench.metrics_of(results)
        self.log.log(step, metrics)
        return metrics

    def run(self, plan: RunPlan = RunPlan()) -> dict[str, Any]:
        """train.steps steps of `plan.step` (the RL step by default) with the held-out evaluation every
        train.eval_every steps and after the last; `plan.finish`'s result (by default summary.json's)."""
        cfg, saving = self.cfg, plan.checkpointed
        self.setup()
        if plan.prepare is not None:
            plan.prepare(self)
        take_step = plan.step or self.step
        start, first = self._begin(plan)
        last = first
        bar = tqdm(range(start, cfg.train.steps), desc=plan.label, unit="step", initial=start, total=cfg.train.steps)
        for step in bar:
            with self._if(saving, self.stop_naming_the_step, step + 1):
                faults.learner_kill(step + 1, self.learners)
                faults.learner_hang(step + 1, self.learners)
                faults.rollout_kill(step + 1, self.rollouts)
                metrics = take_step(step)
                self.log.log(step + 1, metrics)
                if saving:
                    bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", boxed=f"{metrics['train/boxed_rate']:.2f}",
                                    step_s=f"{metrics['time/step_s']:.1f}")
                if self._every(cfg.train.eval_every, step + 1):
                    with self._if(saving, self.checkpoint_if_generation_fails, step + 1):
                        last = self.evaluate(step + 1)
                if saving and self._every(cfg.train.benchmark_every, step + 1):
                    self.benchmark(step + 1)
                faults.driver_kill(step + 1)
                if saving and (self._every(cfg.train.save_every, step + 1) or step + 1 == cfg.train.steps):
                    self.save_checkpoint(step + 1)
        # The final evaluation comes after the last checkpoint unless it is on the cadence: a resume
        # from that checkpoint then drops its row, as an uninterrupted longer run would not have it.
        if cfg.train.steps and not self._every(cfg.train.eval_every, cfg.train.steps):
            last = self.evaluate(cfg.train.steps)
        for evaluate in plan.evaluations:
            evaluate(cfg.train.steps)
        return (plan.finish or self.finish)(first, last)

    @staticmethod
    def _if(wanted: bool, guard: Callable[[int], Guard], step: int) -> Guard:
        """`guard(step)` (stop_naming_the_step, checkpoint_if_generation_fails) when the plan checkpoints."""
        return guard(step) if wanted else nullcontext()

    @staticmethod
    def _every(period: int, step: int) -> bool:
        return period > 0 and step % period == 0

    def _begin(self, plan: RunPlan) -> tuple[int, dict[str, float]]:
        """(first step to train, the step-0 evaluation): fresh (with the plan's evaluations), or restored
        from a checkpoint."""
        if self.resume_from is None:
            first = self.evaluate(0)
            for evaluate in plan.evaluations:
                evaluate(0)
            if plan.checkpointed:
                if self.cfg.train.benchmark_every:
                    self.benchmark(0)
                print(f"step 0: held-out accuracy {first['eval/accuracy']:.3f} (greedy {first['eval/greedy_accuracy']:.3f})")
            return 0, first
        state = checkpoint.restore(self.resume_from, self.learners, self.critic)
        # One sync puts the restored weights into the engines under the checkpoint's policy version.
        self.sync.version = state.policy_version - 1
        self.sync.sync()
        self.parity.check(self.sync.version)
        r, t = self.cfg.rollout, self.cfg.train
        self.lost_in_flight = min(t.max_staleness, max(0, t.steps - state.step - 1)) * t.prompts_per_step \
            * r.samples_per_prompt
        first = next(r for r in read_metrics(self.run_dir) if r["step"] == 0 and "eval/accuracy" in r)
        print(f"resumed from {self.resume_from} at step {state.step} (policy version {state.policy_version})")
        return state.step, first

    @contextmanager
    def checkpoint_if_generation_fails(self, finished: int) -> Iterator[None]:
        """A rollout failure that stops the run (a worker that fails again, or cannot come back) comes
        while the learners are intact: save the `finished` steps first, unless that is saved already."""
        try:
            yield
        except (ActorFailure, GenerationError) as error:
            learner_lost = isinstance(error, ActorFailure) and str(error.worker).startswith("learner")
            latest = self.checkpoints.latest()
            if finished > 0 and not learner_lost and (latest is None or latest.name != f"step_{finished}"):
                print(f"generation failed; saving the {finished} finished steps before stopping", flush=True)
                self.save_checkpoint(finished)
            raise

    @contextmanager
    def stop_naming_the_step(self, step: int) -> Iterator[None]:
        """A failure or deadline that stops the run while step `step` trains, syncs, evaluates or saves
        (an actor that died, a call past <role>.call_timeout_s, a rank left hanging in a collective past
        <role>.collective_timeout_s, a sync past sync.timeout_s) is re-raised naming the step and the
        checkpoint a resume starts from; its message already names the group and the call in flight.
        A save cut short leaves only its `.partial` directory: the last complete checkpoint stays the one."""
        try:
            yield
        except ActorFailure as error:
            latest = self.checkpoints.latest()
            resume = f"a resume starts from {latest}" if latest else "no complete checkpoint yet: a resume starts over"
            raise type(error)(f"step {step}: {error}; {resume}", error.worker, error.lost) from error

    def save_checkpoint(self, step: int) -> Path | None:
        """The checkpoint written, or None when the write failed and was reported (see save_or_report)."""
        metrics_bytes, samples_bytes = self.log.sizes()
        state = checkpoint.TrainerState(step, self.sync.version, metrics_bytes, samples_bytes, self.model_path)
        return self.checkpoints.save_or_report(step, self.learners, state, self.cfg, self.log, self.critic)

    def finish(self, first: dict[str, float], last: dict[str, float]) -> dict[str, float]:
        final_dir = self.run_dir / "final_model"
        self.learners.save_hf(str(final_dir))
        if not (final_dir / "config.json").is_file():
            raise paths.SharedPathError(f"{self.learners.actor_name(0)} wrote final_model on its node, the driver does not see it in "
                                        f"{final_dir}: the run directory is not shared")
        copy_tokenizer(Path(self.model_path), final_dir)
        summary = {
            "eval_accuracy_start": first["eval/accuracy"], "eval_accuracy_end": last["eval/accuracy"],
            "eval_greedy_accuracy_start": first["eval/greedy_accuracy"],
            "eval_greedy_accuracy_end": last["eval/greedy_accuracy"],
            **{f"eval_{name}_{end}": row.get(f"eval/{key}") for name, key in EMERGENCE_SUMMARY
               for end, row in (("start", first), ("end", last))},
            "steps": self.cfg.train.steps, "wall_seconds": time.perf_counter() - self.started,
            "policy_version": self.sync.version, "final_model": str(final_dir),
            "plot": str(plot_run(self.run_dir)), "emergence_plot": str(plot_emergence(self.run_dir)),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def close(self) -> None:
        self.log.close()
        for name in ("pipeline", "sync", "grader", "rewards", "critic", "learners", "rollouts"):
            part = getattr(self, name, None)
            if part is not None:
                (part.close if name in ("pipeline", "sync") else part.kill)()
        if getattr(self, "placement", None) is not None:
            self.placement.release()
