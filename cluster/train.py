"""CLI: python -m cluster.train --config configs/<name>.yaml [section.key=value ...]

Resume: `python -m cluster.train --run-dir runs/<run> --resume [train.steps=N]` continues from the
newest checkpoint (the config defaults to the run's config.yaml; only fields that do not change
training may differ). A --run-dir that already holds checkpoints resumes without --resume.

Runs locally (a private Ray), against a `ray start` cluster (cluster.address or RAY_ADDRESS), and
under `ray job submit --working-dir . -- python -m cluster.train ...`. Relative model and output
paths resolve against the current directory locally and under the shared directory on a cluster
(cluster/infra/paths.py: cluster.shared_dir, $REASONRL_SHARED_DIR, ~/reasonrl on a one-node cluster).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cluster.config import Config, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file in configs/")
    parser.add_argument("--run-dir", help="output directory (default: <run.output_dir>/<run.name>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its newest checkpoint")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. learner.lr=1e-6")
    args = parser.parse_args(argv)
    if args.resume and not args.run_dir:
        parser.error("--resume needs --run-dir")
    from cluster.infra.checkpoint import Checkpoints, ResumeError
    from cluster.infra.paths import Resolver, SharedPathError

    try:
        cfg = planned(load_config(args.config, args.overrides), strict=False)
        if cfg.cluster.device == "gpu" and (problem := preflight(cfg) or memory_problem(cfg, remote=True)):
            print(f"error: {problem}", file=sys.stderr)  # GPU count (local run), then memory: before connecting
            return 3
        resolver = Resolver(cfg, attach(cfg))  # where relative paths go (cluster/infra/paths.py)
        run_dir = resolver.run_dir(args.run_dir)
        resume = args.resume or bool(run_dir and Checkpoints(run_dir, 1).latest())
        if not args.config and resume and (run_dir / "config.yaml").is_file():
            cfg = planned(load_config(str(run_dir / "config.yaml"), args.overrides), strict=False)
        cfg, run_dir = resolver.config(cfg, run_dir)
    except (ConfigError, SharedPathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if resolver.nodes is not None:
        print(f"run directory: {run_dir} (relative paths resolve under {resolver.base}: {resolver.why})")
    if (problem := preflight(cfg)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 3
    if (problem := bad_input(cfg)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from cluster.planning.token_budget import auto_groups

    try:  # an `auto` budget the first pass could not plan, now that the inputs are checked
        cfg = planned(cfg) if auto_groups(cfg) else cfg
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if resolver.nodes is None and cfg.cluster.device == "cpu":
        cfg, problem = host_memory(cfg)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 3
    from cluster.infra.checkpoint import CheckpointError
    from cluster.loop.data import DataError
    from cluster.loop.generation import GenerationError
    from cluster.handles.actor_group import ActorFailure
    from cluster.infra.placement_group import PlacementError
    from cluster.loop.trainer import Trainer

    try:
        trainer = Trainer(cfg, run_dir, resume=resume)
    except ResumeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        summary = trainer.run()
    except DataError as err:  # prompt lengths, when the tokenizer only exists once the base model is built
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (PlacementError, SharedPathError) as err:  # against a cluster: only known once connected
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (ActorFailure, CheckpointError, GenerationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    print(json.dumps(summary, indent=2))
    print(f"run directory: {run_dir}")
    return 0


def planned(cfg: Config, strict: bool = True) -> Config:
    """`cfg` with its `auto` token budgets resolved by the memory plan (cluster/planning/token_budget.py; on
    CPU this machine's memory, which for a run against a cluster stands in for every node's), printing what
    `auto` chose there and for model.dtype. Not `strict`: a plan that cannot be made yet (no model at
    model.path, a KV cache that holds no sequence) leaves `auto` for the input checks to name the cause."""
    from cluster.planning.token_budget import resolve_token_budget
    from rollout.kv_cache import KVCacheError

    try:
        cfg, chosen = resolve_token_budget(cfg)
    except (FileNotFoundError, KVCacheError) as err:  # no architecture, or no KV cache, to plan with here
        if not strict:
            return cfg
        raise ConfigError(f"max_tokens_per_micro_batch=auto cannot be planned on this machine ({err}): "
                          "set a number of tokens instead") from None
    for note in (cfg.model.dtype_note, chosen):
        if note:
            print(note, flush=True)
    return cfg


def attach(cfg: Config) -> int | None:
    """Against a Ray cluster: connect now (nothing starts yet) and return its alive nodes; None for a local run."""
    from cluster.infra.paths import against_cluster, alive_nodes
    from cluster.infra.placement_group import connect

    if not against_cluster(cfg):
        return None
    print(f"ray: {connect(cfg)}")
    return alive_nodes()


def bad_input(cfg: Config) -> str | None:
    """What is wrong with the model or data the config names, found before anything starts (None:
    nothing). Rows without problem/answer, prompts too long for the context and (reward.kind=code, local
    runs) a machine with no working sandbox are refused here;
    the prompt lengths need a tokenizer: model.path's, or the tiny base model's once it is cached."""
    from cluster.toy.base_model import tiny_model_dir
    from cluster.loop.data import DataError, check_data
    from cluster.infra.paths import against_cluster
    from cluster.infra.wandb_log import WandbError, check_wandb
    from reward.custom import CustomFnError, load_custom_fn

    try:
        check_wandb(cfg)
        if cfg.reward.custom_fn:
            load_custom_fn(cfg.reward.custom_fn)
    except (WandbError, CustomFnError) as err:
        return str(err)
    remote = against_cluster(cfg)
    if cfg.model.path and not remote and not (Path(cfg.model.path) / "config.json").is_file():
        return f"model.path: no Hugging Face model (config.json) in {cfg.model.path}"
    if cfg.reward.kind == "code" and not remote:  # no sandbox here: refuse now, naming what is missing
        from reward.sandbox import SandboxUnavailable, resolve

        try:
            resolve(cfg.reward.code.isolation)
        except SandboxUnavailable as err:
            return str(err)
    if (problem := context_problem(cfg, remote)) is not None:
        return problem
    model_dir = Path(cfg.model.path or tiny_model_dir(cfg))
    try:
        check_data(cfg, str(model_dir) if (model_dir / "tokenizer_config.json").is_file() else None)
    except DataError as err:
        return str(err)
    return None


def context_problem(cfg: Config, remote: bool) -> str | None:
    """rollout.max_model_len beyond the model's positions: vLLM would refuse it at engine start."""
    if cfg.model.path:
        config_json = Path(cfg.model.path) / "config.json"
        if remote or not config_json.is_file():
            return None
        positions = json.loads(config_json.read_text()).get("max_position_embeddings")
        where = f"the model's max_position_embeddings ({config_json})"
    else:
        positions, where = cfg.model.tiny.max_position_embeddings, "model.tiny.max_position_embeddings"
    if positions and cfg.rollout.max_model_len > positions:
        return (f"rollout.max_model_len={cfg.rollout.max_model_len} exceeds {where}={positions}: lower it, "
                f"or build the tiny model with more positions")
    return None


def host_memory(cfg: Config) -> tuple[Config, str | None]:
    """A local CPU run's processes against this machine's memory (cluster/planning/host_memory.py): the config to
    run (with a token budget per micro-batch when the sequence count would not fit) or why it cannot."""
    import psutil

    from cluster.planning.host_memory import plan_host_memory
    from rollout.kv_cache import KVCacheError

    memory = psutil.virtual_memory()
    try:
        plan = plan_host_memory(cfg, memory.total, memory.available)
    except KVCacheError as err:
        return cfg, str(err)
    except FileNotFoundError as err:  # model.path names a model this machine does not have (refused earlier)
        print(f"warning: host memory not checked before start: {err}", file=sys.stderr)
        return cfg, None
    if plan.note:
        print(plan.note, flush=True)
    return plan.cfg, plan.problem


def preflight(cfg: Config) -> str | None:
    """What makes the run impossible on this machine, found before anything starts (None: nothing).

    Only a local run is checked here: against a cluster, placement names what is missing."""
    from cluster.infra.paths import against_cluster
    from cluster.infra.placement_group import required_resources

    remote = against_cluster(cfg)
    if cfg.cluster.device == "gpu" and not remote:
        import torch

        need, have = int(required_resources(cfg)["GPU"]), torch.cuda.device_count()
        if have < need:
            count = ("learner.num_ranks, each GPU shared with an engine worker" if cfg.cluster.colocate else
                     "rollout.num_workers x rollout.tensor_parallel_size + learner.num_ranks")
            return (f"this config needs {need} GPUs ({count} + critic.num_ranks with algorithm.advantage=gae); "
                    f"the cluster has {have}. Run it on a GPU machine or a Ray cluster "
                    f"(cluster.address=...), or lower those settings")
    custom = sorted(set(required_resources(cfg)) - {"CPU", "GPU"})
    if custom and not remote:
        return (f"this config asks for the Ray resources {', '.join(custom)} (rollout/learner/reward.resources); "
                f"a private local Ray has none: run it against a cluster that has them (cluster.address=...)")
    # GPU configs had their memory checked before connecting (main); CPU ones depend on this machine.
    return None if cfg.cluster.device == "gpu" else memory_problem(cfg, remote=bool(remote))


def memory_problem(cfg: Config, remote: bool) -> str | None:
    """GPU: a learner rank or engine predicted not to fit cluster.gpu_memory_gib (cluster/planning/memory_model.py).
    CPU, local: a KV cache that cannot hold one sequence or exceeds this machine's memory."""
    from cluster.planning import memory_model
    from rollout.kv_cache import KVCacheError

    if cfg.cluster.device == "cpu" and remote:  # the engines' nodes decide (rollout/worker.py checks there)
        return None
    from cluster.planning.host_memory import with_token_budget
    from cluster.planning.token_budget import auto_groups

    if auto_groups(cfg):  # `auto` not plannable yet (planned): check the rest with the smallest legal budget
        smallest = cfg.rollout.max_model_len
        cfg = with_token_budget(cfg, {"learner": smallest, "critic": smallest})
    try:
        return memory_model.does_not_fit(cfg) if cfg.cluster.device == "gpu" else (memory_model.predict(cfg) and None)
    except KVCacheError as err:
        return str(err)
    except FileNotFoundError as err:  # model.path only on the cluster, with an architecture we do not know
        print(f"warning: memory not checked before start: {err}", file=sys.stderr)
        return None


if __name__ == "__main__":
    sys.exit(main())
