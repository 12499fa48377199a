"""Quantization: LSQ quantizers, layer wrapping, calibration (one small module family)."""

from .attention import (
    QuantViTAttention,
    QuantWindowAttention,
    attention_modules,
    quantize_attention,
    unsupported_attention,
)
from .calibrate import (
    CALIBRATION_METHODS,
    batchnorms,
    calibrate,
    init_asymmetric_range,
    init_quantizer,
    init_step_size,
    reestimate_batchnorm,
)
from .modules import (
    QuantConv2d,
    QuantLinear,
    QuantScheme,
    export_mode,
    is_depthwise,
    model_size_bytes,
    quant_modules,
    quantizable_layers,
    quantize_model,
    quantizers,
)
from .quantizer import LSQQuantizer, integer_range

__all__ = [
    "CALIBRATION_METHODS",
    "LSQQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "QuantScheme",
    "QuantViTAttention",
    "QuantWindowAttention",
    "attention_modules",
    "batchnorms",
    "calibrate",
    "export_mode",
    "init_asymmetric_range",
    "init_quantizer",
    "init_step_size",
    "integer_range",
    "is_depthwise",
    "model_size_bytes",
    "quant_modules",
    "quantizable_layers",
    "quantize_attention",
    "quantize_model",
    "quantizers",
    "reestimate_batchnorm",
    "unsupported_attention",
]
