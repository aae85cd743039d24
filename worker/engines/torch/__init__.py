"""The torch engine: funasr's ``AutoModel`` with tingji's padding-invariant CIF
predictor (``paraformer``), its compiled VAD loop (``fsmnvad``) and VAD in processes
ahead of the model (``vad_pool``)."""
