#!/usr/bin/env python3
"""Checks that `treaty synth --kind numeric` (the data of W1 and W3) draws from the same
distribution as a reference generator of the same process written with numpy.

    python3 bench/check_numeric.py --treaty target/debug/treaty --reference GEN [--seeds 8]
    python3 bench/check_numeric.py --treaty ... --reference GEN --measure 40

GEN is the reference generator's script (its command line: `--agencies N --rows R --seed S
--out DIR --no-full --no-npy`); CI runs this check where it has one. Byte-identical files are out
of reach (numpy's PCG64 and ziggurat against Rust's ChaCha and Box-Muller), so both generators
write 16 agencies x 500 rows for each of several seeds, and the check compares what the
generative process fixes, averaged over the seeds:

- the files' shape: the header `f0..f63,seized`, 80 % of each agency's rows in its train split;
- the pooled positive rate (about 10 %), and the spread of the agencies' positive rates;
- the number of skewed, amount-like columns (skewness above 0.75; a quarter of the columns, and
  about 1.75 for exp(z / 2) against about 0 for a normal column) and their mean skewness;
- the columns' scales: log10 of each column's standard deviation, uniform over [-2, 4] give or
  take the column's own spread: a two-sample Kolmogorov-Smirnov test over every seed's columns;
- the non-IID shift: the root mean square over agencies and columns of an agency's column mean
  less the pooled mean, in pooled standard deviations;
- the task's difficulty: the ROC AUC on the pooled test splits of a logistic regression fitted
  (Newton's method) on the pooled train splits.

Tolerances come from the sampling spread measured with `--measure 40` (40 seeds per generator,
the sizes above): each scalar figure's per-seed standard deviation SD is in the table `SD` below,
and the means over S seeds may differ by at most 4 x SD x sqrt(2 / S) (a false alarm about once
in 16,000 checks); the KS test fails below p = 0.001. `--self-test` also breaks our data in
five ways (30 % positives, no skewed columns, IID agencies, one scale for every column, half the
labels shuffled) and fails unless the check catches each. Needs numpy only (the reference
script needs pandas too).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

D = 64
# 16 agencies: the intercept is calibrated on agencies 0..15, so their pooled rate is close to
# 10 % whatever the seed; 500 rows each.
AGENCIES = 16
ROWS = 500

# The per-seed standard deviation of each figure, measured with `--measure 40` (seeds 1000 to
# 1039, AGENCIES x ROWS), the larger of the two generators'. Measured means (ours / reference):
# positive rate 0.1041 / 0.1025, rate spread 0.0577 / 0.0570, 16 / 16 skewed columns of
# skewness 1.729 / 1.724, shift 0.3114 / 0.3115, AUC 0.9595 / 0.9604.
SD = {
    "positive_rate": 0.0048,
    "rate_spread": 0.0113,
    "skewed_count": 0.0,
    "skewness": 0.0343,
    "shift": 0.0069,
    "auc": 0.0112,
}
# The least tolerance of a figure whose spread is nil (the count of skewed columns is exact).
FLOOR = {"skewed_count": 0.5}
SIGMAS = 4.0
KS_P = 0.001


def read(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return header, data[:, :-1], data[:, -1]


def generate(kind, treaty, reference, seed, out):
    if kind == "ours":
        cmd = [treaty, "synth", "--kind", "numeric", "--agencies", str(AGENCIES),
               "--rows", str(ROWS), "--seed", str(seed), "--out", out]
    else:
        cmd = [sys.executable, reference, "--agencies", str(AGENCIES), "--rows", str(ROWS),
               "--seed", str(seed), "--out", out, "--no-full", "--no-npy"]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    agencies = []
    for k in range(AGENCIES):
        h1, xtr, ytr = read(os.path.join(out, f"agency_{k}_train.csv"))
        h2, xte, yte = read(os.path.join(out, f"agency_{k}_test.csv"))
        expected = [f"f{j}" for j in range(D)] + ["seized"]
        if h1 != expected or h2 != expected:
            raise SystemExit(f"{kind}: agency {k}'s header is not f0..f{D - 1},seized")
        if len(ytr) != round(0.8 * ROWS) or len(ytr) + len(yte) != ROWS:
            raise SystemExit(f"{kind}: agency {k} has {len(ytr)} + {len(yte)} rows")
        agencies.append((xtr, ytr, xte, yte))
    return agencies


def skewness(x):
    c = x - x.mean(axis=0)
    return (c ** 3).mean(axis=0) / (c ** 2).mean(axis=0) ** 1.5


def auc(scores, y):
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = y == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def logistic_auc(agencies):
    xtr = np.vstack([a[0] for a in agencies])
    ytr = np.concatenate([a[1] for a in agencies])
    xte = np.vstack([a[2] for a in agencies])
    yte = np.concatenate([a[3] for a in agencies])
    mean, sd = xtr.mean(axis=0), xtr.std(axis=0) + 1e-12
    a = np.hstack([np.ones((len(ytr), 1)), (xtr - mean) / sd])
    b = np.hstack([np.ones((len(yte), 1)), (xte - mean) / sd])
    w = np.zeros(a.shape[1])
    ridge = 1e-3 * np.eye(a.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-(a @ w)))
        step = np.linalg.solve((a.T * (p * (1 - p))) @ a + ridge, a.T @ (p - ytr) + ridge @ w)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return auc(b @ w, yte)


def figures(agencies):
    """The scalar figures of one seed's data, and its columns' log10 spreads."""
    xs = [np.vstack([a[0], a[2]]) for a in agencies]
    ys = [np.concatenate([a[1], a[3]]) for a in agencies]
    x, y = np.vstack(xs), np.concatenate(ys)
    rates = np.array([v.mean() for v in ys])
    skew = np.mean([skewness(v) for v in xs], axis=0)
    skewed = skew > 0.75
    mean, sd = x.mean(axis=0), x.std(axis=0)
    shifts = np.array([(v.mean(axis=0) - mean) / sd for v in xs])
    return {
        "positive_rate": y.mean(),
        "rate_spread": rates.std(ddof=1),
        "skewed_count": float(skewed.sum()),
        "skewness": skew[skewed].mean() if skewed.any() else 0.0,
        "shift": math.sqrt((shifts ** 2).mean()),
        "auc": logistic_auc(agencies),
    }, np.log10(sd)


def ks_two_sample(a, b):
    """The two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    d = np.abs(np.searchsorted(a, grid, side="right") / len(a)
               - np.searchsorted(b, grid, side="right") / len(b)).max()
    ne = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(p, 0.0), 1.0)


def compare(ours, ref, label, broken=False):
    """Compares per-seed figures; prints a line per figure; returns the names that differ.
    `broken`: the data is a deliberately broken variant, whose differences are expected."""
    words = ("same", "differs") if broken else ("ok", "FAIL")
    s = len(ours)
    failed = []
    for name in SD:
        a = np.mean([f[0][name] for f in ours])
        b = np.mean([f[0][name] for f in ref])
        tol = max(SIGMAS * SD[name] * math.sqrt(2 / s), FLOOR.get(name, 0.0))
        ok = abs(a - b) <= tol
        if not ok:
            failed.append(name)
        print(f"  {label:<22} {name:<14} ours {a:8.4f}  reference {b:8.4f}  "
              f"|diff| {abs(a - b):.4f} <= {tol:.4f}: {words[0] if ok else words[1]}")
    d, p = ks_two_sample(np.concatenate([f[1] for f in ours]), np.concatenate([f[1] for f in ref]))
    ok = p >= KS_P
    if not ok:
        failed.append("scales")
    print(f"  {label:<22} {'scales':<14} KS D = {d:.3f}, p = {p:.3g} >= {KS_P}: "
          f"{words[0] if ok else words[1]}")
    return failed


def mutants(agencies, rng):
    """Our data broken in five ways, each as a generator that got one thing wrong would."""
    def split_apply(f):
        # f maps (agency index, features of train + test, labels) to new ones.
        out = []
        for k, (xtr, ytr, xte, yte) in enumerate(agencies):
            x, y = f(k, np.vstack([xtr, xte]), np.concatenate([ytr, yte]))
            n = len(ytr)
            out.append((x[:n], y[:n], x[n:], y[n:]))
        return out

    def positives(k, x, y):
        y = y.copy()
        r = y.mean()
        flip = (y == 0) & (rng.random(len(y)) < (0.30 - r) / (1 - r))
        y[flip] = 1
        return x, y

    pooled = np.vstack([np.vstack([a[0], a[2]]) for a in agencies])
    mean, sd = pooled.mean(axis=0), pooled.std(axis=0)
    skewed = np.mean([skewness(np.vstack([a[0], a[2]])) for a in agencies], axis=0) > 0.75

    def unskewed(k, x, y):
        x = x.copy()
        for j in np.flatnonzero(skewed):
            normal = np.sort(rng.standard_normal(len(x)))
            x[np.argsort(x[:, j], kind="stable"), j] = mean[j] + sd[j] * normal
        return x, y

    def iid(k, x, y):
        return x - x.mean(axis=0) + mean, y

    def one_scale(k, x, y):
        return (x - mean) / sd, y

    def noisy(k, x, y):
        y = y.copy()
        half = rng.random(len(y)) < 0.5
        y[half] = rng.permutation(y[half])
        return x, y

    return {
        "30 % positives": split_apply(positives),
        "no skewed columns": split_apply(unskewed),
        "IID agencies": split_apply(iid),
        "one scale": split_apply(one_scale),
        "half labels shuffled": split_apply(noisy),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--treaty", required=True, help="the treaty binary")
    ap.add_argument("--reference", required=True, help="the reference generator's script")
    ap.add_argument("--seeds", type=int, default=8, help="seeds per generator")
    ap.add_argument("--self-test", action="store_true",
                    help="also check that five broken variants of our data fail")
    ap.add_argument("--measure", type=int, metavar="N",
                    help="print each figure's mean and sd over N seeds per generator, and stop")
    args = ap.parse_args()

    seeds = range(1000, 1000 + args.measure) if args.measure else range(1, args.seeds + 1)
    data = {"ours": [], "reference": []}
    with tempfile.TemporaryDirectory(prefix="check-numeric-") as tmp:
        for seed in seeds:
            for kind in data:
                out = os.path.join(tmp, f"{kind}-{seed}")
                data[kind].append(generate(kind, args.treaty, args.reference, seed, out))
    per_seed = {kind: [figures(a) for a in sets] for kind, sets in data.items()}

    if args.measure:
        for name in SD:
            line = [f"{name:<14}"]
            for kind, figs in per_seed.items():
                v = np.array([f[0][name] for f in figs])
                line.append(f"{kind} mean {v.mean():.4f} sd {v.std(ddof=1):.4f}")
            print("  ".join(line))
        return

    print(f"check_numeric: {len(seeds)} seeds x {AGENCIES} agencies x {ROWS} rows per generator")
    failed = compare(per_seed["ours"], per_seed["reference"], "treaty synth")
    problems = [f"treaty synth differs from the reference in {', '.join(failed)}"] if failed else []
    if args.self_test:
        print("check_numeric: deliberately broken variants of our data (each must differ somewhere):")
        rng = np.random.default_rng(7)
        broken = {}
        for agencies in data["ours"]:
            for name, variant in mutants(agencies, rng).items():
                broken.setdefault(name, []).append(figures(variant))
        for name, figs in broken.items():
            caught = compare(figs, per_seed["reference"], name, broken=True)
            if not caught:
                problems.append(f"the check does not catch a generator with {name}")
    if problems:
        for p in problems:
            print(f"check_numeric: {p}")
        print(f"check_numeric: 0 passed, {len(problems)} failed")
        raise SystemExit(1)
    checks = len(SD) + 1 + (5 if args.self_test else 0)
    print("check_numeric: treaty synth --kind numeric matches the reference generator"
          + (", and the check catches each broken variant" if args.self_test else ""))
    print(f"check_numeric: {checks} passed, 0 failed")


if __name__ == "__main__":
    main()
