"""Building ONNX models from BERT safetensors folders: graph correctness, cache, CLI, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import qflume
from qflume import model as qmodel
from tiny_bert import forward, make_tiny_bert


def _run(path, ids, mask):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(
        ["last_hidden_state"],
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
    )[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QFLUME_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QFLUME_MODEL_KIND", raising=False)
    return tmp_path / "cache" / "models"


@pytest.mark.parametrize(
    ("act", "prefix", "layers", "heads"),
    [("gelu", "bert.", 2, 4), ("gelu_new", "", 3, 2), ("relu", "", 1, 8)],
)
def test_graph_matches_numpy_reference(tmp_path, cache, act, prefix, layers, heads):
    src = tmp_path / "src"
    w = make_tiny_bert(src, act=act, prefix=prefix, layers=layers, heads=heads)
    out = qmodel.build(src, quiet=True)
    assert out.parent == cache and out.name.endswith("-fp32")
    rng = np.random.default_rng(5)
    ids = rng.integers(4, 64, size=(3, 11)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # padding must not leak into the real tokens
    mask[2, 2:] = 0
    got = _run(out / "model.onnx", ids, mask)
    want = forward(w, ids, mask.astype(np.float64), heads=heads, layers=layers, act=act)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=2e-4, rtol=1e-3)
    # the padded row's real tokens equal the same row run alone, unpadded
    alone = _run(out / "model.onnx", ids[1:2, :7], mask[1:2, :7])
    np.testing.assert_allclose(got[1, :7], alone[0], atol=1e-4)
    for name in ("tokenizer.json", "config.json", "qflume_build.json"):
        assert (out / name).is_file()


def test_int8_build_is_quantized_and_close(tmp_path, cache):
    src = tmp_path / "src"
    w = make_tiny_bert(src, hidden=64, intermediate=128)
    out = qmodel.build(src, int8=True, quiet=True)
    assert out.name.endswith("-" + qmodel.int8_kind())
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, ops
    # the recipe: the FFN-output MatMul of the first half of the layers stays fp32
    assert qmodel.fp32_matmuls(2) == ["encoder.layer.0.output.dense.matmul"]
    assert len(qmodel.fp32_matmuls(6)) == 3 and len(qmodel.fp32_matmuls(12)) == 6
    by_name = {n.name: n.op_type for n in graph.node}
    assert by_name["encoder.layer.0.output.dense.matmul"] == "MatMul"
    assert "encoder.layer.1.output.dense.matmul" not in by_name  # quantized
    assert by_name["encoder.layer.1.output.dense.matmul_quant"] == "DynamicQuantizeMatMul"
    meta = json.loads((out / "qflume_build.json").read_text())
    assert meta["build_version"] == qmodel.BUILD_VERSION == "4"
    # Residual Add + LayerNormalization stay apart: ORT's SkipLayerNormalization is slower on CPU.
    assert "SkipLayerNormalization" not in ops
    assert sum(n.op_type == "LayerNormalization" for n in graph.node) == 2 * 2 + 1
    ids = np.array([[2, 10, 11, 12, 13, 3]], np.int64)
    mask = np.ones_like(ids)
    got = _run(out / "model.onnx", ids, mask)[0]
    want = forward(w, ids, mask.astype(np.float64), heads=4, layers=2)[0]
    cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cos.min() > 0.98


def test_cache_reuse_force_and_fingerprint(tmp_path, cache, capfd):
    src = tmp_path / "src"
    make_tiny_bert(src)
    first = qmodel.build(src)
    assert "building fp32" in capfd.readouterr().err
    stamp = (first / "model.onnx").stat().st_mtime_ns
    assert qmodel.build(src) == first
    assert capfd.readouterr().err == ""  # cached: no rebuild, no log
    assert (first / "model.onnx").stat().st_mtime_ns == stamp
    assert qmodel.build(src, force=True, quiet=True) == first
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp leftovers
    # other weights -> another fingerprint -> another folder
    make_tiny_bert(src, seed=1)
    assert qmodel.build(src, quiet=True) != first
    assert len(list(cache.iterdir())) == 2


def test_build_into_out_and_cli(tmp_path, cache, capsys):
    src = tmp_path / "src"
    make_tiny_bert(src)
    out = tmp_path / "built"
    assert qmodel.main(["build", str(src), "--int8", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    meta = json.loads((out / "qflume_build.json").read_text())
    assert meta["kind"] == qmodel.int8_kind() and meta["source"] == str(src.resolve())
    assert meta["built_on"] == qmodel.int8_path()
    assert qmodel.main(["build", str(src), "--kind", "int8-r7", "--out", str(tmp_path / "r7")]) == 0
    meta = json.loads((tmp_path / "r7" / "qflume_build.json").read_text())
    assert meta["kind"] == "int8-r7" and meta["weight_bits"] == 7
    capsys.readouterr()
    with pytest.raises(SystemExit):  # --int8 and --kind are exclusive
        qmodel.main(["build", str(src), "--int8", "--kind", "fp32"])
    with pytest.raises(qflume.ModelError, match="unknown model kind 'int4'"):
        qmodel.build(src, int8="int4")
    assert qmodel.main(["build", str(tmp_path / "nope")]) == 1
    assert "nope" in capsys.readouterr().err


def test_python_m_entry_point(tmp_path):
    src = tmp_path / "src"
    make_tiny_bert(src)
    env = dict(os.environ, QFLUME_CACHE_DIR=str(tmp_path / "c"))
    res = subprocess.run(
        [sys.executable, "-m", "qflume.model", "build", str(src)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    built = Path(res.stdout.strip())
    assert built.parent == tmp_path / "c" / "models" and (built / "model.onnx").is_file()
    assert "qflume: building fp32" in res.stderr


def test_errors_name_the_folder_and_the_missing_piece(tmp_path, cache):
    src = tmp_path / "src"
    make_tiny_bert(src)
    (src / "model.safetensors").rename(src / "weights.bin")
    with pytest.raises(qflume.ModelError, match=r"src lacks model\.safetensors"):
        qmodel.build(src)
    (src / "weights.bin").rename(src / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    cfg["hidden_act"] = "swish-ish"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(qflume.ModelError, match="hidden_act"):
        qmodel.build(src)
    del cfg["hidden_size"]
    cfg["hidden_act"] = "gelu"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(qflume.ModelError, match="hidden_size"):
        qmodel.build(src)
    with pytest.raises(qflume.ModelError, match="not a folder"):
        qmodel.build(tmp_path / "missing")
    assert not list(cache.glob("*")) if cache.exists() else True


def test_missing_tensor_is_named(tmp_path, cache):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "src"
    make_tiny_bert(src, prefix="")
    w = load_file(str(src / "model.safetensors"))
    del w["encoder.layer.1.intermediate.dense.weight"]
    save_file(w, str(src / "model.safetensors"))
    with pytest.raises(qflume.ModelError, match=r"encoder\.layer\.1\.intermediate\.dense"):
        qmodel.build(src, quiet=True)


CPUS = {  # name: (features present, int8 recipe: the int8 candidate measured against fp32)
    "Xeon with AVX-512 VNNI": ({"x86_64", "avx2", "avx512bw", "avx512_vnni"}, "int8"),
    "Alder Lake with AVX-VNNI": ({"x86_64", "avx2", "avx_vnni"}, "int8"),
    "EPYC Zen 2/3, AVX2 only": ({"x86_64", "avx2"}, "int8-r7"),
    "Skylake-X, AVX-512 without VNNI": ({"x86_64", "avx2", "avx512bw"}, "int8-r7"),
    "old x86, SSE only": ({"x86_64"}, "int8-r7"),
    "Graviton 2+, ARM dot product": ({"aarch64", "asimddp"}, "int8"),
    "ARM without dot product": ({"aarch64"}, "int8"),
}


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_int8_recipe_and_cache_key_per_cpu(monkeypatch, cpu):
    from qflume import choice

    present, recipe = CPUS[cpu]
    names = qflume._core.cpu_features().keys()
    features = {name: name in present for name in names}
    monkeypatch.setattr(qmodel._core, "cpu_features", lambda: dict(features))
    assert qmodel.cpu_has_vnni() == bool(present & {"avx512_vnni", "avx_vnni", "asimddp"})
    assert qmodel.int8_kind() == recipe
    assert qmodel._kind_of(True) == recipe and qmodel._kind_of(False) == "fp32"
    # the choice between that recipe and fp32 is recorded per CPU: its flags are in the key
    arch = "x86_64" if "x86_64" in present else "aarch64"
    flags = " ".join(f for f in ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "asimddp")
                     if f in present) or "no SIMD flags"  # fmt: skip
    assert choice.cpu_key() == f"{qmodel.cpu_model()} [{arch}: {flags}]"


def test_cpu_features_read_the_cpu_itself():
    """CPUID (what ONNX Runtime's kernels test), never more than /proc/cpuinfo lists."""
    features = qflume._core.cpu_features()
    assert set(features) == {"x86_64", "aarch64", "avx2", "avx512bw", "avx512_vnni", "avx_vnni",
                             "asimddp"}  # fmt: skip
    try:
        flags = next(
            set(line.split(":", 1)[1].split())
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith(("flags", "Features"))
        )
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    for name, present in features.items():
        if present and name not in ("x86_64", "aarch64"):
            assert name in flags, name
    if features["x86_64"]:
        assert features["avx2"] == ("avx2" in flags)


def test_model_info(tmp_path, cache, capsys):
    src = tmp_path / "src"
    make_tiny_bert(src)
    qmodel.build(src, int8=True, quiet=True)
    data = qmodel.info(src)
    assert data["int8_path"] == qmodel.int8_path() and data["default_kind"] is None  # undecided
    assert list(data["builds"]) == [qmodel.int8_kind()]
    assert data["builds"][qmodel.int8_kind()]["built_on"] == qmodel.int8_path()
    assert qmodel.main(["info", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == data
    assert qmodel.main(["info", str(src)]) == 0
    text = capsys.readouterr().out
    assert f"int8 recipe    {qmodel.int8_kind()}" in text and f"built {qmodel.int8_kind()}" in text
    assert qmodel.main(["info", str(tmp_path / "nope")]) == 0
    assert "is not a folder" in capsys.readouterr().out


def test_cpu_flag_probe_and_default_source():
    assert isinstance(qmodel.cpu_has_vnni(), bool)
    src = qmodel.default_source()
    assert (src / "model.safetensors").is_file() and (src / "config.json").is_file()
