"""Published multiply-adds and parameter counts, for checking :mod:`profile` against the papers.

Each row: model, alpha, input size, millions of mult-adds, millions of parameters (or None where the
source lists none), source. Parameter counts include a 1000-class classifier.

Sources:
  * V1 paper (Howard et al. 2017), Table 6 (width) and Table 7 (resolution).
  * V2 paper (Sandler et al. 2018), Table 4; the full width x resolution grid is the table published
    with the paper's checkpoints (TF-Slim mobilenet README, repeated in keras.applications'
    docstring). The paper's Table 4 gives 6.9M params for V2 1.4 while its checkpoint table gives
    6.06M; the architecture counts 6.09M, so the checkpoint figure is used.
  * V3 paper (Howard et al. 2019), Table 3; minimalistic Large from the checkpoint table published
    with the paper's models (the checkpoint table's Small, 66M/2.9M, is another variant than the
    paper's Table 2 and is not used).
"""

V1_PAPER = [
    ("mobilenet_v1", 1.0, 224, 569, 4.2), ("mobilenet_v1", 0.75, 224, 325, 2.6),
    ("mobilenet_v1", 0.5, 224, 149, 1.3), ("mobilenet_v1", 0.25, 224, 41, 0.5),
    ("mobilenet_v1", 1.0, 192, 418, 4.2), ("mobilenet_v1", 1.0, 160, 290, 4.2),
    ("mobilenet_v1", 1.0, 128, 186, 4.2),
]

V2_CHECKPOINTS = [
    (1.4, 224, 582, 6.06), (1.3, 224, 509, 5.34), (1.0, 224, 300, 3.47), (1.0, 192, 221, 3.47),
    (1.0, 160, 154, 3.47), (1.0, 128, 99, 3.47), (1.0, 96, 56, 3.47), (0.75, 224, 209, 2.61),
    (0.75, 192, 153, 2.61), (0.75, 160, 107, 2.61), (0.75, 128, 69, 2.61), (0.75, 96, 39, 2.61),
    (0.5, 224, 97, 1.95), (0.5, 192, 71, 1.95), (0.5, 160, 50, 1.95), (0.5, 128, 32, 1.95),
    (0.5, 96, 18, 1.95), (0.35, 224, 59, 1.66), (0.35, 192, 43, 1.66), (0.35, 160, 30, 1.66),
    (0.35, 128, 20, 1.66), (0.35, 96, 11, 1.66),
]
V2_PAPER = [("mobilenet_v2", 1.0, 224, 300, 3.4), ("mobilenet_v2", 1.4, 224, 585, None)]

V3_PAPER = [
    ("mobilenet_v3_large", 1.0, 224, 219, 5.4), ("mobilenet_v3_large", 0.75, 224, 155, 4.0),
    ("mobilenet_v3_small", 1.0, 224, 56, 2.5), ("mobilenet_v3_small", 0.75, 224, 44, 2.0),
    ("mobilenet_v3_large_minimalistic", 1.0, 224, 209, 3.9),
]

PUBLISHED = (V1_PAPER + [("mobilenet_v2", a, s, m, p) for a, s, m, p in V2_CHECKPOINTS] + V2_PAPER
             + V3_PAPER)
