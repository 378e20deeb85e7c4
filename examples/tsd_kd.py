"""TSD-KD: token-selective dual knowledge distillation (https://huggingface.co/papers/2603.13260) with `TSDKDTrainer`.

The script is `trl_reasoning_distill.scripts.tsd_kd` (its docstring, or `--help`, shows how to run it):
this file and `trl-distill train tsd_kd` run the same code, e.g.
    accelerate launch examples/tsd_kd.py --config examples/configs/<method>_paper.yaml
"""

from trl_reasoning_distill.scripts import run_script

if __name__ == "__main__":
    run_script("tsd_kd", prog="tsd_kd.py")
