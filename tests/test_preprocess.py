"""MNIST preprocessing of real image files: geometry of the output, formats, alpha, and clear errors."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter, features
from scipy import ndimage

from digitlab.data.preprocess import _drop_ruled_lines, from_array, load_image, prepare, to_mnist
from digitlab.errors import DigitlabError

SEVEN = [(40, 60), (160, 60), (90, 250)]  # a "7" on a 200x300 canvas


def canvas(ink=0, bg=255, size=(200, 300), mode="L"):
    im = Image.new(mode, size, bg)
    ImageDraw.Draw(im).line(SEVEN, fill=ink, width=18)
    return im


def encode(im, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def centre_of_mass(t):
    a = t.numpy()
    ys, xs = np.indices(a.shape)
    return (a * ys).sum() / a.sum(), (a * xs).sum() / a.sum()


def ink_box(t):
    rows, cols = np.flatnonzero(t.numpy().any(1)), np.flatnonzero(t.numpy().any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.fixture(scope="module")
def reference():
    return prepare(encode(canvas()))


def test_black_on_white_seven_becomes_mnist_like(reference):
    t = reference
    assert t.shape == (28, 28) and t.dtype == torch.float32
    assert 0 <= float(t.min()) and float(t.max()) == pytest.approx(1.0)
    border = torch.cat([t[0], t[-1], t[:, 0], t[:, -1], t[:3].flatten()])
    assert float(border.mean()) < 0.01  # background ~0, ink white
    h, w = ink_box(t)
    assert max(h, w) == 20 and min(h, w) <= 20
    cy, cx = centre_of_mass(t)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_white_on_black_gives_the_same_tensor(reference):
    t = prepare(encode(canvas(ink=255, bg=0)))
    torch.testing.assert_close(t, reference, atol=1e-5, rtol=0)


def test_gray_paper_and_colour_ink(reference):
    im = Image.new("RGB", (200, 300), (200, 190, 170))
    ImageDraw.Draw(im).line(SEVEN, fill=(20, 30, 120), width=18)
    assert (prepare(encode(im)) - reference).abs().max() < 0.05


@pytest.mark.parametrize("quality", [95, 75])
def test_jpeg_round_trip(reference, quality):
    t = prepare(encode(canvas().convert("RGB"), "JPEG", quality=quality))
    assert (t - reference).abs().mean() < 0.02
    cy, cx = centre_of_mass(t)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP", "TIFF"])
def test_other_formats(reference, fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    kw = {"lossless": True} if fmt == "WEBP" else {}
    torch.testing.assert_close(prepare(encode(canvas().convert("RGB"), fmt, **kw)), reference, atol=1e-5, rtol=0)


def test_path_and_bytes_agree(tmp_path, reference):
    path = tmp_path / "seven.png"
    canvas().save(path)
    torch.testing.assert_close(prepare(path), reference)
    torch.testing.assert_close(prepare(str(path)), reference)


def test_sixteen_bit_png(reference):
    a = np.asarray(canvas(), dtype=np.uint16) * 257  # 0..65535
    im = Image.fromarray(a)
    assert im.mode.startswith("I;16")
    torch.testing.assert_close(prepare(encode(im)), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ink_rgb, bg_rgb", [
    ((0, 0, 0), (0, 0, 0)),  # black strokes, transparent black canvas (typical <canvas> export)
    ((0, 0, 0), (255, 255, 255)),  # black strokes, transparent white canvas
    ((255, 255, 255), (0, 0, 0)),  # white strokes on transparent black: a black fill would erase them
])
def test_transparent_canvas_strokes(reference, ink_rgb, bg_rgb):
    im = Image.new("RGBA", (200, 300), bg_rgb + (0,))
    ImageDraw.Draw(im).line(SEVEN, fill=ink_rgb + (255,), width=18)
    torch.testing.assert_close(prepare(encode(im)), reference, atol=1e-5, rtol=0)


def test_opaque_paper_with_transparent_margin(reference):
    """A photo of white paper pasted on a transparent page: the paper's colour fills the margin."""
    im = Image.new("RGBA", (260, 360), (0, 0, 0, 0))
    im.paste(canvas().convert("RGBA"), (30, 30))
    assert (prepare(encode(im)) - reference).abs().max() < 0.05


def test_palette_with_transparency():
    im = canvas(ink=1, bg=0, mode="P")
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 white, 1 black
    t = prepare(encode(im, "PNG", transparency=0))
    cy, cx = centre_of_mass(t)
    assert max(ink_box(t)) == 20 and abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_exif_orientation_is_applied():
    im = canvas().convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    g = load_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert g.shape == (200, 300)  # (H, W) after rotation; stored as 300 high
    assert load_image(encode(im, "JPEG")).shape == (300, 200)


def test_load_image_range_and_dtype():
    g = load_image(encode(canvas()))
    assert g.dtype == np.float32 and g.shape == (300, 200)
    assert g.min() == 0 and g.max() == 1


def test_mnist_like_input_passes_through_unchanged(reference):
    # already dark background, centred, 20 px: a second pass must change nothing
    torch.testing.assert_close(to_mnist(reference.numpy()), reference, atol=1e-6, rtol=0)
    # an anti-aliased small digit with a faint rim keeps its rim and its place
    a = reference.numpy().copy()
    a[a > 0] = np.maximum(a[a > 0], 0.02)
    torch.testing.assert_close(to_mnist(a), torch.from_numpy(a), atol=1e-6, rtol=0)


def test_small_digit_is_enlarged_to_20():
    im = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(im).line([(12, 10), (12, 17)], fill=255, width=2)  # 8 px tall "1"
    t = to_mnist(np.asarray(im, dtype=np.float32) / 255)
    assert ink_box(t)[0] == 20


def test_off_centre_digit_is_recentred(reference):
    im = Image.new("L", (400, 400), 255)
    im.paste(canvas(), (190, 90))  # bottom-right region, touching nothing
    assert (prepare(encode(im)) - reference).abs().max() < 0.05


# --- errors ---------------------------------------------------------------------------------------

def png_header_only(width, height) -> bytes:
    """A PNG whose header claims width x height (1-bit) with a tiny IDAT: costs nothing to create."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_over_max_pixels_refused_before_decoding():
    with pytest.raises(DigitlabError, match="too large: 8000x8000"):
        load_image(png_header_only(8000, 8000))  # 64 M > 40 M default, under PIL's own limit


def test_decompression_bomb_refused():
    with pytest.raises(DigitlabError, match="too large") as e:
        load_image(png_header_only(20000, 20000), max_pixels=10**12)  # PIL's own bomb check fires
    assert e.value.fix


def test_pils_own_bomb_refusal_reads_like_ours():
    """Above Pillow's limit (about 179 Mpx) Image.open refuses before the size is known; the user
    saw Pillow's raw text there and digitlab's own message below it."""
    with pytest.raises(DigitlabError) as ours:
        load_image(png_header_only(8000, 8000))
    with pytest.raises(DigitlabError) as pils:
        load_image(png_header_only(20000, 20000))
    limit = 2 * Image.MAX_IMAGE_PIXELS
    assert str(pils.value) == str(ours.value).replace("8000x8000 = 64,000,000", f"over {limit:,}")
    assert "the limit is 40,000,000 (possible decompression bomb)" in str(pils.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns at open, we refuse
def test_real_one_bit_bomb_png():
    data = encode(Image.new("1", (12000, 12000)))  # 144 M pixels compress to a few hundred kB
    assert len(data) < 1_000_000
    with pytest.raises(DigitlabError, match="too large"):
        load_image(data)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is not an image at all" * 10, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image|could not decode"),
])
def test_bad_bytes(data, message):
    with pytest.raises(DigitlabError, match=message) as e:
        load_image(data)
    assert e.value.fix


def test_truncated_png():
    data = encode(canvas())
    with pytest.raises(DigitlabError, match="could not decode") as e:
        load_image(data[: len(data) // 2])
    assert "truncated" in e.value.fix


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DigitlabError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(DigitlabError, match="directory"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DigitlabError, match="empty"):
        load_image(tmp_path / "empty.png")


@pytest.mark.parametrize("bg", [0, 255, 128])
def test_blank_image(bg):
    with pytest.raises(DigitlabError, match="no digit found in image: it is blank") as e:
        prepare(encode(Image.new("L", (100, 100), bg)))
    assert e.value.fix


def test_barely_visible_speck_is_blank():
    im = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(im).line([(50, 20), (50, 80)], fill=250, width=5)  # 2% contrast
    with pytest.raises(DigitlabError, match="blank"):
        prepare(encode(im))


def test_to_mnist_rejects_bad_arrays():
    with pytest.raises(DigitlabError, match="2-D"):
        to_mnist(np.zeros((28, 28, 3)))
    with pytest.raises(DigitlabError, match="NaN"):
        to_mnist(np.full((28, 28), np.nan))


# --- from_array -----------------------------------------------------------------------------------

def test_from_array_scales_and_normalises(reference):
    a = reference.numpy()
    as_255 = np.round(a * 255).astype(np.uint8)
    torch.testing.assert_close(from_array(as_255.tolist()), reference, atol=2.5e-3, rtol=0)  # ints > 1
    torch.testing.assert_close(from_array(as_255), reference, atol=2.5e-3, rtol=0)  # uint8
    torch.testing.assert_close(from_array(a.tolist()), reference, atol=1e-6, rtol=0)  # floats in [0, 1]
    dark_on_light = from_array((255 - as_255).astype(np.float64))  # floats in [0, 255], inverted
    torch.testing.assert_close(dark_on_light, reference, atol=2.5e-3, rtol=0)


def test_from_array_centres_an_off_centre_drawing(reference):
    shifted = np.roll(reference.numpy(), (-3, 3), axis=(0, 1))  # stays inside: 4 px margins
    torch.testing.assert_close(from_array(shifted), reference, atol=1e-6, rtol=0)
    raw = from_array(shifted, normalize=False)
    assert raw.dtype == torch.float32 and np.array_equal(raw.numpy(), shifted)


@pytest.mark.parametrize("values, message", [
    (np.zeros((27, 28)), "28x28, got shape \\(27, 28\\)"),
    (np.zeros((1, 28, 28)), "28x28"),
    ([[0.0] * 28] * 27 + [[0.0] * 27], "28x28 grid of numbers"),  # ragged
    ([["a"] * 28] * 28, "grid of numbers"),
    (np.ones((28, 28)) * 1j, "grid of numbers"),
    (np.full((28, 28), np.nan), "NaN"),
    (np.full((28, 28), np.inf), "NaN or infinity"),
    (np.full((28, 28), -1.0), "\\[0, 1\\] or \\[0, 255\\]"),
    (np.full((28, 28), 300.0), "max 300"),
])
def test_from_array_errors(values, message):
    with pytest.raises(DigitlabError, match=message) as e:
        from_array(values)
    assert e.value.fix


def test_from_array_blank_canvas():
    with pytest.raises(DigitlabError, match="blank"):
        from_array(np.zeros((28, 28), dtype=np.uint8))


def test_uneven_lighting_is_not_taken_for_ink(reference):
    # a photo of the 7 on paper with a soft shadow in one corner, 40% darker at its deepest
    page = np.asarray(canvas(), dtype=np.float32) / 255
    ys, xs = np.indices(page.shape)
    shadow = 0.4 * np.exp(-((ys - 300) ** 2 + xs ** 2) / (2 * 70.0 ** 2))
    got = to_mnist(page * (1 - shadow))
    assert ink_box(got) == ink_box(reference)
    assert np.allclose(centre_of_mass(got), centre_of_mass(reference), atol=1.0)


def test_blotchy_haze_leaves_no_faint_strokes():
    # fog (docs/shift.md): a gradient plus blotches narrower than the background window. Before the
    # residue was cleared, faint blotches stayed beside the 7 and moved its box (fog's errors).
    im = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(im).line([(8, 5), (20, 5), (13, 23)], fill=255, width=3)
    clean = np.asarray(im, dtype=np.float32) / 255
    ys, xs = np.indices(clean.shape)
    blotches = sum(0.15 * np.exp(-((ys - r) ** 2 + (xs - c) ** 2) / (2 * 2.5 ** 2))
                   for r, c in [(4, 4), (15, 22), (24, 9)])
    got = to_mnist(np.clip(clean + 0.25 * xs / 27 + blotches, 0, 1)).numpy()
    want = to_mnist(clean).numpy()
    away = ~ndimage.binary_dilation(want > 0, iterations=2)
    assert float(got[away].max()) == 0.0
    assert ink_box(torch.from_numpy(got)) == ink_box(torch.from_numpy(want))


def _seven(frame=None, underline=None, detached_bar=False):
    im = Image.new("L", (200, 200), 255)
    draw = ImageDraw.Draw(im)
    draw.line([(70, 60 if detached_bar else 50), (95, 150)] if detached_bar else [(70, 50), (130, 50), (95, 150)],
              fill=0, width=9)
    if detached_bar:
        draw.line([(60, 45), (130, 45)], fill=0, width=9)
    if frame is not None:
        draw.rectangle(frame, outline=0, width=4)
    if underline is not None:
        draw.line(underline, fill=0, width=4)
    return to_mnist(np.asarray(im, dtype=np.float32) / 255)


@pytest.mark.parametrize("extra", [{"frame": (20, 20, 180, 180)}, {"frame": (40, 30, 160, 175)},
                                   {"underline": [(30, 172), (170, 172)]}, {"underline": [(60, 165), (140, 165)]}])
def test_a_forms_box_or_an_underline_apart_from_the_digit_is_dropped(extra):
    # a digit written in a form's cell, or above a line: before, the crop kept the box or the line and
    # the 7 came out small in a corner of the 28x28 field (read as "not a digit")
    plain = _seven()
    got = _seven(**extra)
    assert ink_box(got) == ink_box(plain)
    assert float((got - plain).abs().max()) < 0.05


@pytest.mark.parametrize("extra", [{"frame": (70, 50, 130, 150)},                  # the box touches the 7
                                   {"underline": [(60, 150), (140, 150)]}])         # the line touches the 7
def test_a_box_or_line_touching_the_digit_is_kept(extra):
    assert float(_seven(**extra).sum()) > 1.2 * float(_seven().sum())  # the line's ink is still there


def test_a_drawing_that_is_only_a_box_or_a_detached_bar_is_not_taken_for_a_frame():
    square = Image.new("L", (100, 100), 0)
    ImageDraw.Draw(square).rectangle((20, 20, 80, 80), outline=255, width=4)  # a square 0
    assert ink_box(to_mnist(np.asarray(square, dtype=np.float32) / 255)) == (20, 20)
    # a 7 whose bar is a separate stroke above a gap: a line above the digit is never dropped
    seven = _seven(detached_bar=True)
    assert ink_box(seven)[1] >= 12  # as wide as the bar (the stem alone is ~6 px wide)


def test_a_thin_one_in_a_large_box_is_read_without_the_box():
    im = Image.new("L", (300, 300), 255)
    draw = ImageDraw.Draw(im)
    draw.line([(150, 90), (150, 210)], fill=0, width=3)  # a fine-pen 1: 0.4% of the box's inside
    draw.rectangle((10, 10, 290, 290), outline=0, width=3)
    height, width = ink_box(to_mnist(np.asarray(im, dtype=np.float32) / 255))
    assert height == 20 and width <= 4  # the 1 alone, not a 20x20 box


def _on_ruled_paper(rows):
    im = Image.new("L", (300, 220), 250)
    draw = ImageDraw.Draw(im)
    for y in rows:
        draw.line([(0, y), (300, y)], fill=120, width=3)  # a notebook's pale ruled lines
    draw.line([(120, 50), (180, 50), (145, 150)], fill=10, width=9)
    return to_mnist(np.asarray(im, dtype=np.float32) / 255)


@pytest.mark.parametrize("rows", [[152], [110], [40, 160], [20, 152, 200]])  # touching, crossing, apart
def test_a_notebooks_ruled_lines_are_dropped(rows):
    # a photo of a 7 on lined paper: before, the crop kept the lines (edge to edge) and the 7 came out
    # as a few pixels between long bars ("not a digit")
    assert ink_box(_on_ruled_paper(rows)) == ink_box(_on_ruled_paper([]))


def _tight(draw_fn, size):
    im = Image.new("L", size, 0)
    draw_fn(ImageDraw.Draw(im))
    a = np.asarray(im, dtype=np.float32) / 255
    rows, cols = np.nonzero(a)
    return to_mnist(np.pad(a[rows.min():rows.max() + 1, cols.min():cols.max() + 1], 1))  # a 1-px margin


def test_full_rows_of_a_tightly_cropped_digit_are_not_ruled_lines():
    one = np.zeros((22, 8), dtype=np.float32)  # a narrow 1 (MNIST's own, cropped): two rows full, the rest inset
    one[1:21, 2:6], one[8:10, 1:8] = 1, 1
    assert np.array_equal(_drop_ruled_lines(one), one)
    # a 7 whose bar reaches far past its stem on both sides (and is 3x wider than the 7 is tall)
    tee = _tight(lambda d: (d.line([(5, 5), (95, 5)], fill=255, width=2),
                            d.line([(55, 5), (50, 35)], fill=255, width=2)), (100, 40))
    assert ink_box(tee)[1] == 20  # the bar is kept: it is the top of the ink and touches the stem
    # a flat 2 (a Z three times wider than tall): its base spans the width, but so does the rest of it
    zed = _tight(lambda d: d.line([(5, 5), (95, 5), (5, 35), (95, 35)], fill=255, width=2), (100, 40))
    rows = zed.numpy()[zed.numpy().any(1)]
    assert (rows[-1] > 0.5).sum() >= 15  # the last row of ink is still the base, as wide as the 2


@pytest.mark.parametrize("dark_on_light", [False, True])
def test_a_digit_cropped_tight_is_prepared_like_one_with_a_margin(dark_on_light):
    # an image cut to the digit (a scan's segmented digit): its border is ink, which was taken for
    # uneven paper (haze removal ate the strokes) and for background noise (the crop lost the faint rim)
    im = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(im).line([(70, 50), (130, 50), (95, 150)], fill=255, width=9)
    a = np.asarray(im.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32) / 255
    rows, cols = np.nonzero(a > 0.3)  # the cut loses the faint rim: a pixel of width at most
    tight = a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    if dark_on_light:
        a, tight = 1 - a, 1 - tight
    got, want = to_mnist(tight), to_mnist(a)
    assert float(got.sum()) > 0.9 * float(want.sum())  # was 27% short: the strokes were eaten
    assert float((got - want).abs().mean()) < 0.04


@pytest.mark.parametrize("binary", [True, False])
def test_a_digit_filling_its_box_top_to_bottom_is_not_blank(binary):
    # a size-normalised digit (a form's 32x32 bitmap, a 16x16 scan): ink on the top and bottom rows
    # but not at the sides. Clear ink on the border was taken for the background noise level, and a
    # binary digit's crop then found nothing above it ("blank"); a grey one lost the strokes' sides
    im = Image.new("L", (124, 128), 0)
    ImageDraw.Draw(im).line([(30, 4), (94, 4), (94, 30), (50, 64), (94, 96), (94, 124), (30, 124)],
                            fill=255, width=18)  # a flat-topped 3, a marker's strokes
    small = im.resize((31, 32), Image.Resampling.BOX)
    a = np.asarray(small, dtype=np.float32) / 255
    if binary:
        a = (a > 0.5).astype(np.float32)
    with_margin = np.pad(a, 6)
    got, want = to_mnist(a), to_mnist(with_margin)
    assert float(got.sum()) > 0.9 * float(want.sum())
    assert float((got - want).abs().mean()) < 0.04


def test_a_size_normalised_digit_keeps_its_thick_stem():
    # a 1 with a flag, normalised so its height fills a 20 px field (a 16x16 or 20x20 collection): the
    # stem is as wide as haze removal's window, which took it for uneven paper and subtracted it
    im = Image.new("L", (100, 100), 0)
    ImageDraw.Draw(im).line([(15, 30), (60, 0), (60, 100)], fill=255, width=40)
    a = np.asarray(im.resize((20, 20), Image.Resampling.BOX), dtype=np.float32) / 255
    got, want = to_mnist(a), to_mnist(np.pad(a, 6))
    assert float(got.sum()) > 0.9 * float(want.sum())  # was a third of the ink
    assert float((got - want).abs().mean()) < 0.04


def test_a_thick_digit_on_a_clean_background_is_not_thinned():
    im = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(im).line([(8, 4), (20, 4), (13, 24)], fill=255, width=6)  # a marker 7: strokes 6 px of 28
    a = to_mnist(np.asarray(im, dtype=np.float32) / 255)
    b = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)
    assert abs(float(a.sum()) / float(b.sum()) - 1) < 0.6  # resized to 20 px, not eaten away
    assert float(a.max()) == 1.0
