"""The llama.cpp backend plugin (llama-cpp-python): runs GGUF models."""
from inference.plugin_api import hookimpl

from .backend import LlamaCppBackend


@hookimpl
def register_backends(register):
    register("llama_cpp", LlamaCppBackend)


@hookimpl
def choose_backend(model, backends):
    if "llama_cpp" in backends and model.path.lower().endswith(".gguf"):
        return "llama_cpp"
    return None
