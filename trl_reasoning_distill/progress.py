"""Progress bars for the long phases (sampling, scoring, evaluation, rounds, reproduction runs), with throughput.

[`ThroughputBar`] is a tqdm bar over items (prompts, samples, runs): tqdm shows items/s, elapsed and ETA, and the
postfix shows `tok/s`, the generated tokens per second since the bar started. In a Jupyter kernel with ipywidgets it
is a widget; elsewhere, including a kernel without ipywidgets, a text bar on stderr (tqdm.auto would warn there).

[`TrainingBar`] replaces the Trainer's printed log dicts (`PrinterCallback` under `disable_tqdm=True`, the dicts that
`ProgressCallback` writes under its bar otherwise) by one bar whose postfix holds the latest loss and chosen metrics;
every log stays in `trainer.state.log_history`.
"""

import sys
import time

from transformers import TrainerCallback


def tqdm_class() -> type:
    """`tqdm.notebook.tqdm` in a Jupyter kernel with ipywidgets installed, else the text `tqdm.tqdm`."""
    ipython = sys.modules.get("IPython")  # imported by every kernel; never imported here
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is not None and "IPKernelApp" in shell.config:
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm

            return tqdm
        except ImportError:
            pass
    from tqdm import tqdm

    return tqdm


class ThroughputBar:
    """A progress bar over `total` items with generated tokens/s in its postfix.

    Args:
        total (`int`): Items to do, including the `initial` ones already done (e.g. records of a resumed file).
        desc (`str`): Label of the bar.
        unit (`str`, *optional*, defaults to `"sample"`): What an item is; tqdm shows `<unit>/s`.
        initial (`int`, *optional*, defaults to `0`): Items already done; they count neither in items/s nor tok/s.
        enabled (`bool`, *optional*, defaults to `True`): `False` shows nothing (the counts are still kept).
        leave (`bool`, *optional*, defaults to `True`): Keep the finished bar on screen.
        tqdm_kwargs: Passed to tqdm (e.g. `file`, `mininterval`).
    """

    def __init__(self, total: int, desc: str, unit: str = "sample", initial: int = 0, enabled: bool = True,
                 leave: bool = True, **tqdm_kwargs):
        off = {} if enabled else {"disable": True}  # else tqdm's own default (`TQDM_DISABLE=1` turns every bar off)
        self.bar = tqdm_class()(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                                **{**off, **tqdm_kwargs})
        self.count, self.tokens, self.started = initial, 0, time.perf_counter()  # kept when the bar is disabled

    def tokens_per_second(self) -> float:
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)

    def update(self, n: int = 1, tokens: int = 0, **postfix) -> None:
        """Count `n` more items that generated `tokens` tokens; `postfix` adds other live counts (kept=..., ...)."""
        self.count, self.tokens = self.count + n, self.tokens + tokens
        shown = {"tok/s": f"{self.tokens_per_second():.0f}"} if self.tokens else {}
        if shown or postfix:
            self.bar.set_postfix({**shown, **postfix}, refresh=False)
        self.bar.update(n)

    def describe(self, desc: str) -> None:
        """Relabel the bar, e.g. with the item in progress."""
        self.bar.set_description(desc)

    def write(self, text: str) -> None:
        """Print a line above the bar (or plainly when the bar is disabled)."""
        if self.bar.disable:
            print(text, flush=True)
        else:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "ThroughputBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TrainingBar(TrainerCallback):
    """One bar over the optimizer steps whose postfix shows the latest `loss` and `metrics` (e.g.
    `"tsd_kd/gate_mean"`), instead of a printed dict per log. Install it with [`show_training_progress`]."""

    def __init__(self, *metrics: str, desc: str = "train", **tqdm_kwargs):
        self.metrics, self.desc, self.tqdm_kwargs, self.bar = ("loss", *metrics), desc, tqdm_kwargs, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm_class()(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                                    dynamic_ncols=True, **self.tqdm_kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {name.split("/")[-1]: f"{logs[name]:.4g}" for name in self.metrics
                 if isinstance((logs or {}).get(name), int | float)}
        if self.bar is not None and shown:
            self.bar.set_postfix(shown, refresh=False)  # shown at the next step

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def show_training_progress(trainer, *metrics: str, desc: str = "train") -> TrainingBar:
    """Replace `trainer`'s log printing (`PrinterCallback`, or the default progress callback) by a [`TrainingBar`]
    showing `loss` and `metrics`; returns it."""
    from transformers.trainer import DEFAULT_PROGRESS_CALLBACK  # NotebookProgressCallback in a notebook
    from transformers.trainer_callback import PrinterCallback

    for callback in (PrinterCallback, DEFAULT_PROGRESS_CALLBACK):
        trainer.remove_callback(callback)
    bar = TrainingBar(*metrics, desc=desc)
    trainer.add_callback(bar)
    return bar


def generated_tokens(samples) -> int:
    """Tokens of `samples`: a list of `Sample`s, or of groups of them."""
    return sum(generated_tokens(s) if isinstance(s, list | tuple) else len(s.token_ids) for s in samples)

