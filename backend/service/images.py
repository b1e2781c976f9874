"""Fetch task images (Label Studio uploads, URLs, local files) and decode them safely.

Where an image comes from (in this order):

* ``data:image/...;base64,...`` URIs are decoded in place;
* Label Studio local-files URLs (``/data/local-files/?d=<path>``) and ``file://`` URLs are read
  from disk when ``LOCAL_FILES_DOCUMENT_ROOT`` is set and the file lies under it (symlinks are
  resolved first, so ``..`` and links cannot escape the root);
* other absolute paths under that root are read from disk too;
* every other path starting with ``/`` (``/data/upload/...``, ``/tasks/.../presign/...``,
  ``/storage-data/...``) is relative to Label Studio and fetched from ``LABEL_STUDIO_URL`` with
  its API key (see :mod:`backend.service.ls_auth`);
* cloud-storage URIs (``s3://``, ``gs://``, ``azure-blob://``: any ``scheme://`` that is not
  http(s), ``file`` or ``data``) are what Label Studio stores for a cloud storage connection; they
  are fetched through Label Studio's presign route on ``LABEL_STUDIO_URL``:
  ``/tasks/<task id>/presign/?fileuri=<base64url(uri)>`` when the task is known, else
  ``/projects/<project id>/presign/?fileuri=...`` (:func:`presign_path`). Label Studio answers with
  a redirect to a presigned URL (followed without the key, SSRF-checked like any URL) or proxies
  the bytes itself;
* ``http(s)://`` URLs are fetched as given; the API key is sent only to Label Studio's own origin.

Network guards: SSRF protection (:mod:`backend.service.ssrf`: every connection, redirect hops
included, goes to a checked, pinned address; at most ``MAX_REDIRECTS`` hops, each re-checked
here), Label Studio's own URLs only under its media prefixes (``/data/upload/``,
``/data/local-files/``, ``/storage-data/``, ``/tasks/<id>/presign/``, ``/projects/<id>/presign/``:
never its API, which the key could read), the key only to Label Studio's origin and only while a redirect chain stays there,
a byte limit (Content-Length and while streaming), a deadline for the whole download. URLs appear
in messages and logs without their query strings (presigned URLs carry signatures there).

Decoding guards: only PNG, JPEG, WebP, GIF (first frame), TIFF and BMP; a pixel limit checked
from the image header before decoding (plus PIL's own decompression-bomb check); decoding under a
process-wide semaphore (``IMAGE_DECODE_CONCURRENCY``) so that concurrent requests cannot multiply
the peak memory; EXIF orientation applied; 16-bit images reduced to 8 bits; RGB conversion; a
downscale to ``MODEL_MAX_PIXELS`` for the model. Masks come back to the original size with
:meth:`LoadedImage.mask_to_original`.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import re
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import requests
import urllib3
from PIL import Image, UnidentifiedImageError

from .ls_auth import LabelStudioAuth, LabelStudioAuthError
from .ssrf import (
    Resolver,
    SsrfBlockedUrlError,
    SsrfGuard,
    SsrfPolicy,
    SsrfSafeHTTPAdapter,
    origin_of,
    ssrf_safe_session,
)

logger = logging.getLogger(__name__)

LOCAL_FILES_PREFIX = "/data/local-files/"
CHUNK_BYTES = 64 * 1024
EXIF_ORIENTATION_TAG = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose)
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# The formats Label Studio images come in; every other PIL plugin (EPS, ICO, PSD, ...) stays shut.
DECODED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP")
# Paths of Label Studio's own that may be fetched (with the key): its media, never its API.
LABEL_STUDIO_MEDIA_PREFIXES = ("/data/upload/", LOCAL_FILES_PREFIX, "/storage-data/")
PRESIGN_PATH = re.compile(r"/(tasks|projects)/[0-9]+/presign/?")
# A URI Label Studio stores for a cloud storage connection (s3://, gs://, azure-blob://, ...):
# any scheme but the ones fetched directly.
CLOUD_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://[^\x00-\x1f\x7f]+")  # keys may hold spaces
DIRECT_SCHEMES = frozenset({"http", "https", "file", "data"})
MAX_REDIRECTS = 3
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class _QueryRedactingFilter(logging.Filter):
    """Drops query strings from urllib3's request log lines (``GET /img.png?X-Amz-Signature=...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "?" in a for a in record.args):
            record.args = tuple(
                a.split("?", 1)[0] + "?..." if isinstance(a, str) and "?" in a else a for a in record.args
            )
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_QueryRedactingFilter())


class ImageFetchError(ValueError):
    """The task's image could not be fetched or decoded (the message says why)."""


_decode_slots: dict[int, threading.BoundedSemaphore] = {}
_decode_slots_lock = threading.Lock()


def decode_slots(concurrency: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore that bounds how many images decode at once."""
    with _decode_slots_lock:
        slots = _decode_slots.get(concurrency)
        if slots is None:
            slots = _decode_slots[concurrency] = threading.BoundedSemaphore(concurrency)
        return slots


def media_path_problem(path: str) -> str | None:
    """Why a path on Label Studio's origin may not be fetched (``None``: a media path)."""
    decoded = urllib.parse.unquote(path)
    if "\\" in decoded or any(segment in (".", "..") for segment in decoded.split("/")):
        return "refused: not a Label Studio media path"
    if decoded.startswith(LABEL_STUDIO_MEDIA_PREFIXES) or PRESIGN_PATH.fullmatch(decoded):
        return None
    return (
        "refused: not a Label Studio media path (only /data/upload/, /data/local-files/, /storage-data/, "
        "/tasks/<id>/presign/ and /projects/<id>/presign/ are fetched from Label Studio)"
    )


def is_cloud_uri(reference: str) -> bool:
    """Whether ``reference`` is a cloud-storage URI (``s3://bucket/key``, ``gs://...``, ``azure-blob://...``)."""
    match = CLOUD_URI.fullmatch(reference.strip()) if isinstance(reference, str) else None
    return match is not None and match.group("scheme").lower() not in DIRECT_SCHEMES


def presign_path(uri: str, task_id: int | str | None = None, project_id: int | str | None = None) -> str:
    """Label Studio's presign route for a cloud URI: ``/tasks/<id>/presign/?fileuri=<base64url>``
    (``/projects/<id>/presign/...`` when only the project is known), as Label Studio builds it itself.

    Raises ``ImageFetchError`` when neither id is a number.
    """
    fileuri = base64.urlsafe_b64encode(uri.strip().encode("utf-8")).decode("ascii")
    query = urllib.parse.urlencode({"fileuri": fileuri})
    for kind, value in (("tasks", task_id), ("projects", project_id)):
        number = _positive_int(value)
        if number is not None:
            return f"/{kind}/{number}/presign/?{query}"
    raise ImageFetchError(
        f"{_short(uri)} is a cloud-storage URI: it is fetched through Label Studio's presign route, "
        "which needs the task's (or the project's) id"
    )


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = int(str(value).split(".")[0]) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number > 0 else None


@dataclass(frozen=True)
class ImageLimits:
    """Download and decode limits (``ServiceConfig`` fields of the same meaning)."""

    max_bytes: int = 50 * 1024 * 1024
    timeout_s: float = 30.0
    max_pixels: int = 40_000_000
    model_max_pixels: int = 1024 * 1024
    decode_concurrency: int = 2  # IMAGE_DECODE_CONCURRENCY: images decoded at once, process-wide

    def __post_init__(self) -> None:
        if (
            self.max_bytes < 1
            or self.max_pixels < 1
            or self.model_max_pixels < 1
            or self.timeout_s <= 0
            or self.decode_concurrency < 1
        ):
            raise ValueError(f"image limits must be positive, got {self}")


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for the methods.

    ``pixels``: ``(h, w, 3)`` uint8 RGB, EXIF orientation applied, downscaled so that
    ``h * w <= model_max_pixels``. ``original_width``/``original_height``: the size Label Studio
    shows (after EXIF orientation), which every result is expressed in.
    """

    pixels: np.ndarray
    original_width: int
    original_height: int
    source: str

    @property
    def model_size(self) -> tuple[int, int]:
        """``(width, height)`` of ``pixels``."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    @property
    def is_downscaled(self) -> bool:
        return self.model_size != (self.original_width, self.original_height)

    def mask_to_original(self, mask: np.ndarray) -> np.ndarray:
        """A ``(h, w)`` mask at model size -> ``(original_height, original_width)`` bool (nearest)."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
        if mask.shape == (self.original_height, self.original_width):
            return mask.astype(bool, copy=False)
        resized = cv2.resize(
            mask.astype(np.uint8),
            (self.original_width, self.original_height),
            interpolation=cv2.INTER_NEAREST,
        )
        return resized.astype(bool)


def model_size_for(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The ``(width, height)`` the model sees: unchanged, or scaled to at most ``max_pixels``."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    new_width = max(1, int(width * scale))
    new_height = max(1, int(height * scale))
    return new_width, new_height


def decode_image(data: bytes, limits: ImageLimits, source: str = "<bytes>") -> LoadedImage:
    """Decode image bytes into a :class:`LoadedImage`, enforcing ``limits``."""
    try:
        image = Image.open(io.BytesIO(data), formats=DECODED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageFetchError(f"{source}: refused as a decompression bomb ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error):
        raise ImageFetchError(f"{source}: not a readable image (supported: PNG, JPEG, WebP, GIF, TIFF, BMP)") from None

    with image:
        width, height = image.size  # from the header; nothing decoded yet
        if width < 1 or height < 1:
            raise ImageFetchError(f"{source}: image has an empty size {width}x{height}")
        if width * height > limits.max_pixels:
            raise ImageFetchError(
                f"{source}: image is {width}x{height} = {width * height} pixels, more than "
                f"IMAGE_MAX_PIXELS={limits.max_pixels}"
            )
        with decode_slots(limits.decode_concurrency):
            try:
                # PNG keeps EXIF after the pixel data: reading it may decode (and find truncation)
                orientation = _orientation(image)
                if orientation in TRANSPOSING_ORIENTATIONS:
                    original_width, original_height = height, width
                else:
                    original_width, original_height = width, height
                target = model_size_for(original_width, original_height, limits.model_max_pixels)
                if image.format in ("JPEG", "MPO") and target != (original_width, original_height):
                    # Decode a JPEG at 1/2, 1/4 or 1/8 scale when that is still >= the target size.
                    draft_size = target if orientation not in TRANSPOSING_ORIENTATIONS else target[::-1]
                    image.draft("RGB", draft_size)
                image.load()  # the first frame only: GIF/WebP/TIFF frames after it are never read
                rgb = _to_rgb(image)
                if orientation in ORIENTATION_TRANSPOSE:
                    rgb = rgb.transpose(ORIENTATION_TRANSPOSE[orientation])
                if rgb.size != target:
                    rgb = rgb.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
                pixels = np.array(rgb, dtype=np.uint8)  # writable (np.asarray of a PIL image is read-only)
            except Image.DecompressionBombError as error:
                raise ImageFetchError(f"{source}: refused as a decompression bomb ({error})") from None
            except MemoryError:
                raise ImageFetchError(f"{source}: not enough memory to decode a {width}x{height} image") from None
            except (OSError, ValueError, SyntaxError, EOFError, struct.error, TypeError, IndexError) as error:
                raise ImageFetchError(f"{source}: image data is corrupt or truncated ({error})") from None
    return LoadedImage(
        pixels=pixels,
        original_width=original_width,
        original_height=original_height,
        source=source,
    )


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or not a valid value."""
    value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, 8 bits a channel. 16-bit and 32-bit grey (``I;16``, ``I``, ``F``) keep their high bits
    (PIL's own conversion would clip every value above 255 to white)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image)
        if mode.startswith("I;16"):
            grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
        else:
            peak = float(values.max()) if values.size else 0.0
            if mode == "F" and peak <= 1.0:
                grey = np.clip(values * 255.0, 0, 255).astype(np.uint8)
            elif peak <= 255:
                grey = np.clip(values, 0, 255).astype(np.uint8)
            elif peak <= 65535:
                grey = (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
            else:
                grey = np.clip(values.astype(np.float32) * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageSource:
    """Everything needed to build an :class:`ImageFetcher`, in a picklable form.

    Handed to training hooks (which may run in the model process) so they can load the images of
    the annotated tasks: ``request.images.fetcher().load(task["data"]["image"])``.
    """

    limits: ImageLimits
    label_studio_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    local_files_root: Path | None = None
    ssrf: SsrfPolicy | None = None  # None: protection on, ``label_studio_url`` exempt
    project_id: int | None = None  # for cloud URIs of tasks whose id is not known

    def fetcher(self) -> "ImageFetcher":
        auth = LabelStudioAuth(self.label_studio_url, self.api_key) if self.label_studio_url and self.api_key else None
        return ImageFetcher(
            self.limits,
            label_studio_url=self.label_studio_url,
            auth=auth,
            local_files_root=self.local_files_root,
            ssrf=self.ssrf,
            project_id=self.project_id,
        )


class ImageFetcher:
    """Turns a task's image reference into bytes, then into a :class:`LoadedImage`.

    ``ssrf``: where downloads may connect; ``None`` means protection on with ``label_studio_url``
    exempt. ``resolver`` replaces the system resolver (tests). With the protection on, downloads
    go through a session whose every connection is checked and pinned: ``session`` if it was made
    by :func:`~backend.service.ssrf.ssrf_safe_session` for the same policy (and no ``resolver`` is
    given), else one of the fetcher's own. With it off, ``session`` (or a plain one) is used.
    ``project_id``: the Label Studio project whose tasks are loaded (cloud URIs of tasks whose id
    is not given go through the project's presign route).
    """

    def __init__(
        self,
        limits: ImageLimits,
        *,
        label_studio_url: str | None = None,
        auth: LabelStudioAuth | None = None,
        local_files_root: Path | None = None,
        session: requests.Session | None = None,
        ssrf: SsrfPolicy | None = None,
        resolver: Resolver | None = None,
        project_id: int | None = None,
    ) -> None:
        self.limits = limits
        self.project_id = project_id
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self.auth = auth
        self.local_files_root = Path(local_files_root).resolve() if local_files_root else None
        self.ssrf = ssrf if ssrf is not None else SsrfPolicy(trusted_origin=self.label_studio_url)
        if self.ssrf.enabled:
            if session is not None and resolver is None and _guarded_by(session, self.ssrf):
                self.guard: SsrfGuard | None = session.get_adapter("http://").guard
                self._session = session
            else:
                self.guard = SsrfGuard(self.ssrf, resolver)
                self._session = ssrf_safe_session(self.guard)
        else:
            self.guard = None
            self._session = session or requests.Session()

    # ---- public -------------------------------------------------------------------------

    def load(self, reference: str, task_id: int | None = None) -> LoadedImage:
        """Fetch and decode the image a task refers to (``task_id``: the task's, for cloud URIs)."""
        return decode_image(self.fetch_bytes(reference, task_id), self.limits, source=_short(reference))

    def fetch_bytes(self, reference: str, task_id: int | None = None) -> bytes:
        if not isinstance(reference, str) or not reference.strip():
            raise ImageFetchError(f"image reference must be a non-empty string, got {reference!r}")
        reference = reference.strip()
        if reference.startswith("data:"):
            return self._data_uri(reference)
        if is_cloud_uri(reference):
            if self.label_studio_url is None:
                raise ImageFetchError(
                    f"{_short(reference)} is a cloud-storage URI, presigned by Label Studio, but LABEL_STUDIO_URL "
                    "is not set (set it, and LABEL_STUDIO_API_KEY, so the backend can ask Label Studio)"
                )
            return self._download(self.label_studio_url + presign_path(reference, task_id, self.project_id))
        local = self._local_path(reference)
        if local is not None:
            return self._read_local(local, reference)
        if reference.startswith("/"):
            if self.label_studio_url is None:
                raise ImageFetchError(
                    f"{_short(reference)} is relative to Label Studio, but LABEL_STUDIO_URL is not set "
                    "(set it to the address this service can reach Label Studio at, e.g. http://localhost:8080)"
                )
            problem = media_path_problem(urllib.parse.urlsplit(reference).path)
            if problem is not None:
                raise ImageFetchError(f"{_short(reference)}: {problem}")
            return self._download(self.label_studio_url + reference)
        scheme = urllib.parse.urlsplit(reference).scheme.lower()
        if scheme in ("http", "https"):
            return self._download(reference)
        raise ImageFetchError(
            f"unsupported image reference {_short(reference)!r}: use an http(s) URL, a Label Studio path, "
            "a cloud-storage URI (s3://, gs://, azure-blob://), or a local file under LOCAL_FILES_DOCUMENT_ROOT"
        )

    # ---- sources ------------------------------------------------------------------------

    def _data_uri(self, reference: str) -> bytes:
        header, _, payload = reference.partition(",")
        if ";base64" not in header:
            raise ImageFetchError("data: URIs must be base64-encoded (data:image/png;base64,...)")
        if len(payload) * 3 // 4 > self.limits.max_bytes:
            raise ImageFetchError(f"data: URI is larger than IMAGE_MAX_BYTES={self.limits.max_bytes}")
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error as error:
            raise ImageFetchError(f"data: URI is not valid base64 ({error})") from None

    def _local_path(self, reference: str) -> Path | None:
        """The local file ``reference`` names, if it is allowed and exists; else ``None``."""
        if self.local_files_root is None:
            return None
        parsed = urllib.parse.urlsplit(reference)
        candidate: str | None = None
        if parsed.path.startswith(LOCAL_FILES_PREFIX) and (not parsed.netloc or self._is_label_studio_url(reference)):
            values = urllib.parse.parse_qs(parsed.query).get("d")
            candidate = values[0] if values else None
        elif parsed.scheme == "file":
            candidate = urllib.parse.unquote(parsed.path)
        elif not parsed.scheme and reference.startswith("/"):
            candidate = reference
        if not candidate:
            return None
        path = Path(candidate)
        if not path.is_absolute():
            path = self.local_files_root / path
        resolved = path.resolve()
        if not resolved.is_relative_to(self.local_files_root):
            if parsed.scheme == "file" or parsed.path.startswith(LOCAL_FILES_PREFIX):
                raise ImageFetchError(
                    f"{_short(reference)} lies outside LOCAL_FILES_DOCUMENT_ROOT={self.local_files_root}"
                )
            return None  # e.g. /data/upload/...: a Label Studio path, not ours
        return resolved if resolved.is_file() else None

    def _read_local(self, path: Path, reference: str) -> bytes:
        size = path.stat().st_size
        if size > self.limits.max_bytes:
            raise ImageFetchError(
                f"{_short(reference)} is {size} bytes, more than IMAGE_MAX_BYTES={self.limits.max_bytes}"
            )
        return path.read_bytes()

    def _is_label_studio_url(self, url: str) -> bool:
        """Whether ``url`` is on Label Studio's origin (scheme, host and port)."""
        if self.label_studio_url is None:
            return False
        ours = origin_of(self.label_studio_url)
        return ours is not None and origin_of(url) == ours

    def _is_label_studio_media(self, url: str) -> bool:
        """Whether ``url`` is one of Label Studio's media paths on its origin: the only URLs the key goes to."""
        if not self._is_label_studio_url(url):
            return False
        base = urllib.parse.urlsplit(self.label_studio_url).path.rstrip("/")
        path = urllib.parse.urlsplit(url).path or "/"
        if base and not path.startswith(base + "/"):
            return False
        return media_path_problem(path[len(base) :]) is None

    def _download(self, url: str) -> bytes:
        """GET ``url``, following at most ``MAX_REDIRECTS`` redirects, each hop checked anew.

        The key goes only to Label Studio's media paths on its origin, and only while the chain has
        not left that origin (a foreign URL redirecting to Label Studio must not borrow the key).
        """
        deadline = time.monotonic() + self.limits.timeout_s
        current = url
        chain_at_home = True
        for hop in range(MAX_REDIRECTS + 1):
            if urllib.parse.urlsplit(current).scheme.lower() not in ("http", "https"):
                raise ImageFetchError(f"{_short(current)}: refused: not an http(s) URL")
            chain_at_home = chain_at_home and self._is_label_studio_url(current)
            media = chain_at_home and self._is_label_studio_media(current)
            with_auth = media and self.auth is not None and self.auth.is_home(current)
            if media and self.auth is None and hop == 0:
                logger.warning("fetching %s without credentials: LABEL_STUDIO_API_KEY is not set", _short(current))
            response = self._get(current, with_auth, deadline)
            if response.status_code == 401 and with_auth and self.auth.invalidate():
                response.close()
                logger.info("401 from %s: refreshing the access token and retrying once", _short(current))
                response = self._get(current, with_auth, deadline)
            if response.status_code in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                response.close()
                if not location:
                    raise ImageFetchError(f"{_short(current)} answered HTTP {response.status_code} without a Location")
                if hop == MAX_REDIRECTS:
                    raise ImageFetchError(f"{_short(url)}: refused: more than {MAX_REDIRECTS} redirects")
                following = urllib.parse.urljoin(current, location)
                logger.info("redirect %d: %s -> %s", hop + 1, _short(current), _short(following))
                current = following
                continue
            with response:
                if response.status_code == 401 and with_auth:
                    raise ImageFetchError(self.auth.explain_401(_short(current)))
                if response.status_code != 200:
                    raise ImageFetchError(f"{_short(current)} answered HTTP {response.status_code}")
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.limits.max_bytes:
                    raise ImageFetchError(
                        f"{_short(current)} is {declared} bytes, more than IMAGE_MAX_BYTES={self.limits.max_bytes}"
                    )
                return self._read_body(response, current, deadline)
        raise AssertionError("unreachable")  # pragma: no cover

    def _get(self, url: str, with_auth: bool, deadline: float) -> requests.Response:
        headers = {}
        if with_auth:
            try:
                headers.update(self.auth.headers_for(url))
            except LabelStudioAuthError as error:
                raise ImageFetchError(str(error)) from None
        remaining = max(0.001, deadline - time.monotonic())
        try:
            return self._session.get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(min(remaining, 10.0), remaining),
            )
        except SsrfBlockedUrlError as error:
            raise ImageFetchError(f"{_short(url)}: {error}") from None
        except (requests.ConnectTimeout, requests.ConnectionError) as error:
            # No socket error text: "refused" vs "timed out" would tell a port scanner what is there.
            logger.debug("could not connect for %s: %r", _short(url), error)
            raise ImageFetchError(f"could not fetch {_short(url)}: no connection") from None
        except requests.Timeout:
            raise ImageFetchError(
                f"{_short(url)} did not answer within IMAGE_DOWNLOAD_TIMEOUT={self.limits.timeout_s} s"
            ) from None
        except requests.RequestException as error:
            raise ImageFetchError(f"could not fetch {_short(url)}: {type(error).__name__}") from None

    def _read_body(self, response: requests.Response, url: str, deadline: float) -> bytes:
        body = bytearray()
        try:
            while True:
                # read1 returns after one socket read, so a slow trickle still reaches the deadline check
                chunk = response.raw.read1(CHUNK_BYTES, decode_content=True)
                if not chunk:
                    break
                body += chunk
                if len(body) > self.limits.max_bytes:
                    raise ImageFetchError(f"{_short(url)} is larger than IMAGE_MAX_BYTES={self.limits.max_bytes}")
                if time.monotonic() > deadline:
                    raise ImageFetchError(
                        f"downloading {_short(url)} took longer than IMAGE_DOWNLOAD_TIMEOUT={self.limits.timeout_s} s"
                    )
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            raise ImageFetchError(f"download of {_short(url)} failed: {type(error).__name__}") from None
        return bytes(body)


def _guarded_by(session: requests.Session, policy: SsrfPolicy) -> bool:
    """Whether every http(s) connection of ``session`` goes through a guard applying ``policy``."""
    adapters = [session.get_adapter(prefix) for prefix in ("http://", "https://")]
    return all(isinstance(a, SsrfSafeHTTPAdapter) and a.guard.policy == policy for a in adapters)


def _short(reference: str, limit: int = 200) -> str:
    """``reference`` for messages and logs: data URIs abbreviated, URLs without their query string
    (presigned URLs carry signatures there) or user info; local-files paths keep ``?d=``."""
    if reference.startswith("data:"):
        return reference[:30] + "..."
    try:
        parts = urllib.parse.urlsplit(reference)
    except ValueError:
        parts = None
    if parts is not None:
        netloc = parts.netloc.rpartition("@")[2]
        query = parts.query
        if query and not parts.path.endswith(LOCAL_FILES_PREFIX.rstrip("/") + "/"):
            query = "..."
        reference = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return reference if len(reference) <= limit else reference[:limit] + "..."
