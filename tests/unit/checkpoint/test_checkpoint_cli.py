"""``mometas-checkpoint list`` / ``verify`` on hand-built checkpoint directories (no training; real
runs are in test_checkpoint_integrity.py). Tags are published with checkpoint.publish, as a save does."""
import json
import os
import subprocess
import sys

import pytest
import torch

from mometas_ds import checkpoint as ckpt
from mometas_ds.cli.checkpoint import main
from tests.pretrain_helpers import REPO_ROOT, subprocess_env

IDENTITY_A = {"--objectives": ["mlm", "atd"], "--seed": 3, "number of ranks": 2}
IDENTITY_B = {"--objectives": ["mlm"], "--seed": 1, "number of ranks": 1}


def _tag(root, step, identity=None, publish=True, legacy=False, size=3000):
    tag_dir = os.path.join(root, ckpt.tag_for(step))
    os.makedirs(tag_dir)
    for rank in range(2):
        with open(os.path.join(tag_dir, f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"), "wb") as f:
            f.write(os.urandom(size))
    torch.save({"mometas": {"step": step}}, os.path.join(tag_dir, ckpt.CLIENT_STATE_FILE))
    if identity is not None:
        with open(os.path.join(tag_dir, ckpt.RUN_IDENTITY_FILE), "w") as f:
            json.dump(identity, f)
    if legacy:
        with open(os.path.join(tag_dir, ckpt.COMPLETE_MARKER), "w") as f:
            f.write(str(step))
    elif publish:
        records = ckpt.file_records(tag_dir)
        records["zero_pp_rank_1_mp_rank_00_optim_states.pt"]["rank"] = 1
        ckpt.publish(root, step, records)
    return tag_dir


@pytest.fixture
def run(tmp_path):
    """RUN/checkpoints with step2, step4 (intact), step6 (size damage), step8 (never published),
    step10 (written before manifests, another run's identity); latest_complete names step6."""
    root = str(tmp_path / "run" / "checkpoints")
    for step in (2, 4, 6):
        _tag(root, step, IDENTITY_A)
    os.truncate(os.path.join(root, "step6", "zero_pp_rank_1_mp_rank_00_optim_states.pt"), 100)
    _tag(root, 8, IDENTITY_A, publish=False)
    _tag(root, 10, IDENTITY_B, legacy=True)
    with open(os.path.join(root, ckpt.LATEST_FILE), "w") as f:
        f.write("step6")
    return root


def _short_id(identity):
    return ckpt.text_record(json.dumps(identity, sort_keys=True))[ckpt.HASH][:8]


def test_list_shows_step_complete_intact_size_and_identity_of_every_tag(run, capsys):
    assert main(["list", run]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TAG", "STEP", "COMPLETE", "INTACT", "SIZE", "IDENTITY"]
    rows = {line.split()[0]: line.split() for line in lines[1:6]}
    a, b = _short_id(IDENTITY_A), _short_id(IDENTITY_B)
    assert list(rows) == ["step10", "step8", "step6", "step4", "step2"], "newest first"
    assert rows["step10"][1:4] == ["10", "yes", "unverified"] and rows["step10"][-1] == b
    assert rows["step8"][1:4] == ["8", "no", "-"]
    assert rows["step6"][1:5] == ["*", "6", "yes", "NO"] and rows["step6"][-1] == a  # * = named by latest_complete
    assert rows["step4"][1:4] == ["4", "yes", "yes"] and rows["step4"][-1] == a
    size = sum(r["size"] for r in ckpt.read_manifest(os.path.join(run, "step4"))[0]["files"].values())
    assert " ".join(rows["step4"][4:6]) == f"{size / 1024:.1f} KiB"
    text = "\n".join(lines)
    assert f"step6: {os.path.join(run, 'step6', 'zero_pp_rank_1_mp_rank_00_optim_states.pt')}: 100 bytes, the " \
           "manifest records 3000 (written by rank 1)" in text
    assert f'run identity {a} (step8, step6, step4, step2): --objectives=["mlm", "atd"], --seed=3' in text
    assert f"run identity {b} (step10): " in text

    assert main(["list", os.path.dirname(run), "--json"]) == 0  # a run's output_dir works too
    listing = json.loads(capsys.readouterr().out)
    by_tag = {row["tag"]: row for row in listing["tags"]}
    assert listing["checkpoints"] == run
    assert (by_tag["step6"]["intact"], by_tag["step6"]["latest_complete"]) == ("NO", True)
    assert by_tag["step4"]["run_identity"] == IDENTITY_A and by_tag["step4"]["checked"] == "full"
    assert by_tag["step4"]["size"] == size and by_tag["step8"]["complete"] is False


def test_verify_reports_each_problem_and_what_resume_auto_would_take(run, capsys):
    assert main(["verify", run]) == 1
    out = capsys.readouterr().out
    assert "step10: UNVERIFIED: written before checkpoints carried a manifest" in out
    assert "step8: incomplete (never published; --resume ignores it)" in out
    assert "step6: DAMAGED\n  " + os.path.join(run, "step6", "zero_pp_rank_1_mp_rank_00_optim_states.pt") in out
    assert "step4: intact (sizes and checksums of" in out and "step2: intact" in out
    # latest_complete names the damaged step6: resume passes over it, to the newest intact or unverifiable tag.
    assert "--resume auto resumes from step10" in out

    assert main(["verify", os.path.join(run, "step4")]) == 0
    assert main(["verify", os.path.join(run, "step8")]) == 1
    assert "step8: INCOMPLETE" in capsys.readouterr().out

    # A same-size overwrite: only the checksums see it (--level size does not, the default full does).
    path = os.path.join(run, "step4", ckpt.CLIENT_STATE_FILE)
    with open(path, "r+b") as f:
        f.write(bytes(os.path.getsize(path)))
    capsys.readouterr()
    assert main(["verify", os.path.join(run, "step4"), "--level", "size"]) == 0
    assert "step4: intact (sizes of" in capsys.readouterr().out
    assert main(["verify", os.path.join(run, "step4")]) == 1
    assert f"{path}: xxh3_64 checksum differs from the manifest's" in capsys.readouterr().out


def test_verify_flags_a_latest_complete_that_is_not_a_tag(run, capsys):
    with open(os.path.join(run, ckpt.LATEST_FILE), "w") as f:
        f.write("../../elsewhere/checkpoints/step4")
    assert main(["verify", run]) == 1
    out = capsys.readouterr().out
    assert "holds '../../elsewhere/checkpoints/step4', not a tag (step<N>): --resume auto refuses it" in out
    assert "--resume auto stops with exit 2" in out


def test_a_manifest_listing_a_file_outside_its_tag_is_damage(tmp_path, capsys):
    root = str(tmp_path / "checkpoints")
    tag_dir = _tag(root, 2, publish=False)
    with open(tmp_path / "outside.bin", "wb") as f:
        f.write(b"x")
    records = ckpt.file_records(tag_dir)
    records["../../outside.bin"] = {"size": 1, ckpt.HASH: ckpt.file_digest(str(tmp_path / "outside.bin"))}
    ckpt.publish(root, 2, records)
    assert main(["verify", root]) == 1
    assert "lists '../../outside.bin', outside the tag" in capsys.readouterr().out


def test_list_and_verify_never_unpickle(tmp_path, capsys):
    marker = str(tmp_path / "ran")

    class Payload:
        def __reduce__(self):
            return os.makedirs, (marker,)

    root = str(tmp_path / "checkpoints")
    tag_dir = _tag(root, 2, publish=False)
    torch.save(Payload(), os.path.join(tag_dir, ckpt.CLIENT_STATE_FILE))
    torch.save(Payload(), os.path.join(tag_dir, "mp_rank_00_model_states.pt"))
    ckpt.publish(root, 2, ckpt.file_records(tag_dir))
    assert main(["verify", root]) == 0 and main(["list", root]) == 0
    assert not os.path.exists(marker)


@pytest.mark.parametrize("make, message", [
    (lambda tmp: str(tmp / "nope"), "nope: no such directory"),
    (lambda tmp: str(tmp), "holds no checkpoint tags (step<N> directories)"),
])
def test_bad_paths_exit_2_with_the_program_name(tmp_path, make, message):
    result = subprocess.run([sys.executable, "-m", "mometas_ds.cli.checkpoint", "verify", make(tmp_path)],
                            env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("mometas-checkpoint: error: ") and message in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "mometas_ds.cli.checkpoint",
                             "verify", str(tmp_path), "--level", "x"],
                            env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--level" in result.stderr
