#!/usr/bin/env bash
# Make the SuperBERT model directory (config.json with qkv_size, vocab.txt), offline.
#   bash setup_superbert_model.sh                       # experiments/models/superbert_model, 8/768/12/3072
#   bash setup_superbert_model.sh --layers 4 --hidden 128 --heads 4 --ffn 512 --output DIR
# Options: --output --layers --hidden --heads --ffn --qkv --scheme {mlm,kd} --vocab --force
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
exec "${PYTHON:-python}" -m superbert.setup_model "$@"
