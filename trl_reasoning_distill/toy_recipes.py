"""What trains the toy student: the budgets, each method's learning rate as the toy reproduction's sweep chose it,
and the toy-scaled method settings. `reproduce.py`, the example scripts and the notebooks read them from here, so a
newcomer's run is the measured one (`benchmarks/results/reproduce.csv`, `examples_defaults.csv`).
"""

from .reproduce_report import BRTS, COTD_PO, GEN_SSD, GKD, STANDARD_KD, TSD_KD, VCRD

# The toy-scaled settings the method studies use too (ours): TSD-KD's extra terms brought to the direct term's first
# gradient norm (`benchmarks/tsd_kd_toy.py --grad_norms`; the paper's coefficients collapse the toy student), and
# Gen-SSD's chunks scaled to ~36-token toy solutions, decoded as the toy build samples its teacher (gen_ssd_cost.py).
TSD_KD_TOY = {"top_k": 3, "entropy_coef": 0.015, "indirect_coef": 0.01}
GEN_SSD_TOY = dict(chunk_size=24, max_new_tokens=192, temperature=1.0, top_p=0.95, top_k=30)
COTD_PO_TOY = dict(instruction_template="{prompt}", thought_prefix="<think>", answer_prefix="</think>")
FAMILY = {STANDARD_KD: "sft", GEN_SSD: "sft", COTD_PO: "cotd_po", GKD: "kd", TSD_KD: "kd", VCRD: "kd", BRTS: "kd"}
SFT_TYPE = (STANDARD_KD, GEN_SSD, COTD_PO)  # trained SFT_STEPS optimizer steps; the others ON_POLICY_STEPS
# Ours: two rates per family around the toy runs that trained (SFT 1e-3 and GKD 5e-4 in the headroom measurements of
# the toy build; CoTD-PO's DPO-style loss at a fifth of SFT's), the higher one doubled.
SWEEP = {"sft": (1e-3, 2e-3), "kd": (5e-4, 1e-3), "cotd_po": (2e-4, 5e-4)}
CHOSEN = {  # the sweep's choice on validation (reproduce.csv; tests/test_reproduce.py checks they agree)
    STANDARD_KD: 1e-3, GEN_SSD: 1e-3, COTD_PO: 5e-4, GKD: 5e-4, TSD_KD: 5e-4, VCRD: 1e-3, BRTS: 5e-4}
# Ours: past the first-steps dip of a fresh optimizer on the toy student (DESIGN §7; SFT on verified teacher samples
# gains > 0.20 in 500 steps, tests/test_toy_headroom.py), a few minutes per run on 2 CPU cores.
ON_POLICY_STEPS, SFT_STEPS = 200, 500
