"""Pictures: reading, preprocessing presets, overlays, gradient images, grids and atomic saving."""
from __future__ import annotations

import os
import struct
import time
import tracemalloc
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from onnx_cnnviz import image as im
from onnx_cnnviz.errors import InputError

from tests.conftest import KITTEN


def random_rgb(h=32, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, rows: bytes | None = None) -> bytes:
    """An 8-bit RGB PNG built by hand; ``rows`` (filter byte + RGB per row) may be left out for a header-only bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------------------------
# read_image: arrays and PIL images


def test_uint8_rgb_array_is_returned_as_is_and_bgr_reverses():
    rgb = random_rgb()
    assert np.array_equal(im.read_image(rgb), rgb)
    bgr = im.read_image(rgb, mode="BGR")
    assert np.array_equal(bgr, rgb[:, :, ::-1])
    assert bgr.flags["C_CONTIGUOUS"]


def test_grayscale_arrays_are_repeated_over_channels():
    gray = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    for array in (gray, gray[:, :, None]):
        out = im.read_image(array)
        assert out.shape == (2, 2, 3) and out.dtype == np.uint8
        for c in range(3):
            assert np.array_equal(out[:, :, c], gray)


def test_alpha_is_dropped_by_default_and_composited_on_request():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, :, :3] = [[200, 100, 0], [10, 20, 30], [255, 0, 0]]
    rgba[0, :, 3] = [255, 0, 51]
    assert np.array_equal(im.read_image(rgba), rgba[:, :, :3])
    over_white = im.read_image(rgba, background=255)
    assert over_white[0, 0].tolist() == [200, 100, 0]  # opaque
    assert over_white[0, 1].tolist() == [255, 255, 255]  # transparent
    assert over_white[0, 2].tolist() == [255, 204, 204]  # 20 % red over white: 0.2 * 255 + 0.8 * 255, 0.8 * 255
    assert im.read_image(rgba, background=(0, 0, 0))[0, 2].tolist() == [51, 0, 0]


def test_16_bit_values_go_to_the_nearest_8_bit_level():
    values = np.array([[0, 128, 129, 257 * 100, 257 * 100 + 128, 257 * 100 + 129, 65535]], dtype=np.uint16)
    out = im.read_image(values)[:, :, 0]
    assert out.tolist() == [[0, 0, 1, 100, 100, 101, 255]]


def test_float_and_other_integer_arrays():
    f = np.array([[0.0, 0.5, 1.0, 1 / 255, 0.499 / 255]], dtype=np.float32)
    assert im.read_image(f)[:, :, 0].tolist() == [[0, 128, 255, 1, 0]]
    assert im.read_image(np.array([[3, 250]], dtype=np.int64))[:, :, 1].tolist() == [[3, 250]]
    assert im.read_image(np.array([[True, False]]))[:, :, 2].tolist() == [[255, 0]]
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        im.read_image(np.full((2, 2, 3), 255.0, dtype=np.float32))
    with pytest.raises(InputError, match="NaN"):
        im.read_image(np.full((2, 2), np.nan))
    with pytest.raises(InputError, match="uint16"):
        im.read_image(np.array([[0, 1000]], dtype=np.int32))


def test_bad_array_shapes_are_refused_with_a_hint():
    with pytest.raises(InputError, match="transpose"):
        im.read_image(np.zeros((3, 32, 32), dtype=np.uint8))
    with pytest.raises(InputError, match="must be"):
        im.read_image(np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="PIL.Image"):
        im.read_image(42)


def test_pil_images_of_several_modes():
    rgb = random_rgb(8, 6)
    assert np.array_equal(im.read_image(Image.fromarray(rgb)), rgb)
    gray = Image.fromarray(rgb[:, :, 0])
    assert np.array_equal(im.read_image(gray), np.repeat(rgb[:, :, :1], 3, axis=2))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert np.array_equal(im.read_image(Image.fromarray(rgba, "RGBA")), rgb)
    palette = Image.fromarray(rgb).quantize(colors=16)
    assert np.array_equal(im.read_image(palette), np.asarray(palette.convert("RGB")))
    sixteen = Image.fromarray(np.array([[0, 257 * 9, 65535]], dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert im.read_image(sixteen)[0, :, 0].tolist() == [0, 9, 255]
    as_i = sixteen.convert("I")
    assert im.read_image(as_i)[0, :, 0].tolist() == [0, 9, 255]


# ---------------------------------------------------------------------------------------------------------------------
# read_image: files


def test_16_bit_png_file_known_pixels(tmp_path):
    rgb16 = np.zeros((2, 2, 3), dtype=np.uint16)
    rgb16[0, 0] = [65535, 257 * 100, 0]
    rgb16[1, 1] = [128, 129, 257 * 7]
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), rgb16[:, :, ::-1])  # OpenCV writes BGR
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    out = im.read_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [255, 100, 0]
    assert out[1, 1].tolist() == [0, 1, 7]
    assert im.read_image(str(path), mode="BGR")[0, 0].tolist() == [0, 100, 255]


def test_gray_and_rgba_png_files(tmp_path):
    gray = np.array([[0, 17], [99, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = im.read_image(tmp_path / "gray.png")
    assert all(np.array_equal(out[:, :, c], gray) for c in range(3))

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    rgba[0, 0] = [250, 5, 6, 255]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = im.read_image(tmp_path / "rgba.png")
    assert out[0, 0].tolist() == [250, 5, 6] and out[1, 1].tolist() == [10, 20, 30]
    assert im.read_image(tmp_path / "rgba.png", background=255)[1, 1].tolist() == [255, 255, 255]
    assert im.read_image(tmp_path / "rgba.png", mode="BGR")[0, 0].tolist() == [6, 5, 250]


def test_kitten_file_matches_pil(tmp_path):
    expected = np.asarray(Image.open(KITTEN).convert("RGB"))
    assert np.array_equal(im.read_image(KITTEN), expected)


def test_non_ascii_path(tmp_path):
    rgb = random_rgb(5, 7)
    path = tmp_path / "kätzchen_猫" / "bild_ß.png"
    im.save_image(path, rgb)
    assert np.array_equal(im.read_image(path), rgb)
    assert np.array_equal(im.read_image(str(path)), rgb)


def test_hand_built_png_decodes(tmp_path):
    path = tmp_path / "hand.png"
    path.write_bytes(png_bytes(2, 1, b"\x00" + bytes([255, 0, 0, 1, 2, 3])))
    assert im.read_image(path).tolist() == [[[255, 0, 0], [1, 2, 3]]]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(tmp_path, orientation):
    rgb = random_rgb(4, 6, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "oriented.png"  # PNG eXIf chunk: lossless, so the comparison is exact
    Image.fromarray(rgb).save(path, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert np.array_equal(im.read_image(path), expected)
    assert np.array_equal(im.read_image(path, exif_orientation=False), rgb)


def test_exif_orientation_in_jpeg(tmp_path):
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[:20, :30] = [255, 0, 0]  # red top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display is 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    Image.fromarray(rgb).save(path, exif=exif.tobytes(), quality=95)
    out = im.read_image(path)
    assert out.shape == (60, 40, 3)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).astype(int)
    assert np.abs(out.astype(int) - expected).max() <= 3
    assert out[5, 35].tolist()[0] > 200 and out[5, 5].tolist()[0] < 50  # red now top-right
    assert im.read_image(path, exif_orientation=False).shape == (40, 60, 3)


def test_truncated_png_names_the_file(tmp_path):
    good = tmp_path / "good.png"
    im.save_image(good, random_rgb(64, 64))
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 6, 20):
        bad = tmp_path / f"cut_{cut}.png"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError, match=f"cut_{cut}.png"):
            im.read_image(bad)


def test_truncated_jpeg_names_the_file(tmp_path):
    ok, encoded = cv2.imencode(".jpg", random_rgb(64, 64))
    data = encoded.tobytes()
    for cut in (len(data) // 2, len(data) - 2):
        bad = tmp_path / f"cut_{cut}.jpg"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError, match=f"cut_{cut}.jpg.*truncated"):
            im.read_image(bad)


def test_not_an_image_empty_missing_and_folder(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n" * 10)
    with pytest.raises(InputError, match="notes.png.*could not be decoded"):
        im.read_image(text)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.jpg is empty"):
        im.read_image(empty)
    with pytest.raises(InputError, match="missing.png does not exist"):
        im.read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="folder"):
        im.read_image(tmp_path)


def test_max_pixels_refuses_a_png_bomb_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(100_000, 100_000))
    assert bomb.stat().st_size < 200
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(InputError, match=r"bomb.png is 100000x100000 = 10,000,000,000 pixels.*max_pixels"):
            im.read_image(bomb)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 5_000_000  # decoding would need 30 GB


def test_max_pixels_on_real_files_and_arrays(tmp_path):
    ok, encoded = cv2.imencode(".jpg", random_rgb(30, 40))
    jpg = tmp_path / "small.jpg"
    jpg.write_bytes(encoded.tobytes())
    with pytest.raises(InputError, match="40x30 = 1,200 pixels"):
        im.read_image(jpg, max_pixels=1000)
    assert im.read_image(jpg, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(InputError, match="max_pixels"):
        im.read_image(np.zeros((10, 10), np.uint8), max_pixels=99)
    with pytest.raises(InputError, match="max_pixels"):
        im.read_image(Image.new("RGB", (10, 10)), max_pixels=99)


def test_only_regular_files_are_read_as_pictures(tmp_path):
    """Issue 15: a FIFO would block the reader and /dev/zero would fill the memory: both are refused before a byte
    is read."""
    import signal

    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    signal.alarm(20)  # a regression would hang on the FIFO: fail instead
    try:
        with pytest.raises(InputError, match=r"^Image file '.*pipe.png' is a FIFO \(named pipe\), not a regular file; "
                                             r"give the path of a file\.$"):
            im.read_image(pipe)
        with pytest.raises(InputError, match=r"^Image file '/dev/zero' is a character device, not a regular file"):
            im.read_image("/dev/zero")
        with pytest.raises(InputError, match="pipe.png' is a FIFO"):
            im.preprocess([pipe], "imagenet")
    finally:
        signal.alarm(0)
    link = tmp_path / "link.png"
    ok, encoded = cv2.imencode(".png", random_rgb(6, 5))
    (tmp_path / "real.png").write_bytes(encoded.tobytes())
    link.symlink_to(tmp_path / "real.png")  # a link to a regular file is read
    assert im.read_image(link).shape == (6, 5, 3)


def test_pixel_limit_sets_the_default_max_pixels_for_a_block(tmp_path):
    from onnx_cnnviz.image.reading import current_pixel_limit, pixel_limit

    path = tmp_path / "p.png"
    ok, encoded = cv2.imencode(".png", random_rgb(30, 40))
    path.write_bytes(encoded.tobytes())
    assert current_pixel_limit() == im.MAX_PIXELS
    with pixel_limit(1000):
        assert current_pixel_limit() == 1000
        with pytest.raises(InputError, match="40x30 = 1,200 pixels, more than max_pixels=1,000"):
            im.read_image(path)
        with pytest.raises(InputError, match="max_pixels=1,000"):  # the reads inside the library follow it
            im.preprocess([path], "imagenet")
        with pytest.raises(InputError, match="max_pixels=1,000"):
            im.read_image(random_rgb(30, 40))
        assert im.read_image(path, max_pixels=1200).shape == (30, 40, 3)  # an explicit argument wins
        with pixel_limit(None):  # blocks nest
            assert current_pixel_limit() is None and im.read_image(path).shape == (30, 40, 3)
        assert current_pixel_limit() == 1000
    assert current_pixel_limit() == im.MAX_PIXELS
    with pytest.raises(InputError, match="max_pixels must be a positive int or None"):
        with pixel_limit(0):
            pass
    with pytest.raises(InputError, match="max_pixels must be a positive int or None"):
        im.read_image(path, max_pixels=-5)
    assert current_pixel_limit() == im.MAX_PIXELS


def bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def test_max_pixels_from_headers_pil_reads(tmp_path):
    # Over PIL's own limit (PIL only says "too big") and between PIL's warning and error limits (exact size known).
    for width, height, message in ((20_000, 20_000, "more than"), (12_000, 10_000, "12000x10000")):
        path = tmp_path / f"big_{width}.bmp"
        path.write_bytes(bmp_header(width, height))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning may escape
            with pytest.raises(InputError, match=message):
                im.read_image(path)


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing


@pytest.mark.parametrize("preset", sorted(im.PRESETS))
def test_preprocess_deprocess_round_trip(preset):
    rgb = random_rgb(224, 224, seed=3)
    x = im.preprocess(rgb, preset)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    assert np.array_equal(im.deprocess(x[0], preset), rgb)
    assert np.array_equal(im.deprocess(x, preset)[0], rgb)


def test_round_trip_after_resize_gives_the_resized_image():
    rgb = random_rgb(100, 150, seed=4)
    x = im.preprocess(rgb, "imagenet")
    assert x.shape == (1, 3, 224, 224)
    resized = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(im.deprocess(x[0]), resized)
    assert im.preprocess(rgb, "none").shape == (1, 3, 100, 150)
    assert im.preprocess(rgb, "imagenet", size=(64, 32)).shape == (1, 3, 64, 32)


def test_imagenet_matches_torchvision_normalize():
    torchvision = pytest.importorskip("torchvision")
    rgb = random_rgb(224, 224, seed=5)
    t = torchvision.transforms.Compose([
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    expected = t(Image.fromarray(rgb)).numpy()
    np.testing.assert_allclose(im.preprocess(rgb, "imagenet")[0], expected, atol=1e-6)


def test_caffe_preset_on_the_kitten_matches_manual_cv2():
    assert np.asarray(Image.open(KITTEN)).shape == (224, 224, 4)
    bgr = cv2.imread(str(KITTEN), cv2.IMREAD_COLOR).astype(np.float32)
    expected = (bgr - np.array([103.939, 116.779, 123.68], dtype=np.float32)).transpose(2, 0, 1)
    x = im.preprocess(KITTEN, "caffe")
    assert x.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(x[0], expected, atol=1e-4)
    assert np.array_equal(im.deprocess(x[0], "caffe"), cv2.imread(str(KITTEN))[:, :, ::-1])


def test_batches_and_overrides():
    a, b = random_rgb(20, 30, 1), random_rgb(20, 30, 2)
    x = im.preprocess([a, b], "none")
    assert x.shape == (2, 3, 20, 30)
    np.testing.assert_allclose(x[1, 2], b[:, :, 2] / 255.0, atol=1e-7)
    assert np.array_equal(im.preprocess(np.stack([a, b]), "none"), x)
    bgr = im.preprocess(a, "none", order="BGR")
    assert np.array_equal(bgr[0], x[0, ::-1])
    raw = im.preprocess(a, "imagenet", size=(20, 30), scale=1, mean=100, std=2)
    np.testing.assert_allclose(raw[0, 0], (a[:, :, 0] - 100.0) / 2.0, atol=1e-5)
    assert np.array_equal(im.deprocess(raw[0], "imagenet", scale=1, mean=100, std=2), a)
    spec = im.get_preprocessing("caffe", size=64)
    assert spec.size == (64, 64) and spec.order == "BGR" and spec.std is None
    assert im.preprocess(a, spec).shape == (1, 3, 64, 64)


def test_preprocess_errors():
    a = random_rgb(20, 30)
    with pytest.raises(InputError, match="different sizes"):
        im.preprocess([a, random_rgb(10, 10)], "none")
    with pytest.raises(InputError, match="Unknown preprocessing preset"):
        im.preprocess(a, "tensorflow")
    with pytest.raises(InputError, match="std must be positive"):
        im.preprocess(a, std=0)
    with pytest.raises(InputError, match="mean"):
        im.preprocess(a, mean=(1, 2))
    with pytest.raises(InputError, match="order"):
        im.preprocess(a, order="GRB")
    with pytest.raises(InputError, match="already model inputs"):
        im.preprocess(np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(InputError, match="No images"):
        im.preprocess([])
    with pytest.raises(InputError, match="deprocess"):
        im.deprocess(np.zeros((224, 224, 3), np.float32))


def test_metadata_round_trip_and_parsing():
    onnx = pytest.importorskip("onnx")
    for spec in im.PRESETS.values():
        meta = spec.to_metadata()
        assert all(k.startswith("cnnviz.preprocess.") and isinstance(v, str) for k, v in meta.items())
        assert im.Preprocessing.from_metadata(meta) == spec
        entries = [onnx.StringStringEntryProto(key=k, value=v) for k, v in meta.items()]
        assert im.Preprocessing.from_metadata(entries) == spec
    assert im.Preprocessing.from_metadata({"producer": "pytorch"}) is None
    spec = im.Preprocessing.from_metadata({"cnnviz.preprocess.preset": "caffe", "cnnviz.preprocess.size": "112",
                                           "other": "x"})
    assert spec == im.get_preprocessing("caffe", size=112)
    spec = im.Preprocessing.from_metadata({"cnnviz.preprocess.scale": "1/255", "cnnviz.preprocess.mean": "0.5",
                                           "cnnviz.preprocess.std": " 0.25, 0.5 ,1 "})
    assert spec == im.Preprocessing(size=None, mean=(0.5,) * 3, std=(0.25, 0.5, 1.0), order="RGB", scale=1 / 255)
    with pytest.raises(InputError, match="cnnviz.preprocess.meen"):
        im.Preprocessing.from_metadata({"cnnviz.preprocess.meen": "1"})
    with pytest.raises(InputError, match="cnnviz.preprocess.scale"):
        im.Preprocessing.from_metadata({"cnnviz.preprocess.scale": "one"})
    with pytest.raises(InputError, match="integers"):
        im.Preprocessing.from_metadata({"cnnviz.preprocess.size": "224.5"})


def test_tf_and_tflite_presets_are_their_formulas():
    """One set of presets for the library and the CLI: Keras "tf" is x / 127.5 - 1, TF-Lite's is (x - 127) / 128."""
    rgb = random_rgb(224, 224, seed=6)
    pixels = rgb.astype(np.float64).transpose(2, 0, 1)
    np.testing.assert_allclose(im.preprocess(rgb, "tf")[0], pixels / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(im.preprocess(rgb, "tflite")[0], (pixels - 127) / 128, atol=1e-6)
    np.testing.assert_array_equal(im.preprocess(rgb, "raw")[0], pixels)
    assert im.preprocess(rgb, "TF").shape == (1, 3, 224, 224)


def test_crop_policy_matches_torchvision_resize_and_center_crop():
    """Shorter side 256 then the centre 224 x 224: the window torchvision's Resize(256) + CenterCrop(224) keeps.

    On a picture whose shorter side is already 256 nothing is resampled, so the pixels must be torchvision's
    exactly; on other sizes the resized size and the corner must be the ones torchvision computes."""
    torchvision = pytest.importorskip("torchvision")
    transforms = torchvision.transforms
    spec = im.get_preprocessing("imagenet", order="RGB")
    crop = im.Preprocessing(size=224, mean=spec.mean, std=spec.std, resize="crop")
    for h, w in ((256, 341), (400, 256), (256, 256)):
        rgb = random_rgb(h, w, seed=h + w)
        expected = np.asarray(transforms.CenterCrop(224)(transforms.Resize(256)(Image.fromarray(rgb))))
        assert np.array_equal(im.deprocess(im.preprocess(rgb, crop)[0], crop), expected)
    for h, w in ((375, 500), (500, 333), (180, 240), (1000, 1001)):
        resized = transforms.Resize(256)(Image.fromarray(random_rgb(h, w, seed=1)))
        (h1, w1), (top, left) = crop.resize_plan((h, w))
        assert (w1, h1) == resized.size
        assert (top, left) == (int(round((h1 - 224) / 2.0)), int(round((w1 - 224) / 2.0)))
    squash = im.get_preprocessing("imagenet")
    rgb = random_rgb(100, 150, seed=4)
    assert np.array_equal(im.deprocess(im.preprocess(rgb, squash)[0]),
                          cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_LINEAR))


def test_crop_of_a_non_square_input_and_fraction_one():
    """Any (H, W) and fraction: a fraction of 1 on a picture of the input's aspect ratio is a plain resize."""
    spec = im.Preprocessing(size=(64, 32), resize="crop", crop_fraction=1.0)
    rgb = random_rgb(128, 64, seed=2)
    assert spec.resize_plan(rgb.shape[:2]) == ((64, 32), (0, 0))
    assert im.preprocess(rgb, spec).shape == (1, 3, 64, 32)
    half = im.Preprocessing(size=(50, 50), resize="crop", crop_fraction=0.5)
    assert half.resize_plan((100, 300)) == ((100, 300), (25, 125))
    assert half.input_region((100, 300)) == (25.0, 125.0, 50.0, 50.0)
    assert im.Preprocessing(size=None, resize="crop").resize_plan((7, 9)) == ((7, 9), (0, 0))


def test_input_region_maps_the_model_input_back_onto_the_picture():
    """A marker at the picture point the region names is where the model input shows it, for both policies."""
    for spec in (im.Preprocessing(size=(112, 112), resize="crop"), im.Preprocessing(size=(112, 112))):
        picture = np.zeros((256, 384, 3), np.uint8)
        top, left, height, width = spec.input_region(picture.shape[:2])
        # the picture point seen at the centre of input pixel (30, 90)
        y, x = top + 30.5 * height / 112, left + 90.5 * width / 112
        picture[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 255
        seen = im.deprocess(im.preprocess(picture, spec)[0], spec)[..., 0].astype(float)
        peak = np.unravel_index(np.argmax(seen), seen.shape)
        assert abs(peak[0] - 30) <= 1 and abs(peak[1] - 90) <= 1, (spec.resize, peak)
    assert im.Preprocessing(size=(112, 112)).input_region((256, 384)) == (0.0, 0.0, 256.0, 384.0)


def test_resize_policy_in_metadata_and_description():
    spec = im.get_preprocessing("tflite")
    crop = im.Preprocessing(size=224, mean=127, std=128, scale=1, resize="crop")
    meta = crop.to_metadata()
    assert meta["cnnviz.preprocess.resize"] == "crop" and meta["cnnviz.preprocess.crop_fraction"] == "0.875"
    assert im.Preprocessing.from_metadata(meta) == crop
    # files written before the resize key existed keep squashing
    old = {k: v for k, v in spec.to_metadata().items() if "resize" not in k and "crop" not in k}
    assert im.Preprocessing.from_metadata(old).resize == "squash"
    assert im.Preprocessing.from_metadata({"cnnviz.preprocess.preset": "imagenet", "cnnviz.preprocess.resize": "Crop",
                                           "cnnviz.preprocess.crop_fraction": "224/256"}) == \
        im.Preprocessing(size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="crop")
    assert "shorter side 256 + centre crop 224x224" in crop.describe()
    assert "edges are cut off" in crop.describe()
    assert "(pixels - mean 127,127,127) / std 128,128,128" in crop.describe()
    assert "squashed to 224x224" in spec.describe()
    assert im.PRESETS["none"].describe() == "RGB, pixels / 255, at the picture's own size (no resize)"
    assert im.PRESETS["caffe"].describe().startswith("BGR, pixels - mean 103.939,116.779,123.68, squashed")
    with pytest.raises(InputError, match="resize must be one of squash, crop"):
        im.Preprocessing(resize="letterbox")
    with pytest.raises(InputError, match="crop_fraction"):
        im.Preprocessing(resize="crop", crop_fraction=0)
    with pytest.raises(InputError, match="crop_fraction"):
        im.Preprocessing.from_metadata({"cnnviz.preprocess.crop_fraction": "1.5"})
    with pytest.raises(InputError, match="resize must be"):
        im.Preprocessing.from_metadata({"cnnviz.preprocess.resize": ""})


# ---------------------------------------------------------------------------------------------------------------------
# Overlays, gradient and saliency images


def test_overlay_alpha_extremes_and_blend():
    rgb = random_rgb(40, 60, seed=6)
    heat = np.linspace(0, 1, 5 * 6, dtype=np.float32).reshape(5, 6)
    assert np.array_equal(im.overlay(rgb, heat, alpha=0.0), rgb)
    resized = cv2.resize(heat, (60, 40), interpolation=cv2.INTER_LINEAR)
    expected = cv2.applyColorMap(np.floor(np.clip(resized, 0, 1) * 255 + 0.5).astype(np.uint8),
                                 cv2.COLORMAP_JET)[:, :, ::-1]
    assert np.array_equal(im.overlay(rgb, heat, alpha=1.0), expected)
    half = im.overlay(rgb, heat, alpha=0.5).astype(int)
    assert np.abs(half - (rgb.astype(int) + expected.astype(int)) / 2).max() <= 0.5
    viridis = im.overlay(rgb, heat, alpha=1.0, colormap="viridis")
    assert np.array_equal(viridis, im.overlay(rgb, heat, alpha=1.0, colormap=cv2.COLORMAP_VIRIDIS))
    assert not np.array_equal(viridis, expected)


def test_colorize_known_colors():
    jet = im.colorize(np.array([[0.0, 1.0]]))
    assert jet[0, 0].tolist() == [0, 0, 128] and jet[0, 1].tolist() == [128, 0, 0]  # dark blue, dark red
    for name in ("jet", "viridis", "inferno", "magma", "turbo", "hot", "parula"):
        assert im.colorize(np.zeros((2, 2)), name).shape == (2, 2, 3)


def test_overlay_errors():
    rgb = random_rgb(8, 8)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        im.overlay(rgb, np.full((4, 4), 3.0))
    with pytest.raises(InputError, match="colormap"):
        im.overlay(rgb, np.zeros((4, 4)), colormap="rainbowz")
    with pytest.raises(InputError, match="alpha"):
        im.overlay(rgb, np.zeros((4, 4)), alpha=1.5)
    with pytest.raises(InputError, match="2-D"):
        im.overlay(rgb, np.zeros((3, 4, 4)))
    assert im.overlay(rgb, np.zeros((1, 4, 4))).shape == (8, 8, 3)


def test_gradient_image_std_convention():
    g = np.random.default_rng(7).normal(size=(3, 6, 5)).astype(np.float32)
    ref = g - g.mean()
    ref /= ref.std() + 1e-5
    ref = np.clip(ref * 0.1 + 0.5, 0, 1)
    expected = np.floor(ref.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    out = im.gradient_image(g)
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert np.array_equal(im.gradient_image(g, order="BGR"), out[:, :, ::-1])
    assert np.all(im.gradient_image(np.full((3, 2, 2), 4.0)) == 128)  # no contrast: mid-gray
    batch = im.gradient_image(np.stack([g, 10 * g]))
    assert batch.shape == (2, 6, 5, 3) and np.array_equal(batch[0], batch[1])  # scale-invariant


def test_gradient_image_minmax_and_gray():
    g = np.zeros((1, 2, 2), dtype=np.float32)
    g[0] = [[-2.0, 0.0], [1.0, 2.0]]
    out = im.gradient_image(g, mode="minmax")
    assert out.shape == (2, 2, 3)
    assert out[:, :, 0].tolist() == [[0, 128], [191, 255]]
    assert np.array_equal(out[:, :, 0], out[:, :, 2])
    with pytest.raises(InputError, match="mode"):
        im.gradient_image(g, mode="abs")
    with pytest.raises(InputError, match="C, H, W"):
        im.gradient_image(np.zeros((2, 4, 4)))


def test_saliency_image():
    m = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    out = im.saliency_image(m, normalize=False)
    assert out[:, :, 1].tolist() == [[0, 128], [255, 64]] and np.array_equal(out[:, :, 0], out[:, :, 2])
    assert np.array_equal(im.saliency_image(m * 3 + 1), out)  # min-max normalised
    assert np.all(im.saliency_image(np.full((3, 3), 5.0)) == 0)
    assert np.array_equal(im.saliency_image(m, colormap="hot"), im.colorize(m, "hot"))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        im.saliency_image(m * 2, normalize=False)


# ---------------------------------------------------------------------------------------------------------------------
# Grids


def solid(h, w, color):
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[:] = color
    return out


def test_grid_layout_pixel_positions():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    tiles = [solid(10, 20, c) for c in colors]
    out = im.grid(tiles, ncols=2, pad=2, bg=255)
    assert out.shape == (2 * 10 + 3 * 2, 2 * 20 + 3 * 2, 3)
    corners = [(2, 2), (2, 24), (14, 2)]  # (pad + r * (10 + pad), pad + c * (20 + pad))
    for (y, x), color in zip(corners, colors):
        assert np.all(out[y:y + 10, x:x + 20] == color)
    painted = np.zeros(out.shape[:2], bool)
    for y, x in corners:
        painted[y:y + 10, x:x + 20] = True
    assert np.all(out[~painted] == 255)  # padding and the empty fourth cell


def test_grid_defaults_mixed_sizes_and_background():
    out = im.grid([solid(4, 4, (9, 9, 9)), solid(6, 2, (7, 7, 7))], pad=1, bg=(0, 10, 20))
    assert out.shape == (1 * 6 + 2, 2 * 4 + 3, 3)  # one row (ncols = min(n, 8)), tile = (max h, max w)
    assert np.all(out[2:6, 1:5] == 9)  # 4x4 image centred vertically in the 6x4 tile
    assert np.all(out[1:7, 7:9] == 7)  # 6x2 image centred horizontally: x = 1 + 4 + 1 + 1
    assert out[0, 0].tolist() == [0, 10, 20] and out[1, 6].tolist() == [0, 10, 20]


def test_grid_tile_size_fits_keeping_aspect():
    out = im.grid([solid(20, 40, (200, 0, 0))], tile_size=10, pad=0, bg=0)
    assert out.shape == (10, 10, 3)
    assert np.all(out[2:7, :] == (200, 0, 0)) and np.all(out[:2] == 0) and np.all(out[7:] == 0)  # 5x10, dy = 2


def test_grid_labels_in_a_band_under_each_tile():
    tiles = [solid(30, 60, (255, 255, 255)), solid(30, 60, (255, 255, 255))]
    plain = im.grid(tiles, pad=2, bg=255)
    labelled = im.grid(tiles, pad=2, bg=255, labels=["tabby 0.94", None])
    band = labelled.shape[0] - plain.shape[0]
    assert 8 <= band <= 30 and labelled.shape[1] == plain.shape[1]
    assert np.all(labelled[2:32, 2:62] == 255)  # the tile itself is untouched
    assert (labelled[32:32 + band, 2:62] < 128).any()  # dark text on white under the first tile
    assert np.all(labelled[32:32 + band, 64:124] == 255)  # no label under the second
    long = im.grid([solid(10, 30, 0)], labels=["a very long label that cannot fit"], bg=0)
    assert (long[12:] > 128).any()  # white ink on a dark background, cut to fit without error
    with pytest.raises(InputError, match="labels"):
        im.grid(tiles, labels=["one"])


def test_grid_accepts_maps_and_paths():
    out = im.grid([KITTEN, np.zeros((224, 224), np.float32)], pad=0)
    assert out.shape == (224, 448, 3)
    assert np.array_equal(out[:, :224], im.read_image(KITTEN)) and np.all(out[:, 224:] == 0)


# ---------------------------------------------------------------------------------------------------------------------
# Saving


def test_save_image_creates_folders_and_round_trips(tmp_path):
    rgb = random_rgb(12, 9, seed=8)
    path = im.save_image(tmp_path / "a" / "b" / "out.png", rgb)
    assert path == tmp_path / "a" / "b" / "out.png"
    assert np.array_equal(im.read_image(path), rgb)
    assert np.array_equal(cv2.imread(str(path))[:, :, ::-1], rgb)  # stored as a normal RGB PNG
    assert os.listdir(path.parent) == ["out.png"]  # no temporary file left
    xs, ys = np.meshgrid(np.arange(64), np.arange(48))
    smooth = np.dstack([xs * 3, ys * 4, np.full_like(xs, 99)]).astype(np.uint8)
    jpg = im.save_image(tmp_path / "out.jpg", smooth, quality=95)
    assert np.abs(im.read_image(jpg).astype(int) - smooth.astype(int)).max() <= 4  # lossy, but RGB order kept
    assert np.array_equal(im.read_image(im.save_image(tmp_path / "f.png", rgb / 255.0)), rgb)


def test_save_image_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out.png"
    im.save_image(path, solid(4, 4, (1, 2, 3)))
    before = path.read_bytes()
    with pytest.raises(InputError, match="already exists.*overwrite=True"):
        im.save_image(path, solid(4, 4, (9, 9, 9)))
    assert path.read_bytes() == before
    im.save_image(path, solid(4, 4, (9, 9, 9)), overwrite=True)
    assert im.read_image(path)[0, 0].tolist() == [9, 9, 9]
    assert os.listdir(tmp_path) == ["out.png"]


def test_save_image_is_atomic_when_the_move_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    im.save_image(path, solid(4, 4, (1, 2, 3)))
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk gone"):
        im.save_image(path, solid(4, 4, (9, 9, 9)), overwrite=True)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.png"]


def test_save_image_race_is_caught_without_clobbering(tmp_path, monkeypatch):
    # Another writer creates the file between the early check and the final move: the hard link refuses.
    path = tmp_path / "out.png"
    real_link = os.link

    def link_after_someone_else(src, dst):
        path.write_bytes(b"theirs")
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_someone_else)
    with pytest.raises(InputError, match="already exists"):
        im.save_image(path, solid(4, 4, (9, 9, 9)))
    assert path.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["out.png"]


def test_save_image_errors(tmp_path):
    with pytest.raises(InputError, match="no suffix"):
        im.save_image(tmp_path / "noext", solid(2, 2, 0))
    with pytest.raises(InputError, match="cannot write"):
        im.save_image(tmp_path / "x.docx", solid(2, 2, 0))
    with pytest.raises(InputError, match="folder"):
        im.save_image(tmp_path, solid(2, 2, 0))
    assert os.listdir(tmp_path) == []
