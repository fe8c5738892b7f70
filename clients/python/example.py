#!/usr/bin/env python3
"""Treaty from Python: list a coordinator's jobs, follow one to its end, download its model.

What an agency's data team does with the operator API (proto/treaty/v1/operator.proto) over
mutual TLS, with the operator's certificate. Generate the stubs first (generate.sh), then:

    python example.py --address 127.0.0.1:7443 --ca pki/ca.crt \
        --cert pki/operator-op.crt --key pki/operator-op.key [--job job-000001] [--out model.json]

Without --job it follows the newest job. The model is written as JSON: its version and each
tensor's name, shape and values, decoded from the little-endian chunks the coordinator streams.
"""

import argparse
import json
import math
import pathlib
import struct
import sys

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "generated"))
from treaty.v1 import agency_pb2, jobs_pb2, operator_pb2, operator_pb2_grpc, tensor_pb2  # noqa: E402

# The largest message the client takes (the coordinator's own limit is 8 MiB).
MAX_MESSAGE = 8 << 20
# The largest model the client assembles, in bytes.
MAX_MODEL = 1 << 30


def connect(args):
    """A channel to the coordinator, authenticated by the operator's certificate."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(args.ca).read_bytes(),
        private_key=pathlib.Path(args.key).read_bytes(),
        certificate_chain=pathlib.Path(args.cert).read_bytes(),
    )
    options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
    return grpc.secure_channel(args.address, credentials, options=options)


def list_jobs(stub):
    """Every job, newest first, a page at a time."""
    jobs, token = [], ""
    while True:
        page = stub.ListJobs(operator_pb2.ListJobsRequest(page_token=token))
        jobs.extend(page.jobs)
        if not page.next_page_token:
            return jobs
        token = page.next_page_token


def follow(stub, job_id):
    """Prints the job's events until it ends; returns the job, whole."""
    for event in stub.WatchJob(operator_pb2.WatchJobRequest(job_id=job_id)):
        kind = operator_pb2.JobEventKind.Name(event.kind)
        if event.kind != operator_pb2.JOB_EVENT_KIND_RESULT_ACCEPTED:
            print(f"  [{kind}] {printable(event.message)}")
    return stub.GetJob(operator_pb2.GetJobRequest(job_id=job_id))


class BadDownload(Exception):
    """The coordinator sent a download that is not what the wire contract says."""


def download(stub, job_id):
    """The job's latest model: its header and each tensor's values. Every tensor's bytes must
    arrive whole, in order, without gaps or overlaps (tensor.proto)."""
    header, buffers, filled = None, [], []
    for part in stub.DownloadModel(agency_pb2.DownloadModelRequest(job_id=job_id)):
        if part.HasField("header"):
            if header is not None:
                raise BadDownload("a second header in the download")
            header = part.header
            sizes = [width(t) * math.prod(t.shape) for t in header.tensors]
            if sum(sizes) > MAX_MODEL:
                raise BadDownload(f"the model is {sum(sizes)} bytes, more than {MAX_MODEL}")
            buffers = [bytearray(n) for n in sizes]
            filled = [0] * len(sizes)
        elif header is None:
            raise BadDownload("a chunk before the header")
        else:
            chunk = part.chunk
            i = chunk.tensor_index
            if i >= len(buffers):
                raise BadDownload(f"a chunk of tensor {i}, which the header has not")
            if chunk.offset != filled[i]:
                raise BadDownload(
                    f"tensor {i}: a chunk at byte {chunk.offset} where byte {filled[i]} comes next"
                )
            end = chunk.offset + len(chunk.data)
            if end > len(buffers[i]):
                raise BadDownload(f"a chunk ending at byte {end} of a {len(buffers[i])}-byte tensor")
            buffers[i][chunk.offset:end] = chunk.data
            filled[i] = end
    if header is None:
        raise BadDownload("the download held no header")
    for i, (got, buffer) in enumerate(zip(filled, buffers)):
        if got != len(buffer):
            raise BadDownload(f"tensor {i}: {got} of its {len(buffer)} bytes arrived")
    tensors = []
    for spec, buffer in zip(header.tensors, buffers):
        code = "f" if spec.dtype == tensor_pb2.DTYPE_F32 else "d"
        count = math.prod(spec.shape)
        values = list(struct.unpack(f"<{count}{code}", bytes(buffer)))
        tensors.append({"name": spec.name, "shape": list(spec.shape), "values": values})
    return header, tensors


def width(spec):
    if spec.dtype == tensor_pb2.DTYPE_F32:
        return 4
    if spec.dtype == tensor_pb2.DTYPE_F64:
        return 8
    raise BadDownload(f"tensor {printable(spec.name)}: an unknown element type {spec.dtype}")


def printable(text):
    """Text from the coordinator with its control characters replaced, so that it cannot
    drive the terminal it is printed on."""
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the coordinator, host:port")
    parser.add_argument("--ca", required=True, help="the federation CA's certificate (PEM)")
    parser.add_argument("--cert", required=True, help="the operator's certificate (PEM)")
    parser.add_argument("--key", required=True, help="the operator's private key (PEM)")
    parser.add_argument("--job", help="the job to follow (default: the newest)")
    parser.add_argument("--out", default="model.json", help="where to write the model")
    args = parser.parse_args()

    with connect(args) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        jobs = list_jobs(stub)
        print(f"{len(jobs)} job(s):")
        for job in jobs:
            state = jobs_pb2.JobState.Name(job.state)
            print(f"  {printable(job.job_id)}\t{printable(job.federation)}\t{state}\t{job.rounds_completed} round(s)")
        if not jobs:
            return 0
        job_id = args.job or jobs[0].job_id
        print(f"following {job_id}:")
        job = follow(stub, job_id)
        state = jobs_pb2.JobState.Name(job.state)
        print(f"{printable(job_id)}: {state} after {job.rounds_completed} round(s): {printable(job.message)}")
        if job.state != jobs_pb2.JOB_STATE_SUCCEEDED or not job.latest_model_version:
            return 1
        header, tensors = download(stub, job_id)
        model = {"job_id": header.job_id, "model_version": header.model_version, "tensors": tensors}
        pathlib.Path(args.out).write_text(json.dumps(model, indent=1))
        print(f"model {header.model_version} written to {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {printable(error.details() or '')}", file=sys.stderr)
        sys.exit(1)
    except BadDownload as error:
        print(f"error: the coordinator's download is not what the wire contract says: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
