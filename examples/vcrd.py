"""VCRD: validity-calibrated reasoning distillation (https://huggingface.co/papers/2605.04078) with `VCRDTrainer`.

The script is `trl_reasoning_distill.scripts.vcrd` (its docstring, or `--help`, shows how to run it):
this file and `trl-distill train vcrd` run the same code, e.g.
    accelerate launch examples/vcrd.py --config examples/configs/<method>_paper.yaml
"""

from trl_reasoning_distill.scripts import run_script

if __name__ == "__main__":
    run_script("vcrd", prog="vcrd.py")
