"""The live widget of human-guided generation: a grid of candidate previews, updated after every outer step, with
keep toggles, a class box and a guidance slider per candidate, Branch, Continue and Stop buttons, and a counter of
NFEs spent and saved. Sampling runs in a thread (the kernel stays free), as `widgets.LiveRun` does; tests drive it
from Python (`button.click()`, then `join()`).
"""
from __future__ import annotations

import threading
from typing import Callable

import torch

from .guided import Guided
from .sampling import Event, StopSampling
from .widgets import blank_png, image_grid, png


class GuidedWidget:
    """ipywidgets front end of a `Guided` session: choices made in the grid apply when Continue is pressed.

    Only what the person changed is applied: a class box or slider shows a candidate's value clamped to its range
    (the null class of an unconditional candidate, a guidance scale above `max_guidance`), and an untouched control
    leaves the candidate as it is.
    """

    def __init__(self, session: Guided, render: Callable[[torch.Tensor], bytes] | None = None,
                 max_guidance: float = 10.0):
        import ipywidgets as W

        self.W, self.session, self.max_guidance = W, session, max_guidance
        self.render = render or (lambda x0: png(image_grid(session.model.decode(x0), scale=3)))
        self._stop, self.thread, self.stopped, self.error = threading.Event(), None, False, None
        self.panels: dict[int, dict] = {}
        self.continue_button = W.Button(description="Continue", button_style="primary", tooltip="one outer step")
        self.stop_button = W.Button(description="Stop", tooltip="end here: the previews are the images")
        self.continue_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.progress = W.IntProgress(min=0, max=sum(session.step_nfe), description="NFE")
        self.counter = W.HTML()
        self.grid = W.HBox(layout=W.Layout(flex_flow="row wrap", max_width="100%"))
        self.widget = W.VBox([W.HBox([self.continue_button, self.stop_button, self.progress]), self.counter,
                              self.grid])
        self.refresh()

    # --- the grid -----------------------------------------------------------------------------------------------

    def _panel(self, i: int) -> dict:
        W, c = self.W, self.session.candidates[i]
        p = {"image": W.Image(format="png", layout=W.Layout(width="96px", height="auto")), "label": W.HTML(),
             "keep": W.Checkbox(value=True, description="keep", indent=False, layout=W.Layout(width="auto")),
             "branch": W.Button(description="Branch", layout=W.Layout(width="auto"), tooltip="one more continuation")}
        if self.session.null is not None and self.session.num_classes is not None:
            p["class"] = W.BoundedIntText(value=int(c.cond.reshape(-1)[0]), min=0, max=self.session.num_classes - 1,
                                          description="class", layout=W.Layout(width="130px"))
        if self.session.null is not None:
            p["guidance"] = W.FloatSlider(value=c.guidance, min=0.0, max=self.max_guidance, step=0.5,
                                          description="w", layout=W.Layout(width="170px"))
        p["shown"] = {k: p[k].value for k in ("class", "guidance") if k in p}  # as shown: after any clamping
        p["branch"].on_click(lambda _, i=i: self.branch(i))
        controls = [p[k] for k in ("label", "image", "keep", "class", "guidance", "branch") if k in p]
        p["box"] = W.VBox(controls, layout=W.Layout(border="1px solid #ccc", padding="4px", margin="2px"))
        return p

    def refresh(self) -> None:
        """Show every candidate's latest preview and state, and the NFE counter."""
        s = self.session
        for i, c in s.candidates.items():
            if i not in self.panels:
                self.panels[i] = self._panel(i)
            p = self.panels[i]
            p["image"].value = self.render(c.previews[-1]) if c.previews else blank_png((24, 24))
            if c.dropped is not None:
                state = f"dropped before step {c.dropped + 1}"
            else:
                state = "done" if s.done else f"step {s.step_index} of {len(s.grid)}"
            origin = f", branch of #{c.parent}" if c.parent is not None else ""
            p["label"].value = f"<b>#{i}</b> <small>{state}{origin}</small>"
            frozen = c.dropped is not None or s.done or self.stopped
            for k in ("keep", "class", "guidance", "branch"):
                if k in p:
                    p[k].disabled = frozen
        self.grid.children = [self.panels[i]["box"] for i in s.candidates]
        n = s.nfe
        self.counter.value = (f"NFEs: {n['calls']} network calls, {n['image_nfe']} image-NFEs spent, "
                              f"<b>{n['saved']} saved</b> of {n['planned_image_nfe']} planned")
        self.continue_button.disabled = s.done or self.stopped or not s.alive

    # --- actions ------------------------------------------------------------------------------------------------

    def branch(self, i: int) -> None:
        if self.running:
            return
        self.session.branch(i, 2)
        self.refresh()

    def apply(self) -> None:
        """The grid's choices, made in the session: drop what is unticked, then the classes and guidance scales the
        person changed (a control still showing what it showed is no choice, even where it clamped the value)."""
        s = self.session
        for i in s.alive:
            p = self.panels[i]
            if not p["keep"].value:
                s.drop([i])
                continue
            if "class" in p and p["class"].value != p["shown"]["class"]:
                s.condition(i, label=int(p["class"].value))
            if "guidance" in p and p["guidance"].value != p["shown"]["guidance"]:
                s.condition(i, guidance=float(p["guidance"].value))
            p["shown"] = {k: p[k].value for k in ("class", "guidance") if k in p}

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        """Continue: apply the choices and run one outer step in a thread."""
        if self.running or self.stopped or self.session.done:
            return
        self.apply()
        if not self.session.alive:
            self.counter.value += "<br>every candidate is dropped: nothing to continue"
            self.refresh()
            return
        self.continue_button.disabled = True
        self.thread = threading.Thread(target=self._step, daemon=True)
        self.thread.start()

    def _on_event(self, event: Event) -> None:
        if self._stop.is_set():
            raise StopSampling
        self.progress.value = min(event.nfe, self.progress.max)

    def _step(self) -> None:
        try:
            self.session.step(self._on_event)
        except StopSampling:
            self.stopped = True  # the step was cut short and undone: the last finished step's previews are the result
        except Exception as e:  # shown in the page rather than lost in the thread
            self.error = e
        self.refresh()
        if self.error is not None:
            self.counter.value += f"<br><b>error</b>: {self.error}"

    def stop(self) -> None:
        """End the session: a running step is cut short and undone (its NFEs are counted as interrupted); the
        latest previews are the images."""
        self._stop.set()
        self.stopped = True
        if not self.running:
            self.refresh()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
