#!/usr/bin/env python3
"""Data logic of the DDTP example: Debian package descriptions as parallel En-De text and
as a (long description -> synopsis) summarization task.

Pure standard library (the .lz4 / .zst files that apt stores are read through the `lz4` /
`zstd` programs or apt's own `apt-helper cat-file`).

Inputs: Debian index files as apt fetches them (plain, .gz, .xz, .bz2, .lz4, .zst):
  Translation-en, Translation-de  deb822 paragraphs with Package, Description-md5 and
                                  Description-en / Description-de
  Packages (optional)             deb822 paragraphs with Package, Source ("src" or
                                  "src (version)"; absent means source == package) and
                                  Description-md5: gives each description its SOURCE package.

Translation pairs: entries of both languages are joined on Description-md5 (the md5 of the
English description, so it identifies exactly the text that was translated). The synopsis
is paired with the synopsis, the long description paragraph by paragraph, and only when both
sides have the same number of paragraphs (otherwise the long description is skipped, the
synopsis kept). Whitespace is normalised (runs of blanks -> one space), pairs with an empty
side or more than --max-words words on a side are dropped, and exact duplicate pairs are
kept once.

Summarization pairs (English index alone): source = long description (paragraphs joined
with a space), target = synopsis.

Classification (English index + Packages): input = the English description (synopsis and
long description joined, at most --max-words words), label = the package's Section from the
Packages index ("contrib/net" -> "net"); only the --top-classes most frequent sections of the
pairs are kept (0: all). Architecture (English index + Packages): input = the English
synopsis alone, label = "all" when the package's Architecture is all (the same files on every
machine: scripts, data, documentation) and "any" otherwise (compiled per architecture). Pair
classification (English + German index): input0 = an English
synopsis, input1 = a German synopsis, label 1 when they are translations of each other
(the same Description-md5) and 0 otherwise; each English synopsis gets one positive and one
negative, the negative's German synopsis drawn (seeded by --salt) from another source
package of the SAME split, so no text crosses splits. Pre-training text (English and German
indexes + Packages): every description, English and German, whose source package is in the
train split of BOTH classification and pairs (as they split it with the same options), so an
encoder or language model pre-trained on it has seen no valid or test text of either task.

Splits: by SOURCE package, so near-identical descriptions of sibling binary packages (foo,
foo-data, libfoo1, ...) never straddle train/valid/test. Source packages are ordered by a
salted SHA-1 of their name and handed to test, then valid, until each reaches its size
(a fraction < 1 of all pairs, or a count >= 1 of pairs); the rest is train. Afterwards a
valid/test pair whose source side also occurs in train (boilerplate such as "This package
contains the documentation.") is dropped, and likewise a test pair whose source side occurs
in valid, so that the evaluation sets hold no source segment seen earlier.
Without a Packages index the source name is guessed from the binary name (see
`guess_source`).

Outputs (each file written to a temporary name and renamed, so an interrupted run never
leaves a half-written file behind): OUT/{train,valid,test}.{en,de} (translation) or
OUT/{train,valid,test}.{src,tgt} (summarization), OUT/{train,valid,test}.{input0,label}
(classification, architecture) or .{input0,input1,label} (pairs), plus OUT/stats.json (with the label counts
per split for the classification tasks), written last.

CLI:
  ddtp.py translation   --index-dir DIR | --en F.. --de F.. [--packages F..]  --out DIR
  ddtp.py summarization --index-dir DIR | --en F..          [--packages F..]  --out DIR
  ddtp.py classification --index-dir DIR | --en F..         --packages F..    --out DIR [--top-classes N]
  ddtp.py architecture  --index-dir DIR | --en F..         --packages F..    --out DIR
  ddtp.py pairs         --index-dir DIR | --en F.. --de F.. [--packages F..]  --out DIR
  ddtp.py pretraining   --index-dir DIR | --en F.. --de F.. --packages F..    --out DIR
                        [--top-classes N --pretrain-valid-size S]  (OUT/{train,valid}.{en,de})
  ddtp.py locate --index-dir DIR      (prints the index files it finds, exits 1 if none)
  ddtp.py apt-source [--uri U --suite S] (deb822 stanza for prepare.sh's private apt)
Options: --valid-size (default 0.02), --test-size (default 0.02), --max-words (default 100),
  --min-words (1), --max-pairs (0 = all; caps train only), --salt (split hash salt, "ddtp").
"""

import argparse
import bz2
import collections
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

SPLITS = ("train", "valid", "test")
COMPRESSED_SUFFIXES = ("", ".gz", ".xz", ".bz2", ".lz4", ".zst")
APT_HELPER = "/usr/lib/apt/apt-helper"


# --------------------------------------------------------------------------- reading
def _external_decompress(path, program):
    """Decompress with `program -dc`, or apt's own `apt-helper cat-file` (apt reads every
    format it writes). Returns bytes."""
    cmds = []
    if shutil.which(program):
        cmds.append([program, "-dc", path])
    if os.access(APT_HELPER, os.X_OK):
        cmds.append([APT_HELPER, "cat-file", path])
    if not cmds:
        raise RuntimeError(
            "cannot read %s: neither `%s` nor %s is installed (install the %s package, "
            "or decompress the file yourself)" % (path, program, APT_HELPER, program))
    last = None
    for cmd in cmds:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode == 0:
            return proc.stdout
        last = proc.stderr.decode("utf-8", "replace").strip()
    raise RuntimeError("cannot decompress %s: %s" % (path, last))


def open_index(path):
    """Open a (possibly compressed) index file as text (UTF-8, undecodable bytes replaced)."""
    if path.endswith(".gz"):
        raw = gzip.open(path, "rb")
    elif path.endswith(".xz") or path.endswith(".lzma"):
        raw = lzma.open(path, "rb")
    elif path.endswith(".bz2"):
        raw = bz2.open(path, "rb")
    elif path.endswith(".lz4"):
        raw = io.BytesIO(_external_decompress(path, "lz4"))
    elif path.endswith(".zst"):
        raw = io.BytesIO(_external_decompress(path, "zstd"))
    else:
        raw = open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)


def iter_paragraphs(lines):
    """deb822 paragraphs -> dicts {field: value}. A multi-line value keeps its continuation
    lines (with their leading space) joined by '\\n'. Field names are kept as written."""
    para = {}
    key = None
    for line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            if para:
                yield para
            para, key = {}, None
            continue
        if line[0] in " \t":
            if key is not None:
                para[key] += "\n" + line
            continue
        if line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue  # malformed line: ignore
        key = name.strip()
        para[key] = value.strip()
    if para:
        yield para


def read_paragraphs(paths):
    for path in paths:
        with open_index(path) as fh:
            for para in iter_paragraphs(fh):
                yield para


_WS = re.compile(r"\s+")


def normalize(text):
    return _WS.sub(" ", text).strip()


def split_description(value):
    """Description-xx value -> (synopsis, [paragraph, ...]), whitespace-normalised.
    Continuation lines start with one space; ' .' is an empty line (paragraph break)."""
    lines = value.split("\n")
    synopsis = normalize(lines[0])
    paragraphs, current = [], []
    for line in lines[1:]:
        body = line[1:] if line[:1] in (" ", "\t") else line
        if body.strip() == ".":
            if current:
                paragraphs.append(normalize(" ".join(current)))
            current = []
        else:
            current.append(body)
    if current:
        paragraphs.append(normalize(" ".join(current)))
    return synopsis, [p for p in paragraphs if p]


def read_translation(paths, lang):
    """Translation-<lang> files -> OrderedDict md5 -> (packages list, synopsis, paragraphs).
    Entries without Description-md5 are keyed by the md5 of their text."""
    field = "Description-" + lang
    out = collections.OrderedDict()
    for para in read_paragraphs(paths):
        value = para.get(field)
        if value is None:
            continue
        md5 = para.get("Description-md5") or hashlib.md5(value.encode("utf-8")).hexdigest()
        pkg = para.get("Package", "")
        if md5 in out:
            if pkg and pkg not in out[md5][0]:
                out[md5][0].append(pkg)
            continue
        synopsis, paragraphs = split_description(value)
        out[md5] = ([pkg] if pkg else [], synopsis, paragraphs)
    return out


def source_name(para):
    """Source package of a Packages paragraph: 'Source: name (version)' -> name."""
    src = para.get("Source", "").strip()
    if not src:
        return para.get("Package", "").strip()
    return src.split()[0]


def read_packages(paths):
    """Packages files -> (md5 -> source, package -> source)."""
    by_md5, by_pkg = {}, {}
    for para in read_paragraphs(paths):
        pkg = para.get("Package", "").strip()
        if not pkg:
            continue
        src = source_name(para)
        by_pkg.setdefault(pkg, src)
        md5 = para.get("Description-md5", "").strip()
        if md5:
            by_md5.setdefault(md5, src)
    return by_md5, by_pkg


def section_name(value):
    """Packages' Section value -> the section without its archive area ('contrib/net' -> 'net')."""
    return value.strip().split("/")[-1]


def read_labels(paths, field, value=str.strip):
    """Packages files -> (md5 -> label, package -> label): value(the FIELD value) of each
    paragraph that has the field (the first paragraph wins)."""
    by_md5, by_pkg = {}, {}
    for para in read_paragraphs(paths):
        raw = para.get(field, "").strip()
        label = value(raw) if raw else ""
        if not label:
            continue
        by_pkg.setdefault(para.get("Package", "").strip(), label)
        md5 = para.get("Description-md5", "").strip()
        if md5:
            by_md5.setdefault(md5, label)
    return by_md5, by_pkg


def read_sections(paths):
    """Packages files -> (md5 -> section, package -> section)."""
    return read_labels(paths, "Section", section_name)


def architecture_kind(value):
    """Packages' Architecture value -> "all" (the same files on every machine: scripts, data,
    documentation) or "any" (built per architecture: compiled code)."""
    return "all" if value.strip() == "all" else "any"


def read_architectures(paths):
    """Packages files -> (md5 -> "all" | "any", package -> "all" | "any")."""
    return read_labels(paths, "Architecture", architecture_kind)


_SUFFIXES = (
    "-dev", "-dbg", "-dbgsym", "-doc", "-docs", "-data", "-common", "-bin", "-utils",
    "-tools", "-examples", "-plugins", "-plugin", "-runtime", "-java", "-perl", "-dbus",
    "-gtk", "-qt", "-cli", "-core", "-base", "-extra", "-extras", "-all", "-full",
    "-minimal", "-nox", "-server", "-client", "-daemon", "-tests", "-test", "-i18n",
)
_PREFIXES = ("python3-", "python-", "ruby-", "node-", "lib", "golang-", "r-cran-",
             "php-", "elpa-", "fonts-", "gir1.2-")


def guess_source(binary):
    """Heuristic source name for a binary package when no Packages index is available:
    lowercase; drop a '-l10n-xx' / '-locale-xx' / '-i18n-xx' tail; repeatedly strip the
    common sibling suffixes above; drop a trailing soname-like version ('libfoo2',
    'libfoo-1.2', 'libfoo2.4'); then drop one common language/ecosystem prefix ('lib',
    'python3-', 'ruby-', ...) if something is left. So foo, foo-data, foo-doc, libfoo1,
    libfoo-dev and python3-foo all map to 'foo'."""
    name = binary.lower().strip()
    name = re.sub(r"-(l10n|locale|i18n|help|lang|langpack)-[a-z0-9_@.-]+$", "", name)
    changed = True
    while changed:
        changed = False
        for suf in _SUFFIXES:
            if name.endswith(suf) and len(name) > len(suf):
                name = name[: -len(suf)]
                changed = True
    for pre in _PREFIXES:
        if name.startswith(pre) and len(name) > len(pre) + 1:
            name = name[len(pre):]
            break
    stripped = re.sub(r"[-.]?[0-9][0-9.]*[a-z]?$", "", name)
    if len(stripped) >= 2:
        name = stripped
    return name or binary


class SourceMap(object):
    """Description-md5 / binary package -> source package."""

    def __init__(self, by_md5=None, by_pkg=None):
        self.by_md5 = by_md5 or {}
        self.by_pkg = by_pkg or {}
        self.guessed = 0

    def lookup(self, md5, packages):
        if md5 in self.by_md5:
            return self.by_md5[md5]
        for pkg in packages:
            if pkg in self.by_pkg:
                return self.by_pkg[pkg]
        self.guessed += 1
        return guess_source(packages[0]) if packages else "md5:" + md5


# --------------------------------------------------------------------------- pairing
def ok_pair(src, tgt, min_words, max_words):
    ns, nt = len(src.split()), len(tgt.split())
    return min_words <= ns <= max_words and min_words <= nt <= max_words


def translation_pairs(en, de, min_words=1, max_words=100):
    """en, de: outputs of read_translation. Yields (md5, packages, en_text, de_text) in the
    order of the English index; counts of what was dropped go to the returned stats via
    the generator's caller (see build_translation)."""
    stats = collections.Counter()
    pairs = []
    for md5, (pkgs, en_syn, en_pars) in en.items():
        if md5 not in de:
            continue
        stats["descriptions_paired"] += 1
        de_pkgs, de_syn, de_pars = de[md5]
        pkgs = pkgs + [p for p in de_pkgs if p not in pkgs]
        cands = [(en_syn, de_syn)]
        if len(en_pars) == len(de_pars):
            cands.extend(zip(en_pars, de_pars))
        else:
            stats["paragraph_count_mismatch"] += 1
        for s, t in cands:
            if ok_pair(s, t, min_words, max_words):
                pairs.append((md5, pkgs, s, t))
            else:
                stats["dropped_length"] += 1
    return pairs, stats


def summarization_pairs(en, min_words=1, max_words=400, min_source_words=10):
    """Long description (paragraphs joined) -> synopsis. max_words bounds the source,
    the target must have at least 2 words."""
    stats = collections.Counter()
    pairs = []
    for md5, (pkgs, syn, pars) in en.items():
        if not pars:
            stats["no_long_description"] += 1
            continue
        src = " ".join(pars)
        n = len(src.split())
        if n < max(min_words, min_source_words) or n > max_words or len(syn.split()) < 2:
            stats["dropped_length"] += 1
            continue
        pairs.append((md5, pkgs, src, syn))
    return pairs, stats


def classification_examples(en, sections, max_words=100, top_classes=0, synopsis_only=False):
    """(md5, packages, description, label) per English description whose label (a section,
    or any other Packages label map such as read_architectures') is known, the description
    (the synopsis alone with synopsis_only) at most max_words words; with top_classes > 0
    only that many most frequent labels (ties: alphabetical) are kept."""
    by_md5, by_pkg = sections
    stats = collections.Counter()
    examples = []
    for md5, (pkgs, syn, pars) in en.items():
        section = by_md5.get(md5) or next((by_pkg[p] for p in pkgs if p in by_pkg), None)
        if section is None:
            stats["no_section"] += 1
            continue
        text = syn if synopsis_only else " ".join([syn] + pars)
        if not 2 <= len(text.split()) <= max_words:
            stats["dropped_length"] += 1
            continue
        examples.append((md5, pkgs, text, section))
    if top_classes:
        counts = collections.Counter(e[3] for e in examples)
        keep = set(sorted(counts, key=lambda c: (-counts[c], c))[:top_classes])
        stats["dropped_rare_section"] = sum(1 for e in examples if e[3] not in keep)
        examples = [e for e in examples if e[3] in keep]
    return examples, stats


def translation_pair_examples(splits, sources_of, salt="ddtp"):
    """Positive (en, de) synopsis pairs per split -> [(en, de, "1" | "0")]: each positive and
    one negative whose German side comes from another source package of the same split."""
    out = {}
    for split, pairs in splits.items():
        rng = random.Random("%s\0%s" % (salt, split))
        examples = []
        for i, (en_text, de_text) in enumerate(pairs):
            examples.append((en_text, de_text, "1"))
            others = [j for j in (rng.randrange(len(pairs)) for _ in range(20))
                      if sources_of[split][j] != sources_of[split][i] and pairs[j][1] != de_text]
            if others:
                examples.append((en_text, pairs[others[0]][1], "0"))
        out[split] = examples
    return out


# --------------------------------------------------------------------------- splitting
def _hash_key(source, salt):
    return hashlib.sha1((salt + "\0" + source).encode("utf-8")).hexdigest()


def _target(size, total):
    size = float(size)
    if size < 0:
        raise ValueError("split size must be >= 0, got %r" % size)
    return int(round(size * total)) if size < 1 else int(size)


def assign_splits(pair_sources, valid_size, test_size, salt="ddtp"):
    """pair_sources: list of source names, one per pair. Returns dict source -> split.
    Sources in salted-hash order fill test, then valid (each up to its size in pairs, a
    source never split), the rest is train."""
    counts = collections.Counter(pair_sources)
    total = sum(counts.values())
    want = {"test": _target(test_size, total), "valid": _target(valid_size, total)}
    order = sorted(counts, key=lambda s: _hash_key(s, salt))
    assignment = {}
    filled = {"test": 0, "valid": 0}
    for src in order:
        for split in ("test", "valid"):
            if filled[split] < want[split]:
                assignment[src] = split
                filled[split] += counts[src]
                break
        else:
            assignment[src] = "train"
    return assignment


def split_pairs(pairs, sources, valid_size, test_size, salt="ddtp", max_train=0):
    """pairs: list of (src_text, tgt_text); sources: source package per pair.
    Returns ({split: [(src, tgt), ...]}, stats)."""
    assignment = assign_splits(sources, valid_size, test_size, salt)
    out = {s: [] for s in SPLITS}
    seen = {s: set() for s in SPLITS}
    stats = collections.Counter()
    for (s, t), src_pkg in zip(pairs, sources):
        split = assignment[src_pkg]
        if (s, t) in seen[split]:
            stats["duplicates"] += 1
            continue
        seen[split].add((s, t))
        out[split].append((s, t))
    # no source segment of valid/test seen in an earlier split
    train_src = set(s for s, _ in out["train"])
    valid_src = set(s for s, _ in out["valid"])
    before = len(out["valid"])
    out["valid"] = [p for p in out["valid"] if p[0] not in train_src]
    stats["valid_dropped_seen_source"] = before - len(out["valid"])
    before = len(out["test"])
    out["test"] = [p for p in out["test"] if p[0] not in train_src and p[0] not in valid_src]
    stats["test_dropped_seen_source"] = before - len(out["test"])
    if max_train and len(out["train"]) > max_train:
        stats["train_capped_from"] = len(out["train"])
        out["train"] = out["train"][:max_train]
    for split in SPLITS:
        stats[split] = len(out[split])
    split_of_source = collections.Counter(assignment.values())
    for split in SPLITS:
        stats["sources_" + split] = split_of_source.get(split, 0)
    return out, stats


# --------------------------------------------------------------------------- writing
def write_atomic(path, text):
    """Write text to path via a temporary file in the same directory + os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_splits(out_dir, splits, src_ext, tgt_ext, stats):
    # stats.json is removed first and written last: its presence marks completion.
    stats_path = os.path.join(out_dir, "stats.json")
    if os.path.exists(stats_path):
        os.unlink(stats_path)
    for split in SPLITS:
        pairs = splits[split]
        for ext, idx in ((src_ext, 0), (tgt_ext, 1)):
            text = "".join(p[idx].replace("\n", " ") + "\n" for p in pairs)
            write_atomic(os.path.join(out_dir, "%s.%s" % (split, ext)), text)
    write_atomic(stats_path, json.dumps(stats, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- locating
def locate(index_dir, kind):
    """Index files of `kind` ('Translation-en', 'Translation-de', 'Packages') in index_dir
    (flat, as in apt's lists dir or a plain download dir; also one level of sub-folders).
    Prefers, per base name, the least compressed copy present."""
    found = {}
    patterns = [os.path.join(index_dir, "*" + kind + "*"),
                os.path.join(index_dir, "*", "*" + kind + "*")]
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if not os.path.isfile(path) or os.sep + "partial" + os.sep in path:
                continue
            name = os.path.basename(path)
            for suf in COMPRESSED_SUFFIXES:
                if suf and not name.endswith(suf):
                    continue
                base = name[: len(name) - len(suf)] if suf else name
                if base.endswith(kind) and (base == kind or base[-len(kind) - 1] in "_/-."):
                    key = os.path.join(os.path.dirname(path), base)
                    rank = COMPRESSED_SUFFIXES.index(suf)
                    if key not in found or rank < found[key][0]:
                        found[key] = (rank, path)
                    break
    return [p for _, p in sorted(found.values(), key=lambda x: x[1])]


# --------------------------------------------------------------------------- apt sources
def _oneline_entries(path):
    """sources.list one-line format -> entries (dicts with types, uris, suites,
    components, options)."""
    entries = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            opts = {}
            m = re.match(r"^(\S+)\s+\[([^\]]*)\]\s+(.*)$", line)
            if m:
                kind, rest = m.group(1), m.group(3)
                for item in m.group(2).split():
                    k, _, v = item.partition("=")
                    opts[k.lower()] = v
            else:
                kind, _, rest = line.partition(" ")
            fields = rest.split()
            if len(fields) < 2:
                continue
            entries.append({"types": [kind], "uris": [fields[0]], "suites": [fields[1]],
                            "components": fields[2:], "signed-by": opts.get("signed-by", ""),
                            "enabled": True})
    return entries


def _deb822_entries(path):
    entries = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [l for l in fh if not l.lstrip().startswith("#")]
    for para in iter_paragraphs(lines):
        low = {k.lower(): v for k, v in para.items()}
        entries.append({
            "types": low.get("types", "").split(),
            "uris": low.get("uris", "").split(),
            "suites": low.get("suites", "").split(),
            "components": low.get("components", "").split(),
            "signed-by": low.get("signed-by", ""),
            "enabled": low.get("enabled", "yes").strip().lower() not in ("no", "false", "0"),
        })
    return entries


def system_apt_entries(sources_list="/etc/apt/sources.list",
                       sources_parts="/etc/apt/sources.list.d"):
    entries = []
    if sources_list and os.path.isfile(sources_list):
        entries += _oneline_entries(sources_list)
    if sources_parts and os.path.isdir(sources_parts):
        for name in sorted(os.listdir(sources_parts)):
            path = os.path.join(sources_parts, name)
            if name.endswith(".list"):
                entries += _oneline_entries(path)
            elif name.endswith(".sources"):
                entries += _deb822_entries(path)
    return entries


def pick_apt_source(entries, component="main"):
    """First enabled `deb` entry carrying `component`, preferring a release suite (no
    '-updates' / '-security' / '-backports' / '/updates' tail). Returns (uri, suite,
    signed_by) or None."""
    cands = []
    for e in entries:
        if not e["enabled"] or "deb" not in e["types"] or component not in e["components"]:
            continue
        for uri in e["uris"]:
            for suite in e["suites"]:
                cands.append((uri, suite, e["signed-by"]))
    if not cands:
        return None
    plain = [c for c in cands if not re.search(r"[-/](updates|security|backports|proposed)$",
                                                c[1])]
    return (plain or cands)[0]


def apt_source_stanza(uri, suite, component="main", signed_by="", arch=""):
    """deb822 .sources stanza that fetches only Packages and the en/de Translations."""
    lines = ["Types: deb", "URIs: " + uri, "Suites: " + suite, "Components: " + component,
             "Languages: en de", "Targets: Packages Translations"]
    if arch:
        lines.append("Architectures: " + arch)
    if signed_by:
        # a multi-line Signed-By (inline key block) keeps its continuation lines
        lines.append("Signed-By: " + signed_by)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- tasks
def _inputs(args, need_de):
    en, de, pk = list(args.en or []), list(getattr(args, "de", None) or []), list(args.packages or [])
    if args.index_dir:
        if not os.path.isdir(args.index_dir):
            raise SystemExit("error: index directory %s does not exist" % args.index_dir)
        en = en or locate(args.index_dir, "Translation-en")
        de = de or locate(args.index_dir, "Translation-de")
        pk = pk or locate(args.index_dir, "Packages")
    if not en:
        raise SystemExit("error: no Translation-en index given (--en or --index-dir)")
    if need_de and not de:
        raise SystemExit("error: no Translation-de index given (--de or --index-dir)")
    for path in en + de + pk:
        if not os.path.isfile(path):
            raise SystemExit("error: index file %s does not exist" % path)
    return en, de, pk


def _source_map(pk):
    if pk:
        by_md5, by_pkg = read_packages(pk)
        return SourceMap(by_md5, by_pkg)
    sys.stderr.write("warning: no Packages index: guessing source packages from binary "
                     "names (ddtp.guess_source)\n")
    return SourceMap()


def build_translation(en_files, de_files, pk_files, out_dir, valid_size=0.02,
                      test_size=0.02, min_words=1, max_words=100, max_pairs=0, salt="ddtp",
                      src_lang="en", tgt_lang="de"):
    en = read_translation(en_files, "en")
    de = read_translation(de_files, "de")
    smap = _source_map(pk_files)
    pairs, stats = translation_pairs(en, de, min_words, max_words)
    sources = [smap.lookup(md5, pkgs) for md5, pkgs, _, _ in pairs]
    texts = [(s, t) for _, _, s, t in pairs]
    splits, sstats = split_pairs(texts, sources, valid_size, test_size, salt, max_pairs)
    stats.update(sstats)
    stats["descriptions_en"] = len(en)
    stats["descriptions_de"] = len(de)
    stats["pairs_before_split"] = len(texts)
    stats["sources_guessed"] = smap.guessed
    stats = dict(stats)
    write_splits(out_dir, splits, src_lang, tgt_lang, stats)
    return splits, stats


def build_summarization(en_files, pk_files, out_dir, valid_size=0.02, test_size=0.02,
                        min_words=1, max_words=400, max_pairs=0, salt="ddtp"):
    en = read_translation(en_files, "en")
    smap = _source_map(pk_files)
    pairs, stats = summarization_pairs(en, min_words, max_words)
    sources = [smap.lookup(md5, pkgs) for md5, pkgs, _, _ in pairs]
    texts = [(s, t) for _, _, s, t in pairs]
    splits, sstats = split_pairs(texts, sources, valid_size, test_size, salt, max_pairs)
    stats.update(sstats)
    stats["descriptions_en"] = len(en)
    stats["pairs_before_split"] = len(texts)
    stats["sources_guessed"] = smap.guessed
    stats = dict(stats)
    write_splits(out_dir, splits, "src", "tgt", stats)
    return splits, stats


def write_columns(out_dir, splits, columns, stats):
    """splits: {split: [(column values...)]} -> OUT/<split>.<column> files, stats.json last."""
    stats_path = os.path.join(out_dir, "stats.json")
    if os.path.exists(stats_path):
        os.unlink(stats_path)
    for split in SPLITS:
        for index, column in enumerate(columns):
            text = "".join(row[index].replace("\n", " ") + "\n" for row in splits[split])
            write_atomic(os.path.join(out_dir, "%s.%s" % (split, column)), text)
    write_atomic(stats_path, json.dumps(stats, indent=1, sort_keys=True) + "\n")


def _label_counts(splits):
    return {split: dict(sorted(collections.Counter(row[-1] for row in rows).items()))
            for split, rows in splits.items()}


def _classification_data(en, pk_files, smap, max_words=100, top_classes=0, task="classification"):
    """((text, label) per example, source package per example, stats) of the classification
    task (description -> section) or the architecture task (synopsis -> all | any)."""
    labels = read_architectures(pk_files) if task == "architecture" else read_sections(pk_files)
    examples, stats = classification_examples(en, labels, max_words, top_classes,
                                              synopsis_only=task == "architecture")
    sources = [smap.lookup(md5, pkgs) for md5, pkgs, _, _ in examples]
    return [(text, label) for _, _, text, label in examples], sources, stats


def _pair_data(en, de, smap, max_words=100):
    """((English synopsis, German synopsis) per translated description, source per pair)."""
    positives, sources = [], []
    for md5, (pkgs, en_syn, _) in en.items():
        if md5 in de and ok_pair(en_syn, de[md5][1], 1, max_words):
            positives.append((en_syn, de[md5][1]))
            sources.append(smap.lookup(md5, pkgs + de[md5][0]))
    return positives, sources


def build_classification(en_files, pk_files, out_dir, valid_size=0.02, test_size=0.02,
                         max_words=100, max_pairs=0, salt="ddtp", top_classes=0, task="classification"):
    en = read_translation(en_files, "en")
    smap = _source_map(pk_files)
    texts, sources, stats = _classification_data(en, pk_files, smap, max_words, top_classes, task)
    splits, sstats = split_pairs(texts, sources, valid_size, test_size, salt, max_pairs)
    stats.update(sstats)
    stats = dict(stats, descriptions_en=len(en), sources_guessed=smap.guessed,
                 labels=_label_counts(splits))
    write_columns(out_dir, splits, ("input0", "label"), stats)
    return splits, stats


def build_pairs(en_files, de_files, pk_files, out_dir, valid_size=0.02, test_size=0.02,
                max_words=100, max_pairs=0, salt="ddtp"):
    en = read_translation(en_files, "en")
    de = read_translation(de_files, "de")
    smap = _source_map(pk_files)
    positives, sources = _pair_data(en, de, smap, max_words)
    splits, stats = split_pairs(positives, sources, valid_size, test_size, salt, max_pairs)
    source_of = dict(zip(positives, sources))
    examples = translation_pair_examples(
        splits, {split: [source_of[p] for p in pairs] for split, pairs in splits.items()}, salt)
    stats = dict(stats, descriptions_en=len(en), descriptions_de=len(de),
                 sources_guessed=smap.guessed, labels=_label_counts(examples))
    for split in SPLITS:
        stats[split] = len(examples[split])
    write_columns(out_dir, examples, ("input0", "input1", "label"), stats)
    return examples, stats


def build_pretraining(en_files, de_files, pk_files, out_dir, valid_size=0.02, test_size=0.02,
                      max_words=100, salt="ddtp", top_classes=0, pretrain_valid_size=0.01):
    """Text for pre-training an encoder (or a language model) before fine-tuning on the
    classification and pair tasks: every English and German description whose source
    package is in the TRAIN split of both tasks, as those tasks split it with the same
    settings, so no valid or test text of either task is seen in pre-training. The kept
    sources are split once more (salt + "/pretraining") into train and a valid set of
    pretrain_valid_size descriptions. Writes OUT/{train,valid}.{en,de}, one description
    (synopsis and paragraphs joined) per line, and stats.json."""
    en = read_translation(en_files, "en")
    de = read_translation(de_files, "de")
    smap = _source_map(pk_files)
    held_out = set()
    texts, sources, _ = _classification_data(en, pk_files, smap, max_words, top_classes)
    for data_sources in (sources, _pair_data(en, de, smap, max_words)[1]):
        assignment = assign_splits(data_sources, valid_size, test_size, salt)
        held_out.update(s for s, split in assignment.items() if split != "train")
    lines, line_sources = [], []
    for md5, (pkgs, syn, pars) in en.items():
        source = smap.lookup(md5, pkgs + (de[md5][0] if md5 in de else []))
        if source in held_out:
            continue
        german = " ".join([de[md5][1]] + de[md5][2]) if md5 in de else ""
        lines.append((normalize(" ".join([syn] + pars)), normalize(german)))
        line_sources.append(source)
    assignment = assign_splits(line_sources, pretrain_valid_size, 0, salt + "/pretraining")
    out = {"train": [], "valid": []}
    for row, source in zip(lines, line_sources):
        out[assignment[source]].append(row)
    stats = {"held_out_sources": len(held_out), "descriptions_en": len(en),
             "descriptions_de": len(de), "sources_guessed": smap.guessed}
    for split, rows in out.items():
        stats[split + "_en"] = sum(1 for e, _ in rows if e)
        stats[split + "_de"] = sum(1 for _, g in rows if g)
        stats[split + "_words"] = sum(len(e.split()) + len(g.split()) for e, g in rows)
    stats_path = os.path.join(out_dir, "stats.json")
    if os.path.exists(stats_path):
        os.unlink(stats_path)
    for split, rows in out.items():
        for index, lang in enumerate(("en", "de")):
            write_atomic(os.path.join(out_dir, "%s.%s" % (split, lang)),
                         "".join(row[index] + "\n" for row in rows if row[index]))
    write_atomic(stats_path, json.dumps(stats, indent=1, sort_keys=True) + "\n")
    stats.update(train=len(out["train"]), valid=len(out["valid"]), test=0)
    return out, stats


def _size(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("size must be >= 0")
    return value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    for name in ("translation", "summarization", "classification", "architecture", "pairs", "pretraining"):
        p = sub.add_parser(name)
        p.add_argument("--index-dir", help="directory holding Translation-*/Packages files")
        p.add_argument("--en", nargs="+", help="Translation-en file(s)")
        if name in ("translation", "pairs", "pretraining"):
            p.add_argument("--de", nargs="+", help="Translation-de file(s)")
        if name in ("classification", "pretraining"):
            p.add_argument("--top-classes", type=int, default=0,
                           help="keep the N most frequent sections (0: all)")
        if name == "pretraining":
            p.add_argument("--pretrain-valid-size", type=_size, default=0.01,
                           help="fraction (<1) or number (>=1) of kept descriptions for valid")
        p.add_argument("--packages", nargs="+", help="Packages file(s) (source packages)")
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--valid-size", type=_size, default=0.02,
                       help="fraction (<1) or number (>=1) of pairs; default 0.02")
        p.add_argument("--test-size", type=_size, default=0.02,
                       help="fraction (<1) or number (>=1) of pairs; default 0.02")
        p.add_argument("--min-words", type=int, default=1)
        p.add_argument("--max-words", type=int, default=400 if name == "summarization" else 100)
        p.add_argument("--max-pairs", type=int, default=0, help="cap on train pairs (0: all)")
        p.add_argument("--salt", default="ddtp", help="salt of the split hash")
    p = sub.add_parser("locate")
    p.add_argument("--index-dir", required=True)
    p.add_argument("--fingerprint", action="store_true",
                   help="print one hash of the found files' names, sizes and mtimes")
    p = sub.add_parser("apt-source", help="print a deb822 sources stanza for the system's "
                       "release archive (Packages + Translation-en/de only)")
    p.add_argument("--sources-list", default="/etc/apt/sources.list")
    p.add_argument("--sources-parts", default="/etc/apt/sources.list.d")
    p.add_argument("--component", default="main")
    p.add_argument("--uri", default="", help="override the archive URI")
    p.add_argument("--suite", default="", help="override the suite")
    p.add_argument("--arch", default="")
    args = ap.parse_args(argv)

    if args.cmd == "apt-source":
        uri, suite, signed_by = args.uri, args.suite, ""
        if not (uri and suite):
            picked = pick_apt_source(system_apt_entries(args.sources_list, args.sources_parts),
                                     args.component)
            if picked is None:
                sys.stderr.write("error: no 'deb' entry with component %s in %s or %s; set "
                                 "DDTP_URI and DDTP_SUITE, or DDTP_INDEX_DIR\n" % (
                                     args.component, args.sources_list, args.sources_parts))
                return 1
            if not uri and not suite:
                signed_by = picked[2]
            uri, suite = uri or picked[0], suite or picked[1]
        sys.stdout.write(apt_source_stanza(uri, suite, args.component, signed_by, args.arch))
        return 0

    if args.cmd == "locate":
        ok, lines, stamp = True, [], hashlib.sha1()
        for kind in ("Translation-en", "Translation-de", "Packages"):
            files = locate(args.index_dir, kind) if os.path.isdir(args.index_dir) else []
            lines.append("%s: %s" % (kind, " ".join(files) if files else "-"))
            ok = ok and (bool(files) or kind == "Packages")
            for path in files:
                st = os.stat(path)
                stamp.update(("%s %d %d\n" % (path, st.st_size, st.st_mtime)).encode("utf-8"))
        print(stamp.hexdigest() if args.fingerprint else "\n".join(lines))
        return 0 if ok else 1
    if args.cmd == "translation":
        en, de, pk = _inputs(args, True)
        _, stats = build_translation(en, de, pk, args.out, args.valid_size, args.test_size,
                                     args.min_words, args.max_words, args.max_pairs, args.salt)
    elif args.cmd == "summarization":
        en, _, pk = _inputs(args, False)
        _, stats = build_summarization(en, pk, args.out, args.valid_size, args.test_size,
                                       args.min_words, args.max_words, args.max_pairs,
                                       args.salt)
    elif args.cmd in ("classification", "architecture"):
        en, _, pk = _inputs(args, False)
        if not pk:
            raise SystemExit("error: %s needs a Packages index (--packages or --index-dir): the labels "
                             "are its %s fields" % (args.cmd, "Section" if args.cmd == "classification" else "Architecture"))
        _, stats = build_classification(en, pk, args.out, args.valid_size, args.test_size, args.max_words,
                                        args.max_pairs, args.salt, getattr(args, "top_classes", 0), args.cmd)
    elif args.cmd == "pairs":
        en, de, pk = _inputs(args, True)
        _, stats = build_pairs(en, de, pk, args.out, args.valid_size, args.test_size,
                               args.max_words, args.max_pairs, args.salt)
    elif args.cmd == "pretraining":
        en, de, pk = _inputs(args, True)
        if not pk:
            raise SystemExit("error: pretraining needs a Packages index (--packages or --index-dir): "
                             "it splits like the classification task, whose labels come from it")
        _, stats = build_pretraining(en, de, pk, args.out, args.valid_size, args.test_size,
                                     args.max_words, args.salt, args.top_classes,
                                     args.pretrain_valid_size)
    else:
        ap.print_help()
        return 2
    print("%s: train %d, valid %d, test %d examples -> %s" % (
        args.cmd, stats["train"], stats["valid"], stats["test"], args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
