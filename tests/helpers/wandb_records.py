"""Reads a W&B offline run file (`offline-run-*/run-ID.wandb`): the records wandb would sync.

The file is a LevelDB-style log, as wandb writes it: a 7-byte header (':W&B', magic 0xBEE1,
version 0), then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32C, length, type:
1 a whole record, 2 its first chunk, 3 a middle one, 4 its last). A block's tail shorter than a
chunk header is zero padding. Each record is a `wandb_internal_pb2.Record`.
"""
import struct

BLOCK = 32 * 1024
HEADER = struct.Struct('<4sHB')
CHUNK = struct.Struct('<IHB')


def records(path: str) -> list:
  from wandb.proto import wandb_internal_pb2
  with open(path, 'rb') as f:
    data = f.read()
  ident, magic, version = HEADER.unpack_from(data)
  assert (ident, magic, version) == (b':W&B', 0xBEE1, 0), (ident, magic, version)
  found, pending, offset = [], b'', HEADER.size
  while offset + CHUNK.size <= len(data):
    left_in_block = BLOCK - offset % BLOCK
    if left_in_block < CHUNK.size:  # padding up to the next block
      offset += left_in_block
      continue
    _, length, kind = CHUNK.unpack_from(data, offset)
    if kind == 0:
      break
    body = data[offset + CHUNK.size:offset + CHUNK.size + length]
    offset += CHUNK.size + length
    pending = body if kind in (1, 2) else pending + body
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      found.append(record)
  return found
