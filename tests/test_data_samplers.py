"""PackedBatchSampler / DistributedPackedBatchSampler invariants over random inputs.

Invariants: every kept index exactly once per epoch (coverage), every pack within max_tokens
(capacity), the same steps from the same (seed, epoch) (determinism), len() equal to what is
yielded, and for the distributed sampler: the same number of steps on every rank, no index on two
ranks, balanced tokens. The gloo test runs the sampler in real local processes.
"""
from __future__ import annotations

import datetime
import pickle
import warnings

import numpy as np
import pytest
import torch

from elasticast_kernels.data import DistributedPackedBatchSampler, PackedBatchSampler

STRATEGIES = ["next_fit", "first_fit_decreasing", "best_fit_decreasing", "best_fit_window", "histogram"]


def random_lengths(seed: int, n: int | None = None, max_tokens: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400)) if n is None else n
    # A mix of short clips and long ones (up to a full pack), like real audio durations.
    return np.where(rng.random(n) < 0.8, rng.integers(8, 128, n), rng.integers(128, max_tokens + 1, n))


def epoch_steps(sampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    steps = list(sampler)
    assert len(steps) == len(sampler)
    return steps


def check_packs(sampler, epoch: int, lengths: np.ndarray, max_tokens: int) -> list[list[list[int]]]:
    """Capacity and packs-per-step bounds; the yielded steps are the packs concatenated."""
    packs = sampler.packs(epoch)
    sampler.set_epoch(epoch)
    for step, yielded in zip(packs, sampler):
        assert 1 <= len(step) <= sampler.packs_per_step
        # within the budget, or (oversize="own_pack") one sample over it alone
        assert all(len(pack) >= 1 and (lengths[pack].sum() <= max_tokens or len(pack) == 1) for pack in step)
        assert [i for pack in step for i in pack] == yielded
    return packs


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("packs_per_step", [1, 3])
def test_single_process_invariants(strategy, seed, packs_per_step):
    lengths = random_lengths(seed)
    sampler = PackedBatchSampler(lengths, 512, strategy, seed=seed, packs_per_step=packs_per_step)
    for epoch in (0, 1):
        steps = epoch_steps(sampler, epoch)
        flat = [i for step in steps for i in step]
        assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
        check_packs(sampler, epoch, lengths, 512)
        assert sampler.stats.num_samples == len(lengths) and sampler.stats.num_dropped == 0
        assert sampler.stats.num_steps == len(steps) == -(-sampler.stats.num_packs // packs_per_step)
    # determinism: a fresh sampler with the same seed gives the same epochs, in any call order
    again = PackedBatchSampler(lengths, 512, strategy, seed=seed, packs_per_step=packs_per_step)
    assert epoch_steps(again, 1) == epoch_steps(sampler, 1)
    assert epoch_steps(again, 0) == epoch_steps(sampler, 0)


def test_shuffle_changes_with_epoch_and_seed():
    lengths = random_lengths(7, n=300)
    a = PackedBatchSampler(lengths, 512, seed=0)
    assert epoch_steps(a, 0) != epoch_steps(a, 1)
    assert epoch_steps(a, 0) != epoch_steps(PackedBatchSampler(lengths, 512, seed=1), 0)


def test_no_shuffle_keeps_plan_order():
    lengths = np.array([100, 300, 200, 400, 50])
    steps = epoch_steps(PackedBatchSampler(lengths, 512, "next_fit", shuffle=False), 0)
    assert steps == [[0, 1], [2], [3, 4]]  # in-order next fit


def test_drop_last_drops_only_an_incomplete_final_step():
    lengths = np.full(10, 300)  # one sample per pack -> 10 packs
    sampler = PackedBatchSampler(lengths, 512, packs_per_step=4, drop_last=True)
    steps = epoch_steps(sampler, 0)
    assert [len(s) for s in steps] == [4, 4]
    assert sampler.stats.num_dropped == 2 and sampler.stats.num_samples == 8
    keep_all = PackedBatchSampler(lengths, 512, packs_per_step=4)
    assert [len(s) for s in epoch_steps(keep_all, 0)] == [4, 4, 2]


def test_oversize_drop_is_counted_and_warned():
    lengths = np.array([100, 600, 200, 513, 50])
    with pytest.warns(UserWarning, match="dropping 2 of 5"):
        sampler = PackedBatchSampler(lengths, 512, oversize="drop")
    assert sampler.num_oversize == 2 and sampler.oversize_indices.tolist() == [1, 3]
    flat = sorted(i for step in epoch_steps(sampler, 0) for i in step)
    assert flat == [0, 2, 4] and sampler.stats.num_dropped == 2


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lengths=[], max_tokens=10), ValueError, "empty"),
        (dict(lengths=[5, 20], max_tokens=10, oversize="error"), ValueError, "longer than max_tokens"),
        (dict(lengths=[20, 30], max_tokens=10, oversize="drop"), ValueError, "every sample"),
        (dict(lengths=[5, 0], max_tokens=10), ValueError, "lengths\\[1\\]"),
        (dict(lengths=[[5]], max_tokens=10), ValueError, "1-D"),
        (dict(lengths=[1.5, 2], max_tokens=10), ValueError, r"whole token counts, but lengths\[0\] = 1.5"),
        (dict(lengths=[3, float("nan")], max_tokens=10), ValueError, r"lengths\[1\] = nan"),
        (dict(lengths=["a"], max_tokens=10), ValueError, "integers"),
        (dict(lengths=[5], max_tokens=0), ValueError, "max_tokens"),
        (dict(lengths=[5], max_tokens=10, packs_per_step=0), ValueError, "packs_per_step"),
        (dict(lengths=[5], max_tokens=10, oversize="skip"), ValueError, "oversize"),
        (dict(lengths=[5], max_tokens=10, seed=-1), ValueError, "seed"),
        (dict(lengths=[5], max_tokens=10, strategy="no_such_strategy"), ValueError, None),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        PackedBatchSampler(**kwargs)


def test_accepts_tensor_and_float_lengths():
    expected = epoch_steps(PackedBatchSampler([3, 4, 5], 8, seed=2), 0)
    assert epoch_steps(PackedBatchSampler(torch.tensor([3, 4, 5]), 8, seed=2), 0) == expected
    assert epoch_steps(PackedBatchSampler(np.array([3.0, 4.0, 5.0]), 8, seed=2), 0) == expected


def test_sampler_pickles_for_loader_workers():
    sampler = PackedBatchSampler(random_lengths(3), 512, seed=3)
    clone = pickle.loads(pickle.dumps(sampler))
    assert epoch_steps(clone, 2) == epoch_steps(sampler, 2)


# ---------------------------------------------------------------- distributed, without processes
def all_ranks(lengths, max_tokens, num_replicas, **kwargs):
    return [DistributedPackedBatchSampler(lengths, max_tokens, num_replicas=num_replicas, rank=r, **kwargs)
            for r in range(num_replicas)]


def check_distributed_epoch(samplers, epoch, lengths, max_tokens, expect_all=True):
    per_rank = [epoch_steps(s, epoch) for s in samplers]
    assert len({len(steps) for steps in per_rank}) == 1, "ranks have different step counts"
    assert all(len(steps) >= 1 for steps in per_rank)
    flats = [[i for step in steps for i in step] for steps in per_rank]
    union = [i for flat in flats for i in flat]
    assert len(union) == len(set(union)), "an index is on two ranks"
    if expect_all:
        assert sorted(union) == sorted(set(range(len(lengths))) - set(samplers[0].oversize_indices.tolist()))
    for s in samplers:
        check_packs(s, epoch, lengths, max_tokens)
        assert s.stats == samplers[0].stats  # the same plan on every rank, from the seed alone
    stats = samplers[0].stats
    assert sum(stats.rank_tokens) == sum(int(lengths[f].sum()) for f in flats)
    assert [int(lengths[f].sum()) for f in flats] == list(stats.rank_tokens)
    return per_rank, stats


@pytest.mark.parametrize("num_replicas", [2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("packs_per_step", [1, 2])
@pytest.mark.parametrize("strategy", ["best_fit_window", "next_fit"])
def test_distributed_invariants(num_replicas, seed, packs_per_step, strategy):
    lengths = random_lengths(100 + seed, n=int(np.random.default_rng(seed).integers(60, 400)))
    samplers = all_ranks(lengths, 512, num_replicas, seed=seed, packs_per_step=packs_per_step, strategy=strategy)
    for epoch in (0, 3):
        _, stats = check_distributed_epoch(samplers, epoch, lengths, 512)
        assert stats.num_dropped == 0


def test_distributed_balances_tokens():
    lengths = random_lengths(5, n=3000)
    samplers = all_ranks(lengths, 512, 4, seed=5)
    _, stats = check_distributed_epoch(samplers, 0, lengths, 512)
    assert stats.token_imbalance < 0.02, stats
    assert stats.step_imbalance < 0.05, stats


def test_distributed_splits_packs_instead_of_dropping():
    lengths = np.full(5, 200)  # next_fit -> packs [0, 1], [2, 3], [4]: 3 packs for 2 ranks x 2 steps
    samplers = all_ranks(lengths, 512, 2, strategy="next_fit", shuffle=False)
    per_rank, stats = check_distributed_epoch(samplers, 0, lengths, 512)
    assert stats.num_steps == 2 and stats.num_dropped == 0 and stats.num_packs == 4


def test_distributed_single_sample_packs_leave_out_with_warning():
    lengths = np.full(5, 400)  # 5 unsplittable packs on 2 ranks -> 2 steps each, 1 sample left out
    with pytest.warns(UserWarning, match="leaving out 1"):
        samplers = all_ranks(lengths, 512, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, stats = check_distributed_epoch(samplers, 0, lengths, 512, expect_all=False)
    assert stats.num_steps == 2 and stats.num_dropped == 1 and stats.num_samples == 4


def test_distributed_drop_last():
    lengths = np.full(11, 300)
    samplers = all_ranks(lengths, 512, 2, packs_per_step=2, drop_last=True)
    _, stats = check_distributed_epoch(samplers, 0, lengths, 512, expect_all=False)
    assert stats.num_steps == 2 and stats.num_samples == 8 and stats.num_dropped == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lengths=[10, 10, 10], num_replicas=2, rank=0), "larger than the number of packs"),
        (dict(lengths=[300, 300, 300], num_replicas=2, rank=0, packs_per_step=2, drop_last=True), "no step"),
        (dict(lengths=[10] * 10, num_replicas=2, rank=2), "rank"),
        (dict(lengths=[10] * 10, num_replicas=0, rank=0), "num_replicas"),
        (dict(lengths=[10] * 10), "torch.distributed"),
    ],
)
def test_distributed_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistributedPackedBatchSampler(max_tokens=512, **kwargs)


# ---------------------------------------------------------------- distributed, real gloo processes
def _gloo_worker(rank: int, world_size: int, init_file: str, lengths: np.ndarray, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        sampler = DistributedPackedBatchSampler(lengths, 512, seed=11, packs_per_step=2)  # rank/size from dist
        result = {}
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            seen, steps = [], 0
            for step in sampler:
                # one collective per step, as a DDP backward does: unequal step counts would hang
                dist.all_reduce(torch.ones(1))
                seen.extend(step)
                steps += 1
            gathered = [None] * world_size
            dist.all_gather_object(gathered, (steps, seen, sampler.stats))
            result[epoch] = gathered
        if rank == 0:
            with open(out_file, "wb") as handle:
                pickle.dump(result, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_gloo_processes_agree(tmp_path):
    world_size = 3
    lengths = random_lengths(21, n=500)
    out_file = str(tmp_path / "result.pkl")
    # fork where the platform has it: the children inherit the imported torch instead of paying
    # for a fresh interpreter each (seconds per process on a loaded 2-core machine).
    start_method = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else "spawn"
    torch.multiprocessing.start_processes(
        _gloo_worker, args=(world_size, str(tmp_path / "init"), lengths, out_file), nprocs=world_size,
        join=True, start_method=start_method,
    )
    with open(out_file, "rb") as handle:
        result = pickle.load(handle)
    for epoch, gathered in result.items():
        steps = [g[0] for g in gathered]
        assert len(set(steps)) == 1 and steps[0] > 0
        sets = [set(g[1]) for g in gathered]
        assert sum(len(s) for s in sets) == len(set().union(*sets)) == len(lengths)  # disjoint, complete
        assert all(g[2] == gathered[0][2] for g in gathered)  # identical plans
        assert gathered[0][2].token_imbalance < 0.05
    assert [g[1] for g in result[0]] != [g[1] for g in result[1]]  # a new order per epoch


# ---------------------------------------------------------------- resume (state_dict / load_state_dict)
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build_or_skip(lengths, max_tokens, num_replicas, **kwargs):
    """All ranks' samplers, or a hypothesis `assume` failure when the input has too few packs for the ranks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the single-sample-pack warning; checked by its own test
        try:
            if num_replicas == 1:
                return [PackedBatchSampler(lengths, max_tokens, **kwargs)]
            return all_ranks(lengths, max_tokens, num_replicas, **kwargs)
        except ValueError as error:
            assume("larger than the number of packs" not in str(error) and "leaves no step" not in str(error))
            raise


sampler_inputs = st.fixed_dictionaries({
    "lengths": st.lists(st.integers(1, 64) | st.integers(150, 400), min_size=1, max_size=80),  # some oversize
    "max_tokens": st.integers(64, 160),
    "num_replicas": st.integers(1, 4),
    "packs_per_step": st.integers(1, 3),
    "strategy": st.sampled_from(STRATEGIES),
    "seed": st.integers(0, 2**16),
    "drop_last": st.booleans(),
})


@PROPERTY_SETTINGS
@given(sampler_inputs, st.integers(0, 3))
def test_property_every_sample_once_within_budget(inputs, epoch):
    lengths = np.array(inputs["lengths"])
    samplers = build_or_skip(lengths, inputs["max_tokens"], inputs["num_replicas"], seed=inputs["seed"],
                             strategy=inputs["strategy"], packs_per_step=inputs["packs_per_step"],
                             drop_last=inputs["drop_last"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_rank = [epoch_steps(s, epoch) for s in samplers]
        for sampler in samplers:
            check_packs(sampler, epoch, lengths, inputs["max_tokens"])  # budget and packs per step
    assert len({len(steps) for steps in per_rank}) == 1
    union = [i for steps in per_rank for step in steps for i in step]
    assert len(union) == len(set(union))  # no sample twice, on any rank
    stats = samplers[0].stats
    assert len(union) == stats.num_samples == len(lengths) - stats.num_dropped
    if not inputs["drop_last"] and stats.num_dropped == 0:
        assert sorted(union) == list(range(len(lengths)))


@PROPERTY_SETTINGS
@given(sampler_inputs, st.integers(0, 2), st.data())
def test_property_resume_at_any_step_equals_uninterrupted(inputs, epoch, data):
    lengths = np.array(inputs["lengths"])
    options = dict(seed=inputs["seed"], strategy=inputs["strategy"], packs_per_step=inputs["packs_per_step"],
                   drop_last=inputs["drop_last"])
    samplers = build_or_skip(lengths, inputs["max_tokens"], inputs["num_replicas"], **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uninterrupted = [epoch_steps(s, epoch) + epoch_steps(s, epoch + 1) for s in samplers]
        consumed = data.draw(st.integers(0, samplers[0].stats.num_steps))
        for sampler in samplers:
            sampler.set_epoch(epoch)
            sampler.advance(consumed)
        states = [s.state_dict() for s in samplers]  # Stateful: no arguments
        fresh = build_or_skip(lengths, inputs["max_tokens"], inputs["num_replicas"], **options)
        for sampler, state, expected in zip(fresh, pickle.loads(pickle.dumps(states)), uninterrupted):
            sampler.load_state_dict(state)
            sampler.set_epoch(epoch)  # what a training loop does at the top of the epoch: keeps the point
            assert sampler.start_step == sampler.consumed_steps == consumed
            assert len(sampler) == samplers[0].stats.num_steps - consumed
            resumed = list(sampler) + epoch_steps(sampler, epoch + 1)
            assert expected[:consumed] + resumed == expected
            assert [sampler.step_indices(i, epoch) for i in range(len(expected) - len(resumed))] == \
                expected[: len(expected) - len(resumed)]  # the samples of any step, from the seed


def test_resume_with_loader_workers_counts_consumed_not_prefetched():
    """Workers prefetch steps the loop never used; advance() counts the loop's steps, so none is lost."""
    from torch.utils.data import DataLoader

    lengths = random_lengths(31, n=200)
    indices = lambda steps: [i for step in steps for i in step]  # noqa: E731

    def loader_for(sampler):
        return DataLoader(list(range(len(lengths))), batch_sampler=sampler, num_workers=2, prefetch_factor=4,
                          collate_fn=lambda batch: batch, multiprocessing_context="fork")

    reference = PackedBatchSampler(lengths, 512, seed=4)
    reference.set_epoch(1)
    expected = list(reference)
    sampler = PackedBatchSampler(lengths, 512, seed=4)
    sampler.set_epoch(1)
    consumed, loader_iter = [], iter(loader_for(sampler))
    for _ in range(5):
        consumed.append(next(loader_iter))
        sampler.advance()
    state = sampler.state_dict()  # the workers have fetched more than 5
    assert state["consumed_steps"] == 5
    del loader_iter

    restored = PackedBatchSampler(lengths, 512, seed=4)
    restored.load_state_dict(state)
    restored.set_epoch(1)
    rest = list(loader_for(restored))
    assert indices(consumed + rest) == indices(expected) and len(rest) == len(expected) - 5
    restored.set_epoch(2)  # the next epoch is whole again
    assert restored.start_step == restored.consumed_steps == 0 and len(restored) == restored.stats.num_steps


def test_state_dict_refuses_other_steps_and_bad_counts():
    lengths = random_lengths(8, n=120)
    sampler = PackedBatchSampler(lengths, 512, seed=1)
    with pytest.raises(ValueError, match="passes the end of epoch 0"):
        sampler.advance(len(sampler) + 1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        sampler.advance(-1)
    sampler.advance(2)
    state = sampler.state_dict()
    assert state["consumed_steps"] == 2 and sampler.state_dict() == state  # reading the state changes nothing
    with pytest.raises(ValueError, match="seed"):
        PackedBatchSampler(lengths, 512, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="max_tokens"):
        PackedBatchSampler(lengths, 400, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="lengths_crc32"):
        PackedBatchSampler(lengths[::-1].copy(), 512, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="missing fields"):
        sampler.load_state_dict({"epoch": 0})
    ranks = all_ranks(lengths, 512, 2, seed=1)
    with pytest.raises(ValueError, match="num_replicas"):
        ranks[0].load_state_dict(state)  # mid-epoch on another world size: other steps
    ranks[0].load_state_dict({**state, "consumed_steps": 0})  # an epoch start resumes on any world size
    assert ranks[0].start_step == 0


@pytest.mark.parametrize("field, value, error, match", [
    ("consumed_steps", 2.5, TypeError, r"state\['consumed_steps'\] must be an int, got float"),
    ("consumed_steps", True, TypeError, r"state\['consumed_steps'\] must be an int, got bool"),
    ("consumed_steps", -1, ValueError, r"state\['consumed_steps'\] must be >= 0"),
    ("consumed_steps", 10**6, ValueError, "consumed_steps=1000000, but epoch 0 has"),
    ("epoch", "2", TypeError, r"state\['epoch'\] must be an int, got str"),
    ("epoch", -3, ValueError, r"state\['epoch'\] must be >= 0"),
    ("num_replicas", 0, ValueError, r"state\['num_replicas'\] must be >= 1"),
    ("version", 7, ValueError, "version 7"),
    ("shuffle", 1, ValueError, "shuffle=1"),  # 1 == True, but not the saved option
    ("seed", 1.0, ValueError, "seed=1.0"),
    ("max_tokens", None, ValueError, "max_tokens=None"),
    ("surprise", 0, ValueError, r"unknown fields \['surprise'\]"),
])
def test_load_state_dict_checks_fields_types_and_ranges(field, value, error, match):
    sampler = PackedBatchSampler(random_lengths(8, n=120), 512, seed=1)
    state = sampler.state_dict()
    with pytest.raises(error, match=match):
        sampler.load_state_dict({**state, field: value})
    with pytest.raises(TypeError, match="must be a dict"):
        sampler.load_state_dict([("epoch", 0)])
    sampler.load_state_dict(state)  # the original still loads


def test_deprecated_consumed_steps_argument_still_works():
    sampler = PackedBatchSampler(random_lengths(8, n=120), 512, seed=1)
    with pytest.warns(DeprecationWarning, match="advance"):
        state = sampler.state_dict(consumed_steps=3)
    assert state["consumed_steps"] == 3 and sampler.consumed_steps == 0
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="consumed_steps"):
        sampler.state_dict(consumed_steps=len(sampler) + 1)


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_oversize_samples_get_packs_of_their_own(num_replicas):
    lengths = np.array([100, 600, 200, 513, 50, 3000, 90, 80])
    samplers = all_ranks(lengths, 512, num_replicas, seed=3) if num_replicas > 1 else \
        [PackedBatchSampler(lengths, 512, seed=3)]
    assert samplers[0].oversize == "own_pack" and samplers[0].oversize_indices.tolist() == [1, 3, 5]
    for epoch in (0, 1):
        flat = []
        for sampler in samplers:
            for step in sampler.packs(epoch):
                for pack in step:
                    assert lengths[pack].sum() <= 512 or pack in ([1], [3], [5])  # alone when over the budget
                    flat += pack
        assert sorted(flat) == list(range(len(lengths)))  # nothing dropped or repeated
        stats = samplers[0].stats
        assert stats.num_dropped == 0 and stats.num_oversize_packs == 3
    # a state saved without any oversize sample resumes whatever the mode (same steps)
    short = np.array([100, 200, 300, 50])
    state = PackedBatchSampler(short, 512, oversize="error").state_dict()
    PackedBatchSampler(short, 512).load_state_dict(state)
    with pytest.raises(ValueError, match="oversize='drop'"):
        with pytest.warns(UserWarning):
            samplers_drop = PackedBatchSampler(lengths, 512, seed=3, oversize="drop")
        PackedBatchSampler(lengths, 512, seed=3).load_state_dict(samplers_drop.state_dict())


def test_step_indices_checks_its_arguments():
    sampler = PackedBatchSampler(random_lengths(8, n=50), 512, seed=1)
    with pytest.raises(ValueError, match="step must be in"):
        sampler.step_indices(len(sampler))
    with pytest.raises(TypeError, match="step must be an int"):
        sampler.step_indices(1.0)


def test_sampler_is_stateful_for_torch_distributed_checkpoint(tmp_path):
    """torch's own checkpointing calls state_dict() / load_state_dict() with no other argument."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.stateful import Stateful

    sampler = PackedBatchSampler(random_lengths(8, n=120), 512, seed=3)
    sampler.set_epoch(2)
    sampler.advance(3)
    assert isinstance(sampler, Stateful)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP notes that no process group is initialised
        dcp.save({"sampler": sampler}, checkpoint_id=str(tmp_path))
        restored = PackedBatchSampler(random_lengths(8, n=120), 512, seed=3)
        dcp.load({"sampler": restored}, checkpoint_id=str(tmp_path))
    assert (restored.epoch, restored.consumed_steps, restored.start_step) == (2, 3, 3)
