"""Model factory: timm registry names, the registered conv-stem ViT, and clear errors."""

from pathlib import Path

import pytest
import torch
import yaml

from qatstudy.models import ConvStemPatchEmbed, count_parameters, create_model

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "vit", "swin"])
def test_default_models_build_for_28x28_grayscale(name):
    spec = yaml.safe_load((REPO / "config.yaml").read_text())["models"][name]
    model = create_model(spec["arch"], num_classes=10, in_chans=1, kwargs=spec.get("kwargs"))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert count_parameters(model) > 10_000


def test_convstem_vit_has_a_conv_stem_and_49_tokens():
    model = create_model("vit_convstem_tiny", num_classes=10, in_chans=1)
    assert isinstance(model.patch_embed, ConvStemPatchEmbed)
    convs = [m for m in model.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1)]  # two stride-2 stages, then 1x1 to embed_dim
    assert model.patch_embed.num_patches == 49
    tokens = model.forward_features(torch.randn(1, 1, 28, 28))
    assert tokens.shape == (1, 49, 64)


def test_convstem_swin_has_14x14_tokens_in_7x7_windows():
    model = create_model("swin_convstem_tiny", num_classes=10, in_chans=1)
    assert isinstance(model.patch_embed, ConvStemPatchEmbed)
    assert model.patch_embed.grid_size == (14, 14)
    assert model.layers[0].blocks[0].window_size == (7, 7)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_zero_init_head_starts_every_logit_at_zero():
    torch.manual_seed(0)
    model = create_model("mobilenetv2_050", num_classes=10, in_chans=1, zero_init_head=True).eval()
    with torch.no_grad():
        assert torch.count_nonzero(model(torch.randn(2, 1, 28, 28))) == 0
    assert torch.count_nonzero(model.conv_stem.weight) > 0  # only the classifier starts at zero


def test_convstem_rejects_patch_sizes_that_are_not_powers_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        create_model("vit_convstem_tiny", num_classes=10, in_chans=1, kwargs={"patch_size": 7})


def test_unknown_architecture_names_the_config_key():
    with pytest.raises(ValueError, match=r"models\.<name>\.arch"):
        create_model("no_such_net", num_classes=10, in_chans=1)


def test_unreachable_pretrained_weights_fail_clearly(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-cache")
    with pytest.raises(RuntimeError, match=r"models\.<name>\.pretrained"):
        create_model("resnet10t", num_classes=10, in_chans=1, pretrained=True)
