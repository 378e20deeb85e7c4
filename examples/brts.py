"""BRTS: on-policy distillation with best-of-N teacher rollout selection (https://huggingface.co/papers/2605.09725).

The script is `trl_reasoning_distill.scripts.brts` (its docstring, or `--help`, shows how to run it):
this file and `trl-distill train brts` run the same code, e.g.
    accelerate launch examples/brts.py --config examples/configs/<method>_paper.yaml
"""

from trl_reasoning_distill.scripts import run_script

if __name__ == "__main__":
    run_script("brts", prog="brts.py")
