"""Pieces that several tabs lay out and wire the same way (gradio only here, like the rest of ``sdweb.ui``).

A tab module keeps its own layout and handlers; what two tabs share lives here, so a tab never imports
another tab for it:

* :mod:`.messages`: the HTML lines tabs show (error, note, infotext).
* :mod:`.results`: the result column (gallery, preview, infotext) and the user's last result.
* :mod:`.jobs`: running a job on our GPU queue with live progress; Interrupt / Skip per session.
* :mod:`.checkpoints`: the checkpoint dropdown with its refresh button and :mod:`.download` section.
* :mod:`.styles`: the Styles dropdown, "Apply styles to prompt" and "Save prompt as a style".
* :mod:`.tokens`: the prompt token counter.
* :mod:`.samplers`: the sampler lists (filled once the page is up; they need the engine's registry).
* :mod:`.paste`: the ↙ button's reading of generation parameters pasted into the prompt.
* :mod:`.page_load`: the lists a page fills in when it opens (checkpoints, styles, the demo's size).

Feature accordions that add values to a generation request (hires fix...) are form sections:
see :mod:`sdweb.ui.sections`.
"""
