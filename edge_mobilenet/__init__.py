"""edge-mobilenet: build, convert and benchmark MobileNet-class models for ARM CPUs."""

import os as _os

__version__ = "0.1.0"

# Same training curve and artifact bytes on any x86-64 CPU with AVX2: TensorFlow's matrix kernels come
# from oneDNN, which picks its code path by the CPU's ISA (AVX-512 / AMX machines otherwise train to other
# weights: V1 val 0.9276 on one CPU, 0.9359 on another). Capping it at AVX2 makes the ISA part of the
# recipe instead of the machine; set ONEDNN_MAX_CPU_ISA yourself to choose otherwise. Read by oneDNN at
# its first kernel, so it is set here, before TensorFlow is imported.
_os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
