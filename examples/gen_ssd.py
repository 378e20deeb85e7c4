"""Gen-SSD: the student selects the teacher's reasoning chunk by chunk (https://huggingface.co/papers/2604.02819).

The script is `trl_reasoning_distill.scripts.gen_ssd` (its docstring, or `--help`, shows how to run it):
this file and `trl-distill train gen_ssd` run the same code, e.g.
    accelerate launch examples/gen_ssd.py --config examples/configs/<method>_paper.yaml
"""

from trl_reasoning_distill.scripts import run_script

if __name__ == "__main__":
    run_script("gen_ssd", prog="gen_ssd.py")
