"""Evaluation: a quantized model in memory (auto-round), scored by lm-eval and by KLD to the
unquantized model, with the statistics every figure carries."""
