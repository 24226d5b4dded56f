"""Listings of what this install offers: samplers, schedulers, upscalers, styles, scripts, extensions.

Also memory use. Features that do not exist yet (hypernetworks) list nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sdweb.api.encoding import json_safe
from sdweb.api.models import (
    ExtensionItem,
    FaceRestorerItem,
    LatentUpscalerModeItem,
    MemoryResponse,
    NamedPathItem,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    ScriptInfo,
    ScriptsList,
    UpscalerItem,
)
from sdweb.api.routes import ApiRoutes
from sdweb.api.scripts import ScriptRegistry
from sdweb.services.container import AppServices

logger = logging.getLogger(__name__)


def add_routes(routes: ApiRoutes) -> None:
    handlers = InfoRoutes(routes.services, routes.scripts)
    routes.add("/samplers", handlers.samplers, "GET", list[SamplerItem])
    routes.add("/schedulers", handlers.schedulers, "GET", list[SchedulerItem])
    routes.add("/upscalers", handlers.upscalers, "GET", list[UpscalerItem])
    routes.add("/latent-upscale-modes", handlers.latent_upscale_modes, "GET", list[LatentUpscalerModeItem])
    routes.add("/hypernetworks", handlers.no_items, "GET", list[NamedPathItem])
    routes.add("/face-restorers", handlers.face_restorers, "GET", list[FaceRestorerItem])
    routes.add("/realesrgan-models", handlers.no_items, "GET", list[NamedPathItem])
    routes.add("/prompt-styles", handlers.prompt_styles, "GET", list[PromptStyleItem])
    routes.add("/scripts", handlers.scripts, "GET", ScriptsList)
    routes.add("/script-info", handlers.script_info, "GET", list[ScriptInfo])
    routes.add("/extensions", handlers.extensions, "GET", list[ExtensionItem])
    routes.add("/memory", handlers.memory, "GET", MemoryResponse)


def memory_snapshot() -> dict[str, Any]:
    """A1111's ``ram``: total system memory, this process's resident size as ``used``, bytes.

    Read from ``/proc`` (no psutil); elsewhere the peak resident size from ``resource``, or an error.
    """
    try:
        fields: dict[str, int] = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024
        rss = 0
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        total = fields["MemTotal"]
        return {"free": total - rss, "used": rss, "total": total,
                "available": fields.get("MemAvailable", fields.get("MemFree", 0))}
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if os.uname().sysname == "Darwin" else 1024  # bytes on macOS, KiB on Linux
        return {"used": peak * scale, "error": "system totals unavailable; used is the peak size"}
    except (ImportError, OSError, AttributeError):
        return {"error": "memory statistics are unavailable on this system"}


class InfoRoutes:
    """The listing handlers, bound to one services container and the script registry."""

    def __init__(self, services: AppServices, scripts: ScriptRegistry) -> None:
        self.services = services
        self._scripts = scripts

    def samplers(self) -> list[SamplerItem]:
        return [SamplerItem(**item) for item in self.services.samplers().describe()]

    def schedulers(self) -> list[SchedulerItem]:
        return [SchedulerItem(**item) for item in self.services.samplers().describe_schedules()]

    def upscalers(self) -> list[UpscalerItem]:
        from sdweb.images.upscale import list_upscalers

        service = self.services.upscalers
        listed = service.items() if service is not None else list_upscalers()
        return [UpscalerItem(name=item.name, scale=item.scale, model_name=item.model_name,
                             model_path=item.model_path, model_url=item.model_url) for item in listed]

    def latent_upscale_modes(self) -> list[LatentUpscalerModeItem]:
        from sdweb.images.upscale import LATENT_UPSCALE_MODES

        return [LatentUpscalerModeItem(name=name) for name in LATENT_UPSCALE_MODES]

    def no_items(self) -> list[Any]:
        """Listings of features that do not exist yet (hypernetworks...): empty."""
        return []

    def face_restorers(self) -> list[FaceRestorerItem]:
        """GFPGAN and CodeFormer with their model folders (A1111's ``cmd_dir``), listed without torch."""
        service = getattr(self.services, "face_restorers", None)
        if service is None:
            return []
        return [FaceRestorerItem(name=item["name"], cmd_dir=item["cmd_dir"]) for item in service.items()]

    def prompt_styles(self) -> list[PromptStyleItem]:
        return [PromptStyleItem(name=style.name, prompt=style.prompt, negative_prompt=style.negative_prompt)
                for style in self.services.styles.list()]

    def scripts(self) -> ScriptsList:
        registry = self._scripts
        return ScriptsList(txt2img=registry.names(img2img=False), img2img=registry.names(img2img=True))

    def script_info(self) -> list[ScriptInfo]:
        return self._scripts.infos()

    def extensions(self) -> list[ExtensionItem]:
        manager = self.services.extensions
        if manager is None:
            return []
        return [
            ExtensionItem(name=info.name, remote=info.git_remote or "", branch=info.branch or "",
                          commit_hash=info.git_commit or "", version=info.version or "",
                          commit_date="", enabled=bool(info.enabled))
            for info in manager.list()
        ]

    def memory(self) -> MemoryResponse:
        runtime = self.services.models.runtime_description()
        cuda = runtime.get("cuda") if isinstance(runtime.get("cuda"), dict) else None
        if cuda is None:
            cuda = {"error": "unavailable", "runtime": json_safe(runtime)}
        return MemoryResponse(ram=memory_snapshot(), cuda=json_safe(cuda))
