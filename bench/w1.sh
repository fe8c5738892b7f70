#!/usr/bin/env bash
# Workload W1 (shared/WORKLOADS.md): generate the data once, then run the federation end to end.
#   bash bench/w1.sh [DATA_DIR]
# Needs python3 with numpy and pandas for the data (installed here with pip if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-target/w1-data}"
shared="${TREATY_SHARED:-../shared}"
if [ ! -f "$data/agency_7_test.csv" ]; then
  python3 -c 'import numpy, pandas' 2>/dev/null || pip install --quiet numpy pandas
  mkdir -p "$data"
  python3 "$shared/bench/gen_numeric.py" --agencies 8 --rows 100000 --seed 42 --out "$data" --no-full --no-npy
fi
cargo build --release --quiet
for run in 1 2 3; do
  echo "== run $run"
  ./target/release/treaty bench w1 --data "$data"
done
