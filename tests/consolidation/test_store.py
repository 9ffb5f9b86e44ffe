"""Consolidation state: safetensors + JSON round trips; mismatched models are refused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from kfacel import (
    TaskState,
    build_penalty,
    estimate_diagonal,
    estimate_kfac,
    load_state,
    save_state,
    snapshot,
)
from kfacel.consolidation import state_dir
from kfacel.curvature import KFACApprox
from tests._synth import TinyRanker


def _data():
    torch.manual_seed(0)
    model = TinyRanker().double()
    batch = {
        "ids": torch.randint(0, 6, (6, 5)),
        "mask": torch.ones(6, 5, dtype=torch.bool),
    }
    return model, [(batch, torch.tensor([0, 1, 2, 0, 1, 2]))]


def test_round_trip_restores_anchor_factors_and_meta(tmp_path) -> None:
    model, batches = _data()
    fisher = estimate_kfac(model, batches, uncovered="diagonal")
    diag = estimate_diagonal(model, batches)
    save_state(tmp_path, TaskState("A", "kfac", snapshot(model), fisher))
    save_state(tmp_path, TaskState("B task", "ewc", snapshot(model), diag))
    save_state(tmp_path, TaskState("C", "l2", snapshot(model), None))
    a, b, c = load_state(tmp_path, model)
    assert [s.task for s in (a, b, c)] == ["A", "B task", "C"]
    assert a.meta["fisher_kind"] == "empirical"
    assert a.meta["num_examples"] == 6
    assert set(a.meta["uncovered"]) == {"norm.weight", "norm.bias"}
    for name, f in fisher.items():
        assert torch.equal(a.curvature[name].A, f.A)
        assert torch.equal(a.curvature[name].G, f.G)
    for name, t in fisher.diagonal.items():
        assert torch.equal(a.curvature.diagonal[name], t)
    for name, t in diag.items():
        assert torch.equal(b.curvature[name], t)
    for name, t in snapshot(model).items():
        assert torch.equal(c.anchor[name], t)
    pen = build_penalty("kfac", [a], [2.0])
    assert float(pen(model).detach()) == 0.0


def test_reduce_state_round_trips_and_old_states_read_as_expand(tmp_path) -> None:
    """K-FAC-reduce (K8) factors and their name survive save/load; no key = expand."""
    model, batches = _data()
    fisher = estimate_kfac(model, batches, approx=KFACApprox.REDUCE)
    path = save_state(tmp_path, TaskState("A", "kfac", snapshot(model), fisher))
    assert json.loads(path.read_text())["approx"] == "reduce"
    (a,) = load_state(tmp_path, model)
    assert a.curvature.approx is KFACApprox.REDUCE
    assert a.meta["approx"] == "reduce"
    for name, f in fisher.items():
        assert torch.equal(a.curvature[name].A, f.A)
        assert torch.equal(a.curvature[name].G, f.G)
    meta = json.loads(path.read_text())
    del meta["approx"]  # a state written before K-FAC-reduce existed
    path.write_text(json.dumps(meta))
    (old,) = load_state(tmp_path, model)
    assert old.curvature.approx is KFACApprox.EXPAND


def test_files_are_safetensors_and_json_with_packed_factors(tmp_path) -> None:
    model, batches = _data()
    fisher = estimate_kfac(model, batches)
    path = save_state(tmp_path, TaskState("A", "kfac", snapshot(model), fisher))
    meta = json.loads(path.read_text())
    assert meta["method"] == "kfac"
    assert meta["layers"]["enc"]["bias"] == "enc.bias"
    tensors = load_file(str(path.with_suffix(".safetensors")))
    o = fisher["enc"].G.shape[0]
    assert tensors["kfac/enc/G"].numel() == o * (o + 1) // 2  # upper triangle only


def test_mismatched_model_is_refused_with_names(tmp_path) -> None:
    model, batches = _data()
    save_state(
        tmp_path, TaskState("A", "kfac", snapshot(model), estimate_kfac(model, batches))
    )
    with pytest.raises(
        ValueError, match=r"emb\.weight: state \(9, 4\), model \(12, 4\)"
    ):
        load_state(tmp_path, TinyRanker(vocab=12).double())


def test_states_carry_forward_to_a_new_model_dir(tmp_path) -> None:
    model, _ = _data()
    save_state(tmp_path / "v1", TaskState("A", "l2", snapshot(model), None))
    for state in load_state(tmp_path / "v1"):  # as save_linker(..., states=) does
        save_state(tmp_path / "v2", state)
    save_state(tmp_path / "v2", TaskState("B", "l2", snapshot(model), None))
    assert [s.task for s in load_state(tmp_path / "v2")] == ["A", "B"]
    assert len(list(state_dir(tmp_path / "v1").glob("*.json"))) == 1


def test_failed_write_leaves_earlier_states_intact(tmp_path, monkeypatch) -> None:
    model, _ = _data()
    save_state(tmp_path, TaskState("A", "l2", snapshot(model), None))
    before = sorted(p.name for p in state_dir(tmp_path).iterdir())

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("kfacel.consolidation.store.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_state(tmp_path, TaskState("B", "l2", snapshot(model), None))
    assert sorted(p.name for p in state_dir(tmp_path).iterdir()) == before
    assert [s.task for s in load_state(tmp_path, model)] == ["A"]


# --- tampered or damaged states are refused, naming file and tensor --------


def _saved(tmp_path):
    """A K-FAC state (with diagonal fallback) and an EWC state of one model."""
    model, batches = _data()
    fisher = estimate_kfac(model, batches, uncovered="diagonal")
    save_state(tmp_path, TaskState("A", "kfac", snapshot(model), fisher))
    diag = estimate_diagonal(model, batches)
    save_state(tmp_path, TaskState("B", "ewc", snapshot(model), diag))
    return model, sorted(state_dir(tmp_path).glob("*.safetensors"))


def _tamper(path, name, change) -> None:
    from safetensors.torch import save_file

    tensors = load_file(str(path))
    tensors[name] = change(tensors[name])
    save_file(tensors, str(path))


def _negate_top(t):
    return torch.cat([-t[:1] * 1e3, t[1:]])  # packed triangle: entry (0, 0)


def _flip_exponent(t):
    """The top exponent bit of entry 0 set, as a bit flip does: finite, 2¹²⁸ times."""
    out = t.float().clone()
    out.view(torch.int32).view(-1)[0] |= 1 << 30
    return out.to(t.dtype)


@pytest.mark.parametrize(
    ("which", "name", "change", "message"),
    [
        (0, "anchor/enc.weight", lambda t: t * float("nan"), "NaN or infinite"),
        (0, "kfac/conv/A", lambda t: t + float("inf"), "NaN or infinite"),
        (0, "kfac/enc/G", _negate_top, "not positive semi-definite"),
        (0, "kfac/head/A", lambda t: -t, "not positive semi-definite"),
        (0, "kfac/emb/A", lambda t: t - t.max(), "negative entry"),
        (0, "diag/norm.weight", lambda t: -t - 1, "negative entry"),
        (1, "diag/head.weight", lambda t: t - 2 * t.max(), "negative entry"),
        (0, "anchor/head.bias", lambda t: t.to(torch.int64), "wrong dtype"),
        (1, "anchor/enc.weight", _flip_exponent, "is damaged: .*penalty is inf"),
        (1, "diag/enc.bias", lambda t: t.to(torch.float16), "wrong dtype"),
    ],
)
def test_tampered_tensor_is_refused_naming_file_and_tensor(
    tmp_path, which, name, change, message
) -> None:
    """Each damaged tensor: one ValueError with the .safetensors file and its name."""
    model, files = _saved(tmp_path)
    _tamper(files[which], name, change)
    pattern = rf"{files[which].name}: tensor '{name}' .*{message}"
    with pytest.raises(ValueError, match=pattern):
        load_state(tmp_path, model)


def test_rounding_below_zero_is_not_negative_curvature(tmp_path) -> None:
    """A factor a rounding error below PSD loads; a factor far below does not."""
    model, files = _saved(tmp_path)
    n = 4
    v = torch.randn(n, 1, dtype=torch.float64)
    for scale, ok in ((1e-9, True), (1e-3, False)):
        G = v @ v.T - scale * float((v**2).sum()) * torch.eye(n, dtype=torch.float64)
        i, j = torch.triu_indices(n, n)
        _tamper(files[0], "kfac/enc/G", lambda _t, G=G, i=i, j=j: G[i, j].contiguous())
        if ok:
            load_state(tmp_path, model)
        else:
            with pytest.raises(ValueError, match="kfac/enc/G' is not positive"):
                load_state(tmp_path, model)


def test_truncated_state_file_is_refused_naming_it(tmp_path) -> None:
    """A truncated .safetensors: a ValueError naming it, not a SafetensorError."""
    model, files = _saved(tmp_path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{files[1].name}: not a readable"):
        load_state(tmp_path, model)


def test_state_metadata_that_is_not_an_object_is_refused(tmp_path) -> None:
    """A JSON list as metadata: refused naming the file."""
    model, files = _saved(tmp_path)
    files[0].with_suffix(".json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"00-A\.json: .*JSON object"):
        load_state(tmp_path, model)


def _saved_low_rank(tmp_path):
    """A K-FAC state whose factors larger than 2 are kept at rank 2 (K10)."""
    from kfacel import compress_factors

    model, batches = _data()
    fisher = compress_factors(estimate_kfac(model, batches), 2)
    save_state(tmp_path, TaskState("A", "kfac", snapshot(model), fisher))
    return model, fisher, sorted(state_dir(tmp_path).glob("*.safetensors"))[0]


def test_low_rank_state_round_trips_and_stores_only_its_eigenpairs(tmp_path) -> None:
    from kfacel.curvature.factors import LowRankFactor

    model, fisher, path = _saved_low_rank(tmp_path)
    (state,) = load_state(tmp_path, model)
    for name, f in fisher.items():
        for which in ("A", "G"):
            want, got = getattr(f, which), getattr(state.curvature[name], which)
            assert type(got) is type(want)
            if isinstance(want, LowRankFactor):
                assert torch.equal(got.U, want.U)
                assert torch.equal(got.s, want.s)
                assert torch.equal(got.sigma, want.sigma)
    stored = load_file(str(path))
    assert stored["kfac/enc/A.U"].shape == (5, 2)  # d + bias rows, rank 2
    assert "kfac/enc/A" not in stored


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("kfac/enc/A.s", lambda t: -t, "negative entry"),
        ("kfac/enc/A.sigma", lambda t: t - 1, "negative entry"),
        ("kfac/enc/A.U", lambda t: 2 * t, "not orthonormal"),
    ],
)
def test_damaged_low_rank_factor_is_refused_naming_it(
    tmp_path, name, change, message
) -> None:
    model, _, path = _saved_low_rank(tmp_path)
    _tamper(path, name, change)
    with pytest.raises(ValueError, match=rf"{path.name}: tensor '{name}' .*{message}"):
        load_state(tmp_path, model)


class _TwoReaders(torch.nn.Module):
    """``q`` and ``k`` read the same input (as attention's queries and keys do)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(torch.cat([self.q(x), self.k(x)], -1)))


def _two_readers(rank: int | None = None):
    from kfacel import compress_factors

    torch.manual_seed(0)
    model = _TwoReaders().double()
    batches = [(torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1] * 2))]
    fisher = estimate_kfac(model, batches)
    if rank is not None:
        fisher = compress_factors(fisher, rank)
    return model, fisher


@pytest.mark.parametrize("rank", [None, 2])
def test_equal_factors_are_stored_once_and_read_back_for_every_layer(
    tmp_path, rank
) -> None:
    """``q`` and ``k`` read the same input: one A on disk, both layers get it back."""
    model, fisher = _two_readers(rank)
    assert not torch.equal(fisher["q"].G, fisher["k"].G)
    state = TaskState("A", "kfac", snapshot(model), fisher)
    save_state(tmp_path, state)
    stored = load_file(str(next(state_dir(tmp_path).glob("*.safetensors"))))
    suffix = "" if rank is None else ".U"
    assert f"kfac/q/A{suffix}" in stored
    assert f"kfac/k/A{suffix}" not in stored
    meta = json.loads(next(state_dir(tmp_path).glob("*.json")).read_text())
    assert meta["shared_factors"] == {"kfac/k/A": "kfac/q/A"}
    assert state.nbytes() == sum(t.numel() * 8 for t in stored.values())
    (loaded,) = load_state(tmp_path, model)
    for name in ("q", "k"):
        torch.testing.assert_close(
            loaded.curvature[name].to_dense(), fisher[name].to_dense(), rtol=0, atol=0
        )
    save_state(tmp_path / "again", replace(loaded, curvature=None, method="l2"))
    meta = json.loads(next(state_dir(tmp_path / "again").glob("*.json")).read_text())
    assert "shared_factors" not in meta  # the loaded map described the first file


def test_a_damaged_shared_factor_is_named_by_its_key_on_disk(tmp_path) -> None:
    model, fisher = _two_readers()
    save_state(tmp_path, TaskState("A", "kfac", snapshot(model), fisher))
    path = next(state_dir(tmp_path).glob("*.safetensors"))
    _tamper(path, "kfac/q/A", lambda t: -t)
    with pytest.raises(ValueError, match=r"tensor 'kfac/q/A' is not positive"):
        load_state(tmp_path, model)


def test_states_beyond_99_are_loaded_in_numeric_order(tmp_path) -> None:
    """120 saved states load back as 120, in save order (``100-`` after ``99-``)."""
    anchor = {"w": torch.zeros(1)}
    for i in range(120):
        save_state(tmp_path, TaskState(f"t{i}", "l2", anchor, None))
    names = sorted(p.name for p in state_dir(tmp_path).glob("*.json"))
    assert "100-t100.json" in names
    assert "119-t119.json" in names
    assert [s.task for s in load_state(tmp_path)] == [f"t{i}" for i in range(120)]
