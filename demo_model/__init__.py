"""The bundled demo model: a tiny Stable-Diffusion-architecture model trained here on procedural shapes.

* :mod:`demo_model.dataset` draws the scenes and writes varied captions.
* :mod:`demo_model.checker` reads an image back into (shape colour, background colour, position) from
  pixel statistics: the evaluation script and the end-to-end tests use it to check what an image shows.
* :mod:`demo_model.train` trains VAE, text encoder and UNet from a seed and writes the checkpoint.
* :mod:`demo_model.evaluate` scores a checkpoint against the quality bar.
"""
