#!/usr/bin/env bash
# Generates the Python stubs of Treaty's gRPC API from proto/treaty/v1/*.proto with
# grpcio-tools, into clients/python/generated/ (not committed: they are made from the protos
# they must match). Run it with the Python that has requirements.txt installed:
#   python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
#   PYTHON=.venv/bin/python ./generate.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
out="$here/generated"
rm -rf "$out"
mkdir -p "$out"
cd "$root/proto"
"$python" -m grpc_tools.protoc -I . --python_out="$out" --grpc_python_out="$out" treaty/v1/*.proto
echo "$out"
