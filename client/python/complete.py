#!/usr/bin/env python3
"""Calls specmoe without specmoe-cli: a streamed completion with Python grpcio (Debian's
python3-grpcio), stubs generated from proto/specmoe/v1/completion.proto at run time.

    python3 client/python/complete.py --server 127.0.0.1:50051 "And God said"
    python3 client/python/complete.py --max-tokens 32 --no-speculation "In the beginning"

Prints the text as it arrives, then usage and speculation statistics from the last chunk.
"""
import argparse
import os
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="specmoe streamed completion over gRPC")
    parser.add_argument("prompt")
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--no-speculation", action="store_true")
    parser.add_argument("--api-key-file", help="send 'authorization: Bearer <key>'")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    args = parser.parse_args()

    pb, pb_grpc = stubs.load("specmoe/v1/completion.proto")
    metadata = []
    if args.api_key_file:
        with open(args.api_key_file) as f:
            metadata.append(("authorization", "Bearer " + f.read().strip()))
    request = pb.CompleteRequest(
        prompt=args.prompt, max_tokens=args.max_tokens,
        sampling=pb.Sampling(temperature=args.temperature),
        speculation=pb.Speculation(disable=args.no_speculation))
    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.CompletionStub(channel)
        start = time.monotonic()
        first = None
        last = None
        try:
            for chunk in stub.CompleteStream(request, metadata=metadata, timeout=args.timeout):
                if first is None and chunk.token_ids:
                    first = time.monotonic() - start
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                last = chunk
        except grpc.RpcError as error:
            sys.exit(f"\nerror: {error.code().name}: {error.details()}")
        total = time.monotonic() - start
    print()
    usage, spec = last.usage, last.speculation
    print(f"[{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens; "
          f"finish {pb.FinishReason.Name(last.finish_reason)}; time to first token "
          f"{(first or total) * 1e3:.1f} ms, total {total * 1e3:.1f} ms; "
          f"{spec.mean_tokens_per_step:.2f} tokens per step over {spec.verify_steps} steps, "
          f"{spec.accepted_tokens}/{spec.drafted_tokens} drafted tokens accepted]",
          file=sys.stderr)


if __name__ == "__main__":
    main()
