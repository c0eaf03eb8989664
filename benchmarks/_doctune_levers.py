"""Run the ``doctune`` CLI with speed levers its training set-up does not apply (yet).

For measuring a lever before it is wired into ``doctune.train.setup``; the numbers a step
computes do not change. Usage::

    python benchmarks/_doctune_levers.py --levers attention,malloc,adamw -- train --config F

* ``attention``: register ``attn_implementation="doctune_sdpa"`` (pass
  ``--set model.attn_implementation=doctune_sdpa`` to use it);
* ``malloc``: :func:`doctune.train.speed.tune_cpu_allocator` before anything is built;
* ``adamw``: AdamW built with :func:`doctune.train.speed.adamw_kwargs` (fused on CPU).
"""

from __future__ import annotations

import sys
from typing import Any

LEVERS = ("attention", "malloc", "adamw")


def apply(levers: list[str]) -> None:
    """Switch on each named lever in this process."""
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        raise SystemExit(f"unknown lever(s) {unknown}; choose from {', '.join(LEVERS)}")
    if "malloc" in levers:
        from doctune.train.speed import tune_cpu_allocator

        if not tune_cpu_allocator():
            print("note: the allocator lever needs glibc; not applied", flush=True)
    if "attention" in levers:
        from doctune.train.attention import register_attention

        register_attention()
    if "adamw" in levers:
        import torch

        from doctune.train.speed import adamw_kwargs

        base = torch.optim.AdamW

        class AdamW(base):  # type: ignore[misc, valid-type]
            def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
                kwargs.pop("foreach", None)
                kwargs.pop("fused", None)
                super().__init__(params, *args, **kwargs, **adamw_kwargs(torch.device("cpu")))

        torch.optim.AdamW = AdamW  # type: ignore[misc]


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv or argv[0] != "--levers":
        raise SystemExit(__doc__)
    cut = argv.index("--")
    apply([x for x in argv[1].split(",") if x])
    sys.argv = ["doctune", *argv[cut + 1:]]
    from doctune.cli import main as doctune_main

    doctune_main()


if __name__ == "__main__":
    main()
