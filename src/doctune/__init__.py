"""doctune: fine-tune small language models on a folder of Markdown/MDX documentation."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
