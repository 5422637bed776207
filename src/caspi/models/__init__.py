"""Model families (Qwen3-ASR, Whisper), their parameter groups, LoRA and the auxiliary CTC head; `loading.py`
rebuilds a model from a run, an export or a hub id.

Importing the package registers both families (`families.register`), so `get_family("whisper")` works after any
`from caspi.models... import ...`.
"""

from caspi.models import qwen3_asr, whisper
from caspi.models.families import GroupDef, ModelFamily, family_names, family_of, get_family

__all__ = ["GroupDef", "ModelFamily", "family_names", "family_of", "get_family", "qwen3_asr", "whisper"]
