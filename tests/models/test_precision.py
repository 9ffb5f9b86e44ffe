"""What each precision runs in: ``auto`` picks per device, model and CPU."""

import pytest
import torch
from torch import nn

from kfacel.models import precision
from kfacel.models.bert import BertRanker
from kfacel.models.cnn import CNNRanker
from kfacel.models.precision import autocast_dtype, cpu_has_bfloat16, penalty_autocast


class _Wants(nn.Module):
    cpu_bfloat16 = True


@pytest.mark.parametrize("units", [True, False])
def test_auto_on_the_cpu_is_bfloat16_for_a_ranker_that_asks_on_a_cpu_with_units(
    monkeypatch, units
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: units)
    expected = torch.bfloat16 if units else None
    assert autocast_dtype("cpu", "auto", _Wants()) is expected
    assert autocast_dtype("cpu", "auto", nn.Linear(2, 2)) is None  # does not ask
    assert autocast_dtype("cpu", "auto") is None
    assert autocast_dtype("cpu", "float32", _Wants()) is None  # asked for: kept
    assert autocast_dtype("cuda", "auto", _Wants()) is torch.float16
    with penalty_autocast("cpu", "auto", _Wants()):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == (torch.bfloat16 if units else torch.float32)


def test_the_transformer_asks_for_bfloat16_and_the_cnn_does_not() -> None:
    assert BertRanker.cpu_bfloat16 is True
    assert not hasattr(CNNRanker, "cpu_bfloat16")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(True, False, True), (False, True, True), (False, False, False)],
)
def test_bfloat16_units_are_avx512_bf16_or_amx(
    monkeypatch, avx512_bf16, amx, expected
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_has_bfloat16() is expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert cpu_has_bfloat16() is False  # a torch without the probes: float32
