"""Widgets: frames come from the run's own previews (nothing is re-sampled), sliders are linked in the browser."""
import pytest
import torch

from nestedlib import nested, run, vanilla
from nestedlib.widgets import LiveRun, frames_at, image_grid, nfe_scrubber, png, png_width, shown_width


def test_frames_are_the_previews_held_at_each_nfe(toy_net, schedule):
    result = run(nested(vanilla(toy_net, schedule, 4, transition="ddpm"), 5), torch.randn(10, 2, dtype=torch.float64), generator=torch.Generator())
    rendered = []
    frames = frames_at(result, [1, 3, 4, 5, 8, 20], lambda x0: rendered.append(x0) or str(len(rendered)).encode(), b"-")
    assert frames == [b"-", b"-", b"1", b"1", b"2", b"3"]  # blank before the first preview, then the preview held
    assert len(rendered) == 3 and all(any(x is p.x0 for p in result.previews) for x in rendered)  # each rendered once


def test_scrubber_links_slider_and_stacks_in_the_browser():
    import ipywidgets as W

    frames = [png(image_grid(torch.full((4, 1, 8, 8), v))) for v in (-1.0, 0.0, 1.0)]
    box = nfe_scrubber({"a": frames, "b": frames[::-1]}, [10, 20, 30])
    slider = box.children[0]
    assert isinstance(slider, W.SelectionSlider) and slider.options == (10, 20, 30)
    stacks = [col.children[1] for col in box.children[1].children]
    assert all(isinstance(s, W.Stack) and s.selected_index == 2 for s in stacks)
    # the slider-to-stack links run in the browser (jslink): tests/test_book.py moves the slider in Chromium
    with pytest.raises(ValueError, match="one per value"):
        nfe_scrubber({"a": frames[:2]}, [10, 20, 30])


def test_scrubber_fits_narrow_screens_and_never_stretches_frames():
    frames = [png(image_grid(torch.zeros(4, 1, 8, 8), scale=s)) for s in (2, 2, 3)]  # 38, 38 and 57 px wide
    assert [png_width(f) for f in frames] == [38, 38, 57]
    box = nfe_scrubber({"a": frames, "b": frames}, [10, 20, 30], width="260px")
    slider, panels = box.children
    assert slider.layout.max_width == "100%"  # the slider (and its NFE readout) shrinks with the page
    assert panels.layout.flex_flow == "row wrap"  # panels wrap on a phone instead of scrolling sideways
    images = panels.children[0].children[1].children
    # shown `width` wide, but never wider than the frame's own pixels or than the page; the height follows
    assert [i.layout.width for i in images] == ["38px", "38px", "57px"]
    assert all(i.layout.max_width == "100%" and i.layout.height == "auto" for i in images)
    narrow = nfe_scrubber({"a": frames}, [10, 20, 30], width="50px").children[1].children[0].children[1].children
    assert [i.layout.width for i in narrow] == ["38px", "38px", "50px"]
    assert shown_width("20em", 57) == "min(20em, 57px)"
    with pytest.raises(ValueError, match="PNG"):
        nfe_scrubber({"a": [b"not a png"] * 3}, [10, 20, 30])


def test_image_grid_layout():
    grid = image_grid(torch.zeros(5, 1, 8, 8), nrow=3, pad=1, scale=2)
    assert grid.shape == (2 * (2 * 9 + 1), 2 * (3 * 9 + 1), 1) and grid.dtype.name == "uint8"


def test_live_run_stops_on_request(toy_net, schedule):
    from functools import partial

    proc = nested(vanilla(toy_net, schedule, 20, transition="ddpm"), 5)
    live = LiveRun({"nested": partial(run, proc, torch.randn(50, 2, dtype=torch.float64), generator=torch.Generator())},
                   render=lambda x0: b"png", total_nfe=100)
    live.stop()  # Stop pressed: the run ends at its first event, before any preview
    live._run("nested")
    assert "stopped" in live.labels["nested"].value
    live.start()  # Start clears the stop request
    live.join()
    assert live.results["nested"].nfe == 100 and live.progress["nested"].value == 100
