"""Model files that cannot be used are refused with a message that says why."""
import shutil

import numpy as np
import pytest

from inference.backends import BackendError
from inference.gguf_info import GGUFError, read_gguf_info
from inference.model_configs import ModelConfig
from plugins.llama_cpp.backend import LlamaCppBackend

pytestmark = pytest.mark.nodb


def load(path):
    LlamaCppBackend(ModelConfig(name="m", path=str(path))).load()


def test_bundled_model_header(default_model_path):
    info = read_gguf_info(default_model_path)
    assert info.architecture == "llama"
    assert "<|im_start|>" in info.chat_template
    assert info.context_length == 8192
    assert info.tensor_count > 0


def test_missing_file(tmp_path):
    with pytest.raises(BackendError, match="model file not found: .*nope.gguf"):
        load(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("these are not the weights you are looking for\n" * 10)
    with pytest.raises(BackendError, match="not a GGUF file .*magic"):
        load(path)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_in_the_tensor_data(tmp_path, default_model_path, keep):
    path = tmp_path / "cut.gguf"
    data = open(default_model_path, "rb").read()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BackendError, match=r"GGUF file is truncated \(\d+ bytes, the tensors need \d+\)"):
        load(path)


def test_truncated_in_the_header(tmp_path, default_model_path):
    path = tmp_path / "stub.gguf"
    with open(default_model_path, "rb") as fh:
        path.write_bytes(fh.read(4096))
    with pytest.raises(BackendError, match="GGUF file is truncated"):
        load(path)


def test_architecture_llama_cpp_cannot_load(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(path), "notarealarch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert read_gguf_info(str(path)).architecture == "notarealarch"
    with pytest.raises(BackendError, match="cannot load architecture 'notarealarch'"):
        load(path)


def test_good_copy_still_loads(tmp_path, default_model_path):
    path = tmp_path / "copy.gguf"
    shutil.copy(default_model_path, path)
    backend = LlamaCppBackend(ModelConfig(name="m", path=str(path), n_ctx=512))
    backend.load()
    assert backend.context_size == 512
    backend.close()


def test_reader_rejects_wrong_version(tmp_path):
    path = tmp_path / "v9.gguf"
    path.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(32))
    with pytest.raises(GGUFError, match="unsupported GGUF version 9"):
        read_gguf_info(str(path))
