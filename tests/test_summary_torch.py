"""`convarith.summary(module, input_shape)` and `convarith summary model.pt2` against PyTorch itself.

ResNet-18 and MobileNetV2 are written here in plain PyTorch, as torchvision
defines them (torchvision is not needed). The oracle is the module: every
submodule's output shape on a real tensor (forward hooks), the final output,
and ``sum(p.numel() for p in module.parameters())``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import convarith  # noqa: E402
from convarith.cli import main  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for index, (cin, cout, stride) in enumerate(widths, start=1):
            setattr(self, f"layer{index}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [conv_bn(cin, hidden, 1, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1)]
        features = [conv_bn(3, 32, 3, 2)]
        cin = 32
        for expand, cout, repeats, stride in settings:
            for index in range(repeats):
                features.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand))
                cin = cout
        features.append(conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def hooked_shapes(module: nn.Module, shape: tuple[int, ...]) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
    seen: dict[str, tuple[int, ...]] = {}
    def hook(name):
        def record(_module, _inputs, output) -> None:  # returns None: the output is kept
            seen.setdefault(name, tuple(output.shape))
        return record

    handles = [sub.register_forward_hook(hook(name))
               for name, sub in module.named_modules() if name and not list(sub.children())]
    with torch.no_grad():
        out = module.eval()(torch.zeros(shape))
    for handle in handles:
        handle.remove()
    return seen, tuple(out.shape)


@pytest.mark.parametrize("build, shape", [(ResNet18, (1, 3, 224, 224)), (ResNet18, (2, 3, 97, 75)),
                                          (MobileNetV2, (1, 3, 224, 224)), (MobileNetV2, (1, 3, 65, 90))])
def test_module_shapes_and_params_match_pytorch(build, shape) -> None:
    torch.manual_seed(0)
    module = build()
    summary = convarith.summary(module, shape)
    seen, final = hooked_shapes(module, shape)
    assert summary.rows[-1].output_shape[1:] == final[1:]
    rows = {row.name: row for row in summary.rows}
    checked = 0
    for name, out in seen.items():
        row = rows.get(name.replace(".", "_"))
        if row is not None and isinstance(module.get_submodule(name), (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d,
                                                                          nn.Linear)):
            assert row.output_shape[1:] == out[1:], name
            checked += 1
    assert checked > 20
    assert summary.total_params == sum(p.numel() for p in module.parameters())
    assert not [w for w in summary.warnings if "unknown" in w or "as traced" in w], summary.warnings


def test_resnet18_receptive_field_by_hand() -> None:
    summary = convarith.summary(ResNet18(), (1, 3, 224, 224))
    # stem 7/2 pad 3: r 7, j 2, start -3; pool 3/2 pad 1: r 11, j 4, start -5; layer1: 4 3x3 at j 4 -> r 43, start -21
    # layer2: 3x3/2 at j 4 (+8) then 3 at j 8 (+48) -> 99, start -21 -4 -24 = -49
    # layer3: +16 +32*3 -> 211, start -49 -8 -48 = -105; layer4: +32 +64*3 -> 435, start -105 -16 -96 = -217
    last = [r for r in summary.rows if r.output_shape and len(r.output_shape) == 4 and r.output_shape[2] == 7][-1]
    assert (last.field.size, last.field.jump, last.field.start) == ((435, 435), (32, 32), (-217, -217))


def test_exported_program_file(tmp_path: Path, capsys) -> None:
    module = MobileNetV2().eval()
    x = torch.zeros(1, 3, 96, 96)
    program = torch.export.export(module, (x,))
    path = tmp_path / "mobilenet.pt2"
    torch.export.save(program, str(path))
    assert main(["summary", str(path), "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["layers"][-1]["output_shape"][1:] == [1000]
    assert data["total_params"] == sum(p.numel() for p in module.parameters())
    ours = convarith.summary(module, (1, 3, 96, 96))
    assert data["total_macs"] == ours.total_macs
    assert not [w for w in data["warnings"] if "no shape" in w]


def test_bad_module_arguments() -> None:
    with pytest.raises(TypeError, match="input_shape"):
        convarith.summary(ResNet18())
    with pytest.raises(TypeError, match="positive ints"):
        convarith.summary(ResNet18(), "1x3x224x224")
    with pytest.raises(ValueError, match="fails on an input of shape"):
        convarith.summary(ResNet18(), (1, 4, 64, 64))
