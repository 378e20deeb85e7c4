"""On-policy distillation baseline (GKD, https://huggingface.co/papers/2306.13649) with our `KDTrainer`.

The script is `trl_reasoning_distill.scripts.gkd` (its docstring, or `--help`, shows how to run it):
this file and `trl-distill train gkd` run the same code, e.g.
    accelerate launch examples/gkd.py --config examples/configs/<method>_paper.yaml
"""

from trl_reasoning_distill.scripts import run_script

if __name__ == "__main__":
    run_script("gkd", prog="gkd.py")
