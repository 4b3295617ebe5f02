"""Build (once) and locate llama.cpp's own llama-server, from the llama.cpp that our wheel vendors.

bench/peers.py runs it side by side with smolsite. It is compiled from the llama-cpp-python sdist's
vendor/llama.cpp with the same flags as our wheel (tools/llama_cpp_wheel.py: GGML_NATIVE, AMX off,
CMAKE_ARGS from the environment), and goes into the wheel's own folder, .wheelhouse/<key>/, under
the very same key (version, flags, platform, Python, CPU): a server and a wheel in one folder were
compiled alike for this CPU. Only the llama-server target is built, statically linked.

Usage: python tools/llama_server.py VERSION WHEELHOUSE  -> prints the server's path.
A second call finds it there and builds nothing.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_wheel import AMX_INSTRUCTIONS, cmake_args, cpu_flags, wheel_key  # noqa: E402

# Only what llama-server needs: no tests, examples, HTTPS, curl or shared libraries, and no web UI
# (LLAMA_USE_PREBUILT_UI would download one from Hugging Face at build time).
SERVER_ARGS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
               "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF",
               "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"]
NAME = "llama-server"


def server_path(version, wheelhouse, args=None):
    """Where the server for these flags lives: the wheel's folder (same key), file llama-server."""
    return Path(wheelhouse) / wheel_key(version, cmake_args() if args is None else args) / NAME


def amx_instructions_in(binary):
    if not shutil.which("objdump"):
        return None
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(binary)],
                         capture_output=True, text=True).stdout
    return sum(out.count(f"\t{ins}") + out.count(f" {ins} ") for ins in AMX_INSTRUCTIONS)


def fetch_source(version, tmp):
    """The llama-cpp-python sdist (PyPI), extracted; returns its vendor/llama.cpp."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={version}", "-d", str(tmp)], check=True)
    sdist = next(Path(tmp).glob(f"llama_cpp_python-{version}.tar.gz"))
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(prefix)]
        tf.extractall(tmp, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return Path(tmp) / prefix


def build(version, target, args):
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    interesting = [f for f in cpu_flags() if f.startswith(("avx", "amx", "f16c", "fma"))]
    print(f"Building llama-server from llama-cpp-python {version}'s llama.cpp (once; several minutes).\n"
          f"  CPU features: {' '.join(interesting) or 'unknown'}\n"
          f"  CMake flags:  {' '.join(args)}\n"
          f"  Server goes to {target}/", file=sys.stderr, flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        source = fetch_source(version, Path(tmp))
        build_dir = Path(tmp) / "build"
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), *SERVER_ARGS, *args],
                       check=True, stdout=sys.stderr)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", NAME, "-j", jobs],
                       check=True, stdout=sys.stderr)
        binary = next(p for p in build_dir.rglob(NAME) if p.is_file() and os.access(p, os.X_OK))
        amx = amx_instructions_in(binary)
        if amx:
            sys.exit(f"refusing the built llama-server: it still has {amx} AMX instructions")
        target.mkdir(parents=True, exist_ok=True)
        partial = target / f".{NAME}.partial"
        shutil.copy2(binary, partial)
        partial.replace(target / NAME)  # atomic: a half-copied server is never found
    print(f"Built {NAME} in {time.monotonic() - started:.0f} s.", file=sys.stderr, flush=True)
    return target / NAME


def main():
    version, wheelhouse = sys.argv[1], Path(sys.argv[2])
    args = cmake_args()
    path = server_path(version, wheelhouse, args)
    if not path.is_file():
        path = build(version, path.parent, args)
    sys.stdout.write(str(path.resolve()) + "\n")


if __name__ == "__main__":
    main()
