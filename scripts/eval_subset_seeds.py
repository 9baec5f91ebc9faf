"""CIDEr and zero-shot of one checkpoint with the evaluation subset drawn from seeds 1 and 2 (docs/BENCHMARKS.md)."""
import functools, json, sys
import openvision2.models.openvision2 as ov2
from openvision2.models.masking import keep_eval_tokens
from openvision2.checkpoint import load_checkpoint
from openvision2.eval.caption_metrics import caption_metrics
from openvision2.eval.tasks import synthetic_captions, load_task
from openvision2.eval.zeroshot import zero_shot

model, tok, _ = load_checkpoint(sys.argv[1])
data = synthetic_captions(256, 64, 0)
task = load_task("synthetic-object", 64, num_train=16, num_test=500, seed=0, shards="")
for seed in (1, 2):
    ov2.keep_eval_tokens = functools.partial(keep_eval_tokens, seed=seed)
    c = caption_metrics(model, tok, data.images, data.references)
    z = zero_shot(model, tok, task.test.images, task.test.labels, task.prompts)
    print(json.dumps({"seed": seed, "cider": c["cider"], "nll": c["nll"], "repeated_phrase_share": c["repeated_phrase_share"],
                      "zs_top1": z["top1"], "zs_top5": z["top5"]}), flush=True)
