"""gradguard's PyTorch adapter plugin (work in progress: claims nothing yet).

Importing this module must not import torch: a user who holds a torch object has torch in
``sys.modules`` already, and the claim hook looks there first.
"""

from __future__ import annotations

from gradguard import hookimpl

__all__ = ["gradguard_adapter_claim"]


@hookimpl
def gradguard_adapter_claim(params: object) -> None:
    """Claim nothing yet."""
    return None
