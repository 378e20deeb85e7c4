"""Standard KD baseline: fine-tune the student on verified teacher samples (rejection sampling + TRL's SFTTrainer).

The script is `trl_reasoning_distill.scripts.standard_kd` (its docstring, or `--help`, shows how to run it):
this file and `trl-distill train standard_kd` run the same code, e.g.
    accelerate launch examples/standard_kd.py --config examples/configs/<method>_paper.yaml
"""

from trl_reasoning_distill.scripts import run_script

if __name__ == "__main__":
    run_script("standard_kd", prog="standard_kd.py")
