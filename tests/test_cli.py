"""The command line: A1111 flags map onto settings; bad values and busy ports are one-line errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sdweb.cli import UsageError, build_parser, check_port_free, settings_from_args

ROOT = Path(__file__).resolve().parent.parent


def settings_for(*argv: str):
    return settings_from_args(build_parser().parse_args(list(argv)))


def test_defaults_are_local_only(tmp_path: Path) -> None:
    settings = settings_for("--data-dir", str(tmp_path))
    assert settings.host == "127.0.0.1" and settings.port == 7860
    assert not settings.api and not settings.listen
    assert settings.paths.outputs_dir == tmp_path.resolve() / "outputs"
    assert settings.paths.ckpt_dirs[0] == tmp_path.resolve() / "models" / "Stable-diffusion"


def test_a1111_flags_are_understood(tmp_path: Path) -> None:
    settings = settings_for("--data-dir", str(tmp_path), "--listen", "--port", "7861", "--xformers",
                            "--medvram", "--no-half", "--use-cpu", "all", "--api-auth", "a:b",
                            "--gradio-auth", "u:p,v:q", "--ckpt-dir", str(tmp_path / "more"))
    assert settings.host == "0.0.0.0" and settings.port == 7861  # --listen: all interfaces
    assert settings.attention == "xformers" and settings.offload == "model"
    assert settings.precision == "fp32" and settings.device == "cpu"
    assert settings.gradio_auth == (("u", "p"), ("v", "q")) and settings.api_auth == (("a", "b"),)
    assert settings.paths.ckpt_dirs[-1] == (tmp_path / "more").resolve()


def test_ui_credentials_protect_the_api_when_it_has_none(tmp_path: Path) -> None:
    settings = settings_for("--data-dir", str(tmp_path), "--gradio-auth", "u:p")
    assert settings.effective_api_auth == (("u", "p"),)


def test_cmd_flags_never_show_passwords(tmp_path: Path) -> None:
    flags = settings_for("--data-dir", str(tmp_path), "--gradio-auth", "u:secret1",
                         "--api-auth", "a:secret2").public_flags()
    assert "secret1" not in repr(flags) and "secret2" not in repr(flags)


def test_malformed_credentials_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="user:password"):
        settings_for("--data-dir", str(tmp_path), "--gradio-auth", "nopassword")


def test_extension_changes_need_the_insecure_flag_on_a_lan(tmp_path: Path) -> None:
    assert settings_for("--data-dir", str(tmp_path)).extension_changes_allowed
    assert not settings_for("--data-dir", str(tmp_path), "--listen").extension_changes_allowed
    assert settings_for("--data-dir", str(tmp_path), "--listen",
                        "--enable-insecure-extension-access").extension_changes_allowed


def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} .* already in use"):
            check_port_free("127.0.0.1", port)


def run_cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "webui.py"), *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_list_models_on_an_empty_folder_says_where_to_put_one_and_lists_the_demo(tmp_path: Path) -> None:
    done = run_cli("--data-dir", str(tmp_path), "models")
    assert done.returncode == 0, done.stderr
    assert "No checkpoints found" in done.stdout
    assert str(tmp_path / "models" / "Stable-diffusion") in done.stdout
    assert "bundled demo model is used" in done.stdout
    demo_line = done.stdout.splitlines()[-1]
    assert demo_line.startswith("sdweb-demo-shapes.safetensors") and "demo model" in demo_line
    assert "\tsd1\t" in demo_line


def test_list_models_without_the_demo(tmp_path: Path) -> None:
    done = run_cli("--data-dir", str(tmp_path), "--skip-demo-model", "models")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        f"No checkpoints found. Put .safetensors files in {tmp_path / 'models' / 'Stable-diffusion'}"]


def test_bad_argument_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    done = run_cli("--data-dir", str(tmp_path), "txt2img", "--prompt", "x", "--width", "500")
    assert done.returncode == 2
    assert "width" in done.stderr and "multiple of 8" in done.stderr
    assert "Traceback" not in done.stderr


def test_list_models_says_when_a_checkpoint_cannot_be_used(tmp_path: Path) -> None:
    from tests.fixtures.checkpoints import write_tiny_sd1

    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    write_tiny_sd1(folder / "plain.safetensors")
    write_tiny_sd1(folder / "depth.safetensors", in_channels=5)
    done = run_cli("--data-dir", str(tmp_path), "--skip-demo-model", "models")
    assert done.returncode == 0, done.stderr
    lines = {line.split("\t")[0].split(" ")[0]: line for line in done.stdout.splitlines()}
    assert "\tsd1\t" in lines["plain.safetensors"]
    assert "\tunsupported: " in lines["depth.safetensors"]


def test_a1111_flags_sdweb_does_not_use_are_accepted_with_a_warning(tmp_path: Path) -> None:
    # A webui-user.bat COMMANDLINE_ARGS of an A1111 install, flags with and without values.
    done = run_cli("--data-dir", str(tmp_path), "--skip-demo-model", "--skip-torch-cuda-test", "--theme",
                   "dark", "--no-half-vae", "--opt-sdp-no-mem-attention", "--styles-file=extra.csv",
                   "--upcast-sampling", "--precision", "full", "--api-log", "models")
    assert done.returncode == 0, done.stderr
    assert "A1111 flags not used by sdweb (accepted and ignored)" in done.stderr
    assert "--theme dark" in done.stderr and "--styles-file=extra.csv" in done.stderr
    assert "--no-half-vae" not in done.stderr.split("ignored)")[-1]  # one of ours: used, not ignored
    assert "No checkpoints found" in done.stdout


def test_unknown_flags_are_still_refused(tmp_path: Path) -> None:
    done = run_cli("--data-dir", str(tmp_path), "--no-such-flag", "models")
    assert done.returncode == 2 and "--no-such-flag" in done.stderr


def test_ignored_flags_take_their_values_but_not_the_next_flag() -> None:
    from sdweb.a1111_flags import strip_ignored_flags

    kept, ignored = strip_ignored_flags(["--theme", "--api", "--ngrok", "token", "--listen", "--device-id=1",
                                         "txt2img", "--prompt", "x"])
    assert kept == ["--api", "--listen", "txt2img", "--prompt", "x"]
    assert ignored == ["--theme", "--ngrok token", "--device-id=1"]


def test_a1111_precision_names_and_cors_flags(tmp_path: Path) -> None:
    assert settings_for("--data-dir", str(tmp_path), "--precision", "full").precision == "fp32"
    assert settings_for("--data-dir", str(tmp_path), "--precision", "half").precision == "fp16"
    assert settings_for("--data-dir", str(tmp_path), "--precision", "autocast").precision == "auto"
    settings = settings_for("--data-dir", str(tmp_path), "--cors-allow-origins",
                            "http://a.test,https://b.test", "--cors-allow-origins-regex",
                            r"https://.*\.example\.org", "--api-allow-local-requests")
    assert settings.cors_allow_origins == ("http://a.test", "https://b.test")
    assert settings.cors_allow_origins_regex == r"https://.*\.example\.org"
    assert settings.api_allow_local_requests
    with pytest.raises(UsageError, match="cors-allow-origins-regex"):
        settings_for("--data-dir", str(tmp_path), "--cors-allow-origins-regex", "(")


def test_cli_txt2img_with_a_transformer_only_flux_file_uses_its_family_defaults(tmp_path: Path) -> None:
    from tests.fixtures.flow_checkpoints import write_flow_library

    write_flow_library(tmp_path)
    done = run_cli("--data-dir", str(tmp_path), "--skip-demo-model", "txt2img", "--prompt", "a lighthouse",
                   "--ckpt", "flux-schnell", "--width", "64", "--height", "64", "--seed", "4", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = Path(done.stdout.strip().splitlines()[-1])
    with Image.open(saved) as image:
        parameters = image.info["parameters"]
    assert "Steps: 4, Sampler: Euler" in parameters and "CFG scale: 1," in parameters
    assert "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16" in parameters  # Forge's keys, no "VAE:"
