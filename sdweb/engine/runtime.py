"""The engine facade the service layer calls: which model, which VAE, then the family's loop.

``Engine`` is thin on purpose. It resolves a request's checkpoint (None = the current model, else the
registry's lookup by title, name or hash) and VAE (None = the "SD VAE" setting) or, for SD 3.x / Flux
files that lack them, the text encoders and VAE from ``models/text_encoder`` and ``models/VAE``
(:mod:`sdweb.engine.models.modules`; the "forge_additional_modules" setting or the request's
``additional_modules``), holds the model through ``ModelCache.use`` for the whole job (so it is never
moved or evicted mid-generation), and hands over to the model's family (:mod:`sdweb.engine.families`):
the UNet loops for SD 1.x/2.x/XL, the flow-matching loop for SD 3.x and Flux. Each job runs inside
:func:`sdweb.engine.accelerator.job_scope`: afterwards, however it ended, no offloaded component stays on
the accelerator and unused cached memory goes back. :func:`create_engine` is the composition-root
helper that builds the runtime, the thread count and the cache from the launch settings.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sdweb.engine.accelerator import DeviceMemory, job_scope
from sdweb.engine.encode import count_tokens
from sdweb.engine.extra_networks.job import ExtraNetworks
from sdweb.engine.families import FamilyJob, FamilyRegistry, default_families
from sdweb.engine.previews import DEFAULT_METHOD, PREVIEW_METHODS, Previewer, TaesdLibrary, preview_scope
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.engine.vae_tiling import TilePolicy, tile_policy
from sdweb.params import EngineRun, GenerationParams, Img2ImgParams, JobControl, StepProgress

logger = logging.getLogger(__name__)

#: The tokenizer the UI token counter uses before any model is loaded (all families share its BPE).
_FALLBACK_TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "tokenizers" / "sd1"


class Engine:
    """Runs generation requests on the cached models. One instance per app, used from the GPU worker."""

    def __init__(
        self,
        cache: Any,
        registry: Any,
        vae_registry: Any,
        samplers: SamplerRegistry,
        *,
        runtime: Any,
        options: Any = None,
        loras: Any = None,
        embeddings: Any = None,
        upscalers: Any = None,
        face_restorer: Any = None,
        modules: Any = None,
        families: FamilyRegistry | None = None,
        memory: DeviceMemory | None = None,
        previews: TaesdLibrary | None = None,
        controlnets: Any = None,
        preprocessors: Any = None,
    ) -> None:
        """Args:
        cache: ``sdweb.engine.models.cache.ModelCache``.
        registry: ``sdweb.engine.models.registry.CheckpointRegistry``.
        vae_registry: ``sdweb.engine.models.registry.VaeRegistry``.
        samplers: the sampler registry built from the plugins.
        runtime: ``sdweb.engine.devices.RuntimeConfig``.
        options: the ``OptionsStore`` (for ``sd_model_checkpoint`` / ``sd_vae``); None in tests.
        loras: ``sdweb.engine.extra_networks.lora.LoraLibrary`` (None: ``<lora:...>`` tags are refused).
        embeddings: ``sdweb.engine.extra_networks.embeddings.EmbeddingLibrary`` (None: no embeddings).
        upscalers: ``sdweb.engine.upscalers.ModelUpscalers`` (models/ESRGAN; None: none).
        face_restorer: ``sdweb.engine.face_restore.FaceRestorer`` (models/GFPGAN, models/Codeformer).
        modules: ``sdweb.engine.models.modules.ModuleRegistry`` (text encoders / VAEs for SD 3.x and Flux;
            None: such files must carry their own).
        families: the model families (default: :func:`sdweb.engine.families.default_families`).
        memory: the accelerator's memory (emptied after unloads and large jobs); None: nothing to empty.
        previews: the TAESD decoders of models/VAE-approx for live previews (None: none).
        controlnets: ``sdweb.engine.control.library.ControlNetLibrary`` (None: ControlNet units are refused).
        preprocessors: ``sdweb.images.control_maps.PreprocessorRegistry`` (None: the built-in ones).
        """
        self._cache = cache
        self._registry = registry
        self._vaes = vae_registry
        self._samplers = samplers
        self._runtime = runtime
        self._options = options
        self._fallback_tokenizer: Any = None
        self._networks = ExtraNetworks(loras=loras, embeddings=embeddings)
        self.upscalers = upscalers
        self.face_restorer = face_restorer
        self.modules = modules
        self.families = families or default_families()
        self._detections: dict[tuple[str, int, float], Any] = {}
        #: The pipelines :meth:`load` has warmed up (gone with them when the cache lets them go).
        self._warmed: weakref.WeakSet[Any] = weakref.WeakSet()
        self._memory = memory
        self.previews = previews
        self.controlnets = controlnets
        if preprocessors is None:
            from sdweb.images.control_maps import PreprocessorRegistry

            preprocessors = PreprocessorRegistry.with_builtins()
        self.preprocessors = preprocessors

    # -- generation --------------------------------------------------------------------------
    def txt2img(
        self,
        params: GenerationParams,
        *,
        control: JobControl,
        on_step: Callable[[StepProgress], None],
        preview_every: int = 0,
    ) -> EngineRun:
        """Generate ``params`` (seeds, clip skip and RNG resolved) on its checkpoint."""
        info = self._checkpoint(params.checkpoint)
        vae, modules = self._load_choice(info, params)
        with (self._cache.use(info, vae=vae, **modules) as model, job_scope(model.pipe, self._memory),
              tile_policy(self._tile_policy()), preview_scope(self._previewer())):
            job = self._job(control, on_step, preview_every, self._controlnets(params, model))
            return self.families.for_family(model.family).txt2img(model, params, job)

    def img2img(
        self,
        params: Img2ImgParams,
        init_images: Sequence[Any],
        *,
        control: JobControl,
        on_step: Callable[[StepProgress], None],
        preview_every: int = 0,
        mask: Any = None,
    ) -> EngineRun:
        """img2img from ``init_images`` (PIL images) on the request's checkpoint; as :meth:`txt2img`.

        ``mask`` (a PIL image, white = repaint) makes it inpainting.
        """
        info = self._checkpoint(params.checkpoint)
        vae, modules = self._load_choice(info, params)
        with (self._cache.use(info, vae=vae, **modules) as model, job_scope(model.pipe, self._memory),
              tile_policy(self._tile_policy()), preview_scope(self._previewer())):
            controlnets = self._controlnets(params, model, init_images[0] if init_images else None, mask)
            job = self._job(control, on_step, preview_every, controlnets)
            return self.families.for_family(model.family).img2img(model, params, init_images, job, mask=mask)

    def _job(self, control: JobControl, on_step: Callable[[StepProgress], None],
             preview_every: int, controlnets: Any = None) -> FamilyJob:
        return FamilyJob(samplers=self._samplers, control=control, on_step=on_step,
                         preview_every=preview_every,
                         extra_networks=self._networks, model_upscalers=self.upscalers,
                         inpainting_mask_weight=self._mask_weight(), controlnets=controlnets)

    def _controlnets(self, params: GenerationParams, model: Any, init_image: Any = None,
                     mask: Any = None) -> Any:
        """The job's ControlNet units, checked and loaded (:mod:`sdweb.engine.control.controlnet`)."""
        if not any(unit.enabled for unit in params.controlnet_units):
            return None
        from sdweb.engine.control.controlnet import prepare_controlnets

        return prepare_controlnets(params.controlnet_units, model=model, library=self.controlnets,
                                   preprocessors=self.preprocessors, init_image=init_image, init_mask=mask)

    # -- which files make up a model ---------------------------------------------------------------
    def _load_choice(self, info: Any, params: GenerationParams | None) -> tuple[Path | None, dict[str, Any]]:
        """The VAE file and, for SD 3.x / Flux single files, the module files to load ``info`` with.

        Returns ``(vae, {"modules": ((slot, path), ...)})`` for those, ``(vae, {})`` for UNet models.

        Raises:
            ValueError (MissingModuleError, ModuleMismatchError): a needed file is missing or does not fit.
            LookupError: a chosen VAE or module name is no file in the folders.
        """
        vae_choice = params.vae if params is not None else None
        family = getattr(info, "family", None)
        uses_modules = bool(family) and getattr(self.families.for_family(family), "uses_modules", False)
        if not uses_modules or getattr(info, "kind", None) == "diffusers":
            return self._vae_path(vae_choice, info), {}
        detection = self._detection(info)
        chosen = params.additional_modules if params is not None else None
        if chosen is None:
            setting = self._options.get("forge_additional_modules") if self._options is not None else None
            chosen = list(setting or ())
        vae_file = self._vae_path(vae_choice, info)
        if self.modules is None:  # no module folders (tests): the file must be complete
            from sdweb.engine.models.errors import MissingModuleError

            if detection.missing_modules:
                missing = ", ".join(detection.missing_modules)
                raise MissingModuleError(f"{info.name} has no {missing} and this "
                                         "engine has no text encoder / VAE folders")
            return None, {"modules": ()}
        picked = self.modules.resolve(detection, checkpoint=info.name, chosen=list(chosen), vae_file=vae_file)
        return None, {"modules": tuple(sorted((slot, str(item.path)) for slot, item in picked.items()))}

    def _detection(self, info: Any) -> Any:
        from sdweb.engine.models.loader import detect_file

        key = (str(info.path), int(info.size), float(info.mtime))
        found = self._detections.get(key)
        if found is None:
            found = self._detections[key] = detect_file(Path(info.path), info.name, info.kind)
        return found

    def _previewer(self) -> Previewer:
        """The live previews' method: the "show_progress_type" setting, read per job."""
        try:
            method = str(self._options.get("show_progress_type"))
        except (AttributeError, KeyError):  # no options, or a store without the spec
            method = DEFAULT_METHOD
        if method not in PREVIEW_METHODS:
            method = DEFAULT_METHOD
        # On the CPU TAESD runs in bf16 where the runtime chose bf16 (native units), else fp32; fp16 on GPUs.
        on_cpu = getattr(getattr(self._runtime, "device", None), "type", "cpu") == "cpu"
        dtype = getattr(self._runtime, "dtype", None) if on_cpu else None
        return Previewer(method, self.previews, dtype=dtype)

    def _tile_policy(self) -> TilePolicy:
        """When the job's VAE passes are tiled: the "vae_tile_budget_mb" setting (read per job, so a change
        applies at once), always with ``--vae-tiling``.
        """
        always = bool(getattr(self._runtime, "vae_tiling", False))
        try:
            budget = float(self._options.get("vae_tile_budget_mb"))
        except (AttributeError, KeyError, TypeError, ValueError):  # no options, or a store without the spec
            budget = 0.0
        return TilePolicy.from_megabytes(budget, always=always)

    def _mask_weight(self) -> float:
        """The "Inpainting conditioning mask strength" setting, read per job so a change applies at once."""
        try:
            return float(self._options.get("inpainting_mask_weight"))
        except (AttributeError, KeyError, TypeError, ValueError):  # no options, or a store without the spec
            return 1.0

    def upscale(self, image: Any, name: str, size: tuple[int, int]) -> Any:
        """``image`` (PIL) brought to ``size`` by upscaler model ``name`` of models/ESRGAN, tiled."""
        from sdweb.engine.upscalers import UpscalerModelError

        if self.upscalers is None:
            raise UpscalerModelError(f"upscaler model {name!r}: this engine has no upscaler models")
        return self.upscalers.upscale(image, name, size)

    def restore_faces(self, image: Any, name: str, codeformer_weight: float = 0.5) -> Any:
        """``image`` (PIL) with its faces restored by ``name`` ("CodeFormer", "GFPGAN")."""
        from sdweb.engine.face_restore import FaceRestoreError

        if self.face_restorer is None:
            raise FaceRestoreError("this engine has no face restorer")
        return self.face_restorer.restore(image, name, codeformer_weight=codeformer_weight)

    # -- models ------------------------------------------------------------------------------
    def load(self, info: Any) -> Any:
        """Load ``info`` (with the "SD VAE" setting's VAE) and make it the current model, warmed up (once per
        loaded model: :meth:`warm_up`).
        """
        info = self._with_hash(info)
        vae, modules = self._load_choice(info, None)
        with self._cache.use(info, vae=vae, **modules) as model:
            pipe = getattr(model, "pipe", None)
            if pipe is not None and pipe not in self._warmed:
                self._warmed.add(pipe)
                self.warm_up(model)
            return model

    def warm_up(self, model: Any) -> None:
        """Run one small real txt2img job on ``model`` when it is loaded, so the user's first image does not
        pay first-call costs: A1111's prompt grammar and emphasis through the prompt encoder, the default
        sampler's steps, the UNet with CFG, the VAE decode, the job's live preview (TAESD file read and run
        when the setting uses it) and a PNG encode with a text chunk.

        The loader's :func:`sdweb.engine.accelerator.warm_up` has run each component once on tiny inputs
        already. On the CPU this job is tiny too (64x64): there the first image's remaining first-call cost
        at full size was measured at about 0.7 CPU seconds (UNet and VAE kernels for the new shapes), next to
        about 10 CPU seconds for a full-size step plus decode at load. On an accelerator, where first-call
        costs follow the shapes and a full-size pass is quick, it runs at the family's default size.
        SD 3.x / Flux on the CPU are left out (their T5 prompt alone takes many seconds there). Skipped under
        offload; never fails a load (logged).
        """
        import time

        from sdweb.engine.accelerator import execution_device, offload_mode
        from sdweb.engine.families.defaults import family_defaults, is_flow_family

        pipe = model.pipe
        family = str(getattr(model, "family", "") or "")
        on_cpu = execution_device(pipe).type == "cpu"
        if offload_mode(pipe) != "none" or (on_cpu and is_flow_family(family)):
            return
        defaults = family_defaults(family)
        width, height = (64, 64) if on_cpu else (defaults.width, defaults.height)
        params = GenerationParams(prompt="warm-up, (detail:1.1), [plain]", negative_prompt="blurry",
                                  steps=2, width=width, height=height, seed=0, subseed=0,
                                  sampler_name=defaults.sampler_name, cfg_scale=defaults.cfg_scale or 7.0,
                                  clip_skip=1, rng="CPU", eta_noise_seed_delta=0)
        started = time.perf_counter()
        try:
            with job_scope(pipe, self._memory), tile_policy(self._tile_policy()), \
                    preview_scope(self._previewer()):
                job = self._job(JobControl(), lambda _step: None, 1)
                run = self.families.for_family(model.family).txt2img(model, params, job)
            _warm_png(run)
        except Exception as exc:  # a warm-up never fails a load
            logger.debug("warm-up job skipped: %s", exc)
            return
        logger.info("warm-up job (%dx%d) in %.2f s", width, height, time.perf_counter() - started)

    def current_info(self) -> Any:
        """The CheckpointInfo of the model on the device now (a job may have switched it), or None."""
        current = self._cache.current
        return getattr(current, "info", None)

    def unload_all(self) -> None:
        self._cache.unload_all()
        if self.controlnets is not None:
            self.controlnets.cache.clear()
        if self.upscalers is not None:
            self.upscalers.unload()
        if self.face_restorer is not None:
            self.face_restorer.unload()
        if self.preprocessors is not None:  # the ControlNet annotators' networks
            self.preprocessors.unload_models()
        if self._memory is not None:
            self._memory.release()

    def describe(self) -> dict[str, Any]:
        """Device, precision, attention and the loaded models, for the API and the UI."""
        from sdweb.engine.devices import describe_runtime

        described = dict(describe_runtime(self._runtime)) if self._runtime is not None else {}
        described["loaded_models"] = self._cache.loaded()
        return described

    # -- extra networks ----------------------------------------------------------------------
    @property
    def extra_networks(self) -> ExtraNetworks:
        return self._networks

    def embeddings(self) -> dict[str, Any]:
        """``/sdapi/v1/embeddings``: loaded / skipped (with the reason) for the current model."""
        from sdweb.engine.extra_networks.embeddings import text_encoder_widths

        library = self._networks.embeddings
        if library is None:
            return {"loaded": {}, "skipped": {}}
        pipe = getattr(self._cache.current, "pipe", None)
        return library.listing(text_encoder_widths(pipe) if pipe is not None else None)

    def refresh_embeddings(self) -> None:
        if self._networks.embeddings is not None:
            self._networks.embeddings.refresh()

    def count_tokens(self, text: str, *, emphasis: str = "Original") -> tuple[int, int]:
        """``(tokens, limit)`` for the prompt token counter, with the current model's tokenizer
        (``emphasis``: A1111's mode, the setting; "None" counts the weight grammar as text).
        """
        current = self._cache.current
        pipe = getattr(current, "pipe", None)
        family = self.families.for_family(getattr(current, "family", None)) if current is not None else None
        if family is not None and getattr(family, "uses_modules", False):
            return family.count_tokens(pipe, text)  # T5 models: T5 tokens, its chunk size as the limit
        tokenizer = getattr(pipe, "tokenizer", None)
        if tokenizer is not None and self._networks.embeddings is not None:
            from sdweb.engine.extra_networks.embeddings import counting_tokenizer

            # An embedding's name counts as its vectors, as in A1111's counter.
            tokenizer = counting_tokenizer(current.pipe, self._networks.embeddings)
        if tokenizer is None:
            if self._fallback_tokenizer is None:
                from transformers import CLIPTokenizer

                self._fallback_tokenizer = CLIPTokenizer.from_pretrained(
                    str(_FALLBACK_TOKENIZER), local_files_only=True)
            tokenizer = self._fallback_tokenizer
        return count_tokens(tokenizer, text, emphasis=emphasis)

    def _checkpoint(self, query: str | None) -> Any:
        if query:
            return self._with_hash(self._registry.find(query))
        current = self._cache.current
        if current is not None:
            return current.info
        selected = self._options.get("sd_model_checkpoint") if self._options is not None else ""
        if not selected:
            raise LookupError("no checkpoint selected: choose one in the Stable Diffusion checkpoint list "
                              "or put a .safetensors file in models/Stable-diffusion")
        return self._with_hash(self._registry.find(selected))

    def _with_hash(self, info: Any) -> Any:
        # The infotext's "Model hash" needs it; hashed once per file and cached on disk.
        ensure = getattr(self._registry, "ensure_hash", None)
        return ensure(info) if ensure is not None and getattr(info, "shorthash", None) is None else info

    def _vae_path(self, choice: str | None, info: Any) -> Path | None:
        if choice is None and self._options is not None:
            choice = self._options.get("sd_vae")
        return self._vaes.resolve(choice, info)


def _warm_png(run: EngineRun) -> None:
    """Encode the warm-up image as the image store does (PNG with a text chunk), into memory."""
    import io

    from PIL.PngImagePlugin import PngInfo

    for generated in run.images[:1]:
        info = PngInfo()
        info.add_text("parameters", "warm-up")
        generated.image.save(io.BytesIO(), format="PNG", pnginfo=info)


def create_engine(settings: Any, registry: Any, vae_registry: Any, samplers: SamplerRegistry,
                  options: Any = None, loras: Any = None, upscaler_models: Any = None,
                  modules: Any = None, controlnets: Any = None, preprocessors: Any = None) -> Engine:
    """Build the engine for the launch ``settings``: runtime, CPU threads, model cache, extra networks.

    ``loras``: the service layer's ``LoraLibrary`` (shared, so its listing and the engine agree); built
    here from ``settings.paths.lora_dir`` when not given. ``upscaler_models``: the service layer's
    ``UpscalerModelLibrary`` likewise (models/ESRGAN), run on the runtime's device and dtype.
    ``modules``: the service layer's ``ModuleRegistry`` (models/text_encoder + models/VAE); built here
    when not given.
    """
    from sdweb.engine.devices import apply_backend_flags, configure_threads, resolve_runtime
    from sdweb.engine.extra_networks.embeddings import EmbeddingLibrary
    from sdweb.engine.extra_networks.lora import LoraLibrary
    from sdweb.engine.face_restore import FaceModelLibrary, FaceRestorer
    from sdweb.engine.heap import configure_heap_reuse
    from sdweb.engine.models.cache import ModelCache
    from sdweb.engine.models.loader import check_checkpoint, load_checkpoint
    from sdweb.engine.models.modules import ModuleRegistry
    from sdweb.engine.upscalers import DEFAULT_OVERLAP, DEFAULT_TILE, ModelUpscalers, UpscalerModelLibrary

    runtime = resolve_runtime(settings)
    apply_backend_flags(runtime)
    memory = DeviceMemory(runtime.device)
    # --threads wins; else the "torch_threads" setting (0 = one per physical core, the runtime's default).
    option_threads = int(options.get("torch_threads") or 0) if options is not None else 0
    configure_threads(getattr(settings, "threads", None) or option_threads or runtime.threads)
    configure_heap_reuse(runtime.device)  # CPU: no page faults for every large activation

    module_files = modules if modules is not None else ModuleRegistry(settings.paths.text_encoder_dir,
                                                                       settings.paths.vae_dir)

    def loader(info: Any, vae: Any, modules: Any = None) -> Any:
        if modules is not None:  # SD 3.x / Flux: text encoders and VAE chosen by the engine
            files = {slot: module_files.file_for_path(Path(path)) for slot, path in modules}
            vae_file = files.get("vae")
            vae_hash = vae_registry.short_hash(vae_file.path) if vae_file is not None else None
            return load_checkpoint(info, runtime, modules=files, vae_hash=vae_hash)
        if vae is None:
            return load_checkpoint(info, runtime)
        # The VAE hash for infotexts comes from the registry's on-disk cache: hashed once per file.
        return load_checkpoint(info, runtime, vae_path=Path(vae), vae_hash=vae_registry.short_hash(Path(vae)))

    def precheck(info: Any, vae: Any) -> None:
        check_checkpoint(info, Path(vae) if vae is not None else None)

    cache = ModelCache(loader, capacity=settings.models_in_memory, offload_device=runtime.parking_device,
                       precheck=precheck, on_released=memory.release)
    logger.info("engine ready: %s, %s, %s attention", runtime.device, runtime.dtype, runtime.attention)
    if loras is None:
        loras = LoraLibrary(settings.paths.lora_dir)
    embeddings = EmbeddingLibrary(settings.paths.embeddings_dir, hashes=getattr(loras, "hashes", None))
    if upscaler_models is None:
        upscaler_models = UpscalerModelLibrary(settings.paths.esrgan_dir)

    def upscaler_tiling() -> tuple[int, int]:
        # The "ESRGAN_tile" / "ESRGAN_tile_overlap" settings, read per upscale so a change applies at once.
        try:
            return int(options.get("ESRGAN_tile")), int(options.get("ESRGAN_tile_overlap"))
        except (AttributeError, KeyError):  # no options, or a store without these specs
            return DEFAULT_TILE, DEFAULT_OVERLAP

    # Under --medvram/--lowvram the upscaler model waits in RAM and visits the device only to upscale.
    upscalers = ModelUpscalers(upscaler_models, device=runtime.device, dtype=runtime.dtype,
                               tiling=upscaler_tiling,
                               park_device="cpu" if runtime.offload != "none" else None,
                               memory=memory)
    face_restorer = FaceRestorer(FaceModelLibrary(settings.paths.root / "models"), device=runtime.device,
                                 dtype=runtime.dtype)
    return Engine(cache, registry, vae_registry, samplers, runtime=runtime, options=options, loras=loras,
                  embeddings=embeddings, upscalers=upscalers, modules=module_files, memory=memory,
                  face_restorer=face_restorer, controlnets=controlnets, preprocessors=preprocessors,
                  previews=TaesdLibrary(settings.paths.vae_approx_dir))
