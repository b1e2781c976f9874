"""SAM's official checkpoints are downloaded into WEIGHTS_DIR with their published SHA-256 checked
(against a local HTTP server serving a fake checkpoint: no network)."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backend.models.weights import CheckpointSource, MissingWeightsError, fetch_checkpoint, weights_dir

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of "weights"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests += 1
        body = PAYLOAD
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/interrupted.pth":
            self.wfile.write(body[: len(body) // 3])  # then the connection drops
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = 0
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def source(server, path: str, sha256: str) -> CheckpointSource:
    return CheckpointSource(f"http://127.0.0.1:{server.server_address[1]}{path}", sha256)


GOOD = hashlib.sha256(PAYLOAD).hexdigest()


def test_good_checksum_lands_atomically_and_is_not_fetched_again(server, tmp_path):
    path = fetch_checkpoint("sam.pth", tmp_path, source(server, "/sam.pth", GOOD), "SAM_CHECKPOINT", progress=False)
    assert path == tmp_path / "sam.pth" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sam.pth"]
    fetch_checkpoint("sam.pth", tmp_path, source(server, "/sam.pth", GOOD), "SAM_CHECKPOINT", progress=False)
    assert server.requests == 1


def test_bad_checksum_leaves_nothing_and_names_both_hashes(server, tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        fetch_checkpoint("sam.pth", tmp_path, source(server, "/sam.pth", "0" * 64), "SAM_CHECKPOINT", progress=False)
    assert GOOD in str(error.value) and "0" * 64 in str(error.value) and "SAM_CHECKPOINT" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_nothing(server, tmp_path):
    with pytest.raises(MissingWeightsError, match="download failed|SHA-256"):
        fetch_checkpoint(
            "sam.pth", tmp_path, source(server, "/interrupted.pth", GOOD), "SAM_CHECKPOINT", progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_weights_dir_defaults_under_model_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    assert weights_dir() == tmp_path / "weights"
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path / "w"))
    assert weights_dir() == tmp_path / "w"


def test_fetch_command_reports_what_is_missing_offline(monkeypatch, tmp_path, capsys):
    """Offline (HF_HUB_OFFLINE, as in every test) and without files: exit 2, each part named."""
    from backend.models.__main__ import main

    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path))
    for variable in ("CLIP_WEIGHTS", "DINO_WEIGHTS", "DINOV2_WEIGHTS", "SAM_CHECKPOINT"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["fetch", "--preset", "tiny"]) == 0  # random weights: nothing to fetch
    assert main(["fetch", "--preset", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "sam: " in err and "SAM_CHECKPOINT" in err and "clip: " in err
