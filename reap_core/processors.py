"""A multimodal checkpoint's processor, and — where part of it cannot be built here — the rest of it.

Why: `AutoProcessor.from_pretrained` builds every sub-processor a checkpoint names, and Gemma 4's
names a video processor that needs torchvision. Where torchvision is missing (it is not in this
project's requirements: no CPU build of it matches the pinned CPU torch on the package index),
AutoProcessor fails as a whole, and image chat would be off although nothing about images needs
torchvision. So, when AutoProcessor fails with an ImportError, the processor class named in
processor_config.json is built from the sub-processors that do load (tokenizer, image processor,
audio feature extractor), the missing ones left out, and the result says which parts are missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_AUTO_FOR = {"image_processor": "AutoImageProcessor", "feature_extractor": "AutoFeatureExtractor",
             "video_processor": "AutoVideoProcessor", "tokenizer": "AutoTokenizer"}


def load_processor(path: str | Path, **kwargs: Any) -> tuple[Any, list[str]]:
    """(processor, the sub-processors left out). Raises what AutoProcessor raises when the processor
    cannot be built even without the parts that need a missing library."""
    import transformers
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs), []
    except ImportError as first_error:
        config_file = Path(path) / "processor_config.json"
        if not config_file.is_file():
            raise
        config = json.loads(config_file.read_text())
        cls = getattr(transformers, str(config.get("processor_class")), None)
        if cls is None:
            raise first_error from None
        parts: dict[str, Any] = {}
        missing: list[str] = []
        for name in cls.get_attributes():
            auto = getattr(transformers, _AUTO_FOR.get(name, ""), None)
            if auto is None:
                raise first_error from None
            try:
                parts[name] = auto.from_pretrained(path, **kwargs)
            except ImportError:
                parts[name] = None
                missing.append(name)
        if "tokenizer" in missing or "image_processor" in missing:
            raise first_error from None
        extra = {k: v for k, v in config.items() if k not in parts and k != "processor_class"}
        extra.setdefault("chat_template", getattr(parts["tokenizer"], "chat_template", None))
        processor = _without_missing_parts(cls)(**parts, **extra)
        processor.source_config = config
        return processor, missing


def _without_missing_parts(cls: type) -> type:
    """`cls` that accepts None for a sub-processor (its class check otherwise refuses None)."""

    class Partial(cls):  # type: ignore[misc, valid-type]
        source_config: dict = {}

        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

        def save_pretrained(self, save_directory, **kwargs):
            """The parts it has, and the source's processor_config.json (the missing parts' settings too)."""
            folder = Path(save_directory)
            folder.mkdir(parents=True, exist_ok=True)
            for name in self.get_attributes():
                part = getattr(self, name, None)
                if part is not None:
                    part.save_pretrained(folder)
            (folder / "processor_config.json").write_text(json.dumps(self.source_config, indent=2) + "\n")
            return [str(folder / "processor_config.json")]

    Partial.__name__ = cls.__name__
    return Partial
