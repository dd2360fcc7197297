"""Text: tokenizers, chat templates, the apps' prompt format, evaluation corpora."""
