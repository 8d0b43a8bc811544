"""KV-cache sizing (rollout/kv_cache.py) and the memory model (cluster/planning/memory_model.py): pure arithmetic on
model configs, no Ray, vLLM or DeepSpeed. The engine-side checks that vLLM really gets these sizes are in
tests/test_kv_plan.py and tests/test_preemption.py; the CPU learner prediction is checked against measured RSS by
benchmarks/scale.py."""
from __future__ import annotations

import pytest

from cluster import memory

from cluster.planning import memory_model
from cluster.config import load_config
from cluster.train import main as train_main
from rollout.kv_cache import GIB, KVCacheError, kv_bytes_per_token, plan_kv_cache
from tests.conftest import ROOT

QWEN7B = str(ROOT / "configs" / "simplerl_zero_v0_ppo_qwen7b.yaml")  # PPO with a critic, 4024-token sequences
ZOO7B = str(ROOT / "configs" / "simplerl_zoo_grpo_qwen7b.yaml")  # GRPO, 9216-token sequences
NO_CKPT = ["learner.gradient_checkpointing=false"]
SCALE = str(ROOT / "configs" / "cpu_scale.yaml")


def test_kv_bytes_per_token_counts_k_and_v_of_every_layer_and_kv_head():
    qwen7b = memory_model.KNOWN_ARCHITECTURES["Qwen2.5-Math-7B"]
    assert kv_bytes_per_token(qwen7b, "bfloat16") == 2 * 28 * 4 * 128 * 2  # 56 KiB: GQA with 4 KV heads
    assert kv_bytes_per_token({**qwen7b, "num_key_value_heads": None}, "float32") == 2 * 28 * 28 * 128 * 4


def test_auto_size_holds_the_whole_batch_when_memory_allows():
    plan = plan_kv_cache(per_token_bytes=1000, max_model_len=300, sequences=64, available_bytes=10 * GIB,
                         kv_cache_gib=None, max_num_seqs=None)
    assert plan.sequence_bytes == 384 * 1000  # 3 blocks of 128 tokens
    assert plan.cache_bytes == 64 * 384 * 1000 and plan.max_num_seqs == 64
    assert plan.fits_batch and not plan.may_preempt


def test_auto_size_capped_by_memory_admits_fewer_sequences_instead_of_preempting():
    plan = plan_kv_cache(per_token_bytes=1000, max_model_len=300, sequences=64, available_bytes=20 * 384 * 1000,
                         kv_cache_gib=None, max_num_seqs=None)
    assert plan.cache_bytes == 10 * 384 * 1000  # half the available memory
    assert plan.max_num_seqs == 10 and not plan.may_preempt and not plan.fits_batch
    assert "the batch's other 54 queue" in plan.how


def test_explicit_size_too_small_for_one_sequence_names_the_fields():
    with pytest.raises(KVCacheError, match=r"rollout.kv_cache_gib=0.0001\).*rollout.max_model_len=256"):
        plan_kv_cache(per_token_bytes=4096, max_model_len=256, sequences=8, available_bytes=GIB, kv_cache_gib=0.0001,
                      max_num_seqs=None)
    with pytest.raises(KVCacheError, match=r"rollout.kv_cache_gib=64 is more than the 1.0 GiB"):
        plan_kv_cache(per_token_bytes=4096, max_model_len=256, sequences=8, available_bytes=GIB, kv_cache_gib=64, max_num_seqs=None)


def test_explicit_max_num_seqs_beyond_the_cache_is_kept_and_flagged():
    plan = plan_kv_cache(per_token_bytes=512, max_model_len=128, sequences=32, available_bytes=GIB,
                         kv_cache_gib=4 * 128 * 512 / GIB, max_num_seqs=32)
    assert plan.max_num_seqs == 32 and plan.may_preempt and "vLLM will preempt" in plan.how


def test_model_presets_fill_the_shape_and_explicit_fields_win():
    cfg = load_config(SCALE)
    arch = memory_model.architecture(cfg)
    assert 100e6 < arch.params < 150e6 and (arch.hidden, arch.layers, arch.kv_heads) == (768, 12, 4)
    assert load_config(SCALE, ["model.tiny.num_layers=2"]).model.tiny.num_layers == 2
    assert cfg.rollout.max_new_tokens >= 256


def test_parameter_count_matches_transformers():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = load_config(None, ["model.tiny.hidden_size=64", "model.tiny.intermediate_size=96", "model.tiny.num_layers=3",
                             "model.tiny.num_heads=4", "model.tiny.num_kv_heads=2"])
    t = cfg.model.tiny
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                                         intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
                                         num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
                                         tie_word_embeddings=False))
    assert memory_model.architecture(cfg).params == sum(p.numel() for p in model.parameters())


def test_7b_learner_does_not_fit_80gb_without_checkpointing_and_fits_with_it():
    cfg = load_config(ZOO7B, NO_CKPT)
    problem = memory_model.does_not_fit(cfg)
    assert problem is not None and "largest term: activations" in problem and "learner rank" in problem
    fixed = load_config(ZOO7B)  # the published launcher's gradient checkpointing
    assert fixed.learner.gradient_checkpointing and memory_model.does_not_fit(fixed) is None
    learner, engine = memory_model.predict(fixed)
    margin = learner.budget - learner.total
    assert 20 * GIB < margin < 60 * GIB  # fits with room, and the terms are not trivially small
    terms = {t.name: t.bytes for t in learner.terms}
    assert set(terms) >= {"parameters", "optimizer state (Adam m, v)", "activations", "logits chunk", "reference model"}
    arch = memory_model.architecture(fixed)
    assert arch.source.startswith("published config.json of Qwen2.5-7B") and 7.6e9 < arch.params < 7.7e9
    # one chunk of 1024 response positions, never the whole micro-batch's 18432 positions
    assert terms["logits chunk"] == 1024 * arch.vocab * (2 + 4 * 5)
    assert terms["reference model"] == arch.params * 2 / 8  # ZeRO-3: 1/8 of it per rank
    full = memory_model.predict(load_config(ZOO7B, ["learner.zero_stage=2"]))[0].terms
    assert next(t.bytes for t in full if t.name == "reference model") == arch.params * 2  # a full copy per rank
    kv = next(t for t in engine.terms if t.name == "KV cache")
    assert "holds" in kv.note and kv.bytes > 10 * GIB
    assert memory_model.does_not_fit(load_config(ZOO7B, ["cluster.gpu_memory_gib=24"])) is not None


def test_7b_ppo_config_predicts_the_critic_group_and_fits():
    cfg = load_config(QWEN7B)
    assert cfg.learner.gradient_checkpointing and cfg.critic.gradient_checkpointing  # the published launcher's
    roles = memory_model.predict(cfg)
    assert [r.role.split(" (")[0] for r in roles] == ["learner rank", "critic rank", "rollout engine"]
    learner, critic = roles[0], roles[1]
    critic_terms = {t.name: t.bytes for t in critic.terms}
    assert "logits chunk" not in critic_terms and "reference model" not in critic_terms
    arch = memory_model.architecture(cfg)
    assert critic_terms["parameters"] == (arch.params - arch.vocab * arch.hidden + arch.hidden) * 2 / 8
    assert memory_model.does_not_fit(cfg) is None and critic.total < learner.total
    tight = load_config(QWEN7B, ["critic.gradient_checkpointing=false", "critic.micro_batch_size=4"])
    assert "critic rank" in memory_model.does_not_fit(tight)


def test_train_refuses_a_gpu_config_predicted_not_to_fit_before_anything_starts(capsys):
    """With a cluster address the GPU-count check is left to placement; the memory check still runs
    first and nothing connects to the (unreachable) address."""
    code = train_main(["--config", ZOO7B, "cluster.address=ray://127.0.0.1:1", *NO_CKPT])
    assert code == 3
    err = capsys.readouterr().err
    assert "learner rank" in err and "largest term: activations" in err and "cluster.gpu_memory_gib=80" in err


def test_train_refuses_a_kv_cache_that_cannot_hold_one_sequence(capsys):
    assert train_main(["--config", str(ROOT / "configs" / "tiny.yaml"), "rollout.kv_cache_gib=0.0001"]) == 3
    assert "rollout.kv_cache_gib=0.0001" in capsys.readouterr().err


def test_memory_cli_prints_every_term_and_the_margin(capsys):
    assert memory.main(["--config", QWEN7B]) == 0
    out = capsys.readouterr().out
    for term in ("parameters", "master weights", "gradients", "optimizer state", "ZeRO buffers", "activations",
                 "logits chunk", "reference model", "critic rank", "weights", "KV cache"):
        assert term in out, term
    assert "fits, margin" in out and "activations with checkpointing off" in out
    assert memory.main(["--config", ZOO7B, *NO_CKPT]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_zero3_breakdown_counts_the_gradient_sum_in_its_dtype_and_the_optimizer_step():
    """ZeRO-3 at 7B over 8 ranks: the persistent gradient partition is fp32 with the default fp32 sums
    and bf16 with grad_accum_dtype=model (stage3.py allocates it in the accumulation dtype); the step's
    fp32 gradient copy and AdamW's sqrt(v) are ~3.5 GiB each and count only against backward's terms."""
    fp32 = memory_model.predict(load_config(ZOO7B))[0]
    bf16 = memory_model.predict(load_config(ZOO7B, ["learner.grad_accum_dtype=model"]))[0]
    P = memory_model.architecture(load_config(ZOO7B)).params
    terms = {t.name: t for t in fp32.terms}
    assert terms["gradients"].bytes == 4 * P / 8 and "fp32" in terms["gradients"].note
    assert {t.name: t.bytes for t in bf16.terms}["gradients"] == 2 * P / 8
    for name in ("fp32 gradient copy", "AdamW temporaries"):
        assert terms[name].phase == "step" and 3.5 * GIB < terms[name].bytes < 3.6 * GIB
    held = sum(t.bytes for t in fp32.terms if t.phase == "held")
    backward = terms["activations"].bytes + terms["logits chunk"].bytes
    assert fp32.total == held + max(backward, terms["fp32 gradient copy"].bytes + terms["AdamW temporaries"].bytes)
    assert fp32.total - bf16.total == 2 * P / 8  # only the gradient sum's dtype differs
    # Without activations to outweigh it (a tiny micro-batch), the step is the peak.
    small = memory_model.predict(load_config(ZOO7B, ["learner.micro_batch_size=1", "rollout.max_model_len=1100",
                                               "rollout.max_new_tokens=64", "learner.logprob_chunk_tokens=16"]))[0]
    small_terms = {t.name: t.bytes for t in small.terms}
    assert small.total == sum(t.bytes for t in small.terms if t.phase == "held") + 8 * P / 8
    assert small_terms["activations"] + small_terms["logits chunk"] < 8 * P / 8


def test_zero1_in_bf16_with_fp32_sums_holds_fp32_and_bf16_gradients_of_the_whole_model():
    P = memory_model.architecture(load_config(ZOO7B)).params
    ours = {t.name: t.bytes for t in memory_model.predict(load_config(ZOO7B, ["learner.zero_stage=1"]))[0].terms}
    model = {t.name: t.bytes for t in memory_model.predict(load_config(ZOO7B, ["learner.zero_stage=1",
                                                                         "learner.grad_accum_dtype=model"]))[0].terms}
    assert ours["gradients"] == 6 * P and model["gradients"] == 2 * P
    assert ours["fp32 gradient copy"] == 0 and ours["AdamW temporaries"] == 4 * P / 8


def test_bf16_without_zero_cannot_sum_gradients_in_fp32():
    from cluster.config import ConfigError

    with pytest.raises(ConfigError, match=r"learner.zero_stage=0 with model.dtype=bfloat16 cannot accumulate"):
        load_config(ZOO7B, ["learner.zero_stage=0"])
    assert load_config(ZOO7B, ["learner.zero_stage=0", "learner.grad_accum_dtype=model"]).learner.zero_stage == 0


ONE_NODE = {"simplerl_zoo_grpo_qwen7b_1node.yaml": 0.75, "simplerl_zero_v0_ppo_qwen7b_1node.yaml": 0.9}


@pytest.mark.parametrize("name", list(ONE_NODE))
def test_one_node_presets_place_on_8_gpus_and_every_shared_gpu_fits(name):
    """The colocated one-node presets: 8 GPU bundles, each learner GPU shared by one learner rank and one
    engine TP rank (shares <= 1 GPU), critic GPUs alone; the memory check passes for every role, the shared
    GPU included; with the published generation budget (Zoo 0.75, v0 vLLM's 0.9) the shared GPU does not fit."""
    from cluster.infra.placement_group import plan

    cfg = load_config(str(ROOT / "configs" / name))
    layout = plan(cfg)
    assert sum(b.get("GPU", 0) for b in layout.bundles) == 8 and cfg.cluster.colocate
    for bundle, resources in enumerate(layout.bundles):
        if not resources.get("GPU"):
            continue
        shares = [s.num_gpus for s in layout.slots["learner"] if s.bundle == bundle]
        shares += [s.gpus_per_rank for s in layout.slots["rollout"] if bundle in s.engine_bundles]
        critic = [s for s in layout.slots.get("critic", []) if s.bundle == bundle]
        assert (len(shares) == 2 and sum(shares) <= 1.0 and not critic) or (not shares and len(critic) == 1), bundle
    assert memory_model.does_not_fit(cfg) is None
    roles = memory_model.predict(cfg)
    shared, learner = roles[-1], roles[0]
    assert shared.role.startswith("GPU shared") and shared.total <= shared.budget
    held = sum(t.bytes for t in learner.terms if t.phase == "held")
    weights = memory_model.architecture(cfg).params * 2
    generating = held + weights + cfg.rollout.gpu_memory_utilization * 80 * GIB
    training = learner.total + weights + memory_model.GPU_RUNTIME
    assert shared.total == pytest.approx(max(generating, training))
    published = load_config(str(ROOT / "configs" / name), [f"rollout.gpu_memory_utilization={ONE_NODE[name]}"])
    assert "GPU shared by a learner rank and an engine" in memory_model.does_not_fit(published)
