"""The ONNX engine: the graphs ``tingji models export-onnx`` writes (``export``,
found by ``graphs``), run by ONNX Runtime with neither torch nor funasr imported
(``engine``), around them funasr's frontend and timestamps (``frontend``), VAD state
machine (``vad``) and result text (``text``) in tingji's own NumPy code."""
