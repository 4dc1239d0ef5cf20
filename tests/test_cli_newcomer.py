"""A newcomer's pass over the ``convarith`` command line: what a person sees.

Each test pins one problem found by using the commands as a first-time user
would (wording, one-line errors with exit status 2, outputs that make sense).
"""

from __future__ import annotations

import pytest

from convarith import ConvSpec
from convarith.cli import main
from convarith.port import port


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("spec", "source_name"),
    [
        (ConvSpec(kernel_size=3, strides=2, padding="same"), "Keras"),
        (ConvSpec.from_torch("Conv2d", in_channels=3, out_channels=8, kernel_size=3), "PyTorch"),
    ],
)
@pytest.mark.parametrize("to", ["keras", "torch"])
def test_port_header_names_the_source_framework_once(spec: ConvSpec, source_name: str, to: str) -> None:
    first_line = port(spec, to=to, input_shape=(3, 28, 28) if spec.convention else (28, 28)).code.splitlines()[0]
    assert f" port of {source_name} conv on input " in first_line
    assert f"{source_name} {source_name}" not in first_line
