"""Image fetching against a local HTTP server, and decoding guards."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from backend.service.images import ImageFetcher, ImageFetchError, ImageLimits, decode_image, model_size_for
from backend.service.ls_auth import LabelStudioAuth
from backend.service.ssrf import SsrfPolicy

from .conftest import LEGACY_TOKEN, huge_png_header, make_pat, png_bytes, sample_image

LIMITS = ImageLimits(max_bytes=1_000_000, timeout_s=5.0, max_pixels=10_000_000, model_max_pixels=1_000_000)


def fetcher_for(server, api_key=None, limits=LIMITS, **kwargs):
    auth = LabelStudioAuth(server.url, api_key) if api_key else None
    return ImageFetcher(limits, label_studio_url=server.url, auth=auth, **kwargs)


def test_public_url_is_fetched_and_decoded(fake_ls):
    fake_ls.state.public["/img/a.png"] = png_bytes(sample_image(32, 24))
    loaded = fetcher_for(fake_ls).load(fake_ls.url + "/img/a.png")
    assert (loaded.original_width, loaded.original_height) == (32, 24)
    np.testing.assert_array_equal(loaded.pixels, sample_image(32, 24))
    assert not loaded.is_downscaled
    assert loaded.pixels.flags.writeable and loaded.pixels.flags.c_contiguous  # method code may write


def test_corrupt_file_is_a_clear_error(fake_ls):
    fake_ls.state.public["/img/bad.png"] = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
    with pytest.raises(ImageFetchError, match="not a readable image|corrupt"):
        fetcher_for(fake_ls).load(fake_ls.url + "/img/bad.png")
    truncated = png_bytes(sample_image(64, 64))[:-40]
    fake_ls.state.public["/img/truncated.png"] = truncated
    with pytest.raises(ImageFetchError, match="corrupt or truncated|not a readable"):
        fetcher_for(fake_ls).load(fake_ls.url + "/img/truncated.png")


def test_huge_dimensions_are_refused_from_the_header(fake_ls):
    fake_ls.state.public["/img/huge.png"] = huge_png_header(100_000, 100_000)
    with pytest.raises(ImageFetchError, match="decompression bomb"):  # beyond PIL's own limit
        fetcher_for(fake_ls).load(fake_ls.url + "/img/huge.png")
    fake_ls.state.public["/img/big.png"] = huge_png_header(5_000, 4_000)  # 20 Mpx: under PIL's limit
    limits = ImageLimits(max_pixels=10_000_000)
    with pytest.raises(ImageFetchError, match="5000x4000 = 20000000 pixels, more than IMAGE_MAX_PIXELS"):
        fetcher_for(fake_ls, limits=limits).load(fake_ls.url + "/img/big.png")


def test_pil_decompression_bomb_guard_still_applies():
    limits = ImageLimits(max_pixels=10**12)  # our limit off: PIL's own guard must still refuse
    with pytest.raises(ImageFetchError, match="decompression bomb"):
        decode_image(huge_png_header(100_000, 100_000), limits)


def test_slow_download_hits_the_deadline(fake_ls):
    fake_ls.state.public["/img/slow.png"] = png_bytes(sample_image(64, 64))
    fake_ls.state.slow_paths["/img/slow.png"] = 0.2  # 16 bytes every 0.2 s
    limits = ImageLimits(timeout_s=0.5)
    with pytest.raises(ImageFetchError, match="IMAGE_DOWNLOAD_TIMEOUT"):
        fetcher_for(fake_ls, limits=limits).load(fake_ls.url + "/img/slow.png")


def test_401_then_success_after_refreshing_the_pat(fake_ls):
    fake_ls.state.protected["/data/upload/1/a.png"] = png_bytes(sample_image())
    fake_ls.state.revoke_next_access = True  # the first access token is refused with 401
    loaded = fetcher_for(fake_ls, fake_ls.state.pat).load("/data/upload/1/a.png")
    assert loaded.original_width == 32
    assert fake_ls.state.refresh_calls == 2
    statuses = [auth for method, path, auth in fake_ls.state.requests if path == "/data/upload/1/a.png"]
    assert len(statuses) == 2 and statuses[0] != statuses[1]
    assert all(auth.startswith("Bearer ") for auth in statuses)


def test_pat_is_never_sent_as_a_bearer_token_itself(fake_ls):
    fake_ls.state.protected["/data/upload/1/a.png"] = png_bytes(sample_image())
    fetcher_for(fake_ls, fake_ls.state.pat).load("/data/upload/1/a.png")
    sent = {auth for _, _, auth in fake_ls.state.requests}
    assert f"Bearer {fake_ls.state.pat}" not in sent and f"Token {fake_ls.state.pat}" not in sent


def test_legacy_token_works_and_a_wrong_one_explains_itself(fake_ls):
    fake_ls.state.protected["/data/upload/1/a.png"] = png_bytes(sample_image())
    assert fetcher_for(fake_ls, LEGACY_TOKEN).load("/data/upload/1/a.png").original_height == 24
    with pytest.raises(ImageFetchError, match="legacy token"):
        fetcher_for(fake_ls, "f" * 40).load("/data/upload/1/a.png")


def test_missing_file_and_missing_label_studio_url(fake_ls):
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        fetcher_for(fake_ls).load(fake_ls.url + "/img/nothing.png")
    with pytest.raises(ImageFetchError, match="LABEL_STUDIO_URL is not set"):
        ImageFetcher(LIMITS).load("/data/upload/1/a.png")
    with pytest.raises(ImageFetchError, match="cloud-storage URI.*LABEL_STUDIO_URL is not set"):
        ImageFetcher(LIMITS).load("s3://bucket/a.png")  # presigned by Label Studio (tests/prelabel/test_cloud_uris.py)
    with pytest.raises(ImageFetchError, match="unsupported image reference"):
        ImageFetcher(LIMITS).load("bucket/a.png")


def test_byte_limit(fake_ls):
    fake_ls.state.public["/img/a.png"] = png_bytes(sample_image(64, 64))
    with pytest.raises(ImageFetchError, match="IMAGE_MAX_BYTES"):
        fetcher_for(fake_ls, limits=ImageLimits(max_bytes=100)).load(fake_ls.url + "/img/a.png")


def test_api_key_is_not_sent_to_other_origins(fake_ls):
    fake_ls.state.public["/img/a.png"] = png_bytes(sample_image())
    other_origin = fake_ls.url.replace("127.0.0.1", "localhost")  # Label Studio "lives" elsewhere
    fetcher = ImageFetcher(
        LIMITS,
        label_studio_url=other_origin,
        auth=LabelStudioAuth(other_origin, LEGACY_TOKEN),
        ssrf=SsrfPolicy(allowed_hosts=("127.0.0.1",), trusted_origin=other_origin),  # the image host is on loopback
    )
    fetcher.load(fake_ls.url + "/img/a.png")
    assert fake_ls.state.requests[-1][2] is None


def test_data_uri():
    payload = base64.b64encode(png_bytes(sample_image())).decode()
    loaded = ImageFetcher(LIMITS).load(f"data:image/png;base64,{payload}")
    np.testing.assert_array_equal(loaded.pixels, sample_image())
    with pytest.raises(ImageFetchError, match="base64"):
        ImageFetcher(LIMITS).load("data:image/png;base64,@@@")


def test_local_files_only_under_the_document_root(tmp_path):
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png_bytes(sample_image()))
    (tmp_path / "secret.png").write_bytes(png_bytes(sample_image()))
    fetcher = ImageFetcher(LIMITS, local_files_root=root)
    assert fetcher.load("/data/local-files/?d=sub/a.png").original_width == 32
    assert fetcher.load("/data/local-files/?d=sub%2Fa.png").original_width == 32
    assert fetcher.load(f"file://{root}/sub/a.png").original_width == 32
    assert fetcher.load(str(root / "sub" / "a.png")).original_width == 32
    with pytest.raises(ImageFetchError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
        fetcher.load("/data/local-files/?d=../secret.png")
    with pytest.raises(ImageFetchError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
        fetcher.load(f"file://{tmp_path}/secret.png")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ImageFetchError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
        fetcher.load("/data/local-files/?d=link.png")
    # without a document root, a local path is a Label Studio path
    with pytest.raises(ImageFetchError, match="LABEL_STUDIO_URL"):
        ImageFetcher(LIMITS).load(str(root / "sub" / "a.png"))


def test_exif_orientation_is_applied():
    stored = sample_image(40, 20)  # left red, right blue, 40 wide x 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = decode_image(png_bytes(stored, exif=exif.tobytes()), LIMITS)
    assert (loaded.original_width, loaded.original_height) == (20, 40)
    np.testing.assert_array_equal(loaded.pixels, np.rot90(stored, k=-1))  # np.rot90 k=-1: clockwise


def test_exif_orientation_with_jpeg_downscale():
    stored = np.zeros((300, 400, 3), np.uint8)
    stored[:150] = (255, 0, 0)  # top red, bottom green
    stored[150:] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CCW to display
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    loaded = decode_image(buffer.getvalue(), ImageLimits(model_max_pixels=5_000))
    assert (loaded.original_width, loaded.original_height) == (300, 400)
    width, height = loaded.model_size
    assert width * height <= 5_000 and abs(width / height - 0.75) < 0.05
    # CCW rotation puts the (red) top on the left
    left, right = loaded.pixels[:, : width // 4].mean(axis=(0, 1)), loaded.pixels[:, -width // 4 :].mean(axis=(0, 1))
    assert left[0] > 200 and left[1] < 60 and right[1] > 200 and right[0] < 60


def test_downscale_and_masks_back_to_original_size():
    assert model_size_for(32, 24, 10_000) == (32, 24)
    assert model_size_for(32, 24, 100) == (11, 8)  # sqrt(100 / 768) = 0.3608 -> 11.5, 8.7 floored
    loaded = decode_image(png_bytes(sample_image(32, 24)), ImageLimits(model_max_pixels=100))
    assert loaded.model_size == (11, 8) and loaded.is_downscaled
    mask = np.zeros((8, 11), bool)
    mask[:, :5] = True
    full = loaded.mask_to_original(mask)
    assert full.shape == (24, 32) and full.dtype == bool
    assert full[:, :14].all() and not full[:, 16:].any()


def test_rgba_and_grayscale_become_rgb():
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 255
    assert decode_image(png_bytes(rgba), LIMITS).pixels.shape == (5, 6, 3)
    assert decode_image(png_bytes(np.full((5, 6), 7, np.uint8)), LIMITS).pixels[0, 0].tolist() == [7, 7, 7]


def test_rejected_pat_during_download_is_reported(fake_ls):
    fake_ls.state.protected["/data/upload/1/a.png"] = png_bytes(sample_image())
    with pytest.raises(ImageFetchError, match="rejected the personal access token"):
        fetcher_for(fake_ls, make_pat("another")).load("/data/upload/1/a.png")
