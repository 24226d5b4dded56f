"""Settings tab: only changed values are applied, all or nothing, with a message either way."""

from __future__ import annotations

from pathlib import Path

from sdweb.config import OptionsStore
from sdweb.option_catalog import BUILTIN_OPTIONS
from sdweb.ui.tabs.settings import apply_settings, changed_options, from_form, to_form


def _store(tmp_path: Path) -> OptionsStore:
    return OptionsStore(tmp_path / "config.json", BUILTIN_OPTIONS)


def test_applies_changes_and_lists_them(tmp_path: Path) -> None:
    options = _store(tmp_path)
    message, ok = apply_settings(options, {"jpeg_quality": 90.0, "samples_format": "webp", "grid_save": True})
    assert ok and "2 changes" in message and "jpeg_quality" not in message.split(":")[0]
    assert options.get("jpeg_quality") == 90 and options.get("samples_format") == "webp"
    assert '"jpeg_quality": 90' in (tmp_path / "config.json").read_text()
    assert apply_settings(options, {"jpeg_quality": 90}) == ("Nothing changed.", True)


def test_one_invalid_value_refuses_the_whole_change(tmp_path: Path) -> None:
    options = _store(tmp_path)
    message, ok = apply_settings(options, {"samples_format": "webp", "jpeg_quality": 500})
    assert not ok and "jpeg_quality" in message and "nothing was changed" in message
    assert options.get("samples_format") == "png" and options.get("jpeg_quality") == 80


def test_form_values_convert_to_the_option_types() -> None:
    specs = {spec.key: spec for spec in BUILTIN_OPTIONS}
    assert from_form(specs["CLIP_stop_at_last_layers"], 2.0) == 2
    assert from_form(specs["eta_ancestral"], 1) == 1.0
    assert (
        changed_options(
            list(BUILTIN_OPTIONS), {"CLIP_stop_at_last_layers": 2}, {"CLIP_stop_at_last_layers": 2.0}
        )
        == {}
    )


def test_list_options_are_edited_as_comma_separated_text() -> None:
    from sdweb.services.factory import EXTRA_OPTIONS

    spec = next(spec for spec in EXTRA_OPTIONS if spec.key == "disabled_extensions")
    assert to_form(spec, ["a", "b"]) == "a, b"
    assert from_form(spec, " a, b ,, ") == ["a", "b"]


def test_a_bad_value_names_the_option_and_what_it_may_hold(tmp_path: Path) -> None:
    options = _store(tmp_path)

    def vae_choice(value: str) -> str:  # as ModelService.vae_choice answers with an empty VAE folder
        if value in ("Automatic", "None"):
            return value
        raise LookupError("option 'sd_vae' must be Automatic, None (no VAE files in models/VAE)")

    options.bind("sd_vae", check=vae_choice)
    message, ok = apply_settings(options, {"sd_vae": "../../etc/", "jpeg_quality": 90})
    assert not ok and "sd_vae" in message and "Automatic" in message and "nothing was changed" in message
    assert options.get("jpeg_quality") == 80 and not (tmp_path / "config.json").exists()


def test_output_folders_outside_the_data_folder_need_a_local_settings_tab(tmp_path: Path) -> None:
    options = _store(tmp_path)
    elsewhere = str(tmp_path.parent / "elsewhere")
    message, ok = apply_settings(options, {"outdir_txt2img_samples": elsewhere}, allow_outside=False)
    assert not ok and "outdir_txt2img_samples" in message and "relative to the data folder" in message
    message, ok = apply_settings(options, {"outdir_txt2img_samples": "../elsewhere"})
    assert not ok and "'..'" in message
    message, ok = apply_settings(options, {"outdir_txt2img_samples": elsewhere}, allow_outside=True)
    assert ok and options.get("outdir_txt2img_samples") == elsewhere


def test_only_loopback_clients_count_as_local() -> None:
    from sdweb.ui.tabs.settings import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("192.168.1.20") and not is_loopback(None) and not is_loopback("example.org")
