#!/usr/bin/env python3
"""Check that no figure was dropped when documents were rewritten or moved.

Every number in the OLD documents (by default BENCHMARKS.md and README.md as committed at a
git revision) must occur somewhere in the NEW documents (by default BENCHMARKS.md, README.md,
docs/*.md and bench/results/*.md of the working tree). A number is a token such as 11.74,
2,382, 6e-06 or 1e-5; it must appear as the same token (not inside a longer number).
With --lines, also report every non-empty line of the old files that no new file contains
verbatim (after the image paths of the moved notebook are mapped), which shows what was
rewritten rather than moved.

    python bench/check_figures.py --rev 709681f            # old = that commit's documents
    python bench/check_figures.py --old-file /tmp/B.md      # old = a saved copy

Exit status 0 when every figure is found, 1 otherwise (the missing ones are listed)."""
import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?:e[-+]?\d+)?(?![\w]|\.\d)")


def figures(text):
    """Every number token of text, with its count; a trailing sentence dot is not part of it."""
    return Counter(NUMBER.findall(text))


def old_texts(args):
    texts = {}
    for name in args.old_file or []:
        texts[name] = Path(name).read_text(encoding="utf-8")
    if args.rev:
        for name in args.old_paths:
            out = subprocess.run(["git", "-C", str(REPO), "show", f"{args.rev}:{name}"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"check_figures: cannot read {name} at {args.rev}: {out.stderr.strip()}")
            texts[f"{args.rev}:{name}"] = out.stdout
    if not texts:
        sys.exit("check_figures: give --rev or --old-file")
    return texts


def new_texts(patterns, root):
    texts = {}
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            texts[str(path.relative_to(root))] = path.read_text(encoding="utf-8")
    return texts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", help="git revision whose documents are the old ones")
    parser.add_argument("--old-paths", nargs="+", default=["BENCHMARKS.md", "README.md"],
                        help="documents read at --rev (default: BENCHMARKS.md README.md)")
    parser.add_argument("--old-file", nargs="+", help="old documents given as files")
    parser.add_argument("--new", nargs="+", default=["BENCHMARKS.md", "README.md", "docs/*.md", "bench/results/*.md"],
                        help="glob patterns (repository-relative) of the new documents")
    parser.add_argument("--root", type=Path, default=REPO,
                        help="folder the --new patterns are read from (default: this repository)")
    parser.add_argument("--lines", action="store_true",
                        help="also list old lines that no new document contains verbatim")
    args = parser.parse_args()

    old = old_texts(args)
    new = new_texts(args.new, args.root)
    found = Counter()
    for text in new.values():
        found.update(figures(text))
    new_lines = set()
    for text in new.values():
        new_lines.update(line.strip() for line in text.splitlines())

    missing_any = False
    for name, text in old.items():
        wanted = figures(text)
        missing = sorted(n for n in wanted if n not in found)
        print(f"{name}: {sum(wanted.values())} figures ({len(wanted)} distinct); "
              f"missing from the new documents: {len(missing)}")
        for number in missing:
            where = [i + 1 for i, line in enumerate(text.splitlines()) if number in NUMBER.findall(line)]
            print(f"  {number} (old line {', '.join(map(str, where[:5]))})")
        missing_any |= bool(missing)
        if args.lines:
            moved = 0
            unmoved = []
            for i, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line:
                    continue
                mapped = line.replace("](bench/", "](../")
                if line in new_lines or mapped in new_lines:
                    moved += 1
                else:
                    unmoved.append((i, line))
            print(f"  lines found verbatim: {moved}; rewritten or dropped: {len(unmoved)}")
            for i, line in unmoved:
                print(f"    {i}: {line[:110]}")
    print(f"new documents read: {len(new)} ({', '.join(new)})")
    return 1 if missing_any else 0


if __name__ == "__main__":
    sys.exit(main())
