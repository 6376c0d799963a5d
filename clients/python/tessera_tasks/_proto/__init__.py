"""Generated protobuf and gRPC bindings of common/proto/tessera.proto.

Never edited by hand: regenerate with `python3 clients/python/tools/generate.py`.
"""
