"""The int8 path on a CPU without VNNI, run for real on an emulated one.

qemu-x86_64 (Debian's qemu-user, installed by the test command) runs this very interpreter on an
emulated AMD EPYC Zen 2 (``-cpu EPYC-Rome``: AVX2, FMA, F16C; no AVX-512, no VNNI), the CPU kind the
VNNI issue was found on. CPUID there reports no VNNI, so ONNX Runtime runs its AVX2 u8 x s8 int8
kernel, which adds each pair of products into a saturating 16-bit lane (``vpmaddubsw``), exactly as
on such hardware. The emulator is slow (about 1 s per MiniLM token), so these tests use a single
MatMul and the tiny BERT; the MiniLM figures on the emulated CPU are in the README.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qflume import choice
from qflume import model as qmodel

QEMU = shutil.which("qemu-x86_64")
CPU = "EPYC-Rome"
TESTS = Path(__file__).parent

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64" or QEMU is None,
    reason="needs qemu-x86_64 on x86-64 to emulate a CPU without VNNI (apt install qemu-user)",
)


def _emulated(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Runs ``code`` in this interpreter on the emulated CPU; returns its stdout."""
    assert QEMU is not None
    res = subprocess.run(
        [QEMU, "-cpu", CPU, sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    # qemu warns on stderr about CPUID bits its TCG lacks (rdseed, sha-ni, ...): not errors
    errors = [line for line in res.stderr.splitlines() if "TCG doesn't support" not in line]
    assert res.returncode == 0, "\n".join(errors)
    return res.stdout


def test_the_emulated_cpu_lacks_vnni_and_gets_the_7bit_recipe():
    out = _emulated(
        "import json; from qflume import _core, choice, model as m; print(json.dumps(["
        "_core.cpu_features(), m.int8_kind(), m.int8_path(), choice.cpu_key()]))"
    )
    features, recipe, path, key = json.loads(out)
    assert features["avx2"] and not features["avx512_vnni"] and not features["avx_vnni"]
    assert (recipe, path) == ("int8-r7", "x86-64 AVX2, no VNNI")
    assert key.endswith("[x86_64: avx2]") and key != choice.cpu_key()  # decides for itself


def _probe(folder: Path) -> tuple[Path, Path, Path, np.ndarray]:
    """One MatMul whose int8 pair sums overflow int16 at full range: all-positive weights and
    activations near the top of their range. fp32, full-range int8 and 7-bit int8, built with
    qflume's own quantizer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = 256, 64
    w = np.random.default_rng(0).uniform(0.5, 1.0, (k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="probe")],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fp32 = folder / "fp32.onnx"
    onnx.save(model, str(fp32))
    full, r7 = folder / "int8.onnx", folder / "int8-r7.onnx"
    qmodel._quantize(fp32, full, 0, reduce_range=False)
    qmodel._quantize(fp32, r7, 0, reduce_range=True)
    x = np.linspace(0.8, 1.0, 4 * k, dtype=np.float32).reshape(4, k)
    return fp32, full, r7, x


RUN_PROBE = """
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.save(path + ".out.npy", sess.run(None, {"x": x})[0])
"""


def test_7bit_recipe_is_exact_where_full_range_saturates(tmp_path):
    fp32, full, r7, x = _probe(tmp_path)
    np.save(tmp_path / "x.npy", x)
    native, emulated = tmp_path / "native", tmp_path / "emulated"
    for where in (native, emulated):
        where.mkdir()
        for f in (fp32, full, r7):
            shutil.copy(f, where / f.name)
    args = [str(tmp_path / "x.npy"), *(str(native / f.name) for f in (fp32, full, r7))]
    subprocess.run([sys.executable, "-c", RUN_PROBE, *args], check=True, timeout=120)
    _emulated(
        RUN_PROBE, str(tmp_path / "x.npy"), *(str(emulated / f.name) for f in (fp32, full, r7))
    )

    def out(where: Path, f: Path) -> np.ndarray:
        return np.load(where / (f.name + ".out.npy"))

    ref = out(native, fp32)

    def err(y: np.ndarray) -> float:
        return float(np.abs(y - ref).max() / np.abs(ref).max())

    # natively (whatever this CPU is) both recipes are close to fp32 ...
    assert err(out(native, r7)) < 2e-3
    if qmodel.cpu_has_vnni():
        assert err(out(native, full)) < 2e-3
    # ... but the emulated AVX2 kernel saturates the full-range weights (so this test can fail)
    assert err(out(emulated, full)) > 0.05, err(out(emulated, full))
    # and computes the 7-bit build exactly as a VNNI CPU does
    assert err(out(emulated, r7)) < 2e-3
    np.testing.assert_allclose(out(emulated, r7), out(native, r7), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out(emulated, fp32), ref, rtol=1e-5, atol=1e-4)


CHOOSE_TINY = """
import json, sys
from qflume import Embedder, choice, model as m
src, texts = sys.argv[1], json.loads(sys.argv[2])
rec = choice.choose(src, texts=texts, repeats=1, quiet=True)
r7 = Embedder(m.build(src, int8="int8-r7", quiet=True))
print(json.dumps({"rec": rec, "kind": m.default_kind(src), "r7": r7.model_path.name,
                  "per_text": r7.per_text, "vecs": r7.embed(texts[:3]).tolist()}))
"""


def test_the_emulated_cpu_measures_its_own_choice_and_its_7bit_build_holds_the_bar(
    tmp_path, monkeypatch
):
    """The int8-vs-fp32 decision on a CPU without VNNI, for real: its candidate is the 7-bit
    build, which meets the fidelity bar on the AVX2 kernels, and it is chosen exactly when the
    measurement says it is faster there; the host's decision in the same cache stays its own.
    The builds are made here (they are the same files on any CPU: the same cache names), so the
    emulator only measures; the emulator's speed says nothing about real hardware."""
    sys.path.insert(0, str(TESTS))
    from tiny_bert import WORDS, make_tiny_bert

    src = tmp_path / "tiny"
    make_tiny_bert(src, hidden=64, intermediate=128)
    monkeypatch.setenv("QFLUME_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(choice.ENV_KIND, raising=False)
    for kind in qmodel.KINDS:
        qmodel.build(src, int8=kind, quiet=True)
    words = [
        " ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(1 + i % 20)) for i in range(24)
    ]
    here = choice.choose(src, texts=words, repeats=1, quiet=True)
    got = json.loads(_emulated(CHOOSE_TINY, str(src), json.dumps(words)))
    rec = got["rec"]
    assert rec["cpu"].endswith("[x86_64: avx2]") and rec["candidate"] == "int8-r7"
    assert rec["int8_path"] == "x86-64 AVX2, no VNNI"
    cos, speed = rec["cosine"], rec["chunks_per_s"]
    assert cos["mean"] >= choice.FIDELITY_BAR[0] and cos["min"] >= choice.FIDELITY_BAR[1], rec
    faster = speed["int8-r7"] > speed["fp32"]
    assert rec["kind"] == got["kind"] == ("int8-r7" if faster else "fp32"), rec
    # both CPUs' decisions in one file, each under its own key
    decisions = choice.recorded(src)
    assert decisions == {here["cpu"]: here, rec["cpu"]: rec}
    assert qmodel.info(src)["other_cpus"] == {rec["cpu"]: rec}
    # the 7-bit build computes there what it computes here
    assert got["r7"].endswith("-int8-r7") and got["per_text"]
    from qflume import Embedder

    native = Embedder(qmodel.build(src, int8="int8-r7", quiet=True)).embed(words[:3])
    np.testing.assert_allclose(np.array(got["vecs"]), native, atol=1e-5)


EMBED_TINY = """
import json, sys
from qflume import Embedder, model as m
built = m.build(sys.argv[1], int8=True)
emb = Embedder(built)
vecs = emb.embed(["w1 w2 w3", "w4 w5 w6 w7", "w8"])
print(json.dumps({"folder": built.name, "per_text": emb.per_text, "vecs": vecs.tolist()}))
"""


def test_the_int8_build_made_on_the_emulated_cpu_is_7bit_and_the_one_made_here(tmp_path):
    """Building on a CPU without VNNI (``--int8``: that CPU's recipe, the 7-bit one; quantizer
    and optimizer run there) gives the build made here: the same cache name, the same vectors.
    (Which build the emulated CPU then runs by default it measures: the test above.)"""
    sys.path.insert(0, str(TESTS))
    from tiny_bert import make_tiny_bert

    src = tmp_path / "tiny"
    make_tiny_bert(src, hidden=64, intermediate=128)
    env = dict(os.environ, QFLUME_CACHE_DIR=str(tmp_path / "emulated-cache"))
    got = json.loads(_emulated(EMBED_TINY, str(src), env=env))
    assert got["folder"].endswith("-int8-r7") and got["per_text"]
    env = dict(os.environ, QFLUME_CACHE_DIR=str(tmp_path / "native-cache"))
    code = EMBED_TINY.replace(
        "m.build(sys.argv[1], int8=True)", "m.build(sys.argv[1], int8='int8-r7')"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(src)], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    here = json.loads(res.stdout)
    assert here["folder"] == got["folder"]  # same source, same recipe: the same cache name
    np.testing.assert_allclose(np.array(got["vecs"]), np.array(here["vecs"]), atol=1e-5)
