"""``make demo``: pre-train a tiny BERT on the CPU with 2 ranks through the deepspeed launcher.

Built-in generated corpus, a WordPiece tokenizer trained on it, all five objectives,
MOMETAS with a short interval; then the figures. Writes to runs/demo/ (or --output_dir), marked
as the demo's own by a .mometas_demo file.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil  # a DeepSpeed dependency (its launcher uses it)

from mometas_ds.config import bundled_ds_config
from mometas_ds.config.paths import RunPaths
from mometas_ds.data.demo_corpus import write_demo_corpus

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = ".mometas_demo"  # written first into every directory the demo creates; --overwrite needs it
# What the demo (and the pre-training run it starts) writes at the top of its directory.
DEMO_OUTPUTS = ("corpus.jsonl", "checkpoints", "trace", "tokenizer", "cache", "hf_model", "metrics.jsonl",
                "sampler.jsonl", "run_config.json", "run.lock", "plots", "finetune_data", "eval", MARKER)


def _own_outputs(out: str) -> list:
    """The entries of an earlier demo output directory that carry the names the demo writes (a new
    step of the demo adds its output's name to DEMO_OUTPUTS); never anything else."""
    from mometas_ds.plot import FIGURE_NAMES  # heavy (matplotlib): not for --help

    own = set(DEMO_OUTPUTS) | set(FIGURE_NAMES)
    temporary = ("hf_model.tmp-", "hf_model.old-")
    return sorted(name for name in os.listdir(out) if name in own or name.startswith(temporary))


def _write_marker(out: str) -> None:
    with open(os.path.join(out, MARKER), "w", encoding="utf-8") as f:
        json.dump({"written_by": "mometas_ds.cli.demo", "deleted_by": "--overwrite, only the names in DEMO_OUTPUTS"}, f)


def prepare_output_dir(p: argparse.ArgumentParser, out: str, overwrite: bool, keep: bool) -> None:
    """Make ``out`` ready for a demo run without ever deleting what the demo did not write there."""
    if os.path.exists(out) and not os.path.isdir(out):
        p.error(f"--output_dir: {out} is a file, not a directory")
    if not os.path.isdir(out) or not os.listdir(out):
        os.makedirs(out, exist_ok=True)
        _write_marker(out)  # first: an interrupted demo is still recognised as the demo's own
        return
    if not os.path.isfile(os.path.join(out, MARKER)):
        p.error(f"--output_dir: {out} is not empty and is not an earlier demo output (it has no {MARKER} file): "
                "nothing there is touched; give a new or empty --output_dir")
    if keep:
        return
    if not overwrite:
        p.error(f"--output_dir: {out} holds an earlier demo output: add --overwrite to replace it, or --keep "
                "to continue it")
    for name in _own_outputs(out):
        path = os.path.join(out, name)
        if name == MARKER:
            continue
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    others = sorted(set(os.listdir(out)) - {MARKER})
    if others:
        print(f"demo: kept {', '.join(others)} in {out} (not written by the demo)", flush=True)


def run_pretraining(cmd: list, env: dict) -> tuple:
    """Run the launcher; a Ctrl-C (or TERM) here is passed to the ranks only. Returns (exit code, interrupted).

    Hand-written because DeepSpeed's launcher handles Ctrl-C badly for us: its runner dies with a
    KeyboardInterrupt traceback and its launch.py kills the ranks 30 s later. The ranks, each
    signalled once, save at the step boundary and exit 0 (a second Ctrl-C: at once), and the
    launcher then ends as they did.
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # the terminal's Ctrl-C reaches the demo only
    interrupted = []

    def forward(signum, frame):
        interrupted.append(signum)
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                args = child.cmdline()
                if ["-m", "mometas_ds.pretrain"] in [args[i:i + 2] for i in range(len(args))]:  # a rank, not launch.py
                    child.send_signal(signum)
            except psutil.Error:
                pass
        print("demo: " + ("stopping: pre-training saves a checkpoint at the end of this step (Ctrl-C again to stop "
                          "at once)" if len(interrupted) == 1 else "stopping at once"), file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return returncode, bool(interrupted)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mometas_ds.cli.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="runs/demo",
                   help="where everything goes (default: runs/demo, relative to the current directory); a non-empty "
                        "directory must be an earlier demo output")
    p.add_argument("--ranks", type=int, default=2, help="CPU processes (ranks) of the pre-training run")
    p.add_argument("--max_steps", type=int, default=300, help="optimizer steps of the pre-training run")
    p.add_argument("--deepspeed_config", default=bundled_ds_config("cpu_demo.json"),
                   help="DeepSpeed JSON config (default: the bundled cpu_demo.json); relative to the current directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo output in --output_dir (only what the demo wrote there is deleted)")
    p.add_argument("--keep", action="store_true",
                   help="continue an earlier demo output in --output_dir: pre-training resumes from its last "
                        "checkpoint")
    args = p.parse_args(argv)
    if args.overwrite and args.keep:
        p.error("--overwrite and --keep: give one of them")
    if args.ranks < 1 or args.max_steps < 1:
        p.error("--ranks and --max_steps must be >= 1")
    ds_config = os.path.abspath(args.deepspeed_config)  # the user's directory, not the repository's
    if not os.path.isfile(ds_config):
        p.error(f"--deepspeed_config: file not found: {args.deepspeed_config} (looked for {ds_config})")

    out = os.path.abspath(args.output_dir)
    prepare_output_dir(p, out, args.overwrite, args.keep)
    corpus = os.path.join(out, "corpus.jsonl")
    write_demo_corpus(corpus, seed=0)

    env = dict(os.environ)
    # The launcher does not pin ranks to cores: one thread per rank avoids oversubscription.
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(args.ranks),
        "--master_port", str(29500 + os.getpid() % 1000),
        "--module", "mometas_ds.pretrain",
        "--deepspeed_config", ds_config,
        "--train_files", corpus,
        "--output_dir", out,
        "--model_config", "tiny",
        "--train_tokenizer", "2000",
        "--seq_len", "64",
        "--objectives", "mlm,gmlm,atd,dtd,cse",
        "--sampler", "mometas",
        "--meta_interval", "20",
        "--meta_batch_size", "32",
        "--max_steps", str(args.max_steps),
        "--save_steps", "100",
        "--log_steps", "10",
    ] + (["--resume"] if args.keep else [])
    print("running:", " ".join(cmd), flush=True)
    started = time.time()
    returncode, interrupted = run_pretraining(cmd, env)  # in the user's directory; every path above is absolute
    if returncode != 0:
        print(f"demo: pre-training failed (exit {returncode})", file=sys.stderr)
        return returncode
    if interrupted:
        print(f"demo: pre-training stopped early with a checkpoint in {os.path.join(out, 'checkpoints')}; "
              f"run the demo again with --keep --output_dir {out} to continue it", flush=True)

    from mometas_ds.plot import plot_run  # heavy (matplotlib): not for --help

    figures = plot_run(out)
    print(f"\ndemo finished in {time.time() - started:.0f} s")
    print(f"  metrics:     {os.path.join(out, 'metrics.jsonl')}")
    print(f"  sampler:     {os.path.join(out, 'sampler.jsonl')}")
    print(f"  traces:      {os.path.join(out, 'trace')}")
    print(f"  checkpoint:  {os.path.join(out, 'checkpoints')}")
    print(f"  HF model:    {os.path.join(out, 'hf_model')}  (transformers' BertForMaskedLM and AutoModel load it)")
    for path in figures:
        print(f"  figure:      {path}")
    if interrupted:
        print("demo: fine-tuning skipped: the pre-training was stopped before its end (no hf_model/ yet)", flush=True)
        return 0
    return finetune_demo(out)  # pre-train -> fine-tune -> score


def finetune_demo(run_dir: str, seed: int = 1) -> int:
    """Generate a sentiment task (good/bad cue words, SST-2's layout) in RUN_DIR/finetune_data, fine-tune
    RUN_DIR/hf_model on it into RUN_DIR/eval and print the dev accuracy next to the majority baseline."""
    # Heavy (transformers' Trainer, datasets): imported only once pre-training is done.
    from mometas_ds.cli.finetune import main as finetune_main
    from mometas_ds.finetune import metrics, synthetic
    from mometas_ds.finetune.runner import predictions_path

    data = synthetic.write_glue(os.path.join(run_dir, "finetune_data"), ["sst2"], n_train=400, n_dev=200, seed=seed)
    out = os.path.join(run_dir, "eval")
    code = finetune_main(["--model_name_or_path", RunPaths(run_dir).hf_model, "--data_dir", data, "--tasks", "sst2",
                 "--output_dir", out, "--seeds", str(seed), "--learning_rates", "5e-4", "--epochs", "4",
                 "--batch_size", "16", "--max_seq_len", "48", "--overwrite", "--log_level", "error"])
    if code != 0:
        return code
    with open(os.path.join(out, "results.jsonl"), encoding="utf-8") as f:
        result = json.loads(f.readline())
    with open(predictions_path(out, "sst2", 5e-4, seed), encoding="utf-8") as f:
        labels = [json.loads(line)["label"] for line in f]
    train_labels = [line.rstrip("\n").split("\t")[1] for line in
                    open(os.path.join(data, "SST-2", "train.tsv"), encoding="utf-8").readlines()[1:]]
    baseline = metrics.majority_baseline(train_labels, labels)
    print(f"\nfine-tuned {os.path.join(run_dir, 'hf_model')} on a generated sentiment task "
          f"({result['train_examples']} train / {len(labels)} dev examples, {result['wall_s']:.0f} s): "
          f"dev accuracy {result['metrics']['accuracy']:.1f}% (majority class: {baseline:.1f}%)")
    print(f"  fine-tuning:  {out}  (results.jsonl, predictions/, summary.md; see docs/finetuning.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
