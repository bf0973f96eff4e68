"""Keep the native libraries' INFO chatter out of the user's terminal.

TensorFlow, the TFLite converter and LiteRT print from C++ straight to file descriptor 2 ("Created
TensorFlow Lite XNNPACK delegate for CPU.", "fully_quantize: 0, ...", absl and oneDNN notices), past
Python's logging. :func:`native_noise_filtered` captures fd 2 around such a call and replays every
other line (real warnings and errors stay visible).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

NOISE = re.compile(
    r"^(INFO: Created TensorFlow Lite XNNPACK delegate|fully_quantize: \d|WARNING: All log messages before "
    r"absl::InitializeLog|I0000 00:00:\d+\.\d+\s+\d+ (port\.cc|cpu_feature_guard|tf_tfl_flatbuffer_helpers)|"
    r"To enable the following instructions: .* rebuild TensorFlow|"
    r"Estimated count of arithmetic ops|INFO: Initialized TensorFlow Lite runtime)")


def drop_retracing_warnings() -> None:
    """TensorFlow's Python logger warns "N out of the last N calls ... triggered tf.function retracing" when
    one process predicts with several models (``make quantize`` trains and validates one after another):
    expected here, and no use to the user. Other TensorFlow warnings stay."""
    logging.getLogger("tensorflow").addFilter(
        lambda record: "triggered tf.function retracing" not in record.getMessage())


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Capture fd 2 during the block; afterwards write back the lines that are not known INFO noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded, closed): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
