"""The miniature world: synthetic pictures and text tasks with ground truth, small benchmark instances in the official
formats, and tiny checkpoints trained from scratch on the CPU, so the whole pipeline runs offline in minutes.

- ``scenes``: charts and shape scenes (drawing, the unique-picture registry)
- ``questions``: visual questions with key answers and reference sentences
- ``text_tasks``: text instruction tasks (the base LM's skills) and the miniature text-davinci-003
- ``pools``: visual instruction-tuning data, text-only data, SciGraphQA / LRV-Instruct pools
- ``benchmarks``: POPE, MMBench, MM-Vet, LLaVA-Bench, MT-Bench, AlpacaEval files and noise images
- ``truth``: the key-answer rule and the simulated human preference labels
- ``models``: tokenizer, base LM and tiny LLaVA
- ``anatomy``: how the text regression fails (answer kinds) and what DPO's pairs teach
- ``build``: stage 00 (data, then models; skipped when built with the same params)
"""
