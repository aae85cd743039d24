"""The worker: a standalone process that claims tasks, loads the ASR model once and
runs fetch -> transcribe -> polish -> summarize -> export with checkpoints."""
