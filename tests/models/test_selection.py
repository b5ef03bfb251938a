"""Weight selection: index rules, selected tensors equal teacher slices, channel consistency, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from medlite.errors import ModelError
from medlite.models import create_model
from medlite.models.checkpoint import save_weights
from medlite.models.selection import SELECTION_METHODS, select_indices, select_weights

SUPPORTED = [
    ("hybridnet_xr_150", "hybridnet_xr_50"),
    ("hybridnet_xr_150", "hybridnet_xr_100"),
    ("mobilenet_v2_140", "mobilenet_v2"),
    ("mobilenet_v2_140", "mobilenet_v2_050"),
    ("vit_small_patch16", "vit_tiny_patch16"),
]


def _model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=3, **kwargs)


# -- index rules ------------------------------------------------------------------------------------------
def test_uniform_indices_follow_the_official_rule():
    assert select_indices(12, 4).tolist() == [0, 3, 6, 9]  # divisible: step D/d
    # not divisible: round(linspace(0, D-1, d)) (the fixed form: last index D-1, integer dtype)
    assert select_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert select_indices(7, 3).tolist() == [0, 3, 6]
    assert select_indices(10, 4).dtype == torch.int64
    assert select_indices(5, 5).tolist() == [0, 1, 2, 3, 4]


def test_consecutive_and_pairs():
    assert select_indices(10, 4, "consecutive").tolist() == [0, 1, 2, 3]
    assert select_indices(10, 4, "consecutive", pair=1).tolist() == [6, 7, 8, 9]
    even, odd = select_indices(8, 4, pair=0), select_indices(8, 4, pair=1)
    assert even.tolist() == [0, 2, 4, 6] and odd.tolist() == [1, 3, 5, 7]
    for big, small in ((10, 4), (12, 4), (9, 3), (384, 192), (576, 192)):
        for method in SELECTION_METHODS:
            a = set(select_indices(big, small, method, pair=0, seed=1, key="k").tolist())
            b = set(select_indices(big, small, method, pair=1, seed=1, key="k").tolist())
            assert len(a) == len(b) == small and not a & b, (big, small, method)  # disjoint when D >= 2d
    # pair 0 equals the single-student rule whenever d divides D
    assert select_indices(12, 4, pair=0).tolist() == select_indices(12, 4).tolist()
    # exact integer arithmetic: floor(i D/d + pair D/2d), where float32 would be off by one for some pairs
    for big, small in ((96, 74), (96, 41), (40, 16), (1792, 1280)):
        for pair in (0, 1):
            want = [(2 * i * big + pair * big) // (2 * small) for i in range(small)]
            assert select_indices(big, small, pair=pair).tolist() == want, (big, small, pair)


def test_random_rules_are_consistent_per_size_pair_or_not():
    a = select_indices(40, 16, "random-consistent", seed=3, key="x")
    assert a.tolist() == select_indices(40, 16, "random-consistent", seed=3, key="y").tolist()
    assert a.tolist() != select_indices(40, 16, "random-consistent", seed=4).tolist()
    assert torch.all(a[1:] > a[:-1]) and a.max() < 40
    r1 = select_indices(40, 16, "random", seed=3, key="x")
    r2 = select_indices(40, 16, "random", seed=3, key="y")
    assert r1.tolist() != r2.tolist()


def test_bad_index_requests():
    with pytest.raises(ModelError, match="cannot select 5 of 4"):
        select_indices(4, 5)
    with pytest.raises(ModelError, match="unknown selection method 'best'"):
        select_indices(8, 4, "best")


# -- whole models -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("teacher", "student"), SUPPORTED)
def test_supported_pairs_select_teacher_slices(teacher, student):
    big, small = _model(teacher, 1), _model(student, 2)
    head_before = {k: v.clone() for k, v in small.state_dict().items() if k.startswith(small.cfg.classifier + ".")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = select_weights(small, big)
    t_state, s_state = big.state_dict(), small.state_dict()
    assert len(report.selected) + len(report.copied) > 20
    assert set(report.skipped) == set(head_before)  # only the classifier is left out ...
    for name, value in head_before.items():  # ... and keeps its fresh initialisation
        torch.testing.assert_close(s_state[name], value, rtol=0, atol=0)
    for name in report.selected:
        expected = t_state[name]
        for axis, (d_big, d_small) in enumerate(zip(expected.shape, s_state[name].shape, strict=True)):
            if d_big == d_small:
                continue
            if expected.ndim == 4 and axis >= 2:
                index = torch.arange((d_big - d_small) // 2, (d_big - d_small) // 2 + d_small)
            elif (name.endswith("qkv.weight") or name.endswith("qkv.bias")) and axis == 0:
                part = select_indices(d_big // 3, d_small // 3)
                index = torch.cat([part + c * (d_big // 3) for c in range(3)])
            else:
                index = select_indices(d_big, d_small)
            expected = expected.index_select(axis, index)
        torch.testing.assert_close(s_state[name], expected, rtol=0, atol=0, msg=name)
    x = torch.randn(2, 1, 64, 64)
    assert torch.isfinite(small.eval()(x)).all()


def _encode_channels(model: torch.nn.Module) -> None:
    """Fill every tensor so that an element's value tells its indices: out * 1000 + in (1-D: the index)."""
    with torch.no_grad():
        for value in model.state_dict().values():
            if not value.dtype.is_floating_point:
                continue
            out_idx = torch.arange(value.shape[0], dtype=value.dtype).reshape(-1, *([1] * (value.ndim - 1)))
            code = out_idx * (1000 if value.ndim >= 2 else 1)
            if value.ndim >= 2:
                code = code + torch.arange(value.shape[1], dtype=value.dtype).reshape(1, -1, *([1] * (value.ndim - 2)))
            value.copy_(code.expand_as(value))


def _ids(state: dict[str, torch.Tensor], name: str, axis: int) -> list[int]:
    value = state[name]
    flat = value.reshape(value.shape[0], value.shape[1], -1)[:, :, 0] if value.ndim >= 2 else value[:, None]
    codes = flat[:, 0] if axis == 0 else flat[0, :]
    return [int(c) // 1000 if axis == 0 and value.ndim >= 2 else int(c) % 1000 if value.ndim >= 2 else int(c)
            for c in codes]


# The residual stream of HybridNet-XR's stage 1 (identity shortcuts in blocks 1 and 2): every tensor axis below
# carries those channels, so a consistent selection takes the same teacher channels in all of them.
STAGE1_STREAM = [
    ("stages.1.0.conv.conv_pw.weight", 0), ("stages.1.0.conv.bn2.running_mean", 0),
    ("stages.1.0.shortcut.conv.weight", 0), ("stages.1.0.shortcut.bn.weight", 0),
    ("stages.1.1.conv.conv_dw.weight", 0), ("stages.1.1.conv.bn1.running_var", 0),
    ("stages.1.1.conv.conv_pw.weight", 1), ("stages.1.1.conv.conv_pw.weight", 0),
    ("stages.1.2.conv.conv_dw.weight", 0), ("stages.1.2.conv.conv_pw.weight", 1),
    ("stages.2.0.shortcut.conv.weight", 1), ("stages.2.0.conv.conv_dw.weight", 0),
]


@pytest.mark.parametrize("method", ["uniform", "consecutive", "random-consistent"])
@pytest.mark.parametrize("pair", [None, 1])
def test_selection_is_consistent_along_a_residual_path(method, pair):
    teacher = _model("hybridnet_xr_150")
    _encode_channels(teacher)
    student = _model("hybridnet_xr_50")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        select_weights(student, teacher, method=method, pair=pair, seed=5)
    state = student.state_dict()
    chosen = {(name, axis): _ids(state, name, axis) for name, axis in STAGE1_STREAM}
    first = next(iter(chosen.values()))
    assert len(first) == 48 and len(set(first)) == 48 and max(first) < 144
    for where, ids in chosen.items():
        assert ids == first, where


def test_random_without_consistency_breaks_the_residual_path():
    teacher = _model("hybridnet_xr_150")
    _encode_channels(teacher)
    student = _model("hybridnet_xr_50")
    select_weights(student, teacher, method="random", seed=5)
    state = student.state_dict()
    chosen = [tuple(_ids(state, name, axis)) for name, axis in STAGE1_STREAM]
    assert len(set(chosen)) > 1  # the ablation the paper reports as clearly worse


def test_vit_query_key_value_stay_aligned_with_the_projection():
    teacher = _model("vit_small_patch16")
    _encode_channels(teacher)
    student = _model("vit_tiny_patch16")
    select_weights(student, teacher, method="random-consistent", seed=2)
    state = student.state_dict()
    rows = _ids(state, "blocks.0.attn.qkv.weight", 0)
    q, k, v = rows[:192], [r - 384 for r in rows[192:384]], [r - 768 for r in rows[384:]]
    assert q == k == v  # each head's query, key and value read the same teacher channels
    assert _ids(state, "blocks.0.attn.proj.weight", 1) == v  # attention output -> projection input
    assert _ids(state, "blocks.0.attn.qkv.weight", 1) == _ids(state, "blocks.0.norm1.weight", 0)


def test_pair_students_get_complementary_channels_and_overlap_is_reported(recwarn):
    teacher = _model("hybridnet_xr_150")
    _encode_channels(teacher)
    a, b = _model("hybridnet_xr_50"), _model("hybridnet_xr_50")
    select_weights(a, teacher, pair=0)
    select_weights(b, teacher, pair=1)
    name = "stages.3.0.conv.conv_pw.weight"  # 576 -> 192 output channels: w = 3
    ids_a, ids_b = _ids(a.state_dict(), name, 0), _ids(b.state_dict(), name, 0)
    assert ids_a == list(range(0, 576, 3)) and ids_b == list(range(1, 576, 3))
    assert not recwarn.list
    with pytest.warns(UserWarning, match="share some teacher channels"):
        report = select_weights(_model("hybridnet_xr_100"), teacher, pair=1)  # w = 1.5 < 2
    assert (144, 96) in report.overlapping


def test_bn_buffers_and_an_rgb_stem_are_selected(tmp_path):
    teacher = _model("hybridnet_xr_150", in_chans=3)
    path = save_weights(teacher, tmp_path / "teacher.safetensors")
    student = _model("hybridnet_xr_50", in_chans=1)
    select_weights(student, path)
    t, s = teacher.state_dict(), student.state_dict()
    index = select_indices(40, 16)
    torch.testing.assert_close(s["stem.conv.0.weight"], t["stem.conv.0.weight"].sum(1, keepdim=True)[index])
    torch.testing.assert_close(s["stem.conv.1.running_var"], t["stem.conv.1.running_var"][index])


@pytest.mark.parametrize(("teacher", "student", "tensor"), [
    ("resnet50", "resnet18", "layer1.0.conv1.weight"),  # one family, other block type: 1x1 vs 3x3 kernels
    ("hybridnet_xr_150", "mobilenet_v2", "features.0.0.weight"),  # other family: no such tensor
    ("hybridnet_xr_50", "hybridnet_xr_150", "stem.conv.0.weight"),  # the "teacher" is smaller
])
def test_unsupported_pairs_name_the_first_mismatching_tensor(teacher, student, tensor):
    small = _model(student, 3)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(ModelError) as info:
        select_weights(small, _model(teacher))
    message = str(info.value)
    assert f"'{tensor}'" in message and "\n" not in message
    for key, value in small.state_dict().items():  # nothing was changed
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_teacher_must_be_a_finished_run_or_a_file(tmp_path):
    import medlite

    with pytest.raises(ModelError, match="not a finished run directory"):
        medlite.select_weights(_model("hybridnet_xr_50"), tmp_path)  # run directories resolve in the API
    with pytest.raises(ModelError, match="does not exist"):
        select_weights(_model("hybridnet_xr_50"), tmp_path / "missing.safetensors")


def test_a_bare_module_or_a_scrambled_position_grid_is_refused():
    with pytest.raises(ModelError, match="needs a zoo model from create_model"):
        select_weights(torch.nn.Linear(4, 2), {"weight": torch.zeros(8, 8), "bias": torch.zeros(8)})
    teacher = _model("vit_small_patch16").state_dict()
    teacher["pos_embed"] = teacher["pos_embed"][:, :150]  # 149 patch tokens: not a square grid
    with pytest.raises(ModelError, match="'pos_embed': cannot map 150 teacher tokens to 197"):
        select_weights(_model("vit_tiny_patch16"), teacher)


def test_vit_position_embedding_is_resampled_for_another_input_size():
    teacher = _model("vit_small_patch16")  # 14 x 14 grid at 224 px
    student = create_model("vit_tiny_patch16", num_classes=3, img_size=112)  # 7 x 7 grid
    select_weights(student, teacher)
    assert student.pos_embed.shape == (1, 1 + 49, 192)
    torch.testing.assert_close(student.pos_embed[0, 0], teacher.pos_embed[0, 0, select_indices(384, 192)])
