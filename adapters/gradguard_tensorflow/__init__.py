"""gradguard's TensorFlow / Keras adapter plugin (work in progress: claims nothing yet).

Importing this module must not import TensorFlow: a user who holds a TF object has it in
``sys.modules`` already, and the claim hook looks there first.
"""

from __future__ import annotations

from gradguard import hookimpl

__all__ = ["gradguard_adapter_claim"]


@hookimpl
def gradguard_adapter_claim(params: object) -> None:
    """Claim nothing yet."""
    return None
