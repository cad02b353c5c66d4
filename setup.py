from setuptools import find_packages, setup

setup(
    name="fairseq-lrdrop",
    version="0.2.0",
    description="Layer-wise Regularized Dropout (LR-Drop) and R-Drop as a fairseq user-dir plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["fairseq_lrdrop", "fairseq_lrdrop.*"]),
    # fairseq itself is not listed: on Python 3.11 it comes from fairseq-fixed, which must be
    # installed with --no-build-isolation --no-deps (see README), and a bare torch requirement
    # would pull a CUDA build over an existing CPU one.
    install_requires=[
        "torch>=2.6",
        "hydra-core>=1.3,<1.4",
        "omegaconf>=2.3,<2.4",
        "sacrebleu>=2.3",
        "sentencepiece>=0.1.99",
    ],
    extras_require={
        "examples": ["sacremoses", "rouge-score", "matplotlib", "tensorboardX", "scikit-learn", "scipy"],
        # fairseq_lrdrop.import_bert (safetensors) and fairseq's --bpe bert tokenizer (transformers)
        "bert": ["safetensors>=0.4", "transformers>=4.41"],
        "test": ["pytest", "pytest-xdist", "hypothesis", "safetensors>=0.4", "transformers>=4.41", "tokenizers"],
    },
)
