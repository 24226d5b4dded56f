"""Wiring: build every service from the launch settings, in dependency order.

``webui.py`` calls :func:`build_services`; tests call it too, passing a fake engine factory, so the
wiring under test is the wiring that ships. Nothing here imports torch: the engine factory is called
lazily (first job, first model load, or the background warm-up after the page is served).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdweb.config import LaunchSettings, OptionSpec, OptionsStore
from sdweb.option_catalog import BUILTIN_OPTIONS
from sdweb.params import GenerationParams, Img2ImgParams
from sdweb.services.container import AppServices
from sdweb.services.face_restore import FACE_OPTIONS, FaceRestoreService
from sdweb.services.generation import GenerationService
from sdweb.services.models import EngineProvider, ModelService
from sdweb.services.worker import GpuWorker

logger = logging.getLogger(__name__)

#: The small demo model trained by demo_model/train.py, shipped so a fresh install makes images at once.
DEMO_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "demo" / "sdweb-demo-shapes.safetensors"

EXTRA_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("disabled_extensions", [], "Disabled extensions", "Extensions"),
    # A1111's keys; the overlap default is wider than its 8 (seams of large-receptive-field models).
    OptionSpec("ESRGAN_tile", 192, "Tile size for ESRGAN upscalers (0 = no tiling)", "Upscaling",
               minimum=0, maximum=4096),
    OptionSpec("ESRGAN_tile_overlap", 16, "Tile overlap for ESRGAN upscalers, in pixels", "Upscaling",
               minimum=0, maximum=512),
    # A1111's key: how much of the init picture an inpainting checkpoint (9-channel UNet) is shown where
    # it repaints, for img2img and hires fix (1 = none of it, grey).
    OptionSpec("inpainting_mask_weight", 1.0, "Inpainting conditioning mask strength", "img2img",
               minimum=0.0, maximum=1.0),
    # The API's memory budget (A1111 has none, and runs out of memory instead): width x height x batch
    # size, hires fix's final size included, in megapixels (2**20 pixels); 0 = no limit.
    # The sd-webui-controlnet extension's key: how many ControlNet unit tabs txt2img and img2img show.
    OptionSpec("control_net_unit_count", 3, "Multi-ControlNet: number of units", "ControlNet",
               minimum=1, maximum=10),
    OptionSpec("api_max_megapixels", 16.0, "Largest image batch the API makes, in megapixels "
               "(width x height x batch size; 0 = no limit)", "API", minimum=0.0),
)


def build_services(
    settings: LaunchSettings,
    *,
    engine_factory: Callable[[AppServices], Any] | None = None,
    load_extensions: bool = True,
    restart: Callable[[], None] | None = None,
) -> AppServices:
    """Build the container. ``engine_factory(services)`` makes the engine; default: the real one."""
    from sdweb.engine.control.library import ControlNetLibrary
    from sdweb.engine.extra_networks.lora import LoraLibrary
    from sdweb.engine.face_restore import FaceModelLibrary
    from sdweb.engine.models.cache import SideModelCache
    from sdweb.engine.models.hashes import HashCache
    from sdweb.engine.models.modules import ModuleRegistry
    from sdweb.engine.models.registry import CheckpointRegistry, VaeRegistry
    from sdweb.engine.upscalers import UpscalerModelLibrary
    from sdweb.extensions.installer import ExtensionInstaller
    from sdweb.extensions.manager import ExtensionManager, PluginHost
    from sdweb.history.store import HistoryStore
    from sdweb.images.store import ImageStore
    from sdweb.prompts.styles import StyleStore
    from sdweb.services.controlnet import ControlNetService
    from sdweb.services.merger import MergeService
    from sdweb.services.scripts.service import ScriptService
    from sdweb.services.upscalers import UpscalerService

    # 1. Folders and persisted options.
    paths = settings.paths
    paths.ensure()
    options = OptionsStore(paths.config_file, (*BUILTIN_OPTIONS, *EXTRA_OPTIONS, *FACE_OPTIONS))

    # 2. Plugins: built-ins first, then extensions (they may add options and samplers).
    plugins = PluginHost()
    from sdweb.engine.samplers import builtin as builtin_samplers
    from sdweb.services.scripts import builtin as builtin_scripts

    plugins.register_builtin(builtin_samplers, "builtin-samplers")
    plugins.register_builtin(builtin_scripts, builtin_scripts.PLUGIN_NAME)
    extensions = ExtensionManager(
        paths.extensions_dir,
        plugins,
        disabled=set(options.get("disabled_extensions") or ()),
        disable_all=settings.disable_all_extensions,
        changes_allowed=settings.extension_changes_allowed,
    )
    if load_extensions:
        extensions.load_all()
    for _name, specs in plugins.collect("register_settings"):
        for spec in specs or ():
            try:
                options.add_spec(spec)
            except ValueError as exc:
                logger.error("extension setting refused: %s", exc)

    # 3. Stores.
    images = ImageStore(paths.outputs_dir)
    history = HistoryStore(paths.history_db)
    styles = StyleStore(paths.styles_file)
    demo_files = () if settings.skip_demo_model else (DEMO_CHECKPOINT,)
    hashes = HashCache(paths.cache_dir / "hashes.json")  # one instance: they all write the same file
    registry = CheckpointRegistry(paths.ckpt_dirs, hashes, demo_files=demo_files)
    registry.refresh()
    vaes = VaeRegistry(paths.vae_dir, hashes)
    modules = ModuleRegistry(paths.text_encoder_dir, paths.vae_dir)  # torch-free: safetensors headers
    loras = LoraLibrary(paths.lora_dir, hashes=hashes)  # torch-free: lists files, checks <lora:> tags
    paths.esrgan_dir.mkdir(parents=True, exist_ok=True)  # A1111's folder: where people look to drop models
    upscaler_models = UpscalerModelLibrary(paths.esrgan_dir)  # torch-free listing
    paths.controlnet_dir.mkdir(parents=True, exist_ok=True)  # the extension's folder: where people look
    controlnet_library = ControlNetLibrary(paths.controlnet_dirs, hashes=hashes,
                                           clip_vision_dirs=(paths.clip_vision_dir,),
                                           cache=SideModelCache(capacity=4))  # ControlNets, IP-Adapters, CLIP
    controlnet = ControlNetService(controlnet_library, options=options, plugins=plugins,
                                   annotators=_annotator_runner(settings))

    # 4. Samplers: built lazily, once, from every plugin's register_samplers / register_schedules.
    sampler_lock = threading.Lock()
    sampler_holder: list[Any] = []

    def samplers() -> Any:
        with sampler_lock:
            if not sampler_holder:
                from sdweb.engine.samplers.registry import SamplerRegistry

                sampler_holder.append(SamplerRegistry.from_plugin_results(
                    plugins.collect("register_samplers"), plugins.collect("register_schedules")))
            return sampler_holder[0]

    # 5. The GPU worker, the engine (lazy) and the services on top.
    worker = GpuWorker()
    holder: dict[str, AppServices] = {}
    factory = engine_factory or default_engine_factory
    engine = EngineProvider(lambda: factory(holder["services"]))
    models = ModelService(settings=settings, registry=registry, vaes=vaes, worker=worker, engine=engine,
                          options=options, plugins=plugins, modules=modules)
    # The options that name files get their checks now that the folders are listed: a value that is
    # not listed is refused on write and ignored (default used) when config.json holds it.
    options.bind("sd_vae", check=models.vae_choice)
    options.bind("sd_model_checkpoint", check=models.checkpoint_choice)
    options.bind("forge_additional_modules", check=models.modules_choice)
    upscalers = UpscalerService(upscaler_models, worker=worker, engine=engine)

    def validate(params: GenerationParams) -> None:
        registry_ = samplers()
        registry_.get(params.sampler_name)
        if params.scheduler not in registry_.schedule_names():
            known = ", ".join(registry_.schedule_names())
            raise ValueError(f"schedule type {params.scheduler!r} not found; known: {known}")
        loras.check_prompt(params.prompt)  # unknown LoRA names / tag kinds: before the job is queued
        if params.enable_hr:  # an unknown hires upscaler, or a model one without its extra: not queued
            upscalers.check_usable(upscalers.find_hires(params.hr_upscaler))
        for name in params.additional_modules or ():  # SD 3.x / Flux text encoders and VAE
            models.find_module(name)
        if params.checkpoint:
            info = models.find(params.checkpoint)
            models.check_file(info)  # a damaged file: refused before queueing
        elif models.selected_title() is None:
            raise LookupError(models.empty_message())
        else:
            info = None
        if any(unit.enabled for unit in params.controlnet_units):  # before the job is queued
            if info is None:
                info = models.find(models.selected_title())
            controlnet.check(params, getattr(info, "family", None), img2img=isinstance(params, Img2ImgParams))

    cluster = None
    if settings.workers is not None or settings.ray_address:  # only then is Ray imported
        from sdweb.services.cluster.setup import start_pool

        cluster = start_pool(settings, models=models, options=options)
    face_restorer = FaceRestoreService(FaceModelLibrary(paths.root / "models"), options, engine,
                                       worker=worker)
    generation = GenerationService(worker=worker, engine=engine, options=options, images=images,
                                   history=history, styles=styles, plugins=plugins, validate=validate,
                                   default_checkpoint=models.selected_title, workers=cluster,
                                   face_restorer=face_restorer)

    def count_tokens(text: str) -> tuple[int, int]:
        # The UI's token counter, with the loaded model's tokenizer; only once the engine is up, so that
        # typing a prompt never is what imports torch (the UI estimates until then).
        if not engine.started:
            raise LookupError("the tokenizer loads with the engine")
        return engine().count_tokens(text, emphasis=str(options.get("emphasis") or "Original"))

    scripts = ScriptService(generation=generation, plugins=plugins, options=options, samplers=samplers,
                            models=models, styles=styles, upscalers=upscalers)
    merger = MergeService(registry, vaes, worker)

    probed_rng: list[str] = []

    def pasted_gpu_rng() -> str:  # probed on the first paste, not at start-up (torch)
        if not probed_rng:
            probed_rng.append(_probe_gpu_rng(settings))
        return probed_rng[0]

    services = AppServices(
        settings=settings, options=options, worker=worker, models=models, generation=generation,
        images=images, history=history, styles=styles, plugins=plugins, samplers=samplers, loras=loras,
        extensions=extensions, installer=ExtensionInstaller(extensions), restart=restart or (lambda: None),
        token_counter=count_tokens, upscalers=upscalers, scripts=scripts, merger=merger,
        face_restorers=face_restorer, controlnet=controlnet,
        pasted_gpu_rng=pasted_gpu_rng,
    )
    holder["services"] = services
    return services


def _annotator_runner(settings: LaunchSettings) -> Any:
    """The model-based ControlNet preprocessors' runner: ``models/ControlNet/annotators``, on the engine's
    device (resolved on first use: building it imports no torch).
    """
    from sdweb.engine.control.annotators import AnnotatorRunner

    resolved: list[Any] = []

    def runtime() -> Any:
        if not resolved:
            from sdweb.engine.devices import resolve_runtime

            try:
                resolved.append(resolve_runtime(settings))
            except Exception as exc:  # noqa: BLE001 - the engine reports it; annotators fall back to the CPU
                logger.warning("ControlNet annotators run on the CPU: %s", exc)
                resolved.append(None)
        return resolved[0]

    def device() -> Any:
        return runtime().device if runtime() is not None else "cpu"

    def park_device() -> Any:  # --medvram / --lowvram: networks wait in RAM, as the upscalers do
        return "cpu" if runtime() is not None and runtime().offload != "none" else None

    return AnnotatorRunner(settings.paths.controlnet_dir / "annotators", device=device,
                           park_device=park_device)


def _probe_gpu_rng(settings: LaunchSettings) -> str:
    """Say "GPU" when the models run on CUDA (A1111's default noise), else "NV" (imports torch)."""
    from sdweb.engine.devices import resolve_runtime

    return "GPU" if resolve_runtime(settings).device.type == "cuda" else "NV"


def default_engine_factory(services: AppServices) -> Any:
    """The real engine: imports torch and diffusers (seconds), so it runs after the page is up."""
    from sdweb.engine.runtime import create_engine

    upscalers = services.upscalers
    return create_engine(services.settings, services.models.registry, services.models.vae_registry,
                         services.samplers(), services.options, loras=services.loras,
                         upscaler_models=upscalers.library if upscalers is not None else None,
                         modules=services.models.module_registry,
                         controlnets=services.controlnet.library if services.controlnet else None,
                         preprocessors=services.controlnet.preprocessors if services.controlnet else None)
