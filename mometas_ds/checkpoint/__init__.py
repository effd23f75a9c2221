"""Checkpoints on top of DeepSpeed's save/load, published only when complete and verified on resume.

DeepSpeed writes its ``latest`` file from rank 0 without waiting for the other ranks'
shards. We save with ``save_latest=False``, wait for every rank, then rank 0 marks the
tag complete and replaces our own ``latest`` atomically. A kill during a save leaves an
unmarked tag directory that resume never picks. A write that fails on any rank (disk
full, permissions) fails the save on every rank with a CheckpointError naming the path;
nothing is published and the previous complete tag stays the latest.

Each published tag carries ``manifest.json``: every file of the tag with its size and xxh3_64
checksum, recorded by the rank that wrote it and gathered on rank 0; COMPLETE records the
manifest's own size and checksum. ``--resume auto`` verifies the newest complete tag against it
and falls back to the newest intact one; a damaged explicit tag is refused (exit 2). DeepSpeed's
files are read by ``torch.load(weights_only=True)`` with an allow-list of the few DeepSpeed types
they hold; our own state (``mometas_state.pt``) holds plain values only. See docs/checkpoints.md
and docs/security.md.

The package, by job: ``layout`` (names, markers, checksums, finding complete tags), ``saving`` (save, publish,
prune), ``verify`` (manifests, verify_tag, choosing the --resume tag), ``loading`` (safe_load, load) and
``export`` (full fp32 weights for the HF export) and ``universal`` (DeepSpeed's universal checkpoint, for a
resume on another number of ranks under ZeRO 1/2). Public names are re-exported here; code outside the package
imports from ``mometas_ds.checkpoint``. A test that monkeypatches a name must patch it in the submodule that
reads it (e.g. ``mometas_ds.checkpoint.verify.FULL_VERIFY_MAX_BYTES``), not here.
"""
from mometas_ds.checkpoint.export import consolidated_state_dict
from mometas_ds.checkpoint.layout import (
    CLIENT_STATE_FILE, COMPLETE_MARKER, FULL_VERIFY_MAX_BYTES, HASH, LATEST_FILE, MANIFEST_FILE, RUN_IDENTITY_FILE,
    VERIFY_LEVELS, CheckpointError, ResumeRefused, complete_tags, file_digest, find_resume_checkpoint, is_complete,
    latest_complete_tag, logger, read_pointer, read_run_identity, step_of, tag_for, text_record,
)
from mometas_ds.checkpoint.loading import load, read_client_state, safe_load, weights_only_loads
from mometas_ds.checkpoint.saving import file_records, prune, publish, save
from mometas_ds.checkpoint.universal import (
    UNIVERSAL_SUFFIX, convert_to_universal, needs_universal, universal_intact, universal_tag, zero_partitions,
)
from mometas_ds.checkpoint.verify import (
    Verdict, describe, newest_intact, read_manifest, resume_checkpoint, run_identity_of, verify_tag,
)

__all__ = [
    # layout
    "CLIENT_STATE_FILE", "COMPLETE_MARKER", "FULL_VERIFY_MAX_BYTES", "HASH", "LATEST_FILE", "MANIFEST_FILE",
    "RUN_IDENTITY_FILE", "VERIFY_LEVELS", "CheckpointError", "ResumeRefused", "complete_tags", "file_digest",
    "find_resume_checkpoint", "is_complete", "latest_complete_tag", "logger", "read_pointer", "read_run_identity",
    "step_of", "tag_for", "text_record",
    # saving, verify, loading, export, universal
    "file_records", "prune", "publish", "save",
    "Verdict", "describe", "newest_intact", "read_manifest", "resume_checkpoint", "run_identity_of", "verify_tag",
    "load", "read_client_state", "safe_load", "weights_only_loads",
    "UNIVERSAL_SUFFIX", "convert_to_universal", "needs_universal", "universal_intact", "universal_tag",
    "zero_partitions",
    "consolidated_state_dict",
]
