"""Where tokens come from: the in-process transformers model (``local``) and, later, remote engines."""
