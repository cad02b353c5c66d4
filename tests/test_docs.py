"""The documents a user reads: every relative link and every repository path named in
README.md, BENCHMARKS.md, docs/ and bench/results/ exists; every command of README's quick
start parses with fairseq's own parsers and carries the weights README recommends; the quick
starts run as written on tiny data (with the model shrunk and training stopped after two
updates); and each message of README's troubleshooting table is reproduced, with its fix."""
import argparse
import importlib.util
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, EN, HANG_GUARD_S, ONE_THREAD, TINY_MODEL, USER_DIR, write_corpus

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCUMENTS = [README, REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "bench" / "results").glob("*.md"))]
TINY_ENCODER = ["--encoder-layers", "2", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                "--encoder-attention-heads", "4", "--max-positions", "64"]
TINY_DECODER = ["--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
                "--decoder-attention-heads", "4"]
# what the runs below append to every fairseq-train of the quick start: a tiny model, two updates
STOP = ["--max-update", "2", "--update-freq", "1", "--cpu", "--num-workers", "0", "--log-format", "simple", "--seed", "1"]
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:bench|examples|fairseq_lrdrop|tests|docs)/[\w./*-]*)")
FAMILIES = {  # quick-start subsection -> architecture its fairseq-train uses
    "Translation": "lr_drop_transformer",
    "Summarization": "lr_drop_bart_large",
    "Sentence(-pair) classification": "lr_drop_roberta_base",
    "Language model": "lr_drop_transformer_lm",
}


# ---------------------------------------------------------------------------------------------
# reading README


def section(text, title, level=2):
    """The body of the heading `title` (its start is enough) up to the next heading of its level."""
    marks = "#" * level
    match = re.search(rf"^{marks} {re.escape(title)}.*?$(.*?)(?=^{marks} |\Z)", text, re.M | re.S)
    assert match, f"no {marks} {title} in README"
    return match.group(1)


def blocks(text, language="bash"):
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def commands(block):
    """The command lines of a bash block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" #")[0].strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def quick_start():
    return section(README.read_text(), "Quick start")


def troubleshooting():
    return section(README.read_text(), "Troubleshooting")


def family_block(title):
    return "\n".join(blocks(section(quick_start(), title, level=3)))


def fairseq_commands():
    """(tool, argv) of every fairseq command of the quick start, $PLUGIN as the test's user dir."""
    found = []
    for block in blocks(quick_start()):
        for line in commands(block):
            words = shlex.split(line.replace("$PLUGIN", USER_DIR))
            if words[0].startswith("fairseq-"):
                found.append((words[0], words[1:]))
    return found


def parse(tool, argv):
    from fairseq import options

    if tool == "fairseq-preprocess":
        return options.get_preprocessing_parser().parse_args(argv)
    parser = {"fairseq-train": options.get_training_parser, "fairseq-generate": options.get_generation_parser,
              "fairseq-eval-lm": options.get_eval_lm_parser}[tool]()
    return options.parse_args_and_arch(parser, argv)


def recommended_weights():
    """{family: (alpha, beta, gamma)} from README's "Which weights" table."""
    rows = {}
    for line in section(README.read_text(), "Which weights").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.match(r"^[\d.]+$", cells[1]):
            rows[cells[0]] = (float(cells[1]), float(cells[1]), float(cells[2].split()[0]))
    return rows


# ---------------------------------------------------------------------------------------------
# links and paths


def test_every_relative_link_and_named_path_exists():
    checked = 0
    for document in DOCUMENTS:
        text = document.read_text()
        anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                   for h in re.findall(r"^#+ (.*)$", text, re.M)}
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            destination = (document.parent / path).resolve() if path else document
            assert destination.exists(), f"{document.relative_to(REPO)}: link to {target}: no such file"
            if anchor and destination.suffix == ".md":
                heads = destination.read_text() if path else None
                names = anchors if heads is None else {
                    re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                    for h in re.findall(r"^#+ (.*)$", heads, re.M)}
                assert anchor in names, f"{document.relative_to(REPO)}: link to {target}: no such heading"
            checked += 1
        for name in REPO_PATH.findall(text):
            name = name.rstrip(".").split("::")[0]
            assert list(REPO.glob(name)) or (REPO / name).exists(), \
                f"{document.relative_to(REPO)} names {name}, which does not exist"
            checked += 1
    assert checked > 200  # the documents do link and name files: the patterns found them


# ---------------------------------------------------------------------------------------------
# the quick-start commands parse, with the recommended weights


def test_quick_start_commands_parse_with_fairseq_and_use_the_recommended_weights():
    found = fairseq_commands()
    tools = [tool for tool, _ in found]
    assert tools.count("fairseq-train") == 4 and "fairseq-generate" in tools and "fairseq-eval-lm" in tools
    weights = recommended_weights()
    assert set(weights) == {"translation", "summarization", "classification", "language model"}
    family_of = {"lr_drop_transformer": "translation", "lr_drop_bart_large": "summarization",
                 "lr_drop_roberta_base": "classification", "lr_drop_transformer_lm": "language model"}
    trained = set()
    for tool, argv in found:
        args = parse(tool, argv)
        if tool == "fairseq-preprocess":
            assert args.destdir.startswith("data-bin/")
            continue
        assert Path(args.user_dir) == Path(USER_DIR)
        if tool == "fairseq-train":
            family = family_of[args.arch]
            trained.add(family)
            assert (args.hidden_reg_weight, args.attn_reg_weight, args.output_reg_weight) == weights[family]
            assert args.criterion.startswith("lr_drop_")
    assert trained == set(family_of.values())


def test_the_default_weights_readme_states_are_the_criterions_defaults():
    flags = section(README.read_text(), "Flags")
    from fairseq_lrdrop.criterions.lr_drop_label_smoothed_cross_entropy import (
        LRDropLabelSmoothedCrossEntropyConfig as Translation)
    from fairseq_lrdrop.criterions.lr_drop_sentence_prediction import (
        LRDropSentencePredictionConfig as Classification)
    for flag, field in (("hidden-reg-weight", "hidden_reg_weight"), ("attn-reg-weight", "attn_reg_weight"),
                        ("output-reg-weight", "output_reg_weight")):
        row = re.search(rf"^\| `--{flag}` \| \w+ \| ([\d.]+) \(([\d.]+) in `lr_drop_sentence_prediction`\)", flags, re.M)
        assert row, flag
        assert float(row.group(1)) == getattr(Translation, field)
        assert float(row.group(2)) == getattr(Classification, field)


# ---------------------------------------------------------------------------------------------
# the quick starts run


@pytest.fixture(scope="module")
def plugin():
    """README's plugin line, run once by bash as written: it names the plugin's folder."""
    line = blocks(quick_start())[0]
    assert line.startswith("PLUGIN=")
    proc = subprocess.run(["bash", "-c", f"set -euo pipefail\nexport PATH={shlex.quote(str(BIN))}:$PATH\n{line}echo $PLUGIN"],
                          capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, timeout=HANG_GUARD_S)
    folder = Path(proc.stdout.strip())
    assert proc.returncode == 0 and (folder / "__init__.py").exists() and (folder / "criterions").is_dir()
    return str(folder)


def run_quick_start(workdir, title, plugin):
    """The family's block of README, run by bash in workdir as written, with README's $PLUGIN;
    only fairseq-train is wrapped, to append a tiny model and a two-update stop."""
    wrapper = f"""
set -euo pipefail
export PATH={shlex.quote(str(BIN))}:$PATH
fairseq-train() {{
  local tiny
  case "$*" in
    *transformer_lm*) tiny="{' '.join(TINY_DECODER)}" ;;
    *roberta*) tiny="{' '.join(TINY_ENCODER)}" ;;
    *) tiny="{' '.join(TINY_MODEL)}" ;;
  esac
  command fairseq-train "$@" $tiny {' '.join(STOP)}
}}
"""
    script = wrapper + f"PLUGIN={shlex.quote(plugin)}\n" + family_block(title)
    python_blocks = blocks(section(quick_start(), title, level=3), "python")
    proc = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, **ONE_THREAD}, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, f"{title} quick start failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    outputs = [proc.stdout + proc.stderr]
    for code in python_blocks:
        ran = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True,
                             env={**os.environ, **ONE_THREAD}, timeout=HANG_GUARD_S)
        assert ran.returncode == 0, f"{title} python block failed:\n{ran.stderr[-3000:]}"
        outputs.append(ran.stdout)
    return outputs


def train_in_process(argv):
    """fairseq-train, in this process (the stand-ins for published checkpoints)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import train

    args = options.parse_args_and_arch(options.get_training_parser(), [*map(str, argv), "--user-dir", USER_DIR])
    train.main(convert_namespace_to_omegaconf(args))


def preprocess_in_process(*argv):
    from fairseq import options
    from fairseq_cli import preprocess

    preprocess.main(options.get_preprocessing_parser().parse_args([*map(str, argv), "--workers", "1"]))


def hypotheses(output):
    return len(re.findall(r"^H-\d+\t", output, re.M))


def test_translation_quick_start_runs_and_default_batch_multiple_drops_lines(tmp_path, plugin):
    (tmp_path / "raw").mkdir()
    write_corpus(tmp_path / "raw", sizes=(("train", 200), ("valid", 8), ("test", 12)))
    (output,) = run_quick_start(tmp_path, "Translation", plugin)
    assert "hidden_reg" in output and "attn_reg" in output and "output_reg" in output
    assert re.search(r"valid on 'valid' subset .*\| bleu [\d.]+", output)
    # one hypothesis per test line, and the sacreBLEU line
    assert hypotheses(output) == 12 and "BLEU = " in output
    # troubleshooting: the same generation with fairseq's default --required-batch-size-multiple 8
    from fairseq import options
    from fairseq_cli import generate

    argv = next(argv for tool, argv in fairseq_commands() if tool == "fairseq-generate" and "data-bin/en-de" in argv)
    i = argv.index("--required-batch-size-multiple")
    default = argv[:i] + argv[i + 2:]
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        args = options.parse_args_and_arch(options.get_generation_parser(), [*default, "--results-path", "dropped", "--cpu"])
        generate.main(args)
    finally:
        os.chdir(cwd)
    dropped = (tmp_path / "dropped" / "generate-test.txt").read_text()
    assert hypotheses(dropped) == 8  # of 12 lines, a multiple of 8 is kept, with no message
    row = next(line for line in troubleshooting().splitlines() if "fewer hypotheses" in line)
    assert "`--required-batch-size-multiple 1`" in row


def test_summarization_quick_start_runs_from_a_stock_bart_checkpoint(tmp_path, plugin):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_corpus(raw, sizes=(("train", 200), ("valid", 8), ("test", 8)))
    for split in ("train", "valid", "test"):
        (raw / f"{split}.en").rename(raw / f"{split}.source")
        (raw / f"{split}.de").rename(raw / f"{split}.target")
    preprocess_in_process("--source-lang", "source", "--target-lang", "target", "--trainpref", raw / "train",
                          "--validpref", raw / "valid", "--testpref", raw / "test", "--destdir",
                          tmp_path / "data-bin" / "cnndm", "--joined-dictionary")
    # the stand-in for bart.large/model.pt: a stock bart_large, tiny, trained for one update
    train_in_process([tmp_path / "data-bin" / "cnndm", "--task", "translation", "--arch", "bart_large", *TINY_MODEL,
                      "--share-all-embeddings", "--criterion", "label_smoothed_cross_entropy", "--optimizer", "adam",
                      "--lr", "1e-3", "--max-tokens", "1024", "--max-update", "1", "--cpu",
                      "--required-batch-size-multiple", "1", "--save-dir", tmp_path / "stock", "--no-epoch-checkpoints"])
    (tmp_path / "bart.large").mkdir()
    shutil.copy(tmp_path / "stock" / "checkpoint_last.pt", tmp_path / "bart.large" / "model.pt")
    (output,) = run_quick_start(tmp_path, "Summarization", plugin)
    assert re.search(r"Loaded checkpoint bart.large/model.pt \(epoch \d+ @ \d+ updates\)", output)
    assert "hidden_reg" in output and "output_reg" in output
    assert hypotheses(output) == 8


def write_classification(tmp_path):
    rng = random.Random(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, count in (("train", 160), ("valid", 20)):
        sentences = [[rng.choice(EN) for _ in range(rng.randint(2, 10))] for _ in range(count)]
        (raw / f"{split}.input0").write_text("".join(" ".join(s) + "\n" for s in sentences))
        (raw / f"{split}.label").write_text("".join(("pos" if "cat" in s else "neg") + "\n" for s in sentences))
    for kind in ("input0", "label"):
        preprocess_in_process("--only-source", "--trainpref", raw / f"train.{kind}", "--validpref",
                              raw / f"valid.{kind}", "--destdir", tmp_path / "RTE-bin" / kind)


def test_classification_quick_start_runs_from_a_stock_roberta_and_the_hub_needs_a_bpe(tmp_path, plugin):
    write_classification(tmp_path)
    masked_lm = [tmp_path / "RTE-bin" / "input0", "--task", "masked_lm", "--arch", "roberta", *TINY_ENCODER,
                 "--criterion", "masked_lm", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2048",
                 "--tokens-per-sample", "64", "--sample-break-mode", "none", "--max-update", "1", "--cpu",
                 "--save-dir", tmp_path / "stock", "--no-epoch-checkpoints"]
    # troubleshooting: masked_lm on small data with fairseq's default multiple of 8
    quoted = "The dataset is empty. This could indicate that all elements in the dataset have been skipped."
    assert quoted in troubleshooting()
    with pytest.raises(Exception, match=re.escape(quoted)):
        train_in_process(masked_lm)
    # the stand-in for roberta.base/model.pt: the same stock roberta, one masked_lm update
    train_in_process([*masked_lm, "--required-batch-size-multiple", "1"])
    (tmp_path / "roberta.base").mkdir()
    shutil.copy(tmp_path / "stock" / "checkpoint_last.pt", tmp_path / "roberta.base" / "model.pt")
    output, printed = run_quick_start(tmp_path, "Sentence(-pair) classification", plugin)
    assert re.search(r"Loaded checkpoint roberta.base/model.pt \(epoch \d+ @ \d+ updates\)", output) and "hidden_reg" in output
    assert printed.strip() in {"0", "1"}  # the hub example's prediction, a class index
    # troubleshooting: without a bpe argument the hub builds GPT-2's BPE, which downloads its files
    import fairseq_lrdrop  # noqa: F401
    from fairseq import file_utils
    from fairseq.models.roberta import RobertaModel

    load = dict(model_name_or_path=str(tmp_path / "checkpoints" / "rte"), checkpoint_file="checkpoint_best.pt",
                data_name_or_path=str(tmp_path / "RTE-bin"))
    assert "`ModuleNotFoundError: No module named 'requests'` from `RobertaModel.from_pretrained`" in troubleshooting()
    if importlib.util.find_spec("requests") is None:
        with pytest.raises(ModuleNotFoundError, match="No module named 'requests'"):
            RobertaModel.from_pretrained(**load)
    else:  # requests installed: the hub would go online for GPT-2's encoder.json
        wanted = []

        def offline(url, cache_dir=None):
            wanted.append(url)
            raise OSError("offline")
        original, file_utils.get_from_cache = file_utils.get_from_cache, offline
        try:
            with pytest.raises(OSError):
                RobertaModel.from_pretrained(**load)
        finally:
            file_utils.get_from_cache = original
        assert wanted and wanted[0].endswith("encoder.json")


def test_language_model_quick_start_runs_and_its_troubleshooting_messages(tmp_path, plugin):
    rng = random.Random(0)
    (tmp_path / "raw").mkdir()
    for split, count in (("train", 200), ("valid", 24), ("test", 24)):
        (tmp_path / "raw" / f"lm.{split}").write_text("".join(
            " ".join(rng.choice(EN) for _ in range(rng.randint(2, 10))) + "\n" for _ in range(count)))
    (output,) = run_quick_start(tmp_path, "Language model", plugin)
    assert "hidden_reg" in output and "attn_reg" in output
    perplexity = float(re.search(r"Perplexity: ([\d.]+)", output).group(1))
    assert 1 < perplexity < 100  # 17 words and the specials
    # troubleshooting: fairseq-eval-lm without --user-dir
    eval_lm = next(argv for tool, argv in fairseq_commands() if tool == "fairseq-eval-lm")
    i = eval_lm.index("--user-dir")
    proc = subprocess.run([str(BIN / "fairseq-eval-lm"), *eval_lm[:i], *eval_lm[i + 2:], "--cpu"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, timeout=HANG_GUARD_S)
    assert proc.returncode != 0 and "KeyError: \"'_name'\"" in proc.stderr
    assert "`KeyError: \"'_name'\"` from `fairseq-eval-lm`" in troubleshooting()
    # troubleshooting: the same training with fairseq's default --required-batch-size-multiple 8
    train = next(argv for tool, argv in fairseq_commands() if tool == "fairseq-train" and "lr_drop_transformer_lm" in argv)
    i = train.index("--required-batch-size-multiple")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        with pytest.raises(Exception, match="The dataset is empty"):
            train_in_process([*train[:i], *train[i + 2:], *TINY_DECODER, *STOP, "--save-dir", "empty"])
    finally:
        os.chdir(cwd)


def test_another_copy_of_the_plugin_is_not_globally_unique_and_the_fix(tmp_path):
    import fairseq_lrdrop
    from fairseq import utils

    installed = os.path.dirname(fairseq_lrdrop.__file__)
    other = tmp_path / "other-checkout" / "fairseq_lrdrop"
    shutil.copytree(installed, other, ignore=shutil.ignore_patterns("__pycache__"))
    quoted = "because the corresponding module name (fairseq_lrdrop) is not globally unique"
    assert quoted in troubleshooting()
    with pytest.raises(ImportError, match=re.escape(quoted)):
        utils.import_user_module(argparse.Namespace(user_dir=str(other)))
    # README's fix: the folder of the copy that is loaded (what `python -m fairseq_lrdrop` prints)
    utils.import_user_module(argparse.Namespace(user_dir=installed))
    assert list(sys.modules["fairseq_lrdrop"].__path__) == [installed]
