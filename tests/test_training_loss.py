"""Loss normalisation across ranks with unequal sample counts: one DDP step over 2 gloo ranks gives
the gradient of one process over the union of their samples (fp32, to 1e-6); the naive per-rank
mean does not."""
from __future__ import annotations

import datetime
import pickle

import pytest
import torch
import torch.nn.functional as F

from elasticast_kernels.data import collate_packed
from elasticast_kernels.models import ElasticAST
from elasticast_kernels.training import DistributedContext, reduce_sums, scale_to_global_mean, wrap_model

RANK_SHARES = ([0, 1, 2], [3, 4, 5, 6, 7, 8, 9])  # 3 samples on rank 0, 7 on rank 1


def make_model() -> ElasticAST:
    torch.manual_seed(0)
    return ElasticAST(sample_size=(128, 256), patch_size=16, num_classes=5, dim=32, depth=1, heads=2, channels=1,
                      softmax_scale=0.25)


def make_samples() -> list[tuple[torch.Tensor, int]]:
    generator = torch.Generator().manual_seed(1)
    frames = [16, 48, 32, 128, 16, 64, 96, 32, 160, 48]
    return [(torch.randn(1, 128, t, generator=generator), i % 5) for i, t in enumerate(frames)]


def gradients(model) -> dict[str, torch.Tensor]:
    inner = model.module if hasattr(model, "module") else model
    return {name: p.grad.detach().clone() for name, p in inner.named_parameters()}


def _rank_gradients(rank: int, world_size: int, normalise: bool) -> dict[str, torch.Tensor]:
    ctx = DistributedContext(rank=rank, world_size=world_size, backend="gloo")
    model = wrap_model(make_model(), ctx)
    batch = collate_packed([make_samples()[i] for i in RANK_SHARES[rank]], patch_size=16)
    loss_sum = F.cross_entropy(model(batch), batch.labels, reduction="sum")
    if normalise:
        totals = reduce_sums({"samples": batch.num_samples}, ctx)
        loss = scale_to_global_mean(loss_sum, totals["samples"], world_size)
    else:  # the usual per-rank mean: wrong when ranks hold different numbers of samples
        loss = loss_sum / batch.num_samples
    loss.backward()
    return gradients(model)


def _rank_worker(rank: int, world_size: int, init_file: str, out_file: str, normalise: bool) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        # The DDP model lives (and dies) inside this call: freeing DDP's reducer after the process
        # group is destroyed can deadlock on gloo's thread (it wants the GIL the destructor holds).
        grads = _rank_gradients(rank, world_size, normalise)
        if rank == 0:
            with open(out_file, "wb") as handle:
                pickle.dump(grads, handle)
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, normalise: bool) -> dict[str, torch.Tensor]:
    out_file = tmp_path / f"grads-{normalise}.pkl"
    start_method = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else "spawn"
    torch.multiprocessing.start_processes(
        _rank_worker, args=(2, str(tmp_path / f"init-{normalise}"), str(out_file), normalise), nprocs=2,
        join=True, start_method=start_method,
    )
    with open(out_file, "rb") as handle:
        return pickle.load(handle)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_gloo_ranks_match_one_process_over_the_union(tmp_path, torch_cpu_path):
    model = make_model()
    batch = collate_packed(make_samples(), patch_size=16)
    F.cross_entropy(model(batch), batch.labels).backward()  # mean over all 10 samples
    reference = gradients(model)

    distributed = run_ranks(tmp_path, normalise=True)
    assert distributed.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(distributed[name], grad, rtol=0, atol=1e-6, msg=name)

    naive = run_ranks(tmp_path, normalise=False)
    worst = max(float((naive[name] - grad).abs().max()) for name, grad in reference.items())
    assert worst > 1e-4, "the per-rank mean should differ here: the test would not notice a wrong normalisation"


def test_reduce_sums_without_a_process_group_and_bad_input():
    ctx = DistributedContext()
    totals = reduce_sums({"samples": 3, "loss": torch.tensor(1.5), "tokens": torch.tensor([7])}, ctx)
    assert totals == {"samples": 3.0, "loss": 1.5, "tokens": 7.0}
    assert reduce_sums({}, ctx) == {}
    loss = scale_to_global_mean(torch.tensor(6.0), 4, 2)
    assert float(loss) == 3.0
    with pytest.raises(ValueError, match="global_samples"):
        scale_to_global_mean(torch.tensor(1.0), 0, 1)
    with pytest.raises(ValueError, match="world_size"):
        scale_to_global_mean(torch.tensor(1.0), 1, 0)
