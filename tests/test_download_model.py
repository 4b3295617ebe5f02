"""The download command, against a real HTTP server on this machine."""
import http.server
import shutil
import threading
from functools import partial

import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.nodb


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_downloads_checks_and_prints_configuration(http_root, default_model_path, tmp_path, capsys):
    root, base = http_root
    shutil.copy(default_model_path, root / "Tiny-Model.gguf")
    dest = tmp_path / "models"
    call_command("download_model", f"{base}/Tiny-Model.gguf", dest=str(dest), name="tiny")
    out = capsys.readouterr().out
    saved = dest / "Tiny-Model.gguf"
    assert saved.read_bytes() == (root / "Tiny-Model.gguf").read_bytes()
    assert '"tiny": {"path": "%s"' % saved.resolve() in out and "llama" in out
    with pytest.raises(CommandError, match="exists already"):
        call_command("download_model", f"{base}/Tiny-Model.gguf", dest=str(dest))


def test_a_file_that_is_not_gguf_is_refused_and_removed(http_root, tmp_path):
    root, base = http_root
    (root / "fake.gguf").write_text("<html>not found</html>")
    dest = tmp_path / "models"
    with pytest.raises(CommandError, match="not a usable GGUF model: .*not a GGUF file"):
        call_command("download_model", f"{base}/fake.gguf", dest=str(dest))
    assert list(dest.iterdir()) == []


def test_missing_url_and_bad_scheme(http_root, tmp_path):
    _, base = http_root
    with pytest.raises(CommandError, match="download failed: HTTP Error 404"):
        call_command("download_model", f"{base}/absent.gguf", dest=str(tmp_path))
    with pytest.raises(CommandError, match="only http"):
        call_command("download_model", "file:///etc/passwd.gguf", dest=str(tmp_path))
