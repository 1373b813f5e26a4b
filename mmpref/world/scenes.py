"""Pictures of the miniature world: charts with known values and shape scenes with known objects.

Images are drawn straight into ``image_size``² RGB pictures; every picture in the world has a unique pixel content
(:class:`Images` draws again on a repeat), which is the held-out guarantee between training, pools and benchmarks.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 70, 220), "yellow": (235, 200, 20),
}
# Non-uniform frequencies so POPE's "popular" split (most frequent objects) means something.
COLOR_WEIGHTS = [0.4, 0.25, 0.2, 0.15]
# The objects of a scene are shape categories (POPE asks about object categories, as COCO's "dog" or "car"), each
# drawn in one colour (an attribute, as LRV's "a red car"). Non-uniform frequencies give POPE's "popular" split its
# meaning; families of shapes that tend to appear together give its "adversarial" (co-occurrence) split.
SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring", "star"]
SHAPE_WEIGHTS = [0.22, 0.18, 0.16, 0.13, 0.12, 0.1, 0.09]
SHAPE_FAMILIES = [("circle", "ring"), ("square", "cross"), ("triangle", "diamond", "star")]
SAME_FAMILY_PROB = 0.6

CHART_COLORS = [(40, 90, 200), (200, 60, 40), (40, 150, 70), (230, 130, 20), (130, 60, 170)]
GRID = (225, 225, 225)


@dataclass
class Chart:
    kind: str                 # "bar" | "line"
    values: list[int]         # integers 1..9, left to right
    color: tuple[int, int, int]


@dataclass
class Shape:
    color: str
    shape: str
    cx: int
    cy: int
    r: int


@dataclass
class Scene:
    shapes: list[Shape]       # at most one of each shape type, sorted left to right

    def has(self, color: str, shape: str) -> bool:
        return any(s.color == color and s.shape == shape for s in self.shapes)

    def shape_types(self) -> set[str]:
        return {s.shape for s in self.shapes}

    def objects(self) -> list[tuple[str, str]]:
        return [(s.color, s.shape) for s in self.shapes]


def absent_shapes(scene: Scene) -> list[str]:
    return [s for s in SHAPES if s not in scene.shape_types()]


def sample_chart(rng: random.Random) -> Chart:
    """A bar chart (3–4 bars, unique tallest and shortest) or a line chart (4–5 points, clear trend)."""
    color = rng.choice(CHART_COLORS)
    if rng.random() < 0.5:
        n = rng.choice([3, 4])
        while True:
            values = [rng.randint(1, 9) for _ in range(n)]
            if values.count(max(values)) == 1 and values.count(min(values)) == 1:
                return Chart("bar", values, color)
    n = rng.choice([4, 5])
    while True:
        values = [rng.randint(1, 9) for _ in range(n)]
        if abs(values[-1] - values[0]) >= 2:
            return Chart("line", values, color)


_CHART_FIGURES: dict[int, tuple] = {}


def _chart_axes(size: int):
    """One matplotlib Figure per image size with axes and grid set up once; each chart only swaps its data artists."""
    if size not in _CHART_FIGURES:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(size / 100, size / 100), dpi=100)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0.1, 0.08, 0.88, 0.86))
        ax.set_ylim(0, 9.3)
        ax.set_yticks(range(1, 10))
        ax.set_xticks([])
        ax.tick_params(left=False, labelleft=False)
        ax.grid(axis="y", color=tuple(c / 255 for c in GRID), linewidth=0.5, antialiased=False)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_linewidth(0.6)
        _CHART_FIGURES[size] = (fig, canvas, ax)
    return _CHART_FIGURES[size]


def draw_chart(chart: Chart, size: int) -> Image.Image:
    """A matplotlib bar or line chart: axes, a faint grid line per integer 1..9, bars or a line with square markers."""
    fig, canvas, ax = _chart_axes(size)
    for artist in [*ax.patches, *ax.lines]:
        artist.remove()
    ax.set_xlim(-0.5, len(chart.values) - 0.5)
    color = tuple(c / 255 for c in chart.color)
    xs = range(len(chart.values))
    if chart.kind == "bar":
        ax.bar(xs, chart.values, width=0.6, color=color, antialiased=False)
    else:
        ax.plot(xs, chart.values, color=color, linewidth=max(0.6, size / 80), marker="s",
                markersize=max(1.5, size / 24), antialiased=False)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def _weighted_distinct(rng: random.Random, items: list[str], weights: list[float], k: int) -> list[str]:
    items, weights, out = list(items), list(weights), []
    for _ in range(k):
        pick = rng.choices(range(len(items)), weights=weights)[0]
        out.append(items.pop(pick))
        weights.pop(pick)
    return out


def _scene_types(rng: random.Random, n: int) -> list[str]:
    """n distinct shape categories: the first by frequency, each next one from the first one's family with
    probability SAME_FAMILY_PROB (while the family has one left), else by frequency among the rest."""
    types = _weighted_distinct(rng, SHAPES, SHAPE_WEIGHTS, 1)
    family = next(f for f in SHAPE_FAMILIES if types[0] in f)
    while len(types) < n:
        kin = [t for t in family if t not in types]
        if kin and rng.random() < SAME_FAMILY_PROB:
            types.append(rng.choice(kin))
        else:
            rest = [t for t in SHAPES if t not in types]
            types += _weighted_distinct(rng, rest, [SHAPE_WEIGHTS[SHAPES.index(t)] for t in rest], 1)
    return types


def sample_scene(rng: random.Random, size: int, n_shapes: int | None = None, cell: int | None = None) -> Scene:
    """1–3 non-overlapping shapes of distinct categories (so "the square" is unambiguous), colours drawn by weight.

    With ``cell`` (the vision tower's patch size), every shape sits inside one patch cell of the picture, centred up
    to a pixel of jitter, at most one shape per cell: each object is then seen whole by one image token, as a CLIP
    patch sees a part of a photo. Without it, shapes go anywhere (and may straddle patches)."""
    n = n_shapes or rng.choices([1, 2, 3], weights=[0.3, 0.4, 0.3])[0]
    colour = lambda: rng.choices(list(COLORS), weights=COLOR_WEIGHTS)[0]  # noqa: E731
    if cell is not None:
        grid = size // cell
        if grid * grid < n:
            raise ValueError(f"a {size}px picture has {grid * grid} cells of {cell}px, fewer than {n} shapes")
        r = max(2, round(cell * 0.38))
        cells = rng.sample(range(grid * grid), n)
        shapes = [Shape(colour(), t, (c % grid) * cell + cell // 2 + rng.randint(-1, 0),
                        (c // grid) * cell + cell // 2 + rng.randint(-1, 0), r)
                  for t, c in zip(_scene_types(rng, n), cells)]
        return Scene(sorted(shapes, key=lambda s: (s.cx, s.cy)))
    r = max(3, round(size * 0.12))
    while True:
        types = _scene_types(rng, n)
        shapes: list[Shape] = []
        for t in types:
            for _ in range(200):
                cx, cy = rng.randint(r + 1, size - r - 2), rng.randint(r + 1, size - r - 2)
                if all(abs(cx - s.cx) > 2 * r + 2 or abs(cy - s.cy) > 2 * r + 2 for s in shapes):
                    shapes.append(Shape(colour(), t, cx, cy, r))
                    break
        if len(shapes) == n:
            return Scene(sorted(shapes, key=lambda s: (s.cx, s.cy)))


def draw_scene(scene: Scene, size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    for s in scene.shapes:
        x, y, r = s.cx, s.cy, s.r
        box = [x - r, y - r, x + r, y + r]
        fill = COLORS[s.color]
        if s.shape == "circle":
            d.ellipse(box, fill=fill)
        elif s.shape == "ring":
            d.ellipse(box, outline=fill, width=max(1, r // 2))
        elif s.shape == "square":
            d.rectangle(box, fill=fill)
        elif s.shape == "cross":
            w = max(1, r // 2)
            d.rectangle([x - r, y - w, x + r, y + w], fill=fill)
            d.rectangle([x - w, y - r, x + w, y + r], fill=fill)
        elif s.shape == "diamond":
            d.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
        elif s.shape == "star":
            k = max(1, r // 3)
            d.polygon([(x, y - r), (x + k, y - k), (x + r, y), (x + k, y + k), (x, y + r), (x - k, y + k), (x - r, y),
                       (x - k, y - k)], fill=fill)
        else:
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return im


class Images:
    """Draws pictures whose pixel content is unique across the whole world (the held-out guarantee)."""

    def __init__(self, out_dir: Path, size: int, cell: int | None = None):
        self.out_dir, self.size, self.cell = out_dir, size, cell
        self.seen: set[str] = set()
        self.written = 0
        self.draw_seconds = 0.0
        self.tags: list[dict] = []

    def _claim(self, im: Image.Image) -> bool:
        h = hashlib.sha256(im.tobytes()).hexdigest()
        if h in self.seen:
            return False
        self.seen.add(h)
        return True

    def chart(self, rng: random.Random) -> tuple[Chart, Image.Image]:
        while True:
            t = time.perf_counter()
            chart = sample_chart(rng)
            im = draw_chart(chart, self.size)
            self.draw_seconds += time.perf_counter() - t
            if self._claim(im):
                return chart, im

    def scene(self, rng: random.Random, n_shapes: int | None = None) -> tuple[Scene, Image.Image]:
        while True:
            t = time.perf_counter()
            scene = sample_scene(rng, self.size, n_shapes, self.cell)
            im = draw_scene(scene, self.size)
            self.draw_seconds += time.perf_counter() - t
            if self._claim(im):
                return scene, im

    def unique(self, im: Image.Image) -> bool:
        return self._claim(im)

    def save(self, im: Image.Image, rel: str, tags: list[str] | None = None, caption: str | None = None) -> str:
        """Write the picture under out_dir; `tags` (see image_tags) and `caption` are kept in self.tags for the
        tower's pretraining and the projector's alignment."""
        if tags is not None:
            self.tags.append({"image": rel, "tags": tags, "caption": caption})
        t = time.perf_counter()
        path = self.out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, format="PNG")
        self.written += 1
        self.draw_seconds += time.perf_counter() - t
        return rel
