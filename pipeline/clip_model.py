"""The whole open_clip model (image and text towers): what the CLIP backbone and the CLIP text encoder
both build. open_clip is imported when a model is built, not with this module (3 s)."""
from __future__ import annotations

import pickle

from torch import nn

from pipeline.errors import PipelineError
from pipeline.weights import resolve_weights, seeded_init


def create_clip_model(model: str, pretrained: str, option: str = "--pretrained") -> nn.Module:
    """The whole open_clip model (image and text towers), frozen, in eval mode on the CPU.

    ``pretrained``: an open_clip tag, a local checkpoint path, or ``none`` (seeded random weights);
    ``option``: the user's name for it, in error messages.
    """
    import open_clip

    if model not in open_clip.list_models():
        raise PipelineError(f"clip: unknown model {model!r}; see open_clip.list_models(), e.g. ViT-B-32, RN50")
    tags = open_clip.list_pretrained_tags_by_model(model)
    kind, value = resolve_weights(f"clip {model}", pretrained, tags, option)
    weights = value if kind != "none" else None
    try:
        net = seeded_init(lambda: open_clip.create_model(model, pretrained=weights, load_weights=weights is not None))
    # a foreign or damaged file fails inside torch.load's unpickler in many ways (random bytes: also an
    # IndexError, 'pop from empty list', or EOFError / TypeError)
    except (OSError, RuntimeError, pickle.UnpicklingError, KeyError, ValueError, IndexError, EOFError, TypeError) as e:
        if weights in tags:
            raise PipelineError(
                f"clip {model}: cannot fetch pretrained={weights!r} ({type(e).__name__}); offline, download the "
                f"checkpoint elsewhere (open_clip.download_pretrained) and pass {option} /path/to/it.bin"
            ) from e
        reason = ("torch.load(weights_only=True) refused it" if isinstance(e, pickle.UnpicklingError)
                  else (str(e).strip().splitlines() or [type(e).__name__])[0][:160])
        raise PipelineError(f"clip {model}: {weights} is not an open_clip checkpoint that loads safely ({reason}); "
                            "pass the model's .bin/.pt/.safetensors file") from None
    return net.eval().requires_grad_(False)
