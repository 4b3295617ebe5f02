"""Which devices this llama.cpp build can run on; each gets a Celery queue ``device.<name>``
(see ``ModelConfig.queue``)."""
import llama_cpp


def available_devices():
    devices = ["cpu"]
    if llama_cpp.llama_supports_gpu_offload():
        # One build offloads to the GPU backend it was compiled for; name it after that backend.
        info = llama_cpp.llama_print_system_info().decode(errors="ignore").upper()
        devices.append("metal" if "METAL" in info else "cuda")
    return devices

