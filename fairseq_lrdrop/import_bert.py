"""Import a Hugging Face BERT-family encoder into fairseq's RoBERTa (`lr_drop_roberta`).

    python -m fairseq_lrdrop.import_bert MODEL_DIR OUT_DIR [--arch lr_drop_roberta]
                                         [--num-classes N] [--classification-head-name NAME]

MODEL_DIR is a Hugging Face model directory of `model_type` "bert": config.json,
model.safetensors (or a sharded model.safetensors.index.json; read with the `safetensors`
library, never unpickled), vocab.txt (or the WordPiece vocabulary of tokenizer.json) and
optionally tokenizer_config.json / special_tokens_map.json. OUT_DIR (new or empty) receives

    model.pt             a fairseq checkpoint that `fairseq-train --restore-file` (lr_drop_roberta
                         or stock roberta) and `RobertaModel.from_pretrained(OUT_DIR, bpe="bert",
                         bpe_vocab_file=OUT_DIR/vocab.txt)` load
    dict.txt             the fairseq Dictionary (fairseq-preprocess --srcdict OUT_DIR/dict.txt)
    vocab.txt            the WordPiece vocabulary, for fairseq's `--bpe bert --bpe-vocab-file`
    finetune_flags.txt   the fairseq-train flags that rebuild this architecture (also printed)

The mapping: [CLS], [PAD], [SEP], [UNK] become fairseq's <s>, <pad>, </s>, <unk> (indices
0-3), the other word pieces follow in the original order, and [MASK] is last, where the
tasks add <mask>; embedding rows (and a masked-LM head's output bias) are permuted to that
order. fairseq's learned positions start after the padding index, so BERT's position p is
row p + padding_idx + 1; the token-type-0 embedding is added to every position row (fairseq
has no token types). BERT's pooler becomes the dense layer of fairseq's classification head
when --num-classes is given. LayerNorm eps comes from config.json through lr_drop_roberta's
--layernorm-eps (stock roberta keeps fairseq's fixed 1e-5).
"""
import argparse
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from fairseq_lrdrop.errors import UsageError

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq Dictionary indices 0-3
# special-token role -> BERT's word piece (special_tokens_map.json may rename them); they become
# fairseq's <s>, <pad>, </s>, <unk>, <mask>
DEFAULT_SPECIALS = {"cls_token": "[CLS]", "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]",
                    "mask_token": "[MASK]"}
# config.json hidden_act -> fairseq --activation-fn (gelu: erf form in both; gelu_new: tanh form)
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_accurate", "gelu_pytorch_tanh": "gelu_accurate",
               "relu": "relu", "tanh": "tanh"}
ARCHS = ("lr_drop_roberta", "roberta")
DEFAULT_HEAD_NAME = "sentence_classification_head"


@dataclass
class BertSource:
    """What the importer reads from a Hugging Face model directory."""

    config: dict
    vocab: List[str]  # word pieces by Hugging Face id
    specials: Dict[str, str]  # role (cls_token, ...) -> word piece
    lowercase: bool
    weights: Dict[str, torch.Tensor]  # BertModel names (no "bert." prefix), float32
    notes: List[str] = field(default_factory=list)  # what is not carried over, said once


# ---- reading the Hugging Face directory -----------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON ({error}): re-save the model with save_pretrained") from None


def read_config(model_dir: Path) -> dict:
    """config.json, checked for what fairseq's post-norm RoBERTa encoder can represent."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise UsageError(f"{path} not found: MODEL_DIR must be a Hugging Face model directory (save_pretrained)")
    config = _read_json(path)
    model_type = config.get("model_type")
    if model_type != "bert":
        raise UsageError(f"{path}: model_type {model_type!r} is not supported; only BERT-family encoders "
                         f"(model_type 'bert', e.g. BERT, MiniLM, sentence-transformers' BERT models) import")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "vocab_size")
    missing = [key for key in required if not isinstance(config.get(key), int)]
    if missing:
        raise UsageError(f"{path} lacks integer {', '.join(missing)}: use the config.json saved with the weights")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise UsageError(f"{path}: hidden_size {config['hidden_size']} is not a multiple of "
                         f"num_attention_heads {config['num_attention_heads']}")
    if config.get("hidden_act", "gelu") not in ACTIVATIONS:
        raise UsageError(f"{path}: hidden_act {config.get('hidden_act')!r} has no fairseq equivalent; "
                         f"supported: {', '.join(ACTIVATIONS)}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise UsageError(f"{path}: position_embedding_type {config['position_embedding_type']!r}; fairseq's "
                         f"RoBERTa has absolute learned positions only")
    if config.get("is_decoder") or config.get("add_cross_attention"):
        raise UsageError(f"{path}: a BERT decoder (is_decoder / add_cross_attention) does not import; "
                         f"use an encoder checkpoint")
    return config


def read_vocab(model_dir: Path) -> List[str]:
    """Word pieces in Hugging Face id order: vocab.txt, else tokenizer.json's WordPiece vocab."""
    vocab_txt, tokenizer_json = model_dir / "vocab.txt", model_dir / "tokenizer.json"
    if vocab_txt.is_file():
        with open(vocab_txt, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    if tokenizer_json.is_file():
        model = _read_json(tokenizer_json).get("model", {})
        if model.get("type") != "WordPiece":
            raise UsageError(f"{tokenizer_json}: tokenizer model {model.get('type')!r} is not WordPiece; "
                             f"BERT-family imports need a WordPiece vocabulary (vocab.txt)")
        by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
        if [index for _, index in by_id] != list(range(len(by_id))):
            raise UsageError(f"{tokenizer_json}: the WordPiece ids are not 0..N-1; provide vocab.txt")
        return [piece for piece, _ in by_id]
    raise UsageError(f"neither {vocab_txt} nor {tokenizer_json} found: copy the tokenizer files "
                     f"(tokenizer.save_pretrained(MODEL_DIR)) next to the weights")


def read_specials(model_dir: Path) -> Dict[str, str]:
    """The special word pieces, from special_tokens_map.json where it names them."""
    specials = dict(DEFAULT_SPECIALS)
    path = model_dir / "special_tokens_map.json"
    if path.is_file():
        for role, value in _read_json(path).items():
            if role in specials:
                specials[role] = value["content"] if isinstance(value, dict) else value
    return specials


def read_lowercase(model_dir: Path) -> Tuple[bool, List[str]]:
    """(whether the tokenizer lowercases, notes): tokenizer_config.json's do_lower_case, else
    tokenizer.json's BertNormalizer, else BERT's default (True)."""
    notes = []
    config_path, tokenizer_path = model_dir / "tokenizer_config.json", model_dir / "tokenizer.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    normalizer = (_read_json(tokenizer_path).get("normalizer") or {}) if tokenizer_path.is_file() else {}
    if "do_lower_case" in config:
        lowercase = bool(config["do_lower_case"])
    elif normalizer.get("type") == "BertNormalizer":
        lowercase = bool(normalizer.get("lowercase", True))
    else:
        lowercase = True
        notes.append("no tokenizer_config.json or BertNormalizer found: assumed an uncased (lowercasing) tokenizer")
    strip_accents = config.get("strip_accents", normalizer.get("strip_accents"))
    if strip_accents is not None and bool(strip_accents) != lowercase:
        notes.append(f"strip_accents={strip_accents} with lowercase={lowercase}: fairseq's --bpe bert strips "
                     f"accents exactly when it lowercases, so accented text may split differently")
    return lowercase, notes


def _safetensors_files(model_dir: Path) -> List[Path]:
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        return [model_dir / name for name in sorted(set(_read_json(index)["weight_map"].values()))]
    pickled = [name for name in ("pytorch_model.bin", "tf_model.h5") if (model_dir / name).is_file()]
    hint = (f" ({pickled[0]} is there, but pickled checkpoints are never loaded: convert it with "
            f"model.save_pretrained(dir, safe_serialization=True) where you trust it)") if pickled else ""
    raise UsageError(f"{single} not found{hint}")


def read_weights(model_dir: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of the safetensors file(s) as float32, named as in BertModel (a
    BertFor*-model's "bert." prefix dropped; old TF names gamma/beta read as weight/bias)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = {}
    for path in _safetensors_files(model_dir):
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise UsageError(f"{path} cannot be read ({error}): it is truncated or not a safetensors file") from None
        for name, tensor in tensors.items():
            name = name[len("bert."):] if name.startswith("bert.") else name
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            weights[name] = tensor.float() if tensor.is_floating_point() else tensor
    return weights


def read_source(model_dir: Path) -> BertSource:
    """Everything the import needs from MODEL_DIR, checked before anything is written."""
    if not model_dir.is_dir():
        raise UsageError(f"MODEL_DIR {model_dir} is not a directory: pass a Hugging Face model directory")
    config = read_config(model_dir)
    vocab = read_vocab(model_dir)
    lowercase, notes = read_lowercase(model_dir)
    source = BertSource(config, vocab, read_specials(model_dir), lowercase, read_weights(model_dir), notes)
    check_vocab(source, model_dir)
    return source


# ---- the vocabulary -------------------------------------------------------------------------

def check_vocab(source: BertSource, model_dir: Path) -> None:
    """The vocabulary must fit config.json and fairseq's Dictionary."""
    vocab, size = source.vocab, source.config["vocab_size"]
    if len(vocab) != size:
        raise UsageError(f"{model_dir}: the vocabulary has {len(vocab)} word pieces but config.json's "
                         f"vocab_size is {size}: use the tokenizer saved with these weights")
    bad = [piece for piece in vocab if not piece or any(ch.isspace() for ch in piece)]
    if bad:
        raise UsageError(f"{model_dir}: word piece {bad[0]!r} is empty or holds whitespace, which fairseq's "
                         f"dict.txt cannot hold")
    seen = set()
    for piece in vocab:
        if piece in seen:
            raise UsageError(f"{model_dir}: word piece {piece!r} appears twice in the vocabulary")
        seen.add(piece)
    for role, piece in source.specials.items():
        if piece not in seen:
            raise UsageError(f"{model_dir}: the {role} {piece!r} is not in the vocabulary; "
                             f"name it in special_tokens_map.json")
    clashes = seen.intersection((*FAIRSEQ_SPECIALS, "<mask>")) - set(source.specials.values())
    if clashes:
        raise UsageError(f"{model_dir}: word piece {sorted(clashes)[0]!r} is one of fairseq's special symbols")


def fairseq_order(vocab: List[str], specials: Dict[str, str]) -> List[int]:
    """Hugging Face ids in fairseq Dictionary order: [CLS], [PAD], [SEP], [UNK] (fairseq's
    <s>, <pad>, </s>, <unk>), then the other word pieces in their original order, then [MASK]
    (the <mask> that fairseq's masked_lm and sentence_prediction tasks append)."""
    index = {piece: i for i, piece in enumerate(vocab)}
    head = [index[specials[role]] for role in ("cls_token", "pad_token", "sep_token", "unk_token")]
    mask = index[specials["mask_token"]]
    special_ids = set(head) | {mask}
    if len(special_ids) != 5:
        raise UsageError("two special-token roles name the same word piece: fix special_tokens_map.json")
    return head + [i for i in range(len(vocab)) if i not in special_ids] + [mask]


def dict_text(vocab: List[str], order: List[int]) -> str:
    """dict.txt: the word pieces after fairseq's 4 built-in symbols, before <mask>, one
    "piece count" line each (the count is not used when a dictionary is loaded)."""
    return "".join(f"{vocab[i]} 1\n" for i in order[len(FAIRSEQ_SPECIALS):-1])


# ---- the weights ----------------------------------------------------------------------------

def position_rows(positions: torch.Tensor, token_type_0: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """fairseq's learned position table: a token at BERT position p (0-based among the
    non-pad tokens of a right-padded sentence) reads row p + padding_idx + 1; rows up to the
    padding index are never read by real tokens (zeros). The token-type-0 embedding, which
    BERT adds to every token, is folded into every position row."""
    rows = positions.new_zeros(positions.size(0) + padding_idx + 1, positions.size(1))
    rows[padding_idx + 1:] = positions + token_type_0
    return rows


def _take(weights: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in weights:
        raise UsageError(f"model.safetensors lacks {name}: it is not a BertModel checkpoint of this config.json")
    return weights.pop(name)


def layer_state(weights: Dict[str, torch.Tensor], index: int) -> Dict[str, torch.Tensor]:
    """One BertLayer's tensors under fairseq's TransformerEncoderLayer names (post-norm)."""
    bert = f"encoder.layer.{index}."
    names = {
        "self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
        "self_attn_layer_norm": "attention.output.LayerNorm", "fc1": "intermediate.dense",
        "fc2": "output.dense", "final_layer_norm": "output.LayerNorm",
    }
    return {f"{fairseq}.{kind}": _take(weights, f"{bert}{hf}.{kind}")
            for fairseq, hf in names.items() for kind in ("weight", "bias")}


def encoder_state(source: BertSource, order: List[int], padding_idx: int) -> Dict[str, torch.Tensor]:
    """The encoder's tensors under fairseq RobertaModel names; consumes them from
    source.weights (what remains there is not carried over)."""
    weights, prefix = source.weights, "encoder.sentence_encoder."
    words = _take(weights, "embeddings.word_embeddings.weight")[order]
    token_types = _take(weights, "embeddings.token_type_embeddings.weight")
    if token_types.size(0) > 1:
        source.notes.append(f"only token type 0 of {token_types.size(0)} is carried over (fairseq has no token "
                            f"types): a second segment of a pair gets type 0, as the first")
    state = {
        prefix + "embed_tokens.weight": words,
        prefix + "embed_positions.weight": position_rows(
            _take(weights, "embeddings.position_embeddings.weight"), token_types[0], padding_idx),
        prefix + "layernorm_embedding.weight": _take(weights, "embeddings.LayerNorm.weight"),
        prefix + "layernorm_embedding.bias": _take(weights, "embeddings.LayerNorm.bias"),
    }
    for index in range(source.config["num_hidden_layers"]):
        state.update({f"{prefix}layers.{index}.{name}": tensor
                      for name, tensor in layer_state(weights, index).items()})
    return state


def lm_head_state(source: BertSource, order: List[int], words: torch.Tensor) -> Dict[str, torch.Tensor]:
    """A masked-LM head (BertForMaskedLM / BertForPreTraining's cls.predictions) under
    fairseq's lm_head names; empty when the checkpoint has none (fairseq's initialization
    stays: the LM head is not used in fine-tuning). words: the permuted word embeddings,
    which fairseq ties to the head's output layer."""
    weights, hf = source.weights, "cls.predictions."
    if hf + "transform.dense.weight" not in weights:
        source.notes.append("no masked-LM head in the checkpoint: fairseq's lm_head keeps its initialization "
                            "(unused by sentence-level fine-tuning)")
        return {}
    bias = weights.pop(hf + "bias", None)
    decoder_bias = weights.pop(hf + "decoder.bias", None)
    decoder = weights.pop(hf + "decoder.weight", None)
    if decoder is not None and not torch.equal(decoder[order], words):
        source.notes.append("the masked-LM decoder is not tied to the word embeddings: fairseq ties them, so "
                            "its decoder weights are not carried over")
    bias = bias if bias is not None else decoder_bias
    return {
        "encoder.lm_head.dense.weight": _take(weights, hf + "transform.dense.weight"),
        "encoder.lm_head.dense.bias": _take(weights, hf + "transform.dense.bias"),
        "encoder.lm_head.layer_norm.weight": _take(weights, hf + "transform.LayerNorm.weight"),
        "encoder.lm_head.layer_norm.bias": _take(weights, hf + "transform.LayerNorm.bias"),
        "encoder.lm_head.bias": bias[order] if bias is not None else torch.zeros(len(order)),
    }


def pooler_state(source: BertSource, head_name: str) -> Dict[str, torch.Tensor]:
    """BERT's pooler (dense + tanh on [CLS]) as the dense layer of fairseq's classification
    head `head_name` (dense + --pooler-activation-fn tanh on <s>, then out_proj)."""
    weights = source.weights
    if "pooler.dense.weight" not in weights:
        raise UsageError("--num-classes asks for the pooler, but model.safetensors has no pooler.dense "
                         "(saved with add_pooling_layer=False): drop --num-classes")
    prefix = f"classification_heads.{head_name}.dense."
    return {prefix + "weight": weights.pop("pooler.dense.weight"), prefix + "bias": weights.pop("pooler.dense.bias")}


# ---- the fairseq model and checkpoint --------------------------------------------------------

def model_flags(config: dict, arch: str) -> List[str]:
    """The fairseq-train flags that build this architecture (post-norm, learned positions,
    embedding LayerNorm: the roberta defaults) with the model's dropout rates."""
    flags = [
        "--arch", arch,
        "--encoder-layers", str(config["num_hidden_layers"]),
        "--encoder-embed-dim", str(config["hidden_size"]),
        "--encoder-ffn-embed-dim", str(config["intermediate_size"]),
        "--encoder-attention-heads", str(config["num_attention_heads"]),
        "--max-positions", str(config["max_position_embeddings"]),
        "--activation-fn", ACTIVATIONS[config.get("hidden_act", "gelu")],
        "--pooler-activation-fn", "tanh",
        "--dropout", repr(float(config.get("hidden_dropout_prob", 0.1))),
        "--attention-dropout", repr(float(config.get("attention_probs_dropout_prob", 0.1))),
    ]
    if arch == "lr_drop_roberta":
        flags += ["--layernorm-eps", repr(float(config.get("layer_norm_eps", 1e-12)))]
    return flags


def fairseq_dictionary(text: str):
    """The fairseq Dictionary as fairseq's masked_lm and sentence_prediction tasks load it
    from this dict.txt text (and append <mask>)."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    dictionary.add_from_file(io.StringIO(text))
    dictionary.add_symbol("<mask>")
    return dictionary


def build_fairseq_model(flags: List[str], dictionary, data_dir: Path):
    """(cfg, model) exactly as fairseq builds a masked_lm RoBERTa from these flags."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.masked_lm import MaskedLMTask

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data_dir), "--task", "masked_lm", "--criterion", "masked_lm",
                                                "--tokens-per-sample", flags[flags.index("--max-positions") + 1],
                                                "--bpe", "bert", *flags])
    with warnings.catch_warnings():  # hydra's deprecation notices about fairseq's config store
        warnings.simplefilter("ignore")
        cfg = convert_namespace_to_omegaconf(args)
    task = MaskedLMTask(cfg.task, dictionary)
    return cfg, task.build_model(cfg.model)


def checkpoint(cfg, model, state: Dict[str, torch.Tensor]) -> dict:
    """A fairseq checkpoint of `model` with `state` loaded (strictly: every parameter mapped
    or deliberately kept), as nothing trained yet: no optimizer state, update 0, epoch 1."""
    from omegaconf import OmegaConf

    full = model.state_dict()
    unknown = sorted(set(state) - set(full))
    if unknown:
        raise RuntimeError(f"fairseq has no parameter {unknown[0]}")
    for name, tensor in state.items():
        if full[name].shape != tensor.shape:
            raise UsageError(f"model.safetensors: {name} has shape {tuple(tensor.shape)}, config.json implies "
                             f"{tuple(full[name].shape)}: use the config.json saved with these weights")
    full.update(state)
    if "encoder.sentence_encoder.embed_tokens.weight" in state:  # the LM head's output is tied to it
        full["encoder.lm_head.weight"] = full["encoder.sentence_encoder.embed_tokens.weight"]
    model.load_state_dict(full, strict=True)
    return {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "none",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2}},
    }


def init_classification_head(model, head_name: str, num_classes: int, seed: int) -> None:
    """Register the classification head fairseq's sentence_prediction task will build."""
    torch.manual_seed(seed)
    model.register_classification_head(head_name, num_classes=num_classes)


# ---- output -----------------------------------------------------------------------------------

def check_out_dir(out_dir: Path) -> None:
    """OUT_DIR must be new or empty, in a directory this process may write to."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"OUT_DIR {out_dir} exists and is not an empty directory: choose a new one or remove it")
    if not out_dir.parent.is_dir():
        raise UsageError(f"the parent of OUT_DIR {out_dir} does not exist: create it first")
    if not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in {out_dir.parent}: choose an OUT_DIR in a writable directory")


def write_atomically(out_dir: Path, write) -> None:
    """Run write(tmp_dir) in a temporary directory beside OUT_DIR, then rename it to OUT_DIR:
    a failure leaves no partial OUT_DIR."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp_dir)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked)
        os.rename(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def finetune_flags(out_dir: Path, flags: List[str], head_name: str, num_classes: Optional[int]) -> List[str]:
    """The fairseq-train flags for fine-tuning the import with sentence_prediction."""
    extra = ["--num-classes", str(num_classes)] if num_classes is not None else []
    if head_name != DEFAULT_HEAD_NAME:
        extra += ["--classification-head-name", head_name]
    return ["--restore-file", str(out_dir / "model.pt"), "--reset-optimizer", "--reset-dataloader",
            "--reset-meters", *flags, "--task", "sentence_prediction", "--init-token", "0", *extra]


def bpe_flags(out_dir: Path, lowercase: bool) -> List[str]:
    """fairseq's WordPiece tokenizer flags (--bpe bert) for this vocabulary."""
    return ["--bpe", "bert", "--bpe-vocab-file", str(out_dir / "vocab.txt"), *([] if lowercase else ["--bpe-cased"])]


def left_out_notes(source: BertSource, arch: str, carried_pooler: bool) -> List[str]:
    """Notes on what the import did not carry over (source.weights holds what no mapping took)."""
    notes = list(source.notes)
    if arch == "roberta":
        notes.append(f"stock roberta's LayerNorm eps is fixed at 1e-5 (this model used "
                     f"{source.config.get('layer_norm_eps', 1e-12)}); --arch lr_drop_roberta carries it")
    left = {name for name in source.weights if name != "embeddings.position_ids"}  # a constant buffer
    if not carried_pooler and "pooler.dense.weight" in left:
        notes.append("the pooler is not carried over: pass --num-classes N to make it the dense layer "
                     "of the classification head")
        left -= {"pooler.dense.weight", "pooler.dense.bias"}
    if left:
        notes.append("not carried over: " + ", ".join(sorted(left)))
    return notes


def summary(out_dir: Path, source: BertSource, train: List[str], bpe: List[str], notes: List[str]) -> str:
    """What the import prints: the files, the flags, what is not carried over."""
    config = source.config
    lines = [
        f"imported {config['num_hidden_layers']} layers x {config['hidden_size']} "
        f"({config['num_attention_heads']} heads, FFN {config['intermediate_size']}, "
        f"{len(source.vocab)} word pieces) into {out_dir}/ (model.pt, dict.txt, vocab.txt, finetune_flags.txt)",
        "fine-tune (add your data directory, --criterion lr_drop_sentence_prediction or sentence_prediction, "
        "the optimizer and schedule):",
        "  fairseq-train DATA --user-dir $(python -m fairseq_lrdrop) " + " ".join(train),
        "tokenize raw text into word pieces before fairseq-preprocess --srcdict " + str(out_dir / "dict.txt") + ":",
        "  python -m fairseq_lrdrop.bert_encode " + " ".join(bpe[2:]) + " < text > pieces",
        f"load in Python: import fairseq_lrdrop; RobertaModel.from_pretrained('{out_dir}', bpe='bert', "
        f"bpe_vocab_file='{out_dir / 'vocab.txt'}'" + ("" if source.lowercase else ", bpe_cased=True") + ")",
    ]
    return "\n".join(lines + [f"note: {note}" for note in notes])


def import_bert(model_dir: Path, out_dir: Path, arch: str = "lr_drop_roberta", num_classes: Optional[int] = None,
                head_name: str = DEFAULT_HEAD_NAME, seed: int = 1) -> str:
    """Import MODEL_DIR into OUT_DIR; returns the summary to print. Everything is read,
    mapped and checked before OUT_DIR is created."""
    from fairseq.checkpoint_utils import torch_persistent_save

    out_dir = out_dir.resolve()
    check_out_dir(out_dir)
    source = read_source(model_dir)
    order = fairseq_order(source.vocab, source.specials)
    dictionary_text = dict_text(source.vocab, order)
    dictionary = fairseq_dictionary(dictionary_text)
    flags = model_flags(source.config, arch)
    cfg, model = build_fairseq_model(flags, dictionary, out_dir)
    cfg.bpe.bpe_vocab_file, cfg.bpe.bpe_cased = str(out_dir / "vocab.txt"), not source.lowercase
    state = encoder_state(source, order, dictionary.pad())
    state.update(lm_head_state(source, order, state["encoder.sentence_encoder.embed_tokens.weight"]))
    if num_classes is not None:
        init_classification_head(model, head_name, num_classes, seed)
        state.update(pooler_state(source, head_name))
    saved = checkpoint(cfg, model, state)
    train = finetune_flags(out_dir, flags, head_name, num_classes)
    bpe = bpe_flags(out_dir, source.lowercase)

    def write(tmp_dir: Path) -> None:
        torch_persistent_save(saved, str(tmp_dir / "model.pt"))
        (tmp_dir / "dict.txt").write_text(dictionary_text, encoding="utf-8")
        (tmp_dir / "vocab.txt").write_text("".join(piece + "\n" for piece in source.vocab), encoding="utf-8")
        (tmp_dir / "finetune_flags.txt").write_text(" ".join(train) + "\n", encoding="utf-8")

    write_atomically(out_dir, write)
    return summary(out_dir, source, train, bpe, left_out_notes(source, arch, carried_pooler=num_classes is not None))


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fairseq_lrdrop.import_bert", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="Hugging Face model directory (config.json, model.safetensors, vocab.txt)")
    parser.add_argument("out_dir", type=Path, help="new or empty directory for model.pt, dict.txt, vocab.txt")
    parser.add_argument("--arch", choices=ARCHS, default="lr_drop_roberta",
                        help="architecture stored in model.pt (lr_drop_roberta carries LayerNorm eps)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="carry BERT's pooler into a classification head for this many classes")
    parser.add_argument("--classification-head-name", default=DEFAULT_HEAD_NAME,
                        help="the head's name (fairseq-train --classification-head-name)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the new head's output layer")
    args = parser.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes must be a positive whole number, got {args.num_classes}")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    logging.getLogger("hydra").setLevel(logging.WARNING)
    import fairseq_lrdrop  # noqa: F401  (registers lr_drop_roberta)

    print(import_bert(args.model_dir, args.out_dir, args.arch, args.num_classes, args.classification_head_name,
                      args.seed))


if __name__ == "__main__":
    main(sys.argv[1:])
