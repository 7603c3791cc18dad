"""Hand-made pen strokes for the ten digits, a few styles each, for drawing on the page like a person.

Coordinates are fractions of the canvas (x right, y down). Each drawing is a list of strokes, each
stroke a polyline; curves are sampled arcs, so the mouse follows them in short moves. The styles
cover common ways of writing: a 1 with a flag and a base, a crossed 7, a 4 open or closed, a 9 with
a straight or a hooked tail, an 8 in one stroke or as two loops.
"""

from __future__ import annotations

import math

Stroke = list[tuple[float, float]]


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 0) -> Stroke:
    """Points on an ellipse from angle `start` to `end` (degrees; 0 = right, 90 = down: screen y)."""
    n = n or max(4, int(abs(end - start) / 20))
    return [(cx + rx * math.cos(math.radians(start + (end - start) * i / n)),
             cy + ry * math.sin(math.radians(start + (end - start) * i / n))) for i in range(n + 1)]


def _slant(strokes: list[Stroke], k: float) -> list[Stroke]:
    """Shear right-handed writing: x moves by k per unit of height above the centre."""
    return [[(x + k * (0.5 - y), y) for x, y in s] for s in strokes]


DIGITS: dict[int, list[list[Stroke]]] = {
    0: [
        [arc(0.5, 0.5, 0.2, 0.33, -90, 275)],                                   # round
        _slant([arc(0.5, 0.5, 0.15, 0.34, -100, 265)], 0.15),                   # narrow, slanted
        [arc(0.5, 0.5, 0.22, 0.32, -60, 300) + [(0.62, 0.24)]],                 # overshooting the start
    ],
    1: [
        [[(0.52, 0.15), (0.48, 0.85)]],                                          # a plain bar
        [[(0.36, 0.3), (0.54, 0.15), (0.54, 0.85)]],                             # with a flag
        [[(0.36, 0.3), (0.52, 0.15), (0.52, 0.85)], [(0.36, 0.85), (0.68, 0.85)]],  # flag and base
    ],
    2: [
        [arc(0.5, 0.33, 0.2, 0.17, 200, 370) + [(0.3, 0.83), (0.73, 0.83)]],      # curved top, base
        [arc(0.48, 0.32, 0.2, 0.16, 190, 400) + arc(0.45, 0.72, 0.2, 0.12, -60, -150)[1:]
         + [(0.3, 0.82), (0.75, 0.8)]],                                          # flowing, round neck
        _slant([arc(0.5, 0.33, 0.2, 0.17, 210, 380) + [(0.3, 0.82), (0.72, 0.82)]], 0.12),
    ],
    3: [
        [arc(0.48, 0.32, 0.2, 0.16, 200, 450) + arc(0.48, 0.66, 0.22, 0.18, -90, 160)[1:]],  # two bumps
        [[(0.3, 0.18), (0.7, 0.18), (0.46, 0.44)] + arc(0.48, 0.64, 0.22, 0.2, -90, 150)],    # flat top
        _slant([arc(0.5, 0.32, 0.18, 0.15, 210, 450) + arc(0.5, 0.66, 0.2, 0.18, -90, 150)[1:]], 0.12),
    ],
    4: [
        [[(0.38, 0.15), (0.28, 0.6), (0.75, 0.6)], [(0.62, 0.3), (0.62, 0.87)]],  # open top
        [[(0.62, 0.85), (0.62, 0.15), (0.27, 0.62), (0.77, 0.62)]],              # closed, one stroke
        _slant([[(0.36, 0.15), (0.3, 0.58), (0.76, 0.58)], [(0.64, 0.2), (0.62, 0.88)]], 0.1),
    ],
    5: [
        [[(0.7, 0.17), (0.37, 0.17), (0.34, 0.47)] + arc(0.5, 0.64, 0.2, 0.19, -130, 140)[1:]],  # one stroke
        [[(0.36, 0.17), (0.33, 0.48)] + arc(0.5, 0.65, 0.2, 0.18, -125, 145)[1:],
         [(0.36, 0.17), (0.72, 0.16)]],                                          # bar added last
        _slant([[(0.7, 0.17), (0.38, 0.17), (0.35, 0.46)] + arc(0.5, 0.64, 0.2, 0.19, -130, 140)[1:]], 0.12),
    ],
    6: [
        [arc(0.55, 0.62, 0.25, 0.46, -75, -170) + arc(0.5, 0.66, 0.2, 0.18, 180, 540)],  # round
        [[(0.62, 0.15), (0.36, 0.55)] + arc(0.5, 0.66, 0.19, 0.18, 200, 560)],  # straight stem
        _slant([arc(0.55, 0.62, 0.25, 0.46, -75, -170) + arc(0.5, 0.66, 0.2, 0.18, 180, 540)], 0.1),
    ],
    7: [
        [[(0.25, 0.2), (0.72, 0.2), (0.42, 0.85)]],                              # plain
        [[(0.25, 0.2), (0.72, 0.2), (0.45, 0.85)], [(0.38, 0.52), (0.68, 0.52)]],  # crossed
        [[(0.28, 0.25), (0.3, 0.2), (0.72, 0.18), (0.56, 0.45), (0.48, 0.85)]],   # small serif, bent stem
    ],
    8: [
        [arc(0.5, 0.32, 0.16, 0.15, 0, -270) + arc(0.5, 0.66, 0.2, 0.19, -90, 270)[1:]
         + arc(0.5, 0.32, 0.16, 0.15, 90, 0)[1:]],                               # one stroke
        [arc(0.5, 0.32, 0.16, 0.15, 0, 360), arc(0.5, 0.66, 0.2, 0.19, -90, 270)],  # two loops
        _slant([arc(0.5, 0.32, 0.15, 0.15, 0, -270) + arc(0.5, 0.66, 0.19, 0.19, -90, 270)[1:]
                + arc(0.5, 0.32, 0.15, 0.15, 90, 0)[1:]], 0.12),
    ],
    9: [
        [arc(0.48, 0.34, 0.18, 0.17, -10, 350) + [(0.64, 0.85)]],               # straight tail
        [arc(0.48, 0.34, 0.18, 0.17, -10, 350) + [(0.66, 0.6)] + arc(0.52, 0.7, 0.14, 0.14, 0, 160)[1:]],  # hooked
        _slant([arc(0.48, 0.33, 0.17, 0.16, -10, 350) + [(0.64, 0.86)]], 0.12),
    ],
}


# People rarely fill the pad: some drawings are written small or off-centre (scale about the centre,
# then shift), which the server's crop-and-fit to 20x20 must undo.
PLACES = [(1.0, 0.0, 0.0), (0.6, -0.15, -0.12), (0.75, 0.12, 0.08)]


def placed(strokes: list[Stroke], scale: float, dx: float, dy: float) -> list[Stroke]:
    return [[(0.5 + scale * (x - 0.5) + dx, 0.5 + scale * (y - 0.5) + dy) for x, y in s] for s in strokes]


def drawings() -> list[tuple[int, int, list[Stroke]]]:
    """(digit, style number, strokes) for every drawing, each at one of the PLACES in turn."""
    return [(d, i, placed(s, *PLACES[(d + i) % len(PLACES)]))
            for d, styles in DIGITS.items() for i, s in enumerate(styles)]
