"""Descriptors for tests: proto source compiled by protoc with source info into a private pool."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
# grpc_tools bundles google/protobuf/*.proto; the contracts bring taskgateway/v1/options.proto.
_INCLUDES = (str(resources.files("grpc_tools") / "_proto"), str(ROOT / "proto"))


def compile_proto(
    tmp_path: Path, source: str, name: str = "sample/v1/sample.proto"
) -> tuple[FileDescriptor, descriptor_pb2.FileDescriptorSet]:
    """The file's descriptor (in a pool of its own) and the descriptor set protoc made of it."""
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(source)
    out = tmp_path / "sample.binpb"
    includes = [f"-I{path}" for path in (tmp_path, *_INCLUDES)]
    status = protoc.main(
        [
            "protoc",
            *includes,
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            name,
        ]
    )
    assert status == 0, f"protoc failed on {name}"
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    # A private pool: the default one would refuse the same file name in the next test.
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_set.file:  # --include_imports lists dependencies first
        pool.Add(file)
    return pool.FindFileByName(name), descriptor_set
