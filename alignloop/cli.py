"""The ``alignloop`` command line. It only parses arguments and calls the library."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup
from rich.logging import RichHandler

from alignloop.errors import AlignloopError

app = typer.Typer(
    help="alignloop: the whole RLHF loop — feedback, SFT, reward models, PPO/DPO/GRPO, best-of-N, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


def out_console() -> Console:
    """stdout console; when piped or logged, wide enough that result tables are not cut to 80 columns."""
    if sys.stdout.isatty():
        return Console()
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() else 160)

CONFIG_ARG = typer.Argument(None, help="Stage config YAML (optional: defaults run on a laptop).", show_default=False)
SET_OPT = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                       help="Override a config key: --set train.lr=1e-4 (repeatable).")
OUT_OPT = typer.Option(None, "--out", "-o", metavar="DIR",
                       help="Output run directory (default: config 'out' or runs/<stage>).")


def _setup_logging(verbose: bool = False) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    logging.getLogger("alignloop").setLevel(logging.DEBUG if verbose else logging.INFO)
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        # a 0.3 s "Loading weights" bar per model load buries the stage progress bars that matter
        hf_logging.disable_progress_bar()


def _fail(err: BaseException) -> None:
    console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(getattr(err, "exit_code", 1))


def run_stage_command(stage: str, config: Optional[Path], overrides: list[str], out: Optional[Path]) -> dict:
    from alignloop.pipeline.launch import run_stage

    _setup_logging()
    try:
        summary = run_stage(stage, config, overrides, out)
    except AlignloopError as e:
        _fail(e)
    _print_summary(stage, summary)
    return summary


def _print_summary(stage: str, summary: dict) -> None:
    from rich.table import Table

    if os.environ.get("RANK", "0") != "0":  # under torchrun / accelerate launch, only rank 0 prints
        return
    table = Table(title=f"{stage} finished", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        table.add_row(k, str(v))
    out_console().print(table)


@app.command()
def sft(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Supervised fine-tuning on demonstrations (messages or prompt/completion records)."""
    run_stage_command("sft", config, set, out)


@app.command()
def rm(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Train a reward model on preference pairs or rankings (Bradley–Terry, K-wise, ensembles, multi-objective)."""
    run_stage_command("rm", config, set, out)


@app.command()
def dpo(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Direct preference optimisation (DPO, cDPO, robust, IPO, hinge, SimPO) on preference pairs."""
    run_stage_command("dpo", config, set, out)


@app.command()
def kto(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """KTO: learn from completions labelled desirable or undesirable (unpaired records, or pairs split in two)."""
    run_stage_command("kto", config, set, out)


@app.command()
def orpo(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """ORPO: SFT on the chosen answer plus an odds-ratio preference term, with no reference model."""
    run_stage_command("orpo", config, set, out)


@app.command()
def ppo(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """PPO with a critic, GAE and a KL penalty to the reference (fixed, adaptive or uncertainty-adaptive)."""
    run_stage_command("ppo", config, set, out)


@app.command()
def grpo(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Critic-free RL: GRPO (group-normalised) or RLOO (leave-one-out) advantages."""
    run_stage_command("grpo", config, set, out)


@app.command()
def bon(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Best-of-N sampling (and rejection-sampling data for RSFT) with any reward source."""
    run_stage_command("bon", config, set, out)


@app.command()
def prm(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Train a process reward model on per-step labels (or the outcome-only baseline)."""
    run_stage_command("prm", config, set, out)


@app.command()
def label(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Label preference pairs with an LLM judge (RLAIF): both A/B orders, soft labels, agreement report."""
    run_stage_command("label", config, set, out)


@app.command()
def constitution(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Constitutional AI: critique→revision SFT data and principle-judged preference pairs."""
    run_stage_command("constitution", config, set, out)


@app.command()
def collect(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Sample pairs of a policy's own responses and label them with the simulated annotator."""
    run_stage_command("collect", config, set, out)


@app.command("eval")
def eval_(config: Optional[Path] = CONFIG_ARG, set: list[str] = SET_OPT, out: Optional[Path] = OUT_OPT) -> None:
    """Evaluate policies on held-out prompts with the gold scorer: reward, KL, win rate, diversity; report.html."""
    from alignloop.pipeline.commands import eval_command

    _setup_logging()
    try:
        eval_command(config, set, out, console=out_console())
    except AlignloopError as e:
        _fail(e)


@app.command()
def run(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML."),
    set: list[str] = typer.Option([], "--set", "-s", help="STAGE.key=value or defaults.key=value (repeatable)."),
    out: Optional[Path] = OUT_OPT,
    variant: Optional[str] = typer.Option(None, "--variant", help="A named set of overrides from the YAML's variants."),
) -> None:
    """Run a pipeline of stages in one run directory; finished stages are skipped, an interrupted one resumes."""
    from alignloop.pipeline.commands import run_command

    _setup_logging()
    try:
        run_command(pipeline, set, out, variant, console=out_console())
    except AlignloopError as e:
        _fail(e)


@app.command()
def quickstart(
    fast: bool = typer.Option(False, "--fast", help="Smaller numbers."), out: Optional[Path] = OUT_OPT,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every stage (default: the pipeline's, 0)."),
    set: list[str] = typer.Option([], "--set", "-s", metavar="STAGE.KEY=VALUE", help="Override a stage's key."),
) -> None:
    """The whole RLHF loop on the bundled model, offline: SFT, preferences, RM, PPO, DPO, best-of-N, report."""
    from alignloop.pipeline.commands import quickstart as run_quickstart

    _setup_logging()
    try:
        run_quickstart(fast, out, list(set), console=out_console(), seed=seed)
    except AlignloopError as e:
        _fail(e)


@app.command()
def score(
    rm_dir: Path = typer.Argument(..., help="A reward-model run directory."),
    data: Path = typer.Argument(..., help="Pair, ranking or prompt/completion records."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output JSONL (default: next to the data)."),
) -> None:
    """Score every record with a reward model (and its uncertainty for ensembles); one JSON line per record."""
    from alignloop.rewards.model import score_file

    _setup_logging()
    try:
        result = score_file(rm_dir, data, out)
    except AlignloopError as e:
        _fail(e)
    out_console().print(result)


@app.command()
def models() -> None:
    """List bundled and cached models."""
    from rich.table import Table

    from alignloop.models import list_models

    _setup_logging()
    table = Table(title="models")
    rows = list_models()
    cols = list(rows[0]) if rows else ["name"]
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in cols])
    out_console().print(table)


@app.command()
def generate(
    model: str = typer.Argument(..., help="Bundled name, local HF dir, or a run/stage dir."),
    prompt: list[str] = typer.Argument(..., help="One or more prompts."),
    max_new_tokens: int = typer.Option(128, help="Tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 means greedy."),
    top_p: float = typer.Option(1.0),
    n: int = typer.Option(1, help="Samples per prompt."),
    seed: int = typer.Option(0),
) -> None:
    """Chat with any model to look at its outputs."""
    from alignloop.models import load_causal_lm, load_tokenizer
    from alignloop.rollout.hf import HFSampler

    _setup_logging()
    try:
        tok = load_tokenizer(model)
        lm = load_causal_lm(model, trainable=False)
        sampler = HFSampler(lm, tok)
        greedy = temperature <= 0
        ro = sampler.generate(
            prompt, n=n, max_new_tokens=max_new_tokens, temperature=1.0 if greedy else temperature,
            top_k=1 if greedy else 0, top_p=top_p, seed=seed,
        )
    except AlignloopError as e:
        _fail(e)
    out = out_console()
    for i, text in enumerate(ro.responses):
        out.rule(f"[bold]{ro.prompts[i] if isinstance(ro.prompts[i], str) else ro.prompts[i]}")
        out.print(text, highlight=False, markup=False)


def _mount_optional() -> None:
    try:
        from alignloop.feedback.cli import annotate_app
    except ImportError:
        return
    app.add_typer(annotate_app, name="annotate", help="Human feedback web app: init, serve, export.")


class _PlainHelp:
    """typer's rich help shows a type after every option, '<bool>' after --help: give --help none."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _PlainHelpCommand(_PlainHelp, TyperCommand):
    pass


class _PlainHelpGroup(_PlainHelp, TyperGroup):
    pass


def _plain_help(typer_app: typer.Typer) -> None:
    if not (isinstance(typer_app.info.cls, type) and typer_app.info.cls is not TyperGroup):
        typer_app.info.cls = _PlainHelpGroup  # unset (typer's Default placeholder) or the plain TyperGroup
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = _PlainHelpCommand
    for group in typer_app.registered_groups:
        _plain_help(group.typer_instance)


_plain_help(app)


def main() -> None:
    _mount_optional()
    _plain_help(app)
    try:
        app()
    except AlignloopError as e:  # errors raised outside a command body
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(getattr(e, "exit_code", 1))


if __name__ == "__main__":
    main()
