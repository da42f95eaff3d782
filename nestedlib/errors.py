"""The errors of loading a model: each message says what to do."""

from __future__ import annotations


class ModelError(RuntimeError):
    """A model cannot be loaded; the message says what to do."""


class UnknownModelError(ModelError, KeyError):
    """The model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CorruptWeightsError(ModelError):
    """A bundled weight file is missing or its sha256 does not match SHA256SUMS."""


class HubOfflineError(ModelError):
    """A hub model was requested but the hub cannot be reached."""
