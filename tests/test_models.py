"""Models package: shapes, ablations, attention-map invariants, factory errors, weights, size counts.

Small inputs (2x3x64x64) and small widths keep the whole file within a few seconds per test on CPU.
"""

from __future__ import annotations

import itertools

import pytest
import timm
import torch
from torch import nn

from lsdc.config import load
from lsdc.errors import ConfigError
from lsdc.models import (
    AttentionConfig,
    KeypointNet,
    ModelConfig,
    count_macs,
    count_macs_of,
    count_parameters,
    create_model,
    list_models,
)
from lsdc.models.attention import CBAM, MultiHeadSelfAttention, SlotAttention

SMALL = {
    "head_widths": (8, 16),
    "eim_widths": (16, 32),
    "num_heads": 4,
    "num_slots": 3,
    "slot_dim": 16,
    "slot_iters": 2,
    "tail_widths": (16,),
    "reduction": 4,
}
SWITCHES = [c for c in itertools.product([True, False], repeat=3) if any(c)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


MODEL_KEYS = {"name", "num_classes", "in_chans", "pretrained_path", "drop_rate"}


def cfg_of(**kwargs) -> ModelConfig:
    """A ModelConfig from flat keyword arguments: model keys at the top, the rest into ``attention``."""
    attention = {k: v for k, v in kwargs.items() if k not in MODEL_KEYS}
    return ModelConfig(**{k: v for k, v in kwargs.items() if k in MODEL_KEYS},
                       attention=AttentionConfig(**attention))


def small_cfg(**kwargs) -> ModelConfig:
    return cfg_of(**{**SMALL, **kwargs})


def test_default_attention_model_shapes_and_maps() -> None:
    model = create_model(ModelConfig()).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, maps = model.forward_with_attention(x)
    assert model(x).shape == logits.shape == (2, 3)
    torch.testing.assert_close(model(x), logits)
    h = w = 64 // 16
    assert maps["cbam_spatial"].shape == (2, 1, h, w)
    assert maps["mhsa"].shape == (2, 8, h * w, h * w)
    assert maps["slot"].shape == (2, 4, h, w)


@pytest.mark.parametrize("use_cbam,use_mhsa,use_slot", SWITCHES)
def test_every_ablation_builds_and_returns_its_maps(use_cbam: bool, use_mhsa: bool, use_slot: bool) -> None:
    cfg = small_cfg(use_cbam=use_cbam, use_mhsa=use_mhsa, use_slot=use_slot, num_classes=5)
    model = create_model(cfg).eval()
    logits, maps = model.forward_with_attention(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5)
    expected = {k for k, on in (("cbam_spatial", use_cbam), ("mhsa", use_mhsa), ("slot", use_slot)) if on}
    assert set(maps) == expected


def test_slot_pool_flatten_and_grayscale_input() -> None:
    model = create_model(small_cfg(slot_pool="flatten", in_chans=1, pos_embed="none")).eval()
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_backbone_variant_puts_body_on_timm_features() -> None:
    model = create_model(cfg_of(backbone="resnet18", num_heads=4, num_slots=2, slot_dim=16)).eval()
    logits, maps = model.forward_with_attention(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3)
    assert maps["slot"].shape == (2, 2, 2, 2)  # resnet18 reduces 64 -> 2
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # the pruned backbone has no dead weights


def test_backbone_pretrained_from_local_timm_checkpoint(tmp_path) -> None:
    ref = timm.create_model("resnet18", pretrained=False)  # ImageNet-style: 1000-class fc
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = create_model(cfg_of(backbone="resnet18", backbone_pretrained_path=str(path), in_chans=1))
    torch.testing.assert_close(model.head.net.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    torch.testing.assert_close(model.head.net.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    other = tmp_path / "other.pth"
    torch.save(create_model(small_cfg()).state_dict(), other)
    with pytest.raises(ConfigError, match="backbone_pretrained_path .*other.pth does not fit"):
        create_model(cfg_of(backbone="resnet18", backbone_pretrained_path=str(other)))


@pytest.mark.parametrize("name", ["densenet201", "resnet101"])
def test_timm_baselines_via_factory(name: str) -> None:
    model = create_model(ModelConfig(name=name, num_classes=3)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_gradients_reach_every_branch_head_and_tail() -> None:
    model = create_model(small_cfg()).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 2]))
    loss.backward()
    for part in (model.head, model.body.cbam, model.body.mhsa, model.body.slot, model.tail):
        for name, param in part.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_cbam_weights_are_in_unit_interval() -> None:
    cbam = CBAM(16, reduction=4)
    x = torch.randn(2, 16, 6, 6)
    channel = cbam.channel(x)
    assert channel.shape == (2, 16, 1, 1)
    out, spatial = cbam(x, return_attention=True)
    assert out.shape == x.shape and spatial.shape == (2, 1, 6, 6)
    for weights in (channel, spatial):
        assert ((weights > 0) & (weights < 1)).all()


def test_mhsa_weights_sum_to_one_and_match_fused_kernel() -> None:
    attn = MultiHeadSelfAttention(32, num_heads=4).eval()
    x = torch.randn(2, 10, 32)
    out, weights = attn(x, return_attention=True)
    assert weights.shape == (2, 4, 10, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10))
    torch.testing.assert_close(attn(x), out, atol=1e-5, rtol=1e-5)


def test_mhsa_is_permutation_equivariant() -> None:
    attn = MultiHeadSelfAttention(32, num_heads=4).eval()
    x = torch.randn(2, 10, 32)
    perm = torch.randperm(10)
    torch.testing.assert_close(attn(x[:, perm]), attn(x)[:, perm], atol=1e-5, rtol=1e-5)


def test_slot_masks_sum_to_one_over_slots_and_eval_is_deterministic() -> None:
    slot = SlotAttention(32, slot_dim=16, num_slots=4, iters=3)
    x = torch.randn(2, 12, 32)
    slots, masks = slot.eval()(x, return_attention=True)
    assert slots.shape == (2, 4, 16) and masks.shape == (2, 4, 12)
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 12))
    torch.testing.assert_close(slot(x), slots)
    slot.train()
    assert not torch.allclose(slot(x), slot(x))  # noisy initialisation while training


def test_model_attention_maps_are_normalised() -> None:
    model = create_model(small_cfg()).eval()
    _, maps = model.forward_with_attention(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(maps["slot"].sum(1), torch.ones(2, 4, 4))
    torch.testing.assert_close(maps["mhsa"].sum(-1), torch.ones(2, 4, 16))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model name 'densenet2001'"):
        create_model(ModelConfig(name="densenet2001"))
    with pytest.raises(ConfigError, match="at least one"):
        create_model(small_cfg(use_cbam=False, use_mhsa=False, use_slot=False))
    with pytest.raises(ConfigError, match="nope.pth"):
        create_model(small_cfg(pretrained_path="/nonexistent/nope.pth"))
    with pytest.raises(ConfigError, match="nope.pth"):
        create_model(cfg_of(backbone="resnet18", backbone_pretrained_path="/nonexistent/nope.pth"))
    with pytest.raises(ConfigError, match="model.attention.backbone applies to name 'attention' only"):
        create_model(cfg_of(name="resnet18", backbone="resnet18"))
    with pytest.raises(ConfigError, match="num_heads"):
        create_model(small_cfg(num_heads=5))
    assert "attention" in list_models()


def test_model_config_loads_from_yaml_with_overrides(tmp_path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text("name: attention\nattention: {eim_widths: [32, 64], slot_pool: flatten}\n")
    cfg = load(ModelConfig, path, ["attention.use_slot=false", "attention.backbone=resnet18"])
    a = cfg.attention
    assert a.eim_widths == (32, 64) and a.slot_pool == "flatten"
    assert a.use_slot is False and a.backbone == "resnet18" and cfg.pretrained_path is None
    assert a.branches_off == ("slot",)
    with pytest.raises(ConfigError, match="attention.slot_pool"):
        load(ModelConfig, None, ["attention.slot_pool=max"])
    with pytest.raises(ConfigError, match="unknown config key 'use_slot'"):
        load(ModelConfig, None, ["use_slot=false"])  # the attention settings live under attention.


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_path_round_trip(tmp_path, suffix: str) -> None:
    cfg = small_cfg()
    model = create_model(cfg).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save({"state_dict": model.state_dict()}, path)
    torch.manual_seed(1)
    loaded = create_model(small_cfg(pretrained_path=str(path))).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))


def test_pretrained_skips_classifier_and_refuses_other_models(tmp_path) -> None:
    model = create_model(small_cfg(num_classes=3))
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    five = create_model(small_cfg(num_classes=5, pretrained_path=str(path)))
    torch.testing.assert_close(five.head.convs[0].conv.weight, model.head.convs[0].conv.weight)
    with pytest.raises(ConfigError, match="does not fit"):
        create_model(ModelConfig(name="resnet18", pretrained_path=str(path)))


def test_imagenet_style_checkpoint_into_grayscale_timm_model(tmp_path) -> None:
    ref = timm.create_model("resnet18", pretrained=False)  # 1000 classes, 3 channels
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = create_model(ModelConfig(name="resnet18", in_chans=1, pretrained_path=str(path)))
    torch.testing.assert_close(model.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert model.fc.weight.shape == (3, 512)


def test_count_parameters_and_macs() -> None:
    model = create_model(small_cfg())
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, (1, 3, 16, 16)) == 16 * 16 * 8 * 3 * 3 * 3
    assert count_macs(nn.Linear(10, 4), (2, 10)) == 2 * 10 * 4
    model.train()
    assert count_macs(model, (1, 3, 64, 64)) > 0 and model.training


def test_count_macs_of_a_whole_call_under_no_grad() -> None:
    """What a prediction runs, under torch.no_grad: a convolution twice and a linear layer, by hand, with
    what the call returned; the model's own count agrees at batch 3."""
    conv, lin = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Linear(10, 4)

    def run() -> str:
        with torch.no_grad():
            conv(torch.zeros(1, 3, 16, 16))
            conv(torch.zeros(2, 3, 16, 16))
            lin(torch.zeros(5, 10))
        return "done"

    assert count_macs_of(run) == (3 * 16 * 16 * 8 * 27 + 5 * 10 * 4, "done")
    model = create_model(small_cfg()).eval()
    with torch.no_grad():
        macs, _ = count_macs_of(lambda: model(torch.zeros(3, 3, 64, 64)))
    assert macs == 3 * count_macs(model, (1, 3, 64, 64))


@pytest.mark.parametrize("name", list_models() + ["resnet18", "densenet121"])
def test_every_registered_model_and_timm_names_build_from_their_config(name: str) -> None:
    """The factory builds every registered name (and timm names) from a ModelConfig alone: 5 x 3 logits."""
    cfg = small_cfg(name=name, num_classes=15) if name == "attention" else ModelConfig(name=name, num_classes=15)
    model = create_model(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 15)


def test_attention_config_is_the_networks_one_list_of_settings() -> None:
    """Each attention setting reaches the network: changing one changes the built architecture."""
    model = create_model(small_cfg(num_slots=5, tail_widths=(24,), eim_widths=(16, 40)))
    assert model.body.slot.num_slots == 5
    assert model.tail.fc.in_features == 24 and model.head.out_chs == 40
    assert model.body.cbam is not None and create_model(small_cfg(use_cbam=False)).body.cbam is None


@pytest.mark.parametrize("stride", [2, 4])
def test_keypoint_net_shapes(stride: int) -> None:
    heat = KeypointNet(in_chans=3, n_points=5, width=8, stride=stride).eval()
    assert heat(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64 // stride, 64 // stride)
