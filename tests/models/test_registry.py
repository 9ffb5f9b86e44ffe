"""Model directories: saved rankers load back with identical logits; atomic writes."""

import json

import pytest
import torch

from kfacel.data.collate import Collator
from kfacel.models import build_model, load_model, read_model_config, save_model
from tests._synth import TINY_BERT, synthetic_examples


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("cnn", {"embed_dim": 8, "hidden": 16, "num_features": 7, "num_types": 3}),
        ("transformer", {"encoder_config": TINY_BERT, "layers": 2, "num_types": 3}),
    ],
)
def test_saved_model_loads_back_with_identical_logits(
    tmp_path, tokenizer, name, config
):
    batch = Collator(tokenizer)(synthetic_examples(4, seed=0))
    model = build_model(name, **config).eval()
    save_model(model, tmp_path / "m", extra={"collate": {"max_name_length": 16}})
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded(batch), model(batch))
    meta = read_model_config(tmp_path / "m")
    assert meta["model"] == name
    assert meta["collate"] == {"max_name_length": 16}


def test_a_failed_save_leaves_the_old_model_in_place(tmp_path):
    model = build_model("cnn", embed_dim=8, hidden=8)
    save_model(model, tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def fail(_tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_model(
            build_model("cnn", embed_dim=8, hidden=4), tmp_path / "m", write_files=fail
        )
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_loading_refuses_mismatched_weights(tmp_path):
    save_model(build_model("cnn", embed_dim=8, hidden=8), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["hidden"] = 4
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises((ValueError, RuntimeError)):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model(tmp_path / "nothing")
