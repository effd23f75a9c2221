"""mometas-plot renders valid fixed-size PNGs from a run directory, and survives what killed runs leave behind."""

import json
import logging
import math
import os
import struct
import zlib

import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from mometas_ds import plot
from mometas_ds.cli import plot as plot_cli

OBJECTIVES = ["mlm", "gmlm", "atd", "dtd", "cse"]
N_STEPS = 400
UPDATE_INTERVAL = 50
WIDTH, HEIGHT = 800, 450
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, *, sampler=True, nan_step=123):
    """A run directory shaped like a pre-training run's --output_dir: 400 steps, an update every 50."""
    rng = np.random.default_rng(0)
    os.makedirs(run_dir, exist_ok=True)
    base_loss = {"mlm": 7.0, "gmlm": 7.5, "atd": 0.7, "dtd": 0.6, "cse": 3.0}
    logits = np.zeros(len(OBJECTIVES))
    probs = np.full(len(OBJECTIVES), 1 / len(OBJECTIVES))
    metric_lines, sampler_lines = [], []
    prev_total = None
    for step in range(1, N_STEPS + 1):
        if step % UPDATE_INTERVAL == 1:  # the sampler updates at steps 1, 51, 101, ...
            val = {n: base_loss[n] * math.exp(-step / 300) + 0.05 * rng.random() for n in OBJECTIVES}
            if step == 101:
                val["dtd"] = float("nan")  # a diverged meta-validation pass
            total = sum(v for v in val.values() if math.isfinite(v))
            reward = None if prev_total is None else prev_total - total
            prev_total = total
            logits += rng.normal(0, 0.5, len(OBJECTIVES))
            probs = np.exp(logits) / np.exp(logits).sum()
            sampler_lines.append({
                "step": step, "probs": dict(zip(OBJECTIVES, probs.tolist())), "reward": reward,
                "val_losses": val, "policy_loss": None if reward is None else -reward * 0.1,
            })
        objective = OBJECTIVES[rng.choice(len(OBJECTIVES), p=probs)]
        loss = base_loss[objective] * math.exp(-step / 300) + 0.2 * rng.random()
        metric_lines.append({
            "step": step, "objective": objective, "loss": float("nan") if step == nan_step else loss,
            "lr": 1e-4, "grad_norm": None if step == 1 else 1.0, "samples_per_s": 100.0, "tokens_per_s": 12800.0,
        })
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in metric_lines)  # json writes NaN as the bare token NaN
    if sampler:
        with open(os.path.join(run_dir, "sampler.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in sampler_lines)
    return metric_lines, sampler_lines


def check_png(path):
    """Parse the PNG by hand (signature, IHDR and its CRC, IEND) and load it with matplotlib."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE, path
    length, chunk_type, width, height, bit_depth, colour_type = struct.unpack(">I4sIIBB", data[8:26])
    assert (length, chunk_type) == (13, b"IHDR")
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(data[12:29]), "IHDR CRC mismatch"
    assert (width, height) == (WIDTH, HEIGHT), (path, width, height)
    assert bit_depth == 8
    assert data[-12:] == struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (HEIGHT, WIDTH) and image.shape[2] in (3, 4)
    return image[..., :3]


def has_colour(image, rgb, alpha, tol=3 / 255):
    """Whether some pixel is `rgb` drawn at `alpha` over the white background."""
    expected = alpha * np.asarray(rgb) + (1 - alpha)
    return bool((np.abs(image - expected).max(axis=-1) <= tol).any())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run"))
    write_run(run_dir)
    return run_dir, plot.plot_run(run_dir)


def test_writes_all_four_figures_as_800x450_pngs(rendered):
    run_dir, paths = rendered
    assert paths == [os.path.join(run_dir, "plots", name) for name in plot.FIGURE_NAMES]
    for path in paths:
        image = check_png(path)
        # Not a blank canvas: axes, text and data cover a real share of it.
        assert (image.min(axis=-1) < 0.9).mean() > 0.01, path


def test_stacked_probabilities_show_every_objective_in_its_colour(rendered):
    run_dir, _ = rendered
    image = check_png(os.path.join(run_dir, "plots", "sampling_probs.png"))
    for i, name in enumerate(OBJECTIVES):  # known objectives take C0..C4 in this order
        assert has_colour(image, to_rgb(f"C{i}"), alpha=0.85), name


def test_readers_keep_nan_and_null_as_nan(tmp_path):
    metric_lines, sampler_lines = write_run(str(tmp_path), nan_step=123)
    metrics = plot.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert len(metrics.steps) == N_STEPS and metrics.objectives == [r["objective"] for r in metric_lines]
    assert np.isnan(metrics.losses[122]) and np.isfinite(np.delete(metrics.losses, 122)).all()
    updates = plot.read_sampler(str(tmp_path / "sampler.jsonl"))
    assert updates.steps.tolist() == [r["step"] for r in sampler_lines] == list(range(1, N_STEPS, UPDATE_INTERVAL))
    assert np.isnan(updates.rewards[0]) and np.isfinite(updates.rewards[1:]).all()
    assert np.isnan(updates.val_losses["dtd"][2]) and np.isfinite(updates.val_losses["mlm"]).all()
    np.testing.assert_allclose(sum(updates.probs[n] for n in OBJECTIVES), 1.0, rtol=1e-12)


def test_truncated_last_lines_are_skipped_and_counted(tmp_path, caplog):
    write_run(str(tmp_path))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 401, "objective": "ml')  # killed mid-write
    with open(tmp_path / "sampler.jsonl", "a") as f:
        f.write('{"step": 401, "probs": {"mlm": 0.')
    with caplog.at_level(logging.WARNING, logger="mometas_ds.plot"):
        paths = plot.plot_run(str(tmp_path), str(tmp_path / "figs"))
    assert [os.path.basename(p) for p in paths] == list(plot.FIGURE_NAMES)
    for path in paths:
        check_png(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("metrics.jsonl: skipped 1 malformed line(s) (line 401)" in m for m in warnings), warnings
    assert any("sampler.jsonl: skipped 1 malformed line(s) (line 9)" in m for m in warnings), warnings
    assert len(plot.read_metrics(str(tmp_path / "metrics.jsonl")).steps) == N_STEPS


def test_without_sampler_log_only_training_loss_is_drawn(tmp_path, caplog):
    write_run(str(tmp_path), sampler=False)
    with caplog.at_level(logging.INFO, logger="mometas_ds.plot"):
        paths = plot.plot_run(str(tmp_path))
    assert paths == [str(tmp_path / "plots" / "train_loss.png")]
    check_png(paths[0])
    assert not (tmp_path / "plots" / "sampling_probs.png").exists()
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 3 and all(name in " ".join(skipped) for name in plot.FIGURE_NAMES[:3])


def test_rule_based_sampler_log_with_probs_only_still_draws_probabilities(tmp_path):
    _, sampler_lines = write_run(str(tmp_path), sampler=False)
    with open(tmp_path / "sampler.jsonl", "w") as f:  # a fixed schedule: probabilities, nothing learned
        for r in sampler_lines:
            f.write(json.dumps({"step": r["step"], "probs": r["probs"], "reward": None,
                                "val_losses": {}, "policy_loss": None}) + "\n")
    paths = plot.plot_run(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["sampling_probs.png", "train_loss.png"]
    for path in paths:
        check_png(path)


def test_missing_run_dir_or_metrics_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl not found"):
        plot.plot_run(str(missing))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run"):
        plot.plot_run(str(tmp_path / "empty_run"))
    with pytest.raises(SystemExit) as exc:
        plot_cli.main([str(missing)])
    assert exc.value.code == 2 and "metrics.jsonl not found" in capsys.readouterr().err
    assert not missing.exists()


def test_wrong_field_type_names_file_line_and_field(tmp_path):
    write_run(str(tmp_path))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines[9] = json.dumps({"step": 10, "objective": "mlm", "loss": "high"})
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:10: field 'loss'"):
        plot.plot_run(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "objective": "m\n')
    with pytest.raises(ValueError, match="no step records"):
        plot.plot_run(str(tmp_path))


def test_cli_writes_into_out_and_prints_paths(tmp_path, capsys):
    write_run(str(tmp_path / "run"))
    assert plot_cli.main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / name) for name in plot.FIGURE_NAMES]
    assert all(os.path.isfile(p) for p in printed)
