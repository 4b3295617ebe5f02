"""The installed llama.cpp cannot crash on this CPU: it decodes from a thread that is not the
main one (the device worker's engine is such a thread; AMX kernels die there with SIGILL), and
its CPU library holds no AMX tile instructions (tools/llama_cpp_wheel.py builds it so)."""
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest

from inference.backends import BackendError
from inference.model_configs import ModelConfig
from plugins.llama_cpp.backend import LlamaCppBackend

pytestmark = pytest.mark.nodb

DECODE_IN_A_THREAD = r"""
import sys, threading
from llama_cpp import Llama
out = {}
def work():
    llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, verbose=False)
    r = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)
    out["text"] = r["choices"][0]["text"]
t = threading.Thread(target=work)
t.start()
t.join()
print("TEXT:" + out["text"])
"""


@pytest.mark.model
def test_decoding_from_a_non_main_thread_works_in_a_child_process(default_model_path):
    # A child process: a SIGILL would kill it, not the test run.
    proc = subprocess.run([sys.executable, "-c", DECODE_IN_A_THREAD, default_model_path],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the child died ({proc.returncode}): {proc.stderr[-2000:]}"
    text = proc.stdout.split("TEXT:", 1)[1]
    assert text.strip(), "no text decoded"


def cpu_libraries():
    lib = Path(llama_cpp.__file__).parent / "lib"
    return sorted(p for p in lib.glob("libggml*.so*") if p.is_file())


def test_the_installed_cpu_library_has_no_amx_instructions():
    if not shutil.which("objdump"):
        pytest.skip("objdump (binutils) is not installed, so the library cannot be disassembled")
    libraries = cpu_libraries()
    assert libraries, "llama-cpp-python ships no libggml libraries?"
    for lib in libraries:
        listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True,
                                 text=True, timeout=300).stdout
        assert len(listing) > 10000, f"objdump produced no disassembly of {lib}"
        for instruction in ("tileloadd", "tdpbssd", "tdpbf16ps", "ldtilecfg"):
            assert f"\t{instruction}" not in listing and f" {instruction} " not in listing, \
                f"{lib.name} contains the AMX instruction {instruction}"
    assert "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode(errors="replace")


def test_the_backend_refuses_to_load_on_a_build_with_amx_kernels(monkeypatch, default_model_path):
    # This machine's build has no AMX (above), so the report an AMX build gives is what is put in its
    # place: the line llama.cpp prints for it, added to this build's own.
    report = llama_cpp.llama_print_system_info()
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: report + b"AMX_INT8 = 1 | ")
    backend = LlamaCppBackend(ModelConfig(name="m", path=default_model_path))
    with pytest.raises(BackendError, match="compiled with AMX kernels.*`make install`"):
        backend.load()
    assert getattr(backend, "llm_model", None) is None  # refused before llama.cpp held the model
