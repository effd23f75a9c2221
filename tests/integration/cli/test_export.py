"""mometas-export: a complete intermediate checkpoint as an HF directory that fine-tuning loads; the final
checkpoint's export equals the run's own hf_model/; an incomplete checkpoint is refused."""
import os

import pytest

from mometas_ds.cli.export import main
from tests.pretrain_helpers import make_corpus_and_tokenizer, pretrain_args, run_pretrain


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pt"))
    corpus, tokenizer = make_corpus_and_tokenizer(root, num_docs=100, vocab_size=300)
    out = os.path.join(root, "run")
    result = run_pretrain(pretrain_args(corpus, tokenizer, out, os.path.join(root, "cache"), max_steps=4,
                                        extra=["--save_steps", "2", "--objectives", "mlm,cse"]))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.integration
def test_export_of_each_checkpoint(run_dir, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForMaskedLM

    final = str(tmp_path / "step4")
    assert main(["--checkpoint", os.path.join(run_dir, "checkpoints", "step4"), "--out", final]) == 0
    ours, theirs = load_file(os.path.join(final, "model.safetensors")), \
        load_file(os.path.join(run_dir, "hf_model", "model.safetensors"))
    assert sorted(ours) == sorted(theirs) and all((ours[k] == theirs[k]).all() for k in ours)
    middle = str(tmp_path / "step2")
    assert main(["--checkpoint", os.path.join(run_dir, "checkpoints", "step2"), "--out", middle]) == 0
    mid = load_file(os.path.join(middle, "model.safetensors"))
    assert any(not (mid[k] == ours[k]).all() for k in ours)  # two more steps changed the weights
    BertForMaskedLM.from_pretrained(middle)
    AutoModelForSequenceClassification.from_pretrained(middle, num_labels=2)
    assert AutoTokenizer.from_pretrained(middle)("the match")["input_ids"][0] == 2  # [CLS]
    # An earlier export is replaced whole; a directory of the user's, or a file, is refused and left as it was.
    assert main(["--checkpoint", os.path.join(run_dir, "checkpoints", "step4"), "--out", middle]) == 0
    again = load_file(os.path.join(middle, "model.safetensors"))
    assert all((again[k] == ours[k]).all() for k in ours)
    assert sorted(os.listdir(tmp_path)) == ["step2", "step4"]  # no temporary directory left beside it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["--checkpoint", os.path.join(run_dir, "checkpoints", "step4"), "--out", str(mine)]) == 2
    assert "not an earlier mometas-export output" in capsys.readouterr().err
    assert os.listdir(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep"
    os.remove(os.path.join(run_dir, "checkpoints", "step2", "COMPLETE"))
    capsys.readouterr()
    assert main(["--checkpoint", os.path.join(run_dir, "checkpoints", "step2"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mometas-export: error: --checkpoint") and "no COMPLETE marker" in err


@pytest.mark.integration
@pytest.mark.parametrize("how", ["flip 1 KiB of master weights", "truncate", "delete", "stray file"])
def test_export_verifies_the_manifest_and_refuses_a_damaged_checkpoint_with_exit_2(run_dir, tmp_path, capsys, how):
    """Issue 27 item 5: a tag verify calls DAMAGED exported with exit 0 (embeddings up to 2.3e37); truncated or
    missing files ended in tracebacks."""
    import shutil

    tag = str(tmp_path / "checkpoints" / "step4")
    shutil.copytree(os.path.join(run_dir, "checkpoints", "step4"), tag)
    shutil.copy(os.path.join(run_dir, "run_config.json"), str(tmp_path))
    optim = os.path.join(tag, "zero_pp_rank_0_mp_rank_00_optim_states.pt")  # ZeRO-2: the fp32 master weights
    if how.startswith("flip"):
        with open(optim, "r+b") as f:
            f.seek(os.path.getsize(optim) // 2)
            block = f.read(1024)
            f.seek(-1024, os.SEEK_CUR)
            f.write(bytes(b ^ 0xFF for b in block))
        problem = f"{optim}: xxh3_64 checksum differs from the manifest's"
    elif how == "truncate":
        os.truncate(optim, 1000)
        problem = f"{optim}: 1000 bytes, the manifest records"
    elif how == "delete":
        os.remove(os.path.join(tag, "mp_rank_00_model_states.pt"))
        problem = f"{os.path.join(tag, 'mp_rank_00_model_states.pt')}: missing"
    else:
        shutil.copy(optim, os.path.join(tag, "zero_pp_rank_1_mp_rank_00_optim_states.pt"))
        problem = f"{os.path.join(tag, 'zero_pp_rank_1_mp_rank_00_optim_states.pt')}: not in the manifest"
    capsys.readouterr()
    out = str(tmp_path / "hf")
    assert main(["--checkpoint", tag, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mometas-export: error: --checkpoint {tag} is DAMAGED, refused: ") and problem in err, err
    assert "Traceback" not in err and not os.path.exists(out)
    if how in ("truncate", "delete"):
        # A checkpoint written before manifests (nothing to verify against): still a message, not a traceback.
        os.remove(os.path.join(tag, "manifest.json"))
        with open(os.path.join(tag, "COMPLETE"), "w") as f:
            f.write("4")
        assert main(["--checkpoint", tag, "--out", out]) == 2
        err = capsys.readouterr().err
        assert f"\nmometas-export: error: --checkpoint {tag}" in "\n" + err and "Traceback" not in err, err
        assert "reading its weights failed" in err or "no mp_rank_00_model_states.pt" in err, err
        assert not os.path.exists(out)
