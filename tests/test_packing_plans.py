"""Packing plans: valid partitions, the reference next-fit rule, C++ == Python, efficiency targets."""
import numpy as np
import pytest
import torch

from elasticast_kernels.packing import STRATEGIES, PackPlan, has_native, pack_lengths, pack_order

BACKENDS = ["python"] + (["native"] if has_native() else [])
requires_native = pytest.mark.skipif(not has_native(), reason="native extension not built")


def assert_valid(plan: PackPlan, lengths, max_tokens: int) -> None:
    """Each index exactly once, no pack over capacity (but a sample longer than it, alone), no
    empty pack, ascending inside a pack."""
    lengths = np.asarray(lengths, dtype=np.int64)
    assert plan.max_tokens == max_tokens
    np.testing.assert_array_equal(plan.lengths, lengths)
    seen = np.concatenate(plan.bins) if plan.bins else np.zeros(0, np.int64)
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(lengths)))
    for b in plan.bins:
        assert b.dtype == np.int64 and len(b) > 0
        assert lengths[b].sum() <= max_tokens or len(b) == 1
        assert np.all(np.diff(b) > 0)
    oversize = np.flatnonzero(lengths > max_tokens)
    assert sum(len(b) == 1 and b[0] in oversize for b in plan.bins) == len(oversize)


def assert_valid_flat(order, offsets, lengths, max_tokens: int) -> None:
    """assert_valid for the flat (order, offsets) form, cheap enough for a fuzz loop."""
    assert sorted(order.tolist()) == list(range(len(lengths)))
    sizes = np.diff(offsets)
    assert offsets[0] == 0 and np.all(sizes > 0)
    if len(lengths):
        tokens = np.add.reduceat(lengths[order], offsets[:-1])
        assert np.all((tokens <= max_tokens) | (sizes == 1))
        starts = np.zeros(len(order), dtype=bool)
        starts[offsets[:-1]] = True
        assert np.all((np.diff(order) > 0) | starts[1:])


def reference_next_fit(lengths, max_tokens):
    """Direct transcription of the published grouping: one open row, new row on overflow."""
    rows, row, used = [], [], 0
    for i, n in enumerate(lengths):
        if row and used + n > max_tokens:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += n
    if row:
        rows.append(row)
    return rows


def voxceleb_like_tokens(n: int, seed: int = 0) -> np.ndarray:
    """Durations 4-20 s (mean ~8 s), 100 frames/s, 8 frequency patches, 16-frame time patches."""
    rng = np.random.default_rng(seed)
    seconds = np.minimum(4.0 + rng.exponential(4.0, n), 20.0)
    frames = (seconds * 100).astype(np.int64)
    return 8 * (frames // 16)


ADVERSARIAL = {
    "empty": ([], 8),
    "one": ([5], 8),
    "one_full": ([8], 8),
    "all_max": ([64] * 17, 64),
    "all_one": ([1] * 100, 7),
    "max_tokens_one": ([1] * 5, 1),
    "halves": ([5, 5, 5, 6, 4, 5], 10),
    "descending": (list(range(30, 0, -1)), 31),
    "big_and_small": ([1000, 1, 999, 2, 998, 3] * 5, 1001),
    "one_oversize": ([9], 8),
    "oversize_in_between": ([3, 12, 4, 9, 1, 8, 30, 2], 8),
    "all_oversize": ([9, 20, 9, 2**31 - 1], 8),
    "oversize_max_tokens_one": ([1, 2, 1, 3, 1], 1),
    "oversize_sparse": ([2**31 - 1, 5, 2**30, 7, 2**31 - 1], 2**20 + 3),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_adversarial_inputs_give_valid_partitions(case, strategy, backend):
    lengths, max_tokens = ADVERSARIAL[case]
    plan = pack_lengths(lengths, max_tokens, strategy, backend=backend)
    assert_valid(plan, lengths, max_tokens)
    plan.validate()
    assert plan.strategy == strategy


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_random_inputs_give_valid_partitions(strategy, backend):
    rng = np.random.default_rng(1)
    for _ in range(20):
        max_tokens = int(rng.integers(1, 3000))
        lengths = rng.integers(1, max_tokens + 1, size=int(rng.integers(0, 300)))
        assert_valid(pack_lengths(lengths, max_tokens, strategy, window=int(rng.integers(1, 40)), backend=backend),
                     lengths, max_tokens)


@pytest.mark.parametrize("backend", BACKENDS)
def test_oversize_samples_get_packs_of_their_own_where_each_rule_puts_them(backend):
    lengths, max_tokens = [3, 12, 4, 9, 1, 8, 30, 2], 8

    def bins(strategy):
        return [b.tolist() for b in pack_lengths(lengths, max_tokens, strategy, window=3, backend=backend).bins]

    # next fit: in order; the oversize sample closes the pack before it and the one after it
    assert bins("next_fit") == [[0], [1], [2], [3], [4], [5], [6], [7]]
    assert [b.tolist() for b in pack_lengths([3, 4, 12, 1, 2], 8, "next_fit", backend=backend).bins] == \
        [[0, 1], [2], [3, 4]]
    # decreasing strategies: the oversize samples (longest first) open the first packs
    for strategy in ("first_fit_decreasing", "best_fit_decreasing"):
        assert bins(strategy)[:3] == [[6], [1], [3]], strategy
    # histogram: the exact-fill patterns first ([8], [4, 3, 1], [2]), then one pack per oversize sample
    assert bins("histogram") == [[5], [0, 2, 4], [7], [6], [1], [3]]
    # streaming: the oversize sample opens a pack when it is the oldest pending one
    window = bins("best_fit_window")
    assert [1] in window and [3] in window and [6] in window
    for strategy in STRATEGIES:
        plan = pack_lengths(lengths, max_tokens, strategy, backend=backend)
        plan.validate()
        assert_valid(plan, lengths, max_tokens)


@pytest.mark.parametrize("backend", BACKENDS)
def test_next_fit_equals_the_reference_rule(backend):
    rng = np.random.default_rng(2)
    for _ in range(200):
        max_tokens = int(rng.integers(1, 600))
        lengths = rng.integers(1, max_tokens + 1, size=int(rng.integers(0, 60))).tolist()
        plan = pack_lengths(lengths, max_tokens, "next_fit", backend=backend)
        assert [b.tolist() for b in plan.bins] == reference_next_fit(lengths, max_tokens)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pack_order_matches_pack_lengths(backend):
    lengths = voxceleb_like_tokens(500)
    order, offsets = pack_order(lengths, 2048, "histogram", backend=backend)
    plan = pack_lengths(lengths, 2048, "histogram", backend=backend)
    np.testing.assert_array_equal(order, plan.order)
    np.testing.assert_array_equal(offsets, plan.pack_offsets)


@requires_native
def test_fuzz_native_plans_are_valid_and_match_python():
    """Thousands of random small cases: every strategy valid on both backends, identical bins."""
    rng = np.random.default_rng(3)
    for case in range(1500):
        # Mostly small capacities (the pure-Python histogram's subset sums cost O(capacity)),
        # sometimes huge ones (sparse containers in C++).
        max_tokens = int(rng.choice([1, 2, 7, 16, 100, 2**20, 2**31 - 1])) if case % 4 == 0 else int(rng.integers(1, 300))
        high = max_tokens if rng.random() < 0.7 else max(1, max_tokens // int(rng.integers(1, 8)))
        if rng.random() < 0.2:  # some samples longer than a pack
            high = min(2**31 - 1, 3 * max_tokens + 2)
        lengths = rng.integers(1, high + 1, size=int(rng.integers(0, 40)))
        if rng.random() < 0.3:  # few distinct lengths: the histogram's repeated patterns
            lengths = rng.choice(lengths[:3], size=len(lengths)) if len(lengths) else lengths
        window = int(rng.integers(1, 12))
        for strategy in STRATEGIES:
            order, offsets = pack_order(lengths, max_tokens, strategy, window=window, backend="native")
            assert_valid_flat(order, offsets, lengths, max_tokens)
            py_order, py_offsets = pack_order(lengths, max_tokens, strategy, window=window, backend="python")
            assert order.tolist() == py_order.tolist() and offsets.tolist() == py_offsets.tolist(), (strategy, case)


@requires_native
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_native_matches_python_on_voxceleb_like_lengths(strategy):
    lengths = voxceleb_like_tokens(3000, seed=4)
    native = pack_lengths(lengths, 2048, strategy, backend="native")
    python = pack_lengths(lengths, 2048, strategy, backend="python")
    assert [b.tolist() for b in native.bins] == [b.tolist() for b in python.bins]


@requires_native
@pytest.mark.parametrize("strategy", ["best_fit_decreasing", "histogram", "first_fit_decreasing"])
def test_large_capacity_uses_the_sparse_path_and_stays_valid(strategy):
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 2**30, size=2000)
    native = pack_lengths(lengths, 2**31 - 1, strategy, backend="native")
    assert_valid(native, lengths, 2**31 - 1)
    python = pack_lengths(lengths, 2**31 - 1, strategy, backend="python")
    assert [b.tolist() for b in native.bins] == [b.tolist() for b in python.bins]


@pytest.mark.parametrize(
    "strategy, minimum",
    [("next_fit", 0.85), ("best_fit_decreasing", 0.97), ("first_fit_decreasing", 0.97),
     ("histogram", 0.995), ("best_fit_window", 0.99)],  # window: gap-aware fill gets 0.9958
)
def test_efficiency_targets_on_voxceleb_like_lengths(strategy, minimum):
    lengths = voxceleb_like_tokens(20000, seed=0)
    plan = pack_lengths(lengths, 2048, strategy, window=256)
    assert_valid(plan, lengths, 2048)
    assert plan.efficiency >= minimum, f"{strategy}: {plan.efficiency:.4f} < {minimum}"
    assert plan.efficiency == pytest.approx(lengths.sum() / (plan.num_packs * 2048))


def test_next_fit_is_the_weakest_and_histogram_the_strongest():
    lengths = voxceleb_like_tokens(5000, seed=6)
    eff = {s: pack_lengths(lengths, 2048, s).efficiency for s in STRATEGIES}
    assert eff["next_fit"] < eff["best_fit_window"] < eff["histogram"]
    assert eff["next_fit"] < eff["best_fit_decreasing"] <= eff["histogram"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deterministic(strategy):
    lengths = voxceleb_like_tokens(1000, seed=7)
    a = pack_lengths(lengths, 2048, strategy)
    b = pack_lengths(lengths.tolist(), 2048, strategy)
    assert [x.tolist() for x in a.bins] == [x.tolist() for x in b.bins]


def test_accepts_list_numpy_tensor_and_integral_floats():
    ref = pack_lengths([3, 4, 5], 8)
    for lengths in (np.array([3, 4, 5], dtype=np.int32), torch.tensor([3, 4, 5]), np.array([3.0, 4.0, 5.0]),
                    (3, 4, 5), np.array([3, 4, 5], dtype=np.uint16)):
        plan = pack_lengths(lengths, 8)
        assert [b.tolist() for b in plan.bins] == [b.tolist() for b in ref.bins]
        assert plan.lengths.dtype == np.int64


def test_cu_seqlens_and_helpers():
    plan = pack_lengths([3, 4, 5, 2], 8, "next_fit")
    assert [b.tolist() for b in plan.bins] == [[0, 1], [2, 3]]
    cu = plan.cu_seqlens(1)
    assert cu.dtype == torch.int32 and cu.device.type == "cpu"
    assert cu.tolist() == [0, 5, 7]
    assert plan.cu_seqlens(-1).tolist() == [0, 5, 7]
    assert plan.pack_tokens().tolist() == [7, 7]
    assert plan.pack_offsets.tolist() == [0, 2, 4]
    assert plan.num_packs == 2 and plan.num_samples == 4
    assert plan.efficiency == pytest.approx(14 / 16)
    with pytest.raises(IndexError):
        plan.cu_seqlens(2)
    assert "next_fit" in repr(plan)
    empty = pack_lengths([], 8)
    assert empty.num_packs == 0 and empty.efficiency == 0.0


def test_layout_is_the_plan_in_segment_order():
    plan = pack_lengths([3, 4, 5, 2, 6], 8, "best_fit_decreasing")
    layout = plan.layout()
    assert layout.seqlens == tuple(plan.lengths[plan.order].tolist())
    assert layout.pack_offsets == tuple(plan.pack_offsets.tolist())
    assert layout.pack_tokens() == tuple(plan.pack_tokens().tolist())
    assert layout.cu_seqlens.dtype == torch.int32 and layout.device.type == "cpu"
    for p in range(plan.num_packs):
        start, end = layout.pack_offsets[p], layout.pack_offsets[p + 1]
        cu = layout.cu_seqlens[start:end + 1]
        assert (cu - cu[0]).tolist() == plan.cu_seqlens(p).tolist()
    assert pack_lengths([], 8).layout().num_samples == 0


def test_plan_is_flat_with_lazy_read_only_bins():
    import dataclasses
    import pickle

    plan = pack_lengths([3, 4, 5, 2, 6], 8, "best_fit_decreasing")
    assert "bins" not in vars(plan)  # not built by pack_lengths
    assert plan.num_packs == 3 and sorted(plan.pack_tokens().tolist()) == [4, 8, 8]
    assert plan.cu_seqlens(0)[-1] == plan.pack_tokens()[0]
    assert "bins" not in vars(plan)  # counts, tokens and cu_seqlens read the flat arrays
    np.testing.assert_array_equal(np.concatenate(plan.bins), plan.order)
    assert plan.bins is plan.bins  # cached
    for arr in (plan.order, plan.pack_offsets, plan.bins[0]):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.bins = []
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.max_tokens = 9
    copy = pickle.loads(pickle.dumps(plan))  # data-loader workers get plans this way
    assert [b.tolist() for b in copy.bins] == [b.tolist() for b in plan.bins]
    assert not copy.order.flags.writeable and copy.bins[0].base is not None


def test_plan_from_bins_equals_plan_from_order():
    lengths = np.array([3, 4, 5, 2])
    a = PackPlan([[0, 1], np.array([2, 3])], lengths, 8, "manual")
    b = PackPlan.from_order(np.array([0, 1, 2, 3]), [0, 2, 4], lengths, 8, "manual")
    for plan in (a, b):
        plan.validate()
        assert [x.tolist() for x in plan.bins] == [[0, 1], [2, 3]] and plan.bins[0].dtype == np.int64
        assert plan.cu_seqlens(1).tolist() == [0, 5, 7] and plan.efficiency == pytest.approx(14 / 16)
    assert a != b and a == a  # compared by identity
    with pytest.raises(ValueError, match="bins\\[1\\] is empty"):
        PackPlan([[0, 1, 2, 3], []], lengths, 16, "manual").validate()
    with pytest.raises(ValueError, match="bins\\[0\\] holds 9 tokens"):
        PackPlan([[0, 1, 3], [2]], lengths, 8, "manual").validate()
    with pytest.raises(ValueError, match="not a partition"):
        PackPlan.from_order([0, 1, 2, 3], [0, 3, 2, 4], lengths, 8, "manual").validate()
    with pytest.raises(ValueError, match="offsets"):
        PackPlan.from_order([0, 1], [], lengths, 8, "manual")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "lengths, max_tokens, kwargs, match",
    [
        ([3, 2**31, 2], 8, {}, r"lengths\[1\] = 2147483648 is outside \[1, 2\*\*31 - 1\]"),
        ([3, 0, 2], 8, {}, r"lengths\[1\] = 0"),
        ([3, 2, -4], 8, {}, r"lengths\[2\] = -4"),
        ([3.0, 2.5], 8, {}, r"lengths\[1\] = 2.5 is not an integer"),
        ([3.0, float("nan")], 8, {}, r"lengths\[1\] = nan is not an integer"),
        ([3.0, 1e30], 8, {}, r"lengths\[1\] = 1000000000000000019884624838656 is outside"),
        (np.array([3, 2**64 - 1], dtype=np.uint64), 8, {}, r"lengths\[1\] = 18446744073709551615 is outside"),
        ([[1, 2]], 8, {}, r"lengths must be 1-D"),
        (["a", "b"], 8, {}, r"lengths must be integers"),
        ([True, False], 8, {}, r"lengths must be integers"),
        ([1, 2], 0, {}, r"max_tokens must be in \[1, 2147483647\], got 0"),
        ([1, 2], 2**31, {}, r"max_tokens must be"),
        ([1, 2], 8, {"strategy": "worst_fit"}, r"strategy must be one of .* got 'worst_fit'"),
        ([1, 2], 8, {"strategy": "best_fit_window", "window": 0}, r"window must be in \[1, 9223372036854775807\], got 0"),
        # out of int64: a clear error, not the native signature's TypeError
        ([1, 2], 8, {"strategy": "best_fit_window", "window": 2**64}, r"window must be .* got 18446744073709551616"),
        ([1, 2**70], 8, {}, r"lengths\[1\] = 1180591620717411303424 is outside \[1, 2\*\*31 - 1\]"),
        (np.array([3.0, np.inf]), 8, {}, r"lengths\[1\] = inf is not an integer"),
        (torch.tensor([3.0, float("nan")]), 8, {}, r"lengths\[1\] = nan is not an integer"),
        ([1, None], 8, {}, r"lengths\[1\] = None is not an integer"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(backend, lengths, max_tokens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pack_lengths(lengths, max_tokens, backend=backend, **kwargs)


@pytest.mark.parametrize("bad", [8.0, "8", None, True])
def test_max_tokens_must_be_an_int(bad):
    with pytest.raises(TypeError, match="max_tokens"):
        pack_lengths([1, 2], bad)


@requires_native
def test_native_functions_check_their_input_too():
    from elasticast_kernels import _C

    with pytest.raises(ValueError, match=r"lengths\[2\] = 2147483648 is outside \[1, 2\*\*31 - 1\]"):
        _C.best_fit_decreasing(np.array([1, 2, 2**31], dtype=np.int64), 8)
    with pytest.raises(ValueError, match=r"max_tokens"):
        _C.histogram(np.array([1], dtype=np.int64), 0)
    with pytest.raises(ValueError, match=r"window must be in \[1, 9223372036854775807\], got 0"):
        _C.best_fit_window(np.array([1], dtype=np.int64), 8, 0)
    with pytest.raises(ValueError, match=r"window must be in .* got 18446744073709551616"):
        _C.best_fit_window(np.array([1], dtype=np.int64), 8, 2**64)
    with pytest.raises(TypeError, match=r"window must be an int, got float"):
        _C.best_fit_window(np.array([1], dtype=np.int64), 8, 2.0)
    with pytest.raises(ValueError, match=r"max_tokens must be in \[1, 2147483647\], got 36893488147419103232"):
        _C.next_fit(np.array([1], dtype=np.int64), 2**65)
    with pytest.raises(TypeError, match=r"lengths must be int64"):
        _C.next_fit(np.array([1, 2], dtype=np.int32), 8)
    with pytest.raises(TypeError, match=r"lengths must support the buffer protocol"):
        _C.next_fit([1, 2], 8)
    with pytest.raises(ValueError, match=r"lengths must be 1-D"):
        _C.next_fit(np.ones((2, 2), dtype=np.int64), 8)
    # any stride: the lengths are copied anyway
    strided = np.arange(1, 9, dtype=np.int64)[::-2]
    for strategy in STRATEGIES:
        got, want = getattr(_C, strategy)(strided, 8), getattr(_C, strategy)(strided.copy(), 8)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_native_backend_request_without_extension(monkeypatch):
    monkeypatch.setenv("ELASTICAST_NO_NATIVE", "1")
    with pytest.raises(RuntimeError, match="not available"):
        pack_lengths([1, 2], 8, backend="native")
    assert [b.tolist() for b in pack_lengths([1, 2], 8).bins] == [[0, 1]]


def test_textbook_baseline_is_a_valid_best_fit():
    from elasticast_kernels.bench.baselines import textbook_best_fit_decreasing

    lengths = voxceleb_like_tokens(2000, seed=8)
    bins = textbook_best_fit_decreasing(lengths, 2048)
    plan = PackPlan(bins=bins, lengths=lengths, max_tokens=2048, strategy="textbook")
    assert_valid(plan, lengths, 2048)
    assert abs(plan.num_packs - pack_lengths(lengths, 2048, "best_fit_decreasing").num_packs) <= 2


# --- the plan owns its data -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_plan_owns_its_lengths(backend):
    """Changing the caller's array after pack_lengths does not change the plan: the plan holds
    its own copy."""
    lengths = np.array([3, 4, 5, 2], dtype=np.int64)
    plan = pack_lengths(lengths, 8, "next_fit", backend=backend)
    lengths[:] = 8
    assert plan.lengths.tolist() == [3, 4, 5, 2] and plan.pack_tokens().tolist() == [7, 7]
    plan.validate()
    with pytest.raises(ValueError, match="read-only"):
        plan.lengths[0] = 1


def test_constructors_copy_their_arrays():
    lengths, order, offsets = np.array([3, 4, 5, 2]), np.array([0, 1, 2, 3]), np.array([0, 2, 4])
    flat = PackPlan.from_order(order, offsets, lengths, 8, "manual")
    bins = [np.array([0, 1]), np.array([2, 3])]
    nested = PackPlan(bins, lengths, 8, "manual")
    lengths[:], order[:], offsets[:], bins[0][:] = 9, 0, 0, 3
    for plan in (flat, nested):
        plan.validate()
        assert plan.order.tolist() == [0, 1, 2, 3] and plan.pack_offsets.tolist() == [0, 2, 4]
        assert plan.lengths.tolist() == [3, 4, 5, 2]
        assert not (plan.lengths.flags.writeable or plan.order.flags.writeable or plan.pack_offsets.flags.writeable)


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("lengths", np.array([3.0, np.nan]), ValueError, r"lengths\[1\] = nan is not an integer"),
        ("lengths", [3, 2**64], ValueError, r"lengths\[1\] = 18446744073709551616 is outside \[0, 2\*\*31 - 1\]"),
        ("lengths", [3.0, 2.0**63], ValueError, r"lengths\[1\] = 9223372036854775808 is outside \[0, 2\*\*31 - 1\]"),
        ("lengths", [3, 2**31], ValueError, r"lengths\[1\] = 2147483648 is outside \[0, 2\*\*31 - 1\]"),
        ("lengths", [3, -1], ValueError, r"lengths\[1\] = -1 is outside \[0, 2\*\*31 - 1\]"),
        ("max_tokens", 0, ValueError, r"max_tokens must be in \[1, 2147483647\], got 0"),
        ("max_tokens", 2**31, ValueError, r"max_tokens must be in \[1, 2147483647\]"),
        ("max_tokens", 8.0, TypeError, r"max_tokens must be an int, got float"),
        ("strategy", None, TypeError, r"strategy must be a str, got NoneType"),
        ("order", np.array([0, 2**63], dtype=np.uint64), ValueError, r"order\[1\] = 9223372036854775808 is outside"),
        ("order", [0, 1.5], ValueError, r"order\[1\] = 1.5 is not an integer"),
        ("offsets", [[0, 2]], ValueError, r"offsets must be 1-D"),
        ("lengths", (n for n in (3, 4)), TypeError, r"lengths must be a sequence"),
    ],
)
def test_constructors_refuse_non_integers_instead_of_wrapping(field, value, error, match):
    args = dict(order=[0, 1], offsets=[0, 2], lengths=[3, 4], max_tokens=8, strategy="manual")
    args[field] = value
    with pytest.raises(error, match=match):
        PackPlan.from_order(**args)


@pytest.mark.parametrize("changes, error, match", [
    (dict(lengths=np.array([3, -4, 5, 2])), ValueError, r"lengths\[1\] = -4 is outside \[0, 2\*\*31 - 1\]"),
    (dict(lengths=np.array([3, 2**62, 5, 2])), ValueError, r"lengths\[1\] = 4611686018427387904 is outside"),
    (dict(lengths=np.array([[3, 4], [5, 2]])), ValueError, r"lengths must be 1-D"),
    (dict(max_tokens="8"), TypeError, r"max_tokens must be an int"),
    (dict(max_tokens=-8), ValueError, r"max_tokens must be in \[1, 2147483647\]"),
    (dict(strategy=3), TypeError, r"strategy must be a str"),
    (dict(_order=np.array([0.5, 1, 2, 3])), ValueError, r"order\[0\] = 0.5 is not an integer"),
    (dict(_offsets=np.zeros(0, np.int64)), ValueError, r"offsets must be 1-D with num_packs \+ 1 >= 1"),
    (dict(_offsets=None), ValueError, r"a pickled PackPlan must hold"),
])
def test_a_restored_plan_passes_the_same_checks(changes, error, match):
    import pickle

    from test_layout import tampered

    plan = pack_lengths([3, 4, 5, 2], 8)
    with pytest.raises(error, match=match):
        pickle.loads(tampered(plan, **changes))
    copy = pickle.loads(tampered(plan))
    assert copy.order.tolist() == plan.order.tolist() and copy.max_tokens == 8


def test_cu_seqlens_of_a_pack_past_int32_is_refused():
    plan = PackPlan([[0], [1, 2]], [2**31 - 1, 2**31 - 1, 1], 2**31 - 1, "manual")
    assert plan.cu_seqlens(0).tolist() == [0, 2**31 - 1]
    with pytest.raises(ValueError, match=r"pack 1 holds 2147483648 tokens, more than int32 cu_seqlens allow"):
        plan.cu_seqlens(1)
    with pytest.raises(ValueError, match=r"more than int32"):
        plan.layout()


def test_pack_tokens_is_the_layout_rule(monkeypatch):
    """One implementation of 'tokens per pack' (layout.pack_token_counts), not a second copy."""
    from elasticast_kernels import layout

    calls = []
    real = layout.pack_token_counts

    def spy(seqlens, pack_offsets):
        calls.append((np.asarray(seqlens).tolist(), np.asarray(pack_offsets).tolist()))
        return real(seqlens, pack_offsets)

    monkeypatch.setattr(layout, "pack_token_counts", spy)
    plan = PackPlan.from_order([2, 0, 1, 3], [0, 1, 4], [3, 4, 5, 2], 16, "manual")
    assert plan.pack_tokens().tolist() == [5, 9]
    assert calls == [([5, 3, 4, 2], [0, 1, 4])]


# --- lengths given in odd forms -----------------------------------------------------------------
@pytest.mark.parametrize(
    "lengths, match",
    [
        ((n for n in (3, 4)), r"lengths must be a sequence, numpy array or tensor of integers, got generator"),
        (iter([3, 4]), r"got list_iterator"),
        ({3, 4}, r"got set"),
        ({3: 1}, r"got dict"),
        ({3: 1}.keys(), r"got dict_keys"),
        ("34", r"got str"),
        (torch.tensor([3.0, 4.0], dtype=torch.bfloat16), r"lengths must hold integers .* torch.bfloat16"),
        (torch.tensor([3.0, 4.0], dtype=torch.float16), r"torch.float16"),
        (np.array([3.0, 4.0], dtype=np.float16), r"float16"),
        (torch.empty(2, device="meta"), r"lengths is a meta tensor"),
        (torch.tensor([3, 4]).to_sparse(), r"lengths must be a dense tensor"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lengths_that_are_not_arrays_raise_type_error(lengths, match, backend):
    with pytest.raises(TypeError, match=match):
        pack_lengths(lengths, 8, backend=backend)


def test_lengths_from_ranges_tuples_and_integer_tensors_still_work():
    ref = pack_lengths([3, 4, 5], 8).order.tolist()
    for lengths in (range(3, 6), (3, 4, 5), torch.tensor([3, 4, 5], dtype=torch.int16), np.array([3, 4, 5], object),
                    torch.tensor([3.0, 4.0, 5.0], dtype=torch.float32)):
        assert pack_lengths(lengths, 8).order.tolist() == ref


def test_seed_is_deprecated_and_ignored():
    with pytest.warns(DeprecationWarning, match=r"seed=.*deprecated.*always ignored"):
        seeded = pack_lengths([3, 4, 5], 8, "histogram", seed=123)
    assert seeded.order.tolist() == pack_lengths([3, 4, 5], 8, "histogram").order.tolist()
    with pytest.raises(TypeError, match="seed"):
        pack_lengths([3, 4, 5], 8, seed="x")


def test_no_warning_without_seed():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pack_lengths([3, 4, 5], 8)
