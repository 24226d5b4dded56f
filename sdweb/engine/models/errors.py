"""Errors the model manager raises: each says which file and what was wrong, so the UI can show it as is.

All three subclass :class:`ValueError`: they are about the user's file, not a bug in sdweb.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """Base class: a model file that sdweb cannot use."""


class UnsupportedCheckpointError(CheckpointError):
    """A readable file that is not a checkpoint sdweb can load (a LoRA, a VAE, an unknown architecture...)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle-based file that could not be read with the weights-only unpickler (it may run code)."""


class CheckpointReadError(CheckpointError):
    """A file that cannot be read as what it claims to be: truncated, corrupt, or not a checkpoint at all."""


class CheckpointNotFoundError(LookupError):
    """No listed checkpoint has the requested title, name or hash; the message names known ones."""


class VaeNotFoundError(LookupError):
    """No VAE file has the requested name; the message names the VAE folder and known ones."""


class MissingModuleError(UnsupportedCheckpointError):
    """A transformer-only checkpoint (SD 3.5, Flux) whose text encoder or VAE is in no module folder;
    the message names the file it needs and where to put it.
    """


class ModuleMismatchError(UnsupportedCheckpointError):
    """A text encoder or VAE chosen for a checkpoint that does not fit it (wrong kind, width or channels)."""


class ModuleNotFoundInFoldersError(LookupError):
    """A chosen module name that is in neither models/text_encoder nor models/VAE."""
