"""mobilellm-export: turn small reasoning LLMs into verified on-device artifacts."""

import os as _os

__version__ = "0.1.0"

# This tool never reaches the network. ONNX Runtime 1.31's and ORT GenAI's Linux wheels send 1DS
# telemetry (strace: a DNS query for mobile.events.data.microsoft.com during `verify`, and a device
# id written under ~/.cache/Microsoft); each reads its opt-out once, as it initializes, so it is
# set here, before either loads, for this process and every child it starts.
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"
_os.environ["ORT_GENAI_TELEMETRY_DISABLED"] = "1"
