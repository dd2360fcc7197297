"""mobilellm-export: turn small reasoning LLMs into verified on-device artifacts."""

__version__ = "0.1.0"
