"""CoTD-PO: chain-of-thought distillation with preference optimization, offline rounds with `CoTDPOTrainer`.

The script is `trl_reasoning_distill.scripts.cotd_po` (its docstring, or `--help`, shows how to run it):
this file and `trl-distill train cotd_po` run the same code, e.g.
    accelerate launch examples/cotd_po.py --config examples/configs/<method>_paper.yaml
"""

from trl_reasoning_distill.scripts import run_script

if __name__ == "__main__":
    run_script("cotd_po", prog="cotd_po.py")
