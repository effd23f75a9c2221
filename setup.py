from setuptools import find_packages, setup

setup(
    name="mometas_ds",
    version="0.1.0",
    description=("Multi-objective continual pre-training of BERT encoders with the MOMETAS adaptive sampler "
                 "on DeepSpeed"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["mometas_ds", "mometas_ds.*"]) + ["mometas_ds.ds_configs"],
    # The DeepSpeed configs ship inside the package, so the built-in defaults (mometas-bench,
    # the demo) also work from an installed wheel; mometas_ds.config.bundled_ds_config finds them.
    package_dir={"mometas_ds.ds_configs": "ds_configs"},
    package_data={"mometas_ds.ds_configs": ["*.json"]},
    install_requires=[
        "torch>=2.1,<3",
        "deepspeed>=0.14",
        "transformers>=4.40",
        "datasets>=2.18",
        "tokenizers>=0.15",
        "numpy",
        "tqdm",
        "matplotlib>=3.7",  # plot.py reads Legend.legend_handles
        "accelerate>=0.26",  # transformers' Trainer (mometas-finetune)
        "scikit-learn>=1.2",  # downstream metrics
        "scipy>=1.9",  # correlations and the paired test in mometas-compare
        "xxhash",  # checkpoint manifests' checksums
    ],
    extras_require={
        "mpi": ["mpi4py>=3.1"],
        "triton": ["triton>=2.2"],
        # DeepSpeed's monitors: a config with "tensorboard"/"wandb": {"enabled": true} needs these
        # (preflight stops a run that asks for one that is not installed, naming the extra).
        "tensorboard": ["tensorboard"],
        "wandb": ["wandb"],
        "test": ["pytest>=7", "pyarrow", "seqeval", "ruff"],
    },
    entry_points={
        "console_scripts": [
            "mometas-pretrain=mometas_ds.cli.pretrain:main",
            "mometas-bench=mometas_ds.cli.bench:main",
            "mometas-plot=mometas_ds.cli.plot:main",
            "mometas-finetune=mometas_ds.cli.finetune:main",
            "mometas-export=mometas_ds.cli.export:main",
            "mometas-compare=mometas_ds.cli.compare:main",
            "mometas-checkpoint=mometas_ds.cli.checkpoint:main",
            "mometas-study=mometas_ds.cli.study:main",
            "mometas-prepare=mometas_ds.cli.prepare:main",
        ]
    },
)
