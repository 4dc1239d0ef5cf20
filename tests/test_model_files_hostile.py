"""Hostile model files: each ends in one line on stderr and exit status 2, quickly, in bounded memory.

One test per class of attack, with variants: zip bombs (by size and by ratio),
encrypted members, unknown compression methods, corrupt deflate streams,
JSON nested deep, configs of the wrong type, missing arguments, non-finite
sizes, YAML alias bombs, ONNX models pointing at huge external weights, files
with far too many layers, folders and FIFOs given as model files, and ONNX
``pads`` of the wrong length.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from convarith.cli import main
from convarith.io.keras_file import ArchiveLimits, read_keras_archive


def one_line_error(capsys, *argv: str, seconds: float = 10.0) -> str:
    start = time.perf_counter()
    code = main(["summary", *argv])
    elapsed = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert elapsed < seconds, elapsed
    return lines[0]


def sequential(layers: list, input_shape=(None, 8, 8, 3)) -> dict:
    return {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": list(input_shape), "name": "in"}}, *layers]}}


def keras_zip(path: Path, config: bytes | str, method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("config.json", config)
        archive.writestr("metadata.json", "{}")
    return path


def patch_member(path: Path, name: str, *, flag: int | None = None, method: int | None = None) -> None:
    """Rewrite the general-purpose flag or the method of one member, in both zip headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    local = info.header_offset
    central = data.rfind(b"PK\x01\x02" + data[data.find(b"PK\x01\x02") + 4: data.find(b"PK\x01\x02") + 4], 0)
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        (name_length,) = struct.unpack_from("<H", data, central + 28)
        if data[central + 46: central + 46 + name_length].decode() == name:
            break
        central = data.find(b"PK\x01\x02", central + 4)
    if flag is not None:
        struct.pack_into("<H", data, local + 6, flag)
        struct.pack_into("<H", data, central + 8, flag)
    if method is not None:
        struct.pack_into("<H", data, local + 8, method)
        struct.pack_into("<H", data, central + 10, method)
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- zip archives


@pytest.mark.parametrize("megabytes, filler", [(20, b" "), (20, b"0"), (80, b"[")])
def test_zip_bomb_is_refused_before_it_is_inflated(capsys, tmp_path: Path, megabytes: int, filler: bytes) -> None:
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("config.json", "w", force_zip64=True) as member:
            block = filler * (1 << 20)
            for _ in range(megabytes):
                member.write(block)
    assert path.stat().st_size < megabytes * (1 << 20) // 100
    line = one_line_error(capsys, str(path), seconds=5)
    assert ("zip bomb" in line or "over the cap" in line) and "config.json" in line


def test_size_cap_holds_even_when_the_ratio_is_honest(tmp_path: Path) -> None:
    path = keras_zip(tmp_path / "big.keras", os.urandom(3 << 20).hex(), method=zipfile.ZIP_STORED)
    with pytest.raises(ValueError, match="over the cap of 1,048,576|more than 1,048,576"):
        read_keras_archive(path, ArchiveLimits(max_config_bytes=1 << 20))


def test_declared_size_is_not_trusted(tmp_path: Path) -> None:
    """A member whose header claims a small size but inflates further is still cut off."""
    path = keras_zip(tmp_path / "liar.keras", b" " * (3 << 20))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("config.json")
    struct.pack_into("<I", data, info.header_offset + 22, 100)  # uncompressed size in the local header
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 100)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="config.json"):
        read_keras_archive(path, ArchiveLimits(max_config_bytes=1 << 20, max_ratio=10**6))


@pytest.mark.parametrize("variant", ["encrypted", "method 99", "bzip2", "lzma"])
def test_encrypted_or_unknown_compression(capsys, tmp_path: Path, variant: str) -> None:
    config = json.dumps(sequential([]))
    if variant in ("bzip2", "lzma"):
        method = zipfile.ZIP_BZIP2 if variant == "bzip2" else zipfile.ZIP_LZMA
        path = keras_zip(tmp_path / "m.keras", config, method)
    else:
        path = keras_zip(tmp_path / "m.keras", config)
        if variant == "encrypted":
            patch_member(path, "config.json", flag=0x1)
        else:
            patch_member(path, "config.json", method=99)
    line = one_line_error(capsys, str(path))
    assert ("encrypted" if variant == "encrypted" else "compression method") in line


@pytest.mark.parametrize("where", ["start", "middle", "truncated"])
def test_corrupt_deflate_stream(capsys, tmp_path: Path, where: str) -> None:
    config = json.dumps(sequential([{"class_name": "Dense", "config": {"units": i}} for i in range(1, 400)]))
    path = keras_zip(tmp_path / "m.keras", config)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("config.json")
    body = info.header_offset + 30 + len(info.filename)
    if where == "truncated":
        data[body + info.compress_size // 2: body + info.compress_size] = b"\0" * (info.compress_size -
                                                                                 info.compress_size // 2)
    else:
        at = body + (2 if where == "start" else info.compress_size // 2)
        for offset in range(16):
            data[at + offset] ^= 0xA5
    path.write_bytes(bytes(data))
    line = one_line_error(capsys, str(path))
    assert "config.json" in line


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("config, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a":' * 5000 + "1" + "}" * 5000, "nested too deeply"),
    (json.dumps(sequential(["Dense"])), "layer 1 is not a Keras layer config"),
    (json.dumps(sequential([{"class_name": "Dense", "config": [1, 2]}])), "config is a list"),
    (json.dumps(sequential([{"class_name": "Dense", "config": {}}])), "missing argument 'units'"),
    (json.dumps(sequential([{"class_name": "Dense", "config": {"units": "ten"}}])), "Dense"),
    (json.dumps(sequential([], input_shape=(None, 8, 8, 3))).replace("8, 8", "Infinity, 8"), "Infinity"),
    (json.dumps(sequential([], input_shape=(None, 8, 8, 3))).replace("8, 8", "1e400, 8"), "positive integers"),
    (json.dumps(sequential([], input_shape=(None, 8, 8, 3))).replace("8, 8", "-3, 8"), "positive integers"),
    (json.dumps({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"units": 3}, "build_config": "(None, 4)"}]}}), "build_config is a str"),
    (json.dumps({"class_name": "Sequential", "config": []}), "no 'config' mapping"),
    (json.dumps({"class_name": "Functional", "config": {"layers": [7]}}), "layer 0 is a int"),
    (json.dumps([1, 2, 3]), "holds a list"),
    ('"just a string"', "holds a str"),
    ('{"class_name": "Sequential", "config": {"layers": {}}}', "without a 'layers' list"),
])
def test_hostile_config(capsys, tmp_path: Path, config: str, message: str) -> None:
    path = keras_zip(tmp_path / "m.keras", config)
    line = one_line_error(capsys, str(path))
    assert message in line, line


def test_nn_loader_reuses_the_hardened_reader(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    from convarith.nn.io import load_model

    path = tmp_path / "m.keras"
    for config in ("[" * 100_000, b" " * (20 << 20)):
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("config.json", config)
            archive.writestr("model.weights.h5", b"\0" * 100)
        with pytest.raises(ValueError, match="nested too deeply|zip bomb"):
            load_model(path)


# --------------------------------------------------------------------------- layer lists


@pytest.mark.parametrize("where", ["name", "layers", "input"])
def test_yaml_alias_bomb_is_refused(capsys, tmp_path: Path, where: str) -> None:
    pytest.importorskip("yaml")
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]")
    bomb = "\n".join(lines)
    if where == "name":
        text = "x:\n" + "\n".join("  " + line for line in lines) + "\nname: *i\ninput: [8, 8, 1]\nlayers: [Conv2D(1, 1)]\n"
    elif where == "layers":
        text = "x:\n" + "\n".join("  " + line for line in lines) + "\ninput: [8, 8, 1]\nlayers: *i\n"
    else:
        text = "input: &s [8, 8, 1]\nname: *s\nlayers: [Conv2D(1, 1)]\n"
    assert len(bomb) < 1024
    path = tmp_path / "net.yaml"
    path.write_text(text)
    line = one_line_error(capsys, str(path), seconds=3)
    assert "aliases" in line


@pytest.mark.parametrize("suffix, count", [(".json", 200_000), (".keras", 200_000), (".json", 20_001)])
def test_huge_layer_count_is_refused_before_building(capsys, tmp_path: Path, suffix: str, count: int) -> None:
    if suffix == ".json":
        path = tmp_path / "deep.json"
        path.write_text(json.dumps({"input": [8, 8, 1], "layers": ["Conv2D(1, 1)"] * count}))
    else:
        names = os.urandom(4 * count).hex()  # distinct names: compresses like a real config
        layers = [{"class_name": "Conv2D", "config": {"filters": 1, "kernel_size": 1, "name": names[8 * i: 8 * i + 8]}}
                  for i in range(count)]
        path = keras_zip(tmp_path / "deep.keras", json.dumps(sequential(layers)))
    line = one_line_error(capsys, str(path), seconds=10)  # mostly json.loads of 16 MB; no layer is built
    total = count + (suffix == ".keras")  # the Sequential config lists its InputLayer too
    assert f"{total:,} layers" in line and "max_model_layers" in line


def test_huge_onnx_node_count_is_refused(capsys, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(30_000)]
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("t30000", TensorProto.FLOAT, [1, 1, 4, 4])])
    path = tmp_path / "deep.onnx"
    onnx.save(helper.make_model(graph), str(path))
    line = one_line_error(capsys, str(path), seconds=5)
    assert "30,000 layers" in line


# --------------------------------------------------------------------------- files that are not files


@pytest.mark.parametrize("suffix", [".keras", ".onnx", ".json", ".yaml"])
def test_folder_and_fifo_say_what_they_are(capsys, tmp_path: Path, suffix: str) -> None:
    folder = tmp_path / f"model{suffix}"
    folder.mkdir()
    assert "is a folder" in one_line_error(capsys, str(folder))
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / f"pipe{suffix}"
        os.mkfifo(fifo)
        assert "FIFO" in one_line_error(capsys, str(fifo), seconds=3)
    assert "does not exist" in one_line_error(capsys, str(tmp_path / f"absent{suffix}"))


# --------------------------------------------------------------------------- ONNX


def _onnx_with_external_weight(tmp_path: Path, gigabytes: float) -> Path:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    channels = int(gigabytes * (1 << 30) / 4 / 9 / 64)
    weight = TensorProto()
    weight.name = "w"
    weight.data_type = TensorProto.FLOAT
    weight.dims.extend([channels, 64, 3, 3])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(channels * 64 * 9 * 4))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    with open(tmp_path / "weights.bin", "wb") as handle:  # sparse: costs no disk
        handle.truncate(channels * 64 * 9 * 4)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "big.onnx"
    with open(path, "wb") as handle:
        handle.write(helper.make_model(graph).SerializeToString())
    return path


@pytest.mark.parametrize("gigabytes", [0.5, 2.4])
def test_onnx_external_weights_are_never_loaded(tmp_path: Path, gigabytes: float) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the peak memory")
    path = _onnx_with_external_weight(tmp_path, gigabytes)
    assert path.stat().st_size < 1000
    # VmHWM is this process's own peak (ru_maxrss would carry the forking parent's over exec)
    script = ("from convarith.io import read_model\nfrom convarith.summary import summarize\n"
              f"s = summarize(read_model({str(path)!r}))\n"
              "peak = next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
              "print(s.rows[-1].output_shape, s.total_params, peak)")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    shape, params, peak_kb = result.stdout.rsplit(" ", 2)
    channels = int(gigabytes * (1 << 30) / 4 / 9 / 64)
    assert shape == f"(None, {channels}, 16, 16)" and int(params) == channels * 64 * 9
    assert int(peak_kb) < 400 * 1024, peak_kb  # the weights would be 0.5 or 2.4 GB
    assert elapsed < 30


@pytest.mark.parametrize("pads, rank", [([1, 1], 2), ([1, 1, 1], 2), ([1] * 6, 2), ([1, 1, 1, 1], 1)])
def test_onnx_wrong_length_pads_name_the_real_rank(capsys, tmp_path: Path, pads: list, rank: int) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    kernel = [3] * rank
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=kernel, pads=pads)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2] + [9] * rank)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "pads.onnx"
    onnx.save(helper.make_model(graph), str(path))
    line = one_line_error(capsys, str(path))
    assert f"{rank} spatial axes" in line and f"needs {2 * rank}" in line


@pytest.mark.parametrize("content", [b"", b"\x08\x07" * 50, os.urandom(3000), b"ONNX" + b"\xff" * 100])
def test_onnx_garbage(capsys, tmp_path: Path, content: bytes) -> None:
    pytest.importorskip("onnx")
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    one_line_error(capsys, str(path))


def test_keras_zip_passes_through_io_bytes() -> None:
    """``read_keras_archive`` reads what ``zipfile`` writes (a sanity check for the patches above)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", json.dumps(sequential([])))
    assert buffer.getvalue().startswith(b"PK")
