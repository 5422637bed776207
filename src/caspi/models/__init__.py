"""Model families (Qwen3-ASR, Whisper) and parameter groups; see `families.py` and `unfreeze.py`."""

from caspi.models.families import GroupDef, ModelFamily, family_names, family_of, get_family

__all__ = ["GroupDef", "ModelFamily", "family_names", "family_of", "get_family"]
