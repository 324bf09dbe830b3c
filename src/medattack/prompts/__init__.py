"""Prompt generation (arXiv 2405.20775, Sec. 3): image attributes -> normal questions -> harmful rewrites.

    medattack prompts attributes OUT --source embedded     # attributes.jsonl (metadata or a VQA model)
    medattack prompts normal OUT                           # normal.jsonl (templates or an LLM)
    medattack prompts harmful OUT --writer smollm2         # bank.yaml (+ rejected.jsonl), builder-ready
"""
