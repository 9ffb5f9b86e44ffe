"""Reading a local checkpoint's tensors: a damaged (non-finite) tensor is named."""

import pytest
import torch
from safetensors.torch import save_file

from kfacel._checkpoint import read_tensors


def test_a_nan_tensor_is_refused_naming_file_and_tensor(tmp_path) -> None:
    """A checkpoint (pretrained encoder, fine-tuned retriever) with a NaN weight."""
    bad = torch.ones(3)
    bad[1] = float("nan")
    state = {"bert.a.weight": torch.ones(2), "b.weight": bad}
    save_file(state, str(tmp_path / "model.safetensors"))
    assert torch.equal(read_tensors(tmp_path, ["a.weight"])["a.weight"], torch.ones(2))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'b\.weight'"):
        read_tensors(tmp_path, ["a.weight", "b.weight"])
