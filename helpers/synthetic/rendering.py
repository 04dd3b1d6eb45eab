"""Rendering one image: palette, shading, pose, background, clutter, occluders and lighting.

:func:`render_image` draws a category's parts (from :mod:`.drawing`) with the
nuisance of one image drawn from its own random stream; :func:`render_jpeg`
gives the exact bytes a release stores and :func:`render_example` an image
for display.
"""
from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .catalogue import CLEAN, DIFFICULTY, FAMILIES, Difficulty, _category_dict
from .drawing import Part, _ellipse, build_parts

SUPERSAMPLE = 2
"""Images are drawn at this multiple of the output size and downsampled with LANCZOS."""

BACKGROUNDS = ("plain", "gradient", "texture", "clutter")


# ----------------------------------------------------------------------------------------------
# Colours and shading
# ----------------------------------------------------------------------------------------------

FINISHES = {
    "black": {"metal": (50, 51, 55), "furniture": (34, 34, 37)},
    "tan": {"metal": (52, 52, 55), "furniture": (178, 152, 108)},
    "olive": {"metal": (56, 57, 53), "furniture": (98, 104, 64)},
    "steel": {"metal": (160, 162, 168), "furniture": (40, 40, 43)},
    "wood": {"metal": (62, 65, 74), "furniture": (132, 80, 42)},
}
_FIXED_ROLES = {"wood": (138, 84, 44), "dark": (30, 30, 33), "glass": (70, 120, 160)}


def _palette(finish: str, rng: np.random.Generator, jitter: float) -> dict[str, tuple[int, int, int]]:
    """Colours of each role for one image: the finish plus a small per-image variation."""
    colours = dict(FINISHES[finish], **_FIXED_ROLES)
    colours["bright"] = tuple(min(255, int(c * 1.2 + 22)) for c in colours["metal"])
    shift = rng.uniform(-jitter, jitter, size=3) if jitter else np.zeros(3)
    return {role: tuple(int(np.clip(c + s, 0, 255)) for c, s in zip(rgb, shift)) for role, rgb in colours.items()}


def _shade(rgb, factor: float, lift: float = 0.0) -> tuple[int, int, int, int]:
    """``rgb`` scaled by ``factor`` plus ``lift``, clipped, as opaque RGBA."""
    return tuple(int(min(255, max(0, c * factor + lift))) for c in rgb) + (255,)


def _shading_edges(parts: list[Part], inset: float):
    """Edges of every solid part that face up (lit) or down (shaded), moved ``inset`` units inwards.

    Returns ``(part number, faces up, segment)`` arrays over all parts at once;
    a segment is two local points.
    """
    solid = [k for k, part in enumerate(parts) if part.kind == "solid"]
    if not solid:
        return np.zeros(0, int), np.zeros(0, bool), np.zeros((0, 2, 2))
    points = np.concatenate([parts[k].points for k in solid])
    sizes = np.array([len(parts[k].points) for k in solid])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    owner = np.repeat(np.arange(len(solid)), sizes)
    following = np.arange(len(points)) + 1
    following[starts + sizes - 1] = starts
    nxt = points[following]
    area = np.add.reduceat(points[:, 0] * nxt[:, 1] - nxt[:, 0] * points[:, 1], starts)
    d = nxt - points
    outward = np.stack([d[:, 1], -d[:, 0]], axis=1) * np.where(area[owner] > 0, 1.0, -1.0)[:, None]
    length = np.linalg.norm(outward, axis=1)
    outward /= np.maximum(length, 1e-9)[:, None]
    up, down = outward[:, 1] < -0.6, outward[:, 1] > 0.6
    keep = (up | down) & (length > 1e-6)
    shift = -outward[keep] * inset
    segments = np.stack([points[keep] + shift, nxt[keep] + shift], axis=1)
    return np.asarray(solid)[owner[keep]], up[keep], segments


class _Pose(NamedTuple):
    """Local units to canvas pixels: x squash, flip, rotation, scale and offset."""

    squash: float
    flip: bool
    angle: float
    scale: float
    offset: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map local points of shape (n, 2) to canvas pixels."""
        p = points * np.array([self.squash * (-1.0 if self.flip else 1.0), 1.0])
        c, s = math.cos(self.angle), math.sin(self.angle)
        p = p @ np.array([[c, s], [-s, c]])
        return p * self.scale + self.offset


def _fit_pose(parts: list[Part], canvas: tuple[int, int], rng: np.random.Generator, squash: float, flip: bool,
              angle: float, fill: float, centred: bool) -> _Pose:
    """Scale and place the rotated drawing so that it spans ``fill`` of the canvas."""
    points = np.concatenate([p.points for p in parts])
    unit = _Pose(squash, flip, angle, 1.0, np.zeros(2)).apply(points)
    lo, hi = unit.min(axis=0), unit.max(axis=0)
    extent = np.maximum(hi - lo, 1e-6)
    scale = fill * min(canvas[0] / extent[0], canvas[1] / extent[1])
    slack = np.array(canvas) - extent * scale
    position = slack / 2 if centred else rng.uniform(0.0, 1.0, size=2) * slack
    return _Pose(squash, flip, angle, scale, position - lo * scale)


def _draw_gun(size: tuple[int, int], parts: list[Part], pose: _Pose, palette: dict) -> Image.Image:
    """The firearm on a transparent layer: filled parts, dark outlines, highlights on top edges."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    width = max(1, int(round(0.28 * pose.scale)))
    sizes = [len(part.points) for part in parts]
    canvas = pose.apply(np.concatenate([part.points for part in parts]))
    polygons = np.split(canvas, np.cumsum(sizes)[:-1])
    owners, faces_up, segments = _shading_edges(parts, 1.3 * width / pose.scale)
    lines = pose.apply(segments.reshape(-1, 2)).reshape(-1, 4).tolist()
    edges_of: dict[int, list[int]] = {}
    for e, k in enumerate(owners.tolist()):
        edges_of.setdefault(k, []).append(e)
    for k, (part, polygon) in enumerate(zip(parts, polygons)):
        xy = polygon.ravel().tolist()
        if part.kind == "hole":
            draw.polygon(xy, fill=(0, 0, 0, 0), outline=_shade(palette["dark"], 1.0), width=width)
            continue
        base = palette[part.role]
        if part.kind == "detail":
            draw.polygon(xy, fill=_shade(base, 0.42))
            continue
        draw.polygon(xy, fill=_shade(base, 1.0), outline=_shade(base, 0.4), width=width)
        lit, shaded = _shade(base, 1.25, 45), _shade(base, 0.72)
        for e in edges_of.get(k, ()):
            draw.line(lines[e], fill=lit if faces_up[e] else shaded, width=width)
    return layer


# ----------------------------------------------------------------------------------------------
# Nuisance: background, occluders, lighting
# ----------------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator, light: bool = False) -> np.ndarray:
    """A random RGB colour; ``light`` favours the pale backdrops of product photos."""
    if light:
        return np.clip(rng.uniform(175, 255) + rng.uniform(-18, 18, size=3), 0, 255)
    return rng.uniform(0, 255, size=3)


def _background(size: tuple[int, int], kind: str, rng: np.random.Generator, n_shapes: tuple[int, int]) -> Image.Image:
    """A plain, gradient, low-frequency texture or cluttered backdrop."""
    w, h = size
    if kind == "plain":
        return Image.new("RGB", size, tuple(int(c) for c in _random_colour(rng, light=rng.random() < 0.7)))
    if kind == "gradient":
        a, b = _random_colour(rng, rng.random() < 0.5), _random_colour(rng, rng.random() < 0.5)
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (xx * math.cos(theta) + yy * math.sin(theta))
        ramp = (ramp - ramp.min()) / max(1e-6, float(np.ptp(ramp)))
        arr = a[None, None, :] * (1 - ramp[..., None]) + b[None, None, :] * ramp[..., None]
        return Image.fromarray(arr.astype(np.uint8), "RGB")
    if kind == "texture":
        cells = int(rng.integers(3, 12))
        base = _random_colour(rng, light=rng.random() < 0.5)
        coarse = (base + rng.normal(0, rng.uniform(15, 50), size=(cells, cells, 1))
                  + rng.normal(0, rng.uniform(3, 15), size=(cells, cells, 3)))
        image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB").resize(size, Image.BICUBIC)
        grain = rng.normal(0, rng.uniform(4, 20), size=(h, w, 1))
        return Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8), "RGB")
    if kind == "clutter":
        image = _background(size, "gradient" if rng.random() < 0.5 else "plain", rng, n_shapes)
        _draw_clutter(image, rng, n_shapes)
        return image
    raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUNDS}")


def _draw_clutter(image: Image.Image, rng: np.random.Generator, n_shapes: tuple[int, int]) -> None:
    """Random rectangles, ellipses and long thin bars (distractors shaped like gun parts)."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(int(rng.integers(n_shapes[0], n_shapes[1] + 1))):
        colour = tuple(int(c) for c in _random_colour(rng))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.03, 0.25) * w, rng.uniform(0.03, 0.25) * h
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle([x - rx, y - ry, x + rx, y + ry], fill=colour)
        elif shape == 1:
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
        else:
            theta = rng.uniform(0, np.pi)
            dx, dy = math.cos(theta) * rx * 2, math.sin(theta) * rx * 2
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=colour, width=max(1, int(rng.uniform(0.01, 0.04) * w)))


_SKIN = ((234, 192, 160), (214, 160, 122), (176, 120, 84), (120, 78, 52), (80, 54, 38))


def _draw_occluder(image: Image.Image, centre: np.ndarray, reach: float, rng: np.random.Generator) -> None:
    """A hand-like blob (palm and fingers) or a bar covering part of the object around ``centre``."""
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.6:
        skin = np.array(_SKIN[int(rng.integers(len(_SKIN)))], float) + rng.uniform(-12, 12, size=3)
        fill = tuple(int(c) for c in np.clip(skin, 0, 255))
        edge = tuple(int(c * 0.7) for c in fill)
        r = reach * rng.uniform(0.12, 0.2)
        theta = rng.uniform(0, 2 * np.pi)
        along, across = np.array([math.cos(theta), math.sin(theta)]), np.array([-math.sin(theta), math.cos(theta)])
        palm = centre - along * r * 0.8
        draw.polygon([tuple(p) for p in palm + _ellipse(0, 0, r, r * 0.8, 16) @ np.stack([along, across])],
                     fill=fill, outline=edge)
        for k in range(4):
            base = palm + across * (k - 1.5) * r * 0.5
            tip = base + along * r * rng.uniform(1.4, 1.9)
            draw.line([tuple(base), tuple(tip)], fill=edge, width=max(1, int(r * 0.48)))
            draw.line([tuple(base), tuple(tip)], fill=fill, width=max(1, int(r * 0.36)))
        return
    colour = tuple(int(c) for c in _random_colour(rng))
    theta = rng.uniform(0, np.pi)
    half = reach * rng.uniform(0.3, 0.7)
    d = np.array([math.cos(theta), math.sin(theta)]) * half
    draw.line([tuple(centre - d), tuple(centre + d)], fill=colour, width=max(1, int(reach * rng.uniform(0.05, 0.12))))


def _drop_shadow(background: Image.Image, layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A soft shadow of the object's silhouette, offset down-right, under the object."""
    alpha = layer.getchannel("A")
    offset = tuple(int(v) for v in rng.integers(1, max(2, layer.size[0] // 40), size=2))
    shifted = Image.new("L", layer.size, 0)
    shifted.paste(alpha, offset)
    shadow = shifted.filter(ImageFilter.GaussianBlur(max(1.0, layer.size[0] / 120))).point(lambda v: v * 45 // 100)
    return Image.composite(Image.new("RGB", layer.size, (0, 0, 0)), background, shadow)


def _relight(image: Image.Image, rng: np.random.Generator, d: Difficulty, s: float) -> Image.Image:
    """Brightness, contrast, colour cast and sensor noise, all scaled by the nuisance strength ``s``."""
    if s <= 0:
        return image
    arr = np.asarray(image, np.float32)
    mean = arr.mean()
    contrast = 1.0 + rng.uniform(-1, 1) * d.contrast * s
    brightness = 1.0 + rng.uniform(-1, 1) * d.brightness * s
    cast = 1.0 + rng.uniform(-1, 1, size=3) * d.colour_cast * s
    arr = ((arr - mean) * contrast + mean) * brightness * cast
    arr += rng.normal(0.0, d.noise_sd * s * rng.uniform(0, 1), size=arr.shape[:2] + (1,))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------------


def _canvas_size(size: int, rng: np.random.Generator, d: Difficulty) -> tuple[int, int]:
    """Output (width, height): the long side is ``size``, the short side a random fraction of it."""
    short = int(round(size * rng.uniform(*d.aspect)))
    return (short, size) if rng.random() < d.p_portrait else (size, short)


def _jitter_geometry(geometry: dict[str, float], rng: np.random.Generator, amount: float) -> dict[str, float]:
    """Each dimension moved by a small per-image factor (the same category never looks identical)."""
    if amount <= 0:
        return dict(geometry)
    return {key: value * (1.0 + amount * float(rng.standard_normal())) for key, value in geometry.items()}


def _rotation(rng: np.random.Generator, d: Difficulty, s: float) -> float:
    """Rotation in radians: mostly small, now and then up to the large bound."""
    if rng.random() < d.p_large_rotation * min(1.0, s):
        degrees = rng.uniform(-1, 1) * d.large_rotation_deg * s
    else:
        degrees = rng.normal(0.0, d.small_rotation_deg * s)
    return math.radians(degrees)


def _pick_background(rng: np.random.Generator, d: Difficulty, s: float) -> str:
    """Plain backgrounds at low nuisance, the weighted mix at ``nuisance=1``."""
    if rng.random() >= min(1.0, s):
        return "plain"
    weights = np.asarray(d.background_weights, float)
    return BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=weights / weights.sum()))]


def render_image(category, rng: np.random.Generator, size: int, difficulty: Difficulty | None = None,
                 clean: bool = False, object_visible: bool = True) -> Image.Image:
    """Render one image of ``category`` (longest side ``size``) with the nuisance drawn from ``rng``.

    ``category`` is a :class:`Category` or a row of :func:`category_table`.
    With ``clean=True`` the template is drawn centred, unrotated, on a white
    background. With ``object_visible=False`` everything is drawn from the
    same random draws except the firearm and its shadow: the background,
    clutter, occluder, lighting and blur the image would have had without it.
    """
    info = _category_dict(category)
    d = CLEAN if clean else (difficulty or DIFFICULTY)
    s = max(0.0, d.nuisance)
    width, height = _canvas_size(size, rng, d)
    big = (width * SUPERSAMPLE, height * SUPERSAMPLE)
    geometry = _jitter_geometry(info["geometry"] or FAMILIES[info["family"]].geometry, rng, d.part_jitter)
    parts = build_parts(info["family"], info["attributes"], geometry)
    fill = 0.9 + (rng.uniform(*d.fill) - 0.9) * min(1.0, s)
    pose = _fit_pose(parts, big, rng, squash=1.0 - rng.uniform(0, d.yaw_squash * s),
                     flip=bool(rng.random() < d.p_flip * min(1.0, s)), angle=_rotation(rng, d, s),
                     fill=float(np.clip(fill, 0.2, 0.98)), centred=clean)
    layer = _draw_gun(big, parts, pose, _palette(info["attributes"]["finish"], rng, d.finish_jitter * s))
    if not object_visible:
        layer = Image.new("RGBA", big, (0, 0, 0, 0))
    background = (Image.new("RGB", big, (250, 250, 250)) if clean
                  else _background(big, _pick_background(rng, d, s), rng, d.clutter_shapes))
    if rng.random() < d.p_shadow * min(1.0, s):
        background = _drop_shadow(background, layer, rng)
    image = Image.alpha_composite(background.convert("RGBA"), layer).convert("RGB")
    if rng.random() < d.p_occluder * s:
        solid = [p for p in parts if p.kind == "solid"]
        anchor = solid[int(rng.integers(len(solid)))].points.mean(axis=0)
        _draw_occluder(image, pose.apply(anchor[None])[0], pose.scale * 40.0 * pose.squash, rng)
    image = image.resize((width, height), Image.LANCZOS)
    image = _relight(image, rng, d, s)
    if rng.random() < d.p_blur * min(1.0, s):
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, max(0.31, d.blur_max * s))))
    return image


def _jpeg_quality(rng: np.random.Generator, d: Difficulty) -> int:
    """JPEG quality: uniform over the difficulty's range at ``nuisance=1``, near the top at 0."""
    low, high = d.jpeg_quality
    return int(round(high - rng.uniform(0, 1) * (high - low) * min(1.0, max(0.0, d.nuisance))))


def _image_rng(seed: int, category_index: int, image_index: int) -> np.random.Generator:
    """The random stream of one image, independent of rendering order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 1, int(category_index), int(image_index)]))


def render_jpeg(category, seed: int, image_index: int, size: int, difficulty: Difficulty | None = None,
                object_visible: bool = True) -> bytes:
    """The JPEG bytes of image ``image_index`` of ``category``, exactly as the release stores them.

    ``object_visible=False`` gives the same image with the firearm left out
    (see :func:`render_image`).
    """
    d = difficulty or DIFFICULTY
    info = _category_dict(category)
    rng = _image_rng(seed, info["index"], image_index)
    image = render_image(info, rng, size, d, object_visible=object_visible)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=_jpeg_quality(rng, d))
    return buffer.getvalue()


def render_example(category, seed: int = 0, size: int = 128, *, clean: bool = False,
                   difficulty: Difficulty | None = None) -> Image.Image:
    """One image of ``category`` for display: its clean template, or a nuisance-augmented sample.

    ``seed`` picks the sample; ``size`` is the longest side.
    """
    info = _category_dict(category)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2, int(info.get("index", 0))]))
    return render_image(info, rng, size, difficulty, clean=clean)

