"""The command line and the server: parse A1111's flags, build the services, serve UI + API.

This is the composition root's body (``webui.py`` only calls :func:`main`). It is the one module
allowed to know every layer. Torch is not imported here: the page is served first, then the engine
warms up in the background.

Commands::

    python webui.py [flags]                 start the server (UI; API with --api; API only with --nowebui)
    python webui.py [flags] txt2img ...     generate from the command line, print the saved paths
    python webui.py [flags] models          list the checkpoints found (also: --list-models)
    python webui.py [flags] merge A B ...   merge checkpoints (A1111's Checkpoint Merger), print the title
    python webui.py --download-model NAME_OR_REPO[:FILE]   fetch a checkpoint from the Hugging Face hub
    python webui.py worker --head | --join HOST:PORT --lan ADDRESS   offer this PC's GPUs to a cluster
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sdweb import __version__
from sdweb.a1111_flags import strip_ignored_flags, warn_ignored
from sdweb.config import PROJECT_ROOT, DataPaths, LaunchSettings, parse_credentials
from sdweb.params import GenerationParams, format_validation_error

logger = logging.getLogger(__name__)


#: A1111's ``--precision`` values -> ours.
A1111_PRECISIONS = {"full": "fp32", "half": "fp16", "autocast": "auto"}


class UsageError(Exception):
    """A bad flag or value: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webui.py", description="sdweb: a local Stable Diffusion web UI (A1111-compatible flags).")
    add = parser.add_argument
    add("--data-dir", type=Path, default=None, help="folder for models/, outputs/, extensions/, config")
    add("--ckpt-dir", type=Path, default=None, help="extra folder with Stable Diffusion checkpoints")
    add("--vae-dir", type=Path, default=None, help="folder with VAE files (default models/VAE)")
    add("--lora-dir", type=Path, default=None, help="folder with LoRA files (default models/Lora)")
    add("--controlnet-dir", type=Path, default=None,
        help="another folder of ControlNet models, besides models/ControlNet")
    add("--embeddings-dir", type=Path, default=None, help="folder with textual inversion embeddings")
    add("--ckpt", default=None, help="checkpoint to load at start (title, name or hash)")
    add("--listen", action="store_true", help="serve on all interfaces (LAN); set --gradio-auth too")
    add("--port", type=int, default=None, help="port (default 7860)")
    add("--api", action="store_true", help="serve the A1111-compatible API at /sdapi/v1")
    add("--nowebui", action="store_true", help="serve the API only (implies --api)")
    add("--gradio-auth", default=None, help="require a login: user:pass[,user2:pass2]")
    add("--gradio-auth-path", type=Path, default=None, help="file with user:pass lines")
    add("--api-auth", default=None, help="HTTP Basic credentials for the API: user:pass[,...]")
    add("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1, mps")
    add("--use-cpu", nargs="*", default=None, help="A1111 compatibility: --use-cpu all == --device cpu")
    add("--precision", choices=("auto", "fp32", "fp16", "bf16", *A1111_PRECISIONS), default="auto",
        help="auto, fp32, fp16, bf16 (A1111's full = fp32, half = fp16, autocast = auto)")
    add("--no-half", action="store_true", help="run in fp32 (same as --precision fp32)")
    add("--no-half-vae", action="store_true", help="keep the VAE in fp32")
    add("--attention", choices=("auto", "sdpa", "xformers", "sliced"), default="auto")
    add("--xformers", action="store_true", help="same as --attention xformers")
    add("--opt-sdp-attention", action="store_true", help="same as --attention sdpa")
    add("--opt-split-attention", action="store_true", help="same as --attention sliced")
    add("--medvram", action="store_true", help="offload whole models to CPU between uses (low VRAM)")
    add("--lowvram", action="store_true", help="offload layer by layer (very low VRAM, slow)")
    add("--vae-tiling", action="store_true",
        help="always decode/encode with the VAE in tiles (else only above the VAE tiling memory budget)")
    add("--models-in-memory", type=int, default=1, help="checkpoints kept loaded in RAM (LRU)")
    add("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    add("--disable-all-extensions", action="store_true")
    add("--enable-insecure-extension-access", action="store_true",
        help="allow installing extensions while --listen is on")
    add("--cors-allow-origins", default=None, help="browser origins allowed to call the server (CORS), "
        "comma-separated: http://localhost:8000,https://example.org")
    add("--cors-allow-origins-regex", default=None, help="browser origins allowed (CORS), as one regex")
    add("--api-allow-local-requests", action="store_true",
        help="let API image URLs point at this machine or the LAN (refused by default)")
    add("--allow-outdir-anywhere", action="store_true",
        help="let API clients set output folder options (outdir_*) to absolute paths outside the data "
             "folder (refused by default; the local Settings tab may always set them)")
    add("--allowed-hosts", default=None, metavar="NAME[,NAME2]",
        help="host names the server answers to besides localhost and this machine's addresses "
             "(others get 403: a guard against DNS rebinding); .example.org allows its subdomains, * any")
    add("--max-body-mb", type=int, default=64, metavar="MB",
        help="largest request body in MiB (default 64); larger requests get 413")
    add("--skip-demo-model", action="store_true", help="do not offer the bundled demo model")
    add("--list-models", action="store_true", help="print the checkpoints found and exit")
    add("--download-model", metavar="NAME_OR_REPO[:FILE]", default=None,
        help="download a checkpoint from the Hugging Face hub into models/Stable-diffusion and exit "
             "(sd15, sdxl, owner/repo or owner/repo:file.safetensors)")
    add("--workers", default=None, metavar="local[:N]",
        help="run jobs on Ray workers on this PC: one per GPU, or N (needs sdweb[cluster])")
    add("--ray-address", default=None, metavar="HOST:PORT",
        help="run jobs on the workers of a Ray cluster started with 'webui.py worker' (docs/multi-gpu.md)")
    add("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    sub = parser.add_subparsers(dest="command")
    sub.add_parser("models", help="list the checkpoints found")
    t2i = sub.add_parser("txt2img", help="generate images without starting the server")
    targ = t2i.add_argument
    targ("--prompt", required=True)
    targ("--negative-prompt", default="")
    # None: A1111's defaults (20, 7, "Euler a"), or the checkpoint family's for SD 3.x / Flux.
    targ("--steps", type=int, default=None)
    targ("--cfg-scale", type=float, default=None)
    targ("--distilled-cfg-scale", type=float, default=None, help="Flux dev's guidance (default 3.5)")
    targ("--sampler", default=None)
    targ("--scheduler", default="Automatic")
    targ("--seed", type=int, default=-1)
    targ("--subseed", type=int, default=-1)
    targ("--subseed-strength", type=float, default=0.0)
    targ("--width", type=int, default=512)
    targ("--height", type=int, default=512)
    targ("--batch-size", type=int, default=1)
    targ("--n-iter", type=int, default=1)
    targ("--clip-skip", type=int, default=None)
    targ("--style", action="append", default=[], dest="styles")
    targ("--ckpt", dest="t2i_ckpt", default=None, help="checkpoint for this run")
    targ("--vae", default=None)
    targ("--module", action="append", default=None, dest="modules",
         help="SD 3.x / Flux: a text encoder or VAE file of models/text_encoder or models/VAE (repeatable)")
    targ("--rng", choices=("CPU", "GPU"), default=None)
    targ("--no-save", action="store_true", help="do not write images (only useful with --json)")
    merge = sub.add_parser("merge", help="merge checkpoints into models/Stable-diffusion (A1111's merger)")
    marg = merge.add_argument
    marg("primary", help="model A (title, name or hash)")
    marg("secondary", nargs="?", default="", help="model B")
    marg("tertiary", nargs="?", default="", help="model C (add difference)")
    marg("--method", default="Weighted sum", choices=("Weighted sum", "Add difference", "No interpolation"))
    marg("--multiplier", type=float, default=0.3, help="M: (1-M)*A + M*B, or A + M*(B-C)")
    marg("--fp16", action="store_true", help="save floating-point weights as float16")
    marg("--name", default="", help="file name of the result (default: A1111's, e.g. '0.7(a) + 0.3(b)')")
    marg("--bake-in-vae", default="None", help="a VAE from models/VAE to put into the result")
    marg("--discard-weights", default="", help="a regular expression: matching keys are left out")
    marg("--metadata-json", default="", help="extra metadata, a JSON object")
    marg("--no-recipe", action="store_true", help="do not write sd_merge_recipe / sd_merge_models")
    node = sub.add_parser("worker", help="offer this PC's GPUs to an sdweb cluster (runs 'ray start')")
    nodearg = node.add_argument
    nodearg("--head", action="store_true", help="start the cluster head (on the PC running the web UI)")
    nodearg("--join", default=None, metavar="HOST:PORT", help="join the head at HOST:PORT")
    nodearg("--lan", default=None, metavar="ADDRESS",
            help="this PC's LAN address: reach other PCs (without it the head is loopback-only)")
    nodearg("--head-port", type=int, default=6379, help="the head's port (default 6379)")
    nodearg("--port-base", type=int, default=6380, help="this node's other ports: BASE+1..BASE+199")
    nodearg("--node-workers", type=int, default=1, help="workers on a PC without GPUs (default 1)")
    nodearg("--num-cpus", type=int, default=None, help="CPUs Ray may use on this PC")
    return parser


def settings_from_args(args: argparse.Namespace) -> LaunchSettings:
    """Turn parsed flags into frozen :class:`LaunchSettings`; raise UsageError for bad values."""
    root = (args.data_dir or PROJECT_ROOT).expanduser()
    paths = DataPaths.from_root(root, ckpt_dir=args.ckpt_dir, vae_dir=args.vae_dir,
                                lora_dir=args.lora_dir, embeddings_dir=args.embeddings_dir,
                                controlnet_dir=args.controlnet_dir)
    try:
        gradio_auth: tuple[tuple[str, str], ...] = ()
        if args.gradio_auth:
            gradio_auth += parse_credentials(args.gradio_auth)
        if args.gradio_auth_path:
            try:
                gradio_auth += parse_credentials(args.gradio_auth_path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"--gradio-auth-path: cannot read {args.gradio_auth_path}: {exc}") from exc
        api_auth = parse_credentials(args.api_auth) if args.api_auth else ()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc

    attention = args.attention
    if args.xformers:
        attention = "xformers"
    elif args.opt_sdp_attention:
        attention = "sdpa"
    elif args.opt_split_attention:
        attention = "sliced"
    precision = "fp32" if args.no_half else A1111_PRECISIONS.get(args.precision, args.precision)
    origins = tuple(item.strip() for item in (args.cors_allow_origins or "").split(",") if item.strip())
    if args.cors_allow_origins_regex:
        try:
            re.compile(args.cors_allow_origins_regex)
        except re.error as exc:
            raise UsageError(f"--cors-allow-origins-regex is not a valid regular expression: {exc}") from exc
    cpu_forced = args.use_cpu is not None and ("all" in args.use_cpu or not args.use_cpu)
    device = "cpu" if cpu_forced else args.device
    offload = "sequential" if args.lowvram else "model" if args.medvram else "none"
    port = args.port if args.port is not None else 7860
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    if args.models_in_memory < 1:
        raise UsageError("--models-in-memory must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.max_body_mb < 1:
        raise UsageError("--max-body-mb must be at least 1")
    allowed_hosts = tuple(item.strip().lower() for item in (args.allowed_hosts or "").split(",")
                          if item.strip())
    workers, ray_address = _cluster_flags(args)
    return LaunchSettings(
        paths=paths,
        listen=args.listen,
        host="0.0.0.0" if args.listen else "127.0.0.1",  # noqa: S104 - only with --listen (LAN)
        port=port,
        api=args.api or args.nowebui,
        nowebui=args.nowebui,
        gradio_auth=gradio_auth,
        api_auth=api_auth,
        device=device,
        precision=precision,
        no_half_vae=args.no_half_vae,
        attention=attention,
        offload=offload,
        vae_tiling=args.vae_tiling,
        models_in_memory=args.models_in_memory,
        threads=args.threads,
        disable_all_extensions=args.disable_all_extensions,
        enable_insecure_extension_access=args.enable_insecure_extension_access,
        ckpt=args.ckpt,
        skip_demo_model=args.skip_demo_model,
        api_allow_local_requests=args.api_allow_local_requests,
        allow_outdir_anywhere=args.allow_outdir_anywhere,
        cors_allow_origins=origins,
        cors_allow_origins_regex=args.cors_allow_origins_regex or None,
        workers=workers,
        ray_address=ray_address,
        allowed_hosts=allowed_hosts,
        max_body_mb=args.max_body_mb,
    )


def _cluster_flags(args: argparse.Namespace) -> tuple[int | None, str | None]:
    """``--workers`` / ``--ray-address`` checked without importing Ray."""
    if args.workers is None and args.ray_address is None:
        return None, None
    from sdweb.services.cluster.connect import parse_address, parse_workers

    if args.workers is not None and args.ray_address is not None:
        raise UsageError("give --workers local or --ray-address HOST:PORT, not both")
    try:
        workers = parse_workers(args.workers) if args.workers is not None else None
        if args.ray_address is not None:
            parse_address(args.ray_address)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return workers, args.ray_address


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def create_app(services: Any, *, api: bool | None = None, webui: bool | None = None) -> Any:
    """One FastAPI app: the Gradio UI at ``/`` and (with --api) the A1111 API at ``/sdapi/v1``."""
    from fastapi import FastAPI

    from sdweb.api.cors import install_cors
    from sdweb.api.errors import install_error_handlers
    from sdweb.api.hosts import install_host_check
    from sdweb.api.limits import install_body_limit
    from sdweb.api.router import make_router
    from sdweb.api.security import LoginThrottleMiddleware, api_dependencies
    from sdweb.ratelimit import login_rule

    settings: LaunchSettings = services.settings
    api = settings.api if api is None else api
    webui = (not settings.nowebui) if webui is None else webui
    app = FastAPI(title="sdweb", version=__version__, docs_url="/docs", redoc_url=None)
    scrubber = settings.paths.client_scrubber()
    install_error_handlers(app, scrubber)
    from sdweb.safepath import set_client_scrubber

    set_client_scrubber(scrubber)  # warnings in answers and the UI's messages: no server paths either
    install_cors(app, settings)
    if api:
        app.include_router(make_router(services))  # its paths are whole: /sdapi/v1/..., /controlnet/...
        # Extension routes sit behind the same credentials as ours: never an open door beside a locked one.
        guard = api_dependencies(settings.effective_api_auth, services.login_limiter)
        for _name, routers in services.plugins.collect("register_api_routes", services=services):
            for router in routers or ():
                app.include_router(router, prefix="/sdapi/v1/ext", dependencies=guard)
    if webui:
        import gradio as gr

        from sdweb.ui.app import build_ui, mount_kwargs

        blocks = build_ui(services)
        auth = list(settings.gradio_auth) or None
        # The login page says the rule up front: gradio's form shows no server message for a paused login.
        notice = {"auth_message": login_rule(services.login_limiter)} if auth else {}
        app = gr.mount_gradio_app(app, blocks, path="/", auth=auth, **notice, **mount_kwargs(services))
        if auth:  # failed logins on the page are paused per address, as the API's are
            app.add_middleware(LoginThrottleMiddleware, limiter=services.login_limiter)
    install_body_limit(app, settings.max_body_mb)  # before anything reads or queues a request
    # Outermost: a request for a name that is not this server's (DNS rebinding) never reaches the UI or API.
    install_host_check(app, settings.allowed_hosts, bind_host=settings.host)
    services.plugins.notify("on_app_started", app=app, services=services)
    return app


def lan_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses, to print for --listen (no packet is sent)."""
    found: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(str(info[4][0]))
    except OSError:
        pass
    return sorted(address for address in found if not address.startswith("127."))


def check_port_free(host: str, port: int) -> None:
    """Raise UsageError with a clear message when the port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise UsageError(
                    f"port {port} on {host} is already in use (another web UI running?); "
                    f"stop it or choose another port with --port") from exc
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def serve(settings: LaunchSettings) -> int:
    """Build everything, serve until Ctrl+C, restart in place when the Extensions tab asks."""
    import uvicorn

    from sdweb.services.factory import build_services

    check_port_free(settings.host, settings.port)
    restart_requested = threading.Event()
    server_holder: list[uvicorn.Server] = []

    def restart() -> None:
        restart_requested.set()
        if server_holder:
            server_holder[0].should_exit = True

    started = time.perf_counter()
    services = build_services(settings, restart=restart)
    app = create_app(services)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    server_holder.append(server)

    def announce_and_warm_up() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        _announce(settings, time.perf_counter() - started)
        if settings.ckpt:
            try:
                services.models.select(settings.ckpt)
            except Exception as exc:  # shown in the page's model status too
                logger.error("could not load --ckpt %s: %s", settings.ckpt, exc)
            return
        try:
            services.models.load_selected(wait=True)
        except Exception as exc:
            logger.error("the model could not be loaded: %s", exc)

    threading.Thread(target=announce_and_warm_up, name="sdweb-warmup", daemon=True).start()
    server.run()
    services.worker.close(timeout=2)
    if restart_requested.is_set():
        print("Restarting sdweb...", flush=True)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    return 0


def _announce(settings: LaunchSettings, seconds: float) -> None:
    where = "127.0.0.1" if settings.host in ("127.0.0.1", "localhost") else settings.host
    print(f"sdweb {__version__} is up in {seconds:.1f} s", flush=True)
    if not settings.nowebui:
        print(f"Running on local URL:  http://{'127.0.0.1' if settings.listen else where}:{settings.port}",
              flush=True)
    if settings.api:
        print(f"API: http://127.0.0.1:{settings.port}/sdapi/v1  (docs at /docs)", flush=True)
    if settings.listen:
        for address in lan_addresses():
            print(f"On your LAN, open:    http://{address}:{settings.port}", flush=True)
        if not settings.gradio_auth:
            print("WARNING: --listen without --gradio-auth: anyone on your network can use this UI and "
                  "see your images. Add --gradio-auth user:password.", flush=True)


# ---------------------------------------------------------------------------------------------
# Commands without the server
# ---------------------------------------------------------------------------------------------


def list_models(settings: LaunchSettings) -> int:
    """One line per checkpoint: title, family, size, short hash; the bundled demo last, marked as such."""
    from sdweb.engine.models.hashes import HashCache
    from sdweb.engine.models.registry import CheckpointRegistry
    from sdweb.services.factory import DEMO_CHECKPOINT

    hash_cache = HashCache(settings.paths.cache_dir / "hashes.json")
    demo_files = () if settings.skip_demo_model else (DEMO_CHECKPOINT,)
    registry = CheckpointRegistry(settings.paths.ckpt_dirs, hash_cache, demo_files=demo_files)
    found = registry.refresh()
    if not any(not info.demo for info in found):
        print(f"No checkpoints found. Put .safetensors files in {settings.paths.ckpt_dirs[0]}"
              + (" (until then the bundled demo model is used)" if found else ""))
    for info in found:
        info = registry.ensure_hash(info)
        # A refused file (depth, pix2pix...) may still have a family; say first that it cannot be used.
        family = f"unsupported: {info.detect_error}" if info.detect_error else (info.family or "unknown")
        demo = "\tdemo model (simple shapes, 64x64)" if info.demo else ""
        print(f"{info.title}\t{family}\t{info.size / 2**30:.2f} GiB\t{info.shorthash or '-'}{demo}")
    return 0


def download_command(settings: LaunchSettings, spec: str) -> int:
    """Fetch a checkpoint (resumable, sha256-verified) with a progress bar on stderr; 1 on failure."""
    from sdweb.engine.models.download import DownloadError, download_model

    interactive = sys.stderr.isatty()
    last_shown = [-1]

    def show(done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 100
        if percent == last_shown[0] or (not interactive and percent % 10):
            return
        last_shown[0] = percent
        bar = "#" * (percent * 30 // 100)
        line = f"[{bar:.<30}] {percent:3d}% {done / 1e6:,.0f}/{total / 1e6:,.0f} MB"
        print(("\r" if interactive else "") + line, end="" if interactive else "\n", file=sys.stderr,
              flush=True)

    try:
        path = download_model(spec, settings.paths.ckpt_dirs[0], progress=show)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    except DownloadError as exc:
        if interactive:
            print(file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if interactive:
        print(file=sys.stderr)
    print(path)
    return 0


def txt2img_command(settings: LaunchSettings, args: argparse.Namespace) -> int:
    from sdweb.services.factory import build_services

    services = build_services(settings)
    checkpoint = args.t2i_ckpt or settings.ckpt
    # Options left out take A1111's defaults, or the checkpoint family's (Flux: 20 steps at CFG 1 with
    # distilled guidance 3.5, schnell 4 steps, Euler; SD 3.5: its steps and CFG).
    defaults = {"steps": 20, "cfg_scale": 7.0, "sampler_name": "Euler a", "distilled_cfg_scale": 3.5}
    family = services.models.family_defaults(checkpoint)
    if family.t5_tokens is not None:  # an SD 3.x / Flux checkpoint
        defaults.update({name: value for name in defaults if (value := getattr(family, name)) is not None})
    given = {"steps": args.steps, "cfg_scale": args.cfg_scale, "sampler_name": args.sampler,
             "distilled_cfg_scale": args.distilled_cfg_scale}
    chosen = {name: value if value is not None else defaults[name] for name, value in given.items()}
    try:
        params = GenerationParams(
            prompt=args.prompt, negative_prompt=args.negative_prompt, styles=tuple(args.styles),
            scheduler=args.scheduler, seed=args.seed, subseed=args.subseed,
            subseed_strength=args.subseed_strength, width=args.width, height=args.height,
            batch_size=args.batch_size, n_iter=args.n_iter, clip_skip=args.clip_skip, checkpoint=checkpoint,
            vae=args.vae, rng=args.rng, additional_modules=tuple(args.modules) if args.modules else None,
            **chosen,
        )
    except ValidationError as exc:
        services.worker.close(timeout=1)
        raise UsageError(format_validation_error(exc)) from exc
    from sdweb.services.generation import GenerationError

    try:
        job = services.generation.submit(params, save=not args.no_save, source="cli")
        _follow(services, job)
        result = job.wait()
    except GenerationError as exc:
        raise UsageError(exc.message) from exc
    finally:
        services.worker.close(timeout=1)
    for path in result.paths:
        print(path)
    if result.grid_path:
        print(result.grid_path)
    if result.interrupted:
        print("interrupted", file=sys.stderr)
    return 0


def merge_command(settings: LaunchSettings, args: argparse.Namespace) -> int:
    """Merge without starting the server (no GPU worker: the merge runs here); print the result's title."""
    from sdweb.engine.models.hashes import HashCache
    from sdweb.engine.models.registry import CheckpointRegistry, VaeRegistry
    from sdweb.services.merger import MergeRequest, MergeRequestError, MergeService

    hashes = HashCache(settings.paths.cache_dir / "hashes.json")
    registry = CheckpointRegistry(settings.paths.ckpt_dirs, hashes)
    merger = MergeService(registry, VaeRegistry(settings.paths.vae_dir, hashes))
    request = MergeRequest(
        primary_model_name=args.primary, secondary_model_name=args.secondary,
        tertiary_model_name=args.tertiary,
        interp_method=args.method, multiplier=args.multiplier, save_as_half=args.fp16, custom_name=args.name,
        bake_in_vae=args.bake_in_vae, discard_weights=args.discard_weights, metadata_json=args.metadata_json,
        add_merge_recipe=not args.no_recipe,
    )
    try:
        result = merger.merge(request)
    except MergeRequestError as exc:
        raise UsageError(str(exc)) from exc
    print(result.message, file=sys.stderr)
    print(result.title)
    return 0


def worker_command(settings: LaunchSettings, args: argparse.Namespace) -> int:
    """``webui.py worker``: run ``ray start`` for an sdweb cluster node in the foreground."""
    from sdweb.services.cluster.connect import ClusterSetupError
    from sdweb.services.cluster.node import NodeRequest, run_node

    try:
        request = NodeRequest(data_dir=settings.paths.root, head=args.head, join=args.join, lan=args.lan,
                              port=args.head_port, port_base=args.port_base, workers=args.node_workers,
                              num_cpus=args.num_cpus)
        return run_node(request)
    except (ClusterSetupError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def _follow(services: Any, job: Any) -> None:
    """A terminal progress bar on stderr while the job runs."""
    width = 30
    interactive = sys.stderr.isatty()
    last = ""
    while not job.finished and not (job.task is not None and job.task.done):
        progress = services.generation.progress(job)
        if progress.state == "queued":
            line = "waiting for the model..."
        else:
            done = int(progress.fraction * width)
            eta = progress.eta_seconds
            line = (f"[{'#' * done}{'.' * (width - done)}] batch {progress.job_no + 1}/{progress.job_count} "
                    f"step {progress.sampling_step}/{progress.sampling_steps}"
                    + (f" ETA {eta:.0f}s" if eta is not None else ""))
        if line != last:
            print(("\r" if interactive else "") + line, end="" if interactive else "\n", file=sys.stderr,
                  flush=True)
            last = line
        time.sleep(0.2)
    if interactive:
        print(file=sys.stderr)


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (README: Performance)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from sdweb.engine.heap import share_one_heap

    share_one_heap()  # before any thread starts (see sdweb.engine.heap)
    parser = build_parser()
    # A1111's flags that sdweb does not use are taken out (and named in a warning), not refused.
    kept, ignored = strip_ignored_flags(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(kept)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_ignored(ignored)
    try:
        settings = settings_from_args(args)
        if args.download_model:
            return download_command(settings, args.download_model)
        if args.list_models or args.command == "models":
            return list_models(settings)
        if args.command == "txt2img":
            return txt2img_command(settings, args)
        if args.command == "merge":
            return merge_command(settings, args)
        if args.command == "worker":
            return worker_command(settings, args)
        return serve(settings)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
