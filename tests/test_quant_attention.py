"""ViT attention internals: quantized Q, K, V and attention probabilities in timm ViT and Swin."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from timm.layers.attention import Attention
from timm.models.cait import Cait
from timm.models.swin_transformer import WindowAttention

from helpers import export_quantized, make_tiny_dataset
from qatstudy import export, quant
from qatstudy.batches import Splits
from qatstudy.checkpoints import build, save_checkpoint
from qatstudy.models import create_model
from qatstudy.quant import QuantScheme, QuantViTAttention, QuantWindowAttention

TINY = {
    "vit": ("vit_convstem_tiny", {"embed_dim": 16, "depth": 2, "num_heads": 2}),
    "swin": ("swin_convstem_tiny", {"embed_dim": 16, "num_heads": [2, 2]}),
}


def _model(name: str) -> torch.nn.Module:
    arch, kwargs = TINY[name]
    torch.manual_seed(0)
    return create_model(arch, num_classes=10, in_chans=1, kwargs=kwargs).eval()


@pytest.mark.parametrize("name", TINY)
def test_quantized_attention_reproduces_timm_when_quantizers_observe(name):
    """With every quantizer passing values through, the rewritten forward is timm's forward."""
    reference = _model(name)
    model = _model(name)
    assert quant.quantize_attention(model, 8) == sum(
        isinstance(m, (Attention, WindowAttention)) for m in reference.modules()
    )
    for _, q in quant.quantizers(model):
        q.observer = lambda x: None
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_calibration_initialises_attention_quantizers_with_the_right_signs(name):
    model = quant.quantize_model(_model(name), QuantScheme(4, 4, quantize_attention=True, attention_bits=6))
    attention = [m for m in model.modules() if isinstance(m, (QuantViTAttention, QuantWindowAttention))]
    assert attention
    quant.calibrate(model, [torch.randn(8, 1, 28, 28)], method="mse")
    for module in attention:
        assert all(
            bool(q.initialized)
            for q in (module.q_quantizer, module.k_quantizer, module.v_quantizer, module.attn_quantizer)
        )
        assert not module.attn_quantizer.signed  # softmax probabilities are never negative
        assert module.q_quantizer.signed and module.v_quantizer.signed
        assert module.attn_quantizer.bits == 6 and module.qkv.weight_quantizer.bits == 4
        # the step covers probabilities: (2^6 - 1) steps span at most [0, 1]
        assert 0 < float(module.attn_quantizer.step) * 63 <= 1.0 + 1e-6


def test_attention_steps_learn():
    model = quant.quantize_model(_model("vit"), QuantScheme(4, 4, quantize_attention=True))
    quant.calibrate(model, [torch.randn(8, 1, 28, 28)], method="minmax")
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,))).backward()
    block = model.blocks[0].attn
    for q in (block.q_quantizer, block.k_quantizer, block.v_quantizer, block.attn_quantizer):
        assert q.step.grad is not None and q.step.grad.abs().sum() > 0


def test_without_quantize_attention_the_attention_stays_timm_s():
    model = quant.quantize_model(_model("vit"), QuantScheme(4, 4))
    assert not any(isinstance(m, QuantViTAttention) for m in model.modules())


@pytest.mark.parametrize("name", TINY)
def test_attention_quantized_model_exports_with_qdq_matmul_inputs(name):
    model = quant.quantize_model(_model(name), QuantScheme(8, 8, quantize_attention=True))
    quant.calibrate(model, [torch.randn(8, 1, 28, 28)], method="minmax")
    x = torch.randn(4, 1, 28, 28)
    expected, exported = export_quantized(model, x)
    graph = onnx.load_from_string(exported).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and all(i in producers for i in n.input)]

    # the two attention matmuls per block take dequantized operands (through layout ops)
    def source(name):
        seen = name
        while producers.get(seen) in {"Transpose", "Reshape", "Mul"}:
            seen = next(n for n in graph.node if seen in n.output).input[0]
        return producers.get(seen)

    activation_matmuls = [n for n in matmuls if all(source(i) == "DequantizeLinear" for i in n.input)]
    blocks = sum(isinstance(m, (QuantViTAttention, QuantWindowAttention)) for m in model.modules())
    assert len(activation_matmuls) >= 2 * blocks
    actual = ort.InferenceSession(exported, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert (actual.argmax(1) == expected.argmax(1)).all()
    assert np.abs(actual - expected).max() <= 0.05 * np.abs(expected).max()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("attention_data"), val_size=40)


@pytest.mark.parametrize(
    "arch, options",
    [
        ("vit_convstem_tiny", {"quantize_attention": True}),
        ("swin_convstem_tiny", {"quantize_attention": True}),
        ("vit_convstem_tiny", {"act_asymmetric": True}),
    ],
)
def test_default_transformers_export_in_both_layouts(arch, options, tiny_data, tmp_path, monkeypatch):
    """The study's default ViT and Swin (their own sizes: 64-wide, so the TensorRT file takes INT4 weights at opset
    21) at W4A4 export with quantized attention, and with LSQ+ activations, through onnxruntime with its
    optimizations on: the reference graph and the TensorRT layout compute PyTorch's function (K's Transpose comes
    before its QuantizeLinear, else onnxruntime refused the file; MatMulNBits computes in fp32, else it refused
    the LSQ+ reference graph)."""
    monkeypatch.setattr(export, "MIN_APPROXIMATE_AGREEMENT", 0.5)  # an untrained model's logits are near ties
    scheme = QuantScheme.from_tag("w4a4", **options)
    torch.manual_seed(0)
    model = build(arch, {}, num_classes=10, in_chans=1, scheme=scheme)
    splits = Splits(tiny_data)
    quant.calibrate(model, [splits.x["train"][:64]], method="mse")
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, arch=arch, kwargs={}, num_classes=10, image_shape=(1, 28, 28), scheme=scheme)
    report = export.export_onnx(ckpt, tmp_path / "model.onnx", tmp_path / "model_trt.onnx", data=tiny_data)
    assert report["reference_argmax_agreement_vs_torch"] == report["trt_argmax_agreement_vs_torch"] == 1.0
    assert report["trt_agreement_required"] == export.MIN_AGREEMENT
    assert report["trt_layout"]["weights_int4"] > 0
    if options.get("quantize_attention"):
        assert report["trt_layout"]["transposes_before_quantizers"] > 0


def test_unknown_attention_class_is_refused_by_name():
    """CaiT's TalkingHeadAttn and ClassAttn have no quantized counterpart: quantize_attention stops, naming them,
    instead of leaving them float; a model without attention (a CNN) has nothing to refuse."""
    cait = Cait(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=1, num_heads=2)
    assert {cls for _, cls in quant.unsupported_attention(cait)} == {"TalkingHeadAttn", "ClassAttn"}
    with pytest.raises(ValueError, match=r"quant.quantize_attention .* ClassAttn, TalkingHeadAttn"):
        quant.quantize_model(cait, QuantScheme(4, 4, quantize_attention=True))
    assert not any(isinstance(m, quant.QuantConv2d) for m in cait.modules())  # refused before anything changed
    cnn = create_model("resnet10t", num_classes=10, in_chans=1, kwargs={"channels": [8, 8, 8, 8]})
    quant.quantize_model(cnn, QuantScheme(4, 4, quantize_attention=True))
    assert quant.unsupported_attention(_model("vit")) == []
