"""The TensorRT ONNX parser's operator support list and the restrictions the lint checks.

Source: the "Supported ONNX Operators" matrix of the onnx-tensorrt repository,
https://github.com/onnx/onnx-tensorrt/blob/fa5aa9f61e7781d2ca8f5351d42c1f19525a6124/docs/operators.md
(commit fa5aa9f61e7781d2ca8f5351d42c1f19525a6124, the document for TensorRT 10.15: "TensorRT 10.15 supports
operators in the inclusive range of opset 9 to opset 24."). Each supported operator maps to the "Supported
Types" column of its row. A few constraints the matrix does not state come from the parser's own importer
(onnx-tensorrt `onnxOpImporters.cpp`) or from TensorRT's INMSLayer documentation; their comments say so.

Only onnx/numpy/stdlib may be imported here: the lint runs in deployment images without torch.
"""

from __future__ import annotations

TENSORRT_VERSION = "10.15"
SOURCE = (
    "https://github.com/onnx/onnx-tensorrt/blob/fa5aa9f61e7781d2ca8f5351d42c1f19525a6124/docs/operators.md"
)

# "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24."
OPSET_MIN = 9
OPSET_MAX = 24

_FLOAT = "FP32, FP16, BF16"
_NUMERIC = "FP32, FP16, BF16, INT32, INT64"
_ANY = "FP32, FP16, BF16, INT32, INT64, BOOL"
_CAST = "FP32, FP16, BF16, INT32, INT64, UINT8, BOOL"
_CONSTANT = "FP32, FP16, BF16, FP8, FP4, INT4, INT32, INT64, BOOL"

# Every row of the matrix marked "Y", with its "Supported Types" column.
_SUPPORTED_ROWS: tuple[tuple[str, str], ...] = (
    ("Abs", _NUMERIC),
    ("Acos", _FLOAT),
    ("Acosh", _FLOAT),
    ("Add", _NUMERIC),
    ("And", "BOOL"),
    ("ArgMax", _NUMERIC),
    ("ArgMin", _NUMERIC),
    ("Asin", _FLOAT),
    ("Asinh", _FLOAT),
    ("Atan", _FLOAT),
    ("Atanh", _FLOAT),
    ("Attention", "FP32, FP16, BF16, INT8, FP8"),
    ("AveragePool", _FLOAT),
    ("BatchNormalization", _FLOAT),
    ("BlackmanWindow", "FP32, FP16"),
    ("Cast", _CAST),
    ("CastLike", _CAST),
    ("Ceil", _FLOAT),
    ("Celu", _FLOAT),
    ("Clip", _FLOAT),
    ("Concat", _ANY),
    ("Constant", _CONSTANT),
    ("ConstantOfShape", _CONSTANT),
    ("Conv", _FLOAT),
    ("ConvTranspose", _FLOAT),
    ("Cos", _FLOAT),
    ("Cosh", _FLOAT),
    ("CumSum", _FLOAT),
    ("DeformConv", "FP32, FP16"),
    ("DepthToSpace", _NUMERIC),
    ("DequantizeLinear", "INT8, FP8, FP4, INT4"),
    ("Div", _NUMERIC),
    ("Dropout", _FLOAT),
    ("Einsum", _FLOAT),
    ("Elu", _FLOAT),
    ("Equal", _NUMERIC),
    ("Erf", _FLOAT),
    ("Exp", _FLOAT),
    ("Expand", _ANY),
    ("EyeLike", _ANY),
    ("Flatten", _ANY),
    ("Floor", _FLOAT),
    ("Gather", _ANY),
    ("GatherElements", _ANY),
    ("GatherND", _ANY),
    ("Gelu", "FP32, FP16, BF16, INT8, INT32, INT64"),
    ("Gemm", _FLOAT),
    ("GlobalAveragePool", _FLOAT),
    ("GlobalLpPool", _FLOAT),
    ("GlobalMaxPool", _FLOAT),
    ("Greater", _NUMERIC),
    ("GreaterOrEqual", _NUMERIC),
    ("GridSample", "FP32, FP16"),
    ("GroupNormalization", _FLOAT),
    ("GRU", _FLOAT),
    ("HammingWindow", "FP32, FP16"),
    ("HannWindow", "FP32, FP16"),
    ("HardSigmoid", _FLOAT),
    ("HardSwish", _FLOAT),
    ("Hardmax", _FLOAT),
    ("Identity", _ANY),
    ("If", _ANY),
    ("ImageScaler", _FLOAT),
    ("InstanceNormalization", _FLOAT),
    ("IsInf", _FLOAT),
    ("IsNaN", _NUMERIC),
    ("LayerNormalization", _FLOAT),
    ("LeakyRelu", _FLOAT),
    ("Less", _NUMERIC),
    ("LessOrEqual", _NUMERIC),
    ("Log", _FLOAT),
    ("LogSoftmax", _FLOAT),
    ("Loop", _ANY),
    ("LRN", _FLOAT),
    ("LSTM", _FLOAT),
    ("LpNormalization", _FLOAT),
    ("LpPool", _FLOAT),
    ("MatMul", _FLOAT),
    ("Max", _NUMERIC),
    ("MaxPool", _FLOAT),
    ("Mean", "FP32, FP16, BF16, FP8, INT32, INT64"),
    ("MeanVarianceNormalization", _FLOAT),
    ("Min", _NUMERIC),
    ("Mish", "FP32, FP16"),
    ("Mod", _NUMERIC),
    ("Mul", _NUMERIC),
    ("Neg", _NUMERIC),
    ("NonMaxSuppression", "FP32, FP16"),
    ("NonZero", "FP32, FP16"),
    ("Not", "BOOL"),
    ("OneHot", _ANY),
    ("Or", "BOOL"),
    ("Pad", _NUMERIC),
    ("ParametricSoftplus", _FLOAT),
    ("Pow", _NUMERIC),
    ("PRelu", _FLOAT),
    ("QuantizeLinear", _FLOAT),
    ("RandomNormal", _FLOAT),
    ("RandomNormalLike", _FLOAT),
    ("RandomUniform", _FLOAT),
    ("RandomUniformLike", _FLOAT),
    ("Range", _NUMERIC),
    ("Reciprocal", _FLOAT),
    ("ReduceL1", _NUMERIC),
    ("ReduceL2", _NUMERIC),
    ("ReduceLogSum", _NUMERIC),
    ("ReduceLogSumExp", _NUMERIC),
    ("ReduceMax", _NUMERIC),
    ("ReduceMean", _NUMERIC),
    ("ReduceMin", _NUMERIC),
    ("ReduceProd", _NUMERIC),
    ("ReduceSum", _NUMERIC),
    ("ReduceSumSquare", _NUMERIC),
    ("Relu", _NUMERIC),
    ("Reshape", _ANY),
    ("Resize", _FLOAT),
    ("ReverseSequence", _ANY),
    ("RMSNormalization", _FLOAT),
    ("RNN", _FLOAT),
    ("RoiAlign", "FP32, FP16"),
    ("RotaryEmbedding", _FLOAT),
    ("Round", _FLOAT),
    ("STFT", "FP32"),
    ("ScaledTanh", _FLOAT),
    ("Scan", _FLOAT),
    ("Scatter", _NUMERIC),
    ("ScatterElements", _NUMERIC),
    ("ScatterND", _NUMERIC),
    ("Selu", _FLOAT),
    ("Shape", _ANY),
    ("Shrink", _NUMERIC),
    ("Sigmoid", _FLOAT),
    ("Sign", _NUMERIC),
    ("Sin", _FLOAT),
    ("Sinh", _FLOAT),
    ("Size", _ANY),
    ("Slice", _ANY),
    ("Softmax", _FLOAT),
    ("Softplus", _FLOAT),
    ("Softsign", _FLOAT),
    ("SpaceToDepth", _NUMERIC),
    ("Split", _ANY),
    ("Sqrt", _FLOAT),
    ("Squeeze", _ANY),
    ("Sub", _NUMERIC),
    ("Sum", _NUMERIC),
    ("Tan", _FLOAT),
    ("Tanh", _FLOAT),
    ("TensorScatter", "FP32, FP16, BF16, INT32"),
    ("ThresholdedRelu", _FLOAT),
    ("Tile", _ANY),
    ("TopK", _NUMERIC),
    ("Transpose", _ANY),
    ("Trilu", _ANY),
    ("Unsqueeze", _ANY),
    ("Upsample", _FLOAT),
    ("Where", _ANY),
    ("Xor", "BOOL"),
)

SUPPORTED_TYPES: dict[str, frozenset[str]] = {
    op: frozenset(part.strip() for part in types.split(",")) for op, types in _SUPPORTED_ROWS
}
"""Supported operator -> the data types of its "Supported Types" column (FP32, FP16, BF16, INT32, ...)."""

SUPPORTED_OPS: frozenset[str] = frozenset(SUPPORTED_TYPES)
"""Operators of the default ONNX domain that the TensorRT 10.15 parser imports (rows marked "Y")."""

UNSUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "AffineGrid",
        "Bernoulli",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "Col2Im",
        "CenterCropPad",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "DFT",
        "Det",
        "DynamicQuantizeLinear",
        "ImageDecoder",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MelWeightMatrix",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "RegexFullMatch",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "TfIdfVectorizer",
        "Unique",
    }
)
"""Operators the matrix lists with "N" (not supported)."""

# --- data types --------------------------------------------------------------------------------------
# The document's type line: "TensorRT supports the following ONNX data types: DOUBLE, FLOAT32, FLOAT16,
# BFLOAT16, FP8, FP4, INT32, INT64, INT8, INT4, UINT8, and BOOL". INT64 is native in TensorRT 10; where an
# op needs int32 instead, its row lists INT32 without INT64 (in 10.15 only TensorScatter: "FP32, FP16,
# BF16, INT32"), and where it takes no integers at all its row lists neither. The lint compares the data
# input's element type with the row.
#
# "Note: There is limited support for DOUBLE type. TensorRT will attempt to cast DOUBLE down to FLOAT,
# clamping values to `+-FLT_MAX` if necessary." -> double is not a finding.
CAST_DOWN_TYPES = frozenset({"FP64"})
# "Note: UINT8 is only supported as network input or output tensor types."
UINT8_NOTE = "UINT8 is only supported as network input or output tensor types"

# --- TopK --------------------------------------------------------------------------------------------
# TopK row: "`sorted` must be 1. `K` input must be less than 3840."
TOPK_K_LIMIT = 3840
"""K must be strictly less than this."""
TOPK_RESTRICTION = "`sorted` must be 1. `K` input must be less than 3840."

# --- NonMaxSuppression -------------------------------------------------------------------------------
# The 10.15 row ("NonMaxSuppression | Y | FP32, FP16 |") states no restriction; the TensorRT 8.4 matrix
# (docs/operators.md at commit 009d6541b4ee1fa3f3150cd7cbabe7e56aa54840) said "Inputs
# `max_output_boxes_per_class`, `iou_threshold`, and `score_threshold` must be
# initializers.", and the 10.x importer (onnxOpImporters.cpp at commit
# 0137504e2b25fe5253bd85d26b073378fb67805b) reads each of them as a 0D tensor ("The iou_threshold tensor
# must be 0D"). The lint keeps requiring constants: a constant max_output_boxes_per_class bounds the
# selected-indices output, and constant thresholds keep the engine's behaviour fixed at export time.
NMS_CONSTANT_INPUTS: tuple[tuple[int, str], ...] = (
    (2, "max_output_boxes_per_class"),
    (3, "iou_threshold"),
    (4, "score_threshold"),
)
# TensorRT's INMSLayer (which the parser builds, without setting a limit), from the nvinfer1::INMSLayer API
# documentation and TensorRT's NMS operator page: "Only boxes up to a maximum of
# the TopK limit are considered for selection (per batch)." and "The default value is 2000 for SM 5.3 and
# 6.2 devices, and 5000 otherwise." Boxes past the limit are dropped silently, so more than this many
# boxes per batch item is a finding.
NMS_BOX_LIMIT = 5000
NMS_BOX_LIMIT_SM53_SM62 = 2000

# --- Scatter -----------------------------------------------------------------------------------------
# ScatterND row: "`reduction` other than `none` is not supported".
# ScatterElements row states no restriction: the importer (onnxOpImporters.cpp at commit
# dd0a3a9f8794ae4f0316ed07ea68cda9b944bb3c) runs `none` as a TensorRT layer and the other ONNX reductions
# through TensorRT's ScatterElements plugin.
SCATTER_REDUCTIONS: dict[str, frozenset[str]] = {
    "ScatterND": frozenset({"none"}),
    "ScatterElements": frozenset({"none", "add", "mul", "max", "min"}),
}

# --- inputs that must be constants -------------------------------------------------------------------
# op -> (input index, input name, strict, the row's sentence). strict: the row says "initializer" (an
# initializer or a Constant node); otherwise "build-time constant" / "resolvable to a constant" (anything
# that folds to a constant, static shapes included).
_REDUCE_AXES = ((1, "axes", True, "`axes` must be an initializer"),)
CONSTANT_INPUTS: dict[str, tuple[tuple[int, str, bool, str], ...]] = {
    **{
        op: _REDUCE_AXES
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
        )
    },
    # Squeeze and Unsqueeze rows: "`axes` must be resolvable to a constant."
    "Squeeze": ((1, "axes", False, "`axes` must be resolvable to a constant."),),
    "Unsqueeze": ((1, "axes", False, "`axes` must be resolvable to a constant."),),
    # CumSum row: "`axis` must be a build-time constant"
    "CumSum": ((1, "axis", False, "`axis` must be a build-time constant"),),
    # OneHot row: "`depth` must be a build-time constant"
    "OneHot": ((1, "depth", False, "`depth` must be a build-time constant"),),
    # STFT row: "`frame_step` and `window` must be an initializer."
    "STFT": (
        (1, "frame_step", True, "`frame_step` and `window` must be an initializer."),
        (2, "window", True, "`frame_step` and `window` must be an initializer."),
    ),
}

# --- Resize ------------------------------------------------------------------------------------------
# Resize row: "Supported resize transformation modes: `half_pixel`, `pytorch_half_pixel`,
# `tf_half_pixel_for_nn`, `asymmetric`, and `align_corners`."
RESIZE_TRANSFORMATION_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
# "Supported resize modes: `nearest`, `linear`."
RESIZE_MODES = frozenset({"nearest", "linear"})
# "Supported nearest modes: `floor`, `ceil`, `round_prefer_floor`, `round_prefer_ceil`."
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
# "Supported aspect ratio policy: `stretch`."
RESIZE_ASPECT_RATIO_POLICIES = frozenset({"stretch"})
# "Antialiasing is not supported." and "When `scales` is a tensor input, `axes` must be an iota vector of
# length rank(input)." are checked in the lint.

# --- pooling -----------------------------------------------------------------------------------------
# AveragePool row: "2D or 3D Pooling only. `dilations` must be empty or all ones"
# MaxPool row: "2D or 3D pooling only. `Indices` output tensor unsupported. `dilations` must be empty or all
# ones"
POOLING_SPATIAL_RANKS = frozenset({2, 3})

# --- other rows the lint checks ----------------------------------------------------------------------
# LayerNormalization row: "Only the first output `Y` is supported."
# Constant row: "`sparse_value`, `value_string`, and `value_strings` attributes are unsupported."
CONSTANT_UNSUPPORTED_ATTRIBUTES = frozenset({"sparse_value", "value_string", "value_strings"})

RESTRICTIONS: dict[str, str] = {
    "TopK": TOPK_RESTRICTION,
    "ScatterND": "`reduction` other than `none` is not supported",
    "Resize": "Supported resize transformation modes: `half_pixel`, `pytorch_half_pixel`, "
    "`tf_half_pixel_for_nn`, `asymmetric`, and `align_corners`. Supported resize modes: `nearest`, `linear`. "
    "Supported nearest modes: `floor`, `ceil`, `round_prefer_floor`, `round_prefer_ceil`. Supported aspect "
    "ratio policy: `stretch`. When `scales` is a tensor input, `axes` must be an iota vector of length "
    "rank(input). Antialiasing is not supported.",
    "AveragePool": "2D or 3D Pooling only. `dilations` must be empty or all ones",
    "MaxPool": "2D or 3D pooling only. `Indices` output tensor unsupported. "
    "`dilations` must be empty or all ones",
    "LayerNormalization": "Only the first output `Y` is supported.",
    "Constant": "`sparse_value`, `value_string`, and `value_strings` attributes are unsupported.",
}
"""The matrix's "Restrictions" sentence for each operator whose restriction the lint checks by attributes."""
