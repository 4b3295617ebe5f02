"""Read a GGUF file's header without loading the model: validation and metadata in one pass.

Used before handing a file to llama.cpp (whose own errors are a bare "failed to load"), and by
the web process to learn a model's chat template and architecture without a worker.
"""
import mmap
import os
import struct
from dataclasses import dataclass, field

MAGIC = b"GGUF"

# ggml type id -> (elements per block, bytes per block), as in ggml's type traits.
GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8),
    28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}
_U64 = struct.Struct("<Q")
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
# Arrays longer than this are skipped, not decoded (tokenizer vocabularies).
_KEEP_ARRAY = 64


class GGUFError(ValueError):
    """A model file that cannot be used; the message says why, for people."""


@dataclass
class GGUFInfo:
    path: str
    version: int
    architecture: str
    metadata: dict = field(repr=False)
    tensor_count: int = 0
    file_size: int = 0

    @property
    def name(self):
        return self.metadata.get("general.name") or os.path.basename(self.path)

    @property
    def chat_template(self):
        return self.metadata.get("tokenizer.chat_template") or ""

    @property
    def context_length(self):
        return self.metadata.get(f"{self.architecture}.context_length")


class _Reader:
    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFError(f"{self.path}: GGUF file is truncated (header ends early at byte {self.pos})")
        value = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value[0] if len(value) == 1 else value

    def string(self):
        length = self.take("<Q")
        if self.pos + length > len(self.buf):
            raise GGUFError(f"{self.path}: GGUF file is truncated (string runs past the end of the file)")
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype, keep=True):
        if vtype in _SCALARS:
            return self.take("<" + _SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            item_type, count = self.take("<I"), self.take("<Q")
            if not keep or count > _KEEP_ARRAY:
                self._skip_array(item_type, count)
                return None
            return [self.value(item_type) for _ in range(count)]
        raise GGUFError(f"{self.path}: not a valid GGUF file (unknown metadata type {vtype})")

    def _skip_array(self, item_type, count):
        if item_type in _SCALARS:
            size = struct.calcsize("<" + _SCALARS[item_type]) * count
            if self.pos + size > len(self.buf):
                raise GGUFError(f"{self.path}: GGUF file is truncated (metadata array runs past the end)")
            self.pos += size
        elif item_type == 8:
            # A tokenizer's vocabulary is ~50k strings: step over their lengths without decoding them
            # (the first API request of a process reads the chat template after them).
            buf, pos, end = self.buf, self.pos, len(self.buf)
            for _ in range(count):
                if pos + 8 > end:
                    raise GGUFError(f"{self.path}: GGUF file is truncated (metadata array runs past the end)")
                pos += 8 + _U64.unpack_from(buf, pos)[0]
            if pos > end:
                raise GGUFError(f"{self.path}: GGUF file is truncated (string runs past the end of the file)")
            self.pos = pos
        else:
            for _ in range(count):
                self.value(item_type, keep=False)


def read_gguf_info(path):
    """Parse and validate ``path``; raise GGUFError with a plain reason when it is unusable."""
    if not path:
        raise GGUFError("no model file configured (set the model's \"path\")")
    if not os.path.exists(path):
        raise GGUFError(f"model file not found: {path}")
    if not os.path.isfile(path):
        raise GGUFError(f"model path is not a file: {path}")
    size = os.path.getsize(path)
    if size < 24:
        raise GGUFError(f"{path}: not a GGUF file (only {size} bytes)")
    with open(path, "rb") as fh:
        if fh.read(4) != MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            view = memoryview(buf)
            try:
                return _parse(view, path, size)
            finally:
                view.release()


def _parse(buf, path, size):
    reader = _Reader(buf, path)
    reader.pos = 4
    version = reader.take("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
    tensor_count, kv_count = reader.take("<Q"), reader.take("<Q")
    metadata = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.value(reader.take("<I"))
    data_end = 0
    known = True
    for _ in range(tensor_count):
        reader.string()
        n_dims = reader.take("<I")
        elements = 1
        for _ in range(n_dims):
            elements *= reader.take("<Q")
        ggml_type, offset = reader.take("<I"), reader.take("<Q")
        block = GGML_BLOCKS.get(ggml_type)
        if block is None:
            known = False
            continue
        data_end = max(data_end, offset + elements // block[0] * block[1])
    alignment = metadata.get("general.alignment", 32) or 32
    data_start = (reader.pos + alignment - 1) // alignment * alignment
    needed = data_start + data_end if known else data_start
    if size < needed:
        raise GGUFError(f"{path}: GGUF file is truncated ({size} bytes, the tensors need {needed})")
    architecture = metadata.get("general.architecture")
    if not architecture:
        raise GGUFError(f"{path}: GGUF file has no general.architecture")
    return GGUFInfo(path=path, version=version, architecture=architecture, metadata=metadata,
                    tensor_count=tensor_count, file_size=size)
