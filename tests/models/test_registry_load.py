"""Damaged model directories are refused naming the file; saves keep the umask."""

import json
import os

import pytest

from kfacel.models import build_model, load_model, registry, save_model


@pytest.fixture
def saved(tmp_path):
    save_model(build_model("cnn", embed_dim=8, hidden=8), tmp_path / "m")
    return tmp_path / "m"


def test_truncated_weights_are_refused_naming_the_file(saved) -> None:
    """Half a model.safetensors: a ValueError naming it, not a SafetensorError."""
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable"):
        load_model(saved)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ("{not json", ":1: not valid JSON"),
        ('{"model": "cnn", "config": [8]}', "'config' must be a JSON object"),
        ('{"model": "cnn", "config": {"depth": 3}}', "bad cnn settings"),
        ('{"model": ["cnn"], "config": {}}', "unknown model"),
    ],
)
def test_config_that_is_not_the_expected_object_is_refused(
    saved, text: str, message: str
) -> None:
    """Each malformed config.json: one ValueError naming config.json."""
    (saved / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"config\.json.*{message}"):
        load_model(saved)


def test_weights_that_do_not_fit_the_config_are_named(saved) -> None:
    """A config whose shapes differ from the weights: ValueError, not RuntimeError."""
    meta = json.loads((saved / "config.json").read_text(encoding="utf-8"))
    meta["config"]["hidden"] = 4
    (saved / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match=r"model\.safetensors: does not fit"):
        load_model(saved)


def test_config_with_a_bom_loads(saved) -> None:
    """A BOM written by an editor does not make config.json unreadable."""
    config = saved / "config.json"
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    load_model(saved)


def test_saved_directory_has_the_umask_mode(tmp_path) -> None:
    """Not mkdtemp's 0700 or safetensors' 0600: 0777 / 0666 less the umask."""
    old = os.umask(0o027)
    try:
        save_model(build_model("cnn", embed_dim=8, hidden=8), tmp_path / "m")
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o750
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o640


def test_failed_rename_restores_the_old_model_and_leaves_no_stray(
    saved, monkeypatch
) -> None:
    """Interrupted between the two renames: old model back, no .m.old-PID left."""
    before = (saved / "model.safetensors").read_bytes()
    real = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(registry.os, "replace", second_fails)
    with pytest.raises(KeyboardInterrupt):
        save_model(build_model("cnn", embed_dim=8, hidden=4), saved)
    monkeypatch.undo()
    assert (saved / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["m"]


def test_a_nan_weight_is_refused_naming_file_and_tensor(saved) -> None:
    """A NaN written into a saved tensor: refused, naming the file and the tensor."""
    from safetensors.torch import load_file, save_file

    weights = saved / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor '{name}' holds"):
        load_model(saved)


def test_a_flipped_bit_that_stays_finite_is_refused_by_the_digest(saved) -> None:
    """One exponent bit flipped in the last weight: still finite, yet refused."""
    import torch
    from safetensors.torch import load_file

    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the float32's sign/exponent byte: a finite, scaled value
    weights.write_bytes(bytes(data))
    assert all(torch.isfinite(t).all() for t in load_file(str(weights)).values())
    with pytest.raises(ValueError, match=r"model\.safetensors: its SHA-256 differs"):
        load_model(saved)


def test_a_model_left_aside_by_a_killed_writer_is_put_back_on_load(saved) -> None:
    """A kill -9 between the swap's two renames: the next load finds the model again."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()  # a pid that no longer runs
    aside = saved.with_name(f".{saved.name}.old-{child.pid}")
    saved.rename(aside)
    model = load_model(saved)
    assert model is not None
    assert saved.is_dir()
    assert not aside.exists()
