"""The geometry of one firearm: its parts as polygons in local drawing units.

:func:`build_parts` turns a family, its part-slot values and its dimensions
into :class:`Part` polygons, back to front, with the muzzle towards +x and y
growing downwards, as on screen.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .catalogue import FAMILIES, Family

BARREL_SCALE = {"short": 0.7, "medium": 1.0, "long": 1.35}
"""Barrel length of each ``barrel`` value, relative to the family template."""


class Part(NamedTuple):
    """A polygon of the drawing: ``kind`` is solid, detail (dark inset) or hole; ``role`` picks its colour."""

    kind: str
    role: str
    points: np.ndarray


def _rect(x0, y0, x1, y1) -> np.ndarray:
    """Axis-aligned rectangle corners, clockwise on screen."""
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=float)


def _ellipse(cx, cy, rx, ry, n: int = 18) -> np.ndarray:
    """Polygon approximation of an ellipse."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _bar(p0, p1, width) -> np.ndarray:
    """A straight bar of ``width`` from ``p0`` to ``p1``."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * width / 2
    return np.array([p0 + n, p1 + n, p1 - n, p0 - n])


def _leaning_corners(x0, top, width, length, angle_deg, taper: float = 0.92):
    """Corners (top-left, top-right, bottom-right, bottom-left) and unit direction of a leaning quad."""
    a = math.radians(angle_deg)
    direction = np.array([-math.sin(a), math.cos(a)])
    tl, tr = np.array([x0, top]), np.array([x0 + width, top])
    br = tr + direction * length
    bl = br - np.array([width * taper * math.cos(a), width * taper * math.sin(a)])
    return tl, tr, br, bl, direction


def _leaning(x0, top, width, length, angle_deg, taper: float = 0.92) -> np.ndarray:
    """A quadrilateral hanging below ``top``, leaning back (towards -x) by ``angle_deg``, rounded below."""
    tl, tr, br, bl, direction = _leaning_corners(x0, top, width, length, angle_deg, taper)
    return np.array([tl, tr, br, (bl + br) / 2 + direction * width * 0.12, bl])


def _solid(role, points) -> Part:
    """A filled part with an outline and highlights."""
    return Part("solid", role, np.asarray(points, float))


def _detail(role, points) -> Part:
    """A dark inset (slot, port, groove) without outline."""
    return Part("detail", role, np.asarray(points, float))


def _hole(points) -> Part:
    """A see-through opening cut into the parts drawn before it."""
    return Part("hole", "none", np.asarray(points, float))


def _grip_angle(grip: str) -> float:
    """Backward lean of a pistol grip, in degrees."""
    return {"straight": 12.0, "raked": 27.0}.get(grip, 12.0)


def _stock_parts(kind: str, grip: str, g: dict, h: float) -> list[Part]:
    """The stock behind the receiver (x < 0)."""
    s, drop = g["stock_len"], 0.12 * h
    if kind == "none":
        return [_solid("metal", _rect(-1.6, -0.9 * h, 0.5, -0.1 * h))]
    if kind == "folding":
        return [_solid("metal", _bar((0.5, -0.72 * h), (-s, -0.62 * h + drop), 0.2 * h)),
                _solid("metal", _bar((0.5, -0.12 * h), (-s, 0.75 * h + drop), 0.2 * h)),
                _solid("metal", _bar((-s, -0.85 * h + drop), (-s, 1.05 * h + drop), 0.3 * h))]
    if kind == "collapsible":
        return [_solid("metal", _rect(-0.65 * s, -0.8 * h, 0.5, -0.42 * h)),
                _solid("furniture", [(-0.5 * s, -0.92 * h), (-s, -0.95 * h + drop), (-s, 1.05 * h + drop),
                                     (-0.86 * s, 1.05 * h + drop), (-0.5 * s, -0.25 * h)]),
                _detail("furniture", _rect(-s, -0.95 * h + drop, -s + 1.0, 1.05 * h + drop))]
    top = [(0.5, -0.9 * h), (-s, -0.82 * h + drop), (-s, 1.2 * h + drop)]
    if grip == "traditional":
        bottom = [(-0.4 * s, 0.45 * h), (-0.14 * s, 0.8 * h), (0.0, 1.05 * h), (0.08 * s, 0.85 * h),
                  (0.08 * s, 0.05 * h)]
    else:
        bottom = [(-0.3 * s, 0.3 * h), (0.5, 0.0)]
    outline = top + bottom
    if kind == "skeleton":
        hole = [(-0.18 * s, -0.55 * h), (-0.82 * s, -0.5 * h + drop), (-0.82 * s, 0.75 * h + drop),
                (-0.35 * s, 0.2 * h), (-0.18 * s, 0.0)]
        return [_solid("furniture", outline), _hole(hole),
                _detail("furniture", _rect(-s, -0.82 * h + drop, -s + 1.0, 1.2 * h + drop))]
    parts = [_solid("furniture", outline), _detail("furniture", _rect(-s, -0.82 * h + drop, -s + 1.0, 1.2 * h + drop))]
    if kind == "thumbhole":
        parts.append(_hole(_ellipse(-0.2 * s, 0.45 * h, 0.09 * s, 0.28 * h, 14)))
    return parts


def _magazine_parts(kind: str, g: dict, xm: float, h: float) -> list[Part]:
    """A magazine hanging below the receiver at ``xm`` (tube magazines are drawn with the barrel)."""
    ml, mw = g.get("mag_len", 10.0), g.get("mag_w", 6.0)
    if kind in ("none", "tube", "flush"):
        return []
    if kind == "box":
        quad = _leaning(xm, -0.1 * h, mw, ml, -6.0, taper=1.0)
        base = _leaning(xm - 0.4 + math.sin(math.radians(6)) * ml * 0.9, -0.1 * h + ml * 0.9, mw + 0.8, ml * 0.12,
                        -6.0, taper=1.0)
        return [_solid("metal", quad), _solid("metal", base)]
    if kind == "curved":
        t = np.linspace(0.0, 1.0, 9)
        centre = np.stack([xm + mw / 2 + 0.5 * ml * t ** 2, -0.1 * h + ml * t], axis=1)
        tangent = np.stack([np.full_like(t, 0.0) + ml * t, np.full_like(t, ml / 2)], axis=1)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1) * mw / 2
        return [_solid("metal", np.concatenate([centre - normal, (centre + normal)[::-1]]))]
    if kind == "drum":
        r = 0.62 * ml
        cy = 0.1 * h + r
        return [_solid("metal", _rect(xm, -0.1 * h, xm + mw, 0.3 * h)),
                _solid("metal", _ellipse(xm + mw / 2, cy, r, r, 22)),
                _detail("metal", _ellipse(xm + mw / 2, cy, 0.35 * r, 0.35 * r, 14))]
    if kind == "belt box":
        box = _rect(xm - 0.2 * mw, 0.0, xm + 0.8 * mw, ml)
        ribs = [_detail("metal", _rect(xm - 0.2 * mw + 1.0, y, xm + 0.8 * mw - 1.0, y + 0.5)) for y in
                (0.3 * ml, 0.6 * ml)]
        return [_solid("metal", box), *ribs]
    raise ValueError(f"unknown magazine kind {kind!r}")


def _grip_parts(kind: str, g: dict, x0: float, top: float) -> list[Part]:
    """A pistol grip below ``top`` at ``x0`` plus the trigger guard in front of it."""
    if kind == "traditional":
        return []
    gw, gl = g["grip_w"], g["grip_len"]
    return [_solid("furniture", _leaning(x0, top - 0.5, gw, gl, _grip_angle(kind)))]


def _trigger_guard(xa: float, top: float, length: float, depth: float) -> list[Part]:
    """A trigger guard ring with a trigger inside, from ``xa`` forward."""
    outer = [(xa, top), (xa + length, top), (xa + length, top + 0.6 * depth), (xa + 0.75 * length, top + depth),
             (xa, top + depth)]
    inner = [(xa + 0.12 * length, top + 0.02), (xa + 0.88 * length, top + 0.02),
             (xa + 0.86 * length, top + 0.52 * depth),
             (xa + 0.68 * length, top + 0.78 * depth), (xa + 0.12 * length, top + 0.78 * depth)]
    trigger = _bar((xa + 0.45 * length, top), (xa + 0.32 * length, top + 0.6 * depth), 0.12 * length)
    return [_solid("metal", outer), _hole(inner), _solid("metal", trigger)]


def _handguard_parts(kind: str, x0: float, length: float, yb: float, t: float, h: float) -> list[Part]:
    """The handguard around the barrel from ``x0``; pump forends sit further forward."""
    x1 = x0 + length
    if kind == "none":
        return []
    if kind == "slim":
        return [_solid("furniture", [(x0, yb - 0.3 * h), (x1 - 0.6, yb - 0.3 * h), (x1, yb - 0.18 * h),
                                     (x1, yb + 0.22 * h), (x0, yb + 0.3 * h)])]
    shape = [(x0, yb - 0.4 * h), (x1 - 1.2, yb - 0.4 * h), (x1, yb - 0.2 * h), (x1, yb + 0.28 * h),
             (x1 - 1.5, yb + 0.45 * h), (x0, yb + 0.48 * h)]
    if kind in ("thick", "wood"):
        return [_solid("wood" if kind == "wood" else "furniture", shape)]
    if kind == "ribbed":
        slots = [_detail("furniture", _rect(x, yb - 0.12 * h, x + 0.07 * length, yb + 0.12 * h))
                 for x in np.linspace(x0 + 0.08 * length, x1 - 0.2 * length, 5)]
        return [_solid("furniture", shape), *slots]
    if kind == "pump":
        px0 = x0 + 0.12 * length
        px1 = px0 + 1.3 * length
        grooves = [_detail("furniture", _rect(x, yb - 0.05 * h, x + 0.35, yb + 0.5 * h))
                   for x in np.linspace(px0 + 1.0, px1 - 1.5, 6)]
        return [_solid("furniture", [(px0, yb - 0.1 * h), (px1, yb - 0.1 * h), (px1 + 0.6, yb + 0.25 * h),
                                     (px1, yb + 0.65 * h), (px0, yb + 0.65 * h)]), *grooves]
    raise ValueError(f"unknown handguard kind {kind!r}")


def _sight_parts(kind: str, xa: float, xb: float, top: float, h: float, front_x: float, front_y: float) -> list[Part]:
    """Sights mounted on the top rail between ``xa`` and ``xb`` (y = ``top``); iron front post at ``front_x``."""
    span = xb - xa
    post = [_solid("metal", [(front_x - 0.8, front_y), (front_x - 0.2, front_y - 0.42 * h),
                             (front_x + 0.2, front_y - 0.42 * h), (front_x + 0.8, front_y)])]
    if kind == "iron":
        return [_solid("metal", _rect(xa + 0.05 * span, top - 0.28 * h, xa + 0.14 * span, top + 0.2)), *post]
    if kind == "red dot":
        x0 = xa + 0.4 * span
        x1 = x0 + max(0.22 * span, 1.2 * h * 0.5)
        return [_solid("metal", _rect(x0 - 0.5, top - 0.15 * h, x1 + 0.5, top + 0.2)),
                _solid("metal", [(x0, top - 0.15 * h), (x0, top - 0.75 * h), (x1 - 0.6, top - 0.8 * h),
                                 (x1, top - 0.6 * h), (x1, top - 0.15 * h)]),
                _solid("glass", _rect(x1 - 0.25, top - 0.62 * h, x1 + 0.2, top - 0.25 * h))]
    if kind in ("scope", "big scope"):
        big = kind == "big scope"
        cy = top - (0.72 if big else 0.6) * h
        r = 0.2 * h
        x0, x1 = xa + 0.04 * span, xa + (1.0 if big else 0.88) * span
        bell = (0.42 if big else 0.32) * h
        rings = [_solid("metal", _rect(x, cy, x + 0.9, top + 0.2))
                 for x in (x0 + 0.3 * (x1 - x0), x0 + 0.68 * (x1 - x0))]
        return [*rings, _solid("metal", _rect(x0 + 0.12 * span, cy - r, x1 - 0.16 * span, cy + r)),
                _solid("metal", [(x0, cy - 0.27 * h), (x0 + 0.12 * span, cy - 0.3 * h), (x0 + 0.16 * span, cy - r),
                                 (x0 + 0.16 * span, cy + r), (x0 + 0.12 * span, cy + 0.3 * h), (x0, cy + 0.27 * h)]),
                _solid("metal", [(x1 - 0.2 * span, cy - r), (x1 - 0.1 * span, cy - bell), (x1, cy - bell),
                                 (x1, cy + bell), (x1 - 0.1 * span, cy + bell), (x1 - 0.2 * span, cy + r)]),
                _solid("metal", _rect(x0 + 0.45 * (x1 - x0), cy - r - 0.3 * h, x0 + 0.53 * (x1 - x0), cy - r + 0.2)),
                _solid("glass", _rect(x1 - 0.3, cy - bell * 0.8, x1 + 0.25, cy + bell * 0.8))]
    if kind == "carry handle":
        x0, x1 = xa + 0.28 * span, xa + 0.88 * span
        outer = [(x0, top + 0.2), (x0 + 0.04 * span, top - 0.72 * h), (x1, top - 0.72 * h), (x1, top + 0.2)]
        inner = [(x0 + 0.1 * span, top - 0.08 * h), (x0 + 0.12 * span, top - 0.45 * h),
                 (x1 - 0.08 * span, top - 0.45 * h),
                 (x1 - 0.08 * span, top - 0.08 * h)]
        tall_post = [_solid("metal", [(front_x - 1.0, front_y + 0.2), (front_x - 0.25, front_y - 0.85 * h),
                                      (front_x + 0.25, front_y - 0.85 * h), (front_x + 1.0, front_y + 0.2)])]
        return [_solid("metal", outer), _hole(inner),
                _solid("metal", _rect(x0, top - 0.95 * h, x0 + 0.09 * span, top - 0.6 * h)), *tall_post]
    raise ValueError(f"unknown sight kind {kind!r}")


def _muzzle_parts(kind: str, xm: float, yb: float, t: float, h: float) -> list[Part]:
    """A muzzle device at the barrel end ``xm`` on the bore axis ``yb``."""
    if kind == "plain":
        return [_solid("metal", _rect(xm - 0.3, yb - 0.6 * t, xm + 0.3, yb + 0.6 * t))]
    if kind == "brake":
        length = 1.6 * t + 2.0
        ports = [_detail("metal", _rect(x, yb - 0.7 * t, x + 0.28 * t + 0.2, yb + 0.7 * t))
                 for x in (xm + 0.25 * length, xm + 0.6 * length)]
        return [_solid("metal", _rect(xm, yb - 1.05 * t, xm + length, yb + 1.05 * t)), *ports]
    if kind == "flash hider":
        length = 2.6 * t + 1.0
        slots = [_detail("metal", _rect(xm + 0.35 * length, y - 0.1 * t, xm + length + 0.1, y + 0.1 * t))
                 for y in (yb - 0.35 * t, yb + 0.35 * t)]
        return [_solid("metal", _rect(xm, yb - 0.75 * t, xm + length, yb + 0.75 * t)), *slots]
    if kind == "suppressor":
        length, r = max(9.0, 1.25 * h), max(0.28 * h, 1.1 * t)
        return [_solid("dark", [(xm - 1.0, yb - r), (xm + length - 0.8, yb - r), (xm + length, yb - 0.7 * r),
                                (xm + length, yb + 0.7 * r), (xm + length - 0.8, yb + r), (xm - 1.0, yb + r)]),
                _detail("dark", _rect(xm + 0.2 * length, yb - r + 0.35, xm + 0.23 * length, yb + r - 0.35))]
    if kind == "compensator":
        length = 1.2 * t + 1.5
        return [_solid("metal", _rect(xm, yb - 0.8 * t, xm + length, yb + 0.75 * t)),
                _detail("metal", _rect(xm + 0.3 * length, yb - 0.8 * t, xm + 0.45 * length, yb - 0.2 * t)),
                _detail("metal", _rect(xm + 0.62 * length, yb - 0.8 * t, xm + 0.77 * length, yb - 0.2 * t))]
    raise ValueError(f"unknown muzzle kind {kind!r}")


def _accessory_parts(kind: str, x: float, yb: float, t: float, h: float) -> list[Part]:
    """An accessory hung under the barrel or handguard around ``x``."""
    if kind == "none":
        return []
    if kind == "bipod":
        foot = yb + 2.9 * h
        return [_solid("dark", _rect(x - 1.0, yb - 0.1 * h, x + 1.0, yb + 0.45 * h)),
                _solid("dark", _bar((x - 0.2, yb + 0.3 * h), (x - 0.22 * h, foot), 0.22 * h)),
                _solid("dark", _bar((x + 0.2, yb + 0.3 * h), (x + 0.3 * h, foot - 0.1 * h), 0.22 * h))]
    if kind == "foregrip":
        return [_solid("furniture", _leaning(x, yb + 0.4 * h, 0.5 * h, 1.2 * h, -4.0))]
    if kind == "light":
        return [_solid("dark", _rect(x, yb + 0.3 * h, x + 1.05 * h, yb + 0.72 * h)),
                _solid("glass", _rect(x + 1.05 * h - 0.2, yb + 0.32 * h, x + 1.05 * h + 0.3, yb + 0.7 * h))]
    raise ValueError(f"unknown accessory kind {kind!r}")


def _long_gun_parts(family: Family, a: dict, g: dict) -> list[Part]:
    """A rifle, carbine, shotgun, submachine or machine gun in side view."""
    length, h, t = g["recv_len"], g["recv_h"], g["barrel_th"]
    barrel = g["barrel_len"] * BARREL_SCALE[a["barrel"]]
    yb, xb = -0.62 * h, length + barrel
    guard = g["handguard_len"] * barrel if a["handguard"] != "pump" else 0.28 * barrel
    grip_x = 0.2 * length if a["grip"] != "traditional" else 0.08 * length
    parts = _stock_parts(a["stock"], a["grip"], g, h)
    parts += _magazine_parts(a["magazine"], g, g["mag_pos"] * length, h)
    parts += _grip_parts(a["grip"], g, grip_x, 0.0)
    parts.append(_solid("metal", _rect(length - 1.0, yb - t / 2, xb, yb + t / 2)))
    if a["magazine"] == "tube":
        parts += [_solid("metal", _rect(length - 1.0, yb + t / 2 - 0.2, length + 0.86 * barrel, yb + t / 2 + 0.3 * h)),
                  _solid("metal", _rect(length + 0.86 * barrel - 0.2, yb + t / 2 - 0.3, length + 0.86 * barrel + 0.9,
                                        yb + t / 2 + 0.34 * h))]
    parts += _handguard_parts(a["handguard"], length, guard, yb, t, h)
    parts.append(_solid("metal", [(0.0, -0.92 * h), (0.06 * length, -h), (length, -h), (length, -0.15 * h),
                                  (0.95 * length, 0.0), (0.0, 0.0)]))
    parts.append(_detail("metal", _rect(0.5 * length, -0.72 * h, 0.68 * length, -0.45 * h)))
    parts += _trigger_guard(grip_x + (g["grip_w"] if a["grip"] != "traditional" else 0.0), 0.0,
                            1.3 * g["grip_w"], 0.42 * h)
    if family.bolt_handle:
        parts += [_solid("metal", _bar((0.28 * length, -0.55 * h), (0.2 * length, 0.4 * h), 0.16 * h)),
                  _solid("metal", _ellipse(0.2 * length, 0.45 * h, 0.22 * h, 0.22 * h, 12))]
    front_x = length + min(barrel - 1.5, max(guard + 1.5, 0.55 * barrel))
    parts += _sight_parts(a["sight"], 0.0, length, -h, h, front_x, yb - t / 2)
    parts += _muzzle_parts(a["muzzle"], xb, yb, t, h)
    parts += _accessory_parts(a["accessory"], length + 0.8 * max(guard, 0.3 * barrel), yb, t, h)
    return parts


def _handgun_parts(a: dict, g: dict) -> list[Part]:
    """A semi-automatic pistol: slide, frame, grip and exposed barrel."""
    m = BARREL_SCALE[a["barrel"]]
    h = g["recv_h"]
    slide = g["recv_len"] * (0.75 + 0.25 * m)
    exposed = g["barrel_len"] * max(0.0, m - 0.85) * 1.6
    yb, t = -0.74 * h, g["barrel_th"]
    gw, gl = g["grip_w"], g["grip_len"]
    angle = _grip_angle(a["grip"]) - 2.0
    _, _, br, bl, direction = _leaning_corners(0.03 * slide, -0.2 * h, gw, gl, angle, taper=1.0)
    bl, br = bl + (br - bl) * 0.08, br - (br - bl) * 0.08
    if a["magazine"] == "extended":
        parts = [_solid("metal", [bl - direction, br - direction, br + direction * g["mag_len"],
                                  bl + direction * g["mag_len"]])]
    else:
        parts = [_solid("metal", [bl - direction, br - direction, br + direction * 0.9, bl + direction * 0.9])]
    parts.append(_solid("furniture", _leaning(0.03 * slide, -0.2 * h, gw, gl, angle, taper=1.0)))
    parts.append(_solid("metal", _rect(slide - 1.0, yb - t / 2, slide + exposed, yb + t / 2)))
    parts.append(_solid("furniture", [(0.02 * slide, -0.5 * h), (0.9 * slide, -0.5 * h), (0.9 * slide, -0.16 * h),
                                      (0.45 * slide, -0.1 * h), (0.35 * slide, 0.02 * h), (0.03 * slide, 0.0)]))
    parts.append(_solid("metal", [(0.0, -h), (slide - 1.2, -h), (slide, -h + 1.2), (slide, -0.48 * h),
                                  (0.0, -0.48 * h)]))
    parts += [_detail("metal", _rect(x, -0.92 * h, x + 0.35, -0.58 * h)) for x in np.linspace(0.05, 0.16, 4) * slide]
    parts.append(_detail("metal", _rect(0.42 * slide, -h + 0.5, 0.6 * slide, -0.8 * h)))
    parts += _trigger_guard(0.03 * slide + gw * 0.92, -0.12 * h, 0.3 * slide, 0.42 * h)
    if a["sight"] == "iron":
        parts += [_solid("metal", _rect(slide - 2.6, -1.14 * h, slide - 1.6, -h + 0.2)),
                  _solid("metal", _rect(0.8, -1.16 * h, 2.4, -h + 0.2))]
    else:
        parts += [_solid("metal", _rect(0.1 * slide, -1.12 * h, 0.36 * slide, -h + 0.2)),
                  _solid("metal", [(0.12 * slide, -1.12 * h), (0.12 * slide, -1.5 * h), (0.3 * slide, -1.5 * h),
                                   (0.34 * slide, -1.12 * h)]),
                  _solid("glass", _rect(0.31 * slide, -1.45 * h, 0.34 * slide, -1.17 * h))]
    parts += _muzzle_parts(a["muzzle"], slide + exposed, yb, t, h)
    parts += _accessory_parts(a["accessory"], 0.58 * slide, -0.55 * h, t, h)
    return parts


def _revolver_grip(lf: float, h: float, gl: float, angle_deg: float) -> np.ndarray:
    """A rounded revolver grip: a bulging back strap from the hammer down, a shorter front strap."""
    a = math.radians(angle_deg)
    down = np.array([-math.sin(a), math.cos(a)])
    forward = np.array([math.cos(a), math.sin(a)])
    back_top, front_top = np.array([-0.02 * lf, -0.55 * h]), np.array([0.3 * lf, 0.2 * h])
    back_end = back_top + down * gl
    front_end = front_top + down * gl * 0.72
    return np.array([front_top, front_end, front_end * 0.5 + back_end * 0.5 + down * 0.1 * gl,
                     back_end - forward * 0.05 * gl, back_top + down * gl * 0.5 - forward * 0.1 * gl, back_top])


def _revolver_parts(a: dict, g: dict) -> list[Part]:
    """A revolver: frame, cylinder, barrel with its lug, hammer spur and a rounded grip."""
    lf, h = g["recv_len"], g["recv_h"]
    barrel = g["barrel_len"] * BARREL_SCALE[a["barrel"]]
    t = g["barrel_th"]
    yb = -h + t / 2
    xb = lf + barrel
    parts = [_solid("furniture", _revolver_grip(lf, h, g["grip_len"], _grip_angle(a["grip"]) + 10.0))]
    parts.append(_solid("metal", [(0.08 * lf, -0.8 * h), (-0.06 * lf, -1.12 * h), (-0.22 * lf, -1.2 * h),
                                  (-0.18 * lf, -1.04 * h), (-0.06 * lf, -0.62 * h)]))
    parts.append(_solid("metal", _rect(lf - 0.5, yb - t / 2, xb, yb + t / 2)))
    lug = {"full lug": barrel - 0.4, "half lug": 0.45 * barrel, "none": 0.0}[a["handguard"]]
    if lug:
        parts.append(_solid("metal", [(lf - 0.5, yb + t / 2 - 0.3), (lf + lug, yb + t / 2 - 0.3),
                                      (lf + lug, yb + t / 2 + 0.22 * h), (lf + lug - 1.0, yb + t / 2 + 0.32 * h),
                                      (lf - 0.5, yb + t / 2 + 0.32 * h)]))
    else:
        parts.append(_solid("metal", _rect(lf - 0.5, yb + t / 2, lf + 0.45 * barrel, yb + t / 2 + 0.1 * h)))
    parts.append(_solid("metal", [(-0.04 * lf, -0.72 * h), (0.1 * lf, -h), (lf, -h), (lf, -0.55 * h),
                                  (0.9 * lf, -0.3 * h), (0.9 * lf, 0.1 * h), (0.62 * lf, 0.22 * h),
                                  (0.3 * lf, 0.24 * h), (0.0, 0.0)]))
    cx0, cx1, cy0, cy1, r = 0.2 * lf, 0.86 * lf, -0.84 * h, 0.1 * h, 0.1 * h
    parts.append(_solid("bright", [(cx0 + r, cy0), (cx1 - r, cy0), (cx1, cy0 + r), (cx1, cy1 - r), (cx1 - r, cy1),
                                   (cx0 + r, cy1), (cx0, cy1 - r), (cx0, cy0 + r)]))
    parts += [_detail("bright", _rect(cx0 + 0.18 * (cx1 - cx0), y, cx1 - 0.1 * (cx1 - cx0), y + 0.09 * h))
              for y in (-0.58 * h, -0.32 * h, -0.06 * h)]
    parts += _trigger_guard(0.3 * lf, 0.2 * h, 0.36 * lf, 0.48 * h)
    if a["sight"] == "iron":
        parts.append(_solid("metal", [(xb - 2.4, yb - t / 2), (xb - 1.6, yb - t / 2 - 0.3 * h),
                                      (xb - 0.5, yb - t / 2 - 0.3 * h), (xb - 0.5, yb - t / 2)]))
        parts.append(_solid("metal", _rect(0.05 * lf, -1.1 * h, 0.2 * lf, -h + 0.2)))
    else:
        parts += _sight_parts(a["sight"], 0.1 * lf, lf + 0.55 * barrel, -h, h, xb - 1.5, yb - t / 2)
    parts += _muzzle_parts(a["muzzle"], xb, yb, t, h)
    return parts


def _bullpup_parts(a: dict, g: dict) -> list[Part]:
    """A bullpup rifle: the magazine sits behind the grip inside a long stocked body."""
    body, h, t = g["recv_len"], g["recv_h"], g["barrel_th"]
    barrel = g["barrel_len"] * BARREL_SCALE[a["barrel"]]
    yb, xb = -0.62 * h, body + barrel
    guard = g["handguard_len"] * barrel
    grip_x = 0.5 * body
    drop = np.array([0.0, 0.55 * h])  # the magazine well sits in the lower stock
    parts = [Part(p.kind, p.role, p.points + drop) for p in _magazine_parts(a["magazine"], g, 0.16 * body, h)]
    parts += _grip_parts(a["grip"], g, grip_x, 0.0)
    parts.append(_solid("metal", _rect(body - 1.0, yb - t / 2, xb, yb + t / 2)))
    parts += _handguard_parts(a["handguard"], body, guard, yb, t, h)
    parts.append(_solid("furniture", [(0.0, -0.85 * h), (0.05 * body, -h), (body, -h), (body, -0.2 * h),
                                      (0.94 * body, 0.0), (0.4 * body, 0.0), (0.34 * body, 0.6 * h),
                                      (0.02 * body, 0.62 * h), (0.0, 0.45 * h)]))
    parts.append(_detail("furniture", _rect(0.0, -0.85 * h, 1.0, 0.45 * h)))
    parts.append(_detail("furniture", _rect(0.22 * body, -0.7 * h, 0.34 * body, -0.45 * h)))
    parts += _trigger_guard(grip_x + g["grip_w"], 0.0, 0.12 * body, 0.45 * h)
    front_x = body + min(barrel - 1.5, max(guard + 1.0, 0.5 * barrel))
    parts += _sight_parts(a["sight"], 0.42 * body, body, -h, h, front_x, yb - t / 2)
    parts += _muzzle_parts(a["muzzle"], xb, yb, t, h)
    parts += _accessory_parts(a["accessory"], body + 0.3 * barrel, yb, t, h)
    return parts


def build_parts(family: str, attributes: dict[str, str], geometry: dict[str, float]) -> list[Part]:
    """The polygons of one firearm in local drawing units, back to front.

    The muzzle points towards +x and y grows downwards, as on screen.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {list(FAMILIES)}")
    fam = FAMILIES[family]
    if fam.layout == "handgun":
        return _handgun_parts(attributes, geometry)
    if fam.layout == "revolver":
        return _revolver_parts(attributes, geometry)
    if fam.layout == "bullpup":
        return _bullpup_parts(attributes, geometry)
    return _long_gun_parts(fam, attributes, geometry)

