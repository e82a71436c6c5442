#!/usr/bin/env bash
# The data set `make gpu-train` reads on the GPU machine, which has no network: the RGB files of
# the two-package corpus (manifest, training and validation arrays, the PCA cache when there is
# one) linked into data/gpu/corpus, small enough to carry (about 51 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
src=data/two-packages/corpus
[ -f "$src/manifest.json" ] || .venv/bin/tessera data corpus --package crawl-tiles-data --package cataclysm-dda-data --out "$src"
mkdir -p data/gpu/corpus
for f in "$src"/manifest.json "$src"/train.npy "$src"/val.npy "$src"/val-*.npy "$src"/pca-rgb.npz; do
    case "$f" in *-rgba.npy) continue ;; esac
    [ -e "$f" ] && ln -f "$f" data/gpu/corpus/
done
du -sh data/gpu/corpus
