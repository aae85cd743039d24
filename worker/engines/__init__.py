"""The engines that run the models: ``worker.engines.torch`` (funasr itself, on torch,
CPU or CUDA) and ``worker.engines.onnx`` (ONNX Runtime graphs, no torch).
``worker.asr`` chooses one and loads it once per worker."""
