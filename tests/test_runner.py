"""runner.py: bit-exact numpy<->torch conversion and the overrides that make illegal calls real."""
import ml_dtypes
import numpy as np
import pytest
import torch

from moe_cts.suite.rank import apply_overrides, to_numpy, to_torch, valid_rows_from
from moe_cts.model import OpParams


def test_bf16_roundtrip_is_bit_exact():
    a = (np.arange(-50, 50, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16)
    t = to_torch(a)
    assert t.dtype == torch.bfloat16
    back = to_numpy(t)
    assert back.dtype == a.dtype and back.tobytes() == a.tobytes()


def test_none_stays_none():
    assert to_torch(None) is None and to_numpy(None) is None


def test_overrides_dtype_shape_null_attr():
    kw = {"x": torch.ones(2, 3, dtype=torch.bfloat16), "scales": torch.ones(4, 3), "group_ep": "ep"}
    apply_overrides(kw, {"tensors.x.dtype": "float32", "tensors.scales": None, "attrs.group_ep": "",
                         "tensors.expert_scales": {"dtype": "float32", "shape": [2, 2]}}, "cpu")
    assert kw["x"].dtype == torch.float32 and kw["scales"] is None and kw["group_ep"] == ""
    assert tuple(kw["expert_scales"].shape) == (2, 2)
    apply_overrides(kw, {"tensors.x.shape": [2, 3, 1]}, "cpu")
    assert tuple(kw["x"].shape) == (2, 3, 1)


def test_override_of_absent_tensor_is_a_clear_error():
    with pytest.raises(ValueError, match="tensor 'scales' is not passed"):
        apply_overrides({"scales": None}, {"tensors.scales.dtype": "float16"}, "cpu")


def test_valid_rows_from_cumulative_and_counts():
    p = OpParams(product="A3", ep_world_size=2, moe_expert_num=4, bs=1, h=8, k=1)
    assert valid_rows_from(p.replace(expert_token_nums_type=0), np.array([2, 5])) == 5
    assert valid_rows_from(p.replace(expert_token_nums_type=1), np.array([2, 5])) == 7
