"""A1111's upscaler names ("R-ESRGAN 4x+", "SwinIR 4x", "4x-UltraSharp"...) as clients send them.

A1111 ships model upscalers under fixed names and downloads their files on first use; clients (webuiapi's
``HiResUpscaler``, Discord bots, SillyTavern) send those names. Here model upscalers are the files in
``models/ESRGAN``, listed by file name. :func:`resolve_upscaler` finds the file such a name stands for
when it is there; when it is not, the image is upscaled with Lanczos and a note names the file to add,
so the request is served rather than refused. Names that are neither ours nor A1111's stay an error
(A1111 refuses them too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Used when the model an A1111 name stands for is not installed.
FALLBACK = "Lanczos"


@dataclass(frozen=True)
class KnownUpscaler:
    """Where an A1111 upscaler's model file comes from, and the file names it goes by."""

    file: str
    url: str
    #: Other names (file stems) people keep the same model under.
    stems: tuple[str, ...] = ()


_REAL_ESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"

#: A1111's upscaler names (and the best-known community ones) -> their model file.
A1111_UPSCALERS: Mapping[str, KnownUpscaler] = {
    "R-ESRGAN 4x+": KnownUpscaler("RealESRGAN_x4plus.pth", f"{_REAL_ESRGAN}/v0.1.0/RealESRGAN_x4plus.pth"),
    "R-ESRGAN 4x+ Anime6B": KnownUpscaler("RealESRGAN_x4plus_anime_6B.pth",
                                          f"{_REAL_ESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth"),
    "R-ESRGAN 2x+": KnownUpscaler("RealESRGAN_x2plus.pth", f"{_REAL_ESRGAN}/v0.2.1/RealESRGAN_x2plus.pth"),
    "R-ESRGAN General 4xV3": KnownUpscaler("realesr-general-x4v3.pth",
                                           f"{_REAL_ESRGAN}/v0.2.5.0/realesr-general-x4v3.pth"),
    "R-ESRGAN General WDN 4xV3": KnownUpscaler("realesr-general-wdn-x4v3.pth",
                                               f"{_REAL_ESRGAN}/v0.2.5.0/realesr-general-wdn-x4v3.pth"),
    "R-ESRGAN AnimeVideo": KnownUpscaler("realesr-animevideov3.pth",
                                         f"{_REAL_ESRGAN}/v0.2.5.0/realesr-animevideov3.pth"),
    "ESRGAN_4x": KnownUpscaler("ESRGAN_4x.pth", "https://github.com/cszn/KAIR/releases/download/v1.0/"
                               "ESRGAN.pth", stems=("ESRGAN", "RRDB_ESRGAN_x4")),
    "SwinIR 4x": KnownUpscaler("SwinIR_4x.pth", "https://github.com/JingyunLiang/SwinIR/releases/download/"
                               "v0.0/003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth",
                               stems=("003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN",)),
    "ScuNET GAN": KnownUpscaler("ScuNET.pth", "https://github.com/cszn/KAIR/releases/download/v1.0/"
                                "scunet_color_real_gan.pth", stems=("scunet_color_real_gan",)),
    "ScuNET PSNR": KnownUpscaler("ScuNET_PSNR.pth", "https://github.com/cszn/KAIR/releases/download/v1.0/"
                                 "scunet_color_real_psnr.pth", stems=("scunet_color_real_psnr",)),
    "BSRGAN": KnownUpscaler("BSRGAN.pth", "https://github.com/cszn/KAIR/releases/download/v1.0/BSRGAN.pth"),
    "LDSR": KnownUpscaler("LDSR (not supported here)", "https://github.com/CompVis/latent-diffusion"),
    "4x-UltraSharp": KnownUpscaler("4x-UltraSharp.pth", "https://openmodeldb.info/models/4x-UltraSharp"),
    "4x_foolhardy_Remacri": KnownUpscaler("4x_foolhardy_Remacri.pth",
                                          "https://openmodeldb.info/models/4x-Remacri"),
    "4x-AnimeSharp": KnownUpscaler("4x-AnimeSharp.pth", "https://openmodeldb.info/models/4x-AnimeSharp"),
    "4x_NMKD-Siax_200k": KnownUpscaler("4x_NMKD-Siax_200k.pth", "https://openmodeldb.info/models/4x-NMKD-Siax-CX"),
}


def known_upscaler(name: str) -> tuple[str, KnownUpscaler] | None:
    """The A1111 name (any case) and its file, or None for a name A1111 does not ship."""
    key = name.strip().lower()
    for known, info in A1111_UPSCALERS.items():
        if known.lower() == key:
            return known, info
    return None


def installed_file(info: KnownUpscaler, model_names: Sequence[str]) -> str | None:
    """The ``models/ESRGAN`` upscaler (by its listed name) that holds ``info``'s model, if any."""
    wanted = {stem.lower() for stem in (info.file.rsplit(".", 1)[0], *info.stems)}
    for name in model_names:
        if name.lower() in wanted:
            return name
    return None


def resolve_upscaler(name: str, find: Callable[[str], str], model_names: Callable[[], Sequence[str]],
                     notes: list[str], *, field: str) -> str:
    """The upscaler to use for ``name``: ours by that name, the installed file of an A1111 name, or
    Lanczos with a note naming the file to add. ``find`` raises UnknownUpscalerError for other names.
    """
    from sdweb.images.upscale import UnknownUpscalerError

    try:
        return find(name)
    except UnknownUpscalerError:
        found = known_upscaler(name)
        if found is None:
            raise
    known, info = found
    installed = installed_file(info, model_names())
    if installed is not None:
        return find(installed)
    notes.append(f"{field}: {known!r} needs the model file {info.file} in models/ESRGAN (from {info.url}); "
                 f"upscaled with {FALLBACK} instead")
    return FALLBACK
