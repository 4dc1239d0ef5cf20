"""Receptive fields of real networks against the published table and hand derivations.

Araujo, Norris and Sim, "Computing Receptive Fields of Convolutional Neural
Networks", Distill 2019 (https://distill.pub/2019/computing-receptive-fields/),
Table 1 lists for TF-Slim's networks, at the last feature map, the receptive
field size r, the effective stride S and the effective padding P (our
``start`` is -P):

==============  =====  ====  =====
network          r      S     P
==============  =====  ====  =====
alexnet_v2       195    32    64
vgg_16           212    32    90
resnet_v1_50     483    32   239
==============  =====  ====  =====

Each expected value below is also derived by hand in the comments, from the
published architecture, with the rules of :mod:`convarith.receptive`
(``r += (K_eff - 1) j``, ``j *= S``, ``start -= pad_lo j``).

ResNet-50 comes in three variants that differ only in *where the stride sits*
in a bottleneck, which changes the field though every output shape is the
same: TF-Slim (stride on the 3x3 of a block's *last* unit) and Caffe/Keras
(stride on the *first 1x1* of a block's first unit) both give r = 483;
torchvision and the ONNX zoo's Caffe2 ResNet-50 (stride on the *3x3* of the
first unit) give r = 427: each of the three strided 3x3s then runs at the
finer jump, 56 input pixels less in all. The start differs by 2 between Slim
(-239) and Keras (-241) because Slim's "SAME" max pool on 112 pads (0, 1)
while Keras pads (1, 1) explicitly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from convarith.io import read_model
from convarith.io.layers_file import layers_from_data
from convarith.summary import summarize

DISTILL = {"alexnet_v2": (195, 32, 64), "vgg_16": (212, 32, 90), "resnet_v1_50": (483, 32, 239)}


def field_of(layers: list, size: int = 224) -> tuple[int, int, int]:
    summary = summarize(layers_from_data({"input": [size, size, 3], "layers": layers}))
    field = summary.rows[-1].field
    assert field.size[0] == field.size[1]
    return field.size[0], field.jump[0], field.start[0]


def conv(k: int, s: int = 1, padding: str = "same") -> str:
    return f"Conv2D(8, {k}, strides={s}, padding='{padding}')"


def test_vgg16_pool5_matches_distill() -> None:
    layers = []
    for convs in (2, 2, 3, 3, 3):
        layers += [conv(3)] * convs + ["MaxPooling2D(2)"]
    # r: 1 + 2*2 (block1) +1 (pool) = 6; +4*2 +2 = 16; +8*3 +4 = 44; +16*3 +8 = 100; +32*3 +16 = 212
    # start: -1 per conv at j=1 (2), -2 per conv at j=2 (4), -4*3, -8*3, -16*3: -2-4-12-24-48 = -90
    assert field_of(layers) == (212, 32, -90)
    r, s, p = DISTILL["vgg_16"]
    assert field_of(layers) == (r, s, -p)


def test_alexnet_v2_pool5_matches_distill() -> None:
    layers = [conv(11, 4, "valid"), "MaxPooling2D(3, strides=2)", conv(5), "MaxPooling2D(3, strides=2)",
              conv(3), conv(3), conv(3), "MaxPooling2D(3, strides=2)"]
    # r: 11; +2*4 = 19; +4*8 = 51; +2*8 = 67; +2*16 *3 = 163; +2*16 = 195.  j = 4*2*2*2 = 32
    # start: conv2 pads 2 at j=8 (-16), conv3-5 pad 1 at j=16 (-48): -64
    r, s, p = DISTILL["alexnet_v2"]
    assert field_of(layers) == (r, s, -p) == (195, 32, -64)


def test_onnx_zoo_alexnet_pool5_equals_alexnet_v2() -> None:
    onnx = pytest.importorskip("onnx")
    path = Path(onnx.__file__).parent / "backend/test/data/light/light_bvlc_alexnet.onnx"
    if not path.exists():
        pytest.skip("the onnx wheel does not ship the light models")
    pool5 = [r for r in summarize(read_model(path)).rows if r.type == "MaxPool"][-1]
    r, s, p = DISTILL["alexnet_v2"]
    assert (pool5.field.size[0], pool5.field.jump[0], pool5.field.start[0]) == (r, s, -p)


def resnet50_main_path(variant: str) -> list:
    """The longest path through ResNet-50 (the shortcuts' fields lie inside it)."""
    if variant == "slim":  # conv2d_same: explicit (3, 3) pad then VALID; max pool 'SAME' (pads (0, 1) on 112)
        layers = ["ZeroPadding2D(3)", conv(7, 2, "valid"), "MaxPooling2D(3, strides=2, padding='same')"]
    else:  # Keras applications / Caffe / torchvision: pad 3, conv 7/2; pad 1, max pool 3/2
        layers = ["ZeroPadding2D(3)", conv(7, 2, "valid"), "ZeroPadding2D(1)", "MaxPooling2D(3, strides=2)"]
    for block, units in enumerate((3, 4, 6, 3)):
        for unit in range(units):
            stride = 1
            if variant == "slim" and unit == units - 1 and block < 3:
                stride = 2  # Slim: the block's last unit subsamples, in its 3x3
            if variant != "slim" and unit == 0 and block > 0:
                stride = 2  # the block's first unit subsamples
            if variant == "first_1x1":
                layers += [conv(1, stride), conv(3), conv(1)]
            elif stride == 2:  # on the 3x3 (Slim: conv2d_same, pads (1, 1) then VALID)
                layers += [conv(1), "ZeroPadding2D(1)", conv(3, 2, "valid"), conv(1)]
            else:
                layers += [conv(1), conv(3), conv(1)]
    return layers


@pytest.mark.parametrize("variant, expected", [
    # Slim: stem r 7 j 2 start -3; pool +2*2 -> 11, j 4, start -3 (pads 0 before).
    # block1: 3 units +8 each -> 35, last one strides -> j 8; start -3 -4 -4 -4 = -15
    # block2: 4 units +16 -> 99, j 16; start -15 -8*4 = -47.  block3: 6 units +32 -> 291, j 32; -47 -16*6 = -143
    # block4: 3 units +64 -> 483; start -143 -32*3 = -239      (Distill: 483, 32, P 239)
    ("slim", (483, 32, -239)),
    # Keras/Caffe: pool pads 1 -> start -5, r 11, j 4.  block1: +8*3 -> 35, start -17.
    # block2: 1x1/2 then 3x3 at j 8: +16*4 -> 99, start -17 -8*4 = -49; block3: +32*6 -> 291, -49 -16*6 = -145
    # block4: +64*3 -> 483, start -145 -32*3 = -241
    ("first_1x1", (483, 32, -241)),
    # torchvision / ONNX zoo (Caffe2): the strided 3x3 runs at the coarser input jump:
    # block1 -> 35, j 4, start -17; block2: +8 (3x3/2 at j 4) +16*3 -> 91, start -17 -4 -8*3 = -45
    # block3: +16 +32*5 -> 267, start -45 -8 -16*5 = -133; block4: +32 +64*2 -> 427, start -133 -16 -32*2 = -213
    ("stride_3x3", (427, 32, -213)),
])
def test_resnet50_variants(variant: str, expected: tuple[int, int, int]) -> None:
    assert field_of(resnet50_main_path(variant)) == expected
    if variant == "slim":
        r, s, p = DISTILL["resnet_v1_50"]
        assert expected == (r, s, -p)


def test_onnx_zoo_resnet50_is_the_stride_on_3x3_variant() -> None:
    """The full graph (shortcuts merged by Sum) gives the main path's field: the union of aligned paths."""
    onnx = pytest.importorskip("onnx")
    path = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
    if not path.exists():
        pytest.skip("the onnx wheel does not ship the light models")
    rows = summarize(read_model(path)).rows
    last = [r for r in rows if r.type == "Relu"][-1]
    assert (last.field.size[0], last.field.jump[0], last.field.start[0]) == (427, 32, -213)
    assert not any("misaligned" in w for r in rows for w in r.warnings)
