#!/usr/bin/env bash
# All-reduce bandwidth between 2 ranks on this machine: qoq-dist (c10d Gloo from Rust)
# and torch.distributed (the same c10d from Python), alternating, same sizes and timing.
# Prints the JSON lines and a table with the ratio (qoq-dist time / torch time).
#   bash experiments/collectives-bandwidth/run.sh [ROUNDS]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
bash tools/setup.sh >/dev/null
python=$(bash tools/reference-env.sh)
torchrun="$(dirname "$python")/torchrun"
cargo build --release -q -p qoq-dist --example allreduce_bench
rounds=${1:-3}
sizes=1,4,16,64,256
out=$(mktemp)
for r in $(seq "$rounds"); do
    target/release/examples/allreduce_bench --nproc 2 --sizes-mb "$sizes" | tee -a "$out"
    OMP_NUM_THREADS=1 "$torchrun" --nproc-per-node 2 --master-port "$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" \
        experiments/collectives-bandwidth/allreduce_torch.py --sizes-mb "$sizes" 2>/dev/null | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"\n{'MB':>5} {'qoq-dist ms':>12} {'torch ms':>10} {'ratio':>6} {'qoq busbw GB/s':>15} {'torch busbw GB/s':>17}")
for mb in sorted({r["size_mb"] for r in rows}):
    q = [r for r in rows if r["size_mb"] == mb and r["impl"] == "qoq-dist"]
    t = [r for r in rows if r["size_mb"] == mb and r["impl"] == "torch.distributed"]
    qm, tm = statistics.median(r["time_ms"] for r in q), statistics.median(r["time_ms"] for r in t)
    qb, tb = statistics.median(r["busbw_gbps"] for r in q), statistics.median(r["busbw_gbps"] for r in t)
    print(f"{mb:>5} {qm:>12.2f} {tm:>10.2f} {qm / tm:>6.2f} {qb:>15.2f} {tb:>17.2f}")
PY
rm -f "$out"
