"""Fixtures for the service tests: fake methods (no models), a local HTTP server that plays
image host and Label Studio (uploads behind a legacy token or a PAT, token refresh), and the
recorded Label Studio requests."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from backend.fmbseg.results import ClassMaskPrediction
from backend.fmbseg.settings import FMbSegSettings
from backend.interactive.results import ClickResult
from backend.interactive.settings import ClickSettings
from backend.service.config import ServiceConfig
from backend.zeroguide.results import Segment, ZeroGuidanceResult
from backend.zeroguide.settings import ZeroGuideSettings

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = FIXTURES / "label-studio-requests"
LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def load_recorded(name: str) -> dict:
    """One recorded Label Studio request: ``{"method", "path", "body", ...}``."""
    return json.loads((RECORDED / name).read_text())


# ---- fake method facades ------------------------------------------------------------------


def fake_segment(mask: np.ndarray, text: str, text_score: float, node_id: int) -> Segment:
    return Segment(mask, text, np.zeros(4, np.float32), text_score=text_score, merge_score=None, node_id=node_id)


class FakeSegmenter:
    """Zero-guidance stand-in: the left half (text score 0.9) and the right half (text score 0.4)."""

    def __init__(self, settings: ZeroGuideSettings) -> None:
        self.settings = settings
        self.calls = 0
        self.warmed_up = False

    def segment(self, image: np.ndarray) -> ZeroGuidanceResult:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.calls += 1
        height, width = image.shape[:2]
        left = np.zeros((height, width), bool)
        left[:, : width // 2] = True
        segments = [fake_segment(left, "a left half", 0.9, 1), fake_segment(~left, "a right half", 0.4, 2)]
        return ZeroGuidanceResult(segments, (height, width), self.settings, "fake", "tiny", random_weights=True)

    def warm_up(self) -> None:
        self.warmed_up = True


class FakeFMbSeg:
    """FMbSeg stand-in: class i gets the i-th horizontal band; prompts containing "unknown"
    are not returned (a class the model cannot handle)."""

    def __init__(
        self, settings: FMbSegSettings, checkpoint_path: Path | None, trained: list[str] | None = None
    ) -> None:
        self.settings = settings
        self.checkpoint_path = checkpoint_path
        self.trained = trained  # None (Stage 1) or the classes of an alignment checkpoint
        self.calls: list[tuple] = []

    def trained_classes(self) -> list[str] | None:
        return None if self.trained is None else list(self.trained)

    STAGE1_AGREEMENT = 0.5  # what the fake reports when asked for Stage 1's agreement

    def predict(
        self,
        image: np.ndarray,
        classes: list[str],
        refine: bool | None = None,
        open_vocabulary: bool = False,
        stage1_agreement: bool = False,
    ) -> ClassMaskPrediction:
        self.calls.append((tuple(classes), refine, open_vocabulary) + ((True,) if stage1_agreement else ()))
        height, width = image.shape[:2]
        handled = [c for c in classes if "unknown" not in c]
        label_map = np.full((height, width), -1, int)
        bands = np.array_split(np.arange(height), max(len(handled), 1))
        for index, rows in enumerate(bands[: len(handled)]):
            label_map[rows, :] = index
        agreement = self.STAGE1_AGREEMENT if stage1_agreement else None
        return ClassMaskPrediction(
            label_map, handled, "stage1", "fake", random_weights=True, stage1_agreement=agreement
        )


class FakeClicker:
    """Interactive stand-in: a square of side ``SIDE`` around each positive click, minus one around
    each negative click, or the box; the first class is the nearest (score 0.7). Records its calls."""

    SIDE = 8

    def __init__(self, settings: ZeroGuideSettings, click_settings: ClickSettings, describer: object) -> None:
        self.settings = settings
        self.click_settings = click_settings
        self.describer = describer
        self.calls: list[dict] = []

    def segment(self, image, points, labels, box, classes=(), task_key=None, class_template="a photo of a {}"):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.calls.append(
            dict(
                points=points,
                labels=labels,
                box=box,
                classes=list(classes),
                task_key=task_key,
                class_template=class_template,
                shape=image.shape[:2],
            )
        )
        height, width = image.shape[:2]
        mask = np.zeros((height, width), bool)
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            mask[y0:y1, x0:x1] = True
        half = self.SIDE // 2
        for (x, y), label in zip(points if points is not None else [], labels if labels is not None else []):
            x, y = int(x), int(y)
            mask[max(0, y - half) : y + half, max(0, x - half) : x + half] = bool(label)
        classes = list(classes)
        return ClickResult(mask, "a clicked thing", 0.3, 0.9, classes[0] if classes else None, 0.7 if classes else None)


class FakeMethods:
    """A ``MethodLibrary`` without models; ``release`` gates loading (for /health-while-loading)."""

    def __init__(
        self, block_loading: bool = False, fail_loading: bool = False, trained: list[str] | None = None
    ) -> None:
        self.trained = trained
        self.release = threading.Event()
        if not block_loading:
            self.release.set()
        self.fail_loading = fail_loading
        self.load_calls = 0
        self.segmenters: list[FakeSegmenter] = []
        self.predictors: list[FakeFMbSeg] = []
        self.clickers: list[FakeClicker] = []

    def load_models(self, preset: str, device: str | None) -> object:
        self.load_calls += 1
        self.release.wait(30)
        if self.fail_loading:
            raise FileNotFoundError("no weights for preset " + preset)
        return SimpleNamespace(preset=preset)

    def zero_guidance(self, models: object, settings: ZeroGuideSettings) -> FakeSegmenter:
        assert isinstance(settings, ZeroGuideSettings)
        self.segmenters.append(FakeSegmenter(settings))
        return self.segmenters[-1]

    def fmbseg(self, models: object, settings: FMbSegSettings, checkpoint: Path | None) -> FakeFMbSeg:
        assert isinstance(settings, FMbSegSettings)
        self.predictors.append(FakeFMbSeg(settings, checkpoint, self.trained))
        return self.predictors[-1]

    def click(
        self, models: object, settings: ZeroGuideSettings, click_settings: ClickSettings, describer: object
    ) -> FakeClicker:
        assert isinstance(settings, ZeroGuideSettings) and isinstance(click_settings, ClickSettings)
        self.clickers.append(FakeClicker(settings, click_settings, describer))
        return self.clickers[-1]


# ---- images ---------------------------------------------------------------------------------


def png_bytes(array: np.ndarray, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save_kwargs)
    return buffer.getvalue()


def sample_image(width: int = 32, height: int = 24) -> np.ndarray:
    """Left half red, right half blue."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2, 0] = 255
    image[:, width // 2 :, 2] = 255
    return image


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (the pixel data is a tiny bogus stream)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def make_jwt(claims: dict) -> str:
    def encode(part: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    return f"{encode({'alg': 'HS256', 'typ': 'JWT'})}.{encode(claims)}.c2lnbmF0dXJl"


def make_pat(jti: str = "pat-1") -> str:
    return make_jwt({"token_type": "refresh", "exp": int(time.time()) + 86400, "jti": jti, "user_id": 1})


# ---- a local Label Studio / image host ------------------------------------------------------


@dataclass
class FakeLabelStudioState:
    """Files and auth rules of :class:`FakeLabelStudio`; tests mutate it."""

    public: dict[str, bytes] = field(default_factory=dict)  # path -> body, no auth
    protected: dict[str, bytes] = field(default_factory=dict)  # path -> body, needs auth
    pat: str = field(default_factory=make_pat)
    valid_access: set[str] = field(default_factory=set)
    refresh_calls: int = 0
    revoke_next_access: bool = False  # issue an access token that is already invalid
    slow_paths: dict[str, float] = field(default_factory=dict)  # path -> seconds between chunks
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, auth


class _Handler(BaseHTTPRequestHandler):
    server: "FakeLabelStudio"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization") or ""
        state = self.server.state
        if header == f"Token {LEGACY_TOKEN}":
            return True
        return header.startswith("Bearer ") and header[len("Bearer ") :] in state.valid_access

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append(("GET", self.path, self.headers.get("Authorization")))
        if self.path in state.slow_paths:
            body = state.public[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for start in range(0, len(body), 16):
                    self.wfile.write(body[start : start + 16])
                    self.wfile.flush()
                    time.sleep(state.slow_paths[self.path])
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if self.path in state.public:
            self._send(200, state.public[self.path])
        elif self.path in state.protected:
            if self._authorized():
                self._send(200, state.protected[self.path])
            else:
                self._send(401, b'{"detail": "Authentication credentials were not provided."}', "application/json")
        else:
            self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        state.requests.append(("POST", self.path, self.headers.get("Authorization")))
        if self.path == "/api/token/refresh/":
            state.refresh_calls += 1
            if body.get("refresh") != state.pat:
                self._send(401, b'{"detail": "Token is invalid or expired"}', "application/json")
                return
            access = make_jwt({"token_type": "access", "exp": int(time.time()) + 300, "n": state.refresh_calls})
            if state.revoke_next_access:
                state.revoke_next_access = False
            else:
                state.valid_access.add(access)
            self._send(200, json.dumps({"access": access}).encode(), "application/json")
        else:
            self._send(404, b"not found", "text/plain")


class FakeLabelStudio(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = FakeLabelStudioState()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def fake_ls():
    server = FakeLabelStudio()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def config(tmp_path) -> ServiceConfig:
    # The fake image host is on loopback, which SSRF protection refuses unless allowed.
    return ServiceConfig(
        model_dir=tmp_path / "model_dir",
        model_load_wait_s=10.0,
        image_timeout_s=5.0,
        image_allowed_hosts=("127.0.0.1",),
    )


@pytest.fixture
def fake_methods() -> FakeMethods:
    return FakeMethods()
