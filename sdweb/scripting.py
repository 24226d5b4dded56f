"""The value types of scripts (X/Y/Z plot, prompt matrix, SD upscale ...) and of X/Y/Z axes.

Part of the kernel: pure Python, no layer imported. A script turns one request into many
:class:`~sdweb.params.GenerationParams` and combines their results; it never reaches into the
denoising loop. Built-in scripts and the ones extensions add register the same way, through the
``register_scripts`` / ``register_xyz_axes`` hooks (:mod:`sdweb.extensions.hookspecs`), with these
types (re-exported by :mod:`sdweb.plugin_api`).

A script runs in two steps:

1. ``ScriptSpec.prepare(call)`` in the caller's thread, before anything is queued: it reads the
   arguments (A1111's positional order, see :attr:`ScriptSpec.args`), checks them, and returns a
   :class:`PreparedScript` naming every request it will run (checked like any request: an unknown
   sampler in an axis is refused now, not after half a grid). Bad arguments raise :class:`ScriptError`.
2. ``PreparedScript.run(context)`` on the GPU worker, as one job: ``context.generate(params)`` runs one
   request synchronously inside that job (its progress, interrupt and skip are the job's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sdweb.params import GenerationParams, GenerationResult

ScriptMode = Literal["txt2img", "img2img"]
#: How a control looks in the UI (and what ``/script-info`` says about an argument).
ArgKind = Literal["checkbox", "slider", "number", "textbox", "dropdown", "multiselect", "radio", "html"]
#: How an axis' values are parsed: A1111's range syntax for numbers, permutations for "Prompt order".
AxisValueType = Literal["int", "float", "str", "permutations"]
#: How a value is written in the grid legend: ``"Steps: 20"``, ``"20"``, ``"a, b"``, nothing, file name.
AxisFormat = Literal["label", "value", "join", "nothing", "basename"]


class ScriptError(ValueError):
    """Script arguments that cannot be used; the message names the argument (and the allowed values)."""


class ScriptEnvironment(Protocol):
    """What a script may look up while it prepares (names users can choose, settings)."""

    def sampler_names(self) -> list[str]: ...

    def find_sampler(self, name: str) -> str:
        """The canonical sampler name; LookupError naming the known ones."""
        ...

    def schedule_names(self) -> list[str]: ...

    def checkpoint_titles(self) -> list[str]: ...

    def find_checkpoint(self, query: str) -> str:
        """The title of the checkpoint ``query`` names; LookupError naming known ones."""
        ...

    def vae_names(self) -> list[str]: ...

    def upscaler_names(self) -> list[str]:
        """Pixel upscalers ("None", "Lanczos", ..., the models of models/ESRGAN)."""
        ...

    def hires_upscaler_names(self) -> list[str]: ...

    def style_names(self) -> list[str]: ...

    def xyz_axes(self, mode: ScriptMode) -> list[XyzAxis]:
        """The X/Y/Z plot axes of ``mode`` in A1111's order, then the ones extensions add."""
        ...

    def option(self, key: str) -> Any: ...


class ScriptContext(Protocol):
    """What a running script may do; given by the service, on the GPU worker."""

    def generate(self, params: GenerationParams, *, init_images: Sequence[Any] = (), mask: Any = None,
                 save: bool = True, extra: dict[str, Any] | None = None) -> GenerationResult:
        """Run one request now, inside the script's job (seeds -1 resolved, images saved with infotext).

        ``extra``: infotext pairs the script adds to each image (``{"SD upscale overlap": 64}``).
        """
        ...

    def upscale(self, image: Any, *, upscaler: str, factor: float) -> Any:
        """``image`` (PIL) scaled by ``factor`` with the pixel upscaler named ``upscaler``."""
        ...

    def save_grid(self, image: Any, *, infotext: str, basename: str = "grid") -> str | None:
        """Save a composed grid in the job's grids folder when grids are saved; its path, else None."""
        ...

    def save_image(self, image: Any, *, infotext: str, seed: int) -> str | None:
        """Save a composed image among the job's images when images are saved; its path, else None."""
        ...

    def infotext(self, result: GenerationResult, *, index: int = 0,
                 extra: dict[str, Any] | None = None) -> str:
        """Image ``index`` of ``result``'s infotext with ``extra`` pairs added (for a grid)."""
        ...

    def record_history(self, result: GenerationResult) -> None:
        """Add the script's combined result to the prompt history (once, at its end)."""
        ...

    def set_job_count(self, count: int) -> None:
        """How many generation batches the script runs in all (for the progress bar)."""
        ...

    @property
    def interrupted(self) -> bool: ...

    @property
    def skipped(self) -> bool: ...

    def clear_skip(self) -> None: ...

    def option(self, key: str) -> Any: ...


@dataclass(frozen=True)
class ScriptArg:
    """One of a script's arguments, in A1111's positional order (``script_args[i]`` of the API).

    Args:
        name: A1111's parameter name ("x_type"); the UI's element id and error messages use it.
        label: what the UI shows ("X type").
        default: the value used when the API leaves it out.
        kind: the control that shows it.
        choices: fixed choices, or ``choices(env, mode)`` giving them now (samplers, upscalers ...).
        minimum: / maximum: / step: the range of numbers.
        help: a line under the control.
        visible: False for arguments kept only for A1111's order (an "info" HTML block, a dropdown twin).
    """

    name: str
    label: str
    default: Any = None
    kind: ArgKind = "textbox"
    choices: Sequence[str] | Callable[[ScriptEnvironment, ScriptMode], Sequence[str]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    help: str = ""
    visible: bool = True

    def choices_now(self, env: ScriptEnvironment, mode: ScriptMode) -> list[str] | None:
        if self.choices is None:
            return None
        if callable(self.choices):
            return [str(choice) for choice in self.choices(env, mode)]
        return [str(choice) for choice in self.choices]


@dataclass(frozen=True)
class ScriptCall:
    """One request for a script: the base request, its arguments (every one, defaults filled) and images."""

    mode: ScriptMode
    params: GenerationParams
    args: tuple[Any, ...]
    env: ScriptEnvironment
    #: img2img: the init images (PIL); empty for txt2img.
    init_images: tuple[Any, ...] = ()
    #: img2img: the inpainting mask (PIL), or None.
    mask: Any = None


@dataclass(frozen=True)
class PreparedScript:
    """A checked script run, ready to queue.

    Args:
        run: ``run(context) -> GenerationResult``: the combined result (grid first where there is one).
        planned: every request it will run, checked before the job is queued.
        job_count: generation batches in all (each ``n_iter`` batch counts), for the progress bar.
        summary: one line saying what it will make ("X/Y/Z plot will create 12 images on a 3x4 grid").
    """

    run: Callable[[ScriptContext], GenerationResult]
    planned: tuple[GenerationParams, ...] = ()
    job_count: int = 1
    summary: str = ""


@dataclass(frozen=True)
class ScriptSpec:
    """A script users choose in the "Script" dropdown or by ``script_name`` in the API.

    Args:
        title: A1111's title ("X/Y/Z plot"); the API matches ``script_name`` to it without case.
        modes: the tabs it shows in.
        args: its arguments in A1111's positional order.
        prepare: ``prepare(call) -> PreparedScript``; raises :class:`ScriptError` for bad arguments.
        description: a sentence for ``/script-info`` and the UI.
    """

    title: str
    modes: tuple[ScriptMode, ...]
    args: tuple[ScriptArg, ...]
    prepare: Callable[[ScriptCall], PreparedScript]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.title.strip():
            raise ValueError("a script needs a title")
        unknown = set(self.modes) - {"txt2img", "img2img"}
        if not self.modes or unknown:
            raise ValueError(f"script {self.title!r}: modes must be txt2img and/or img2img "
                             f"(got {self.modes})")


#: ``apply(params, value, all_values) -> params``: the request of one grid cell (a changed copy).
AxisApply = Callable[[GenerationParams, Any, Sequence[Any]], GenerationParams]
#: ``confirm(values, env) -> values``: check an axis' values (raise ScriptError) and return them canonical.
AxisConfirm = Callable[[Sequence[Any], ScriptEnvironment], Sequence[Any]]


@dataclass(frozen=True)
class XyzAxis:
    """An X/Y/Z plot axis ("Steps", "Sampler", ...).

    Args:
        label: what users choose ("CFG Scale"); the grid legend writes ``label: value``.
        value_type: how the values text is parsed (numbers take A1111's ranges: ``1-5``, ``1-10 (+2)``,
            ``1-10 [5]``).
        apply: makes one cell's request from the base request and the value.
        modes: the tabs it is offered in.
        choices: the values the UI offers in a dropdown (samplers, checkpoints ...), from the environment.
        confirm: checks all values before anything runs and returns them canonical.
        cost: how slow changing it is (checkpoint 1.0, VAE 0.7); the slowest axis changes least often.
        format: how a value is written in the legend.
        unsupported: why the axis cannot be used here; it stays listed so A1111's axis numbers keep
            their meaning in ``script_args``.
    """

    label: str
    value_type: AxisValueType
    apply: AxisApply
    modes: tuple[ScriptMode, ...] = ("txt2img", "img2img")
    choices: Callable[[ScriptEnvironment], Sequence[str]] | None = None
    confirm: AxisConfirm | None = None
    cost: float = 0.0
    format: AxisFormat = "label"
    unsupported: str | None = None
    #: Free-form facts for the UI and /script-info.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
