"""NestedPipeline, a few lines for a diffusers user: the README's block run as written on tiny random components
(only the model name changed), previews after every outer step, the pipeline's progress bar, and pipe._interrupt."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_pipelines as tiny
from nestedlib import run
from nestedlib.nested_pipeline import NestedPipeline
from nestedlib.pipelines import pipeline_model, samplers

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_NAME = "stabilityai/stable-diffusion-xl-base-1.0"


def _readme_block() -> str:
    text = README.read_text()
    section = text.split("## With a diffusers pipeline you already have", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_lines_run_as_written_with_only_the_model_name_swapped(tmp_path, monkeypatch):
    code = _readme_block()
    assert code.count(HUB_NAME) == 1 and len(code.strip().splitlines()) <= 10
    folder = tmp_path / "tiny-sdxl"
    tiny.sdxl().save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(HUB_NAME, str(folder)), "README.md", "exec"), {})
    saved = sorted(p.name for p in tmp_path.glob("astronaut_*.png"))
    assert saved == [f"astronaut_{n:02d}.png" for n in (6, 12, 18, 24, 30)]
    # the saved-and-reloaded pipeline gives what the in-memory one gives (tokenizers and weights survive the trip)
    from PIL import Image

    pipe = tiny.sdxl()
    last = list(NestedPipeline(pipe, outer=5, inner=6).previews("an astronaut riding a horse",
                                                                generator=torch.Generator().manual_seed(0)))[-1]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "astronaut_30.png")), np.asarray(last.images[0]))


@pytest.fixture(scope="module")
def sd3():
    return tiny.sd3()


def test_previews_are_the_nested_run_decoded_after_every_outer_step(sd3):
    nested = NestedPipeline(sd3, outer=3, inner=2)
    steps = list(nested.previews(tiny.PROMPTS, generator=torch.Generator().manual_seed(0), height=16, width=16,
                                 output_type="pt"))
    assert [s.nfe for s in steps] == [2, 4, 6] and [s.step for s in steps] == [0, 1, 2]
    model = pipeline_model(sd3, tiny.PROMPTS, height=16, width=16)
    result = run(samplers(model, 3, 2)["nested"], model.noise(torch.Generator().manual_seed(0)))
    for s, p in zip(steps, result.previews):
        assert torch.equal(s.latents, p.x0)
        assert torch.allclose(s.images, (model.decode(p.x0) / 2 + 0.5).clamp(0, 1), atol=1e-6)
    out = nested(tiny.PROMPTS, generator=torch.Generator().manual_seed(0), height=16, width=16, output_type="np")
    assert out.nfe == 6 and len(out.previews) == 3 and not out.interrupted
    assert out.images.shape == (2, 16, 16, 3) and np.array_equal(out.images, out.previews[-1].images)


def test_the_pipelines_progress_bar_counts_nfes_and_honours_its_config(sd3, capfd):
    nested = NestedPipeline(sd3, outer=3, inner=2)
    capfd.readouterr()
    sd3.set_progress_bar_config(desc="nested sd3")
    try:
        nested(tiny.PROMPTS, height=16, width=16, output_type="latent")
    finally:
        sd3.set_progress_bar_config(disable=True)
    err = capfd.readouterr().err
    assert "nested sd3" in err and "6/6" in err
    nested(tiny.PROMPTS, height=16, width=16, output_type="latent")
    assert "6/6" not in capfd.readouterr().err  # disable=True: no bar


def test_pipe_interrupt_keeps_the_last_finished_image(sd3):
    def stop_in_the_second_outer_step(event):
        if event.nfe == 3:
            sd3._interrupt = True  # as a callback_on_step_end would set it

    nested = NestedPipeline(sd3, outer=3, inner=2)
    out = nested(tiny.PROMPTS, height=16, width=16, output_type="latent", callback=stop_in_the_second_outer_step)
    assert out.interrupted and out.nfe == 2 and len(out.previews) == 1
    again = nested(tiny.PROMPTS, height=16, width=16, output_type="latent")  # the flag is reset at each call
    assert not again.interrupted and again.nfe == 6


def test_flux_and_dit_through_the_same_lines():
    flux = NestedPipeline(tiny.flux(), outer=2, inner=2)
    images = flux("a red dog", height=16, width=16, generator=torch.Generator().manual_seed(0)).images
    assert len(images) == 1 and images[0].size == (16, 16)
    dit = NestedPipeline(tiny.dit(), outer=2, inner=2)
    out = dit([1, 7], generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 2 and out.images[0].size == (16, 16) and [p.nfe for p in out.previews] == [2, 4]


def test_one_channel_images_come_back_as_the_pipeline_converts_them():
    """The bundled digit models decode to one channel: PIL images in mode "L", as DiTPipeline's numpy_to_pil gives."""
    from nestedlib import models

    pipe = models.load("mnist-dit")
    pipe.set_progress_bar_config(disable=True)
    nested = NestedPipeline(pipe, outer=2, inner=2)
    pil = nested([3, 7], guidance_scale=1.5, generator=torch.Generator().manual_seed(0)).images
    arrays = nested([3, 7], guidance_scale=1.5, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert arrays.shape == (2, 32, 32, 1) and [im.mode for im in pil] == ["L", "L"]
    assert all(np.array_equal(np.asarray(im), np.asarray(ref)) for im, ref in zip(pil, pipe.numpy_to_pil(arrays)))
