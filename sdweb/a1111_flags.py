"""A1111's launch flags that sdweb does not use: accepted with a warning instead of stopping the server.

People start sdweb with the ``COMMANDLINE_ARGS`` they had for AUTOMATIC1111 (``--no-half-vae
--theme dark --skip-torch-cuda-test ...``). The flags sdweb implements are :mod:`sdweb.cli`'s; the ones
listed here (A1111 v1.10's ``modules/cmd_args.py``, with whether each takes a value) are taken out of
the command line before it is parsed, and each is named in one warning. A flag neither knows is still
an error (a typo should not pass silently).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

#: A1111 flags sdweb ignores -> whether the flag takes a value.
IGNORED_FLAGS: Mapping[str, bool] = {
    # launch.py / installation
    "--update-all-extensions": False, "--skip-python-version-check": False, "--skip-torch-cuda-test": False,
    "--reinstall-xformers": False, "--reinstall-torch": False, "--update-check": False,
    "--test-server": False,
    "--log-startup": False, "--skip-prepare-environment": False, "--skip-install": False,
    "--dump-sysinfo": False, "--do-not-download-clip": False, "--no-download-sd-model": False,
    "--skip-version-check": False, "--skip-load-model-at-start": False,
    # model and memory tuning done differently here
    "--medvram-sdxl": False, "--lowram": False, "--always-batch-cond-uncond": False, "--unload-gfpgan": False,
    "--upcast-sampling": False, "--force-enable-xformers": False, "--xformers-flash-attention": False,
    "--opt-sub-quad-attention": False, "--sub-quad-q-chunk-size": True, "--sub-quad-kv-chunk-size": True,
    "--sub-quad-chunk-threshold": True, "--opt-split-attention-invokeai": False,
    "--opt-split-attention-v1": False, "--opt-sdp-no-mem-attention": False,
    "--disable-opt-split-attention": False, "--disable-nan-check": False, "--use-ipex": False,
    "--disable-model-loading-ram-optimization": False, "--opt-channelslast": False, "--no-hashing": False,
    "--device-id": True, "--deepdanbooru": False, "--no-progressbar-hiding": False,
    # folders of features handled elsewhere (or not at all)
    "--models-dir": True, "--config": True, "--vae-path": True, "--textual-inversion-templates-dir": True,
    "--hypernetwork-dir": True, "--localizations-dir": True, "--codeformer-models-path": True,
    "--gfpgan-models-path": True, "--esrgan-models-path": True, "--bsrgan-models-path": True,
    "--realesrgan-models-path": True, "--dat-models-path": True, "--clip-models-path": True,
    "--ldsr-models-path": True, "--scunet-models-path": True, "--swinir-models-path": True,
    "--lyco-dir": True, "--lyco-dir-backcompat": True, "--styles-file": True,
    # the page and gradio
    "--share": False, "--ngrok": True, "--ngrok-region": True, "--ngrok-options": True,
    "--show-negative-prompt": False, "--ui-config-file": True, "--hide-ui-dir-config": False,
    "--freeze-settings": False, "--freeze-settings-in-sections": True, "--freeze-specific-settings": True,
    "--ui-settings-file": True, "--gradio-debug": False, "--gradio-img2img-tool": True,
    "--gradio-inpaint-tool": True, "--gradio-allowed-path": True, "--gradio-queue": False,
    "--no-gradio-queue": False, "--autolaunch": False, "--theme": True, "--use-textbox-seed": False,
    "--disable-console-progressbars": False, "--enable-console-prompts": False, "--ui-debug-mode": False,
    "--subpath": True, "--no-prompt-history": False, "--allow-code": False, "--administrator": False,
    # server and API
    "--disable-safe-unpickle": False, "--api-log": False, "--tls-keyfile": True, "--tls-certfile": True,
    "--disable-tls-verify": False, "--server-name": True, "--add-stop-route": False,
    "--api-server-stop": False,
    "--timeout-keep-alive": True, "--disable-extra-extensions": False, "--unix-filenames-sanitization": False,
    "--filenames-max-length": True, "--loglevel": True,
}


def strip_ignored_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(argv without the ignored A1111 flags, those flags as given)``.

    A flag's value is taken from ``--flag=value`` or from the next argument (when that is not a flag).
    """
    kept: list[str] = []
    ignored: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        name, has_equals, _value = arg.partition("=")
        takes_value = IGNORED_FLAGS.get(name)
        if takes_value is None:
            kept.append(arg)
        elif (takes_value and not has_equals and index + 1 < len(argv)
              and not argv[index + 1].startswith("--")):
            ignored.append(f"{arg} {argv[index + 1]}")
            index += 1
        else:
            ignored.append(arg)
        index += 1
    return kept, ignored


def warn_ignored(ignored: Sequence[str]) -> None:
    """One warning naming the A1111 flags that were accepted and ignored."""
    if ignored:
        logger.warning("A1111 flags not used by sdweb (accepted and ignored): %s", " ".join(ignored))
