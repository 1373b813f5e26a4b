"""The miniature world: synthetic pictures and text tasks with ground truth, small benchmark instances in the official
formats, and tiny checkpoints trained from scratch on the CPU, so the whole pipeline runs offline in minutes.

- ``scenes``: charts and shape scenes (drawing, the unique-picture registry)
- ``questions``: visual questions with key answers and reference sentences
- ``text_tasks``: text instruction tasks (the base LM's skills) and the miniature text-davinci-003
- ``mix``: LLaVA-1.5's visual instruction mix (format prompts, QA merged per image, text rehearsal)
- ``pools``: the base LM's text data and the SciGraphQA / LRV-Instruct prompt pools
- ``benchmarks``: what the benchmark modules' miniature builders share (`MiniatureBuild`, the held-out text
  prompts); each benchmark builds its own copy in its module (``Benchmark.build_miniature``)
- ``truth``: the key-answer rule and the simulated human preference labels
- ``models``: tokenizer, base LM and tiny LLaVA
- ``anatomy``: how the text regression fails (answer kinds) and what DPO's pairs teach
- ``probe``: the knowledge probe (reference sentences against wrong-key copies, by likelihood)
- ``build``: stage 00 (data, then models; skipped when built with the same params)
"""
