#!/usr/bin/env bash
# The GPU checks, on a host with CUDA, torch and PyG but neither Ray nor Neo4j:
#
#     experiments/gpu_check.sh GRAPH.pt OUT_DIR
#
# GRAPH.pt is an ML-1M graph exported elsewhere (`gnnrec ingest --dataset ml-1m` then
# `gnnrec export --out GRAPH.pt`, or `python -m experiments.graphs --dataset ml-1m`, which
# prints the file it ingested and exported into the benchmarks' cache). Writes into OUT_DIR: gpu.txt (nvidia-smi, versions),
# pytest.log (tests/test_device.py), train_deterministic.json and
# train_nondeterministic.json (the run metadata of `gnnrec train --device cuda` with 64
# dims, 3 layers and batch 2048, as in the CPU epoch-time benchmark), and
# epoch_time_ml-1m_cuda.json (our LightGCN against PyG's on the GPU).
set -euo pipefail
graph=$(realpath "${1:?graph file}"); out=${2:?output folder}
mkdir -p "$out"; out=$(realpath "$out")
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if ! python3 -c "import gnnrec.gnn" 2>/dev/null; then
    # Not installed: lay the package out as `pip install` would, in a work folder that
    # also holds experiments/ and tests/, and run from there (`python -m` puts the
    # current folder first on sys.path, where the repository's bare gnnrec/ would win).
    work=/tmp/gnnrec-work
    rm -rf "$work" && mkdir -p "$work/gnnrec"
    cp -r gnnrec/. "$work/gnnrec/"
    for d in gnn graph ingest serve; do cp -r "$d" "$work/gnnrec/$d"; done
    cp -r experiments tests pyproject.toml "$work/"
    cd "$work"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, torch_geometric; print('torch', torch.__version__, 'pyg', torch_geometric.__version__)" | tee -a "$out/gpu.txt"

python3 -m pytest --noconftest -p no:cacheprovider -q tests/test_device.py 2>&1 | tee "$out/pytest.log" || echo "pytest: FAILED (see pytest.log)"

# `gnnrec train` with Ray and the Neo4j driver unimportable: the GPU path needs neither.
gnnrec() { python3 -c "import sys; sys.modules.update(ray=None, neo4j=None)
from gnnrec.cli import main; raise SystemExit(main(sys.argv[1:]))" "$@"; }
for mode in deterministic nondeterministic; do
    flag=(); [ "$mode" = nondeterministic ] && flag=(--nondeterministic)
    gnnrec train --model lightgcn --graph "$graph" --out "/tmp/gpu-run-$mode" --overwrite \
        --device cuda --epochs 10 --embedding-dim 64 --num-layers 3 --batch-size 2048 \
        --lr 1e-3 --l2 1e-4 --patience 5 --no-progress "${flag[@]}"
    cp "/tmp/gpu-run-$mode/meta.json" "$out/train_$mode.json"
    python3 -c "import json, statistics, sys; m = json.load(open(sys.argv[1]))
s = [h['seconds'] for h in m['history']]
print(sys.argv[2], 'epoch seconds', s, 'median', statistics.median(s), 'best valid recall@20', m['best_valid']['recall@20'])" \
        "$out/train_$mode.json" "$mode"
done

python3 -m experiments.epoch_time --graph "$graph" --device cuda --threads 8 --repeats 5 \
    --warmup-batches 20 --full-run-epochs 10 --json "$out/epoch_time_ml-1m_cuda.json"
