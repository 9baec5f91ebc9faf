"""Probes on frozen encoder features: how much of a task the encoder's output already separates.

- linear: multinomial logistic regression (full-batch L-BFGS, L2 weight picked on a 20% validation
  part of the train split, then refit on all of it) on standardised features; run on the pooled
  feature and on the mean of the patch tokens;
- attentive: one learned query cross-attending to the patch tokens, then a linear layer (as the
  attentive probes of AIMv2 / V-JEPA), trained with AdamW for a few epochs;
- k-NN: cosine similarity of L2-normalised pooled features, the 20 nearest train images vote with
  weights exp(similarity / 0.07) (the DINO protocol).
All accuracies are on the held-out test split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..preprocess import normalize

PROBES = ("linear", "attentive", "knn")
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


@torch.no_grad()
def extract_features(model, images: torch.Tensor, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of uint8 images: (pooled [N, D], patch tokens [N, P, D]) on the CPU, float32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pooled, tokens = [], []
    try:
        for start in range(0, len(images), batch_size):
            p, t = model.encode_image(normalize(images[start:start + batch_size].to(device)))
            pooled.append(p.float().cpu())
            tokens.append(t.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(pooled), torch.cat(tokens)


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(dim=0), train.std(dim=0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, iters: int = 100) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=iters, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum() / 2
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int) -> dict:
    """Held-out accuracy of logistic regression; the L2 weight is chosen on part of the train split."""
    train_x, test_x = _standardise(train_x, test_x)
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
    cut = max(1, len(order) // 5)
    val, fit = order[:cut], order[cut:]
    val_acc = {}
    for l2 in L2_GRID:
        model = _fit_logistic(train_x[fit], train_y[fit], num_classes, l2)
        with torch.no_grad():
            val_acc[l2] = _accuracy(model(train_x[val]), train_y[val])
    best = max(L2_GRID, key=lambda l2: (val_acc[l2], l2))  # ties: the stronger regulariser
    model = _fit_logistic(train_x, train_y, num_classes, best)
    with torch.no_grad():
        return {"accuracy": _accuracy(model(test_x), test_y), "l2": best}


class AttentiveProbe(nn.Module):
    """A learned query attends over the (normalised) patch tokens; its output is classified."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        heads = max(1, dim // 64)
        while dim % heads:
            heads -= 1
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(tokens)
        pooled, _ = self.attention(self.query.expand(len(tokens), -1, -1), tokens, tokens, need_weights=False)
        return self.head(pooled[:, 0])


def attentive_probe(train_tokens, train_y, test_tokens, test_y, num_classes: int, epochs: int = 30,
                    batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 1e-2) -> dict:
    torch.manual_seed(0)
    probe = AttentiveProbe(train_tokens.shape[-1], num_classes)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train_tokens) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(train_tokens), generator=generator).split(batch_size):
            loss = F.cross_entropy(probe(train_tokens[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    probe.eval()
    with torch.no_grad():
        logits = torch.cat([probe(chunk) for chunk in test_tokens.split(256)])
    return {"accuracy": _accuracy(logits, test_y), "epochs": epochs}


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, k: int = 20, temperature: float = 0.07) -> dict:
    train_x, test_x = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    k = min(k, len(train_x))
    similarity, index = (test_x @ train_x.T).topk(k, dim=1)
    votes = torch.zeros(len(test_x), num_classes).scatter_add_(1, train_y[index], (similarity / temperature).exp())
    return {"accuracy": _accuracy(votes, test_y), "k": k}


def run_probes(model, task, probes=PROBES, attentive_epochs: int = 30) -> dict:
    """The chosen probes of a ClassificationTask (eval/tasks.py) on the model's frozen features."""
    train_pooled, train_tokens = extract_features(model, task.train.images)
    test_pooled, test_tokens = extract_features(model, task.test.images)
    train_y, test_y, classes = task.train.labels, task.test.labels, len(task.classnames)
    # The features may come from a bf16 autocast region; the probes themselves are fitted in fp32 (CPU).
    with torch.autocast("cpu", enabled=False):
        result = {"num_train": len(train_y), "num_test": len(test_y), "num_classes": classes}
        if "linear" in probes:
            result["linear_pooled"] = linear_probe(train_pooled, train_y, test_pooled, test_y, classes)
            result["linear_patch_mean"] = linear_probe(train_tokens.mean(1), train_y, test_tokens.mean(1), test_y,
                                                       classes)
        if "attentive" in probes:
            result["attentive"] = attentive_probe(train_tokens, train_y, test_tokens, test_y, classes,
                                                  epochs=attentive_epochs)
        if "knn" in probes:
            result["knn"] = knn_accuracy(train_pooled, train_y, test_pooled, test_y, classes)
    return result
