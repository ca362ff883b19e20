"""Generates the Python gRPC stubs of proto/ at run time (Debian's python3-grpc-tools) and
imports them, so the examples in this folder run as they are, with nothing checked in.

    import stubs
    completion_pb2, completion_pb2_grpc = stubs.load("specmoe/v1/completion.proto")
"""
import importlib
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOTS = [os.path.join(os.path.dirname(os.path.dirname(HERE)), "proto"), HERE]
_OUT = None


def load(proto):
    """Returns (messages module, service module) of `proto`, a path under proto/ or here."""
    global _OUT
    from grpc_tools import protoc  # python3-grpc-tools

    if _OUT is None:
        _OUT = tempfile.mkdtemp(prefix="specmoe_stubs_")
        sys.path.insert(0, _OUT)
    args = ["grpc_tools.protoc", *(f"-I{root}" for root in PROTO_ROOTS),
            f"--python_out={_OUT}", f"--grpc_python_out={_OUT}", proto]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto}")
    module = proto[: -len(".proto")].replace("/", ".")
    return importlib.import_module(module + "_pb2"), importlib.import_module(module + "_pb2_grpc")
