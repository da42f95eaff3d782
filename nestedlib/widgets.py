"""Figures that scrub through NFEs: precomputed frames linked in the browser, so they work in a static page too.

`nfe_scrubber` stacks one PNG per NFE value in an ipywidgets `Stack` and links the stack's index to a slider with
`jslink`: the link runs in the browser, so the rendered book needs no kernel. `LiveRun` is the kernel-side
counterpart: it samples in a background thread and shows each outer x̂_0 as it arrives, with a Stop button.
"""
from __future__ import annotations

import io
import threading
from typing import Callable, Sequence

import numpy as np
import torch

from .sampling import Event, Result, StopSampling


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (B, C, H, W) -> uint8 (B, H, W, C) in [0, 255]."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int = 2) -> np.ndarray:
    """A grid of images in [-1, 1] as one uint8 array (H, W, C), upscaled by `scale` with nearest neighbours."""
    imgs = to_uint8(x)
    b, h, w, c = imgs.shape
    nrow = nrow or int(np.ceil(np.sqrt(b)))
    ncol = int(np.ceil(b / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = imgs[i]
    return grid.repeat(scale, 0).repeat(scale, 1)


def png(array: np.ndarray) -> bytes:
    """Encode a uint8 image (H, W) or (H, W, 1 | 3) as PNG bytes."""
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def figure_png(fig, dpi: int = 72) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed, so notebooks do not show it twice)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def blank_png(shape: tuple[int, int], value: int = 235) -> bytes:
    """A flat grey frame: what a sampler that has not finished any x̂_0 yet can show."""
    return png(np.full(shape, value, dtype=np.uint8))


def frames_at(result: Result, nfes: Sequence[int], render: Callable[[torch.Tensor], bytes], blank: bytes) -> list[bytes]:
    """One frame per NFE value: the preview a user stopping there holds (`Result.at`), or `blank` before the first.

    Each distinct preview is rendered once, however many NFE values show it.
    """
    cache: dict[int, bytes] = {}
    frames = []
    for n in nfes:
        if n < result.previews[0].nfe:
            frames.append(blank)
            continue
        preview = result.at(n)
        if preview.nfe not in cache:
            cache[preview.nfe] = render(preview.x0)
        frames.append(cache[preview.nfe])
    return frames


def png_width(frame: bytes) -> int:
    """The pixel width of a PNG, read from its IHDR header (bytes 16-20)."""
    if frame[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("frames must be PNG bytes (see `png` and `figure_png`)")
    return int.from_bytes(frame[16:20], "big")


def shown_width(width: str, natural: int) -> str:
    """The CSS width of a frame asked to be `width` wide: never more than its own `natural` pixels."""
    if width.endswith("px"):  # computed here, so that the panel around the frame is no wider than the frame
        return f"{min(float(width[:-2]), natural):g}px"
    return f"min({width}, {natural}px)"


def nfe_scrubber(panels: dict[str, Sequence[bytes]], nfes: Sequence[int], width: str = "260px"):
    """A slider over NFE values and, per panel, a Stack of PNG frames whose shown index is jslinked to the slider.

    Frames are shown `width` wide but never wider than their own pixels or than the page (on a phone they scale
    down, keeping their aspect ratio); the slider shrinks with the page and the panels wrap instead of scrolling.
    """
    import ipywidgets as W

    nfes = list(nfes)
    for name, frames in panels.items():
        if len(frames) != len(nfes):
            raise ValueError(f"panel {name!r} has {len(frames)} frames for {len(nfes)} NFE values; give one per value")
    slider = W.SelectionSlider(options=nfes, value=nfes[-1], description="NFE", continuous_update=True,
                               layout=W.Layout(width="420px", max_width="100%"))
    columns = []
    for name, frames in panels.items():
        images = [W.Image(value=f, format="png", layout=W.Layout(width=shown_width(width, png_width(f)),
                                                                 max_width="100%", height="auto")) for f in frames]
        stack = W.Stack(images, selected_index=len(nfes) - 1, layout=W.Layout(max_width="100%"))
        W.jslink((slider, "index"), (stack, "selected_index"))  # runs in the browser: no kernel needed
        columns.append(W.VBox([W.HTML(f"<b>{name}</b>"), stack], layout=W.Layout(min_width="0", max_width="100%")))
    return W.VBox([slider, W.HBox(columns, layout=W.Layout(flex_flow="row wrap", max_width="100%"))],
                  layout=W.Layout(max_width="100%"))


class LiveRun:
    """Samplers run in a background thread; each panel shows its latest outer x̂_0 and NFE as it arrives; Stop ends them."""

    def __init__(self, runs: dict[str, Callable[..., Result]], render: Callable[[torch.Tensor], bytes], total_nfe: int):
        import ipywidgets as W

        self.runs, self.render, self.results = runs, render, {}
        self._stop = threading.Event()
        self.images = {name: W.Image(format="png", layout=W.Layout(width="260px", max_width="100%", height="auto")) for name in runs}
        self.labels = {name: W.HTML(f"<b>{name}</b>: waiting") for name in runs}
        self.progress = {name: W.IntProgress(min=0, max=total_nfe, description="NFE") for name in runs}
        self.start_button, self.stop_button = W.Button(description="Start"), W.Button(description="Stop")
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self._stop.set())
        panels = [W.VBox([self.labels[n], self.progress[n], self.images[n]]) for n in runs]
        self.widget = W.VBox([W.HBox([self.start_button, self.stop_button]), W.HBox(panels)])
        self.threads: list[threading.Thread] = []

    def _callback(self, name: str) -> Callable[[Event], None]:
        def on_event(event: Event) -> None:
            if self._stop.is_set():
                raise StopSampling
            self.progress[name].value = event.nfe
            if event.depth == 0:  # a finished outer x̂_0: the anytime preview
                self.images[name].value = self.render(event.x0)
                self.labels[name].value = f"<b>{name}</b>: preview at {event.nfe} NFEs"
        return on_event

    def _run(self, name: str) -> None:
        try:
            self.results[name] = self.runs[name](callback=self._callback(name))
            state = "stopped" if self.results[name].stopped else "done"
            self.labels[name].value = f"<b>{name}</b>: {state} at {self.results[name].previews[-1].nfe} NFEs"
        except StopSampling:
            self.labels[name].value = f"<b>{name}</b>: stopped before its first preview"

    def start(self) -> None:
        self._stop.clear()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in self.runs]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            t.join(timeout)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
