#!/usr/bin/env bash
# Workload W1: 8 agencies x 100,000 rows, 64 features, 20 rounds of DP-SGD, end to end.
#   bash bench/w1.sh [DATA_DIR]
# The data is written once by `treaty synth --kind numeric` (deterministic for its seed). To
# compare with another framework on the very same files, pass the directory its harness wrote
# (`agency_K_train.csv`, `agency_K_test.csv`, features f0..f63, label `seized`).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-target/w1-data}"
cargo build --release --quiet
if [ ! -f "$data/agency_7_test.csv" ]; then
  ./target/release/treaty synth --kind numeric --agencies 8 --rows 100000 --seed 42 --out "$data"
fi
for run in 1 2 3; do
  echo "== run $run"
  ./target/release/treaty bench w1 --data "$data"
done
