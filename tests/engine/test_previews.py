"""Live previews (sdweb.engine.previews): TAESD from models/VAE-approx, else the cheap approximation."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdweb.engine.generate import preview_image, run_txt2img
from sdweb.engine.img2img import run_img2img
from sdweb.engine.previews import Previewer, TaesdDecoder, TaesdLibrary, load_taesd_decoder, preview_scope
from sdweb.engine.runtime import Engine
from sdweb.params import Img2ImgParams, JobControl, StepProgress
from tests.engine.conftest import tiny_params


def tiny_taesd(seed: int = 5) -> TaesdDecoder:
    """A TAESD-shaped decoder, 8 channels wide instead of 64 (the loader reads the width from the file)."""
    torch.manual_seed(seed)
    return TaesdDecoder(latent_channels=4, width=8).eval()


def write_taesd(folder: Path, name: str = "taesd_decoder.safetensors", seed: int = 5) -> TaesdDecoder:
    folder.mkdir(parents=True, exist_ok=True)
    decoder = tiny_taesd(seed)
    state = {key: value.contiguous() for key, value in decoder.state_dict().items()}
    if name.endswith(".safetensors"):
        save_file(state, str(folder / name))
    else:
        torch.save(state, folder / name)
    return decoder


def expected(decoder: TaesdDecoder, latents: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        rgb = decoder(latents.float()).clamp(0, 1)[0]
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def same_picture(picture: Any, wanted: np.ndarray) -> bool:
    """The decoder's picture: equal up to one level of rounding (the previewer's faster path adds up the
    same products in another order)."""
    found = np.asarray(picture).astype(np.int16)
    return found.shape == wanted.shape and int(np.abs(found - wanted).max()) <= 1


def previews_of(model: Any, samplers: Any, previewer: Previewer | None, **changes: Any) -> list[Any]:
    seen: list[StepProgress] = []
    with preview_scope(previewer):
        run_txt2img(model, tiny_params(steps=3, **changes), samplers=samplers, control=JobControl(),
                    on_step=seen.append, preview_every=1)
    return [step.preview for step in seen if step.preview is not None]


def test_the_preview_comes_from_the_taesd_decoder_in_vae_approx(tmp_path: Path, sd1_model, samplers) -> None:
    folder = tmp_path / "models" / "VAE-approx"
    decoder = write_taesd(folder)
    library = TaesdLibrary(folder)
    previews = previews_of(sd1_model, samplers, Previewer("TAESD", library))
    assert len(previews) == 2  # steps 1 and 2 of 3 (the last step's picture is the image itself)
    # 64x64 image: 32x32 latents on the tiny model, 8x larger through TAESD (the cheap one is 32x32).
    assert previews[0].size == (256, 256)
    # It is that decoder's picture of the latents, not another approximation.
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    picture = Previewer("TAESD", library)(latents, sdxl=False)
    assert same_picture(picture, expected(decoder, latents))
    # "Approx NN" uses TAESD too (A1111's own approximation network is not supported).
    assert Previewer("Approx NN", library)(latents, sdxl=False).size == (64, 64)
    # "Approx cheap" ignores it.
    assert Previewer("Approx cheap", library)(latents, sdxl=False).size == (8, 8)


def test_img2img_previews_use_it_too(tmp_path: Path, sd1_model, samplers) -> None:
    from PIL import Image

    folder = tmp_path / "VAE-approx"
    write_taesd(folder)
    seen: list[StepProgress] = []
    params = Img2ImgParams(**{**tiny_params(steps=4).model_dump(), "denoising_strength": 0.75})
    with preview_scope(Previewer("TAESD", TaesdLibrary(folder))):
        run_img2img(sd1_model, params, [Image.new("RGB", (64, 64), "gray")], samplers=samplers,
                    control=JobControl(), on_step=seen.append, preview_every=1)
    sizes = {step.preview.size for step in seen if step.preview is not None}
    assert sizes == {(256, 256)}


def test_a_pth_file_loads_as_weights_only(tmp_path: Path) -> None:
    decoder = write_taesd(tmp_path, "taesdxl_decoder.pth", seed=9)
    library = TaesdLibrary(tmp_path)
    latents = torch.randn(1, 4, 4, 4)
    assert library.find("sd") is None
    picture = Previewer("TAESD", library)(latents, sdxl=True)
    assert same_picture(picture, expected(decoder, latents))


class _Payload:
    """Pickles as a call to os.mkdir: loading it with plain pickle would create a folder."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.target),)


def test_a_pth_with_pickled_code_is_refused_without_running_it(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "VAE-approx"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    state = {key: value for key, value in tiny_taesd().state_dict().items()}
    state["payload"] = _Payload(marker)  # type: ignore[assignment]
    torch.save(state, folder / "taesd_decoder.pth")
    with pytest.raises(ValueError, match="weights only"):
        load_taesd_decoder(folder / "taesd_decoder.pth")
    latents = torch.randn(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING, logger="sdweb.engine.previews"):
        picture = Previewer("TAESD", TaesdLibrary(folder))(latents, sdxl=False)
    assert not marker.exists()
    assert picture.size == (8, 8)  # the cheap approximation instead
    assert np.array_equal(np.asarray(picture), np.asarray(preview_image(latents, sdxl=False)))
    assert "taesd_decoder.pth" in caplog.text


def test_without_the_file_the_cheap_preview_is_used_and_said_once(tmp_path: Path, sd1_model, samplers,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sdweb.engine.previews"):
        previews = previews_of(sd1_model, samplers, Previewer("TAESD", TaesdLibrary(tmp_path / "none")))
    assert previews[0].size == (32, 32)
    assert caplog.text.count("no taesd_decoder") == 1
    # With A1111's default "Approx NN" (TAESD only where its file is) that is no warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdweb.engine.previews"):
        previews_of(sd1_model, samplers, Previewer("Approx NN", TaesdLibrary(tmp_path / "none")))
    assert "taesd" not in caplog.text


def test_full_previews_decode_with_the_models_vae(sd1_model, samplers) -> None:
    previews = previews_of(sd1_model, samplers, Previewer("Full"))
    assert previews[0].size == (64, 64)


def test_the_engine_takes_the_method_from_the_setting(tmp_path: Path) -> None:
    class Options:
        def __init__(self, value: str) -> None:
            self.value = value

        def get(self, key: str) -> Any:
            if key == "show_progress_type":
                return self.value
            raise KeyError(key)

    library = TaesdLibrary(tmp_path)
    for value, method in (("TAESD", "TAESD"), ("Full", "Full"), ("nonsense", "Approx NN")):
        engine = Engine(None, None, None, None, runtime=None, options=Options(value),  # type: ignore[arg-type]
                        previews=library)
        previewer = engine._previewer()
        assert previewer.method == method
        assert previewer.library is library


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fast_decode_draws_the_same_picture_as_the_decoder(dtype: torch.dtype) -> None:
    # The previewer's decode fuses each convolution with its ReLU / residual add on the CPU; the picture must
    # be the decoder's own, in both CPU dtypes and memory layouts, for a batch.
    decoder = tiny_taesd(seed=3).to(dtype=dtype)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4)).to(dtype)
    with torch.inference_mode():
        for layout in (torch.contiguous_format, torch.channels_last):
            decoder.to(memory_format=layout)
            plain = decoder(latents).float()
            fast = decoder.decode(latents).float()
            assert fast.shape == (2, 3, 64, 64)
            if dtype == torch.float32:
                torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
            else:  # bf16 rounds at different points; a preview pixel moves by at most a few levels
                assert (fast - plain).abs().max() < 0.05


def test_without_the_fused_convolutions_the_decoder_runs_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdweb.engine import previews

    def missing(*_args: Any, **_kwargs: Any) -> torch.Tensor:
        raise RuntimeError("no such op")

    monkeypatch.setattr(previews, "_FUSION", {})
    monkeypatch.setattr(previews, "_conv", missing)
    decoder = tiny_taesd(seed=6).to(memory_format=torch.channels_last)  # as the library keeps it on the CPU
    latents = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        assert torch.equal(decoder.decode(latents), decoder(latents))
    assert previews._FUSION == {torch.float32: False}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN (the fused CPU path) missing")
def test_an_upsample_and_its_convolution_run_as_one_small_convolution() -> None:
    import torch.nn.functional as F

    from sdweb.engine.previews import _fusion_works, _upsample_conv, phase_weight

    generator = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, 5, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 6, 3, 3, generator=generator)
    wanted = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)
    phases = phase_weight(weight).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(_upsample_conv(x, phases), wanted, rtol=1e-5, atol=1e-5)
    assert _fusion_works(torch.float32)  # so the previewer takes this path on the CPU
