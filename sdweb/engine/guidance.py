"""Prompts to UNet conditioning, and the guided prediction, for the denoising loops.

This module owns the conditioning side of :mod:`sdweb.engine.generate`'s loop (DESIGN.md step 4-5):
A1111's prompt grammar (``AND`` parts, prompt editing and alternation on A1111's timeline of model calls,
old or new), the encoding of every text the job needs once (emphasis mode, chunks, the texts of one
schedule as one A1111 batch), the conditioning of each model call (prompt and negative prompt of
different lengths paired as A1111 pairs them, :mod:`sdweb.engine.cond_pairing`; SDXL's extra inputs;
guidance-distilled UNets), and the prediction itself: ControlNet / IP-Adapter inputs, the UNet call,
A1111's CFG combination and its CFG skipping (Skip Early CFG, NGMS).

:class:`PromptGuidance` is a mixin of the txt2img / img2img loops: it reads their ``params``, ``pipe``,
``unet``, ``device``, step counters and control stacks, and sets ``part_schedules``, ``negative_schedule``
and the encoded texts in :meth:`PromptGuidance.encode_prompts`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from sdweb.engine.cond_pairing import key_mask, pair_conds
from sdweb.engine.encode import (
    CHUNK_LENGTH,
    ORIGINAL,
    PromptEncoder,
    emphasis_infotext,
    schedule_texts,
    zero_like,
)
from sdweb.engine.samplers.registry import FunctionSamplerPlan
from sdweb.prompts.parser import (
    get_learned_conditioning_prompt_schedules,
    prompt_for_step,
    split_composable_prompt,
    strip_extra_networks,
)


@dataclass
class _Guidance:
    """The conditioning of one batch, ready for the UNet."""

    #: ((1 + K) * B, L, D): [negative, AND part 1..K], each repeated per image; (B, L, D) without CFG.
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None
    timestep_cond: torch.Tensor | None
    do_cfg: bool
    scale: float
    weights: tuple[float, ...]  # the AND parts' weights
    rows: int  # conditionings stacked per image (1 + K with CFG)
    #: Prompt and negative prompt of different lengths (A1111 runs them apart): the keys each of the
    #: ``rows`` conditionings has, and the UNet's ``encoder_attention_mask`` (rows * B, L); else None.
    key_lengths: tuple[int, ...] | None = None
    attention_mask: torch.Tensor | None = None
    #: The negative prompt's rows were left out for this call (A1111's CFG skipping): the rows are the
    #: prompts' only, combined at scale 1 (:func:`cond_only`).
    uncond_skipped: bool = False


def cond_only(guidance: _Guidance, batch_size: int) -> _Guidance:
    """``guidance`` without the negative prompt's rows (the first ``batch_size`` of each stacked input)."""
    added = guidance.added_cond_kwargs
    if added is not None:
        added = {key: value[batch_size:] for key, value in added.items()}
    return replace(
        guidance, encoder_hidden_states=guidance.encoder_hidden_states[batch_size:], added_cond_kwargs=added,
        do_cfg=False, rows=guidance.rows - 1,
        key_lengths=None if guidance.key_lengths is None else guidance.key_lengths[1:],
        attention_mask=None if guidance.attention_mask is None else guidance.attention_mask[batch_size:],
        uncond_skipped=True)


def prompt_schedule_steps(plan: Any, steps: int) -> int:
    """The length of the prompt-editing timeline (``[a:b:N]``, ``[a|b]``) for ``steps`` steps of ``plan``.

    A1111 counts its denoiser's calls, not steps, and gives its second-order samplers (Heun, DPM2, DPM++
    2S a, DPM++ SDE, Restart: two model calls a step) a timeline of ``2 * steps`` (``total_steps``).
    diffusers' schedulers keep a timeline of ``steps``, counted in steps.
    """
    if isinstance(plan, FunctionSamplerPlan) and plan.sampler.options.get("second_order"):
        return 2 * steps
    return steps


def combine_guided(output: torch.Tensor, *, rows: int, weights: tuple[float, ...], scale: float,
                   do_cfg: bool, uncond_skipped: bool = False) -> torch.Tensor:
    """A1111's CFG combination of one model call's stacked ``rows`` outputs (``combine_denoised``).

    With CFG: ``uncond + sum_k (cond_k - uncond) * weight_k * scale`` (one prompt of weight 1 gives
    diffusers' ``uncond + scale * (cond - uncond)`` exactly). When the negative prompt's rows were skipped
    (Skip Early CFG, NGMS) the first prompt's output stands in for them, at scale 1. Without CFG: as is.
    """
    if uncond_skipped:
        first, *_rest = parts = output.chunk(rows)
        guided = first
        for weight, cond in zip(weights, parts, strict=True):
            guided = guided + (cond - first) * weight
        return guided
    if not do_cfg:
        return output
    uncond, *conds = output.chunk(rows)
    guided = uncond
    for weight, cond in zip(weights, conds, strict=True):
        guided = guided + (cond - uncond) * (weight * scale)
    return guided


class PromptGuidance:
    """The conditioning and guided prediction of a denoising loop (see the module docstring)."""

    # -- 2. prompts --------------------------------------------------------------------------
    def encode_prompts(self) -> None:
        """Apply A1111's prompt grammar and encode every text the job will need, once.

        Order as A1111: extra-network tags out of the prompt, split at ``AND`` (composable diffusion,
        positive prompt only), prompt-editing / alternation schedules per part and for the negative
        prompt; each distinct text is encoded once (emphasis, chunks) and all are padded to one chunk
        count so any step's conditioning stacks into one UNet batch.
        """
        params = self.params
        # The tags were read, and their LoRAs applied, by job_extra_networks in run().
        prompt, _calls = strip_extra_networks(params.prompt)
        parts = split_composable_prompt(prompt)
        texts = [text for text, _weight in parts] + [params.negative_prompt]
        old_timelines = bool(params.use_old_scheduling)
        if self.first_pass_prompt_steps is None:
            steps, hires_steps = self.prompt_steps, None
        else:  # hires fix's second pass: A1111's timeline goes on from the first pass's
            steps, hires_steps = self.first_pass_prompt_steps, self.prompt_steps
        schedules = get_learned_conditioning_prompt_schedules(texts, steps, hires_steps=hires_steps,
                                                              use_old_scheduling=old_timelines)
        # A1111 writes "Old prompt editing timelines" only where they changed the schedules.
        self.old_timelines_acted = old_timelines and schedules != get_learned_conditioning_prompt_schedules(
            texts, steps, hires_steps=hires_steps)
        self.part_schedules = [(schedule, weight) for schedule, (_text, weight) in zip(schedules, parts,
                                                                                       strict=False)]
        self.negative_schedule = schedules[-1]
        # Each distinct text once, except the texts of a schedule A1111 encodes as one batch (emphasis);
        # "" too: its chunk is what A1111 pads a shorter prompt with ("Pad conds").
        plan = schedule_texts([*([text for _end, text in schedule] for schedule in schedules), [""]])
        texts, groups, per_schedule = plan.texts, plan.groups, plan.lookups
        text_pipe = self.networks.text_pipe if self.networks is not None else self.pipe  # + embeddings
        encoder = PromptEncoder(text_pipe, device=self.device, dtype=self.unet.dtype)
        encoded = encoder.encode_texts(texts, clip_skip=int(params.clip_skip or 1),
                                       emphasis=params.emphasis or ORIGINAL, groups=groups)
        self.emphasis_extra = emphasis_infotext(params.emphasis, texts)
        self.part_encoded = [{text: encoded[index] for text, index in found.items()}
                             for found in per_schedule[:len(self.part_schedules)]]
        self.negative_encoded = {
            text: zero_like(encoded[index]) if self.is_sdxl and not text.strip() else encoded[index]
            for text, index in per_schedule[-2].items()
        }
        self.empty_chunk = encoded[per_schedule[-1][""]].hidden[:, :CHUNK_LENGTH + 2]
        self._guidance_cache: dict[tuple[tuple[str, ...], str], _Guidance] = {}
        self.step_index = 0

    # -- 3. guidance -------------------------------------------------------------------------
    def guidance(self) -> _Guidance:
        """The conditioning for the model call being made (prompt editing switches it between calls)."""
        step = self.prompt_step if self.counts_model_calls else self.step_index
        key = (tuple(prompt_for_step(schedule, step) for schedule, _w in self.part_schedules),
               prompt_for_step(self.negative_schedule, step))
        found = self._guidance_cache.get(key)
        if found is None:
            found = self._guidance_cache[key] = self.prepare_guidance(*key)
        return found

    def prepare_guidance(self, positive_texts: tuple[str, ...], negative_text: str) -> _Guidance:
        params = self.params
        batch_size = params.batch_size
        weights = tuple(weight for _schedule, weight in self.part_schedules)
        time_cond_dim = getattr(self.unet.config, "time_cond_proj_dim", None)
        if time_cond_dim is not None and len(positive_texts) > 1:
            raise ValueError("AND (composable diffusion) needs classifier-free guidance, which this "
                             "guidance-distilled model does not use")
        # As diffusers: guidance-distilled UNets (LCM) take the scale as an embedding, not a second pass;
        # at scale 1 a single prompt's negative pass cancels out, so it is skipped.
        # Below 1 (down to 0, and negative) the negative prompt weighs in, as in A1111.
        do_cfg = time_cond_dim is None and (params.cfg_scale != 1.0 or len(positive_texts) > 1)
        rows = [self.part_encoded[part][text] for part, text in enumerate(positive_texts)]
        if do_cfg:
            rows.insert(0, self.negative_encoded[negative_text])
        paired = pair_conds([row.own for row in rows[-len(positive_texts):]],
                            self.negative_encoded[negative_text].own if do_cfg else None,
                            empty_chunk=self.empty_chunk, pad=bool(params.pad_cond_uncond),
                            pad_v0=bool(params.pad_cond_uncond_v0))
        stacked = [paired.uncond, *paired.conds] if paired.uncond is not None else paired.conds
        hidden = torch.cat([item.repeat(batch_size, 1, 1) for item in stacked])
        mask = None
        if paired.key_lengths is not None:
            mask = key_mask(paired.key_lengths, length=paired.length, batch_size=batch_size,
                            device=self.device).to(self.unet.dtype)
        added: dict[str, torch.Tensor] | None = None
        if self.is_sdxl:
            pooled = [row.pooled for row in rows]
            assert all(item is not None for item in pooled)
            # original size, crop top-left, target size (SDXL micro-conditioning), as diffusers' defaults
            time_ids = torch.tensor([[params.height, params.width, 0, 0, params.height, params.width]],
                                    dtype=hidden.dtype, device=self.device)
            added = {
                "text_embeds": torch.cat([item.repeat(batch_size, 1) for item in pooled if item is not None]),
                "time_ids": time_ids.repeat(batch_size * len(rows), 1),
            }
        timestep_cond = None
        if time_cond_dim is not None and hasattr(self.pipe, "get_guidance_scale_embedding"):
            scale = torch.full((batch_size,), params.cfg_scale - 1.0)
            timestep_cond = self.pipe.get_guidance_scale_embedding(scale, embedding_dim=time_cond_dim)
            timestep_cond = timestep_cond.to(device=self.device, dtype=self.unet.dtype)
        return _Guidance(encoder_hidden_states=hidden.to(self.device), added_cond_kwargs=added,
                         timestep_cond=timestep_cond, do_cfg=do_cfg, scale=float(params.cfg_scale),
                         weights=weights, rows=len(rows), key_lengths=paired.key_lengths,
                         attention_mask=mask)

    def skips_uncond(self, timestep: torch.Tensor) -> bool:
        """Whether this model call runs without the negative prompt, as A1111's CFG denoiser decides.

        "Ignore negative prompt during early sampling" (``skip_early_cond``): while the calls made so far
        are at most that fraction of the pass's expected calls (steps, twice that for second-order
        samplers). Else "Negative Guidance minimum sigma" (``s_min_uncond``): below that noise level (the
        UNet's timestep for DDIM / PLMS / UniPC, as A1111 compares it), on every other call (odd ones),
        or every call with ``s_min_uncond_all``.
        """
        params = self.params
        early, ngms = float(params.skip_early_cond or 0.0), float(params.s_min_uncond or 0.0)
        if not early and not ngms:
            return False
        if self.counts_model_calls:  # A1111 counts its denoiser's calls
            step, total = self.prompt_step - self.prompt_offset, self.calls_per_step * self.sampling_steps()
        else:
            step, total = self.step_index - self.prompt_offset, self.sampling_steps()
        if early and step / max(1, total) <= early:
            return True
        level = self.cfg_sigma if self.cfg_sigma is not None else float(timestep)
        return bool((step % 2 or params.s_min_uncond_all) and ngms > 0 and level < ngms)

    def predict(self, model_input: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The UNet's guided output for ``model_input`` (already scaled), as float32."""
        guidance = self.guidance()
        if guidance.do_cfg and self.skips_uncond(timestep):
            guidance = cond_only(guidance, model_input.shape[0])
        encoder_states: Any = guidance.encoder_hidden_states
        if self.ip_stack is not None:
            encoder_states = self.ip_stack.encoder_states(
                guidance.encoder_hidden_states, rows=guidance.rows, do_cfg=guidance.do_cfg,
                fraction=self.control_fraction())
        control: dict[str, Any] = {}
        if self.control_stack is not None:
            latents = torch.cat([model_input] * guidance.rows) if guidance.rows > 1 else model_input
            control = self.control_stack.residuals(
                latents, timestep, encoder_hidden_states=guidance.encoder_hidden_states,
                added_cond_kwargs=guidance.added_cond_kwargs, do_cfg=guidance.do_cfg, rows=guidance.rows,
                fraction=self.control_fraction(), key_lengths=guidance.key_lengths)
        if self.image_conditioning is not None:
            # Inpainting UNets: mask and masked-image latents after the latents, not scaled by the
            # sampler; the uncond rows of CFG get the same ones (diffusers and A1111 alike).
            model_input = torch.cat([model_input, self.image_conditioning.to(model_input.dtype)], dim=1)
        stacked = torch.cat([model_input] * guidance.rows) if guidance.rows > 1 else model_input
        if guidance.attention_mask is not None:
            control["encoder_attention_mask"] = guidance.attention_mask
        output = self.unet(
            stacked.to(self.unet.dtype),
            timestep,
            encoder_hidden_states=encoder_states,
            timestep_cond=guidance.timestep_cond,
            added_cond_kwargs=guidance.added_cond_kwargs,
            return_dict=False,
            **control,
        )[0].float()
        return combine_guided(output, rows=guidance.rows, weights=guidance.weights, scale=guidance.scale,
                              do_cfg=guidance.do_cfg, uncond_skipped=guidance.uncond_skipped)
