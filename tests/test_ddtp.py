"""Unit tests of examples/ddtp/ddtp.py (DDTP parsing, pairing, splitting, writing) on small
Translation / Packages samples written by the tests themselves."""
import gzip
import importlib.util
import json
import lzma
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DDTP_PY = os.path.join(ROOT, "examples", "ddtp", "ddtp.py")

_spec = importlib.util.spec_from_file_location("ddtp_example", DDTP_PY)
ddtp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddtp)


TRANSLATION_EN = """\
Package: foo
Description-md5: 00000000000000000000000000000001
Description-en: fast   frobnicator
 Foo frobnicates widgets
 very quickly.
 .
 This package contains the documentation.

Package: foo-data
Description-md5: 00000000000000000000000000000002
Description-en: fast frobnicator (data files)
 Data files for foo.
 .
 This package contains the documentation.

Package: libfoo1
Description-md5: 00000000000000000000000000000003
Description-en: fast frobnicator (shared library)
 The shared library of foo.

Package: bar
Description-md5: 00000000000000000000000000000004
Description-en: bar tool
 First paragraph of bar.
 .
 Second paragraph of bar.

Package: qux
Description-md5: 00000000000000000000000000000005
Description-en: qux has no German translation
 Nothing to pair here.

Package: longone
Description-md5: 00000000000000000000000000000006
Description-en: a tool with a very long paragraph
 {long}
"""

TRANSLATION_DE = """\
Package: foo
Description-md5: 00000000000000000000000000000001
Description-de: Schneller Frobnikator
 Foo frobniziert Widgets
 sehr schnell.
 .
 Dieses Paket enthält die Dokumentation.

Package: foo-data
Description-md5: 00000000000000000000000000000002
Description-de: Schneller Frobnikator (Datendateien)
 Datendateien für foo.
 .
 Dieses Paket enthält die Dokumentation.

Package: libfoo1
Description-md5: 00000000000000000000000000000003
Description-de: Schneller Frobnikator (Laufzeitbibliothek)
 Die Laufzeitbibliothek von foo.

Package: bar
Description-md5: 00000000000000000000000000000004
Description-de: Bar-Werkzeug
 Beide Absätze von bar in einem.

Package: longone
Description-md5: 00000000000000000000000000000006
Description-de: ein Werkzeug mit einem sehr langen Absatz
 {long_de}
"""

PACKAGES = """\
Package: foo
Version: 1.2-3
Architecture: amd64
Description: fast frobnicator
Description-md5: 00000000000000000000000000000001

Package: foo-data
Source: foo
Version: 1.2-3
Description: fast frobnicator (data files)
Description-md5: 00000000000000000000000000000002

Package: libfoo1
Source: foo (1.2-3)
Version: 1.2-3+b1
Description: fast frobnicator (shared library)
Description-md5: 00000000000000000000000000000003

Package: bar
Source: barsrc
Description-md5: 00000000000000000000000000000004

Package: longone
Description-md5: 00000000000000000000000000000006
"""


def _write(path, text, compress=None):
    data = text.encode("utf-8")
    if compress == "gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    elif compress == "xz":
        with lzma.open(path, "wb") as fh:
            fh.write(data)
    else:
        with open(path, "wb") as fh:
            fh.write(data)
    return str(path)


@pytest.fixture
def sample(tmp_path):
    long_en = " ".join(["word"] * 150)
    long_de = " ".join(["Wort"] * 150)
    d = tmp_path / "idx"
    d.mkdir()
    en = _write(d / "x_main_i18n_Translation-en", TRANSLATION_EN.format(long=long_en))
    de = _write(d / "x_main_i18n_Translation-de.gz", TRANSLATION_DE.format(long_de=long_de), "gz")
    pk = _write(d / "x_main_binary-amd64_Packages.xz", PACKAGES, "xz")
    return {"dir": str(d), "en": en, "de": de, "pk": pk}


# ------------------------------------------------------------------ parsing
def test_split_description_paragraphs_and_whitespace():
    value = "fast   frobnicator \n Foo frobnicates widgets\n very  quickly.\n .\n  * item one\n .\n"
    syn, pars = ddtp.split_description(value)
    assert syn == "fast frobnicator"
    assert pars == ["Foo frobnicates widgets very quickly.", "* item one"]


def test_iter_paragraphs_multiline_and_blank_lines():
    text = "A: 1\nB: first\n second\n .\n third\n\n\nA: 2\n"
    paras = list(ddtp.iter_paragraphs(text.splitlines(True)))
    assert paras == [{"A": "1", "B": "first\n second\n .\n third"}, {"A": "2"}]


def test_compressed_and_plain_read_the_same(tmp_path):
    files = [_write(tmp_path / "T-en", TRANSLATION_EN.format(long="x")),
             _write(tmp_path / "T-en.gz", TRANSLATION_EN.format(long="x"), "gz"),
             _write(tmp_path / "T-en.xz", TRANSLATION_EN.format(long="x"), "xz")]
    parsed = [ddtp.read_translation([f], "en") for f in files]
    assert parsed[0] == parsed[1] == parsed[2]
    assert len(parsed[0]) == 6
    pkgs, syn, pars = parsed[0]["00000000000000000000000000000001"]
    assert (pkgs, syn) == (["foo"], "fast frobnicator")
    assert pars == ["Foo frobnicates widgets very quickly.", "This package contains the documentation."]


@pytest.mark.skipif(not (shutil.which("lz4") or os.access(ddtp.APT_HELPER, os.X_OK)),
                    reason="neither lz4 nor apt-helper installed")
def test_lz4_as_apt_stores_it(tmp_path):
    plain = _write(tmp_path / "Translation-en", TRANSLATION_EN.format(long="x"))
    if shutil.which("lz4"):
        subprocess.check_call(["lz4", "-q", plain, plain + ".lz4"])
    else:
        pytest.skip("lz4 binary needed to make the sample")
    assert ddtp.read_translation([plain + ".lz4"], "en") == ddtp.read_translation([plain], "en")


def test_packages_source_field():
    assert ddtp.source_name({"Package": "libfoo1", "Source": "foo (1.2-3)"}) == "foo"
    assert ddtp.source_name({"Package": "foo-data", "Source": "foo"}) == "foo"
    assert ddtp.source_name({"Package": "bar"}) == "bar"


def test_guess_source_heuristic():
    for name in ("foo", "foo-data", "foo-doc", "libfoo1", "libfoo-dev", "python3-foo",
                 "foo-l10n-de", "libfoo2.4"):
        assert ddtp.guess_source(name) == "foo", name
    assert ddtp.guess_source("bar") == "bar"


# ------------------------------------------------------------------ pairing
def test_translation_pairs_values(sample):
    en = ddtp.read_translation([sample["en"]], "en")
    de = ddtp.read_translation([sample["de"]], "de")
    pairs, stats = ddtp.translation_pairs(en, de, max_words=100)
    got = [(s, t) for _, _, s, t in pairs]
    assert got == [
        ("fast frobnicator", "Schneller Frobnikator"),
        ("Foo frobnicates widgets very quickly.", "Foo frobniziert Widgets sehr schnell."),
        ("This package contains the documentation.", "Dieses Paket enthält die Dokumentation."),
        ("fast frobnicator (data files)", "Schneller Frobnikator (Datendateien)"),
        ("Data files for foo.", "Datendateien für foo."),
        ("This package contains the documentation.", "Dieses Paket enthält die Dokumentation."),
        ("fast frobnicator (shared library)", "Schneller Frobnikator (Laufzeitbibliothek)"),
        ("The shared library of foo.", "Die Laufzeitbibliothek von foo."),
        # bar: 2 English paragraphs vs 1 German one -> synopsis only
        ("bar tool", "Bar-Werkzeug"),
        # longone: the 150-word paragraph is dropped, the synopsis kept
        ("a tool with a very long paragraph", "ein Werkzeug mit einem sehr langen Absatz"),
    ]
    assert stats["paragraph_count_mismatch"] == 1
    assert stats["dropped_length"] == 1
    assert stats["descriptions_paired"] == 5  # qux has no German entry


def test_summarization_pairs_values(sample):
    en = ddtp.read_translation([sample["en"]], "en")
    pairs, _ = ddtp.summarization_pairs(en, min_source_words=3, max_words=400)
    got = {t: s for _, _, s, t in pairs}
    assert got["bar tool"] == "First paragraph of bar. Second paragraph of bar."
    assert got["fast frobnicator"] == ("Foo frobnicates widgets very quickly. "
                                       "This package contains the documentation.")
    assert "fast frobnicator (shared library)" in got
    # "The shared library of foo." has 5 words: dropped with the default minimum of 10
    pairs10, _ = ddtp.summarization_pairs(en)
    assert "fast frobnicator (shared library)" not in {t for _, _, _, t in pairs10}


# ------------------------------------------------------------------ splitting
def test_siblings_of_one_source_share_a_split(sample, tmp_path):
    splits, stats = ddtp.build_translation([sample["en"]], [sample["de"]], [sample["pk"]],
                                           str(tmp_path / "out"), valid_size=0, test_size=0)
    assert stats["sources_guessed"] == 0
    # with Packages, foo / foo-data / libfoo1 are one source 'foo'
    smap = ddtp.SourceMap(*ddtp.read_packages([sample["pk"]]))
    assert smap.lookup("00000000000000000000000000000003", ["libfoo1"]) == "foo"
    assert smap.lookup("00000000000000000000000000000002", ["foo-data"]) == "foo"
    assert smap.lookup("00000000000000000000000000000004", ["bar"]) == "barsrc"
    # the documentation sentence of foo and foo-data is kept once
    assert [p for p in splits["train"] if p[0].startswith("This package")] == [
        ("This package contains the documentation.", "Dieses Paket enthält die Dokumentation.")]
    assert stats["duplicates"] == 1 and stats["train"] == 9


def test_split_by_source_many_packages():
    pairs, sources = [], []
    for i in range(300):
        for j in range(1 + i % 4):       # 1..4 sibling binaries per source
            pairs.append(("src %d bin %d" % (i, j), "tgt %d bin %d" % (i, j)))
            sources.append("source%d" % i)
    splits, stats = ddtp.split_pairs(pairs, sources, valid_size=0.1, test_size=50)
    where = {}
    for split in ddtp.SPLITS:
        for s, _ in splits[split]:
            src = "source" + s.split()[1]
            where.setdefault(src, set()).add(split)
    assert all(len(v) == 1 for v in where.values())          # no source straddles splits
    total = len(pairs)
    assert 50 <= stats["test"] <= 53                          # count, whole sources
    assert 0.1 * total <= stats["valid"] <= 0.1 * total + 3  # fraction
    assert stats["train"] == total - stats["test"] - stats["valid"]
    # deterministic, and another salt gives another split
    again, _ = ddtp.split_pairs(pairs, sources, 0.1, 50)
    assert again == splits
    other, _ = ddtp.split_pairs(pairs, sources, 0.1, 50, salt="other")
    assert other["test"] != splits["test"]


def test_eval_sets_hold_no_source_seen_in_train():
    pairs = [("shared sentence", "geteilter Satz")] * 40 + \
            [("own %d" % i, "eigen %d" % i) for i in range(40)]
    sources = ["s%d" % (i % 40) for i in range(80)]
    splits, stats = ddtp.split_pairs(pairs, sources, valid_size=0.25, test_size=0.25)
    train_src = {s for s, _ in splits["train"]}
    assert "shared sentence" in train_src
    for split in ("valid", "test"):
        assert all(s not in train_src for s, _ in splits[split])
    assert stats["valid_dropped_seen_source"] + stats["test_dropped_seen_source"] >= 1


# ------------------------------------------------------------------ writing / CLI
def test_cli_writes_all_files(sample, tmp_path):
    out = tmp_path / "t"
    rc = ddtp.main(["translation", "--index-dir", sample["dir"], "--out", str(out),
                    "--valid-size", "0", "--test-size", "0"])
    assert rc == 0
    assert sorted(os.listdir(out)) == sorted(
        ["%s.%s" % (s, l) for s in ddtp.SPLITS for l in ("en", "de")] + ["stats.json"])
    en = (out / "train.en").read_text(encoding="utf-8").splitlines()
    de = (out / "train.de").read_text(encoding="utf-8").splitlines()
    assert len(en) == len(de) == 9
    assert en[0] == "fast frobnicator" and de[0] == "Schneller Frobnikator"
    assert json.loads((out / "stats.json").read_text())["train"] == 9
    out2 = tmp_path / "s"
    assert ddtp.main(["summarization", "--index-dir", sample["dir"], "--out", str(out2),
                      "--valid-size", "0", "--test-size", "0"]) == 0
    assert (out2 / "train.src").exists() and (out2 / "train.tgt").exists()


def test_write_atomic_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "train.en"
    ddtp.write_atomic(str(target), "old\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ddtp.os, "replace", boom)
    with pytest.raises(OSError):
        ddtp.write_atomic(str(target), "new half-written\n")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["train.en"]      # no temporary file left behind


def test_stats_written_last(sample, tmp_path, monkeypatch):
    """A run that dies while writing the splits leaves no stats.json (the completion mark)."""
    out = tmp_path / "t"
    ddtp.main(["translation", "--index-dir", sample["dir"], "--out", str(out),
               "--valid-size", "0", "--test-size", "0"])
    assert (out / "stats.json").exists()
    real = ddtp.write_atomic

    def fail_on_test(path, text):
        if path.endswith("test.de"):
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(ddtp, "write_atomic", fail_on_test)
    with pytest.raises(KeyboardInterrupt):
        ddtp.main(["translation", "--index-dir", sample["dir"], "--out", str(out),
                   "--valid-size", "0", "--test-size", "0"])
    assert not (out / "stats.json").exists()


def test_locate_prefers_plain_and_ignores_partial(tmp_path):
    for name in ("a_main_i18n_Translation-en", "a_main_i18n_Translation-en.lz4",
                 "a_main_i18n_Translation-de.xz", "a_main_binary-amd64_Packages.gz",
                 "a_main_binary-amd64_Packages.diff_Index"):
        (tmp_path / name).write_text("x")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "b_Translation-en").write_text("x")
    d = str(tmp_path)
    assert ddtp.locate(d, "Translation-en") == [os.path.join(d, "a_main_i18n_Translation-en")]
    assert ddtp.locate(d, "Translation-de") == [os.path.join(d, "a_main_i18n_Translation-de.xz")]
    assert ddtp.locate(d, "Packages") == [os.path.join(d, "a_main_binary-amd64_Packages.gz")]


def test_cli_errors(tmp_path):
    proc = subprocess.run([sys.executable, DDTP_PY, "translation", "--index-dir",
                           str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, DDTP_PY, "translation", "--index-dir",
                           str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Translation-en" in proc.stderr


# ------------------------------------------------------------------ apt sources
def test_pick_apt_source_deb822_and_oneline(tmp_path):
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: trixie trixie-updates\nComponents: main contrib\n"
        "Signed-By: /usr/share/keyrings/k.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: trixie-security\nComponents: main\n")
    (parts / "other.list.disabled").write_text("deb http://x.example/ y main\n")
    entries = ddtp.system_apt_entries(str(tmp_path / "none.list"), str(parts))
    assert ddtp.pick_apt_source(entries) == ("http://mirror.example/debian", "trixie",
                                             "/usr/share/keyrings/k.gpg")
    one = tmp_path / "sources.list"
    one.write_text("# comment\ndeb-src http://src.example/debian bookworm main\n"
                   "deb http://sec.example/debian-security bookworm-security main\n"
                   "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n")
    entries = ddtp.system_apt_entries(str(one), str(tmp_path / "no-parts"))
    assert ddtp.pick_apt_source(entries) == ("http://one.example/debian", "bookworm", "/k.gpg")
    stanza = ddtp.apt_source_stanza("http://one.example/debian", "bookworm", arch="amd64")
    assert "Languages: en de\n" in stanza and "Targets: Packages Translations\n" in stanza
    assert ddtp.pick_apt_source([]) is None


# ------------------------------------------------------------------ classification tasks
def _with_sections(sample, tmp_path):
    sections = {"foo": "utils", "foo-data": "contrib/utils", "libfoo1": "libs", "bar": "net", "longone": "net"}
    text = "".join(
        para + ("\nSection: %s" % sections[para.split("\n")[0].split(": ")[1]]) + "\n\n"
        for para in PACKAGES.strip().split("\n\n")
    )
    return _write(tmp_path / "Packages", text)


def test_classification_labels_are_sections_split_by_source(sample, tmp_path):
    pk = _with_sections(sample, tmp_path)
    en = ddtp.read_translation([sample["en"]], "en")
    examples, stats = ddtp.classification_examples(en, ddtp.read_sections([pk]), max_words=100)
    labels = {pkgs[0]: label for _, pkgs, _, label in examples}
    # contrib/utils -> utils; qux has no Packages entry; longone's 151 words exceed 100
    assert labels == {"foo": "utils", "foo-data": "utils", "libfoo1": "libs", "bar": "net"}
    assert stats["no_section"] == 1 and stats["dropped_length"] == 1
    text = {pkgs[0]: t for _, pkgs, t, _ in examples}
    assert text["bar"] == "bar tool First paragraph of bar. Second paragraph of bar."
    top, top_stats = ddtp.classification_examples(en, ddtp.read_sections([pk]), top_classes=1)
    assert {e[3] for e in top} == {"utils"} and top_stats["dropped_rare_section"] == 2

    out = tmp_path / "cls"
    assert ddtp.main(["classification", "--en", sample["en"], "--packages", pk, "--out", str(out),
                      "--valid-size", "1", "--test-size", "1"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    rows = {split: list(zip((out / f"{split}.input0").read_text().splitlines(),
                            (out / f"{split}.label").read_text().splitlines())) for split in ("train", "valid", "test")}
    assert sum(map(len, rows.values())) == 4
    assert stats["labels"] == {split: dict(sorted(__import__("collections").Counter(l for _, l in r).items()))
                               for split, r in rows.items()}
    # foo, foo-data and libfoo1 are one source package: one split holds all three
    foo_split = [split for split, r in rows.items() if any(t.startswith("fast frobnicator") for t, _ in r)]
    assert len(foo_split) == 1 and len(rows[foo_split[0]]) >= 3
    with pytest.raises(SystemExit, match="classification needs a Packages index"):
        ddtp.main(["classification", "--en", sample["en"], "--out", str(tmp_path / "none")])


def test_architecture_labels_are_all_or_any_from_the_synopsis_alone(sample, tmp_path):
    # foo is amd64, foo-data all, libfoo1 i386 (any architecture but "all" is "any"), bar has
    # no Architecture field (no label), qux no Packages entry
    arches = {"foo": "amd64", "foo-data": "all", "libfoo1": "i386", "longone": "all"}
    text = "".join(
        "\n".join(line for line in para.split("\n") if not line.startswith("Architecture:"))
        + ("\nArchitecture: %s" % arches[name] if name in arches else "") + "\n\n"
        for para in PACKAGES.strip().split("\n\n") for name in [para.split("\n")[0].split(": ")[1]])
    pk = _write(tmp_path / "Packages", text)
    assert ddtp.read_architectures([pk])[1] == {"foo": "any", "foo-data": "all", "libfoo1": "any", "longone": "all"}
    en = ddtp.read_translation([sample["en"]], "en")
    examples, stats = ddtp.classification_examples(en, ddtp.read_architectures([pk]), max_words=100,
                                                   synopsis_only=True)
    # the synopsis alone: longone's 151-word description does not count against max_words;
    # "bar tool" has two words (kept) but bar has no Architecture; qux no Packages entry
    assert {pkgs[0]: (t, label) for _, pkgs, t, label in examples} == {
        "foo": ("fast frobnicator", "any"), "foo-data": ("fast frobnicator (data files)", "all"),
        "libfoo1": ("fast frobnicator (shared library)", "any"),
        "longone": ("a tool with a very long paragraph", "all")}
    assert stats["no_section"] == 2
    out = tmp_path / "arch"
    assert ddtp.main(["architecture", "--en", sample["en"], "--packages", pk, "--out", str(out),
                      "--valid-size", "1", "--test-size", "1"]) == 0
    inputs = [line for split in ("train", "valid", "test") for line in (out / f"{split}.input0").read_text().splitlines()]
    labels = [line for split in ("train", "valid", "test") for line in (out / f"{split}.label").read_text().splitlines()]
    assert sorted(zip(inputs, labels)) == sorted((t, label) for _, _, t, label in examples)
    with pytest.raises(SystemExit, match="architecture needs a Packages index.*Architecture"):
        ddtp.main(["architecture", "--en", sample["en"], "--out", str(tmp_path / "none")])


def test_pairs_hold_one_positive_and_one_negative_from_another_source(tmp_path):
    n = 12
    en = "".join(f"Package: p{i}\nDescription-md5: {i:032d}\nDescription-en: english synopsis {i}\n long text {i}\n\n"
                 for i in range(n))
    de = "".join(f"Package: p{i}\nDescription-md5: {i:032d}\nDescription-de: deutsche Kurzbeschreibung {i}\n langer Text {i}\n\n"
                 for i in range(n))
    pk = "".join(f"Package: p{i}\nSource: s{i // 2}\nDescription-md5: {i:032d}\n\n" for i in range(n))
    files = [_write(tmp_path / name, text) for name, text in (("en", en), ("de", de), ("pk", pk))]
    out = tmp_path / "pairs"
    assert ddtp.main(["pairs", "--en", files[0], "--de", files[1], "--packages", files[2], "--out", str(out),
                      "--valid-size", "4", "--test-size", "4"]) == 0
    seen = {}
    for split in ("train", "valid", "test"):
        columns = [(out / f"{split}.{c}").read_text().splitlines() for c in ("input0", "input1", "label")]
        rows = list(zip(*columns))
        assert [label for _, _, label in rows].count("1") == [label for _, _, label in rows].count("0") == len(rows) // 2
        for en_text, de_text, label in rows:
            i, j = int(en_text.split()[-1]), int(de_text.split()[-1])
            assert (i == j) == (label == "1")
            if label == "0":
                assert i // 2 != j // 2  # another source package
            seen.setdefault(i, set()).add(split)
            seen.setdefault(j, set()).add(split)
    assert all(len(splits) == 1 for splits in seen.values())  # no synopsis in two splits
    stats = json.loads((out / "stats.json").read_text())
    assert stats["labels"]["train"] == {"0": stats["train"] // 2, "1": stats["train"] // 2}


def test_pretraining_text_holds_no_valid_or_test_package_of_either_task(tmp_path):
    n = 40
    en = "".join(f"Package: p{i}\nDescription-md5: {i:032d}\nDescription-en: english synopsis {i}\n long text {i}\n\n"
                 for i in range(n))
    de = "".join(f"Package: p{i}\nDescription-md5: {i:032d}\nDescription-de: deutsche Kurzbeschreibung {i}\n langer Text {i}\n\n"
                 for i in range(0, n, 2))   # every other description is translated
    pk = "".join(f"Package: p{i}\nSource: s{i // 2}\nSection: {('libs', 'net')[i % 3 == 0]}\nDescription-md5: {i:032d}\n\n"
                 for i in range(n))
    files = [_write(tmp_path / name, text) for name, text in (("en", en), ("de", de), ("pk", pk))]
    sizes = ["--valid-size", "4", "--test-size", "4"]
    outs = {}
    for task in ("classification", "pairs", "pretraining"):
        outs[task] = tmp_path / task
        args = [task, "--en", files[0], "--packages", files[2], "--out", str(outs[task])] + sizes
        assert ddtp.main(args + ([] if task == "classification" else ["--de", files[1]])) == 0
    number = lambda text: int(text.split()[2])   # "english synopsis 7 ..." -> 7
    held = set()
    for task, columns in (("classification", ["input0"]), ("pairs", ["input0", "input1"])):
        for split in ("valid", "test"):
            for column in columns:
                held |= {number(t) // 2 for t in (outs[task] / f"{split}.{column}").read_text().splitlines()}
    assert held   # both tasks hold packages out
    pre = {f"{split}.{lang}": (outs["pretraining"] / f"{split}.{lang}").read_text().splitlines()
           for split in ("train", "valid") for lang in ("en", "de")}
    sources = {number(line) // 2 for lines in pre.values() for line in lines}
    assert sources and not sources & held
    # every other source is kept in both languages, the whole description on one line
    assert sources == set(range(n // 2)) - held
    assert f"english synopsis {2 * min(sources)} long text {2 * min(sources)}" in pre["train.en"] + pre["valid.en"]
    assert len(pre["train.de"]) + len(pre["valid.de"]) == len(sources)   # s{k} has one German text: p{2k}
    stats = json.loads((outs["pretraining"] / "stats.json").read_text())
    assert stats["train_en"] == len(pre["train.en"]) and stats["held_out_sources"] == len(held)
