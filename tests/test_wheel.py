"""Install from a wheel: what ``maturin build`` makes installs with pip into a fresh venv and runs
there on a machine without Rust.

The wheel is built with ``--profile ci`` (the Rust build the test command already made in
./target, so this takes seconds; releases use ``--release``, the same files with LTO). It is
installed with ``pip --no-index --no-deps`` into a venv of its own; qflume's third-party
dependencies come from this test environment's site-packages through a ``.pth`` line, which puts
them *after* the venv's own site-packages, so ``qflume`` itself can only come from the wheel (and
this environment's editable ``qflume.pth`` is not read: a path added by a .pth line is not a site
folder). The runs see a PATH without cargo or rustc and a HOME of their own.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tiny_bert import built_tiny_model, tiny_corpus

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "qflume"
MATURIN = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")
RUST_TOOLS = ("cargo", "rustc")


def _files_of_the_package() -> set[str]:
    """The package's own files as the wheel names them (not the built extension, not caches)."""
    return {
        "qflume/" + p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyd", ".pyc")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if MATURIN is None or shutil.which("cargo") is None:
        pytest.skip("building the wheel needs maturin and cargo (the test command installs both)")
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        [MATURIN, "build", "--profile", "ci", "--interpreter", sys.executable, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # seconds when ./target is warm; a cold Rust build takes minutes
        check=False,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, (wheels, res.stderr[-2000:])
    return wheels[0]


def test_the_wheel_is_abi3_and_holds_the_whole_package(wheel: Path) -> None:
    name, version = "qflume", "0.1.0"
    # one wheel for every CPython >= 3.10: the stable ABI, and the extension named for it
    assert wheel.name.startswith(f"{name}-{version}-cp310-abi3-"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist = f"{name}-{version}.dist-info"
        tags = [line for line in z.read(f"{dist}/WHEEL").decode().splitlines()
                if line.startswith("Tag:")]  # fmt: skip
        meta = z.read(f"{dist}/METADATA").decode()
        entry = configparser.ConfigParser()
        entry.read_string(z.read(f"{dist}/entry_points.txt").decode())
    assert tags and all("-abi3-" in t for t in tags), tags
    assert "qflume/_core.abi3.so" in names or "qflume/_core.pyd" in names
    for must in ("qflume/py.typed", "qflume/_core.pyi", "qflume/static/status.html",
                 "qflume/static/status.js", "qflume/static/status.css", "qflume/__main__.py"):  # fmt: skip
        assert must in names, must
    missing = _files_of_the_package() - names
    assert not missing, f"files of python/qflume not in the wheel: {sorted(missing)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert dict(entry["console_scripts"]) == {"qflume": "qflume.cli:main"}
    assert dict(entry["pytest11"]) == {"qflume": "qflume.pytest_plugin"}
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines()
                if line.startswith("Requires-Dist:")]  # fmt: skip
    for dep in ("numpy", "onnxruntime", "tokenizers", "qdrant-edge-py", "grpcio"):
        assert any(r.startswith(dep) for r in requires), (dep, requires)
    assert any("extra == 'serve'" in r or 'extra == "serve"' in r for r in requires), requires
    assert "Requires-Python: >=3.10" in meta


def _no_rust_path(venv_bin: Path) -> str:
    dirs = [str(venv_bin)]
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        if Path(d).is_dir() and not any((Path(d) / t).exists() for t in RUST_TOOLS):
            dirs.append(d)
    path = os.pathsep.join(dirs)
    assert all(shutil.which(t, path=path) is None for t in RUST_TOOLS), path
    return path


def test_installs_with_pip_into_a_fresh_venv_and_runs_without_rust(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CARGO", "RUSTUP", "PYTHON", "VIRTUAL_ENV", "QFLUME", "MATURIN"))}  # fmt: skip
    env.update(
        PATH=_no_rust_path(venv / "bin"),
        HOME=str(tmp_path / "home"),
        QFLUME_CACHE_DIR=str(tmp_path / "cache"),
        QFLUME_PROGRESS_INTERVAL="60",
        PYTHONDONTWRITEBYTECODE="1",
    )

    def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(a) for a in args],
            cwd=tmp_path,  # not the repository: nothing of python/ is on the path by accident
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check:
            assert res.returncode == 0, (args, res.stdout[-2000:], res.stderr[-4000:])
        return res

    # pip of this environment installs into the venv's interpreter; no index, nothing built
    run(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-index", "--no-deps",
        "--no-cache-dir", "--disable-pip-version-check", wheel)  # fmt: skip
    where = run(py, "-c", "import importlib.util as u; print(u.find_spec('qflume').origin)")
    installed = Path(where.stdout.strip())
    assert installed.is_relative_to(venv), installed
    # without its dependencies the package says so (numpy first), not a Rust build error
    bare = run(py, "-c", "import qflume", check=False)
    assert bare.returncode != 0 and "ModuleNotFoundError" in bare.stderr, bare.stderr[-2000:]
    # the third-party dependencies: this environment's site-packages, after the venv's own
    (site_dir,) = (Path(p) for p in run(py, "-c", "import site; print(*site.getsitepackages())")
                   .stdout.split())  # fmt: skip
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (site_dir / "_qflume_test_deps.pth").write_text("\n".join(deps) + "\n")

    probe = run(
        py,
        "-c",
        "import json, qflume, qflume._core as c, numpy, onnxruntime; print(json.dumps("
        "[qflume.__file__, c.__file__, numpy.__file__, qflume.__version__]))",
    )
    pkg, core, numpy_file, version = json.loads(probe.stdout)
    assert Path(pkg).is_relative_to(venv) and Path(core).is_relative_to(venv), (pkg, core)
    assert Path(core).name == "_core.abi3.so"
    assert not Path(pkg).is_relative_to(ROOT / "python")  # not the editable install
    assert not Path(numpy_file).is_relative_to(venv)
    assert version == "0.1.0"

    assert "ingest" in run(py, "-m", "qflume", "--help").stdout
    assert "ingest" in run(venv / "bin" / "qflume", "--help").stdout  # the console script

    # a tiny ingest and search into an embedded store, with the tiny test model
    model = built_tiny_model(tmp_path / "tiny")
    docs = tiny_corpus(tmp_path / "docs", 3, paragraphs=4)
    store = tmp_path / "store"
    common = ("--store", store, "-c", "docs", "--model", model, "--json")
    ingested = json.loads(run(venv / "bin" / "qflume", "ingest", docs, *common).stdout)
    assert ingested["documents_new"] == 3 and ingested["points_upserted"] > 0, ingested
    found = json.loads(run(py, "-m", "qflume", "search", "w1 w2 w3", *common).stdout)
    hits = found["results"][0]
    names = {f.name for f in docs.iterdir()}
    assert hits and all(h["source"] in names for h in hits), hits  # relative to the root given
