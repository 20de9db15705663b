"""Protobuf code generated from the published .proto files (src/fleetd/proto/fleetd/v1).

Do not edit the ``*_pb2.py`` modules: ``python -m tests.support.protogen`` (``make proto``)
writes them, and tests/http/test_proto_codec.py fails when they are older than the .proto
files. They need the ``protobuf`` runtime (at least the version their header names) and are
imported only by fleetd.http.proto_codec, the binary codec, when a binary request arrives:
the server's start loads neither them nor the runtime.
"""
