"""Evaluating caption-only encoders: zero-shot classification by caption likelihood, probes on frozen
features, caption metrics, periodic evaluation during training, and the HTML report."""
