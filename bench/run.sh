#!/usr/bin/env bash
# Regenerates bench/README.md's figures from the benchmarks' JSON lines (bench/README.md,
# "Regenerating the figures"):
#   bash bench/run.sh            every workload that needs no downloaded data, 3 runs each, into
#                                bench/results/DATE-TIME.jsonl; then bench/README.md rendered
#   bash bench/run.sh --tabular  the tabular recipes on the three public data sets (downloaded
#                                once by bench/NAME/prepare.py), into bench/results/tabular-*.jsonl
#   bash bench/run.sh --quick    every workload once at a tiny size; renders
#                                target/bench-quick/README.md and leaves bench/README.md alone
# Arguments after the mode go to `treaty bench run` (e.g. `--only w2,w4`, `--repeats 5`).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
case "${1:-}" in
  --quick | --tabular) mode="${1#--}"; shift ;;
esac
cargo build --release --quiet
treaty=target/release/treaty
stamp=$(date -u +%Y-%m-%d-%H%M)
case "$mode" in
  quick)
    out=target/bench-quick
    rm -rf "$out"
    mkdir -p "$out"
    "$treaty" bench run --smoke --repeats 1 --results "$out/results.jsonl" "$@"
    "$treaty" bench report --out "$out/README.md" "$out/results.jsonl"
    echo "rendered into $out/README.md from $out/results.jsonl; bench/README.md is unchanged"
    ;;
  tabular)
    data=()
    for name in adult cces crashes; do
      dir=target/bench-data/$name
      if [ ! -f "$dir/schema.toml" ]; then
        mkdir -p "$dir"
        python3 "bench/$name/prepare.py" "$dir" target/bench-data/cache
      fi
      data+=(--tabular "$dir")
    done
    "$treaty" bench run --only tabular "${data[@]}" --results "bench/results/tabular-$stamp.jsonl" "$@"
    "$treaty" bench report bench/results/*.jsonl
    ;;
  full)
    "$treaty" bench run --w1-data target/w1-data --results "bench/results/$stamp.jsonl" "$@"
    "$treaty" bench report bench/results/*.jsonl
    ;;
esac
