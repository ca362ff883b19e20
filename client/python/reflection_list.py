#!/usr/bin/env python3
"""Lists and describes the services of a running specmoe-server through gRPC server
reflection, for machines without grpcurl (Debian has no grpcurl package):

    python3 client/python/reflection_list.py --server 127.0.0.1:50051

prints every service, its methods with request and response types (stream marked), and the
fields of each message the methods use. Needs python3-grpcio and python3-grpc-tools.
"""
import argparse
import os
import sys

import grpc
from google.protobuf import descriptor_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # noqa: E402

LABELS = {2: "required ", 3: "repeated "}  # proto3 singular fields: no label


def main():
    parser = argparse.ArgumentParser(description="list services through server reflection")
    parser.add_argument("--server", default="127.0.0.1:50051")
    args = parser.parse_args()
    pb, pb_grpc = stubs.load("reflection.proto")
    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.ServerReflectionStub(channel)

        def ask(**request):
            return next(stub.ServerReflectionInfo(iter([pb.ServerReflectionRequest(**request)]),
                                                  timeout=10))

        try:
            services = [s.name for s in ask(list_services="").list_services_response.service]
        except grpc.RpcError as error:
            sys.exit(f"error: {error.code().name}: {error.details()}")
        files = {}
        described = set()
        for name in sorted(services):
            reply = ask(file_containing_symbol=name)
            if reply.HasField("error_response"):
                continue  # a service the server registered without a descriptor
            described.add(name)
            for raw in reply.file_descriptor_response.file_descriptor_proto:
                proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files[proto.name] = proto
        messages = {}
        for proto in files.values():
            for message in proto.message_type:
                messages[f".{proto.package}.{message.name}"] = message
        for name in sorted(services):
            print(f"service {name}" + ("" if name in described else "  (no descriptor served)"))
            package, _, short = name.rpartition(".")
            for proto in files.values():
                for service in proto.service:
                    if proto.package != package or service.name != short:
                        continue
                    for method in service.method:
                        request = (("stream " if method.client_streaming else "") +
                                   method.input_type.lstrip("."))
                        response = (("stream " if method.server_streaming else "") +
                                    method.output_type.lstrip("."))
                        print(f"  rpc {method.name}({request}) returns ({response})")
                        for type_name in (method.input_type, method.output_type):
                            message = messages.get(type_name)
                            if message is None:
                                continue
                            print(f"    message {type_name.lstrip('.')}")
                            for field in message.field:
                                kind = (field.type_name.lstrip(".") or
                                        descriptor_pb2.FieldDescriptorProto.Type.Name(field.type)
                                        [len("TYPE_"):].lower())
                                print(f"      {LABELS.get(field.label, '')}{kind} {field.name} "
                                      f"= {field.number}")


if __name__ == "__main__":
    main()
