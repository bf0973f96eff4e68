"""Which operator versions each runtime release can load (data only).

TFLite: the maximum version of each builtin operator the release's ``BuiltinOpResolver`` registers
(``AddBuiltin(op, registration, min_version, max_version)`` in tensorflow/lite/kernels/register.cc).
The numbers were measured, not copied: ``python -m edge_mobilenet.convert.op_probe`` loads one tiny
.tflite per (operator code, version 1-16), each holding just that operator code, into the installed
runtime and records which ones resolve (the runtime resolves every operator code at load time, so a
model loads only if each of its codes does). Measured on:

- tflite-runtime 2.14.0: the PyPI wheel on x86_64 (Python 3.11, numpy 1.26) and the aarch64 wheel on
  the emulated board (/opt/tfl, Cortex-A72) gave the same table. Note FULLY_CONNECTED stops at
  version 10 (versions 11 and 12 are refused: "Didn't find op for builtin opcode 'FULLY_CONNECTED'
  version '11'"), CONV_2D at 7, DEQUANTIZE at 5.
- ai-edge-litert 2.3.0: the PyPI wheel on x86_64 (used as "newest known").

Every operator is registered from version 1 except BROADCAST_TO (from version 2, both releases).
An operator absent from a table is not a builtin of that release at all.

ONNX Runtime: the highest default-domain opset and ONNX IR version each release implements, from
the version matrix at onnxruntime.ai/docs/reference/compatibility.html; 1.31 checked on the
installed wheel.
"""

_TFLITE_RUNTIME_2_14 = {
    'ADD': 5, 'AVERAGE_POOL_2D': 3, 'CONCATENATION': 4, 'CONV_2D': 7, 'DEPTHWISE_CONV_2D': 7,
    'DEPTH_TO_SPACE': 2, 'DEQUANTIZE': 5, 'EMBEDDING_LOOKUP': 3, 'FLOOR': 1, 'FULLY_CONNECTED': 10,
    'HASHTABLE_LOOKUP': 1, 'L2_NORMALIZATION': 2, 'L2_POOL_2D': 1, 'LOCAL_RESPONSE_NORMALIZATION': 1,
    'LOGISTIC': 3, 'LSH_PROJECTION': 1, 'LSTM': 4, 'MAX_POOL_2D': 3, 'MUL': 7, 'RELU': 3, 'RELU_N1_TO_1': 1,
    'RELU6': 3, 'RESHAPE': 1, 'RESIZE_BILINEAR': 4, 'RNN': 3, 'SOFTMAX': 3, 'SPACE_TO_DEPTH': 2, 'SVDF': 4,
    'TANH': 3, 'SKIP_GRAM': 1, 'EMBEDDING_LOOKUP_SPARSE': 1, 'PAD': 4, 'UNIDIRECTIONAL_SEQUENCE_RNN': 3,
    'GATHER': 6, 'BATCH_TO_SPACE_ND': 4, 'SPACE_TO_BATCH_ND': 4, 'TRANSPOSE': 6, 'MEAN': 3, 'SUB': 5,
    'DIV': 2, 'SQUEEZE': 2, 'UNIDIRECTIONAL_SEQUENCE_LSTM': 4, 'STRIDED_SLICE': 8,
    'BIDIRECTIONAL_SEQUENCE_RNN': 3, 'EXP': 2, 'TOPK_V2': 3, 'SPLIT': 4, 'LOG_SOFTMAX': 2,
    'BIDIRECTIONAL_SEQUENCE_LSTM': 3, 'CAST': 5, 'PRELU': 1, 'MAXIMUM': 4, 'ARG_MAX': 3, 'MINIMUM': 4,
    'LESS': 3, 'NEG': 1, 'PADV2': 4, 'GREATER': 2, 'GREATER_EQUAL': 3, 'LESS_EQUAL': 2, 'SELECT': 4,
    'SLICE': 6, 'SIN': 1, 'TRANSPOSE_CONV': 4, 'SPARSE_TO_DENSE': 3, 'TILE': 3, 'EXPAND_DIMS': 1, 'EQUAL': 4,
    'NOT_EQUAL': 3, 'LOG': 1, 'SUM': 2, 'SQRT': 1, 'RSQRT': 2, 'SHAPE': 1, 'POW': 1, 'ARG_MIN': 3,
    'FAKE_QUANT': 2, 'REDUCE_PROD': 2, 'REDUCE_MAX': 3, 'PACK': 4, 'LOGICAL_OR': 1, 'ONE_HOT': 1,
    'LOGICAL_AND': 1, 'LOGICAL_NOT': 1, 'UNPACK': 4, 'REDUCE_MIN': 3, 'FLOOR_DIV': 3, 'REDUCE_ANY': 1,
    'SQUARE': 1, 'ZEROS_LIKE': 1, 'FILL': 4, 'FLOOR_MOD': 2, 'RANGE': 2, 'RESIZE_NEAREST_NEIGHBOR': 4,
    'LEAKY_RELU': 2, 'SQUARED_DIFFERENCE': 2, 'MIRROR_PAD': 3, 'ABS': 5, 'SPLIT_V': 2, 'UNIQUE': 1, 'CEIL': 1,
    'REVERSE_V2': 3, 'ADD_N': 1, 'GATHER_ND': 4, 'COS': 1, 'WHERE': 2, 'RANK': 1, 'ELU': 1,
    'REVERSE_SEQUENCE': 1, 'MATRIX_DIAG': 1, 'QUANTIZE': 3, 'MATRIX_SET_DIAG': 1, 'ROUND': 1, 'HARD_SWISH': 1,
    'IF': 1, 'WHILE': 1, 'NON_MAX_SUPPRESSION_V4': 1, 'NON_MAX_SUPPRESSION_V5': 1, 'SCATTER_ND': 1,
    'SELECT_V2': 2, 'DENSIFY': 1, 'SEGMENT_SUM': 1, 'BATCH_MATMUL': 4, 'CUMSUM': 1, 'CALL_ONCE': 1,
    'BROADCAST_TO': 3, 'RFFT2D': 1, 'CONV_3D': 1, 'IMAG': 1, 'REAL': 1, 'COMPLEX_ABS': 1, 'HASHTABLE': 1,
    'HASHTABLE_FIND': 1, 'HASHTABLE_IMPORT': 1, 'HASHTABLE_SIZE': 1, 'REDUCE_ALL': 1, 'CONV_3D_TRANSPOSE': 1,
    'VAR_HANDLE': 1, 'READ_VARIABLE': 1, 'ASSIGN_VARIABLE': 1, 'BROADCAST_ARGS': 1,
    'RANDOM_STANDARD_NORMAL': 1, 'BUCKETIZE': 1, 'RANDOM_UNIFORM': 1, 'MULTINOMIAL': 1, 'GELU': 2,
    'DYNAMIC_UPDATE_SLICE': 1, 'RELU_0_TO_1': 1, 'UNSORTED_SEGMENT_PROD': 1, 'UNSORTED_SEGMENT_MAX': 1,
    'UNSORTED_SEGMENT_SUM': 1, 'ATAN2': 1, 'UNSORTED_SEGMENT_MIN': 1, 'SIGN': 2, 'BITCAST': 1,
    'BITWISE_XOR': 1, 'RIGHT_SHIFT': 1,
}

_AI_EDGE_LITERT_2_3 = {
    'ADD': 6, 'AVERAGE_POOL_2D': 3, 'CONCATENATION': 7, 'CONV_2D': 8, 'DEPTHWISE_CONV_2D': 7,
    'DEPTH_TO_SPACE': 2, 'DEQUANTIZE': 9, 'EMBEDDING_LOOKUP': 5, 'FLOOR': 1, 'FULLY_CONNECTED': 14,
    'HASHTABLE_LOOKUP': 1, 'L2_NORMALIZATION': 2, 'L2_POOL_2D': 1, 'LOCAL_RESPONSE_NORMALIZATION': 1,
    'LOGISTIC': 3, 'LSH_PROJECTION': 1, 'LSTM': 4, 'MAX_POOL_2D': 3, 'MUL': 8, 'RELU': 3, 'RELU_N1_TO_1': 1,
    'RELU6': 3, 'RESHAPE': 1, 'RESIZE_BILINEAR': 4, 'RNN': 3, 'SOFTMAX': 4, 'SPACE_TO_DEPTH': 2, 'SVDF': 4,
    'TANH': 3, 'SKIP_GRAM': 1, 'EMBEDDING_LOOKUP_SPARSE': 1, 'PAD': 6, 'UNIDIRECTIONAL_SEQUENCE_RNN': 3,
    'GATHER': 8, 'BATCH_TO_SPACE_ND': 4, 'SPACE_TO_BATCH_ND': 4, 'TRANSPOSE': 9, 'MEAN': 3, 'SUB': 5,
    'DIV': 2, 'SQUEEZE': 2, 'UNIDIRECTIONAL_SEQUENCE_LSTM': 4, 'STRIDED_SLICE': 8,
    'BIDIRECTIONAL_SEQUENCE_RNN': 3, 'EXP': 2, 'TOPK_V2': 3, 'SPLIT': 5, 'LOG_SOFTMAX': 2,
    'BIDIRECTIONAL_SEQUENCE_LSTM': 3, 'CAST': 9, 'PRELU': 1, 'MAXIMUM': 4, 'ARG_MAX': 3, 'MINIMUM': 4,
    'LESS': 3, 'NEG': 1, 'PADV2': 6, 'GREATER': 2, 'GREATER_EQUAL': 3, 'LESS_EQUAL': 2, 'SELECT': 4,
    'SLICE': 8, 'SIN': 2, 'TRANSPOSE_CONV': 5, 'SPARSE_TO_DENSE': 3, 'TILE': 3, 'EXPAND_DIMS': 1, 'EQUAL': 5,
    'NOT_EQUAL': 4, 'LOG': 2, 'SUM': 2, 'SQRT': 2, 'RSQRT': 3, 'SHAPE': 1, 'POW': 1, 'ARG_MIN': 3,
    'FAKE_QUANT': 2, 'REDUCE_PROD': 2, 'REDUCE_MAX': 3, 'PACK': 5, 'LOGICAL_OR': 1, 'ONE_HOT': 1,
    'LOGICAL_AND': 1, 'LOGICAL_NOT': 1, 'UNPACK': 6, 'REDUCE_MIN': 3, 'FLOOR_DIV': 3, 'REDUCE_ANY': 1,
    'SQUARE': 1, 'ZEROS_LIKE': 1, 'FILL': 5, 'FLOOR_MOD': 2, 'RANGE': 2, 'RESIZE_NEAREST_NEIGHBOR': 4,
    'LEAKY_RELU': 2, 'SQUARED_DIFFERENCE': 2, 'MIRROR_PAD': 3, 'ABS': 5, 'SPLIT_V': 3, 'UNIQUE': 1, 'CEIL': 1,
    'REVERSE_V2': 4, 'ADD_N': 1, 'GATHER_ND': 6, 'COS': 2, 'WHERE': 2, 'RANK': 1, 'ELU': 1,
    'REVERSE_SEQUENCE': 1, 'MATRIX_DIAG': 1, 'QUANTIZE': 6, 'MATRIX_SET_DIAG': 1, 'ROUND': 1, 'HARD_SWISH': 1,
    'IF': 1, 'WHILE': 1, 'NON_MAX_SUPPRESSION_V4': 1, 'NON_MAX_SUPPRESSION_V5': 1, 'SCATTER_ND': 1,
    'SELECT_V2': 2, 'DENSIFY': 1, 'SEGMENT_SUM': 1, 'BATCH_MATMUL': 4, 'CUMSUM': 1, 'CALL_ONCE': 1,
    'BROADCAST_TO': 4, 'RFFT2D': 1, 'CONV_3D': 1, 'IMAG': 1, 'REAL': 1, 'COMPLEX_ABS': 1, 'HASHTABLE': 1,
    'HASHTABLE_FIND': 1, 'HASHTABLE_IMPORT': 1, 'HASHTABLE_SIZE': 1, 'REDUCE_ALL': 1, 'CONV_3D_TRANSPOSE': 1,
    'VAR_HANDLE': 1, 'READ_VARIABLE': 1, 'ASSIGN_VARIABLE': 1, 'BROADCAST_ARGS': 1,
    'RANDOM_STANDARD_NORMAL': 1, 'BUCKETIZE': 1, 'RANDOM_UNIFORM': 1, 'MULTINOMIAL': 1, 'GELU': 3,
    'DYNAMIC_UPDATE_SLICE': 6, 'RELU_0_TO_1': 1, 'UNSORTED_SEGMENT_PROD': 1, 'UNSORTED_SEGMENT_MAX': 1,
    'UNSORTED_SEGMENT_SUM': 1, 'ATAN2': 1, 'UNSORTED_SEGMENT_MIN': 1, 'SIGN': 2, 'BITCAST': 1,
    'BITWISE_XOR': 1, 'RIGHT_SHIFT': 1, 'STABLEHLO_ADD': 1, 'STABLEHLO_MULTIPLY': 1, 'STABLEHLO_MAXIMUM': 1,
    'STABLEHLO_AND': 1, 'STABLEHLO_MINIMUM': 1, 'STABLEHLO_SCATTER': 1, 'STABLEHLO_PAD': 1,
    'STABLEHLO_REDUCE_WINDOW': 1, 'STABLEHLO_GATHER': 1, 'DILATE': 1, 'STABLEHLO_RNG_BIT_GENERATOR': 1,
    'REDUCE_WINDOW': 1, 'STABLEHLO_COMPOSITE': 1, 'STABLEHLO_SHIFT_LEFT': 1, 'STABLEHLO_CASE': 1,
}

TFLITE_MAX_VERSIONS: dict[str, dict[str, int]] = {
    "tflite-runtime==2.14": _TFLITE_RUNTIME_2_14,
    "ai-edge-litert==2.3": _AI_EDGE_LITERT_2_3,
}

TFLITE_MIN_VERSIONS: dict[str, int] = {"BROADCAST_TO": 2}

NEWEST = {"tflite-runtime": "tflite-runtime==2.14", "ai-edge-litert": "ai-edge-litert==2.3"}

# onnxruntime release -> (max ai.onnx opset, max IR version)
ONNXRUNTIME_LIMITS: dict[str, tuple[int, int]] = {
    "1.10": (15, 8), "1.11": (16, 8), "1.12": (17, 8), "1.13": (17, 8), "1.14": (18, 8),
    "1.15": (19, 9), "1.16": (19, 9), "1.17": (20, 9), "1.18": (21, 10), "1.19": (21, 10),
    "1.20": (21, 10), "1.21": (22, 10), "1.22": (22, 10), "1.23": (23, 11),
}
