"""benchmarks/examples_defaults.py reads what the examples and notebooks print: its patterns match the lines they
really print, so a change of wording cannot silently empty the table."""

import re

import nbformat
from test_benchmarks_tsd_kd import load

from trl_reasoning_distill.scripts.common import DistillScriptArguments, accuracy
from trl_reasoning_distill.toy import load_toy_student, load_toy_tokenizer, problem_rows, sample_problems

bench = load("examples_defaults")


def test_the_score_pattern_reads_what_a_script_prints(capsys):
    rows = problem_rows(sample_problems("test", 4, seed=0))
    args = DistillScriptArguments(eval_max_new_tokens=48)
    value = accuracy(load_toy_student(), load_toy_tokenizer(), rows, args, "student after GKD")
    assert bench.SCORE.findall(capsys.readouterr().out) == [("after", f"{value:.3f}", "4")]


def test_the_notebook_pattern_reads_what_every_notebook_prints():
    for name in bench.NOTEBOOKS:
        source = "".join(cell.source for cell in nbformat.read(bench.ROOT / "examples" / f"{name}.ipynb", 4).cells)
        call = re.search(r'print\((f"student before: .*?")\)', source, re.DOTALL).group(1)
        template = re.sub(r'"\s*f"', "", call)[2:-1]  # implicitly joined f-string pieces as one
        printed = re.sub(r"\{[^}]*\}", "0.250", template)  # every placeholder rendered as a number
        assert bench.NOTEBOOK_SCORE.search(printed).groups() == ("0.250", "0.250"), name
        assert re.search(r"^n_test = \d+", source, re.MULTILINE), name
