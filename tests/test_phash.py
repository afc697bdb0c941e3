"""pipeline.stages.phash must give exactly imagehash.phash's bits: the release's phash column and dedup depend on it."""

import imagehash
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.stages.decode import decode_file
from pipeline.stages.phash import phash, reduce_grey
from tests.rawkit import crop, encode, save


def reference(img: Image.Image) -> int:
    return int(str(imagehash.phash(img)), 16)


def test_equal_to_imagehash_on_crops_noise_and_flat_images():
    rng = np.random.default_rng(5)
    images = [crop(i) for i in range(120)]
    images += [rng.integers(0, 256, (288, 288, 3), dtype=np.uint8) for _ in range(40)]
    images += [np.full((288, 288, 3), v, np.uint8) for v in (0, 1, 127, 254, 255)]
    ramp = np.linspace(0, 255, 288).astype(np.uint8)
    images += [np.dstack([np.tile(ramp, (288, 1))] * 3), np.dstack([np.tile(ramp[:, None], (1, 288))] * 3)]
    hashes = [phash(Image.fromarray(a)) for a in images]
    assert hashes == [reference(Image.fromarray(a)) for a in images]
    assert len(set(hashes[:120])) == 120  # the crops are distinct, so equality is not trivially all-zero


def test_equal_to_imagehash_for_other_modes_and_lossy_decodes():
    rgb = Image.fromarray(crop(7))
    jpeg = Image.open(__import__("io").BytesIO(encode(crop(8), "JPEG", quality=80)))
    for img in (rgb.convert("L"), rgb.convert("P"), rgb.convert("RGBA"), jpeg, rgb.transpose(Image.Transpose.ROTATE_90)):
        assert phash(img) == reference(img), img.mode


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(min_value=1, max_value=400),
    height=st.integers(min_value=1, max_value=400),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    smooth=st.booleans(),
)
def test_equal_to_imagehash_at_any_size(width, height, seed, smooth):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
    if smooth:  # smooth images put many DCT coefficients near the median, where rounding would show
        pixels = np.cumsum(pixels.astype(np.int64), axis=1) % 256
        pixels = pixels.astype(np.uint8)
    img = Image.fromarray(pixels)
    assert np.array_equal(reduce_grey(pixels), np.asarray(img.resize((32, 32), Image.Resampling.LANCZOS)))
    assert phash(img) == reference(img)


def test_decode_file_phash(tmp_path):
    pixels = crop(3)
    path = save(tmp_path / "a.tif", pixels)
    facts = decode_file(path, "a.tif", "myeloblast", (288, 288))
    assert facts.phash == reference(Image.fromarray(pixels))


@settings(max_examples=40, deadline=None)
@given(
    size=st.sampled_from([(288, 288), (192, 192), (96, 144), (290, 287)]),
    factor=st.sampled_from([2, 4]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_dedup_downscale_fast_path_equals_numpy_mean(size, factor, seed, dtype):
    from pipeline.stages.similarity import _down

    g = (np.random.default_rng(seed).random(size) * 255).astype(dtype)
    h, w = size
    reference = g[: h // factor * factor, : w // factor * factor].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    fast = _down(g, factor)
    assert fast.dtype == reference.dtype and np.array_equal(fast, reference)
