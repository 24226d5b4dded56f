"""``restore_faces`` on a generation: restored when a restorer can run, otherwise the images come back as
they were with a warning saying why and what to install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps

from sdweb.params import GenerationParams
from tests.fakes import FakeEngine, colour_for, make_services


class RestoringEngine(FakeEngine):
    """The fake engine plus a 'restorer' that inverts the picture."""

    def restore_faces(self, image: Any, name: str, codeformer_weight: float = 0.5) -> Any:
        return ImageOps.invert(image.convert("RGB"))


def small(**changes: Any) -> GenerationParams:
    return GenerationParams(prompt="a face", steps=2, width=64, height=64, seed=5, restore_faces=True,
                            **changes)


def test_without_a_model_the_images_come_back_with_a_warning(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path, engine=RestoringEngine())
    try:
        result = services.generation.generate(small())
        assert result.images[0].getpixel((0, 0)) == colour_for(5, "a face")  # unchanged
        assert len(result.warnings) == 1
        warning = result.warnings[0]
        assert warning.startswith("face restoration was skipped: no CodeFormer model in")
        assert "models/Codeformer" in warning
        assert "Face restoration" not in result.infotexts[0]
        assert services.face_restorers.items() == [
            {"name": "CodeFormer", "cmd_dir": str(services.settings.paths.root / "models" / "Codeformer")},
            {"name": "GFPGAN", "cmd_dir": str(services.settings.paths.root / "models" / "GFPGAN")}]
    finally:
        services.worker.close()


def test_without_the_extra_the_warning_says_what_to_install(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path, engine=RestoringEngine())
    folder = services.settings.paths.root / "models" / "GFPGAN"
    folder.mkdir(parents=True)
    (folder / "GFPGANv1.4.pth").write_bytes(b"weights")
    services.options.update({"face_restoration_model": "GFPGAN"})
    try:
        import spandrel  # noqa: F401
    except Exception:
        result = services.generation.generate(small())
        assert "pip install 'sdweb[upscalers]'" in result.warnings[0]
    else:
        pytest.skip("spandrel is installed here")
    finally:
        services.worker.close()


def test_when_a_restorer_can_run_the_saved_images_are_restored(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sdweb.engine.face_restore.restoration_problem", lambda _library, _name: None)
    services, _ = make_services(tmp_path, engine=RestoringEngine())
    try:
        result = services.generation.generate(small())
        expected = tuple(255 - value for value in colour_for(5, "a face"))
        assert result.images[0].getpixel((0, 0)) == expected and result.warnings == []
        assert "Face restoration: CodeFormer" in result.infotexts[0]
        with Image.open(result.paths[0]) as saved:
            assert saved.convert("RGB").getpixel((0, 0)) == expected
        plain = services.generation.generate(small().model_copy(update={"restore_faces": False}))
        assert plain.images[0].getpixel((0, 0)) == colour_for(5, "a face")
    finally:
        services.worker.close()


def test_extras_blend_the_restored_faces_by_visibility(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sdweb.engine.face_restore.restoration_problem", lambda _library, _name: None)
    services, _ = make_services(tmp_path, engine=RestoringEngine())
    try:
        source = Image.new("RGB", (32, 32), (200, 100, 0))
        image, lines, warnings = services.face_restorers.restore_for_extras(
            source, gfpgan_visibility=0.0, codeformer_visibility=0.5, codeformer_weight=0.3)
        assert warnings == [] and lines == ["CodeFormer w: 0.3, CodeFormer visibility: 0.5"]
        # Half way between (200, 100, 0) and its inverse (55, 155, 255).
        assert all(abs(value - 127.5) <= 1 for value in image.getpixel((0, 0)))
    finally:
        services.worker.close()
