"""Build (once) and locate the llama-cpp-python wheel this machine should run.

Why this exists: pip compiles llama-cpp-python with llama.cpp's GGML_NATIVE (-march=native). On
CPUs with AMX (Intel Sapphire Rapids class) that compiles AMX kernels which die with SIGILL when
they decode from any thread but the main one (llama.cpp PR 26954), and the device worker is such
a thread. We keep -march=native (AVX-512, VNNI, BF16 stay) and switch AMX off. pip's wheel cache
ignores CMAKE_ARGS, so a wheel built once with other flags would be reinstalled silently; we build
with --no-cache-dir into a project-local wheelhouse keyed by version, flags, CPU and Python, and
refuse a wheel whose CPU library still contains AMX tile instructions.

Usage: python tools/llama_cpp_wheel.py VERSION WHEELHOUSE  -> prints the wheel's path.
Extra CMake flags (e.g. -DGGML_CUDA=on) come from the CMAKE_ARGS environment variable.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
AMX_INSTRUCTIONS = ("tileloadd", "tdpbssd", "tdpbf16ps", "ldtilecfg")


def cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def cmake_args():
    args = []
    if platform.machine() in ("x86_64", "AMD64"):
        args += [f"-DCMAKE_C_FLAGS={AMX_OFF}", f"-DCMAKE_CXX_FLAGS={AMX_OFF}"]
    # We never use the multimodal library; skipping it saves about a minute of compiling.
    args.append("-DLLAVA_BUILD=OFF")
    return args + os.environ.get("CMAKE_ARGS", "").split()


def wheel_key(version, args):
    # -march=native: a wheel is only good for the CPU it was built on, so the CPU is in the key.
    material = "\n".join([version, " ".join(args), sysconfig.get_platform(), sys.version.split()[0],
                          platform.processor(), " ".join(cpu_flags())])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def amx_instructions_in(wheel):
    """Count AMX instructions in the wheel's CPU libraries (None when objdump is missing)."""
    if not shutil.which("objdump"):
        return None
    found = 0
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if "libggml-cpu" in name or ("libggml" in name and name.endswith(".so")):
                path = zf.extract(name, tmp)
                out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path],
                                     capture_output=True, text=True).stdout
                found += sum(out.count(f"\t{ins}") + out.count(f" {ins} ") for ins in AMX_INSTRUCTIONS)
    return found


def build(version, target, args):
    interesting = [f for f in cpu_flags() if f.startswith(("avx", "amx", "f16c", "fma"))]
    print(f"Building llama-cpp-python {version} for this CPU (once; about 4-5 minutes on 2 cores).\n"
          f"  CPU features: {' '.join(interesting) or 'unknown'}\n"
          f"  CMake flags:  {' '.join(args)}\n"
          f"  Wheel goes to {target}/ and is reused by every later install.", file=sys.stderr, flush=True)
    env = dict(os.environ, CMAKE_ARGS=" ".join(f"'{a}'" if " " in a else a for a in args),
               CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2)))
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-cache-dir", "--no-deps",
                        "--no-binary", "llama-cpp-python", "-w", tmp, f"llama-cpp-python=={version}"],
                       env=env, check=True)
        wheel = next(Path(tmp).glob("llama_cpp_python-*.whl"))
        amx = amx_instructions_in(wheel)
        if amx:
            sys.exit(f"refusing the built wheel: its CPU library still has {amx} AMX instructions")
        target.mkdir(parents=True, exist_ok=True)
        final = target / wheel.name
        shutil.move(str(wheel), final)
    print(f"Built {final.name} in {time.monotonic() - started:.0f} s.", file=sys.stderr, flush=True)
    return final


def main():
    version, wheelhouse = sys.argv[1], Path(sys.argv[2])
    args = cmake_args()
    target = wheelhouse / wheel_key(version, args)
    existing = sorted(target.glob(f"llama_cpp_python-{version}-*.whl")) if target.exists() else []
    wheel = existing[0] if existing else build(version, target, args)
    sys.stdout.write(str(wheel.resolve()) + "\n")


if __name__ == "__main__":
    main()
