"""txt2img handler pieces: the token counter, the progress line, per-user seeds and jobs."""

from __future__ import annotations

import html
import time
from pathlib import Path

from PIL import Image

from sdweb.params import GenerationParams, GenerationResult, JobProgress
from sdweb.ui.components.checkpoints import load_checkpoint
from sdweb.ui.components.jobs import SessionJobs, finished_html, progress_html
from sdweb.ui.components.results import ResultView, gallery_items
from sdweb.ui.components.tokens import estimate_tokens, token_counter_text
from tests.fakes import make_services


def test_counter_shows_count_over_the_chunk_limit_like_a1111() -> None:
    assert ">~6/75<" in token_counter_text("a red fox in the snow", None)
    assert ">~0/75<" in token_counter_text("", None)


def test_the_estimate_counts_the_longest_text_a1111_would_encode() -> None:
    # AND splits the prompt; prompt editing yields one text per schedule: the longest one counts.
    assert ">~4/75<" in token_counter_text("a cat AND a big red dog", None)
    assert ">~4/75<" in token_counter_text("[a cat:a big red dog:0.5]", None, steps=20)
    # A negative prompt is not split at AND (A1111 does the same).
    assert ">~5/75<" in token_counter_text("a cat AND a dog", None, negative=True)


def test_a_long_prompt_spills_into_the_next_chunk() -> None:
    text = ", ".join(["cat"] * 60)  # 60 words + 59 commas
    html = token_counter_text(text, None)
    assert "/150<" in html and "sdweb-tokens-over" in html


def test_the_real_tokenizer_is_used_when_the_engine_offers_one() -> None:
    assert ">80/150<" in token_counter_text("anything", lambda text: (80, 150))


def test_a_failing_tokenizer_falls_back_to_the_estimate() -> None:
    def broken(text: str) -> tuple[int, int]:
        raise RuntimeError("tokenizer gone")

    assert ">~1/75<" in token_counter_text("cat", broken)


def test_the_estimate_ignores_syntax_that_is_not_sent_to_clip() -> None:
    assert estimate_tokens("(cat:1.3) <lora:foo:0.8> [dog]") == estimate_tokens("cat dog")


def test_progress_tells_a_queued_user_their_position() -> None:
    text = progress_html(JobProgress(job_id="j", state="queued", queue_position=3))
    assert "position 3 in the queue" in text


def test_progress_shows_batch_step_percent_and_eta() -> None:
    progress = JobProgress(
        job_id="j",
        state="running",
        job_no=1,
        job_count=2,
        sampling_step=5,
        sampling_steps=10,
        started_at=time.monotonic() - 3.0,
    )
    text = progress_html(progress)
    assert "Batch 2/2" in text and "Step 5/10" in text and "75%" in text and "ETA 1s" in text
    assert 'style="width:75%"' in text


def test_interrupted_result_says_what_was_kept() -> None:
    result = GenerationResult(params=GenerationParams(), images=[object()], interrupted=True)
    assert "Interrupted: kept 1 image" in finished_html(result, 1.0)


def test_reuse_seed_takes_the_selected_image_else_the_last_seed() -> None:
    view = ResultView(seeds=[10, 11], subseeds=[20, 21], infotexts=["a", "b"])
    assert view.seed(None) == 10
    picked = view.pick(1)
    assert picked.seed(None) == 11 and picked.subseed() == 21 and picked.infotext == "b"
    assert ResultView().seed(99) == 99
    assert ResultView().seed(None) == -1


def test_gallery_shows_saved_files_when_every_image_was_saved() -> None:
    image = Image.new("RGB", (8, 8))
    saved = GenerationResult(params=GenerationParams(), images=[image], paths=["/out/1.png"])
    unsaved = GenerationResult(params=GenerationParams(), images=[image])
    assert gallery_items(saved) == ["/out/1.png"]
    assert gallery_items(unsaved) == [image]


def test_interrupt_reaches_only_the_sessions_own_job() -> None:
    jobs = SessionJobs()
    jobs.start("alice", "job-a")
    jobs.start("bob", "job-b")
    assert jobs.get("alice") == "job-a"
    jobs.finish("alice", "job-b")  # not hers: ignored
    assert jobs.get("alice") == "job-a"
    jobs.finish("alice", "job-a")
    assert jobs.get("alice") is None and jobs.get("bob") == "job-b"


def test_picking_a_checkpoint_loads_it_or_says_why_not(tmp_path: Path) -> None:
    services, engine = make_services(tmp_path)
    try:
        title = services.models.list_checkpoints()[0].title
        text, ok = load_checkpoint(services, title)
        assert ok and text.startswith("Loaded") and engine.loaded == [title]
        text, ok = load_checkpoint(services, "no-such-model")
        assert not ok and "no-such-model" in text

        def broken_load(info: object) -> object:
            raise RuntimeError("unsupported model family")

        engine.load = broken_load  # type: ignore[method-assign]
        text, ok = load_checkpoint(services, title)
        assert not ok and "unsupported model family" in text and "previous model stays" in text
        assert load_checkpoint(services, None) == ("", True)
    finally:
        services.worker.close()


def test_sending_a_sampler_this_install_lacks_says_so(tmp_path: Path) -> None:
    import gradio as gr

    from sdweb.ui.components.samplers import sampler_choices
    from sdweb.ui.tabs.txt2img import Txt2ImgTab

    services, _ = make_services(tmp_path)
    try:
        with gr.Blocks(), gr.Tabs() as tabs, gr.Tab("txt2img"):
            form = {"sampler_name": gr.Dropdown(), "scheduler": gr.Dropdown(), "prompt": gr.Textbox()}
            message = gr.HTML()
        tab = Txt2ImgTab(
            form=form,
            tabs=tabs,
            message=message,
            checkpoint_choices=lambda: [],
            sampler_choices=lambda: sampler_choices(services),
        )
        updates = tab.fill({"sampler_name": "Not A Sampler", "scheduler": "Karras", "prompt": "x"})
        text = html.unescape(updates[message])
        assert "sampler 'Not A Sampler' is not available here" in text
        assert "schedule type 'Karras'" not in text
        assert updates[form["prompt"]] == "x"
        updates = tab.fill({"sampler_name": "Euler a", "scheduler": "Automatic"})
        assert "not available" not in updates[message]
    finally:
        services.worker.close()
