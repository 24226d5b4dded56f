"""The page's look and keys: a little CSS and one script, passed at mount time (Gradio 6)."""

from __future__ import annotations

CSS = """
#sdweb-header { display: flex; align-items: center; gap: 1em; flex-wrap: wrap; }
#sdweb-header h1 { font-size: 1.3em; margin: 0; }
.sdweb-model { padding: 2px 10px; border-radius: 10px; font-size: 0.9em; }
.sdweb-model-ready { background: #1f7a3a22; color: #1f7a3a; }
.sdweb-model-loading, .sdweb-model-idle { background: #b8860b22; color: #8a6508; }
.sdweb-model-error, .sdweb-model-none { background: #c0392b22; color: #c0392b; }
.sdweb-banner { background: #c0392b; color: white; padding: 6px 12px; border-radius: 6px; }
.sdweb-token-box { min-height: 0 !important; margin-top: calc(-1 * var(--layout-gap, 12px)); }
.sdweb-tokens { text-align: right; font-size: 0.85em; opacity: 0.75; padding-right: 8px; }
.sdweb-tokens-over { color: #c0392b; opacity: 1; }
.sdweb-progress { font-size: 0.9em; }
.sdweb-progress-bar { height: 8px; background: #8884; border-radius: 4px; overflow: hidden; margin: 4px 0; }
.sdweb-progress-bar > div { height: 100%; background: #f97316; transition: width 0.3s; }
.sdweb-error { color: #c0392b; white-space: pre-wrap; }
.sdweb-note { opacity: 0.8; }
.sdweb-infotext { white-space: pre-wrap; word-break: break-word; font-size: 0.9em; font-family: monospace; }
#txt2img-generate { min-height: 4.5em; }
.sdweb-tool { max-width: 3em; min-width: 2.5em !important; }
"""

#: Ctrl+Enter (Cmd+Enter) in a txt2img prompt box presses Generate, as in A1111. Delegated from the
#: document so it works for components gradio renders later.
HEAD = """
<script>
document.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
  const box = event.target.closest && event.target.closest("#txt2img-prompt, #txt2img-negative-prompt");
  if (!box) return;
  event.preventDefault();
  const button = document.getElementById("txt2img-generate");
  if (button) button.click();
});
</script>
"""
