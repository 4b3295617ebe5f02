"""tools/llama_server.py puts llama-server in the wheel's own folder of the wheelhouse: the same key
for the same flags (so a server and a wheel side by side were compiled alike for this CPU), another
key when CMAKE_ARGS changes. Nothing is built or downloaded here."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import llama_cpp_wheel  # noqa: E402
import llama_server  # noqa: E402

pytestmark = pytest.mark.nodb


def test_the_server_is_keyed_like_the_wheel(monkeypatch, tmp_path):
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    args = llama_cpp_wheel.cmake_args()
    assert llama_server.server_path("0.3.36", tmp_path) == \
        tmp_path / llama_cpp_wheel.wheel_key("0.3.36", args) / "llama-server"


def test_cmake_args_from_the_environment_move_both_to_another_key(monkeypatch, tmp_path):
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    plain = llama_server.server_path("0.3.36", tmp_path)
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_BLAS=ON")
    assert "-DGGML_BLAS=ON" in llama_cpp_wheel.cmake_args()
    other = llama_server.server_path("0.3.36", tmp_path)
    assert other != plain
    assert other.parent.name == llama_cpp_wheel.wheel_key("0.3.36", llama_cpp_wheel.cmake_args())
    assert llama_server.server_path("0.3.37", tmp_path) != plain

