"""What a task's stages do beyond the model: fetch (``fetch``, ``lists``) under the
egress policy (``egress``), probe and normalize media (``media``), polish and
summarize with an LLM (``llm``), and tell webhook receivers (``webhooks``)."""
